"""Uncertainty-based data subsampling with K-image mixing (the paper's second contribution).

For every anchor sample ``x_i`` draw ``M`` DCutMix mixes in which the anchor keeps a
fixed share (``anchor_ratio``, default 0.5) and ``K - 1`` partners share the rest by
``Dirichlet(alpha)`` (default ``(2/9, 2/9)``); ``L_i`` are the model's soft-target
cross-entropy losses on those mixes. As in the paper's Eq. (8), the partners are drawn once
per anchor and kept for its ``M`` mixes, which differ in the partners' shares and the box
positions (``partners="fixed"``); ``partners="redrawn"`` draws new partners for every mix.
The measure is the coefficient of variation ``CV_i = std(L_i) / mean(L_i)`` (``std`` with
``ddof=0``); ``mean``, ``std`` and ``random`` are offered for ablations. Per class a fraction ``ratio`` is kept:
``top`` takes the highest values, ``interval`` walks them in descending order taking
every ``interval``-th (the paper's best).

Scoring order is fixed by the seed alone, never by the number of processes: the
files are put in one seeded order, cut into groups of ``group_size`` (a last group of
one sample, which would be mixed with itself only, joins the group before it), and group
``g`` draws its partners (from within the group) and boxes from ``seed`` and ``g``.
Under torchrun rank ``r`` scores groups ``r, r + W, ...`` and the scores are gathered,
so the result equals the single-process one, with every sample scored exactly once
(samples are identified by their path).

Outputs: a CSV of ``path,label,mean,std,cv`` and the subset as a DALI ``file_list``
(``relative/path label`` per line), each written whole (temporary file, then rename).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import _checks
from .common import (UsageError, atomic_write, check_at_least, default_resize, setup_distributed,
                     teardown_distributed)

__all__ = ["MEASURES", "SELECTIONS", "PARTNERS", "list_files", "score_batch", "score_dataset", "select", "write_scores",
           "read_scores", "file_list_text", "write_file_list", "read_file_list", "plot_figure"]

MEASURES = ("cv", "mean", "std", "random")
SELECTIONS = ("top", "interval")


@dataclass
class Scores:
    """Per-sample losses over the M mixes, in the order of ``paths``."""

    paths: list
    labels: np.ndarray
    losses: np.ndarray  # float64 (N, M)

    @property
    def mean(self):
        return self.losses.mean(axis=1)

    @property
    def std(self):
        return self.losses.std(axis=1)

    @property
    def cv(self):
        return self.std / np.maximum(self.mean, 1e-12)


def list_files(data_dir) -> list[tuple[str, int]]:
    """``(relative path, label)`` of every file ``readers.file(file_root=data_dir)`` reads, in its order: the files
    of each class folder (not recursive, DALI's file filters: :func:`dali_kmix.pipelines.image_files`), labels
    numbered by class folder as ``readers.file`` numbers them."""
    from ..pipelines import class_names, image_files

    root = Path(data_dir)
    classes = class_names(root)
    if not classes:
        raise ValueError(f"data {str(data_dir)!r} has no class sub-folders")
    return [(f"{c}/{name}", label) for label, c in enumerate(classes) for name in image_files(root / c)]


PARTNERS = ("fixed", "redrawn")


def score_batch(model, images, labels, *, num_classes: int, m: int = 10, k: int = 3, anchor_ratio: float = 0.5,
                alpha=(2 / 9, 2 / 9), rng=None, layout: str = "CHW", capture: bool = False,
                partners: str = "fixed"):
    """Losses of ``m`` anchor-fixed DCutMix mixes of every sample of one group; float64 ``(N, m)``.

    Args:
        model: a torch module in eval mode on the device of ``images``.
        images: float32 batch, NumPy (CPU) or CuPy (GPU), ``(N, C, H, W)`` for "CHW".
        labels: int ``(N,)`` class indices (NumPy).
        rng: the group's generator (partners, shares and box positions are drawn from it).
        capture: also return the mixed images and targets (for figures).
        partners: "fixed" (each anchor's partners drawn once, first, and kept for its ``m`` mixes: Eq. (8))
            or "redrawn" (new partners for every mix, drawn after its shares and boxes).
    """
    import torch

    from ..mixing import mix_images, mix_labels
    from ..sampling import draw_partners, sample_anchor_params

    partners = _checks.check_choice("partners", partners, PARTNERS)
    from ..torch import soft_target_cross_entropy

    n = images.shape[0]
    h, w = _checks.spatial_size(images.shape[1:], layout)
    gen = np.random.default_rng(rng)  # a Generator passes through unchanged
    losses = np.empty((n, m), np.float64)
    shots = []
    gpu = _checks.array_module(images) is not np
    device = next(model.parameters()).device
    kept = draw_partners(n, k, gen) if partners == "fixed" else None
    with torch.no_grad():
        for j in range(m):
            p = sample_anchor_params(n, h, w, k=k, anchor_ratio=anchor_ratio, alpha=alpha, rng=gen, partners=kept)
            mixed = mix_images(images, p, layout)
            targets = mix_labels(np.asarray(labels), p, num_classes)
            x = torch.as_tensor(mixed, device=device) if gpu else torch.from_numpy(mixed).to(device)
            if layout == "HWC":
                x = x.permute(0, 3, 1, 2)
            t = torch.from_numpy(np.ascontiguousarray(targets)).to(device)
            losses[:, j] = soft_target_cross_entropy(model(x), t, reduction="none").double().cpu().numpy()
            if capture:
                shots.append((mixed.get() if gpu else mixed, np.asarray(targets), p))
    return (losses, shots) if capture else losses


_ORDER_KEY = 0x5EED  # the file order's generator is default_rng([seed, _ORDER_KEY])


def _group_rng(seed: int, g: int):
    """The generator of group ``g``: ``default_rng([seed, g])``, except that group ``_ORDER_KEY`` would then replay
    the file order's stream (``[seed, 0x5EED]``); groups from ``_ORDER_KEY`` on take ``[seed, _ORDER_KEY, g]``, a
    key of three words that no order or group key equals. Groups below it keep ``[seed, g]``, so every score of a
    dataset of fewer than 0x5EED groups (every study so far) stays as it was."""
    return np.random.default_rng([seed, g] if g < _ORDER_KEY else [seed, _ORDER_KEY, g])


def _groups(files, group_size: int, seed: int):
    """``files`` in one seeded order, cut into groups of ``group_size``; never a group of one sample (its
    partners would be itself, every mix the anchor alone, its CV 0): a last group of one joins the one before."""
    group_size = _checks.check_int("group_size", group_size, 2)
    if len(files) < 2:
        raise ValueError(f"scoring mixes every sample with others: it needs at least 2 images, got {len(files)}")
    order = np.random.default_rng([seed, _ORDER_KEY]).permutation(len(files))
    groups = [[files[i] for i in order[s:s + group_size]] for s in range(0, len(files), group_size)]
    if len(groups[-1]) == 1:
        lone = groups.pop()
        groups[-1] += lone
    return groups


def _group_pipeline(root, groups, *, crop, resize, device, device_id, num_threads, seed):
    """A DALI pipeline that decodes one group per iteration (no random augmentation)."""
    from nvidia.dali import Pipeline, fn, types

    from ..pipelines import decode_center

    state = {"i": 0}

    def source():
        if state["i"] >= len(groups):
            raise StopIteration
        g = groups[state["i"]]
        state["i"] += 1
        data = [np.fromfile(Path(root) / rel, dtype=np.uint8) for rel, _ in g]
        labels = [np.array([lab], np.int32) for _, lab in g]
        return data, labels

    max_batch = max((len(g) for g in groups), default=1)
    pipe = Pipeline(batch_size=max_batch, num_threads=num_threads, device_id=device_id, seed=seed,
                    prefetch_queue_depth=1)
    with pipe:
        jpegs, labels = fn.external_source(source=source, num_outputs=2, batch=True,
                                           dtype=[types.UINT8, types.INT32])
        pipe.set_outputs(decode_center(jpegs, gpu=device == "gpu", size=resize, crop=crop), labels)
    return pipe


def score_dataset(model, data_dir, *, num_classes: int, m: int = 10, k: int = 3, anchor_ratio: float = 0.5,
                  alpha=(2 / 9, 2 / 9), group_size: int = 64, seed: int = 0, crop: int = 224,
                  resize: int | None = None, device: str = "cpu", device_id=None, num_threads: int = 2,
                  rank: int = 0, world: int = 1, capture_paths=(), progress: bool = False, partners: str = "fixed"):
    """Score every image under ``data_dir`` (this rank's groups); returns (Scores, captured mixes)."""
    from tqdm import tqdm

    m = _checks.check_int("m", m, 2)  # one mix gives every sample std 0
    partners = _checks.check_choice("partners", partners, PARTNERS)
    files = list_files(data_dir)
    groups = _groups(files, group_size, seed)
    mine = list(range(rank, len(groups), world))
    capture_paths = set(capture_paths)
    if capture_paths:
        mine = [g for g in mine if capture_paths & {rel for rel, _ in groups[g]}]
    pipe = _group_pipeline(data_dir, [groups[g] for g in mine], crop=crop, resize=resize or default_resize(crop),
                           device=device, device_id=device_id, num_threads=num_threads, seed=seed)
    pipe.build()
    paths, labels, losses, captured = [], [], [], {}
    for g in tqdm(mine, desc="scoring", disable=not progress):
        images, labs = pipe.run()
        if device == "gpu":
            import cupy

            batch = cupy.asarray(images.as_tensor())
        else:
            batch = images.as_array()
        labs = labs.as_array().reshape(-1).astype(np.int64)
        rels = [rel for rel, _ in groups[g]]
        if [lab for _, lab in groups[g]] != labs.tolist():
            raise RuntimeError("the scoring pipeline returned a group out of order")
        res = score_batch(model, batch, labs, num_classes=num_classes, m=m, k=k, anchor_ratio=anchor_ratio,
                          alpha=alpha, rng=_group_rng(seed, g), capture=bool(capture_paths),
                          partners=partners)
        if capture_paths:
            res, shots = res
            for i, rel in enumerate(rels):
                if rel in capture_paths:
                    captured[rel] = {"label": int(labs[i]), "losses": res[i],
                                     "mixes": [s[0][i] for s in shots], "targets": [s[1][i] for s in shots]}
        paths += rels
        labels.append(labs)
        losses.append(res)
    del pipe
    scores = Scores(paths, np.concatenate(labels) if labels else np.zeros(0, np.int64),
                    np.concatenate(losses) if losses else np.zeros((0, m)))
    return scores, captured


# --------------------------------------------------------------------------- selection


def _measure(scores: Scores, measure: str, seed: int):
    if measure == "random":  # drawn in path order, so a sample's value does not depend on the order of the rows
        values = np.empty(len(scores.paths))
        values[np.argsort(np.asarray(scores.paths), kind="stable")] = \
            np.random.default_rng([seed, 0xC0FFEE]).random(len(scores.paths))
        return values
    return getattr(scores, measure)


def _check_ratio(ratio):
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
        raise UsageError(f"ratio must be in (0, 1], got {ratio!r}")


def select(scores: Scores, ratio: float, *, measure: str = "cv", selection: str = "interval", interval: int = 2,
           ascending: bool = False, seed: int = 0) -> list[int]:
    """Indices (into ``scores.paths``) of the kept samples, class by class.

    Per class ``round(ratio * N_class)`` samples (at least 1) are kept. ``top``: the
    largest values of the measure (the smallest with ``ascending``). ``interval``: the
    values sorted descending, every ``interval``-th taken (positions 0, n, 2n, ...;
    when the class runs out, the walk restarts at position 1, then 2, ...). Ties are
    broken by path, so the result does not depend on the order of ``scores``.
    """
    _checks.check_choice("measure", measure, MEASURES)
    _checks.check_choice("selection", selection, SELECTIONS)
    _check_ratio(ratio)
    interval = _checks.check_int("interval", interval, 1)
    values = _measure(scores, measure, seed)
    if not np.all(np.isfinite(values)):
        raise ValueError("scores contain non-finite values")
    paths = np.asarray(scores.paths)
    keep = []
    for c in np.unique(scores.labels):
        idx = np.flatnonzero(scores.labels == c)
        idx = idx[np.lexsort((paths[idx], -values[idx] if not ascending else values[idx]))]
        count = min(len(idx), max(1, int(round(ratio * len(idx)))))
        if selection == "top":
            keep += idx[:count].tolist()
        else:
            walk = [p for start in range(interval) for p in range(start, len(idx), interval)]
            keep += idx[walk[:count]].tolist()
    return sorted(keep)


# --------------------------------------------------------------------------- files


def write_scores(scores: Scores, path):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "mean", "std", "cv"])
    for p, lab, mu, sd, cv in zip(scores.paths, scores.labels, scores.mean, scores.std, scores.cv):
        w.writerow([p, int(lab), repr(float(mu)), repr(float(sd)), repr(float(cv))])
    atomic_write(path, buf.getvalue())


def read_scores(path):
    """``(paths, labels, mean, std, cv)`` from a scores CSV."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return ([r["path"] for r in rows], np.array([int(r["label"]) for r in rows]),
            *(np.array([float(r[c]) for r in rows]) for c in ("mean", "std", "cv")))


def check_list_path(rel) -> str:
    """``rel`` if a DALI ``file_list`` line can hold it, else a ValueError naming it. DALI (2.4) reads a line as
    ``path label``, the label its last whitespace-separated field, so spaces inside a path are fine; a newline or
    carriage return would break the line, and white space at either end would be cut off or taken for the
    separator."""
    if not rel:
        raise ValueError("an empty path cannot be a line of a DALI file_list")
    if "\n" in rel or "\r" in rel:
        raise ValueError(f"path {rel!r} contains a newline or carriage return, which would break its line of a DALI "
                         "file_list")
    if rel != rel.strip():
        raise ValueError(f"path {rel!r} starts or ends with white space, which a DALI file_list line cannot keep")
    return rel


def file_list_text(pairs) -> str:
    """The text of a DALI ``file_list``: ``relative/path label`` per line (a path may hold inner spaces, see
    :func:`check_list_path`)."""
    return "".join(f"{check_list_path(rel)} {int(lab)}\n" for rel, lab in pairs)


def write_file_list(pairs, path):
    """A DALI ``file_list`` of ``pairs`` (:func:`file_list_text`), written whole."""
    atomic_write(path, file_list_text(pairs))


def read_file_list(path) -> list[tuple[str, int]]:
    """``(path, label)`` of every line of a ``file_list``, split as DALI splits it (lines at "\\n" only, the label
    the last whitespace-separated field)."""
    out = []
    for raw in Path(path).read_bytes().split(b"\n"):
        line = os.fsdecode(raw)
        if line.strip():
            rel, lab = line.rsplit(None, 1)
            out.append((rel, int(lab)))
    return out


# --------------------------------------------------------------------------- figure


def plot_figure(scores: Scores, captured: dict, path, class_names=None, cols: int = 6):
    """Figure 2 of the paper: mixes of high- and low-CV anchors with their losses, and CV per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..pipelines import IMAGENET_MEAN, IMAGENET_STD

    anchors = list(captured)
    rows = len(anchors)
    fig = plt.figure(figsize=(1.7 * cols + 4, 1.9 * rows + 0.5))
    gs = fig.add_gridspec(rows, cols + 3)
    cv = dict(zip(scores.paths, scores.cv))
    mean, std = np.array(IMAGENET_MEAN)[:, None, None], np.array(IMAGENET_STD)[:, None, None]
    for r, rel in enumerate(anchors):
        cap = captured[rel]
        for c in range(min(cols, len(cap["mixes"]))):
            ax = fig.add_subplot(gs[r, c])
            img = np.clip(cap["mixes"][c] * std + mean, 0, 255).astype(np.uint8).transpose(1, 2, 0)
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"loss {cap['losses'][c]:.2f}", fontsize=8)
            if c == 0:
                name = class_names[cap["label"]] if class_names else cap["label"]
                ax.set_ylabel(f"{name}\nCV {cv[rel]:.2f}", fontsize=8)
    ax = fig.add_subplot(gs[:, cols + 1:])
    labels = np.unique(scores.labels)
    ax.boxplot([scores.cv[scores.labels == c] for c in labels], vert=False)
    ax.set_yticks(range(1, len(labels) + 1), [class_names[c] if class_names else str(c) for c in labels],
                  fontsize=8)
    ax.set_xlabel("CV of the loss over the mixes")
    ax.set_title("CV per class", fontsize=9)
    fig.suptitle("Anchors with the highest (top rows) and lowest CV: their DCutMix mixes and losses", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def load_checkpoint_model(checkpoint, model_name=None, device="cpu"):
    """The model saved by ``kmix train`` (its config names the architecture), in eval mode."""
    import torch

    from .train import build_model

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{checkpoint} is not a kmix train checkpoint (no 'model' entry)")
    name = model_name or state.get("config", {}).get("model", "small-cnn")
    model = build_model(name, state["num_classes"])
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state


def _output_paths(args) -> dict:
    """The files ``run`` writes (``scores`` defaults to OUT with .csv, ``summary`` is SCORES with .json); refused
    before any work when two of them are the same file (one would overwrite the other)."""
    paths = {"out": str(args.out), "scores": str(args.scores or Path(args.out).with_suffix(".csv"))}
    paths["summary"] = str(Path(paths["scores"]).with_suffix(".json"))
    if args.figure:
        paths["figure"] = str(args.figure)
    what = {"out": "--out (the file list)", "scores": "the scores CSV (--scores, default OUT with .csv)",
            "summary": "the summary JSON (the scores CSV with .json)", "figure": "--figure"}
    seen = {}
    for key, path in paths.items():
        other = seen.setdefault(Path(path).resolve(), key)
        if other != key:
            raise UsageError(f"{what[other]} and {what[key]} are the same file {path!r}: one would overwrite the "
                             "other (give --scores, or other names)")
    return paths


def _check_classes(data_classes, state: dict, data, checkpoint):
    """The labels come from the class folders of ``data``, the model's classes from the checkpoint: they must agree."""
    trained = (state.get("run") or {}).get("classes")
    if trained is None:  # a checkpoint without its class names: compare the count
        if len(data_classes) != state["num_classes"]:
            raise UsageError(f"--data {str(data)!r} has {len(data_classes)} class folders, the model of "
                             f"{str(checkpoint)!r} {state['num_classes']} classes")
        return
    if list(data_classes) != list(trained):
        first = next((i for i, (a, b) in enumerate(zip(data_classes, trained)) if a != b),
                     min(len(data_classes), len(trained)))
        data_c = data_classes[first] if first < len(data_classes) else "(none)"
        model_c = trained[first] if first < len(trained) else "(none)"
        raise UsageError(f"the class folders of --data {str(data)!r} differ from the classes the checkpoint "
                         f"{str(checkpoint)!r} was trained on: label {first} is {data_c!r} in the data, "
                         f"{model_c!r} in the checkpoint ({len(data_classes)} vs {len(trained)} classes)")


def _preprocessing(args, state: dict) -> tuple[int, int]:
    """(crop, resize) for scoring: the options, else what the checkpoint's run validated with."""
    config = state.get("config", {})
    crop = args.crop if args.crop is not None else config.get("crop", 224)
    return crop, args.resize or default_resize(crop, config.get("val_resize"))


def _check_arguments(args):
    """Every option that can be checked without reading anything, before any work (a bad one found after the
    scoring would lose the scores)."""
    _check_ratio(args.ratio)
    for flag, value, minimum in (("--group-size", args.group_size, 2), ("--mixes", args.m, 2),
                                 ("--threads", args.threads, 1), ("--crop", args.crop, 1),
                                 ("--resize", args.resize, 1), ("--interval", args.interval, 1),
                                 ("--k", args.k, 2), ("--seed", args.seed, 0)):
        check_at_least(flag, value, minimum)
    if not 0.0 < args.anchor_ratio < 1.0:
        raise UsageError(f"--anchor-ratio must be in (0, 1), got {args.anchor_ratio}")
    alpha = list(args.alpha)
    if len(alpha) not in (1, args.k - 1):
        raise UsageError(f"--alpha must be one value or K - 1 = {args.k - 1} values (--k {args.k}), got {alpha}")
    if not all(math.isfinite(a) and a > 0 for a in alpha):
        raise UsageError(f"--alpha must be finite and > 0, got {alpha}")


def run(args) -> tuple[dict, Scores]:
    """``kmix subsample``: score (one process or under torchrun), select, write the files (rank 0).

    Returns the summary and the gathered scores (so a caller can select other subsets without
    scoring again).
    """
    import torch.distributed as dist

    from .data import class_names

    _check_arguments(args)
    for name, path in (("--data", args.data), ("--checkpoint", args.checkpoint)):
        if not Path(path).exists():
            raise UsageError(f"{name} {str(path)!r} does not exist")
    outputs = _output_paths(args)
    files = list_files(args.data)
    for rel, _ in files:  # the subset is written as a file_list after scoring: refuse a path it cannot hold now
        try:
            check_list_path(rel)
        except ValueError as e:
            raise UsageError(f"--data {str(args.data)!r}: {e}") from None
    d = setup_distributed(args.device, args.threads)
    rank, world, local_rank, gpu = d.rank, d.world, d.local_rank, d.gpu
    model, state = load_checkpoint_model(args.checkpoint, args.model, d.device)
    _check_classes(class_names(args.data), state, args.data, args.checkpoint)
    alpha = args.alpha if len(args.alpha) > 1 else args.alpha[0]
    crop, resize = _preprocessing(args, state)
    kw = dict(num_classes=state["num_classes"], m=args.m, k=args.k, anchor_ratio=args.anchor_ratio, alpha=alpha,
              group_size=args.group_size, seed=args.seed, crop=crop, resize=resize, device="gpu" if gpu else "cpu",
              device_id=local_rank if gpu else None, num_threads=args.threads or 2, rank=rank, world=world,
              partners=args.partners)
    scores, _ = score_dataset(model, args.data, progress=rank == 0, **kw)
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (scores.paths, scores.labels, scores.losses))
        scores = Scores(sum((p[0] for p in parts), []), np.concatenate([p[1] for p in parts]),
                        np.concatenate([p[2] for p in parts]))
    expected = {rel for rel, _ in files}
    if len(scores.paths) != len(expected) or set(scores.paths) != expected:
        raise RuntimeError(f"scored {len(scores.paths)} samples ({len(set(scores.paths))} distinct) "
                           f"for {len(expected)} files")
    order = np.argsort(scores.paths)  # a canonical order: the same for any number of processes
    scores = Scores([scores.paths[i] for i in order], scores.labels[order], scores.losses[order])
    keep = select(scores, args.ratio, measure=args.measure, selection=args.selection, interval=args.interval,
                  ascending=args.ascending, seed=args.seed)
    result = {"scored": len(scores.paths), "kept": len(keep), "out": args.out, "scores": outputs["scores"]}
    if rank == 0:
        write_scores(scores, result["scores"])
        write_file_list([(scores.paths[i], scores.labels[i]) for i in keep], args.out)
        # the summary (how the scores were made) before the figure: a figure that fails leaves scores a caller
        # (benchmarks/study_subsample.py) can still check and use
        atomic_write(outputs["summary"],
                     json.dumps({**result, "args": {k: v for k, v in vars(args).items() if k != "func"}},
                                indent=1, default=str))
        if args.figure:
            cv = scores.cv
            picks = [scores.paths[i] for i in np.argsort(-cv)[:3]] + [scores.paths[i] for i in np.argsort(cv)[:3]]
            _, captured = score_dataset(model, args.data, capture_paths=picks, **{**kw, "rank": 0, "world": 1})
            plot_figure(scores, {p: captured[p] for p in picks}, args.figure, class_names(args.data))
    teardown_distributed(d)
    return result, scores


def add_arguments(p):
    p.add_argument("--data", required=True, help="ImageNet-layout folder to score (one sub-folder per class)")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by kmix train")
    p.add_argument("--model", default=None, help="architecture (default: the checkpoint's)")
    p.add_argument("--ratio", type=float, required=True, help="fraction t of every class to keep")
    p.add_argument("--selection", default="interval", choices=SELECTIONS)
    p.add_argument("--interval", type=int, default=2, help="n for --selection interval")
    p.add_argument("--measure", default="cv", choices=MEASURES)
    p.add_argument("--ascending", action="store_true", help="keep the lowest values (e.g. easy samples by mean)")
    p.add_argument("--m", "--mixes", dest="m", type=int, default=10,
                   help="mixes per anchor (under torchrun write --mixes: torchrun reads --m as its own option)")
    p.add_argument("--k", type=int, default=3, help="images per mix (anchor + K-1 partners)")
    p.add_argument("--anchor-ratio", type=float, default=0.5)
    p.add_argument("--alpha", type=float, nargs="+", default=[2 / 9, 2 / 9], help="partners' Dirichlet alpha")
    p.add_argument("--group-size", type=int, default=64, help="anchors scored together (partners come from the group)")
    p.add_argument("--partners", default="fixed", choices=PARTNERS,
                   help="fixed: an anchor's M mixes share its partners, drawn once (the paper's Eq. 8); "
                        "redrawn: new partners for every mix")
    p.add_argument("--crop", type=int, default=None)
    p.add_argument("--resize", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, help="subset as a DALI file_list")
    p.add_argument("--scores", default=None, help="scores CSV (default: OUT with .csv)")
    p.add_argument("--figure", default=None, help="PNG like the paper's Figure 2")
