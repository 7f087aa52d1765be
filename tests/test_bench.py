"""The benchmark harness: timing statistics, rows, tables and the JSON record (tiny sizes)."""

import json

import numpy as np
import pytest

from dali_kmix import bench


def test_time_call_statistics():
    calls = []
    t = bench.time_call(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and t["repeats"] == 5
    assert 0 <= t["min_s"] <= t["median_s"] <= t["max_s"]


def test_operator_rows_and_table():
    rows = bench.bench_ops(batch=3, size=17, ks=(2, 3), repeats=2, progress=False)
    impls = {(r["impl"], r.get("method"), r.get("k"), r["dtype"]) for r in rows if r["device"] == "cpu"}
    assert ("copy (yardstick)", None, None, "uint8") in impls
    for dt in ("uint8", "float32"):
        for m in ("dmixup", "dcutmix"):
            assert ("dali_kmix", m, 2, dt) in impls and ("numpy reference", m, 3, dt) in impls
    assert all(r["vs_copy"] > 0 for r in rows if "vs_copy" in r)
    assert ("saliency step (spectral residual)", "saliency-dcutmix", 3, "uint8") in impls
    assert ("dali_kmix", "saliency-dcutmix", 3, "float32") in impls
    table = bench.format_table(rows)
    assert "| cpu | uint8 HWC | dali_kmix | dcutmix | 3 |" in table


def test_pipeline_rows(photo_dir):
    pytest.importorskip("nvidia.dali")
    rows = bench.bench_pipeline(photo_dir, batch=8, size=32, iters=2, repeats=1, progress=False)
    assert [r["mix"] for r in rows] == ["none", "dcutmix", "dmixup", "saliency-dcutmix"]
    assert rows[0]["vs_no_mix"] == 1.0 and all(r["images_per_s_median"] > 0 for r in rows)
    assert "| cpu | dcutmix K=3 |" in bench.format_table(rows)


def test_metadata_is_json():
    meta = json.loads(json.dumps(bench.metadata()))
    assert meta["cpu_cores"] >= 1 and meta["numpy"] == np.__version__
