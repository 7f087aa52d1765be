"""Sampling: the random draws of a batch and the :class:`~dali_kmix.record.MixParams` they give.

Kept apart from applying: every function here only draws and nests; the record
goes to :func:`dali_kmix.mix_images` / :func:`dali_kmix.mix_labels`, the CUDA
kernels or the DALI operators, which never draw. Saliency-DCutMix needs the
salient point of every image; :func:`dali_kmix.saliency.salient_points` computes
them and the caller hands them in (``centers=``), so sampling never looks at pixels.

* :func:`sample_params`: the record of one batch (DMixup, DCutMix, Saliency-DCutMix);
* :func:`sample_anchor_params`: the anchor-share records of uncertainty scoring;
* :func:`draw_raw` / :func:`params_from_draws`: the draws in their fixed order and the
  record they give (what the ``kmix_nest_boxes`` kernel computes); :func:`record_from_draws`
  gives the same record through that kernel where the CPU build loads;
* :func:`sample_params_device`: the same on the GPU (CuPy), drawn and nested on the device.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _checks
from .backends import host_kernels
from .record import MixParams, area_weights

__all__ = ["sample_dirichlet", "nest_boxes", "sample_params", "params_from_draws", "record_from_draws",
           "sample_anchor_params", "draw_partners", "draw_raw", "assemble_sources", "check_sample_args",
           "sample_params_device"]



def _dirichlet_from_draws(alpha, gamma1, uniform, xp=np):
    """Dirichlet(alpha) rows from Gamma(alpha + 1) draws and uniforms in (0, 1].

    Uses ``log G(a) = log G(a + 1) + log(U) / a`` and a max-shifted softmax, so
    even alpha = 1e-3 never underflows every component to 0 (no 0/0 = NaN): the
    largest component is always exactly representable and > 0.

    Below alpha ~ 1e-308 (subnormal) ``log(U) / a`` can overflow to -inf in every component
    of a row; the Dirichlet is then one-hot at the component whose ``log(U) / a`` is largest,
    i.e. whose ``log(-log U) - log a`` (finite) is smallest, and such rows get exactly that.

    On the host (NumPy arrays) the logarithms and exponentials are the C library's (``math.log``,
    ``math.exp``; NumPy's own SIMD ``log``/``exp`` round differently in the last bit) and the row sums
    run left to right, so the native sampler of the DALI operators (``kernels/kmix_draw.h``) computes the
    same shares bit for bit; the CPU build runs that code here too, in one call. On a GPU (CuPy) the
    device's functions.
    """
    if xp is np:
        return _dirichlet_host(alpha, gamma1, uniform)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        logg = xp.log(gamma1) + xp.log(uniform) / alpha
        top = logg.max(axis=-1, keepdims=True)
        e = xp.exp(logg - top)
        phi = e / e.sum(axis=-1, keepdims=True)
        order = xp.log(-xp.log(uniform)) - xp.log(xp.asarray(alpha, dtype=np.float64))
    first = xp.arange(phi.shape[-1]) == xp.argmin(order, axis=-1)[..., None]
    return xp.where(top == -np.inf, first.astype(phi.dtype), phi)


def _libm(fn, x):
    """``fn`` (``math.log`` or ``math.exp``) of every element of the float64 array ``x``: the C library's result,
    with log(0) = -inf and log of a negative number or NaN = NaN as NumPy gives them."""
    def one(v):
        if fn is math.log and not v > 0.0:
            return -math.inf if v == 0.0 else math.nan
        return fn(v)

    return np.array([one(v) for v in np.asarray(x, np.float64).ravel().tolist()], np.float64).reshape(np.shape(x))


def _dirichlet_host(alpha, gamma1, uniform):
    """:func:`_dirichlet_from_draws` on the host: the CPU build's ``kmix_host_dirichlet`` where it loads, else
    these NumPy operations with the C library's ``log``/``exp`` (the same numbers)."""
    alpha = np.asarray(alpha, np.float64)
    gamma1 = np.asarray(gamma1, np.float64)
    uniform = np.asarray(uniform, np.float64)
    kernels = host_kernels()
    if kernels is not None and gamma1.ndim == 2 and alpha.shape in ((gamma1.shape[1],), gamma1.shape):
        return kernels.dirichlet(alpha, gamma1, uniform)
    with np.errstate(over="ignore", invalid="ignore"):  # log(U) / a overflows to -inf below alpha ~ 1e-308
        logg = _libm(math.log, gamma1) + _libm(math.log, uniform) / alpha
        top = logg.max(axis=-1, keepdims=True)
        e = _libm(math.exp, logg - top)
    total = e[..., 0]
    for j in range(1, e.shape[-1]):  # left to right, as the native sampler adds them
        total = total + e[..., j]
    phi = e / total[..., None]
    over = top[..., 0] == -np.inf
    if over.any():
        order = _libm(math.log, -_libm(math.log, uniform)) - _libm(math.log, np.broadcast_to(alpha, uniform.shape))
        first = np.arange(phi.shape[-1]) == np.argmin(order, axis=-1)[..., None]
        phi = np.where(over[..., None], first.astype(phi.dtype), phi)
    return phi


def sample_dirichlet(alpha, size: int, rng=None) -> np.ndarray:
    """Draw ``size`` rows from Dirichlet(alpha); float64 ``(size, K)``, rows sum to 1.

    ``alpha`` is a length-K vector (K >= 1) of positive, finite numbers; anything else (a scalar,
    a 2-d array, a negative, zero, NaN or infinite entry) raises ValueError (TypeError for non-numbers)
    naming ``alpha``. ``size``: a non-negative integer. Safe for tiny alpha.
    """
    alpha = _check_alpha_vector(alpha)
    size = _checks.check_int("size", size, 0)
    rng = _rng(rng)
    g = rng.standard_gamma(alpha + 1.0, size=(size, alpha.shape[0]))
    u = 1.0 - rng.random((size, alpha.shape[0]))
    return _dirichlet_from_draws(alpha, g, u)


def _check_alpha_vector(alpha) -> np.ndarray:
    """:func:`sample_dirichlet`'s ``alpha``: a float64 vector of K >= 1 finite, positive numbers."""
    if isinstance(alpha, (bool, np.bool_)):
        raise TypeError(f"alpha must be a sequence of K positive numbers, got {alpha!r}")
    try:
        arr = np.asarray(alpha, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"alpha must be a sequence of K positive numbers, got {alpha!r}") from None
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise ValueError(f"alpha must be a 1-d sequence of K >= 1 positive numbers (one concentration per "
                         f"component; a scalar does not say K), got shape {arr.shape}: {alpha!r}")
    return _checks.check_alpha(arr, arr.shape[0])


#: The largest image height or width: boxes are int32 and the native kernels take a C int.
MAX_SIDE = 2**31 - 1


def _check_side(name: str, value, minimum: int) -> int:
    """``height`` / ``width``: an integer in [minimum, 2^31 - 1]."""
    value = _checks.check_int(name, value, minimum)
    if value > MAX_SIDE:
        raise ValueError(f"{name} must be <= 2^31 - 1 = {MAX_SIDE} (boxes are int32), got {value}")
    return value


def _sum_tolerance(k: int) -> float:
    """How far a row of K shares given to :func:`nest_boxes` may sum from 1: float32 rounding of K shares
    (e.g. a float32 Gamma normalisation) plus a little; the nesting itself never needs the exact sum."""
    return 1e-6 + 2.0 * k * float(np.finfo(np.float32).eps)


def _check_nest_args(phi, uniforms, height, width, centers):
    """Validate :func:`nest_boxes`'s arguments; return (phi, uniforms, height, width, centers) as it uses them."""
    height = _check_side("height", height, 1)
    width = _check_side("width", width, 1)
    try:
        phi = np.asarray(phi, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"phi must be a float array (N, K) of shares, got {type(phi).__name__}") from None
    if phi.ndim != 2 or phi.shape[1] < 2:
        raise ValueError(f"phi must have shape (N, K) with K >= 2, got shape {phi.shape}")
    n, k = phi.shape
    if not np.isfinite(phi).all():
        i, j = np.argwhere(~np.isfinite(phi))[0]
        raise ValueError(f"phi must be finite, got phi[{i}, {j}] = {phi[i, j]}")
    if (phi < 0.0).any():
        i, j = np.argwhere(phi < 0.0)[0]
        raise ValueError(f"phi must be >= 0, got phi[{i}, {j}] = {float(phi[i, j])}")
    sums = phi.sum(axis=1)
    tol = _sum_tolerance(k)
    off = np.abs(sums - 1.0) > tol
    if off.any():
        i = int(np.argmax(off))
        raise ValueError(f"every row of phi must sum to 1 (within {tol:.3g}), got row {i} summing to "
                         f"{float(sums[i])!r}: {phi[i].tolist()}")
    if uniforms is None and centers is not None:
        uniforms = np.zeros((n, k - 1, 2))  # not used: the boxes are centred on the centres
    else:
        try:
            uniforms = np.asarray(uniforms, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"uniforms must be a float array (N, K - 1, 2), got {type(uniforms).__name__}") from None
        if uniforms.shape != (n, k - 1, 2):
            raise ValueError(f"uniforms must have shape (N, K - 1, 2) = {(n, k - 1, 2)} for phi of shape "
                             f"{phi.shape}, got {uniforms.shape}")
        bad = ~((uniforms >= 0.0) & (uniforms < 1.0))  # also NaN
        if bad.any():
            idx = tuple(int(v) for v in np.argwhere(bad)[0])
            raise ValueError(f"uniforms must lie in [0, 1), got uniforms[{idx}] = {float(uniforms[idx])}")
    if centers is not None:
        centers = np.asarray(centers)
        if centers.shape != (n, k - 1, 2) or (centers.size and centers.dtype.kind not in "iu"):
            raise ValueError(f"centers must be integer (N, K - 1, 2) = {(n, k - 1, 2)}, got {centers.dtype} "
                             f"{centers.shape}")
        if centers.size:
            ys, xs = centers[..., 0], centers[..., 1]
            if ys.min() < 0 or xs.min() < 0 or ys.max() >= height or xs.max() >= width:
                raise ValueError(f"centers must lie inside the {height} x {width} image (0 <= y < {height}, "
                                 f"0 <= x < {width}), got y in [{int(ys.min())}, {int(ys.max())}] and x in "
                                 f"[{int(xs.min())}, {int(xs.max())}]")
    return phi, uniforms, height, width, centers


def nest_boxes(phi, uniforms, height: int, width: int, centers=None):
    """Stick-breaking box chain: from shares ``phi`` and uniforms, the nested boxes and area weights.

    Args:
        phi: float64 ``(N, K)``, rows non-negative and summing to 1 (Dirichlet draws).
        uniforms: float64 ``(N, K - 1, 2)`` in ``[0, 1)``; ``[..., 0]`` places box j
            vertically, ``[..., 1]`` horizontally.
        height, width: image size in pixels.
        centers: optional int ``(N, K - 1, 2)``: the pixel ``(y, x)`` box j is centred on
            (Saliency-DCutMix: the most salient point of its source). The box's top-left
            corner is then ``c - floor(side / 2)``, shifted (never shrunk) to lie inside the
            parent; ``uniforms`` are not used. Box sizes are the same either way.

    Returns:
        ``(boxes, weights)``: int32 ``(N, K - 1, 4)`` as ``(y0, x0, y1, x1)`` and the
        float32 ``(N, K)`` exact area weights.

    The stick-breaking fractions are ``v_k = phi_k / sum_{j >= k} phi_j``, which
    equals ``phi_k / prod_{j<k} (1 - v_j)`` of the paper but never divides by a
    cancelled difference (``v_1 = phi_1`` when the row sums to exactly 1). Box 0
    is ``round(H sqrt(1 - v_1)) x round(W sqrt(1 - v_1))``; box j is
    ``round(side_{j-1} sqrt(1 - v_{j+1}))`` per side; rounding is half-to-even
    (``rint``); each top-left corner is ``parent + min(floor(u * (range + 1)), range)``
    with ``range = parent_side - side``, so every integer position inside the
    parent is equally likely and no box is ever clipped. The CUDA kernel
    ``kmix_nest_boxes`` does exactly these float64 operations in this order.

    The preconditions are checked (ValueError / TypeError naming the argument): ``phi`` finite, >= 0,
    each row summing to 1 within float32 rounding; ``uniforms`` in ``[0, 1)`` of the shape above (may be
    None when ``centers`` is given); ``height``, ``width`` integers in [1, 2^31 - 1]; ``centers`` integer,
    of the shape above, inside the image.
    """
    phi, uniforms, height, width, centers = _check_nest_args(phi, uniforms, height, width, centers)
    return _nest_boxes(phi, uniforms, height, width, centers)


def _nest_boxes(phi, uniforms, height: int, width: int, centers=None):
    """:func:`nest_boxes` without its checks: what the samplers call on draws that already meet them."""
    phi = np.asarray(phi, dtype=np.float64)
    uniforms = np.asarray(uniforms, dtype=np.float64)
    n, k = phi.shape
    # rem[:, j] = phi_j + phi_{j+1} + ... + phi_{K-1}, summed from the end.
    rem = np.cumsum(phi[:, ::-1], axis=1)[:, ::-1]
    boxes = np.zeros((n, k - 1, 4), dtype=np.int32)
    ph = np.full(n, float(height))
    pw = np.full(n, float(width))
    py = np.zeros(n, dtype=np.int64)
    px = np.zeros(n, dtype=np.int64)
    for j in range(k - 1):
        pos = rem[:, j] > 0.0
        v = np.ones(n)
        np.divide(phi[:, j], rem[:, j], out=v, where=pos)
        v = np.minimum(v, 1.0)
        s = np.sqrt(1.0 - v)
        h = np.rint(ph * s)
        w = np.rint(pw * s)
        ry = ph - h
        rx = pw - w
        if centers is None:
            oy = np.minimum(np.floor(uniforms[:, j, 0] * (ry + 1.0)), ry)
            ox = np.minimum(np.floor(uniforms[:, j, 1] * (rx + 1.0)), rx)
            y0 = py + oy.astype(np.int64)
            x0 = px + ox.astype(np.int64)
        else:
            y0 = np.asarray(centers[:, j, 0], np.int64) - h.astype(np.int64) // 2
            x0 = np.asarray(centers[:, j, 1], np.int64) - w.astype(np.int64) // 2
            y0 = np.clip(y0, py, py + ry.astype(np.int64))
            x0 = np.clip(x0, px, px + rx.astype(np.int64))
        boxes[:, j, 0] = y0
        boxes[:, j, 1] = x0
        boxes[:, j, 2] = y0 + h.astype(np.int64)
        boxes[:, j, 3] = x0 + w.astype(np.int64)
        ph, pw, py, px = h, w, y0, x0
    return boxes, area_weights(boxes, height, width)


def _rng(rng):
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, bool) or not isinstance(rng, (int, np.integer)):
        raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {rng!r}")
    if rng < 0:
        raise ValueError(f"rng seed must be >= 0, got {rng}")
    return np.random.default_rng(int(rng))


def check_sample_args(method, n, height, width, k, alpha, mode, prob):
    """Validate :func:`sample_params` arguments; return (n, height, width, k, alpha_vec, prob)."""
    _checks.check_choice("method", method, _checks.METHODS)
    _checks.check_choice("mode", mode, _checks.MODES)
    n = _checks.check_int("n", n, 0)
    # DMixup never reads the size (a blend of empty images is defined); the boxes' area weights
    # are box areas / (H x W), so DCutMix needs at least one pixel.
    least = 0 if method == "dmixup" else 1
    height = _check_side("height", height, least)
    width = _check_side("width", width, least)
    k = _checks.check_int("k", k, 2)
    alpha = _checks.check_alpha(alpha, k)
    prob = _checks.check_probability("prob", prob)
    return n, height, width, k, alpha, prob


def draw_raw(xp, gen, n: int, k: int, alpha, mode: str, prob, valid=None):
    """All random draws of one batch, in a fixed order, from a NumPy or CuPy Generator.

    Returns ``(phi, uniforms, perms, mixed)``: float64 ``(R, K)`` shares, float64
    ``(R, K-1, 2)`` box positions (``R = N`` in "sample" mode, 1 in "batch" mode),
    int ``(K-1, N)`` partner permutations (one per level; self-pairs allowed) and
    bool ``(N,)`` "is mixed" flags. Shared by the host sampler and the GPU operator.

    ``alpha``: K concentrations, or ``(N, K)`` in "sample" mode: row i is sample i's own
    Dirichlet (the draws are the same numbers in the same order either way, so a per-sample
    alpha whose rows are all equal gives exactly the draws of the shared vector).
    ``prob``: a number or one probability per sample. ``valid``: None (every sample is real)
    or bool ``(N,)``: the samples that are not padding (e.g. the repeated last sample of a
    reader's padded last batch). Only valid samples are partners of valid samples (each level
    permutes them among themselves, ranked by the same uniforms), and padding is never mixed;
    the random draws and their order do not change, so an all-True ``valid`` is None.
    """
    rows = n if mode == "sample" else 1
    a = xp.asarray(alpha, dtype=np.float64)
    if a.ndim == 2 and a.shape != (rows, k):
        raise ValueError(f"alpha must have shape (K,) or (N={rows}, K={k}) in mode {mode!r}, got {a.shape}")
    if xp is np and a.size and (a == a.flat[0]).all():
        # one concentration: NumPy's generator draws the same numbers from a scalar shape, in half the time
        gamma1 = gen.standard_gamma(float(a.flat[0]) + 1.0, size=(rows, k))
    else:
        gamma1 = gen.standard_gamma(a + 1.0, size=(rows, k))
    uni = 1.0 - gen.random((rows, k), dtype=np.float64)
    phi = _dirichlet_from_draws(a, gamma1, uni, xp)
    uniforms = gen.random((rows, k - 1, 2), dtype=np.float64)
    ranks = gen.random((k - 1, n), dtype=np.float64)
    mixed = gen.random(n, dtype=np.float64) < prob
    # a stable sort: samples whose ranks tie keep their order (what the native sampler does too)
    if valid is None or bool(xp.all(valid)):
        return phi, uniforms, xp.argsort(ranks, axis=1, kind="stable"), mixed
    real = xp.flatnonzero(xp.asarray(valid, dtype=bool))
    perms = xp.broadcast_to(xp.arange(n), (k - 1, n)).copy()
    perms[:, real] = real[xp.argsort(ranks[:, real], axis=1, kind="stable")]
    mixed = mixed & xp.asarray(valid, dtype=bool)
    return phi, uniforms, perms, mixed


def assemble_sources(xp, perms, mixed):
    """``(N, K)`` int32 sources from per-level permutations; unmixed rows point at themselves."""
    n = mixed.shape[0]
    own = xp.arange(n, dtype=np.int32)
    src = xp.concatenate([own[:, None], perms.T.astype(np.int32)], axis=1)
    return xp.where(mixed[:, None], src, own[:, None])


def sample_params(method: str, n: int, height: int, width: int, *, k: int = 3, alpha=1.0,
                  mode: str = "sample", prob: float = 1.0, rng=None, centers=None) -> MixParams:
    """Draw the mixing record of one batch (NumPy arrays).

    Args:
        method: "dmixup" (weighted blend), "dcutmix" (nested stick-breaking boxes) or
            "saliency-dcutmix" (the same boxes, each centred on its source's most
            salient point; needs ``centers``).
        n: batch size N (0 gives an empty record).
        height, width: image size (boxes are in pixels of this size); >= 1, or >= 0 for
            "dmixup", which does not read it.
        k: images per mix, K >= 2 (may exceed N: partners repeat).
        alpha: Dirichlet concentration, a positive scalar or K positive numbers.
        mode: "sample" (own shares, boxes and partners per sample, as the authors'
            code) or "batch" (one share vector and one box chain for the batch,
            as the paper's Algorithm 1).
        prob: probability that a sample is mixed at all; an unmixed sample keeps
            weight 1 on itself and empty boxes.
        rng: None, an int seed or a ``numpy.random.Generator``.
        centers: for "saliency-dcutmix" only: int ``(N, 2)``, the salient pixel ``(y, x)``
            of every image of the batch, e.g. ``dali_kmix.saliency.salient_points(images, layout)``; NumPy,
            or CuPy (copied to the host: the record is drawn there).

    Partners: every level k >= 1 draws its own random permutation of the batch,
    so each image is used exactly once per level (self-pairs allowed).
    """
    n, height, width, k, alpha, prob = check_sample_args(method, n, height, width, k, alpha, mode, prob)
    if method == "saliency-dcutmix":
        if centers is None:
            raise ValueError("method='saliency-dcutmix' needs centers=... (the salient point of every image, "
                             "from dali_kmix.saliency.salient_points)")
        if _checks.array_module(centers) is not np:  # CuPy points (salient_points of a GPU batch): to the host
            centers = centers.get()
        centers = np.asarray(centers)
        if centers.shape != (n, 2) or centers.dtype.kind not in "iu":
            raise ValueError(f"centers must be integer (N={n}, 2), got {centers.dtype} {centers.shape}")
        if n and (centers.min() < 0 or centers[:, 0].max() >= height or centers[:, 1].max() >= width):
            raise ValueError(f"centers must lie inside the {height} x {width} image, got values in "
                             f"[{int(centers.min())}, {int(centers.max())}]")
    elif centers is not None:
        raise ValueError(f"centers are for method='saliency-dcutmix' only, got method={method!r}")
    gen = _rng(rng)
    if n:  # the CPU build draws the same numbers from gen's own bit generator, in one call
        kernels = host_kernels()
        if kernels is not None:  # its None: a bit generator without a C interface, or a build without the sampler
            fields = kernels.draw_record_from(gen, method, n, k, alpha, mode, prob, height, width, centers)
            if fields is not None:
                return MixParams._of_kernel(*fields)
    phi, uniforms, perms, mixed = draw_raw(np, gen, n, k, alpha, mode, prob)
    return record_from_draws(method, phi, uniforms, perms, mixed, height, width, centers)


def record_from_draws(method, phi, uniforms, perms, mixed, height, width, image_centers=None) -> MixParams:
    """:func:`params_from_draws`, nested by the CPU build's ``kmix_nest_boxes`` kernel where it loads (the same
    record, bit for bit, in a fraction of the time: one call instead of a dozen NumPy operations per level),
    else by NumPy. What the host samplers (:func:`sample_params`, the DALI operators) call per batch."""
    kernels = host_kernels()
    if kernels is None:
        return params_from_draws(method, phi, uniforms, perms, mixed, height, width, image_centers)
    if method == "saliency-dcutmix" and image_centers is None:
        raise ValueError("saliency-dcutmix needs the salient point of every image (image_centers)")
    return MixParams._of_kernel(*kernels.nest_boxes(method, phi, uniforms, perms, np.asarray(mixed, dtype=bool),
                                                    height, width, centers=image_centers))


def params_from_draws(method, phi, uniforms, perms, mixed, height, width, image_centers=None) -> MixParams:
    """The record for given draws (NumPy): what the ``kmix_nest_boxes`` kernel computes.

    ``phi`` and ``uniforms`` have one row per sample, or a single row shared by the
    batch ("batch" mode); ``perms`` is ``(K-1, N)``; ``mixed`` is bool ``(N,)``;
    ``image_centers`` int ``(N, 2)`` is the salient point of every image
    ("saliency-dcutmix" only).
    """
    mixed = np.asarray(mixed, dtype=bool)
    n = mixed.shape[0]
    phi = np.asarray(phi, dtype=np.float64)
    uniforms = np.asarray(uniforms, dtype=np.float64)
    k = phi.shape[1]
    if phi.shape[0] != n:
        phi = np.repeat(phi, n, axis=0)
        uniforms = np.repeat(uniforms, n, axis=0)
    sources = assemble_sources(np, np.asarray(perms), mixed)
    unmixed_w = np.zeros((n, k), dtype=np.float32)
    unmixed_w[:, 0] = 1.0
    if method == "dmixup":
        weights = np.where(mixed[:, None], phi.astype(np.float32), unmixed_w)
        return MixParams(sources, weights, None)
    centers = None
    if method == "saliency-dcutmix":
        if image_centers is None:
            raise ValueError("saliency-dcutmix needs the salient point of every image (image_centers)")
        centers = np.asarray(image_centers, np.int64)[sources[:, 1:]]
    boxes, weights = _nest_boxes(phi, uniforms, height, width, centers)
    boxes = np.where(mixed[:, None, None], boxes, 0).astype(np.int32)
    weights = np.where(mixed[:, None], weights, unmixed_w)
    return MixParams(sources, weights, boxes)


def draw_partners(n: int, k: int = 3, rng=None) -> np.ndarray:
    """``K - 1`` partners for each of ``n`` anchors, int64 ``(n, K - 1)``: uniform over the *other* samples of
    the batch, with replacement across levels (all 0 for a batch of one). :func:`sample_anchor_params` draws
    them this way when it is given none."""
    n = _checks.check_int("n", n, 0)
    k = _checks.check_int("k", k, 2)
    gen = _rng(rng)
    if n < 2:
        return np.zeros((n, k - 1), np.int64)
    others = gen.integers(0, n - 1, size=(n, k - 1))
    return others + (others >= np.arange(n)[:, None])  # uniform over the other n - 1 samples


def _check_partners(partners, n: int, k: int) -> np.ndarray:
    p = np.asarray(partners)
    if p.shape != (n, k - 1) or p.dtype.kind not in "iu":
        raise ValueError(f"partners must be integers of shape (n, K - 1) = ({n}, {k - 1}), got "
                         f"{p.dtype} of shape {p.shape}")
    bad = (p < 0) | (p >= n)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"partners must index the batch of n={n}, got partners[{i}, {j}] = {p[i, j]}")
    if n > 1:
        own = p == np.arange(n)[:, None]
        if own.any():
            i, j = np.argwhere(own)[0]
            raise ValueError(f"partners must be other samples than the anchor, got partners[{i}, {j}] = {i}")
    return p.astype(np.int64)


def sample_anchor_params(n: int, height: int, width: int, *, k: int = 3, anchor_ratio: float = 0.5,
                         alpha=2 / 9, rng=None, partners=None) -> MixParams:
    """DCutMix records for uncertainty scoring: every anchor keeps a fixed share.

    Sample ``i`` is the base image (its own pixels outside box 0) with share
    ``phi_0 = anchor_ratio``; ``K - 1`` partners, drawn uniformly from the *other*
    samples of the batch (with replacement across levels), share the rest as
    ``(1 - anchor_ratio) * Dirichlet(alpha)``, i.e. the conditional Dirichlet of the
    non-anchor shares. Boxes and area weights follow the DCutMix stick-breaking rules.

    Args:
        n, height, width: batch size and image size.
        k: images per mix (anchor + K - 1 partners).
        anchor_ratio: the anchor's share, in (0, 1).
        alpha: K - 1 positive concentrations for the partners, or one scalar for all of them
            (the default 2/9 draws exactly what ``(2/9, 2/9)`` does for k=3).
        rng: None, an int seed or a numpy Generator.
        partners: None to draw the partners with the shares (:func:`draw_partners`, the last draw), or the
            int ``(n, K - 1)`` partners to keep (other samples than the anchor): the paper's Eq. (8) jitters
            only the partners' shares and the box positions around given images. Then nothing more is drawn
            after the boxes' uniforms.
    """
    n = _checks.check_int("n", n, 0)
    height = _check_side("height", height, 1)
    width = _check_side("width", width, 1)
    k = _checks.check_int("k", k, 2)
    if not isinstance(alpha, (numbers.Real, str)) and np.ndim(alpha) == 1 and np.shape(alpha)[0] != k - 1:
        raise ValueError(f"alpha must be a scalar or K - 1 = {k - 1} partner concentrations (k={k} images per mix: "
                         f"the anchor and {k - 1} partners), got {np.shape(alpha)[0]} values: {alpha!r}")
    a = _checks.check_alpha(alpha, k - 1)
    if isinstance(anchor_ratio, bool) or not isinstance(anchor_ratio, (int, float, np.floating)) or \
            not 0.0 < float(anchor_ratio) < 1.0:
        raise ValueError(f"anchor_ratio must be in (0, 1), got {anchor_ratio!r}")
    if partners is not None:
        partners = _check_partners(partners, n, k)
    gen = _rng(rng)
    rest = sample_dirichlet(a, n, gen)
    phi = np.concatenate([np.full((n, 1), float(anchor_ratio)), (1.0 - float(anchor_ratio)) * rest], axis=1)
    uniforms = gen.random((n, k - 1, 2))
    if partners is None:
        partners = draw_partners(n, k, gen)
    return record_from_draws("dcutmix", phi, uniforms, partners.T, np.ones(n, bool), height, width)


def sample_params_device(gen, method, n, height, width, k, alpha, mode, prob, centers=None) -> MixParams:
    """A :class:`MixParams` of CuPy arrays, drawn and nested on the device.

    ``gen`` is a ``cupy.random.Generator``; arguments are assumed checked
    (:func:`check_sample_args`). ``centers``: int32 (N, 2) device array of salient
    points for "saliency-dcutmix". The draws are :func:`draw_raw`'s, in its order; the
    ``kmix_nest_boxes`` kernel turns them into the record (as :func:`params_from_draws`).
    """
    import cupy

    from .backends import gpu

    phi, uniforms, perms, mixed = draw_raw(cupy, gen, n, k, alpha, mode, prob)
    return MixParams(*gpu.nest_boxes(method, phi, uniforms, perms, mixed, height, width, centers))
