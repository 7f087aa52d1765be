"""Losses for mixed targets: dense and sparse agree, match PyTorch's own cross-entropy,
and run under ``torch.compile(fullgraph=True)`` (no host synchronisation by default)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dali_kmix
from dali_kmix.torch import one_hot_targets, soft_target_cross_entropy, sparse_mixed_cross_entropy

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


def test_unchecked_bad_labels_give_nan_not_an_error_or_a_stray_read():
    """The default path checks nothing on the host: a bad index poisons its sample only."""
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(3))
    idx = torch.tensor([[0, 1], [0, 4], [-1, 2]])
    w = torch.full((3, 2), 0.5)
    per_sample = sparse_mixed_cross_entropy(logits, idx, w, reduction="none")
    assert torch.isfinite(per_sample[0]) and torch.isnan(per_sample[1:]).all()
    assert torch.isnan(sparse_mixed_cross_entropy(logits, idx, w, smoothing=0.1))
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
