"""The demo's pieces: the interleaved throughput measurement and the captioned grid."""

import numpy as np
import pytest

pytest.importorskip("nvidia.dali")

from nvidia.dali import fn, pipeline_def  # noqa: E402

from dali_kmix.apps.demo import measure_throughput, save_grid  # noqa: E402


def test_measure_throughput_runs_every_pipeline_in_every_round():
    calls = {"a": 0, "b": 0}

    @pipeline_def(batch_size=4, num_threads=1, device_id=None)
    def pipe(name):
        def src():
            calls[name] += 1
            return [np.zeros((2, 2), np.uint8)] * 4
        return fn.external_source(source=src, batch=True)

    a, b = pipe("a"), pipe("b")
    a.build()
    b.build()
    rates = measure_throughput([a, b], batches=3, warmup=1, rounds=2)
    assert len(rates) == 2 and all(r > 0 for r in rates)
    # warm-up + rounds x batches runs each (prefetching may ask the source for a few batches ahead)
    assert calls["a"] >= 1 + 2 * 3 and calls["b"] >= 1 + 2 * 3


def test_grid_png(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 20, 24, 3), dtype=np.uint8)
    targets = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]] * 0.6 + 0.4 / 3
    png = save_grid(images, targets, ["cat", "dog", "owl"], tmp_path / "g.png", cols=2)
    assert png.stat().st_size > 1000
