"""The GPU rows of ``kmix bench``: their logic on the CPU with a host stand-in for the device (scripted clock,
CPU kernels), and the real run on a CUDA device under the ``gpu`` marker."""

import time

import numpy as np
import pytest

from dali_kmix.apps import bench_gpu, timing
from dali_kmix.sampling import sample_params


class HostDevice:
    """What bench_gpu needs of a device, on the host: NumPy arrays, the CPU kernels, a scripted clock.

    ``clock(variant_index, round_index)`` gives the seconds per call of a group's ``variant_index``-th variant
    (in the order the group lists them: round 0's order, the later rounds follow :func:`timing.round_order`) in
    round ``round_index``; every call of a variant's function is logged, and the functions timed by the wall clock
    (``wall_seconds_per_call``) are listed in ``walled``.
    """

    name = "host"
    xp = np

    def __init__(self, clock, nvariants):
        from dali_kmix.backends import CpuBackend

        self.backend = CpuBackend(workers=1)
        self.clock, self.nvariants = clock, nvariants
        self.timed = []  # the functions timed, in order
        self.walled = []  # those of them timed by the wall clock
        self.index = {}  # id(function) -> its place in its group (numbered as round 0 first times them)
        self.launches = 0

    to_device = staticmethod(np.asarray)

    def params(self, p):
        return p

    def prepare_copy(self, out, x):
        return lambda: np.copyto(out, x)

    def record(self, method, n, h, w, k):
        return sample_params(method, n, h, w, k=k, rng=0)

    def seconds_per_call(self, fn, iters):
        i = len(self.timed)
        self.timed.append(fn)
        for _ in range(iters):
            fn()
            self.launches += 1
        j = self.index.setdefault(id(fn), len(self.index) % self.nvariants)
        return self.clock(j, i // self.nvariants)

    def wall_seconds_per_call(self, fn, iters):
        self.walled.append(fn)
        return self.seconds_per_call(fn, iters)


def test_kernel_rows_bandwidth_against_the_copy_and_interleaving():
    ks, methods, rounds, iters, warmup = (2, 3), ("dmixup", "dcutmix"), 3, 2, 1
    nvar = 1 + len(ks) * len(methods) + 2  # copy, the blends, the record, the saliency step
    base = {i: 1e-3 * (i + 1) for i in range(nvar)}  # variant i takes (i + 1) ms ...
    dev = HostDevice(lambda i, r: base[i] * (1 + r % rounds), nvar)  # ... times a factor changing every round
    rows = bench_gpu.bench_gpu_ops(dtypes=("uint8", "float32"), batches=(3,), ks=ks, methods=methods, size=20,
                                   rounds=rounds, iters=iters, warmup=warmup, progress=False, device=dev)
    assert len(rows) == 2 * nvar
    # every variant once per round, in the rounds' balanced order (dali_kmix.apps.timing.round_order)
    per_round = [dev.timed[j * nvar:(j + 1) * nvar] for j in range(len(dev.timed) // nvar)]
    for group in (per_round[:rounds], per_round[rounds:]):
        assert len(set(map(id, group[0]))) == nvar
        assert all(r == timing.round_order(group[0], j) for j, r in enumerate(group))
    assert dev.launches == 2 * nvar * rounds * iters
    # the record and the saliency step by the wall clock (Python included), the copy and the kernels by the device
    assert len(dev.walled) == 2 * 2 * rounds and {dev.index[id(f)] for f in dev.walled} == {nvar - 2, nvar - 1}
    for dt in ("uint8", "float32"):
        grp = [r for r in rows if r["dtype"] == dt]
        nbytes = 3 * 20 * 20 * 3 * np.dtype(dt).itemsize
        copy = grp[0]
        assert copy["impl"] == bench_gpu.COPY and copy["bytes"] == 2 * nbytes
        assert copy["vs_copy_bandwidth"] == pytest.approx(1.0)
        for i, r in enumerate(grp):
            assert r["median_s"] == pytest.approx(base[i] * 2) and r["min_s"] == pytest.approx(base[i])
            assert r["max_s"] == pytest.approx(base[i] * rounds) and r["rounds"] == rounds
            if r["impl"] == bench_gpu.KMIX:
                moved = (r["k"] + 1) * nbytes if r["method"] == "dmixup" else 2 * nbytes
                assert r["bytes"] == moved
                # the same factor hits copy and kernel in a round: the ratio is exact and equal in every round
                want = (moved / base[i]) / (2 * nbytes / base[0])
                assert r["vs_copy_bandwidth"] == pytest.approx(want)
                assert r["vs_copy_bandwidth_min"] == pytest.approx(want) == pytest.approx(r["vs_copy_bandwidth_max"])
                assert r["gb_per_s"] == pytest.approx(moved / r["median_s"] / 1e9)
        assert {(r["impl"], r.get("method"), r.get("k")) for r in grp} >= {
            (bench_gpu.KMIX, m, k) for m in methods for k in ks} | {(bench_gpu.RECORD, "dcutmix", 3)}
        assert [r["timing"] for r in grp] == [bench_gpu.EVENT_TIMING] * (nvar - 2) + [bench_gpu.WALL_TIMING] * 2


def test_kernel_rows_blend_what_the_reference_blends(monkeypatch):
    # the timed blends write the outputs the reference gives for their records
    from dali_kmix import reference

    seen = []
    real = bench_gpu.sample_params

    def spy(*a, **kw):
        seen.append(real(*a, **kw))
        return seen[-1]

    monkeypatch.setattr(bench_gpu, "sample_params", spy)
    dev = HostDevice(lambda i, r: 1e-3, 4)
    outs = []
    real_blend = dev.backend.blend

    def blend(samples, out_rows, p, layout):
        real_blend(samples, out_rows, p, layout)
        outs.append((np.stack(samples), np.stack(out_rows), p, layout))

    dev.backend.blend = blend
    bench_gpu.bench_gpu_ops(dtypes=("float32",), batches=(4,), ks=(3,), size=12, rounds=1, iters=1, warmup=0,
                            progress=False, device=dev)
    assert len(outs) == 2
    for x, got, p, layout in outs:
        np.testing.assert_array_equal(got, reference.mix_images(x, p, layout))


@pytest.mark.parametrize("ks", [(2, 4, 16), (4, 16, 2)], ids=["k2-first", "k2-last"])
def test_scaling_rows_relative_to_k2(ks):
    base = {i: 1e-3 * (1 + 0.1 * i) for i in range(2 * len(ks))}
    dev = HostDevice(lambda i, r: base[i] * (2 if r == 1 else 1), 2 * len(ks))
    rows = bench_gpu.bench_gpu_scaling(ks=ks, batch=3, size=16, rounds=3, iters=1, warmup=0, progress=False,
                                       device=dev)
    assert [(r["method"], r["k"]) for r in rows] == [(m, k) for m in ("dcutmix", "dmixup") for k in ks]
    for i, r in enumerate(rows):
        k2 = base[(i // len(ks)) * len(ks) + ks.index(2)]  # K = 2's time, wherever ks lists it
        assert r["vs_k2"] == pytest.approx(base[i] / k2) == pytest.approx(r["vs_k2_max"])
        assert r["median_s"] == pytest.approx(base[i])
    (flat,) = bench_gpu.gpu_targets(rows)
    worst = max((r for r in rows if r["method"] == "dcutmix"), key=lambda r: r["median_s"])
    assert f"slowest K={worst['k']}: {worst['median_s'] / base[ks.index(2)]:.2f} × K=2" == flat["measured"]


def test_scaling_needs_k2():
    with pytest.raises(ValueError, match=r"ks must hold 2 \(vs_k2 is the time over K = 2's\), got \(3, 4\)"):
        bench_gpu.bench_gpu_scaling(ks=(3, 4), batch=3, size=16, rounds=1, iters=1, warmup=0, progress=False,
                                    device=HostDevice(lambda i, r: 1e-3, 4))
    # rows without K = 2 (they hold no time over K = 2's): no flatness target is judged on them
    assert bench_gpu.gpu_targets([_scaling("dcutmix", 3, 1.0), _scaling("dcutmix", 16, 1.1)]) == []


def _op(method, k, vs, batch=256, dtype="float32"):
    return {"level": "gpu-op", "impl": bench_gpu.KMIX, "method": method, "k": k, "batch": batch, "dtype": dtype,
            "median_s": 1e-3, "min_s": 1e-3, "max_s": 1e-3, "gb_per_s": 100.0, "vs_copy_bandwidth": vs,
            "vs_copy_bandwidth_min": vs, "vs_copy_bandwidth_max": vs}


def _scaling(method, k, vs):
    return {"level": "gpu-scaling", "method": method, "k": k, "batch": 128, "dtype": "float32", "median_s": 1e-3,
            "vs_k2": vs, "vs_k2_min": vs, "vs_k2_max": vs}


@pytest.mark.parametrize("dcut,dmix,flat,pipe,met", [
    (0.70, 0.50, 1.25, 0.97, [True, True, True, True]),
    (0.69, 0.49, 1.26, 0.96, [False, False, False, False]),
    (0.95, 0.30, 1.02, 0.99, [True, False, True, True]),
], ids=["at-the-targets", "just-below", "mixed"])
def test_gpu_targets_are_judged_at_their_thresholds(dcut, dmix, flat, pipe, met):
    rows = [_op("dcutmix", 2, 0.99), _op("dcutmix", 9, dcut), _op("dcutmix", 3, 0.1, batch=32),
            _op("dmixup", 3, dmix), _op("dmixup", 9, 0.01),
            _scaling("dcutmix", 2, 1.0), _scaling("dcutmix", 16, flat), _scaling("dmixup", 16, 9.0),
            {"level": "pipeline", "device": "gpu", "status": "ok", "mix": "dali_kmix dcutmix", "batch": 256,
             "vs_no_mix": pipe},
            {"level": "pipeline", "device": "cpu", "status": "ok", "mix": "dali_kmix dcutmix", "vs_no_mix": 0.1}]
    targets = bench_gpu.gpu_targets(rows)
    assert [t["met"] for t in targets] == met
    assert "batch 256" in targets[0]["target"] and "K=9" in targets[0]["measured"]  # smaller batches not judged
    assert targets[1]["measured"] == f"float32 K=3: {100 * dmix:.0f} %"  # DMixup: K=3 only
    md = bench_gpu.format_gpu(rows)
    assert md.count("| yes |") == sum(met) and md.count("| no |") == 4 - sum(met)


class HostChains(HostDevice):
    """What bench_native_ops needs of a device, on the host: each "pipeline" applies the CPU kernels ``length`` times
    in a row (``fn.copy``: a copy), keeping its last output; the clock is scripted as in HostDevice."""

    def pipeline(self, samples, record, op, layout, length):
        last = {}

        def run():
            x = samples
            for _ in range(length):
                out = [np.empty_like(a) for a in x]
                if op is None:
                    for o, a in zip(out, x):
                        np.copyto(o, a)
                elif op == "kmix_dmixup":
                    self.backend.dmixup(x, out, *record)
                else:
                    self.backend.dcutmix(x, out, *record, layout)
                x = out
            last["out"] = np.stack(x)

        run.last = last
        return run


def test_native_operator_rows_time_the_chain_minus_one_against_the_copy():
    from dali_kmix import reference

    ks, methods, length, rounds = (2, 3), ("dmixup", "dcutmix"), 4, 3
    kinds = 1 + len(methods) * len(ks)  # the copy, then every method x K; each timed with 1 and `length` operators
    one = {j: 1e-3 * (j + 1) for j in range(kinds)}  # a pipeline with one operator: fixed cost + one operator ...
    per_op = {j: 2e-4 * (j + 1) for j in range(kinds)}  # ... and each operator in a row adds this

    def clock(i, r):
        j, longer = divmod(i, 2)
        return (one[j] + (length - 1) * per_op[j] * longer) * (1 + r)  # a round's factor hits every variant

    dev = HostChains(clock, 2 * kinds)
    rows = bench_gpu.bench_native_ops(dtypes=("uint8",), batch=3, ks=ks, methods=methods, size=12, length=length,
                                      rounds=rounds, iters=1, warmup=0, progress=False, device=dev)
    assert [(r["impl"], r.get("method"), r.get("k")) for r in rows] == \
        [(bench_gpu.NATIVE_COPY, None, None)] + [(bench_gpu.NATIVE, m, k) for m in methods for k in ks]
    nbytes = 3 * 12 * 12 * 3
    for j, r in enumerate(rows):
        assert r["level"] == "gpu-native-op" and r["chain"] == length
        assert r["median_s"] == pytest.approx(per_op[j] * 2) and r["diff_min_s"] == pytest.approx(per_op[j])
        moved = bench_gpu.kernel_bytes(r.get("method"), r.get("k") or 0, nbytes)
        assert r["bytes"] == moved
        want = (moved / per_op[j]) / (2 * nbytes / per_op[0])  # the round's factor cancels
        assert r["vs_copy_bandwidth"] == pytest.approx(want) == pytest.approx(r["vs_copy_bandwidth_max"])
    # every pipeline applied its record: the chained output is the reference applied `length` times
    host, _ = bench_gpu.make_batch(bench_gpu.Config("dcutmix", 3, "sample", "uint8", 3, 12), 0)
    p = bench_gpu.sample_params("dcutmix", 3, 12, 12, k=3, rng=0 + 3)
    want = host
    for _ in range(length):
        want = reference.mix_images(want, p, "HWC")
    chain = dev.timed[2 * kinds - 1]  # the last variant of a round: DCutMix K=3 with `length` operators
    np.testing.assert_array_equal(chain.last["out"], want)


def test_native_operator_rows_report_the_spread_of_a_difference_not_a_min_max_time():
    # the chain minus one operator can go below 0 in a noisy round: that round's figure is no time per call
    length, rounds = 3, 3

    def clock(i, r):
        j, longer = divmod(i, 2)
        if r == 0 and longer:
            return 0.9e-3  # round 0: the chain of 3 came out faster than the one operator
        return 1e-3 + (length - 1) * 1e-4 * longer

    dev = HostChains(clock, 4)
    rows = bench_gpu.bench_native_ops(dtypes=("uint8",), batch=3, ks=(2,), methods=("dcutmix",), size=8,
                                      length=length, rounds=rounds, iters=1, warmup=0, progress=False, device=dev)
    for r in rows:
        assert "min_s" not in r and "max_s" not in r
        assert r["diff_min_s"] == pytest.approx(-0.05e-3) and r["diff_max_s"] == pytest.approx(1e-4)
        assert r["median_s"] == pytest.approx(1e-4) and r["nonpositive_rounds"] == 1 and r["rounds"] == rounds
    md = bench_gpu.format_gpu(rows)
    assert "| uint8, 3 | fn.kmix_* (native GPU operator) dcutmix | 2 | 0.100 (difference -0.050–0.100) |" in md


def test_native_operator_targets_are_judged_beside_the_kernels():
    def native(method, k, vs):
        return {**_op(method, k, vs), "level": "gpu-native-op", "impl": bench_gpu.NATIVE}

    rows = [_op("dcutmix", 3, 0.9), _op("dmixup", 3, 0.6), native("dcutmix", 3, 0.5), native("dmixup", 3, 0.55)]
    targets = bench_gpu.gpu_targets(rows)
    assert [t["met"] for t in targets] == [True, True, False, True]
    assert targets[2]["target"].startswith("native operator DCutMix blend")
    assert "fn.kmix_* (native GPU operator) dcutmix" in bench_gpu.format_gpu(rows)


def test_the_pipeline_target_is_the_native_operators():
    def pipe(mix, vs, path):
        return {"level": "pipeline", "device": "gpu", "status": "ok", "mix": mix, "batch": 256, "vs_no_mix": vs,
                "path": path}

    rows = [pipe("dali_kmix dcutmix", 0.98, "native"), pipe("dali_kmix dcutmix (python_function + CuPy)", 0.5,
                                                            "function")]
    (target,) = bench_gpu.gpu_targets(rows)
    assert target["met"] and "(native operator)" in target["target"] and "python_function" not in target["measured"]


def test_no_gpu_rows_no_gpu_section():
    assert bench_gpu.gpu_targets([{"level": "op", "impl": "copy (yardstick)"}]) == []
    assert bench_gpu.format_gpu([]) == ""


class _FakeCuda:
    """What bench_gpu.CudaDevice and dali_kmix.backends.gpu use of ``cupy`` (NumPy arrays), logging every call that
    reaches the device: events, copies, host-to-device transfers, the hold kernel; launches are logged by the
    recorder below. ``_starved``: how many windows in a row the GPU reaches before the host has queued them."""

    def __init__(self, log, starved=0):
        import types

        self._log, self._starved = log, starved
        fake = self

        class Event:
            def record(self, stream=None):
                log.append(("event",))

            @property
            def done(self):
                fake._starved -= 1
                return fake._starved >= 0

            def synchronize(self):
                pass

        runtime = types.SimpleNamespace(memcpyDeviceToDevice=3,
                                        memcpyAsync=lambda *a: log.append(("memcpy",)))
        device = types.SimpleNamespace(synchronize=lambda: log.append(("sync",)))
        self.cuda = types.SimpleNamespace(Event=Event, runtime=runtime, get_elapsed_time=lambda a, b: 1.0,
                                          get_current_stream=lambda: types.SimpleNamespace(ptr=0),
                                          Device=lambda *a: device)
        self.random = types.SimpleNamespace(default_rng=np.random.default_rng)

    def RawKernel(self, code, name):  # noqa: N802 - cupy's name
        return lambda grid, block, args: self._log.append(("hold", int(args[0])))

    def asarray(self, a, *args, **kwargs):
        self._log.append(("h2d",))
        return np.asarray(a, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.fixture
def fake_cupy(monkeypatch):
    """``(log, fake)``: CuPy replaced by NumPy; every device call and every kernel launch of dali_kmix.backends.gpu
    appended to ``log`` in order (a launch as ("launch", kernel), a pointer read as ("ptr",))."""
    import sys

    from dali_kmix.backends import gpu

    log = []
    fake = _FakeCuda(log)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(gpu, "_data_ptr", lambda a: (log.append(("ptr",)), a.ctypes.data)[1])

    class Module:
        def __init__(self, name):
            pass

        def get_function(self, expr):
            return lambda grid, block, args: log.append(("launch", expr))

    monkeypatch.setattr(gpu, "module", Module)
    return log, fake


def _windows(log):
    """The log entries between each pair of events (start, end), in order."""
    marks = [i for i, e in enumerate(log) if e[0] == "event"]
    assert len(marks) % 2 == 0
    return [log[a + 1:b] for a, b in zip(marks[::2], marks[1::2])], marks


def test_kernel_rows_time_nothing_but_the_launches(fake_cupy):
    # The real CudaDevice, NumPy standing in for CuPy: inside each timed window of a kernel row there is nothing but
    # `iters` launches of its kernel (no pointer gathering, no host-to-device copy), and the copy row only copies;
    # each window is queued behind the hold kernel. The record and saliency rows are timed by the wall clock (no
    # events; the device synchronised before and after).
    log, _ = fake_cupy
    ks, methods, rounds, iters = (2, 3), ("dmixup", "dcutmix"), 2, 3
    dev = bench_gpu.CudaDevice(seed=0)
    bench_gpu.bench_gpu_ops(dtypes=("uint8",), batches=(3,), ks=ks, methods=methods, size=12, rounds=rounds,
                            iters=iters, warmup=1, progress=False, device=dev)
    windows, marks = _windows(log)
    names = [("copy",)] + [(m, k) for m in methods for k in ks] + [("record",), ("saliency",)]
    evented = [n for r in range(rounds) for n in timing.round_order(names, r) if n[0] not in ("record", "saliency")]
    assert len(windows) == len(evented) and sum(e == ("sync",) for e in log) == 2 * 2 * rounds
    kernel = {"dmixup": "kmix_dmixup<unsigned char>", "dcutmix": "kmix_dcutmix<unsigned char>"}
    for j, (window, name) in enumerate(zip(windows, evented)):
        assert log[marks[2 * j] - 1][0] == "hold", f"window {j} ({name}) is not queued behind the hold kernel"
        if name == ("copy",):
            assert window == [("memcpy",)] * iters, f"copy window: {window}"
        elif name[0] in kernel:
            assert window == [("launch", kernel[name[0]])] * iters, f"{name} window: {window}"
    assert any(e[0] in ("ptr", "h2d") for e in log), "the recorder saw no pointer gathering at all"

    log.clear()
    bench_gpu.bench_gpu_scaling(ks=(2, 4), batch=3, size=10, dtype="float32", rounds=2, iters=2, warmup=0,
                                progress=False, device=dev)
    windows, _ = _windows(log)
    order = ["dcutmix", "dcutmix", "dmixup", "dmixup"]  # K = 2, 4 each; round 1 in the balanced order's next row
    assert windows == [[("launch", f"kmix_{m}<float>")] * 2 for m in order + timing.round_order(order, 1)]


def test_record_and_saliency_rows_time_the_whole_call_python_included(fake_cupy, monkeypatch):
    # The record draw and the saliency step are mostly Python launching little device work: the event window behind
    # the hold kernel would time only the device (here 1 ms / iters per call, whatever the host did); the wall
    # clock, the device synchronised around the window, times what a pipeline pays.
    log, _ = fake_cupy
    host_s, iters = 4e-3, 2
    dev = bench_gpu.CudaDevice(seed=0)
    monkeypatch.setattr(dev, "record", lambda *a: time.sleep(host_s))
    monkeypatch.setattr(bench_gpu, "salient_points", lambda *a: time.sleep(host_s))
    rows = bench_gpu.bench_gpu_ops(dtypes=("uint8",), batches=(3,), ks=(2,), methods=("dcutmix",), size=8, rounds=2,
                                   iters=iters, warmup=0, progress=False, device=dev)
    by = {r["impl"]: r for r in rows}
    for impl in (bench_gpu.RECORD, bench_gpu.SALIENCY):
        assert by[impl]["min_s"] >= host_s and by[impl]["timing"] == bench_gpu.WALL_TIMING
    for impl in (bench_gpu.COPY, bench_gpu.KMIX):  # the kernels stay on the device's events
        assert by[impl]["median_s"] == pytest.approx(1e-3 / iters) and by[impl]["timing"] == bench_gpu.EVENT_TIMING
    log.clear()
    calls = []
    dev.wall_seconds_per_call(lambda: calls.append(len(log)), 3)
    assert log == [("sync",), ("sync",)] and calls == [1, 1, 1]  # synchronised before and after the window


def test_a_window_the_gpu_reaches_too_early_is_timed_again_with_a_longer_hold(fake_cupy):
    log, fake = fake_cupy
    dev = bench_gpu.CudaDevice(seed=0, hold_s=1e-3)
    fake._starved = 2  # the first two windows start before the host has queued them
    calls = []
    assert dev.seconds_per_call(lambda: calls.append(1), 4) == pytest.approx(1e-3 / 4)
    assert [e[1] for e in log if e[0] == "hold"] == [1_000_000, 4_000_000, 16_000_000]
    assert len(calls) == 12 and dev.hold_s == pytest.approx(16e-3)
    log.clear()
    dev.seconds_per_call(lambda: None, 1)  # the longer hold stays
    assert [e[1] for e in log if e[0] == "hold"] == [16_000_000]


@pytest.mark.gpu
def test_gpu_bench_on_the_device():
    rows = bench_gpu.bench_gpu_ops(batches=(32,), ks=(2, 3), rounds=2, iters=3, progress=False)
    rows += bench_gpu.bench_gpu_scaling(ks=(2, 4), batch=16, rounds=2, iters=3, progress=False)
    copies = [r for r in rows if r.get("impl") == bench_gpu.COPY]
    assert copies and all(r["gb_per_s"] > 0 and r["vs_copy_bandwidth"] == pytest.approx(1.0) for r in copies)
    assert all(r["median_s"] > 0 for r in rows)
    assert len(bench_gpu.gpu_targets(rows)) == 3


@pytest.mark.gpu
def test_native_operator_rows_on_the_device():
    from dali_kmix.backends import plugin

    assert plugin.gpu_backend(), plugin.cuda_toolchain()[1]
    rows = bench_gpu.bench_native_ops(dtypes=("uint8",), batch=16, ks=(3,), size=64, length=3, rounds=2, iters=2,
                                      warmup=1, progress=False)
    assert len(rows) == 3 and all(r["median_s"] > 0 for r in rows)
    assert rows[0]["impl"] == bench_gpu.NATIVE_COPY and rows[0]["vs_copy_bandwidth"] == pytest.approx(1.0)
    assert len(bench_gpu.gpu_targets(rows)) == 2


def test_gpu_session_script_runs_its_stages(tmp_path):
    # benchmarks/gpu_session.sh is what a device session runs; here: it parses, refuses an unknown stage, and its
    # env stage reports what stops the gpu tests (no device on this machine)
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_session.sh"
    root = script.parents[1]
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    bad = subprocess.run(["bash", str(script), str(tmp_path), "benchmark"], capture_output=True, text=True, cwd=root)
    assert bad.returncode == 2 and "unknown stage benchmark" in bad.stdout
    env = dict(__import__("os").environ, PY=sys.executable, DALI_KMIX_NO_GPU="1")
    ok = subprocess.run(["bash", str(script), str(tmp_path), "env"], capture_output=True, text=True, cwd=root,
                        env=env)
    assert ok.returncode == 0 and "stage env: exit 0" in ok.stdout
    text = (tmp_path / "env.txt").read_text()
    assert "gpu tests blocked by:" in text and "DALI_KMIX_NO_GPU is set" in text


@pytest.mark.slow
def test_gpu_session_sanitizer_stages_run_one_tool_each_with_logs_in_out(tmp_path):
    # the stage wiring, with a stand-in for python's `-m pytest` that prints what it was given
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_session.sh"
    stub = tmp_path / "py"
    stub.write_text(f"""#!/bin/bash
if [ "$1" = "-m" ]; then echo "LOGDIR=$DALI_KMIX_SANITIZER_LOG_DIR ARGS=$*"; exit ${{STUB_RC:-0}}; fi
exec {sys.executable} "$@"
""")
    stub.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, PY=str(stub))
    run = subprocess.run(["bash", str(script), str(out), "sanitizer"], capture_output=True, text=True,
                         cwd=script.parents[1], env=env)
    assert run.returncode == 0 and "stage sanitizer: exit 0" in run.stdout, run.stdout + run.stderr
    text = (out / "sanitizer-memcheck.txt").read_text()
    assert f"LOGDIR={out} " in text and "-k compute_sanitizer and memcheck" in text and "--require-gpu" in text
    run = subprocess.run(["bash", str(script), str(out), "racecheck"], capture_output=True, text=True,
                         cwd=script.parents[1], env=dict(env, STUB_RC="5"))  # 5: pytest collected nothing
    assert run.returncode == 0 and "no racecheck run: no kernel uses shared memory" in \
        (out / "sanitizer-racecheck.txt").read_text()
    run = subprocess.run(["bash", str(script), str(out), "sanitizer"], capture_output=True, text=True,
                         cwd=script.parents[1], env=dict(env, STUB_RC="1"))
    assert run.returncode == 1 and "stage sanitizer: exit 1" in run.stdout


def test_gpu_session_runs_the_native_operators_first():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_session.sh").read_text()
    # the default stage list (no stage named): the native stages first; racecheck/synccheck come in only where needed
    default = re.search(r'stages="([^"]*)"', text).group(1).replace("$extra_tools", "").split()
    assert default[:4] == ["env", "native", "native-memcheck", "native-bench"] and len(default) == len(set(default))
    for stage in default + ["racecheck", "synccheck"]:
        assert f"stage_{stage.replace('-', '_')}() {{" in text, stage
