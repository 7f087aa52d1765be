"""The benchmark harness: statistics, the peer matrix (with reasons), DALI-native compositions, tables (tiny sizes)."""

import json
import os

import numpy as np
import pytest

from dali_kmix.apps import bench, peers


def test_time_call_statistics():
    calls = []
    t = bench.time_call(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and t["repeats"] == 5
    assert 0 <= t["min_s"] <= t["median_s"] <= t["max_s"]


def test_ratios_are_medians_of_ratios_within_a_round():
    # a slow round slows every variant in it: within-round ratios see dali_kmix at 1/2 of the peer every round,
    # while the medians of the raw times (taken from different rounds) would say 2x slower
    base = {"level": "op", "device": "cpu", "dtype": "uint8", "batch": 8, "method": "dcutmix", "k": 3,
            "mode": "sample", "status": "ok"}
    rounds = {bench.KMIX: [1.0, 10.0, 11.0], "timm FastCollateMixup": [2.0, 20.0, 1.0],
              bench.COPY: [0.5, 5.0, 5.5]}
    rows = [{**base, "impl": impl, "median_s": float(np.median(ts)), "round_s": ts} for impl, ts in rounds.items()]
    bench._add_ratios(rows)
    km = rows[0]
    assert km["vs_fastest_peer"] == 0.5 and km["vs_copy"] == 2.0
    assert km["median_s"] / rows[1]["median_s"] == 5.0  # what the medians alone would have said


def test_capability_matrix_reports_reasons():
    c = peers.Config("dcutmix", 3, "sample", "float32", 8, 16)
    assert peers.can("dali_kmix", c) is None
    assert "K>2" in peers.can("timm Mixup (elem)", c)
    assert peers.can("kornia", c) is None  # RandomCutMixV2(num_mix=2)
    assert "HWC only" in peers.can("DALI native", c)
    b = peers.Config("dmixup", 2, "sample", "float32", 8, 16)
    assert "one share per batch" in peers.can("torchvision v2", b)
    assert peers.can("timm Mixup (elem)", b) is None
    u = peers.Config("dmixup", 2, "batch", "uint8", 8, 16)
    assert "float" in peers.can("kornia", u) and peers.can("timm FastCollateMixup", u) is None


@pytest.mark.parametrize("cfg", [peers.Config("dmixup", 2, "sample", "float32", 8, 16),
                                 peers.Config("dcutmix", 2, "batch", "float32", 8, 16),
                                 peers.Config("dcutmix", 3, "sample", "float32", 8, 16),
                                 peers.Config("dcutmix", 2, "sample", "uint8", 8, 16)], ids=str)
def test_every_runnable_peer_runs(cfg):
    pytest.importorskip("timm")
    pytest.importorskip("kornia")
    x, labels = peers.make_batch(cfg)
    ran = 0
    for peer in peers.PEERS:
        if peers.can(peer, cfg) is None and peer != "DALI native":
            peers.peer_callable(peer, cfg, x, labels)()
            ran += 1
    assert ran >= 2


@pytest.mark.parametrize("method,dtype", [("dmixup", "uint8"), ("dmixup", "float32"), ("dcutmix", "uint8")])
def test_dali_native_compositions_mix_like_dali_kmix(method, dtype):
    pytest.importorskip("nvidia.dali")
    cfg = peers.Config(method, 3, "sample", dtype, 6, 12)
    # constant images: value i for sample i, so the output shows who was mixed with whom
    shape = cfg.shape[1:]
    x = np.stack([np.full(shape, 10 * i + 5, np.uint8 if dtype == "uint8" else np.float32) for i in range(6)])
    labels = np.arange(6)
    pipe = peers.dali_native_pipeline(cfg, x, labels, variant="native")
    pipe.build()
    out = pipe.run()
    images = out[0].as_array()
    if method == "dcutmix":
        ids = out[2].as_array()
        for i in range(6):
            assert set(np.unique(images[i]) // 10) <= set(ids[i].tolist())
            assert ids[i][0] == i
    else:
        perms = [o.as_array().reshape(-1) for o in out[2:4]]
        w = np.stack([o.as_array().reshape(-1) for o in out[4:7]], axis=1)
        src = np.stack([np.arange(6)] + perms, axis=1)
        expect = (w * (10 * src + 5)).sum(1)
        np.testing.assert_allclose(images.reshape(6, -1).mean(1), expect, atol=0.6)


def test_operator_rows_ratios_and_table():
    pytest.importorskip("timm")
    pytest.importorskip("nvidia.dali")
    rows = bench.bench_ops(batches=(4,), ks=(2, 3), modes=("sample",), size=16, repeats=2, progress=False)
    by = {(r["impl"], r.get("method"), r.get("k"), r["dtype"]): r for r in rows}
    for dt in ("uint8", "float32"):  # the copy timed in the rounds of every configuration, every row per round
        for m in ("dmixup", "dcutmix"):
            for k in (2, 3):
                assert by[("copy (yardstick)", m, k, dt)]["status"] == "ok"
                assert len(by[("copy (yardstick)", m, k, dt)]["round_s"]) == 2
                assert len(by[("dali_kmix", m, k, dt)]["round_s"]) == 2
                assert by[("dali_kmix (DALI op)", m, k, dt)]["timing"] == "interleaved rounds"
    for dt in ("uint8", "float32"):
        for m in ("dmixup", "dcutmix"):
            assert by[("dali_kmix", m, 3, dt)]["status"] == "ok"
            assert by[("dali_kmix (DALI op)", m, 3, dt)]["status"] == "ok"
    assert by[("timm Mixup (elem)", "dmixup", 3, "float32")]["status"] == "n/a"
    assert "K>2" in by[("timm Mixup (elem)", "dmixup", 3, "float32")]["reason"]
    assert by[("DALI native", "dcutmix", 3, "uint8")]["status"] == "ok"
    assert by[("dali_kmix", "dmixup", 2, "float32")]["fastest_peer"]
    assert not [r for r in rows if r["status"] == "error"], [r for r in rows if r["status"] == "error"]
    table = bench.format_table(rows)
    assert "| float32, 4 | dcutmix | 3 | sample |" in table and "Saliency step" in table


def test_pipeline_rows(photo_dir):
    pytest.importorskip("nvidia.dali")
    pytest.importorskip("timm")
    rows = bench.bench_pipeline(photo_dir, batch=8, size=32, iters=2, repeats=1, progress=False)
    assert [r["mix"] for r in rows] == ["none", "dali_kmix dcutmix", "dali_kmix dmixup", "dali_kmix saliency-dcutmix",
                                        "dali_kmix dcutmix (float32 CHW, after normalise)",
                                        "dali_kmix dmixup (float32 CHW, after normalise)", "DALI native cutmix",
                                        "DALI native mixup", "timm Mixup after the iterator (K=2)"]
    assert rows[1]["placement"] == "uint8 HWC before normalisation"
    assert rows[4]["placement"] == "float32 CHW after normalisation"
    assert all(r["status"] == "ok" for r in rows), rows
    assert rows[0]["vs_no_mix"] == 1.0 and all(r["images_per_s_median"] > 0 for r in rows)
    table = bench.format_table(rows)
    assert "| cpu | dali_kmix dcutmix K=3 | uint8 HWC before normalisation |" in table
    assert "| cpu | dali_kmix dmixup K=3 (float32 CHW, after normalise) | float32 CHW after normalisation |" in table


def test_pipeline_blocks_take_the_batches_computed_ahead_out_before_the_clock(photo_dir, monkeypatch):
    # A pipeline computes its prefetch queue's batches (2) while its clock is stopped; timed, they would count
    # 20 batches for the work of 18. Each block takes them out first: per block, 2 steps, the clock, `iters` steps,
    # the clock.
    import time as real_time
    import types

    pytest.importorskip("nvidia.dali")
    events = []
    real_step = bench._pipeline_step

    def counting_step(*args):
        step = real_step(*args)

        def counted():
            events.append("step")
            step()

        return counted

    monkeypatch.setattr(bench, "_pipeline_step", counting_step)
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(
        sleep=real_time.sleep, perf_counter=lambda: events.append("clock") or real_time.perf_counter()))
    rows = bench.bench_pipeline(photo_dir, batch=4, size=32, iters=3, repeats=2, progress=False, settle_s=0.0,
                                only=["none"])
    assert rows[0]["status"] == "ok" and len(rows[0]["images_per_s_rounds"]) == 2
    block = ["step"] * 2 + ["clock"] + ["step"] * 3 + ["clock"]
    assert events == ["step"] * 3 + block * 2  # 3 warm-up steps, then two blocks


def test_batches_ahead_is_the_prefetch_queue_depth():
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import Pipeline

    assert bench._batches_ahead(Pipeline(batch_size=2, num_threads=1, device_id=None)) == 2
    assert bench._batches_ahead(Pipeline(batch_size=2, num_threads=1, device_id=None, prefetch_queue_depth=3)) == 3
    sep = Pipeline(batch_size=2, num_threads=1, device_id=None, prefetch_queue_depth={"cpu_size": 4, "gpu_size": 2})
    assert bench._batches_ahead(sep) == 4  # separate CPU and GPU queues: the deeper one


def test_gpu_pipeline_rows_name_their_path(monkeypatch):
    """On the GPU the "mixed" pipeline is timed with the native operator and with the python_function path: the
    latter is defined with DALI_KMIX_PLUGIN=0 (set only while it is defined), and every dali_kmix row says which."""
    from dali_kmix.backends import plugin

    monkeypatch.setenv("DALI_KMIX_PLUGIN", "1")
    with bench._plugin_setting("0"):
        assert os.environ["DALI_KMIX_PLUGIN"] == "0" and not plugin.load()
    assert os.environ["DALI_KMIX_PLUGIN"] == "1"
    monkeypatch.delenv("DALI_KMIX_PLUGIN")
    with bench._plugin_setting("0"):
        pass
    assert "DALI_KMIX_PLUGIN" not in os.environ
    assert bench._gpu_path(f"dali_kmix dcutmix {bench.FUNCTION_PATH}", "gpu") == {"path": "function"}
    assert bench._gpu_path("dali_kmix dcutmix", "gpu") == {"path": "native" if plugin.gpu_backend() else "function"}
    assert bench._gpu_path("dali_kmix dcutmix", "cpu") == bench._gpu_path("none", "gpu") == {}
    assert bench._placement(f"dali_kmix dmixup {bench.FUNCTION_PATH}") == "uint8 HWC before normalisation"


def test_scaling_rows_and_plot(tmp_path):
    pytest.importorskip("kornia")
    rows = bench.bench_scaling(ks=(2, 4), batches=(2, 4), k_batch=2, size=16, repeats=2, progress=False)
    assert {r["axis"] for r in rows} == {"k", "batch"}
    by = {(r["axis"], r["impl"], r.get("method"), r["k"], r["batch"]): r for r in rows}
    assert by[("k", "dali_kmix", "dcutmix", 2, 2)]["vs_first_k"] == 1.0  # K over the first K, within each round
    assert by[("k", "dali_kmix", "dcutmix", 4, 2)]["vs_first_k"] > 0 and by[("k", "copy (yardstick)", None, 2, 2)]
    assert all(r["vs_copy"] > 0 for r in rows if r["impl"] == "dali_kmix")
    assert all(r["timing"] == "interleaved rounds" for r in rows if r["impl"] != "kornia")
    bench.plot(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 5000
    assert "| vs k | 4 | 2 |" in bench.format_table(rows)


def test_metadata_is_json():
    meta = json.loads(json.dumps(bench.metadata()))
    assert meta["cpu_cores"] >= 1 and meta["numpy"] == np.__version__
    assert len(meta["load_average"]) == 3 and all(v >= 0 for v in meta["load_average"])  # the machine's other work


def test_each_peer_is_held_against_the_dali_kmix_row_its_user_calls():
    # The DALI-native composition against the DALI operator, the libraries of arrays against the array API; the
    # row reports the peer dali_kmix leads by the least (here: behind DALI native, ahead of timm), and the copy.
    base = {"level": "op", "device": "cpu", "dtype": "uint8", "batch": 8, "method": "dcutmix", "k": 3,
            "mode": "sample", "status": "ok"}
    times = {bench.KMIX: 1.0, bench.KMIX_DALI: 3.0, "DALI native": 2.0, "timm FastCollateMixup": 4.0}
    rows = [{**base, "impl": impl, "median_s": t} for impl, t in times.items()]
    rows.append({"level": "op", "device": "cpu", "dtype": "uint8", "batch": 8, "status": "ok",
                 "impl": "copy (yardstick)", "median_s": 0.5})
    bench._add_ratios(rows)
    km = rows[0]
    assert (km["fastest_peer"], km["compared_with"], km["vs_fastest_peer"]) == ("DALI native", bench.KMIX_DALI, 1.5)
    assert km["vs_copy"] == 2.0
    assert "| 1.50× slower than DALI native (DALI op) | 2.00 |" in bench.format_table(rows)
    rows[1]["median_s"] = 1.0  # the DALI operator now 2x ahead of DALI native, still closer than timm (4x behind)
    bench._add_ratios(rows)
    assert (km["fastest_peer"], km["vs_fastest_peer"]) == ("DALI native", 0.5)
    assert "| 2.00× faster than DALI native (DALI op) |" in bench.format_table(rows)
