"""dali_kmix.apps.bench_kmixup: KMixup against timm's Mixup on the same CPU tensors."""

import pytest

pytest.importorskip("timm")


def test_benchmark_quick_rows_and_markdown():
    from dali_kmix.apps.bench_kmixup import bench_kmixup, format_markdown

    rows = bench_kmixup(quick=True, rounds=2, warmup=1, batch=4, size=16)
    assert {(r["mode"], r["method"]) for r in rows} == {(m, x) for m in ("batch", "elem") for x in ("mixup", "cutmix")}
    for r in rows:
        assert min(r["kmixup_ms"], r["kmixup_fresh_ms"], r["timm_ms"]) > 0
        assert r["speedup"] == pytest.approx(r["timm_ms"] / r["kmixup_ms"])
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
