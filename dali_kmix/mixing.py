"""The public array API: apply a :class:`~dali_kmix.MixParams` record to images and labels.

:func:`mix_images` checks its arguments and runs the CUDA kernels: CuPy arrays on
the GPU, NumPy arrays through the same kernels compiled for the CPU (or, where
no C++ compiler is available, the NumPy reference of :mod:`dali_kmix.reference`,
which gives the same bits); :mod:`dali_kmix.backends` decides which.
:func:`mix_labels` builds the soft targets.
"""

from __future__ import annotations

import numpy as np

from . import _checks, reference
from .backends import backend_for, host_kernels
from .record import MixParams

__all__ = ["mix_images", "mix_labels", "blend_samples"]


def _is_cupy(a) -> bool:
    return _checks.array_module(a) is not np


def _params_like(params: MixParams, gpu: bool) -> MixParams:
    if not isinstance(params, MixParams):
        raise TypeError(f"params must be a dali_kmix.MixParams, got {type(params).__name__}")
    if gpu and params.xp is np:
        return params.to_cupy()
    if not gpu and params.xp is not np:
        return params.to_numpy()
    return params


def blend_samples(samples, params: MixParams, layout: str, out=None, *, workers=None):
    """Mix N same-shape samples into ``out`` (N, ...) or a new array.

    ``samples``: a list of N samples (no stacking copy), or an (N, ...) batch array. Arrays are
    all NumPy or all CuPy; :func:`dali_kmix.backends.backend_for` picks the kernels. The record
    is assumed checked; the DALI operators call this directly. Samples and rows of ``out`` may
    be strided views (a transposed batch): the kernels get contiguous copies of such samples,
    and write such rows through a contiguous buffer copied into them. A C-contiguous ``out``
    is handed to the kernels whole (the CPU kernels then read its rows' addresses at once).
    ``out`` must not overlap the samples: a sample is read as a partner of other rows while rows are written
    (no check here: the callers, the operators and ``KMixup``, write into buffers of their own).
    """
    n = len(samples)
    if n == 0:  # no sample to take a shape from
        return out if out is not None else np.empty((0,), np.uint8)
    _checks.check_kernel_extents("images", samples[0].shape, layout)
    xp = _checks.array_module(samples[0])
    if out is None:
        out = xp.empty((n,) + tuple(samples[0].shape), dtype=samples[0].dtype)
    backend = backend_for(samples[0], workers=workers)
    if isinstance(out, xp.ndarray) and out.flags.c_contiguous:
        backend.blend(samples, out, params, layout)
        return out
    rows = list(out)
    dense = [r if r.flags.c_contiguous else xp.empty(r.shape, r.dtype) for r in rows]
    backend.blend(samples, dense, params, layout)
    for row, d in zip(rows, dense):
        if d is not row:
            row[...] = d
    return out


def mix_images(images, params: MixParams, layout: str = "HWC"):
    """Mix a batch of images as ``params`` says; returns a new array of the same type and dtype.

    Args:
        images: NumPy or CuPy array, ``(N, H, W, C)`` for layout "HWC" or
            ``(N, C, H, W)`` for "CHW"; dtype uint8, float16 or float32. A list or tuple of samples is
            stacked; they must share one dtype (no promotion).
        params: a :class:`MixParams` for this batch (N rows); its arrays are moved to
            the images' device if needed. Its values are validated (on CuPy this
            reads a few flags back to the host).
        layout: "HWC" or "CHW" (never guessed: a wrong guess cuts boxes across channels).

    DMixup sums ``weights[n, k] * images[sources[n, k]]`` in float32 with fused
    multiply-adds in k order; uint8 results are rounded half to even and clipped to
    [0, 255]; a share of exactly 0 contributes nothing, even where its image holds Inf or
    NaN. DCutMix copies pixels, so it is exact; it needs images of at least 1 x 1 pixels
    (its label weights are box areas / (H x W)), while DMixup also blends empty ones.
    """
    layout = _checks.check_layout(layout)
    if isinstance(images, (list, tuple)) and images:
        _checks.check_one_dtype("images", images)
    gpu = _is_cupy(images)
    if not gpu:
        images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must have 4 dimensions (N, {', '.join(layout)}), got shape {tuple(images.shape)}")
    _checks.check_image_dtype("images", images.dtype)
    params = _params_like(params, gpu)
    n = images.shape[0]
    _checks.check_kernel_extents("images", images.shape[1:], layout)
    h, w = _checks.spatial_size(images.shape[1:], layout)
    if params.boxes is not None and n:
        _checks.check_area("images", images.shape[1:], layout, "a DCutMix record")
    if n == 0:
        params.validate(n, h, w)
        return images.copy()
    xp = params.xp
    images = xp.ascontiguousarray(images)
    out = xp.empty(images.shape, images.dtype)
    # the record checked against the batch (on the CPU build in one pass, with the blend), then applied
    backend_for(images).blend_checked(images, out, params, layout)
    return out


def mix_labels(labels, params: MixParams, num_classes: int, smoothing: float = 0.0):
    """Soft targets for a mixed batch; float32 ``(N, num_classes)``, same array kind as ``labels`` (NumPy or
    CuPy: ``params`` is moved to the labels' device if needed).

    ``targets[n] = sum_k weights[n, k] * onehot_s(labels[sources[n, k]])`` where
    ``onehot_s`` puts ``1 - s + s/C`` on the class and ``s/C`` elsewhere
    (``s = smoothing``). ``labels``: integer ``(N,)`` or ``(N, 1)`` in ``[0, num_classes)``.
    The record's sources and weights are validated (:meth:`MixParams.validate_rows`).
    """
    if not isinstance(params, MixParams):
        raise TypeError(f"params must be a dali_kmix.MixParams, got {type(params).__name__}")
    smoothing = _checks.check_smoothing(smoothing)
    gpu = _is_cupy(labels)
    params = _params_like(params, gpu)
    kernels = host_kernels() if params.xp is np else None
    if kernels is not None:  # the CPU build: the labels' range, the record's rows and the reference's float32
        num_classes = _checks.check_int("num_classes", num_classes, 1)  # operations, in one pass
        out = kernels.mix_labels(_checks.label_vector(labels, params.n), params, num_classes,
                                 *reference.smoothed_values(num_classes, smoothing))
        if out is not None:
            return out
    labels = _checks.check_labels(labels, num_classes, params.n)  # names a label out of range,
    params.validate_rows()  # or a fault of the record (a row sum the one pass held a hair tighter passes)
    return reference.mix_labels(labels, params, num_classes, smoothing)
