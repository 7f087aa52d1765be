"""The PyTorch side: a drop-in for timm's ``Mixup`` and losses for mixed targets.

* :class:`KMixup` mixes a torch batch ``(N, C, H, W)`` on the CPU or a CUDA device
  with the dali_kmix kernels and returns it with its soft targets; with ``k=2`` it
  replaces ``timm.data.Mixup`` in a training script;
* :func:`soft_target_cross_entropy` takes dense targets float32 ``(N, C)`` (the
  ``label_format="dense"`` output of the operators, or :class:`KMixup`'s targets);
* :func:`sparse_mixed_cross_entropy` takes ``label_idx`` int ``(N, K)`` and
  ``label_w`` float ``(N, K)`` (``label_format="sparse"``), for very many classes.

On the same mix both losses give the same loss (up to float rounding). The losses
and :func:`one_hot_targets` never read tensor values back to the host by default,
so they run inside ``torch.compile(fullgraph=True)`` and never stall a CUDA stream.
A class index outside ``[0, C)`` is never a silent NaN loss in
:func:`sparse_mixed_cross_entropy`: by default an asynchronous assertion
(``torch._assert_async``, no host synchronisation) stops the run, at once on the CPU and at
the next synchronisation on CUDA; ``check=True`` raises ValueError naming the values
instead (it reads the min and max back: a host synchronisation, and a graph break under
``torch.compile``); ``check=False`` gives that sample a NaN loss. :func:`one_hot_targets`
gives a NaN target row for such a label unless ``check=True``.

Importing this module does not import CuPy; the CUDA path of :class:`KMixup` does.
"""

from __future__ import annotations

import math
import numbers
import weakref

import numpy as np
import torch
import torch.nn.functional as F

from . import _checks, reference
from .mixing import blend_samples
from .sampling import sample_params, sample_params_device

__all__ = ["KMixup", "soft_target_cross_entropy", "sparse_mixed_cross_entropy", "one_hot_targets"]

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
                               smoothing: float = 0.0, reduction: str = "mean", *,
                               check: bool | None = None) -> torch.Tensor:
    """Cross-entropy against ``sum_k label_w[n, k] * onehot_s(label_idx[n, k])`` without building it.

    Args:
        logits: ``(N, C)`` raw scores.
        label_idx: ``(N, K)`` class indices in ``[0, C)``.
        label_w: ``(N, K)`` weights, rows summing to 1.
        smoothing: label smoothing s (each one-hot becomes ``1 - s + s/C`` / ``s/C``), a Python number.
        reduction: "mean", "sum" or "none".
        check: what an index outside ``[0, C)`` does. None (default): an asynchronous
            assertion on the tensors' device (``torch._assert_async``): no host
            synchronisation and no graph break under ``torch.compile(fullgraph=True)``; on the
            CPU it raises RuntimeError at once, on CUDA the run stops with a device-side
            assertion at the next synchronisation (which a CUDA context does not survive).
            True: raise ValueError naming the values (reads the min and max back to the
            host). False: no check; that sample's loss is NaN (and so is the "mean"/"sum"),
            for code that handles NaN itself.
    """
    _check_reduction(reduction)
    smoothing = _checks.check_smoothing(smoothing)
    _check_check(check, allow_none=True)
    _check_tensor("label_idx", label_idx, "int")
    _check_tensor("label_w", label_w, "float")
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    n, c = logits.shape
    if label_idx.ndim != 2 or label_idx.shape[0] != n:
        raise ValueError(f"label_idx must have shape (N={n}, K), got {tuple(label_idx.shape)}")
    if tuple(label_w.shape) != tuple(label_idx.shape):
        raise ValueError(f"label_w must have the shape of label_idx {tuple(label_idx.shape)}, got {tuple(label_w.shape)}")
    if check:
        _check_range("label_idx", label_idx, c, "C")
    logp = F.log_softmax(logits.float(), dim=-1)
    idx = label_idx.long()
    valid = (idx >= 0) & (idx < c)
    if check is None:
        torch._assert_async(valid.all(), f"label_idx must lie in [0, C={c}): sparse_mixed_cross_entropy got a class "
                                         f"index outside it (check=True names it, check=False gives a NaN loss)")
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

    ``labels`` are integer class indices ``(N,)`` (``(N, 1)`` is accepted, as by
    :class:`KMixup`); float or bool labels, other shapes, ``num_classes`` that is not an
    integer >= 1 and ``smoothing`` outside ``[0, 1)`` raise (TypeError / ValueError).
    ``check=False`` (default) does no data-dependent check (no host synchronisation,
    fine under ``torch.compile(fullgraph=True)``): the row of a label outside
    ``[0, num_classes)`` is NaN. ``check=True`` raises ValueError instead.
    """
    num_classes = _checks.check_int("num_classes", num_classes, 1)
    smoothing = _checks.check_smoothing(smoothing)
    _check_check(check)
    _check_tensor("labels", labels, "int")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"labels must be class indices of shape (N,) or (N, 1), got shape {tuple(labels.shape)}")
    labels = labels.long()
    if check:
        _check_range("labels", labels, num_classes, "num_classes")
    return _smoothed_one_hot(labels, num_classes, smoothing)


def _smoothed_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """float32 ``(N, C)`` smoothed one-hot rows of int64 ``labels`` ``(N,)``; NaN rows for labels outside [0, C).

    float32 whatever ``torch.get_default_dtype()`` is; the reference's float32 values (those of the mixed
    targets); Python scalars only, so no host-to-device copy.
    """
    on, off = reference.smoothed_values(num_classes, smoothing)
    hit = labels[:, None] == torch.arange(num_classes, device=labels.device)[None, :]
    t = torch.full(hit.shape, float(off), dtype=torch.float32, device=labels.device).masked_fill_(hit, float(on))
    valid = (labels >= 0) & (labels < num_classes)
    return t.masked_fill_(~valid[:, None], math.nan)


def _check_tensor(name: str, t, kind: str):
    """``t`` is a torch.Tensor of integer (``kind="int"``: no bool) or floating (``"float"``) dtype."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if kind == "int":
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"{name} must be integer class indices, got dtype {t.dtype}")
    elif not t.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")


def _check_check(check, allow_none: bool = False):
    if not (isinstance(check, (bool, np.bool_)) or (allow_none and check is None)):
        raise TypeError(f"check must be {'None, ' if allow_none else ''}True or False, got {check!r}")


# --------------------------------------------------------------------------- KMixup

_KMIXUP_MODES = {"batch": "batch", "elem": "sample", "sample": "sample"}
_DTYPES = (torch.uint8, torch.float16, torch.float32)


def _check_bool(name, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _method_alpha(name: str, value, k: int):
    """A method's Dirichlet alpha: None for 0 (method off), else a float64 vector of length k."""
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(f"{name} must be a number >= 0 or a sequence of {k} positive numbers, got {value!r}")
    if isinstance(value, numbers.Real):
        a = float(value)
        if not math.isfinite(a) or a < 0.0:
            raise ValueError(f"{name} must be >= 0 and finite, got {value}")
        return None if a == 0.0 else np.full(k, a)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number >= 0 or a sequence of {k} positive numbers, got {value!r}") from None
    if arr.shape != (k,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0.0):
        raise ValueError(f"{name} must be a number >= 0 or a sequence of k={k} finite numbers > 0, got {value!r}")
    return arr


def _check_mode(mode) -> str:
    if isinstance(mode, str) and mode == "pair":
        raise ValueError("mode='pair' is not supported by KMixup (use 'batch' or 'elem')")
    if not isinstance(mode, str) or mode not in _KMIXUP_MODES:
        raise ValueError(f"mode must be one of {list(_KMIXUP_MODES)}, got {mode!r}")
    return mode


def _check_label_smoothing(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"label_smoothing must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_cutmix_minmax(value):
    if value is not None:
        raise ValueError(f"cutmix_minmax is not supported by KMixup (box sizes come from the Dirichlet "
                         f"shares); it must be None, got {value!r}")
    return None


def _check_multi_label(value) -> bool:
    if _check_bool("multi_label", value):
        raise ValueError("multi_label=True is not supported by KMixup (targets are single class indices); "
                         "it must be False")
    return False


def _nothing_to_mix() -> ValueError:
    return ValueError("mixup_alpha and cutmix_alpha are both 0, so there is nothing to mix; make one > 0, or set "
                      "prob=0 (or mixup_enabled=False) for no mixing (identity and smoothed one-hot targets)")


class _Setting:
    """A :class:`KMixup` attribute that is checked when set and read on every call (as timm's ``Mixup`` reads its
    attributes on every call): ``check(mixer, name, value)`` raises on a bad value and returns the value kept.
    The constructor sets each one the same way, so assignment and construction give the same errors."""

    def __init__(self, check, slot: str | None = None):
        self._check, self._slot = check, slot

    def __set_name__(self, owner, name):
        self._name = name
        self._slot = self._slot or "_" + name

    def __get__(self, obj, objtype=None):
        return self if obj is None else obj.__dict__[self._slot]

    def __set__(self, obj, value):
        obj.__dict__[self._slot] = self._check(obj, self._name, value)


_NUMPY_DTYPES = {torch.uint8: np.uint8, torch.float16: np.float16, torch.float32: np.float32}


class _OutputPool:
    """CPU output memory that is written again once no tensor refers to it any more.

    For ImageNet-size batches a fresh output costs more than the mixing: every new
    page is faulted in and zeroed by the kernel (about 40 ms for 128 x 3 x 224 x 224
    float32 on a 2-core machine, against about 12 ms of mixing). Each output is a
    tensor over a new NumPy view of a pooled buffer; torch keeps that view alive
    exactly as long as the output's storage lives (the tensor, any view of it, any
    ``.numpy()`` array, autograd's saved tensors), so a dead weak reference to the
    view means nothing can see the buffer any more and it may be reused.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._slots: list = []  # [buffer, weak reference to the view lent out, or None]

    def __getstate__(self):
        # The buffers are scratch memory and their weak references cannot be pickled: a copy starts empty.
        return {"capacity": self.capacity}

    def __setstate__(self, state):
        self.__init__(state["capacity"])

    @staticmethod
    def _free(slot) -> bool:
        return slot[1] is None or slot[1]() is None

    def take(self, shape, dtype) -> torch.Tensor:
        dtype = np.dtype(dtype)
        for slot in self._slots:
            if slot[0].shape == shape and slot[0].dtype == dtype and self._free(slot):
                return self._lend(slot)
        if len(self._slots) >= self.capacity:
            free = [slot for slot in self._slots if self._free(slot)]
            if not free:  # every buffer still in use: an ordinary allocation
                return torch.from_numpy(np.empty(shape, dtype))
            self._slots.remove(free[0])  # a free buffer of another shape makes room
        slot = [np.empty(shape, dtype), None]
        self._slots.append(slot)
        return self._lend(slot)

    @staticmethod
    def _lend(slot) -> torch.Tensor:
        view = slot[0].view()
        slot[1] = weakref.ref(view)
        return torch.from_numpy(view)


def _cupy_stream(cupy, stream, device_id):
    """torch's CUDA stream as a CuPy stream (CuPy >= 14 through the CUDA stream protocol)."""
    if hasattr(cupy.cuda.Stream, "from_external") and hasattr(stream, "__cuda_stream__"):
        return cupy.cuda.Stream.from_external(stream)
    return cupy.cuda.ExternalStream(stream.cuda_stream, device_id)


class _Rows(list):
    """Some rows of an output batch, for :func:`blend_samples`.

    ``list(rows)`` gives the row views (what the kernels write); ``rows[...] = batch``
    (what the NumPy fallback does) writes a stacked batch row by row.
    """

    def __setitem__(self, key, value):
        if key is Ellipsis:
            for row, v in zip(self, value):
                row[...] = v
        else:
            super().__setitem__(key, value)


class KMixup:
    """K-image DMixup / DCutMix for torch batches, called like ``timm.data.Mixup``.

    ``x, target = mixer(x, target)`` with ``x`` a ``(N, C, H, W)`` uint8, float16 or
    float32 tensor on the CPU or a CUDA device and ``target`` integer class indices
    ``(N,)``. Returns the mixed batch (same shape, dtype, device and memory format; a
    new tensor, ``x`` is never written) and float32 soft targets ``(N, num_classes)``
    on the same device, for ``timm.loss.SoftTargetCrossEntropy`` or
    :func:`soft_target_cross_entropy`. When nothing is mixed (``mixup_enabled`` is
    False, ``prob=0``, or a "batch"-mode draw says no) ``x`` itself is returned with
    smoothed one-hot targets.

    Args:
        mixup_alpha: DMixup's Dirichlet concentration (a number, or K numbers); 0 turns
            DMixup off. With ``k=2`` Dirichlet(a, a) is timm's Beta(a, a).
        cutmix_alpha: DCutMix's Dirichlet concentration; 0 turns DCutMix off. Both 0
            with ``prob > 0`` raises ValueError (timm fails the same way, at call time);
            both 0 with ``prob=0`` is the identity with smoothed one-hot targets.
        k: images per mix (K >= 2). ``k=2`` is timm's two-image Mixup/CutMix.
        prob: probability of mixing, per batch in "batch" mode, per sample in "elem" mode.
        switch_prob: with both alphas > 0, the probability of DCutMix instead of DMixup
            (per batch in "batch" mode, per sample in "elem" mode).
        mode: "batch" (one share vector / box chain for the whole batch: dali_kmix's
            sampler mode "batch") or "elem" (own shares, boxes and partners per
            sample: the sampler's "sample"; "sample" is accepted as a synonym).
            timm's "pair" is not supported.
        label_smoothing: s; each one-hot is ``s/C`` off and ``1 - s + s/C`` on, then mixed.
        num_classes: C.
        correct_lam: accepted for timm compatibility and has no effect: DCutMix boxes
            are never clipped, so the target weights are always the exact pixel-area
            shares of the boxes (what timm's ``correct_lam=True`` aims at).
        cutmix_minmax: must be None (timm's min/max box ratios are not supported).
        seed: None (fresh entropy), an int or a ``numpy.random.Generator``: all draws of
            this mixer (on CUDA, a ``cupy.random.Generator`` seeded from it).
        reuse_outputs: on the CPU, keep up to two output buffers and write a new batch
            into one that no tensor refers to any more (the returned tensor, its views
            and ``.numpy()`` arrays all count) instead of allocating: a fresh
            ImageNet-size output costs more in page faults than the mixing itself.
            False allocates every output. (CUDA outputs come from torch's caching
            allocator either way.)
        check_labels: labels on the CPU are always range-checked (ValueError). CUDA
            labels are not by default (that would read them back: a host
            synchronisation); a target row whose mix involves a label outside
            ``[0, num_classes)`` is then NaN. ``True`` checks CUDA labels too.

    Mixing is the dali_kmix record (:class:`dali_kmix.MixParams`) applied with the
    dali_kmix kernels through :func:`dali_kmix.mixing.blend_samples`: on the CPU the
    host-compiled kernels run on zero-copy NumPy views of the tensors; on CUDA the
    CUDA kernels run on DLPack views (CuPy) on torch's current stream, the record is
    drawn on the device with a ``cupy.random.Generator``, and nothing is read back
    to the host. The only host draws are the per-batch (or per-sample) "mix at all"
    and "DCutMix or DMixup" coins, from a NumPy generator. Targets come from the same
    record (:func:`dali_kmix.reference.mix_labels`).

    Differences from timm: the partners of a sample are random (one permutation of
    the batch per level, self-pairs allowed, as everywhere in dali_kmix) instead of
    the flipped batch, so odd batch sizes are fine. In "elem" mode with both methods
    the batch is split by the per-sample coin into its DCutMix rows and its DMixup
    rows; each part is mixed as a batch of its own (partners are drawn within the
    part) into its rows of the one output, so every output pixel is still written
    once by one kernel. Autograd does not flow through the mixing.

    Memory layout: a contiguous batch is mixed as "CHW"; a channels-last batch is
    mixed in place of its memory as "HWC" (no copy; the output is channels-last
    too); any other layout whose samples are not dense is first made contiguous
    (one copy).

    Settings: like timm's ``Mixup``, every setting is read again on each call, so assigning
    ``mixup_alpha``, ``cutmix_alpha``, ``k``, ``prob`` (or timm's name ``mix_prob``),
    ``switch_prob``, ``mode``, ``label_smoothing``, ``num_classes``, ``correct_lam``,
    ``mixup_enabled`` or ``check_labels`` after construction takes effect from the next call.
    Each is checked when assigned, as by the constructor (a bad value raises there and the old
    value stays). ``cutmix_minmax`` must stay None and ``multi_label`` False. A ``k`` that does
    not fit an alpha given as a sequence raises: set that alpha to a number first. Both alphas
    0 raises at a call that would mix.

    Pickling (``pickle``, ``torch.save``, ``copy.deepcopy``) keeps the settings and the host
    generator's state, so a restored mixer gives the same next CPU batches as the original;
    the reusable CPU output buffers are not kept, nor the CUDA generators (a restored mixer
    seeds new ones from its host generator on its first CUDA call, as a new mixer does).

    Attributes:
        mixup_enabled: set False (e.g. by a training loop near the end) to stop mixing.
        last_groups: the records of the last call, a list of ``(rows, MixParams)``:
            ``rows`` int64 NumPy indices into the batch (``arange(N)`` when one record
            covers the batch), the record mixing ``x[rows]`` as a batch of its own
            (NumPy arrays on the CPU, CuPy on CUDA). Empty when nothing was mixed.
        last_params: the record when one record covers the whole batch, else None.
    """

    # timm's Mixup reads its settings on every call; so does KMixup. Each is checked when set (the constructor
    # sets them the same way), so a bad value raises at the assignment, naming the attribute and the value.
    k = _Setting(lambda m, name, v: m._check_k(v))
    mixup_alpha = _Setting(lambda m, name, v: m._check_alpha(name, v))
    cutmix_alpha = _Setting(lambda m, name, v: m._check_alpha(name, v))
    prob = _Setting(lambda m, name, v: _checks.check_probability(name, v))
    mix_prob = _Setting(lambda m, name, v: _checks.check_probability(name, v), slot="_prob")  # timm's name
    switch_prob = _Setting(lambda m, name, v: _checks.check_probability(name, v))
    mode = _Setting(lambda m, name, v: _check_mode(v))
    label_smoothing = _Setting(lambda m, name, v: _check_label_smoothing(v))
    num_classes = _Setting(lambda m, name, v: _checks.check_int(name, v, 1))
    correct_lam = _Setting(lambda m, name, v: _check_bool(name, v))
    cutmix_minmax = _Setting(lambda m, name, v: _check_cutmix_minmax(v))
    multi_label = _Setting(lambda m, name, v: _check_multi_label(v))
    mixup_enabled = _Setting(lambda m, name, v: _check_bool(name, v))
    check_labels = _Setting(lambda m, name, v: _check_bool(name, v))

    def __init__(self, mixup_alpha=1.0, cutmix_alpha=0.0, *, k: int = 3, prob: float = 1.0,
                 switch_prob: float = 0.5, mode: str = "batch", label_smoothing: float = 0.1,
                 num_classes: int = 1000, correct_lam: bool = True, cutmix_minmax=None, seed=None,
                 reuse_outputs: bool = True, check_labels: bool = False):
        self.k = k
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.mode = mode
        self.label_smoothing = label_smoothing
        self.num_classes = num_classes
        self.correct_lam = correct_lam
        self.cutmix_minmax = cutmix_minmax
        self.multi_label = False
        if self.prob > 0 and all(a is None for a in self._alpha.values()):
            raise _nothing_to_mix()
        if isinstance(seed, (bool, np.bool_)) or not (seed is None or isinstance(seed, (numbers.Integral,
                                                                                       np.random.Generator))):
            raise TypeError(f"seed must be None, an int or a numpy.random.Generator, got {seed!r}")
        if isinstance(seed, numbers.Integral) and seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self._rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.check_labels = check_labels
        self._pool = _OutputPool(2 if _check_bool("reuse_outputs", reuse_outputs) else 0)
        self.mixup_enabled = True
        self.last_groups: list = []
        self._cupy_generators: dict = {}

    # ------------------------------------------------------------------ settings

    def _check_alpha(self, name: str, value):
        """``mixup_alpha`` / ``cutmix_alpha``: checked against the current ``k``; kept as given."""
        _method_alpha(name, value, self.k)
        return value

    def _check_k(self, value) -> int:
        """``k`` >= 2, and (after construction) one that fits an alpha given as a sequence of K numbers."""
        k = _checks.check_int("k", value, 2)
        for name in ("mixup_alpha", "cutmix_alpha"):
            alpha = self.__dict__.get("_" + name)
            if alpha is None or isinstance(alpha, numbers.Real):
                continue
            try:
                _method_alpha(name, alpha, k)
            except ValueError:
                raise ValueError(f"k must match {name}, a sequence of {np.shape(alpha)[0]} numbers, got k={k}; "
                                 f"set {name} to a number first (then k, then a sequence of k numbers)") from None
        return k

    @property
    def _alpha(self) -> dict:
        """Each method's Dirichlet alpha for this call: None (method off) or a float64 vector of length k."""
        return {"dmixup": _method_alpha("mixup_alpha", self.mixup_alpha, self.k),
                "dcutmix": _method_alpha("cutmix_alpha", self.cutmix_alpha, self.k)}

    # ------------------------------------------------------------------ pickling

    def __getstate__(self):
        """Everything but the CPU output buffers (their weak references cannot be pickled; a restored mixer
        allocates its own) and the CUDA generators (device state, see below). The host generator is kept, so a
        restored mixer gives the same next CPU batches as the original.

        A restored mixer seeds fresh CUDA generators from its host generator on its first CUDA call (as a new
        mixer does): its CUDA draws are reproducible from the pickle but are not the original's continuation.
        """
        state = self.__dict__.copy()
        state["_cupy_generators"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__dict__.setdefault("_cupy_generators", {})

    def __repr__(self):
        return (f"KMixup(mixup_alpha={self.mixup_alpha!r}, cutmix_alpha={self.cutmix_alpha!r}, k={self.k}, "
                f"prob={self.prob}, switch_prob={self.switch_prob}, mode={self.mode!r}, "
                f"label_smoothing={self.label_smoothing}, num_classes={self.num_classes})")

    @property
    def last_params(self):
        if len(self.last_groups) == 1:
            return self.last_groups[0][1]
        return None

    # ------------------------------------------------------------------ the plan of one batch

    def _pick_method(self, alpha: dict, size=None):
        """"dcutmix"/"dmixup" (size None) or a bool "uses DCutMix" mask of ``size`` samples."""
        mix, cut = alpha["dmixup"] is not None, alpha["dcutmix"] is not None
        if mix and cut:
            draw = self._rng.random(size)
            return draw < self.switch_prob if size is not None else ("dcutmix" if draw < self.switch_prob
                                                                      else "dmixup")
        method = "dcutmix" if cut else "dmixup"
        return method if size is None else np.full(size, cut)

    def _plan(self, n: int, alpha: dict):
        """[(method, rows or None for the whole batch, its alpha)], drawn on the host; [] for no mixing. ``alpha``:
        this call's :attr:`_alpha`."""
        if not self.mixup_enabled or self.prob == 0.0:
            return []
        if alpha["dmixup"] is None and alpha["dcutmix"] is None:  # both set to 0 after construction
            raise _nothing_to_mix()
        if n == 0:
            return []
        if self.mode == "batch":
            if self.prob < 1.0 and not self._rng.random() < self.prob:
                return []
            method = self._pick_method(alpha)
            return [(method, None, alpha[method])]
        cut = self._pick_method(alpha, n)
        if cut.all() or not cut.any():
            method = "dcutmix" if cut.all() else "dmixup"
            return [(method, None, alpha[method])]
        return [("dcutmix", np.flatnonzero(cut), alpha["dcutmix"]), ("dmixup", np.flatnonzero(~cut), alpha["dmixup"])]

    def _sampler_args(self):
        """(sampler mode, sampler prob): "batch" draws the coin per batch (in _plan)."""
        smode = _KMIXUP_MODES[self.mode]
        return smode, (1.0 if smode == "batch" else self.prob)

    # ------------------------------------------------------------------ checks and layout

    def _check_inputs(self, x, target, alpha: dict):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not isinstance(target, torch.Tensor):
            raise TypeError(f"target must be a torch.Tensor of class indices, got {type(target).__name__}")
        if x.ndim != 4:
            raise ValueError(f"x must have 4 dimensions (N, C, H, W), got shape {tuple(x.shape)}")
        if x.dtype not in _DTYPES:
            raise TypeError(f"x must have dtype torch.uint8, torch.float16 or torch.float32, got {x.dtype}")
        if x.device.type not in ("cpu", "cuda"):
            raise ValueError(f"x must be on the CPU or a CUDA device, got device {x.device}")
        if target.ndim == 2 and target.shape[1] == 1:
            target = target[:, 0]
        if target.ndim != 1:
            raise ValueError(f"target must be class indices of shape (N,), got shape {tuple(target.shape)}")
        if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
            raise TypeError(f"target must be integer class indices, got dtype {target.dtype}")
        if target.shape[0] != x.shape[0]:
            raise ValueError(f"target has {target.shape[0]} entries but x has {x.shape[0]} samples")
        if target.device != x.device:
            raise ValueError(f"target must be on the device of x ({x.device}), got {target.device}")
        if x.shape[0] and self.mixup_enabled and self.prob > 0 and alpha["dcutmix"] is not None:
            # whatever a batch tosses: DCutMix's label weights are box areas / (H x W)
            _checks.check_area("x", tuple(x.shape[1:]), "CHW", "KMixup with cutmix_alpha > 0")
        if target.numel() and (target.device.type == "cpu" or self.check_labels):
            lo, hi = int(target.min()), int(target.max())
            if lo < 0 or hi >= self.num_classes:
                bad = lo if lo < 0 else hi
                raise ValueError(f"target must lie in [0, num_classes={self.num_classes}), got label {bad}")
        return x.detach(), target.detach().long().contiguous()

    @staticmethod
    def _layout(x):
        """(x, layout): "CHW" for dense samples, "HWC" for channels-last ones, else a contiguous copy."""
        s = x[0]
        if s.is_contiguous():
            return x, "CHW"
        if s.permute(1, 2, 0).is_contiguous():
            return x, "HWC"
        return x.contiguous(), "CHW"

    @staticmethod
    def _view(t, layout):
        """The (N, C, H, W) tensor as the kernels see it: itself ("CHW") or (N, H, W, C) ("HWC")."""
        return t if layout == "CHW" else t.permute(0, 2, 3, 1)

    def _empty_like(self, x, layout):
        n, c, h, w = x.shape
        shape = (n, c, h, w) if layout == "CHW" else (n, h, w, c)
        if x.device.type == "cpu":
            out = self._pool.take(shape, _NUMPY_DTYPES[x.dtype])
        else:
            out = torch.empty(shape, dtype=x.dtype, device=x.device)
        return out if layout == "CHW" else out.permute(0, 3, 1, 2)

    def _one_hot(self, target):
        """Smoothed one-hot targets, float32 (the reference's values; NaN rows for bad labels)."""
        return _smoothed_one_hot(target, self.num_classes, self.label_smoothing)

    # ------------------------------------------------------------------ mixing

    def __call__(self, x: torch.Tensor, target: torch.Tensor):
        given = x
        alpha = self._alpha  # the settings of this call, worked out once
        x, target = self._check_inputs(x, target, alpha)
        plan = self._plan(x.shape[0], alpha)
        if not plan:
            self.last_groups = []
            return given, self._one_hot(target)
        x, layout = self._layout(x)
        if x.device.type == "cuda":
            return self._mix_cuda(x, target, layout, plan)
        return self._mix_cpu(x, target, layout, plan)

    def _mix_cpu(self, x, target, layout, plan):
        n, _, h, w = x.shape
        smode, sprob = self._sampler_args()
        out = self._empty_like(x, layout)
        xv = self._view(x, layout).numpy()
        ov = self._view(out, layout).numpy()
        labels = target.numpy()
        samples = list(xv)
        groups = []
        targets = None
        for method, rows, alpha in plan:
            m = n if rows is None else len(rows)
            rec = sample_params(method, m, h, w, k=self.k, alpha=alpha, mode=smode, prob=sprob,
                                rng=self._rng)
            if rows is None:
                blend_samples(samples, rec, layout, out=ov)
                targets = reference.mix_labels(labels, rec, self.num_classes, self.label_smoothing)
                rows = np.arange(n)
            else:
                blend_samples([samples[i] for i in rows], rec, layout, out=_Rows(ov[i] for i in rows))
                if targets is None:
                    targets = np.empty((n, self.num_classes), np.float32)
                targets[rows] = reference.mix_labels(labels[rows], rec, self.num_classes, self.label_smoothing)
            groups.append((rows, rec))
        self.last_groups = groups
        return out, torch.from_numpy(targets)

    def _cupy_generator(self, device_id: int, stream):
        """This mixer's CuPy generator on ``device_id``, safe to draw from on CuPy stream ``stream``.

        The generator's state lives on the device and every draw rewrites it. Draws queued on two
        streams with no order between them would race for it (both reading the same state: repeated
        or lost draws), so a draw on another stream than the last one waits, on the device, for the
        event recorded after that last use (:meth:`_generator_used`); no host synchronisation.
        """
        import cupy

        entry = self._cupy_generators.get(device_id)
        if entry is None:
            entry = self._cupy_generators[device_id] = [cupy.random.default_rng(int(self._rng.integers(2 ** 63))),
                                                        None]
        last = entry[1]
        if last is not None and last[0] != stream.ptr:
            stream.wait_event(last[1])
        return entry[0]

    def _generator_used(self, device_id: int, stream):
        self._cupy_generators[device_id][1] = (stream.ptr, stream.record())

    def _mix_cuda(self, x, target, layout, plan):
        import cupy

        n, _, h, w = x.shape
        smode, sprob = self._sampler_args()
        dev = x.device
        out = self._empty_like(x, layout)
        stream = torch.cuda.current_stream(dev)
        with cupy.cuda.Device(dev.index), _cupy_stream(cupy, stream, dev.index) as cstream:
            gen = self._cupy_generator(dev.index, cstream)
            samples = list(cupy.from_dlpack(self._view(x, layout)))
            ov = cupy.from_dlpack(self._view(out, layout))
            labels = cupy.from_dlpack(target)
            valid = (labels >= 0) & (labels < self.num_classes)
            groups = []
            targets = None
            for method, rows, alpha in plan:
                m = n if rows is None else len(rows)
                rec = sample_params_device(gen, method, m, h, w, self.k, alpha, smode, sprob)
                if rows is None:
                    blend_samples(samples, rec, layout, out=ov)
                    lab, ok = labels, valid
                else:
                    blend_samples([samples[i] for i in rows], rec, layout, out=_Rows(ov[i] for i in rows))
                    rows_dev = cupy.asarray(rows)  # an asynchronous host-to-device copy
                    lab, ok = labels[rows_dev], valid[rows_dev]
                t = reference.mix_labels(lab, rec, self.num_classes, self.label_smoothing)
                # A mix that involves a bad label gets a NaN row (checking would synchronise).
                t = cupy.where(ok[rec.sources].all(axis=1)[:, None], t, cupy.float32(math.nan))
                if rows is None:
                    targets = t
                    rows = np.arange(n)
                else:
                    if targets is None:
                        targets = cupy.empty((n, self.num_classes), cupy.float32)
                    targets[rows_dev] = t
                groups.append((rows, rec))
            self._generator_used(dev.index, cstream)
            self.last_groups = groups
            return out, torch.from_dlpack(targets)
