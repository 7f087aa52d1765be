"""dali_kmix.backends: one backend-neutral suite for the CUDA kernels (CPU build always, CuPy with a GPU),
the NumPy fallback and the choice between them.

Each kernel must reproduce the NumPy reference bit for bit, over methods,
layouts, dtypes, K = 2..9, odd sizes, empty and full boxes, batch sizes 1 and 65,
and whatever order the blocks and threads run in.
"""

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

    def blend(self, images, params, layout):
        cp = self.cp
        ins = [cp.asarray(im) for im in images]
        out = cp.empty(images.shape, images.dtype)
        self.backend.blend(ins, list(out), params.to_cupy(), layout)
        for a, b in zip(ins, images):
            np.testing.assert_array_equal(a.get(), b)
        return out.get()

    def mix(self, images, sources, weights, boxes, cut, layout):
        cp = self.cp
        ins = [cp.asarray(im) for im in images]
        out = cp.empty(images.shape, images.dtype)
        self.backend.mix(ins, list(out), *(cp.asarray(a) for a in (sources, weights, boxes, cut)), layout)
        for a, b in zip(ins, images):
            np.testing.assert_array_equal(a.get(), b)
        return out.get()

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
    assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), \
        f"{np.count_nonzero(got != want)} of {got.size} elements differ"


DTYPES = [pytest.param(np.uint8, id="u8"), pytest.param(np.float16, id="f16"), pytest.param(np.float32, id="f32")]
SIZES = [(1, 1, 1, 3), (65, 3, 5, 3), (65, 17, 31, 1), (2, 225, 227, 3), (5, 33, 20, 4)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
@pytest.mark.parametrize("k", range(2, 10))
@pytest.mark.parametrize("n,h,w,c", SIZES, ids=[f"{n}x{h}x{w}x{c}" for n, h, w, c in SIZES])
def test_blend_matches_reference(backend, method, layout, dtype, k, n, h, w, c):
    rng = np.random.default_rng(k * 1000 + h)
    x = random_images(rng, dtype, _shape(layout, n, h, w, c))
    p = sample_params(method, n, h, w, k=k, alpha=0.6, prob=0.9, rng=rng)
    _assert_same_bits(backend.blend(x, p, layout), reference.mix_images(x, p, layout))


MIX_SIZES = [(1, 1, 1, 3), (65, 3, 5, 3), (9, 225, 227, 3), (6, 33, 20, 4)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("cuts", ["all-blend", "all-paste", "alternating"])
@pytest.mark.parametrize("k", [2, 3, 9])
@pytest.mark.parametrize("n,h,w,c", MIX_SIZES, ids=[f"{n}x{h}x{w}x{c}" for n, h, w, c in MIX_SIZES])
def test_mix_blends_or_pastes_each_sample_as_its_flag_says(backend, cuts, layout, dtype, k, n, h, w, c):
    # kmix_mix (one launch for dmixup_or_dcutmix): every row is, bit for bit, the reference of its own method
    rng = np.random.default_rng(k * 100 + h)
    x = random_images(rng, dtype, _shape(layout, n, h, w, c))
    phi, u, perms, mixed = draw_raw(np, rng, n, k, np.full(k, 0.6), "sample", 0.85)
    blend = params_from_draws("dmixup", phi, u, perms, mixed, h, w)
    paste = params_from_draws("dcutmix", phi, u, perms, mixed, h, w)
    cut = {"all-blend": np.zeros(n), "all-paste": np.ones(n), "alternating": np.arange(n) % 2}[cuts].astype(np.uint8)
    got = backend.mix(x, blend.sources, blend.weights, paste.boxes, cut, layout)
    want = np.where(cut.astype(bool).reshape((n,) + (1,) * 3), reference.mix_images(x, paste, layout),
                    reference.mix_images(x, blend, layout))
    _assert_same_bits(got, want)


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

    from dali_kmix.backends import gpu as gpu_kernels

    gen = cupy.random.default_rng(3)
    for method in ("dmixup", "dcutmix"):
        for mode in ("sample", "batch"):
            p = gpu_kernels.sample_params_device(gen, method, 33, 40, 50, 4, np.full(4, 0.5), mode, 0.7)
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
    import sys
    import types

    from dali_kmix.backends import gpu

    fake = types.ModuleType("cupy")
    fake.__getattr__ = lambda name: getattr(np, name)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(gpu, "_ptrs", lambda arrays: np.arange(1, len(arrays) + 1, dtype=np.uint64) * 256)
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
