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
