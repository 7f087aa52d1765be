"""benchmarks/profile_cpu.py's cache model of the host DCutMix (``--cache-model``): its runs against the
reference's output, and its counts against what a cache of no lines and one of every line must give."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import dali_kmix
from dali_kmix import reference

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_cpu.py"


@pytest.fixture(scope="module")
def profile_cpu():
    spec = importlib.util.spec_from_file_location("profile_cpu", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _runs_of_source_map(image_of):
    """The runs of every row of an (H, W) map of source images, as profile_cpu.paste_runs writes them."""
    rows = []
    for row in image_of:
        out, a = [], 0
        for b in range(1, len(row) + 1):
            if b == len(row) or row[b] != row[a]:
                out.append((int(row[a]), a // 16, (b - 1) // 16))
                a = b
        rows.append(out)
    return rows


@pytest.mark.parametrize("k", [2, 3, 9, 16], ids=lambda k: f"K{k}")
@pytest.mark.parametrize("hw", [(40, 53), (7, 16), (1, 33)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_paste_runs_follow_the_reference_output(profile_cpu, k, hw):
    # each image filled with its own index: the reference's DCutMix output says which image every pixel copies
    h, w = hw
    n = 5
    p = dali_kmix.sample_params("dcutmix", n, h, w, k=k, rng=np.random.default_rng(k + h))
    x = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 1, h, w)).copy()
    image_of = reference.mix_images(x, p, "CHW")[:, 0].astype(np.int64)
    runs = profile_cpu.paste_runs(p, h, w)
    for s in range(n):
        assert runs[s] == _runs_of_source_map(image_of[s]), f"sample {s}"


def test_cache_model_counts(profile_cpu):
    kw = dict(batch=6, size=48, channels=3)
    none = profile_cpu.cache_model(16, l1_kib=0, l2_kib=0, **kw)
    every = profile_cpu.cache_model(16, workers=1, l1_kib=1 << 20, l2_kib=1 << 20, **kw)
    two = profile_cpu.cache_model(16, workers=2, l1_kib=1 << 20, l2_kib=1 << 20, **kw)
    assert none["touches"] == every["touches"] == two["touches"] > none["unique"] == every["unique"] > 0
    # no cache: every touch misses both; a cache of every line: only the first touch of each line misses
    assert none["l1_misses"] == none["l2_misses"] == none["touches"]
    assert every["l1_misses"] == every["l2_misses"] == every["unique"]
    # two workers with caches of their own: a line both need is fetched by each
    assert every["unique"] <= two["l2_misses"] <= none["touches"]
    real = profile_cpu.cache_model(16, **kw)
    assert real["unique"] <= real["l2_misses"] <= real["l1_misses"] <= real["touches"]


def test_cache_model_orders_differ_only_in_reuse(profile_cpu):
    # the same record and runs in either order: the same touches and distinct lines, and with an L2 that holds a
    # chunk of every sample but not a whole sample's sources, samples first misses less
    kw = dict(batch=16, size=64, channels=3, workers=1, l1_kib=4, l2_kib=96)
    first = profile_cpu.cache_model(16, samples_first=True, **kw)
    by_sample = profile_cpu.cache_model(16, samples_first=False, **kw)
    assert first["touches"] == by_sample["touches"] and first["unique"] == by_sample["unique"]
    assert first["l2_misses"] < by_sample["l2_misses"]


@pytest.fixture
def ran(profile_cpu, monkeypatch):
    """main's runs recorded instead of made: the stages of each configuration, the cache model's K."""
    log = []
    monkeypatch.setattr(profile_cpu, "operator_stages", lambda *cfg: log.append(("operator", cfg)) or {})
    monkeypatch.setattr(profile_cpu, "saliency_stages", lambda batch: log.append(("saliency", batch)) or {})
    monkeypatch.setattr(profile_cpu, "interleaved", lambda stages, rounds: log.append(("rounds", rounds)) or {})
    monkeypatch.setattr(profile_cpu, "cache_model", lambda k, **kw: log.append(("cache", k)) or dict.fromkeys(
        ("touches", "l1_misses", "l2_misses", "unique"), 0.0))
    monkeypatch.setattr(profile_cpu, "callgrind", lambda stage, batch: log.append(("callgrind", stage, batch)) or 2e6)
    return log


@pytest.mark.parametrize("only, want", [
    (["dcutmix-uint8-32-2-batch"], [("operator", ("dcutmix", "uint8", 32, 2, "batch")), ("rounds", 3)]),
    (["saliency"], [("saliency", 8), ("rounds", 3)]),
    (["saliency", "dmixup-float32-128-3-sample"],
     [("operator", ("dmixup", "float32", 128, 3, "sample")), ("rounds", 3), ("saliency", 8), ("rounds", 3)]),
], ids=["operator", "saliency", "both"])
def test_only_runs_the_named_configurations(profile_cpu, ran, only, want):
    profile_cpu.main(["--rounds", "3", "--batch", "8", "--only", *only])
    assert ran == want


@pytest.mark.parametrize("only", [["dcutmix-uint8-128-3"], ["saliency", "nope"], []],
                         ids=["without-mode", "one-unknown", "none"])
def test_only_refuses_unknown_names_and_lists_the_valid_ones(profile_cpu, ran, capsys, only):
    with pytest.raises(SystemExit):
        profile_cpu.main(["--only", *only])
    err = capsys.readouterr().err
    assert "--only" in err and ran == []
    if only:
        assert f"{only[-1]!r}" in err and "dcutmix-uint8-128-3-sample" in err and "'saliency'" in err


@pytest.mark.parametrize("argv, match", [
    (["--rounds", "0"], "argument --rounds: must be an integer >= 1, got '0'"),
    (["--rounds", "-2"], "argument --rounds: must be an integer >= 1, got '-2'"),
    (["--batch", "0"], "argument --batch: must be an integer >= 1, got '0'"),
    (["--reps", "0"], "argument --reps: must be an integer >= 1, got '0'"),
    (["--cache-model", "2", "1"], "argument --cache-model: must be an integer >= 2, got '1'"),
], ids=["rounds0", "rounds-negative", "batch0", "reps0", "cache-model-K1"])
def test_bad_counts_are_refused(profile_cpu, ran, capsys, argv, match):
    with pytest.raises(SystemExit):
        profile_cpu.main(argv)
    assert match in capsys.readouterr().err and ran == []


@pytest.mark.parametrize("stage, batch", [
    ("dcutmix:uint8:128:3:sample:mix_images", 128), ("saliency", 16), ("spectral_residual", 16),
], ids=["operator-batch-from-name", "saliency", "saliency-stage"])
def test_callgrind_prints_the_batch_the_stage_uses(profile_cpu, ran, capsys, stage, batch):
    profile_cpu.main(["--callgrind", stage, "--batch", "16"])
    assert capsys.readouterr().out == f"{stage} (batch {batch}): 2.00 M instructions per call\n"
    assert ran == [("callgrind", stage, 16)]


@pytest.mark.parametrize("stage", ["dcutmix:uint8:128:3:mix_images", "dcutmix:uint8:x:3:sample:copy",
                                   "dcutmix:uint8:128:3:sample:paste", "grey"],
                         ids=["no-mode", "batch-not-int", "unknown-stage", "unknown-name"])
def test_callgrind_refuses_malformed_stages(profile_cpu, ran, capsys, stage):
    with pytest.raises(SystemExit):
        profile_cpu.main(["--callgrind", stage])
    assert f"--callgrind: unknown stage {stage!r}" in capsys.readouterr().err and ran == []


def test_callgrind_counts_the_difference_of_one_and_three_calls(profile_cpu, monkeypatch):
    # valgrind's runs faked: 1 call 5,000 instructions, 3 calls 9,000 -> 2,000 per call (the counter, _count, is
    # not shadowed by main's argument helpers)
    runs = []

    class Done:
        returncode = 0

        def __init__(self, cmd):
            self.stderr = "" if "valgrind" not in cmd else f"==1== Collected : \n==1== I   refs:      " \
                f"{'9,000' if cmd[-1] == '3' else '5,000'}\n"

    monkeypatch.setattr(profile_cpu.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(profile_cpu, "_callgrind_env", lambda: {})
    monkeypatch.setattr(profile_cpu.subprocess, "run", lambda cmd, **kw: runs.append(cmd) or Done(cmd))
    assert profile_cpu.callgrind("saliency", 8) == 2000
    assert len(runs) == 3 and runs[1][-2:] == ["--reps", "1"] and runs[2][-2:] == ["--reps", "3"]
