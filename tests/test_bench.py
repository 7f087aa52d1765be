"""The benchmark harness: statistics, the peer matrix (with reasons), DALI-native compositions, tables (tiny sizes)."""

import datetime
import json
import os
import types

import numpy as np
import pytest

from dali_kmix.apps import bench, bench_gpu, bench_kmixup, peers, timing


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
    assert km["vs_closest_peer"] == 0.5 and km["vs_copy"] == 2.0
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
    assert by[("dali_kmix", "dmixup", 2, "float32")]["closest_peer"]
    assert by[("dali_kmix", "dmixup", 2, "float32")]["torch_threads"] == len(os.sched_getaffinity(0))
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
    assert (km["closest_peer"], km["compared_with"], km["vs_closest_peer"]) == ("DALI native", bench.KMIX_DALI, 1.5)
    assert "fastest_peer" not in km and "vs_fastest_peer" not in km  # the closest peer, named so
    assert km["vs_copy"] == 2.0
    assert "| 1.50× slower than DALI native (DALI op) | 2.00 |" in bench.format_table(rows)
    rows[1]["median_s"] = 1.0  # the DALI operator now 2x ahead of DALI native, still closer than timm (4x behind)
    bench._add_ratios(rows)
    assert (km["closest_peer"], km["vs_closest_peer"]) == ("DALI native", 0.5)
    assert "| 2.00× faster than DALI native (DALI op) |" in bench.format_table(rows)


def test_table_says_when_dali_kmix_itself_failed():
    # the peers ran; dali_kmix's own row failed: the verdict says so (with the reason), not "no peer can"
    base = {"level": "op", "device": "cpu", "dtype": "float32", "batch": 8, "method": "dmixup", "k": 2,
            "mode": "sample"}
    rows = [{**base, "impl": bench.COPY, "status": "ok", "median_s": 0.001},
            {**base, "impl": "kornia", "status": "ok", "median_s": 0.004},
            {**base, "impl": bench.KMIX, "status": "error", "reason": "RuntimeError: kernel | build failed"}]
    bench._add_ratios(rows)
    line = bench.format_table(rows).splitlines()[-1]
    assert "| dali_kmix failed: RuntimeError: kernel \\| build failed |" in line and "no peer can" not in line
    rows[2] = {**base, "impl": bench.KMIX, "status": "ok", "median_s": 0.002}
    rows[1]["status"] = "n/a"
    assert "| no peer can |" in bench.format_table(rows)  # that verdict where it holds


def test_bench_ops_gives_the_peers_the_cpus_of_the_affinity_mask_and_restores_torch(monkeypatch):
    # pinned to one CPU (taskset, a cgroup): the peers get one torch thread, as dali_kmix's kernels one worker and
    # the metadata one core; the rows record it; torch's own setting comes back when bench_ops returns
    torch = pytest.importorskip("torch")
    seen = []
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(bench, "_config_rows", lambda *a: seen.append(torch.get_num_threads()) or [])
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        kw = dict(batches=(2,), ks=(2,), modes=("sample",), dtypes=("float32",), methods=("dmixup",), size=8,
                  repeats=1, progress=False)
        rows = bench.bench_ops(**kw)
        assert seen == [1] and torch.get_num_threads() == 3
        assert rows and all(r["torch_threads"] == 1 for r in rows) and bench.metadata()["cpu_cores"] == 1
        bench.bench_ops(**kw, threads=2)
        assert seen == [1, 2] and torch.get_num_threads() == 3
        monkeypatch.setattr(bench, "_config_rows", lambda *a: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            bench.bench_ops(**kw)
        assert torch.get_num_threads() == 3  # restored when it raises too
    finally:
        torch.set_num_threads(before)


def test_gpu_pipeline_step_synchronises_after_timm_mixup():
    # on the GPU the block's clock must wait for timm's mixing too, not only for the iterator's batch
    log = []
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(synchronize=lambda: log.append("sync")))

    class Labels:
        def reshape(self, *shape):
            return self

        def long(self):
            return self

    batches = iter([[{"images": "x", "labels": Labels()}]] * 4)
    bench._pipeline_step(batches, lambda images, labels: log.append("mix"), "gpu", fake_torch)()
    assert log == ["mix", "sync"]
    log.clear()
    bench._pipeline_step(batches, None, "gpu", fake_torch)()
    assert log == ["sync"]
    log.clear()
    bench._pipeline_step(batches, lambda images, labels: log.append("mix"), "cpu", fake_torch)()
    assert log == ["mix"]


def test_pipeline_subtracted_rows_report_the_spread_of_the_difference(monkeypatch):
    # DALI-based rows are pipeline minus pipeline within each round; a round's difference can go below 0 and is no
    # time per call: no min_s/max_s on them but diff_min_s/diff_max_s and the rounds that went to 0 or below
    rounds = {bench.COPY: [1e-3, 1e-3, 1e-3], bench.KMIX: [2e-3, 2e-3, 2e-3], "DALI native": [5e-3, 4e-3, 6e-3],
              bench.KMIX_DALI: [3e-3, 2.0e-3, 4e-3], bench.PIPELINE_BASE: [2.5e-3, 3e-3, 2e-3]}
    monkeypatch.setattr(bench, "dali_native_pipeline", lambda *a, **kw: None)
    monkeypatch.setattr(bench, "_pipeline_runner", lambda pipe: (lambda: None))
    monkeypatch.setattr(bench, "interleaved_rounds", lambda variants, repeats: (
        {name: rounds[name] for name in variants}, {}))
    cfg = peers.Config("dcutmix", 3, "sample", "uint8", 4, 8)
    x, labels = peers.make_batch(cfg)
    cbase = {"level": "op", "device": "cpu", "dtype": "uint8", "layout": "HWC", "batch": 4, "size": 8,
             "method": "dcutmix", "k": 3, "mode": "sample"}
    rows = bench._config_rows(cfg, x, labels, cbase, 3)
    by = {r["impl"]: r for r in rows if r["status"] == "ok"}
    op = by[bench.KMIX_DALI]
    assert "min_s" not in op and "max_s" not in op
    assert op["diff_min_s"] == pytest.approx(-1e-3) and op["diff_max_s"] == pytest.approx(2e-3)
    assert op["median_s"] == pytest.approx(0.5e-3) and op["nonpositive_rounds"] == 1
    assert op["round_s"] == pytest.approx([0.5e-3, -1e-3, 2e-3])
    assert by["DALI native"]["diff_min_s"] == pytest.approx(1e-3) and by["DALI native"]["nonpositive_rounds"] == 0
    assert by[bench.KMIX]["min_s"] == by[bench.KMIX]["max_s"] == 2e-3  # a plain time keeps its min and max
    bench._add_ratios(rows)
    assert "| uint8, 4 | dcutmix | 3 | sample |" in bench.format_table(rows)


def test_a_pipeline_variant_that_failed_is_not_run_again(photo_dir, monkeypatch):
    pytest.importorskip("nvidia.dali")
    real = bench._pipeline_step
    calls = []

    def step(it, after, device, torch):
        s = real(it, after, device, torch)
        if not calls:  # the first variant built ("none") runs as it is
            calls.append("none")
            return s

        def failing():
            calls.append("step")
            if len(calls) == 1 + 4:  # its first step after the 3 warm-up steps: it fails in round 0
                raise RuntimeError("broken in round 0")
            return s()

        return failing

    monkeypatch.setattr(bench, "_pipeline_step", step)
    rows = bench.bench_pipeline(photo_dir, batch=4, size=16, iters=2, repeats=3, progress=False, settle_s=0.0,
                                only=["none", "dali_kmix dcutmix"])
    assert calls == ["none"] + ["step"] * 4  # 3 warm-up steps and the one that failed, nothing after it
    assert [(r["mix"], r["status"]) for r in rows] == [("none", "ok"), ("dali_kmix dcutmix", "error")]
    assert rows[1]["reason"] == "RuntimeError: broken in round 0" and len(rows[0]["images_per_s_rounds"]) == 3


ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 2000.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc sve
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd4f
CPU revision\t: 0

processor\t: 1
BogoMIPS\t: 2000.00
CPU implementer\t: 0x41
CPU part\t: 0xd4f
"""


def test_cpu_name_of_an_aarch64_host_is_its_core_not_its_flags(monkeypatch):
    # /proc/cpuinfo on Arm (a Grace-Hopper node) has no "model name": the implementer and part codes name the core
    assert bench.cpu_name(ARM_CPUINFO) == "ARM Neoverse-V2"
    unknown = ARM_CPUINFO.replace("0xd4f", "0xd99")
    assert bench.cpu_name(unknown, lscpu=lambda: "Some-Core") == "Some-Core"  # lscpu's name for a part not listed
    assert bench.cpu_name(unknown, lscpu=lambda: None) == "ARM CPU part 0xd99"
    x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\nflags\t: fpu vme\n"
    assert bench.cpu_name(x86) == "Intel(R) Xeon(R) CPU @ 2.20GHz" and bench.cpu_name("") is None
    real = bench.Path.read_text
    monkeypatch.setattr(bench.Path, "read_text",
                        lambda self, *a, **kw: ARM_CPUINFO if str(self) == "/proc/cpuinfo" else real(self, *a, **kw))
    assert bench.metadata()["cpu"] == "ARM Neoverse-V2"


def test_run_dates_its_file_when_it_starts(tmp_path, monkeypatch):
    # a run lasts some 20 minutes: its date and file name are its start (the end is kept as date_end)
    from dali_kmix.apps import data

    utc = datetime.timezone.utc
    clock = {"now": datetime.datetime(2026, 12, 8, 10, 0, 0, tzinfo=utc)}
    fake_dt = types.SimpleNamespace(timezone=datetime.timezone,
                                    datetime=types.SimpleNamespace(now=lambda tz=None: clock["now"]))

    def timing_takes_20_minutes(*a, **kw):
        clock["now"] = datetime.datetime(2026, 12, 8, 10, 20, 5, tzinfo=utc)
        return []

    monkeypatch.setattr(bench, "_dt", fake_dt)
    monkeypatch.setattr(bench, "bench_ops", timing_takes_20_minutes)
    for name in ("bench_pipeline", "bench_scaling", "bench_kmixup", "plot"):
        monkeypatch.setattr(bench, name, lambda *a, **kw: [])
    monkeypatch.setattr(bench, "gpu_available", lambda: False)
    monkeypatch.setattr(data, "make_photo_tree", lambda *a, **kw: tmp_path)
    path, _ = bench.run(tmp_path / "out", quick=True, progress=False)
    assert path.name == "bench-quick-20261208T100000.json"
    meta = json.loads(path.read_text())["meta"]
    assert (meta["date"], meta["date_end"]) == ("2026-12-08T10:00:00+00:00", "2026-12-08T10:20:05+00:00")


_OPS = dict(batches=(4,), ks=(2,), modes=("sample",), dtypes=("float32",), methods=("dmixup",), size=8, repeats=1,
            progress=False)
_PIPE = dict(batch=4, size=16, iters=1, repeats=1, progress=False, settle_s=0, only=["none"])
_KMIXUP = dict(rounds=1, batch=4, size=8, warmup=0)
_GPU = dict(dtypes=("uint8",), batches=(3,), ks=(2,), size=8, rounds=1, iters=1, warmup=0, progress=False)
_SCAL = dict(ks=(2, 4), batch=3, size=8, rounds=1, iters=1, warmup=0, progress=False)
_NATIVE = dict(dtypes=("uint8",), batch=3, ks=(2,), size=8, length=2, rounds=1, iters=1, warmup=0, progress=False)


def _nothing():
    return None


@pytest.mark.parametrize("call, match", [
    (lambda: bench.time_call(_nothing, 0), "repeats must be >= 1, got 0"),
    (lambda: bench.time_call(_nothing, 2, warmup=-1), "warmup must be >= 0, got -1"),
    (lambda: timing.interleaved_rounds({"a": _nothing}, 0), "rounds must be >= 1, got 0"),
    (lambda: timing.checked_rounds({"a": _nothing}, 0), "rounds must be >= 1, got 0"),
    (lambda: timing.calibrated(_nothing, 0), "warmup must be >= 1, got 0"),
    (lambda: bench.bench_ops(**{**_OPS, "repeats": 0}), "repeats must be >= 1, got 0"),
    (lambda: bench.bench_ops(**{**_OPS, "threads": 0}), "threads must be >= 1, got 0"),
    (lambda: bench.bench_ops(**{**_OPS, "size": 0}), "size must be >= 1, got 0"),
    (lambda: bench.bench_ops(**{**_OPS, "batches": (0,)}), r"batches must hold one or more integers >= 1, got \(0,\)"),
    (lambda: bench.bench_ops(**{**_OPS, "ks": (1,)}), r"ks must hold one or more integers >= 2, got \(1,\)"),
    (lambda: bench.bench_ops(**{**_OPS, "ks": ()}), r"ks must hold one or more integers >= 2, got \(\)"),
    (lambda: bench.bench_ops(**{**_OPS, "modes": ("elem",)}), r"modes must hold one or more of \['sample', 'batch'\]"),
    (lambda: bench.bench_ops(**{**_OPS, "methods": ("mixup",)}), r"methods must hold one or more of \['dmixup', "),
    (lambda: bench.bench_ops(**{**_OPS, "dtypes": ("float16",)}), r"dtypes must hold one .* got \('float16',\)"),
    (lambda: bench.bench_scaling(ks=(2,), batches=(4,), k_batch=4, size=8, repeats=0, progress=False),
     "repeats must be >= 1, got 0"),
    (lambda: bench.bench_scaling(ks=(1, 2), batches=(4,), k_batch=4, size=8, repeats=1, progress=False),
     r"ks must hold one or more integers >= 2, got \(1, 2\)"),
    (lambda: bench.bench_scaling(ks=(2,), batches=(4,), k_batch=0, size=8, repeats=1, progress=False),
     "k_batch must be >= 1, got 0"),
    (lambda: bench.bench_pipeline("/nonexistent", **{**_PIPE, "repeats": 0}), "repeats must be >= 1, got 0"),
    (lambda: bench.bench_pipeline("/nonexistent", **{**_PIPE, "iters": 0}), "iters must be >= 1, got 0"),
    (lambda: bench.bench_pipeline("/nonexistent", **{**_PIPE, "batch": 0}), "batch must be >= 1, got 0"),
    (lambda: bench.bench_pipeline("/nonexistent", **{**_PIPE, "k": 1}), "k must be >= 2, got 1"),
    (lambda: bench.bench_pipeline("/nonexistent", **{**_PIPE, "device": "tpu"}),
     r"device must be one of \['cpu', 'gpu'\], got 'tpu'"),
    (lambda: bench.bench_pipeline("/nonexistent", **{**_PIPE, "only": ["nonee"]}), r"only must name variants of .*"
     r"got \['nonee'\]"),
    (lambda: bench_kmixup.bench_kmixup(**{**_KMIXUP, "rounds": 0}), "rounds must be >= 1, got 0"),
    (lambda: bench_kmixup.bench_kmixup(**{**_KMIXUP, "batch": 3}), r"batch must be even \(timm's Mixup mixes pairs\)"
     ", got 3"),
    (lambda: bench_kmixup.bench_kmixup(**{**_KMIXUP, "size": -1}), "size must be >= 1, got -1"),
    (lambda: bench_kmixup.bench_kmixup(**{**_KMIXUP, "threads": 0}), "threads must be >= 1, got 0"),
    (lambda: bench_kmixup.bench_kmixup(**{**_KMIXUP, "warmup": -1}), "warmup must be >= 0, got -1"),
    (lambda: bench_gpu.bench_gpu_ops(**{**_GPU, "rounds": 0}), "rounds must be >= 1, got 0"),
    (lambda: bench_gpu.bench_gpu_ops(**{**_GPU, "iters": 0}), "iters must be >= 1, got 0"),
    (lambda: bench_gpu.bench_gpu_ops(**{**_GPU, "ks": (1,)}), r"ks must hold one or more integers >= 2, got \(1,\)"),
    (lambda: bench_gpu.bench_gpu_ops(**{**_GPU, "dtypes": ("float16",)}), r"dtypes must hold .* got \('float16',\)"),
    (lambda: bench_gpu.bench_gpu_scaling(**{**_SCAL, "rounds": 0}), "rounds must be >= 1, got 0"),
    (lambda: bench_gpu.bench_gpu_scaling(**{**_SCAL, "ks": (3, 4)}), r"ks must hold 2 .* got \(3, 4\)"),
    (lambda: bench_gpu.bench_gpu_scaling(**{**_SCAL, "dtype": "float16"}),
     r"dtype must be one of \['uint8', 'float32'\], got 'float16'"),
    (lambda: bench_gpu.bench_native_ops(**{**_NATIVE, "rounds": 0}), "rounds must be >= 1, got 0"),
    (lambda: bench_gpu.bench_native_ops(**{**_NATIVE, "iters": 0}), "iters must be >= 1, got 0"),
    (lambda: bench_gpu.bench_native_ops(**{**_NATIVE, "dtypes": ("float16",)}), r"dtypes must hold .* \('float16',\)"),
    (lambda: peers.make_batch(peers.Config("dmixup", 2, "sample", "float16", 4, 8)),
     r"dtype must be one of \['uint8', 'float32'\], got 'float16'"),
    (lambda: peers.Config("dmixup", 1, "sample", "float32", 4, 8), "k must be >= 2, got 1"),
    (lambda: peers.Config("dmixup", 2, "elem", "float32", 4, 8), r"mode must be one of \['sample', 'batch'\]"),
    (lambda: peers.Config("mixup", 2, "sample", "float32", 4, 8), r"method must be one of \['dmixup', 'dcutmix'\]"),
    (lambda: peers.Config("dmixup", 2, "sample", "float32", 0, 8), "batch must be >= 1, got 0"),
], ids=["time_call-repeats0", "time_call-warmup-1", "interleaved-rounds0", "checked-rounds0", "calibrated-warmup0",
        "ops-repeats0", "ops-threads0", "ops-size0", "ops-batch0", "ops-k1", "ops-no-k", "ops-mode-elem",
        "ops-method-mixup", "ops-dtype-float16", "scaling-repeats0", "scaling-k1", "scaling-k_batch0",
        "pipeline-repeats0", "pipeline-iters0", "pipeline-batch0", "pipeline-k1", "pipeline-device-tpu",
        "pipeline-only-unknown", "kmixup-rounds0", "kmixup-batch-odd", "kmixup-size-1", "kmixup-threads0",
        "kmixup-warmup-1", "gpu-ops-rounds0", "gpu-ops-iters0", "gpu-ops-k1", "gpu-ops-dtype-float16",
        "gpu-scaling-rounds0", "gpu-scaling-no-k2", "gpu-scaling-dtype-float16", "native-rounds0", "native-iters0",
        "native-dtype-float16", "make_batch-float16", "config-k1", "config-mode-elem", "config-method-mixup",
        "config-batch0"])
def test_bad_arguments_are_refused_up_front(call, match):
    # each refused with the argument's name and value before any timing (the GPU ones before a device is opened)
    with pytest.raises(ValueError, match=match):
        call()
