"""Property-based tests (Hypothesis) of the DALI operators on the CPU: ``dali_kmix.dali.*`` on both paths
(plugin and python_function) and the native ``fn.kmix_dmixup`` / ``fn.kmix_dcutmix`` / ``fn.kmix_mix`` fed
records directly.

Every batch -- 1 to 9 samples of 0 to 40 pixels a side, 1/3/4 channels, uint8/float16/float32 (and wrong
dtypes), HWC/CHW, NaN and Inf in float images, K = 2/3/5, alpha and prob per iteration from DataNodes, labels
in and out of range -- gives either the right output or an error naming the argument:

* ``dali_kmix.dali.*``: the record each batch drew (captured where the operator draws it) is valid, DCutMix
  weights are exactly its box areas, each sample its own anchor; the images are bit for bit the NumPy
  reference applied to that record; the targets are the reference's (finite, >= 0, rows summing to 1);
  ``prob=0`` is the identity;
* ``fn.kmix_*``: a record within the operator's contract gives the reference's output bit for bit; a record
  spoilt one way (anchor, index out of range, negative/NaN/Inf weight, box outside, inverted, not nested,
  cut flag > 1) raises an error naming the input.

A DALI pipeline costs ~50-100 ms to build, so pipelines are built once per (operator, dtype, layout, K, ...)
and reused across examples: their external sources read the next batch from a mutable :class:`Feed`
(``exec_async=False, exec_pipelined=False, prefetch_queue_depth=1``: one iteration per ``run()``, drawn when
it is called). A pipeline that raised is dropped (DALI invalidates it).
"""

import collections
import contextlib
import os
from unittest import mock

import numpy as np
import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

pytest.importorskip("nvidia.dali")

from nvidia.dali import fn, pipeline_def, types  # noqa: E402

import dali_kmix.dali as kmix  # noqa: E402
from dali_kmix import dali as kd  # noqa: E402
from dali_kmix import reference  # noqa: E402
from dali_kmix.backends import plugin  # noqa: E402
from dali_kmix.record import MixParams, area_weights  # noqa: E402

from _strategies import (BAD_INT, BAD_LAYOUT, BAD_MODE, BAD_PROB, BAD_SMOOTHING, DTYPES, SPECIALS,  # noqa: E402
                         Arg, alphas, arg, bad_alpha, budget, corrupted, corruptions_for, fill, message_names,
                         pick_bad, records, same_bits, sides)

# NaN and Inf pixels are drawn on purpose: NumPy's "invalid value" warnings about them are expected here
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

NUM_CLASSES = 12
MAX_BATCH = 9
DALI_TYPES = {np.dtype(np.uint8): types.UINT8, np.dtype(np.float16): types.FLOAT16, np.dtype(np.float32): types.FLOAT,
              np.dtype(np.float64): types.FLOAT64, np.dtype(np.int32): types.INT32, np.dtype(np.int64): types.INT64}
OPERATORS = ("dmixup", "dcutmix", "saliency_dcutmix", "dmixup_or_dcutmix")
DTYPE_ERROR = "images must have dtype uint8, float16 or float32"


@pytest.fixture(scope="module", autouse=True)
def plugin_loads():
    from dali_kmix.backends import cpu
    from dali_kmix.backends.sources import cuda_include_dirs

    if cpu.compiler() is None or not cuda_include_dirs():
        pytest.skip("no C++ compiler or CUDA runtime headers: the plugin cannot be built here")
    assert plugin.load(), "the dali_kmix DALI plugin did not load"


class Feed:
    """What the external sources of a cached pipeline give on its next iteration."""

    def __getattr__(self, name):
        raise AttributeError(f"nothing fed for {name!r}")


class Pipelines:
    """Built pipelines by key, the least recently used dropped beyond ``size`` (each holds threads)."""

    def __init__(self, size=16):
        self.size = size
        self.cache = collections.OrderedDict()

    def get(self, key, make):
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        entry = make()
        self.cache[key] = entry
        while len(self.cache) > self.size:
            self.cache.popitem(last=False)
        return entry

    def drop(self, key):
        self.cache.pop(key, None)


PIPES = Pipelines()
SYNC = dict(num_threads=2, device_id=None, exec_async=False, exec_pipelined=False, prefetch_queue_depth=1)


@contextlib.contextmanager
def plugin_env(path):
    """The path is chosen when the operator is defined: DALI_KMIX_PLUGIN=0 selects python_function."""
    old = os.environ.get("DALI_KMIX_PLUGIN")
    os.environ["DALI_KMIX_PLUGIN"] = "1" if path == "plugin" else "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["DALI_KMIX_PLUGIN"]
        else:
            os.environ["DALI_KMIX_PLUGIN"] = old


# --------------------------------------------------------------------------- dali_kmix.dali.* on both CPU paths


#: How a plugin-path pipeline draws its record: ``fn.kmix_draw`` given the images; the ``python_function`` instead
#: (the twin whose Python drawing the test captures); ``fn.kmix_draw`` given the images' shapes (and the salient
#: points found beside it), as GPU pipelines draw.
DRAWS = {"native": contextlib.nullcontext,
         "python": lambda: mock.patch.object(kmix, "native_draw", lambda spec, given_centers=False: False),
         "shapes": lambda: mock.patch.object(kmix, "_draws_from_shapes", lambda images: True)}


def operator_pipeline(key, draw="native", feed=None):
    """The pipeline of ``key`` and its feed; ``draw`` (:data:`DRAWS`) says how the plugin path draws."""
    path, method, dtype, layout, k, mode, label_format, smoothing = key
    feed = feed or Feed()

    def make():
        @pipeline_def(batch_size=MAX_BATCH, seed=11, **SYNC)
        def pipe():
            ims = fn.external_source(source=lambda: feed.images, batch=True, layout=layout, dtype=DALI_TYPES[dtype],
                                     ndim=3)
            lab = fn.external_source(source=lambda: feed.labels, batch=True, dtype=types.INT32, ndim=1)
            prob = fn.external_source(source=lambda: feed.prob, batch=True, dtype=types.FLOAT64, ndim=1)
            kw = dict(k=k, num_classes=NUM_CLASSES, layout=layout, mode=mode, prob=prob, smoothing=smoothing,
                      label_format=label_format)
            if method == "dmixup_or_dcutmix":  # two alphas: fixed ones (a DataNode alpha is refused)
                outs = kmix.dmixup_or_dcutmix(ims, lab, alpha=0.7, cutmix_alpha=1.3, switch_prob=0.5, **kw)
            else:
                alpha = fn.external_source(source=lambda: feed.alpha, batch=True, dtype=types.FLOAT64, ndim=1)
                outs = getattr(kmix, method)(ims, lab, alpha=alpha, **kw)
            feed.native = any("Kmix" in o.name for o in outs)
            return outs

        with plugin_env(path), DRAWS[draw]():
            p = pipe()
        p.build()
        assert feed.native == (path == "plugin"), "the operator did not take the path asked for"
        return p, feed

    return PIPES.get(("op", draw) + key, make)


def _event(text):
    try:
        event(text)
    except Exception:  # noqa: BLE001 - outside a Hypothesis test (a plain test reusing the runner)
        pass


@st.composite
def operator_cases(draw, path, method):
    wrong = draw(st.sampled_from([False] * 11 + [True]))
    dtype = np.dtype(draw(st.sampled_from((np.float64, np.int32) if wrong else DTYPES)))
    layout = draw(st.sampled_from(["HWC", "CHW"]))
    k = draw(st.sampled_from([2, 3, 5]))
    mode = draw(st.sampled_from(["sample", "batch"]))
    label_format, smoothing = draw(st.sampled_from([("dense", 0.0), ("dense", 0.1), ("sparse", 0.0)]))
    iters = []
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, MAX_BATCH))
        h, w, c = draw(sides(1, 40)), draw(sides(1, 40)), draw(st.sampled_from([1, 3, 4]))
        h, w = draw(st.sampled_from([(h, w)] * 11 + [(0, w), (h, 0), (0, 0)]))  # zero-area samples, now and then
        shape = (h, w, c) if layout == "HWC" else (c, h, w)
        x = fill(np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1))), dtype, (n,) + shape)
        if dtype in SPECIALS and x.size and draw(st.booleans()):
            for _ in range(draw(st.integers(1, 3))):
                x.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from(SPECIALS[dtype]))
        spoil = draw(st.sampled_from([None] * 21 + ["labels", "alpha", "prob"]))
        labels = np.random.default_rng(draw(st.integers(0, 99))).integers(0, NUM_CLASSES, n)
        if spoil == "labels":
            labels[draw(st.integers(0, n - 1))] = draw(st.sampled_from([NUM_CLASSES, -1, 2 ** 31 - 1]))
        alpha = draw(st.one_of(alphas(), st.lists(alphas(), min_size=k, max_size=k)))
        if spoil == "alpha":
            alpha = draw(st.sampled_from([0.0, -1.0, np.nan, np.inf, [1.0] * (k + 1)]))
        prob = draw(st.sampled_from([0.0, 0.5, 1.0]))
        if spoil == "prob":
            prob = draw(st.sampled_from([-0.5, 1.5, np.nan]))
        if spoil == "alpha" and method == "dmixup_or_dcutmix":
            spoil = None  # its alphas are fixed at definition
        iters.append(dict(images=x, labels=labels.astype(np.int32), alpha=alpha, prob=prob, spoil=spoil))
    return dict(key=(path, method, dtype, layout, k, mode, label_format, smoothing), iters=iters)


def expected_error(case, it):
    """The words the error of iteration ``it`` must contain (any of them), or None when it must succeed."""
    path, method, dtype, layout = case["key"][:4]
    x = it["images"]
    names = []
    if dtype not in DTYPES:
        names.append(DTYPE_ERROR)
    if it["spoil"] == "labels":
        names.append("labels must lie in")
    if it["spoil"] == "alpha":
        names.append("alpha must")
    if it["spoil"] == "prob":
        names.append("prob must be in [0, 1]")
    h, w = (x.shape[1:3] if layout == "HWC" else x.shape[2:4])
    if method != "dmixup" and min(h, w) == 0:
        names.append("sample 0 has shape")
    return names or None


def check_outputs(case, it, outs, rec):
    path, method, dtype, layout, k, mode, label_format, smoothing = case["key"]
    x, labels = it["images"], it["labels"].astype(np.int64)
    n = x.shape[0]
    h, w = (x.shape[1:3] if layout == "HWC" else x.shape[2:4])
    assert rec.n == n and rec.k == k
    rec.validate(n, h, w)
    np.testing.assert_array_equal(rec.sources[:, 0], np.arange(n))  # every sample its own anchor
    if rec.boxes is not None:
        assert np.array_equal(rec.weights.view(np.uint32), area_weights(rec.boxes, h, w).view(np.uint32))
    images = outs[0]
    want = reference.mix_images(x, rec, layout)
    assert images.dtype == x.dtype and images.shape == x.shape
    assert same_bits(images, want), "images differ from the reference"
    if label_format == "dense":
        t = outs[1]
        assert np.array_equal(t, reference.mix_labels(labels, rec, NUM_CLASSES, smoothing))
        assert np.isfinite(t).all() and (t >= 0).all()
        assert np.abs(t.astype(np.float64).sum(axis=1) - 1).max() <= 1e-6
    else:
        idx, lw = outs[1], outs[2]
        np.testing.assert_array_equal(idx, labels[rec.sources])
        np.testing.assert_array_equal(lw, rec.weights)
        assert np.abs(lw.astype(np.float64).sum(axis=1) - 1).max() <= 1e-6
    if it["prob"] == 0.0:  # nobody mixed: the identity (by value: a blend's sum starts at +0, so -0.0 comes
        # back as +0.0, and a signalling NaN comes back quiet; keeping every finite blend's bits rules out -0)
        assert np.array_equal(images, x, equal_nan=x.dtype.kind == "f")
        np.testing.assert_array_equal(rec.sources, np.repeat(np.arange(n)[:, None], k, axis=1))


def run_operator_case(case):
    """One case through its pipeline, the errors and the outputs checked against the reference with the record the
    Python drawing made. On the plugin path ``fn.kmix_draw`` draws the record natively: twin pipelines with the same
    seed and feed draw it from the images' shapes (as GPU pipelines do) and in the ``python_function`` (captured),
    and all give the same outputs bit for bit, or the same kind of error."""
    key = case["key"]
    pipe, feed = operator_pipeline(key)
    pipes = {"native": pipe}
    if key[0] == "plugin":
        for draw in ("shapes", "python"):
            twin, twin_feed = operator_pipeline(key, draw, feed=feed)
            if twin_feed is not feed:  # one was rebuilt since (an error, the cache's size): all read one feed
                PIPES.drop(("op", draw) + key)
                twin = operator_pipeline(key, draw, feed=feed)[0]
            pipes[draw] = twin
    captured = []
    draw_record = kd._HostRecord.record

    def capture(self, *args, **kwargs):
        rec = draw_record(self, *args, **kwargs)
        captured.append(rec)
        return rec

    for it in case["iters"]:
        n = it["images"].shape[0]
        feed.images = list(it["images"])
        feed.labels = [np.array([v], np.int32) for v in it["labels"]]
        feed.alpha = [np.atleast_1d(np.asarray(it["alpha"], np.float64))] * n
        feed.prob = [np.array([it["prob"]], np.float64)] * n
        names = expected_error(case, it)
        _event(f"{key[2]} {key[3]} K={key[4]} {key[5]} {key[6]}: " + (f"error ({names[0]})" if names else "mixed"))
        captured.clear()
        with mock.patch.object(kd._HostRecord, "record", capture):
            if names:
                for draw, p in pipes.items():
                    with pytest.raises(Exception) as info:  # noqa: PT011 - DALI re-raises as RuntimeError
                        p.run()
                    PIPES.drop(("op", draw) + key)  # DALI invalidates a pipeline that raised
                    assert isinstance(info.value, (RuntimeError, ValueError, TypeError)), repr(info.value)
                    assert any(name in str(info.value) for name in names), f"{info.value} names none of {names}"
                return
            outs = [o.as_array() for o in pipe.run()]
            for draw, twin in pipes.items():
                if draw == "native":
                    continue
                assert not captured, "fn.kmix_draw's pipelines ran the Python drawing"
                twin_outs = [o.as_array() for o in twin.run()]
                for a, b in zip(outs, twin_outs):
                    assert a.dtype == b.dtype and a.shape == b.shape and same_bits(a, b), \
                        f"fn.kmix_draw given the images and the {draw} drawing gave different outputs"
        assert len(captured) == 1, "the operator drew not exactly one record for the batch"
        check_outputs(case, it, outs, captured[0])


def _case(path, method, shape, layout="HWC", dtype=np.uint8, **it):
    x = np.zeros((4,) + shape, dtype)
    base = dict(images=x, labels=np.arange(4, dtype=np.int32), alpha=1.0, prob=1.0, spoil=None)
    base.update(it)
    return dict(key=(path, method, np.dtype(dtype), layout, 3, "sample", "dense", 0.0), iters=[base])


REGRESSIONS = [
    _case("plugin", "dcutmix", (0, 16, 3)),  # issue 20 item 3: NaN targets
    _case("function", "dcutmix", (16, 0, 3)),
    _case("plugin", "dmixup_or_dcutmix", (3, 0, 0), layout="CHW"),  # item 3, whatever the batch tossed
    _case("function", "dmixup_or_dcutmix", (3, 16, 0), layout="CHW"),
    _case("plugin", "saliency_dcutmix", (8, 8, 3), dtype=np.float64),  # item 7: bare KeyError
    _case("function", "saliency_dcutmix", (0, 8, 3), dtype=np.int32),
    _case("plugin", "dmixup", (0, 0, 3)),  # a blend of empty images: defined, finite targets
    _case("function", "dmixup", (1, 1, 1), dtype=np.float16, images=np.full((4, 1, 1, 1), -0.0, np.float16),
          prob=0.0),  # found: -0.0 comes back +0.0 (the identity holds by value)
    _case("function", "dmixup", (2, 2, 3), alpha=np.nan, spoil="alpha"),  # found: NaN alpha in every sample was
    _case("plugin", "dcutmix", (2, 2, 3), alpha=np.nan, spoil="alpha"),  # "not the same for every sample"
]


def _operator_property(path, method):
    """``test_operators_<path>_<method>``: the property for one path and operator (so that each gets its share
    of the examples), with the regression examples of that pair."""
    def run(case):
        run_operator_case(case)

    run._hypothesis_internal_add_digest = f"{path}/{method}".encode()  # its own derandomised stream and database key
    test = budget(60)(given(case=operator_cases(path, method))(run))
    for case in REGRESSIONS:
        if case["key"][:2] == (path, method):
            test = example(case=case)(test)
    test.__name__ = test.__qualname__ = f"test_operators_{path}_{method}"
    return test


for _path in ("plugin", "function"):
    for _method in OPERATORS:
        globals()[f"test_operators_{_path}_{_method}"] = _operator_property(_path, _method)


def test_zero_share_partner_with_inf_contributes_nothing_in_the_operator():
    # issue 20 item 8 end to end: alpha = 1e-3 draws exact zero shares; image 0 holds Inf everywhere
    x = np.ones((8, 6, 5, 3), np.float32)
    x[0] = np.inf
    case = _case("plugin", "dmixup", (6, 5, 3), dtype=np.float32, images=x, labels=np.arange(8, dtype=np.int32),
                 alpha=1e-3)
    for path in ("plugin", "function"):
        case["key"] = (path,) + case["key"][1:]
        run_operator_case(case)  # bit for bit the reference, which gives image 0 no say where its share is 0


# --------------------------------------------------------------------------- fn.kmix_* fed records


NATIVE_INPUTS = {"dmixup": ("sources", "weights"), "dcutmix": ("sources", "boxes"),
                 "mix": ("sources", "weights", "boxes", "cut")}
#: What the native operators check (their contract): weights finite and >= 0 (rows need not sum to 1).
NATIVE_CORRUPTIONS = {
    "dmixup": ["anchor", "source-high", "source-negative", "weight-nan", "weight-negative", "weight-inf"],
    "dcutmix": ["anchor", "source-high", "source-negative", "box-outside", "box-inverted", "box-negative",
                "box-not-nested"],
}
NATIVE_CORRUPTIONS["mix"] = NATIVE_CORRUPTIONS["dmixup"] + NATIVE_CORRUPTIONS["dcutmix"][3:] + ["cut"]


def norm_factors(c):
    """The fused normalisation's mean and std of a c-channel case (one value per channel, each its own)."""
    return [100.0 + 7.5 * i for i in range(c)], [50.0 + 3.25 * i for i in range(c)]


def native_pipeline(op, dtype, layout, norm=None):
    """fn.kmix_<op> on fed batches; ``norm`` = (output layout, output dtype, channels): with the normalisation fused
    (norm_factors' mean and std, the mirror fed per sample)."""
    feed = Feed()

    def make():
        @pipeline_def(batch_size=MAX_BATCH, **SYNC)
        def pipe():
            ims = fn.external_source(source=lambda: feed.images, batch=True, layout=layout, dtype=DALI_TYPES[dtype],
                                     ndim=3)
            rec = {"sources": fn.external_source(source=lambda: feed.sources, batch=True, dtype=types.INT32, ndim=1),
                   "weights": fn.external_source(source=lambda: feed.weights, batch=True, dtype=types.FLOAT, ndim=1),
                   "boxes": fn.external_source(source=lambda: feed.boxes, batch=True, dtype=types.INT32, ndim=2),
                   "cut": fn.external_source(source=lambda: feed.cut, batch=True, dtype=types.UINT8, ndim=1)}
            kw = {}
            if norm is not None:
                mean, std = norm_factors(norm[2])
                kw = dict(output_layout=norm[0], dtype=DALI_TYPES[norm[1]], mean=mean, std=std,
                          mirror=fn.external_source(source=lambda: feed.mirror, batch=True, dtype=types.INT32, ndim=0))
            return getattr(fn, f"kmix_{op}")(ims, *(rec[name] for name in NATIVE_INPUTS[op]), layout=layout, **kw)

        p = pipe()
        p.build()
        return p, feed

    return PIPES.get(("native", op, dtype, layout, norm), make)


@st.composite
def native_cases(draw):
    op = draw(st.sampled_from(list(NATIVE_INPUTS)))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    layout = draw(st.sampled_from(["HWC", "CHW"]))
    n = draw(st.integers(1, MAX_BATCH))
    h, w, c = draw(sides(0, 40)), draw(sides(0, 40)), draw(st.sampled_from([1, 3, 4]))
    k = draw(st.integers(1, 6))
    shape = (h, w, c) if layout == "HWC" else (c, h, w)
    x = fill(np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1))), dtype, (n,) + shape)
    if dtype in SPECIALS and draw(st.booleans()) and x.size:
        for _ in range(draw(st.integers(1, 3))):
            x.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from(SPECIALS[dtype]))
    blend = draw(records(n, h, w, methods=("dmixup",), k=k))
    cut_rec = draw(records(n, h, w, methods=("dcutmix",), k=k))
    cut = (np.random.default_rng(draw(st.integers(0, 99))).random(n) < 0.5).astype(np.uint8)
    if op != "mix":
        cut[:] = op == "dcutmix"
    sources = np.where(cut[:, None] == 1, cut_rec.sources, blend.sources).astype(np.int32)
    rec = MixParams(sources, blend.weights, cut_rec.boxes)
    spoil, name = None, None
    allowed = [c for c in NATIVE_CORRUPTIONS[op] if c == "cut" or c in corruptions_for(rec)]
    if min(h, w) == 0:
        allowed = [c for c in allowed if not c.startswith("box")]
    if allowed and draw(st.sampled_from([False] * 3 + [True])):
        how = draw(st.sampled_from(allowed))
        if how == "cut":
            cut = cut.copy()
            cut[draw(st.integers(0, n - 1))] = draw(st.sampled_from([2, 255]))
            spoil, name = "cut", "cut"
        else:
            rec, spoil, name = draw(corrupted(rec, h, w, [how]))
    norm = None
    if draw(st.booleans()):  # the normalisation fused: output layout and dtype, some samples mirrored
        norm = (draw(st.sampled_from(["HWC", "CHW"])), np.dtype(draw(st.sampled_from([np.float32, np.float16]))), c)
    mirror = (np.random.default_rng(draw(st.integers(0, 99))).random(n) < 0.5).astype(np.int32)
    return dict(op=op, dtype=dtype, layout=layout, images=x, record=rec, cut=cut, spoil=spoil, name=name, norm=norm,
                mirror=mirror)


@budget(250)
@given(native_cases())
@example(dict(op="dmixup", dtype=np.dtype(np.float32), layout="HWC",
              images=np.stack([np.ones((2, 2, 1), np.float32), np.full((2, 2, 1), np.inf, np.float32)]),
              record=MixParams([[0, 1], [1, 0]], [[1.0, 0.0], [0.0, 1.0]], np.zeros((2, 1, 4), np.int32)),
              cut=np.zeros(2, np.uint8), spoil=None, name=None, norm=None, mirror=np.zeros(2, np.int32)))  # issue 20
def test_native_operators(case):  # item 8: was NaN
    op, x, rec, cut, norm = case["op"], case["images"], case["record"], case["cut"], case["norm"]
    pipe, feed = native_pipeline(op, case["dtype"], case["layout"], norm)
    n = x.shape[0]
    feed.images = list(x)
    feed.sources, feed.weights = list(rec.sources), list(rec.weights)
    feed.boxes = list(rec.boxes) if rec.boxes is not None else [np.zeros((rec.k - 1, 4), np.int32)] * n
    feed.cut = [np.array([v], np.uint8) for v in cut]
    feed.mirror = [np.int32(v) for v in case["mirror"]]
    _event(f"kmix_{op}: " + (f"error ({case['spoil']})" if case["spoil"] else "mixed")
           + (" and normalised" if norm else ""))
    if case["spoil"] is not None:
        with pytest.raises(RuntimeError) as info:
            pipe.run()
        PIPES.drop(("native", op, case["dtype"], case["layout"], norm))
        assert case["name"] in str(info.value), f"{case['spoil']}: {info.value} does not name {case['name']}"
        return
    (out,) = pipe.run()
    got = out.as_array()
    blend = reference.mix_images(x, MixParams(rec.sources, rec.weights), case["layout"])
    boxes = rec.boxes if rec.boxes is not None else np.zeros((n, rec.k - 1, 4), np.int32)
    paste = reference.mix_images(x, MixParams(rec.sources, rec.weights, boxes), case["layout"])
    want = np.where(cut.astype(bool).reshape((n, 1, 1, 1)), paste, blend)
    if norm is not None:
        want = reference.normalize(want, *norm_factors(norm[2]), layout=case["layout"], out_layout=norm[0],
                                   mirror=case["mirror"], dtype=norm[1])
    assert got.dtype == want.dtype and got.shape == want.shape
    assert same_bits(got, want), "output differs from the reference"


# --------------------------------------------------------------------------- the operators' arguments


@st.composite
def operator_arguments(draw):
    method = draw(st.sampled_from(OPERATORS))
    names = ["k", "alpha", "num_classes", "layout", "mode", "prob", "smoothing", "label_format", "seed", "shard_id"]
    names += {"saliency_dcutmix": ["saliency"], "dmixup_or_dcutmix": ["switch_prob", "cutmix_alpha"]}.get(method, [])
    bad = pick_bad(draw, names)
    k = arg(draw, "k", bad, st.integers(2, 20), st.one_of(st.integers(-3, 1), BAD_INT))
    kv = k.value if not k.bad else 3
    label_format = arg(draw, "label_format", bad, st.sampled_from(["dense", "sparse"]),
                       st.sampled_from(["Dense", "onehot", "", None]))
    # sparse targets take no smoothing (it belongs to the loss): a positive one is refused, naming smoothing
    smooth = st.just(0.0) if label_format.value == "sparse" else st.one_of(st.just(0.0), st.floats(0.0, 0.999))
    kwargs = dict(k=k, alpha=arg(draw, "alpha", bad, alphas(kv), bad_alpha(kv)),
                  num_classes=arg(draw, "num_classes", bad, st.integers(1, 10 ** 6), st.one_of(st.integers(-3, 0),
                                                                                            BAD_INT)),
                  layout=arg(draw, "layout", bad, st.sampled_from(["HWC", "CHW"]), BAD_LAYOUT),
                  mode=arg(draw, "mode", bad, st.sampled_from(["sample", "batch"]), BAD_MODE),
                  prob=arg(draw, "prob", bad, st.floats(0.0, 1.0), BAD_PROB),
                  smoothing=arg(draw, "smoothing", bad, smooth, BAD_SMOOTHING), label_format=label_format,
                  seed=arg(draw, "seed", bad, st.one_of(st.none(), st.integers(0, 2 ** 31)),
                           st.sampled_from([-1, 1.5, "7"])),
                  shard_id=arg(draw, "shard_id", bad, st.integers(0, 7), st.sampled_from([-1, 0.5, None])))
    if method == "saliency_dcutmix":
        kwargs["saliency"] = arg(draw, "saliency", bad, st.sampled_from(["spectral-residual", "fine-grained"]),
                                 st.sampled_from(["itti", "", None]))
    if method == "dmixup_or_dcutmix":
        kwargs["switch_prob"] = arg(draw, "switch_prob", bad, st.floats(0.0, 1.0), BAD_PROB)
        kwargs["cutmix_alpha"] = arg(draw, "cutmix_alpha", bad, st.one_of(st.none(), alphas(kv)), bad_alpha(kv))
    return method, kwargs


@budget(200)
@given(operator_arguments())
@example(("dmixup_or_dcutmix", {"k": Arg(3), "alpha": Arg(np.nan, ("alpha",)), "num_classes": Arg(10),
                                "layout": Arg("HWC"), "mode": Arg("sample"), "prob": Arg(1.0), "smoothing": Arg(0.0),
                                "label_format": Arg("dense"), "seed": Arg(None), "shard_id": Arg(0),
                                "switch_prob": Arg(0.5), "cutmix_alpha": Arg(None)}))
def test_operator_arguments(case):
    # checked where the operator is defined (no pipeline is built): the right ones pass, a wrong one is named
    from nvidia.dali import Pipeline

    method, kwargs = case
    bad = [name for a in kwargs.values() for name in a.bad]
    pipe = Pipeline(batch_size=2, num_threads=1, device_id=None, seed=1)
    with pipe:
        x = fn.external_source(name="x", layout="HWC")
        y = fn.external_source(name="y")
        call = lambda: getattr(kmix, method)(x, y, **{name: a.value for name, a in kwargs.items()})  # noqa: E731
        if bad:
            with pytest.raises((ValueError, TypeError)) as info:
                call()
            assert message_names(info.value, bad), f"{info.value!r} names none of {bad}"
        else:
            outs = call()
            assert len(outs) == (2 if kwargs["label_format"].value == "dense" else 3)
