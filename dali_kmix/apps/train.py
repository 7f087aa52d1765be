"""``kmix train``: train a classifier through the DALI iterator with K-image mixing.

One process::

    kmix train --data DIR --mix dcutmix --k 3 --epochs 10

Many processes (one per GPU, or several on a CPU) with PyTorch's own launcher::

    torchrun --nproc_per_node 2 -m dali_kmix.apps.cli train --data DIR --mix dcutmix

``DIR`` holds ``train/`` and ``val/`` ImageNet-layout JPEG folders (``kmix data
fashion-mnist DIR`` writes one). Under torchrun every rank reads its own shard
(``shard_id=rank, num_shards=world_size``) with a rank-specific seed, the model is
wrapped in DistributedDataParallel (gloo on the CPU, nccl on GPUs), uneven shards
are handled with DDP's join, metrics are summed over ranks before they are
reported, and only rank 0 writes files: ``metrics.csv``, ``curves.png``,
``checkpoint.pt`` and ``summary.json``.

``checkpoint.pt`` holds the model, the optimiser and every rank's DALI pipeline
checkpoint (the reader's position and the random state of the augmentation and the
mixing) and random generators (torch's CPU and CUDA ones, which draw the dropout masks,
NumPy's and Python's), written at every epoch end, every ``--checkpoint-minutes`` (10 by
default; under torchrun rank 0's clock decides for all ranks) and, with
``--checkpoint-every N``, every N steps: ``--resume`` continues in the middle of an epoch
with exactly the files, mixes and dropout masks of the uninterrupted run, and ends with the
same weights, optimiser state and metrics bit for bit. It refuses a command line that would
change the run (see :data:`FIXED_ON_RESUME`). A run whose training loss (or weights) turns NaN or
infinite stops with an error at its next checkpoint or epoch end, before writing it: the last finite
checkpoint is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import hashlib
import io
import json
import math
import sys
import time
from pathlib import Path

from .._checks import METHODS, SWITCH
from ..pipelines import listed_files, tree_files
from .common import (Dist, UsageError, atomic_write, check_at_least, default_resize, remove_stale_temporaries,
                     setup_distributed, teardown_distributed)
from .data import check_class_folders

__all__ = ["TrainConfig", "MIX_CHOICES", "FIXED_ON_RESUME", "MAY_CHANGE_ON_RESUME", "resolve_mix", "build_model",
           "train", "add_arguments", "config_from_args"]

# mixup and cutmix are the K = 2 cases; "a+b": one of the two per batch (DCutMix with --switch-prob)
MIX_CHOICES = ("none", "mixup", "cutmix", *METHODS, "mixup+cutmix", SWITCH)
MODELS = ("small-cnn", "small-cnn-fc", "resnet18", "resnet34", "resnet50", "mobilenet_v3_small")


@dataclasses.dataclass
class TrainConfig:
    """Everything a run needs; ``kmix train --help`` documents each field."""

    data: str | None = None
    train_dir: str | None = None
    val_dir: str | None = None
    train_list: str | None = None
    out: str = "runs/kmix"
    model: str = "small-cnn"
    mix: str = "dcutmix"
    k: int = 3
    alpha: float = 1.0
    prob: float = 1.0
    mode: str = "sample"
    smoothing: float = 0.0
    mix_on: str = "uint8"
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    crop: int = 224
    val_resize: int | None = None
    random_area: tuple = (0.08, 1.0)
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    amp: bool = True
    resume: bool = False
    progress: bool = True
    audit: bool = False
    eval_every: int = 1
    checkpoint_every: int = 0
    checkpoint_minutes: float = 10.0
    stop_after: int = 0
    switch_prob: float = 0.5
    cutmix_alpha: float | None = None
    mixup_off_epoch: int | None = None
    drop_last: bool = False
    channels_last: bool = False


#: What ``--resume`` refuses to change: the fields that shape the data stream (what is read, how it is
#: cropped, mixed, batched), the model, or its trajectory (optimiser, learning rate, precision). The data
#: folders, ``train_list`` (and its contents), the class folders and the device are compared as what they
#: resolve to; options that do not apply to the run (``k`` of ``--mix mixup``, ``alpha`` without mixing, ``amp``
#: on the CPU) are not compared.
FIXED_ON_RESUME = ("data", "train_dir", "val_dir", "train_list", "model", "mix", "k", "alpha", "prob", "mode",
                   "smoothing", "mix_on", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
                   "warmup_epochs", "crop", "val_resize", "random_area", "seed", "device", "amp", "switch_prob",
                   "cutmix_alpha", "mixup_off_epoch", "drop_last", "channels_last", "audit")
#: What may change on ``--resume``: how long the run goes on (``epochs`` also stretches the cosine schedule of
#: the steps still to come), how often it validates and checkpoints, what it prints, the threads. (``audit``
#: may not: it adds outputs to the DALI pipeline, whose checkpoint then no longer fits, and an audit begun
#: mid-epoch would list only part of the epoch.)
MAY_CHANGE_ON_RESUME = ("out", "epochs", "eval_every", "checkpoint_every", "checkpoint_minutes", "stop_after",
                        "progress", "threads", "resume")

#: The files a run writes in ``out`` (regular expression), whose killed writes leave ``.NAME.PID.tmp``.
RUN_FILES = (r"checkpoint\.pt|metrics\.csv|curves\.png|summary\.json|(?:seen|mixes)_rank\d+_epoch\d+\.txt"
             r"|metrics_rank\d+\.json")


def resolve_mix(mix: str, k: int) -> tuple[str | None, int]:
    """The operator and K behind a ``--mix`` choice: mixup and cutmix are the K=2 cases."""
    if mix not in MIX_CHOICES:
        raise UsageError(f"mix must be one of {list(MIX_CHOICES)}, got {mix!r}")
    if mix == "none":
        return None, k
    if mix == "mixup":
        return "dmixup", 2
    if mix == "cutmix":
        return "dcutmix", 2
    if mix == "mixup+cutmix":
        return SWITCH, 2
    return mix, k


def build_model(name: str, num_classes: int):
    """A torchvision classifier (randomly initialised) or the built-in ``small-cnn`` / ``small-cnn-fc``."""
    import torch.nn as nn

    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True)]

    if name == "small-cnn":
        return nn.Sequential(*block(3, 32, 1), *block(32, 64, 2), *block(64, 64, 1), *block(64, 128, 2),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(128, num_classes))
    if name == "small-cnn-fc":
        # The same convolutions, but the 128 x 7 x 7 map (for 28 x 28 input) goes whole into a 256-unit
        # hidden layer (about 1.7 M parameters, nearly all in it): cheap to run, able to memorise a few
        # thousand images, the over-fitting regime where mixing is meant to help.
        return nn.Sequential(*block(3, 32, 1), *block(32, 64, 2), *block(64, 64, 1), *block(64, 128, 2),
                             nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(128 * 49, 256), nn.ReLU(inplace=True),
                             nn.Linear(256, num_classes))
    if name not in MODELS:
        raise UsageError(f"model must be one of {list(MODELS)}, got {name!r}")
    import torchvision

    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)


# --------------------------------------------------------------------------- files (rank 0)


def _write_csv(path: Path, rows: list[dict]):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue())


def plot_curves(rows: list[dict], path: Path, title: str = ""):
    """PNG of train/val loss and val top-1 error per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    val = [r for r in rows if r["val_images"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(ep, [r["train_loss"] for r in rows], "o-", label="train (mixed targets)")
    a.plot([r["epoch"] for r in val], [r["val_loss"] for r in val], "s-", label="val")
    a.set_xlabel("epoch")
    a.set_ylabel("cross-entropy")
    a.legend()
    b.plot([r["epoch"] for r in val], [100 * r["val_top1_err"] for r in val], "s-", color="C3")
    b.set_xlabel("epoch")
    b.set_ylabel("val top-1 error (%)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


# --------------------------------------------------------------------------- the steps of a run


def _check(cfg: TrainConfig):
    """Reject a bad configuration before anything is built; returns (operator, K, train_dir, val_dir, classes)."""
    op, k = resolve_mix(cfg.mix, cfg.k)
    if cfg.optimizer not in ("sgd", "adamw"):
        raise UsageError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")
    for name, minimum in (("epochs", 1), ("eval_every", 1), ("checkpoint_every", 0), ("stop_after", 0),
                          ("batch_size", 1), ("crop", 1), ("val_resize", 1), ("threads", 1)):
        check_at_least(name, getattr(cfg, name), minimum)  # val_resize, threads: None is the default
    for name in ("lr", "momentum", "weight_decay", "warmup_epochs"):  # NaN would pass a comparison
        if not (math.isfinite(getattr(cfg, name)) and getattr(cfg, name) >= 0):
            raise UsageError(f"{name} must be >= 0 and finite, got {getattr(cfg, name)}")
    if not (math.isfinite(cfg.checkpoint_minutes) and cfg.checkpoint_minutes >= 0):
        raise UsageError(f"checkpoint_minutes must be >= 0 and finite, got {cfg.checkpoint_minutes}")
    if op is not None:  # the operator's own checks, with its messages, before any data is read
        from .._checks import check_alpha, check_probability
        from ..sampling import check_sample_args

        check_sample_args("dcutmix" if op == SWITCH else op, 0, 1, 1, k, cfg.alpha, cfg.mode, cfg.prob)
        check_probability("switch_prob", cfg.switch_prob)
        if cfg.cutmix_alpha is not None:
            check_alpha(cfg.cutmix_alpha, k, "cutmix_alpha")
    if cfg.mixup_off_epoch is not None and cfg.mixup_off_epoch < 0:
        raise UsageError(f"mixup_off_epoch must be >= 0, got {cfg.mixup_off_epoch}")
    train_dir, val_dir = _data_dirs(cfg)
    if train_dir is None or val_dir is None:
        raise UsageError("give --data DIR (with train/ and val/) or both --train-dir and --val-dir")
    for name, p in (("train", train_dir), ("val", val_dir)):
        if not p.is_dir():
            raise FileNotFoundError(f"{name} folder {str(p)!r} does not exist")
    if cfg.train_list is not None and not Path(cfg.train_list).is_file():
        raise FileNotFoundError(f"train list {cfg.train_list!r} does not exist")
    return op, k, train_dir, val_dir, check_class_folders(train_dir, val_dir)


def _data_dirs(cfg: TrainConfig):
    train_dir = Path(cfg.train_dir) if cfg.train_dir else (Path(cfg.data) / "train" if cfg.data else None)
    val_dir = Path(cfg.val_dir) if cfg.val_dir else (Path(cfg.data) / "val" if cfg.data else None)
    return train_dir, val_dir


def _identity(cfg: TrainConfig, gpu: bool, classes=None) -> dict:
    """What ``--resume`` compares with the checkpoint: each field of :data:`FIXED_ON_RESUME` as the run
    uses it (folders resolved, ``train_list`` with the digest of its contents, effective values)."""
    op, k = resolve_mix(cfg.mix, cfg.k)
    train_dir, val_dir = _data_dirs(cfg)
    ident = {"train_dir": str(train_dir.resolve()) if train_dir else None,
             "val_dir": str(val_dir.resolve()) if val_dir else None, "train_list": None,
             "device": "gpu" if gpu else "cpu"}
    if cfg.train_list is not None:
        digest = hashlib.sha256(Path(cfg.train_list).read_bytes()).hexdigest()[:16]
        ident["train_list"] = f"{Path(cfg.train_list).resolve()} (sha256 {digest})"
    if classes is not None:
        ident["classes"] = list(classes)
    for name in FIXED_ON_RESUME:
        if name not in ident and name != "data":  # "data" is compared as the train and val folders it gives
            ident[name] = getattr(cfg, name)
    ident["k"] = k
    ident["random_area"] = tuple(float(a) for a in cfg.random_area)
    ident["cutmix_alpha"] = cfg.alpha if cfg.cutmix_alpha is None else cfg.cutmix_alpha
    unused = []
    if op is None:
        unused += ["k", "alpha", "prob", "mode", "mix_on", "mixup_off_epoch"]
    if op != SWITCH:
        unused += ["switch_prob", "cutmix_alpha"]
    if not gpu:
        unused.append("amp")
    for name in unused:
        ident.pop(name)
    return ident


_FLAGS = {"train_dir": "train folder (--data/--train-dir)", "val_dir": "val folder (--data/--val-dir)",
          "classes": "class folders", "amp": "--amp/--no-amp"}


def _refuse_changed_run(saved: dict, now: dict):
    """A one-line error naming every field of ``now`` that differs from the checkpoint's ``saved``."""
    diffs = []
    for name, value in now.items():
        if name not in saved or saved[name] == value:
            continue
        was = saved[name]
        if name == "classes":
            gone = [c for c in was if c not in value]
            new = [c for c in value if c not in was]
            desc = "; ".join(x for x in (f"only in the checkpoint's: {gone}" if gone else "",
                                         f"only now: {new}" if new else "") if x) or "their order differs"
            diffs.append(f"class folders ({desc})")
            continue
        flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
        diffs.append(f"{flag} {was!r} in the checkpoint, {value!r} now")
    if diffs:
        raise UsageError("--resume: this command would change the checkpoint's run: " + "; ".join(diffs)
                         + "; resume with the checkpoint's values, or start a new run in another --out")


def _rng_state(d: Dist) -> dict:
    """Every random generator this process's training steps draw from (dropout: torch's CPU or CUDA one)."""
    import random

    import numpy as np
    import torch

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if d.gpu:
        state["cuda"] = torch.cuda.get_rng_state(d.device)
    return state


def _seed_everything(seed: int):
    """Seed every generator :func:`_rng_state` saves (torch's CPU and CUDA ones, NumPy's, Python's)."""
    import random

    import numpy as np
    import torch

    torch.manual_seed(seed)  # the CUDA generators too
    np.random.seed(seed)
    random.seed(seed)


def _set_rng_state(state: dict, d: Dist):
    """Restore :func:`_rng_state`'s generators. Their states are set from the CPU (the only place torch takes them
    from, the CUDA generator's too), wherever the checkpoint was loaded to (``map_location=cuda:N`` moves them)."""
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if d.gpu:
        if "cuda" not in state:
            raise UsageError("--resume: the checkpoint was written by a run on the CPU; resume it on the CPU")
        torch.cuda.set_rng_state(state["cuda"].cpu(), d.device)


def _optimizer(cfg: TrainConfig, model):
    import torch

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


@dataclasses.dataclass
class _State:
    """Where a run stands: what a checkpoint holds besides the model and the optimiser."""

    epoch: int = 0  # the epoch in progress (0-based)
    step: int = 0  # optimiser steps done in it
    history: list = dataclasses.field(default_factory=list)
    loss_sum: float = 0.0  # this epoch's summed training loss and images so far (this rank)
    seen: int = 0
    audit: list = dataclasses.field(default_factory=list)  # this epoch's files so far (this rank)
    mixes: list = dataclasses.field(default_factory=list)  # this epoch's batch digests so far (this rank)
    pipelines: list | None = None  # DALI checkpoints of the training pipeline, one per rank
    rng: dict | None = None  # this rank's random generators to restore before the next step
    # this rank's module buffers (BatchNorm statistics): under DDP each rank's own, which the model in the checkpoint
    # (rank 0's) does not hold; restored after DDP has broadcast rank 0's at its construction
    buffers: dict | None = None


def _resume(cfg: TrainConfig, d: Dist, model, opt, scaler, ident: dict) -> _State:
    """The state to start from: fresh, or the checkpoint's (``--resume``), once sure it is the same run."""
    import torch

    path = Path(cfg.out) / "checkpoint.pt"
    if not cfg.resume:
        return _State()
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {str(path)!r}")
    ck = torch.load(path, map_location=d.device, weights_only=False)
    # a checkpoint of an older kmix holds no identity: compare what its configuration says
    saved = ck.get("run")
    if saved is None:
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        saved = _identity(TrainConfig(**{k: v for k, v in ck["config"].items() if k in names}), d.gpu)
    _refuse_changed_run(saved, ident)
    # the epochs the checkpoint has finished, or is in: --epochs may stretch the run, not cut into them
    needed = ck["epoch"] + 1
    if cfg.epochs < needed:
        where = (f"is in epoch {needed} (step {ck['step']})" if ck.get("step", 0)
                 else f"has finished {needed} epoch(s)")
        raise UsageError(f"--resume: the checkpoint {where}; --epochs must be >= {needed}, got {cfg.epochs}")
    pipelines = ck.get("pipelines")
    if pipelines is not None and len(pipelines) != d.world:
        raise UsageError(f"--resume: the checkpoint was written by {len(pipelines)} process(es), this run has "
                         f"{d.world}; resume with the same number of processes")
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    if ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    rng = ck["rng"][d.rank] if ck.get("rng") else None
    buffers = ck["buffers"][d.rank] if ck.get("buffers") else None
    if rng is None and d.main:
        print("kmix: warning: the checkpoint holds no random generator states (an older kmix wrote it): "
              "dropout masks will differ from the uninterrupted run's", file=sys.stderr)
    if ck.get("step", 0) == 0:  # saved at the end of epoch ck["epoch"]
        return _State(epoch=ck["epoch"] + 1, history=ck["history"], pipelines=pipelines, rng=rng, buffers=buffers)
    part = ck["partial"][d.rank]
    return _State(epoch=ck["epoch"], step=ck["step"], history=ck["history"], loss_sum=part["loss_sum"],
                  seen=part["seen"], audit=part["audit"], mixes=part["mixes"], pipelines=pipelines, rng=rng,
                  buffers=buffers)


def _pipelines(cfg: TrainConfig, d: Dist, op, k, train_dir, val_dir, num_classes, state: _State):
    """The training and validation iterators of this rank (the training one restored from the checkpoint)."""
    from ..pipelines import DALIMixIterator, imagenet_train_pipeline, imagenet_val_pipeline

    device = "gpu" if d.gpu else "cpu"
    layout = "HWC" if cfg.channels_last else "CHW"  # HWC reaches torch as channels-last NCHW
    restore = state.pipelines[d.rank] if state.pipelines is not None else None
    # The same seed on every rank: the builder draws each shard's pipeline seed from (seed, shard_id). A
    # checkpoint without pipeline state (an older run) moves it on by the epoch, so the resumed run does not
    # replay epoch 0's order.
    pipe_seed = cfg.seed * 1_000_003 + (state.epoch * 104729 if state.pipelines is None else 0)
    # The builder refuses arguments that would do nothing: the mixing ones go only to a mixing pipeline (the
    # smoothing to the pipeline that mixes, or to the iterator's one-hot targets without mixing), and
    # DMixup-or-DCutMix's own only to it; the CLI accepts them either way (unused, see _identity).
    mixing = {}
    if op is not None:
        mixing = dict(k=k, alpha=cfg.alpha, mode=cfg.mode, prob=cfg.prob, smoothing=cfg.smoothing, mix_on=cfg.mix_on,
                      mixup_off_epoch=cfg.mixup_off_epoch)
    if op == SWITCH:
        mixing.update(cutmix_alpha=cfg.cutmix_alpha, switch_prob=cfg.switch_prob)
    train_pipe = imagenet_train_pipeline(
        train_dir, batch_size=cfg.batch_size, device=device, mix=op, num_classes=num_classes,
        seed=pipe_seed, shard_id=d.rank, num_shards=d.world, num_threads=d.threads,
        device_id=d.local_rank if d.gpu else None, crop=cfg.crop, file_list=cfg.train_list,
        random_area=tuple(cfg.random_area), with_source_info=cfg.audit, enable_checkpointing=True,
        checkpoint=restore, output_layout=layout, **mixing)
    val_pipe = imagenet_val_pipeline(
        val_dir, batch_size=cfg.batch_size, device=device, crop=cfg.crop,
        size=default_resize(cfg.crop, cfg.val_resize), shard_id=d.rank, num_shards=d.world,
        num_threads=d.threads, device_id=d.local_rank if d.gpu else None, num_classes=num_classes,
        output_layout=layout)
    return (DALIMixIterator(train_pipe, smoothing=0.0 if op is not None else cfg.smoothing, drop_last=cfg.drop_last),
            DALIMixIterator(val_pipe, one_hot=False))


def _lr_schedule(cfg: TrainConfig, steps_per_epoch: int):
    """Linear warm-up, then cosine to 0 over the whole run (by optimiser step)."""
    total = steps_per_epoch * cfg.epochs
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def lr_at(step):
        if step < warm:
            return cfg.lr * (step + 1) / warm
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return lr_at


def _all_sum(values, d: Dist):
    """Sum a list of floats over ranks (float64 on the CPU for gloo, on the device for nccl)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=d.device if d.gpu else "cpu")
    if d.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _all_reduce_int(value: int, d: Dist, op: str) -> int:
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64, device=d.device if d.gpu else "cpu")
    if d.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.MIN)
    return int(t.item())


def _digest(images, targets) -> str:
    """A short fingerprint of one mixed batch (pixels and targets), for ``--audit``."""
    h = hashlib.sha1()
    for t in (images, *(targets if isinstance(targets, tuple) else (targets,))):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _load_buffers(model, buffers: dict):
    """Copy ``buffers`` (name -> tensor, as :func:`_save` gathers them) into ``model``'s buffers of those names."""
    import torch

    own = dict(model.named_buffers())
    if set(own) != set(buffers):
        raise ValueError(f"the checkpoint's module buffers {sorted(buffers)} are not the model's {sorted(own)}")
    with torch.no_grad():
        for name, b in own.items():
            b.copy_(buffers[name].to(b.device))


def _params_finite(model) -> bool:
    """Whether every parameter is finite (one host sync, at a checkpoint or an epoch end)."""
    import torch

    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


def _refuse_diverged(cfg: TrainConfig, state: _State, loss_sum: float, params_finite: bool):
    """Stop a run whose training loss total (or weights) went NaN or infinite, before it writes anything: the last
    checkpoint (a finite one) is kept. ``loss_sum`` and ``params_finite`` are the same on every rank."""
    if math.isfinite(loss_sum) and params_finite:
        return
    what = f"the training loss summed over the epoch so far is {loss_sum}" if not math.isfinite(loss_sum) \
        else "the model's weights are not finite"
    raise UsageError(f"the run diverged at epoch {state.epoch + 1}, step {state.step}: {what} (--lr {cfg.lr}); "
                     f"stopped without writing a checkpoint ({Path(cfg.out) / 'checkpoint.pt'} is the last finite "
                     f"one, if any): start again with a lower --lr (or --warmup-epochs)")


def _save(cfg: TrainConfig, d: Dist, model, opt, scaler, ident: dict, state: _State, train_it, *, epoch_done):
    """Write ``checkpoint.pt`` (rank 0) with every rank's pipeline checkpoint, random generators, module buffers
    and partial sums. The buffers differ between ranks under DDP: it broadcasts them before each forward from the
    highest rank still training (its join's authoritative rank), not from rank 0, whose model the checkpoint holds."""
    import torch
    import torch.distributed as dist

    mine = {"pipeline": train_it.checkpoints()[0], "rng": _rng_state(d), "loss_sum": state.loss_sum,
            "seen": state.seen, "audit": list(state.audit), "mixes": list(state.mixes),
            "buffers": {name: b.detach().to("cpu", copy=True) for name, b in model.named_buffers()},
            "finite": _params_finite(model)}
    parts = [None] * d.world
    if d.world > 1:
        dist.all_gather_object(parts, mine)
    else:
        parts = [mine]
    # every rank sees every rank's loss and raises alike (none is left waiting in a collective)
    _refuse_diverged(cfg, state, sum(p["loss_sum"] for p in parts), all(p["finite"] for p in parts))
    if not d.main:
        return
    buf = io.BytesIO()
    partial = [{k: v for k, v in p.items() if k not in ("pipeline", "rng", "buffers", "finite")} for p in parts]
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                "epoch": state.epoch, "step": 0 if epoch_done else state.step, "history": state.history,
                "pipelines": [p["pipeline"] for p in parts], "rng": [p["rng"] for p in parts],
                "buffers": [p["buffers"] for p in parts],
                "partial": None if epoch_done else partial, "config": dataclasses.asdict(cfg),
                "num_classes": len(ident["classes"]), "run": ident}, buf)
    atomic_write(Path(cfg.out) / "checkpoint.pt", buf.getvalue())


class _Clock:
    """When a time-based checkpoint is due (every ``seconds`` since the last checkpoint; 0: never).

    :meth:`due` is asked by every rank at the same steps. One process reads its clock at every
    step; under torchrun rank 0's clock decides for all: at agreed steps (about every
    ``poll_s`` seconds of rank-0 steps) rank 0 broadcasts whether a checkpoint is due and after how
    many steps it will be asked next, so every rank checkpoints at the same step.
    """

    def __init__(self, seconds: float, d: Dist, poll_s: float = 5.0):
        self.seconds, self.d, self.poll_s = seconds, d, poll_s
        self.last = time.monotonic()
        self.countdown = 1  # steps until the next vote (torchrun)
        self.asked = (time.monotonic(), 0)  # rank 0: when the last vote was, and the steps asked since

    def reset(self):
        self.last = time.monotonic()

    def due(self) -> bool:
        if not self.seconds:
            return False
        now = time.monotonic()
        if self.d.world == 1:
            return now - self.last >= self.seconds
        self.countdown -= 1
        t0, n = self.asked
        self.asked = (t0, n + 1)
        if self.countdown > 0:
            return False
        import torch
        import torch.distributed as dist

        vote = torch.zeros(2, dtype=torch.int64, device=self.d.device if self.d.gpu else "cpu")
        if self.d.main:
            step_s = max((now - t0) / max(n + 1, 1), 1e-6)
            vote[0] = int(now - self.last >= self.seconds)
            vote[1] = max(1, min(10_000, int(self.poll_s / step_s)))
            self.asked = (now, 0)
        dist.broadcast(vote, src=0)
        self.countdown = int(vote[1])
        return bool(vote[0])


@contextlib.contextmanager
def _naming_undecodable(d: Dist, progress: bool, train_files, val_files):
    """Answer a decoding failure of the training or validation pipeline by naming the file(s) that caused it.

    DALI's error says which operator failed, not which sample: this rank's shard of that split is
    decoded again (``readers.file``'s shard i holds files [i n / S, (i + 1) n / S) of its list), one
    file at a time where a batch fails, then the other files if none failed there. ``kmix data
    check`` does the same up front.
    """
    try:
        yield
    except RuntimeError as exc:
        from .data import _dali_reason, is_decode_error, undecodable

        if not is_decode_error(exc):
            raise
        training = "fn.decoders.image_random_crop" in str(exc)
        files = (train_files if training else val_files)()
        lo, hi = d.rank * len(files) // d.world, (d.rank + 1) * len(files) // d.world
        desc = f"rank {d.rank}: finding the file DALI could not decode"
        bad = (undecodable(files[lo:hi], threads=d.threads, progress=progress, desc=desc)
               or undecodable(files[:lo] + files[hi:], threads=d.threads, progress=progress, desc=desc))
        if not bad:
            raise
        reason = _dali_reason(exc)
        names = ", ".join(str(p) + (f" ({why})" if why != reason else "") for p, why in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise UsageError(f"DALI could not decode {len(bad)} file(s) of the {'training' if training else 'validation'} "
                         f"data ({reason}): {names}{more}; `kmix data check DIR` lists every such file") from exc


def _train_epoch(cfg, d, ddp, opt, scaler, amp_ctx, train_it, lr_at, steps, state: _State, save, stop_at, clock,
                 shortest):
    """One epoch (or what is left of it) of optimiser steps; returns False when stopped early.

    Mid-epoch checkpoints (every ``checkpoint_every`` steps, every ``checkpoint_minutes`` by
    ``clock``, and at ``stop_at``) are taken between batches, and under torchrun only within the
    first ``shortest - 1`` steps (while every rank still has batches); the epoch's last step is
    left to the epoch-end checkpoint, which is taken after the iterator has finished the epoch (one
    checkpoint a step: DALIMixIterator would restore one taken between the last batch and the end of
    the epoch too, as an iterator whose first call ends the epoch). The training loss is summed in
    one running float64 total that a checkpoint reads and a resumed run continues, so the sum is the
    same however often the run was checkpointed.
    """
    import torch
    from tqdm import tqdm

    from ..torch import soft_target_cross_entropy

    ddp.train()
    # summed on the device (no sync per step), from where the checkpoint left it
    loss_acc = torch.tensor(state.loss_sum, dtype=torch.float64, device=d.device)
    join = ddp.join() if d.world > 1 else contextlib.nullcontext()
    bar = tqdm(train_it, total=len(train_it), initial=state.step, desc=f"epoch {state.epoch + 1}/{cfg.epochs}",
               disable=not (cfg.progress and d.main), leave=False)
    with join:
        for images, targets in bar:
            for g in opt.param_groups:
                g["lr"] = lr_at(state.epoch * steps + state.step)
            if cfg.audit:
                state.audit += train_it.last_source_info
                state.mixes.append(_digest(images, targets))
            images = images.to(d.device, non_blocking=True)
            targets = targets.to(d.device, non_blocking=True)
            with amp_ctx():
                loss = soft_target_cross_entropy(ddp(images), targets)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            n = images.shape[0]
            if n:  # a rank whose shard ran out gets empty batches until the others finish (DDP join): their mean
                loss_acc += loss.detach().double() * n  # loss is NaN (0 / 0), which must not reach the sum
            state.seen += n
            state.step += 1
            if not bar.disable and state.step % 20 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if state.step == len(train_it) or state.step >= shortest:  # the epoch-end checkpoint follows
                continue
            global_step = state.epoch * steps + state.step
            timed = clock.due()  # asked at the same steps on every rank
            if timed or (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0) or global_step == stop_at:
                state.loss_sum = float(loss_acc)
                save(epoch_done=False)
            if global_step == stop_at:
                return False
    state.loss_sum = float(loss_acc)
    return True


def _evaluate(model, it, d: Dist, amp_ctx):
    import torch
    import torch.nn.functional as F

    model.eval()
    loss_sum = correct = count = 0.0
    with torch.no_grad():
        for images, labels in it:
            images = images.to(d.device, non_blocking=True)
            labels = labels.to(d.device, non_blocking=True)
            with amp_ctx():
                logits = model(images)
            loss_sum += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
            correct += float((logits.argmax(1) == labels).sum())
            count += labels.numel()
    loss_sum, correct, count = _all_sum([loss_sum, correct, count], d)
    return loss_sum / max(count, 1), 1.0 - correct / max(count, 1), int(count)


def _end_epoch(cfg, d, model, val_it, amp_ctx, state: _State, opt, t0, train_time, title):
    """Reduce the epoch's metrics, validate, append the row, write the files."""
    loss_sum, seen_all, infinite = _all_sum([state.loss_sum, state.seen, float(not _params_finite(model))], d)
    _refuse_diverged(cfg, state, loss_sum, not infinite)  # before validation, the metrics and the checkpoint
    epoch = state.epoch
    if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
        # parameters in sync after join
        val_loss, val_err, val_count = _evaluate(model, val_it, d, amp_ctx)
    else:
        val_loss = val_err = float("nan")
        val_count = 0
    row = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen_all, 1), "val_loss": val_loss,
           "val_top1_err": val_err, "lr": opt.param_groups[0]["lr"], "train_images": int(seen_all),
           "val_images": val_count, "epoch_s": round(time.perf_counter() - t0, 3),
           "train_images_per_s": round(seen_all / max(train_time, 1e-9), 1)}
    state.history.append(row)
    out = Path(cfg.out)
    if cfg.audit:  # every rank writes what it saw and the reduced metrics as it sees them
        atomic_write(out / f"seen_rank{d.rank}_epoch{epoch + 1}.txt", "\n".join(state.audit) + "\n")
        atomic_write(out / f"mixes_rank{d.rank}_epoch{epoch + 1}.txt", "\n".join(state.mixes) + "\n")
        atomic_write(out / f"metrics_rank{d.rank}.json", json.dumps(state.history))
    if d.main:
        _write_csv(out / "metrics.csv", state.history)
        plot_curves(state.history, out / "curves.png", title)
        if cfg.progress and val_count:
            print(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, val loss {val_loss:.4f}, "
                  f"val top-1 error {100 * val_err:.2f} % ({row['train_images_per_s']:.0f} img/s)", flush=True)


def train(cfg: TrainConfig) -> dict:
    """Run the training; returns the summary (on every rank; rank 0 also writes it).

    The steps: check the configuration, set up the processes, build the model and the
    optimiser, resume from ``checkpoint.pt`` if asked (mid-epoch too: the DALI pipeline is
    restored from its checkpoint), build the iterators, then per epoch train, validate and
    write the files. ``stop_after`` steps (or a pre-emption) leaves a checkpoint from which
    ``--resume`` continues exactly.
    """
    import torch

    op, k, train_dir, val_dir, classes = _check(cfg)
    d = setup_distributed(cfg.device, cfg.threads)
    out = Path(cfg.out)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out, RUN_FILES)  # left by a process killed while it wrote one of them
    num_classes = len(classes)
    ident = _identity(cfg, d.gpu, classes)
    _seed_everything(cfg.seed)
    model = build_model(cfg.model, num_classes).to(d.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = _optimizer(cfg, model)
    use_amp = d.gpu and cfg.amp
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    state = _resume(cfg, d, model, opt, scaler, ident)
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[d.local_rank] if d.gpu else None) if d.world > 1 else model
    if state.buffers is not None:  # this rank's own buffers, over the ones DDP just broadcast from rank 0
        _load_buffers(model, state.buffers)
        state.buffers = None

    def amp_ctx():
        return torch.autocast("cuda", dtype=amp_dtype) if use_amp else contextlib.nullcontext()

    def train_files():
        if cfg.train_list is None:
            return tree_files(train_dir)
        return [path for path, _ in listed_files(train_dir, cfg.train_list)]

    t_run = time.perf_counter()
    # DALI decodes ahead (when an iterator is made, at every step and epoch end): a failure anywhere names its file
    with _naming_undecodable(d, cfg.progress, train_files, functools.partial(tree_files, val_dir)):
        train_it, val_it = _pipelines(cfg, d, op, k, train_dir, val_dir, num_classes, state)
        steps = _all_reduce_int(len(train_it), d, "max")  # the same schedule on every rank, even with uneven shards
        # mid-epoch checkpoints gather from every rank: only while every rank still has batches
        shortest = _all_reduce_int(len(train_it), d, "min")
        if d.world > 1 and (cfg.checkpoint_every or cfg.stop_after):
            if cfg.checkpoint_every >= shortest or (cfg.stop_after and cfg.stop_after % steps >= shortest):
                raise UsageError(f"with {d.world} processes, mid-epoch checkpoints must fall within the first "
                                 f"{shortest - 1} steps of an epoch (the shortest shard)")
        lr_at = _lr_schedule(cfg, steps)
        clock = _Clock(60 * cfg.checkpoint_minutes, d)

        def save(epoch_done):
            _save(cfg, d, model, opt, scaler, ident, state, train_it, epoch_done=epoch_done)
            clock.reset()

        if state.rng is not None:  # the random generators as they were after the checkpoint's step
            _set_rng_state(state.rng, d)
            state.rng = None
        title = f"{cfg.model}, mix={cfg.mix}" + (f" K={k} alpha={cfg.alpha}" if op else "")
        stopped = False
        while state.epoch < cfg.epochs:
            t0 = time.perf_counter()
            if not _train_epoch(cfg, d, ddp, opt, scaler, amp_ctx, train_it, lr_at, steps, state, save,
                                cfg.stop_after or None, clock, shortest):
                stopped = True
                break
            _end_epoch(cfg, d, model, val_it, amp_ctx, state, opt, t0, time.perf_counter() - t0, title)
            save(epoch_done=True)
            reached = cfg.stop_after and state.epoch * steps + state.step >= cfg.stop_after
            state = _State(epoch=state.epoch + 1, history=state.history)
            if reached and state.epoch < cfg.epochs:  # stopped on an epoch's last step: after its end
                stopped = True
                break
    history = state.history
    done = state.epoch * steps + state.step  # optimiser steps done in all
    summary = {"config": dataclasses.asdict(cfg), "num_classes": num_classes, "world_size": d.world,
               "final_val_top1_err": history[-1]["val_top1_err"] if history else None,
               "best_val_top1_err": min((r["val_top1_err"] for r in history if r["val_images"]), default=None),
               "epochs": len(history), "stopped_early": stopped, "run_s": round(time.perf_counter() - t_run, 2),
               "stopped_at": {"step": done, "steps": steps * cfg.epochs, "epoch": state.epoch + 1 if state.step
                              else state.epoch, "epoch_step": state.step or steps, "steps_per_epoch": steps}
               if stopped else None,
               "history": history}
    if d.main:
        atomic_write(out / "summary.json", json.dumps(summary, indent=1))
    del train_it, val_it
    teardown_distributed(d)
    return summary


# --------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument("--data", help="folder with train/ and val/ JPEG trees (one sub-folder per class)")
    p.add_argument("--train-dir")
    p.add_argument("--val-dir")
    p.add_argument("--train-list", help="DALI file_list (relative path and label per line) to train on a subset")
    p.add_argument("--out", default="runs/kmix", help="where metrics.csv, curves.png, checkpoint.pt go")
    p.add_argument("--model", default="small-cnn", choices=MODELS)
    p.add_argument("--mix", default="dcutmix", choices=MIX_CHOICES,
                   help="mixup/cutmix are the K=2 cases; a+b: one of the two per batch (see --switch-prob)")
    p.add_argument("--switch-prob", type=float, default=0.5,
                   help="with --mix dmixup+dcutmix or mixup+cutmix: the probability that a batch is cut-mixed")
    p.add_argument("--cutmix-alpha", type=float, default=None,
                   help="with --mix dmixup+dcutmix or mixup+cutmix: DCutMix's alpha (default --alpha)")
    p.add_argument("--mixup-off-epoch", type=int, default=None,
                   help="no mixing from this epoch on (0-based; timm's mixup_off_epoch); no pipeline rebuild")
    p.add_argument("--drop-last", action="store_true", help="drop the last, short batch of every epoch")
    p.add_argument("--channels-last", action="store_true",
                   help="HWC batches from DALI as channels-last NCHW tensors, and the model in channels_last")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--prob", type=float, default=1.0)
    p.add_argument("--mode", default="sample", choices=["sample", "batch"])
    p.add_argument("--smoothing", type=float, default=0.0)
    p.add_argument("--mix-on", default="uint8", choices=["uint8", "float32"],
                   help="mix the decoded uint8 crops (faster) or the normalised float32 tensors")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128, help="per process")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--val-resize", type=int, default=None)
    p.add_argument("--random-area", type=float, nargs=2, default=(0.08, 1.0))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process (DALI and torch)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no mixed precision on the GPU")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.pt (mid-epoch too: the DALI pipeline is restored)")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="also write checkpoint.pt every N steps inside an epoch (default 0: by time only)")
    p.add_argument("--checkpoint-minutes", type=float, default=10.0,
                   help="also write checkpoint.pt every M minutes of training (default 10: a kill loses at most "
                        "about that; 0: at epoch ends and --checkpoint-every only)")
    p.add_argument("--stop-after", type=int, default=0,
                   help="stop after N optimiser steps in all, with a checkpoint (a planned pre-emption)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--eval-every", type=int, default=1, help="validate every N epochs (and after the last)")
    p.add_argument("--audit", action="store_true",
                   help="every rank writes the files it trained on and the reduced metrics it saw")


def config_from_args(args) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {k: v for k, v in vars(args).items() if k in fields}
    kw["random_area"] = tuple(kw["random_area"])
    return TrainConfig(**kw)
