"""The offline photo tree."""

import numpy as np
from PIL import Image

from dali_kmix.apps.data import PHOTOS, class_names, make_photo_tree


def test_photo_tree_layout_and_content(tmp_path):
    root = make_photo_tree(tmp_path / "t", images_per_class=3, size=40, seed=1)
    assert class_names(root) == sorted(PHOTOS)
    files = sorted(root.rglob("*.jpg"))
    assert len(files) == 3 * len(PHOTOS)
    img = np.asarray(Image.open(files[0]))
    assert img.shape == (40, 40, 3) and img.dtype == np.uint8 and img.std() > 5  # a photo, not a flat fill
    # variants of one photo differ from each other
    a, b = (np.asarray(Image.open(f), np.float32) for f in sorted((root / "coffee").glob("*.jpg"))[:2])
    assert np.abs(a - b).mean() > 2


def test_existing_tree_is_kept_and_rewritten_on_request(tmp_path):
    root = make_photo_tree(tmp_path / "t", images_per_class=2, size=32)
    stamp = (root / "rocket" / "rocket_000.jpg").stat().st_mtime_ns
    make_photo_tree(tmp_path / "t", images_per_class=2, size=32)
    assert (root / "rocket" / "rocket_000.jpg").stat().st_mtime_ns == stamp
    make_photo_tree(tmp_path / "t", images_per_class=3, size=32)  # a different tree is rewritten whole
    assert len(list((root / "rocket").glob("*.jpg"))) == 3
    assert not list(tmp_path.glob(".photos-*"))  # no temporary folder left behind
