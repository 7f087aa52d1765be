"""K-image mixing in DALI's dynamic mode (``nvidia.dali.experimental.dynamic``, DALI >= 2.4).

Dynamic mode runs DALI operators one call at a time on batches (``ndd.Batch``), with ordinary
Python in between; the four functions here mix such a batch at once, with the arguments of the
pipeline operators of :mod:`dali_kmix.dali` (which forward dynamic-mode batches here too)::

    import nvidia.dali.experimental.dynamic as ndd
    import dali_kmix.dynamic as kmix

    reader = ndd.readers.File(file_root="photos", random_shuffle=True, seed=1)
    rng = ndd.random.RNG(seed=7)
    for jpegs, labels in reader.next_epoch(batch_size=32):
        images = ndd.resize(ndd.decoders.image(jpegs), resize_x=224, resize_y=224)
        images, targets = kmix.dcutmix(images, labels, k=3, num_classes=10, rng=rng)

As in a pipeline, a small drawing step makes the :class:`~dali_kmix.MixParams` record and the
labels on the host, and the native operators blend the images on their own device:
``ndd.kmix_dmixup`` / ``ndd.kmix_dcutmix`` / ``ndd.kmix_mix``, the plugin's CPU and GPU backends
(:mod:`dali_kmix.backends.plugin` makes them part of dynamic mode whichever of the two is imported
first). Where the plugin cannot be built the same kernels run on the host instead (same bits; GPU
batches are then copied to the host and back).

Differences from the pipeline operators, following dynamic mode's own conventions:

* ``rng`` replaces ``seed``: an ``ndd.random.RNG`` (default: dynamic mode's thread-local generator,
  seeded by ``ndd.random.set_seed``) draws each batch's per-sample keys with ``ndd.random.uniform``;
  the draws depend on those keys alone, so the same seed gives the same mixes, and registering the
  RNG with ``ndd.checkpoint.Checkpoint`` (beside the reader) restores the stream exactly;
* ``layout`` may be left out when the images carry theirs (decoders give "HWC");
* ``alpha`` and ``prob`` may be numbers (change them from call to call) or ``ndd.Batch`` es with one
  value per sample, as the DataNodes of a pipeline;
* labels may be an ``ndd.Batch`` (e.g. from ``ndd.readers.File``) or one class index per sample in
  any array-like; GPU labels are read back to the host (a synchronisation).

The outputs are ``ndd.Batch`` es on the images' device: ``(images, targets)`` or, with
``label_format="sparse"``, ``(images, label_idx, label_w)``; ``.torch()`` hands them to PyTorch.
"""

from __future__ import annotations

from . import _checks
from . import dali as _ops

__all__ = ["dmixup", "dcutmix", "saliency_dcutmix", "dmixup_or_dcutmix"]

_DOC = """{title} of a dynamic-mode batch: returns ``(images, targets)`` or, with
``label_format="sparse"``, ``(images, label_idx, label_w)``, as ``ndd.Batch`` es on the images' device.

Args:
    images: ``ndd.Batch`` of HWC or CHW samples (uint8, float16 or float32), one H x W, CPU or GPU.
    labels: ``ndd.Batch`` of class indices (one per sample), or an array-like of them.
    k, num_classes, mode, smoothing, label_format, shard_id: as in :func:`dali_kmix.dali.{name}`.
    alpha, prob: numbers, or ``ndd.Batch`` es with one value per sample (alpha: a scalar or K
        values per sample; in mode "sample" every sample's Dirichlet has its own).
    layout: "HWC" or "CHW"; default: the images' own layout.
    rng: the ``ndd.random.RNG`` that draws the batch's keys (default: dynamic mode's
        thread-local generator, seeded by ``ndd.random.set_seed``); register it with
        ``ndd.checkpoint.Checkpoint`` to restore the stream.
"""


def dmixup(images, labels, *, k: int = 3, alpha=1.0, num_classes: int, layout=None, mode: str = "sample", prob=1.0,
           smoothing: float = 0.0, label_format: str = "dense", shard_id: int = 0, rng=None):
    return _ops.dynamic_mix("dmixup", images, labels, k=k, alpha=alpha, num_classes=num_classes, layout=layout,
                            mode=mode, prob=prob, smoothing=smoothing, label_format=label_format, shard_id=shard_id,
                            rng=rng)


def dcutmix(images, labels, *, k: int = 3, alpha=1.0, num_classes: int, layout=None, mode: str = "sample",
            prob=1.0, smoothing: float = 0.0, label_format: str = "dense", shard_id: int = 0, rng=None):
    return _ops.dynamic_mix("dcutmix", images, labels, k=k, alpha=alpha, num_classes=num_classes, layout=layout,
                            mode=mode, prob=prob, smoothing=smoothing, label_format=label_format, shard_id=shard_id,
                            rng=rng)


def saliency_dcutmix(images, labels, *, k: int = 3, alpha=1.0, num_classes: int, layout=None, mode: str = "sample",
                     prob=1.0, smoothing: float = 0.0, label_format: str = "dense", shard_id: int = 0, rng=None,
                     saliency: str = "spectral-residual"):
    return _ops.dynamic_mix("saliency-dcutmix", images, labels, k=k, alpha=alpha, num_classes=num_classes,
                            layout=layout, mode=mode, prob=prob, smoothing=smoothing, label_format=label_format,
                            shard_id=shard_id, rng=rng, saliency=saliency)


def dmixup_or_dcutmix(images, labels, *, k: int = 3, alpha=1.0, cutmix_alpha=None, switch_prob: float = 0.5,
                      num_classes: int, layout=None, mode: str = "sample", prob=1.0, smoothing: float = 0.0,
                      label_format: str = "dense", shard_id: int = 0, rng=None):
    return _ops.dynamic_mix(_checks.SWITCH, images, labels, k=k, alpha=alpha, num_classes=num_classes,
                            layout=layout, mode=mode, prob=prob, smoothing=smoothing, label_format=label_format,
                            shard_id=shard_id, rng=rng, switch_prob=switch_prob, cutmix_alpha=cutmix_alpha)


dmixup.__doc__ = _DOC.format(title="DMixup", name="dmixup")
dcutmix.__doc__ = _DOC.format(title="DCutMix", name="dcutmix")
saliency_dcutmix.__doc__ = _DOC.format(title="Saliency-DCutMix", name="saliency_dcutmix") + """
    saliency: "spectral-residual" (on the images' device) or "fine-grained" (OpenCV, CPU only).
"""
dmixup_or_dcutmix.__doc__ = _DOC.format(title="DMixup or DCutMix per batch", name="dmixup_or_dcutmix") + """
    cutmix_alpha, switch_prob: as in :func:`dali_kmix.dali.dmixup_or_dcutmix`.
"""
