"""Helpers the test modules import (conftest.py only holds fixtures and hooks)."""

import numpy as np


def random_images(rng, dtype, shape, scale=40.0):
    """Random test images: uniform 0..255 for uint8, normal with ``scale`` for float dtypes."""
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return (rng.standard_normal(shape) * scale).astype(dtype)
