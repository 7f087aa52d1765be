"""dali_kmix.apps.bench_kmixup: KMixup against timm's Mixup on the same CPU tensors."""

import pytest

pytest.importorskip("timm")


def test_benchmark_quick_rows_and_markdown():
    from dali_kmix.apps.bench_kmixup import bench_kmixup, format_markdown

    rows = bench_kmixup(quick=True, rounds=2, warmup=1, batch=4, size=16)
    assert {(r["mode"], r["method"]) for r in rows} == {(m, x) for m in ("batch", "elem") for x in ("mixup", "cutmix")}
    for r in rows:
        assert min(r["kmixup_ms"], r["kmixup_fresh_ms"], r["timm_ms"]) > 0
        assert r["speedup"] > 0 and r["speedup_fresh"] > 0  # medians of ratios within a round: see below
    md = format_markdown(rows)
    assert md.count("\n") >= len(rows) + 1 and "| elem | cutmix |" in md


def test_the_run_comment_names_a_module_that_runs():
    # the `python -m ...` the module's __main__ block names must be the module itself (dali_kmix.apps.bench_kmixup)
    import importlib.util
    import inspect
    import re

    from dali_kmix.apps import bench_kmixup

    (module,) = re.findall(r"python -m ([\w.]+)", inspect.getsource(bench_kmixup))
    assert module == bench_kmixup.__name__ and importlib.util.find_spec(module) is not None


def test_speedup_is_the_median_of_the_ratios_within_a_round(monkeypatch):
    # the ratio of the medians would take timm's median round (45 ms) over KMixup's (20 ms): 2.25; within each
    # round timm / KMixup is 4, 2.25, 4, so the median is 4 (fresh: 2, 3, 4 -> 3)
    from dali_kmix.apps import bench_kmixup

    times = {"kmixup": [0.010, 0.020, 0.030], "kmixup_fresh": [0.020, 0.015, 0.030], "timm": [0.040, 0.045, 0.120]}
    monkeypatch.setattr(bench_kmixup, "checked_rounds", lambda calls, rounds, warmup, **kw: times)
    rows = bench_kmixup.bench_kmixup(rounds=3, warmup=0, batch=2, size=4)
    assert len(rows) == 4
    for r in rows:
        assert r["kmixup_ms"] == pytest.approx(20) and r["timm_ms"] == pytest.approx(45)
        assert r["speedup"] == pytest.approx(4.0) and r["speedup_fresh"] == pytest.approx(3.0)


@pytest.fixture
def main_calls(monkeypatch):
    from dali_kmix.apps import bench_kmixup

    calls = []
    monkeypatch.setattr(bench_kmixup, "bench_kmixup", lambda **kw: calls.append(kw) or [])
    return calls


@pytest.mark.parametrize("argv, want", [
    ([], dict(quick=False)),
    (["--quick"], dict(quick=True)),
    (["--quick", "--batch", "8", "--size", "32", "--rounds", "3", "--warmup", "0", "--threads", "2"],
     dict(quick=True, batch=8, size=32, rounds=3, warmup=0, threads=2)),
], ids=["full", "quick", "overrides"])
def test_main_passes_its_arguments_on(main_calls, capsys, argv, want):
    from dali_kmix.apps import bench_kmixup

    bench_kmixup.main(argv)
    assert main_calls == [{"batch": None, "size": None, "rounds": None, "warmup": None, "threads": None, **want}]
    assert "| mode | method |" in capsys.readouterr().out


@pytest.mark.parametrize("argv, match", [
    (["--quik"], "unrecognized arguments: --quik"),
    (["extra"], "unrecognized arguments: extra"),
    (["--rounds", "0"], "argument --rounds: must be an integer >= 1, got '0'"),
    (["--warmup", "-1"], "argument --warmup: must be an integer >= 0, got '-1'"),
    (["--batch", "3"], "argument --batch: must be even"),
    (["--batch", "0"], "argument --batch: must be an integer >= 2, got '0'"),
    (["--size", "x"], "argument --size: must be an integer >= 1, got 'x'"),
    (["--threads", "0"], "argument --threads: must be an integer >= 1, got '0'"),
], ids=["typo", "positional", "rounds0", "warmup-negative", "batch-odd", "batch0", "size-not-int", "threads0"])
def test_main_refuses_unknown_flags_and_bad_counts(main_calls, capsys, argv, match):
    from dali_kmix.apps import bench_kmixup

    with pytest.raises(SystemExit):
        bench_kmixup.main(argv)
    assert match in capsys.readouterr().err and main_calls == []  # refused before any run
