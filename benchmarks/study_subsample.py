"""High-CV subsampling against random subsets of the same size (the paper's Figure 4a, small).

On the Fashion-MNIST tree of the mixing study (10,000 training images, 5,000 validation
images): train a small CNN on all of it (DCutMix K=3), score every training image with
``kmix subsample`` (M=10 mixes, anchor share 0.5, two partners with alpha = (2/9, 2/9)),
keep t = 5 % and 10 % of every class by high CV ("top" and "interval", n=2) or at
random, and train on each subset with DCutMix K=3, three seeds each. Writes
``benchmarks/results/subsample-<date>.json/.md/.png`` and the Figure-2-style picture.

    python benchmarks/study_subsample.py            # about 15 minutes on 2 cores
    python benchmarks/study_subsample.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from argparse import Namespace
from pathlib import Path

import numpy as np

SELECTIONS = [("high CV, top", "cv", "top"), ("high CV, interval n=2", "cv", "interval"), ("random", "random", "top")]


def main(argv=None):
    from common import add_data_arguments, fashion_mnist
    from dali_kmix.apps.subsample import run as subsample
    from dali_kmix.apps.subsample import select, write_file_list
    from dali_kmix.apps.train import TrainConfig, train

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(ap)
    ap.add_argument("--full-epochs", type=int, default=14)
    ap.add_argument("--checkpoint", default=None, help="a full-data checkpoint to score with (default: train one)")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.1])
    ap.add_argument("--samples-seen", type=int, default=30000, help="training images drawn per subset run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args(argv)
    if args.quick:
        args.train_per_class, args.val_per_class, args.full_epochs, args.seeds = 60, 20, 1, [0]
        args.samples_seen = 600
    data = Path(fashion_mnist(args))
    out = Path(args.out)
    runs = out / "subsample-runs"
    t0 = time.perf_counter()
    common = dict(model="small-cnn", mix="dcutmix", k=3, alpha=1.0, batch_size=128, optimizer="sgd", lr=0.05,
                  weight_decay=5e-4, crop=28, val_resize=28, random_area=(0.6, 1.0), device="cpu", progress=False,
                  mix_on="float32")  # as the run reported in the README
    ckpt = args.checkpoint
    if ckpt is None:
        full = train(TrainConfig(data=str(data), out=str(runs / "full"), epochs=args.full_epochs, seed=0, **common))
        ckpt = str(runs / "full" / "checkpoint.pt")
        print(f"full data: top-1 error {100 * full['final_val_top1_err']:.2f} % ({time.perf_counter() - t0:.0f} s)")
    # Score once (seed 0); every subset below is a selection from these scores.
    _, scores = subsample(Namespace(
        data=str(data / "train"), checkpoint=ckpt, model=None, ratio=args.ratios[0], selection="top", interval=2,
        measure="cv", ascending=False, m=10, k=3, anchor_ratio=0.5, alpha=[2 / 9, 2 / 9], group_size=64, crop=28,
        resize=28, seed=0, device="cpu", threads=None, out=str(runs / "subset-scoring.txt"),
        scores=str(runs / "scores.csv"), figure=str(out / "subsample-figure2.png")))
    results = {}
    for ratio in args.ratios:
        for label, measure, selection in SELECTIONS:
            key = f"t={ratio:g}, {label}"
            results[key] = []
            for seed in args.seeds:
                subset = runs / f"subset-{ratio:g}-{measure}-{selection}-s{seed}.txt"
                keep = select(scores, ratio, measure=measure, selection=selection, interval=2,
                              seed=seed if measure == "random" else 0)  # random subsets differ per seed
                write_file_list([(scores.paths[i], scores.labels[i]) for i in keep], subset)
                res = {"kept": len(keep)}
                epochs = max(1, round(args.samples_seen / res["kept"]))
                s = train(TrainConfig(train_dir=str(data / "train"), val_dir=str(data / "val"), train_list=str(subset),
                                      out=str(runs / subset.stem), epochs=epochs, seed=seed,
                                      eval_every=epochs, **common))
                results[key].append({"seed": seed, "kept": res["kept"], "epochs": epochs,
                                     "final_val_top1_err": s["final_val_top1_err"]})
                print(f"{key:>32} seed {seed}: {res['kept']} images, {epochs} epochs, top-1 error "
                      f"{100 * s['final_val_top1_err']:.2f} % ({time.perf_counter() - t0:.0f} s)", flush=True)
    lines = ["| subset | images | top-1 error (%) mean ± std | per seed |", "|---|---|---|---|"]
    for key, rs in results.items():
        e = 100 * np.array([r["final_val_top1_err"] for r in rs])
        lines.append(f"| {key} | {rs[0]['kept']} | {e.mean():.2f} ± {e.std(ddof=1) if len(e) > 1 else 0:.2f} | "
                     f"{', '.join(f'{x:.2f}' for x in e)} |")
    md = "\n".join(lines)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    name = f"subsample{'-quick' if args.quick else ''}-{stamp}"
    meta = {"data": f"Fashion-MNIST {10 * args.train_per_class} train / {10 * args.val_per_class} val",
            "scoring": "M=10, K=3, anchor 0.5, alpha (2/9, 2/9), group 64", "train": common,
            "samples_seen_per_run": args.samples_seen, "seeds": args.seeds, "total_s": round(time.perf_counter() - t0)}
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    (out / f"{name}.md").write_text(md + "\n")
    _plot(results, args.ratios, out / f"{name}.png")
    print(md)
    print(f"wrote {out / name}.json/.md/.png in {meta['total_s']} s")


def _plot(results, ratios, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, _, _) in enumerate(SELECTIONS):
        means, stds = [], []
        for r in ratios:
            e = 100 * np.array([x["final_val_top1_err"] for x in results[f"t={r:g}, {label}"]])
            means.append(e.mean())
            stds.append(e.std(ddof=1) if len(e) > 1 else 0)
        ax.errorbar(ratios, means, yerr=stds, marker="os^"[i], capsize=4, label=label)
    ax.set_xlabel("subset ratio t")
    ax.set_ylabel("val top-1 error (%)")
    ax.set_xticks(ratios)
    ax.legend()
    ax.set_title("Training on subsets of Fashion-MNIST (DCutMix K=3, small CNN)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
