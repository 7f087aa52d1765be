"""The plain NumPy reference of the mixing, written to be checked by eye.

These functions define what the CUDA kernels (on the GPU and compiled for the
CPU) must produce, bit for bit:

* DMixup: ``out[n] = sum_k weights[n, k] * images[sources[n, k]]``, accumulated in
  float32 in the order k = 0, 1, ..., K-1 as fused multiply-adds
  (``acc = fma(w_k, x_k, acc)``, one rounding per step, starting from 0). uint8
  results are rounded half to even and clipped to [0, 255]; float16 results are
  rounded to nearest even from the float32 sum. A share ``w_k`` of exactly 0 contributes
  nothing whatever ``x_k`` holds: there ``x_k`` is replaced by a zero of its sign, so
  Inf or NaN in a zero-share partner cannot turn the sum into NaN (0 * Inf), while for
  every finite ``x_k`` the fused multiply-add gives the same bits as with ``x_k`` itself
  (``w_k * x_k`` is then the same signed zero). Simply skipping the term would not: the
  sum can be -0 (a negative product below the smallest subnormal rounds to -0) and
  ``fma(0, x, -0)`` is +0 for ``x >= 0``.
* DCutMix: ``out[n]`` is a copy of ``images[n]`` in which box ``j`` (in order
  j = 0 .. K-2, deeper boxes last) is overwritten by the same pixels of
  ``images[sources[n, j + 1]]``: every output pixel is copied from exactly one
  input pixel, so the result is exact for every dtype.

* The grey working copy of the saliency step (``kmix_grey_resize``): ITU-R 601 luma
  of RGB (the mean of other channel counts) in float32, in the kernels' order (:func:`grey`),
  then a bilinear resize with half-pixel centres (OpenCV's INTER_LINEAR).

Images are ``(N, H, W, C)`` for layout "HWC" and ``(N, C, H, W)`` for "CHW".
"""

from __future__ import annotations

import numpy as np

from . import _checks
from .record import MixParams

__all__ = ["fma32", "mix_images", "mix_labels", "smoothed_one_hot", "smoothed_values", "grey", "resize_bilinear",
           "norm_factors", "normalize"]

_LUMA = (0.299, 0.587, 0.114)


def fma32(a, b, c):
    """Correctly rounded float32 fused multiply-add ``round(a * b + c)``, like C's ``fmaf``.

    The product of two float32 numbers is exact in float64; the float64 sum ``s``
    is then rounded to float32. Rounding ``s`` instead of the exact sum can only go
    wrong when ``s`` lies exactly half-way between two float32 numbers; there
    the sign of the float64 rounding error (TwoSum) decides the direction.
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    c = np.asarray(c, dtype=np.float32)
    p = a.astype(np.float64) * b.astype(np.float64)
    c64 = c.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        s = p + c64
        bb = s - p
        err = (p - (s - bb)) + (c64 - bb)  # exact: p + c64 == s + err
        r = s.astype(np.float32)
        r64 = r.astype(np.float64)
        up = np.nextafter(r, np.float32(np.inf))
        down = np.nextafter(r, np.float32(-np.inf))
        other = np.where(s > r64, up, down)
        halfway = (s != r64) & np.isfinite(s) & (s * 2.0 == r64 + other.astype(np.float64))
        # s sits exactly on a tie; the true value lies above s if err > 0, below if err < 0.
        toward_true = np.where(err > 0, np.maximum(r, other), np.minimum(r, other))
        fix = halfway & (err != 0)
    return np.where(fix, toward_true, r).astype(np.float32)


def _float_to_dtype(acc: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return np.clip(np.rint(acc), 0, 255).astype(np.uint8)
    return acc.astype(dtype)


def mix_images(images: np.ndarray, params: MixParams, layout: str = "HWC") -> np.ndarray:
    """Reference mixing of a stacked batch; returns a new array of the same dtype.

    Args:
        images: uint8, float16 or float32, ``(N, H, W, C)`` ("HWC") or ``(N, C, H, W)`` ("CHW").
        params: a :class:`MixParams` for this batch (NumPy arrays).
        layout: "HWC" or "CHW".
    """
    images = np.asarray(images)
    params = params.to_numpy()
    n = images.shape[0]
    out = np.empty_like(images)
    if n == 0:
        return out
    if params.boxes is None:
        acc = np.zeros(images.shape, dtype=np.float32)
        for k in range(params.k):
            w = params.weights[:, k].reshape((n, 1, 1, 1))
            x = images[params.sources[:, k]].astype(np.float32)
            x = np.where(w == 0, np.copysign(np.float32(0), x), x)  # a zero share adds nothing, even to Inf/NaN
            acc = fma32(w, x, acc)
        return _float_to_dtype(acc, images.dtype)
    out[...] = images
    for i in range(n):
        for j in range(params.k - 1):
            y0, x0, y1, x1 = (int(v) for v in params.boxes[i, j])
            src = images[params.sources[i, j + 1]]
            if layout == "HWC":
                out[i, y0:y1, x0:x1, :] = src[y0:y1, x0:x1, :]
            else:
                out[i, :, y0:y1, x0:x1] = src[:, y0:y1, x0:x1]
    return out


def norm_factors(mean, std, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``(mean, inv_std)`` per channel as DALI's crop_mirror_normalize derives them from its float
    arguments: the mean itself, ``1 / std`` worked out in double; one value stands for every channel."""
    mean = np.asarray(mean, np.float32).reshape(-1)
    std = np.asarray(std, np.float32).reshape(-1)
    inv = (1.0 / std.astype(np.float64)).astype(np.float32)
    return np.broadcast_to(mean, (channels,)).copy(), np.broadcast_to(inv, (channels,)).copy()


def normalize(images: np.ndarray, mean, std, *, layout: str = "HWC", out_layout: str = "CHW", mirror=None,
              dtype=np.float32) -> np.ndarray:
    """crop_mirror_normalize of a stacked batch (no crop): ``(x - mean[c]) * inv_std[c]`` in float32 (two
    roundings), samples with ``mirror[s]`` flipped left-right, in ``out_layout``, stored as ``dtype`` (float32 or
    float16, rounded to nearest even)."""
    x = np.asarray(images)
    if layout == "CHW":
        x = x.transpose(0, 2, 3, 1)  # work in NHWC
    m, inv = norm_factors(mean, std, x.shape[-1])
    out = (x.astype(np.float32) - m) * inv
    if mirror is not None:
        flip = np.asarray(mirror).reshape(-1) != 0
        out[flip] = out[flip][:, :, ::-1]
    if out_layout == "CHW":
        out = out.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out.astype(dtype))


def smoothed_values(num_classes: int, smoothing: float = 0.0) -> tuple[np.float32, np.float32]:
    """``(on, off)`` of a smoothed one-hot as float32: ``1 - s + s/C`` at the label, ``s/C`` elsewhere.

    The one definition of label smoothing (NumPy, CuPy and the torch targets use it).
    """
    return np.float32(1.0 - smoothing + smoothing / num_classes), np.float32(smoothing / num_classes)


def smoothed_one_hot(labels, num_classes: int, smoothing: float = 0.0, xp=np):
    """float32 ``(N, C)``: ``1 - s + s/C`` at the label, ``s/C`` elsewhere."""
    on, off = smoothed_values(num_classes, smoothing)
    hit = labels[:, None] == xp.arange(num_classes)[None, :]
    return xp.where(hit, on, off).astype(np.float32)


def mix_labels(labels, params: MixParams, num_classes: int, smoothing: float = 0.0):
    """Soft targets ``sum_k weights[:, k] * onehot_s(labels[sources[:, k]])``; float32 ``(N, C)``.

    In float32, term by term in the order k = 0, 1, ..., K-1, starting from 0: every target is the
    chain ``((0 + t_0) + t_1) + ...`` with ``t_k = weights[:, k] * on`` where class ``c`` is the label
    of share k and ``weights[:, k] * off`` where it is not (``on, off``: :func:`smoothed_values`). Every
    class that is none of a row's K labels has the same chain (of the ``off`` terms), so it is worked
    out once per row and the K label columns each get their own: O(N K^2) arithmetic and one fill of
    the (N, C) array instead of K passes over it, with the same bits as summing K one-hot matrices.

    Works on NumPy or CuPy arrays (the array module of ``params``). Arguments are
    checked by :func:`dali_kmix.mix_labels`.
    """
    xp = params.xp
    n = params.n
    on, off = smoothed_values(num_classes, smoothing)
    lab = labels[params.sources]  # (N, K): the class of each share
    w_on, w_off = params.weights * on, params.weights * off  # the float32 terms t_k
    rest = xp.zeros(n, np.float32)  # the chain of a class that is no label of its row
    for k in range(params.k):
        rest = rest + w_off[:, k]
    own = xp.zeros(lab.shape, np.float32)  # own[:, j]: the chain of the class labels[sources[:, j]]
    for k in range(params.k):
        own = own + xp.where(lab == lab[:, k, None], w_on[:, k, None], w_off[:, k, None])
    out = xp.empty((n, num_classes), dtype=np.float32)
    out[...] = rest[:, None]
    rows = xp.arange(n)[:, None]
    out[rows, lab] = own  # a class that is the label of several shares: the same chain, written alike
    return out


def grey(images, layout: str):
    """float32 ``(N, H, W)`` grey images from a ``(N, H, W, C)`` / ``(N, C, H, W)`` batch.

    The kernels' arithmetic (``kmix_grey_at`` in ``kernels/kmix_saliency.cu``), bit for bit: every channel
    converted to float32 (exact), then for C = 3 the luma ``(x0 * 0.299f + x1 * 0.587f) + x2 * 0.114f`` (no fused
    multiply-add; all -0 pixels stay -0), else the channels added one by one from +0,
    ``((0 + x0) + x1) + ...``, divided by ``float32(C)`` (not NumPy's pairwise sum, which rounds differently from
    8 channels on, nor its mean, which starts from the first channel).
    """
    xp = _checks.array_module(images)
    x = images if layout == "HWC" else xp.moveaxis(images, 1, -1)
    c = x.shape[-1]

    def channel(i):
        return x[..., i].astype(np.float32)

    if c == 3:
        w0, w1, w2 = (np.float32(v) for v in _LUMA)
        return (channel(0) * w0 + channel(1) * w1) + channel(2) * w2
    acc = xp.zeros(x.shape[:-1], np.float32)
    for i in range(c):
        acc = acc + channel(i)
    return acc / np.float32(c)


def resize_bilinear(g, out_h: int, out_w: int):
    """Bilinear resize of ``(N, H, W)`` float images with half-pixel centres (OpenCV's INTER_LINEAR)."""
    xp = _checks.array_module(g)
    _, h, w = g.shape

    def axis(n_in, n_out):
        pos = (xp.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        pos = xp.clip(pos, 0.0, n_in - 1)
        lo = xp.floor(pos).astype(np.int64)
        hi = xp.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, fy = axis(h, out_h)
    x0, x1, fx = axis(w, out_w)
    top = g[:, y0][:, :, x0] * (1 - fx) + g[:, y0][:, :, x1] * fx
    bot = g[:, y1][:, :, x0] * (1 - fx) + g[:, y1][:, :, x1] * fx
    return top * (1 - fy)[:, None] + bot * fy[:, None]
