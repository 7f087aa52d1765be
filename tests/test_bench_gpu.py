"""The GPU rows of ``kmix bench``: their logic on the CPU with a host stand-in for the device (scripted clock,
CPU kernels), and the real run on a CUDA device under the ``gpu`` marker."""

import numpy as np
import pytest

from dali_kmix.apps import bench_gpu
from dali_kmix.sampling import sample_params


class HostDevice:
    """What bench_gpu needs of a device, on the host: NumPy arrays, the CPU kernels, a scripted clock.

    ``clock(call_index, round_index)`` gives the seconds per call of the ``call_index``-th variant timed in
    round ``round_index``; every call of a variant's function is logged.
    """

    name = "host"
    xp = np

    def __init__(self, clock, nvariants):
        from dali_kmix.backends import CpuBackend

        self.backend = CpuBackend(workers=1)
        self.clock, self.nvariants = clock, nvariants
        self.timed = []  # the functions timed, in order
        self.launches = 0

    to_device = staticmethod(np.asarray)

    def params(self, p):
        return p

    def copy(self, out, x):
        np.copyto(out, x)

    def record(self, method, n, h, w, k):
        return sample_params(method, n, h, w, k=k, rng=0)

    def seconds_per_call(self, fn, iters):
        i = len(self.timed)
        self.timed.append(fn)
        for _ in range(iters):
            fn()
            self.launches += 1
        return self.clock(i % self.nvariants, i // self.nvariants)


def test_kernel_rows_bandwidth_against_the_copy_and_interleaving():
    ks, methods, rounds, iters, warmup = (2, 3), ("dmixup", "dcutmix"), 3, 2, 1
    nvar = 1 + len(ks) * len(methods) + 2  # copy, the blends, the record, the saliency step
    base = {i: 1e-3 * (i + 1) for i in range(nvar)}  # variant i takes (i + 1) ms ...
    dev = HostDevice(lambda i, r: base[i] * (1 + r % rounds), nvar)  # ... times a factor changing every round
    rows = bench_gpu.bench_gpu_ops(dtypes=("uint8", "float32"), batches=(3,), ks=ks, methods=methods, size=20,
                                   rounds=rounds, iters=iters, warmup=warmup, progress=False, device=dev)
    assert len(rows) == 2 * nvar
    # every variant once per round, always in the same order
    per_round = [dev.timed[j * nvar:(j + 1) * nvar] for j in range(len(dev.timed) // nvar)]
    for group in (per_round[:rounds], per_round[rounds:]):
        assert all(r == group[0] for r in group) and len(set(map(id, group[0]))) == nvar
    assert dev.launches == 2 * nvar * rounds * iters
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


def test_scaling_rows_relative_to_k2():
    ks = (2, 4, 16)
    base = {i: 1e-3 * (1 + 0.1 * i) for i in range(2 * len(ks))}
    dev = HostDevice(lambda i, r: base[i] * (2 if r == 1 else 1), 2 * len(ks))
    rows = bench_gpu.bench_gpu_scaling(ks=ks, batch=3, size=16, rounds=3, iters=1, warmup=0, progress=False,
                                       device=dev)
    assert [(r["method"], r["k"]) for r in rows] == [(m, k) for m in ("dcutmix", "dmixup") for k in ks]
    for i, r in enumerate(rows):
        k2 = base[(i // len(ks)) * len(ks)]
        assert r["vs_k2"] == pytest.approx(base[i] / k2) == pytest.approx(r["vs_k2_max"])
        assert r["median_s"] == pytest.approx(base[i])


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
        assert r["median_s"] == pytest.approx(per_op[j] * 2) and r["min_s"] == pytest.approx(per_op[j])
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


def test_gpu_session_runs_the_native_operators_first():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_session.sh").read_text()
    default = re.search(r"stages=\$\{\*:-([^}]*)\}", text).group(1).split()
    assert default[:4] == ["env", "native", "native-memcheck", "native-bench"] and len(default) == len(set(default))
    for stage in default:
        assert f"stage_{stage.replace('-', '_')}() {{" in text, stage
