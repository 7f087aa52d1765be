"""Argument checks shared by the sampler, the reference, the kernels and the operators.

Every check raises ``ValueError`` (bad value) or ``TypeError`` (bad type) with a
message that names the argument, what was expected and what was given. None of
them uses ``assert``, so they also hold under ``python -O``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

METHODS = ("dmixup", "dcutmix", "saliency-dcutmix")
#: The per-batch choice between DMixup and DCutMix (timm's ``switch_prob``), in the DALI operators.
SWITCH = "dmixup+dcutmix"
MODES = ("sample", "batch")
LAYOUTS = ("HWC", "CHW")
LABEL_FORMATS = ("dense", "sparse")
DTYPES = (np.dtype(np.uint8), np.dtype(np.float16), np.dtype(np.float32))


def check_choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_int(name: str, value, minimum: int | None = None) -> int:
    if type(value) is int and (minimum is None or value >= minimum):  # the common case, without the ABC check
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_ints(name: str, values, minimum: int) -> tuple:
    """``values`` as a tuple if it holds one or more integers, each >= ``minimum``, else a ValueError naming ``name``
    and the values."""
    vals = () if isinstance(values, str) else tuple(values)
    if not vals or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum for v in vals):
        raise ValueError(f"{name} must hold one or more integers >= {minimum}, got {values!r}")
    return vals


def check_choices(name: str, values, choices) -> tuple:
    """``values`` as a tuple if it holds one or more of ``choices`` (and is no string), else a ValueError naming
    ``name`` and the values."""
    vals = () if isinstance(values, str) else tuple(values)
    if not vals or any(v not in choices for v in vals):
        raise ValueError(f"{name} must hold one or more of {list(choices)}, got {values!r}")
    return vals


def check_probability(name: str, value) -> float:
    if type(value) is float and 0.0 <= value <= 1.0:  # the common case, without the ABC check
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def check_smoothing(value) -> float:
    if type(value) is float and 0.0 <= value < 1.0:  # the common case, without the ABC check
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"smoothing must be a number in [0, 1), got {value!r}")
    value = float(value)
    if not (0.0 <= value < 1.0):
        raise ValueError(f"smoothing must be in [0, 1), got {value}")
    return value


def check_alpha(alpha, k: int, name: str = "alpha") -> np.ndarray:
    """Return the Dirichlet concentration as a float64 vector of length ``k``.

    ``alpha`` is a positive scalar (meaning ``alpha * ones(k)``) or a sequence of
    ``k`` positive, finite numbers. ``name``: the argument the errors name (e.g. ``cutmix_alpha``).
    """
    if isinstance(alpha, bool):
        raise TypeError(f"{name} must be a positive number or a sequence of {k} positive numbers, got {alpha!r}")
    if type(alpha) in (float, int) or isinstance(alpha, numbers.Real):
        a = float(alpha)
        if not math.isfinite(a) or a <= 0.0:
            raise ValueError(f"{name} must be > 0 and finite, got {alpha}")
        return np.full(k, a, dtype=np.float64)
    try:
        arr = np.asarray(alpha, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a positive number or a sequence of {k} positive numbers, got {alpha!r}"
        ) from None
    if arr.ndim != 1 or arr.shape[0] != k:
        raise ValueError(f"{name} must be a scalar or have length k={k}, got shape {arr.shape}: {alpha!r}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0.0):
        raise ValueError(f"{name} must contain only finite values > 0, got {arr.tolist()}")
    return arr


def check_layout(layout) -> str:
    if not isinstance(layout, str) or layout.upper() not in LAYOUTS:
        raise ValueError(f"layout must be 'HWC' or 'CHW', got {layout!r}")
    if layout != layout.upper():
        raise ValueError(f"layout must be 'HWC' or 'CHW' (upper case), got {layout!r}")
    return layout


#: Channel counts an image is taken to have: a layout that puts more than this many where the channels go,
#: while the other end of the shape has at most this many, contradicts the shape (see :func:`check_channels`).
MAX_CHANNELS = 4


def channels_suspect(shape, layout: str) -> bool:
    """True when a 3-d sample ``shape`` looks like the other layout: "HWC" with more than 4 trailing and at most 4
    leading extents (an image of 3 x H x W), or "CHW" with more than 4 leading and at most 4 trailing (H x W x 3)."""
    lead, trail = int(shape[0]), int(shape[2])
    if layout == "HWC":
        return trail > MAX_CHANNELS >= lead
    return lead > MAX_CHANNELS >= trail


def layout_contradiction(shape, layout: str):
    """None, or where a 3-d sample ``shape`` looks like the other layout (:func:`channels_suspect`): ``(the other
    layout, the shape as ints, its channel count there, "first" or "last")``, for the messages that say so."""
    if not channels_suspect(shape, layout):
        return None
    shape = tuple(int(v) for v in shape)
    if layout == "HWC":
        return "CHW", shape, shape[0], "first"
    return "HWC", shape, shape[2], "last"


def check_channels(name: str, shape, layout: str, found_layout: str = ""):
    """Images that carry no layout, whose shape contradicts ``layout`` (:func:`layout_contradiction`), raise
    ValueError: mixed in the wrong layout, boxes would be cut across channels. Images that carry a layout are
    trusted (a mismatch with ``layout`` is checked where it is read). The same message as the native operators
    (``kernels/kmix_record.h``, CheckChannels)."""
    seen = None if found_layout else layout_contradiction(shape, layout)
    if seen is None:
        return
    other, shape, count, where = seen
    raise ValueError(
        f"{name}: layout='{layout}' was given but the images carry no layout and their shape {shape} looks {other} "
        f"({count} channels {where}); mixed as {layout} the boxes would be cut across channels. Pass "
        f"layout='{other}', or, if the shape is meant, give the images their layout (e.g. "
        f"fn.reshape(images, layout='{layout}'))")


def check_one_dtype(name: str, samples) -> np.dtype:
    """The one image dtype of a list of samples (NumPy or CuPy arrays, or what ``np.asarray`` reads, as torch CPU
    tensors): TypeError for a dtype that is no image's, or naming the first sample whose dtype differs from sample
    0's (``np.asarray`` would stack uint8 and float32 samples to float32)."""
    dtypes = [a.dtype if isinstance(getattr(a, "dtype", None), np.dtype) else np.asarray(a).dtype for a in samples]
    for i, dt in enumerate(dtypes):
        if check_image_dtype(name, dt) != dtypes[0]:
            raise TypeError(f"{name}: all samples must have one dtype; sample 0 has {dtypes[0]} but sample {i} has "
                            f"{dt}")
    return dtypes[0]


def check_image_dtype(name: str, dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in DTYPES:
        raise TypeError(f"{name} must have dtype uint8, float16 or float32, got {dtype}")
    return dtype


def array_module(a):
    """numpy, or cupy when ``a`` is a CuPy array (cupy is imported only then)."""
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def hwc_dims(shape, layout: str) -> tuple[int, int, int]:
    """(H, W, C) of one sample's shape in ``layout`` (3 dims, no batch axis)."""
    if layout == "HWC":
        return int(shape[0]), int(shape[1]), int(shape[2])
    return int(shape[1]), int(shape[2]), int(shape[0])


def spatial_size(shape, layout: str) -> tuple[int, int]:
    """(H, W) of one sample's shape in ``layout`` (3 dims, no batch axis)."""
    return hwc_dims(shape, layout)[:2]


def check_kernel_extents(name: str, shape, layout: str) -> None:
    """A sample ``shape`` (3 dims) the kernels can index: every extent, the rows (H, or C x H for "CHW") and a
    row's elements (W x C, or W) below 2^31 (they are ints there). The native operators' message
    (``kernels/kmix_record.h``, CheckImageShapes)."""
    shape = tuple(int(v) for v in shape)
    for e in shape:
        if e > 2**31 - 1:
            raise ValueError(f"{name}: shape {shape} (layout {layout}) has an extent of {e}; every extent must be "
                             f"< 2^31")
    rows, row_len = (shape[0], shape[1] * shape[2]) if layout == "HWC" else (shape[0] * shape[1], shape[2])
    if rows > 2**31 - 1 or row_len > 2**31 - 1:
        raise ValueError(f"{name}: shape {shape} (layout {layout}) has rows of {row_len} elements and {rows} rows; "
                         f"both must be < 2^31")


AREA_WEIGHTS = "its label weights are box areas / (H x W)"


def check_area(name: str, shape, layout: str, what: str, why: str = AREA_WEIGHTS, sample: int = 0) -> None:
    """``what`` (DCutMix's boxes, the saliency map) needs at least one pixel: refuse H or W = 0.

    A zero-area sample has no box-area label weights (box area / (H x W) is 0 / 0, a NaN
    target) and no salient pixel; the error names the sample and its shape.
    """
    h, w = spatial_size(shape, layout)
    if h < 1 or w < 1:
        raise ValueError(
            f"{name}: {what} needs images of at least 1 x 1 pixels ({why}), but sample {sample} has shape "
            f"{tuple(int(v) for v in shape)} (layout {layout}, H x W = {h} x {w}); drop or resize empty images "
            f"before mixing"
        )


def check_same_shapes(name: str, shapes, layout: str) -> tuple[int, ...]:
    """All samples of a batch must share one shape; name the first that differs."""
    first = tuple(shapes[0])
    if len(first) != 3:
        raise ValueError(
            f"{name}: every sample must have 3 dimensions ({layout}), got shape {first} for sample 0"
        )
    for i, s in enumerate(shapes):
        s = tuple(s)
        if s != first:
            h0, w0 = spatial_size(first, layout) if len(first) == 3 else (None, None)
            if len(s) == 3 and spatial_size(s, layout) != (h0, w0):
                what = "H x W"
            else:
                what = "shape"
            raise ValueError(
                f"{name}: all samples of a batch must have the same {what}; sample 0 has shape "
                f"{first} but sample {i} has shape {s} (layout {layout}); resize or crop before mixing"
            )
    return first


def label_vector(labels, n: int | None = None):
    """Labels as an ``(N,)`` array of their integer dtype (``(N, 1)`` is accepted): the checks of
    :func:`check_labels` but the range."""
    labels = array_module(labels).asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (N,) or (N, 1), got {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu" and labels.size:
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if n is not None and labels.shape[0] != n:
        raise ValueError(f"labels has {labels.shape[0]} entries but the batch has {n} samples")
    return labels


def check_labels(labels, num_classes: int, n: int | None = None):
    """Labels as int64 ``(N,)``; ``(N, 1)`` is accepted. Raises on values outside [0, C)."""
    num_classes = check_int("num_classes", num_classes, 1)
    labels = label_vector(labels, n)
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(f"labels must lie in [0, num_classes={num_classes}), got label {bad}")
    return labels.astype(np.int64)


def dense_samples(name: str, arrays, shape, dtype, *, writable: bool = False) -> list:
    """The samples the kernels get a pointer to: each of ``shape`` and ``dtype``, C-contiguous.

    The kernels read and write every sample as a dense block from its first element, so a
    strided view (a transposed batch, a channels-last tensor read as CHW, every other row) would
    be read as if dense: silently wrong. Inputs (``writable=False``) that are not C-contiguous
    are copied (only those, one sample at a time, on the arrays' device); outputs must be
    C-contiguous already (a copy would not be written back) and raise otherwise. A sample of
    another shape or dtype than the first raises (the kernels would read past its end).
    """
    shape, dtype = tuple(shape), np.dtype(dtype)
    out = []
    for i, a in enumerate(arrays):
        if tuple(a.shape) != shape or a.dtype != dtype:
            raise ValueError(f"{name}[{i}] must have shape {shape} and dtype {dtype} like the batch, got shape "
                             f"{tuple(a.shape)} and dtype {a.dtype}")
        if not a.flags.c_contiguous:
            if writable:
                raise ValueError(f"{name}[{i}] must be C-contiguous (the kernels write each sample densely), got "
                                 f"strides {tuple(a.strides)} for shape {shape}")
            a = array_module(a).ascontiguousarray(a)
        out.append(a)
    return out


def dense_blend_samples(inputs, outputs) -> tuple[list, list]:
    """``(inputs, outputs)`` of a blend as the kernels take them: N each, of the outputs' shape and dtype,
    C-contiguous (strided inputs copied, strided outputs refused; see :func:`dense_samples`)."""
    if len(inputs) != len(outputs):
        raise ValueError(f"inputs and outputs must hold the same number of samples, got {len(inputs)} and "
                         f"{len(outputs)}")
    shape, dtype = outputs[0].shape, outputs[0].dtype
    return dense_samples("inputs", inputs, shape, dtype), dense_samples("outputs", outputs, shape, dtype, writable=True)
