"""Interleaved rounds: how every benchmark of ``kmix bench`` (CPU operators, GPU kernels, native GPU operators,
``KMixup``) and ``benchmarks/profile_cpu.py`` time a group of variants.

Every variant runs once per round, in an order rotated by one each round (none is always first or always after
the same neighbour), so a slow spell of the machine (another tenant, a clock change) slows a whole round and the
ratios taken within a round hold. A variant that raises is dropped with its error; the others go on.

What one timed call is, is the caller's: by default wall-clock seconds around the call, the call repeated so
that one timed call lasts about 20 ms (short calls are timed over several); or a ``timer(fn)`` returning seconds
per call (CUDA events around a window of launches: :meth:`dali_kmix.apps.bench_gpu.CudaDevice.seconds_per_call`).
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["round_order", "calibrated", "interleaved_rounds", "checked_rounds", "round_stats"]


def round_order(names: list, r: int) -> list:
    """The order of round ``r``: ``names`` rotated by ``r``, so no variant is always first or after the same one."""
    if not names:
        return []
    shift = r % len(names)
    return names[shift:] + names[:shift]


def calibrated(fn, warmup: int, target_s: float = 0.02, most: int = 5):
    """``(call, inner)``: ``fn`` after ``warmup`` calls, repeated ``inner`` times in ``call`` so that one timed call
    lasts about ``target_s`` (at most ``most`` times; a callable with a ``kmix_inner`` attribute, such as a
    pipeline runner, keeps its own count): short calls are timed over several, slow ones once."""
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
    callable), in ``rounds`` rotated rounds after ``warmup`` calls each.

    ``timer``: ``timer(fn) -> seconds per call`` of one timed call (it runs ``fn`` as often as it needs); None:
    wall-clock, calibrated (:func:`calibrated`). ``before``: a zero-argument callable run, untimed, before every
    call of every variant (warm-up included), such as restoring an input that the variants write in place; with
    it, each timed call is one call.
    """
    if rounds < 0 or warmup < 0:
        raise ValueError(f"rounds and warmup must be >= 0, got rounds={rounds}, warmup={warmup}")
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
