"""The native DALI operators of the plugin (``fn.kmix_dmixup``, ``fn.kmix_dcutmix``, ``fn.kmix_mix``), CPU and GPU.

Checked bit for bit against the NumPy reference over methods, layouts, dtypes, K, odd sizes and batch sizes;
against the python_function path of ``dali_kmix.dali`` (same records, same images, same labels); for the
errors a bad record raises (one message table: the host checks, the CPU operator and, on a device, the GPU
operator); and, without a device, for what the GPU backend is: compiled by nvcc for sm_75, sm_80 and sm_90 plus
PTX with zero warnings and IEEE float semantics, registered with DALI, usable in a defined GPU pipeline whose
build() fails only for want of a device. On a device (``gpu`` marker): GPU operator == CPU operator bit for bit.
"""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nvidia.dali")

from nvidia.dali import fn, pipeline_def, types  # noqa: E402

import dali_kmix  # noqa: E402
import dali_kmix.dali as kmix  # noqa: E402
from dali_kmix import reference  # noqa: E402
from dali_kmix.backends import cpu as cpu_kernels  # noqa: E402
from dali_kmix.backends import gpu_available, plugin  # noqa: E402
from dali_kmix.backends.build import build_log, sanitize_requested  # noqa: E402
from dali_kmix.backends.sources import FP_OPTIONS, cuda_include_dirs  # noqa: E402
from dali_kmix.sampling import area_weights  # noqa: E402

from _helpers import assert_ieee_ptx, graph_operators, random_images  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def loaded():
    if cpu_kernels.compiler() is None or not cuda_include_dirs():
        pytest.skip("no C++ compiler or CUDA runtime headers: the plugin cannot be built here")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed build warns: fail loudly here instead
        warnings.simplefilter("default", plugin.NoGpuBackendWarning)  # no nvcc here: the CPU-only plugin
        assert plugin.load(), "the dali_kmix DALI plugin did not load"


#: The GPU backend is built here (a CUDA toolchain, not the ASan build): the no-device checks of it apply.
needs_gpu_backend = pytest.mark.skipif(plugin.cuda_toolchain()[0] is None or sanitize_requested(),
                                       reason=f"no GPU backend here: {plugin.cuda_toolchain()[1] or 'ASan build'}")

OPS = {"dmixup": "kmix_dmixup", "dcutmix": "kmix_dcutmix", "mix": "kmix_mix"}


def _constant(batch):
    """A source that gives the same batch every iteration (a closure: DALI passes an argument to a
    callable that takes one)."""
    return lambda: list(batch)


def _apply(method, images, record, layout, *, device="cpu", num_threads=3, input_layout=None, iters=1):
    """Run ``fn.kmix_<method>`` (method "dmixup", "dcutmix" or "mix") on a fixed batch and record (a list of the
    record inputs after the images) on ``device``; returns (output on the host, images passed through)."""
    n = len(images)

    @pipeline_def(batch_size=max(n, 1), num_threads=num_threads, device_id=0 if device == "gpu" else None)
    def pipe():
        ims = fn.external_source(source=_constant(images), batch=True,
                                 layout=layout if input_layout is None else input_layout)
        rec = [fn.external_source(source=_constant(a), batch=True) for a in record]
        return getattr(fn, OPS[method])(ims.gpu() if device == "gpu" else ims, *rec, layout=layout), ims

    p = pipe()
    p.build()
    for _ in range(iters):
        out, passed = p.run()
    return (out.as_cpu() if device == "gpu" else out), passed


def _rec(params):
    """The record inputs of fn.kmix_dmixup / fn.kmix_dcutmix for a MixParams."""
    return [params.sources, params.weights if params.boxes is None else params.boxes]


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
    out, passed = _apply(method, images, _rec(params), layout)
    assert out.layout() == layout
    got = out.as_array()
    assert got.dtype == images.dtype and got.shape == images.shape
    np.testing.assert_array_equal(got, reference.mix_images(images, params, layout))
    np.testing.assert_array_equal(passed.as_array(), images)  # the input is not written


@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
@pytest.mark.parametrize("n,threads", [(1, 1), (65, 2), (65, 4)], ids=["N1-t1", "N65-t2", "N65-t4"])
@pytest.mark.parametrize("k", [4, 9], ids=["K4", "K9-samples-first"])  # K9 DCutMix: 7 chunks a sample, chunk-major
def test_batch_sizes_and_thread_counts(method, n, threads, k):
    rng = np.random.default_rng(n + threads)
    images = random_images(rng, np.float32, (n, 3, 97, 131))
    params = dali_kmix.sample_params(method, n, 97, 131, k=k, rng=rng)
    out, _ = _apply(method, images, _rec(params), "CHW", num_threads=threads, iters=2)
    np.testing.assert_array_equal(out.as_array(), reference.mix_images(images, params, "CHW"))


def _edge_boxes():
    """Full, empty, equal and one-pixel boxes (a fixed DCutMix record of 5 samples, 9 x 11)."""
    h, w = 9, 11
    boxes = np.array([
        [[0, 0, h, w], [0, 0, h, w]],      # full boxes: the deepest source everywhere
        [[2, 3, 2, 3], [2, 3, 2, 3]],      # empty boxes: the anchor everywhere
        [[0, 0, h, w], [4, 5, 4, 5]],      # full outer, empty inner
        [[1, 1, 8, 10], [1, 1, 8, 10]],    # equal boxes
        [[0, 10, 9, 11], [8, 10, 9, 11]],  # a one-pixel corner
    ], np.int32)
    sources = np.array([[0, 1, 2], [1, 3, 4], [2, 0, 0], [3, 4, 1], [4, 2, 3]], np.int32)
    return dali_kmix.MixParams(sources, area_weights(boxes, h, w), boxes).validate(5, h, w)


def test_empty_and_full_boxes_and_unmixed_samples():
    images = random_images(np.random.default_rng(0), np.uint8, (5, 9, 11, 3))
    params = _edge_boxes()
    out, _ = _apply("dcutmix", images, _rec(params), "HWC")
    got = out.as_array()
    np.testing.assert_array_equal(got, reference.mix_images(images, params, "HWC"))
    np.testing.assert_array_equal(got[0], images[2])
    np.testing.assert_array_equal(got[1], images[1])


EMPTY_BATCH_NORM = {
    "no-normalisation": {},
    "imagenet-mean-std": dict(dtype=types.FLOAT, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                              output_layout="CHW"),
    "scalar-mean-std-f16": dict(dtype=types.FLOAT16, mean=[127.5], std=[64.0]),
}


@pytest.mark.parametrize("norm", list(EMPTY_BATCH_NORM), ids=list(EMPTY_BATCH_NORM))
def test_empty_batch_is_not_an_error(norm):
    # DALI batches are never empty in a pipeline, but the operator must accept a zero-sample
    # input from a conditional split; exercised here with an external source of 0 samples. With the fused
    # normalisation too: an empty batch has no channels to hold a per-channel mean against.
    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe():
        ims = fn.external_source(source=lambda: [], batch=True, layout="HWC", dtype=types.UINT8, ndim=3)
        src = fn.external_source(source=lambda: [], batch=True, dtype=types.INT32, ndim=1)
        thr = fn.external_source(source=lambda: [], batch=True, dtype=types.FLOAT, ndim=1)
        return fn.kmix_dmixup(ims, src, thr, layout="HWC", **EMPTY_BATCH_NORM[norm])

    p = pipe()
    p.build()
    (out,) = p.run()
    assert len(out) == 0


@pytest.mark.parametrize("norm", list(EMPTY_BATCH_NORM), ids=list(EMPTY_BATCH_NORM))
@pytest.mark.parametrize("op", ["kmix_dmixup", "kmix_dcutmix"])
def test_empty_batch_in_dynamic_mode_is_not_an_error(op, norm):
    # A pipeline's executor never sets an operator up on an empty batch; dynamic mode does (a 3-value mean once
    # failed there with "mean has 3 values but the images have 0 channels").
    ndd = pytest.importorskip("nvidia.dali.experimental.dynamic")
    images = ndd.Batch([], dtype=ndd.uint8)
    record = ndd.Batch([], dtype=ndd.float32) if op == "kmix_dmixup" else ndd.Batch([], dtype=ndd.int32)
    out = getattr(ndd, op)(images, ndd.Batch([], dtype=ndd.int32), record, layout="HWC", **EMPTY_BATCH_NORM[norm])
    assert out.evaluate().batch_size == 0


# --------------------------------------------------------------------------- one message table for both backends
# Each bad record is run through the host checks (kmix_record.h through the host library), the CPU operator and,
# on a device, the GPU operator: all three must raise (or return) the same message, naming the argument and value.


def _record(method="dcutmix", n=4, h=6, w=8, k=3, seed=0):
    rng = np.random.default_rng(seed)
    images = random_images(rng, np.uint8, (n, h, w, 3))
    return images, dali_kmix.sample_params("dmixup" if method == "dmixup" else "dcutmix", n, h, w, k=k, rng=rng)


def _set(a, index, value):
    a = a.copy()
    a[index] = value
    return a


def _bad_cut(cut, weights=None):
    """A kmix_mix record of 2 samples (4 x 4) with the given cut flags (and weights)."""
    images = np.zeros((2, 4, 4, 3), np.uint8)
    w = np.array([[0.5, 0.5], [1, 0]], np.float32) if weights is None else weights
    return "mix", images, [np.array([[0, 1], [1, 0]], np.int32), w, np.zeros((2, 1, 4), np.int32), cut], {}


def _bad(name):
    """``(method, images, record, options)`` of the bad record ``name`` (a row of BAD_RECORDS)."""
    images, p = _record()
    images_m, pm = _record("dmixup")
    cases = {
        "source-out-of-range": ("dcutmix", images, [_set(p.sources, (2, 1), 4), p.boxes], {}),
        "source-not-its-anchor": ("dcutmix", images, [_set(p.sources, (1, 0), 0), p.boxes], {}),
        "sources-int64": ("dcutmix", images, [p.sources.astype(np.int64), p.boxes], {}),
        "box-out-of-the-image": ("dcutmix", images, [p.sources, _set(p.boxes, (3, 0), (0, 0, 7, 8))], {}),
        "boxes-not-nested": ("dcutmix", images, [p.sources, _set(p.boxes, 0, [(1, 1, 4, 4), (0, 0, 2, 2)])], {}),
        "boxes-wrong-shape": ("dcutmix", images, [p.sources, np.zeros((4, 3, 4), np.int32)], {}),
        "layout-argument": ("dcutmix", images, [p.sources, p.boxes], {"layout": "NHWC", "input_layout": "HWC"}),
        "layout-mismatch": ("dcutmix", images, [p.sources, p.boxes], {"layout": "CHW", "input_layout": "HWC"}),
        "images-int16": ("dcutmix", images.astype(np.int16), [p.sources, p.boxes], {}),
        "images-ragged": ("dcutmix", [images[0], images[1, :5], images[2], images[3]], [p.sources, p.boxes], {}),
        "weight-nan": ("dmixup", images_m, [pm.sources, _set(pm.weights, (1, 2), np.nan)], {}),
        "weight-negative": ("dmixup", images_m, [pm.sources, _set(pm.weights, (1, 2), -0.5)], {}),
        "weights-float64": ("dmixup", images_m, [pm.sources, pm.weights.astype(np.float64)], {}),
        "cut-not-0-or-1": _bad_cut(np.array([0, 2], np.uint8)),
        "cut-int32": _bad_cut(np.array([0, 1], np.int32)),
        "mix-weight-negative": _bad_cut(np.array([0, 1], np.uint8), np.array([[0.5, -1], [1, 0]], np.float32)),
        # CHW images without a layout, given layout="HWC": once "box out of the image" (boxes were checked first)
        "channels-first-as-hwc": ("dcutmix", np.ascontiguousarray(images.transpose(0, 3, 1, 2)), [p.sources, p.boxes],
                                  {"input_layout": ""}),
    }
    return cases[name]


#: Bad record -> the message every check gives (a regex; dtypes named by DALI or by NumPy).
BAD_RECORDS = {
    "source-out-of-range": r"sources must lie in \[0, N=4\), got sources\[2\]\[1\] = 4",
    "source-not-its-anchor": r"sources\[1\]\[0\] must be 1 \(every sample anchors its own output\), got 0",
    "sources-int64": r"sources must have dtype int32, got int64",
    "box-out-of-the-image": r"boxes must satisfy 0 <= y0 <= y1 <= H=6 and 0 <= x0 <= x1 <= W=8; box 0 of sample 3 "
                            r"is \(0, 0, 7, 8\)",
    "boxes-not-nested": r"boxes must be nested: box 1 of sample 0 \(0, 0, 2, 2\) is not inside box 0 \(1, 1, 4, 4\)",
    "boxes-wrong-shape": r"boxes must have shape \(K-1, 4\) = \(2, 4\) for every sample, got \(3, 4\) for sample 0",
    "layout-argument": r"layout must be \"HWC\" or \"CHW\", got \"NHWC\"",
    "layout-mismatch": r"layout='CHW' was given but the images carry layout 'HWC'",
    "images-int16": r"images must have dtype uint8, float16 or float32, got int16",
    "images-ragged": r"all samples of a batch must have the same H x W; sample 0 has shape \(6, 8, 3\) but sample 1 "
                     r"has shape \(5, 8, 3\)",
    "weight-nan": r"weights must be finite and >= 0, got weights\[1\]\[2\] = nan",
    "weight-negative": r"weights must be finite and >= 0, got weights\[1\]\[2\] = -0.5",
    "weights-float64": r"weights must have dtype float, got (double|float64)",
    "cut-not-0-or-1": r"cut must be 0 or 1, got cut\[1\] = 2",
    "cut-int32": r"cut must have dtype uint8, got int32",
    "mix-weight-negative": r"weights must be finite and >= 0, got weights\[0\]\[1\] = -1",
    "channels-first-as-hwc": r"images: layout='HWC' was given but the images carry no layout and their shape "
                             r"\(3, 6, 8\) looks CHW \(3 channels first\)",
}


def _operator_error(name, device):
    method, images, record, opts = _bad(name)
    with pytest.raises(RuntimeError, match=BAD_RECORDS[name]) as info:
        _apply(method, images, record, opts.get("layout", "HWC"), input_layout=opts.get("input_layout"),
               device=device)
    return str(info.value)


def _host_message(name):
    method, images, record, opts = _bad(name)
    layout = opts.get("layout", "HWC")
    third = dict(zip(("weights", "boxes", "cut"), record[1:])) if method == "mix" else \
        {("weights" if method == "dmixup" else "boxes"): record[1]}
    return cpu_kernels.validate_record(method, images, record[0], **third, layout=layout,
                                       found_layout=opts.get("input_layout", layout))


#: Where DALI and NumPy name a dtype differently ("double" / "float64"), the messages differ in that word only.
DTYPE_NAMES_DIFFER = ("weights-float64",)


@pytest.mark.parametrize("name", list(BAD_RECORDS))
def test_record_errors_from_the_host_checks(name):
    msg = _host_message(name)
    assert re.search(BAD_RECORDS[name], msg), msg


@pytest.mark.parametrize("name", list(BAD_RECORDS))
def test_record_errors_on_the_cpu_operator(name):
    raised = _operator_error(name, "cpu")
    if name not in DTYPE_NAMES_DIFFER:
        assert _host_message(name) in raised  # the very same text: one message table


def test_host_checks_pass_the_records_the_operators_apply():
    images, p = _record()
    assert cpu_kernels.validate_record("dcutmix", images, p.sources, boxes=p.boxes) == ""
    images, p = _record("dmixup")
    assert cpu_kernels.validate_record("dmixup", images, p.sources, weights=p.weights, layout="HWC",
                                       found_layout="") == ""
    params = _edge_boxes()
    assert cpu_kernels.validate_record("mix", np.zeros((5, 9, 11, 3), np.float16), params.sources, params.weights,
                                       params.boxes, np.ones((5, 1), np.uint8)) == ""
    assert cpu_kernels.validate_record("dcutmix", np.zeros((0, 9, 11, 3), np.uint8), np.zeros((0, 3), np.int32),
                                       boxes=np.zeros((0, 2, 4), np.int32)) == ""


def test_host_checks_refuse_extents_beyond_int():
    # Zero-element images pass the rows' bounds whatever their other extents: each extent is checked, not cast
    # (a W of 2^31 once read as -2147483648 in the messages, and 2^32 + 8 as 8).
    images = np.zeros((2, 4, 2**31, 0), np.uint8)
    msg = cpu_kernels.validate_record("dmixup", images, np.array([[0, 1], [1, 0]], np.int32),
                                      weights=np.full((2, 2), 0.5, np.float32))
    assert msg == "images: shape (4, 2147483648, 0) (layout HWC) has an extent of 2147483648; every extent must be < 2^31"


def test_host_checks_refuse_a_record_input_of_another_batch_size():
    images, p = _record()
    msg = cpu_kernels.validate_record("dcutmix", images, p.sources, boxes=p.boxes[:3])
    assert msg == "boxes has 3 samples but images has 4"


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


@pipeline_def(batch_size=7, num_threads=2, device_id=None, seed=11)
def draw_pipe(root, method, kw):
    # the reader for its labels and its padded last batch; random images (no decoder: the suite runs under ASan too)
    jpegs, labels = fn.readers.file(file_root=str(root), random_shuffle=True, pad_last_batch=True, name="Reader")
    images = fn.cast(fn.random.uniform(shape=(23, 29, 3), range=[0.0, 255.0], seed=4), dtype=types.UINT8)
    kw = dict(kw)
    runtime = kw.pop("runtime", ())
    if "alpha-per-sample" in runtime:  # K values per sample, every sample its own
        kw["alpha"] = fn.random.uniform(range=[0.3, 2.0], shape=(kw["k"],), seed=8)
    if "alpha-scalar" in runtime:  # one value per sample
        kw["alpha"] = fn.random.uniform(range=[0.3, 2.0], seed=8)
    if "alpha-same" in runtime:  # the same K values for every sample: the draws of that fixed vector
        kw["alpha"] = fn.external_source(source=lambda: [np.array([0.5, 1.0, 2.0])] * 7, batch=True)
    if "prob" in runtime:
        kw["prob"] = fn.random.uniform(range=[0.0, 1.0], seed=9, dtype=types.FLOAT64)
    if method == "dmixup+dcutmix":
        return kmix.dmixup_or_dcutmix(images, labels, num_classes=8, layout="HWC", reader_name="Reader", **kw)
    return getattr(kmix, method.replace("-", "_"))(images, labels, num_classes=8, layout="HWC", reader_name="Reader",
                                                   **kw)


DRAW_CASES = {
    "dcutmix-K2-batch": ("dcutmix", dict(k=2, mode="batch", label_format="sparse")),
    "dcutmix-K9-prob": ("dcutmix", dict(k=9, alpha=0.3, prob=0.6, label_format="dense", smoothing=0.1)),
    "dmixup-alphas": ("dmixup", dict(k=3, alpha=(0.2, 1.0, 3.0), label_format="sparse")),
    "dmixup-tiny-alpha-batch": ("dmixup", dict(k=4, alpha=1e-320, mode="batch", label_format="dense")),
    "saliency": ("saliency-dcutmix", dict(k=3, prob=0.8, label_format="dense", seed=2 ** 40 + 5)),
    "switch": ("dmixup+dcutmix", dict(k=3, alpha=0.4, cutmix_alpha=1.5, switch_prob=0.5, label_format="sparse")),
    "alpha-and-prob-per-iteration": ("dcutmix", dict(k=3, label_format="dense", runtime=("alpha-per-sample", "prob"))),
    "alpha-scalar-per-sample": ("dmixup", dict(k=4, label_format="sparse", runtime=("alpha-scalar",))),
    "alpha-same-for-the-batch": ("dmixup", dict(k=3, mode="batch", label_format="sparse", runtime=("alpha-same",))),
    "switch-prob-per-iteration": ("dmixup+dcutmix", dict(k=3, alpha=0.4, cutmix_alpha=1.5, switch_prob=0.5,
                                                          label_format="dense", runtime=("prob",))),
}


@pytest.mark.parametrize("case", list(DRAW_CASES))
def test_kmix_draw_gives_the_records_of_the_drawing_python_function(photo_dir, monkeypatch, case):
    # fn.kmix_draw (C++, NumPy's generator through its C library) against the python_function it replaces in CPU
    # pipelines, over whole epochs (the reader's padded last batch included): every output bit for bit.
    method, kw = DRAW_CASES[case]
    results, real = {}, kmix.native_draw
    for native in (True, False):
        used = []
        monkeypatch.setattr(kmix, "native_draw", lambda spec: used.append(native and real(spec)) or used[-1])
        p = draw_pipe(photo_dir, method, kw)
        p.build()
        assert used == [native]
        results[native] = [[np.array(o.as_array()) for o in p.run()] for _ in range(6)]
    for a, b in zip(results[True], results[False]):
        for x, y in zip(a, b):
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))


def test_kmix_draw_only_where_it_draws_what_the_python_function_draws():
    spec = kmix._spec("dcutmix", k=3, alpha=1.0, num_classes=4, layout="HWC", mode="sample", prob=1.0, smoothing=0.0,
                      label_format="sparse", seed=5, shard_id=0, saliency="spectral-residual")
    assert kmix.native_draw(spec)
    assert kmix.native_draw(dataclasses.replace(spec, alpha=None, prob=None))  # per iteration: inputs of the op
    for change in (dict(saliency="fine-grained"), dict(shard_id=2 ** 63)):
        assert not kmix.native_draw(dataclasses.replace(spec, **change)), change
    assert kmix.native_draw(dataclasses.replace(spec, seed=2 ** 63))  # the seed reaches the draws through the keys

    @pipeline_def(batch_size=2, num_threads=1, device_id=None, seed=0)
    def pipe(alpha_node):
        x = fn.external_source(source=lambda: [np.zeros((4, 4, 3), np.uint8)] * 2, batch=True, layout="HWC")
        y = fn.external_source(source=lambda: [np.array([1], np.int32)] * 2, batch=True)
        alpha = fn.random.uniform(range=[0.5, 2.0]) if alpha_node else 1.0
        return kmix.dcutmix(x, y, k=3, alpha=alpha, num_classes=4, layout="HWC")

    assert b"KmixDraw" in pipe(False).serialize()
    assert b"KmixDraw" in pipe(True).serialize()  # alpha per iteration: an input of fn.kmix_draw


def _graph_op_names(pipe) -> set:
    """The operators of a built pipeline's graph by their DALI names (pipelines with a python_function do not
    serialize)."""
    return {type(op._op).__name__ for op in graph_operators(pipe._graph_out)}


@pytest.mark.parametrize("case", list(DRAW_CASES))
def test_kmix_draw_from_the_shapes_draws_what_gpu_pipelines_need(photo_dir, monkeypatch, case):
    # GPU pipelines draw from images.shape() (and Saliency-DCutMix's points found on the device): fn.kmix_draw with
    # shape_input, and the python_function it replaces there (_PluginRecordGivenCenters), against fn.kmix_draw
    # given the images (the CPU pipelines'). Run here in CPU pipelines, the route forced: every output bit for bit.
    method, kw = DRAW_CASES[case]
    real = kmix.native_draw
    results = {}
    for route, (shapes, native) in {"images": (False, True), "shapes-native": (True, True),
                                    "shapes-python": (True, False)}.items():
        used = []
        monkeypatch.setattr(kmix, "_draws_from_shapes", lambda images, shapes=shapes: shapes)
        monkeypatch.setattr(kmix, "native_draw", lambda spec, given_centers=False, native=native: used.append(
            (given_centers, native and real(spec, given_centers))) or used[-1][1])
        p = draw_pipe(photo_dir, method, kw)
        p.build()
        assert used == [(shapes, native)]
        ops = _graph_op_names(p)
        assert ("KmixDraw" in ops) == native and ("PythonFunction" in ops) == (
            not native or (shapes and method == "saliency-dcutmix"))  # the points: a function where the images are
        results[route] = [[np.array(o.as_array()) for o in p.run()] for _ in range(6)]
    for route in ("shapes-native", "shapes-python"):
        for a, b in zip(results[route], results["images"]):
            for x, y in zip(a, b):
                assert x.dtype == y.dtype and x.shape == y.shape, route
                np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8), err_msg=route)


@pytest.mark.parametrize("images, match", [
    ([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)],
     r"images: all samples of a batch must have the same H x W; sample 0 has shape \(4, 4, 3\) but sample 1 has "
     r"shape \(4, 5, 3\) \(layout HWC\); resize or crop before mixing"),
    ([np.zeros((0, 4, 3), np.uint8)] * 2, r"images: dcutmix needs images of at least 1 x 1 pixels"),
], ids=["two-sizes", "empty"])
@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_kmix_draw_from_the_shapes_names_bad_shapes(monkeypatch, images, match, native):
    # the checks of the images' shapes when only their shapes reach the drawing: the same messages either way
    real = kmix.native_draw
    monkeypatch.setattr(kmix, "_draws_from_shapes", lambda images: True)
    monkeypatch.setattr(kmix, "native_draw", lambda spec, given_centers=False: native and real(spec, given_centers))

    @pipeline_def(batch_size=2, num_threads=1, device_id=None, seed=0)
    def pipe():
        x = fn.external_source(source=lambda: images, batch=True, layout="HWC")
        y = fn.external_source(source=lambda: [np.array([1], np.int32)] * 2, batch=True)
        return kmix.dcutmix(x, y, k=3, num_classes=4, layout="HWC")

    p = pipe()
    p.build()
    assert ("KmixDraw" in _graph_op_names(p)) == native
    with pytest.raises(RuntimeError, match=match):
        p.run()


@pytest.mark.parametrize("shapes", [False, True], ids=["images", "shapes"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix", "saliency_dcutmix", "dmixup_or_dcutmix"])
def test_kmix_draw_takes_an_empty_batch(monkeypatch, method, shapes):
    # a zero-sample batch (a conditional split's empty side) draws nothing on either route
    monkeypatch.setattr(kmix, "_draws_from_shapes", lambda images: shapes)

    @pipeline_def(batch_size=2, num_threads=1, device_id=None, seed=0)
    def pipe():
        x = fn.external_source(source=lambda: [], batch=True, layout="HWC", dtype=types.UINT8, ndim=3)
        y = fn.external_source(source=lambda: [], batch=True, dtype=types.INT32, ndim=1)
        return getattr(kmix, method)(x, y, k=3, num_classes=4, layout="HWC")

    p = pipe()
    p.build()
    assert "KmixDraw" in _graph_op_names(p)
    assert [len(o) for o in p.run()] == [0, 0]


def test_kmix_draw_from_the_shapes_takes_any_saliency_method_given_the_points():
    # the points come given (found on the device), so the saliency method is not the operator's to support
    spec = kmix._spec("saliency-dcutmix", k=3, alpha=1.0, num_classes=4, layout="HWC", mode="sample", prob=1.0,
                      smoothing=0.0, label_format="sparse", seed=5, shard_id=0, saliency="fine-grained")
    assert not kmix.native_draw(spec) and kmix.native_draw(spec, given_centers=True)
    assert kmix.native_draw(dataclasses.replace(spec, seed=2 ** 63), given_centers=True)  # through the keys only


@pytest.mark.parametrize("labels,match", [
    ([np.array([1.5], np.float32)] * 2, r"labels must be integer class indices, got dtype float"),
    ([np.array([1, 2], np.int32)] * 2, r"labels must hold one value per sample, got shape \(2,\) for sample 0"),
    ([np.array([4], np.int64)] * 2, r"labels must lie in \[0, num_classes=4\), got label 4"),
], ids=["float", "two-values", "out-of-range"])
def test_kmix_draw_names_bad_labels(labels, match):
    @pipeline_def(batch_size=2, num_threads=1, device_id=None, seed=0)
    def pipe():
        x = fn.external_source(source=lambda: [np.zeros((4, 4, 3), np.uint8)] * 2, batch=True, layout="HWC")
        y = fn.external_source(source=lambda: labels, batch=True)
        return kmix.dcutmix(x, y, k=3, num_classes=4, layout="HWC")

    p = pipe()
    assert b"KmixDraw" in p.serialize()
    p.build()
    with pytest.raises(RuntimeError, match=match):
        p.run()


def test_kmix_draw_refuses_saliency_without_a_channel():
    # the salient points need a grey value: the message of dali_kmix.saliency.salient_points, not an internal error
    @pipeline_def(batch_size=2, num_threads=1, device_id=None, seed=0)
    def pipe():
        x = fn.external_source(source=lambda: [np.zeros((4, 4, 0), np.uint8)] * 2, batch=True, layout="HWC")
        y = fn.external_source(source=lambda: [np.array([1], np.int32)] * 2, batch=True)
        return kmix.saliency_dcutmix(x, y, k=3, num_classes=4, layout="HWC")

    p = pipe()
    assert b"KmixDraw" in p.serialize()
    p.build()
    with pytest.raises(RuntimeError, match=r"images: saliency needs at least one channel, but sample 0 has shape "
                                           r"\(4, 4, 0\) \(layout HWC\)"):
        p.run()


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


@pytest.mark.parametrize("value,expect", [("0", False), ("off", False), ("", True), ("1", True), (" 1 ", True),
                                          ("True", True)])  # empty is unset: the default, on
def test_env_values(monkeypatch, value, expect):
    monkeypatch.setenv("DALI_KMIX_PLUGIN", value)
    assert plugin.enabled() is expect


# --------------------------------------------------------------------------- fn.kmix_mix: either method per sample


def _mix_record(n, h, w, k, rng, mode="sample"):
    """A kmix_mix record (sources, weights, boxes, cut) with both methods present, and the reference output maker."""
    cut_rec = dali_kmix.sample_params("dcutmix", n, h, w, k=k, mode=mode, rng=rng)
    blend_rec = dali_kmix.sample_params("dmixup", n, h, w, k=k, mode=mode, rng=rng)
    cut = (rng.random(n) < 0.5).astype(np.uint8)
    cut[:2] = (0, 1)[:n]
    sources = np.where(cut[:, None] == 1, cut_rec.sources, blend_rec.sources).astype(np.int32)
    weights = np.where(cut[:, None] == 1, cut_rec.weights, blend_rec.weights).astype(np.float32)
    boxes = np.where(cut[:, None, None] == 1, cut_rec.boxes, 0).astype(np.int32)

    def want(images, layout):
        paste = reference.mix_images(images, dali_kmix.MixParams(sources, weights, boxes), layout)
        blend = reference.mix_images(images, dali_kmix.MixParams(sources, weights), layout)
        return np.stack([paste[i] if cut[i] else blend[i] for i in range(n)])

    return [sources, weights, boxes, cut], want


@pytest.mark.parametrize("k", [2, 3, 9], ids=lambda k: f"K{k}")
@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32], ids=["u8", "f16", "f32"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_kmix_mix_bit_exact_per_sample(layout, dtype, k):
    """Each sample is what kmix_dmixup or kmix_dcutmix gives it, by its own cut flag."""
    n, h, w, c = 9, 17, 23, 3
    rng = np.random.default_rng([k, n])
    images = random_images(rng, dtype, (n, h, w, c) if layout == "HWC" else (n, c, h, w))
    record, want = _mix_record(n, h, w, k, rng)
    out, passed = _apply("mix", images, record, layout)
    np.testing.assert_array_equal(out.as_array(), want(images, layout))
    np.testing.assert_array_equal(passed.as_array(), images)


# --------------------------------------------------------------------------- the normalisation fused into the mix

MEAN, STD = [0.485 * 255, 0.456 * 255, 0.406 * 255], [0.229 * 255, 0.224 * 255, 0.225 * 255]


def _record_inputs(method, n, h, w, k, rng):
    if method == "mix":
        return _mix_record(n, h, w, k, rng)[0]
    return _rec(dali_kmix.sample_params(method, n, h, w, k=k, rng=rng))


def _fused_and_unfused(method, images, record, layout, norm, *, mirror=None, device="cpu", num_threads=3):
    """``(fused output, crop_mirror_normalize of the unfused output, images passed through)`` of one batch:
    fn.kmix_<method> with the normalisation arguments ``norm`` against fn.kmix_<method> then
    fn.crop_mirror_normalize with the same arguments; ``mirror`` per sample as an argument input (or in ``norm``)."""
    n = len(images)

    @pipeline_def(batch_size=n, num_threads=num_threads, device_id=0 if device == "gpu" else None)
    def pipe():
        ims = fn.external_source(source=_constant(images), batch=True, layout=layout)
        rec = [fn.external_source(source=_constant(a), batch=True) for a in record]
        kw = dict(norm)
        if mirror is not None:
            kw["mirror"] = fn.external_source(source=_constant(mirror), batch=True)
        op = getattr(fn, OPS[method])
        x = ims.gpu() if device == "gpu" else ims
        unfused = fn.crop_mirror_normalize(op(x, *rec, layout=layout), **{"output_layout": layout, **kw})
        return op(x, *rec, layout=layout, **kw), unfused, ims

    p = pipe()
    p.build()
    fused, unfused, passed = p.run()
    if device == "gpu":
        fused, unfused = fused.as_cpu(), unfused.as_cpu()
    return fused, unfused, passed


def _assert_cmn_bits(got, want):
    """``got`` (the fused output) has the bits of ``want`` (crop_mirror_normalize's): float32 all of them; float16
    all but exact ties, which the fused operator rounds to even (as NumPy, the GPU's __float2half_rn and DALI's GPU
    crop_mirror_normalize) and DALI's CPU crop_mirror_normalize away from zero (its half_float conversion): there
    the two are neighbours, the fused one even and the other one larger in magnitude."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.dtype == np.float32:
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
        return
    g, w = got.view(np.uint16), want.view(np.uint16)
    off = g != w
    assert np.all(np.abs(g[off].astype(np.int32) - w[off].astype(np.int32)) == 1)
    assert np.all(g[off] % 2 == 0) and np.all(np.abs(want[off]) > np.abs(got[off]))
    assert off.mean() < 0.01, f"{off.sum()} of {off.size} differ"


#: Normalisation cases: the operator's arguments, and whether the mirror comes per sample as an argument input.
FUSED_CASES = {
    "f32-CHW-mirror-input": (dict(dtype=types.FLOAT, output_layout="CHW", mean=MEAN, std=STD), True),
    "f16-HWC-mirror-1": (dict(dtype=types.FLOAT16, output_layout="HWC", mean=MEAN, std=STD, mirror=1), False),
    "f32-own-layout-scalar-mean-std": (dict(dtype=types.FLOAT, mean=[127.5], std=[64.0]), False),
}


def fused_grid(test):
    """Every method x layout x input dtype x normalisation case."""
    for name, values, ids in (("case", list(FUSED_CASES), None),
                              ("dtype", [np.uint8, np.float16, np.float32], ["u8", "f16", "f32"]),
                              ("layout", ["HWC", "CHW"], None), ("method", ["dmixup", "dcutmix", "mix"], None)):
        test = pytest.mark.parametrize(name, values, ids=ids)(test)
    return test


def _fused_inputs(method, layout, dtype, case, n, h, w, c, k):
    """``(norm arguments, images, record inputs, mirror flags or None)`` of one fused case."""
    norm, mirror_input = FUSED_CASES[case]
    rng = np.random.default_rng([n, h, len(method), len(case)])
    images = random_images(rng, dtype, (n, h, w, c) if layout == "HWC" else (n, c, h, w))
    record = _record_inputs(method, n, h, w, k, rng)
    mirror = (rng.random(n) < 0.5).astype(np.int32) if mirror_input else None
    if c != 3:
        norm = {**norm, "mean": [127.5], "std": [64.0]}
    return norm, images, record, mirror


@fused_grid
def test_fused_normalisation_gives_the_bits_of_crop_mirror_normalize_after_the_mix(method, layout, dtype, case):
    n, h, w, c, k = 7, 19, 23, 3, 4
    norm, images, record, mirror = _fused_inputs(method, layout, dtype, case, n, h, w, c, k)
    fused, unfused, passed = _fused_and_unfused(method, images, record, layout, norm, mirror=mirror)
    out_layout = norm.get("output_layout", layout)
    assert fused.layout() == out_layout
    got, want = fused.as_array(), unfused.as_array()
    assert got.dtype == (np.float16 if norm["dtype"] == types.FLOAT16 else np.float32)
    assert got.shape == ((n, h, w, c) if out_layout == "HWC" else (n, c, h, w))
    _assert_cmn_bits(got, want)
    np.testing.assert_array_equal(passed.as_array(), images)  # the input is not written
    if method == "dcutmix":  # and the reference's, for one more independent reading
        params = dali_kmix.MixParams(*record[:1], area_weights(record[1], h, w), record[1])
        ref = reference.normalize(reference.mix_images(images, params, layout), norm["mean"], norm["std"],
                                  layout=layout, out_layout=out_layout, dtype=got.dtype,
                                  mirror=mirror if mirror is not None else np.full(n, norm.get("mirror", 0)))
        assert np.array_equal(got.view(np.uint8), ref.view(np.uint8))


@pytest.mark.parametrize("threads", [1, 4])
def test_fused_normalisation_over_thread_counts_and_a_wide_image(threads):
    """Bands of one row (a row of 6000 x 3 float32 is more than the 16 KiB a band holds) and 65 samples."""
    rng = np.random.default_rng(threads)
    images = random_images(rng, np.float32, (65, 3, 5, 1500))
    record = _record_inputs("mix", 65, 5, 1500, 9, rng)
    norm = dict(dtype=types.FLOAT, output_layout="HWC", mean=MEAN, std=STD)
    fused, unfused, _ = _fused_and_unfused("mix", images, record, "CHW", norm, mirror=np.arange(65, dtype=np.int32) % 2,
                                           num_threads=threads)
    _assert_cmn_bits(fused.as_array(), unfused.as_array())


#: Bad normalisation arguments -> the message (on the CPU operator; the GPU one reads them in the same code).
BAD_NORM = {
    "dtype-int32": (dict(dtype=types.INT32), r"dtype must be FLOAT or FLOAT16 \(the normalised images\), got int32"),
    "mean-without-dtype": (dict(mean=MEAN), r"mean belongs to the normalisation fused into the mix: give "
                                             r"dtype=types.FLOAT or types.FLOAT16 with it"),
    "mirror-without-dtype": (dict(mirror=1), r"mirror belongs to the normalisation fused into the mix"),
    "std-0": (dict(dtype=types.FLOAT, std=[1.0, 0.0, 1.0]), r"std must be > 0 and finite, got 0"),
    "mean-inf": (dict(dtype=types.FLOAT, mean=[float("inf")]), r"mean must be finite, got inf"),
    "mean-2-of-3-channels": (dict(dtype=types.FLOAT, mean=[1.0, 2.0]),
                             r"mean has 2 values but the images have 3 channels \(give one value, or one per "
                             r"channel\)"),
    "output-layout": (dict(dtype=types.FLOAT, output_layout="NCHW"), r"output_layout must be \"HWC\" or \"CHW\", "
                                                                     r"got \"NCHW\""),
}


@pytest.mark.parametrize("name", list(BAD_NORM))
def test_fused_normalisation_names_bad_arguments(name):
    norm, match = BAD_NORM[name]
    images, p = _record()

    @pipeline_def(batch_size=len(images), num_threads=1, device_id=None)
    def pipe():
        ims = fn.external_source(source=_constant(images), batch=True, layout="HWC")
        rec = [fn.external_source(source=_constant(a), batch=True) for a in _rec(p)]
        return fn.kmix_dcutmix(ims, *rec, layout="HWC", **norm)

    with pytest.raises(RuntimeError, match=match):
        q = pipe()
        q.build()
        q.run()


# --------------------------------------------------------------------------- how the plugin is built


def _fake_toolkit(root, *, nvcc=True, headers=True, cudart=True, release=None):
    """A CUDA toolkit folder that holds what cuda_toolchain looks for (an nvcc that reports its TOP, and with
    ``release`` its version, as ``nvcc --version`` prints it)."""
    (root / "bin").mkdir(parents=True)
    if nvcc:
        version = (f'if [ "$1" = --version ]; then echo "Cuda compilation tools, release {release}, '
                   f'V{release}.1"; exit 0; fi\n') if release else ""
        (root / "bin" / "nvcc").write_text(f"#!/bin/sh\n{version}echo '#$ TOP={root}/bin/..' >&2\n")
        (root / "bin" / "nvcc").chmod(0o755)
    if headers:
        (root / "include" / "crt").mkdir(parents=True)
        (root / "include" / "cuda_runtime_api.h").write_text("")
        (root / "include" / "crt" / "host_config.h").write_text("")
    if cudart:
        (root / "lib64").mkdir()
        (root / "lib64" / "libcudart.so").write_text("")
    return root


@pytest.fixture()
def toolchain_env(tmp_path, monkeypatch):
    """No CUDA toolchain anywhere but where the test puts one."""
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site")])
    monkeypatch.setattr(plugin, "_dali_cuda_major", lambda: "13")
    plugin.cuda_toolchain.cache_clear()
    yield tmp_path
    plugin.cuda_toolchain.cache_clear()


def test_an_nvcc_of_another_cuda_major_than_dalis_is_skipped_with_a_warning(toolchain_env, monkeypatch):
    old, new = (_fake_toolkit(toolchain_env / f"cuda-{r}", release=r).resolve() for r in ("12.4", "13.0"))
    monkeypatch.setenv("CUDA_HOME", str(old))
    monkeypatch.setenv("CUDA_PATH", str(new))
    with pytest.warns(RuntimeWarning, match=r"cuda-12.4/bin/nvcc: it is CUDA 12.4, and DALI is built for CUDA 13"):
        tc, missing = plugin.cuda_toolchain()
    assert missing == "" and tc.nvcc == str(new / "bin" / "nvcc")


def test_a_cuda_home_without_nvcc_is_named_in_a_warning(toolchain_env, monkeypatch):
    (toolchain_env / "not-cuda").mkdir()
    monkeypatch.setenv("CUDA_HOME", str(toolchain_env / "not-cuda"))
    with pytest.warns(RuntimeWarning, match=r"CUDA_HOME='.*not-cuda' has no bin/nvcc"):
        tc, missing = plugin.cuda_toolchain()
    assert tc is None and missing.startswith("nvcc not found")


def test_the_toolchain_is_found_under_cuda_home_with_what_it_lacks_named(toolchain_env, monkeypatch):
    tc, missing = plugin.cuda_toolchain()
    assert tc is None and missing.startswith("nvcc not found (looked in $CUDA_HOME/bin, $CUDA_PATH/bin, PATH")
    root = _fake_toolkit(toolchain_env / "cuda").resolve()
    monkeypatch.setenv("CUDA_HOME", str(root))
    plugin.cuda_toolchain.cache_clear()
    assert plugin.cuda_toolchain() == (plugin.CudaToolchain(str(root / "bin" / "nvcc"), str(root / "include"),
                                                             str(root / "lib64" / "libcudart.so")), "")
    (root / "lib64" / "libcudart.so").unlink()
    plugin.cuda_toolchain.cache_clear()
    tc, missing = plugin.cuda_toolchain()
    assert tc is None and missing.startswith("no libcudart.so next to")


def test_the_toolchain_is_found_in_pips_cuda_compiler_package(toolchain_env):
    """nvidia-cuda-nvcc of DALI's CUDA major (nvidia/cu13/bin/nvcc), its runtime in nvidia/cu13/lib."""
    root = _fake_toolkit(toolchain_env / "site" / "nvidia" / "cu13", cudart=False).resolve()
    (root / "lib").mkdir()
    (root / "lib" / "libcudart.so.13").write_text("")
    tc, missing = plugin.cuda_toolchain()
    assert missing == "" and tc.nvcc == str(root / "bin" / "nvcc")
    assert tc.cudart == str(root / "lib" / "libcudart.so.13")


def _record_builds(monkeypatch):
    calls = []

    def fake(name, sources, flags, *, libs=(), announce=None, **kw):
        calls.append(dict(name=name, sources=list(map(str, sources)), flags=list(flags), libs=list(libs),
                          announce=announce, **kw))
        return Path("/nowhere") / name

    monkeypatch.setattr(plugin, "compile_cached", fake)
    return calls


def test_without_nvcc_the_cpu_only_plugin_is_built_after_one_warning(monkeypatch):
    calls = _record_builds(monkeypatch)
    monkeypatch.setattr(plugin, "cuda_toolchain", lambda: (None, "nvcc not found (looked in PATH)"))
    with pytest.warns(plugin.NoGpuBackendWarning) as caught:
        plugin.build()
    assert [str(w.message) for w in caught] == [
        "dali_kmix: the DALI plugin is built without its GPU backend: nvcc not found (looked in PATH)"]
    (link,) = calls
    assert "-DKMIX_WITH_GPU" not in link["flags"] and not any("cudart" in x for x in link["libs"])
    with pytest.raises(FileNotFoundError, match="GPU backend of the DALI plugin cannot be built: nvcc not found"):
        plugin.build(gpu=True)


def test_with_nvcc_the_backend_object_is_linked_in_and_the_build_announced_once(monkeypatch, capsys):
    calls = _record_builds(monkeypatch)
    tc = plugin.CudaToolchain("/cuda/bin/nvcc", str(cuda_include_dirs()[-1]), "/cuda/lib64/libcudart.so")
    monkeypatch.setattr(plugin, "cuda_toolchain", lambda: (tc, ""))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plugin.build()
    obj, link = calls
    assert obj["name"] == "kmix_gpu_launch.o" and obj["compiler_cmd"] == "/cuda/bin/nvcc"
    assert obj["flags"] == plugin.nvcc_flags() and obj["sources"][0].endswith("kmix_gpu_launch.cu")
    assert "-gencode=arch=compute_80,code=sm_80" in obj["flags"] and "-gencode=arch=compute_90,code=compute_90" in \
        obj["flags"]
    assert "-DKMIX_WITH_GPU" in link["flags"] and f"-isystem{tc.include}" in link["flags"]
    assert link["libs"][:2] == ["/nowhere/kmix_gpu_launch.o", tc.cudart]
    assert {Path(p).name for p in link["inputs"]} >= set(plugin.SOURCES) | {"kmix_gpu_launch.o"}
    assert "dali 2." in link["key_extra"]
    obj["announce"]()
    link["announce"]()  # the object and the library share one announcement
    assert capsys.readouterr().err == \
        "dali_kmix: building the DALI plugin (CPU+GPU), about a minute, once per version...\n"


def test_a_failing_nvcc_falls_back_to_the_cpu_only_plugin(monkeypatch):
    calls = _record_builds(monkeypatch)
    tc = plugin.CudaToolchain("/cuda/bin/nvcc", str(cuda_include_dirs()[-1]), "/cuda/lib64/libcudart.so")
    monkeypatch.setattr(plugin, "cuda_toolchain", lambda: (tc, ""))

    def broken(*a, **kw):
        raise RuntimeError("building the GPU backend failed: simulated nvcc error")

    monkeypatch.setattr(plugin, "_build_gpu_object", broken)
    with pytest.warns(plugin.NoGpuBackendWarning, match="simulated nvcc error"):
        plugin.build()
    (link,) = calls
    assert "-DKMIX_WITH_GPU" not in link["flags"]


# --------------------------------------------------------------------------- the GPU backend, without a device


@needs_gpu_backend
def test_the_gpu_backend_is_built_and_registered_with_dali():
    from nvidia.dali import backend

    assert plugin.gpu_backend()
    assert set(plugin.OPERATORS) <= set(backend.RegisteredGPUOps())
    assert set(plugin.OPERATORS) <= set(backend.RegisteredCPUOps())


def _runs_on(images, cc):
    """Whether a device of compute capability ``cc`` (e.g. 86) can run one of ``images``: a cubin of the same
    major version and a minor version no newer, or PTX of an architecture no newer (the driver compiles it)."""
    return any((kind == "elf" and arch // 10 == cc // 10 and arch <= cc) or (kind == "ptx" and arch <= cc)
               for kind, arch in images)


@needs_gpu_backend
def test_the_gpu_backend_holds_sm75_sm80_sm90_and_ptx_built_without_a_warning():
    flags = plugin.nvcc_flags()
    assert set(FP_OPTIONS) <= set(flags) and not any("fast" in f or "ftz=true" in f for f in flags)
    obj = plugin.gpu_object()
    images = plugin.fatbin_images(obj)
    assert sorted((kind, arch) for kind, arch, _ in images) == [("elf", 75), ("elf", 80), ("elf", 90), ("ptx", 90)]
    assert all(body[:4] == b"\x7fELF" for kind, _, body in images if kind == "elf")
    lib = plugin.build()
    for path in (obj, lib):  # the compilers' own output, kept beside what they built: nothing
        assert Path(f"{path}.log").is_file(), path
        assert build_log(path) == "", build_log(path)


@needs_gpu_backend
def test_every_architecture_the_cuda_toolkit_supports_can_run_the_gpu_backend():
    """The GPU operators are chosen from the registered operators alone, never from the device, so every device
    this CUDA supports (``nvcc --list-gpu-code``: Turing's sm_75 and up for CUDA 13, a T4 among them) must find
    code it can run in the object; the operator would otherwise fail every batch with "no kernel image"."""
    listed = subprocess.run([plugin.cuda_toolchain()[0].nvcc, "--list-gpu-code"], capture_output=True, text=True,
                            check=True).stdout.split()
    ccs = sorted(int(a[3:]) for a in listed if re.fullmatch(r"sm_\d+", a))
    assert ccs, listed
    images = [(kind, arch) for kind, arch, _ in plugin.fatbin_images(plugin.gpu_object())]
    assert [cc for cc in ccs if not _runs_on(images, cc)] == []
    assert not _runs_on([("elf", 80), ("elf", 90), ("ptx", 90)], 75)  # the old sm_80 + sm_90 + PTX 9.0 object


def _ptx_lines(text):
    """The PTX's statements, without comments and layout (the fat binary keeps neither)."""
    lines = (" ".join(ln.split()) for ln in text.replace("\0", "").splitlines())
    return [ln for ln in lines if ln and not ln.startswith("//")]


@needs_gpu_backend
def test_the_gpu_backend_ptx_keeps_ieee_semantics():
    """No .ftz, fma only where the source calls fmaf: in nvcc's PTX of the backend's own translation unit and
    options, which is the PTX the plugin ships (compared where the zstd tool can unpack the shipped image)."""
    ptx = plugin.gpu_ptx()
    # kmix_dmixup, kmix_dcutmix, kmix_mix x uint8, __half, float; kmix_mix_norm x those x float, __half out
    assert_ieee_ptx(ptx, entries=15)
    (shipped,) = [body for kind, _, body in plugin.fatbin_images(plugin.gpu_object()) if kind == "ptx"]
    if shipped[:4] == b"\x28\xb5\x2f\xfd":  # zstd
        if shutil.which("zstd") is None:
            return
        shipped = subprocess.run(["zstd", "-d", "-c"], input=shipped, capture_output=True, check=True).stdout
    assert _ptx_lines(shipped.decode()) == _ptx_lines(ptx)


def _gpu_graph(record_device="cpu"):
    """A GPU pipeline with the three native operators on GPU images (defined, not built)."""
    from nvidia.dali import Pipeline

    n = 4
    pipe = Pipeline(batch_size=n, num_threads=1, device_id=0)
    with pipe:
        ims = fn.external_source(source=_constant(np.zeros((n, 8, 8, 3), np.uint8)), batch=True, layout="HWC").gpu()
        src = fn.external_source(source=_constant(np.tile(np.arange(n, dtype=np.int32)[:, None], (1, 2))), batch=True)
        w = fn.external_source(source=_constant(np.full((n, 2), 0.5, np.float32)), batch=True)
        b = fn.external_source(source=_constant(np.zeros((n, 1, 4), np.int32)), batch=True)
        cut = fn.external_source(source=_constant(np.zeros((n, 1), np.uint8)), batch=True)
        if record_device == "gpu":
            src = src.gpu()
        outs = [fn.kmix_dmixup(ims, src, w, layout="HWC"), fn.kmix_dcutmix(ims, src, b, layout="HWC"),
                fn.kmix_mix(ims, src, w, b, cut, layout="HWC")]
        pipe.set_outputs(*outs)
    return pipe, outs


@needs_gpu_backend
@pytest.mark.skipif(gpu_available(), reason="checks what happens without a device")
def test_gpu_pipelines_are_defined_and_fail_to_build_only_for_want_of_a_device():
    pipe, outs = _gpu_graph()
    for out, schema in zip(outs, ("KmixDmixup", "KmixDcutmix", "KmixMix")):
        op = out.source
        assert out.device == "gpu" and op._op.device == "gpu" and type(op._op).__name__ == schema
        assert [i.device for i in op.inputs] == ["gpu"] + ["cpu"] * (len(op.inputs) - 1)
    with pytest.raises(RuntimeError, match=r"CUDA is not available|no CUDA-capable device"):
        pipe.build()


def test_a_gpu_record_input_is_refused_when_the_pipeline_is_defined():
    if not plugin.gpu_backend():
        pytest.skip("no GPU backend here")
    with pytest.raises(RuntimeError, match=r"The input 1 for gpu operator `nvidia.dali.fn.kmix_dmixup` is stored on "
                                           r"incompatible device \"gpu\". Valid device is \"cpu\""):
        _gpu_graph(record_device="gpu")


@pytest.mark.slow  # a process of its own
@needs_gpu_backend
def test_the_plugin_loads_in_a_process_without_a_gpu(tmp_path):
    script = (
        "import sys; from nvidia.dali import backend\n"
        "from dali_kmix.backends import plugin, gpu_available\n"
        "assert not gpu_available()\n"
        "assert plugin.gpu_backend(), 'no GPU backend'\n"
        "print(sorted(o for o in backend.RegisteredGPUOps() if o.startswith('Kmix')))\n")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "['KmixDcutmix', 'KmixDmixup', 'KmixMix']" in proc.stdout


# --------------------------------------------------------------------------- the GPU backend on a device


GPU_SHAPES = {2: (37, 45, 3), 3: (225, 227, 3), 9: (5, 7, 1)}  # odd sizes, one per K


def _both_backends(method, images, record, layout):
    """``(cpu output, gpu output, images passed through)`` of fn.kmix_<method> on the same batch and record."""
    n = len(images)

    @pipeline_def(batch_size=n, num_threads=3, device_id=0)
    def pipe():
        ims = fn.external_source(source=_constant(images), batch=True, layout=layout)
        rec = [fn.external_source(source=_constant(a), batch=True) for a in record]
        op = getattr(fn, OPS[method])
        return op(ims, *rec, layout=layout), op(ims.gpu(), *rec, layout=layout), ims

    p = pipe()
    p.build()
    cpu_out, gpu_out, passed = p.run()
    assert gpu_out.layout() == layout
    return cpu_out.as_array(), gpu_out.as_cpu().as_array(), passed.as_array()


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["sample", "batch"])
@pytest.mark.parametrize("k", [2, 3, 9], ids=lambda k: f"K{k}")
@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32], ids=["u8", "f16", "f32"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix", "mix"])
def test_gpu_operator_equals_the_cpu_operator_bit_for_bit(method, layout, dtype, k, mode):
    h, w, c = GPU_SHAPES[k]
    n = 7
    rng = np.random.default_rng([k, h, n])
    images = random_images(rng, dtype, (n, h, w, c) if layout == "HWC" else (n, c, h, w))
    if method == "mix":
        record, want = _mix_record(n, h, w, k, rng, mode)
        expect = want(images, layout)
    else:
        params = dali_kmix.sample_params(method, n, h, w, k=k, mode=mode, rng=rng)
        record, expect = _rec(params), reference.mix_images(images, params, layout)
    on_cpu, on_gpu, passed = _both_backends(method, images, record, layout)
    assert on_gpu.dtype == images.dtype and on_gpu.shape == images.shape
    np.testing.assert_array_equal(on_gpu, on_cpu)
    np.testing.assert_array_equal(on_gpu, expect)
    np.testing.assert_array_equal(passed, images)  # the input is not written


def _edge_case(case):
    """``(images, record inputs, MixParams, layout)`` of one edge case of the GPU operator (DCutMix)."""
    if case == "N1-1x1":
        boxes = np.array([[(0, 0, 1, 1), (0, 0, 0, 0)]], np.int32)
        params = dali_kmix.MixParams(np.zeros((1, 3), np.int32), area_weights(boxes, 1, 1), boxes)
        return random_images(np.random.default_rng(1), np.uint8, (1, 1, 1, 1)), _rec(params), params, "HWC"
    if case == "edge-boxes":
        params = _edge_boxes()
        return random_images(np.random.default_rng(2), np.uint8, (5, 9, 11, 3)), _rec(params), params, "HWC"
    n = int(case[1:])
    params = dali_kmix.sample_params("dcutmix", n, 19, 21, k=4, rng=n)
    return random_images(np.random.default_rng(n), np.float16, (n, 3, 19, 21)), _rec(params), params, "CHW"


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["N1-1x1", "edge-boxes", "N65", "N300"])
def test_gpu_operator_edge_records_and_batch_sizes(case):
    images, record, params, layout = _edge_case(case)
    on_cpu, on_gpu, _ = _both_backends("dcutmix", images, record, layout)
    np.testing.assert_array_equal(on_gpu, on_cpu)
    np.testing.assert_array_equal(on_gpu, reference.mix_images(images, params, layout))


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(BAD_RECORDS))
def test_record_errors_on_the_gpu_operator(name):
    raised = _operator_error(name, "gpu")
    if name not in DTYPE_NAMES_DIFFER:
        assert _host_message(name) in raised


@pytest.mark.gpu
@fused_grid
def test_gpu_fused_normalisation_equals_the_cpu_operator_and_crop_mirror_normalize(method, layout, dtype, case):
    k = 3 if method == "mix" else 9
    norm, images, record, mirror = _fused_inputs(method, layout, dtype, case, 7, *GPU_SHAPES[k], k)
    on_gpu, gpu_unfused, passed = _fused_and_unfused(method, images, record, layout, norm, mirror=mirror,
                                                     device="gpu")
    on_cpu, _, _ = _fused_and_unfused(method, images, record, layout, norm, mirror=mirror)
    assert on_gpu.layout() == on_cpu.layout()
    for other in (on_cpu, gpu_unfused):  # DALI's GPU crop_mirror_normalize rounds float16 to even, as both do
        assert np.array_equal(on_gpu.as_array().view(np.uint8), other.as_array().view(np.uint8))
    np.testing.assert_array_equal(passed.as_array(), images)


@pytest.mark.gpu
def test_a_failing_gpu_operator_then_a_working_pipeline():
    """A refused record leaves nothing behind: the next GPU pipeline of the process runs and is right."""
    for name in ("box-out-of-the-image", "source-out-of-range", "weight-nan"):
        _operator_error(name, "gpu")
    images, p = _record()
    out, _ = _apply("dcutmix", images, _rec(p), "HWC", device="gpu", iters=3)
    np.testing.assert_array_equal(out.as_array(), reference.mix_images(images, p, "HWC"))


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
