"""dali_kmix.apps.timing: interleaved rounds (balanced order, calibration, failures), device timers, untimed set-up."""

import time
from collections import Counter

import numpy as np
import pytest

from dali_kmix.apps import timing


def _variant(seen, name, fail_at=None, sleep=0.021):  # 21 ms: one call fills a timed call (no repeats)
    def fn():
        seen.append(name)
        time.sleep(sleep)
        if fail_at is not None and seen.count(name) >= fail_at:
            raise RuntimeError(f"{name} broke")
    return fn


@pytest.mark.parametrize("names, r, want", [
    (["a", "b", "c"], 0, ["a", "b", "c"]),
    (["a", "b", "c"], 1, ["c", "b", "a"]),  # odd n: the rows interleaved with their mirror images
    (["a", "b", "c"], 2, ["b", "c", "a"]),
    (["a", "b", "c"], 7, ["c", "b", "a"]),  # 2 n = 6 rows, then again
    (["a", "b", "c", "d"], 1, ["b", "d", "a", "c"]),
    ([], 3, []),
], ids=["round0", "round1-mirrored", "round2", "cycles", "even", "empty"])
def test_round_order_examples(names, r, want):
    assert timing.round_order(names, r) == want


@pytest.mark.parametrize("n", range(1, 10))
def test_round_order_is_a_balanced_williams_design(n):
    # every round a permutation, round 0 the names as given; every name first once in any n consecutive rounds;
    # over the design's rounds (n; 2n for an odd n) every ordered pair adjacent within a round equally often and
    # every name equally often in every position; then the design again. A rotation had every name after the same
    # neighbour and some names never first.
    names = [f"v{i}" for i in range(n)]
    length = n if n % 2 == 0 or n == 1 else 2 * n
    rows = [timing.round_order(names, r) for r in range(3 * length)]
    assert rows[0] == names and all(sorted(row) == sorted(names) for row in rows)
    for start in range(2 * length):
        assert Counter(row[0] for row in rows[start:start + n]) == Counter(names), start
    design = rows[:length]
    pairs = Counter((a, b) for row in design for a, b in zip(row, row[1:]))
    assert len(pairs) == n * (n - 1) and set(pairs.values()) <= {length // n}
    for pos in range(n):
        assert set(Counter(row[pos] for row in design).values()) == {length // n}
    assert rows[length:2 * length] == design and timing.round_order(list(names), 2) == rows[2]  # deterministic
    assert names == [f"v{i}" for i in range(n)]  # not reordered in place


def test_interleaved_rounds_balance_the_order_and_keep_failures_apart():
    seen = []
    times, errors = timing.interleaved_rounds(
        {"a": _variant(seen, "a"), "b": _variant(seen, "b"), "c": _variant(seen, "c", fail_at=3)}, rounds=3,
        warmup=1)
    assert errors == {"c": "RuntimeError: c broke"} and set(times) == {"a", "b"}
    assert all(len(ts) == 3 and all(t >= 0.02 for t in ts) for ts in times.values())
    # warm-up a b c; round 0 a b c; round 1 c(fails, dropped) b a; round 2 b (c is gone) a
    assert seen == ["a", "b", "c", "a", "b", "c", "c", "b", "a", "b", "a"]
    seen.clear()  # short calls are repeated within one timed call (here 5 times: 1 ms each, at most 5)
    times, _ = timing.interleaved_rounds({"s": _variant(seen, "s", sleep=0.001)}, rounds=2, warmup=1)
    assert len(seen) == 1 + 2 * 5 and len(times["s"]) == 2 and min(times["s"]) >= 0.001
    times, errors = timing.interleaved_rounds({"x": _variant(seen, "x", fail_at=1)}, rounds=2)
    assert times == {} and "x broke" in errors["x"]


def test_a_timer_times_each_call_and_nothing_is_repeated():
    seen, timed = [], []

    def timer(fn):  # a device's window: it runs fn as often as it likes and says seconds per call
        timed.append(fn)
        fn()
        fn()
        return 0.5 * len(timed)

    times, errors = timing.interleaved_rounds({"a": _variant(seen, "a", sleep=0), "b": _variant(seen, "b", sleep=0)},
                                              rounds=2, warmup=1, timer=timer)
    assert errors == {}
    # warm-up a, b once each (not timed); round 0: a b, round 1: b a, each call of the timer running fn twice
    assert seen == ["a", "b"] + ["a", "a", "b", "b"] + ["b", "b", "a", "a"]
    assert times == {"a": [0.5, 2.0], "b": [1.0, 1.5]}


def test_before_runs_untimed_before_every_call():
    log = []

    def before():
        log.append("before")
        time.sleep(0.03)  # would show in the times if it were timed

    def fn():
        log.append("call")

    times, _ = timing.interleaved_rounds({"f": fn}, rounds=3, warmup=2, before=before)
    assert log == ["before", "call"] * 5  # 2 warm-up + 3 timed calls, one each (no calibrated repeats)
    assert len(times["f"]) == 3 and max(times["f"]) < 0.03


def test_checked_rounds_name_the_failing_variant():
    seen = []
    with pytest.raises(RuntimeError, match=r"GPU kernels, f32: b: RuntimeError: b broke"):
        timing.checked_rounds({"a": _variant(seen, "a", sleep=0), "b": _variant(seen, "b", fail_at=2, sleep=0)},
                              rounds=2, warmup=1, what="GPU kernels, f32", timer=lambda fn: fn() or 1.0)
    assert timing.checked_rounds({"a": _variant(seen, "a", sleep=0)}, rounds=2, warmup=0,
                                 timer=lambda fn: fn() or 1.0) == {"a": [1.0, 1.0]}


@pytest.mark.parametrize("rounds, warmup, timer, match", [
    (-1, 1, None, "rounds must be >= 1, got -1"), (0, 1, None, "rounds must be >= 1, got 0"),
    (2, -3, lambda fn: 1.0, "warmup must be >= 0, got -3"), (2, 0, None, "warmup must be >= 1, got 0"),
], ids=["rounds-negative", "rounds0", "warmup-negative", "nothing-to-calibrate-with"])
def test_bad_counts_are_refused(rounds, warmup, timer, match):
    calls = []
    with pytest.raises(ValueError, match=match):
        timing.interleaved_rounds({"f": lambda: calls.append(1)}, rounds=rounds, warmup=warmup, timer=timer)
    assert calls == []  # refused before any call


def test_difference_stats_name_the_spread_of_a_difference():
    # a pipeline minus the pipeline without the step: a round can go below 0; that is no min of a time per call
    st = timing.difference_stats([0.02, -0.027, 0.01, 0.0])
    assert st == {"median_s": 0.005, "diff_min_s": -0.027, "diff_max_s": 0.02, "nonpositive_rounds": 2, "rounds": 4}
    with pytest.raises(ValueError, match="at least one round"):
        timing.difference_stats([])


def test_round_stats():
    assert timing.round_stats([3.0, 1.0, 2.0, 10.0]) == {"median_s": 2.5, "min_s": 1.0, "max_s": 10.0, "rounds": 4}
    assert timing.round_stats(np.array([0.25]))["median_s"] == 0.25
    with pytest.raises(ValueError, match="at least one round"):
        timing.round_stats([])


def test_a_timer_and_before_together_are_refused():
    # the timer runs fn several times in one window and before would run once per window: no call would be the one
    # timed call each before promises
    calls = []
    with pytest.raises(ValueError, match=r"timer and before cannot both be given"):
        timing.interleaved_rounds({"f": lambda: calls.append("f")}, rounds=2, warmup=1, timer=lambda fn: fn() or 1.0,
                                  before=lambda: calls.append("before"))
    assert calls == []
