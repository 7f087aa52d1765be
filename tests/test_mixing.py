"""The public array API: mix_images / mix_labels on sampled and hand-built records, and bad input."""

import numpy as np
import pytest

import dali_kmix
from _helpers import random_images
from dali_kmix import reference
from dali_kmix.backends import host_kernels
from dali_kmix.mixing import blend_samples
from dali_kmix.record import MixParams
from dali_kmix.sampling import sample_params

# Blending tolerance per dtype for comparisons against a float64 computation (the kernels themselves are
# compared bit for bit with the reference in test_backends.py).
BLEND_ATOL = {np.uint8: 1.0, np.float16: 0.05, np.float32: 1e-4}




@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32], ids=["u8", "f16", "f32"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("mode", ["sample", "batch"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
def test_mix_images_equals_reference_and_float64_blend(method, mode, layout, dtype):
    rng = np.random.default_rng(0)
    n, h, w = 6, 21, 17
    shape = (n, h, w, 3) if layout == "HWC" else (n, 3, h, w)
    x = random_images(rng, dtype, shape, 10)
    p = sample_params(method, n, h, w, k=4, mode=mode, rng=1)
    out = dali_kmix.mix_images(x, p, layout=layout)
    assert type(out) is np.ndarray and out.dtype == x.dtype and out.shape == x.shape
    assert not np.shares_memory(out, x)
    np.testing.assert_array_equal(out, reference.mix_images(x, p, layout))
    if method == "dmixup":  # against a plain float64 weighted sum
        wsum = np.einsum("nk,nk...->n...", p.weights.astype(np.float64), x[p.sources].astype(np.float64))
        np.testing.assert_allclose(out.astype(np.float64), wsum, atol=BLEND_ATOL[dtype] * (1 + np.abs(wsum).max() * (
            dtype == np.float16) * 1e-3))
    else:  # every output pixel is one of the K candidate input pixels
        cand = x[p.sources]
        assert (cand == out[:, None]).any(axis=1).all()


def test_dcutmix_pixel_shares_equal_the_label_weights(photos):
    # Images of constant, distinct values make each pixel's source visible.
    n, h, w = 8, 30, 40
    x = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None], h * w, axis=1).reshape(n, h, w, 1)
    p = sample_params("dcutmix", n, h, w, k=5, alpha=0.5, rng=2)
    out = dali_kmix.mix_images(x, p, "HWC")
    labels = np.arange(n)
    targets = dali_kmix.mix_labels(labels, p, num_classes=n)
    share = np.stack([np.bincount(out[i].ravel(), minlength=n) for i in range(n)]) / (h * w)
    np.testing.assert_allclose(share, targets, atol=1e-6)


def test_mix_labels_sparse_and_dense_agree():
    p = sample_params("dmixup", 5, 8, 8, k=3, rng=3)
    labels = np.array([2, 0, 2, 1, 4])
    dense = dali_kmix.mix_labels(labels, p, num_classes=5)
    rebuilt = np.zeros((5, 5), np.float64)
    np.add.at(rebuilt, (np.repeat(np.arange(5), 3), labels[p.sources].ravel()), p.weights.ravel())
    np.testing.assert_allclose(dense, rebuilt, atol=1e-6)


def test_mix_labels_accepts_column_labels_and_smoothing():
    p = sample_params("dcutmix", 4, 8, 8, k=2, prob=0.0, rng=0)
    t = dali_kmix.mix_labels(np.array([[1], [0], [3], [2]], np.int32), p, num_classes=4, smoothing=0.2)
    np.testing.assert_allclose(t[0], [0.05, 0.85, 0.05, 0.05], atol=1e-7)


@pytest.mark.gpu
def test_mix_labels_result_follows_the_labels_array_kind():
    # documented as "same array kind as params", but the record is moved to the labels' device
    import cupy

    p = sample_params("dcutmix", 4, 8, 8, k=3, rng=0)
    labels = np.array([1, 0, 3, 2])
    want = dali_kmix.mix_labels(labels, p, 4)
    got = dali_kmix.mix_labels(labels, p.to_cupy(), 4)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, want)
    got = dali_kmix.mix_labels(cupy.asarray(labels), p, 4)
    assert isinstance(got, cupy.ndarray)
    np.testing.assert_array_equal(got.get(), want)


def test_empty_batch_returns_empty_batch():
    p = sample_params("dcutmix", 0, 8, 8, k=3, rng=0)
    out = dali_kmix.mix_images(np.zeros((0, 8, 8, 3), np.uint8), p, "HWC")
    assert out.shape == (0, 8, 8, 3) and out.dtype == np.uint8
    assert dali_kmix.mix_labels(np.zeros(0, np.int64), p, 10).shape == (0, 10)


def test_batch_of_one_mixes_with_itself():
    x = np.arange(2 * 3 * 3, dtype=np.float32).reshape(1, 2, 3, 3)
    p = sample_params("dcutmix", 1, 2, 3, k=4, rng=0)
    np.testing.assert_array_equal(dali_kmix.mix_images(x, p, "HWC"), x)
    p = sample_params("dmixup", 1, 2, 3, k=4, rng=0)  # float32 weights sum to 1 within rounding
    np.testing.assert_allclose(dali_kmix.mix_images(x, p, "HWC"), x, rtol=1e-6)


def test_a_list_of_torch_cpu_tensors_is_mixed_as_its_stack():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    x = rng.integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    p = sample_params("dmixup", 3, 4, 5, k=2, rng=0)
    got = dali_kmix.mix_images([torch.from_numpy(s.copy()) for s in x], p, "HWC")
    np.testing.assert_array_equal(got, reference.mix_images(x, p, "HWC"))
    with pytest.raises(TypeError, match=r"sample 0 has uint8 but sample 1 has float32"):
        dali_kmix.mix_images([torch.from_numpy(x[0].copy()), torch.from_numpy(x[1].astype(np.float32))], p, "HWC")


def test_inputs_are_not_written():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (7, 9, 11, 3), dtype=np.uint8)
    keep = x.copy()
    for method in ("dmixup", "dcutmix"):
        dali_kmix.mix_images(x, sample_params(method, 7, 9, 11, rng=0), "HWC")
    np.testing.assert_array_equal(x, keep)


def test_non_contiguous_input_is_handled():
    rng = np.random.default_rng(5)
    big = rng.random((4, 3, 20, 30)).astype(np.float32)
    x = big[:, :, ::2, ::3]  # a strided view
    p = sample_params("dcutmix", 4, 10, 10, k=3, rng=1)
    np.testing.assert_array_equal(dali_kmix.mix_images(x, p, "CHW"),
                                  reference.mix_images(np.ascontiguousarray(x), p, "CHW"))


def _blend_strided(xp, layout, dtype, out_kind):
    """blend_samples on samples that are transposed views, into a fresh, a dense or a transposed ``out``."""
    from dali_kmix.mixing import blend_samples

    rng = np.random.default_rng(9)
    n, h, w, c = 5, 7, 10, 3
    other = (n, c, h, w) if layout == "HWC" else (n, h, w, c)
    perm = (0, 2, 3, 1) if layout == "HWC" else (0, 3, 1, 2)
    base = random_images(rng, dtype, other)
    x = xp.asarray(base).transpose(perm)
    out = {"fresh": None, "dense": xp.empty(x.shape, x.dtype),
           "transposed": xp.empty(other, x.dtype).transpose(perm)}[out_kind]
    results = {}
    for method in ("dmixup", "dcutmix"):
        p = sample_params(method, n, h, w, k=3, rng=2)
        if xp is not np:
            p = p.to_cupy()
        got = blend_samples(list(x), p, layout, out=out)
        assert out is None or got is out
        results[method] = (np.asarray(got.get() if xp is not np else got).copy(),
                           reference.mix_images(np.ascontiguousarray(base.transpose(perm)), p.to_numpy(), layout))
    np.testing.assert_array_equal(x.get() if xp is not np else x, base.transpose(perm))  # inputs never written
    return results


@pytest.mark.parametrize("out_kind", ["fresh", "dense", "transposed"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_blend_samples_reads_and_writes_strided_views(layout, out_kind):
    for got, want in _blend_strided(np, layout, np.uint8, out_kind).values():
        np.testing.assert_array_equal(got, want)


@pytest.mark.gpu
@pytest.mark.parametrize("out_kind", ["fresh", "dense", "transposed"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32], ids=["u8", "f16", "f32"])
def test_blend_samples_reads_and_writes_strided_cupy_views(layout, out_kind, dtype):
    import cupy

    for got, want in _blend_strided(cupy, layout, dtype, out_kind).values():
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.gpu
def test_mix_images_on_a_transposed_cupy_batch():
    import cupy

    rng = np.random.default_rng(10)
    base = random_images(rng, np.float16, (6, 3, 9, 14))
    p = sample_params("dcutmix", 6, 9, 14, k=4, rng=3)
    got = dali_kmix.mix_images(cupy.asarray(base).transpose(0, 2, 3, 1), p, "HWC")
    np.testing.assert_array_equal(got.get(), reference.mix_images(np.ascontiguousarray(base.transpose(0, 2, 3, 1)),
                                                                  p, "HWC"))


# --------------------------------------------------------------------------- bad input


def _p(n=4, h=8, w=8):
    return sample_params("dcutmix", n, h, w, k=3, rng=0)


@pytest.mark.parametrize("layout", ["NHWC", "hwc", "", None, "WHC"])
def test_bad_layout(layout):
    with pytest.raises(ValueError, match=r"layout must be 'HWC' or 'CHW'"):
        dali_kmix.mix_images(np.zeros((4, 8, 8, 3), np.uint8), _p(), layout=layout)


def test_bad_images():
    with pytest.raises(TypeError, match=r"images must have dtype uint8, float16 or float32, got float64"):
        dali_kmix.mix_images(np.zeros((4, 8, 8, 3)), _p(), "HWC")
    with pytest.raises(ValueError, match=r"images must have 4 dimensions \(N, H, W, C\), got shape \(8, 8, 3\)"):
        dali_kmix.mix_images(np.zeros((8, 8, 3), np.uint8), _p(), "HWC")
    with pytest.raises(ValueError, match=r"params are for N=4 samples but the batch has 5"):
        dali_kmix.mix_images(np.zeros((5, 8, 8, 3), np.uint8), _p(), "HWC")
    with pytest.raises(TypeError, match=r"params must be a dali_kmix.MixParams, got dict"):
        dali_kmix.mix_images(np.zeros((4, 8, 8, 3), np.uint8), {}, "HWC")


@pytest.mark.parametrize("images,match", [
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)] * 2,
     r"images: all samples must have one dtype; sample 0 has uint8 but sample 1 has float32"),
    ((np.zeros((8, 8, 3), np.float16),) * 3 + (np.zeros((8, 8, 3), np.float32),),
     r"images: all samples must have one dtype; sample 0 has float16 but sample 3 has float32"),
], ids=["list-u8-f32", "tuple-f16-f32"])
def test_samples_of_different_dtypes_are_refused(images, match):
    # a list was stacked by np.asarray, which promoted uint8 + float32 to float32: a float32 result, no error
    with pytest.raises(TypeError, match=match):
        dali_kmix.mix_images(images, _p(), "HWC")


def test_a_list_of_samples_of_one_dtype_is_mixed():
    x = random_images(np.random.default_rng(3), np.uint8, (4, 8, 8, 3))
    np.testing.assert_array_equal(dali_kmix.mix_images(list(x), _p(), "HWC"), dali_kmix.mix_images(x, _p(), "HWC"))


@pytest.mark.parametrize("shape,layout,match", [
    ((1, 2, 2**30 + 1, 1), "CHW", r"images: shape \(2, 1073741825, 1\) \(layout CHW\) has rows of 1 elements and "
                                  r"2147483650 rows; both must be < 2\^31"),
    ((1, 1, 2**29 + 1, 4), "HWC", r"images: shape \(1, 536870913, 4\) \(layout HWC\) has rows of 2147483652 "
                                  r"elements and 1 rows; both must be < 2\^31"),
    ((1, 4, 2**31, 0), "HWC", r"images: shape \(4, 2147483648, 0\) \(layout HWC\) has an extent of 2147483648; "
                              r"every extent must be < 2\^31"),
], ids=["chw-rows", "hwc-row", "extent"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
def test_images_the_kernels_cannot_index_are_refused(shape, layout, match, method):
    # The kernels index rows and a row's elements with int: such a batch was once returned unwritten, no error
    # (rows wrapped negative). A broadcast view costs no memory, and the check comes before any copy.
    images = np.broadcast_to(np.uint8(7), shape)
    p = MixParams([[0, 0]], [[0.0, 1.0]], [[[0, 0, 1, 1]]] if method == "dcutmix" else None)  # the size is refused first
    with pytest.raises(ValueError, match=match):
        dali_kmix.mix_images(images, p, layout)
    with pytest.raises(ValueError, match=match):
        blend_samples([images[0]], p, layout)


def test_the_one_pass_record_check_leaves_sizes_beyond_int_to_validate():
    kernels = host_kernels()
    if kernels is None:
        pytest.skip("no CPU build")
    p = MixParams([[0, 0]], [[0.0, 1.0]], [[[0, 0, 4, 1]]])
    assert kernels.record_valid(p, 4, 1)
    assert not kernels.record_valid(p, 2**32 + 4, 1)  # once passed as a C int: H = 4, and the record "valid"
    assert not kernels.record_valid(p, 4, 2**31)


def test_boxes_for_a_larger_image_are_rejected():
    # Boxes sampled for 64x64 do not fit 8x8 images; a CHW batch read as HWC has the same problem.
    p = sample_params("dcutmix", 4, 64, 64, k=3, prob=1.0, rng=0)
    with pytest.raises(ValueError, match=r"params.boxes must satisfy 0 <= y0 <= y1 <= H=8"):
        dali_kmix.mix_images(np.zeros((4, 8, 8, 3), np.uint8), p, "HWC")
    q = sample_params("dcutmix", 4, 32, 32, k=3, rng=0)
    with pytest.raises(ValueError, match=r"H=3|W=3|pixel-area fractions"):
        dali_kmix.mix_images(np.zeros((4, 3, 32, 32), np.uint8), q, "HWC")


@pytest.mark.parametrize(
    "labels,num_classes,exc,match",
    [
        (np.array([0, 1, 2, 10]), 10, ValueError, r"labels must lie in \[0, num_classes=10\), got label 10"),
        (np.array([0, -1, 2, 3]), 10, ValueError, r"labels must lie in \[0, num_classes=10\), got label -1"),
        (np.array([0, 1, 2]), 10, ValueError, r"labels has 3 entries but the batch has 4 samples"),
        (np.zeros((4, 2), int), 10, ValueError, r"labels must have shape \(N,\) or \(N, 1\), got \(4, 2\)"),
        (np.array([0.5, 1, 2, 3]), 10, TypeError, r"labels must be integer class indices, got dtype float64"),
        (np.array([0, 1, 2, 3]), 0, ValueError, r"num_classes must be >= 1, got 0"),
    ],
)
def test_bad_labels(labels, num_classes, exc, match):
    with pytest.raises(exc, match=match):
        dali_kmix.mix_labels(labels, _p(), num_classes=num_classes)


@pytest.mark.parametrize("s", [-0.1, 1.0, float("nan")])
def test_bad_smoothing(s):
    with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\)"):
        dali_kmix.mix_labels(np.arange(4), _p(), 10, smoothing=s)


def test_mixparams_of_the_wrong_kind_for_dmixup():
    p = MixParams(np.array([[0, 1], [1, 0]]), np.array([[0.7, 0.7], [0.5, 0.5]]), None)
    with pytest.raises(ValueError, match=r"rows must sum to 1, but row 0 sums to 1\.4"):
        dali_kmix.mix_images(np.zeros((2, 4, 4, 3), np.float32), p, "HWC")


def test_without_a_cpp_compiler_the_reference_is_used(monkeypatch):
    from dali_kmix import saliency
    from dali_kmix.backends import NumpyBackend, backend_for, build
    from dali_kmix.backends import cpu as cpu_kernels

    monkeypatch.setattr(build, "compiler", lambda: None)
    cpu_kernels._load.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"CPU kernels unavailable, using the NumPy reference instead"):
            assert not cpu_kernels.available()
        assert isinstance(backend_for(np.zeros(3)), NumpyBackend)
        rng = np.random.default_rng(9)
        x = random_images(rng, np.uint8, (5, 3, 9, 11))
        for method in ("dmixup", "dcutmix"):
            p = sample_params(method, 5, 9, 11, k=3, rng=2)
            np.testing.assert_array_equal(dali_kmix.mix_images(x, p, "CHW"), reference.mix_images(x, p, "CHW"))
        want = saliency.resize_bilinear(saliency.grey(x, "CHW"), 64, 64)
        np.testing.assert_array_equal(saliency.small_grey(list(x), "CHW"), want)
    finally:
        cpu_kernels._load.cache_clear()


# --------------------------------------------------------------------------- zero-area images, bad records for labels

ZERO_AREA = [("HWC", (0, 0, 3)), ("HWC", (0, 16, 3)), ("HWC", (16, 0, 3)), ("CHW", (3, 0, 16)), ("CHW", (3, 16, 0))]
ZERO_AREA_IDS = [f"{layout}-{'x'.join(map(str, shape))}" for layout, shape in ZERO_AREA]


@pytest.mark.parametrize("layout,shape", ZERO_AREA, ids=ZERO_AREA_IDS)
def test_zero_area_images(layout, shape):
    # issue 20 item 3: DCutMix's label weights are box areas / (H x W) = 0 / 0: one clear error naming the
    # sample and its shape; a DMixup blend of empty images is defined, with finite, normalised targets.
    h, w = dali_kmix._checks.spatial_size(shape, layout)
    x = np.zeros((3,) + shape, np.uint8)
    cut = dali_kmix.MixParams([[0, 1], [1, 2], [2, 0]], [[0.5, 0.5]] * 3, np.zeros((3, 1, 4), np.int32))
    with pytest.raises(ValueError, match=rf"a DCutMix record needs images of at least 1 x 1 pixels.*sample 0 has "
                                         rf"shape \({shape[0]}, {shape[1]}, {shape[2]}\) \(layout {layout}"):
        dali_kmix.mix_images(x, cut, layout)
    for method in ("dcutmix", "saliency-dcutmix"):
        with pytest.raises(ValueError, match=r"(height|width) must be >= 1, got 0"):
            sample_params(method, 3, h, w, centers=np.zeros((3, 2), int) if method != "dcutmix" else None)
    p = sample_params("dmixup", 3, h, w, k=3, rng=0)
    out = dali_kmix.mix_images(x, p, layout)
    assert out.shape == x.shape and out.dtype == x.dtype
    t = dali_kmix.mix_labels(np.array([0, 1, 2]), p, 3)
    assert np.isfinite(t).all() and np.allclose(t.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("sources,weights,match", [
    ([[0, 1], [1, -1]], [[0.5, 0.5]] * 2, r"params.sources must lie in \[0, N=2\), got sources\[1, 1\] = -1"),
    ([[0, 1], [1, 2]], [[0.5, 0.5]] * 2, r"params.sources must lie in \[0, N=2\)"),
    ([[1, 0], [1, 0]], [[0.5, 0.5]] * 2, r"params.sources\[:, 0\] must be arange\(N\).*sources\[0, 0\] = 1"),
    ([[0, 1], [1, 0]], [[0.5, 0.5], [np.nan, 1.0]], r"params.weights must be finite and >= 0, got weights\[1, 0\] = nan"),
    ([[0, 1], [1, 0]], [[1.5, -0.5], [0.5, 0.5]], r"params.weights must be finite and >= 0, got weights\[0, 1\] = -0.5"),
    ([[0, 1], [1, 0]], [[0.5, 0.5], [0.5, 0.6]], r"params.weights rows must sum to 1, but row 1 sums to 1.1"),
], ids=["negative-source", "source-out-of-range", "wrong-anchor", "nan-weight", "negative-weight", "row-sum"])
def test_mix_labels_validates_the_record(sources, weights, match):
    # A record mix_images would refuse used to give NaN or silently wrong targets (a -1 source wraps around).
    with pytest.raises(ValueError, match=match):
        dali_kmix.mix_labels(np.array([0, 1]), dali_kmix.MixParams(sources, weights), num_classes=2)


@pytest.mark.parametrize("kernels", ["cpu-build", "numpy"])
def test_a_bad_label_is_named_before_a_bad_record(monkeypatch, kernels):
    # mix_labels names a label out of range before a fault of the record, whether the CPU build's one pass
    # refuses the two (then the NumPy checks run, labels first) or NumPy checks them alone.
    from dali_kmix import mixing

    if kernels == "numpy":
        monkeypatch.setattr(mixing, "host_kernels", lambda: None)
    bad_record = MixParams([[0, 1], [1, 0]], [[0.5, 0.5], [0.5, 0.6]])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes=2\), got label 5"):
        dali_kmix.mix_labels(np.array([0, 5]), bad_record, num_classes=2)
    with pytest.raises(ValueError, match=r"rows must sum to 1"):
        dali_kmix.mix_labels(np.array([0, 1]), bad_record, num_classes=2)


@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
def test_mix_images_checks_and_blends_a_numpy_batch_in_one_native_call(monkeypatch, method):
    # On the CPU build a sampled record goes through cpu.blend_batch whole (the check and the blend in one call),
    # not through validate and a second launch.
    kernels = host_kernels()
    if kernels is None:
        pytest.skip("no C++ compiler: the CPU kernels are unavailable")
    calls = []
    real = kernels.blend_batch
    monkeypatch.setattr(kernels, "blend_batch", lambda *a, **k: calls.append(real(*a, **k)) or calls[-1])
    monkeypatch.setattr(MixParams, "validate", lambda *a, **k: pytest.fail("validate ran"))
    x = random_images(np.random.default_rng(2), np.uint8, (6, 9, 11, 3))
    p = sample_params(method, 6, 9, 11, k=3, rng=2)
    got = dali_kmix.mix_images(x, p, "HWC")
    assert calls == [True]
    assert np.array_equal(got, reference.mix_images(x, p, "HWC"))


def test_the_one_pass_record_check_passes_what_validate_passes():
    # mix_images checks a NumPy record in one pass of the CPU build (kmix_host_record_valid) before validate's
    # NumPy operations, mix_labels its rows: it must pass no record that validate (validate_rows) refuses, and pass
    # the sampled ones.
    from dali_kmix import backends
    from dali_kmix.record import area_weights

    kernels = backends.host_kernels()
    if kernels is None:
        pytest.skip("no C++ compiler: the CPU kernels are unavailable")
    n, h, w = 6, 9, 11
    rng = np.random.default_rng(5)
    good = [dali_kmix.sample_params(m, n, h, w, k=k, prob=0.7, rng=rng) for m in ("dmixup", "dcutmix") for k in (2, 4)]
    for p in good:
        assert kernels.record_valid(p, h, w)
    p = good[-1]
    bad = []
    for change in ("anchor", "source", "negative", "nan", "sum", "bounds", "nesting", "area"):
        s, wt, b = p.sources.copy(), p.weights.copy(), p.boxes.copy()
        if change == "anchor":
            s[2, 0] = 3
        elif change == "source":
            s[1, 2] = n
        elif change == "negative":
            wt[0, 1] = -1e-3
        elif change == "nan":
            wt[3, 0] = np.nan
        elif change == "sum":
            wt[4] = wt[4] * np.float32(1.0001)
        elif change == "bounds":
            b[1, 0] = (0, 0, h + 1, w)
        elif change == "nesting":
            b[5] = ((2, 2, 6, 6), (1, 1, 3, 3), (1, 1, 2, 2))
        elif change == "area":
            wt[0, :2] = wt[0, 1::-1]
        if change in ("bounds", "nesting"):
            wt = area_weights(b, h, w)
        bad.append(dali_kmix.MixParams(s, wt, b))
    for change, q in zip(("anchor", "source", "negative", "nan", "sum", "bounds", "nesting", "area"), bad):
        with pytest.raises(ValueError):
            q.validate(n, h, w)
        assert not kernels.record_valid(q, h, w), change
        with pytest.raises(ValueError):
            dali_kmix.mix_images(np.zeros((n, h, w, 3), np.uint8), q, "HWC")
        # the rows alone (mix_labels' check): a fault of the rows is one, a fault of the boxes is not
        try:
            q.validate_rows(n)
            rows_ok = True
        except ValueError:
            rows_ok = False
        assert rows_ok == (change in ("nesting", "area")), change  # "bounds" left an area weight < 0
        if rows_ok:
            assert kernels.record_valid(q, None, None), change
            dali_kmix.mix_labels(np.arange(n), q, num_classes=n)
        else:
            with pytest.raises(ValueError):
                q.validate_rows(n)
            assert not kernels.record_valid(q, None, None), change
            with pytest.raises(ValueError):
                dali_kmix.mix_labels(np.arange(n), q, num_classes=n)
    for p in good:
        assert kernels.record_valid(p, None, None)
