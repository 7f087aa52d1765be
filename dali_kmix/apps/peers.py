"""The mixing a user would otherwise pick, wrapped for side-by-side timing (``kmix bench``).

Every peer is asked first whether it can do a configuration at all (K images, per-sample
or batch-level shares, the dtype/layout); what it cannot do is reported with the reason,
never skipped silently. A runnable peer returns a zero-argument callable that mixes one
batch *and* builds its labels, so that everybody does comparable work:

* ``dali_kmix`` — sample the record, ``mix_images`` (a new array, as a user gets it), ``mix_labels``;
* ``timm Mixup`` (modes "batch" and "elem") and ``timm FastCollateMixup`` (uint8 collate);
* ``torchvision.transforms.v2`` ``MixUp`` / ``CutMix`` (one share per batch);
* ``kornia`` ``RandomMixUpV2`` / ``RandomCutMixV2(num_mix=K-1)``;
* DALI-native compositions (timed inside a pipeline, see :mod:`dali_kmix.apps.bench`):
  ``fn.permute_batch`` plus arithmetic for K-image mixup, ``fn.multi_paste`` with
  ``fn.permute_batch`` indices for nested CutMix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._checks import check_choice, check_int

__all__ = ["Config", "PEERS", "peer_callable", "dali_native_pipeline", "METHODS", "MODES", "DTYPES"]

NUM_CLASSES = 1000
#: The configurations the benchmarks time: methods, modes and dtypes (uint8 HWC, float32 CHW).
METHODS = ("dmixup", "dcutmix")
MODES = ("sample", "batch")
DTYPES = ("uint8", "float32")


@dataclass(frozen=True)
class Config:
    method: str      # "dmixup" | "dcutmix"
    k: int
    mode: str        # "sample" | "batch"
    dtype: str       # "uint8" (HWC) | "float32" (CHW)
    batch: int
    size: int = 224

    def __post_init__(self):  # a configuration nobody can time is refused, not timed as another one
        check_choice("method", self.method, METHODS)
        check_int("k", self.k, 2)
        check_choice("mode", self.mode, MODES)
        check_choice("dtype", self.dtype, DTYPES)
        check_int("batch", self.batch, 1)
        check_int("size", self.size, 1)

    @property
    def layout(self):
        return "HWC" if self.dtype == "uint8" else "CHW"

    @property
    def shape(self):
        return (self.batch, self.size, self.size, 3) if self.layout == "HWC" else (self.batch, 3, self.size, self.size)


def make_batch(cfg: Config, seed: int = 0):
    rng = np.random.default_rng(seed)
    if cfg.dtype == "uint8":
        x = rng.integers(0, 256, cfg.shape, dtype=np.uint8)
    else:  # float32: Config refuses any other dtype
        x = rng.standard_normal(cfg.shape, dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, cfg.batch)
    return x, labels


# --------------------------------------------------------------------------- capability matrix


def _k2(cfg):
    return None if cfg.k == 2 else "mixes 2 images only (K>2 impossible)"


def _float(cfg):
    return None if cfg.dtype == "float32" else "needs float tensors (uint8 arithmetic overflows)"


def _first(*reasons):
    return next((r for r in reasons if r), None)


PEERS = {
    # name: (methods, can(cfg) -> None or the reason it cannot)
    "dali_kmix": (("dmixup", "dcutmix"), lambda c: None),
    "timm Mixup (batch)": (("dmixup", "dcutmix"), lambda c: _first(
        _k2(c), _float(c), None if c.mode == "batch" else "one share per batch ('batch' mode)")),
    "timm Mixup (elem)": (("dmixup", "dcutmix"), lambda c: _first(
        _k2(c), _float(c), None if c.mode == "sample" else "per-sample shares ('elem' mode)")),
    "timm FastCollateMixup": (("dmixup", "dcutmix"), lambda c: _first(
        _k2(c), None if c.dtype == "uint8" else "collates uint8 images only")),
    "torchvision v2": (("dmixup", "dcutmix"), lambda c: _first(
        _k2(c), None if c.mode == "batch" else "one share per batch only",
        _float(c) if c.method == "dmixup" else None)),
    "kornia": (("dmixup", "dcutmix"), lambda c: _first(
        _k2(c) if c.method == "dmixup" else None, _float(c))),
    "DALI native": (("dmixup", "dcutmix"), lambda c: (
        "fn.multi_paste takes HWC only" if c.method == "dcutmix" and c.layout != "HWC" else None)),
}


def can(peer: str, cfg: Config):
    methods, check = PEERS[peer]
    if cfg.method not in methods:
        return f"does not implement {cfg.method}"
    return check(cfg)


# --------------------------------------------------------------------------- callables


def peer_callable(peer: str, cfg: Config, x: np.ndarray, labels: np.ndarray, seed: int = 0):
    """A callable mixing ``x`` (and its labels) once, as ``peer`` would; None for DALI-native peers."""
    if peer == "dali_kmix":
        return _kmix(cfg, x, labels, seed)
    if peer == "DALI native":
        return None
    import torch

    torch.manual_seed(seed)
    t = torch.from_numpy(x)
    y = torch.from_numpy(labels)
    cut = cfg.method == "dcutmix"
    if peer.startswith("timm Mixup"):
        from timm.data import Mixup

        mix = Mixup(mixup_alpha=0.0 if cut else 1.0, cutmix_alpha=1.0 if cut else 0.0, mode=cfg.mode == "batch"
                    and "batch" or "elem", label_smoothing=0.0, num_classes=NUM_CLASSES)
        return lambda: mix(t, y)
    if peer == "timm FastCollateMixup":
        from timm.data import FastCollateMixup

        mix = FastCollateMixup(mixup_alpha=0.0 if cut else 1.0, cutmix_alpha=1.0 if cut else 0.0,
                               mode="batch" if cfg.mode == "batch" else "elem", label_smoothing=0.0,
                               num_classes=NUM_CLASSES)
        items = [(np.ascontiguousarray(img.transpose(2, 0, 1)), int(lab)) for img, lab in zip(x, labels)]
        return lambda: mix(items)
    if peer == "torchvision v2":
        from torchvision.transforms import v2

        op = (v2.CutMix if cut else v2.MixUp)(alpha=1.0, num_classes=NUM_CLASSES)
        img = t if cfg.layout == "CHW" else t.permute(0, 3, 1, 2)  # a view: tv wants (..., H, W)
        return lambda: op(img, y)
    if peer == "kornia":
        import kornia.augmentation as KA

        same = cfg.mode == "batch"
        op = (KA.RandomCutMixV2(num_mix=cfg.k - 1, same_on_batch=same, data_keys=["input", "class"],
                                use_correct_lambda=True) if cut
              else KA.RandomMixUpV2(same_on_batch=same, data_keys=["input", "class"]))
        return lambda: op(t, y)
    raise ValueError(f"unknown peer {peer!r}")


def _kmix(cfg, x, labels, seed):
    """What a user of the array API calls: draw the record, mix the batch (a new array), build the targets."""
    from ..mixing import mix_images, mix_labels
    from ..sampling import sample_params

    gen = np.random.default_rng(seed)

    def run():
        p = sample_params(cfg.method, cfg.batch, cfg.size, cfg.size, k=cfg.k, mode=cfg.mode, rng=gen)
        return mix_images(x, p, cfg.layout), mix_labels(labels, p, NUM_CLASSES)

    return run


# --------------------------------------------------------------------------- DALI pipelines


class _Feed:
    """external_source callback: the same in-memory batch every iteration."""

    def __init__(self, x, labels):
        self.samples = list(x)
        self.labels = [np.array([v], np.int32) for v in labels]

    def __call__(self):
        return self.samples, self.labels


class _NativeParams:
    """Per-sample argument tensors for the DALI-native compositions, drawn with dali_kmix's sampler."""

    def __init__(self, cfg, seed):
        self.cfg = cfg
        self.gen = np.random.default_rng(seed)

    def __call__(self, labels):
        from ..sampling import sample_params

        c = self.cfg
        p = sample_params(c.method, c.batch, c.size, c.size, k=c.k, mode=c.mode, rng=self.gen)
        n = c.batch
        if c.method == "dmixup":
            perms = [p.sources[:, j].astype(np.int32) for j in range(1, c.k)]
            weights = [p.weights[:, j] for j in range(c.k)]
            return tuple([[np.array(v, np.int32) for v in q] for q in perms] +
                         [[np.array(v, np.float32) for v in w] for w in weights])
        # multi_paste: the anchor whole, then each box from its source, in nesting order
        full = np.array([[0, 0, c.size, c.size]] * n, np.int32)[:, None]
        boxes = np.concatenate([full, p.boxes], axis=1)
        anchors = np.ascontiguousarray(boxes[..., :2])
        shapes = np.ascontiguousarray(boxes[..., 2:] - boxes[..., :2])
        ids = p.sources.astype(np.int32)
        return list(ids), list(anchors), list(shapes)


def dali_native_pipeline(cfg: Config, x, labels, *, num_threads=2, seed=0, variant="native"):
    """A CPU pipeline: external_source batch -> [DALI-native composition | dali_kmix op | nothing]."""
    from nvidia.dali import Pipeline, fn, types

    from .. import dali as kmix_ops

    pipe = Pipeline(batch_size=cfg.batch, num_threads=num_threads, device_id=None, seed=seed,
                    prefetch_queue_depth=1)
    with pipe:
        images, labs = fn.external_source(source=_Feed(x, labels), num_outputs=2, batch=True,
                                          layout=[cfg.layout, ""])
        if variant == "none":
            pipe.set_outputs(images, labs)
        elif variant == "dali_kmix":
            op = getattr(kmix_ops, cfg.method)
            pipe.set_outputs(*op(images, labs, k=cfg.k, num_classes=NUM_CLASSES, layout=cfg.layout, mode=cfg.mode,
                                 label_format="sparse"))
        elif cfg.method == "dmixup":
            outs = fn.python_function(labs, function=_NativeParams(cfg, seed), batch_processing=True,
                                      num_outputs=2 * cfg.k - 1)
            perms, weights = outs[:cfg.k - 1], outs[cfg.k - 1:]
            acc = fn.cast(images, dtype=types.FLOAT) * weights[0]
            for idx, w in zip(perms, weights[1:]):
                acc = acc + fn.cast(fn.permute_batch(images, indices=idx), dtype=types.FLOAT) * w
            if cfg.dtype == "uint8":
                acc = fn.cast(acc, dtype=types.UINT8)  # saturating, rounds to nearest
            pipe.set_outputs(acc, labs, *perms, *weights)
        else:
            ids, anchors, shapes = fn.python_function(labs, function=_NativeParams(cfg, seed), batch_processing=True,
                                                      num_outputs=3)
            out = fn.multi_paste(images, in_ids=ids, in_anchors=anchors, shapes=shapes, out_anchors=anchors)
            pipe.set_outputs(out, labs, ids)
    return pipe
