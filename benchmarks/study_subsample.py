"""Subsampling by uncertainty in the over-fitting regime (the paper's Figure 4a, small).

A pool of 6,000 Fashion-MNIST training images (600 per class); a DCutMix (K=3) model of the
mixing study's kind (``small-cnn-fc``) trained on the whole pool scores every image with
``kmix subsample`` (M=10 mixes, anchor share 0.5, two partners with alpha = (2/9, 2/9), kept for an
anchor's 10 mixes as in Eq. 8, or redrawn for every mix with ``--partners redrawn``); then
t = 5 %, 10 % and 20 % of every class are kept -- by high CV ("top" and "interval" n=2), at
random, by low mean mixed loss ("mean, easy") and by high mean mixed loss ("mean, hard") --
and the same model is trained from scratch on each subset with DCutMix K=3, three seeds each,
for the same number of images seen (the subsets are 300 to 1,200 images, the size of the mixing
study's training set, so these trainings are in the same over-fitting regime).

Resumable like the mixing study: one JSON per finished run under
``benchmarks/results/<tag>/`` (committed, with the pool's scores CSV), checkpoints and
subset lists under ``benchmarks/results/<tag>-runs/`` (ignored by git); the tag is ``subsample3``
for fixed partners and ``subsample2`` for redrawn ones (the study of 2026-11-25). Ends by writing
``<tag>-<date>.json/.md/.png`` from the runs finished so far (``--report`` does only that).

    python benchmarks/study_subsample.py            # about 1.5 hours on 2 cores (2 runs at a time)
    python benchmarks/study_subsample.py --quick    # a smoke run

The same scoring model with redrawn partners (the A/B of 2026-12-07; the random subsets do not depend on the
scores, so their runs are copied, not trained again):

    mkdir -p benchmarks/results/subsample3-redrawn benchmarks/results/subsample3-redrawn-runs
    cp -r benchmarks/results/subsample3-runs/full benchmarks/results/subsample3-redrawn-runs/
    cp benchmarks/results/subsample3/full.json benchmarks/results/subsample3/t*-random-*.json \
        benchmarks/results/subsample3-redrawn/
    python benchmarks/study_subsample.py --partners redrawn --tag subsample3-redrawn --measures cv random
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

SELECTIONS = [  # (label, measure, selection, ascending)
    ("high CV, top", "cv", "top", False),
    ("high CV, interval n=2", "cv", "interval", False),
    ("random", "random", "top", False),
    ("mean, easy", "mean", "top", True),
    ("mean, hard", "mean", "top", False),
]
POOL_PER_CLASS, VAL_PER_CLASS = 600, 300
DATA = ".demo/fashion-mnist-pool"
# How the pool is scored (kmix subsample's options); with the pool's counts and the scoring model they identify the
# scores, and are checked against the scores.json beside a scores.csv before it is reused.
SCORING = dict(m=10, k=3, anchor_ratio=0.5, alpha=[2 / 9, 2 / 9], group_size=64, seed=0)


def _regime():
    from study_mixing import REGIME

    return {k: v for k, v in REGIME.items() if k != "epochs"}


def _scores(path):
    """The scores CSV as the object ``dali_kmix.apps.subsample.select`` reads (paths, labels, cv, mean, std)."""
    from dali_kmix.apps.subsample import read_scores

    paths, labels, mean, std, cv = read_scores(path)
    return SimpleNamespace(paths=paths, labels=labels, mean=mean, std=std, cv=cv)


def check_scoring(scores_json: Path, wanted: dict):
    """Refuse to reuse the scores beside ``scores_json`` (kmix subsample's summary, its ``args``) if they were made
    with other settings than ``wanted`` (the scoring options, --partners, the pool's counts, the scoring model's
    ``finished`` stamp). Keys the summary lacks are not compared (the committed summaries predate the counts and the
    stamp: see ``common.identity_differences``); a scores.csv without its summary cannot be checked and is refused."""
    import json

    from common import identity_differences

    if not scores_json.is_file():
        raise SystemExit(f"{scores_json.with_suffix('.csv')} has no {scores_json.name} beside it, so what it was "
                         f"scored with is unknown; move it away (it is scored again) or restore {scores_json.name}")
    recorded = json.loads(scores_json.read_text()).get("args", {})
    diff = identity_differences(recorded, wanted)
    if diff:
        raise SystemExit(f"{scores_json.with_suffix('.csv')} was scored with other settings (differs in {diff}: "
                         f"recorded { {k: recorded[k] for k in diff} }, now { {k: wanted[k] for k in diff} }); "
                         f"move it away (it is scored again), or give another --tag")


def check_arguments(args):
    """The options, before anything is made or trained."""
    from common import check_unique
    from dali_kmix.apps.common import UsageError, check_at_least

    check_unique("--seeds", args.seeds)
    check_unique("--ratios", args.ratios)
    bad = [r for r in args.ratios if not 0.0 < r <= 1.0]
    if bad:
        raise UsageError(f"--ratios must each be in (0, 1], got {args.ratios}")
    for flag in ("--full-epochs", "--samples-seen", "--pass-size", "--jobs", "--train-per-class", "--val-per-class"):
        check_at_least(flag, getattr(args, flag[2:].replace("-", "_")))
    for s in args.seeds:
        check_at_least("--seeds", s, 0)


def main(argv=None):
    from common import add_data_arguments, data_identity, fashion_mnist, file_list_sha256, load_finished, run_pending
    from common import write_json
    from dali_kmix.apps.subsample import run as subsample
    from dali_kmix.apps.subsample import select, write_file_list

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(ap, POOL_PER_CLASS, VAL_PER_CLASS, DATA)
    ap.add_argument("--full-epochs", type=int, default=20, help="epochs of the scoring model on the whole pool")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    ap.add_argument("--samples-seen", type=int, default=60000, help="training images drawn per subset run")
    ap.add_argument("--pass-size", type=int, default=1000,
                    help="a subset's file list is repeated to about this many entries per DALI epoch (fewer "
                         "per-epoch overheads for tiny subsets; the images seen stay --samples-seen)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (each on one CPU thread)")
    ap.add_argument("--report", action="store_true", help="train nothing: tables and plot of the finished runs")
    ap.add_argument("--partners", default="fixed", choices=["fixed", "redrawn"],
                    help="kmix subsample --partners: an anchor's mixes share their partners (Eq. 8) or redraw them")
    ap.add_argument("--tag", default=None,
                    help="name of the results (default: subsample3 for fixed partners, subsample2 for redrawn); a "
                         "finished run or scoring model copied under another tag's folder is reused, not trained")
    ap.add_argument("--measures", nargs="+", default=["cv", "random", "mean"], choices=["cv", "random", "mean"],
                    help="which selections to train (the others are left out of the tables)")
    args = ap.parse_args(argv)
    check_arguments(args)
    regime = _regime()
    if args.quick:
        args.train_per_class, args.val_per_class, args.full_epochs, args.seeds = 20, 10, 1, [0]
        args.samples_seen, args.pass_size, args.ratios, args.jobs = 300, 300, [0.05, 0.1], 1
        regime.update(batch_size=128)
    data = Path(fashion_mnist(args))
    out = Path(args.out)
    tag = args.tag or {"fixed": "subsample3", "redrawn": "subsample2"}[args.partners]
    tag += "-quick" if args.quick else ""
    rec_dir, runs_dir = out / tag, out / f"{tag}-runs"
    threads = 1 if args.jobs > 1 else None
    t0 = time.perf_counter()

    # 1. The scoring model: DCutMix K=3 on the whole pool.
    full_cfg = dict(regime, data=str(data), out=str(runs_dir / "full"), mix="dcutmix", k=3, alpha=1.0, seed=0,
                    epochs=args.full_epochs, eval_every=max(1, args.full_epochs // 4), threads=None)
    identity = data_identity(args)
    full_job = (rec_dir / "full.json", full_cfg, {"label": "scoring model (whole pool)", "run": "full", "seed": 0,
                                                  "identity": identity})
    scores_csv = rec_dir / "scores.csv"
    if not args.report:
        if run_pending([full_job], 1):
            raise SystemExit("the scoring model failed to train (see above)")
    full = load_finished(*full_job[:2], identity)
    if full is not None:
        print(f"scoring model: top-1 error {100 * full['final_val_top1_err']:.2f} %, train loss "
              f"{full['final_train_loss']:.3f}, val loss {full['final_val_loss']:.3f}", flush=True)
    # 2. Score the pool once (seed 0); every subset is a selection from these scores. What they were scored with
    # goes into scores.json (kmix subsample's summary, from its arguments: the extra ones are only recorded).
    scoring = dict(SCORING, partners=args.partners, pool_per_class=args.train_per_class)
    if full is not None:
        scoring["scoring_model_finished"] = full["finished"]
    if not scores_csv.is_file() and not args.report:
        subsample(Namespace(
            data=str(data / "train"), checkpoint=str(runs_dir / "full" / "checkpoint.pt"), model=None,
            ratio=args.ratios[0], selection="top", interval=2, measure="cv", ascending=False, crop=regime["crop"],
            resize=regime["val_resize"], device="cpu", threads=None, out=str(runs_dir / "subset-scoring.txt"),
            scores=str(scores_csv), figure=str(out / f"{tag}-figure2.png"), **scoring))
        print(f"scored the pool ({time.perf_counter() - t0:.0f} s)", flush=True)
    if not scores_csv.is_file():
        raise SystemExit(f"{scores_csv} does not exist yet: run without --report first")
    check_scoring(scores_csv.with_suffix(".json"), scoring)
    scores = _scores(scores_csv)

    # 3. The subsets, trained from scratch with DCutMix K=3.
    jobs = []
    for ratio in args.ratios:
        for label, measure, selection, ascending in SELECTIONS:
            if measure not in args.measures:
                continue
            for seed in args.seeds:
                key = f"t={ratio:g}, {label}"
                name = f"t{ratio:g}-{measure}-{selection}{'-asc' if ascending else ''}-s{seed}"
                keep = select(scores, ratio, measure=measure, selection=selection, interval=2, ascending=ascending,
                              seed=seed if measure == "random" else 0)  # random subsets differ per seed
                repeat = max(1, round(args.pass_size / len(keep)))
                subset = runs_dir / f"{name}.txt"
                pairs = [(scores.paths[i], scores.labels[i]) for i in keep] * repeat
                if not args.report:
                    write_file_list(pairs, subset)
                epochs = max(1, round(args.samples_seen / (len(keep) * repeat)))
                cfg = dict(regime, train_dir=str(data / "train"), val_dir=str(data / "val"), train_list=str(subset),
                           out=str(runs_dir / name), mix="dcutmix", k=3, alpha=1.0, seed=seed, epochs=epochs,
                           eval_every=max(1, epochs // 5), threads=threads)
                jobs.append((rec_dir / f"{name}.json", cfg,
                             {"label": key, "run": name, "seed": seed, "ratio": ratio, "measure": measure,
                              "selection": selection, "ascending": ascending, "kept": len(keep), "repeat": repeat,
                              "images_seen": epochs * len(keep) * repeat,
                              "identity": dict(identity, train_list_sha256=file_list_sha256(pairs))}))
    failed = 0 if args.report else run_pending(jobs, args.jobs)
    results = {}
    for path, cfg, rec in jobs:
        results.setdefault(rec["label"], [])
        r = load_finished(path, cfg, rec["identity"])
        if r is not None:
            results[rec["label"]].append(r)
    missing = [Path(p).stem for p, _, _ in jobs if not Path(p).is_file()]

    lines = ["| subset | images | runs | top-1 error (%) mean ± std | per seed | final train loss | final val loss |",
             "|---|---|---|---|---|---|---|"]
    for key, rs in results.items():
        if not rs:
            lines.append(f"| {key} | | 0 | (not run yet) | | | |")
            continue
        e = 100 * np.array([r["final_val_top1_err"] for r in rs])
        lines.append(f"| {key} | {rs[0]['kept']} | {len(rs)} | {e.mean():.2f} ± "
                     f"{e.std(ddof=1) if len(e) > 1 else 0:.2f} | {', '.join(f'{x:.2f}' for x in e)} | "
                     f"{np.mean([r['final_train_loss'] for r in rs]):.3f} | "
                     f"{np.mean([r['final_val_loss'] for r in rs]):.3f} |")
    # High CV against random, per seed (the random subset of seed s against the CV subsets trained with seed s).
    lines += ["", "| difference (points of top-1 error) | per seed | mean ± std |", "|---|---|---|"]
    for ratio in args.ratios:
        rnd = {r["seed"]: 100 * r["final_val_top1_err"] for r in results.get(f"t={ratio:g}, random", [])}
        for label, *_ in SELECTIONS:
            if label == "random":
                continue
            oth = {r["seed"]: 100 * r["final_val_top1_err"] for r in results.get(f"t={ratio:g}, {label}", [])}
            seeds = sorted(set(rnd) & set(oth))
            if seeds:
                d = np.array([oth[s] - rnd[s] for s in seeds])
                lines.append(f"| t={ratio:g}: {label} − random | {', '.join(f'{x:+.2f}' for x in d)} | "
                             f"{d.mean():+.2f} ± {d.std(ddof=1) if len(d) > 1 else 0:.2f} |")
    md = "\n".join(lines)
    if missing:
        md += f"\n\nMissing runs ({len(missing)}): {', '.join(missing)}"
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    name = f"{tag}-{stamp}"
    meta = {"date": stamp, "data": f"Fashion-MNIST pool {10 * args.train_per_class} train / "
                                   f"{10 * args.val_per_class} val",
            "scoring_model": {"epochs": args.full_epochs, "final_val_top1_err": full and full["final_val_top1_err"],
                              "final_train_loss": full and full["final_train_loss"],
                              "final_val_loss": full and full["final_val_loss"]},
            "scoring": f"M=10, K=3, anchor 0.5, alpha (2/9, 2/9), group 64, partners {args.partners}",
            "train": regime,
            "samples_seen_per_run": args.samples_seen, "seeds": args.seeds, "jobs": args.jobs,
            "cpu_cores": os.cpu_count(), "runs_finished": len(jobs) - len(missing), "runs_missing": missing,
            "total_s_this_invocation": round(time.perf_counter() - t0)}
    write_json(out / f"{name}.json", {"meta": meta, "results": results})
    (out / f"{name}.md").write_text(md + "\n")
    if any(results.values()):
        _plot(results, args.ratios, out / f"{name}.png")
    print(md)
    print(f"wrote {out / name}.json/.md/.png")
    return 1 if failed else 0


def _plot(results, ratios, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.3))
    for i, (label, *_) in enumerate(SELECTIONS):
        xs, means, stds = [], [], []
        for r in ratios:
            e = 100 * np.array([x["final_val_top1_err"] for x in results.get(f"t={r:g}, {label}", [])])
            if len(e):
                xs.append(r)
                means.append(e.mean())
                stds.append(e.std(ddof=1) if len(e) > 1 else 0)
        if xs:
            ax.errorbar(xs, means, yerr=stds, marker="os^vD"[i], capsize=4, label=label)
    ax.set_xlabel("subset ratio t")
    ax.set_ylabel("val top-1 error (%)")
    ax.set_xticks(ratios)
    ax.legend(fontsize=8)
    ax.set_title("Training on subsets of a 6,000-image Fashion-MNIST pool (DCutMix K=3, small-cnn-fc)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
