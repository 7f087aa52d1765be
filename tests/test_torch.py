"""Losses for mixed targets: dense and sparse agree, and match PyTorch's own cross-entropy."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dali_kmix
from dali_kmix.torch import one_hot_targets, soft_target_cross_entropy, sparse_mixed_cross_entropy


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
        sparse_mixed_cross_entropy(logits, torch.tensor([[0, 4]] * 3), torch.full((3, 2), 0.5))
    with pytest.raises(ValueError, match=r"label_w must have the shape of label_idx \(3, 2\), got \(3, 3\)"):
        sparse_mixed_cross_entropy(logits, torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"reduction must be one of \['mean', 'sum', 'none'\], got 'avg'"):
        soft_target_cross_entropy(logits, torch.zeros(3, 4), reduction="avg")
    with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\), got 1\.5"):
        sparse_mixed_cross_entropy(logits, torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 2), smoothing=1.5)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes=4\)"):
        one_hot_targets(torch.tensor([4]), 4)
