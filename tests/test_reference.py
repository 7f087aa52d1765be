"""The NumPy reference against pixel-by-pixel Python loops that follow the definitions literally."""

import ctypes
import ctypes.util

import numpy as np
import pytest

from _helpers import random_images
from dali_kmix import reference
from dali_kmix.record import MixParams
from dali_kmix.sampling import sample_params

_libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
_libm.fmaf.restype = ctypes.c_float
_libm.fmaf.argtypes = [ctypes.c_float] * 3


def _c_fmaf(a, b, c):
    return np.array([_libm.fmaf(float(x), float(y), float(z)) for x, y, z in zip(a, b, c)], np.float32)


def _same_bits(x, y):
    return np.array_equal(np.asarray(x, np.float32).view(np.uint32), np.asarray(y, np.float32).view(np.uint32))


# --------------------------------------------------------------------------- fma32


def test_fma32_matches_c_fmaf_on_random_inputs():
    rng = np.random.default_rng(0)
    n = 20000
    a = (rng.standard_normal(n) * 2.0 ** rng.integers(-20, 20, n)).astype(np.float32)
    b = (rng.standard_normal(n) * 2.0 ** rng.integers(-20, 20, n)).astype(np.float32)
    c = (rng.standard_normal(n) * 2.0 ** rng.integers(-40, 40, n)).astype(np.float32)
    assert _same_bits(reference.fma32(a, b, c), _c_fmaf(a, b, c))
    w, x, acc = rng.random(n).astype(np.float32), rng.integers(0, 256, n).astype(np.float32), \
        (rng.random(n) * 255).astype(np.float32)
    assert _same_bits(reference.fma32(w, x, acc), _c_fmaf(w, x, acc))


def test_fma32_gets_double_rounding_ties_right():
    # a*b = 2^-24 (1 - i^2 2^-46) sits just below the float32 midpoint above c = 1 + 2^-23; in float64 the
    # sum rounds onto the midpoint and a plain float64 multiply-add then rounds the wrong way.
    i = np.arange(1, 300)
    a = (2.0 ** -24 * (1 + i * 2.0 ** -23)).astype(np.float32)
    b = (1 - i * 2.0 ** -23).astype(np.float32)
    c = np.full(i.shape, 1 + 2 ** -23, np.float32)
    expected = _c_fmaf(a, b, c)
    naive = (a.astype(np.float64) * b + c).astype(np.float32)
    assert not _same_bits(naive, expected)  # the case is real
    assert _same_bits(reference.fma32(a, b, c), expected)


# --------------------------------------------------------------------------- images


def _oracle_mix(images, p, layout):
    """The definitions, one pixel at a time."""
    n = images.shape[0]
    if layout == "CHW":
        images = images.transpose(0, 2, 3, 1)
    _, h, w, c = images.shape
    out = np.empty_like(images)
    for i in range(n):
        for y in range(h):
            for x in range(w):
                if p.boxes is None:
                    acc = np.zeros(c, np.float32)
                    for k in range(p.k):
                        acc = reference.fma32(p.weights[i, k], images[p.sources[i, k], y, x].astype(np.float32), acc)
                    if images.dtype == np.uint8:
                        out[i, y, x] = np.clip(np.rint(acc), 0, 255)
                    else:
                        out[i, y, x] = acc.astype(images.dtype)
                else:
                    depth = 0  # deepest box containing (y, x)
                    for j in range(p.k - 1):
                        y0, x0, y1, x1 = p.boxes[i, j]
                        if y0 <= y < y1 and x0 <= x < x1:
                            depth = j + 1
                    out[i, y, x] = images[p.sources[i, depth], y, x]
    return out.transpose(0, 3, 1, 2) if layout == "CHW" else out




@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32], ids=["u8", "f16", "f32"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("mode", ["sample", "batch"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
def test_reference_matches_the_pixel_loop(method, mode, layout, dtype):
    rng = np.random.default_rng(1)
    n, h, w, c, k = 5, 7, 9, 3, 4
    shape = (n, h, w, c) if layout == "HWC" else (n, c, h, w)
    x = random_images(rng, dtype, shape, 50)
    p = sample_params(method, n, h, w, k=k, alpha=0.8, mode=mode, prob=0.8, rng=2)
    got = reference.mix_images(x, p, layout)
    assert got.dtype == x.dtype and got.shape == x.shape
    np.testing.assert_array_equal(got, _oracle_mix(x, p, layout))


def test_hand_built_dcutmix_record(photos):
    # Two nested boxes, replayed exactly: the centre of sample 0 comes from 2, a ring from 1.
    x = photos  # (4, 64, 80, 3)
    boxes = np.zeros((4, 2, 4), np.int32)
    boxes[0] = [[10, 20, 50, 60], [20, 30, 40, 50]]
    areas = np.array([40 * 40, 20 * 20])
    w0 = np.array([64 * 80 - areas[0], areas[0] - areas[1], areas[1]]) / (64 * 80)
    weights = np.tile(np.float32([1, 0, 0]), (4, 1))
    weights[0] = w0
    sources = np.tile(np.arange(4)[:, None], (1, 3)).astype(np.int32)
    sources[0] = [0, 1, 2]
    p = MixParams(sources, weights, boxes)
    out = reference.mix_images(x, p, "HWC")
    np.testing.assert_array_equal(out[0, 20:40, 30:50], x[2, 20:40, 30:50])
    np.testing.assert_array_equal(out[0, 10:20, 20:60], x[1, 10:20, 20:60])
    np.testing.assert_array_equal(out[0, :10], x[0, :10])
    np.testing.assert_array_equal(out[1:], x[1:])


def test_dmixup_uint8_rounds_half_to_even():
    x = np.array([[[[1]]], [[[2]]], [[[4]]]], np.uint8)  # three 1x1 single-channel images
    p = MixParams([[0, 1, 2], [1, 0, 2], [2, 0, 1]], [[0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]], None)
    out = reference.mix_images(x, p, "HWC")
    # 1.5 -> 2, 3.0 -> 3, 2.5 -> 2
    assert out.ravel().tolist() == [2, 3, 2]


def test_reference_does_not_write_its_input():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
    before = x.copy()
    for method in ("dmixup", "dcutmix"):
        reference.mix_images(x, sample_params(method, 4, 6, 6, rng=0), "HWC")
    np.testing.assert_array_equal(x, before)


# --------------------------------------------------------------------------- labels


def _oracle_labels(labels, p, num_classes, s):
    out = np.zeros((p.n, num_classes), np.float64)
    for i in range(p.n):
        for k in range(p.k):
            one_hot = np.full(num_classes, s / num_classes)
            one_hot[labels[p.sources[i, k]]] = 1 - s + s / num_classes
            out[i] += p.weights[i, k] * one_hot
    return out


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
def test_labels_match_the_definition(method, smoothing):
    labels = np.array([3, 1, 4, 1, 5, 9, 2])
    p = sample_params(method, 7, 16, 16, k=5, rng=4)
    got = reference.mix_labels(labels, p, 10, smoothing)
    assert got.dtype == np.float32 and got.shape == (7, 10)
    np.testing.assert_allclose(got, _oracle_labels(labels, p, 10, smoothing), atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)


def _one_hot_chain(labels, p, num_classes, s):
    """The targets as K one-hot matrices summed in float32, term by term (what mix_labels must give, bit for
    bit, without building them)."""
    out = np.zeros((p.n, num_classes), np.float32)
    for k in range(p.k):
        out += p.weights[:, k, None] * reference.smoothed_one_hot(labels[p.sources[:, k]], num_classes, s)
    return out


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("k", [1, 2, 3, 9])
def test_labels_are_the_one_hot_sum_bit_for_bit(k, smoothing):
    # Shares with repeated labels (a class counted by several shares), shares of 0 and of -0 (which pass
    # "w >= 0"), and an empty batch: the same bits as adding K smoothed one-hot matrices in order.
    rng = np.random.default_rng(k)
    n, c = 40, 7
    labels = rng.integers(0, 3, n)  # few classes: many rows meet one class several times
    w = rng.dirichlet(np.full(k, 0.5), n).astype(np.float32)
    w[rng.random((n, k)) < 0.2] = 0.0
    w[rng.random((n, k)) < 0.1] = -0.0
    sources = np.concatenate([np.arange(n)[:, None], rng.integers(0, n, (n, k - 1))], axis=1)
    for m in (n, 0):
        p = MixParams(sources[:m], w[:m], None)
        got = reference.mix_labels(labels, p, c, smoothing)
        want = _one_hot_chain(labels, p, c, smoothing)
        assert got.dtype == np.float32 and got.shape == (m, c)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("k", [1, 2, 3, 9])
def test_cpu_build_labels_are_the_references_bit_for_bit(k, smoothing):
    # dali_kmix.mix_labels on NumPy runs the CPU build's one-pass targets: the reference's bits, with repeated
    # labels, shares of 0 and -0 (rows that no longer sum to 1: the arithmetic alone, the row check off); a source
    # outside the labels, and with the check on such rows, are left to the reference (which reports them).
    from dali_kmix.backends import cpu

    if not cpu.available():
        pytest.skip("no C++ compiler: the CPU kernels are unavailable")
    rng = np.random.default_rng(10 + k)
    n, c = 40, 7
    labels = rng.integers(0, 3, n)
    w = rng.dirichlet(np.full(k, 0.5), n).astype(np.float32)
    w[rng.random((n, k)) < 0.2] = 0.0
    w[rng.random((n, k)) < 0.1] = -0.0
    sources = np.concatenate([np.arange(n)[:, None], rng.integers(0, n, (n, k - 1))], axis=1)
    p = MixParams(sources, w, None)
    on, off = reference.smoothed_values(c, smoothing)
    got = cpu.mix_labels(labels, p, c, on, off, check_rows=False)
    want = reference.mix_labels(labels, p, c, smoothing)
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert cpu.mix_labels(labels[:-1], p, c, on, off, check_rows=False) is None  # sources reach sample n - 1
    assert cpu.mix_labels(labels + 5, p, c, on, off, check_rows=False) is None  # labels past the classes
    assert cpu.mix_labels(labels, p, c, on, off) is None  # rows that do not sum to 1
    q = MixParams(sources, rng.dirichlet(np.full(k, 0.5), n).astype(np.float32), None)  # rows that do
    got = cpu.mix_labels(labels, q, c, on, off)
    assert np.array_equal(got.view(np.uint32), reference.mix_labels(labels, q, c, smoothing).view(np.uint32))


# --------------------------------------------------------------------------- the grey working copy


def _grey_kernels(kind):
    """grey_resize of the kernels: the CPU build's or the GPU's, as (samples, layout, out_h, out_w) -> NumPy."""
    if kind == "cupy":
        import cupy

        from dali_kmix.backends import gpu

        return lambda x, layout, h, w: gpu.grey_resize([cupy.asarray(a) for a in x], layout, h, w).get()
    from dali_kmix.backends import cpu

    if not cpu.available():
        pytest.skip("no C++ compiler: the CPU kernels are unavailable")
    return lambda x, layout, h, w: cpu.grey_resize(list(x), layout, h, w)


@pytest.mark.parametrize("kind", ["cpu", pytest.param("cupy", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("fill", ["random", "minus-zero"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["f16", "f32"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("c", [1, 3, 4, 8, 9, 16], ids=lambda c: f"c{c}")
def test_grey_is_the_kernels_bit_for_bit(c, layout, dtype, fill, kind):
    # reference.grey summed 8 or more channels pairwise (NumPy's sum) where kmix_grey_at adds them one by one from
    # +0, and started the luma from +0 where the kernel starts from c0 * 0.299f (all -0.0 pixels: -0 there, +0
    # here). Resized to their own size the grey values come through unchanged: the grey step's bits are compared.
    rng = np.random.default_rng(c)
    shape = (3, 5, 7, c) if layout == "HWC" else (3, c, 5, 7)
    x = random_images(rng, dtype, shape) if fill == "random" else np.full(shape, -0.0, dtype)
    want = reference.resize_bilinear(reference.grey(x, layout), 5, 7)
    got = _grey_kernels(kind)(x, layout, 5, 7)
    assert got.dtype == want.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), np.count_nonzero(got != want)
    got = _grey_kernels(kind)(x, layout, 64, 64)  # and through a resize
    assert np.array_equal(got.view(np.uint32), reference.resize_bilinear(reference.grey(x, layout), 64, 64).view(
        np.uint32))


@pytest.mark.parametrize("c,sign", [(3, True), (1, False), (4, False)], ids=["luma", "c1", "c4"])
def test_grey_of_minus_zero_pixels(c, sign):
    # the kernels' arithmetic: the luma (x0 w0 + x1 w1) + x2 w2 of -0 is -0; the mean ((0 + x0) + x1 ...) / C, +0
    g = reference.grey(np.full((1, 2, 2, c), -0.0, np.float32), "HWC")
    assert (g == 0).all() and (np.signbit(g) == sign).all()
