"""Saliency for Saliency-DCutMix: the most salient point of every image of a batch.

Spectral residual (Hou & Zhang, CVPR 2007), computed on the device the images are
on (NumPy FFT on the CPU, CuPy FFT on the GPU, both in float32) for a whole batch at once:

1. a grey copy (ITU-R 601 luma of RGB; the mean of other channel counts),
   resized bilinearly (half-pixel centres) to ``work_size`` x ``work_size``;
2. the log-amplitude spectrum minus its 3 x 3 local mean (reflect-101 border) is the
   spectral residual;
3. back-transformed with the original phase, its magnitude is Gaussian-smoothed
   (5 x 5, sigma 8) and squared.

These are the steps and constants of OpenCV contrib's
``StaticSaliencySpectralResidual`` (64 x 64 working size), and the tests check
that the argmax agrees with it on real photographs. The argmax cell, mapped back
to full resolution (its centre pixel), is the point a box is centred on.

``method="fine-grained"`` uses OpenCV contrib's ``StaticSaliencyFineGrained`` on the
full image instead (what SaliencyMix's code uses; CPU only, needs
``opencv-contrib-python``).
"""

from __future__ import annotations

import numpy as np

from . import _checks
from .backends import backend_for, host_kernels
from .reference import grey, resize_bilinear

__all__ = ["SALIENCY_METHODS", "grey", "resize_bilinear", "small_grey", "spectral_residual", "salient_points",
           "smoothing_taps"]

SALIENCY_METHODS = ("spectral-residual", "fine-grained")
WORK_SIZE = 64


_xp = _checks.array_module


def _sample_list(images) -> list:
    """The samples of a batch array (made C-contiguous first: a strided batch is one copy, not one per sample) or of
    a list, for the kernels that read every sample through its own pointer."""
    if not isinstance(images, (list, tuple)):
        images = _xp(images).ascontiguousarray(images)
    return list(images)


def _check_channels(shape, layout: str) -> None:
    """An (N, ...) array batch whose sample ``shape`` contradicts ``layout`` (:func:`_checks.layout_contradiction`:
    a CHW batch read with the default "HWC", or the reverse) raises ValueError, as the DALI operators refuse such
    images (:func:`_checks.check_channels`): read in the wrong layout, rows of channels would be taken for pixels
    and the points would be silently wrong."""
    seen = _checks.layout_contradiction(shape, layout)
    if seen is None:
        return
    other, shape, count, where = seen
    batch = "(N, C, H, W)" if other == "CHW" else "(N, H, W, C)"
    raise ValueError(
        f"images: layout='{layout}' was given but the samples' shape {shape} looks {other} ({count} channels "
        f"{where}); read as {layout}, channels would be taken for pixels and the salient points would be wrong. "
        f"Pass layout='{other}' for an {batch} array, or, if the shape is meant, the samples as a list (whose "
        f"layout is taken as given, as the DALI operators check it against the layout the images carry)")


def _checked_batch(images, layout: str):
    """``(batch, n, shape, xp)`` of a batch array or a list of same-shape samples, with the checks the kernels need
    (``layout`` checked by the caller): a list stays a list (the kernels read every sample through its own
    pointer); ``shape`` is one sample's (None for an empty list). Every sample one dtype (uint8, float16, float32),
    one shape, at least 1 x 1 pixels and one channel, every extent indexable by the kernels' ints
    (:func:`_checks.check_kernel_extents`: ctypes would truncate larger ones silently), and an array batch's shape
    fitting ``layout`` (:func:`_check_channels`). An empty batch is returned after the dtype and shape
    checks."""
    listed = isinstance(images, (list, tuple))
    if listed:
        samples = list(images)
        if not samples:
            return samples, 0, None, np
        xp = _xp(samples[0])
        shape = _checks.check_same_shapes("images", [a.shape for a in samples], layout)
        _checks.check_one_dtype("images", samples)
        batch, n = samples, len(samples)
    else:
        xp = _xp(images)
        batch = np.asarray(images) if xp is np else images
        if batch.ndim != 4:
            raise ValueError(f"images must have 4 dimensions (N, {', '.join(layout)}), got shape "
                             f"{tuple(batch.shape)}")
        n, shape = batch.shape[0], tuple(batch.shape[1:])
        _checks.check_image_dtype("images", batch.dtype)
    if n == 0:
        return batch, n, shape, xp
    _checks.check_area("images", shape, layout, "saliency", "an empty image has no salient pixel")
    if _checks.hwc_dims(shape, layout)[2] < 1:
        raise ValueError(f"images: saliency needs at least one channel, but sample 0 has shape {tuple(shape)} "
                         f"(layout {layout})")
    _checks.check_kernel_extents("images", shape, layout)
    if not listed:
        _check_channels(shape, layout)
    return batch, n, shape, xp


def small_grey(images, layout: str, work_size: int = WORK_SIZE):
    """float32 ``(N, work_size, work_size)`` grey copies of a batch or of a list of same-shape samples.

    Runs the ``kmix_grey_resize`` kernel (GPU, or the CPU build) straight from the
    per-sample buffers; without a C++ compiler, the NumPy reference
    (:func:`~dali_kmix.reference.grey`, :func:`~dali_kmix.reference.resize_bilinear`),
    which gives the same bits. ``images`` and ``layout`` as for :func:`salient_points` (and checked alike);
    ``work_size`` >= 1.
    """
    layout = _checks.check_layout(layout)
    work_size = _checks.check_int("work_size", work_size, 1)
    batch, n, _, xp = _checked_batch(images, layout)
    return _small_grey(batch, n, xp, layout, work_size)


def _small_grey(batch, n, xp, layout, work_size):
    """:func:`small_grey` of a batch :func:`_checked_batch` has checked (``batch, n, xp`` as it returns them)."""
    if n == 0:
        return xp.zeros((0, work_size, work_size), np.float32)
    samples = _sample_list(batch)
    return backend_for(samples[0]).grey_resize(samples, layout, work_size, work_size)


def _correlate_rows(p, kernel, axis, n):
    """sum_i kernel[i] * p[i:i + n] along ``axis`` (1 or 2) of the padded ``p``: the terms added in the order
    i = 0, 1, ..., into one buffer (the bits of ``sum(kernel[i] * p[...])``: its leading ``0 +`` adds nothing to
    these non-negative maps)."""
    xp = _xp(p)
    cut = (lambda i: p[:, i:i + n]) if axis == 1 else (lambda i: p[:, :, i:i + n])
    acc = float(kernel[0]) * cut(0)
    term = xp.empty_like(acc)
    for i in range(1, len(kernel)):
        xp.multiply(cut(i), float(kernel[i]), out=term)
        acc += term
    return acc


def _filter2d_separable(a, kernel):
    """Correlate the last two axes of ``a`` (>= 0) with ``kernel`` x ``kernel`` (reflect-101 border)."""
    xp = _xp(a)
    r = len(kernel) // 2
    a = _correlate_rows(xp.pad(a, ((0, 0), (r, r), (0, 0)), mode="reflect"), kernel, 1, a.shape[1])
    return _correlate_rows(xp.pad(a, ((0, 0), (0, 0), (r, r)), mode="reflect"), kernel, 2, a.shape[2])


def _gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    k = np.exp(-x * x / (2 * sigma * sigma))
    return k / k.sum()


def smoothing_taps() -> np.ndarray:
    """The 5 taps (float64) of the Gaussian (sigma 8) that smooths the spectral-residual map, as every path
    (NumPy, CuPy, the CPU build, ``fn.kmix_draw``) applies it."""
    return _gaussian_kernel(5, 8.0)


def _box_sum3(a):
    """3 x 3 window sums over the last two axes of ``a`` (reflect-101 border, as the other filters)."""
    p = _xp(a).pad(a, ((0, 0), (1, 1), (1, 1)), mode="reflect")
    rows = p[:, :-2] + p[:, 1:-1]
    rows += p[:, 2:]
    out = rows[:, :, :-2] + rows[:, :, 1:-1]
    out += rows[:, :, 2:]
    return out


def _zero_bin_tolerance(g, ftype):
    """Per image of ``g`` (``(N, h, w)`` as given, before its cast to ``ftype``: its dtype is the input's
    precision; transformed in precision ``ftype``), the largest |F| that rounding alone can leave in a bin
    whose exact value is 0.

    The grey copy's own rounding (float32 from the resize: at most eps/2 of every pixel) moves a
    bin by up to eps/2 * sum|g|; the FFT's rounding adds about eps * log2(h w) * sum|g|. So
    ``eps * log2(h w) * sum|g|``, with eps the coarser of the input's and the FFT's precisions: the
    same bins count as zero in float32 and float64, on the CPU and the GPU. Real photographs'
    weakest bins are ~10x above it (at 64 x 64, uint8 range: ~1e-5 of the DC term vs ~1.5e-6).
    """
    eps = np.finfo(ftype).eps
    if g.dtype.kind == "f":
        eps = max(eps, np.finfo(g.dtype).eps)
    n = g.shape[-2] * g.shape[-1]
    return _xp(g).abs(g).sum(axis=(-2, -1), dtype=ftype) * ftype(eps * max(np.log2(n), 1.0))


def spectral_residual(g, precision=None):
    """Spectral-residual saliency of ``(N, h, w)`` float images; float32 ``(N, h, w)``, max 1 per image.

    ``precision``: the FFT's float type; default float32 (on the CPU as on the GPU: half the
    memory traffic of float64, and the tests hold both against OpenCV's float64 maps); float64
    as OpenCV computes.

    Where |F| is zero: a bin whose amplitude is 0 -- or no larger than the rounding of the
    grey copy and of the FFT can leave there (:func:`_zero_bin_tolerance`, relative to the image's
    sum |g|, so it does not depend on the image's scale) -- carries no energy, hence no residual: it
    stays 0 in the back-transform and is left out of its neighbours' 3 x 3 local mean (the mean is
    over the nonzero bins of the window). Why: log 0 is -inf; clamping it to a small constant
    puts a deep hole into the log spectrum, the local mean next to it drops, and exp then makes
    the bins around every exact zero the strongest of the spectrum -- a periodic pattern whose
    peak lies far from any object. Exact zeros are common: a flat background with one uniform
    object has whole rows of them (the zeros of the object's sinc), and float32 rounding leaves
    "zeros" of 1e-12..1e-9 of the DC term that are no better. (OpenCV uses log(1 + |F|) instead, which
    bounds the hole but depends on the grey scale; on photographs, where no bin is near zero,
    the two agree.)

    An empty batch ``(0, h, w)`` gives an empty float32 ``(0, h, w)`` on every path.

    On the CPU, in float32 on a grid whose sides are powers of two (the default 64 x 64), the CPU
    build's implementation of these steps runs (``kernels/kmix_spectral.h``: one image per worker
    thread, vectorised; maps within a few float32 ulps of this code's); elsewhere this code.
    """
    xp = _xp(g)
    ftype = np.dtype(precision) if precision is not None else np.dtype(np.float32)
    if ftype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"precision must be float32 or float64, got {ftype}")
    ftype = ftype.type
    if g.shape[0] == 0:  # no image: no map (the paths below would reshape (0, -1))
        return xp.zeros(g.shape, np.float32)
    if xp is np and ftype is np.float32 and g.dtype in (np.float32, np.float64) and \
            all(_power_of_two(s) for s in g.shape[-2:]):
        kernels = host_kernels()
        if kernels is not None:
            return kernels.spectral_residual(g, smoothing_taps())[0]
    return _spectral_residual(g, ftype)


def _power_of_two(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def _spectral_residual(g, ftype):
    xp = _xp(g)
    # from the input's own precision, before the cast: float32 input transformed in float64 keeps the float32
    # tolerance (the same bins count as zero in both precisions)
    tolerance = _zero_bin_tolerance(g, ftype)
    g = g.astype(ftype, copy=False)
    if xp is np and ftype is np.float32:
        # NumPy runs a forward transform whose normalisation is its default (a factor 1, a Python int) in
        # float64 whatever the input; norm="forward" (a factor 1 / (h w) of the input's type) keeps it in
        # float32, at about half the cost, and h w, a power of two on the 64 x 64 grid, scales it back exactly.
        spec = xp.fft.fft2(g, norm="forward")
        spec *= ftype(g.shape[-2] * g.shape[-1])
    else:
        spec = xp.fft.fft2(g)
    amp = xp.abs(spec)
    live = amp > tolerance[:, None, None]
    # on the CPU, where every bin carries energy (photographs), the masks change nothing: left out
    every = xp is np and bool(live.all())
    safe_amp = amp if every else xp.where(live, amp, ftype(1))
    log_amp = xp.log(safe_amp)  # 0 in the zero bins, which the local mean leaves out
    # 3 x 3 mean over the live bins of each window (a live bin counts itself, so no 0 / 0 where it matters)
    count = np.uint8(9) if every else xp.maximum(_box_sum3(live.astype(np.uint8)), np.uint8(1))
    residual = _box_sum3(log_amp)
    residual /= count
    residual = xp.subtract(log_amp, residual, out=residual)
    # exp(residual) with the original phase: spec * exp(residual) / |spec|; 0 in the zero bins
    scale = xp.exp(residual, out=residual)
    scale /= safe_amp
    if not every:
        scale *= live
    spec *= scale
    back = xp.abs(xp.fft.ifft2(spec))
    sal = _filter2d_separable(back, smoothing_taps())
    sal *= sal
    peak = sal.reshape(sal.shape[0], -1).max(axis=1)
    sal /= xp.maximum(peak, 1e-30)[:, None, None]
    return sal.astype(np.float32, copy=False)


def _fine_grained_points(images, layout):
    try:
        import cv2

        make = cv2.saliency.StaticSaliencyFineGrained_create
    except (ImportError, AttributeError):
        raise ValueError("method='fine-grained' (saliency= of the DALI operators) needs OpenCV's contrib saliency "
                         "module (pip install opencv-contrib-python-headless)") from None
    x = np.asarray(images)
    if layout == "CHW":
        x = np.moveaxis(x, 1, -1)
    pts = np.empty((x.shape[0], 2), np.int32)
    for i, img in enumerate(x):
        g = grey(img[None], "HWC")[0]
        if not np.isfinite(g).all():  # a NaN or +-Inf pixel: no peak; the image's centre, as the spectral path
            pts[i] = (g.shape[0] // 2, g.shape[1] // 2)
            continue
        lo, hi = float(g.min()), float(g.max())
        g8 = np.zeros(g.shape, np.uint8) if hi <= lo else ((g - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        ok, sal = make().computeSaliency(g8)
        pts[i] = np.unravel_index(int(np.argmax(sal)), sal.shape) if ok else (g.shape[0] // 2, g.shape[1] // 2)
    return pts


def _first_peaks(sal):
    """The flat index of each ``(N, h, w)`` map's first peak (``argmax``); where a map holds a non-finite value
    (a NaN or +-Inf pixel makes the whole map NaN), the centre cell ``(h // 2, w // 2)`` instead, as the CPU
    build's ``kmix_spectral::spectral_residual`` chooses. Array operations only: no host synchronisation on
    the GPU."""
    xp = _xp(sal)
    n, h, w = sal.shape
    flat = sal.reshape(n, -1)
    finite = xp.isfinite(flat).all(axis=1)
    return xp.where(finite, xp.argmax(flat, axis=1), (h // 2) * w + w // 2)


def salient_points(images, layout: str = "HWC", *, method: str = "spectral-residual",
                   work_size: int = WORK_SIZE):
    """The most salient pixel ``(y, x)`` of every image; int32 ``(N, 2)``, same array kind as ``images``.

    Args:
        images: NumPy or CuPy batch ``(N, H, W, C)`` ("HWC") or ``(N, C, H, W)`` ("CHW"), or a
            list of N same-shape samples (DALI's batch, read without stacking); uint8, float16
            or float32, at least 1 x 1 pixels and one channel.
        layout: "HWC" or "CHW". A batch array whose shape contradicts it (more than 4 channels where the
            layout puts them and at most 4 at the other end: a CHW batch given as "HWC") raises ValueError, as
            the DALI operators refuse such images; a list of samples is taken as given (the operators check
            it against the layout the images carry, which may be such a shape).
        method: "spectral-residual" (default, any device) or "fine-grained" (OpenCV, CPU).
        work_size: side of the square working image of the spectral residual, >= 4.

    On the CPU, for a working side that is a power of two (the default 64), the CPU build finds the points in
    one launch, one image per worker: its grey copy, map and peak stay in the worker's cache and no (N, 64, 64)
    arrays are made (``kmix_host_salient_points``; the same points as :func:`small_grey`,
    :func:`spectral_residual` and the peak's cell one after another).

    Non-finite pixels: a NaN or +-Inf pixel (float16 or float32) makes the image's whole saliency map
    non-finite, so it has no peak; such an image's point is the centre cell ``(work_size // 2, work_size // 2)``
    of the working grid, mapped as any peak is: ``((2 (work_size // 2) + 1) H // (2 work_size), ...)``, the
    image's centre ``(H // 2, W // 2)`` up to the cell's rounding. The same point on every path (the CPU build,
    the NumPy code, CuPy); the other images of the batch are unaffected. With ``method="fine-grained"``,
    which has no working grid, such an image's point is ``(H // 2, W // 2)``.
    """
    layout = _checks.check_layout(layout)
    _checks.check_choice("method", method, SALIENCY_METHODS)
    work_size = _checks.check_int("work_size", work_size, 4)
    batch, n, shape, xp = _checked_batch(images, layout)
    if n == 0:
        return xp.zeros((0, 2), np.int32)
    h, w = _checks.spatial_size(shape, layout)
    if method == "fine-grained":
        if xp is not np:
            raise ValueError("method='fine-grained' runs on the CPU only; use 'spectral-residual' on the GPU")
        return _fine_grained_points(np.stack(batch) if isinstance(batch, list) else batch, layout)
    kernels = host_kernels() if xp is np and _power_of_two(work_size) else None
    if kernels is not None:  # the CPU build: grey copy, map and peak of each image in one launch (the same points)
        return kernels.salient_points(_sample_list(batch), layout, work_size, work_size, smoothing_taps())
    sal = spectral_residual(_small_grey(batch, n, xp, layout, work_size))  # checked above
    flat = _first_peaks(sal)
    iy, ix = flat // work_size, flat % work_size
    # centre pixel of the working-size cell, in full-resolution coordinates
    cy = xp.minimum(((2 * iy + 1) * h) // (2 * work_size), h - 1)
    cx = xp.minimum(((2 * ix + 1) * w) // (2 * work_size), w - 1)
    return xp.stack([cy, cx], axis=1).astype(np.int32)
