"""Helpers the test modules import (conftest.py only holds fixtures and hooks)."""

import numpy as np


def random_images(rng, dtype, shape, scale=40.0):
    """Random test images: uniform 0..255 for uint8, normal with ``scale`` for float dtypes."""
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return (rng.standard_normal(shape) * scale).astype(dtype)


def gpu_sleep(seconds, stream_ptr=None):
    """Queue a one-thread kernel that keeps a CUDA stream busy for about ``seconds`` (``__nanosleep``): work queued
    behind it on that stream waits, work on any other stream does not. ``stream_ptr``: a raw CUDA stream handle
    (e.g. ``torch.cuda.Stream().cuda_stream``); default CuPy's current stream."""
    import cupy

    from dali_kmix.apps.bench_gpu import _HOLD_SOURCE

    kern = cupy.RawKernel(_HOLD_SOURCE, "kmix_bench_hold")
    stream = cupy.cuda.get_current_stream() if stream_ptr is None else cupy.cuda.ExternalStream(stream_ptr)
    with stream:
        kern((1,), (1,), (np.int64(seconds * 1e9),))
