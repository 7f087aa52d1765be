"""Does mixing more than two images help? The study in a regime where the baseline over-fits.

A CNN that can memorise its training set (``small-cnn-fc`` of ``dali_kmix.apps.train``: the
small CNN's convolutions with a 1.7 M-parameter fully connected head) trained through the
DALI iterator on a small class-balanced subset of Fashion-MNIST (Debian's
``dataset-fashion-mnist``) for many epochs, so that without mixing its training loss falls
far below its validation loss. The grid: none, Mixup, CutMix, DMixup K=3, DCutMix K=3 and
K=5, Saliency-DCutMix K=3 at alpha = 1, then the K > 2 methods again at the alpha the paper
reports for them (1/3 for K=3, 0.2 for K=5); three seeds each, the same seeds for every
method. Then the flatness of the final models (the paper's Figure 3b): validation loss under
Gaussian perturbations of the weights of growing size.

Every run writes one small JSON (``benchmarks/results/study2/<run>.json``, committed) as soon
as it finishes; its checkpoint and curves go to ``benchmarks/results/study2-runs/<run>/``
(ignored by git). Running the script again skips the finished runs and resumes a run that was
cut off from its checkpoint, so the grid can be run over several sittings. Every invocation
ends by writing ``study2-<date>.json/.md/.png`` and ``study2-flatness-<date>.png`` from the
runs finished so far (``--report`` does only that).

    python benchmarks/study_mixing.py               # about 2 hours on 2 cores (2 runs at a time)
    python benchmarks/study_mixing.py --report      # tables and plots of what is finished
    python benchmarks/study_mixing.py --quick       # a smoke run (1 seed, 1 epoch)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path

import numpy as np

METHODS = [  # (label, --mix, K)
    ("none", "none", 1),
    ("Mixup (K=2)", "mixup", 2),
    ("CutMix (K=2)", "cutmix", 2),
    ("DMixup (K=3)", "dmixup", 3),
    ("DCutMix (K=3)", "dcutmix", 3),
    ("DCutMix (K=5)", "dcutmix", 5),
    ("Saliency-DCutMix (K=3)", "saliency-dcutmix", 3),
]
# The paper's second alpha for the K > 2 methods (alpha = 1/3 for K=3 in its CIFAR-100, ImageNet
# and CIFAR-10 tables, 0.2 for DCutMix K=5 with PyramidNet-110); Mixup and CutMix keep alpha = 1.
SECOND_ALPHA = {("dmixup", 3): (1 / 3, "1/3"), ("dcutmix", 3): (1 / 3, "1/3"), ("dcutmix", 5): (0.2, "0.2"),
                ("saliency-dcutmix", 3): (1 / 3, "1/3")}
# Paired differences, per seed: (K > 2 method, its K = 2 counterpart).
PAIRS = [("DMixup (K=3)", "Mixup (K=2)"), ("DCutMix (K=3)", "CutMix (K=2)"), ("DCutMix (K=5)", "CutMix (K=2)"),
         ("Saliency-DCutMix (K=3)", "CutMix (K=2)")]
FLAT_METHODS = ["none", "CutMix (K=2)", "DCutMix (K=3)"]
SIGMAS = [0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4]

# The regime (chosen by pilot runs, see the README): 100 images per class, 100 epochs.
REGIME = dict(model="small-cnn-fc", epochs=100, batch_size=64, optimizer="sgd", lr=0.05, weight_decay=5e-4,
              crop=28, val_resize=28, random_area=(0.6, 1.0), device="cpu", progress=False, mix_on="float32",
              eval_every=10)
TRAIN_PER_CLASS, VAL_PER_CLASS = 100, 300
DATA = ".demo/fashion-mnist-study2"


def grid(second_alpha: bool):
    """``(label, mix, K, alpha, alpha_text)`` in run order: alpha = 1 first, then the paper's second alpha."""
    rows = [(label, mix, k, 1.0, "1") for label, mix, k in METHODS]
    if second_alpha:
        for label, mix, k in METHODS:
            if (mix, k) in SECOND_ALPHA:
                a, text = SECOND_ALPHA[(mix, k)]
                rows.append((f"{label[:-1]}, α={text})", mix, k, a, text))
    return rows


def run_name(mix, k, alpha_text, seed):
    return f"{mix}-k{k}-a{alpha_text.replace('/', 'over')}-s{seed}"


def _errs(runs):
    return 100 * np.array([r["final_val_top1_err"] for r in runs])


def _sd(x):
    return float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


def table(results) -> str:
    lines = ["| method | runs | top-1 error (%) mean ± std | per seed | final train loss | final val loss | "
             "val / train loss |", "|---|---|---|---|---|---|---|"]
    for label, runs in results.items():
        if not runs:
            lines.append(f"| {label} | 0 | (not run yet) | | | | |")
            continue
        e = _errs(runs)
        tl = np.array([r["final_train_loss"] for r in runs])
        vl = np.array([r["final_val_loss"] for r in runs])
        lines.append(f"| {label} | {len(runs)} | {e.mean():.2f} ± {_sd(e):.2f} | "
                     f"{', '.join(f'{x:.2f}' for x in e)} | {tl.mean():.3f} | {vl.mean():.3f} | "
                     f"{(vl / tl).mean():.1f} |")
    return "\n".join(lines)


def paired(results, labels=None):
    """Per-seed differences of top-1 error (points), K > 2 minus K = 2 and every method minus none."""
    pairs = list(PAIRS)
    for label in results:  # the second-alpha variants against the same K = 2 counterparts
        for big, small in PAIRS:
            if label != big and label.startswith(big[:-1] + ","):
                pairs.append((label, small))
    pairs += [(label, "none") for label in results if label != "none"]
    out = []
    for big, small in pairs:
        a = {r["seed"]: 100 * r["final_val_top1_err"] for r in results.get(big, [])}
        b = {r["seed"]: 100 * r["final_val_top1_err"] for r in results.get(small, [])}
        seeds = sorted(set(a) & set(b))
        d = np.array([a[s] - b[s] for s in seeds])
        out.append({"pair": f"{big} − {small}", "seeds": seeds, "diff": d.tolist(),
                    "mean": float(d.mean()) if len(d) else None, "std": _sd(d) if len(d) else None,
                    "better": int((d < 0).sum())})
    return out


def paired_table(rows) -> str:
    lines = ["| difference (points of top-1 error) | seeds | per seed | mean ± std | seeds where the first is better |",
             "|---|---|---|---|---|"]
    for r in rows:
        if not r["seeds"]:
            lines.append(f"| {r['pair']} | 0 | (not run yet) | | |")
            continue
        lines.append(f"| {r['pair']} | {len(r['seeds'])} | {', '.join(f'{x:+.2f}' for x in r['diff'])} | "
                     f"{r['mean']:+.2f} ± {r['std']:.2f} | {r['better']} of {len(r['seeds'])} |")
    return "\n".join(lines)


def plot(results, path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [m for m in results if results[m]]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(17, 4.6))
    errs = [_errs(results[m]) for m in labels]
    a.bar(range(len(labels)), [e.mean() for e in errs], yerr=[_sd(e) for e in errs], capsize=4,
          color=[f"C{i}" for i in range(len(labels))])
    for i, e in enumerate(errs):
        a.plot([i] * len(e), e, "k.", ms=4)
    a.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    a.set_ylabel("final val top-1 error (%)")
    a.set_ylim(max(0, min(e.min() for e in errs) - 2), max(e.max() for e in errs) + 1)
    for i, m in enumerate(labels):
        ep = [h["epoch"] for h in results[m][0]["history"] if h["val_top1_err"] is not None]
        curves = np.array([[100 * h["val_top1_err"] for h in r["history"] if h["val_top1_err"] is not None]
                           for r in results[m]])
        b.plot(ep, curves.mean(0), "o-", ms=3, color=f"C{i}", label=m)
    b.set_xlabel("epoch")
    b.set_ylabel("val top-1 error (%), mean of seeds")
    b.legend(fontsize=7)
    for i, m in enumerate(labels):
        if m not in FLAT_METHODS:
            continue
        runs = results[m]
        tr = np.array([[h["train_loss"] for h in r["history"]] for r in runs]).mean(0)
        c.plot(np.arange(1, len(tr) + 1), tr, "-", color=f"C{i}", label=f"{m}: train (mixed targets)")
        ep = [h["epoch"] for h in runs[0]["history"] if h["val_loss"] is not None]
        vl = np.array([[h["val_loss"] for h in r["history"] if h["val_loss"] is not None] for r in runs]).mean(0)
        c.plot(ep, vl, "s--", ms=3, color=f"C{i}", label=f"{m}: val")
    c.set_yscale("log")
    c.set_xlabel("epoch")
    c.set_ylabel("cross-entropy, mean of seeds")
    c.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------- flatness (Figure 3b)


def perturbed_losses(model, images, labels, sigmas, directions: int, seed: int, batch: int = 500):
    """Validation loss of ``model`` with every parameter tensor ``W`` moved to ``W + s * |W| * u``,
    ``u`` a Gaussian direction normalised per tensor (``|u| = 1``), for each ``s`` in ``sigmas`` and
    ``directions`` random directions (the same directions for every ``s``); ``(len(sigmas), directions)``."""
    import torch
    import torch.nn.functional as F

    model.eval()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = np.zeros((len(sigmas), directions))
    with torch.no_grad():
        for d in range(directions):
            g = torch.Generator().manual_seed(seed * 1000 + d)
            u = {}
            for n, w in base.items():
                r = torch.randn(w.shape, generator=g)
                u[n] = r / r.norm().clamp_min(1e-12) * w.norm()
            for i, s in enumerate(sigmas):
                for n, p in model.named_parameters():
                    p.copy_(base[n] + s * u[n])
                loss = sum(float(F.cross_entropy(model(images[j:j + batch]), labels[j:j + batch], reduction="sum"))
                           for j in range(0, len(labels), batch))
                out[i, d] = loss / len(labels)
        for n, p in model.named_parameters():
            p.copy_(base[n])
    return out


def flatness(results, runs_dir: Path, rec_dir: Path, data: Path, sigmas, directions: int, log=print):
    """Per-run flatness records (``flat-<run>.json``), computed for finished runs that lack one.

    A record is reused when it has the same sigmas and directions and was measured on the model of the run's record
    (its ``model_finished`` is the run record's ``finished`` stamp); one from another model (the run was trained
    again) is measured again. Records written before the stamp was kept (the committed ones) lack it and are reused.
    """
    import torch

    from common import identity_differences, load_val, write_json
    from dali_kmix.apps.subsample import load_checkpoint_model

    val = None
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    flat = {}
    for label in FLAT_METHODS:
        flat[label] = []
        for r in results.get(label, []):
            path = rec_dir / f"flat-{r['run']}.json"
            if path.is_file():
                rec = json.loads(path.read_text())
                if (rec["sigmas"] == list(sigmas) and rec["directions"] == directions
                        and not identity_differences(rec, {"model_finished": r.get("finished")})):
                    flat[label].append(rec)
                    continue
            ckpt = runs_dir / r["run"] / "checkpoint.pt"
            if not ckpt.is_file():
                log(f"flatness: no checkpoint {ckpt}, skipped", flush=True)
                continue
            if val is None:
                val = load_val(data, crop=REGIME["crop"])
            model, _ = load_checkpoint_model(ckpt)
            t0 = time.perf_counter()
            losses = perturbed_losses(model, *val, sigmas, directions, seed=r["seed"])
            rec = {"label": label, "run": r["run"], "seed": r["seed"], "model_finished": r.get("finished"),
                   "sigmas": list(sigmas),
                   "directions": directions, "val_loss": losses.tolist(),
                   "scaling": "per parameter tensor W: W + sigma * |W| * u, u ~ N(0, I) normalised to |u| = 1"}
            write_json(path, rec)
            flat[label].append(rec)
            log(f"flatness {r['run']}: val loss {losses.mean(1).round(3).tolist()} "
                f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return flat


def plot_flatness(flat, path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.3))
    for i, label in enumerate(FLAT_METHODS):
        recs = flat.get(label, [])
        if not recs:
            continue
        s = np.array(recs[0]["sigmas"])
        all_ = np.concatenate([np.array(r["val_loss"]) for r in recs], axis=1)  # (sigmas, seeds * directions)
        color = f"C{[m for m, _, _ in METHODS].index(label)}"
        ax.plot(s, all_.mean(1), "o-", color=color, label=f"{label} ({len(recs)} models x "
                                                          f"{recs[0]['directions']} directions)")
        ax.fill_between(s, all_.min(1), all_.max(1), color=color, alpha=0.2)
    ax.set_xlabel("σ (perturbation norm / weight norm, per parameter tensor)")
    ax.set_ylabel("validation loss (mean; band: min–max)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    from common import add_data_arguments, check_unique, data_identity, fashion_mnist, load_finished, run_pending
    from common import write_json
    from dali_kmix.apps.common import check_at_least

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(ap, TRAIN_PER_CLASS, VAL_PER_CLASS, DATA)
    ap.add_argument("--epochs", type=int, default=REGIME["epochs"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-second-alpha", dest="second_alpha", action="store_false",
                    help="only alpha = 1 (the paper's second alpha of the K > 2 methods is run after it otherwise)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (each on one CPU thread)")
    ap.add_argument("--report", action="store_true", help="train nothing: tables and plots of the finished runs")
    ap.add_argument("--directions", type=int, default=3, help="random directions per model for the flatness")
    args = ap.parse_args(argv)
    check_unique("--seeds", args.seeds)
    for flag in ("--epochs", "--jobs", "--directions", "--train-per-class", "--val-per-class"):
        check_at_least(flag, getattr(args, flag[2:].replace("-", "_")))
    sigmas = SIGMAS
    regime = dict(REGIME, epochs=args.epochs)
    if args.quick:
        args.train_per_class, args.val_per_class, args.seeds, args.jobs = 20, 10, [0], 1
        args.second_alpha, args.directions, sigmas = False, 1, [0.0, 0.1]
        regime.update(epochs=1, eval_every=1, batch_size=128)
    data = fashion_mnist(args)
    out = Path(args.out)
    tag = "study2-quick" if args.quick else "study2"
    rec_dir, runs_dir = out / tag, out / f"{tag}-runs"  # records (committed), checkpoints (ignored by git)
    threads = 1 if args.jobs > 1 else None
    tasks = []
    rows = grid(args.second_alpha)
    for seed in args.seeds:  # seed-major for alpha = 1, so a part-finished grid has whole seeds to compare
        for label, mix, k, alpha, atext in rows:
            if alpha == 1.0:
                tasks.append((label, mix, k, alpha, atext, seed))
    for label, mix, k, alpha, atext in rows:
        if alpha != 1.0:
            tasks += [(label, mix, k, alpha, atext, seed) for seed in args.seeds]
    jobs = []
    for label, mix, k, alpha, atext, seed in tasks:
        name = run_name(mix, k, atext, seed)
        cfg = dict(regime, data=str(data), out=str(runs_dir / name), mix=mix, k=max(k, 2), alpha=alpha, seed=seed,
                   threads=threads)
        jobs.append((rec_dir / f"{name}.json", cfg, {"label": label, "run": name, "mix": mix, "k": k,
                                                     "alpha": alpha, "seed": seed, "identity": data_identity(args)}))
    t0 = time.perf_counter()
    failed = 0 if args.report else run_pending(jobs, args.jobs)
    results = {label: [] for label, *_ in rows}
    for path, cfg, rec in jobs:
        r = load_finished(path, cfg, rec["identity"])
        if r is not None:
            results[rec["label"]].append(r)
    missing = [Path(p).stem for p, _, _ in jobs if not Path(p).is_file()]
    flat = flatness(results, runs_dir, rec_dir, data, sigmas, args.directions)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    n_params = None
    try:
        from dali_kmix.apps.train import build_model

        n_params = sum(p.numel() for p in build_model(regime["model"], 10).parameters())
    except Exception:
        pass
    meta = {"date": stamp, "data": f"Fashion-MNIST, {args.train_per_class}/class train "
                                   f"({10 * args.train_per_class}), {args.val_per_class}/class val "
                                   f"({10 * args.val_per_class}) from the test split",
            "train": {k: v for k, v in regime.items() if k not in ("progress",)}, "model_parameters": n_params,
            "seeds": args.seeds, "device": "cpu", "cpu_cores": os.cpu_count(), "jobs": args.jobs,
            "runs_finished": len(jobs) - len(missing), "runs_missing": missing,
            "flatness": {"sigmas": list(sigmas), "directions": args.directions,
                         "scaling": "per parameter tensor W: W + sigma * |W| * u, u ~ N(0, I), |u| = 1"},
            "total_s_this_invocation": round(time.perf_counter() - t0, 1)}
    diffs = paired(results)
    summary = {"meta": meta, "results": results, "paired_differences": diffs,
               "flatness": {label: [{k: r[k] for k in ("run", "seed", "val_loss")} for r in recs]
                            for label, recs in flat.items()}}
    name = f"{tag}-{stamp}"
    write_json(out / f"{name}.json", summary)
    if any(results.values()):
        plot(results, out / f"{name}.png",
             f"{regime['model']}, {meta['data']}, {regime['epochs']} epochs, seeds {args.seeds} "
             f"({meta['runs_finished']} of {len(jobs)} runs finished)")
    if any(flat.values()):
        plot_flatness(flat, out / f"{tag}-flatness-{stamp}.png",
                      f"Flatness: val loss of the final models under weight noise ({regime['model']})")
    md = table(results) + "\n\n" + paired_table(diffs)
    if missing:
        md += f"\n\nMissing runs ({len(missing)}): {', '.join(missing)}"
    (out / f"{name}.md").write_text(md + "\n")
    print(md)
    print(f"wrote {out / name}.json/.png/.md")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
