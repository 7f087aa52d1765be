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
   *key*); the batch's keys, the spec's seed, the shard and the operator's index seed
   the NumPy generator of that batch's draws. The only random state is the
   ``fn.random.uniform`` operator's, which DALI saves in ``pipe.checkpoint()`` and
   restores: a restored pipeline continues with exactly the batches of the
   uninterrupted run, and the Python side holds no state to lose.
3. One of three paths applies the draws:

   * **plugin** (CPU, the default): a small ``fn.python_function`` draws the
     :class:`~dali_kmix.MixParams` record and the labels; the native operators
     ``fn.kmix_dmixup`` / ``fn.kmix_dcutmix`` / ``fn.kmix_mix`` (:mod:`dali_kmix.backends.plugin`)
     blend the images on the pipeline's thread pool, straight into DALI's buffers;
   * **function** (CPU without the plugin, or ``DALI_KMIX_PLUGIN=0``): one
     ``python_function`` draws and blends with the CPU kernels (same results);
   * **plugin on the GPU** (images on the GPU, the plugin built with its GPU backend, the
     default): the record and the labels are drawn on the host exactly as on the plugin
     path (the same ``python_function``, the same keys, so GPU and CPU pipelines give the
     same mixes bit for bit) and stay CPU tensors; the GPU backends of ``fn.kmix_dmixup`` /
     ``fn.kmix_dcutmix`` / ``fn.kmix_mix`` move them to the device in one asynchronous copy
     and blend on DALI's stream. The label outputs are handed to the GPU. Saliency-DCutMix
     finds the salient points on the GPU (CuPy's FFT in a GPU ``python_function``) and hands
     the N x 2 points to the host drawing with DALI's own GPU-to-CPU transfer (``.cpu()``,
     ordered by DALI's executor; nothing of ours waits on the device);
   * **gpu** (the fallback: no GPU backend, ``DALI_KMIX_PLUGIN=0``, or a pipeline with
     ``exec_dynamic=False``, which cannot move data from the GPU to the CPU): the draws
     (shares, box positions, partners, "is mixed") are made on the host as above and moved
     to the device; one GPU ``python_function`` nests the boxes (``kmix_nest_boxes``),
     blends and builds the labels with the CUDA kernels on DALI's stream. The record is
     bit-identical to the CPU paths' for the same keys.

``prob`` and ``alpha`` may be DataNodes (e.g. from ``fn.external_source``), so a
training loop can weaken or switch off the mixing between iterations without
rebuilding the pipeline.
"""

from __future__ import annotations

import dataclasses
import itertools
import weakref

import numpy as np

from . import _checks
from .record import MixParams
from .reference import mix_labels
from .sampling import check_sample_args, draw_raw, record_from_draws

__all__ = ["dmixup", "dcutmix", "saliency_dcutmix", "dmixup_or_dcutmix", "MixSpec"]

_op_counters: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

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
    """One class index per sample, as a flat vector (labels arrive as (), (1,) samples)."""
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} samples but images has {n}")
    lab = _stacked(labels, xp)
    if lab.shape[0] != n:
        raise ValueError(f"labels must hold one class index per sample, got {lab.shape[0]} values for {n} samples")
    return lab


def _label_outputs(spec: MixSpec, lab, params):
    """``[targets]`` (dense) or ``[label_idx, label_w]`` (sparse), as lists of samples (NumPy or CuPy)."""
    if spec.label_format == "dense":
        return [list(mix_labels(lab, params, spec.num_classes, spec.smoothing))]
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
        """The batch's generator: a SeedSequence of the spec's seed and the keys' bits (as the list of ints
        ``[seed, *key words]``), spawned at (shard, operator index)."""
        words = _stacked(keys, np, np.float64).view(np.uint64)
        entropy = _entropy_words(self.spec.seed if self.spec.seed is not None else 0, words)
        seq = np.random.SeedSequence(entropy=entropy, spawn_key=(self.spec.shard_id, self.spec.index))
        return np.random.Generator(np.random.PCG64(seq))

    def runtime_args(self, n, runtime):
        """``(alpha vector, prob)`` of this batch: the spec's, or the DataNode inputs' (checked)."""
        runtime = list(runtime)
        spec = self.spec
        alpha = spec.alpha
        prob = spec.prob
        if alpha is None:
            vals = [np.asarray(a, np.float64).reshape(-1) for a in runtime.pop(0)]
            if any(v.shape != vals[0].shape or not np.array_equal(v, vals[0]) for v in vals):
                raise ValueError("alpha given as a DataNode must be the same for every sample of a batch, "
                                 f"got {[v.tolist() for v in vals[:4]]}...")
            alpha = _checks.check_alpha(float(vals[0][0]) if vals[0].size == 1 else vals[0], spec.k)
        if prob is None:
            vals = np.array([float(np.asarray(p).reshape(-1)[0]) for p in runtime.pop(0)])
            bad = ~((vals >= 0.0) & (vals <= 1.0))
            if bad.any():
                raise ValueError(f"prob must be in [0, 1], got {vals[bad][0]} for sample {int(np.argmax(bad))}")
            if vals.shape[0] != n:
                raise ValueError(f"prob given as a DataNode must have one value per sample ({n}), got {vals.shape[0]}")
            prob = vals
        return np.asarray(alpha, np.float64), prob

    def raw(self, keys, runtime=()):
        """``(method, (phi, uniforms, perms, mixed))``: this batch's method and its
        :func:`dali_kmix.sampling.draw_raw` draws ("dmixup+dcutmix" first tosses for the method)."""
        n = len(keys)
        alpha, prob = self.runtime_args(n, runtime)
        gen = self.generator(keys)
        method = self.spec.method
        if self.spec.switch:
            cut = gen.random() < self.spec.switch_prob
            method = "dcutmix" if cut else "dmixup"
            if cut:
                alpha = np.asarray(self.spec.cutmix_alpha, np.float64)
        return method, draw_raw(np, gen, n, self.spec.k, alpha, self.spec.mode, prob)


class _HostRecord(_Draws):
    """CPU: the record, the checked labels and the label outputs of one batch."""

    def record(self, keys, runtime, h, w, centers=None):
        method, draws = self.raw(keys, runtime)
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


class _PluginRecord(_HostRecord):
    """Plugin path: draws the record and the labels; ``fn.kmix_dmixup`` / ``fn.kmix_dcutmix`` blend.

    Returns per sample: sources (K,), then weights (K,) or boxes (K-1, 4), then the label outputs.
    For "dmixup+dcutmix": sources, weights, boxes and a per-sample "cut" flag for ``fn.kmix_mix``.
    """

    def __call__(self, shapes, labels, keys, *rest):
        spec = self.spec
        n = len(shapes)
        if n == 0:
            return ([], []) + ([],) * spec.label_outputs
        runtime, images = (rest[:-1], rest[-1]) if spec.method == "saliency-dcutmix" else (rest, None)
        first = _shape_of_all(shapes, spec.layout)
        h, w = _checks.spatial_size(first, spec.layout)
        lab = self.labels(labels, n)
        params = self.record(keys, runtime, h, w, self.centers(images))
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
    """Saliency-DCutMix on the GPU: the most salient pixel of every image (CuPy, on DALI's stream)."""

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

    def __call__(self, images, labels, layout_prop, keys, *runtime):
        spec = self.spec
        n = len(images)
        if n == 0:
            return ([],) + ([],) * spec.label_outputs
        found = bytes(np.asarray(layout_prop[0])).decode()
        if found and found != spec.layout:
            raise ValueError(f"layout={spec.layout!r} was given but the images carry layout {found!r}")
        first = _checks.check_same_shapes("images", [im.shape for im in images], spec.layout)
        _checks.check_image_dtype("images", images[0].dtype)
        h, w = _checks.spatial_size(first, spec.layout)
        lab = self.labels(labels, n)
        params = self.record(keys, runtime, h, w, self.centers(images))
        from .mixing import blend_samples

        shape = (n,) + tuple(images[0].shape)
        if self._out is None or self._out.shape != shape or self._out.dtype != images[0].dtype:
            self._out = np.empty(shape, images[0].dtype)
        out = blend_samples(images, params, spec.layout, out=self._out, workers=self.workers)
        return (list(out), *self.label_outputs(lab, params))


class _GpuDraws(_Draws):
    """GPU path, host half: per sample phi (K,), box positions (K-1, 2), partners (K-1,), "is mixed" (1,)
    and "is DCutMix" (1,). Every sample is an ndarray: DALI's ``python_function`` takes no NumPy scalars."""

    def __call__(self, keys, *runtime):
        n = len(keys)
        if n == 0:
            return [], [], [], [], []
        method, (phi, uniforms, perms, mixed) = self.raw(keys, runtime)
        if phi.shape[0] != n:  # "batch" mode: one row for all samples
            phi, uniforms = np.repeat(phi, n, axis=0), np.repeat(uniforms, n, axis=0)
        partners = np.ascontiguousarray(perms.T, dtype=np.int32)
        cut = np.full((n, 1), method != "dmixup", np.uint8)  # "dmixup+dcutmix": this batch's method
        return list(phi), list(uniforms), list(partners), list(mixed.astype(np.uint8).reshape(n, 1)), list(cut)


class _GpuMix:
    """GPU path, device half: nest (``kmix_nest_boxes``), blend and label on DALI's stream."""

    def __init__(self, spec: MixSpec, check_labels: bool):
        self.spec = spec
        self.check_labels = check_labels  # GPU labels: checked here (a small device-to-host read)

    def __call__(self, *batches):
        try:
            return self._mix(*batches)
        except BaseException:
            _disown_dali_stream()
            raise

    def _mix(self, images, labels, phi, uniforms, partners, mixed, cut):
        import cupy

        from .backends import GpuBackend, gpu

        spec = self.spec
        n = len(images)
        if n == 0:
            return ([],) + ([],) * spec.label_outputs
        first = _checks.check_same_shapes("images", [im.shape for im in images], spec.layout)
        _checks.check_image_dtype("images", images[0].dtype)
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


def _spec(method, *, k, alpha, num_classes, layout, mode, prob, smoothing, label_format, seed, shard_id,
          saliency, switch_prob=0.0, cutmix_alpha=None) -> MixSpec:
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
    if label_format == "sparse" and smoothing > 0:
        raise ValueError(
            f"smoothing={smoothing} applies to dense targets; with label_format='sparse' pass the smoothing "
            f"to dali_kmix.torch.sparse_mixed_cross_entropy instead"
        )
    switch = method == _checks.SWITCH
    if switch and _is_node(alpha):
        raise ValueError("alpha cannot be a DataNode with method 'dmixup+dcutmix' (two alphas); use prob")
    _, _, _, k, alpha_vec, prob_val = check_sample_args(
        "dcutmix" if switch else method, 0, 1, 1, k, 1.0 if _is_node(alpha) else alpha, mode,
        0.0 if _is_node(prob) else prob)
    cut_vec = None
    if switch:
        switch_prob = _checks.check_probability("switch_prob", switch_prob)
        cut_vec = tuple(_checks.check_alpha(alpha if cutmix_alpha is None else cutmix_alpha, k).tolist())
    pipe = Pipeline.current()
    if seed is None and pipe is not None and pipe.seed is not None and pipe.seed >= 0:
        seed = int(pipe.seed)
    index = next(_op_counters.setdefault(pipe, itertools.count())) if pipe is not None else 0
    return MixSpec(method=method, k=k, alpha=None if _is_node(alpha) else tuple(alpha_vec.tolist()),
                   num_classes=num_classes, layout=layout, mode=mode, prob=None if _is_node(prob) else prob_val,
                   smoothing=smoothing, label_format=label_format, saliency=saliency, seed=seed,
                   shard_id=shard_id, index=index, switch_prob=switch_prob, cutmix_alpha=cut_vec)


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


def _runtime_inputs(spec: MixSpec, alpha, prob):
    return [x for x, fixed in ((alpha, spec.alpha), (prob, spec.prob)) if fixed is None]


def _plugin_path(spec, images, labels, keys, runtime, name):
    """The record and the labels drawn on the host, the images blended by ``fn.kmix_*`` on their own device (CPU, or
    the plugin's GPU backend: then the label outputs are handed to the GPU)."""
    from nvidia.dali import fn

    gpu = images.device == "gpu"
    if gpu and getattr(labels, "device", "cpu") != "cpu":
        labels = labels.cpu()  # DALI's own transfer; the labels are checked and mixed with the record on the host
    extra = []
    if spec.method == "saliency-dcutmix" and gpu:  # the salient points found on the device, handed to the host
        extra = [fn.python_function(images, function=_GpuCenters(spec), batch_processing=True, num_outputs=1,
                                    device="gpu").cpu()]
    elif spec.method == "saliency-dcutmix":
        extra = [images]
    records = 4 if spec.switch else 2
    draw = _PluginRecordGivenCenters(spec) if gpu else _PluginRecord(spec)
    outs = fn.python_function(images.shape(), labels, keys, *runtime, *extra, function=draw, batch_processing=True,
                              num_outputs=records + spec.label_outputs, name=name)
    record, label_outs = outs[:records], outs[records:]
    if spec.switch:
        blend = fn.kmix_mix
    else:
        blend = fn.kmix_dcutmix if spec.boxed else fn.kmix_dmixup
    return (blend(images, *record, layout=spec.layout), *[x.gpu() if gpu else x for x in label_outs])


def _native_gpu(pipe) -> bool:
    """Whether GPU images go through the plugin's GPU operators: the plugin is loaded with its GPU backend and the
    pipeline can move data from the GPU to the CPU (DALI's dynamic executor, its default)."""
    from .backends import plugin

    if pipe is not None and not getattr(pipe, "exec_dynamic", True):
        return False
    return plugin.gpu_backend()


def _function_path(spec, images, labels, keys, runtime, name, workers):
    from nvidia.dali import fn

    outs = fn.python_function(images, labels, fn.get_property(images, key="layout"), keys, *runtime,
                              function=_FunctionMix(spec, workers), batch_processing=True,
                              num_outputs=1 + spec.label_outputs,
                              output_layouts=[spec.layout] + [""] * spec.label_outputs, name=name)
    return tuple(outs)


def _gpu_path(spec, images, labels, keys, runtime, name):
    from nvidia.dali import fn

    check_on_device = getattr(labels, "device", "cpu") != "cpu"
    if not check_on_device:  # check the labels on the host, where they are, then hand them over
        labels = fn.python_function(labels, function=_LabelCheck(spec.num_classes), batch_processing=True,
                                    num_outputs=1).gpu()
    draws = fn.python_function(keys, *runtime, function=_GpuDraws(spec), batch_processing=True, num_outputs=5)
    outs = fn.python_function(images, labels, *[d.gpu() for d in draws], function=_GpuMix(spec, check_on_device),
                              batch_processing=True, num_outputs=1 + spec.label_outputs,
                              output_layouts=[spec.layout] + [""] * spec.label_outputs, device="gpu", name=name)
    return tuple(outs)


def _mix_op(method, images, labels, *, k, alpha, num_classes, layout, mode, prob, smoothing, label_format,
            seed, shard_id, name, saliency="spectral-residual", switch_prob=0.0, cutmix_alpha=None):
    from nvidia.dali import Pipeline

    spec = _spec(method, k=k, alpha=alpha, num_classes=num_classes, layout=layout, mode=mode, prob=prob,
                 smoothing=smoothing, label_format=label_format, seed=seed, shard_id=shard_id, saliency=saliency,
                 switch_prob=switch_prob, cutmix_alpha=cutmix_alpha)
    device = getattr(images, "device", "cpu")
    if device not in ("cpu", "gpu"):
        raise ValueError(f"images must be a DALI DataNode on 'cpu' or 'gpu', got device {device!r}")
    if device == "gpu" and saliency == "fine-grained":
        raise ValueError("saliency='fine-grained' (OpenCV) runs on the CPU only; use 'spectral-residual' on the GPU")
    for arg, value in (("alpha", alpha), ("prob", prob)):
        if _is_node(value) and getattr(value, "device", "cpu") != "cpu":
            raise ValueError(f"{arg} given as a DataNode must be on the CPU, got device {value.device!r}")
    labels_on_cpu = getattr(labels, "device", "cpu") == "cpu"
    if not labels_on_cpu and device == "cpu":
        raise ValueError("images are on the CPU but labels are on the GPU; pass CPU labels to a CPU mixer")
    keys = _keys(spec, labels if labels_on_cpu else None)
    runtime = _runtime_inputs(spec, alpha, prob)
    if device == "gpu":
        if _native_gpu(Pipeline.current()):
            return _plugin_path(spec, images, labels, keys, runtime, name)
        return _gpu_path(spec, images, labels, keys, runtime, name)
    from .backends import plugin

    if plugin.load():
        return _plugin_path(spec, images, labels, keys, runtime, name)
    pipe = Pipeline.current()
    workers = pipe.num_threads if pipe is not None and pipe.num_threads else None
    return _function_path(spec, images, labels, keys, runtime, name, workers)


_DOC = """{title} as a DALI operator: returns ``(images, targets)`` or, with
``label_format="sparse"``, ``(images, label_idx, label_w)``.

Args:
    images: DataNode of HWC or CHW samples (uint8, float16 or float32), all of
        one H x W, on the CPU or the GPU.
    labels: DataNode of class indices, one per sample (shape () or (1,)), e.g. the
        second output of ``fn.readers.file``; CPU labels are checked on the host.
    k: images per mix (K >= 2; may exceed the batch size).
    alpha: Dirichlet concentration, a positive scalar or K positive numbers, or a CPU
        DataNode giving it per iteration (the same value for every sample of a batch).
    num_classes: number of classes C (labels must lie in [0, C)).
    layout: "HWC" or "CHW" (required: a wrong layout cuts boxes across channels;
        when the images carry a layout, a mismatch raises).
    mode: "sample" (per-sample shares, boxes and partners) or "batch" (one for all).
    prob: probability that a sample is mixed at all, or a CPU DataNode giving it per
        iteration and sample (0 switches mixing off without rebuilding the pipeline).
    smoothing: label smoothing s of each one-hot before mixing (dense only).
    label_format: "dense" -> targets float32 (C,) per sample; "sparse" ->
        label_idx int32 (K,) and label_w float32 (K,) per sample.
    seed: seed of the operator's random stream (default: the pipeline's seed);
        the stream also depends on ``shard_id``, so shards differ.
    shard_id: this process's shard (pass the reader's ``shard_id``).
    name: optional operator name.

Every input sample stays the anchor of its own output row, so an epoch still
shows every image once as an anchor. A pipeline built twice with the same seed
yields identical batches, and one built with ``enable_checkpointing=True`` and
restored from ``pipe.checkpoint()`` continues with exactly the batches of the
uninterrupted run.
"""


def dmixup(images, labels, *, k: int = 3, alpha=1.0, num_classes: int, layout: str, mode: str = "sample",
           prob=1.0, smoothing: float = 0.0, label_format: str = "dense", seed=None,
           shard_id: int = 0, name=None):
    return _mix_op("dmixup", images, labels, k=k, alpha=alpha, num_classes=num_classes, layout=layout, mode=mode,
                   prob=prob, smoothing=smoothing, label_format=label_format, seed=seed, shard_id=shard_id,
                   name=name)


def dcutmix(images, labels, *, k: int = 3, alpha=1.0, num_classes: int, layout: str, mode: str = "sample",
            prob=1.0, smoothing: float = 0.0, label_format: str = "dense", seed=None,
            shard_id: int = 0, name=None):
    return _mix_op("dcutmix", images, labels, k=k, alpha=alpha, num_classes=num_classes, layout=layout, mode=mode,
                   prob=prob, smoothing=smoothing, label_format=label_format, seed=seed, shard_id=shard_id,
                   name=name)


def saliency_dcutmix(images, labels, *, k: int = 3, alpha=1.0, num_classes: int, layout: str,
                     mode: str = "sample", prob=1.0, smoothing: float = 0.0, label_format: str = "dense",
                     seed=None, shard_id: int = 0, saliency: str = "spectral-residual", name=None):
    return _mix_op("saliency-dcutmix", images, labels, k=k, alpha=alpha, num_classes=num_classes, layout=layout,
                   mode=mode, prob=prob, smoothing=smoothing, label_format=label_format, seed=seed,
                   shard_id=shard_id, name=name, saliency=saliency)


def dmixup_or_dcutmix(images, labels, *, k: int = 3, alpha=1.0, cutmix_alpha=None, switch_prob: float = 0.5,
                      num_classes: int, layout: str, mode: str = "sample", prob=1.0, smoothing: float = 0.0,
                      label_format: str = "dense", seed=None, shard_id: int = 0, name=None):
    return _mix_op(_checks.SWITCH, images, labels, k=k, alpha=alpha, num_classes=num_classes, layout=layout,
                   mode=mode, prob=prob, smoothing=smoothing, label_format=label_format, seed=seed,
                   shard_id=shard_id, name=name, switch_prob=switch_prob, cutmix_alpha=cutmix_alpha)


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
