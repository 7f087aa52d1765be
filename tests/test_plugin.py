"""The native DALI operators of the plugin (``fn.kmix_dmixup``, ``fn.kmix_dcutmix``).

Checked bit for bit against the NumPy reference over methods, layouts, dtypes, K,
odd sizes and batch sizes; against the python_function path of ``dali_kmix.dali``
(same records, same images, same labels); and for the errors a bad record raises.
"""

import warnings

import numpy as np
import pytest

pytest.importorskip("nvidia.dali")

from nvidia.dali import fn, pipeline_def, types  # noqa: E402

import dali_kmix  # noqa: E402
import dali_kmix.dali as kmix  # noqa: E402
from dali_kmix import reference
from dali_kmix.backends import cpu as cpu_kernels
from dali_kmix.backends import plugin  # noqa: E402
from dali_kmix.backends.sources import cuda_include_dirs  # noqa: E402
from dali_kmix.sampling import area_weights  # noqa: E402

from _helpers import random_images  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def loaded():
    if cpu_kernels.compiler() is None or not cuda_include_dirs():
        pytest.skip("no C++ compiler or CUDA runtime headers: the plugin cannot be built here")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed build warns: fail loudly here instead
        assert plugin.load(), "the dali_kmix DALI plugin did not load"


def _apply(method, images, params, layout, num_threads=3, input_layout=None, third=None, sources=None,
           iters=1):
    """Run ``fn.kmix_<method>`` on a fixed batch and record; returns (output, images passed through)."""
    n = len(images)
    third = (params.weights if method == "dmixup" else params.boxes) if third is None else third
    sources = params.sources if sources is None else sources

    @pipeline_def(batch_size=max(n, 1), num_threads=num_threads, device_id=None)
    def pipe():
        ims = fn.external_source(source=lambda: list(images), batch=True,
                                 layout=layout if input_layout is None else input_layout)
        src = fn.external_source(source=lambda: list(sources), batch=True)
        thr = fn.external_source(source=lambda: list(third), batch=True)
        op = fn.kmix_dmixup if method == "dmixup" else fn.kmix_dcutmix
        return op(ims, src, thr, layout=layout), ims

    p = pipe()
    p.build()
    for _ in range(iters):
        out, passed = p.run()
    return out, passed


SHAPES = {"1x1": (1, 1, 1), "3x5": (3, 5, 3), "225x227": (225, 227, 3), "17x64": (17, 64, 4)}


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("k", [2, 3, 5, 9], ids=lambda k: f"K{k}")
@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32], ids=["u8", "f16", "f32"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
def test_bit_exact_against_the_reference(method, layout, dtype, k, shape):
    h, w, c = SHAPES[shape]
    n = 7 if h * w < 10_000 else 4
    rng = np.random.default_rng([k, h, w, c, n])
    images = random_images(rng, dtype, (n, h, w, c) if layout == "HWC" else (n, c, h, w))
    params = dali_kmix.sample_params(method, n, h, w, k=k, alpha=0.8, rng=rng)
    out, passed = _apply(method, images, params, layout)
    assert out.layout() == layout
    got = out.as_array()
    assert got.dtype == images.dtype and got.shape == images.shape
    np.testing.assert_array_equal(got, reference.mix_images(images, params, layout))
    np.testing.assert_array_equal(passed.as_array(), images)  # the input is not written


@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
@pytest.mark.parametrize("n,threads", [(1, 1), (65, 2), (65, 4)], ids=["N1-t1", "N65-t2", "N65-t4"])
def test_batch_sizes_and_thread_counts(method, n, threads):
    rng = np.random.default_rng(n + threads)
    images = random_images(rng, np.float32, (n, 3, 31, 45))
    params = dali_kmix.sample_params(method, n, 31, 45, k=4, rng=rng)
    out, _ = _apply(method, images, params, "CHW", num_threads=threads, iters=2)
    np.testing.assert_array_equal(out.as_array(), reference.mix_images(images, params, "CHW"))


def test_empty_and_full_boxes_and_unmixed_samples():
    rng = np.random.default_rng(0)
    n, h, w = 5, 9, 11
    images = random_images(rng, np.uint8, (n, h, w, 3))
    boxes = np.array([
        [[0, 0, h, w], [0, 0, h, w]],      # full boxes: the deepest source everywhere
        [[2, 3, 2, 3], [2, 3, 2, 3]],      # empty boxes: the anchor everywhere
        [[0, 0, h, w], [4, 5, 4, 5]],      # full outer, empty inner
        [[1, 1, 8, 10], [1, 1, 8, 10]],    # equal boxes
        [[0, 10, 9, 11], [8, 10, 9, 11]],  # a one-pixel corner
    ], np.int32)
    sources = np.array([[0, 1, 2], [1, 3, 4], [2, 0, 0], [3, 4, 1], [4, 2, 3]], np.int32)
    params = dali_kmix.MixParams(sources, area_weights(boxes, h, w), boxes).validate(n, h, w)
    out, _ = _apply("dcutmix", images, params, "HWC")
    got = out.as_array()
    np.testing.assert_array_equal(got, reference.mix_images(images, params, "HWC"))
    np.testing.assert_array_equal(got[0], images[2])
    np.testing.assert_array_equal(got[1], images[1])


def test_empty_batch_is_not_an_error():
    # DALI batches are never empty in a pipeline, but the operator must accept a zero-sample
    # input from a conditional split; exercised here with an external source of 0 samples.
    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe():
        ims = fn.external_source(source=lambda: [], batch=True, layout="HWC", dtype=types.UINT8, ndim=3)
        src = fn.external_source(source=lambda: [], batch=True, dtype=types.INT32, ndim=1)
        thr = fn.external_source(source=lambda: [], batch=True, dtype=types.FLOAT, ndim=1)
        return fn.kmix_dmixup(ims, src, thr, layout="HWC")

    p = pipe()
    p.build()
    (out,) = p.run()
    assert len(out) == 0


def _record(method="dcutmix", n=4, h=6, w=8, k=3, seed=0):
    rng = np.random.default_rng(seed)
    images = random_images(rng, np.uint8, (n, h, w, 3))
    return images, dali_kmix.sample_params(method, n, h, w, k=k, rng=rng)


def test_errors_name_the_argument_and_the_value():
    images, p = _record()
    src = p.sources.copy()
    src[2, 1] = 4
    with pytest.raises(RuntimeError, match=r"sources must lie in \[0, N=4\), got sources\[2\]\[1\] = 4"):
        _apply("dcutmix", images, p, "HWC", sources=src)
    src = p.sources.copy()
    src[1, 0] = 0
    with pytest.raises(RuntimeError, match=r"sources\[1\]\[0\] must be 1 \(every sample anchors its own output\), "
                                           r"got 0"):
        _apply("dcutmix", images, p, "HWC", sources=src)
    with pytest.raises(RuntimeError, match=r"sources must have dtype int32, got int64"):
        _apply("dcutmix", images, p, "HWC", sources=p.sources.astype(np.int64))
    boxes = p.boxes.copy()
    boxes[3, 0] = (0, 0, 7, 8)
    with pytest.raises(RuntimeError, match=r"boxes must satisfy 0 <= y0 <= y1 <= H=6 and 0 <= x0 <= x1 <= W=8; "
                                           r"box 0 of sample 3 is \(0, 0, 7, 8\)"):
        _apply("dcutmix", images, p, "HWC", third=boxes)
    boxes = p.boxes.copy()
    boxes[0] = [(1, 1, 4, 4), (0, 0, 2, 2)]
    with pytest.raises(RuntimeError, match=r"boxes must be nested: box 1 of sample 0 \(0, 0, 2, 2\) is not inside "
                                           r"box 0 \(1, 1, 4, 4\)"):
        _apply("dcutmix", images, p, "HWC", third=boxes)
    with pytest.raises(RuntimeError, match=r"boxes must have shape \(K-1, 4\) = \(2, 4\) for every sample, "
                                           r"got \(3, 4\) for sample 0"):
        _apply("dcutmix", images, p, "HWC", third=np.zeros((4, 3, 4), np.int32))
    with pytest.raises(RuntimeError, match=r"layout must be \"HWC\" or \"CHW\", got \"NHWC\""):
        _apply("dcutmix", images, p, "NHWC", input_layout="HWC")
    with pytest.raises(RuntimeError, match=r"layout='CHW' was given but the images carry layout 'HWC'"):
        _apply("dcutmix", images, p, "CHW", input_layout="HWC")
    with pytest.raises(RuntimeError, match=r"images must have dtype uint8, float16 or float32, got int16"):
        _apply("dcutmix", images.astype(np.int16), p, "HWC")
    ragged = [images[0], images[1, :5], images[2], images[3]]
    with pytest.raises(RuntimeError, match=r"all samples of a batch must have the same shape; sample 0 has shape "
                                           r"\(6, 8, 3\) but sample 1 has shape \(5, 8, 3\)"):
        _apply("dcutmix", ragged, p, "HWC")

    images, p = _record("dmixup")
    w = p.weights.copy()
    w[1, 2] = np.nan
    with pytest.raises(RuntimeError, match=r"weights must be finite and >= 0, got weights\[1\]\[2\] = nan"):
        _apply("dmixup", images, p, "HWC", third=w)
    w[1, 2] = -0.5
    with pytest.raises(RuntimeError, match=r"weights must be finite and >= 0, got weights\[1\]\[2\] = -0.5"):
        _apply("dmixup", images, p, "HWC", third=w)
    with pytest.raises(RuntimeError, match=r"weights must have dtype float, got double|weights must have dtype "
                                           r"float32, got float64"):
        _apply("dmixup", images, p, "HWC", third=p.weights.astype(np.float64))


# ------------------------------------------------------------------ the operators of dali_kmix.dali


@pipeline_def(batch_size=8, num_threads=2, device_id=None, seed=3)
def photo_pipe(root, method, layout, label_format, dtype):
    jpegs, labels = fn.readers.file(file_root=str(root), random_shuffle=True, name="Reader")
    images = fn.decoders.image(jpegs, output_type=types.RGB)
    images = fn.resize(images, resize_x=37, resize_y=41)
    if dtype != "uint8":
        images = fn.cast(images, dtype=types.FLOAT16 if dtype == "float16" else types.FLOAT)
    if layout == "CHW":
        images = fn.transpose(images, perm=[2, 0, 1], output_layout="CHW")
    op = getattr(kmix, method.replace("-", "_"))
    outs = op(images, labels, k=3, alpha=0.6, num_classes=8, layout=layout, label_format=label_format,
              prob=0.8, seed=21)
    photo_pipe.kinds.append(outs[0].name)
    return outs


photo_pipe.kinds = []


@pytest.mark.parametrize("label_format", ["dense", "sparse"])
@pytest.mark.parametrize("dtype", ["uint8", "float16", "float32"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix", "saliency-dcutmix"])
def test_plugin_path_equals_the_python_function_path(photo_dir, monkeypatch, method, layout, dtype, label_format):
    results = {}
    for use in ("1", "0"):
        monkeypatch.setenv("DALI_KMIX_PLUGIN", use)
        photo_pipe.kinds.clear()
        p = photo_pipe(photo_dir, method, layout, label_format, dtype)
        p.build()
        results[use] = [[o.as_array() for o in p.run()] for _ in range(2)]
        native = any("Kmix" in name for name in photo_pipe.kinds)
        assert native == (use == "1"), photo_pipe.kinds
    for a, b in zip(results["1"], results["0"]):
        assert len(a) == len(b) == (2 if label_format == "dense" else 3)
        for x, y in zip(a, b):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)


def test_a_failed_build_falls_back_to_python_function(photo_dir, monkeypatch):
    def broken(verbose=False):
        raise RuntimeError("building the dali_kmix DALI plugin failed: simulated")

    monkeypatch.setattr(plugin, "build", broken)
    plugin._load.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="the DALI plugin is unavailable.*simulated"):
            assert plugin.load() is False
        photo_pipe.kinds.clear()
        p = photo_pipe(photo_dir, "dcutmix", "HWC", "dense", "uint8")
        p.build()
        images, targets = p.run()
        assert not any("Kmix" in name for name in photo_pipe.kinds)
        assert images.as_array().shape == (8, 41, 37, 3)
        np.testing.assert_allclose(targets.as_array().sum(1), 1.0, atol=1e-6)
    finally:
        plugin._load.cache_clear()
        monkeypatch.undo()
        assert plugin.load()


@pytest.mark.parametrize("value,expect", [("0", False), ("", False), ("1", True), (" 1 ", True)])
def test_env_values(monkeypatch, value, expect):
    monkeypatch.setenv("DALI_KMIX_PLUGIN", value)
    assert plugin.enabled() is expect


# --------------------------------------------------------------------------- fn.kmix_mix: either method per sample


def _constant(batch):
    """A source that gives the same batch every iteration (a closure: DALI passes an argument to a
    callable that takes one)."""
    return lambda: list(batch)


def _apply_mix(images, sources, weights, boxes, cut, layout, num_threads=3):
    n = len(images)

    @pipeline_def(batch_size=n, num_threads=num_threads, device_id=None)
    def pipe():
        ims = fn.external_source(source=lambda: list(images), batch=True, layout=layout)
        rec = [fn.external_source(source=_constant(a), batch=True) for a in (sources, weights, boxes, cut)]
        return fn.kmix_mix(ims, *rec, layout=layout), ims

    p = pipe()
    p.build()
    return p.run()


@pytest.mark.parametrize("k", [2, 3, 9], ids=lambda k: f"K{k}")
@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32], ids=["u8", "f16", "f32"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_kmix_mix_bit_exact_per_sample(layout, dtype, k):
    """Each sample is what kmix_dmixup or kmix_dcutmix gives it, by its own cut flag."""
    n, h, w, c = 9, 17, 23, 3
    rng = np.random.default_rng([k, n])
    images = random_images(rng, dtype, (n, h, w, c) if layout == "HWC" else (n, c, h, w))
    cut_rec = dali_kmix.sample_params("dcutmix", n, h, w, k=k, rng=rng)
    blend_rec = dali_kmix.sample_params("dmixup", n, h, w, k=k, rng=rng)
    cut = (rng.random(n) < 0.5).astype(np.uint8)
    cut[:2] = (0, 1)
    sources = np.where(cut[:, None] == 1, cut_rec.sources, blend_rec.sources).astype(np.int32)
    weights = np.where(cut[:, None] == 1, cut_rec.weights, blend_rec.weights).astype(np.float32)
    boxes = np.where(cut[:, None, None] == 1, cut_rec.boxes, 0).astype(np.int32)
    out, passed = _apply_mix(images, sources, weights, boxes, cut, layout)
    got = out.as_array()
    want_cut = reference.mix_images(images, dali_kmix.MixParams(sources, weights, boxes), layout)
    want_blend = reference.mix_images(images, dali_kmix.MixParams(sources, weights), layout)
    for i in range(n):
        np.testing.assert_array_equal(got[i], want_cut[i] if cut[i] else want_blend[i])
    np.testing.assert_array_equal(passed.as_array(), images)


def test_kmix_mix_errors():
    images = np.zeros((2, 4, 4, 3), np.uint8)
    src = np.array([[0, 1], [1, 0]], np.int32)
    w = np.array([[0.5, 0.5], [1, 0]], np.float32)
    b = np.zeros((2, 1, 4), np.int32)
    with pytest.raises(RuntimeError, match=r"cut must be 0 or 1, got cut\[1\] = 2"):
        _apply_mix(images, src, w, b, np.array([0, 2], np.uint8), "HWC")
    with pytest.raises(RuntimeError, match=r"cut must have dtype uint8, got int32"):
        _apply_mix(images, src, w, b, np.array([0, 1], np.int32), "HWC")
    with pytest.raises(RuntimeError, match=r"weights must be finite and >= 0"):
        _apply_mix(images, src, np.array([[0.5, -1], [1, 0]], np.float32), b, np.array([0, 1], np.uint8), "HWC")


@pytest.mark.parametrize("op", ["kmix_dmixup", "kmix_mix"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["f16", "f32"])
def test_zero_share_partner_with_inf_or_nan_contributes_nothing(dtype, op):
    # issue 20 item 8: a partner with weight exactly 0 (alpha = 1e-3 draws them) used to make 0 * Inf = NaN
    rng = np.random.default_rng(4)
    images = random_images(rng, dtype, (4, 5, 7, 3))
    images[1, 0, 0, 0], images[2, 1, 2, 1], images[3] = np.inf, np.nan, -np.inf
    sources = np.array([[0, 2, 0], [1, 3, 0], [2, 1, 3], [3, 0, 2]], np.int32)
    weights = np.array([[0.25, 0.0, 0.75], [0.0, 0.0, 1.0], [0.5, 0.0, 0.5], [0.0, 1.0, 0.0]], np.float32)
    want = reference.mix_images(images, dali_kmix.MixParams(sources, weights), "HWC")
    # no zero-share NaN or Inf: rows 1 and 3 are image 0; row 2 has Inf and NaN of its own (weights 0.5)
    assert np.isfinite(want[[0, 1, 3]]).all()
    np.testing.assert_array_equal(want[[1, 3]], images[[0, 0]])
    record = [sources, weights] + ([np.zeros((4, 2, 4), np.int32), np.zeros((4, 1), np.uint8)] if op == "kmix_mix"
                                   else [])

    def source(batch):  # a callable of no argument (DALI passes one to a callable that takes one)
        return lambda: list(batch)

    @pipeline_def(batch_size=4, num_threads=2, device_id=None)
    def pipe():
        ims = fn.external_source(source=source(images), batch=True, layout="HWC")
        rec = [fn.external_source(source=source(a), batch=True) for a in record]
        return getattr(fn, op)(ims, *rec, layout="HWC")

    p = pipe()
    p.build()
    (out,) = p.run()
    got = out.as_array()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    nan = np.isnan(want)
    assert np.array_equal(got[~nan].view(np.uint8), want[~nan].view(np.uint8))
