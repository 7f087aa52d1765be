"""``kmix train``: train a classifier through the DALI iterator with K-image mixing.

One process::

    kmix train --data DIR --mix dcutmix --k 3 --epochs 10

Many processes (one per GPU, or several on a CPU) with PyTorch's own launcher::

    torchrun --nproc_per_node 2 -m dali_kmix.cli train --data DIR --mix dcutmix

``DIR`` holds ``train/`` and ``val/`` ImageNet-layout JPEG folders (``kmix data
fashion-mnist DIR`` writes one). Under torchrun every rank reads its own shard
(``shard_id=rank, num_shards=world_size``) with a rank-specific seed, the model is
wrapped in DistributedDataParallel (gloo on the CPU, nccl on GPUs), uneven shards
are handled with DDP's join, metrics are summed over ranks before they are
reported, and only rank 0 writes files: ``metrics.csv``, ``curves.png``,
``checkpoint.pt`` (resumable with ``--resume``) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import time
from pathlib import Path

__all__ = ["TrainConfig", "MIX_CHOICES", "resolve_mix", "build_model", "train", "add_arguments", "config_from_args"]

MIX_CHOICES = ("none", "mixup", "cutmix", "dmixup", "dcutmix", "saliency-dcutmix")
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


def resolve_mix(mix: str, k: int) -> tuple[str | None, int]:
    """The operator and K behind a ``--mix`` choice: mixup and cutmix are the K=2 cases."""
    if mix not in MIX_CHOICES:
        raise ValueError(f"mix must be one of {list(MIX_CHOICES)}, got {mix!r}")
    if mix == "none":
        return None, k
    if mix == "mixup":
        return "dmixup", 2
    if mix == "cutmix":
        return "dcutmix", 2
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
        raise ValueError(f"model must be one of {list(MODELS)}, got {name!r}")
    import torchvision

    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)


# --------------------------------------------------------------------------- distributed set-up


@dataclasses.dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: object = None
    gpu: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup(cfg: TrainConfig) -> _Dist:
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'gpu', got {cfg.device!r}")
    gpu = cfg.device == "gpu" or (cfg.device == "auto" and torch.cuda.is_available())
    if gpu and not torch.cuda.is_available():
        raise RuntimeError("device='gpu' but torch sees no CUDA device")
    device = torch.device(f"cuda:{local_rank}") if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // world)
    torch.set_num_threads(threads)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if gpu else "gloo", init_method="env://")
    return _Dist(rank=rank, world=world, local_rank=local_rank, device=device, gpu=gpu)


def _all_sum(values, d: _Dist):
    """Sum a list of floats over ranks (float64 on the CPU for gloo, on the device for nccl)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=d.device if d.gpu else "cpu")
    if d.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _all_max(value: int, d: _Dist) -> int:
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64, device=d.device if d.gpu else "cpu")
    if d.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


# --------------------------------------------------------------------------- files (rank 0)


def _atomic_write(path: Path, data: bytes):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_csv(path: Path, rows: list[dict]):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    w.writeheader()
    w.writerows(rows)
    _atomic_write(path, buf.getvalue().encode())


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
    _atomic_write(path, buf.getvalue())


# --------------------------------------------------------------------------- the run


def _dirs(cfg: TrainConfig) -> tuple[Path, Path]:
    train_dir = Path(cfg.train_dir) if cfg.train_dir else (Path(cfg.data) / "train" if cfg.data else None)
    val_dir = Path(cfg.val_dir) if cfg.val_dir else (Path(cfg.data) / "val" if cfg.data else None)
    if train_dir is None or val_dir is None:
        raise ValueError("give --data DIR (with train/ and val/) or both --train-dir and --val-dir")
    for name, p in (("train", train_dir), ("val", val_dir)):
        if not p.is_dir():
            raise FileNotFoundError(f"{name} folder {str(p)!r} does not exist")
    return train_dir, val_dir


def _evaluate(model, it, d: _Dist, amp_ctx):
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


def train(cfg: TrainConfig) -> dict:
    """Run the training; returns the summary (on every rank; rank 0 also writes it)."""
    import torch
    import torch.distributed as dist
    from tqdm import tqdm

    from .pipelines import DALIMixIterator, count_classes, imagenet_train_pipeline, imagenet_val_pipeline
    from .torch import soft_target_cross_entropy

    op, k = resolve_mix(cfg.mix, cfg.k)
    if cfg.optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {cfg.epochs}")
    if cfg.eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {cfg.eval_every}")
    train_dir, val_dir = _dirs(cfg)
    d = _setup(cfg)
    out = Path(cfg.out)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    num_classes = count_classes(train_dir)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes).to(d.device)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                              nesterov=cfg.momentum > 0)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    history, start_epoch = [], 0
    ckpt_path = out / "checkpoint.pt"
    if cfg.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=d.device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history, start_epoch = state["history"], state["epoch"] + 1
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[d.local_rank] if d.gpu else None) if d.world > 1 else model

    use_amp = d.gpu and cfg.amp
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    def amp_ctx():
        return torch.autocast("cuda", dtype=amp_dtype) if use_amp else contextlib.nullcontext()

    threads = cfg.threads or max(1, (os.cpu_count() or 1) // d.world)
    device = "gpu" if d.gpu else "cpu"
    # A rank-specific seed, moved on by the start epoch so a resumed run does not replay epoch 0's order.
    pipe_seed = cfg.seed * 1_000_003 + d.rank * 7919 + start_epoch * 104729
    train_pipe = imagenet_train_pipeline(
        train_dir, batch_size=cfg.batch_size, device=device, mix=op, k=k, alpha=cfg.alpha, num_classes=num_classes,
        seed=pipe_seed, shard_id=d.rank, num_shards=d.world, num_threads=threads,
        device_id=d.local_rank if d.gpu else None, crop=cfg.crop, mode=cfg.mode, prob=cfg.prob,
        smoothing=cfg.smoothing, file_list=cfg.train_list, random_area=tuple(cfg.random_area),
        with_source_info=cfg.audit, mix_on=cfg.mix_on)
    val_pipe = imagenet_val_pipeline(
        val_dir, batch_size=cfg.batch_size, device=device, crop=cfg.crop,
        size=cfg.val_resize or max(cfg.crop, round(cfg.crop * 256 / 224)), shard_id=d.rank, num_shards=d.world,
        num_threads=threads, device_id=d.local_rank if d.gpu else None, num_classes=num_classes)
    train_it = DALIMixIterator(train_pipe, smoothing=cfg.smoothing)
    val_it = DALIMixIterator(val_pipe, one_hot=False)
    steps = _all_max(len(train_it), d)  # the same schedule on every rank, even with uneven shards
    total = steps * cfg.epochs
    warm = int(cfg.warmup_epochs * steps)

    def lr_at(step):
        if step < warm:
            return cfg.lr * (step + 1) / warm
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    title = f"{cfg.model}, mix={cfg.mix}" + (f" K={k} alpha={cfg.alpha}" if op else "")
    t_run = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        ddp.train()
        loss_acc = torch.zeros((), dtype=torch.float64, device=d.device)  # summed on the device: no sync per step
        seen = 0
        audit = []
        t0 = time.perf_counter()
        join = ddp.join() if d.world > 1 else contextlib.nullcontext()
        bar = tqdm(train_it, total=len(train_it), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (cfg.progress and d.main), leave=False)
        with join:
            for i, (images, targets) in enumerate(bar):
                for g in opt.param_groups:
                    g["lr"] = lr_at(epoch * steps + i)
                images = images.to(d.device, non_blocking=True)
                targets = targets.to(d.device, non_blocking=True)
                with amp_ctx():
                    loss = soft_target_cross_entropy(ddp(images), targets)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                n = images.shape[0]
                loss_acc += loss.detach().double() * n
                seen += n
                if cfg.audit:
                    audit += train_it.last_source_info
                if bar.disable is False and i % 20 == 0:
                    bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        train_time = time.perf_counter() - t0
        loss_sum, seen_all = _all_sum([float(loss_acc), seen], d)
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            val_loss, val_err, val_count = _evaluate(model, val_it, d, amp_ctx)  # parameters in sync after join
        else:
            val_loss = val_err = float("nan")
            val_count = 0
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen_all, 1), "val_loss": val_loss,
               "val_top1_err": val_err, "lr": opt.param_groups[0]["lr"], "train_images": int(seen_all),
               "val_images": val_count, "epoch_s": round(time.perf_counter() - t0, 3),
               "train_images_per_s": round(seen_all / train_time, 1)}
        history.append(row)
        if cfg.audit:  # every rank writes what it saw and the reduced metrics as it sees them
            (out / f"seen_rank{d.rank}_epoch{epoch + 1}.txt").write_text("\n".join(audit) + "\n")
            (out / f"metrics_rank{d.rank}.json").write_text(json.dumps(history))
        if d.main:
            _write_csv(out / "metrics.csv", history)
            plot_curves(history, out / "curves.png", title)
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                        "history": history, "config": dataclasses.asdict(cfg), "num_classes": num_classes}, buf)
            _atomic_write(ckpt_path, buf.getvalue())
            if cfg.progress and val_count:
                print(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, val loss {val_loss:.4f}, "
                      f"val top-1 error {100 * val_err:.2f} % ({row['train_images_per_s']:.0f} img/s)", flush=True)
    summary = {"config": dataclasses.asdict(cfg), "num_classes": num_classes, "world_size": d.world,
               "final_val_top1_err": history[-1]["val_top1_err"] if history else None,
               "best_val_top1_err": min((r["val_top1_err"] for r in history if r["val_images"]), default=None),
               "epochs": len(history), "run_s": round(time.perf_counter() - t_run, 2), "history": history}
    if d.main:
        _atomic_write(out / "summary.json", json.dumps(summary, indent=1).encode())
    del train_it, val_it, train_pipe, val_pipe
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


# --------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument("--data", help="folder with train/ and val/ JPEG trees (one sub-folder per class)")
    p.add_argument("--train-dir")
    p.add_argument("--val-dir")
    p.add_argument("--train-list", help="DALI file_list (relative path and label per line) to train on a subset")
    p.add_argument("--out", default="runs/kmix", help="where metrics.csv, curves.png, checkpoint.pt go")
    p.add_argument("--model", default="small-cnn", choices=MODELS)
    p.add_argument("--mix", default="dcutmix", choices=MIX_CHOICES, help="mixup/cutmix are the K=2 cases")
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
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--eval-every", type=int, default=1, help="validate every N epochs (and after the last)")
    p.add_argument("--audit", action="store_true",
                   help="every rank writes the files it trained on and the reduced metrics it saw")


def config_from_args(args) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {k: v for k, v in vars(args).items() if k in fields}
    kw["random_area"] = tuple(kw["random_area"])
    return TrainConfig(**kw)
