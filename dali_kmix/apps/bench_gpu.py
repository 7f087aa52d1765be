"""``kmix bench`` on a CUDA device: the blend kernels against a device-to-device copy, and the targets.

1. Kernels (level ``"gpu-op"``): ms per batch of DMixup and DCutMix (224², uint8 HWC and
   float32 CHW, batch sizes, K) on records drawn beforehand, next to a ``cudaMemcpyAsync``
   of the batch. Each row carries the bytes the kernel reads and writes (DCutMix reads each
   output pixel from one source: 2 × the batch, like the copy; DMixup reads K sources:
   (K + 1) × the batch) and ``vs_copy_bandwidth``, its bandwidth as a fraction of the
   copy's. Also per group: the record drawn and nested on the device
   (:func:`~dali_kmix.sampling.sample_params_device`) and the saliency step.
2. Scaling (level ``"gpu-scaling"``): DCutMix and DMixup time over K = 2..16, and
   ``vs_k2``, the time relative to K = 2 in the same round (K = 2 must be among the K timed).
3. Native operators (level ``"gpu-native-op"``, :func:`bench_native_ops`): ``fn.kmix_dmixup`` /
   ``fn.kmix_dcutmix`` (the DALI plugin's GPU backend) in a GPU pipeline over one batch held on
   the device, against ``fn.copy`` of it in the same kind of pipeline. Each operator is chained
   ``length`` times and the pipeline with one subtracted, so what is left is the operator's own
   time (launch, the record's one host-to-device copy, the kernel), not the pipeline's or Python's.
   A difference can go to 0 or below in a round: its spread is ``diff_min_s``/``diff_max_s``
   (:func:`~dali_kmix.apps.timing.difference_stats`), not a min/max of a time.
4. :func:`gpu_targets`: the targets of the GPU issue, measured against the rows (the
   pipeline target from :func:`dali_kmix.apps.bench.bench_pipeline` on the GPU, batch 256: the
   "mixed" pipeline with the native operator, with the ``python_function`` path and without mixing,
   in interleaved rounds).

Timing: CUDA events around ``iters`` launches on the current stream; every variant of a
group is timed once per round, rounds interleaved in a balanced order
(:mod:`dali_kmix.apps.timing`, as the CPU rows), so a clock or a neighbour that changes
during the run touches every variant alike; medians and ratios are taken per round. A kernel
row times a prepared launch (:meth:`dali_kmix.backends.Backend.prepare_blend`): the per-sample
pointer arrays, their host-to-device copies and the record on the device are made once, before
the window, so nothing but the kernel launches lies between the two events. The window is
queued behind a short "hold" kernel (the GPU sleeps while the host queues the launches), so
the launches run back to back and the events measure the device, not the Python that queues
them; a window the GPU reached before the host had queued it all is timed again with a longer
hold. The record and saliency rows time the whole call, Python included (what a pipeline pays):
the wall clock around ``iters`` calls, the device synchronised before and after the window
(:meth:`CudaDevice.wall_seconds_per_call`; each row's ``timing`` says which). The device is a
parameter (:class:`CudaDevice` by default), so the logic of this module is tested on the CPU
with a host stand-in; the GPU run itself is a ``gpu`` test.
"""

from __future__ import annotations

import time

import numpy as np

from ..record import MixParams
from ..saliency import salient_points
from ..sampling import sample_params
from .._checks import check_choice, check_choices, check_int, check_ints
from .peers import DTYPES, METHODS, Config, make_batch
from .timing import checked_rounds, difference_stats, round_stats

__all__ = ["CudaDevice", "DaliChains", "bench_gpu_ops", "bench_gpu_scaling", "bench_native_ops", "gpu_targets",
           "format_gpu", "TARGETS"]

COPY = "copy (yardstick)"
KMIX = "dali_kmix"
RECORD = "record on the device"
SALIENCY = "saliency step (spectral residual)"

#: The issue's targets: DCutMix ≥ 70 % of the copy's bandwidth, DMixup K=3 ≥ 50 %, DCutMix flat in K
#: (here: no K up to 16 slower than 1.25 × K = 2), the "mixed" pipeline with mixing ≥ 97 % of without.
TARGETS = {"dcutmix_vs_copy": 0.70, "dmixup_k3_vs_copy": 0.50, "dcutmix_flat_in_k": 1.25, "pipeline_vs_no_mix": 0.97}


#: How each row was timed: the kernels by the device's events, the record and saliency rows by the wall clock.
EVENT_TIMING = "CUDA events around the launches, behind a hold kernel (device time)"
WALL_TIMING = "wall clock around the calls, the device synchronised before and after (Python included)"


#: A one-thread kernel that sleeps about ``ns`` nanoseconds: the GPU waits behind it while the host queues a window.
_HOLD_SOURCE = r"""
extern "C" __global__ void kmix_bench_hold(long long ns) {
  for (long long t = 0; t < ns; t += 100000) __nanosleep(100000);
}
"""


class CudaDevice:
    """CuPy arrays, the CUDA kernels, CUDA-event timing on the current stream.

    ``hold_s``: how long the GPU waits behind the hold kernel before each timed window (grown when a
    window starts before the host has queued it all).
    """

    name = "gpu"

    def __init__(self, seed: int = 0, hold_s: float = 2e-3):
        import cupy

        from ..backends import GpuBackend

        self.xp = cupy
        self.backend = GpuBackend()
        self._gen = cupy.random.default_rng(seed)
        self._hold = cupy.RawKernel(_HOLD_SOURCE, "kmix_bench_hold")
        self.hold_s = hold_s

    def to_device(self, a):
        return self.xp.asarray(a)

    def params(self, p: MixParams) -> MixParams:
        return MixParams(*(None if a is None else self.xp.asarray(a) for a in (p.sources, p.weights, p.boxes)))

    def prepare_copy(self, out, x):
        """A call that copies ``x`` into ``out`` (device to device, on the current stream) and does nothing else."""
        from ..backends.gpu import _data_ptr

        rt = self.xp.cuda.runtime
        args = (_data_ptr(out), _data_ptr(x), x.nbytes, rt.memcpyDeviceToDevice,
                self.xp.cuda.get_current_stream().ptr)
        return lambda: rt.memcpyAsync(*args)

    def record(self, method, n, h, w, k):
        from ..sampling import sample_params_device

        return sample_params_device(self._gen, method, n, h, w, k, np.ones(k), "sample", 1.0)

    def seconds_per_call(self, fn, iters: int, retries: int = 3) -> float:
        cuda = self.xp.cuda
        for attempt in range(retries + 1):
            start, end = cuda.Event(), cuda.Event()
            self._hold((1,), (1,), (np.int64(self.hold_s * 1e9),))
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            starved = start.done  # the GPU got to the window before the host had queued all of it
            end.synchronize()
            if not starved or attempt == retries:
                return cuda.get_elapsed_time(start, end) / 1e3 / iters
            self.hold_s *= 4

    def wall_seconds_per_call(self, fn, iters: int) -> float:
        """Seconds per call of ``iters`` calls by the wall clock, the device synchronised before and after the
        window: the whole call, Python included, and the device work it queued (what a pipeline pays for it)."""
        return _synced_wall_seconds(fn, iters, self.xp.cuda.Device().synchronize)


def _synced_wall_seconds(fn, iters: int, sync, every_call: bool = False) -> float:
    """Wall-clock seconds per call of ``iters`` calls of ``fn``, ``sync()`` (the device's) before the window and
    after it, or after every call with ``every_call``."""
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
        if every_call:
            sync()
    if not every_call:
        sync()
    return (time.perf_counter() - t0) / iters


def _wall_clock(fn):
    """``fn`` marked to be timed by the wall clock, Python included (:meth:`CudaDevice.wall_seconds_per_call`),
    not by the device's events."""
    fn.kmix_wall_clock = True
    return fn


def _timer(device, iters):
    """``timer(fn)``: seconds per call of a window of ``iters`` calls, by the device's events, or by the wall clock
    for a function marked by :func:`_wall_clock`."""
    def timer(fn):
        if getattr(fn, "kmix_wall_clock", False):
            return device.wall_seconds_per_call(fn, iters)
        return device.seconds_per_call(fn, iters)

    return timer


def _rounds(device, variants: dict, rounds: int, iters: int, warmup: int, what: str) -> dict:
    """``{name: [seconds per call, one per round]}``: interleaved rounds (:mod:`dali_kmix.apps.timing`), each timed
    call a window of ``iters`` calls timed by the device (:func:`_timer`); a variant that raises fails the group,
    naming it."""
    return checked_rounds(variants, rounds, warmup, what=what, timer=_timer(device, iters))


def _check_counts(rounds, iters, warmup, size):
    check_int("rounds", rounds, 1)
    check_int("iters", iters, 1)
    check_int("warmup", warmup, 0)
    check_int("size", size, 1)


def _ratio_stats(prefix, ratios) -> dict:
    r = np.asarray(ratios, dtype=np.float64)
    return {prefix: float(np.median(r)), f"{prefix}_min": float(r.min()), f"{prefix}_max": float(r.max())}


def kernel_bytes(method: str | None, k: int, batch_nbytes: int) -> int:
    """Bytes a kernel reads plus writes for one batch: the copy and DCutMix 2 ×, DMixup (K + 1) ×."""
    return (k + 1) * batch_nbytes if method == "dmixup" else 2 * batch_nbytes


def _device_batch(device, cfg: Config, seed: int):
    """``(x, out)``: the config's random batch on the device and an output batch like it."""
    host, _ = make_batch(cfg, seed)
    x = device.to_device(host)
    return x, device.xp.empty_like(x)


def _blend(device, samples, outs, method, k, size, layout, seed):
    """A call that blends ``samples`` into ``outs``: the record drawn beforehand and moved to the device, the
    launch prepared (pointer arrays built and copied once), so calling it only launches the kernel."""
    p = device.params(sample_params(method, len(samples), size, size, k=k, rng=seed + k))
    return device.backend.prepare_blend(samples, outs, p, layout)


def bench_gpu_ops(*, dtypes=("uint8", "float32"), batches=(32, 128, 256), ks=(2, 3, 5, 9),
                  methods=("dmixup", "dcutmix"), size=224, rounds=7, iters=20, warmup=3, seed=0,
                  progress=True, device=None) -> list[dict]:
    """Kernel rows (level ``"gpu-op"``) for every dtype × batch × method × K, with the copy of the batch."""
    from tqdm import tqdm

    check_choices("dtypes", dtypes, DTYPES)
    check_ints("batches", batches, 1)
    check_ints("ks", ks, 2)
    check_choices("methods", methods, METHODS)
    _check_counts(rounds, iters, warmup, size)
    device = device or CudaDevice(seed)
    rows = []
    groups = [(dt, b) for dt in dtypes for b in batches]
    for dt, b in tqdm(groups, desc="GPU kernels", disable=not progress):
        cfg = Config("dcutmix", 3, "sample", dt, b, size)
        x, out = _device_batch(device, cfg, seed)
        samples, outs = list(x), list(out)
        variants = {(COPY, None, 0): device.prepare_copy(out, x)}
        for method in methods:
            for k in ks:
                variants[(KMIX, method, k)] = _blend(device, samples, outs, method, k, size, cfg.layout, seed)
        variants[(RECORD, "dcutmix", 3)] = _wall_clock(lambda: device.record("dcutmix", b, size, size, 3))
        variants[(SALIENCY, None, 0)] = _wall_clock(lambda: salient_points(samples, cfg.layout))
        times = _rounds(device, variants, rounds, iters, warmup, f"GPU kernels, {dt} batch {b}")
        copy_t = np.asarray(times[(COPY, None, 0)])
        base = {"level": "gpu-op", "device": device.name, "dtype": dt, "layout": cfg.layout, "batch": b,
                "size": size, "status": "ok"}
        for (impl, method, k), ts in times.items():
            row = {**base, "impl": impl, **round_stats(ts),
                   "timing": WALL_TIMING if impl in (RECORD, SALIENCY) else EVENT_TIMING}
            if impl in (COPY, KMIX):
                nbytes = kernel_bytes(method, k, x.nbytes)
                row["bytes"] = nbytes
                row["gb_per_s"] = nbytes / row["median_s"] / 1e9
                row.update(_ratio_stats("vs_copy_bandwidth",
                                        (nbytes / np.asarray(ts)) / (2 * x.nbytes / copy_t)))
            if method is not None:
                row.update(method=method, k=k)
            rows.append(row)
    return rows


def bench_gpu_scaling(*, ks=(2, 3, 4, 6, 8, 12, 16), batch=128, size=224, dtype="float32", rounds=7, iters=20,
                      warmup=3, seed=0, progress=True, device=None) -> list[dict]:
    """Kernel time versus K (level ``"gpu-scaling"``), with ``vs_k2``: the time over K = 2's, per round (``ks``
    must hold 2)."""
    ks = check_ints("ks", ks, 2)
    if 2 not in ks:
        raise ValueError(f"ks must hold 2 (vs_k2 is the time over K = 2's), got {ks!r}")
    check_int("batch", batch, 1)
    check_choice("dtype", dtype, DTYPES)
    _check_counts(rounds, iters, warmup, size)
    device = device or CudaDevice(seed)
    cfg = Config("dcutmix", ks[0], "sample", dtype, batch, size)
    x, out = _device_batch(device, cfg, seed)
    samples, outs = list(x), list(out)
    variants = {(method, k): _blend(device, samples, outs, method, k, size, cfg.layout, seed)
                for method in ("dcutmix", "dmixup") for k in ks}
    times = _rounds(device, variants, rounds, iters, warmup, f"GPU scaling, {dtype} batch {batch}")
    rows = []
    for (method, k), ts in times.items():
        k2 = np.asarray(times[(method, 2)])
        rows.append({"level": "gpu-scaling", "device": device.name, "impl": KMIX, "method": method, "k": k,
                     "batch": batch, "dtype": dtype, "size": size, "status": "ok", **round_stats(ts),
                     **_ratio_stats("vs_k2", np.asarray(ts) / k2)})
    return rows


def _bandwidth_targets(ops, prefix) -> list[dict]:
    """The copy-bandwidth targets over the kernel (or native operator) rows of the largest batch."""
    out = []
    if ops:
        top = max(r["batch"] for r in ops)
        for method, ks, key, label in (("dcutmix", None, "dcutmix_vs_copy", "DCutMix blend"),
                                       ("dmixup", (3,), "dmixup_k3_vs_copy", "DMixup K=3 blend")):
            sel = [r for r in ops if r["method"] == method and r["batch"] == top and (ks is None or r["k"] in ks)]
            if not sel:
                continue
            worst = min(sel, key=lambda r: r["vs_copy_bandwidth"])
            measured = ", ".join(f"{r['dtype']} K={r['k']}: {100 * r['vs_copy_bandwidth']:.0f} %" for r in sel)
            out.append({"target": f"{prefix}{label} ≥ {100 * TARGETS[key]:.0f} % of the copy bandwidth (batch {top})",
                        "measured": measured, "worst": worst["vs_copy_bandwidth"],
                        "met": worst["vs_copy_bandwidth"] >= TARGETS[key]})
    return out


# --------------------------------------------------------------------------- the native operators (DALI plugin)

NATIVE = "fn.kmix_* (native GPU operator)"
NATIVE_COPY = "fn.copy (yardstick)"


class DaliChains:
    """Native operator rows on a CUDA device: one GPU pipeline per variant, ``length`` operators in a row over one
    batch held on the device (``external_source(device="gpu", no_copy=True)``), its record as constant CPU inputs;
    seconds per ``pipe.run()``, the device synchronised after each (wall clock)."""

    name = "gpu"

    def __init__(self, threads: int = 4):
        import cupy

        self.xp, self.threads = cupy, threads

    def to_device(self, a):
        return self.xp.asarray(a)

    def pipeline(self, samples, record, op, layout, length):
        """A function running one iteration of ``op`` (``"kmix_dcutmix"``..., None: ``fn.copy``) chained ``length``
        times."""
        from nvidia.dali import Pipeline, fn

        pipe = Pipeline(batch_size=len(samples), num_threads=self.threads, device_id=0, prefetch_queue_depth=1,
                        seed=0)
        with pipe:
            x = fn.external_source(source=lambda: samples, batch=True, device="gpu", layout=layout, no_copy=True)
            rec = [fn.external_source(source=(lambda a=a: list(a)), batch=True) for a in record]
            for _ in range(length):
                x = fn.copy(x) if op is None else getattr(fn, op)(x, *rec, layout=layout)
            pipe.set_outputs(x)
        pipe.build()
        return pipe.run

    def seconds_per_call(self, fn, iters: int) -> float:
        return _synced_wall_seconds(fn, iters, self.xp.cuda.Device().synchronize, every_call=True)


def _record_inputs(method, n, size, k, seed):
    """The CPU record inputs of fn.kmix_<method> for a batch of n images of size x size (drawn once)."""
    p = sample_params(method, n, size, size, k=k, rng=seed + k)
    return [p.sources, p.weights if method == "dmixup" else p.boxes]


def bench_native_ops(*, dtypes=("uint8", "float32"), batch=256, ks=(2, 3, 9), methods=("dmixup", "dcutmix"),
                     size=224, length=8, rounds=7, iters=10, warmup=2, seed=0, progress=True,
                     device=None) -> list[dict]:
    """Native operator rows (level ``"gpu-native-op"``): per operator, (time of ``length`` in a row - time of one) /
    (``length`` - 1) in the same round, against ``fn.copy`` measured alike; bandwidth as a fraction of the copy's.
    The difference's spread over the rounds is ``diff_min_s``/``diff_max_s`` (it can go to 0 or below)."""
    from tqdm import tqdm

    if length < 2:
        raise ValueError(f"length must be >= 2 (the chain minus one operator is what is timed), got {length}")
    check_choices("dtypes", dtypes, DTYPES)
    check_int("batch", batch, 1)
    check_ints("ks", ks, 2)
    check_choices("methods", methods, METHODS)
    _check_counts(rounds, iters, warmup, size)
    device = device or DaliChains()
    rows = []
    for dt in tqdm(dtypes, desc="GPU native operators", disable=not progress):
        cfg = Config("dcutmix", 3, "sample", dt, batch, size)
        host, _ = make_batch(cfg, seed)
        samples = list(device.to_device(host))
        kinds = [(NATIVE_COPY, None, 0)] + [(NATIVE, m, k) for m in methods for k in ks]
        variants = {}
        for impl, method, k in kinds:
            record = [] if method is None else _record_inputs(method, batch, size, k, seed)
            for n_ops in (1, length):
                variants[(impl, method, k, n_ops)] = device.pipeline(
                    samples, record, None if method is None else f"kmix_{method}", cfg.layout, n_ops)
        times = _rounds(device, variants, rounds, iters, warmup, f"GPU native operators, {dt} batch {batch}")
        per_op = {kind: (np.asarray(times[kind + (length,)]) - np.asarray(times[kind + (1,)])) / (length - 1)
                  for kind in kinds}
        copy_t = per_op[(NATIVE_COPY, None, 0)]
        for (impl, method, k), ts in per_op.items():
            nbytes = kernel_bytes(method, k, host.nbytes)
            row = {"level": "gpu-native-op", "device": device.name, "impl": impl, "dtype": dt, "layout": cfg.layout,
                   "batch": batch, "size": size, "chain": length, "status": "ok", **difference_stats(ts),
                   "bytes": nbytes,
                   "timing": "pipeline runs, chain of operators minus one, interleaved rounds"}
            row["gb_per_s"] = nbytes / row["median_s"] / 1e9 if row["median_s"] > 0 else float("nan")
            row.update(_ratio_stats("vs_copy_bandwidth", (nbytes / ts) / (2 * host.nbytes / copy_t)))
            if method is not None:
                row.update(method=method, k=k)
            rows.append(row)
    return rows


def gpu_targets(rows) -> list[dict]:
    """``[{"target", "measured", "met"}]`` for the GPU targets that ``rows`` hold figures for."""
    out = _bandwidth_targets([r for r in rows if r["level"] == "gpu-op" and r["impl"] == KMIX], "")
    out += _bandwidth_targets([r for r in rows if r["level"] == "gpu-native-op" and r["impl"] == NATIVE],
                              "native operator ")
    scal = [r for r in rows if r["level"] == "gpu-scaling" and r["method"] == "dcutmix"]
    if any(r["k"] == 2 for r in scal):  # vs_k2 is over K = 2's time
        worst = max(scal, key=lambda r: r["vs_k2"])
        ks = sorted(r["k"] for r in scal)
        out.append({"target": f"DCutMix time flat in K ({ks[0]}…{ks[-1]}): ≤ {TARGETS['dcutmix_flat_in_k']:.2f} × K=2",
                    "measured": f"slowest K={worst['k']}: {worst['vs_k2']:.2f} × K=2", "worst": worst["vs_k2"],
                    "met": worst["vs_k2"] <= TARGETS["dcutmix_flat_in_k"]})
    pipes = [r for r in rows if r["level"] == "pipeline" and r.get("device") == "gpu" and r.get("status") == "ok"
             and r["mix"].startswith("dali_kmix") and "vs_no_mix" in r and r.get("path") != "function"]
    if pipes:
        worst = min(pipes, key=lambda r: r["vs_no_mix"])
        native = " (native operator)" if all(r.get("path") == "native" for r in pipes) else ""
        out.append({"target": f"\"mixed\" pipeline with mixing{native} ≥ {100 * TARGETS['pipeline_vs_no_mix']:.0f} % "
                              f"of without (batch {pipes[0].get('batch')})",
                    "measured": ", ".join(f"{r['mix']}: {100 * r['vs_no_mix']:.0f} %" for r in pipes),
                    "worst": worst["vs_no_mix"], "met": worst["vs_no_mix"] >= TARGETS["pipeline_vs_no_mix"]})
    return out


def format_gpu(rows) -> str:
    """Markdown: the kernel table, the K scaling and the targets ("" when ``rows`` hold no GPU figures)."""
    lines = []
    ops = [r for r in rows if r["level"] in ("gpu-op", "gpu-native-op")]
    if ops:
        lines += ["| dtype, batch | kernel | K | ms per batch (median; min–max) | GB/s | vs copy bandwidth (min–max) |",
                  "|---|---|---|---|---|---|"]
        for r in ops:
            name = f"{r['impl']} {r['method']}" if r["impl"] in (KMIX, RECORD, NATIVE) else r["impl"]
            if "diff_min_s" in r:  # a difference within a round (chain minus one): its spread, which can go below 0
                ms = f"{1e3 * r['median_s']:.3f} (difference {1e3 * r['diff_min_s']:.3f}–{1e3 * r['diff_max_s']:.3f})"
            else:
                ms = f"{1e3 * r['median_s']:.3f} ({1e3 * r['min_s']:.3f}–{1e3 * r['max_s']:.3f})"
            gbs = f"{r['gb_per_s']:.0f}" if "gb_per_s" in r else "–"
            bw = (f"{100 * r['vs_copy_bandwidth']:.0f} % ({100 * r['vs_copy_bandwidth_min']:.0f}–"
                  f"{100 * r['vs_copy_bandwidth_max']:.0f} %)") if "vs_copy_bandwidth" in r else "–"
            lines.append(f"| {r['dtype']}, {r['batch']} | {name} | {r.get('k') or '–'} | {ms} | {gbs} | {bw} |")
    scal = [r for r in rows if r["level"] == "gpu-scaling"]
    if scal:
        lines += ["", "| GPU scaling | K | batch | ms per batch (median) | vs K=2 (min–max) |", "|---|---|---|---|---|"]
        for r in scal:
            lines.append(f"| {r['method']} ({r['dtype']}) | {r['k']} | {r['batch']} | {1e3 * r['median_s']:.3f} | "
                         f"{r['vs_k2']:.2f} ({r['vs_k2_min']:.2f}–{r['vs_k2_max']:.2f}) |")
    targets = gpu_targets(rows)
    if targets:
        lines += ["", "| GPU target | measured | met? |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |" for t in targets]
    return "\n".join(lines)
