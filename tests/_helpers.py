"""Helpers the test modules import (conftest.py only holds fixtures and hooks)."""

import numpy as np


def random_images(rng, dtype, shape, scale=40.0):
    """Random test images: uniform 0..255 for uint8, normal with ``scale`` for float dtypes."""
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return (rng.standard_normal(shape) * scale).astype(dtype)


def kmix_here(argv, capsys):
    """``kmix ARGV`` in the test process (the same ``cli.main`` and ``parser.exit`` as the command): (exit status,
    stdout, stderr)."""
    from dali_kmix.apps import cli

    try:
        rc = cli.main(argv)
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err
