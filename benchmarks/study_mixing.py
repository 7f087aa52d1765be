"""Does mixing more than two images help? None, Mixup, CutMix, DMixup (K=3), DCutMix (K=3, K=5).

A small CNN trained through the DALI iterator (``dali_kmix.apps.train``) on a class-balanced
subset of Fashion-MNIST (Debian's ``dataset-fashion-mnist``), three seeds per method,
all on the CPU. Writes ``benchmarks/results/study-<date>.json``, a PNG plot and a
Markdown table (mean +- std of the final top-1 error), and prints the table.

    python benchmarks/study_mixing.py                 # about 45 minutes on 2 cores
    python benchmarks/study_mixing.py --quick         # a smoke run (1 seed, 1 epoch)
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
]


def table(results) -> str:
    lines = ["| method | top-1 error (%) mean ± std | per seed | train img/s |", "|---|---|---|---|"]
    for label, runs in results.items():
        errs = 100 * np.array([r["final_val_top1_err"] for r in runs])
        ips = np.mean([np.mean([h["train_images_per_s"] for h in r["history"]]) for r in runs])
        lines.append(f"| {label} | {errs.mean():.2f} ± {errs.std(ddof=1) if len(errs) > 1 else 0:.2f} | "
                     f"{', '.join(f'{e:.2f}' for e in errs)} | {ips:.0f} |")
    return "\n".join(lines)


def plot(results, path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    labels = list(results)
    errs = [100 * np.array([r["final_val_top1_err"] for r in results[m]]) for m in labels]
    a.bar(range(len(labels)), [e.mean() for e in errs], yerr=[e.std(ddof=1) if len(e) > 1 else 0 for e in errs],
          capsize=4, color=[f"C{i}" for i in range(len(labels))])
    for i, e in enumerate(errs):
        a.plot([i] * len(e), e, "k.", ms=4)
    a.set_xticks(range(len(labels)), labels, rotation=25, ha="right")
    a.set_ylabel("final val top-1 error (%)")
    lo = min(e.min() for e in errs)
    a.set_ylim(max(0, lo - 2), max(e.max() for e in errs) + 1)
    for i, m in enumerate(labels):
        curves = np.array([[100 * h["val_top1_err"] for h in r["history"]] for r in results[m]])
        ep = np.arange(1, curves.shape[1] + 1)
        b.plot(ep, curves.mean(0), color=f"C{i}", label=m)
    b.set_xlabel("epoch")
    b.set_ylabel("val top-1 error (%), mean of seeds")
    b.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    from common import add_data_arguments, fashion_mnist
    from dali_kmix.apps.train import TrainConfig, train

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(ap)
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--alpha", type=float, default=1.0)
    args = ap.parse_args(argv)
    if args.quick:
        args.train_per_class, args.val_per_class, args.epochs, args.seeds = 60, 20, 1, [0]
    data = fashion_mnist(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, t0 = {}, time.perf_counter()
    for label, mix, k in METHODS:
        results[label] = []
        for seed in args.seeds:
            cfg = TrainConfig(data=str(data), out=str(out / "study-runs" / f"{mix}-k{k}-s{seed}"), model="small-cnn",
                              mix=mix, k=max(k, 2), alpha=args.alpha, epochs=args.epochs, batch_size=128,
                              optimizer="sgd", lr=0.05, weight_decay=5e-4, crop=28, val_resize=28,
                              random_area=(0.6, 1.0), seed=seed, device="cpu", progress=False,
                              mix_on="float32")  # as the run reported in the README
            s = train(cfg)
            s.pop("config")
            results[label].append(s)
            print(f"{label:>15} seed {seed}: top-1 error {100 * s['final_val_top1_err']:.2f} % "
                  f"({time.perf_counter() - t0:.0f} s so far)", flush=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    meta = {"date": stamp, "data": f"Fashion-MNIST, {args.train_per_class}/class train "
                                   f"({10 * args.train_per_class}), {args.val_per_class}/class val "
                                   f"({10 * args.val_per_class}) from the test split",
            "model": "small-cnn", "epochs": args.epochs, "batch_size": 128, "lr": 0.05, "alpha": args.alpha,
            "seeds": args.seeds, "crop": 28, "random_area": [0.6, 1.0], "device": "cpu", "cpu_cores": os.cpu_count(),
            "total_s": round(time.perf_counter() - t0, 1)}
    name = f"study{'-quick' if args.quick else ''}-{stamp}"
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    plot(results, out / f"{name}.png", f"small CNN, {meta['data']}, {args.epochs} epochs, alpha={args.alpha}, "
                                       f"{len(args.seeds)} seed(s)")
    md = table(results)
    (out / f"{name}.md").write_text(md + "\n")
    print(md)
    print(f"wrote {out / name}.json/.png/.md in {meta['total_s']:.0f} s")


if __name__ == "__main__":
    main()
