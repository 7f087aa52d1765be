"""``KMixup`` against timm's ``Mixup`` on the same CPU tensors (K = 2, the methods both have).

:func:`bench_kmixup` times one call ``x, target = mixer(x, target)`` (images and
soft targets) of three mixers with the same arguments: :class:`dali_kmix.torch.KMixup`
(default, reusing a free earlier output), ``KMixup(reuse_outputs=False)`` and
``timm.data.Mixup``, for modes "batch" and "elem" and for mixup (``mixup_alpha=1``)
and cutmix (``cutmix_alpha=1``). timm mixes in place, so before every timed call
(of any mixer, so all start from the same memory state) the batch is restored
from a pristine copy outside the timed region. After warm-up calls the three mixers
run in interleaved rounds (:mod:`dali_kmix.apps.timing`: the order changes every round)
so that drift in the machine's load hits all alike; each row reports the median and the spread
(interquartile range, and min/max) of the per-call times, and the speedups as medians over
the rounds of the ratios within a round. :func:`format_markdown` renders the rows as a
Markdown table. Run it with ``python -m dali_kmix.apps.bench_kmixup [--quick] [--batch N] ...``
(:func:`main`).
"""

from __future__ import annotations

import argparse

import numpy as np

from .._checks import check_int
from .common import int_at_least
from .timing import checked_rounds

__all__ = ["bench_kmixup", "format_markdown", "main", "FULL", "QUICK"]

MODES = ("batch", "elem")
METHODS = {"mixup": dict(mixup_alpha=1.0, cutmix_alpha=0.0), "cutmix": dict(mixup_alpha=0.0, cutmix_alpha=1.0)}


def _stats(times_s):
    ms = np.asarray(times_s) * 1e3
    q1, med, q3 = np.percentile(ms, [25, 50, 75])
    return {"ms": float(med), "iqr_ms": float(q3 - q1), "min_ms": float(ms.min()), "max_ms": float(ms.max())}


FULL = dict(batch=128, size=224, rounds=15, warmup=2)
QUICK = dict(batch=32, size=112, rounds=5, warmup=1)


def bench_kmixup(*, quick: bool = False, batch: int | None = None, size: int | None = None,
                 rounds: int | None = None, warmup: int | None = None, num_classes: int = 1000,
                 label_smoothing: float = 0.1, seed: int = 0, threads: int | None = None):
    """Time KMixup (k=2) and timm's Mixup on the same float32 ``(batch, 3, size, size)`` CPU batch.

    Args:
        quick: the smaller configuration :data:`QUICK` (batch 32, 3 x 112 x 112, 5 rounds,
            1 warm-up) instead of :data:`FULL` (batch 128, 3 x 224 x 224, 15 timed rounds
            after 2 warm-up calls of each mixer).
        batch, size, rounds, warmup: override single values of that configuration (``batch`` even:
            timm's Mixup mixes pairs; ``rounds`` >= 1).
        threads: ``torch.set_num_threads`` for the run (None: leave it); the KMixup CPU
            kernels use every core of the process's affinity mask.

    Returns:
        One dict per (mode, method): ``mode``, ``method``, ``batch``, ``size``, ``dtype``,
        ``rounds``, ``kmixup_ms`` / ``kmixup_fresh_ms`` / ``timm_ms`` (medians) with
        ``*_iqr_ms``, ``*_min_ms``, ``*_max_ms``, ``speedup``: the median over the rounds of timm's time
        over KMixup's in that round, and ``speedup_fresh``: the same for kmixup_fresh (a ratio of the medians
        could pair times of different rounds). "kmixup" is the default mixer,
        which writes into a free earlier output; "kmixup_fresh" (``reuse_outputs=False``)
        allocates every output, as timm's clone/flip do, and shows what that costs.
    """
    given = dict(batch=batch, size=size, rounds=rounds, warmup=warmup)
    batch, size, rounds, warmup = (v if v is not None else (QUICK if quick else FULL)[k] for k, v in given.items())
    check_int("batch", batch, 2)
    if batch % 2:
        raise ValueError(f"batch must be even (timm's Mixup mixes pairs), got {batch}")
    check_int("size", size, 1)
    check_int("rounds", rounds, 1)
    check_int("warmup", warmup, 0)
    check_int("num_classes", num_classes, 1)
    if threads is not None:
        check_int("threads", threads, 1)
    import torch
    from timm.data import Mixup

    from ..torch import KMixup

    if threads is not None:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    pristine = torch.randn(batch, 3, size, size, generator=gen)
    target = torch.randint(0, num_classes, (batch,), generator=gen)
    x = pristine.clone()
    np.random.seed(seed)  # timm draws from NumPy's global generator
    rows = []
    for mode in MODES:
        for method, alphas in METHODS.items():
            args = dict(alphas, prob=1.0, mode=mode, label_smoothing=label_smoothing, num_classes=num_classes)
            mixers = {"kmixup": KMixup(**args, k=2, seed=seed),
                      "kmixup_fresh": KMixup(**args, k=2, seed=seed, reuse_outputs=False),
                      "timm": Mixup(**args)}
            held = []  # the last call's outputs: freed before the next call, outside the timed region

            def restore():
                held.clear()
                x.copy_(pristine)

            calls = {name: (lambda m=m: held.append(m(x, target))) for name, m in mixers.items()}
            times = checked_rounds(calls, rounds, warmup, before=restore, what=f"KMixup bench, {mode} {method}")
            held.clear()
            row = {"mode": mode, "method": method, "batch": batch, "size": size, "dtype": "float32",
                   "rounds": rounds}
            for name in mixers:
                row.update({f"{name}_{key}": v for key, v in _stats(times[name]).items()})
            timm = np.asarray(times["timm"], dtype=np.float64)
            row["speedup"] = float(np.median(timm / np.asarray(times["kmixup"], dtype=np.float64)))
            row["speedup_fresh"] = float(np.median(timm / np.asarray(times["kmixup_fresh"], dtype=np.float64)))
            rows.append(row)
    return rows


def format_markdown(rows) -> str:
    """A Markdown table of :func:`bench_kmixup` rows (ms per call: median, IQR, min–max)."""
    head = ("| mode | method | batch | image | KMixup ms: median (IQR; min–max) "
            "| KMixup, reuse_outputs=False | timm Mixup ms | KMixup vs timm | KMixup (fresh outputs) vs timm |\n"
            "|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        def cell(p):
            return (f"{r[p + '_ms']:.1f} (IQR {r[p + '_iqr_ms']:.1f}; "
                    f"{r[p + '_min_ms']:.1f}–{r[p + '_max_ms']:.1f})")

        def verdict(sp):
            return f"{sp:.2f}× faster" if sp >= 1 else f"{1 / sp:.2f}× slower"

        lines.append(f"| {r['mode']} | {r['method']} | {r['batch']} | {r['dtype']} 3×{r['size']}² | {cell('kmixup')} "
                     f"| {cell('kmixup_fresh')} | {cell('timm')} | {verdict(r['speedup'])} "
                     f"| {verdict(r['speedup_fresh'])} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    """The command line: :func:`bench_kmixup`'s Markdown table on stdout. Unknown flags and bad counts exit with
    argparse's error (status 2) before anything runs."""
    ap = argparse.ArgumentParser(description="KMixup (k=2) against timm's Mixup on the same CPU tensors: "
                                             "a Markdown table of ms per call.")
    ap.add_argument("--quick", action="store_true",
                    help=f"the smaller configuration {QUICK} instead of {FULL}")
    ap.add_argument("--batch", type=int_at_least(2, even_because="timm's Mixup mixes pairs"),
                    help="batch size (even: timm's Mixup mixes pairs)")
    ap.add_argument("--size", type=int_at_least(1), help="image height and width")
    ap.add_argument("--rounds", type=int_at_least(1), help="timed interleaved rounds")
    ap.add_argument("--warmup", type=int_at_least(0), help="untimed warm-up calls of each mixer")
    ap.add_argument("--threads", type=int_at_least(1), help="torch.set_num_threads for the run (default: leave it)")
    args = ap.parse_args(argv)
    print(format_markdown(bench_kmixup(quick=args.quick, batch=args.batch, size=args.size, rounds=args.rounds,
                                       warmup=args.warmup, threads=args.threads)))


if __name__ == "__main__":
    main()
