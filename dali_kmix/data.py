"""Small real-photo datasets that install offline, written as ImageNet-layout JPEG trees.

:func:`make_photo_tree` uses the photographs bundled with scikit-image (public
domain / CC0: the astronaut Eileen Collins, Chelsea the cat, a cup of coffee, a
rocket launch, the Hubble deep field, a tissue stain, the cameraman, coins):
one class per photograph, each image a different random crop, flip and
brightness of it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["PHOTOS", "make_photo_tree", "class_names"]

#: Photographs bundled in scikit-image's wheel (no download needed).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "camera", "coins")


def _load_photo(name: str) -> np.ndarray:
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def _variant(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    area = rng.uniform(0.35, 1.0)
    side = int(round(min(h, w) * np.sqrt(area)))
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    crop = img[y:y + side, x:x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    out = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR), np.float32)
    out *= rng.uniform(0.8, 1.2)
    return np.clip(out, 0, 255).astype(np.uint8)


def make_photo_tree(root, *, images_per_class: int = 12, size: int = 256, seed: int = 0,
                    classes=PHOTOS, overwrite: bool = False) -> Path:
    """Write ``root/<class>/<class>_<i>.jpg``; returns ``root``.

    The tree is written into a temporary folder and renamed into place, so a
    partly written tree is never left behind. An existing complete tree is kept
    unless ``overwrite``.
    """
    from PIL import Image

    root = Path(root)
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be >= 1, got {images_per_class}")
    expected = {c: images_per_class for c in classes}
    if root.is_dir() and not overwrite:
        found = {p.name: len(list(p.glob("*.jpg"))) for p in root.iterdir() if p.is_dir()}
        if found == expected:
            return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".photos-", dir=root.parent))
    try:
        rng = np.random.default_rng(seed)
        for cls in classes:
            img = _load_photo(cls)
            (tmp / cls).mkdir()
            for i in range(images_per_class):
                Image.fromarray(_variant(img, size, rng)).save(tmp / cls / f"{cls}_{i:03d}.jpg", quality=90)
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


def class_names(data_dir) -> list[str]:
    """Class names in the order ``readers.file`` assigns labels 0, 1, ... (sorted folder names)."""
    return sorted(p.name for p in Path(data_dir).iterdir() if p.is_dir())
