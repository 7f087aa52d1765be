"""The mixing record: who is mixed with whom, with which weights, inside which boxes.

Sampling is kept apart from applying. :mod:`dali_kmix.sampling` draws a
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

__all__ = ["MixParams", "area_weights", "WEIGHT_ATOL"]

#: Tolerance on ``sum(weights[n]) == 1`` and on box-area weights when a hand-built
#: record is validated. float32 rounding of K terms stays far below this.
WEIGHT_ATOL = 1e-5


_xp = _checks.array_module


def _first(mask) -> tuple[int, ...]:
    """The index of the first True of a boolean NumPy or CuPy array (C order), as Python ints."""
    return tuple(int(i) for i in np.unravel_index(int(_xp(mask).argmax(mask.ravel())), mask.shape))


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
            bad = (arr < np.iinfo(np.int32).min) | (arr > np.iinfo(np.int32).max)
            at = _first(bad)
            raise ValueError(f"{name} has values outside the int32 range: {name}[{', '.join(map(str, at))}] = "
                             f"{int(arr[at])}")
    elif arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must have a floating dtype (float32), got {arr.dtype}")
    return arr.astype(dtype)


@dataclasses.dataclass(frozen=True)
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
    against a batch. Its fields cannot be reassigned (the kernels read them as int32 and float32 without asking
    again); ``dataclasses.replace(params, weights=...)`` builds a new record, converted and checked the same way.
    """

    sources: Any
    weights: Any
    boxes: Any = None

    def __post_init__(self):
        # C-contiguous rows, so each row is a dense (K,) / (K-1, 4) sample wherever it goes
        # (DALI's external_source and python_function refuse strided samples).
        for name, dtype in (("sources", np.int32), ("weights", np.float32), ("boxes", np.int32)):
            a = _as(getattr(self, name), dtype, f"params.{name}")
            object.__setattr__(self, name, None if a is None else _xp(a).ascontiguousarray(a))
        for name, shape in (("sources", "int32 (N, K)"), ("weights", "float32 (N, K)")):
            if getattr(self, name) is None:
                raise TypeError(f"params.{name} is required: {shape}, got None")
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

    @classmethod
    def _of_kernel(cls, sources, weights, boxes=None) -> "MixParams":
        """The record of arrays a sampler's kernel has just filled (:func:`dali_kmix.backends.cpu.draw_record_from`,
        ``nest_boxes``): NumPy, int32 / float32 / int32, C-contiguous, of the record's shapes by construction, so
        ``__post_init__``'s conversions and checks, which would find nothing to do, are skipped."""
        params = object.__new__(cls)
        object.__setattr__(params, "sources", sources)
        object.__setattr__(params, "weights", weights)
        object.__setattr__(params, "boxes", boxes)
        return params

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
        self.validate_rows(num_images)
        xp = self.xp
        n, k = self.n, self.k
        w = self.weights
        if self.boxes is None or n == 0 or k == 1:
            return self
        if height is None or width is None:
            raise ValueError("validating DCutMix params needs the image height and width")
        b = self.boxes.astype(np.int64)
        y0, x0, y1, x1 = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
        outside = (y0 < 0) | (x0 < 0) | (y1 > height) | (x1 > width) | (y1 < y0) | (x1 < x0)
        if bool(xp.any(outside)):
            row, lvl = _first(outside)
            raise ValueError(
                f"params.boxes must satisfy 0 <= y0 <= y1 <= H={height} and 0 <= x0 <= x1 <= W={width}; "
                f"box {lvl} of sample {row} is {tuple(b[row, lvl].tolist())}"
            )
        if k > 2:
            inner, outer = b[:, 1:], b[:, :-1]
            nested = ((inner[..., 0] >= outer[..., 0]) & (inner[..., 1] >= outer[..., 1])
                      & (inner[..., 2] <= outer[..., 2]) & (inner[..., 3] <= outer[..., 3]))
            if not bool(xp.all(nested)):
                row, lvl = _first(~nested)
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

    def validate_rows(self, num_images: int | None = None):
        """Check the sources and weights alone (what the labels read); raise ValueError naming the first fault.

        Every sample anchors its own row, sources lie in ``[0, N)``, weights are finite, >= 0 and
        each row sums to 1. :meth:`validate` adds the boxes and their area weights.
        """
        xp = self.xp
        n = self.n
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
            out = (src < 0) | (src >= n)
            row, col = _first(out)
            raise ValueError(f"params.sources must lie in [0, N={n}), got sources[{row}, {col}] = "
                             f"{int(src[row, col])}")
        w = self.weights
        if n:
            bad = ~xp.isfinite(w) | (w < 0)
            if bool(xp.any(bad)):
                row, col = _first(bad)
                raise ValueError(f"params.weights must be finite and >= 0, got weights[{row}, {col}] = "
                                 f"{float(w[row, col])}")
            err = xp.abs(w.astype(np.float64).sum(axis=1) - 1.0)
            if bool(xp.any(err > WEIGHT_ATOL)):
                row = int(xp.argmax(err))
                raise ValueError(
                    f"params.weights rows must sum to 1, but row {row} sums to {float(w[row].astype(np.float64).sum()):.6g}"
                )
        return self


def area_weights(boxes, height: int, width: int):
    """Exact pixel-area shares of nested boxes; float32 ``(N, K)`` from ``(N, K-1, 4)`` boxes.

    ``w_0 = (HW - |box 0|) / HW``, ``w_j = (|box j-1| - |box j|) / HW`` and
    ``w_{K-1} = |box K-2| / HW``. An image of zero area has no such shares (0 / 0): ValueError.
    """
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"box-area weights need an image of at least 1 x 1 pixels (they are box areas / (H x W)), "
                         f"got height={height}, width={width}")
    xp = _xp(boxes)
    b = boxes.astype(np.int64)
    areas = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    n = b.shape[0]
    hw = int(height) * int(width)
    outer = xp.concatenate([xp.full((n, 1), hw, dtype=np.int64), areas], axis=1)
    inner = xp.concatenate([areas, xp.zeros((n, 1), dtype=np.int64)], axis=1)
    return ((outer - inner) / float(hw)).astype(np.float32)
