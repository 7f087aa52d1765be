"""Mixing parameters: who is mixed with whom, with which weights, inside which boxes.

Sampling is kept apart from applying. :func:`sample_params` draws a
:class:`MixParams` record; :func:`dali_kmix.mix_images` and
:func:`dali_kmix.mix_labels` (and the CUDA kernels) only read it. Images and
labels therefore always come from the same record, never from two random
streams that merely share a seed.

Conventions used throughout the package:

* ``N`` samples in a batch, ``K`` images per mix (``K >= 2`` when sampled).
* ``sources`` int32 ``(N, K)``: ``sources[n, 0] == n`` is the anchor, the sample
  whose own pixels stay outside box 0; ``sources[n, j + 1]`` fills box ``j``.
* ``weights`` float32 ``(N, K)``: ``weights[n, k]`` is the share of
  ``sources[n, k]`` in output ``n`` (rows sum to 1).
* ``boxes`` int32 ``(N, K - 1, 4)`` as ``(y0, x0, y1, x1)``, half-open, in pixels;
  box ``j`` lies inside box ``j - 1``. ``None`` for DMixup.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from . import _checks

__all__ = ["MixParams", "sample_dirichlet", "nest_boxes", "area_weights", "sample_params", "params_from_draws",
           "sample_anchor_params"]

#: Tolerance on ``sum(weights[n]) == 1`` and on box-area weights when a hand-built
#: record is validated. float32 rounding of K terms stays far below this.
WEIGHT_ATOL = 1e-5


_xp = _checks.array_module


def _as(a, dtype, name):
    if a is None:
        return None
    xp = _xp(a)
    if xp is np:
        try:
            arr = np.asarray(a)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be an array, got {type(a).__name__}") from None
    else:
        arr = a
    if arr.dtype == dtype:
        return arr
    if np.dtype(dtype).kind == "i":
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must have an integer dtype (int32), got {arr.dtype}")
        if arr.size and (int(arr.min()) < np.iinfo(np.int32).min or int(arr.max()) > np.iinfo(np.int32).max):
            raise ValueError(f"{name} has values outside the int32 range")
    elif arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must have a floating dtype (float32), got {arr.dtype}")
    return arr.astype(dtype)


@dataclasses.dataclass
class MixParams:
    """One batch's mixing record (NumPy or CuPy arrays; all of one kind).

    Attributes:
        sources: int32 ``(N, K)``; column 0 is ``arange(N)`` (each sample anchors its
            own output row), column ``k`` names the image that contributes share ``k``.
        weights: float32 ``(N, K)``; non-negative, each row sums to 1. For DCutMix
            they are the exact pixel-area fractions of the regions of ``boxes``.
        boxes: int32 ``(N, K - 1, 4)`` as ``(y0, x0, y1, x1)``, half-open; box ``j``
            lies inside box ``j - 1`` and is filled from ``sources[:, j + 1]``.
            ``None`` for DMixup (a weighted blend of whole images).

    A record can be built by hand to replay exact parameters; lists and other
    integer/float dtypes are converted, and the arrays are stored C-contiguous. :meth:`validate` checks the values
    against a batch.
    """

    sources: Any
    weights: Any
    boxes: Any = None

    def __post_init__(self):
        self.sources = _as(self.sources, np.int32, "params.sources")
        self.weights = _as(self.weights, np.float32, "params.weights")
        self.boxes = _as(self.boxes, np.int32, "params.boxes")
        # C-contiguous rows, so each row is a dense (K,) / (K-1, 4) sample wherever it goes
        # (DALI's external_source and python_function refuse strided samples).
        self.sources, self.weights, self.boxes = (
            None if a is None else _xp(a).ascontiguousarray(a) for a in (self.sources, self.weights, self.boxes))
        if self.sources.ndim != 2:
            raise ValueError(f"params.sources must have shape (N, K), got {tuple(self.sources.shape)}")
        n, k = self.sources.shape
        if k < 1:
            raise ValueError(f"params.sources must have K >= 1 columns, got shape {tuple(self.sources.shape)}")
        if tuple(self.weights.shape) != (n, k):
            raise ValueError(
                f"params.weights must have shape (N, K) = {(n, k)} like params.sources, "
                f"got {tuple(self.weights.shape)}"
            )
        if self.boxes is not None and tuple(self.boxes.shape) != (n, k - 1, 4):
            raise ValueError(
                f"params.boxes must have shape (N, K-1, 4) = {(n, k - 1, 4)}, got {tuple(self.boxes.shape)}"
            )
        kinds = {_xp(a).__name__ for a in (self.sources, self.weights, self.boxes) if a is not None}
        if len(kinds) > 1:
            raise TypeError(f"params arrays must all be NumPy or all CuPy, got a mix of {sorted(kinds)}")

    @property
    def n(self) -> int:
        return int(self.sources.shape[0])

    @property
    def k(self) -> int:
        return int(self.sources.shape[1])

    @property
    def method(self) -> str:
        return "dmixup" if self.boxes is None else "dcutmix"

    @property
    def xp(self):
        return _xp(self.sources)

    def to_numpy(self) -> "MixParams":
        if self.xp is np:
            return self
        return MixParams(*(None if a is None else a.get() for a in (self.sources, self.weights, self.boxes)))

    def to_cupy(self) -> "MixParams":
        import cupy

        return MixParams(*(None if a is None else cupy.asarray(a) for a in (self.sources, self.weights, self.boxes)))

    def validate(self, num_images: int | None = None, height: int | None = None, width: int | None = None):
        """Check the values; raise ValueError naming the first inconsistency.

        On CuPy arrays this reads a few flags back to the host (a synchronisation);
        the DALI operators, which build their own records, skip it.
        """
        xp = self.xp
        n, k = self.n, self.k
        if num_images is not None and n != num_images:
            raise ValueError(f"params are for N={n} samples but the batch has {num_images}")
        src = self.sources
        if n and bool(xp.any(src[:, 0] != xp.arange(n, dtype=src.dtype))):
            bad = int(xp.argmax(src[:, 0] != xp.arange(n, dtype=src.dtype)))
            raise ValueError(
                f"params.sources[:, 0] must be arange(N) (every sample anchors its own output), "
                f"but sources[{bad}, 0] = {int(src[bad, 0])}"
            )
        if n and (bool(xp.any(src < 0)) or bool(xp.any(src >= n))):
            raise ValueError(f"params.sources must lie in [0, N={n}), got values in [{int(src.min())}, {int(src.max())}]")
        w = self.weights
        if n:
            if not bool(xp.all(xp.isfinite(w))) or bool(xp.any(w < 0)):
                raise ValueError("params.weights must be finite and >= 0")
            err = xp.abs(w.astype(np.float64).sum(axis=1) - 1.0)
            if bool(xp.any(err > WEIGHT_ATOL)):
                row = int(xp.argmax(err))
                raise ValueError(
                    f"params.weights rows must sum to 1, but row {row} sums to {float(w[row].astype(np.float64).sum()):.6g}"
                )
        if self.boxes is None or n == 0 or k == 1:
            return self
        if height is None or width is None:
            raise ValueError("validating DCutMix params needs the image height and width")
        b = self.boxes.astype(np.int64)
        y0, x0, y1, x1 = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
        if bool(xp.any(y0 < 0) | xp.any(x0 < 0) | xp.any(y1 > height) | xp.any(x1 > width)
                | xp.any(y1 < y0) | xp.any(x1 < x0)):
            raise ValueError(
                f"params.boxes must satisfy 0 <= y0 <= y1 <= H={height} and 0 <= x0 <= x1 <= W={width}"
            )
        if k > 2:
            inner, outer = b[:, 1:], b[:, :-1]
            nested = ((inner[..., 0] >= outer[..., 0]) & (inner[..., 1] >= outer[..., 1])
                      & (inner[..., 2] <= outer[..., 2]) & (inner[..., 3] <= outer[..., 3]))
            if not bool(xp.all(nested)):
                row, lvl = (int(i) for i in np.unravel_index(int(xp.argmin(nested.ravel())), nested.shape))
                raise ValueError(
                    f"params.boxes must be nested: box {lvl + 1} of sample {row} "
                    f"{b[row, lvl + 1].tolist()} is not inside box {lvl} {b[row, lvl].tolist()}"
                )
        expect = area_weights(b, height, width)
        diff = xp.abs(expect.astype(np.float64) - w.astype(np.float64))
        if bool(xp.any(diff > WEIGHT_ATOL)):
            row = int(xp.argmax(diff.max(axis=1)))
            raise ValueError(
                f"params.weights must be the pixel-area fractions of params.boxes; sample {row} has "
                f"weights {w[row].tolist()} but its boxes give {expect[row].tolist()}"
            )
        return self


# --------------------------------------------------------------------------- sampling


def _dirichlet_from_draws(alpha, gamma1, uniform, xp=np):
    """Dirichlet(alpha) rows from Gamma(alpha + 1) draws and uniforms in (0, 1].

    Uses ``log G(a) = log G(a + 1) + log(U) / a`` and a max-shifted softmax, so
    even alpha = 1e-3 never underflows every component to 0 (no 0/0 = NaN): the
    largest component is always exactly representable and > 0.
    """
    logg = xp.log(gamma1) + xp.log(uniform) / alpha
    logg = logg - logg.max(axis=-1, keepdims=True)
    e = xp.exp(logg)
    return e / e.sum(axis=-1, keepdims=True)


def sample_dirichlet(alpha, size: int, rng=None) -> np.ndarray:
    """Draw ``size`` rows from Dirichlet(alpha); float64 ``(size, K)``, rows sum to 1.

    ``alpha`` is a length-K vector of positive numbers. Safe for tiny alpha.
    """
    rng = _rng(rng)
    alpha = np.asarray(alpha, dtype=np.float64)
    g = rng.standard_gamma(alpha + 1.0, size=(size, alpha.shape[0]))
    u = 1.0 - rng.random((size, alpha.shape[0]))
    return _dirichlet_from_draws(alpha, g, u)


def area_weights(boxes, height: int, width: int):
    """Exact pixel-area shares of nested boxes; float32 ``(N, K)`` from ``(N, K-1, 4)`` boxes.

    ``w_0 = (HW - |box 0|) / HW``, ``w_j = (|box j-1| - |box j|) / HW`` and
    ``w_{K-1} = |box K-2| / HW``.
    """
    xp = _xp(boxes)
    b = boxes.astype(np.int64)
    areas = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    n = b.shape[0]
    hw = int(height) * int(width)
    outer = xp.concatenate([xp.full((n, 1), hw, dtype=np.int64), areas], axis=1)
    inner = xp.concatenate([areas, xp.zeros((n, 1), dtype=np.int64)], axis=1)
    return ((outer - inner) / float(hw)).astype(np.float32)


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
    """
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
    height = _checks.check_int("height", height, 1)
    width = _checks.check_int("width", width, 1)
    k = _checks.check_int("k", k, 2)
    alpha = _checks.check_alpha(alpha, k)
    prob = _checks.check_probability("prob", prob)
    return n, height, width, k, alpha, prob


def draw_raw(xp, gen, n: int, k: int, alpha, mode: str, prob: float):
    """All random draws of one batch, in a fixed order, from a NumPy or CuPy Generator.

    Returns ``(phi, uniforms, perms, mixed)``: float64 ``(R, K)`` shares, float64
    ``(R, K-1, 2)`` box positions (``R = N`` in "sample" mode, 1 in "batch" mode),
    int ``(K-1, N)`` partner permutations (one per level; self-pairs allowed) and
    bool ``(N,)`` "is mixed" flags. Shared by the host sampler and the GPU operator.
    """
    rows = n if mode == "sample" else 1
    a = xp.asarray(alpha, dtype=np.float64)
    gamma1 = gen.standard_gamma(a + 1.0, size=(rows, k))
    uni = 1.0 - gen.random((rows, k), dtype=np.float64)
    phi = _dirichlet_from_draws(a, gamma1, uni, xp)
    uniforms = gen.random((rows, k - 1, 2), dtype=np.float64)
    perms = xp.argsort(gen.random((k - 1, n), dtype=np.float64), axis=1)
    mixed = gen.random(n, dtype=np.float64) < prob
    return phi, uniforms, perms, mixed


def assemble_sources(xp, perms, mixed):
    """``(N, K)`` int32 sources from per-level permutations; unmixed rows point at themselves."""
    n = mixed.shape[0]
    own = xp.arange(n, dtype=np.int32)
    src = xp.concatenate([own[:, None], perms.T.astype(np.int32)], axis=1)
    return xp.where(mixed[:, None], src, own[:, None])


def sample_params(method: str, n: int, height: int, width: int, *, k: int = 3, alpha=1.0,
                  mode: str = "sample", prob: float = 1.0, rng=None, images=None, layout: str = "HWC",
                  saliency: str = "spectral-residual") -> MixParams:
    """Draw the mixing record of one batch (NumPy arrays).

    Args:
        method: "dmixup" (weighted blend), "dcutmix" (nested stick-breaking boxes) or
            "saliency-dcutmix" (the same boxes, each centred on its source's most
            salient point; needs ``images``).
        n: batch size N (0 gives an empty record).
        height, width: image size (boxes are in pixels of this size).
        k: images per mix, K >= 2 (may exceed N: partners repeat).
        alpha: Dirichlet concentration, a positive scalar or K positive numbers.
        mode: "sample" (own shares, boxes and partners per sample, as the authors'
            code) or "batch" (one share vector and one box chain for the batch,
            as the paper's Algorithm 1).
        prob: probability that a sample is mixed at all; an unmixed sample keeps
            weight 1 on itself and empty boxes.
        rng: None, an int seed or a ``numpy.random.Generator``.
        images, layout, saliency: for "saliency-dcutmix" only: the batch (N images in
            ``layout``) whose saliency places the boxes, and the saliency method
            (see :func:`dali_kmix.saliency.salient_points`).

    Partners: every level k >= 1 draws its own random permutation of the batch,
    so each image is used exactly once per level (self-pairs allowed).
    """
    n, height, width, k, alpha, prob = check_sample_args(method, n, height, width, k, alpha, mode, prob)
    centers = None
    if method == "saliency-dcutmix":
        from .saliency import salient_points

        if images is None:
            raise ValueError("method='saliency-dcutmix' needs images=... (the batch whose saliency places the boxes)")
        _checks.check_layout(layout)
        shape = tuple(np.shape(images))
        if len(shape) != 4 or shape[0] != n or _checks.spatial_size(shape[1:], layout) != (height, width):
            raise ValueError(f"images must have shape (N={n}, ...) with H x W = {height} x {width} in layout "
                             f"{layout}, got {shape}")
        centers = salient_points(images, layout, method=saliency)
    phi, uniforms, perms, mixed = draw_raw(np, _rng(rng), n, k, alpha, mode, prob)
    return params_from_draws(method, phi, uniforms, perms, mixed, height, width, centers)


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
    boxes, weights = nest_boxes(phi, uniforms, height, width, centers)
    boxes = np.where(mixed[:, None, None], boxes, 0).astype(np.int32)
    weights = np.where(mixed[:, None], weights, unmixed_w)
    return MixParams(sources, weights, boxes)


def sample_anchor_params(n: int, height: int, width: int, *, k: int = 3, anchor_ratio: float = 0.5,
                         alpha=(2 / 9, 2 / 9), rng=None) -> MixParams:
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
        alpha: K - 1 positive concentrations for the partners (or one scalar).
        rng: None, an int seed or a numpy Generator.
    """
    n = _checks.check_int("n", n, 0)
    height = _checks.check_int("height", height, 1)
    width = _checks.check_int("width", width, 1)
    k = _checks.check_int("k", k, 2)
    a = _checks.check_alpha(alpha, k - 1)
    if isinstance(anchor_ratio, bool) or not isinstance(anchor_ratio, (int, float, np.floating)) or \
            not 0.0 < float(anchor_ratio) < 1.0:
        raise ValueError(f"anchor_ratio must be in (0, 1), got {anchor_ratio!r}")
    gen = _rng(rng)
    rest = sample_dirichlet(a, n, gen)
    phi = np.concatenate([np.full((n, 1), float(anchor_ratio)), (1.0 - float(anchor_ratio)) * rest], axis=1)
    uniforms = gen.random((n, k - 1, 2))
    if n > 1:
        others = gen.integers(0, n - 1, size=(n, k - 1))
        partners = others + (others >= np.arange(n)[:, None])  # uniform over the other n - 1 samples
    else:
        partners = np.zeros((n, k - 1), np.int64)
    return params_from_draws("dcutmix", phi, uniforms, partners.T, np.ones(n, bool), height, width)
