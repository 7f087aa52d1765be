"""Where the time of dali_kmix's CPU operators goes, stage by stage (the "CPU profile" of benchmarks/README.md).

Two measures that a loaded machine does not spoil:

* ``ratios`` (default): every stage of a configuration timed in interleaved rounds (each stage once per
  round, in the same process), reported as the median over rounds of its time divided by the time of a
  copy of the same batch in that round (``x.copy()``: it allocates its output, as ``mix_images`` does).
  A slow spell of the machine slows a whole round, so the ratios hold where absolute times do not.
* ``--callgrind STAGE``: the instructions one call of a stage executes, counted by valgrind's callgrind
  (the difference between a run with 1 and with 3 calls, so start-up cancels out). valgrind cannot run
  AVX-512 code, so the kernels are built for this count without it (``-mno-avx512f``, a separate build
  cache); the counts are of that build.

    python benchmarks/profile_cpu.py                      # the array API rows and the saliency step
    python benchmarks/profile_cpu.py --only dcutmix-uint8-128-3-sample --rounds 40
    python benchmarks/profile_cpu.py --callgrind saliency --batch 64
    python benchmarks/profile_cpu.py --cache-model 2 16   # DCutMix's line traffic per row, modelled

A third measure, which no machine spoils: ``--cache-model``, the cache lines a float32 DCutMix row touches and
misses in a model of the host launch's schedule and of each worker's L1 and L2 (:func:`cache_model`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import OrderedDict

import numpy as np

from dali_kmix.apps.common import int_at_least

NUM_CLASSES = 1000
SIZE = 224

#: (method, dtype, batch, K, mode): the operator rows the issue's targets name, and the rows where a peer led.
CONFIGS = [("dcutmix", "uint8", 64, 3, "sample"), ("dcutmix", "uint8", 128, 3, "sample"),
           ("dmixup", "uint8", 128, 3, "sample"), ("dmixup", "float32", 128, 3, "sample"),
           ("dcutmix", "float32", 64, 2, "sample"), ("dcutmix", "float32", 64, 16, "sample"),
           ("dcutmix", "uint8", 32, 2, "batch"), ("dcutmix", "float32", 32, 2, "batch")]


def _batch(dtype, batch, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == "uint8":
        x = rng.integers(0, 256, (batch, SIZE, SIZE, 3), dtype=np.uint8)
    else:
        x = rng.standard_normal((batch, 3, SIZE, SIZE), dtype=np.float32)
    return x, ("HWC" if dtype == "uint8" else "CHW"), rng.integers(0, NUM_CLASSES, batch)


def operator_stages(method, dtype, batch, k, mode="sample"):
    """{stage: zero-argument callable} of one array-API row: what the bench's dali_kmix row calls, by parts."""
    import dali_kmix

    x, layout, labels = _batch(dtype, batch)
    gen = np.random.default_rng(1)
    p = dali_kmix.sample_params(method, batch, SIZE, SIZE, k=k, mode=mode, rng=gen)

    def row():
        q = dali_kmix.sample_params(method, batch, SIZE, SIZE, k=k, mode=mode, rng=gen)
        return dali_kmix.mix_images(x, q, layout), dali_kmix.mix_labels(labels, q, NUM_CLASSES)

    return {"copy": lambda: x.copy(),
            "sample_params": lambda: dali_kmix.sample_params(method, batch, SIZE, SIZE, k=k, mode=mode, rng=gen),
            "mix_images": lambda: dali_kmix.mix_images(x, p, layout),
            "mix_labels": lambda: dali_kmix.mix_labels(labels, p, NUM_CLASSES),
            "row (all three)": row}


def saliency_stages(batch):
    from dali_kmix import saliency

    x, layout, _ = _batch("uint8", batch)
    samples = list(x)
    g = saliency.small_grey(samples, layout)
    return {"copy": lambda: x.copy(),
            "small_grey": lambda: saliency.small_grey(samples, layout),
            "spectral_residual": lambda: saliency.spectral_residual(g),
            "salient_points": lambda: saliency.salient_points(samples, layout)}


def interleaved(stages, rounds, warmup=2):
    """{stage: (median seconds, median of per-round ratios to "copy", 10th-90th percentile of the ratios)}."""
    from dali_kmix.apps.timing import checked_rounds

    times = checked_rounds(stages, rounds, warmup, what="profile stages")
    copy = np.asarray(times["copy"])
    out = {}
    for name, ts in times.items():
        r = np.asarray(ts) / copy
        out[name] = (float(np.median(ts)), float(np.median(r)), float(np.percentile(r, 10)),
                     float(np.percentile(r, 90)))
    return out


def _print(title, res):
    print(f"\n{title}")
    print(f"  {'stage':18s} {'median ms':>10s} {'/ copy':>8s}  10-90 %")
    for name, (t, r, lo, hi) in res.items():
        print(f"  {name:18s} {1e3 * t:10.3f} {r:8.2f}  {lo:.2f}-{hi:.2f}")


# --------------------------------------------------------------------------- cache model of the paste


class _LRU:
    """A fully associative least-recently-used cache of ``lines`` lines (0: every touch misses)."""

    def __init__(self, lines):
        self.lines, self.held, self.misses = lines, OrderedDict(), 0

    def touch(self, key) -> bool:
        if key in self.held:
            self.held.move_to_end(key)
            return True
        self.misses += 1
        if self.lines:
            self.held[key] = None
            if len(self.held) > self.lines:
                self.held.popitem(last=False)
        return False


#: float32 elements in a 64-byte cache line (the cache model's rows start on a line)
_LINE = 16


def paste_runs(params, height, width):
    """Per sample, per image row y: the runs ``(image, first line, last line)`` a DCutMix plane row copies, left
    to right (float32: ``_LINE`` elements a 64-byte line, rows starting on a line), from the record's boxes."""
    out = []
    for s in range(params.n):
        depth = np.zeros((height, width), np.int64)
        for d in range(params.k - 1):
            y0, x0, y1, x1 = (int(v) for v in params.boxes[s, d])
            depth[y0:y1, x0:x1] = d + 1
        image = np.asarray(params.sources[s])[depth]
        rows = []
        for y in range(height):
            cuts = np.flatnonzero(np.diff(image[y])) + 1
            starts, ends = np.r_[0, cuts], np.r_[cuts, width]
            rows.append([(int(image[y, a]), int(a) // _LINE, int(b - 1) // _LINE) for a, b in zip(starts, ends)])
        out.append(rows)
    return out


def cache_model(k, *, batch=64, size=SIZE, channels=3, workers=2, l1_kib=48, l2_kib=2048, samples_first=None,
                seed=1):
    """Line traffic of the host DCutMix of a float32 CHW batch, per output plane row, in a model of its schedule.

    The record is drawn as the bench draws it (sample mode). Each worker has its own fully associative LRU L1
    and L2 (``l1_kib``, ``l2_kib``); a run touches every source line it covers, and every output line of a row
    is written (allocated in both). Chunks of rows are cut as the host launch cuts them
    (``kmix_host_dcutmix_chunks``); with samples first (the launch's choice for this K unless given) chunk c of
    every sample goes to worker c mod ``workers``, else sample s goes to worker s mod ``workers``, chunk by chunk
    (the launch hands out whole claims from a shared counter: the model takes turns instead). Returns
    ``{"touches", "l1_misses", "l2_misses", "unique"}`` per plane row (``unique``: the distinct source lines of
    the batch, what perfect reuse would read)."""
    import dali_kmix
    from dali_kmix.backends import cpu

    params = dali_kmix.sample_params("dcutmix", batch, size, size, k=k, rng=np.random.default_rng(seed))
    runs = paste_runs(params, size, size)
    chunks, launch_first = cpu.host_dcutmix_shape(np.float32, k, size, size, channels, "CHW")
    first = launch_first if samples_first is None else samples_first
    plane_rows = channels * size
    row_lines = -(-size // _LINE)  # the output lines of a plane row
    per_chunk = -(-plane_rows // chunks)
    caches = [(_LRU(l1_kib * 1024 // 64), _LRU(l2_kib * 1024 // 64)) for _ in range(workers)]
    touches, unique = 0, set()
    if first:
        order = [(c, s) for c in range(chunks) for s in range(batch)]
    else:
        order = [(c, s) for s in range(batch) for c in range(chunks)]
    for c, s in order:
        l1, l2 = caches[(c if first else s) % workers]
        for r in range(c * per_chunk, min((c + 1) * per_chunk, plane_rows)):
            y = r % size
            for image, a, b in runs[s][y]:
                for line in range(a, b + 1):
                    key = (image, r, line)
                    touches += 1
                    unique.add(key)
                    if not l1.touch(key):
                        l2.touch(key)
            for line in range(row_lines):
                key = ("out", s, r, line)
                l1.touch(key)
                l2.touch(key)
    n_rows = batch * plane_rows
    out_lines = n_rows * row_lines  # the output's compulsory misses, in both caches
    return {"touches": touches / n_rows, "l1_misses": (sum(c[0].misses for c in caches) - out_lines) / n_rows,
            "l2_misses": (sum(c[1].misses for c in caches) - out_lines) / n_rows, "unique": len(unique) / n_rows}


# --------------------------------------------------------------------------- instruction counts


#: the --callgrind stages of the saliency step ("saliency": its salient_points), which take their batch from --batch
SALIENCY_STAGES = ("saliency", "small_grey", "spectral_residual", "salient_points")
#: the stages of operator_stages a --callgrind name method:dtype:batch:K:mode:stage can end in
OPERATOR_STAGES = ("copy", "sample_params", "mix_images", "mix_labels")


def config_names():
    """The names ``--only`` takes: ``method-dtype-batch-K-mode`` of every configuration, then "saliency"."""
    return [f"{method}-{dtype}-{batch}-{k}-{mode}" for method, dtype, batch, k, mode in CONFIGS] + ["saliency"]


def stage_batch(name, batch):
    """The batch a --callgrind stage runs: ``batch`` (--batch) for a saliency stage, else the one in its name
    ``method:dtype:batch:K:mode:stage``; a ValueError naming the stage where it is neither."""
    if name in SALIENCY_STAGES:
        return batch
    parts = name.split(":")
    if len(parts) == 6 and parts[2].isdigit() and parts[3].isdigit() and int(parts[2]) >= 1 and \
            parts[5] in OPERATOR_STAGES:
        return int(parts[2])
    raise ValueError(f"--callgrind: unknown stage {name!r}: one of {list(SALIENCY_STAGES)} or "
                     f"'method:dtype:batch:K:mode:stage' (stage: {', '.join(OPERATOR_STAGES)})")


def _stage_by_name(name, batch):
    if name in SALIENCY_STAGES:
        stages = saliency_stages(batch)
        return stages["salient_points" if name == "saliency" else name]
    method, dtype, b, k, mode, stage = name.split(":")
    return operator_stages(method, dtype, int(b), int(k), mode)[stage]


def _count(stage, batch, reps):
    """Instructions of a whole run of this script's ``--run-stage`` under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        proc = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                               __file__, "--run-stage", stage, "--batch", str(batch), "--reps", str(reps)],
                              capture_output=True, text=True, env=_callgrind_env())
        m = re.search(r"refs:\s+([\d,]+)", proc.stderr)
        if proc.returncode or not m:
            raise RuntimeError(f"callgrind failed:\n{proc.stderr[-3000:]}")
        return int(m.group(1).replace(",", ""))


def _callgrind_env():
    """The kernels built without AVX-512 (valgrind cannot run it), in a build cache of their own."""
    env = dict(os.environ)
    cache = os.path.join(tempfile.gettempdir(), "dali_kmix_callgrind_cache")
    os.makedirs(cache, exist_ok=True)
    wrapper = os.path.join(cache, "cxx-no-avx512")
    if not os.path.exists(wrapper):
        with open(wrapper, "w") as f:
            f.write(f'#!/bin/sh\nexec {shutil.which(os.environ.get("CXX", "g++"))} "$@" -mno-avx512f\n')
        os.chmod(wrapper, 0o755)
    env.update(CXX=wrapper, DALI_KMIX_CACHE=cache, DALI_KMIX_PLUGIN="0")
    return env


def callgrind(stage, batch):
    """Instructions per call of ``stage`` (runs with 1 and 3 calls; the difference over 2), after one run without
    valgrind that leaves nothing to do once (the build of the kernels, the bytecode caches) to either count."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    subprocess.run([sys.executable, __file__, "--run-stage", stage, "--batch", str(batch)], check=True,
                   capture_output=True, env=_callgrind_env())
    one, three = _count(stage, batch, 1), _count(stage, batch, 3)
    return (three - one) / 2


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int_at_least(1), default=30, help="interleaved rounds (default 30)")
    ap.add_argument("--only", nargs="+", metavar="NAME",
                    help="configurations as method-dtype-batch-K-mode (" + ", ".join(config_names()[:-1])
                         + "), or 'saliency'")
    ap.add_argument("--batch", type=int_at_least(1), default=64,
                    help="batch of the saliency stages only (the saliency step of the ratios; the saliency stages "
                         "of --callgrind); an operator configuration or stage has its batch in its name")
    ap.add_argument("--callgrind", nargs="+", metavar="STAGE",
                    help="count instructions: 'saliency', 'small_grey', 'spectral_residual', 'salient_points' or "
                         "'method:dtype:batch:K:mode:stage' (stage: mix_images, sample_params, mix_labels, copy)")
    ap.add_argument("--cache-model", nargs="*", type=int_at_least(2), metavar="K",
                    help="line traffic of the float32 CHW DCutMix (batch 64) per plane row at these K, in a model "
                         "of the host launch's schedule (cache_model): both orders")
    ap.add_argument("--run-stage", help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int_at_least(1), default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.only is not None:
        valid = config_names()
        unknown = [name for name in args.only if name not in valid]
        if unknown:
            ap.error(f"--only: unknown configuration(s) {', '.join(map(repr, unknown))}; valid: "
                     f"{', '.join(map(repr, valid))}")
    for stage in args.callgrind or []:
        try:
            stage_batch(stage, args.batch)
        except ValueError as exc:
            ap.error(str(exc))
    if args.run_stage:  # the process callgrind runs: warm up once (builds, imports, caches), then the calls
        import gc

        fn = _stage_by_name(args.run_stage, args.batch)
        fn()
        gc.collect()
        gc.disable()  # a collection falls on one count or the other by chance: none in either
        for _ in range(args.reps):
            fn()
        return
    if args.cache_model is not None:
        print("float32 CHW DCutMix, batch 64, 224 x 224, two workers with 48 KiB L1 and 2 MiB L2 each (LRU): "
              "source lines per output plane row")
        for k in args.cache_model or [2, 16]:
            for first in (False, True):
                m = cache_model(k, samples_first=first)
                print(f"  K = {k:2d}, {'samples first' if first else 'sample by sample'}: touched {m['touches']:.1f}, "
                      f"L1 misses {m['l1_misses']:.1f}, L2 misses {m['l2_misses']:.1f}, distinct {m['unique']:.1f}")
        return
    if args.callgrind:
        for stage in args.callgrind:
            print(f"{stage} (batch {stage_batch(stage, args.batch)}): {callgrind(stage, args.batch) / 1e6:.2f} M "
                  "instructions per call")
        return
    import dali_kmix

    print(f"dali_kmix from {os.path.dirname(dali_kmix.__file__)}; load average {os.getloadavg()[0]:.1f}")
    only = set(args.only or [])
    for name, (method, dtype, batch, k, mode) in zip(config_names(), CONFIGS):
        if only and name not in only:
            continue
        _print(f"{method} {dtype} batch {batch} K={k} {mode} (array API)",
               interleaved(operator_stages(method, dtype, batch, k, mode), args.rounds))
    if not only or "saliency" in only:
        _print(f"saliency step, uint8 HWC batch {args.batch}", interleaved(saliency_stages(args.batch), args.rounds))


if __name__ == "__main__":
    main()
