"""Shared fixtures (real photographs, a JPEG tree) and the GPU marker. Helpers live in _helpers.py."""

import numpy as np
import pytest

from dali_kmix.backends import gpu_available


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory):
    """An ImageNet-layout tree of 8 classes x 6 JPEGs made from scikit-image's photographs."""
    from dali_kmix.apps.data import make_photo_tree

    return make_photo_tree(tmp_path_factory.mktemp("photos") / "train", images_per_class=6, size=96)


@pytest.fixture(scope="session")
def photos():
    """Four real photographs, 64x80 RGB uint8 (HWC)."""
    from PIL import Image

    from dali_kmix.apps.data import _load_photo

    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        img = Image.fromarray(_load_photo(name)).resize((80, 64), Image.BILINEAR)
        out.append(np.asarray(img))
    return np.stack(out)
