"""``kmix bench``: dali_kmix against every peer, side by side in one run.

1. Operator level (arrays in memory, no decoding): time per batch for dali_kmix DMixup
   and DCutMix over K, modes "sample"/"batch", uint8 HWC and float32 CHW, batch sizes;
   the same work by timm (``Mixup`` batch/elem, ``FastCollateMixup``), torchvision v2
   (``MixUp``/``CutMix``), kornia (``RandomMixUpV2``/``RandomCutMixV2``) and the
   DALI-native compositions (``permute_batch`` + arithmetic, ``multi_paste``). Peers that
   cannot do a configuration are listed with the reason. The yardstick is a plain copy
   of the batch into a new array (``x.copy()``: it allocates its output, as ``mix_images``
   does); DALI-based entries are timed in a pipeline fed by ``external_source`` minus the
   same pipeline without the step. Each peer is held against the dali_kmix row its user
   would call: the DALI operator beside the DALI-native compositions, the array API
   (``sample_params``, ``mix_images``, ``mix_labels``) beside the others.
2. Pipeline level: images/s of the ImageNet training pipeline over a JPEG tree with no
   mixing, each dali_kmix operator, the DALI-native compositions, and timm's Mixup
   applied after the DALI iterator (how DALI's own examples mix today).
3. Scaling: time versus K (2..16) and versus batch size.
4. On a CUDA device (:mod:`dali_kmix.apps.bench_gpu`): the blend kernels against a
   device-to-device copy, their time over K, the ``"mixed"`` pipeline at batch 256, and
   the GPU targets met or not.

Every figure is the median (with min and max) over repeats after warm-up, with fixed
seeds; a time taken as a difference within each round (pipeline minus pipeline) gives the
spread of that difference instead (``diff_min_s``, ``diff_max_s``: it can go below 0).
Each run writes ``benchmarks/results/bench-<date>.json`` (the date the run started;
machine, versions, device, every figure) and a PNG plot, and prints the tables with the
ratios to the closest peer and to the copy.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import socket
import time
from pathlib import Path

import numpy as np

from .._checks import check_choice, check_choices, check_int, check_ints
from ..backends import gpu_available
from ..backends.cpu import default_workers
from .bench_gpu import bench_gpu_ops, bench_gpu_scaling, bench_native_ops, format_gpu
from .bench_kmixup import bench_kmixup, format_markdown
from .common import atomic_write
from .peers import DTYPES, METHODS, MODES, PEERS, Config, can, dali_native_pipeline, make_batch, peer_callable
from .timing import checked_rounds, difference_stats, interleaved_rounds, round_order, round_stats

__all__ = ["time_call", "bench_ops", "bench_pipeline", "bench_scaling", "run", "metadata", "format_table"]

KMIX = "dali_kmix"
KMIX_DALI = "dali_kmix (DALI op)"
COPY = "copy (yardstick)"
#: The yardstick: a copy of the batch into a new array, as mix_images returns one (both allocate their output).
COPY_NOTE = "x.copy(): allocates its output, as mix_images does"


def time_call(fn, repeats: int, warmup: int = 2) -> dict:
    """Seconds per call: median, min, max over ``repeats`` (>= 1) after ``warmup`` calls."""
    check_int("repeats", repeats, 1)
    check_int("warmup", warmup, 0)
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts = np.asarray(ts)
    return {"median_s": float(np.median(ts)), "min_s": float(ts.min()), "max_s": float(ts.max()), "repeats": repeats}


def metadata() -> dict:
    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu(),
        "cpu_cores": default_workers(),  # the CPUs of this process's affinity mask, as dali_kmix's kernels use
        "numpy": np.__version__,
        # 1, 5 and 15-minute load averages: the machine's other work (run() records them at the start and the end)
        "load_average": _load_average(),
    }
    for mod in ("nvidia.dali", "torch", "cupy", "timm", "torchvision", "kornia"):
        try:
            meta[mod] = __import__(mod, fromlist=["__version__"]).__version__
        except Exception:
            meta[mod] = None
    meta["gpu"] = None
    if gpu_available():
        import cupy

        meta["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    return meta


#: ARM's CPU part numbers (/proc/cpuinfo "CPU part" where "CPU implementer" is 0x41), as lscpu names them.
ARM_PARTS = {0xd03: "Cortex-A53", 0xd05: "Cortex-A55", 0xd07: "Cortex-A57", 0xd08: "Cortex-A72", 0xd0b: "Cortex-A76",
             0xd0c: "Neoverse-N1", 0xd40: "Neoverse-V1", 0xd49: "Neoverse-N2", 0xd4f: "Neoverse-V2",
             0xd84: "Neoverse-V3", 0xd8e: "Neoverse-N3"}
#: /proc/cpuinfo's "CPU implementer" codes.
ARM_IMPLEMENTERS = {0x41: "ARM", 0x42: "Broadcom", 0x43: "Cavium", 0x46: "Fujitsu", 0x48: "HiSilicon",
                    0x4e: "NVIDIA", 0x50: "APM", 0x51: "Qualcomm", 0x61: "Apple", 0xc0: "Ampere"}


def cpu_name(cpuinfo: str, lscpu=None) -> str | None:
    """The processor's name from the text of ``/proc/cpuinfo``: its "model name" (x86); on Arm, which has none,
    the core its "CPU implementer" and "CPU part" codes name (``ARM_PARTS``), else ``lscpu()``'s "Model name"
    (``lscpu``: a callable, None: not asked), else the two codes. None where the text holds neither."""
    fields = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    if fields.get("model name"):
        return fields["model name"]
    impl, part = fields.get("cpu implementer"), fields.get("cpu part")
    if not (impl and part):
        return None
    try:
        impl_code, part_code = int(impl, 16), int(part, 16)
    except ValueError:
        return f"CPU implementer {impl}, part {part}"
    vendor = ARM_IMPLEMENTERS.get(impl_code, f"implementer {impl}")
    if impl_code == 0x41 and part_code in ARM_PARTS:
        return f"{vendor} {ARM_PARTS[part_code]}"
    model = lscpu() if lscpu is not None else None
    return model or f"{vendor} CPU part {part}"


def _lscpu_model():
    """``lscpu``'s "Model name" (None where it has none, or no lscpu runs)."""
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name" and value.strip() not in ("", "-"):
            return value.strip()
    return None


def _cpu() -> str:
    """The processor's name (:func:`cpu_name` of ``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    return cpu_name(text, lscpu=_lscpu_model) or platform.processor() or platform.machine()


def _load_average():
    """The 1, 5 and 15-minute load averages (None where the system has none)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _per_round(ts) -> dict:
    """The statistics of a variant timed in interleaved rounds (seconds per call, one per round), the rounds kept."""
    st = round_stats(ts)
    return {"median_s": st["median_s"], "min_s": st["min_s"], "max_s": st["max_s"], "repeats": st["rounds"],
            "round_s": [float(t) for t in ts], "timing": "interleaved rounds"}


def _per_round_difference(ds) -> dict:
    """:func:`_per_round` of a time taken as a difference within each round (``ds``: one per round): no min/max of a
    time per call but the spread of the difference, which can go to 0 or below (``diff_min_s``, ``diff_max_s``,
    ``nonpositive_rounds``: :func:`~dali_kmix.apps.timing.difference_stats`); ``round_s`` holds the differences."""
    st = difference_stats(ds)
    return {"median_s": st["median_s"], "diff_min_s": st["diff_min_s"], "diff_max_s": st["diff_max_s"],
            "nonpositive_rounds": st["nonpositive_rounds"], "repeats": st["rounds"],
            "round_s": [float(d) for d in ds], "timing": "interleaved rounds"}


def _stats_row(base, t):
    return {**base, "status": "ok", **t}


def _pipeline_runner(pipe, inner=5):
    """A zero-argument callable: ``inner`` runs of the built ``pipe``; its time per call is divided by ``inner``."""
    pipe.build()

    def runs():
        for _ in range(inner):
            pipe.run()

    runs.kmix_inner = inner
    runs.kmix_pipe = pipe  # kept alive with the runner
    return runs


# --------------------------------------------------------------------------- 1. operators

#: The pipeline without the step: DALI-based entries are timed as pipeline minus this, within each round.
PIPELINE_BASE = "pipeline without the step"


def bench_ops(*, batches=(32, 64, 128), ks=(2, 3, 5, 9), modes=("sample", "batch"), dtypes=("uint8", "float32"),
              methods=("dmixup", "dcutmix"), size=224, repeats=10, progress=True, threads=None) -> list[dict]:
    """Operator-level rows for every configuration and every peer (with "n/a" rows and reasons).

    Each configuration is timed in ``repeats`` interleaved rounds: the copy of the batch, every peer, the dali_kmix
    array API and DALI operator, and the pipeline without the step, once per round each. Every row keeps its time
    per round (``round_s``); the ratios (to the copy, to the peers) are medians over rounds of ratios within a round.
    ``threads``: torch's threads for the peers (None: the CPUs of this process's affinity mask, which dali_kmix's
    kernels use); every row records it (``torch_threads``), and torch's setting is restored on return.
    """
    import torch
    from tqdm import tqdm

    batches, ks = check_ints("batches", batches, 1), check_ints("ks", ks, 2)
    modes, dtypes = check_choices("modes", modes, MODES), check_choices("dtypes", dtypes, DTYPES)
    methods = check_choices("methods", methods, METHODS)
    check_int("size", size, 1)
    check_int("repeats", repeats, 1)
    threads = default_workers() if threads is None else check_int("threads", threads, 1)
    configs = [Config(m, k, mode, dt, b, size) for dt in dtypes for b in batches for m in methods for k in ks
               for mode in modes]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows = []
        bar = tqdm(total=len(configs), desc="operators", disable=not progress)
        for dt in dtypes:
            for b in batches:
                group = [c for c in configs if c.dtype == dt and c.batch == b]
                x, labels = make_batch(group[0])
                base = {"level": "op", "device": "cpu", "dtype": dt, "layout": group[0].layout, "batch": b,
                        "size": size, "torch_threads": threads}
                from ..saliency import salient_points

                samples = list(x)
                rows.append(_stats_row({**base, "impl": "saliency step (spectral residual)"},
                                       time_call(lambda: salient_points(samples, group[0].layout), repeats)))
                for cfg in group:
                    rows += _config_rows(cfg, x, labels,
                                         {**base, "method": cfg.method, "k": cfg.k, "mode": cfg.mode}, repeats)
                    bar.update()
        bar.close()
    finally:
        torch.set_num_threads(previous)
    _add_ratios(rows)
    return rows


def _config_rows(cfg, x, labels, cbase, repeats):
    """The rows of one configuration, from interleaved rounds (see :func:`bench_ops`)."""
    variants, rows = {COPY: x.copy}, []
    for peer in list(PEERS) + [KMIX_DALI]:
        reason = None if peer == KMIX_DALI else can(peer, cfg)
        if reason:
            rows.append({**cbase, "impl": peer, "status": "n/a", "reason": reason})
            continue
        try:
            if peer in ("DALI native", KMIX_DALI):
                variant = "native" if peer == "DALI native" else "dali_kmix"
                variants[peer] = _pipeline_runner(dali_native_pipeline(cfg, x, labels, variant=variant))
            else:
                variants[peer] = peer_callable(peer, cfg, x, labels)
        except Exception as exc:  # a peer failing on a configuration is a result, not a crash
            rows.append({**cbase, "impl": peer, "status": "error", "reason": f"{type(exc).__name__}: {exc}"})
    in_pipeline = [p for p in ("DALI native", KMIX_DALI) if p in variants]
    if in_pipeline:
        variants[PIPELINE_BASE] = _pipeline_runner(dali_native_pipeline(cfg, x, labels, variant="none"))
    times, errors = interleaved_rounds(variants, repeats)
    del variants
    for peer, err in errors.items():
        if peer != PIPELINE_BASE:
            rows.append({**cbase, "impl": peer, "status": "error", "reason": err})
    base_t = np.asarray(times.pop(PIPELINE_BASE, []))
    for peer, ts in times.items():
        ts = np.asarray(ts)
        extra = {"bytes": 2 * x.nbytes, "note": COPY_NOTE} if peer == COPY else {}
        if peer in in_pipeline:
            if len(base_t) != len(ts):
                rows.append({**cbase, "impl": peer, "status": "error",
                             "reason": f"the pipeline without the step failed: {errors.get(PIPELINE_BASE)}"})
                continue
            extra = {"pipeline_baseline_s": float(np.median(base_t)),
                     "note": "pipeline time minus the same pipeline without the step, within each round "
                             "(diff_min_s, diff_max_s: the spread of that difference; it can go below 0)"}
            rows.append(_stats_row({**cbase, "impl": peer, **extra}, _per_round_difference(ts - base_t)))
            continue
        rows.append(_stats_row({**cbase, "impl": peer, **extra}, _per_round(ts)))
    return rows


def _matching_kmix(peer):
    """The dali_kmix row a peer's user would call instead: the DALI operator beside a DALI-native composition (both
    timed inside a pipeline), the array API beside every library that mixes arrays or tensors."""
    return KMIX_DALI if peer == "DALI native" else KMIX


def _ratio(a, b):
    """Median over rounds of ``a / b`` when both rows carry the same rounds (``round_s``), else of the medians."""
    ra, rb = a.get("round_s"), b.get("round_s")
    if ra and rb and len(ra) == len(rb):
        return float(np.median(np.asarray(ra) / np.maximum(np.asarray(rb), 1e-9)))
    return a["median_s"] / max(b["median_s"], 1e-9)


def _add_ratios(rows):
    """``vs_copy`` on every operator row; on dali_kmix's rows, the peer it leads by the least (``closest_peer``):
    every peer is held against the dali_kmix row its user would call (:func:`_matching_kmix`), and
    ``vs_closest_peer`` is the largest of those time ratios (dali_kmix / peer: below 1 where dali_kmix is faster
    than every peer). Ratios are medians over the rounds of ratios within a round where the rows were timed in the
    same rounds."""
    copies = {(r["device"], r["dtype"], r["batch"]): r for r in rows
              if r["level"] == "op" and r["impl"] == COPY and "method" not in r}
    groups = {}
    for r in rows:
        if r["level"] == "op" and r["status"] == "ok" and "method" in r:
            key = (r["device"], r["dtype"], r["batch"], r["method"], r["k"], r["mode"])
            groups.setdefault(key, []).append(r)
    for key, rs in groups.items():
        by = {r["impl"]: r for r in rs}
        copy = by.get(COPY) or copies.get(key[:3])
        if copy is not None:
            for r in rs:
                if r["impl"] != COPY:
                    r["vs_copy"] = _ratio(r, copy)
        held = [(_ratio(by[_matching_kmix(r["impl"])], r), r) for r in rs
                if r["impl"] not in (KMIX, KMIX_DALI, COPY) and _matching_kmix(r["impl"]) in by]
        if not held:
            continue
        ratio, peer = max(held, key=lambda rp: rp[0])
        for r in rs:
            if r["impl"] in (KMIX, KMIX_DALI):
                r["closest_peer"] = peer["impl"]
                r["vs_closest_peer"] = ratio
                r["compared_with"] = _matching_kmix(peer["impl"])


# --------------------------------------------------------------------------- 2. pipelines


def _kmix_variant(variant):
    """``(mix, mix_on)`` of a variant that :func:`~dali_kmix.pipelines.imagenet_train_pipeline` builds
    ("none" and the dali_kmix rows; "after normalise" means ``mix_on="float32"``), else None."""
    if variant == "none":
        return None, "uint8"
    if not variant.startswith("dali_kmix"):
        return None
    return variant.split()[1], "float32" if variant.endswith("after normalise)") else "uint8"


def _pipeline(data_dir, variant, *, batch, size, k, device, num_threads, seed=0):
    """ImageNet-style training pipeline with the mixing variant; returns (pipe, output names).

    "none" and dali_kmix's rows are the shipped ``imagenet_train_pipeline`` itself; the
    DALI-native compositions put their steps into the same read -> decode -> normalise chain.
    """
    from nvidia.dali import Pipeline, fn

    from ..pipelines import decode_random_crop, imagenet_train_pipeline, normalize_chw

    spec = _kmix_variant(variant)
    if spec is not None:
        mix, mix_on = spec
        pipe = imagenet_train_pipeline(data_dir, batch_size=batch, device=device, mix=mix, k=k, seed=seed,
                                       num_threads=num_threads, crop=size, label_format="sparse", mix_on=mix_on)
        return pipe.pipeline, list(pipe.output_map)
    gpu = device == "gpu"
    pipe = Pipeline(batch_size=batch, num_threads=num_threads, device_id=0 if gpu else None, seed=seed)
    with pipe:
        jpegs, labels = fn.readers.file(file_root=str(data_dir), random_shuffle=True, pad_last_batch=True,
                                        name="Reader")
        images = decode_random_crop(jpegs, gpu=gpu, crop=size)
        from .peers import _NativeParams

        if variant == "DALI native cutmix":  # multi_paste works on HWC: before normalisation
            cfg = Config("dcutmix", k, "sample", "uint8", batch, size)
            ids, anchors, shapes = fn.python_function(labels, function=_NativeParams(cfg, seed),
                                                      batch_processing=True, num_outputs=3)
            images = fn.multi_paste(images, in_ids=ids, in_anchors=anchors, shapes=shapes, out_anchors=anchors)
        images = normalize_chw(images, crop=size, mirror=True)
        if variant == "DALI native mixup":  # on the normalised float32 tensors, as DALI's examples blend
            cfg = Config("dmixup", k, "sample", "float32", batch, size)
            prm = fn.python_function(labels, function=_NativeParams(cfg, seed), batch_processing=True,
                                     num_outputs=2 * k - 1)
            perms, weights = prm[:k - 1], prm[k - 1:]
            if gpu:
                weights = [w.gpu() for w in weights]
            acc = images * weights[0]
            for idx, wt in zip(perms, weights[1:]):
                acc = acc + fn.permute_batch(images, indices=idx) * wt
            images = acc
        pipe.set_outputs(images, labels)
    return pipe, ["images", "labels"]


def bench_pipeline(data_dir, *, batch=64, size=224, k=3, iters=12, repeats=5, device="cpu", num_threads=2,
                   progress=True, settle_s=0.3, only=None) -> list[dict]:
    """Images/s through ``DALIGenericIterator`` into torch, over a JPEG tree, for every mixing variant.

    All variants are built first and then timed in rounds, one block of ``iters`` batches per
    variant per round, the rounds in a balanced order (:func:`~dali_kmix.apps.timing.round_order`: over
    any n rounds of n variants each is first once, and within the design's rounds each follows every
    other equally often), so a slow spell of a noisy machine hits every variant alike; ``vs_no_mix``
    is the median over rounds of (variant / no mixing in the same round). Between blocks the
    run waits ``settle_s`` so the previous pipeline's prefetching is done before the next clock, and
    takes the batches a pipeline computed ahead while its clock was stopped (its prefetch queue, 2) out
    before starting it: timed, they would count 20 batches for the work of 18 (images/s 11 % high).
    On the GPU, dali_kmix's DCutMix and DMixup are timed twice: with the native GPU operator (the
    default where the plugin has its GPU backend) and ``FUNCTION_PATH`` (python_function + CuPy);
    each row's ``path`` says which. ``only``: the variants to run (default: all). A variant that
    fails is reported with its error and not run in the later rounds.
    """
    check_int("batch", batch, 1)
    check_int("size", size, 1)
    check_int("k", k, 2)
    check_int("iters", iters, 1)
    check_int("repeats", repeats, 1)
    check_choice("device", device, ("cpu", "gpu"))
    check_int("num_threads", num_threads, 1)
    if not settle_s >= 0:
        raise ValueError(f"settle_s must be >= 0, got {settle_s!r}")
    import torch
    from nvidia.dali.plugin.base_iterator import LastBatchPolicy
    from nvidia.dali.plugin.pytorch import DALIGenericIterator
    from tqdm import tqdm

    variants = ["none", "dali_kmix dcutmix", "dali_kmix dmixup", "dali_kmix saliency-dcutmix",
                "dali_kmix dcutmix (float32 CHW, after normalise)", "dali_kmix dmixup (float32 CHW, after normalise)",
                "DALI native cutmix", "DALI native mixup", "timm Mixup after the iterator (K=2)"]
    if device == "gpu":  # the GPU path's fallback beside the native operator, in the same rounds
        variants[3:3] = [f"dali_kmix {m} {FUNCTION_PATH}" for m in ("dcutmix", "dmixup")]
    if only is not None:
        unknown = [v for v in only if v not in variants]
        if isinstance(only, str) or unknown:
            raise ValueError(f"only must name variants of {variants} (device {device!r}), got {only!r}")
        variants = [v for v in variants if v in only]
    runners, ahead, errors = {}, {}, {}
    for variant in variants:
        pipe_variant = "none" if variant.startswith("timm") else variant
        try:
            with _plugin_setting("0" if variant.endswith(FUNCTION_PATH) else None):
                pipe, names = _pipeline(data_dir, pipe_variant, batch=batch, size=size, k=k, device=device,
                                        num_threads=num_threads)
            after = None
            if variant.startswith("timm"):
                from timm.data import Mixup

                from ..pipelines import count_classes

                after = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, mode="batch", label_smoothing=0.0,
                              num_classes=count_classes(data_dir))
            it = DALIGenericIterator([pipe], names, reader_name="Reader", last_batch_policy=LastBatchPolicy.FILL,
                                     auto_reset=True)
            runners[variant] = _pipeline_step(it, after, device, torch)
            ahead[variant] = _batches_ahead(pipe)
            for _ in range(3):  # warm-up
                runners[variant]()
        except Exception as exc:  # a variant failing is a result, not a crash
            errors[variant] = f"{type(exc).__name__}: {exc}"
            runners.pop(variant, None)
    rates = {v: [] for v in runners}
    bar = tqdm(total=repeats * len(runners), desc=f"pipelines ({device})", disable=not progress)
    order = list(runners)
    for r in range(repeats if order else 0):
        for variant in round_order(order, r):
            if variant in errors:  # failed in an earlier round: not run again
                bar.update()
                continue
            step = runners[variant]
            time.sleep(settle_s)
            try:
                for _ in range(ahead[variant]):  # computed while the clock was stopped: not timed
                    step()
                t0 = time.perf_counter()
                for _ in range(iters):
                    step()
                rates[variant].append(iters * batch / (time.perf_counter() - t0))
            except Exception as exc:
                errors[variant] = f"{type(exc).__name__}: {exc}"
            bar.update()
    bar.close()
    rows = []
    base = np.asarray(rates.get("none", []))
    for variant in variants:
        if variant in errors or variant not in rates:
            rows.append({"level": "pipeline", "device": device, "mix": variant, "status": "error",
                         "reason": errors.get(variant, "not run")})
            continue
        r = np.asarray(rates[variant])
        row = {"level": "pipeline", "device": device, "mix": variant, **_gpu_path(variant, device),
               "k": 2 if variant.startswith("timm") else (None if variant == "none" else k),
               "placement": _placement(variant), "batch": batch, "size": size, "threads": num_threads,
               "status": "ok", "images_per_s_median": float(np.median(r)), "images_per_s_min": float(r.min()),
               "images_per_s_max": float(r.max()), "images_per_s_rounds": [float(v) for v in r], "repeats": repeats,
               "iters": iters,
               "timing": "interleaved rounds"}
        if len(base) == len(r) and len(r):
            ratios = r / base
            row.update(vs_no_mix=float(np.median(ratios)), vs_no_mix_min=float(ratios.min()),
                       vs_no_mix_max=float(ratios.max()))
        rows.append(row)
    return rows


#: The suffix of a GPU variant built with DALI_KMIX_PLUGIN=0: python_function + CuPy instead of the native operator.
FUNCTION_PATH = "(python_function + CuPy)"


@contextlib.contextmanager
def _plugin_setting(value):
    """DALI_KMIX_PLUGIN set to ``value`` (None: unchanged) while a pipeline is defined (it picks the path)."""
    old = os.environ.get("DALI_KMIX_PLUGIN")
    if value is not None:
        os.environ["DALI_KMIX_PLUGIN"] = value
    try:
        yield
    finally:
        if value is not None and old is None:
            os.environ.pop("DALI_KMIX_PLUGIN", None)
        elif value is not None:
            os.environ["DALI_KMIX_PLUGIN"] = old


def _gpu_path(variant, device):
    """``{"path": "native" | "function"}`` for dali_kmix's GPU rows: which path the pipeline mixed with."""
    if device != "gpu" or not variant.startswith("dali_kmix"):
        return {}
    from ..backends import plugin

    return {"path": "function" if variant.endswith(FUNCTION_PATH) or not plugin.gpu_backend() else "native"}


def _placement(variant):
    if variant == "none":
        return None
    if variant.startswith("timm"):
        return "after the iterator"
    spec = _kmix_variant(variant)
    if variant == "DALI native cutmix" or (spec is not None and spec[1] == "uint8"):
        return "uint8 HWC before normalisation"
    return "float32 CHW after normalisation"


def _batches_ahead(pipe) -> int:
    """How many batches a built pipeline computes ahead of the one handed out (DALI's prefetch queue depth)."""
    depth = pipe.prefetch_queue_depth
    return int(max(depth.values()) if isinstance(depth, dict) else depth)


def _pipeline_step(it, after, device, torch):
    """One batch out of the iterator (and timm's mixing after it, for that variant)."""

    def step():
        try:
            data = next(it)[0]
        except StopIteration:  # end of an epoch: auto_reset has rewound the reader
            data = next(it)[0]
        if after is not None:
            after(data["images"], data["labels"].reshape(-1).long())
        if device == "gpu":  # the block's clock stops when the device's work (timm's mixing included) is done
            torch.cuda.synchronize()

    return step


# --------------------------------------------------------------------------- 3. scaling


def bench_scaling(*, ks=(2, 3, 4, 6, 8, 12, 16), batches=(8, 16, 32, 64, 128, 256), k_batch=64, size=224,
                  repeats=7, progress=True) -> list[dict]:
    """dali_kmix time versus K (float32 CHW, batch ``k_batch``) and versus batch size (K=3), with the copy.

    Interleaved rounds: along K, the copy and both methods at every K in the same rounds over one batch, so that
    ``vs_first_k`` (time at K over time at the first K, median over rounds) and ``vs_copy`` compare within a
    round; along the batch, the copy and both methods per batch size. kornia's DCutMix along K is timed apart
    (seconds per call: a reference line, not a ratio)."""
    from tqdm import tqdm

    ks, batches = check_ints("ks", ks, 2), check_ints("batches", batches, 1)
    check_int("k_batch", k_batch, 1)
    check_int("size", size, 1)
    check_int("repeats", repeats, 1)
    rows = []
    bar = tqdm(total=len(ks) + len(batches), desc="scaling", disable=not progress)

    def job_rows(axis, b, k_list):
        x, labels = make_batch(Config("dmixup", k_list[0], "sample", "float32", b, size))
        variants = {(COPY, None, None): x.copy}
        for k in k_list:
            for method in ("dmixup", "dcutmix"):
                variants[(KMIX, method, k)] = peer_callable(KMIX, Config(method, k, "sample", "float32", b, size),
                                                            x, labels)
        times = checked_rounds(variants, repeats, what=f"scaling {axis}, batch {b}")
        copy_t = np.asarray(times[(COPY, None, None)])
        out = []
        for (impl, method, k), ts in times.items():
            ts = np.asarray(ts)
            row = {"level": "scaling", "axis": axis, "impl": impl, "k": k if k is not None else k_list[0], "batch": b,
                   **_per_round(ts)}
            if impl == COPY:
                row["note"] = COPY_NOTE
            else:
                row.update(method=method, vs_copy=float(np.median(ts / copy_t)))
                first = np.asarray(times[(KMIX, method, k_list[0])])
                if axis == "k":
                    row["vs_first_k"] = float(np.median(ts / first))
            out.append(row)
        bar.update(len(k_list) if axis == "k" else 1)
        return out

    rows += job_rows("k", k_batch, list(ks))
    x, labels = make_batch(Config("dcutmix", ks[0], "sample", "float32", k_batch, size))
    for k in ks:
        cfg = Config("dcutmix", k, "sample", "float32", k_batch, size)
        rows.append({"level": "scaling", "axis": "k", "impl": "kornia", "method": "dcutmix", "k": k, "batch": k_batch,
                     **time_call(peer_callable("kornia", cfg, x, labels), max(3, repeats // 2))})
    for b in batches:
        rows += job_rows("batch", b, [3])
    bar.close()
    return rows


# --------------------------------------------------------------------------- output


def format_table(rows, op_filter=None) -> str:
    """Markdown: the operator pivot (ms per batch; ratios), the pipeline table, the scaling table.

    "dali_kmix vs closest peer": every peer against the dali_kmix row its user would call (the DALI operator
    beside the DALI-native composition, the array API beside the others), the smallest lead of them all.

    ``op_filter(row) -> bool`` keeps only some operator configurations (the README shows a subset).
    """
    lines = []
    ops = [r for r in rows if r["level"] == "op" and (op_filter is None or "method" not in r or op_filter(r))]
    if ops:
        impls = [KMIX, KMIX_DALI] + [p for p in PEERS if p != KMIX]
        lines += ["| dtype, batch | method | K | mode | copy | " + " | ".join(impls) +
                  " | dali_kmix vs closest peer | dali_kmix / copy |",
                  "|---" * (len(impls) + 7) + "|"]
        copies = {(r["dtype"], r["batch"]): r for r in ops if r["impl"] == COPY}
        keys = []
        for r in ops:
            if "method" in r:
                key = (r["dtype"], r["batch"], r["method"], r["k"], r["mode"])
                if key not in keys:
                    keys.append(key)
        for key in keys:
            cell = {r["impl"]: r for r in ops if "method" in r and (r["dtype"], r["batch"], r["method"], r["k"],
                                                                    r["mode"]) == key}
            fmt = [f"{1e3 * cell[i]['median_s']:.2f}" if i in cell and cell[i]["status"] == "ok" else "–"
                   for i in impls]
            km = cell.get(KMIX, {})
            if not km:
                speed = "dali_kmix not run"
            elif km["status"] != "ok":  # not "no peer can": the peers may well have run
                why = str(km.get("reason") or km["status"]).replace("|", "\\|").replace("\n", " ")
                speed = f"dali_kmix {'failed' if km['status'] == 'error' else km['status']}: {why}"
            elif km.get("vs_closest_peer"):
                ratio = 1 / km["vs_closest_peer"]
                speed = (f"{ratio:.2f}× faster" if ratio >= 1 else f"{1 / ratio:.2f}× slower") + \
                    f" than {km['closest_peer']}" + (" (DALI op)" if km.get("compared_with") == KMIX_DALI else "")
            else:
                speed = "no peer can"
            copy = cell.get(COPY) or copies.get(key[:2])
            lines.append(f"| {key[0]}, {key[1]} | {key[2]} | {key[3]} | {key[4]} | "
                         f"{1e3 * copy['median_s']:.2f} | " + " | ".join(fmt) +
                         f" | {speed} | {km.get('vs_copy', float('nan')):.2f} |")
    pipes = [r for r in rows if r["level"] == "pipeline" and r["status"] == "ok"]
    if pipes:
        lines += ["", "| device | mixing | placement | images/s (median) | min-max | vs no mixing (median of rounds) "
                      "| min-max |", "|---|---|---|---|---|---|---|"]
        for r in pipes:
            name = r["mix"] if r["k"] is None or "K=" in r["mix"] else f"{r['mix'].split(' (')[0]} K={r['k']}" + \
                (f" ({r['mix'].split(' (')[1]}" if " (" in r["mix"] else "")
            lines.append(f"| {r['device']} | {name} | {r.get('placement') or '–'} | {r['images_per_s_median']:.0f} | "
                         f"{r['images_per_s_min']:.0f}-{r['images_per_s_max']:.0f} | "
                         f"{100 * r.get('vs_no_mix', float('nan')):.0f} % | "
                         f"{100 * r.get('vs_no_mix_min', float('nan')):.0f}-"
                         f"{100 * r.get('vs_no_mix_max', float('nan')):.0f} % |")
    scal = [r for r in rows if r["level"] == "scaling"]
    if scal:
        lines += ["", "| scaling | K | batch | copy ms | dali_kmix dmixup ms | dali_kmix dcutmix ms | dmixup / copy | "
                      "dcutmix / copy | dcutmix vs first K | kornia cutmix ms |", "|---" * 10 + "|"]
        for axis in ("k", "batch"):
            pts = sorted({(r["k"], r["batch"]) for r in scal if r["axis"] == axis})
            for k, b in pts:
                def get(impl, method=None, field="median_s", fmt=lambda v: f"{1e3 * v:.2f}"):
                    for r in scal:
                        if r["axis"] == axis and r["k"] == k and r["batch"] == b and r["impl"] == impl and \
                                r.get("method") == method and field in r:
                            return fmt(r[field])
                    return "–"

                def ratio(method, field="vs_copy"):
                    return get(KMIX, method, field, lambda v: f"{v:.2f}")

                lines.append(f"| vs {axis} | {k} | {b} | {get(COPY)} | {get(KMIX, 'dmixup')} | {get(KMIX, 'dcutmix')} | "
                             f"{ratio('dmixup')} | {ratio('dcutmix')} | {ratio('dcutmix', 'vs_first_k')} | "
                             f"{get('kornia', 'dcutmix')} |")
    sal = [r for r in ops if r["impl"].startswith("saliency step")]
    if sal:
        lines += [""] + [f"Saliency step of Saliency-DCutMix ({r['dtype']}, batch {r['batch']}): "
                         f"{1e3 * r['median_s']:.2f} ms per batch" for r in sal]
    return "\n".join(lines)


def plot(rows, path):
    """PNG: dali_kmix and peers at K=2/3, and the scaling with K and batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ops = [r for r in rows if r["level"] == "op" and r.get("status") == "ok" and r.get("dtype") == "float32"]
    if ops:
        b = min(r["batch"] for r in ops)
        sel = [r for r in ops if r["batch"] == b and r.get("mode") == "sample" and r.get("k") in (2, 3)]
        labels = [f"{r['impl']}\n{r['method']} K={r['k']}" for r in sel]
        axes[0].barh(range(len(sel)), [1e3 * r["median_s"] for r in sel],
                     color=["C0" if r["impl"].startswith(KMIX) else "C7" for r in sel])
        axes[0].set_yticks(range(len(sel)), labels, fontsize=6)
        axes[0].set_xscale("log")
        axes[0].set_xlabel(f"ms per batch (float32 CHW, batch {b}, per-sample)")
        copy = [r for r in rows if r["level"] == "op" and r["impl"] == COPY and r["batch"] == b
                and r["dtype"] == "float32"]
        if copy:
            axes[0].axvline(1e3 * copy[0]["median_s"], color="k", ls="--", lw=1, label="copy")
            axes[0].legend(fontsize=7)
    for ax, axis, xlabel in ((axes[1], "k", "K"), (axes[2], "batch", "batch size (K=3)")):
        scal = [r for r in rows if r["level"] == "scaling" and r["axis"] == axis]
        for impl, method, style in ((KMIX, "dmixup", "o-"), (KMIX, "dcutmix", "s-"), ("kornia", "dcutmix", "^--"),
                                    (COPY, None, "k:")):
            pts = sorted((r[axis if axis == "k" else "batch"], 1e3 * r["median_s"]) for r in scal
                         if r["impl"] == impl and r.get("method") == method)
            if pts:
                ax.plot(*zip(*pts), style, label=f"{impl} {method or ''}".strip())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("ms per batch")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(out_dir="benchmarks/results", *, quick=False, data_dir=None, progress=True) -> tuple[Path, list[dict]]:
    """The whole benchmark; returns the JSON path and the rows."""
    from ..pipelines import count_classes, tree_files
    from .data import make_photo_tree

    out_dir = Path(out_dir)  # both checked before the minutes of timing, not after them
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"out_dir (--out) {str(out_dir)!r} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    if data_dir is not None:
        count_classes(data_dir)
        if not tree_files(data_dir):
            raise ValueError(f"data_dir (--data) {str(data_dir)!r} holds no image that readers.file reads")
    started = _dt.datetime.now(_dt.timezone.utc)  # the run's date (and file name): when it started
    t0 = time.perf_counter()
    load_at_start = _load_average()
    if quick:
        rows = bench_ops(batches=(32,), ks=(2, 3), modes=("sample",), repeats=3, progress=progress)
    else:
        rows = bench_ops(progress=progress)
    if data_dir is None:
        data_dir = make_photo_tree(Path(".demo") / ("bench-photos-quick" if quick else "bench-photos"),
                                   images_per_class=12 if quick else 48, size=320)
    for dev in ["cpu"] + (["gpu"] if gpu_available() else []):
        batch = 32 if quick else (256 if dev == "gpu" else 64)  # the GPU target is stated for batch 256
        # the CPU rows' targets are a few points apart: more and longer rounds there (a GPU session is short). On
        # the 2-core machine a 1 s block of the same work varies by about +-13 % (a pure compute loop does too),
        # so a round's ratio by about +-15 points: 25 rounds put the median within about 2 points
        rounds, iters = (1, 3) if quick else ((25, 20) if dev == "cpu" else (7, 12))
        rows += bench_pipeline(data_dir, batch=batch, iters=iters, repeats=rounds, device=dev, progress=progress)
    if gpu_available():
        if quick:
            rows += bench_gpu_ops(batches=(32,), ks=(2, 3), rounds=2, iters=3, progress=progress)
            rows += bench_gpu_scaling(ks=(2, 4, 16), batch=32, rounds=2, iters=3, progress=progress)
        else:
            rows += bench_gpu_ops(progress=progress) + bench_gpu_scaling(progress=progress)
        from ..backends import plugin

        if plugin.gpu_backend():  # the DALI plugin's GPU operators
            rows += bench_native_ops(batch=32 if quick else 256, ks=(3,) if quick else (2, 3, 9),
                                     rounds=2 if quick else 7, iters=3 if quick else 10, progress=progress)
    if quick:
        rows += bench_scaling(ks=(2, 4, 8, 16), batches=(16, 64), k_batch=32, repeats=3, progress=progress)
    else:
        rows += bench_scaling(progress=progress)
    kmixup_rows = []
    try:
        kmixup_rows = bench_kmixup(quick=quick)
    except ImportError as exc:  # timm is not installed: nothing to compare KMixup with
        print(f"KMixup vs timm skipped: {exc}")
    meta = metadata()
    meta["date"], meta["date_end"] = started.isoformat(timespec="seconds"), meta["date"]
    meta["total_s"] = round(time.perf_counter() - t0, 1)
    meta["load_average_at_start"], meta["load_average_at_end"] = load_at_start, meta.pop("load_average")
    stamp = meta["date"].replace(":", "").replace("-", "")[:15]
    path = out_dir / f"bench-{'quick-' if quick else ''}{stamp}.json"
    # one line, no indentation: a full run's every round is some 400 KB so, 500 KB indented (the results are tracked)
    atomic_write(path, json.dumps({"meta": meta, "quick": quick, "rows": rows, "kmixup_vs_timm": kmixup_rows},
                                  separators=(",", ":"), default=str))
    md = format_table(rows)
    gpu_md = format_gpu(rows)
    if gpu_md:
        md += "\n\n**GPU** (CUDA events, interleaved rounds)\n\n" + gpu_md
    if kmixup_rows:
        md += "\n\n**KMixup against timm's Mixup** (torch CPU tensors after the loader)\n\n" + format_markdown(kmixup_rows)
    path.with_suffix(".md").write_text(md + "\n")
    plot(rows, path.with_suffix(".png"))
    return path, rows
