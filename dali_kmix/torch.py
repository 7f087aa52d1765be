"""The PyTorch side: losses for mixed targets.

* :func:`soft_target_cross_entropy` takes dense targets float32 ``(N, C)`` (the
  ``label_format="dense"`` output of the operators);
* :func:`sparse_mixed_cross_entropy` takes ``label_idx`` int ``(N, K)`` and
  ``label_w`` float ``(N, K)`` (``label_format="sparse"``), for very many classes.

On the same mix both give the same loss (up to float rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["soft_target_cross_entropy", "sparse_mixed_cross_entropy", "one_hot_targets"]

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(_REDUCTIONS)}, got {reduction!r}")


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``-sum_c targets[n, c] * log_softmax(logits)[n, c]``, averaged over the batch by default.

    Args:
        logits: ``(N, C)`` raw scores (any float dtype; computed in float32).
        targets: ``(N, C)`` soft targets, rows summing to 1.
        reduction: "mean", "sum" or "none".
    """
    _check_reduction(reduction)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    if tuple(targets.shape) != tuple(logits.shape):
        raise ValueError(f"targets must have the shape of logits {tuple(logits.shape)}, got {tuple(targets.shape)}")
    logp = F.log_softmax(logits.float(), dim=-1)
    return _reduce(-(targets.to(logp.dtype) * logp).sum(dim=-1), reduction)


def sparse_mixed_cross_entropy(logits: torch.Tensor, label_idx: torch.Tensor, label_w: torch.Tensor,
                               smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against ``sum_k label_w[n, k] * onehot_s(label_idx[n, k])`` without building it.

    Args:
        logits: ``(N, C)`` raw scores.
        label_idx: ``(N, K)`` class indices in ``[0, C)``.
        label_w: ``(N, K)`` weights, rows summing to 1.
        smoothing: label smoothing s (each one-hot becomes ``1 - s + s/C`` / ``s/C``).
        reduction: "mean", "sum" or "none".
    """
    _check_reduction(reduction)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    n, c = logits.shape
    if label_idx.ndim != 2 or label_idx.shape[0] != n:
        raise ValueError(f"label_idx must have shape (N={n}, K), got {tuple(label_idx.shape)}")
    if tuple(label_w.shape) != tuple(label_idx.shape):
        raise ValueError(f"label_w must have the shape of label_idx {tuple(label_idx.shape)}, got {tuple(label_w.shape)}")
    if not 0.0 <= float(smoothing) < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if label_idx.numel() and (int(label_idx.min()) < 0 or int(label_idx.max()) >= c):
        raise ValueError(f"label_idx must lie in [0, C={c}), got values in "
                         f"[{int(label_idx.min())}, {int(label_idx.max())}]")
    logp = F.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(1, label_idx.long())
    w = label_w.to(logp.dtype)
    loss = -(w * picked).sum(dim=-1)
    if smoothing:
        loss = (1.0 - smoothing) * loss - smoothing * w.sum(dim=-1) * logp.mean(dim=-1)
    return _reduce(loss, reduction)


def one_hot_targets(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """float32 ``(N, C)`` targets of unmixed labels (with optional smoothing)."""
    labels = labels.reshape(-1).long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, num_classes={num_classes}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    t = F.one_hot(labels, num_classes).float()
    if smoothing:
        t = t * (1.0 - smoothing) + smoothing / num_classes
    return t
