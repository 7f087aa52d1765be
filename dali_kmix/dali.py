"""DALI operators: ``dmixup``, ``dcutmix`` and ``saliency_dcutmix``, used like any ``fn.*`` call.

Example (CPU pipeline; the same call works with images on the GPU)::

    from nvidia.dali import pipeline_def, fn, types
    import dali_kmix.dali as kmix

    @pipeline_def(batch_size=32, num_threads=2, device_id=None, seed=7)
    def pipe(root):
        jpegs, labels = fn.readers.file(file_root=root, random_shuffle=True, name="Reader")
        images = fn.decoders.image(jpegs, output_type=types.RGB)
        images = fn.resize(images, resize_x=224, resize_y=224)
        images, targets = kmix.dcutmix(images, labels, k=3, alpha=1.0, num_classes=10, layout="HWC")
        return images, targets

How one call becomes DALI operators (one readable path per place it runs):

1. The arguments become a frozen :class:`MixSpec`.
2. The randomness: ``fn.random.uniform`` draws a float64 number per sample (a
   *key*); the batch's keys, the shard and the operator's index seed the NumPy
   generator of that batch's draws (the pipeline's seed seeds the keys' operator). The
   only random state is the ``fn.random.uniform`` operator's, which DALI saves in
   ``pipe.checkpoint()`` and restores: a restored pipeline continues with exactly the
   batches of the uninterrupted run (whatever seed it was built with, as DALI's own
   random operators do), and the Python side holds no state to lose.
3. One of three paths applies the draws:

   * **plugin** (CPU, the default): the native operator ``fn.kmix_draw`` draws the
     :class:`~dali_kmix.MixParams` record and the labels in C++ (``kernels/kmix_draw.h``: NumPy's
     generator and Gamma draws, the same numbers as the ``python_function`` below, with no Python
     per batch; :func:`native_draw` says when: the spectral-residual saliency; else a small
     ``fn.python_function`` draws them); the native operators
     ``fn.kmix_dmixup`` / ``fn.kmix_dcutmix`` / ``fn.kmix_mix`` (:mod:`dali_kmix.backends.plugin`)
     blend the images on the pipeline's thread pool, straight into DALI's buffers;
   * **function** (CPU without the plugin, or ``DALI_KMIX_PLUGIN=0``): one
     ``python_function`` draws and blends with the CPU kernels (same results);
   * **plugin on the GPU** (images on the GPU, the plugin built with its GPU backend, the
     default): the record and the labels are drawn on the host exactly as on the plugin
     path (``fn.kmix_draw`` again, given the images' shapes instead of the images; the same
     keys, so GPU and CPU pipelines give the same mixes bit for bit; a ``python_function``
     where :func:`native_draw` says no) and stay CPU tensors; the GPU backends of ``fn.kmix_dmixup`` /
     ``fn.kmix_dcutmix`` / ``fn.kmix_mix`` move them to the device in one asynchronous copy
     and blend on DALI's stream. The label outputs are handed to the GPU. Saliency-DCutMix
     finds the salient points on the GPU (CuPy's FFT in a GPU ``python_function``) and hands
     the N x 2 points to the host drawing with DALI's own GPU-to-CPU transfer (``.cpu()``,
     ordered by DALI's executor; nothing of ours waits on the device);
   * **gpu** (the fallback: no GPU backend, ``DALI_KMIX_PLUGIN=0``, or a pipeline with
     ``exec_dynamic=False``, which cannot move data from the GPU to the CPU): the draws
     (shares, box positions, partners, "is mixed") are made on the host as above and moved
     to the device, after the images' layout is checked as on the function path, from their
     shapes and carried layout read on the host as metadata (with ``exec_dynamic=False``:
     the layout read back from the device); one GPU ``python_function`` nests the boxes (``kmix_nest_boxes``),
     blends and builds the labels with the CUDA kernels on DALI's stream. The record is
     bit-identical to the CPU paths' for the same keys.

``prob`` and ``alpha`` may be DataNodes (e.g. from ``fn.external_source``), so a
training loop can weaken or switch off the mixing between iterations without
rebuilding the pipeline; ``alpha`` may differ per sample (mode "sample").

The same four functions accept batches of DALI's dynamic mode (``nvidia.dali.experimental.dynamic``)
and mix them at once with the same native operators (``ndd.kmix_*``): see :mod:`dali_kmix.dynamic`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
import weakref

import numpy as np

from . import _checks, reference
from .record import MixParams
from .sampling import check_sample_args, draw_raw, record_from_draws

__all__ = ["dmixup", "dcutmix", "saliency_dcutmix", "dmixup_or_dcutmix", "MixSpec", "Normalize"]

_op_counters: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

@dataclasses.dataclass(frozen=True)
class Normalize:
    """DALI's ``crop_mirror_normalize`` (without the crop) fused into the mixing operator: pass it as
    ``normalize=`` and the operator writes ``(mixed - mean[c]) / std[c]`` (worked out as crop_mirror_normalize
    does: ``(x - mean) * (1 / std)`` in float32), mirrored left-right where ``mirror`` says so, in
    ``output_layout`` and ``dtype``, in the same pass as the mix: the same bits as the mix followed by
    ``fn.crop_mirror_normalize(mean=..., std=..., mirror=..., output_layout=..., dtype=...)``, without writing the
    mixed batch out (one operator instead of two in the pipeline; a DMixup of uint8 images is rounded to uint8
    before it is normalised, as the unfused mix stores it). float16 rounds to nearest even, as NumPy and DALI's GPU
    ``crop_mirror_normalize`` do; DALI's CPU ``crop_mirror_normalize`` rounds exact ties away from zero (1 ulp).
    Where the native operators are not available (the ``python_function`` paths), the mix is followed by
    ``fn.crop_mirror_normalize`` itself.

    Args:
        mean, std: one value, or one per channel (``std`` > 0), finite.
        mirror: None (no flip), 0 or 1 for every sample, or a CPU DataNode of one flag per sample
            (e.g. ``fn.random.coin_flip(probability=0.5)``).
        output_layout: "CHW" or "HWC" (default: the mix's ``layout``).
        dtype: "float32" or "float16".
    """

    mean: tuple = (0.0,)
    std: tuple = (1.0,)
    mirror: object = None
    output_layout: str | None = None
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("mean", "std"):
            given = getattr(self, name)
            try:
                values = np.ravel(np.asarray(given, dtype=np.float64))
            except (TypeError, ValueError):  # a string, a ragged list: not numbers
                values = np.array([np.nan])
            if values.size == 0 or not np.all(np.isfinite(values)):
                raise ValueError(f"{name} must be one or more finite numbers, got {given!r}")
            if name == "std" and np.any(values <= 0):
                raise ValueError(f"std must be > 0, got {given!r}")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if len(self.mean) > 1 and len(self.std) > 1 and len(self.mean) != len(self.std):
            raise ValueError(f"mean and std must hold one value or one per channel each, so as many values as each "
                             f"other where both hold several; got {len(self.mean)} values in mean and "
                             f"{len(self.std)} in std")
        if self.output_layout is not None:
            _checks.check_choice("output_layout", self.output_layout, _checks.LAYOUTS)
        _checks.check_choice("dtype", self.dtype, ("float32", "float16"))
        m = self.mirror
        if not (m is None or _is_node(m) or (isinstance(m, (bool, int, np.integer)) and int(m) in (0, 1))):
            raise ValueError(f"mirror must be None, 0, 1 or a DataNode of one flag per sample, got {m!r}")
        if _is_node(m) and m.device != "cpu":
            raise ValueError(f"mirror given as a DataNode must be on the CPU, got device {m.device!r}")

    def operator_args(self, layout: str) -> dict:
        """The arguments of ``fn.kmix_*`` (or of ``fn.crop_mirror_normalize``) for a mix in ``layout``."""
        from nvidia.dali import types

        args = dict(dtype=types.FLOAT16 if self.dtype == "float16" else types.FLOAT, mean=list(self.mean),
                    std=list(self.std), output_layout=self.output_layout or layout)
        if self.mirror is not None:
            args["mirror"] = self.mirror if _is_node(self.mirror) else int(self.mirror)
        return args


@dataclasses.dataclass(frozen=True)
class MixSpec:
    """What one mixing operator does, fixed when the pipeline is built (checked values).

    ``alpha`` and ``prob`` are None when they come per iteration from a DataNode.
    """

    method: str
    k: int
    alpha: tuple | None
    num_classes: int
    layout: str
    mode: str
    prob: float | None
    smoothing: float
    label_format: str
    saliency: str
    seed: int | None  # the operator's seed, else the pipeline's, else None (fresh entropy)
    shard_id: int
    index: int  # the operator's position among the dali_kmix operators of its pipeline
    switch_prob: float = 0.0  # method "dmixup+dcutmix": the probability that a batch is DCutMix
    cutmix_alpha: tuple | None = None  # method "dmixup+dcutmix": DCutMix's alpha (``alpha`` is DMixup's)
    reader_name: str | None = None  # the padding reader whose repeated last samples are no partners

    @property
    def runtime_count(self) -> int:
        """How many per-iteration inputs (alpha, prob) the drawing function takes after the keys."""
        return (self.alpha is None) + (self.prob is None)

    @property
    def label_outputs(self) -> int:
        """1 (dense targets) or 2 (label_idx, label_w)."""
        return 1 if self.label_format == "dense" else 2

    @property
    def boxed(self) -> bool:
        return self.method != "dmixup"

    @property
    def switch(self) -> bool:
        return self.method == _checks.SWITCH


# --------------------------------------------------------------------------- host side: one batch's draws


def _stacked(samples, xp, dtype=None):
    """The samples of a batch in one flat vector, in order (one call where they all hold one value, as labels and
    keys do, instead of one reshape per sample)."""
    if xp is np and all(x.size == 1 for x in samples):
        return np.array(samples, dtype=dtype).reshape(-1)
    return xp.concatenate([xp.reshape(xp.asarray(x, dtype), (-1,)) for x in samples])


def _label_vector(labels, n, xp):
    """One class index per sample, as a flat vector (labels arrive as (), (1,) samples). Every sample must hold
    one value (fn.kmix_draw's check and message): a ragged batch with as many values as samples in all would
    shift the labels onto the wrong samples."""
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} samples but images has {n}")
    for s, x in enumerate(labels):
        shape = tuple(int(v) for v in np.shape(x))  # NumPy or CuPy: host metadata, no read from the device
        if math.prod(shape) != 1:
            raise ValueError(f"labels must hold one value per sample, got shape {shape} for sample {s}")
    return _stacked(labels, xp)


def _label_outputs(spec: MixSpec, lab, params):
    """``[targets]`` (dense) or ``[label_idx, label_w]`` (sparse), as lists of samples (NumPy or CuPy).

    ``lab`` is checked already and ``params`` built here, so the targets come from the unchecked
    :func:`dali_kmix.reference.mix_labels` (the same bits as the public :func:`dali_kmix.mix_labels`, without its
    checks: on CuPy those read values back to the host, each a wait on DALI's stream)."""
    if spec.label_format == "dense":
        return [list(reference.mix_labels(lab, params, spec.num_classes, spec.smoothing))]
    return [list(lab[params.sources].astype(np.int32)), list(params.weights)]


def _entropy_words(seed: int, words) -> np.ndarray:
    """The uint32 words NumPy's SeedSequence makes of the entropy ``[seed, *words.tolist()]`` (each int in 32-bit
    words, least significant first, as many as it needs, one for 0), built at once: SeedSequence takes a uint32
    array as it is, so the sequence, hence every draw, is the same, without a Python int per key."""
    head = [seed & 0xFFFFFFFF]
    seed >>= 32
    while seed:
        head.append(seed & 0xFFFFFFFF)
        seed >>= 32
    lo, hi = (words & np.uint64(0xFFFFFFFF)).astype(np.uint32), (words >> np.uint64(32)).astype(np.uint32)
    pairs = np.stack([lo, hi], axis=1)
    keep = np.stack([np.ones(len(words), bool), hi != 0], axis=1)
    return np.concatenate([np.array(head, np.uint32), pairs[keep]])


def _shape_of_all(shapes, layout):
    """The one shape of a batch's samples, from DALI's per-sample shape vectors (compared in one array where they
    agree; else the per-sample check, which names the first that differs)."""
    table = np.array(shapes) if all(len(sh) == len(shapes[0]) for sh in shapes) else None
    if table is None or table.ndim != 2 or table.shape[1] != 3 or (table != table[0]).any():
        return _checks.check_same_shapes("images", [tuple(int(v) for v in sh) for sh in shapes], layout)
    return tuple(int(v) for v in table[0])


class _Draws:
    """One batch's random draws from its keys and the runtime arguments; no state between batches."""

    def __init__(self, spec: MixSpec):
        self.spec = spec

    def generator(self, keys) -> np.random.Generator:
        """The batch's generator: a SeedSequence of the keys' bits (as the list of ints ``[0, *key words]``),
        spawned at (shard, operator index). The pipeline's seed reaches it through the keys alone (it seeds the
        keys' ``fn.random.uniform``, whose state DALI checkpoints): a pipeline restored from a checkpoint with
        another seed, whose DALI operators continue as they would have, continues the same mixes."""
        words = _stacked(keys, np, np.float64).view(np.uint64)
        entropy = _entropy_words(0, words)
        seq = np.random.SeedSequence(entropy=entropy, spawn_key=(self.spec.shard_id, self.spec.index))
        return np.random.Generator(np.random.PCG64(seq))

    def split_inputs(self, rest):
        """``(runtime, valid, others)`` of the drawing function's inputs after the keys: the per-iteration
        alpha/prob, the "not padding" flags (with ``reader_name``; else None) and what follows."""
        count = self.spec.runtime_count
        runtime, rest = tuple(rest[:count]), tuple(rest[count:])
        if self.spec.reader_name is None:
            return runtime, None, rest
        return runtime, np.array([bool(np.asarray(v).reshape(-1)[0]) for v in rest[0]]), rest[1:]

    def runtime_args(self, n, runtime):
        """``(alpha, prob)`` of this batch: the spec's, or the per-sample inputs' (checked). alpha is the K-vector
        shared by the batch, or ``(N, K)`` when it differs between samples ("sample" mode only)."""
        runtime = list(runtime)
        spec = self.spec
        alpha = spec.alpha
        prob = spec.prob
        if alpha is None:
            alpha = per_sample_alpha(runtime.pop(0), n, spec.k, spec.mode)
        if prob is None:
            given = [np.asarray(p).reshape(-1) for p in runtime.pop(0)]
            for s, v in enumerate(given):
                if v.size == 0:  # fn.kmix_draw's messages
                    raise ValueError(f"prob given as a DataNode must hold a value per sample, got none for sample {s}")
                if v.size != 1:
                    raise ValueError(f"prob given as a DataNode must hold one value per sample, got {v.size} for "
                                     f"sample {s}")
            vals = np.array([float(v[0]) for v in given])
            bad = ~((vals >= 0.0) & (vals <= 1.0))
            if bad.any():
                raise ValueError(f"prob must be in [0, 1], got {vals[bad][0]} for sample {int(np.argmax(bad))}")
            if vals.shape[0] != n:
                raise ValueError(f"prob given as a DataNode must have one value per sample ({n}), got {vals.shape[0]}")
            prob = vals
        return np.asarray(alpha, np.float64), prob

    def raw(self, keys, runtime=(), valid=None):
        """``(method, (phi, uniforms, perms, mixed))``: this batch's method and its
        :func:`dali_kmix.sampling.draw_raw` draws ("dmixup+dcutmix" first tosses for the method);
        ``valid``: the samples that are not a reader's padding (None: all)."""
        n = len(keys)
        alpha, prob = self.runtime_args(n, runtime)
        gen = self.generator(keys)
        method = self.spec.method
        if self.spec.switch:
            cut = gen.random() < self.spec.switch_prob
            method = "dcutmix" if cut else "dmixup"
            if cut:
                alpha = np.asarray(self.spec.cutmix_alpha, np.float64)
        return method, draw_raw(np, gen, n, self.spec.k, alpha, self.spec.mode, prob, valid)


def per_sample_alpha(values, n: int, k: int, mode: str) -> np.ndarray:
    """alpha given per sample (a scalar or K values each), checked: the K-vector when every sample has the same
    one (then the draws are those of a fixed alpha), else ``(N, K)`` (mode "sample"; mode "batch" raises,
    naming the first sample whose alpha differs from sample 0's)."""
    if len(values) != n:
        raise ValueError(f"alpha given per sample must have one value per sample ({n}), got {len(values)}")
    rows = []
    for i, v in enumerate(values):
        v = np.asarray(v, np.float64).reshape(-1)
        try:
            rows.append(_checks.check_alpha(float(v[0]) if v.size == 1 else v, k))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{exc} for sample {i}") from None
    alpha = np.stack(rows)
    differs = np.flatnonzero((alpha != alpha[0]).any(axis=1))
    if differs.size == 0:
        return alpha[0]
    if mode == "batch":
        i = int(differs[0])
        raise ValueError(f"mode='batch' draws one Dirichlet for the whole batch, so alpha must be the same for every "
                         f"sample; sample {i} has alpha {alpha[i].tolist()} but sample 0 has {alpha[0].tolist()} "
                         f"(mode='sample' gives every sample its own alpha)")
    return alpha


class _HostRecord(_Draws):
    """CPU: the record, the checked labels and the label outputs of one batch."""

    def record(self, keys, runtime, h, w, centers=None, valid=None):
        method, draws = self.raw(keys, runtime, valid)
        return record_from_draws(method, *draws, h, w, centers)

    def label_outputs(self, lab, params):
        return _label_outputs(self.spec, lab, params)

    def centers(self, images):
        if self.spec.method != "saliency-dcutmix":
            return None
        from .saliency import salient_points

        return salient_points(images, self.spec.layout, method=self.spec.saliency)

    def labels(self, labels, n):
        return _checks.check_labels(_label_vector(labels, n, np), self.spec.num_classes, n)

    def check_area(self, shape):
        """Boxes (DCutMix, Saliency-DCutMix, and either per batch) need at least one pixel: their label
        weights are box areas / (H x W). A DMixup blend of empty images is defined (finite targets)."""
        if self.spec.boxed:
            _checks.check_area("images", shape, self.spec.layout, self.spec.method)


class _PluginRecord(_HostRecord):
    """Plugin path: draws the record and the labels; ``fn.kmix_dmixup`` / ``fn.kmix_dcutmix`` blend.

    Returns per sample: sources (K,), then weights (K,) or boxes (K-1, 4), then the label outputs.
    For "dmixup+dcutmix": sources, weights, boxes and a per-sample "cut" flag for ``fn.kmix_mix``.
    In a pipeline the native operator checks the images' layout against their shape; dynamic mode checks it
    before drawing (:func:`_check_dynamic_batch`).
    """

    def __call__(self, shapes, labels, keys, *rest):
        spec = self.spec
        n = len(shapes)
        if n == 0:
            return ([], []) + ([],) * spec.label_outputs
        runtime, valid, extra = self.split_inputs(rest)
        images = extra[0] if spec.method == "saliency-dcutmix" else None
        first = _shape_of_all(shapes, spec.layout)
        self.check_area(first)
        h, w = _checks.spatial_size(first, spec.layout)
        lab = self.labels(labels, n)
        params = self.record(keys, runtime, h, w, self.centers(images), valid)
        if spec.switch:  # fn.kmix_mix: the weights blend where cut is 0, the boxes paste where it is 1
            boxes = params.boxes if params.boxes is not None else np.zeros((n, spec.k - 1, 4), np.int32)
            cut = np.full((n, 1), params.boxes is not None, np.uint8)
            return (list(params.sources), list(params.weights), list(boxes), list(cut),
                    *self.label_outputs(lab, params))
        weights_or_boxes = params.weights if params.boxes is None else params.boxes
        return (list(params.sources), list(weights_or_boxes), *self.label_outputs(lab, params))


class _PluginRecordGivenCenters(_PluginRecord):
    """Plugin path on the GPU: as :class:`_PluginRecord`, but Saliency-DCutMix gets the salient points
    (int32 (2,) per sample, found on the device by :class:`_GpuCenters`) instead of the images."""

    def centers(self, given):
        if self.spec.method != "saliency-dcutmix":
            return None
        return np.stack([np.asarray(c, np.int32).reshape(2) for c in given])


class _GpuCenters:
    """Saliency-DCutMix on the GPU: the most salient pixel of every image (CuPy, on DALI's stream; NumPy where the
    images are on the CPU)."""

    def __init__(self, spec: MixSpec):
        self.spec = spec

    def __call__(self, images):
        try:
            if len(images) == 0:
                return []
            from .saliency import salient_points

            return list(salient_points(list(images), self.spec.layout, method=self.spec.saliency))
        except BaseException:
            _disown_dali_stream()
            raise


class _FunctionMix(_HostRecord):
    """Function path (CPU without the plugin): draws, blends with the CPU kernels and labels."""

    def __init__(self, spec: MixSpec, workers):
        super().__init__(spec)
        self.workers = workers
        self._out = None  # output buffer, reused: DALI copies the outputs before the next call

    def __call__(self, images, labels, layout_prop, keys, *rest):
        spec = self.spec
        n = len(images)
        if n == 0:
            return ([],) + ([],) * spec.label_outputs
        runtime, valid, _ = self.split_inputs(rest)
        first = _check_images_layout(spec.layout, _carried_layout(layout_prop), [im.shape for im in images])
        _checks.check_image_dtype("images", images[0].dtype)
        self.check_area(first)
        h, w = _checks.spatial_size(first, spec.layout)
        lab = self.labels(labels, n)
        params = self.record(keys, runtime, h, w, self.centers(images), valid)
        from .mixing import blend_samples

        shape = (n,) + tuple(images[0].shape)
        if self._out is None or self._out.shape != shape or self._out.dtype != images[0].dtype:
            self._out = np.empty(shape, images[0].dtype)
        out = blend_samples(images, params, spec.layout, out=self._out, workers=self.workers)
        return (list(out), *self.label_outputs(lab, params))


class _GpuDraws(_Draws):
    """GPU path, host half: per sample phi (K,), box positions (K-1, 2), partners (K-1,), "is mixed" (1,)
    and "is DCutMix" (1,). Every sample is an ndarray: DALI's ``python_function`` takes no NumPy scalars.

    Given the images' shapes and carried layout last (``images.shape()`` and ``images.property("layout")``: CPU
    operators that read the GPU images' metadata, so nothing waits on the device), it first checks the images'
    layout as the function path does (:func:`_check_images_layout`)."""

    def __call__(self, keys, *rest):
        n = len(keys)
        if n == 0:
            return [], [], [], [], []
        runtime, valid, meta = self.split_inputs(rest)
        if meta:
            shapes, layout_prop = meta
            _check_images_layout(self.spec.layout, _carried_layout(layout_prop), shapes)
        method, (phi, uniforms, perms, mixed) = self.raw(keys, runtime, valid)
        if phi.shape[0] != n:  # "batch" mode: one row for all samples
            phi, uniforms = np.repeat(phi, n, axis=0), np.repeat(uniforms, n, axis=0)
        partners = np.ascontiguousarray(perms.T, dtype=np.int32)
        cut = np.full((n, 1), method != "dmixup", np.uint8)  # "dmixup+dcutmix": this batch's method
        return list(phi), list(uniforms), list(partners), list(mixed.astype(np.uint8).reshape(n, 1)), list(cut)


class _GpuMix:
    """GPU path, device half: nest (``kmix_nest_boxes``), blend and label on DALI's stream.

    ``layout_prop`` (pipelines with ``exec_dynamic=False`` only; elsewhere :class:`_GpuDraws` checked the layout on
    the host) is read back and checked here. The labels, checked already (on the host by :class:`_LabelCheck`, or
    here with ``check_labels``), and the record, built here, go to the unchecked label computation
    (:func:`_label_outputs`): no other read from the device."""

    def __init__(self, spec: MixSpec, check_labels: bool):
        self.spec = spec
        self.check_labels = check_labels  # GPU labels: checked here (a small device-to-host read)

    def __call__(self, *batches):
        try:
            return self._mix(*batches)
        except BaseException:
            _disown_dali_stream()
            raise

    def _mix(self, images, labels, phi, uniforms, partners, mixed, cut, layout_prop=None):
        import cupy

        from .backends import GpuBackend, gpu

        spec = self.spec
        n = len(images)
        if n == 0:
            return ([],) + ([],) * spec.label_outputs
        shapes = [im.shape for im in images]
        if layout_prop is None:  # the layout was checked on the host (_GpuDraws)
            first = _checks.check_same_shapes("images", shapes, spec.layout)
        else:  # a pipeline that cannot hand the GPU images' layout to the host: read back here (a sync)
            first = _check_images_layout(spec.layout, _carried_layout([cupy.asnumpy(layout_prop[0])]), shapes)
        _checks.check_image_dtype("images", images[0].dtype)
        if spec.boxed:  # the shape is host metadata: no read from the device
            _checks.check_area("images", first, spec.layout, spec.method)
        h, w = _checks.spatial_size(first, spec.layout)
        lab = _label_vector(labels, n, cupy)
        lab = _checks.check_labels(lab, spec.num_classes, n) if self.check_labels else lab.astype(np.int64)
        centers = None
        if spec.method == "saliency-dcutmix":
            from .saliency import salient_points

            centers = salient_points(images, spec.layout, method=spec.saliency)
        draws = (cupy.stack(phi), cupy.stack(uniforms), cupy.stack(partners).T, cupy.stack(mixed).reshape(n))
        out = cupy.empty((n,) + tuple(images[0].shape), images[0].dtype)
        backend = GpuBackend()
        if spec.switch:
            # The method was tossed on the host and travels as a per-sample flag: reading it here would
            # synchronise, so one kmix_mix launch blends or pastes each sample as its flag says.
            sources, box_w, boxes = gpu.nest_boxes("dcutmix", *draws, h, w)
            is_cut = cupy.stack(cut).reshape(n, 1)
            own = cupy.eye(1, spec.k, dtype=cupy.float32)
            blend_w = cupy.where(draws[3][:, None].astype(bool), draws[0].astype(cupy.float32), own)
            backend.mix(list(images), list(out), sources, blend_w, boxes, is_cut, spec.layout)
            params = MixParams(sources, cupy.where(is_cut.astype(bool), box_w, blend_w), None)
        else:
            params = MixParams(*gpu.nest_boxes(spec.method, *draws, h, w, centers))
            backend.blend(list(images), list(out), params, spec.layout)
        return (list(out), *_label_outputs(spec, lab, params))


def _disown_dali_stream():
    """Keep DALI's CUDA stream alive when a GPU ``python_function`` of ours raises.

    DALI 2.4 runs the function inside ``with cupy.cuda.Stream(null=True)`` whose ``ptr``
    it has set to its own stream, and sets ``ptr`` back to 0 only after the function
    returns. When the function raises instead, that Stream object keeps DALI's pointer
    and CuPy's ``Stream.__del__`` destroys the stream DALI goes on using. Called while
    an exception leaves :class:`_GpuMix`: the current CuPy stream, when it is that
    wrapper, lets go of DALI's stream (the ``with`` block still restores the previous
    stream on exit).
    """
    try:
        import cupy
        import nvidia.dali.python_function_plugin as plugin

        dali_ptr = int(plugin.current_dali_stream())
        current = cupy.cuda.get_current_stream()
    except Exception:  # noqa: BLE001 - not inside DALI's GPU call: nothing to protect
        return
    if type(current) is cupy.cuda.Stream and dali_ptr and current.ptr == dali_ptr and \
            current is not cupy.cuda.Stream.null and current is not cupy.cuda.Stream.ptds:
        current.ptr = 0


class _LabelCheck:
    """CPU-side label check in front of a GPU mixer (no device sync needed)."""

    def __init__(self, num_classes):
        self.num_classes = num_classes

    def __call__(self, labels):
        if len(labels) == 0:
            return []
        _checks.check_labels(_label_vector(labels, len(labels), np), self.num_classes, len(labels))
        return [np.asarray(x, dtype=np.int32).reshape(-1) for x in labels]


# --------------------------------------------------------------------------- building the operators


def _is_node(x) -> bool:
    from nvidia.dali.data_node import DataNode

    return isinstance(x, DataNode)


def _is_dynamic(x) -> bool:
    """A batch or tensor of DALI's dynamic mode (``nvidia.dali.experimental.dynamic``), recognised without importing
    it (its import takes seconds)."""
    return type(x).__module__.startswith("nvidia.dali.experimental.dynamic")


def _per_iteration(x) -> bool:
    """alpha / prob given per iteration and sample: a DataNode (pipelines) or a dynamic-mode batch."""
    return _is_node(x) or _is_dynamic(x)


def _type_name(x) -> str:
    t = type(x)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def check_operator_input(name: str, x):
    """``images`` and ``labels`` of a pipeline operator must be DataNodes: anything else (a NumPy array, a torch
    tensor, a list) raises TypeError naming what came and where such data is mixed instead."""
    if _is_node(x):
        return
    raise TypeError(
        f"{name} must be a DALI DataNode (an operator's output inside a pipeline definition) or a batch of DALI's "
        f"dynamic mode (nvidia.dali.experimental.dynamic.Batch), got {_type_name(x)}; to mix arrays outside DALI use "
        f"dali_kmix.mix_images (with a record from dali_kmix.sample_params), and dali_kmix.torch.KMixup for torch "
        f"tensors")


def _check_carried_layout(layout: str, found: str):
    """Images that carry a layout (``found``; "" when they carry none) must carry the one given."""
    if found and found != layout:
        raise ValueError(f"layout={layout!r} was given but the images carry layout {found!r}")


def _carried_layout(layout_prop) -> str:
    """The layout a batch carries, from ``fn.get_property(images, key="layout")`` (its first sample: a uint8
    vector, empty when the images carry none)."""
    return bytes(np.asarray(layout_prop[0]).astype(np.uint8)).decode()


def _check_images_layout(layout: str, found: str, shapes) -> tuple:
    """The python_function paths' layout checks, in one order: a carried layout (``found``) must be ``layout``;
    the samples must share one shape (returned); a shape that contradicts ``layout`` needs a carried layout."""
    _check_carried_layout(layout, found)
    first = _shape_of_all(shapes, layout)
    _checks.check_channels("images", first, layout, found)
    return first


def _check_saliency_device(saliency: str, gpu: bool):
    if gpu and saliency == "fine-grained":
        raise ValueError("saliency='fine-grained' (OpenCV) runs on the CPU only; use 'spectral-residual' on the GPU")


def _spec(method, *, k, alpha, num_classes, layout, mode, prob, smoothing, label_format, seed, shard_id,
          saliency, switch_prob=0.0, cutmix_alpha=None, reader_name=None) -> MixSpec:
    from nvidia.dali import Pipeline

    from .saliency import SALIENCY_METHODS

    _checks.check_layout(layout)
    _checks.check_choice("saliency", saliency, SALIENCY_METHODS)
    _checks.check_choice("label_format", label_format, _checks.LABEL_FORMATS)
    num_classes = _checks.check_int("num_classes", num_classes, 1)
    smoothing = _checks.check_smoothing(smoothing)
    shard_id = _checks.check_int("shard_id", shard_id, 0)
    if seed is not None:
        seed = _checks.check_int("seed", seed, 0)
    if reader_name is not None and (not isinstance(reader_name, str) or not reader_name):
        raise TypeError(f"reader_name must be the name of the pipeline's reader (a non-empty str), got {reader_name!r}")
    if label_format == "sparse" and smoothing > 0:
        raise ValueError(
            f"smoothing={smoothing} applies to dense targets; with label_format='sparse' pass the smoothing "
            f"to dali_kmix.torch.sparse_mixed_cross_entropy instead"
        )
    switch = method == _checks.SWITCH
    alpha_given, prob_given = _per_iteration(alpha), _per_iteration(prob)
    if switch and alpha_given:
        raise ValueError("alpha cannot be given per sample with method 'dmixup+dcutmix' (two alphas); use prob")
    _, _, _, k, alpha_vec, prob_val = check_sample_args(
        "dcutmix" if switch else method, 0, 1, 1, k, 1.0 if alpha_given else alpha, mode,
        0.0 if prob_given else prob)
    cut_vec = None
    if switch:
        switch_prob = _checks.check_probability("switch_prob", switch_prob)
        cut_vec = tuple((_checks.check_alpha(alpha, k) if cutmix_alpha is None
                         else _checks.check_alpha(cutmix_alpha, k, "cutmix_alpha")).tolist())
    pipe = Pipeline.current()
    if seed is None and pipe is not None and pipe.seed is not None and pipe.seed >= 0:
        seed = int(pipe.seed)
    index = next(_op_counters.setdefault(pipe, itertools.count())) if pipe is not None else 0
    return MixSpec(method=method, k=k, alpha=None if alpha_given else tuple(alpha_vec.tolist()),
                   num_classes=num_classes, layout=layout, mode=mode, prob=None if prob_given else prob_val,
                   smoothing=smoothing, label_format=label_format, saliency=saliency, seed=seed,
                   shard_id=shard_id, index=index, switch_prob=switch_prob, cutmix_alpha=cut_vec,
                   reader_name=reader_name)


def _keys(spec: MixSpec, labels):
    """Per-sample keys from DALI's own random operator (its state is checkpointed).

    Shaped like the CPU labels (one number per sample), so the keys follow the labels'
    batch size; with GPU labels, one per sample of the pipeline's batch.
    """
    from nvidia.dali import fn, types

    seed = -1 if spec.seed is None else int(np.random.SeedSequence(
        [spec.seed, spec.shard_id, spec.index]).generate_state(1)[0] & 0x7FFFFFFF)
    if labels is None:
        return fn.random.uniform(range=[0.0, 1.0], dtype=types.FLOAT64, seed=seed)
    return fn.random.uniform(labels, range=[0.0, 1.0], dtype=types.FLOAT64, seed=seed)


def _shard_sizes(meta: dict) -> list[int]:
    """The samples of each shard of the reader whose ``pipe.reader_meta(name)`` is ``meta`` (DALI's split)."""
    n, shards = int(meta["epoch_size"]), int(meta["number_of_shards"])
    return [(j + 1) * n // shards - j * n // shards for j in range(shards)]


def padded_epoch_batches(meta: dict, batch_size: int) -> int:
    """Batches a reader with ``pad_last_batch=True`` yields per epoch on every shard: ``ceil(S / batch_size)``, S
    the largest shard (a smaller shard fills them with copies of its last sample)."""
    return max(1, -(-max(_shard_sizes(meta)) // batch_size))


def real_sample_flags(meta: dict, iteration: int, batch_size: int) -> list[int]:
    """Per sample of batch ``iteration`` (0-based, since the pipeline started): 1 for a sample of the reader's
    shard, 0 for a copy of the shard's last sample that ``pad_last_batch=True`` added to fill the batch.

    ``meta`` is ``pipe.reader_meta(name)``. With padding, every shard is read as ``ceil(S / batch_size)`` batches,
    S the largest shard (so every pipeline of a sharded run yields as many batches; a smaller shard may end in a
    whole batch of copies); a reader that does not stick to its shard reads shard ``shard_id + epoch`` (modulo the
    number of shards) in each epoch. This is how DALI's own iterators count the samples they drop
    (``LastBatchPolicy.PARTIAL``); it depends on the iteration index alone, which a checkpoint restores.
    """
    if not meta.get("pad_last_batch"):
        return [1] * batch_size
    shards, shard = int(meta["number_of_shards"]), int(meta["shard_id"])
    sizes = _shard_sizes(meta)
    epoch, step = divmod(int(iteration), padded_epoch_batches(meta, batch_size))
    if not meta.get("stick_to_shard"):
        shard = (shard + epoch) % shards
    real = min(max(sizes[shard] - step * batch_size, 0), batch_size)
    return [1] * real + [0] * (batch_size - real)


class _RealSamples:
    """``external_source`` callback: the "not padding" flag of every sample of a batch (uint8 (1,) each), from the
    reader's meta (read once the pipeline is built) and the iteration index DALI hands the source."""

    def __init__(self, pipe, reader_name: str):
        self._pipe = weakref.ref(pipe)
        self.reader_name = reader_name
        self.batch_size = int(pipe.max_batch_size)
        self._meta = None

    def meta(self) -> dict:
        if self._meta is None:
            pipe = self._pipe()
            try:
                self._meta = pipe.reader_meta(self.reader_name)
            except Exception as exc:  # noqa: BLE001 - DALI's message for an unknown name is not ours to show
                raise ValueError(f"reader_name={self.reader_name!r}: the pipeline has no reader of that name "
                                 f"({type(exc).__name__}: {exc})") from None
        return self._meta

    def __call__(self, info):
        return [np.array([v], np.uint8) for v in real_sample_flags(self.meta(), info.iteration, self.batch_size)]


def _per_sample_inputs(spec: MixSpec, alpha, prob):
    """What the drawing function takes after the keys: alpha and prob when given per iteration, then the reader's
    "not padding" flags when ``reader_name`` is given."""
    from nvidia.dali import Pipeline, fn

    inputs = [x for x, fixed in ((alpha, spec.alpha), (prob, spec.prob)) if fixed is None]
    if spec.reader_name is not None:
        pipe = Pipeline.current()
        if pipe is None:
            raise ValueError(f"reader_name={spec.reader_name!r} needs the operator inside a pipeline definition")
        inputs.append(fn.external_source(source=_RealSamples(pipe, spec.reader_name), batch=True, batch_info=True))
    return inputs


def _plugin_path(spec, images, labels, keys, runtime, name, norm_args=None):
    """The record and the labels drawn on the host, the images blended by ``fn.kmix_*`` on their own device (CPU, or
    the plugin's GPU backend: then the label outputs are handed to the GPU)."""
    from nvidia.dali import fn

    gpu = images.device == "gpu"
    if gpu and getattr(labels, "device", "cpu") != "cpu":
        labels = labels.cpu()  # DALI's own transfer; the labels are checked and mixed with the record on the host
    if _draws_from_shapes(images):
        centers = []
        if spec.method == "saliency-dcutmix":  # the salient points found where the images are, handed to the host
            found = fn.python_function(images, function=_GpuCenters(spec), batch_processing=True, num_outputs=1,
                                       device=images.device)
            centers = [found.cpu() if gpu else found]
        outs = _draw_given_shapes(spec, images.shape(), labels, keys, runtime, centers, name)
    elif native_draw(spec):  # drawn in C++ (Saliency-DCutMix's points found there too)
        outs = fn.kmix_draw(images, labels, keys, *runtime, **_draw_args(spec), name=name)
    else:
        extra = [images] if spec.method == "saliency-dcutmix" else []
        outs = _python_draw(_PluginRecord(spec), images.shape(), labels, keys, runtime, extra, name)
    records = _record_count(spec)
    record, label_outs = outs[:records], outs[records:]
    mixed = native_blend(spec, fn)(images, *record, layout=spec.layout, **(norm_args or {}))
    return (mixed, *[x.gpu() if gpu else x for x in label_outs])


def _draws_from_shapes(images) -> bool:
    """Whether the plugin path draws the record from the images' shapes (and Saliency-DCutMix's points found
    beside it) rather than from the images: GPU pipelines, whose images stay on the device."""
    return images.device == "gpu"


def _record_count(spec: MixSpec) -> int:
    """The record outputs of the drawing: sources and weights or boxes; sources, weights, boxes and cut (switch)."""
    return 4 if spec.switch else 2


def _draw_given_shapes(spec, shapes, labels, keys, runtime, centers, name):
    """The record and the label outputs from the images' shapes (``images.shape()``) and, for Saliency-DCutMix,
    the salient points found elsewhere (``centers``: one DataNode, or empty): what GPU pipelines draw with, their
    images staying on the device. ``fn.kmix_draw`` with ``shape_input`` where :func:`native_draw` allows it (any
    saliency method: the points come given), else the python_function :class:`_PluginRecordGivenCenters`; the
    same numbers either way, and the same as the CPU pipelines' for the same keys and points."""
    from nvidia.dali import fn

    if native_draw(spec, given_centers=True):
        return fn.kmix_draw(shapes, labels, keys, *centers, *runtime, shape_input=True, centers_input=bool(centers),
                            **_draw_args(spec), name=name)
    return _python_draw(_PluginRecordGivenCenters(spec), shapes, labels, keys, runtime, centers, name)


def _python_draw(draw: _PluginRecord, shapes, labels, keys, runtime, extra, name):
    """The plugin path's drawing in a ``python_function`` (where ``fn.kmix_draw`` does not draw): ``draw`` takes
    the shapes, the labels, the keys, the per-iteration inputs and ``extra`` (Saliency-DCutMix's images or points)."""
    from nvidia.dali import fn

    return fn.python_function(shapes, labels, keys, *runtime, *extra, function=draw, batch_processing=True,
                              num_outputs=_record_count(draw.spec) + draw.spec.label_outputs, name=name)


def native_draw(spec: MixSpec, given_centers: bool = False) -> bool:
    """Whether a pipeline draws ``spec``'s records with ``fn.kmix_draw`` (C++, NumPy's generator: the numbers of
    :class:`_PluginRecord`, bit for bit, with the same checks and no Python per batch): for a shard id DALI's
    int64 argument holds (alpha and prob fixed or per iteration alike) and, where the operator finds Saliency-DCutMix's
    points itself (CPU pipelines; ``given_centers`` False), the spectral-residual saliency."""
    from .backends import plugin

    return ((given_centers or spec.saliency == "spectral-residual") and 0 <= spec.shard_id < 2 ** 63
            and plugin.draw_operator())


def _hex(values) -> str:
    return " ".join(float(v).hex() for v in np.ravel(values))


def _draw_args(spec: MixSpec) -> dict:
    """``fn.kmix_draw``'s arguments for ``spec`` (the floats exactly, as ``float.hex``)."""
    from .backends.cpu import DRAW_METHODS
    from .saliency import smoothing_taps

    args = dict(method=DRAW_METHODS[spec.method], k=spec.k, mode=spec.mode,
                alpha="" if spec.alpha is None else _hex(spec.alpha), alpha_input=spec.alpha is None,
                prob="" if spec.prob is None else _hex(spec.prob), prob_input=spec.prob is None,
                smoothing=_hex(spec.smoothing), num_classes=spec.num_classes,
                label_format=spec.label_format, layout=spec.layout, shard_id=spec.shard_id,
                index=spec.index)
    if spec.switch:
        args.update(cutmix_alpha=_hex(spec.cutmix_alpha), switch_prob=_hex(spec.switch_prob))
    if spec.method == "saliency-dcutmix":
        args.update(saliency_taps=_hex(smoothing_taps()))
    return args


def native_blend(spec: MixSpec, api):
    """The native operator that applies ``spec``'s record, from ``api`` (``nvidia.dali.fn`` or dynamic mode)."""
    if spec.switch:
        return api.kmix_mix
    return api.kmix_dcutmix if spec.boxed else api.kmix_dmixup


def _native_gpu(pipe) -> bool:
    """Whether GPU images go through the plugin's GPU operators: the plugin is loaded with its GPU backend and the
    pipeline can move data from the GPU to the CPU (DALI's dynamic executor, its default)."""
    from .backends import plugin

    return _gpu_to_cpu(pipe) and plugin.gpu_backend()


def _gpu_to_cpu(pipe) -> bool:
    """Whether a CPU operator may take the pipeline's GPU data (DALI's dynamic executor, its default; a pipeline
    not known yet is assumed to have it, as DALI defers that check to ``build``)."""
    return pipe is None or bool(getattr(pipe, "exec_dynamic", True))


def _function_path(spec, images, labels, keys, runtime, name, workers):
    from nvidia.dali import fn

    outs = fn.python_function(images, labels, fn.get_property(images, key="layout"), keys, *runtime,
                              function=_FunctionMix(spec, workers), batch_processing=True,
                              num_outputs=1 + spec.label_outputs,
                              output_layouts=[spec.layout] + [""] * spec.label_outputs, name=name)
    return tuple(outs)


def _gpu_path(spec, images, labels, keys, runtime, name):
    """The GPU fallback. The images' layout is checked on the host by :class:`_GpuDraws`, from their shapes and
    carried layout (metadata: no device sync), where the pipeline lets CPU operators take GPU data; otherwise
    (``exec_dynamic=False``) :class:`_GpuMix` reads the carried layout back from the device, once per batch."""
    from nvidia.dali import Pipeline, fn

    check_on_device = getattr(labels, "device", "cpu") != "cpu"
    if not check_on_device:  # check the labels on the host, where they are, then hand them over
        labels = fn.python_function(labels, function=_LabelCheck(spec.num_classes), batch_processing=True,
                                    num_outputs=1).gpu()
    on_host = _gpu_to_cpu(Pipeline.current())
    meta = [images.shape(), images.property("layout")] if on_host else []
    draws = fn.python_function(keys, *runtime, *meta, function=_GpuDraws(spec), batch_processing=True, num_outputs=5)
    layout_on_device = [] if on_host else [fn.get_property(images, key="layout")]
    outs = fn.python_function(images, labels, *[d.gpu() for d in draws], *layout_on_device,
                              function=_GpuMix(spec, check_on_device), batch_processing=True,
                              num_outputs=1 + spec.label_outputs,
                              output_layouts=[spec.layout] + [""] * spec.label_outputs, device="gpu", name=name)
    return tuple(outs)


def _mix_op(method, images, labels, *, k, alpha, num_classes, layout, mode, prob, smoothing, label_format,
            seed, shard_id, name, saliency="spectral-residual", switch_prob=0.0, cutmix_alpha=None,
            reader_name=None, normalize=None):
    from nvidia.dali import Pipeline, fn

    if normalize is not None and not isinstance(normalize, Normalize):
        raise TypeError(f"normalize must be a dali_kmix.dali.Normalize or None, got {type(normalize).__name__}")
    if _is_dynamic(images):  # DALI's dynamic mode: the same call, mixed at once
        if normalize is not None:
            raise ValueError("normalize= applies to pipelines; in dynamic mode normalise the mixed batch with "
                             "ndd.crop_mirror_normalize")
        if seed is not None:
            raise ValueError(f"seed= applies to pipelines; in dynamic mode the draws come from an ndd.random.RNG: "
                             f"pass rng=ndd.random.RNG(seed=...) to dali_kmix.dynamic.{FUNCTIONS[method]} "
                             f"(or seed ndd's default generator with ndd.random.set_seed)")
        if reader_name is not None:
            raise ValueError("reader_name= applies to pipelines, whose operator keeps the copies that a reader with "
                             "pad_last_batch=True adds to its last batch out of the mix; dali_kmix.dynamic has no "
                             "reader_name: in dynamic mode leave the reader's pad_last_batch off (see the README, "
                             "\"The last batch: padded copies are no partners\")")
        return dynamic_mix(method, images, labels, k=k, alpha=alpha, num_classes=num_classes, layout=layout,
                           mode=mode, prob=prob, smoothing=smoothing, label_format=label_format, shard_id=shard_id,
                           saliency=saliency, switch_prob=switch_prob, cutmix_alpha=cutmix_alpha)
    check_operator_input("images", images)
    for arg, value in (("labels", labels), ("alpha", alpha), ("prob", prob)):
        if _is_dynamic(value):
            given = "a DataNode (e.g. the reader's labels)" if arg == "labels" else "a number or a CPU DataNode"
            raise TypeError(f"{arg} is a batch of DALI's dynamic mode ({_type_name(value)}) but images is a DataNode "
                            f"of a pipeline definition; dynamic-mode batches go with dynamic-mode images "
                            f"(dali_kmix.dynamic): in a pipeline give {arg} as {given}")
    check_operator_input("labels", labels)
    spec = _spec(method, k=k, alpha=alpha, num_classes=num_classes, layout=layout, mode=mode, prob=prob,
                 smoothing=smoothing, label_format=label_format, seed=seed, shard_id=shard_id, saliency=saliency,
                 switch_prob=switch_prob, cutmix_alpha=cutmix_alpha, reader_name=reader_name)
    device = images.device
    if device not in ("cpu", "gpu"):
        raise ValueError(f"images must be a DALI DataNode on 'cpu' or 'gpu', got device {device!r}")
    _check_saliency_device(saliency, device == "gpu")
    for arg, value in (("alpha", alpha), ("prob", prob)):
        if _is_node(value) and value.device != "cpu":
            raise ValueError(f"{arg} given as a DataNode must be on the CPU, got device {value.device!r}")
    labels_on_cpu = labels.device == "cpu"
    if not labels_on_cpu and device == "cpu":
        raise ValueError("images are on the CPU but labels are on the GPU; pass CPU labels to a CPU mixer")
    keys = _keys(spec, labels if labels_on_cpu else None)
    runtime = _per_sample_inputs(spec, alpha, prob)
    from .backends import plugin

    norm_args = None if normalize is None else normalize.operator_args(spec.layout)
    if (device == "gpu" and _native_gpu(Pipeline.current())) or (device == "cpu" and plugin.load()):
        return _plugin_path(spec, images, labels, keys, runtime, name, norm_args)  # normalised in the same pass
    if device == "gpu":
        outs = _gpu_path(spec, images, labels, keys, runtime, name)
    else:
        pipe = Pipeline.current()
        workers = pipe.num_threads if pipe is not None and pipe.num_threads else None
        outs = _function_path(spec, images, labels, keys, runtime, name, workers)
    if norm_args is None:
        return outs
    return (fn.crop_mirror_normalize(outs[0], **norm_args), *outs[1:])  # the same bits, in a second operator


# --------------------------------------------------------------------------- dynamic mode

#: The public function of each method (for messages).
FUNCTIONS = {"dmixup": "dmixup", "dcutmix": "dcutmix", "saliency-dcutmix": "saliency_dcutmix",
             _checks.SWITCH: "dmixup_or_dcutmix"}

_warned_host: list = []


def _ndd():
    import nvidia.dali.experimental.dynamic as ndd

    return ndd


def _host_samples(name, x, n=None) -> list:
    """The samples of a dynamic-mode batch (or of an array-like with one entry per sample) as NumPy arrays."""
    ndd = _ndd()
    if isinstance(x, ndd.Batch):
        if x.device.device_type != "cpu":
            x = x.cpu()
        samples = [np.asarray(t) for t in x.tensors]
    elif isinstance(x, ndd.Tensor):
        raise TypeError(f"{name} must be an ndd.Batch (one sample per entry), got an ndd.Tensor; "
                        f"ndd.as_batch(...) makes a batch of a tensor's outer dimension")
    else:
        try:
            arr = np.asarray(x)
        except Exception:  # noqa: BLE001 - any failure: the type is what the message needs
            arr = None
        if arr is None or arr.dtype == object or arr.ndim == 0:
            raise TypeError(f"{name} must be an ndd.Batch or an array-like with one entry per sample, got "
                            f"{_type_name(x)}")
        samples = list(arr.reshape(arr.shape[0], math.prod(arr.shape[1:])))  # -1 is ambiguous for 0 values
    if n is not None and len(samples) != n:
        raise ValueError(f"{name} has {len(samples)} samples but images has {n}")
    return samples


def _dynamic_image_dtype(images):
    """The dtype of a dynamic-mode batch's images, checked (uint8, float16 or float32), as the pipelines' message."""
    from nvidia.dali import types

    try:
        dtype = np.dtype(types.to_numpy_type(images.dtype.type_id))
    except Exception:  # noqa: BLE001 - no NumPy counterpart (strings, bfloat16): not an image dtype either way
        raise TypeError(f"images must have dtype uint8, float16 or float32, got {images.dtype}") from None
    return _checks.check_image_dtype("images", dtype)


def _check_dynamic_batch(spec: MixSpec, images, found: str, lab, runtime):
    """Every check of a dynamic-mode call's inputs that the drawing and the blending would make (the images' layout,
    shapes and area, the labels, per-sample alpha and prob), made before its keys are drawn: a call that raises
    leaves its ``rng`` where it was, so the stream does not shift after a caught error."""
    n = images.batch_size
    first = _check_images_layout(spec.layout, found, images.shape)
    host = _HostRecord(spec)
    host.check_area(first)
    host.labels(lab, n)
    host.runtime_args(n, runtime)


def _dynamic_keys(rng, n: int) -> list:
    """One float64 key per sample from ``rng`` (DALI's own uniform operator, on the CPU)."""
    ndd = _ndd()
    keys = ndd.random.uniform(batch_size=n, range=[0.0, 1.0], dtype=ndd.float64, rng=rng, device="cpu")
    return [np.asarray(t) for t in keys.tensors]


def _centers_on_device(images, spec):
    """Saliency-DCutMix on the GPU: the salient points (int32 (2,) per sample) found with CuPy on the device."""
    import cupy

    from .saliency import salient_points

    points = salient_points([cupy.from_dlpack(t) for t in images.tensors], spec.layout, method=spec.saliency)
    return list(cupy.asnumpy(points).astype(np.int32))


def _dynamic_native(gpu: bool) -> bool:
    """The native operators are part of dynamic mode (on the GPU: with their GPU backend)."""
    from .backends import plugin

    ndd = _ndd()
    if not plugin.load() or not hasattr(ndd, "kmix_dcutmix"):
        return False
    return plugin.gpu_backend() if gpu else True


def dynamic_mix(method, images, labels, *, k=3, alpha=1.0, num_classes, layout=None, mode="sample", prob=1.0,
                smoothing=0.0, label_format="dense", shard_id=0, rng=None, saliency="spectral-residual",
                switch_prob=0.0, cutmix_alpha=None):
    """:mod:`dali_kmix.dynamic`: mix one dynamic-mode batch with ``method`` ("dmixup", "dcutmix",
    "saliency-dcutmix" or "dmixup+dcutmix")."""
    ndd = _ndd()
    if not isinstance(images, ndd.Batch):
        if isinstance(images, ndd.Tensor):
            raise TypeError("images must be an ndd.Batch (one image per sample), got an ndd.Tensor; "
                            "ndd.as_batch(tensor) makes a batch of its outer dimension")
        check_operator_input("images", images)  # raises, naming what came and where to mix it instead
        raise TypeError("images is a DataNode of a pipeline definition; dali_kmix.dynamic mixes dynamic-mode "
                        f"batches (ndd.Batch): in a pipeline use dali_kmix.dali.{FUNCTIONS[method]}")
    found = images.layout or ""
    if layout is None and images.batch_size == 0 and not found:
        layout = "HWC"  # DALI gives an empty batch no layout, and nothing is cut in one: any layout will do
    if layout is None:
        if found not in _checks.LAYOUTS:
            raise ValueError(f"layout must be given ('HWC' or 'CHW'): the images carry layout {found!r}")
        layout = found
    spec = _spec(method, k=k, alpha=alpha, num_classes=num_classes, layout=layout, mode=mode, prob=prob,
                 smoothing=smoothing, label_format=label_format, seed=None, shard_id=shard_id, saliency=saliency,
                 switch_prob=switch_prob, cutmix_alpha=cutmix_alpha)
    _check_carried_layout(spec.layout, found)
    gpu = images.device.device_type == "gpu"
    _check_saliency_device(saliency, gpu)
    n = images.batch_size
    lab = _host_samples("labels", labels, n)
    runtime = [_host_samples(arg, x, n) for arg, x, fixed in (("alpha", alpha, spec.alpha), ("prob", prob, spec.prob))
               if fixed is None]
    _dynamic_image_dtype(images)
    if n == 0:  # as ndd.kmix_* give: empty batches, in the outputs' dtypes, with nothing drawn from the rng
        label_dtypes = [ndd.float32] if spec.label_format == "dense" else [ndd.int32, ndd.float32]
        return tuple(ndd.Batch([], dtype=dtype, device=images.device) for dtype in [images.dtype, *label_dtypes])
    _check_dynamic_batch(spec, images, found, lab, runtime)  # what can raise, raised before the rng draws
    keys = _dynamic_keys(rng, n)
    if _dynamic_native(gpu):
        draw = _PluginRecordGivenCenters(spec) if gpu else _PluginRecord(spec)
        extra = []
        if spec.method == "saliency-dcutmix":
            extra = [_centers_on_device(images, spec) if gpu else [np.asarray(t) for t in images.tensors]]
        outs = draw(images.shape, lab, keys, *runtime, *extra)
        records = _record_count(spec)
        blend = native_blend(spec, ndd)
        mixed = blend(images, *[ndd.as_batch(list(r)) for r in outs[:records]], layout=spec.layout)
        label_outs = outs[records:]
    else:  # the same draws and kernels on the host (the python_function path of a pipeline)
        if gpu and not _warned_host:
            _warned_host.append(True)
            warnings.warn("dali_kmix: the DALI plugin has no GPU backend here, so dynamic-mode GPU batches are mixed "
                          "on the host (copied there and back)", RuntimeWarning, stacklevel=3)
        host = images.cpu() if gpu else images
        samples = [np.asarray(t) for t in host.tensors]
        layout_prop = [np.frombuffer(found.encode(), np.uint8)]
        out, *label_outs = _FunctionMix(spec, None)(samples, lab, layout_prop, keys, *runtime)
        mixed = ndd.as_batch(list(out), layout=spec.layout)
        if gpu:
            mixed = mixed.gpu()
    label_batches = [ndd.as_batch(list(x)) for x in label_outs]
    if gpu:
        label_batches = [b.gpu() for b in label_batches]
    return (mixed, *label_batches)


_DOC = """{title} as a DALI operator: returns ``(images, targets)`` or, with
``label_format="sparse"``, ``(images, label_idx, label_w)``.

Args:
    images: DataNode of HWC or CHW samples (uint8, float16 or float32), all of
        one H x W, on the CPU or the GPU. (A batch of DALI's dynamic mode is mixed at
        once: see :mod:`dali_kmix.dynamic`. A NumPy array or torch tensor raises
        TypeError: those are mixed by :func:`dali_kmix.mix_images` / ``KMixup``.)
    labels: DataNode of class indices, one per sample (shape () or (1,)), e.g. the
        second output of ``fn.readers.file``; CPU labels are checked on the host.
    k: images per mix (K >= 2; may exceed the batch size).
    alpha: Dirichlet concentration, a positive scalar or K positive numbers, or a CPU
        DataNode giving it per iteration and sample (a scalar or K numbers per sample,
        e.g. ``fn.random.uniform``): in mode "sample" each sample's Dirichlet has its
        own alpha; in mode "batch" all samples of a batch must agree (else ValueError
        naming the first sample that differs).
    num_classes: number of classes C (labels must lie in [0, C)).
    layout: "HWC" or "CHW" (required: a wrong layout cuts boxes across channels;
        when the images carry a layout, a mismatch raises; images without one whose
        shape contradicts ``layout``, such as (H, W, 3) with "CHW", raise at run time).
    mode: "sample" (per-sample shares, boxes and partners) or "batch" (one for all).
    prob: probability that a sample is mixed at all, or a CPU DataNode giving it per
        iteration and sample (0 switches mixing off without rebuilding the pipeline).
    smoothing: label smoothing s of each one-hot before mixing (dense only).
    label_format: "dense" -> targets float32 (C,) per sample; "sparse" ->
        label_idx int32 (K,) and label_w float32 (K,) per sample.
    seed: seed of the operator's random stream (default: the pipeline's seed);
        the stream also depends on ``shard_id``, so shards differ.
    shard_id: this process's shard (pass the reader's ``shard_id``).
    reader_name: the name of the reader whose samples these are, when it pads
        (``pad_last_batch=True``): the copies of the last sample that fill its last
        batch are then never partners of the real samples, nor mixed themselves (the
        iterator drops them). Known from the reader's meta and DALI's iteration
        index, as DALI's iterators know it; without it, each copy is a partner like
        any sample (see the README, "Last batch").
    name: optional operator name.
    normalize: a :class:`Normalize` (mean, std, mirror, output layout and dtype): the operator
        also normalises, in the same pass, with the bits ``fn.crop_mirror_normalize`` would give
        after the mix (the first output is then float32 or float16 in that layout).

Every input sample stays the anchor of its own output row, so an epoch still
shows every image once as an anchor. A pipeline built twice with the same seed
yields identical batches, and one built with ``enable_checkpointing=True`` and
restored from ``pipe.checkpoint()`` continues with exactly the batches of the
uninterrupted run.
"""


def dmixup(images, labels, *, k: int = 3, alpha=1.0, num_classes: int, layout: str, mode: str = "sample",
           prob=1.0, smoothing: float = 0.0, label_format: str = "dense", seed=None,
           shard_id: int = 0, reader_name=None, name=None, normalize: Normalize | None = None):
    return _mix_op("dmixup", images, labels, k=k, alpha=alpha, num_classes=num_classes, layout=layout, mode=mode,
                   prob=prob, smoothing=smoothing, label_format=label_format, seed=seed, shard_id=shard_id,
                   reader_name=reader_name, name=name, normalize=normalize)


def dcutmix(images, labels, *, k: int = 3, alpha=1.0, num_classes: int, layout: str, mode: str = "sample",
            prob=1.0, smoothing: float = 0.0, label_format: str = "dense", seed=None,
            shard_id: int = 0, reader_name=None, name=None, normalize: Normalize | None = None):
    return _mix_op("dcutmix", images, labels, k=k, alpha=alpha, num_classes=num_classes, layout=layout, mode=mode,
                   prob=prob, smoothing=smoothing, label_format=label_format, seed=seed, shard_id=shard_id,
                   reader_name=reader_name, name=name, normalize=normalize)


def saliency_dcutmix(images, labels, *, k: int = 3, alpha=1.0, num_classes: int, layout: str,
                     mode: str = "sample", prob=1.0, smoothing: float = 0.0, label_format: str = "dense",
                     seed=None, shard_id: int = 0, saliency: str = "spectral-residual", reader_name=None,
                     name=None, normalize: Normalize | None = None):
    return _mix_op("saliency-dcutmix", images, labels, k=k, alpha=alpha, num_classes=num_classes, layout=layout,
                   mode=mode, prob=prob, smoothing=smoothing, label_format=label_format, seed=seed,
                   shard_id=shard_id, reader_name=reader_name, name=name, saliency=saliency, normalize=normalize)


def dmixup_or_dcutmix(images, labels, *, k: int = 3, alpha=1.0, cutmix_alpha=None, switch_prob: float = 0.5,
                      num_classes: int, layout: str, mode: str = "sample", prob=1.0, smoothing: float = 0.0,
                      label_format: str = "dense", seed=None, shard_id: int = 0, reader_name=None, name=None,
                      normalize: Normalize | None = None):
    return _mix_op(_checks.SWITCH, images, labels, k=k, alpha=alpha, num_classes=num_classes, layout=layout,
                   mode=mode, prob=prob, smoothing=smoothing, label_format=label_format, seed=seed,
                   shard_id=shard_id, reader_name=reader_name, name=name, switch_prob=switch_prob,
                   cutmix_alpha=cutmix_alpha, normalize=normalize)


dmixup.__doc__ = _DOC.format(title="DMixup (Dirichlet-weighted blend of K images)")
dcutmix.__doc__ = _DOC.format(title="DCutMix (K images in nested stick-breaking boxes)")
dmixup_or_dcutmix.__doc__ = _DOC.format(
    title="DMixup or DCutMix, chosen per batch (timm's switch_prob)") + """
Each batch is DCutMix with probability ``switch_prob`` (with Dirichlet ``cutmix_alpha``,
default ``alpha``) and DMixup otherwise (with ``alpha``); the toss comes from the same
checkpointed stream as the rest of the draws. In CPU pipelines the native operator
``fn.kmix_mix`` applies either record in one pass; on the GPU the ``kmix_mix`` kernel does the
same, reading the method as a per-sample flag on the device (no sync).
"""
saliency_dcutmix.__doc__ = _DOC.format(
    title="Saliency-DCutMix (DCutMix boxes, each centred on its source's most salient point)") + """
Box sizes come from the stick-breaking recursion exactly as in DCutMix; box j is
centred on the most salient pixel of its source (spectral residual on a 64 x 64
grey copy, computed on the pipeline's device) and shifted, not shrunk, to lie
inside box j-1. ``saliency="fine-grained"`` uses OpenCV contrib's fine-grained
static saliency instead (CPU pipelines only).
"""
