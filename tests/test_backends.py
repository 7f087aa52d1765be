"""dali_kmix.backends: one backend-neutral suite for the CUDA kernels (CPU build always, CuPy with a GPU),
the NumPy fallback and the choice between them.

Each kernel must reproduce the NumPy reference bit for bit, over methods,
layouts, dtypes, K = 2..9, odd sizes, empty and full boxes, batch sizes 1 and 65,
and whatever order the blocks and threads run in.
"""

import functools
import os

import numpy as np
import pytest

from dali_kmix import reference
from dali_kmix.record import MixParams, area_weights
from dali_kmix.sampling import draw_raw, params_from_draws, sample_params

from _helpers import random_images


class CpuBackend:
    """The library's CPU backend (with the scheduling options under test) and the nesting kernel."""

    name = "cpu"

    def __init__(self, workers=None, block_threads=1, reverse=False):
        from dali_kmix.backends import CpuBackend as Cpu
        from dali_kmix.backends import cpu as cpu_kernels

        if cpu_kernels.compiler() is None:
            pytest.skip("no C++ compiler: CPU kernels unavailable")
        cpu_kernels.build()  # with a compiler, a failed build fails the test with the compiler's log
        self.k = cpu_kernels
        self.backend = Cpu(workers=workers, block_threads=block_threads, reverse=reverse)
        self.opts = dict(workers=workers, block_threads=block_threads, reverse=reverse)

    def blend(self, images, params, layout):
        ins = [np.ascontiguousarray(im).copy() for im in images]  # separately allocated samples
        out = np.empty_like(images)
        self.backend.blend(ins, list(out), params, layout)
        for a, b in zip(ins, images):
            np.testing.assert_array_equal(a, b)  # inputs are never written
        return out

    def mix(self, images, sources, weights, boxes, cut, layout):
        ins = [np.ascontiguousarray(im).copy() for im in images]
        out = np.empty_like(images)
        self.backend.mix(ins, list(out), sources, weights, boxes, cut, layout)
        for a, b in zip(ins, images):
            np.testing.assert_array_equal(a, b)
        return out

    def nest(self, method, phi, u, perms, mixed, h, w, centers=None):
        return self.k.nest_boxes(method, phi, u, perms, mixed, h, w, centers=centers,
                                 workers=self.opts["workers"] or 1, reverse=self.opts["reverse"])

    def grey_resize(self, images, layout, size):
        return self.backend.grey_resize(list(images), layout, size, size)


class GpuBackend:
    """The library's GPU backend and the nesting kernel on the device."""

    name = "gpu"

    def __init__(self):
        import cupy

        from dali_kmix.backends import GpuBackend as Gpu
        from dali_kmix.backends import gpu as gpu_kernels

        self.cp = cupy
        self.k = gpu_kernels
        self.backend = Gpu()

    # every input and output sample its own allocation: under compute-sanitizer without CuPy's pool
    # (DALI_KMIX_NO_POOL=1) a read or write past any sample is outside every allocation and reported
    def blend(self, images, params, layout):
        cp = self.cp
        ins = [cp.asarray(im) for im in images]
        outs = [cp.empty(im.shape, im.dtype) for im in images]
        self.backend.blend(ins, outs, params.to_cupy(), layout)
        for a, b in zip(ins, images):
            np.testing.assert_array_equal(a.get(), b)
        return np.stack([o.get() for o in outs]) if outs else np.empty_like(images)

    def mix(self, images, sources, weights, boxes, cut, layout):
        cp = self.cp
        ins = [cp.asarray(im) for im in images]
        outs = [cp.empty(im.shape, im.dtype) for im in images]
        self.backend.mix(ins, outs, *(cp.asarray(a) for a in (sources, weights, boxes, cut)), layout)
        for a, b in zip(ins, images):
            np.testing.assert_array_equal(a.get(), b)
        return np.stack([o.get() for o in outs]) if outs else np.empty_like(images)

    def nest(self, method, phi, u, perms, mixed, h, w, centers=None):
        cp = self.cp
        s, wt, b = self.k.nest_boxes(method, cp.asarray(phi), cp.asarray(u), cp.asarray(perms),
                                     cp.asarray(mixed), h, w, None if centers is None else cp.asarray(centers))
        return s.get(), wt.get(), None if b is None else b.get()

    def grey_resize(self, images, layout, size):
        return self.k.grey_resize([self.cp.asarray(a) for a in images], layout, size, size).get()


BACKENDS = [
    pytest.param(lambda: CpuBackend(), id="cpu"),
    pytest.param(lambda: CpuBackend(workers=2, block_threads=7, reverse=True), id="cpu-reversed-7thr"),
    pytest.param(lambda: CpuBackend(workers=3, block_threads=32), id="cpu-32thr"),
    pytest.param(lambda: GpuBackend(), id="cupy", marks=pytest.mark.gpu),
]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param()




def _shape(layout, n, h, w, c):
    return (n, h, w, c) if layout == "HWC" else (n, c, h, w)


def _assert_same_bits(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    got, want = np.ascontiguousarray(got), np.ascontiguousarray(want)
    assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), \
        f"{np.count_nonzero(got != want)} of {got.size} elements differ"


DTYPES = [pytest.param(np.uint8, id="u8"), pytest.param(np.float16, id="f16"), pytest.param(np.float32, id="f32")]
SIZES = [(1, 1, 1, 3), (65, 3, 5, 3), (65, 17, 31, 1), (2, 225, 227, 3), (5, 33, 20, 4)]
# tests/test_sanitizers.py runs this module again on the ASan/UBSan build with DALI_KMIX_TEST_GRID=sanitizer: there
# the blend takes K in {2, 3, 9} (one box; nested boxes; the most) instead of 2..9, and kmix_mix only the
# alternating cut pattern (blended and pasted samples in one launch), every other parameter whole. These change
# only trip counts and which samples take which path, not which code runs: gcov of the host build gives the same
# executed lines, branch outcomes and template instantiations for both grids (DEVELOPERS.md: how to check again).
SANITIZER_GRID = os.environ.get("DALI_KMIX_TEST_GRID") == "sanitizer"
BLEND_KS = [2, 3, 9] if SANITIZER_GRID else list(range(2, 10))
CUTS = ["alternating"] if SANITIZER_GRID else ["all-blend", "all-paste", "alternating"]


def _frozen(*arrays):
    for a in arrays:
        if a is not None:
            a.flags.writeable = False  # shared between the backends' tests: none may write them
    return arrays


# The NumPy reference of a case costs far more than the kernels (about 1 s for a K = 9 blend of 9 x 225 x 227 x 3),
# and it is the same for every backend: each case is computed once and the backends' tests (parametrized
# outermost, so they run one after the other) compare against it.
@functools.lru_cache(maxsize=2)
def _blend_case(method, layout, dtype, k, n, h, w, c):
    rng = np.random.default_rng(k * 1000 + h)
    x = random_images(rng, dtype, _shape(layout, n, h, w, c))
    p = sample_params(method, n, h, w, k=k, alpha=0.6, prob=0.9, rng=rng)
    return (*_frozen(x, reference.mix_images(x, p, layout)), p)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
@pytest.mark.parametrize("k", BLEND_KS)
@pytest.mark.parametrize("n,h,w,c", SIZES, ids=[f"{n}x{h}x{w}x{c}" for n, h, w, c in SIZES])
def test_blend_matches_reference(backend, method, layout, dtype, k, n, h, w, c):
    x, want, p = _blend_case(method, layout, dtype, k, n, h, w, c)
    _assert_same_bits(backend.blend(x, p, layout), want)


MIX_SIZES = [(1, 1, 1, 3), (65, 3, 5, 3), (9, 225, 227, 3), (6, 33, 20, 4)]


@functools.lru_cache(maxsize=2)
def _mix_case(layout, dtype, k, n, h, w, c):
    rng = np.random.default_rng(k * 100 + h)
    x = random_images(rng, dtype, _shape(layout, n, h, w, c))
    phi, u, perms, mixed = draw_raw(np, rng, n, k, np.full(k, 0.6), "sample", 0.85)
    blend = params_from_draws("dmixup", phi, u, perms, mixed, h, w)
    paste = params_from_draws("dcutmix", phi, u, perms, mixed, h, w)
    return (*_frozen(x, reference.mix_images(x, blend, layout), reference.mix_images(x, paste, layout)), blend, paste)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("cuts", CUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("k", [2, 3, 9])
@pytest.mark.parametrize("n,h,w,c", MIX_SIZES, ids=[f"{n}x{h}x{w}x{c}" for n, h, w, c in MIX_SIZES])
def test_mix_blends_or_pastes_each_sample_as_its_flag_says(backend, cuts, layout, dtype, k, n, h, w, c):
    # kmix_mix (one launch for dmixup_or_dcutmix): every row is, bit for bit, the reference of its own method
    x, blended, pasted, blend, paste = _mix_case(layout, dtype, k, n, h, w, c)
    cut = {"all-blend": np.zeros(n), "all-paste": np.ones(n), "alternating": np.arange(n) % 2}[cuts].astype(np.uint8)
    got = backend.mix(x, blend.sources, blend.weights, paste.boxes, cut, layout)
    _assert_same_bits(got, np.where(cut.astype(bool).reshape((n,) + (1,) * 3), pasted, blended))


@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("alpha", [0.01, 100.0], ids=["tiny-alpha-empty-boxes", "big-alpha"])
def test_dcutmix_batch_mode_and_degenerate_boxes(backend, layout, alpha):
    rng = np.random.default_rng(5)
    x = random_images(rng, np.uint8, _shape(layout, 9, 19, 23, 3))
    p = sample_params("dcutmix", 9, 19, 23, k=6, alpha=alpha, mode="batch", rng=6)
    _assert_same_bits(backend.blend(x, p, layout), reference.mix_images(x, p, layout))


@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_full_image_and_empty_boxes(backend, layout):
    rng = np.random.default_rng(7)
    h, w = 11, 13
    x = random_images(rng, np.float32, _shape(layout, 3, h, w, 2))
    boxes = np.array([
        [[0, 0, h, w], [0, 0, h, w]],      # every pixel comes from the deepest source
        [[4, 5, 4, 9], [4, 6, 4, 6]],      # zero-height boxes: nothing is pasted
        [[2, 3, 9, 3], [2, 3, 9, 3]],      # zero-width boxes
    ], np.int32)
    sources = np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1]], np.int32)
    p = MixParams(sources, area_weights(boxes, h, w), boxes)
    out = backend.blend(x, p, layout)
    _assert_same_bits(out, reference.mix_images(x, p, layout))
    np.testing.assert_array_equal(out[0], x[2])
    np.testing.assert_array_equal(out[1:], x[1:])


def _at_offset(address_mod_64, shape, dtype):
    """An uninitialised C-contiguous array whose first byte lies at ``address_mod_64`` modulo 64."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = np.empty(nbytes + 128, np.uint8)
    start = (address_mod_64 - buf.ctypes.data) % 64
    return buf[start:start + nbytes].view(dtype).reshape(shape)


# The host DCutMix copies 1 KiB or more whose two ends lie at different offsets modulo 64 with its own loop
# (kmix_copy_long: glibc's string move is ten times slower there on AMD Zen 3), the others with memcpy. The output
# at every offset from the images (a multiple of the element size) takes both, with every head and tail.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_dcutmix_long_copies_at_every_offset_of_the_output(dtype, layout):
    cpu = CpuBackend()
    rng = np.random.default_rng(11)
    n, h, w, c = 5, 40, 351, 3  # an HWC uint8 row is 1053 bytes; rows outside the boxes merge into one copy
    x = random_images(rng, dtype, _shape(layout, n, h, w, c))
    records = [sample_params("dcutmix", n, h, w, k=k, alpha=1.0, rng=k) for k in (2, 3, 5)]
    boxes = np.array([[[5, 0, 30, w]], [[1, 2, 39, 349]], [[0, 100, h, 101]], [[7, 1, 8, 350]], [[0, 0, 0, 0]]],
                     np.int32)  # full-width rows of a partner, one column, one row, no box
    records.append(MixParams(np.array([[0, 1], [1, 2], [2, 3], [3, 4], [4, 0]], np.int32), area_weights(boxes, h, w),
                             boxes))
    size = np.dtype(dtype).itemsize
    for p in records:
        want = reference.mix_images(x, p, layout)
        for shift in range(0, 64, size):
            out = _at_offset((x.ctypes.data + shift) % 64, x.shape, dtype)
            assert (out.ctypes.data - x.ctypes.data) % 64 == shift
            cpu.backend.blend(x, out, p, layout)
            _assert_same_bits(out, want)


def test_dmixup_one_weight_is_a_copy(backend):
    rng = np.random.default_rng(8)
    x = random_images(rng, np.float32, (4, 5, 6, 3))
    p = MixParams(np.array([[0, 3], [1, 0], [2, 2], [3, 1]]), np.array([[0, 1], [1, 0], [1, 0], [0, 1]]), None)
    out = backend.blend(x, p, "HWC")
    np.testing.assert_array_equal(out, x[[3, 1, 2, 1]])


# --------------------------------------------------------------------------- a share of exactly 0

# float32 values where a blend's bits are fragile: signed zeros, the smallest subnormal, tiny products that
# round to (signed) zero, ordinary values and the largest finite ones.
SPECIAL_X = np.array([0.0, -0.0, 1.4e-45, -1e-30, 1e-20, -1.0, 3.0, 3.4e38], np.float32)
SPECIAL_W = np.array([0.0, -0.0, 1e-30, 0.25, 1.0], np.float32)  # -0.0 passes "w >= 0"
NON_FINITE = np.array([np.inf, -np.inf, np.nan], np.float32)


def _every_combination(values, weights, dtype):
    """A K = 3 batch in which every weight row of ``weights`` meets every (x0, x1, x2) of ``values``.

    Images come in groups of three; image 3g + r holds, at element i, value digit r of i in base
    len(values), and row 3g + r takes its sources from its group, rotated by r (so every row still meets
    every combination, in another order) with weight row g. Returns (images HWC, record).
    """
    v = np.asarray(values).astype(dtype)
    m, combos = len(weights) ** 3, len(v) ** 3
    i = np.arange(combos)
    planes = [v[i // len(v) ** 2], v[(i // len(v)) % len(v)], v[i % len(v)]]
    images = np.stack([planes[r] for _ in range(m) for r in range(3)]).reshape(3 * m, len(v) ** 2, len(v), 1)
    g = np.arange(3 * m) // 3
    r = np.arange(3 * m) % 3
    sources = 3 * g[:, None] + (r[:, None] + np.arange(3)[None, :]) % 3
    wg = np.stack(np.meshgrid(weights, weights, weights, indexing="ij"), axis=-1).reshape(m, 3)
    return images, MixParams(sources.astype(np.int32), wg[g], None)  # rows need not sum to 1 here


def _fma_chain(images, p, guard):
    """The blend as it was before zero shares were guarded (``guard=None``) or with a variant for a zero share."""
    acc = np.zeros(images.shape, np.float32)
    for j in range(p.k):
        w = p.weights[:, j].reshape(-1, 1, 1, 1)
        x = images[p.sources[:, j]].astype(np.float32)
        if guard == "skip":
            acc = np.where(w == 0, acc, reference.fma32(w, x, acc))
        else:
            acc = reference.fma32(w, x, acc)
    return acc.astype(images.dtype)


@pytest.mark.parametrize("dtype", [pytest.param(np.float16, id="f16"), pytest.param(np.float32, id="f32")])
def test_zero_share_keeps_every_finite_blend_bit_for_bit(backend, dtype):
    # 125 weight rows x 512 pixel triples: the zero-share guard changes no bit of any finite blend, in the
    # reference and in the kernels (host fast path, the GPU's strided path, the GPU itself).
    values = SPECIAL_X if dtype == np.float32 else np.append(SPECIAL_X[:-1], [6e-8, -65504.0])
    x, p = _every_combination(values, SPECIAL_W, dtype)
    assert np.isfinite(x).all()
    before = _fma_chain(x, p, None)
    _assert_same_bits(reference.mix_images(x, p, "HWC"), before)
    _assert_same_bits(backend.blend(x, p, "HWC"), before)
    n = x.shape[0]
    _assert_same_bits(backend.mix(x, p.sources, p.weights, np.zeros((n, 2, 4), np.int32), np.zeros(n, np.uint8),
                                  "HWC"), before)


def test_skipping_a_zero_share_would_change_bits():
    # Why the guard replaces the pixel by a signed zero instead of skipping the term: the sum can be -0
    # (1e-30 * -1e-30 rounds to -0), and fma(0, x, -0) = +0 for x >= 0, which a skip would leave at -0.
    assert np.signbit(reference.fma32(np.float32(1e-30), np.float32(-1e-30), np.float32(0.0)))
    x, p = _every_combination(SPECIAL_X, SPECIAL_W, np.float32)
    before, skipped = _fma_chain(x, p, None), _fma_chain(x, p, "skip")
    assert np.array_equal(before, skipped)  # equal values ...
    assert not np.array_equal(before.view(np.uint32), skipped.view(np.uint32))  # ... but not equal bits


@pytest.mark.parametrize("dtype", [pytest.param(np.float16, id="f16"), pytest.param(np.float32, id="f32")])
def test_zero_share_partner_with_inf_or_nan_contributes_nothing(backend, dtype):
    # issue 20 item 8: 0 * Inf = NaN used to poison the blend; now a zero share adds nothing, whatever it holds
    values = np.concatenate([SPECIAL_X[[0, 1, 3, 5, 6]], NON_FINITE])
    x, p = _every_combination(values, np.array([0.0, -0.0, 1e-30, 0.5], np.float32), dtype)
    got = backend.blend(x, p, "HWC")
    want = reference.mix_images(x, p, "HWC")
    nan = np.isnan(want)  # NaN where the reference has NaN (a GPU returns its canonical NaN), the same bits elsewhere
    np.testing.assert_array_equal(np.isnan(got), nan)
    _assert_same_bits(got[~nan], want[~nan])
    # the same blend with every zero-share pixel replaced by 0: equal values (a zero's sign may differ)
    zero_share = (p.weights == 0)[:, :, None, None, None]
    finite_x = np.where(zero_share, np.asarray(0, dtype), x[p.sources])  # (N, K, ...) per row and term
    expect = np.zeros(x.shape, np.float32)
    for j in range(p.k):
        expect = reference.fma32(p.weights[:, j].reshape(-1, 1, 1, 1), finite_x[:, j].astype(np.float32), expect)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(got, expect.astype(dtype))
    # and a row whose nonzero shares see only finite pixels is finite
    live_finite = np.where(zero_share, True, np.isfinite(x[p.sources])).all(axis=1)
    assert np.isfinite(got[live_finite & np.isfinite(expect)]).all()


# --------------------------------------------------------------------------- uint8 rounding and clipping

# Weight rows for the uint8 store: exact halves (ties to even: 0.5 * 1 + 0.5 * 2 = 1.5 -> 2), a third (inexact),
# rows summing past 1 (sums past 255: the clip), a huge share (sums past 2^31 before the clip) and rows that a
# record could not hold but the kernels must still store as the reference does. The AVX2 steps take shares in
# [-8, 8] without a min before the packs, and the first image's bytes through 2^23 + x: so shares at and just past
# 8 and -8, shares whose sums the packs alone would wrap (past 32767) if those steps took them, negative shares
# (sums below 0: the clip to 0) and a subnormal first share.
U8_WEIGHT_ROWS = {
    1: [[1.0], [0.5], [0.999999], [1.0e9], [8.0], [8.000001], [200.0], [-1.0], [1.0e-40]],
    2: [[0.5, 0.5], [0.25, 0.75], [1.0, 1.0], [0.3, 0.7], [1.0e10, 0.5], [8.0, -8.0], [-8.0, 8.0],
        [-8.000001, 0.5], [100.0, 100.0], [1.0e-40, 0.75]],
    3: [[0.25, 0.25, 0.5], [1 / 3, 1 / 3, 1 / 3], [0.9, 0.9, 0.9], [8.0, 8.0, 8.0], [-0.5, 1.0, 0.5],
        [0.5, -7.5, 8.0], [20.0, 20.0, 100.0], [3.0e-39, 0.5, 0.5]],
    8: [[8.0] * 8, [-8.0] * 8, [0.125] * 8],
}


@pytest.mark.parametrize("k", list(range(1, 9)), ids=[f"K{k}" for k in range(1, 9)])
@pytest.mark.parametrize("length", [1, 15, 16, 17, 31, 32, 33, 95, 65536 + 23], ids=lambda v: f"len{v}")
def test_uint8_blend_rounds_and_clips_as_the_reference(backend, k, length):
    # The host build blends uint8 with SIMD steps of 16 (AVX-512), 32 or 8 (AVX2) lanes (kmix_dmixup_u8_steps) and
    # finishes the sample in the scalar loop, for each K of its fixed-K instances (1..8): every pixel value in every
    # term, ties, clips and lengths around the steps, against the reference's float32 chain, bit for bit.
    rng = np.random.default_rng(100 + k + length)
    rows = U8_WEIGHT_ROWS.get(k, []) + [[8.0] * k, [-8.0] + [8.0] * (k - 1), [-1.0e-40] + [1.0 / k] * (k - 1)]
    rows += [list(rng.dirichlet(np.ones(k))) for _ in range(3)]
    n = max(k, len(rows))
    x = np.empty((n, length, 1, 1), np.uint8)
    ramp = np.arange(length) % 256
    for i in range(n):  # image i holds every value, shifted so that the K terms of a pixel differ
        x[i, :, 0, 0] = (ramp * (2 * i + 1) + 37 * i) % 256
    sources = (np.arange(n)[:, None] + np.arange(k)[None, :]) % n
    weights = np.array([rows[i % len(rows)] for i in range(n)], np.float32)
    p = MixParams(sources.astype(np.int32), weights, None)  # rows need not sum to 1 at this level
    _assert_same_bits(backend.blend(x, p, "HWC"), reference.mix_images(x, p, "HWC"))


@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
@pytest.mark.parametrize("mode", ["sample", "batch"])
@pytest.mark.parametrize("alpha", [0.001, 0.3, 1.0, 50.0])
@pytest.mark.parametrize("k", [2, 3, 9])
@pytest.mark.parametrize("n,h,w", [(1, 1, 1), (65, 3, 5), (40, 225, 227)], ids=["1x1x1", "65x3x5", "40x225x227"])
def test_nesting_kernel_matches_numpy(backend, method, mode, alpha, k, n, h, w):
    rng = np.random.default_rng(int(alpha * 1000) + k)
    phi, u, perms, mixed = draw_raw(np, rng, n, k, np.full(k, alpha), mode, 0.85)
    want = params_from_draws(method, phi, u, perms, mixed, h, w)
    s, wt, b = backend.nest(method, phi, u, perms, mixed, h, w)
    np.testing.assert_array_equal(s, want.sources)
    assert np.array_equal(wt.view(np.uint32), want.weights.view(np.uint32))
    if method == "dmixup":
        assert b is None
    else:
        np.testing.assert_array_equal(b, want.boxes)
        MixParams(s, wt, b).validate(n, h, w)


def test_half_conversions_are_exact_on_the_host():
    from dali_kmix.backends import cpu as cpu_kernels

    if cpu_kernels.compiler() is None:
        pytest.skip("no C++ compiler")
    cpu_kernels.build()
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    want = bits.view(np.float16).astype(np.float32)
    got = cpu_kernels.half_to_float(bits)
    nan = np.isnan(want)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    assert np.isnan(got[nan]).all()
    # float -> half: every half value, its neighbours and the exact midpoints between halves (ties to even),
    # plus random floats across the whole range.
    h = want[np.isfinite(want)].astype(np.float64)
    h.sort()
    mids = (h[:-1] + h[1:]) / 2
    rng = np.random.default_rng(0)
    samples = np.concatenate([h, mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf), [65520.0, -65520.0,
                              65519.99, 1e-8, -1e-8, 2.0 ** -25, 2.0 ** -25 * 1.0000001, 1e30, np.inf, -np.inf]])
    f = np.concatenate([samples.astype(np.float32),
                        rng.integers(0, 1 << 32, 200000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    with np.errstate(over="ignore"):
        want16 = f.astype(np.float16)
    got16 = cpu_kernels.float_to_half(f).view(np.float16)
    nan = np.isnan(f)
    assert np.array_equal(got16[~nan].view(np.uint16), want16[~nan].view(np.uint16))
    assert np.isnan(got16[nan]).all()


@pytest.mark.gpu
def test_gpu_kernels_run_on_the_current_stream_without_sync():
    import cupy

    from dali_kmix.backends import gpu as gpu_kernels

    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:  # inputs, record and outputs are all made on the stream the kernels run on
        x = cupy.random.random((8, 3, 32, 32), dtype=cupy.float32)
        p = sample_params("dcutmix", 8, 32, 32, k=3, rng=0).to_cupy()
        out = cupy.empty_like(x)
        gpu_kernels.dcutmix(list(x), list(out), p.sources, p.boxes, "CHW")
    stream.synchronize()
    want = reference.mix_images(x.get(), p.to_numpy(), "CHW")
    np.testing.assert_array_equal(out.get(), want)


@pytest.mark.gpu
def test_device_sampler_gives_valid_records():
    import cupy

    from dali_kmix.sampling import sample_params_device

    gen = cupy.random.default_rng(3)
    for method in ("dmixup", "dcutmix"):
        for mode in ("sample", "batch"):
            p = sample_params_device(gen, method, 33, 40, 50, 4, np.full(4, 0.5), mode, 0.7)
            assert isinstance(p.sources, cupy.ndarray)
            p.validate(33, 40, 50)


@pytest.mark.parametrize("mode", ["sample", "batch"])
@pytest.mark.parametrize("k", [2, 3, 9])
@pytest.mark.parametrize("n,h,w", [(1, 1, 1), (65, 3, 5), (40, 225, 227)], ids=["1x1x1", "65x3x5", "40x225x227"])
def test_nesting_kernel_with_salient_centers_matches_numpy(backend, k, mode, n, h, w):
    rng = np.random.default_rng(k + h)
    centers = np.stack([rng.integers(0, h, n), rng.integers(0, w, n)], axis=1).astype(np.int32)
    draws = draw_raw(np, rng, n, k, np.full(k, 0.5), mode, 0.8)
    want = params_from_draws("saliency-dcutmix", *draws, h, w, centers)
    s, wt, b = backend.nest("saliency-dcutmix", *draws, h, w, centers=centers)
    np.testing.assert_array_equal(s, want.sources)
    np.testing.assert_array_equal(b, want.boxes)
    assert np.array_equal(wt.view(np.uint32), want.weights.view(np.uint32))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout,shape", [("HWC", (5, 37, 53, 3)), ("CHW", (4, 3, 225, 227)),
                                          ("HWC", (3, 9, 300, 1)), ("CHW", (2, 4, 70, 64)), ("HWC", (1, 1, 1, 3))],
                         ids=["hwc-37x53x3", "chw-3x225x227", "hwc-9x300x1", "chw-4x70x64", "hwc-1x1x3"])
def test_grey_resize_matches_numpy(backend, dtype, layout, shape):
    from dali_kmix import saliency

    rng = np.random.default_rng(1)
    x = random_images(rng, dtype, shape)
    want = saliency.resize_bilinear(saliency.grey(x, layout), 64, 64)
    got = backend.grey_resize(x, layout, 64)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("value,applied", [("1", True), ("0", False), ("", False), ("false", False), ("Yes", True)],
                         ids=["on", "zero", "unset", "false", "yes"])
def test_no_pool_switch_turns_cupys_pools_off(monkeypatch, value, applied):
    # DALI_KMIX_NO_POOL=1 (compute-sanitizer): CuPy allocates with cudaMalloc / cudaHostAlloc, no pools
    import cupy

    from dali_kmix.backends import gpu

    calls = []
    monkeypatch.setattr(cupy.cuda, "set_allocator", lambda a=None: calls.append(("device", a)))
    monkeypatch.setattr(cupy.cuda, "set_pinned_memory_allocator", lambda a=None: calls.append(("pinned", a)))
    monkeypatch.setenv(gpu.NO_POOL_ENV, value)
    assert gpu.configure_allocator.__wrapped__() is applied
    assert calls == ([("device", None), ("pinned", None)] if applied else [])


def test_no_pool_switch_refuses_other_values(monkeypatch):
    from dali_kmix.backends import gpu

    monkeypatch.setenv(gpu.NO_POOL_ENV, "maybe")
    with pytest.raises(ValueError, match=r"DALI_KMIX_NO_POOL must be 0, 1, true, false, yes, no, on or off, "
                                         r"got 'maybe'"):
        gpu.configure_allocator.__wrapped__()


# --------------------------------------------------------------------------- the choice of backend


def test_backend_for_picks_by_array_kind():
    from dali_kmix.backends import CpuBackend as Cpu
    from dali_kmix.backends import backend_for

    b = backend_for(np.zeros((2, 3), np.uint8), workers=3)
    assert isinstance(b, Cpu) and b.workers == 3


@pytest.mark.gpu
def test_backend_for_cupy_is_the_gpu():
    import cupy

    from dali_kmix.backends import GpuBackend as Gpu
    from dali_kmix.backends import backend_for

    assert isinstance(backend_for(cupy.zeros(3)), Gpu)


@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
def test_numpy_backend_matches_the_reference(method):
    from dali_kmix.backends import NumpyBackend

    rng = np.random.default_rng(4)
    x = random_images(rng, np.float32, (5, 3, 7, 9))
    p = sample_params(method, 5, 7, 9, k=4, rng=1)
    out = np.empty_like(x)
    NumpyBackend().blend(list(x), list(out), p, "CHW")
    np.testing.assert_array_equal(out, reference.mix_images(x, p, "CHW"))
    g = NumpyBackend().grey_resize(list(x), "CHW", 6, 6)
    np.testing.assert_array_equal(g, reference.resize_bilinear(reference.grey(x, "CHW"), 6, 6))


def test_numpy_backend_mix_takes_each_row_from_its_method():
    from dali_kmix.backends import NumpyBackend

    rng = np.random.default_rng(5)
    x = random_images(rng, np.uint8, (6, 7, 9, 3))
    phi, u, perms, mixed = draw_raw(np, rng, 6, 3, np.ones(3), "sample", 1.0)
    blend = params_from_draws("dmixup", phi, u, perms, mixed, 7, 9)
    paste = params_from_draws("dcutmix", phi, u, perms, mixed, 7, 9)
    cut = np.array([1, 0, 0, 1, 1, 0], np.uint8)
    out = np.empty_like(x)
    NumpyBackend().mix(list(x), list(out), blend.sources, blend.weights, paste.boxes, cut, "HWC")
    want_paste, want_blend = reference.mix_images(x, paste, "HWC"), reference.mix_images(x, blend, "HWC")
    for i, c in enumerate(cut):
        np.testing.assert_array_equal(out[i], want_paste[i] if c else want_blend[i])


def test_codes_agree_with_the_cpp_header():
    """The dtype and layout codes are defined once for C++ (kmix_codes.h) and once for Python."""
    import re

    from dali_kmix.backends import cpu
    from dali_kmix.backends.sources import kernels_dir

    text = (kernels_dir() / "kmix_codes.h").read_text()
    defs = {m.group(1): int(m.group(2)) for m in re.finditer(r"#define KMIX_(\w+) (\d+)", text)}
    assert {"HWC": defs["HWC"], "CHW": defs["CHW"]} == cpu.LAYOUT_CODES
    assert {np.dtype(np.uint8): defs["U8"], np.dtype(np.float16): defs["F16"],
            np.dtype(np.float32): defs["F32"]} == cpu.DTYPE_CODES


# --------------------------------------------------------------------------- every GPU launch, checked without a GPU
# dali_kmix.backends.gpu launches each kernel with a tuple CuPy packs by value: a device array becomes its pointer,
# a NumPy scalar its bytes. A wrong scalar width or a float64 array where the kernel reads float would run without an
# error on a device and give garbage. Here the launches are recorded (NumPy standing in for CuPy) and every argument
# is checked against the kernel's declaration in the .cu source (pointer or value, element type) and against the
# PTX NVRTC makes of it (parameter count and widths).

_C_TYPES = {"int": np.int32, "long long": np.int64, "float": np.float32, "double": np.float64,
            "unsigned char": np.uint8, "__half": np.float16}
_PTX_WIDTH = {"8": 1, "16": 2, "32": 4, "64": 8}


def _kernel_params(source_text, name, t=None):
    """``[(is_pointer, element dtype or "pointers"), ...]`` of kernel ``name`` as the .cu file declares it."""
    import re

    m = re.search(r"__global__\s+void\s+" + name + r"\s*\(([^)]*)\)", source_text)
    params = []
    for p in m.group(1).split(","):
        p = re.sub(r"\b(const|__restrict__)\b", " ", p).strip()
        stars = p.count("*")
        base = " ".join(p.replace("*", " ").split()[:-1])  # drop the parameter name
        base = t if base == "T" else base
        params.append((stars > 0, "pointers" if stars == 2 else np.dtype(_C_TYPES[base])))
    return params


def _ptx_param_widths(ptx, lowered):
    import re

    m = re.search(r"\.entry\s+" + re.escape(lowered) + r"\s*\((.*?)\)", ptx, re.S)
    assert m, f"{lowered} not in the PTX"
    return [_PTX_WIDTH[w] for w in re.findall(r"\.param\s+\.[usbf](\d+)", m.group(1))]


@pytest.fixture(scope="module")
def compiled_ptx():
    """PTX of every device source, compiled by NVRTC (before CuPy is replaced below)."""
    from dali_kmix.backends import sources

    return {name: sources.compile_nvrtc(name, "compute_90") for name in sources.DEVICE_SOURCES}


@pytest.fixture
def recorded_launches(monkeypatch):
    """Every launch of dali_kmix.backends.gpu, recorded (not run), NumPy standing in for CuPy.

    A sample's "device address" is its host address, and every array an address was taken of is held,
    so a recorded launch can be replayed by the host build of the same kernel (:func:`_replay_on_host`).
    """
    import sys
    import types

    from dali_kmix.backends import gpu

    fake = types.ModuleType("cupy")
    fake.__getattr__ = lambda name: getattr(np, name)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    held = []
    monkeypatch.setattr(gpu, "_data_ptr", lambda a: (held.append(a), a.ctypes.data)[1])
    calls = []

    class Module:
        def __init__(self, name):
            self.name = name

        def get_function(self, expr):
            return lambda grid, block, args: calls.append((self.name, expr, grid, block, args))

    monkeypatch.setattr(gpu, "module", Module)
    return calls


def _every_launch(gpu, dtype):
    rng = np.random.default_rng(0)
    n, k, h, w = 5, 4, 9, 13
    phi, uni, perms, mixed = draw_raw(np, rng, n, k, np.full(k, 0.7), "sample", 0.8)
    p = params_from_draws("dcutmix", phi, uni, perms, mixed, h, w)
    images = [random_images(rng, dtype, (h, w, 3)) for _ in range(n)]
    outs = [np.empty_like(im) for im in images]
    gpu.dmixup(images, outs, p.sources, p.weights)
    gpu.dcutmix(images, outs, p.sources, p.boxes, "HWC")
    gpu.mix(images, outs, p.sources, p.weights, p.boxes, (np.arange(n) % 2).astype(np.uint8), "HWC")
    gpu.nest_boxes("dcutmix", phi, uni, perms, mixed.astype(np.uint8), h, w)
    gpu.nest_boxes("dmixup", phi, uni, perms, mixed.astype(np.uint8), h, w)
    gpu.nest_boxes("saliency-dcutmix", phi, uni, perms, mixed.astype(np.uint8), h, w,
                   centers=rng.integers(0, h, (n, 2)))
    gpu.grey_resize(images, "HWC", 6, 6)


@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32], ids=["uint8", "float16", "float32"])
def test_every_gpu_launch_matches_the_kernel_declaration(compiled_ptx, recorded_launches, dtype):
    from dali_kmix.backends import gpu, sources

    _every_launch(gpu, dtype)
    launched = {(name, expr) for name, expr, *_ in recorded_launches}
    assert launched == {("kmix_blend.cu", f"kmix_dmixup<{gpu._TYPE_NAMES[np.dtype(dtype)]}>"),
                        ("kmix_blend.cu", f"kmix_dcutmix<{gpu._TYPE_NAMES[np.dtype(dtype)]}>"),
                        ("kmix_blend.cu", f"kmix_mix<{gpu._TYPE_NAMES[np.dtype(dtype)]}>"),
                        ("kmix_boxes.cu", "kmix_nest_boxes"),
                        ("kmix_saliency.cu", f"kmix_grey_resize<{gpu._TYPE_NAMES[np.dtype(dtype)]}>")}
    compiled = compiled_ptx
    for name, expr, grid, block, args in recorded_launches:
        base, _, t = expr.partition("<")
        declared = _kernel_params(sources.read_source(name), base, t.rstrip(">") or None)
        assert len(args) == len(declared), f"{expr}: {len(args)} arguments for {len(declared)} parameters"
        ptx = compiled[name].image.decode()
        widths = _ptx_param_widths(ptx, compiled[name].lowered.get(expr, expr))
        for i, (arg, (is_ptr, elem), width) in enumerate(zip(args, declared, widths)):
            where = f"{expr} argument {i}"
            if is_ptr and isinstance(arg, np.ndarray):
                assert width == 8, where
                want = np.dtype(np.uint64) if elem == "pointers" else elem
                assert arg.dtype == want, f"{where}: a {arg.dtype} array for a {want} pointer"
                assert arg.flags.c_contiguous, f"{where}: not contiguous"
            elif is_ptr:
                assert isinstance(arg, np.uintp) and arg == 0, f"{where}: {arg!r} for a pointer (only a null)"
            else:
                assert isinstance(arg, np.generic) and not isinstance(arg, np.ndarray), \
                    f"{where}: {type(arg).__name__} passed for a value (cast scalars explicitly)"
                assert arg.dtype == elem and arg.dtype.itemsize == width, f"{where}: {arg.dtype} for {elem}"
        assert all(g >= 1 for g in grid) and len(grid) <= 3 and grid[0] < 2 ** 31 and all(g < 65536 for g in grid[1:])
        assert len(block) == 1 and 1 <= block[0] <= 1024 and block[0] % 32 == 0


# --------------------------------------------------------------------------- what a GPU launch reads, replayed on the host
# The host build's entry points take the GPU kernel's arguments in the kernel's order (after a dtype code, before the
# thread options), so a recorded launch can be run on the CPU as it would run on a device: through the same per-sample
# pointers. That shows what the kernel reads of a strided view, without a GPU.

_DTYPE_OF = {name: np.dtype(t) for name, t in _C_TYPES.items()}
_HOST_TAIL = {"kmix_dmixup": (1, 1, 0), "kmix_dcutmix": (1, 1, 0), "kmix_mix": (1, 1, 0), "kmix_grey_resize": (1, 0),
              "kmix_nest_boxes": (1, 0)}


def _replay_on_host(launch):
    from dali_kmix.backends import cpu

    _, expr, _, _, args = launch
    base, _, t = expr.partition("<")
    head = () if base == "kmix_nest_boxes" else (cpu.DTYPE_CODES[_DTYPE_OF[t.rstrip(">")]],)
    values = [a.ctypes.data if isinstance(a, np.ndarray) else int(a) for a in args]
    assert getattr(cpu.load(), "kmix_host_" + base[len("kmix_"):])(*head, *values, *_HOST_TAIL[base]) == 0


def _strided_batch(rng, dtype, layout, kind, n, h, w, c):
    """``(base, view)``: a dense array and a function giving the batch in ``layout`` whose samples are strided views
    of it (the transpose of the other layout, or every other column); ``view`` works on NumPy and CuPy alike."""
    if kind == "transposed":
        if layout == "HWC":
            return random_images(rng, dtype, (n, c, h, w)), lambda a: a.transpose(0, 2, 3, 1)
        return random_images(rng, dtype, (n, h, w, c)), lambda a: a.transpose(0, 3, 1, 2)
    wide = random_images(rng, dtype, _shape(layout, n, h, 2 * w, c))
    return wide, (lambda a: a[:, :, ::2]) if layout == "HWC" else (lambda a: a[:, :, :, ::2])


@pytest.mark.parametrize("kind", ["transposed", "every-other-column"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_launches_read_strided_samples_as_the_reference_does(recorded_launches, dtype, layout, kind):
    from dali_kmix.backends import cpu, gpu

    if cpu.compiler() is None:
        pytest.skip("no C++ compiler: no host build to replay the launches on")
    rng = np.random.default_rng(11)
    n, k, h, w, c = 5, 3, 9, 13, 3
    base, view = _strided_batch(rng, dtype, layout, kind, n, h, w, c)
    x = view(base)
    samples = list(x)
    assert not any(s.flags.c_contiguous for s in samples)
    phi, uni, perms, mixed = draw_raw(np, rng, n, k, np.full(k, 0.7), "sample", 0.9)
    blend = params_from_draws("dmixup", phi, uni, perms, mixed, h, w)
    paste = params_from_draws("dcutmix", phi, uni, perms, mixed, h, w)
    cut = (np.arange(n) % 2).astype(np.uint8)
    outs = {name: [np.full(samples[0].shape, 7, dtype) for _ in range(n)] for name in ("dmixup", "dcutmix", "mix")}
    gpu.dmixup(samples, outs["dmixup"], blend.sources, blend.weights)
    gpu.dcutmix(samples, outs["dcutmix"], paste.sources, paste.boxes, layout)
    gpu.mix(samples, outs["mix"], blend.sources, blend.weights, paste.boxes, cut, layout)
    grey = gpu.grey_resize(samples, layout, 6, 6)
    assert len(recorded_launches) == 4
    for launch in recorded_launches:
        _replay_on_host(launch)
    dense = np.ascontiguousarray(x)
    want_blend, want_paste = reference.mix_images(dense, blend, layout), reference.mix_images(dense, paste, layout)
    _assert_same_bits(np.stack(outs["dmixup"]), want_blend)
    _assert_same_bits(np.stack(outs["dcutmix"]), want_paste)
    _assert_same_bits(np.stack(outs["mix"]), np.where(cut.astype(bool)[:, None, None, None], want_paste, want_blend))
    _assert_same_bits(grey, reference.resize_bilinear(reference.grey(dense, layout), 6, 6))
    np.testing.assert_array_equal(np.stack(samples), dense)  # inputs never written


@pytest.mark.parametrize("method", ["dmixup", "dcutmix", "saliency-dcutmix"])
def test_gpu_nesting_launch_reads_strided_draws_as_numpy_does(recorded_launches, method):
    # _GpuMix hands the nesting kernel partners as a transposed stack; any draw may come strided
    from dali_kmix.backends import cpu, gpu

    if cpu.compiler() is None:
        pytest.skip("no C++ compiler: no host build to replay the launches on")
    rng = np.random.default_rng(15)
    n, k, h, w = 9, 4, 21, 17
    phi, uni, perms, mixed = draw_raw(np, rng, n, k, np.full(k, 0.6), "sample", 0.8)
    centers = np.stack([rng.integers(0, h, n), rng.integers(0, w, n)], axis=1).astype(np.int32)
    strided = (np.asfortranarray(phi), np.repeat(uni, 2, axis=2)[:, :, ::2],
               np.ascontiguousarray(perms.T).T, np.stack([mixed, mixed], axis=1)[:, 0].astype(np.uint8),
               np.asfortranarray(centers))
    s, wt, b = gpu.nest_boxes(method, *strided[:4], h, w, strided[4] if method == "saliency-dcutmix" else None)
    for launch in recorded_launches:
        _replay_on_host(launch)
    want = params_from_draws(method, phi, uni, perms, mixed, h, w, centers)
    np.testing.assert_array_equal(s, want.sources)
    assert np.array_equal(wt.view(np.uint32), want.weights.view(np.uint32))
    if method != "dmixup":
        np.testing.assert_array_equal(b, want.boxes)


@pytest.mark.parametrize("backend_name", ["gpu-recorded", "cpu"])
def test_strided_outputs_and_mismatched_samples_raise(recorded_launches, backend_name):
    from dali_kmix.backends import cpu, gpu

    if backend_name == "cpu" and cpu.compiler() is None:
        pytest.skip("no C++ compiler")
    k = gpu if backend_name == "gpu-recorded" else cpu
    rng = np.random.default_rng(12)
    x = random_images(rng, np.uint8, (3, 5, 6, 3))
    p = sample_params("dcutmix", 3, 5, 6, k=2, rng=1)
    strided_out = np.empty((3, 3, 5, 6), np.uint8).transpose(0, 2, 3, 1)
    with pytest.raises(ValueError, match=r"outputs\[0\] must be C-contiguous .* got strides"):
        k.dcutmix(list(x), list(strided_out), p.sources, p.boxes, "HWC")
    with pytest.raises(ValueError, match=r"inputs\[1\] must have shape \(5, 6, 3\) and dtype uint8 like the batch, "
                                         r"got shape \(5, 7, 3\)"):
        k.dmixup([x[0], np.zeros((5, 7, 3), np.uint8), x[2]], list(np.empty_like(x)), p.sources, p.weights)
    with pytest.raises(ValueError, match=r"inputs\[2\] must have shape \(5, 6, 3\) and dtype uint8 .* dtype float32"):
        k.mix([x[0], x[1], x[2].astype(np.float32)], list(np.empty_like(x)), p.sources, p.weights, p.boxes,
              np.ones(3, np.uint8), "HWC")
    with pytest.raises(ValueError, match="inputs and outputs must hold the same number of samples, got 2 and 3"):
        k.dmixup(list(x[:2]), list(np.empty_like(x)), p.sources, p.weights)
    assert not recorded_launches


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["transposed", "every-other-column"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cupy_strided_views_give_the_reference(dtype, layout, kind):
    import cupy

    from dali_kmix.backends import gpu

    rng = np.random.default_rng(13)
    n, k, h, w, c = 7, 4, 11, 17, 3
    base, view = _strided_batch(rng, dtype, layout, kind, n, h, w, c)
    x, xg = view(base), view(cupy.asarray(base))
    assert not any(s.flags.c_contiguous for s in xg) and np.array_equal(xg.get(), x)
    p = sample_params("dcutmix", n, h, w, k=k, rng=3)
    out = [cupy.empty(x.shape[1:], x.dtype) for _ in range(n)]
    gpu.dcutmix(list(xg), out, p.sources, p.boxes, layout)
    _assert_same_bits(cupy.stack(out).get(), reference.mix_images(np.ascontiguousarray(x), p, layout))
    got = gpu.grey_resize(list(xg), layout, 8, 8).get()
    _assert_same_bits(got, reference.resize_bilinear(reference.grey(np.ascontiguousarray(x), layout), 8, 8))


# --------------------------------------------------------------------------- the GPU launch configuration, on the host
# kernels/kmix_launch.h decides grid and block for the DALI plugin's GPU operators; the host library exposes it and
# walks the grid through the kernels' own work split (kmix_element_chunk, kmix_row_chunk, the samples' stride over
# grid.y), so a configuration that skips or repeats an element or a sample is caught here, without a device. The CuPy
# path (backends/gpu.py) mirrors the header and is compared with it.

LAUNCH_SIZES = {"1x1": (1, 1, 1), "5x3x3": (5, 3, 3), "224x224x3": (224, 224, 3), "3x512x512": (512, 512, 3)}


def _host_kernels():
    from dali_kmix.backends import cpu

    if not cpu.available():
        pytest.skip("no C++ compiler: the host library is unavailable")
    return cpu


def _mirror(kernel, n, h, w, c, layout):
    """The CuPy path's launch of ``kernel`` (backends/gpu.py)."""
    from dali_kmix.backends import gpu

    grid_x = gpu._paste_grid_x(h, w, c, layout) if kernel == "dcutmix" else gpu._blend_grid_x(h * w * c, 256)
    return grid_x, min(n, gpu._MAX_GRID_Y), 256


@pytest.mark.parametrize("size", list(LAUNCH_SIZES))
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("kernel", ["dmixup", "dcutmix", "mix"])
def test_launch_covers_every_sample_and_element_once_for_batch_1_to_1024(kernel, layout, size):
    cpu = _host_kernels()
    h, w, c = LAUNCH_SIZES[size]
    elems = h * w * c
    for n in range(1, 1025):
        grid_x, grid_y, block = cpu.launch_config(kernel, n, h, w, c, layout)
        assert (grid_x, grid_y, block) == _mirror(kernel, n, h, w, c, layout)
        assert block == 256 and grid_y == n and 1 <= grid_x < 2 ** 31
        tiles, visits, last = cpu.launch_cover(kernel, n, h, w, c, layout)
        assert tiles, (n, grid_x)
        assert visits.tolist() == [1] * n
        assert last == (elems - 1 if kernel != "dcutmix" else -1)


@pytest.mark.parametrize("n", [65535, 65536, 100_003])
def test_launch_strides_samples_past_the_grid_y_limit(n):
    cpu = _host_kernels()
    for kernel in ("dmixup", "dcutmix", "mix"):
        grid_x, grid_y, _ = cpu.launch_config(kernel, n, 7, 5, 3, "CHW")
        assert grid_y == 65535 and (grid_x, grid_y, 256) == _mirror(kernel, n, 7, 5, 3, "CHW")
        tiles, visits, _ = cpu.launch_cover(kernel, n, 7, 5, 3, "CHW")
        assert tiles and visits.min() == visits.max() == 1  # every sample once, past 65535 too


@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_launch_reaches_element_offsets_past_2_to_the_31(layout):
    cpu = _host_kernels()
    h, w, c = 32768, 32768, 3  # 3.2e9 elements per sample: int64 offsets
    for kernel in ("dmixup", "dcutmix", "mix"):
        cfg = cpu.launch_config(kernel, 2, h, w, c, layout)
        assert cfg == _mirror(kernel, 2, h, w, c, layout)
        tiles, visits, last = cpu.launch_cover(kernel, 2, h, w, c, layout)
        assert tiles and visits.tolist() == [1, 1]
        if kernel != "dcutmix":
            assert cfg[0] == 1 << 20 and last == h * w * c - 1 > 2 ** 31


def test_nothing_is_launched_for_an_empty_batch_or_sample():
    cpu = _host_kernels()
    for args in ((0, 4, 4, 3), (3, 0, 4, 3), (3, 4, 0, 3), (3, 4, 4, 0)):
        for kernel in ("dmixup", "dcutmix", "mix"):
            assert cpu.launch_config(kernel, *args, "HWC") == (0, 0, 0)
            assert cpu.launch_cover(kernel, *args, "HWC")[0]



# The threads of a block stride through each paste run (kmix_copy_run). A row may hold up to 2^31 - 1 elements (the
# record check's limit), so the index a thread steps to past the run's end must not overflow: a C++ driver built
# with UBSan runs the device loop, 256 threads, over a run that ends at 2^31 - 1, on address space reserved
# without memory (only its last pages are touched).
_COPY_RUN_DRIVER = r"""
#include "kmix_host_shim.h"
KMIX_TLS kmix_dim3 threadIdx, blockIdx, blockDim, gridDim;
#include "kmix_blend.cu"
#include <sys/mman.h>
#include <climits>
#include <cstdio>
int main() {
  const size_t bytes = (size_t)INT_MAX + 1;
  const int prot = PROT_READ | PROT_WRITE, flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
  auto* from = (unsigned char*)mmap(nullptr, bytes, prot, flags, -1, 0);
  auto* to = (unsigned char*)mmap(nullptr, bytes, prot, flags, -1, 0);
  if (from == MAP_FAILED || to == MAP_FAILED) return 2;
  for (int e = INT_MAX - 600; e < INT_MAX; ++e) from[e] = (unsigned char)(e * 7 + 1);
  const int a = INT_MAX - 500, b = INT_MAX;
  for (int tid = 0; tid < 256; ++tid) kmix_copy_run(from, to, a, b, tid, 256);
  long wrong = 0;
  for (int e = INT_MAX - 600; e < INT_MAX; ++e) wrong += to[e] != (e >= a ? from[e] : 0);
  std::printf("wrong %ld\n", wrong);
  return wrong != 0;
}
"""


def test_a_paste_run_ending_at_the_last_int_index_copies_without_overflow(tmp_path):
    import subprocess

    from dali_kmix.backends import cpu as cpu_kernels
    from dali_kmix.backends.sources import kernels_dir

    cxx = cpu_kernels.compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    (tmp_path / "run.cpp").write_text(_COPY_RUN_DRIVER)
    exe = tmp_path / "run"
    subprocess.run([*cxx, "-std=c++17", "-O2", "-fsanitize=undefined", "-fno-sanitize-recover=all",
                    f"-I{kernels_dir()}", str(tmp_path / "run.cpp"), "-o", str(exe)], check=True,
                   capture_output=True, text=True)
    proc = subprocess.run([str(exe)], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "wrong 0\n", "")

# --------------------------------------------------------------------------- the host fast paths and the worker pool


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zero", ["no-zero-share", "one-zero-share"])
@pytest.mark.parametrize("k", [1, 2, 3, 8, 9])
def test_dmixup_fast_paths_match_reference(backend, k, zero, dtype):
    # The host runs K <= 8 with every share > 0 in one pass (K known to the compiler), else strip by strip;
    # rows of both kinds in one batch, and a sample length (3 x 37 x 41) that no vector width divides.
    n = 7
    rng = np.random.default_rng(11 * k)
    x = random_images(rng, dtype, (n, 37, 41, 3))
    weights = rng.dirichlet(np.ones(k), n).astype(np.float32)
    if zero == "one-zero-share":
        weights[::2, rng.integers(0, k, (n + 1) // 2)] = 0.0  # every other row: one share of 0 (K = 1: all)
    sources = np.concatenate([np.arange(n)[:, None], rng.integers(0, n, (n, k - 1))], axis=1).astype(np.int32)
    p = MixParams(sources, weights, None)
    _assert_same_bits(backend.blend(x, p, "HWC"), reference.mix_images(x, p, "HWC"))


def _boxes_sharing_edges(n, h, w, k, rng):
    """Nested boxes that share edges with each other and with the image (full width, full height, equal boxes,
    empty ones), the cases where the host's band-by-band DCutMix merges or skips runs."""
    rows = []
    for s in range(n):
        y0, x0, y1, x1 = 0, 0, h, w
        level = []
        for _ in range(k - 1):
            kind = rng.integers(0, 5)
            if kind == 1:  # keep the parent's left and right edges (runs merge across rows)
                y0, y1 = y0 + rng.integers(0, max(1, (y1 - y0) // 3) + 1), y1 - rng.integers(0, 2)
            elif kind == 2:  # keep the parent's top and bottom
                x0, x1 = x0 + rng.integers(0, 2), x1 - rng.integers(0, max(1, (x1 - x0) // 3) + 1)
            elif kind == 3:  # an empty box (and every box inside it)
                y1 = y0
            elif kind == 4:  # shrink on all sides
                y0, x0 = y0 + rng.integers(0, 3), x0 + rng.integers(0, 3)
                y1, x1 = max(y0, y1 - rng.integers(0, 3)), max(x0, x1 - rng.integers(0, 3))
            y1, x1 = max(y0, y1), max(x0, x1)
            level.append([y0, x0, y1, x1])  # kind 0: the same box as its parent
        rows.append(level)
    return np.array(rows, np.int32).reshape(n, k - 1, 4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("k", [2, 4, 70], ids=["k2", "k4", "k70-deeper-than-the-host-bands"])
def test_dcutmix_boxes_sharing_edges_match_reference(backend, layout, dtype, k):
    n, h, w = 6, 23, 17
    rng = np.random.default_rng(k)
    x = random_images(rng, dtype, _shape(layout, n, h, w, 3))
    boxes = _boxes_sharing_edges(n, h, w, k, rng)
    # repeated partners: consecutive boxes from one image are one run on the host
    sources = np.concatenate([np.arange(n)[:, None], rng.integers(0, 2, (n, k - 1))], axis=1).astype(np.int32)
    p = MixParams(sources, area_weights(boxes, h, w), boxes)
    _assert_same_bits(backend.blend(x, p, layout), reference.mix_images(x, p, layout))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout,c", [("HWC", 1), ("HWC", 3), ("CHW", 3)], ids=["HWC1", "HWC3", "CHW3"])
@pytest.mark.parametrize("step,w", [(1, 8), (1, 16), (1, 23), (1, 40), (8, 40), (8, 47), (8, 56), (9, 40), (9, 47),
                                    (9, 56)], ids=lambda v: str(v))
def test_dcutmix_staircase_of_short_runs_matches_reference(backend, layout, c, dtype, w, step):
    # Boxes that shrink by `step` pixels on the left and the right: the deep rows are runs of that width, from as
    # many images. The host copies a run of at most 32 bytes as 32 bytes from its start where its row goes on that
    # far (the runs after it, copied later, overwrite the rest) and copies it exactly near the row's end or when it
    # is longer (float32 runs of 8 pixels are 32 bytes, of 9 pixels 36). Rows of 8 to 56 pixels of 1 or 3 channels
    # put that edge at every distance from the end, and a byte written past a row would show in the next row (in
    # the same group of 8 rows, already written) or in the next sample.
    n, h = 5, 13
    k = (w // 2) // step + 1
    rng = np.random.default_rng([w, step, c])
    x = random_images(rng, dtype, _shape(layout, n, h, w, c))
    # rows 2..10 cross every box: one band of 9 rows, copied 8 rows and then 1 row at a time
    boxes = np.array([[[min(d, 2), d * step, h - min(d, 2), w - d * step] for d in range(1, k)]] * n, np.int32)
    sources = ((np.arange(n)[:, None] + np.arange(k)[None, :]) % n).astype(np.int32)
    p = MixParams(sources, area_weights(boxes, h, w), boxes)
    _assert_same_bits(backend.blend(x, p, layout), reference.mix_images(x, p, layout))


@pytest.mark.parametrize("workers,reverse", [(1, False), (2, True), (3, False)], ids=["w1", "w2-reversed", "w3"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("k", [5, 6, 9, 16], ids=lambda k: f"K{k}")
def test_host_dcutmix_runs_deep_nestings_samples_first_and_matches_reference(layout, dtype, k, workers, reverse):
    # From K = 6 a float32 host launch cuts each sample into chunks of about 8 KiB and runs chunk 0 of every
    # sample before chunk 1. Where it has at least 4 claims of blocks a worker (here 19 chunks), each worker claims
    # its next range ahead and each block prefetches the input rows its worker reads next and copies deep rows row
    # by row (kernels/kmix_host.cpp). Any order and number of workers gives the reference's bits.
    _check_host_dcutmix_launch(layout, dtype, k, workers, reverse, 131, 97)


@pytest.mark.parametrize("workers", [2, 3], ids=["w2", "w3"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("k", [6, 16], ids=lambda k: f"K{k}")
def test_host_dcutmix_small_samples_first_launch_matches_reference(layout, k, workers):
    # 37 x 29 float32 samples are 2 chunks of 8 KiB: too few claims for a worker to claim ahead (the first would
    # take both before the others wake), so every block copies as without a prefetch.
    _check_host_dcutmix_launch(layout, np.float32, k, workers, False, 37, 29)


def _check_host_dcutmix_launch(layout, dtype, k, workers, reverse, h, w):
    """A host DCutMix launch of 13 samples of h x w x 3: its chunks as kernels/kmix_host.cpp cuts them, its bits the
    reference's."""
    from dali_kmix.backends import cpu as cpu_kernels

    be = CpuBackend(workers=workers, reverse=reverse)
    n, c = 13, 3
    chunks, samples_first = cpu_kernels.host_dcutmix_shape(dtype, k, h, w, c, layout)
    shallow, _ = cpu_kernels.host_dcutmix_shape(dtype, 2, h, w, c, layout)
    assert samples_first == (k >= 6 and np.dtype(dtype) == np.float32)
    rows = h if layout == "HWC" else c * h
    row_bytes = w * (c if layout == "HWC" else 1) * np.dtype(dtype).itemsize
    if samples_first:
        assert chunks == min(rows, -(-rows * row_bytes // (8 << 10))) and chunks >= shallow
    else:
        assert chunks == shallow
    rng = np.random.default_rng([k, workers])
    x = random_images(rng, dtype, _shape(layout, n, h, w, c))
    p = sample_params("dcutmix", n, h, w, k=k, alpha=0.7, rng=rng)
    _assert_same_bits(be.blend(x, p, layout), reference.mix_images(x, p, layout))


def _dcutmix_block_by_block(x, p, layout, next_chunk):
    """DCutMix through ``kmix_host_dcutmix_block`` (the DALI operator's entry point), every block in turn, block
    (chunk, sample) told that its thread copies chunk ``next_chunk(chunk, chunks)`` of that sample next."""
    import ctypes

    from dali_kmix.backends import cpu as cpu_kernels

    lib = cpu_kernels._lib()
    fn = lib.kmix_host_dcutmix_block
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int] * 9
    fn.restype = ctypes.c_int
    n, k = p.sources.shape
    h, w, c = cpu_kernels.hwc_dims(x.shape[1:], layout)
    code, lay = cpu_kernels.DTYPE_CODES[x.dtype], cpu_kernels.LAYOUT_CODES[layout]
    out = np.full_like(x, 7)
    pin, pout = cpu_kernels._batch_ptrs(x), cpu_kernels._batch_ptrs(out)
    src, boxes = np.ascontiguousarray(p.sources, np.int32), np.ascontiguousarray(p.boxes, np.int32)
    chunks, _ = cpu_kernels.host_dcutmix_shape(x.dtype, k, h, w, c, layout)
    args = (code, pin.ctypes.data, pout.ctypes.data, src.ctypes.data, boxes.ctypes.data, n, k, h, w, c, lay)
    for bad in (-2, chunks):  # a next chunk outside [-1, chunks) is refused, nothing written
        assert fn(*args, 0, 0, bad) == 1
    assert (out == 7).all()
    for chunk in range(chunks):
        for s in range(n):
            assert fn(*args, chunk, s, next_chunk(chunk, chunks)) == 0
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout,c", [("HWC", 1), ("HWC", 3), ("CHW", 3)], ids=["HWC1", "HWC3", "CHW3"])
@pytest.mark.parametrize("step,w", [(1, 8), (1, 23), (8, 40), (8, 47), (9, 47), (9, 56)], ids=lambda v: str(v))
@pytest.mark.parametrize("nxt", ["next", "none"])
def test_host_dcutmix_blocks_that_prefetch_copy_row_by_row_and_match_reference(layout, c, dtype, w, step, nxt):
    # A block told its thread's next chunk (the DALI operator's samples-first tasks, kmix_launch's claims ahead)
    # prefetches that chunk's input rows and copies its deep rows row by row, short runs as one 32-byte move each
    # where the row goes on that far (the runs after it in the row overwrite the rest); told none, it copies them
    # run by run. The staircase of test_dcutmix_staircase_of_short_runs_matches_reference, in images tall enough
    # for several chunks: either way, and whatever chunk is named, the reference's bits.
    n, h = 5, 61
    k = (w // 2) // step + 1
    rng = np.random.default_rng([w, step, c, 1])
    x = random_images(rng, dtype, _shape(layout, n, h, w, c))
    boxes = np.array([[[min(d, 2), d * step, h - min(d, 2), w - d * step] for d in range(1, k)]] * n, np.int32)
    sources = ((np.arange(n)[:, None] + np.arange(k)[None, :]) % n).astype(np.int32)
    p = MixParams(sources, area_weights(boxes, h, w), boxes)
    nxt_of = (lambda ch, chunks: (ch + 1) % chunks) if nxt == "next" else (lambda ch, chunks: -1)
    _assert_same_bits(_dcutmix_block_by_block(x, p, layout, nxt_of), reference.mix_images(x, p, layout))


def _blend_in_threads(cpu_kernels, x, p, threads):
    """The same DMixup in ``threads`` Python threads at once (ctypes lets go of the GIL): every output."""
    import threading

    outs = [np.empty_like(x) for _ in range(threads)]
    start = threading.Barrier(threads)

    def run(i):
        start.wait()
        for _ in range(5):
            cpu_kernels.dmixup(list(x), list(outs[i]), p.sources, p.weights, workers=2)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return outs


def test_concurrent_launches_from_python_threads_are_each_right():
    # One launch at a time has the worker pool; a launch that finds it busy runs on its own thread.
    cpu_kernels = CpuBackend().k
    rng = np.random.default_rng(3)
    x = random_images(rng, np.float32, (16, 31, 29, 3))
    p = sample_params("dmixup", 16, 31, 29, k=3, rng=4)
    want = reference.mix_images(x, p, "HWC")
    for out in _blend_in_threads(cpu_kernels, x, p, 4):
        _assert_same_bits(out, want)


def _child_blend(conn):
    from dali_kmix.backends import cpu

    x = np.arange(8 * 5 * 7 * 3, dtype=np.float32).reshape(8, 5, 7, 3)
    p = sample_params("dmixup", 8, 5, 7, k=3, rng=2)
    out = np.empty_like(x)
    cpu.dmixup(list(x), list(out), p.sources, p.weights, workers=2)
    conn.send(out)


@pytest.mark.slow
def test_a_forked_child_runs_the_kernels_with_its_own_workers():
    # The parent's worker threads do not exist in a child made by fork (DataLoader workers, multiprocessing):
    # the child starts its own instead of waiting on the parent's, and blends right.
    import multiprocessing as mp

    cpu_kernels = CpuBackend().k
    x = np.arange(8 * 5 * 7 * 3, dtype=np.float32).reshape(8, 5, 7, 3)
    p = sample_params("dmixup", 8, 5, 7, k=3, rng=2)
    _blend_in_threads(cpu_kernels, x, p, 2)  # the parent's pool is running (and was busy just now)
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child_blend, args=(child,))
    proc.start()
    assert parent.poll(60), "the forked child did not finish its blend"
    _assert_same_bits(parent.recv(), reference.mix_images(x, p, "HWC"))
    proc.join(10)
    assert proc.exitcode == 0


def test_cpu_kernels_take_batch_arrays_as_lists_of_samples():
    # (N, ...) batch arrays: the rows' addresses at once; a strided input batch is copied first, a strided output
    # batch, a batch of another shape or a list of the wrong length go the per-sample way and raise there.
    cpu_kernels = CpuBackend().k
    rng = np.random.default_rng(14)
    x = random_images(rng, np.uint8, (5, 9, 11, 3))
    strided = np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)  # x's values, not C-contiguous
    blend, paste = (sample_params(m, 5, 9, 11, k=3, rng=3) for m in ("dmixup", "dcutmix"))
    cut = (np.arange(5) % 2).astype(np.uint8)
    runs = [(cpu_kernels.dmixup, (blend.sources, blend.weights), reference.mix_images(x, blend, "HWC")),
            (cpu_kernels.dcutmix, (paste.sources, paste.boxes, "HWC"), reference.mix_images(x, paste, "HWC")),
            (cpu_kernels.mix, (blend.sources, blend.weights, paste.boxes, cut, "HWC"),
             np.where(cut.astype(bool)[:, None, None, None], reference.mix_images(x, paste, "HWC"),
                      reference.mix_images(x, blend, "HWC")))]
    for fn, args, want in runs:
        for given in (x, strided):
            out = np.empty_like(x)
            assert fn(given, out, *args) is out
            _assert_same_bits(out, want)
        with pytest.raises(ValueError, match=r"outputs\[0\] must be C-contiguous"):
            fn(x, np.empty((5, 11, 9, 3), np.uint8).transpose(0, 2, 1, 3), *args)
        with pytest.raises(ValueError, match=r"inputs\[0\] must have shape \(9, 11, 3\) and dtype uint8"):
            fn(x.astype(np.float32), np.empty_like(x), *args)
    with pytest.raises(ValueError, match="inputs and outputs must hold the same number of samples, got 4 and 5"):
        cpu_kernels.dmixup(x[:4], np.empty_like(x), blend.sources, blend.weights)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
@pytest.mark.parametrize("n", [1, 2, 7])
def test_blend_batch_checks_the_record_then_blends_in_one_call(method, layout, dtype, n):
    # cpu.blend_batch (kmix_host_blend_batch, what mix_images calls on the CPU): the record check of record_valid,
    # then the blend with the rows' addresses worked out from the batch's stride (a batch of one has no stride
    # to read): the reference's bits for a valid record; for one the check refuses, False and nothing written.
    cpu_kernels = CpuBackend().k
    rng = np.random.default_rng(n)
    shape = (n, 9, 11, 3) if layout == "HWC" else (n, 3, 9, 11)
    x = random_images(rng, dtype, shape)
    p = sample_params(method, n, 9, 11, k=3, rng=rng)
    out = np.empty_like(x)
    assert cpu_kernels.blend_batch(x, out, p, layout, workers=2) is True
    _assert_same_bits(out, reference.mix_images(x, p, layout))
    w = p.weights.copy()
    w[n - 1, 0] += np.float32(0.01)  # its row no longer sums to 1 (for DCutMix: no longer the box areas)
    bad = MixParams(p.sources, w, p.boxes)
    out = np.full_like(x, 7)
    assert cpu_kernels.blend_batch(x, out, bad, layout) is False
    assert (out == 7).all()
    with pytest.raises(ValueError, match=r"params.weights"):  # the backend's validate names it
        CpuBackend().backend.blend_checked(x, np.empty_like(x), bad, layout)
    # arrays it does not take whole: False, nothing written (the backend then goes the per-sample way)
    out = np.full_like(x, 7)
    strided = np.ascontiguousarray(x.swapaxes(1, 2)).swapaxes(1, 2)
    for given, into, record in ((list(x), out, p), (x, list(out), p), (x[:, :, ::-1], out, p), (strided, out, p),
                                (x, np.full_like(x, 7, dtype=np.float16 if dtype != np.float16 else np.float32), p),
                                (x[:-1], out[:-1], p), (x, out, p.to_numpy().__dict__)):
        assert cpu_kernels.blend_batch(given, into, record, layout) is False
    assert cpu_kernels.blend_batch(x.astype(np.float64), out.astype(np.float64), p, layout) is False
    assert cpu_kernels.blend_batch(x, out, p, layout.lower()) is False
    assert (out == 7).all()


def test_blend_checked_takes_the_checking_way_for_lists_and_other_batches():
    # A list of samples, or a record for another batch size, goes through validate and the per-sample blend:
    # the same result, the same errors.
    backend = CpuBackend().backend
    rng = np.random.default_rng(3)
    x = random_images(rng, np.uint8, (4, 9, 11, 3))
    p = sample_params("dcutmix", 4, 9, 11, k=3, rng=rng)
    want = reference.mix_images(x, p, "HWC")
    out = np.empty_like(x)
    backend.blend_checked(list(x), list(out), p, "HWC")
    _assert_same_bits(out, want)
    _assert_same_bits(backend.blend_checked(x, np.empty_like(x), p, "HWC"), want)
    with pytest.raises(ValueError, match=r"params are for N=4 samples but the batch has 3"):
        backend.blend_checked(x[:3], np.empty_like(x[:3]), p, "HWC")
    whole = MixParams([[i, (i + 1) % 4] for i in range(4)], [[0.0, 1.0]] * 4, [[[0, 0, 9, 11]]] * 4)
    for short in (x[:, :5], np.ascontiguousarray(x[:, :5])):  # boxes of 9 rows on images of 5
        with pytest.raises(ValueError, match=r"params.boxes must satisfy 0 <= y0 <= y1 <= H=5"):
            backend.blend_checked(short, np.empty_like(short), whole, "HWC")


def test_addresses_are_numpys_for_every_kind_of_array():
    # cpu._addr reads an address through the buffer protocol, NumPy's .ctypes where that cannot: the same number
    # for a writable, a read-only, an offset, an empty and a strided array; _ptrs alike for a list of samples.
    cpu_kernels = CpuBackend().k
    x = np.arange(60, dtype=np.float32).reshape(5, 12)
    ro = x.copy()
    ro.flags.writeable = False
    arrays = [x, ro, x[2:], x[1], np.empty((0, 3), np.uint8), x[:, ::2], np.full((), 2.5)]
    for a in arrays:
        assert cpu_kernels._addr(a) == a.ctypes.data
    assert cpu_kernels._addr(None) is None
    for samples in ([x[0], x[3]], [x[0], ro[1]], list(ro)):
        assert cpu_kernels._ptrs(samples).tolist() == [a.ctypes.data for a in samples]
    for batch in (x, x[:1], x[2:4], np.empty((3, 0, 2), np.uint8)):
        assert cpu_kernels._batch_ptrs(batch).tolist() == [batch.ctypes.data + i * batch.strides[0] * (len(batch) > 1)
                                                           for i in range(len(batch))]


# --------------------------------------------------------------------------- the mix with its normalisation fused

def _fused_case(method, n, h, w, c, k, dtype, layout, rng):
    """(images, kernel record arguments, the mixed batch the reference gives) of one fused launch."""
    images = random_images(rng, dtype, _shape(layout, n, h, w, c))
    blend = sample_params("dmixup", n, h, w, k=k, alpha=0.7, rng=rng)
    paste = sample_params("dcutmix", n, h, w, k=k, alpha=0.7, rng=rng)
    if method == "dmixup":
        return images, (blend.sources, blend.weights, None, None), reference.mix_images(images, blend, layout)
    if method == "dcutmix":
        return images, (paste.sources, None, paste.boxes, None), reference.mix_images(images, paste, layout)
    cut = (rng.random(n) < 0.5).astype(np.uint8)
    cut[:2] = (0, 1)[:n]
    sources = np.where(cut[:, None] == 1, paste.sources, blend.sources)
    pasted = reference.mix_images(images, MixParams(sources, blend.weights, paste.boxes), layout)
    blended = reference.mix_images(images, MixParams(sources, blend.weights), layout)
    mixed = np.where(cut.astype(bool).reshape(n, 1, 1, 1), pasted, blended)
    return images, (sources, blend.weights, paste.boxes, cut), mixed


# c = 1 and 4 take the generic row loop, c = 3 the compiled strides; 61 x 130 x 4 is two bands of uint8 rows and
# more of float32; a float32 row of 1500 x 3 exceeds a band (one row each). The sanitizer grid leaves out the
# 61 x 130 x 4 case: the two others reach the same lines, branches and instantiations.
FUSED_SIZES = {"1x1x1": (1, 1, 1, 1), "N4-61x130x4": (4, 61, 130, 4), "N2-3x1500x3-one-row-bands": (2, 3, 1500, 3)}
if SANITIZER_GRID:
    del FUSED_SIZES["N4-61x130x4"]


@pytest.mark.parametrize("size", list(FUSED_SIZES))
@pytest.mark.parametrize("out_dtype", [np.float32, np.float16], ids=["to-f32", "to-f16"])
@pytest.mark.parametrize("out_layout", ["CHW", "HWC"], ids=["to-CHW", "to-HWC"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["dmixup", "dcutmix", "mix"])
def test_fused_normalisation_is_the_reference_mix_then_normalise(method, dtype, layout, out_layout, out_dtype, size):
    """Host bands (two workers) and the GPU's element-by-element kernel (7 threads a block, run backwards): the bits
    of the reference mix followed by reference.normalize (crop_mirror_normalize's arithmetic), some samples
    mirrored."""
    cpu_kernels = CpuBackend().k
    n, h, w, c = FUSED_SIZES[size]
    rng = np.random.default_rng([n, h, w, c, len(method)])
    k = int(rng.integers(2, 10))
    images, record, mixed = _fused_case(method, n, h, w, c, k, dtype, layout, rng)
    mean, std = rng.uniform(0, 200, c).astype(np.float32), rng.uniform(0.5, 80, c).astype(np.float32)
    mirror = (np.arange(n) % 2).astype(np.uint8)
    want = reference.normalize(mixed, mean, std, layout=layout, out_layout=out_layout, mirror=mirror, dtype=out_dtype)
    m, inv = reference.norm_factors(mean, std, c)
    for opts in (dict(workers=2), dict(workers=3, block_threads=7, reverse=True)):
        out = np.full(want.shape, np.nan, out_dtype)
        given = images.copy()
        assert cpu_kernels.mix_normalize(given, out, *record, method, layout, out_layout, m, inv, mirror, **opts) is out
        _assert_same_bits(out, want)
        _assert_same_bits(given, images)  # the input is not written


def test_fused_normalisation_bands_and_argument_checks():
    cpu_kernels = CpuBackend().k
    assert cpu_kernels.norm_bands(np.uint8, 224, 224, 3) == 10  # 24 rows of 672 bytes in 16 KiB
    assert cpu_kernels.norm_bands(np.float32, 224, 224, 3) == 38  # 6 rows of 2688 bytes
    assert cpu_kernels.norm_bands(np.float32, 3, 5000, 3) == 3  # one row a band when a row exceeds 16 KiB
    assert cpu_kernels.norm_bands(np.uint8, 0, 5, 3) == 0
    rng = np.random.default_rng(3)
    images, record, mixed = _fused_case("dcutmix", 3, 9, 11, 3, 3, np.uint8, "HWC", rng)
    m, inv = reference.norm_factors([1.0, 2.0, 3.0], [4.0], 3)
    assert np.array_equal(inv, np.float32([0.25] * 3))
    out = np.empty((3, 3, 9, 11), np.float32)
    want = reference.normalize(mixed, [1.0, 2.0, 3.0], [4.0], out_layout="CHW")
    _assert_same_bits(cpu_kernels.mix_normalize(images, out, *record, "dcutmix", "HWC", "CHW", m, inv), want)
    with pytest.raises(ValueError, match=r"outputs must have shape \(3, 3, 9, 11\) \(CHW samples of the HWC inputs\)"):
        cpu_kernels.mix_normalize(images, np.empty((3, 9, 11, 3), np.float32), *record, "dcutmix", "HWC", "CHW", m, inv)
    with pytest.raises(ValueError, match="outputs must be a C-contiguous float32 or float16 array, got uint8"):
        cpu_kernels.mix_normalize(images, np.empty((3, 3, 9, 11), np.uint8), *record, "dcutmix", "HWC", "CHW", m, inv)
    with pytest.raises(ValueError, match=r"mean and inv_std must hold one value per channel \(3\), got 2 and 3"):
        cpu_kernels.mix_normalize(images, out, *record, "dcutmix", "HWC", "CHW", m[:2], inv)
    with pytest.raises(ValueError, match="out_layout must be one of"):
        cpu_kernels.mix_normalize(images, out, *record, "dcutmix", "HWC", "NCHW", m, inv)
    with pytest.raises(ValueError, match="same number of samples, got 2 and 3"):
        cpu_kernels.mix_normalize(images[:2], out, *record, "dcutmix", "HWC", "CHW", m, inv)
