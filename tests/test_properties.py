"""Property-based tests (Hypothesis) of the array API: sample_params, mix_images, mix_labels, salient_points,
MixParams and KMixup on CPU tensors.

Every input -- odd sizes, zero-area images, K up to 20, alpha from 5e-324 to 1.7e308, NaN and Inf in float
images, strided and Fortran-ordered batches, valid records and records spoilt one way or another, and
arguments of every wrong kind -- gives either the correct result (bit for bit the NumPy reference; targets
finite, >= 0, rows summing to 1; DCutMix weights the exact box areas; boxes nested and in bounds; every
sample its own anchor; ``prob=0`` the identity) or a ValueError / TypeError whose message names the argument.

``make test`` runs a fixed, derandomised set of examples (tests/_strategies.py, profile "ci"); ``make fuzz``
searches for many more (profile "fuzz"). Every failure found is kept below as an explicit ``@example``.
"""

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import dali_kmix
from dali_kmix import _checks, reference
from dali_kmix.record import WEIGHT_ATOL, MixParams, area_weights

from _strategies import (BAD_INT, BAD_LAYOUT, BAD_METHOD, BAD_MODE, BAD_PROB, BAD_SMOOTHING, DTYPES, WRONG_DTYPES,
                         Arg, Batch, alphas, arg, bad_alpha, batches, budget, corrupted, message_names, pick_bad,
                         records, same_bits, sides)

# NaN and Inf pixels are drawn on purpose: NumPy's "invalid value" warnings about them are expected here
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

METHODS = ("dmixup", "dcutmix", "saliency-dcutmix")


def refused(call, args) -> bool:
    """When an argument of ``args`` is spoilt, ``call(**args)`` must raise a ValueError/TypeError naming it
    (then True); False when all are valid."""
    bad = [name for a in args.values() for name in a.bad]
    if not bad:
        return False
    with pytest.raises((ValueError, TypeError)) as info:
        call(**{name: a.value for name, a in args.items()})
    assert message_names(info.value, bad), f"{info.value!r} names none of {bad}"
    return True


def check_record(p: MixParams, n, h, w, k, method):
    """What every record the sampler draws must be."""
    assert p.sources.dtype == np.int32 and p.sources.shape == (n, k)
    assert p.weights.dtype == np.float32 and p.weights.shape == (n, k)
    np.testing.assert_array_equal(p.sources[:, 0], np.arange(n))  # every sample its own anchor
    assert ((p.sources >= 0) & (p.sources < max(n, 1))).all()
    assert np.isfinite(p.weights).all() and (p.weights >= 0).all()
    if n:
        assert np.abs(p.weights.astype(np.float64).sum(axis=1) - 1).max() <= 1e-6
    if method == "dmixup":
        assert p.boxes is None
        return
    assert p.boxes.dtype == np.int32 and p.boxes.shape == (n, k - 1, 4)
    b = p.boxes.astype(np.int64)
    assert ((0 <= b[..., 0]) & (b[..., 0] <= b[..., 2]) & (b[..., 2] <= h)).all()
    assert ((0 <= b[..., 1]) & (b[..., 1] <= b[..., 3]) & (b[..., 3] <= w)).all()
    inner, outer = b[:, 1:], b[:, :-1]
    assert ((inner[..., :2] >= outer[..., :2]) & (inner[..., 2:] <= outer[..., 2:])).all()  # nested
    assert same_bits(p.weights, area_weights(p.boxes, h, w))  # exactly the box areas
    p.validate(n, h, w)


# --------------------------------------------------------------------------- sample_params


@st.composite
def sample_args(draw):
    bad = pick_bad(draw, ["method", "n", "height", "width", "k", "alpha", "mode", "prob", "rng", "centers"])
    method = arg(draw, "method", bad, st.sampled_from(METHODS), BAD_METHOD)
    k = arg(draw, "k", bad, st.integers(2, 20), st.one_of(st.integers(-3, 1), BAD_INT))
    kv = k.value if not k.bad else 3
    least = 0 if method.value == "dmixup" else 1
    bad_side = st.one_of(st.integers(-3, least - 1), BAD_INT)
    args = dict(method=method, n=arg(draw, "n", bad, st.integers(0, 9), st.one_of(st.integers(-5, -1), BAD_INT)),
                height=arg(draw, "height", bad, sides(least, 40), bad_side),
                width=arg(draw, "width", bad, sides(least, 40), bad_side), k=k,
                alpha=arg(draw, "alpha", bad, alphas(kv), bad_alpha(kv)),
                mode=arg(draw, "mode", bad, st.sampled_from(["sample", "batch"]), BAD_MODE),
                prob=arg(draw, "prob", bad, st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)), BAD_PROB),
                rng=arg(draw, "rng", bad, st.integers(0, 2 ** 63), st.sampled_from([-1, 1.5, "seed"])))
    nv, hv, wv = (a.value if not a.bad else 2 for a in (args["n"], args["height"], args["width"]))
    if method.value == "saliency-dcutmix" and not method.bad:
        good = st.integers(0, 2 ** 32 - 1).map(
            lambda s: np.random.default_rng(s).integers(0, [max(hv, 1), max(wv, 1)], (max(nv, 0), 2)))
        spoilt = st.sampled_from(["outside", "shape", "float", "none"]).map(lambda how: {
            "outside": np.full((max(nv, 1), 2), max(hv, wv) + 1), "shape": np.zeros((max(nv, 0) + 1, 2), int),
            "float": np.zeros((max(nv, 0), 2), np.float32), "none": None}[how])
        if bad == "centers" and (nv <= 0 and not isinstance(nv, bool)):
            spoilt = st.just(None)  # no row to put outside the image
        args["centers"] = arg(draw, "centers", bad, good, spoilt)
    elif bad == "centers":
        args["centers"] = Arg(np.zeros((2, 2), int), ("centers",))
    return args


@budget(300)
@given(sample_args())
@example({"method": Arg("dcutmix"), "n": Arg(3), "height": Arg(0, ("height",)), "width": Arg(16), "k": Arg(3),
          "alpha": Arg(1.0), "mode": Arg("sample"), "prob": Arg(1.0), "rng": Arg(0)})  # issue 20 item 3
@example({"method": Arg("dmixup"), "n": Arg(3), "height": Arg(0), "width": Arg(16), "k": Arg(3),
          "alpha": Arg(1.0), "mode": Arg("sample"), "prob": Arg(1.0), "rng": Arg(0)})  # defined: no size is read
@example({"method": Arg("dmixup"), "n": Arg(4), "height": Arg(8), "width": Arg(8), "k": Arg(3),
          "alpha": Arg(5e-324), "mode": Arg("sample"), "prob": Arg(1.0), "rng": Arg(1)})  # found: NaN weights
def test_sample_params(args):
    if refused(dali_kmix.sample_params, args):
        return
    kwargs = {name: a.value for name, a in args.items()}
    p = dali_kmix.sample_params(**kwargs)
    n, h, w, k, method = (kwargs[a] for a in ("n", "height", "width", "k", "method"))
    check_record(p, n, h, w, k, method)
    if kwargs["prob"] == 0.0:  # nobody is mixed: each sample keeps itself, whole
        np.testing.assert_array_equal(p.sources, np.repeat(np.arange(n)[:, None], k, axis=1))
        np.testing.assert_array_equal(p.weights, np.eye(1, k, dtype=np.float32).repeat(n, axis=0))
        if p.boxes is not None:
            assert not p.boxes.any()


# --------------------------------------------------------------------------- mix_images


def zero_area_cut_record(n, k):
    boxes = np.zeros((n, k - 1, 4), np.int32)
    src = np.concatenate([np.arange(n)[:, None], np.zeros((n, k - 1), int)], axis=1)
    return MixParams(src.astype(np.int32), np.eye(1, k, dtype=np.float32).repeat(n, axis=0), boxes)


@st.composite
def mix_cases(draw):
    batch = draw(batches(least=0))
    n = batch.images.shape[0]
    h, w, _ = batch.hwc
    spoil = draw(st.sampled_from([None] * 8 + ["record"] * 2 + ["dtype", "layout", "params type"]))
    case = {"batch": batch, "layout": Arg(batch.layout), "expect": None}
    if min(h, w) == 0 and draw(st.booleans()):  # DCutMix of empty images: no area weights (issue 20 item 3)
        case["params"] = zero_area_cut_record(n, draw(st.integers(2, 4)))
        case["expect"] = ("zero-area", "sample 0 has shape") if n else None
        spoil = None
    else:
        case["params"] = draw(records(n, h, w, methods=("dmixup", "dcutmix") if min(h, w) else ("dmixup",)))
    if spoil == "record" and n:
        case["params"], how, which = draw(corrupted(case["params"], h, w))
        case["expect"] = (how, f"params.{which}")
    elif spoil == "dtype":
        case["batch"] = Batch(batch.images.astype(draw(st.sampled_from(WRONG_DTYPES))), batch.layout)
        case["expect"] = ("dtype", "images")
    elif spoil == "layout":
        case["layout"] = Arg(draw(BAD_LAYOUT), ("layout",))
        case["expect"] = ("layout", "layout")
    elif spoil == "params type":
        case["params"] = draw(st.sampled_from([None, {}, (np.zeros((n, 2)), np.ones((n, 2)))]))
        case["expect"] = ("params type", "params")
    return case


@budget(300)
@given(mix_cases())
@example({"batch": Batch(np.zeros((3, 0, 16, 3), np.uint8), "HWC"), "layout": Arg("HWC"),
          "params": zero_area_cut_record(3, 3), "expect": ("zero-area", "sample 0 has shape")})  # issue 20 item 3
@example({"batch": Batch(np.stack([np.ones((2, 2, 1), np.float32), np.full((2, 2, 1), np.inf, np.float32)]), "HWC"),
          "layout": Arg("HWC"), "params": MixParams([[0, 1], [1, 0]], [[1, 0], [1, 0]]), "expect": None})  # item 8
def test_mix_images(case):
    x, layout, p = case["batch"].images, case["layout"].value, case["params"]
    before = x.copy()
    if case["expect"] is not None:
        why, name = case["expect"]
        with pytest.raises((ValueError, TypeError)) as info:
            dali_kmix.mix_images(x, p, layout)
        assert name in str(info.value), f"{why}: {info.value!r} does not name {name}"
        return
    out = dali_kmix.mix_images(x, p, layout)
    want = reference.mix_images(np.ascontiguousarray(x), p, layout)
    assert same_bits(out, want)
    assert same_bits(x, before) and not np.shares_memory(out, x)  # the input is never written
    if p.boxes is None and x.dtype != np.uint8 and x.shape[0]:
        # a zero share never spoils a blend: a row is finite wherever its live (w > 0) inputs are finite
        live = p.weights > 0
        xs = x[p.sources].astype(np.float64)  # (N, K, ...)
        bad = ~np.isfinite(xs) | (np.abs(xs) > np.finfo(x.dtype).max / 4)
        spoilt = (bad & live.reshape(live.shape + (1,) * 3)).any(axis=1)
        assert np.isfinite(out[~spoilt]).all()


# --------------------------------------------------------------------------- mix_labels


def labels_definition(labels, p, c, s):
    """float64 ``sum_k w[n, k] onehot_s(labels[sources[n, k]])``."""
    on, off = 1.0 - s + s / c, s / c
    t = np.zeros((p.n, c))
    for j in range(p.k):
        hot = np.where(labels[p.sources[:, j]][:, None] == np.arange(c)[None, :], on, off)
        t += p.weights[:, j, None].astype(np.float64) * hot
    return t


@st.composite
def label_cases(draw):
    bad = pick_bad(draw, ["labels", "num_classes", "smoothing", "params"])
    n = draw(st.integers(0, 9))
    h, w = draw(sides(1, 12)), draw(sides(1, 12))
    c = arg(draw, "num_classes", bad, st.integers(1, 30), st.one_of(st.integers(-2, 0), BAD_INT))
    cv = c.value if not c.bad else 5
    dtype = draw(st.sampled_from([np.int64, np.int32, np.uint8, np.int8]))
    lab = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1))).integers(0, min(cv, np.iinfo(dtype).max + 1), n)
    lab = lab.astype(dtype)
    labels = Arg(lab[:, None] if draw(st.booleans()) else lab)
    if bad == "labels":
        how = draw(st.sampled_from(["high", "negative", "float", "shape", "length"] if n else ["shape", "length"]))
        labels = Arg({"high": lambda: np.full(n, cv + 3), "negative": lambda: np.full(n, -1),
                      "float": lambda: lab.astype(np.float32) + 0.5, "shape": lambda: np.zeros((n, 2), int),
                      "length": lambda: np.zeros(n + 1, int)}[how](), ("labels",))
    p = draw(records(n, h, w, max_k=20))
    case = {"labels": labels, "num_classes": c,
            "smoothing": arg(draw, "smoothing", bad, st.one_of(st.just(0.0), st.floats(0.0, 0.999)), BAD_SMOOTHING),
            "params": Arg(p)}
    if bad == "params" and n:
        allowed = ["anchor", "source-high", "source-negative", "weight-nan", "weight-negative", "weight-inf",
                   "weight-huge", "row-sum"]
        p, how, which = draw(corrupted(p, h, w, allowed))
        case["params"] = Arg(p, (f"params.{which}",))
    return case


@budget(300)
@given(label_cases())
@example({"labels": Arg(np.array([0, 1])), "num_classes": Arg(2), "smoothing": Arg(0.0),
          "params": Arg(MixParams([[0, 1], [1, -1]], [[0.5, 0.5]] * 2), ("params.sources",))})  # wrapped silently
@example({"labels": Arg(np.array([0, 1])), "num_classes": Arg(2), "smoothing": Arg(0.0),
          "params": Arg(MixParams([[0, 1], [1, 0]], [[0.5, 0.5], [np.nan, 1.0]]), ("params.weights",))})  # NaN targets
def test_mix_labels(case):
    if refused(dali_kmix.mix_labels, case):
        return
    kwargs = {name: a.value for name, a in case.items()}
    t = dali_kmix.mix_labels(**kwargs)
    p, c, s = kwargs["params"], kwargs["num_classes"], kwargs["smoothing"]
    labels = np.asarray(kwargs["labels"]).reshape(-1).astype(np.int64)
    assert t.dtype == np.float32 and t.shape == (p.n, c)
    assert np.isfinite(t).all() and (t >= 0).all()
    np.testing.assert_allclose(t, labels_definition(labels, p, c, s), rtol=0, atol=1e-6)
    if p.n:
        rows = p.weights.astype(np.float64).sum(axis=1)
        assert np.abs(t.astype(np.float64).sum(axis=1) - rows).max() <= 1e-6
        assert np.abs(rows - 1).max() <= WEIGHT_ATOL


# --------------------------------------------------------------------------- salient_points


@st.composite
def saliency_cases(draw):
    batch = draw(batches(dtypes=DTYPES + WRONG_DTYPES, max_n=5, least=0, most=24))
    h, w, _ = batch.hwc
    bad = pick_bad(draw, ["layout", "work_size"], ratio=4)
    case = {"images": batch.images, "layout": arg(draw, "layout", bad, st.just(batch.layout), BAD_LAYOUT),
            "as_list": draw(st.booleans()),
            "method": draw(st.sampled_from(["spectral-residual", "spectral-residual", "fine-grained"])),
            "work_size": arg(draw, "work_size", bad, st.sampled_from([4, 7, 16, 64]),
                             st.sampled_from([3, 0, -4, 8.0, None])), "expect": None}
    if batch.images.dtype not in DTYPES:
        case["expect"] = "images must have dtype uint8, float16 or float32"
    elif min(h, w) == 0 and batch.images.shape[0]:
        case["expect"] = "sample 0 has shape"
    return case


@budget(150)
@given(saliency_cases())
@example({"images": np.zeros((2, 8, 8, 3), np.float64), "layout": Arg("HWC"), "as_list": False,
          "method": "spectral-residual", "work_size": Arg(64),
          "expect": "images must have dtype uint8, float16 or float32"})  # issue 20 item 7: was KeyError
@example({"images": np.zeros((2, 0, 16, 3), np.uint8), "layout": Arg("HWC"), "as_list": False,
          "method": "spectral-residual", "work_size": Arg(64), "expect": "sample 0 has shape"})  # read row -1
def test_salient_points(case):
    from dali_kmix.saliency import salient_points

    pytest.importorskip("cv2") if case["method"] == "fine-grained" else None
    x, layout = case["images"], case["layout"].value
    arg = list(x) if case["as_list"] else x
    bad = case["layout"].bad + case["work_size"].bad
    if case["as_list"] and not x.shape[0]:  # an empty list: no sample, no dtype, no shape to refuse
        case["expect"] = None
    if bad or case["expect"]:
        with pytest.raises((ValueError, TypeError)) as info:
            salient_points(arg, layout, method=case["method"], work_size=case["work_size"].value)
        assert message_names(info.value, list(bad) + ([case["expect"]] if case["expect"] else [])), repr(info.value)
        return
    pts = salient_points(arg, layout, method=case["method"], work_size=case["work_size"].value)
    h, w = _checks.spatial_size(x.shape[1:], layout)
    assert pts.dtype == np.int32 and pts.shape == (x.shape[0], 2)
    assert ((pts[:, 0] >= 0) & (pts[:, 0] < max(h, 1)) & (pts[:, 1] >= 0) & (pts[:, 1] < max(w, 1))).all()
    if case["as_list"] and x.shape[0]:  # a list of samples is the same batch
        np.testing.assert_array_equal(pts, salient_points(x, layout, method=case["method"],
                                                          work_size=case["work_size"].value))


# --------------------------------------------------------------------------- KMixup on CPU tensors


@st.composite
def kmixup_cases(draw):
    import torch

    k = draw(st.integers(2, 6))
    mix_a = draw(st.one_of(st.just(0.0), alphas(), st.lists(alphas(), min_size=k, max_size=k)))
    cut_a = draw(st.one_of(st.just(0.0), alphas()))
    bad = pick_bad(draw, ["prob", "switch_prob", "mode", "label_smoothing", "num_classes"], ratio=4)
    kwargs = dict(mixup_alpha=Arg(mix_a), cutmix_alpha=Arg(cut_a), k=Arg(k),
                  prob=arg(draw, "prob", bad, st.sampled_from([0.0, 0.5, 1.0]), BAD_PROB),
                  switch_prob=arg(draw, "switch_prob", bad, st.floats(0, 1), BAD_PROB),
                  mode=arg(draw, "mode", bad, st.sampled_from(["batch", "elem", "sample"]), st.sampled_from(["pair", "x"])),
                  label_smoothing=arg(draw, "label_smoothing", bad, st.sampled_from([0.0, 0.1]), BAD_SMOOTHING),
                  num_classes=arg(draw, "num_classes", bad, st.integers(1, 12), st.integers(-1, 0)),
                  seed=Arg(draw(st.integers(0, 2 ** 32))))
    if mix_a == 0.0 and cut_a == 0.0 and kwargs["prob"].value != 0.0 and not bad:
        kwargs["mixup_alpha"] = Arg(0.0, ("mixup_alpha",))  # both off but mixing asked for
    batch = draw(batches(max_n=7, least=0, most=24))
    x = torch.from_numpy(batch.images)
    x = x if batch.layout == "CHW" else x.permute(0, 3, 1, 2)  # an HWC batch is a channels-last NCHW tensor
    c = kwargs["num_classes"].value if not kwargs["num_classes"].bad else 5
    n = x.shape[0]
    target = torch.from_numpy(np.random.default_rng(draw(st.integers(0, 99))).integers(0, c, n))
    call_bad = ()
    spoil = draw(st.sampled_from([None] * 8 + ["target", "x"]))
    if spoil == "target" and n:
        target, call_bad = draw(st.sampled_from([(target + c, ("target",)), (target.float(), ("target",)),
                                                 (target[:-1], ("target",))]))
    elif spoil == "x":
        x, call_bad = x.double(), ("x must have dtype",)
    return kwargs, x, target, call_bad


def _kmixup_example(x, **kw):
    import torch

    base = dict(mixup_alpha=0.0, cutmix_alpha=1.0, k=2, prob=0.5, switch_prob=0.0, mode="batch",
                label_smoothing=0.0, num_classes=3, seed=0)
    base.update(kw)
    return ({name: Arg(v) for name, v in base.items()}, x, torch.zeros(x.shape[0], dtype=torch.int64), ())


@budget(250)
@given(kmixup_cases())
@example(_kmixup_example(__import__("torch").zeros((1, 1, 0, 0), dtype=__import__("torch").uint8)))  # found:
# "height must be >= 1" from the sampler, on the batches that tossed DCutMix only
def test_kmixup_cpu(case):
    import torch

    from dali_kmix.torch import KMixup

    kwargs, x, target, call_bad = case
    if refused(KMixup, kwargs):
        return
    mixer = KMixup(**{name: a.value for name, a in kwargs.items()}, reuse_outputs=False)
    h, w = x.shape[2:]
    cut = kwargs["cutmix_alpha"].value != 0.0 and kwargs["prob"].value > 0
    zero_area_cut = cut and min(h, w) == 0 and x.shape[0] > 0
    if call_bad or zero_area_cut:
        names = list(call_bad) + (["sample 0 has shape"] if zero_area_cut else [])
        with pytest.raises((ValueError, TypeError)) as info:
            mixer(x, target)
        assert message_names(info.value, names), f"{info.value!r} names none of {names}"
        return
    before = x.clone()
    out, t = mixer(x, target)
    assert same_bits(x.numpy(), before.numpy())  # the input is never written
    c, s = mixer.num_classes, mixer.label_smoothing
    assert t.dtype == torch.float32 and t.shape == (x.shape[0], c)
    assert torch.isfinite(t).all() and (t >= 0).all()
    if x.shape[0]:
        assert (t.double().sum(dim=1) - 1).abs().max() <= 1e-6
    if not mixer.last_groups:  # nothing mixed: the input itself and smoothed one-hot targets
        assert out is x
        np.testing.assert_array_equal(t.numpy(), reference.smoothed_one_hot(target.numpy(), c, s))
        return
    assert out.shape == x.shape and out.dtype == x.dtype
    s_img = x[0]
    layout = "HWC" if not s_img.is_contiguous() and s_img.permute(1, 2, 0).is_contiguous() else "CHW"
    xn = (x.permute(0, 2, 3, 1) if layout == "HWC" else x).contiguous().numpy()
    on = (out.permute(0, 2, 3, 1) if layout == "HWC" else out).numpy()
    covered = np.zeros(x.shape[0], bool)
    for rows, rec in mixer.last_groups:
        assert same_bits(on[rows], reference.mix_images(xn[rows], rec, layout))
        np.testing.assert_array_equal(t.numpy()[rows], reference.mix_labels(target.numpy()[rows], rec, c, s))
        assert not covered[rows].any()
        covered[rows] = True
    assert covered.all()  # every row mixed by exactly one record
