"""Hypothesis profiles and strategies for the property tests (tests/test_properties*.py) and ``make fuzz``.

Profiles (environment variable ``DALI_KMIX_HYPOTHESIS_PROFILE``):

* ``ci`` (default, ``make test``): derandomised (the same examples on every run), no example database,
  each property bounded by its :func:`budget`;
* ``fuzz`` (``make fuzz``, driven by ``tests/fuzz/run_properties.py``): fresh random examples on every
  call, ``DALI_KMIX_FUZZ_CHUNK`` times each property's budget per call, failures kept in the example
  database (``.hypothesis/``) and replayed first on the next run.

Strategies draw images from a seed (a NumPy generator fills them; Hypothesis draws the seed, the shape,
the dtype, the layout, a few special values at chosen places and whether the batch is a strided view),
so large batches cost no more to draw than small ones and still shrink to small, simple ones.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from dali_kmix.record import MixParams, area_weights

PROFILE = os.environ.get("DALI_KMIX_HYPOTHESIS_PROFILE", "ci")
_COMMON = dict(deadline=None, print_blob=True, suppress_health_check=list(HealthCheck))
settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("fuzz", derandomize=False, **_COMMON, database=DirectoryBasedExampleDatabase(
    os.environ.get("DALI_KMIX_HYPOTHESIS_DB", os.path.join(".hypothesis", "examples"))))
if PROFILE not in ("ci", "fuzz"):
    raise ValueError(f"DALI_KMIX_HYPOTHESIS_PROFILE must be 'ci' or 'fuzz', got {PROFILE!r}")
settings.load_profile(PROFILE)
FUZZ_CHUNK = int(os.environ.get("DALI_KMIX_FUZZ_CHUNK", "10"))


def budget(examples: int) -> settings:
    """A property's number of examples: ``examples`` in ``make test``, FUZZ_CHUNK times more per fuzz call."""
    return settings(max_examples=examples if PROFILE == "ci" else examples * FUZZ_CHUNK)


DTYPES = (np.dtype(np.uint8), np.dtype(np.float16), np.dtype(np.float32))
WRONG_DTYPES = (np.dtype(np.float64), np.dtype(np.int32), np.dtype(np.int8), np.dtype(np.uint16),
                np.dtype(np.int64), np.dtype(bool))
LAYOUTS = ("HWC", "CHW")

#: Values a float image may hold at a few places: non-finite, signed zero, subnormal, extremes.
SPECIALS = {
    np.dtype(np.float16): [np.nan, np.inf, -np.inf, -0.0, 6e-8, -6e-8, 65504.0, -65504.0],
    np.dtype(np.float32): [np.nan, np.inf, -np.inf, -0.0, 1e-45, -1e-45, 1e-30, -1e-30, 3.4e38, -3.4e38],
}


def sides(least: int = 1, most: int = 40):
    """Image sides: the edge values (0, 1, primes) often, anything in [least, most] otherwise."""
    edges = [v for v in (0, 1, 2, 3, 5, 7, 13, 31, 37, 40) if least <= v <= most]
    return st.one_of(st.sampled_from(edges), st.integers(least, most))


@dataclasses.dataclass
class Batch:
    images: np.ndarray  # (N, H, W, C) for "HWC", (N, C, H, W) for "CHW"
    layout: str

    @property
    def hwc(self):
        s = self.images.shape[1:]
        return (s[0], s[1], s[2]) if self.layout == "HWC" else (s[1], s[2], s[0])

    def __repr__(self):  # Hypothesis prints this for a falsifying example
        x = self.images
        return (f"Batch({x.dtype} {self.layout} shape={x.shape} contiguous={x.flags.c_contiguous} "
                f"finite={bool(np.isfinite(x).all()) if x.dtype.kind == 'f' else True})")


def fill(rng, dtype, shape):
    """Image content: uniform 0..255 for integers, normal (scale 40) for floats, for any dtype."""
    dtype = np.dtype(dtype)
    if dtype == bool:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        hi = min(256, np.iinfo(dtype).max + 1)
        return rng.integers(0, hi, shape).astype(dtype)
    return (rng.standard_normal(shape) * 40.0).astype(dtype)


@st.composite
def batches(draw, dtypes=DTYPES, min_n=0, max_n=9, least=1, most=40, channels=(1, 3, 4), layouts=LAYOUTS,
            specials=True, views=True):
    """A batch of N same-shape images (NumPy), possibly a non-contiguous view, possibly with NaN/Inf."""
    n = draw(st.integers(min_n, max_n))
    h, w = draw(sides(least, most)), draw(sides(least, most))
    c = draw(st.sampled_from(channels))
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    layout = draw(st.sampled_from(layouts))
    shape = (n, h, w, c) if layout == "HWC" else (n, c, h, w)
    x = fill(np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1))), dtype, shape)
    if specials and dtype in SPECIALS and x.size and draw(st.booleans()):
        for _ in range(draw(st.integers(1, 4))):
            x.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from(SPECIALS[dtype]))
    if views:
        kind = draw(st.sampled_from(["contiguous", "contiguous", "strided", "fortran"]))
        if kind == "strided":  # every other element of a larger buffer along the last axis
            big = np.zeros(shape[:-1] + (2 * shape[-1],), dtype)
            big[..., ::2] = x
            x = big[..., ::2]
        elif kind == "fortran":
            x = np.asfortranarray(x)
    return Batch(x, layout)


# --------------------------------------------------------------------------- records


def nested_boxes(rng, n, k, h, w):
    """Random nested boxes (N, K-1, 4) inside an h x w image, empty and full ones included."""
    boxes = np.zeros((n, max(k - 1, 0), 4), np.int32)
    for i in range(n):
        py0, px0, py1, px1 = 0, 0, h, w
        for j in range(k - 1):
            style = rng.integers(0, 6)
            if style == 0:  # the parent itself
                y0, x0, y1, x1 = py0, px0, py1, px1
            else:
                y0 = int(rng.integers(py0, py1 + 1))
                y1 = int(rng.integers(y0, py1 + 1)) if style != 1 else y0  # style 1: zero height
                x0 = int(rng.integers(px0, px1 + 1))
                x1 = int(rng.integers(x0, px1 + 1))
            boxes[i, j] = (y0, x0, y1, x1)
            py0, px0, py1, px1 = y0, x0, y1, x1
    return boxes


def share_rows(rng, n, k, zeros=True):
    """float32 (N, K) rows >= 0 summing to 1 within a few ulps; exact zeros and one-hot rows included."""
    if n == 0:
        return np.zeros((0, k), np.float32)
    raw = rng.gamma(rng.choice([0.05, 0.5, 2.0]), size=(n, k)) + 1e-300
    if zeros:
        raw[rng.random((n, k)) < 0.3] = 0.0
        onehot = rng.random(n) < 0.2
        raw[onehot] = 0.0
        raw[onehot, rng.integers(0, k, onehot.sum())] = 1.0
        dead = raw.sum(axis=1) == 0
        raw[dead, 0] = 1.0
    return (raw / raw.sum(axis=1, keepdims=True)).astype(np.float32)


@st.composite
def records(draw, n, h, w, methods=("dmixup", "dcutmix"), k=None, min_k=1, max_k=6):
    """A valid MixParams for N images of h x w: drawn by the sampler, or built by hand (empty, full,
    zero-height boxes, one-hot and zero shares, K = 1, K > N)."""
    method = draw(st.sampled_from(methods))
    k = draw(st.integers(min_k, max_k)) if k is None else k
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    boxed = method != "dmixup"
    if k >= 2 and (not boxed or min(h, w) >= 1) and draw(st.booleans()):
        from dali_kmix import sample_params

        return sample_params(method, n, h, w, k=k, alpha=draw(alphas()), mode=draw(st.sampled_from(["sample", "batch"])),
                             prob=draw(st.sampled_from([0.0, 0.5, 1.0])), rng=rng)
    sources = np.concatenate([np.arange(n)[:, None], rng.integers(0, max(n, 1), (n, k - 1))], axis=1)
    if not boxed:
        return MixParams(sources.astype(np.int32), share_rows(rng, n, k))
    boxes = nested_boxes(rng, n, k, h, w)
    if min(h, w) == 0 or n == 0:  # no area to share (only the native operators take such a record)
        return MixParams(sources.astype(np.int32), np.eye(1, k, dtype=np.float32).repeat(n, axis=0), boxes)
    return MixParams(sources.astype(np.int32), area_weights(boxes, h, w), boxes)


#: Ways to spoil a valid record, and the argument the error must name.
CORRUPTIONS = {
    "anchor": "sources", "source-high": "sources", "source-negative": "sources", "weight-nan": "weights",
    "weight-negative": "weights", "weight-inf": "weights", "weight-huge": "weights", "row-sum": "weights",
    "box-outside": "boxes", "box-inverted": "boxes", "box-not-nested": "boxes", "box-negative": "boxes",
    "area-mismatch": "weights",
}


def corruptions_for(p: MixParams):
    """The corruptions that really break ``p`` (N >= 1; boxes only where the image has an area)."""
    out = ["source-high", "source-negative", "weight-nan", "weight-negative", "weight-inf", "weight-huge", "row-sum"]
    if p.n > 1:
        out.append("anchor")
    if p.boxes is not None and p.k >= 2:
        out += ["box-outside", "box-inverted", "box-negative", "area-mismatch"] + (["box-not-nested"] if p.k >= 3 else [])
    return out


@st.composite
def corrupted(draw, p: MixParams, h: int, w: int, allowed=None):
    """``(record, corruption, argument)``: ``p`` spoilt in one way (of ``allowed``) that a check must catch."""
    how = draw(st.sampled_from([c for c in corruptions_for(p) if allowed is None or c in allowed]))
    i = draw(st.integers(0, p.n - 1))
    src, wt = p.sources.copy(), p.weights.copy()
    bx = None if p.boxes is None else p.boxes.copy()
    if how == "anchor":
        src[i, 0] = (i + draw(st.integers(1, p.n - 1))) % p.n
    elif how == "source-high":
        src[i, draw(st.integers(0, p.k - 1))] = p.n + draw(st.sampled_from([0, 1, 2 ** 31 - 1 - p.n]))
    elif how == "source-negative":
        src[i, draw(st.integers(0, p.k - 1))] = -draw(st.sampled_from([1, 2, 2 ** 31]))
    elif how.startswith("weight-"):
        value = {"weight-nan": np.nan, "weight-inf": np.inf, "weight-huge": 3e38,
                 "weight-negative": -draw(st.sampled_from([1e-30, 0.25]))}[how]
        wt[i, draw(st.integers(0, p.k - 1))] = value
    elif how == "row-sum":
        wt[i, draw(st.integers(0, p.k - 1))] += draw(st.sampled_from([1e-3, 0.5, 2.0]))
    elif how == "area-mismatch":  # still >= 0 and summing to 1, but not the boxes' areas
        a = int(np.argmax(wt[i]))
        moved = wt[i, a] * np.float32(0.25)
        wt[i, a] -= moved
        wt[i, (a + 1) % p.k] += moved
    else:
        d = draw(st.integers(0, p.k - 2))
        y0, x0, y1, x1 = (int(v) for v in bx[i, d])
        vertical = draw(st.booleans())
        if how == "box-outside":
            bx[i, d, 2 if vertical else 3] = (h if vertical else w) + draw(st.integers(1, 3))
        elif how == "box-negative":
            bx[i, d, 0 if vertical else 1] = -draw(st.integers(1, 5))
        elif how == "box-inverted":  # start after the end, both still inside the image
            lo, hi, side = (y0, y1, h) if vertical else (x0, x1, w)
            lo, hi = (hi + 1, hi) if hi < side else (side, side - 1)
            bx[i, d, 0 if vertical else 1], bx[i, d, 2 if vertical else 3] = lo, hi
        else:  # "box-not-nested": box d + 1 reaches outside box d (d + 1 <= K - 2)
            d = min(d, p.k - 3)
            oy0, ox0, oy1, ox1 = (int(v) for v in bx[i, d])
            if oy0 > 0:
                bx[i, d + 1] = (oy0 - 1, ox0, oy0, ox0)
            elif ox0 > 0:
                bx[i, d + 1] = (oy0, ox0 - 1, oy0, ox0)
            elif oy1 < h:
                bx[i, d + 1] = (oy1, ox0, oy1 + 1, ox0)
            elif ox1 < w:
                bx[i, d + 1] = (oy0, ox1, oy0, ox1 + 1)
            else:  # box d is the whole image: make it empty, box d + 1 whole
                bx[i, d] = (0, 0, 0, 0)
                bx[i, d + 1] = (0, 0, h, w)
    return MixParams(src, wt, bx), how, CORRUPTIONS[how]


# --------------------------------------------------------------------------- arguments


def alphas(k=None):
    """Valid Dirichlet concentrations: 1e-300 .. 1e300 (log-uniform), the edges, subnormal, K-vectors."""
    scalar = st.one_of(
        st.sampled_from([1e-300, 1e-30, 1e-3, 0.2, 1.0, 1e3, 1e300, 5e-324, 2.2e-308, 1.7e308]),
        st.floats(-300, 300).map(lambda e: 10.0 ** e),
    )
    if k is None:
        return scalar
    return st.one_of(scalar, st.lists(scalar, min_size=k, max_size=k))


@dataclasses.dataclass
class Arg:
    """An argument value and, when it is invalid, the names an error about it may use."""

    value: object
    bad: tuple = ()

    def __repr__(self):
        return f"{self.value!r}{' (bad)' if self.bad else ''}"


def pick_bad(draw, names, ratio: int = 2):
    """The one argument of ``names`` to spoil in this example, or None (``ratio`` : 1 for each name)."""
    return draw(st.sampled_from([None] * (ratio * len(names)) + list(names)))


def arg(draw, name, bad, valid, invalid, names=None):
    """``Arg``: a drawn ``invalid`` value (an error must name ``names``, default ``name``) when ``name``
    is the argument to spoil, else a drawn ``valid`` one."""
    if bad == name:
        return Arg(draw(invalid), tuple(names or (name,)))
    return Arg(draw(valid))


def bad_alpha(k):
    return st.one_of(
        st.sampled_from([0.0, -1.0, math.nan, math.inf, -math.inf, -1e-300, True, "1.0", None]),
        st.lists(st.floats(0.1, 2.0), min_size=k + 1, max_size=k + 2),
        st.just([1.0] * (k - 1) + [0.0]), st.just([math.nan] * k), st.just([[1.0] * k])
    )


BAD_PROB = st.sampled_from([-0.1, 1.5, math.nan, math.inf, -math.inf, True, "0.5", None, 1 + 1e-12])
BAD_SMOOTHING = st.sampled_from([-0.1, 1.0, 1.5, math.nan, math.inf, True, "0.1", None])
BAD_INT = st.sampled_from([-1, -(2 ** 40), 2.5, True, "4", None, float("nan")])
BAD_MODE = st.sampled_from(["elem", "Sample", "", None, 3])
BAD_METHOD = st.sampled_from(["cutout", "DMixup", "dmixup+dcutmix", "", None, 1])
BAD_LAYOUT = st.sampled_from(["NHWC", "hwc", "WHC", "", None, 1])


def message_names(exc: BaseException, names) -> bool:
    """The error's message names one of ``names`` as a word (alpha, params.sources, "sample 0 has shape" ...)."""
    text = str(exc)
    return any(re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text) for name in names)


def same_bits(a, b):
    """Bit for bit, but any NaN equals any NaN: which NaN operand a multiply-add passes on is the hardware's
    choice (x86's FMA and NumPy's float64 steps differ when two NaNs meet; a GPU gives its canonical NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    if a.dtype.kind != "f":
        return np.array_equal(a, b)
    nan = np.isnan(a)
    return np.array_equal(nan, np.isnan(b)) and np.array_equal(a[~nan].view(np.uint8), b[~nan].view(np.uint8))
