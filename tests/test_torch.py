"""The PyTorch side: losses for mixed targets, and KMixup (timm's Mixup call, dali_kmix kernels).

Losses: dense and sparse agree, match PyTorch's own cross-entropy, and run under
``torch.compile(fullgraph=True)`` (no host synchronisation by default).

KMixup: pixel-exact shares against its targets (DCutMix on constant images),
weighted sums (DMixup on constant images), the same bits as ``dali_kmix.mix_images``
/ ``mix_labels`` on its own record, timm's meanings of prob / switch_prob /
label_smoothing / mixup_enabled, bad input, and the CUDA path (``gpu`` marker).
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dali_kmix
from dali_kmix.torch import KMixup, one_hot_targets, soft_target_cross_entropy, sparse_mixed_cross_entropy

ROOT = Path(__file__).resolve().parents[1]

# ============================================================================ losses


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
@pytest.mark.parametrize("k", [2, 3, 7])
def test_dense_and_sparse_losses_agree_on_the_same_mix(method, k, smoothing):
    n, c = 16, 11
    p = dali_kmix.sample_params(method, n, 32, 32, k=k, alpha=0.5, rng=k)
    labels = np.random.default_rng(0).integers(0, c, n)
    dense = torch.from_numpy(dali_kmix.mix_labels(labels, p, c, smoothing=smoothing))
    idx = torch.from_numpy(labels[p.sources].astype(np.int32))
    w = torch.from_numpy(p.weights)
    logits = torch.randn(n, c, generator=torch.Generator().manual_seed(1))
    for reduction in ("mean", "sum", "none"):
        a = soft_target_cross_entropy(logits, dense, reduction=reduction)
        b = sparse_mixed_cross_entropy(logits, idx, w, smoothing=smoothing, reduction=reduction)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        c_ = sparse_mixed_cross_entropy(logits, idx, w, smoothing=smoothing, reduction=reduction, check=True)
        torch.testing.assert_close(b, c_, rtol=0, atol=0)


def test_one_hot_targets_give_pytorch_cross_entropy():
    logits = torch.randn(9, 5, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 4, 2, 2, 1, 3, 0, 1, 4])
    for s in (0.0, 0.2):
        ours = soft_target_cross_entropy(logits, one_hot_targets(labels, 5, smoothing=s))
        torch.testing.assert_close(ours, F.cross_entropy(logits, labels, label_smoothing=s))
    # the label shapes and integer dtypes KMixup takes: (N,), (N, 1), int32, uint8
    want = one_hot_targets(labels, 5, smoothing=0.1)
    for other in (labels[:, None], labels.int(), labels.to(torch.uint8)):
        assert torch.equal(one_hot_targets(other, 5, smoothing=0.1), want)


def test_gradient_is_softmax_minus_target():
    logits = torch.randn(4, 6, requires_grad=True)
    t = torch.softmax(torch.randn(4, 6), dim=1)
    soft_target_cross_entropy(logits, t, reduction="sum").backward()
    torch.testing.assert_close(logits.grad, torch.softmax(logits.detach(), 1) - t)


def test_half_precision_logits_are_computed_in_float32():
    logits = torch.randn(4, 6) * 30
    t = torch.softmax(torch.randn(4, 6), dim=1)
    a = soft_target_cross_entropy(logits.half(), t)
    assert a.dtype == torch.float32 and torch.isfinite(a)


def test_bad_loss_inputs():
    logits = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"targets must have the shape of logits \(3, 4\), got \(3, 5\)"):
        soft_target_cross_entropy(logits, torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"logits must have shape \(N, C\), got \(12,\)"):
        soft_target_cross_entropy(logits.reshape(-1), torch.zeros(12))
    with pytest.raises(ValueError, match=r"label_idx must lie in \[0, C=4\), got values in \[0, 4\]"):
        sparse_mixed_cross_entropy(logits, torch.tensor([[0, 4]] * 3), torch.full((3, 2), 0.5), check=True)
    with pytest.raises(ValueError, match=r"label_w must have the shape of label_idx \(3, 2\), got \(3, 3\)"):
        sparse_mixed_cross_entropy(logits, torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"reduction must be one of \['mean', 'sum', 'none'\], got 'avg'"):
        soft_target_cross_entropy(logits, torch.zeros(3, 4), reduction="avg")
    with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\), got 1\.5"):
        sparse_mixed_cross_entropy(logits, torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 2), smoothing=1.5)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes=4\), got values in \[-1, 4\]"):
        one_hot_targets(torch.tensor([4, -1]), 4, check=True)


def _bad_label_inputs():
    labels, logits, idx, w = torch.tensor([0, 3, 1]), torch.zeros(3, 4), torch.zeros(3, 2, dtype=torch.long), \
        torch.full((3, 2), 0.5)
    one_hot = lambda **kw: lambda: one_hot_targets(**{"labels": labels, "num_classes": 4, **kw})  # noqa: E731
    sparse = lambda **kw: lambda: sparse_mixed_cross_entropy(  # noqa: E731
        **{"logits": logits, "label_idx": idx, "label_w": w, **kw})
    return [
        ("one-hot-float-labels", one_hot(labels=labels.float()), TypeError,
         r"labels must be integer class indices, got dtype torch\.float32"),
        ("one-hot-bool-labels", one_hot(labels=labels > 0), TypeError,
         r"labels must be integer class indices, got dtype torch\.bool"),
        ("one-hot-list-labels", one_hot(labels=[0, 3, 1]), TypeError, r"labels must be a torch\.Tensor, got list"),
        ("one-hot-row-of-labels", one_hot(labels=torch.tensor([[0, 3, 1, 2]])), ValueError,
         r"labels must be class indices of shape \(N,\) or \(N, 1\), got shape \(1, 4\)"),
        ("one-hot-one-hot-labels", one_hot(labels=F.one_hot(labels, 4)), ValueError,
         r"labels must be class indices of shape \(N,\) or \(N, 1\), got shape \(3, 4\)"),
        ("one-hot-scalar-label", one_hot(labels=torch.tensor(2)), ValueError,
         r"labels must be class indices of shape \(N,\) or \(N, 1\), got shape \(\)"),
        ("one-hot-smoothing-negative", one_hot(smoothing=-0.1), ValueError,
         r"smoothing must be in \[0, 1\), got -0\.1"),
        ("one-hot-smoothing-nan", one_hot(smoothing=float("nan")), ValueError,
         r"smoothing must be in \[0, 1\), got nan"),
        ("one-hot-smoothing-one", one_hot(smoothing=1.0), ValueError, r"smoothing must be in \[0, 1\), got 1\.0"),
        ("one-hot-smoothing-bool", one_hot(smoothing=True), TypeError,
         r"smoothing must be a number in \[0, 1\), got True"),
        ("one-hot-num-classes-0", one_hot(num_classes=0), ValueError, r"num_classes must be >= 1, got 0"),
        ("one-hot-num-classes-float", one_hot(num_classes=2.0), TypeError, r"num_classes must be an integer, got 2\.0"),
        ("one-hot-check-str", one_hot(check="yes"), TypeError, r"check must be True or False, got 'yes'"),
        ("sparse-float-indices", sparse(label_idx=idx.float() + 0.7), TypeError,
         r"label_idx must be integer class indices, got dtype torch\.float32"),
        ("sparse-int-weights", sparse(label_w=torch.ones(3, 2, dtype=torch.long)), TypeError,
         r"label_w must have a floating-point dtype, got torch\.int64"),
        ("sparse-smoothing-str", sparse(smoothing="0.1"), TypeError,
         r"smoothing must be a number in \[0, 1\), got '0\.1'"),
        ("sparse-smoothing-bool", sparse(smoothing=True), TypeError,
         r"smoothing must be a number in \[0, 1\), got True"),
        ("sparse-check-str", sparse(check="yes"), TypeError, r"check must be None, True or False, got 'yes'"),
    ]


@pytest.mark.parametrize("case", _bad_label_inputs(), ids=[c[0] for c in _bad_label_inputs()])
def test_bad_label_inputs_of_the_loss_helpers_raise(case):
    """Float labels are not truncated, a row of labels is not flattened, smoothing and num_classes are checked."""
    _, call, exc, match = case
    with pytest.raises(exc, match=match):
        call()


def test_bad_indices_stop_the_sparse_loss_by_default_without_a_host_read():
    """Never a silent NaN: the default is an asynchronous assertion (raised at once on the CPU)."""
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(3))
    w = torch.full((3, 2), 0.5)
    for bad in ([[0, 1], [0, 4], [1, 2]], [[0, 1], [-1, 2], [1, 2]]):
        with pytest.raises(RuntimeError, match=r"label_idx must lie in \[0, C=4\): sparse_mixed_cross_entropy got a "
                                               r"class index outside it"):
            sparse_mixed_cross_entropy(logits, torch.tensor(bad), w)
    good = torch.tensor([[0, 1], [3, 2], [1, 1]])
    torch.testing.assert_close(sparse_mixed_cross_entropy(logits, good, w),
                               sparse_mixed_cross_entropy(logits, good, w, check=False))


def test_the_compiled_sparse_loss_asserts_too():
    fn, (logits, idx, w), kwargs = _loss_calls()["sparse_mixed_cross_entropy"]
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(logits, idx, w, **kwargs), fn(logits, idx, w, **kwargs))
    bad = idx.clone()
    bad[2, 1] = 5
    with pytest.raises(RuntimeError, match=r"label_idx must lie in \[0, C=5\)"):
        compiled(logits, bad, w, **kwargs)


def test_unchecked_bad_labels_give_nan_not_an_error_or_a_stray_read():
    """check=False (and one_hot_targets by default) checks nothing: a bad index poisons its sample only."""
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(3))
    idx = torch.tensor([[0, 1], [0, 4], [-1, 2]])
    w = torch.full((3, 2), 0.5)
    per_sample = sparse_mixed_cross_entropy(logits, idx, w, reduction="none", check=False)
    assert torch.isfinite(per_sample[0]) and torch.isnan(per_sample[1:]).all()
    assert torch.isnan(sparse_mixed_cross_entropy(logits, idx, w, smoothing=0.1, check=False))
    t = one_hot_targets(torch.tensor([1, 4, -1, 3]), 4, smoothing=0.1)
    assert torch.isnan(t[1:3]).all() and torch.isfinite(t[[0, 3]]).all()
    torch.testing.assert_close(t[0], torch.tensor([0.025, 0.925, 0.025, 0.025]))


def _loss_calls():
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    idx = torch.stack([labels, labels.flip(0)], dim=1)
    w = torch.tensor([[0.7, 0.3]] * 6)
    return {
        "sparse_mixed_cross_entropy": (sparse_mixed_cross_entropy, (logits, idx, w), {"smoothing": 0.1}),
        "one_hot_targets": (one_hot_targets, (labels, 5), {"smoothing": 0.1}),
        "soft_target_cross_entropy": (soft_target_cross_entropy,
                                      (logits, one_hot_targets(labels, 5, smoothing=0.1)), {"reduction": "sum"}),
    }


# "aot_eager" traces the whole function through dynamo and AOTAutograd with fullgraph=True
# (any graph break, e.g. int(tensor), fails) without inductor's C++ build, which takes
# about 15 s per function on this project's 2-core machines; one inductor run is marked slow.
@pytest.mark.parametrize("name", list(_loss_calls()))
def test_losses_compile_with_fullgraph(name):
    fn, args, kwargs = _loss_calls()[name]
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args, **kwargs), fn(*args, **kwargs))


@pytest.mark.slow
def test_sparse_loss_compiles_with_inductor():
    fn, args, kwargs = _loss_calls()["sparse_mixed_cross_entropy"]
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    torch.testing.assert_close(compiled(*args, **kwargs), fn(*args, **kwargs))


def test_checked_path_is_not_for_compile():
    """check=True reads values back: under fullgraph=True that is a reported graph break, not silence."""
    fn, args, kwargs = _loss_calls()["sparse_mixed_cross_entropy"]
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="(?i)graph break|data-dependent|item|Unsupported"):
        compiled(*args, check=True, **kwargs)


# ============================================================================ KMixup helpers

H, W = 20, 28  # not square, so a swapped H/W shows
TORCH_DTYPES = {"uint8": torch.uint8, "float16": torch.float16, "float32": torch.float32}


def constant_batch(n, dtype, c=3):
    """Sample i is the constant 10 * (i + 1) (distinct, exact in every dtype); labels arange(n)."""
    vals = 10.0 * (np.arange(n) + 1)
    x = torch.from_numpy(np.broadcast_to(vals[:, None, None, None], (n, c, H, W)).copy()).to(TORCH_DTYPES[dtype])
    return x, torch.arange(n), vals


def random_batch(n, dtype, seed=0, c=3, num_classes=10):
    rng = np.random.default_rng(seed)
    if dtype == "uint8":
        x = rng.integers(0, 256, (n, c, H, W), dtype=np.uint8)
    else:
        x = (rng.standard_normal((n, c, H, W)) * 40).astype(dtype)
    return torch.from_numpy(x), torch.from_numpy(rng.integers(0, num_classes, n))


METHODS = {"mixup": dict(mixup_alpha=1.0, cutmix_alpha=0.0),
           "cutmix": dict(mixup_alpha=0.0, cutmix_alpha=1.0),
           "both": dict(mixup_alpha=1.0, cutmix_alpha=1.0)}


def assert_cut_rows_are_exact_shares(out, targets, vals, rows):
    """Every pixel of a cut row comes from one sample; each value's pixel share is its target."""
    o = out.float().numpy()
    for n in rows:
        assert (o[n] == o[n, :1]).all(), "every channel plane takes the same boxes"
        plane = o[n, 0]
        shares = np.array([(plane == v).mean() for v in vals])
        assert shares.sum() == pytest.approx(1.0), "a pixel value that is no sample's value"
        np.testing.assert_allclose(targets[n].numpy(), shares, rtol=0, atol=1e-6)


def assert_blend_rows_are_weighted_sums(out, targets, vals, rows, dtype):
    o = out.float().numpy()
    for n in rows:
        assert (o[n] == o[n].flat[0]).all(), "a blend of constant images is constant"
        want = float(targets[n].double() @ torch.from_numpy(vals))
        tol = {"uint8": 0.5 + 1e-3, "float16": 2e-3 * want, "float32": 1e-5 * want}[dtype]
        assert abs(o[n].flat[0] - want) <= tol, (n, o[n].flat[0], want)


# ============================================================================ KMixup on the CPU


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_dcutmix_pixel_shares_equal_the_targets(mode, k, dtype):
    x, y, vals = constant_batch(12, dtype)
    mixer = KMixup(**METHODS["cutmix"], k=k, mode=mode, label_smoothing=0.0, num_classes=12, seed=k)
    for _ in range(3):
        out, t = mixer(x, y)
        assert out.shape == x.shape and out.dtype == x.dtype and t.dtype == torch.float32 and t.shape == (12, 12)
        assert mixer.last_params.method == "dcutmix"
        assert_cut_rows_are_exact_shares(out, t, vals, range(12))


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_dmixup_of_constant_images_is_the_target_weighted_sum(mode, k, dtype):
    x, y, vals = constant_batch(12, dtype)
    mixer = KMixup(**METHODS["mixup"], k=k, mode=mode, label_smoothing=0.0, num_classes=12, seed=k)
    for _ in range(3):
        out, t = mixer(x, y)
        assert mixer.last_params.method == "dmixup"
        assert_blend_rows_are_weighted_sums(out, t, vals, range(12), dtype)


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
def test_elem_mode_with_both_methods_splits_rows_by_method(dtype):
    x, y, vals = constant_batch(16, dtype)
    mixer = KMixup(**METHODS["both"], k=3, mode="elem", label_smoothing=0.0, num_classes=16, seed=1)
    out, t = mixer(x, y)
    (cut_rows, cut), (blend_rows, blend) = mixer.last_groups
    assert (cut.method, blend.method) == ("dcutmix", "dmixup") and mixer.last_params is None
    assert sorted(np.concatenate([cut_rows, blend_rows]).tolist()) == list(range(16))
    assert len(cut_rows) and len(blend_rows)
    assert_cut_rows_are_exact_shares(out, t, vals, cut_rows)
    assert_blend_rows_are_weighted_sums(out, t, vals, blend_rows, dtype)
    # each part is mixed within itself: a cut row's sources are cut rows
    assert set(cut_rows[cut.sources].ravel()) <= set(cut_rows)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_equals_mix_images_and_mix_labels_on_its_own_record(mode, method):
    x, y = random_batch(10, "float32", seed=2)
    mixer = KMixup(**METHODS[method], k=3, mode=mode, label_smoothing=0.1, num_classes=10, seed=3)
    xn, yn = x.numpy().copy(), y.numpy()
    for _ in range(2):
        out, t = mixer(x, y)
        assert np.array_equal(x.numpy(), xn), "x is never written"
        assert mixer.last_groups
        for rows, rec in mixer.last_groups:
            np.testing.assert_array_equal(out.numpy()[rows], dali_kmix.mix_images(xn[rows], rec, "CHW"))
            np.testing.assert_array_equal(t.numpy()[rows], dali_kmix.mix_labels(yn[rows], rec, 10, smoothing=0.1))


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
def test_channels_last_is_mixed_in_its_own_memory_layout(dtype):
    x, y = random_batch(6, dtype, seed=4)
    xc = x.to(memory_format=torch.channels_last)
    mixer = KMixup(**METHODS["cutmix"], k=3, mode="elem", num_classes=10, seed=5)
    out, t = mixer(xc, y)
    assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == x.dtype
    rec = mixer.last_params
    np.testing.assert_array_equal(out.numpy(), dali_kmix.mix_images(x.numpy(), rec, "CHW"))


def test_non_dense_samples_are_made_contiguous():
    x, y = random_batch(6, "float32", seed=6)
    strided = torch.cat([x, x], dim=3)[..., ::2]  # every sample strided along W
    mixer = KMixup(**METHODS["mixup"], k=2, mode="elem", num_classes=10, seed=7)
    out, _ = mixer(strided, y)
    assert out.is_contiguous()
    np.testing.assert_array_equal(out.numpy(), dali_kmix.mix_images(strided.contiguous().numpy(),
                                                                     mixer.last_params, "CHW"))


def test_output_memory_is_reused_only_once_nothing_refers_to_it():
    x, y = random_batch(6, "float32", seed=31)
    mixer = KMixup(**METHODS["both"], mode="elem", num_classes=10, seed=32)
    first = mixer(x, y)[0]
    ptr, kept = first.data_ptr(), first.clone()
    view = first[2:].numpy()  # a NumPy view of the output keeps its memory in use
    del first
    second, third = mixer(x, y)[0], mixer(x, y)[0]  # two more buffers; then plain allocations
    fourth = mixer(x, y)[0]
    assert len({ptr, second.data_ptr(), third.data_ptr(), fourth.data_ptr()}) == 4
    np.testing.assert_array_equal(view, kept[2:].numpy())
    del view, second
    fifth = mixer(x, y)[0]
    assert fifth.data_ptr() == ptr
    for rows, rec in mixer.last_groups:
        np.testing.assert_array_equal(fifth.numpy()[rows], dali_kmix.mix_images(x.numpy()[rows], rec, "CHW"))
    fresh = KMixup(num_classes=10, reuse_outputs=False)
    assert fresh(x, y)[0].shape == x.shape and not fresh._pool._slots  # nothing kept between calls


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothing_is_timms(smoothing):
    """off = s/C, on = 1 - s + s/C, then mixed: t_s = (1 - s) t_0 + s/C on the same record."""
    x, y = random_batch(8, "float32", seed=8)
    t0 = KMixup(**METHODS["both"], mode="elem", label_smoothing=0.0, num_classes=10, seed=9)(x, y)[1]
    ts = KMixup(**METHODS["both"], mode="elem", label_smoothing=smoothing, num_classes=10, seed=9)(x, y)[1]
    torch.testing.assert_close(ts, (1 - smoothing) * t0 + smoothing / 10, rtol=0, atol=1e-6)
    torch.testing.assert_close(ts.sum(1), torch.ones(8))


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_prob_zero_and_mixup_disabled_are_the_identity(mode):
    x, y = random_batch(7, "uint8", seed=10)
    on, off = np.float32(1 - 0.1 + 0.1 / 10), np.float32(0.1 / 10)
    expect = torch.from_numpy(np.where(np.arange(10)[None] == y.numpy()[:, None], on, off))
    for mixer in (KMixup(prob=0.0, mode=mode, num_classes=10),
                  KMixup(mixup_alpha=0.0, prob=0.0, mode=mode, num_classes=10)):
        out, t = mixer(x, y)
        assert out is x and torch.equal(t, expect) and mixer.last_groups == []
    mixer = KMixup(**METHODS["both"], mode=mode, num_classes=10)
    mixer.mixup_enabled = False
    out, t = mixer(x, y)
    assert out is x and torch.equal(t, expect)
    mixer.mixup_enabled = True
    assert mixer(x, y)[0] is not x


def _binomial_ok(count, trials, p):
    """Within 4 standard deviations of the binomial mean (two-sided p ~ 6e-5; the seed is fixed anyway)."""
    return abs(count - trials * p) <= 4 * np.sqrt(trials * p * (1 - p))


def test_switch_prob_per_batch():
    x, y = random_batch(2, "float32", seed=11)
    x = x[:, :1, :4, :4].contiguous()
    mixer = KMixup(**METHODS["both"], k=2, switch_prob=0.3, mode="batch", num_classes=10, seed=12)
    trials = 400
    cut = 0
    for _ in range(trials):
        mixer(x, y)
        cut += mixer.last_params.method == "dcutmix"
    assert _binomial_ok(cut, trials, 0.3), cut


def test_switch_prob_per_sample():
    x, y = random_batch(40, "float32", seed=13)
    x = x[:, :1, :4, :4].contiguous()
    mixer = KMixup(**METHODS["both"], k=2, switch_prob=0.7, mode="elem", num_classes=10, seed=14)
    cut = 0
    for _ in range(50):
        mixer(x, y)
        cut += sum(len(rows) for rows, rec in mixer.last_groups if rec.method == "dcutmix")
    assert _binomial_ok(cut, 50 * 40, 0.7), cut


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_prob_per_batch_or_per_sample(mode):
    n = 2 if mode == "batch" else 40
    x, y = random_batch(n, "float32", seed=15)
    x = x[:, :1, :4, :4].contiguous()
    mixer = KMixup(**METHODS["mixup"], k=2, prob=0.4, mode=mode, num_classes=10, seed=16)
    mixed = trials = 0
    for _ in range(300 if mode == "batch" else 50):
        out, _ = mixer(x, y)
        rec = mixer.last_params
        if mode == "batch":
            trials += 1
            mixed += rec is not None
        else:
            trials += n
            own = rec.sources == np.arange(n)[:, None]
            mixed += int((~(own.all(1) & (rec.weights[:, 0] == 1))).sum())
    assert _binomial_ok(mixed, trials, 0.4), (mixed, trials)


def test_batch_mode_shares_one_draw_elem_mode_draws_per_sample():
    x, y = random_batch(8, "float32", seed=17)
    for method in ("mixup", "cutmix"):
        mixer = KMixup(**METHODS[method], k=3, mode="batch", num_classes=10, seed=18)
        mixer(x, y)
        rec = mixer.last_params
        assert (rec.weights == rec.weights[:1]).all()
        if rec.boxes is not None:
            assert (rec.boxes == rec.boxes[:1]).all()
        mixer = KMixup(**METHODS[method], k=3, mode="sample", num_classes=10, seed=18)  # "sample" = "elem"
        mixer(x, y)
        assert len(np.unique(mixer.last_params.weights, axis=0)) > 1


@pytest.mark.parametrize("n", [1, 5, 0])
def test_odd_and_tiny_batches(n):
    x, y = random_batch(n, "float32", seed=19)
    for mode in ("batch", "elem"):
        out, t = KMixup(**METHODS["both"], mode=mode, num_classes=10, seed=20)(x, y)
        assert out.shape == x.shape and t.shape == (n, 10)
        torch.testing.assert_close(t.sum(1), torch.ones(n))


def test_column_targets_and_other_integer_dtypes_are_accepted():
    x, y = random_batch(4, "float32", seed=21)
    a = KMixup(num_classes=10, seed=22)(x, y)[1]
    b = KMixup(num_classes=10, seed=22)(x, y[:, None].int())[1]
    assert torch.equal(a, b)


def test_timm_drop_in():
    """k=2: timm's call, targets for timm's SoftTargetCrossEntropy, timm's identity targets."""
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    x, y = random_batch(8, "float32", seed=23)
    args = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode="batch",
                label_smoothing=0.1, num_classes=10)
    ours = KMixup(**args, k=2, seed=24)
    out, t = ours(x, y)
    logits = torch.randn(8, 10)
    torch.testing.assert_close(SoftTargetCrossEntropy()(logits, t), soft_target_cross_entropy(logits, t))
    assert set(vars(Mixup(**args))) <= set(dir(ours))  # every setting timm's Mixup has (its mix_prob is our prob)
    args["prob"] = 0.0
    torch.testing.assert_close(KMixup(**args)(x, y)[1], Mixup(**args)(x.clone(), y)[1])


CTOR_ERRORS = [
    ("k1", dict(k=1), ValueError, r"k must be >= 2, got 1"),
    ("k-str", dict(k="3"), TypeError, r"k must be an integer, got '3'"),
    ("mixup-alpha-negative", dict(mixup_alpha=-1.0), ValueError, r"mixup_alpha must be >= 0 and finite, got -1\.0"),
    ("cutmix-alpha-negative", dict(cutmix_alpha=-0.5), ValueError, r"cutmix_alpha must be >= 0 and finite, got -0\.5"),
    ("alpha-nan", dict(mixup_alpha=float("nan")), ValueError, r"mixup_alpha must be >= 0 and finite, got nan"),
    ("alpha-wrong-length", dict(mixup_alpha=[1.0, 2.0], k=3), ValueError, r"mixup_alpha must be .* k=3 .*\[1\.0, 2\.0\]"),
    ("both-alpha-zero", dict(mixup_alpha=0.0, cutmix_alpha=0.0), ValueError,
     r"mixup_alpha and cutmix_alpha are both 0.*prob=0"),
    ("mode-pair", dict(mode="pair"), ValueError, r"mode='pair' is not supported"),
    ("mode-unknown", dict(mode="elements"), ValueError, r"mode must be one of \['batch', 'elem', 'sample'\], got 'elements'"),
    ("cutmix-minmax", dict(cutmix_minmax=(0.2, 0.8)), ValueError, r"cutmix_minmax is not supported.*\(0\.2, 0\.8\)"),
    ("prob", dict(prob=1.5), ValueError, r"prob must be in \[0, 1\], got 1\.5"),
    ("switch-prob", dict(switch_prob=-0.1), ValueError, r"switch_prob must be in \[0, 1\], got -0\.1"),
    ("smoothing", dict(label_smoothing=1.0), ValueError, r"label_smoothing must be a number in \[0, 1\), got 1\.0"),
    ("num-classes", dict(num_classes=0), ValueError, r"num_classes must be >= 1, got 0"),
    ("correct-lam", dict(correct_lam="yes"), TypeError, r"correct_lam must be True or False, got 'yes'"),
    ("seed", dict(seed=-3), ValueError, r"seed must be >= 0, got -3"),
    ("reuse-outputs", dict(reuse_outputs=2), TypeError, r"reuse_outputs must be True or False, got 2"),
]


@pytest.mark.parametrize("kwargs, exc, match", [c[1:] for c in CTOR_ERRORS], ids=[c[0] for c in CTOR_ERRORS])
def test_bad_constructor_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        KMixup(**kwargs)


# ---------------------------------------------------------------------------- settings changed after construction

BOTH = dict(mixup_alpha=1.0, cutmix_alpha=1.0)
SETTING_CHANGES = [
    # id, constructor arguments, assignments in order, methods the next calls may draw (None: not checked)
    ("cutmix_alpha=0", BOTH, [("cutmix_alpha", 0.0)], {"dmixup"}),
    ("mixup_alpha=0", BOTH, [("mixup_alpha", 0.0)], {"dcutmix"}),
    ("mixup-to-cutmix", METHODS["mixup"], [("cutmix_alpha", 1.0), ("mixup_alpha", 0.0)], {"dcutmix"}),
    ("alpha-vector", METHODS["mixup"], [("mixup_alpha", [0.2, 1.0, 5.0])], {"dmixup"}),
    ("k=4", BOTH, [("k", 4)], None),
    ("k=2", BOTH, [("k", 2)], None),
    ("mix_prob=0.3", BOTH, [("mix_prob", 0.3)], None),  # timm's name of prob
]


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("ctor, sets, methods", [c[1:] for c in SETTING_CHANGES], ids=[c[0] for c in SETTING_CHANGES])
def test_a_setting_changed_after_construction_is_used_from_the_next_call(ctor, sets, methods, mode):
    """As in timm's Mixup (which reads its attributes on every call): set after construction is the same as given
    to the constructor, bit for bit."""
    x, y = random_batch(10, "float32", seed=40)
    changed = KMixup(**ctor, k=3, mode=mode, num_classes=10, seed=41)
    changed(x, y)  # a call with the old settings first
    for attr, value in sets:
        setattr(changed, attr, value)
    given = {"prob" if attr == "mix_prob" else attr: value for attr, value in sets}
    fresh = KMixup(**{**ctor, "k": 3, **given}, mode=mode, num_classes=10, seed=41)
    fresh._rng.bit_generator.state = changed._rng.bit_generator.state
    drawn = set()
    for _ in range(6):
        (a, ta), (b, tb) = changed(x, y), fresh(x, y)
        assert torch.equal(a, b) and torch.equal(ta, tb)
        assert [(r.tolist(), p.method) for r, p in changed.last_groups] == \
            [(r.tolist(), p.method) for r, p in fresh.last_groups]
        for _, rec in changed.last_groups:
            drawn.add(rec.method)
            assert rec.k == fresh.k
    if methods is not None:
        assert drawn == methods


def test_k_and_a_vector_alpha_change_together_in_order():
    x, y = random_batch(6, "float32", seed=42)
    mixer = KMixup(mixup_alpha=[1.0, 2.0, 3.0], k=3, num_classes=10, seed=43)
    with pytest.raises(ValueError, match=r"k must match mixup_alpha, a sequence of 3 numbers, got k=4; set "
                                         r"mixup_alpha to a number first"):
        mixer.k = 4
    assert mixer.k == 3 and mixer(x, y)[0].shape == x.shape  # unchanged and still usable
    mixer.mixup_alpha = 1.0
    mixer.k = 4
    mixer.mixup_alpha = [1.0, 2.0, 3.0, 4.0]
    mixer(x, y)
    assert mixer.last_params.k == 4


def test_both_alphas_set_to_zero_raise_at_the_call_unless_nothing_is_mixed():
    """Setting one alpha to 0 before the other to > 0 is fine; a call with both 0 that would mix raises (timm fails
    the same way, at call time)."""
    x, y = random_batch(6, "float32", seed=44)
    mixer = KMixup(**METHODS["mixup"], num_classes=10, seed=45)
    mixer.mixup_alpha = 0.0
    with pytest.raises(ValueError, match=r"mixup_alpha and cutmix_alpha are both 0, so there is nothing to mix.*"
                                         r"prob=0 \(or mixup_enabled=False\)"):
        mixer(x, y)
    mixer.mixup_enabled = False
    assert mixer(x, y)[0] is x
    mixer.mixup_enabled, mixer.prob = True, 0.0
    assert mixer(x, y)[0] is x


SETTING_ERRORS = [
    ("k1", "k", 1, ValueError, r"k must be >= 2, got 1"),
    ("k-str", "k", "3", TypeError, r"k must be an integer, got '3'"),
    ("mixup-alpha-negative", "mixup_alpha", -1.0, ValueError, r"mixup_alpha must be >= 0 and finite, got -1\.0"),
    ("cutmix-alpha-nan", "cutmix_alpha", float("nan"), ValueError, r"cutmix_alpha must be >= 0 and finite, got nan"),
    ("cutmix-alpha-wrong-length", "cutmix_alpha", [1.0, 2.0], ValueError,
     r"cutmix_alpha must be .* k=3 .*\[1\.0, 2\.0\]"),
    ("mixup-alpha-str", "mixup_alpha", "1", TypeError, r"mixup_alpha must be a number >= 0 .*got '1'"),
    ("prob", "prob", 1.5, ValueError, r"prob must be in \[0, 1\], got 1\.5"),
    ("mix-prob", "mix_prob", -0.5, ValueError, r"mix_prob must be in \[0, 1\], got -0\.5"),
    ("switch-prob", "switch_prob", float("nan"), ValueError, r"switch_prob must be in \[0, 1\], got nan"),
    ("mode-pair", "mode", "pair", ValueError, r"mode='pair' is not supported"),
    ("mode-unknown", "mode", "elements", ValueError,
     r"mode must be one of \['batch', 'elem', 'sample'\], got 'elements'"),
    ("smoothing", "label_smoothing", -0.1, ValueError, r"label_smoothing must be a number in \[0, 1\), got -0\.1"),
    ("num-classes", "num_classes", 0, ValueError, r"num_classes must be >= 1, got 0"),
    ("num-classes-float", "num_classes", 10.0, TypeError, r"num_classes must be an integer, got 10\.0"),
    ("correct-lam", "correct_lam", "yes", TypeError, r"correct_lam must be True or False, got 'yes'"),
    ("cutmix-minmax", "cutmix_minmax", (0.2, 0.8), ValueError, r"cutmix_minmax is not supported.*\(0\.2, 0\.8\)"),
    ("multi-label", "multi_label", True, ValueError, r"multi_label=True is not supported by KMixup"),
    ("mixup-enabled", "mixup_enabled", "no", TypeError, r"mixup_enabled must be True or False, got 'no'"),
    ("check-labels", "check_labels", 1, TypeError, r"check_labels must be True or False, got 1"),
]


@pytest.mark.parametrize("attr, value, exc, match", [c[1:] for c in SETTING_ERRORS], ids=[c[0] for c in SETTING_ERRORS])
def test_bad_settings_raise_at_assignment_and_keep_the_old_value(attr, value, exc, match):
    x, y = random_batch(4, "float32", seed=46)
    mixer = KMixup(**BOTH, k=3, num_classes=10, seed=47)
    before = getattr(mixer, attr, None)
    with pytest.raises(exc, match=match):
        setattr(mixer, attr, value)
    assert getattr(mixer, attr, None) == before
    out, t = mixer(x, y)
    assert out.shape == x.shape and t.shape == (4, 10)


# ---------------------------------------------------------------------------- pickling


def _dumps_loads(how, mixer):
    import io
    import pickle

    if how == "pickle":
        return pickle.loads(pickle.dumps(mixer))
    buf = io.BytesIO()
    torch.save(mixer, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_a_pickled_mixer_continues_with_the_same_batches(mode, how):
    """After CPU calls (output buffers lent out, held by weak references) a mixer pickles; the copy keeps its
    settings and its generator's state, so its next batches are the original's, bit for bit."""
    x, y = random_batch(9, "uint8", seed=48)
    mixer = KMixup(**BOTH, k=3, mode=mode, prob=0.7, num_classes=10, seed=49)
    kept = [mixer(x, y) for _ in range(3)]  # outputs still alive: the pool's buffers are in use
    mixer.label_smoothing, mixer.k = 0.2, 4
    restored = _dumps_loads(how, mixer)
    assert (restored.label_smoothing, restored.k, restored.mode) == (0.2, 4, mode)
    assert not restored._pool._slots and restored._pool.capacity == mixer._pool.capacity
    for _ in range(5):
        (a, ta), (b, tb) = mixer(x, y), restored(x, y)
        assert torch.equal(a, b) and torch.equal(ta, tb)
        assert (a is x) == (b is x)
    assert len(kept) == 3


# ---------------------------------------------------------------------------- dtype of the targets


@pytest.fixture
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


UNMIXED = [("coin", dict(prob=0.5), {}), ("prob-0", dict(prob=0.0), {}), ("disabled", {}, {"mixup_enabled": False})]


@pytest.mark.parametrize("ctor, sets", [c[1:] for c in UNMIXED], ids=[c[0] for c in UNMIXED])
def test_targets_are_float32_under_a_float64_default_dtype(float64_default, ctor, sets):
    x, y = random_batch(6, "float32", seed=50)
    mixer = KMixup(**METHODS["mixup"], num_classes=10, seed=51, **ctor)
    for attr, value in sets.items():
        setattr(mixer, attr, value)
    unmixed = 0
    for _ in range(8):
        out, t = mixer(x, y)
        unmixed += out is x
        assert t.dtype == torch.float32 and t.shape == (6, 10)
    assert unmixed
    assert one_hot_targets(y, 10, smoothing=0.1).dtype == torch.float32


def _call_errors():
    x, y = random_batch(4, "float32", seed=25)
    return [
        ("x-3d", x[0], y, ValueError, r"x must have 4 dimensions \(N, C, H, W\), got shape \(3, 20, 28\)"),
        ("x-numpy", x.numpy(), y, TypeError, r"x must be a torch\.Tensor, got ndarray"),
        ("x-int32", x.int(), y, TypeError, r"x must have dtype torch\.uint8, torch\.float16 or torch\.float32, "
                                           r"got torch\.int32"),
        ("target-float", x, y.float(), TypeError, r"target must be integer class indices, got dtype torch\.float32"),
        ("target-too-big", x, torch.tensor([0, 1, 10, 2]), ValueError,
         r"target must lie in \[0, num_classes=10\), got label 10"),
        ("target-negative", x, torch.tensor([0, -1, 3, 2]), ValueError,
         r"target must lie in \[0, num_classes=10\), got label -1"),
        ("target-length", x, y[:3], ValueError, r"target has 3 entries but x has 4 samples"),
        ("target-2d", x, torch.zeros(4, 2, dtype=torch.long), ValueError,
         r"target must be class indices of shape \(N,\), got shape \(4, 2\)"),
        ("target-list", x, [0, 1, 2, 3], TypeError, r"target must be a torch\.Tensor of class indices, got list"),
    ]


@pytest.mark.parametrize("case", _call_errors(), ids=[c[0] for c in _call_errors()])
def test_bad_call_arguments(case):
    _, x, y, exc, match = case
    with pytest.raises(exc, match=match):
        KMixup(num_classes=10)(x, y)


def test_import_stays_light():
    code = "import sys, dali_kmix.torch; assert 'cupy' not in sys.modules, 'cupy imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


# ============================================================================ KMixup on CUDA


def _late_batch_on(stream, x, y, seconds=0.5):
    """``(xg, yg)`` on the device holding stale values (3s and 9s) now, and ``x``, ``y`` once ``stream`` has slept about
    ``seconds``: work queued on ``stream`` after this call reads the batch, work on any other stream the stale values."""
    from _helpers import gpu_sleep

    src_x, src_y = x.cuda(), y.cuda()
    xg, yg = torch.full_like(src_x, 3), torch.full_like(src_y, 9)
    torch.cuda.synchronize()
    gpu_sleep(seconds, stream.cuda_stream)
    with torch.cuda.stream(stream):
        xg.copy_(src_x)
        yg.copy_(src_y)
    return xg, yg


def _matches_its_records(mixer, out, t, x, y):
    """Whether every row of ``out`` / ``t`` is the mixer's record applied to ``x`` / ``y`` (the reference)."""
    for rows, rec in mixer.last_groups:
        rec = rec.to_numpy()
        if not np.array_equal(out.cpu().numpy()[rows], dali_kmix.mix_images(x.numpy()[rows], rec, "CHW")):
            return False
        if not np.array_equal(t.cpu().numpy()[rows], dali_kmix.mix_labels(y.numpy()[rows], rec, 10, smoothing=0.1)):
            return False
    return bool(mixer.last_groups)


def _mix_late_batch_on_a_side_stream(monkeypatch, mode, method, dtype, fault=None):
    """``(on_side, returned_early, ordered)`` of one KMixup call on a non-default torch stream whose batch arrives
    only after the stream has slept 0.3 s: every dali_kmix kernel launched on that stream (torch's current one), the
    call returned while the stream still slept (no host synchronisation), the output the record applied to the batch
    (not the stale 3s / 9s that a read not ordered after the copy sees). ``fault``: None, "wrong stream" (the mixer
    made to use the legacy default stream) or "host sync" (made to synchronise after mixing)."""
    import cupy

    from dali_kmix import torch as kt
    from dali_kmix.backends import gpu

    x, y = random_batch(12, dtype, seed=26)
    mixer = KMixup(**METHODS[method], k=3, mode=mode, label_smoothing=0.1, num_classes=10, seed=27)
    mixer(x.cuda(), y.cuda())  # warm-up: kernels compiled and loaded, the device generator made
    launched_on = []  # CuPy's current stream at every dali_kmix kernel launch
    real_get = gpu.KernelModule.get_function

    def get_function(self, expr):
        fn = real_get(self, expr)
        return lambda *a, **kw: (launched_on.append(cupy.cuda.get_current_stream().ptr), fn(*a, **kw))[1]

    monkeypatch.setattr(gpu.KernelModule, "get_function", get_function)
    if fault == "wrong stream":
        monkeypatch.setattr(kt, "_cupy_stream", lambda cupy, stream, device_id: cupy.cuda.Stream.null)
    elif fault == "host sync":
        real = KMixup._mix_cuda

        def mix_then_sync(self, *args):  # a CuPy-side wait for torch's stream, unseen by torch's sync debug mode
            result = real(self, *args)
            cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream).synchronize()
            return result

        monkeypatch.setattr(KMixup, "_mix_cuda", mix_then_sync)
    side = torch.cuda.Stream()
    xg, yg = _late_batch_on(side, x, y, seconds=0.3)
    with torch.cuda.stream(side):
        torch.cuda.set_sync_debug_mode("error")  # a torch-side host synchronisation raises
        try:
            out, t = mixer(xg, yg)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        returned_early = not side.query()  # the stream still sleeps: nothing waited for it
    torch.cuda.synchronize()
    assert out.device == xg.device and t.device == xg.device and out.dtype == xg.dtype and t.dtype == torch.float32
    assert torch.equal(xg.cpu(), x), "x is never written"
    assert all(isinstance(rec.sources, cupy.ndarray) for _, rec in mixer.last_groups)
    on_side = bool(launched_on) and set(launched_on) == {side.cuda_stream}
    return on_side, returned_early, _matches_its_records(mixer, out, t, x, y)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_cuda_path_is_the_record_applied_on_torchs_stream_without_host_sync(mode, method, dtype, monkeypatch):
    on_side, returned_early, ordered = _mix_late_batch_on_a_side_stream(monkeypatch, mode, method, dtype)
    assert on_side, "a dali_kmix kernel was launched on another stream than torch's current one"
    assert returned_early, "the call waited for the stream: a host synchronisation"
    assert ordered, "the mix read the batch before the stream's copy landed"


@pytest.mark.gpu
@pytest.mark.parametrize("fault", ["wrong stream", "host sync"])
def test_the_stream_checks_catch_a_wrong_stream_and_a_host_sync(fault, monkeypatch):
    # the test above, on a mixer given each fault: its check for that fault fails. (A mix on the legacy default
    # stream still reads the batch in order: the DLPack hand-over makes that stream wait for torch's.)
    on_side, returned_early, _ = _mix_late_batch_on_a_side_stream(monkeypatch, "elem", "both", "uint8", fault)
    assert (on_side, returned_early) == ((False, True) if fault == "wrong stream" else (True, False))


@pytest.mark.gpu
def test_the_device_generator_is_ordered_across_streams():
    # Draws on a stream that sleeps, then on another stream: without an order the second call's draws would run
    # first, on the same generator state; with it, the records equal those of the same calls on one stream.
    from _helpers import gpu_sleep

    x, y = random_batch(10, "float32", seed=31)
    xg, yg = x.cuda(), y.cuda()
    one = KMixup(**METHODS["both"], k=4, mode="elem", num_classes=10, seed=32)
    two = KMixup(**METHODS["both"], k=4, mode="elem", num_classes=10, seed=32)
    one(xg, yg)
    two(xg, yg)  # both generators made and used once on the default stream (a valid state to race for)
    torch.cuda.synchronize()
    want = []
    for _ in range(2):
        one(xg, yg)
        want.append([(rows, rec.to_numpy()) for rows, rec in one.last_groups])
    a, b = torch.cuda.Stream(), torch.cuda.Stream()
    got = []
    for stream, sleep in ((a, 0.5), (b, 0.0)):
        if sleep:
            gpu_sleep(sleep, stream.cuda_stream)
        with torch.cuda.stream(stream):
            two(xg, yg)
        got.append(list(two.last_groups))
    torch.cuda.synchronize()
    for w, g in zip(want, got):
        assert len(w) == len(g)
        for (rows_w, rec_w), (rows_g, rec_g) in zip(w, g):
            rec_g = rec_g.to_numpy()
            np.testing.assert_array_equal(rows_w, rows_g)
            np.testing.assert_array_equal(rec_w.sources, rec_g.sources)
            np.testing.assert_array_equal(rec_w.weights, rec_g.weights)


def test_the_device_generator_waits_for_its_last_use_on_another_stream(monkeypatch):
    # the ordering logic on the host, with stand-ins for CuPy's streams and generator
    import cupy

    monkeypatch.setattr(cupy.random, "default_rng", lambda seed: ("generator", seed))
    log = []

    class Stream:
        def __init__(self, ptr):
            self.ptr = ptr

        def wait_event(self, event):
            log.append((self.ptr, "waits for", event))

        def record(self):
            log.append((self.ptr, "records"))
            return f"event on {self.ptr}"

    a, b = Stream(11), Stream(22)
    mixer = KMixup(num_classes=10, seed=1)
    gen = mixer._cupy_generator(0, a)
    mixer._generator_used(0, a)
    assert mixer._cupy_generator(0, a) is gen and log == [(11, "records")]
    assert mixer._cupy_generator(0, b) is gen and log[-1] == (22, "waits for", "event on 11")
    mixer._generator_used(0, b)
    mixer._cupy_generator(0, b)
    assert log[-1] == (22, "records")
    mixer._cupy_generator(0, a)
    assert log[-1] == (11, "waits for", "event on 22")
    assert mixer._cupy_generator(1, b) != gen or mixer._cupy_generators[1][1] is None  # per device


STRIDED_CUDA = {
    "every-other-column": lambda t: torch.cat([t, t], dim=3)[..., ::2],
    "h-w-transposed": lambda t: t.transpose(2, 3).contiguous().transpose(2, 3),
    "every-other-sample": lambda t: torch.stack([t, t], dim=1).flatten(0, 1)[::2],
    "channels-last": lambda t: t.contiguous(memory_format=torch.channels_last),
    "one-channel-odd-strides": lambda t: t[:, :1].as_strided(t[:, :1].shape, (t[0].numel(), 7, W, 1)),
}


@pytest.mark.gpu
@pytest.mark.parametrize("layout", list(STRIDED_CUDA))
def test_cuda_strided_batches_are_mixed_as_their_values(layout):
    x, y = random_batch(7, "uint8", seed=33)
    xg = STRIDED_CUDA[layout](x.cuda())
    assert torch.equal(xg.cpu(), STRIDED_CUDA[layout](x))
    mixer = KMixup(**METHODS["both"], k=3, mode="elem", num_classes=10, seed=34)
    out, t = mixer(xg, y.cuda())
    dense = STRIDED_CUDA[layout](x).contiguous()
    for rows, rec in mixer.last_groups:
        np.testing.assert_array_equal(out.cpu().numpy()[rows],
                                      dali_kmix.mix_images(dense.numpy()[rows], rec.to_numpy(), "CHW"))
        np.testing.assert_array_equal(t.cpu().numpy()[rows],
                                      dali_kmix.mix_labels(y.numpy()[rows], rec.to_numpy(), 10, smoothing=0.1))


@pytest.mark.gpu
def test_cuda_channels_last_identity_and_bad_labels():
    x, y = random_batch(8, "uint8", seed=28)
    xg = x.cuda().to(memory_format=torch.channels_last)
    mixer = KMixup(**METHODS["both"], k=3, mode="elem", num_classes=10, seed=29)
    out, t = mixer(xg, y.cuda())
    assert out.is_contiguous(memory_format=torch.channels_last)
    for rows, rec in mixer.last_groups:
        np.testing.assert_array_equal(out.cpu().numpy()[rows],
                                      dali_kmix.mix_images(x.numpy()[rows], rec.to_numpy(), "CHW"))
    bad = y.clone()
    bad[3] = 10
    out, t = KMixup(num_classes=10, seed=30)(xg, bad.cuda())  # unchecked: no host read, NaN rows instead
    assert torch.isnan(t).any(1).cpu().any()
    with pytest.raises(ValueError, match=r"target must lie in \[0, num_classes=10\), got label 10"):
        KMixup(num_classes=10, check_labels=True)(xg, bad.cuda())
    ident, t = KMixup(prob=0.0, num_classes=10)(xg, y.cuda())
    assert ident is xg and t.device == xg.device
