"""Shared fixtures: real photographs, a JPEG tree, the GPU marker."""

import functools
import os

import numpy as np
import pytest


@functools.lru_cache(maxsize=None)
def gpu_available() -> bool:
    if os.environ.get("DALI_KMIX_NO_GPU"):
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def random_images(rng, dtype, shape, scale=40.0):
    """Random test images: uniform 0..255 for uint8, normal with ``scale`` for float dtypes."""
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return (rng.standard_normal(shape) * scale).astype(dtype)


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory):
    """An ImageNet-layout tree of 8 classes x 6 JPEGs made from scikit-image's photographs."""
    from dali_kmix.data import make_photo_tree

    return make_photo_tree(tmp_path_factory.mktemp("photos") / "train", images_per_class=6, size=96)


@pytest.fixture(scope="session")
def photos():
    """Four real photographs, 64x80 RGB uint8 (HWC)."""
    from PIL import Image

    from dali_kmix.data import _load_photo

    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        img = Image.fromarray(_load_photo(name)).resize((80, 64), Image.BILINEAR)
        out.append(np.asarray(img))
    return np.stack(out)
