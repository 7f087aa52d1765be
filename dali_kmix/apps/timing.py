"""Interleaved rounds: how every benchmark of ``kmix bench`` (CPU operators, GPU kernels, native GPU operators,
``KMixup``) and ``benchmarks/profile_cpu.py`` time a group of variants.

Every variant runs once per round, so a slow spell of the machine (another tenant, a clock change) slows a whole
round and the ratios taken within a round hold. The rounds follow a Williams design (:func:`round_order`): over any
``n`` consecutive rounds of ``n`` variants each variant is first once, and over the design's rounds (``n``, or
``2 n`` for an odd ``n``) each variant directly follows every other one equally often within a round. With fewer
rounds than variants some variants are never first. A variant that raises is dropped with its error; the others go
on.

What one timed call is, is the caller's: by default wall-clock seconds around the call, the call repeated so
that one timed call lasts about 20 ms (short calls are timed over several); or a ``timer(fn)`` returning seconds
per call (CUDA events around a window of launches: :meth:`dali_kmix.apps.bench_gpu.CudaDevice.seconds_per_call`).
"""

from __future__ import annotations

import functools
import time

import numpy as np

from .._checks import check_int

__all__ = ["round_order", "calibrated", "interleaved_rounds", "checked_rounds", "round_stats", "difference_stats"]


@functools.lru_cache(maxsize=None)
def _williams(n: int) -> tuple:
    """The rows of a Williams design (a balanced Latin square) for ``n`` treatments, its first row ``0 .. n-1``.

    Even ``n``: ``n`` rows, each treatment once in every position and each ordered pair of treatments adjacent in
    exactly one row. Odd ``n``: the ``n`` rows and their mirror images, interleaved (row 0, row 0 reversed, row 1,
    ...): ``2 n`` rows, each ordered pair adjacent in exactly two, and the first treatments of any ``n`` consecutive
    rows all different."""
    first = [(j + 1) // 2 if j % 2 else (n - j // 2) % n for j in range(n)]  # 0, 1, n-1, 2, n-2, ...
    rows = [[(v + i) % n for v in first] for i in range(n)]
    if n % 2:
        rows = [row for i in range(n) for row in (rows[i], rows[i][::-1])]
    relabel = {v: j for j, v in enumerate(first)}  # renamed so that row 0 is 0, 1, ..., n-1
    return tuple(tuple(relabel[v] for v in row) for row in rows)


def round_order(names: list, r: int) -> list:
    """The order of round ``r``: row ``r`` of a Williams design over ``names`` (cycled when there are more rounds
    than rows; round 0 is ``names`` as given). Of ``n`` names: over any ``n`` consecutive rounds each name is first
    once; over the design's ``n`` rounds (``2 n`` for an odd ``n``) each ordered pair of names is adjacent within a
    round equally often (once; twice for an odd ``n``), so no name always follows the same one. Deterministic."""
    if not names:
        return []
    rows = _williams(len(names))
    return [names[j] for j in rows[r % len(rows)]]


def calibrated(fn, warmup: int, target_s: float = 0.02, most: int = 5):
    """``(call, inner)``: ``fn`` after ``warmup`` calls (at least one: the last is what calibrates), repeated
    ``inner`` times in ``call`` so that one timed call lasts about ``target_s`` (at most ``most`` times; a callable
    with a ``kmix_inner`` attribute, such as a pipeline runner, keeps its own count): short calls are timed over
    several, slow ones once."""
    check_int("warmup", warmup, 1)
    t = 0.0
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
    if getattr(fn, "kmix_inner", None):
        return fn, fn.kmix_inner
    inner = int(min(most, max(1, target_s // max(t, 1e-9))))
    if inner == 1:
        return fn, 1

    def repeated():
        for _ in range(inner):
            fn()

    return repeated, inner


def interleaved_rounds(variants: dict, rounds: int, warmup: int = 2, *, timer=None,
                       before=None) -> tuple[dict, dict]:
    """``({name: [seconds per call, one per round]}, {name: error})`` for ``variants`` (name -> zero-argument
    callable), in ``rounds`` rounds (ordered by :func:`round_order`) after ``warmup`` calls each.

    ``timer``: ``timer(fn) -> seconds per call`` of one timed call (it runs ``fn`` as often as it needs); None:
    wall-clock, calibrated (:func:`calibrated`). ``before``: a zero-argument callable run, untimed, before every
    call of every variant (warm-up included), such as restoring an input that the variants write in place; with
    it, each timed call is one call. ``timer`` and ``before`` exclude each other (a timer runs ``fn`` several
    times in one window, where ``before`` could not run before each call): a ValueError. ``rounds`` >= 1;
    ``warmup`` >= 0, >= 1 where the calls are calibrated (no ``timer``, no ``before``).
    """
    if timer is not None and before is not None:
        raise ValueError(f"timer and before cannot both be given (a timer runs fn several times per window, before "
                         f"would run once per window), got timer={timer!r}, before={before!r}")
    check_int("rounds", rounds, 1)
    check_int("warmup", warmup, 1 if timer is None and before is None else 0)
    prepared, errors = {}, {}
    for name, fn in variants.items():
        try:
            if before is None and timer is None:
                prepared[name] = calibrated(fn, warmup)
                continue
            for _ in range(warmup):
                if before is not None:
                    before()
                fn()
            prepared[name] = (fn, 1)
        except Exception as exc:  # a variant failing (a peer on a configuration) is a result, not a crash
            errors[name] = f"{type(exc).__name__}: {exc}"
    times = {name: [] for name in prepared}
    order = list(prepared)
    for r in range(rounds):
        for name in round_order(order, r):
            if name in errors:
                continue
            fn, inner = prepared[name]
            try:
                if before is not None:
                    before()
                if timer is not None:
                    times[name].append(timer(fn))
                else:
                    t0 = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - t0) / inner)
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
    return {n: ts for n, ts in times.items() if n not in errors}, errors


def checked_rounds(variants: dict, rounds: int, warmup: int = 2, *, what: str = "variants", **kw) -> dict:
    """:func:`interleaved_rounds` where every variant must run: the times, or a RuntimeError naming each
    variant that raised and its error (a benchmark whose yardstick fails has nothing to report)."""
    times, errors = interleaved_rounds(variants, rounds, warmup, **kw)
    if errors:
        raise RuntimeError(f"{what}: " + "; ".join(f"{name}: {err}" for name, err in errors.items()))
    return times


def round_stats(ts) -> dict:
    """Median, min and max of the seconds per call over the rounds, and the number of rounds."""
    ts = np.asarray(ts, dtype=np.float64)
    if ts.size == 0:
        raise ValueError("round_stats needs at least one round, got none")
    return {"median_s": float(np.median(ts)), "min_s": float(ts.min()), "max_s": float(ts.max()),
            "rounds": int(ts.size)}


def difference_stats(ds) -> dict:
    """The statistics of a time taken as a difference within each round (a pipeline minus the same pipeline without
    the step, a chain of operators minus one): the median, the spread of the difference (``diff_min_s``,
    ``diff_max_s``: it can go to 0 or below where the step is lost in the noise, so it is no min/max of a time per
    call), how many rounds gave 0 or less, and the number of rounds."""
    ds = np.asarray(ds, dtype=np.float64)
    if ds.size == 0:
        raise ValueError("difference_stats needs at least one round, got none")
    return {"median_s": float(np.median(ds)), "diff_min_s": float(ds.min()), "diff_max_s": float(ds.max()),
            "nonpositive_rounds": int((ds <= 0).sum()), "rounds": int(ds.size)}
