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

Each operator draws one :class:`~dali_kmix.MixParams` record per batch (on the
host in CPU pipelines, on the device in GPU pipelines) and builds the labels from
that same record. In CPU pipelines a small ``fn.python_function`` draws the record
and the native operators of the dali_kmix plugin (:mod:`dali_kmix.plugin`,
``fn.kmix_dmixup`` / ``fn.kmix_dcutmix``) blend the images on the pipeline's thread
pool, straight into DALI's buffers; without the plugin one ``python_function`` does
both with the CPU kernels. In GPU pipelines one ``python_function`` draws and blends
with the CUDA kernels on DALI's stream.
"""

from __future__ import annotations

import itertools
import weakref

import numpy as np

from . import _checks
from .params import check_sample_args

__all__ = ["dmixup", "dcutmix", "saliency_dcutmix"]

_op_counters: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _seed_sequence(seed, shard_id: int):
    """The operator's SeedSequence: from ``seed`` (or the pipeline's), the shard and the op's index."""
    from nvidia.dali import Pipeline

    pipe = Pipeline.current()
    if seed is None and pipe is not None and pipe.seed is not None and pipe.seed >= 0:
        seed = int(pipe.seed)
    index = 0
    if pipe is not None:
        counter = _op_counters.setdefault(pipe, itertools.count())
        index = next(counter)
    if seed is None:
        return np.random.SeedSequence(spawn_key=(shard_id, index))
    return np.random.SeedSequence(entropy=seed, spawn_key=(shard_id, index))


def _label_vector(labels, n, xp):
    """One class index per sample, as a flat vector (labels arrive as (), (1,) samples)."""
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} samples but images has {n}")
    lab = xp.concatenate([xp.reshape(x, (-1,)) for x in labels])
    if lab.shape[0] != n:
        raise ValueError(f"labels must hold one class index per sample, got {lab.shape[0]} values for {n} samples")
    return lab


class _Mixer:
    """The per-batch function inside ``fn.python_function`` (batch_processing=True)."""

    def __init__(self, method, k, alpha, num_classes, layout, mode, prob, smoothing, label_format,
                 seed_seq, device, workers, check_labels, saliency="spectral-residual"):
        self.method = method
        self.saliency = saliency
        self.k = k
        self.alpha = alpha
        self.num_classes = num_classes
        self.layout = layout
        self.mode = mode
        self.prob = prob
        self.smoothing = smoothing
        self.label_format = label_format
        self.seed_seq = seed_seq
        self.device = device
        self.workers = workers
        self.check_labels = check_labels
        self._gen = None
        self._out = None  # CPU output buffer, reused: DALI copies the outputs before the next call

    def _generator(self):
        if self._gen is None:
            if self.device == "gpu":
                import cupy

                self._gen = cupy.random.default_rng(int(self.seed_seq.generate_state(1, np.uint64)[0]))
            else:
                self._gen = np.random.Generator(np.random.PCG64(self.seed_seq))
        return self._gen

    def _record(self, n, first_shape, labels, images=None):
        """Draw this batch's record; returns ``(params, labels as int64 (N,))``."""
        xp = np
        if self.device == "gpu":
            import cupy as xp
        h, w = _checks.spatial_size(first_shape, self.layout)
        lab = _label_vector(labels, n, xp)
        if self.check_labels:
            lab = _checks.check_labels(lab, self.num_classes, n)
        else:
            lab = lab.astype(np.int64)
        centers = None
        if self.method == "saliency-dcutmix":
            from .saliency import salient_points

            centers = salient_points(images, self.layout, method=self.saliency)
        if self.device == "gpu":
            from .gpu_kernels import sample_params_device

            params = sample_params_device(self._generator(), self.method, n, h, w, self.k, self.alpha,
                                          self.mode, self.prob, centers)
        else:
            from .params import draw_raw, params_from_draws

            draws = draw_raw(np, self._generator(), n, self.k, self.alpha, self.mode, self.prob)
            params = params_from_draws(self.method, *draws, h, w, centers)
        return params, lab

    def _labels(self, lab, params):
        """The label outputs: ``[targets]`` (dense) or ``[label_idx, label_w]`` (sparse), lists of samples."""
        from .reference import mix_labels

        if self.label_format == "dense":
            return [list(mix_labels(lab, params, self.num_classes, self.smoothing))]
        return [list(lab[params.sources].astype(np.int32)), list(params.weights)]

    def __call__(self, images, labels, layout_prop=None):
        """python_function path: draw, blend and label; returns images and the label outputs."""
        n = len(images)
        if n == 0:
            return ([], []) if self.label_format == "dense" else ([], [], [])
        if layout_prop is not None:
            found = bytes(np.asarray(layout_prop[0])).decode()
            if found and found != self.layout:
                raise ValueError(f"layout={self.layout!r} was given but the images carry layout {found!r}")
        first = _checks.check_same_shapes("images", [im.shape for im in images], self.layout)
        _checks.check_image_dtype("images", images[0].dtype)
        params, lab = self._record(n, first, labels, images)
        from .mixing import blend_samples

        out = None
        if self.device == "cpu":
            shape = (n,) + tuple(images[0].shape)
            if self._out is None or self._out.shape != shape or self._out.dtype != images[0].dtype:
                self._out = np.empty(shape, images[0].dtype)
            out = self._out
        out = blend_samples(images, params, self.layout, out=out, workers=self.workers)
        return (list(out), *self._labels(lab, params))

    def record(self, shapes, labels, images=None):
        """Plugin path (CPU): draw the record and the labels only; ``fn.kmix_dmixup`` /
        ``fn.kmix_dcutmix`` apply it. Returns sources (K,), weights (K,) or boxes
        (K-1, 4) per sample, then the label outputs."""
        n = len(shapes)
        if n == 0:
            return ([], [], []) if self.label_format == "dense" else ([], [], [], [])
        first = _checks.check_same_shapes("images", [tuple(int(v) for v in sh) for sh in shapes], self.layout)
        params, lab = self._record(n, first, labels, images)
        third = params.weights if params.boxes is None else params.boxes
        return (list(params.sources), list(third), *self._labels(lab, params))


class _LabelCheck:
    """CPU-side label check in front of a GPU mixer (no device sync needed)."""

    def __init__(self, num_classes):
        self.num_classes = num_classes

    def __call__(self, labels):
        if len(labels) == 0:
            return []
        _checks.check_labels(_label_vector(labels, len(labels), np), self.num_classes, len(labels))
        return [np.asarray(x, dtype=np.int32).reshape(-1) for x in labels]


def _mix_op(method, images, labels, *, k, alpha, num_classes, layout, mode, prob, smoothing, label_format,
            seed, shard_id, name, saliency="spectral-residual"):
    from nvidia.dali import Pipeline, fn

    from .saliency import SALIENCY_METHODS

    _checks.check_layout(layout)
    _checks.check_choice("saliency", saliency, SALIENCY_METHODS)
    _checks.check_choice("label_format", label_format, _checks.LABEL_FORMATS)
    num_classes = _checks.check_int("num_classes", num_classes, 1)
    smoothing = _checks.check_smoothing(smoothing)
    shard_id = _checks.check_int("shard_id", shard_id, 0)
    if seed is not None:
        seed = _checks.check_int("seed", seed, 0)
    if label_format == "sparse" and smoothing > 0:
        raise ValueError(
            f"smoothing={smoothing} applies to dense targets; with label_format='sparse' pass the smoothing "
            f"to dali_kmix.torch.sparse_mixed_cross_entropy instead"
        )
    _, _, _, k, alpha_vec, prob = check_sample_args(method, 0, 1, 1, k, alpha, mode, prob)
    device = getattr(images, "device", "cpu")
    if device not in ("cpu", "gpu"):
        raise ValueError(f"images must be a DALI DataNode on 'cpu' or 'gpu', got device {device!r}")
    if device == "gpu" and saliency == "fine-grained":
        raise ValueError("saliency='fine-grained' (OpenCV) runs on the CPU only; use 'spectral-residual' on the GPU")
    pipe = Pipeline.current()
    workers = pipe.num_threads if pipe is not None and pipe.num_threads else None
    seed_seq = _seed_sequence(seed, shard_id)
    n_out = 2 if label_format == "dense" else 3
    layouts = [layout] + [""] * (n_out - 1)
    label_device = getattr(labels, "device", "cpu")
    if device == "cpu":
        if label_device != "cpu":
            raise ValueError("images are on the CPU but labels are on the GPU; pass CPU labels to a CPU mixer")
        mixer = _Mixer(method, k, alpha_vec, num_classes, layout, mode, prob, smoothing, label_format,
                       seed_seq, "cpu", workers, check_labels=True, saliency=saliency)
        from . import plugin

        if plugin.load():
            # Draw in Python (small arrays), blend in the native operator (no output copy).
            extra = [images] if method == "saliency-dcutmix" else []
            sources, third, *label_outs = fn.python_function(
                images.shape(), labels, *extra, function=mixer.record, batch_processing=True,
                num_outputs=n_out + 1, name=name)
            blend = fn.kmix_dmixup if method == "dmixup" else fn.kmix_dcutmix
            return (blend(images, sources, third, layout=layout), *label_outs)
        prop = fn.get_property(images, key="layout")
        outs = fn.python_function(images, labels, prop, function=mixer, batch_processing=True,
                                  num_outputs=n_out, output_layouts=layouts, name=name)
        return tuple(outs)
    if label_device == "cpu":
        # Check the labels on the host, where they already are, then hand them over.
        checker = _LabelCheck(num_classes)
        labels = fn.python_function(labels, function=checker, batch_processing=True, num_outputs=1).gpu()
        check_on_device = False
    else:
        check_on_device = True
    mixer = _Mixer(method, k, alpha_vec, num_classes, layout, mode, prob, smoothing, label_format,
                   seed_seq, "gpu", None, check_labels=check_on_device, saliency=saliency)
    outs = fn.python_function(images, labels, function=mixer, batch_processing=True, num_outputs=n_out,
                              output_layouts=layouts, device="gpu", name=name)
    return tuple(outs)


_DOC = """{title} as a DALI operator: returns ``(images, targets)`` or, with
``label_format="sparse"``, ``(images, label_idx, label_w)``.

Args:
    images: DataNode of HWC or CHW samples (uint8, float16 or float32), all of
        one H x W, on the CPU or the GPU.
    labels: DataNode of class indices, one per sample (shape () or (1,)), e.g. the
        second output of ``fn.readers.file``; CPU labels are checked on the host.
    k: images per mix (K >= 2; may exceed the batch size).
    alpha: Dirichlet concentration, a positive scalar or K positive numbers.
    num_classes: number of classes C (labels must lie in [0, C)).
    layout: "HWC" or "CHW" (required: a wrong layout cuts boxes across channels;
        when the images carry a layout, a mismatch raises).
    mode: "sample" (per-sample shares, boxes and partners) or "batch" (one for all).
    prob: probability that a sample is mixed at all.
    smoothing: label smoothing s of each one-hot before mixing (dense only).
    label_format: "dense" -> targets float32 (C,) per sample; "sparse" ->
        label_idx int32 (K,) and label_w float32 (K,) per sample.
    seed: seed of the operator's random stream (default: the pipeline's seed);
        the stream also depends on ``shard_id``, so shards differ.
    shard_id: this process's shard (pass the reader's ``shard_id``).
    name: optional operator name.

Every input sample stays the anchor of its own output row, so an epoch still
shows every image once as an anchor. A pipeline built twice with the same seed
yields identical batches.
"""


def dmixup(images, labels, *, k: int = 3, alpha=1.0, num_classes: int, layout: str, mode: str = "sample",
           prob: float = 1.0, smoothing: float = 0.0, label_format: str = "dense", seed=None,
           shard_id: int = 0, name=None):
    return _mix_op("dmixup", images, labels, k=k, alpha=alpha, num_classes=num_classes, layout=layout, mode=mode,
                   prob=prob, smoothing=smoothing, label_format=label_format, seed=seed, shard_id=shard_id,
                   name=name)


def dcutmix(images, labels, *, k: int = 3, alpha=1.0, num_classes: int, layout: str, mode: str = "sample",
            prob: float = 1.0, smoothing: float = 0.0, label_format: str = "dense", seed=None,
            shard_id: int = 0, name=None):
    return _mix_op("dcutmix", images, labels, k=k, alpha=alpha, num_classes=num_classes, layout=layout, mode=mode,
                   prob=prob, smoothing=smoothing, label_format=label_format, seed=seed, shard_id=shard_id,
                   name=name)


def saliency_dcutmix(images, labels, *, k: int = 3, alpha=1.0, num_classes: int, layout: str,
                     mode: str = "sample", prob: float = 1.0, smoothing: float = 0.0, label_format: str = "dense",
                     seed=None, shard_id: int = 0, saliency: str = "spectral-residual", name=None):
    return _mix_op("saliency-dcutmix", images, labels, k=k, alpha=alpha, num_classes=num_classes, layout=layout,
                   mode=mode, prob=prob, smoothing=smoothing, label_format=label_format, seed=seed,
                   shard_id=shard_id, name=name, saliency=saliency)


dmixup.__doc__ = _DOC.format(title="DMixup (Dirichlet-weighted blend of K images)")
dcutmix.__doc__ = _DOC.format(title="DCutMix (K images in nested stick-breaking boxes)")
saliency_dcutmix.__doc__ = _DOC.format(
    title="Saliency-DCutMix (DCutMix boxes, each centred on its source's most salient point)") + """
Box sizes come from the stick-breaking recursion exactly as in DCutMix; box j is
centred on the most salient pixel of its source (spectral residual on a 64 x 64
grey copy, computed on the pipeline's device) and shifted, not shrunk, to lie
inside box j-1. ``saliency="fine-grained"`` uses OpenCV contrib's fine-grained
static saliency instead (CPU pipelines only).
"""
