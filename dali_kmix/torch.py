"""The PyTorch side: losses for mixed targets.

* :func:`soft_target_cross_entropy` takes dense targets float32 ``(N, C)`` (the
  ``label_format="dense"`` output of the operators);
* :func:`sparse_mixed_cross_entropy` takes ``label_idx`` int ``(N, K)`` and
  ``label_w`` float ``(N, K)`` (``label_format="sparse"``), for very many classes.

On the same mix both give the same loss (up to float rounding). The losses and
:func:`one_hot_targets` never read tensor values back to the host by default, so
they run inside ``torch.compile(fullgraph=True)`` and never stall a CUDA stream: a
class index outside ``[0, C)`` turns the loss (or the target row) into NaN instead
of raising. ``check=True`` raises ValueError instead (it reads the min and max
back: a host synchronisation, and a graph break under ``torch.compile``).
"""

from __future__ import annotations

import math

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


def _check_range(name: str, values: torch.Tensor, num_classes: int, bound: str):
    """The host-side range check of ``check=True`` (reads min and max back)."""
    if values.numel():
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name} must lie in [0, {bound}={num_classes}), got values in [{lo}, {hi}]")


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``-sum_c targets[n, c] * log_softmax(logits)[n, c]``, averaged over the batch by default.

    Args:
        logits: ``(N, C)`` raw scores (any float dtype; computed in float32).
        targets: ``(N, C)`` soft targets, rows summing to 1.
        reduction: "mean", "sum" or "none".

    Only shapes are checked (no data-dependent check: safe under ``torch.compile(fullgraph=True)``).
    """
    _check_reduction(reduction)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    if tuple(targets.shape) != tuple(logits.shape):
        raise ValueError(f"targets must have the shape of logits {tuple(logits.shape)}, got {tuple(targets.shape)}")
    logp = F.log_softmax(logits.float(), dim=-1)
    return _reduce(-(targets.to(logp.dtype) * logp).sum(dim=-1), reduction)


def sparse_mixed_cross_entropy(logits: torch.Tensor, label_idx: torch.Tensor, label_w: torch.Tensor,
                               smoothing: float = 0.0, reduction: str = "mean", *, check: bool = False) -> torch.Tensor:
    """Cross-entropy against ``sum_k label_w[n, k] * onehot_s(label_idx[n, k])`` without building it.

    Args:
        logits: ``(N, C)`` raw scores.
        label_idx: ``(N, K)`` class indices in ``[0, C)``.
        label_w: ``(N, K)`` weights, rows summing to 1.
        smoothing: label smoothing s (each one-hot becomes ``1 - s + s/C`` / ``s/C``), a Python number.
        reduction: "mean", "sum" or "none".
        check: False (default): no data-dependent check, so no host synchronisation and
            no graph break; a sample with an index outside ``[0, C)`` gets a NaN loss
            (and so does the "mean"/"sum"). True: raise ValueError on such an index
            (reads the min and max back to the host).
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
    if check:
        _check_range("label_idx", label_idx, c, "C")
    logp = F.log_softmax(logits.float(), dim=-1)
    idx = label_idx.long()
    valid = (idx >= 0) & (idx < c)
    # Clamped, so a bad index never reads outside the row; its term is then NaN.
    picked = logp.gather(1, idx.clamp(0, c - 1)).masked_fill(~valid, math.nan)
    w = label_w.to(logp.dtype)
    loss = -(w * picked).sum(dim=-1)
    if smoothing:
        loss = (1.0 - smoothing) * loss - smoothing * w.sum(dim=-1) * logp.mean(dim=-1)
    return _reduce(loss, reduction)


def one_hot_targets(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0, *,
                    check: bool = False) -> torch.Tensor:
    """float32 ``(N, C)`` targets of unmixed labels (with optional smoothing).

    ``check=False`` (default) does no data-dependent check (no host synchronisation,
    fine under ``torch.compile(fullgraph=True)``): the row of a label outside
    ``[0, num_classes)`` is NaN. ``check=True`` raises ValueError instead.
    """
    labels = labels.reshape(-1).long()
    if check:
        _check_range("labels", labels, num_classes, "num_classes")
    classes = torch.arange(num_classes, device=labels.device)
    t = (labels[:, None] == classes[None, :]).float()
    if smoothing:
        t = t * (1.0 - smoothing) + smoothing / num_classes
    valid = (labels >= 0) & (labels < num_classes)
    return t.masked_fill(~valid[:, None], math.nan)
