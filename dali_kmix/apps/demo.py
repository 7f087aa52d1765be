"""``kmix demo``: DCutMix K=3 in a DALI pipeline over real photographs.

Builds a small JPEG tree from scikit-image's bundled photographs, runs a DALI
pipeline (read -> decode with random crop -> resize 224 -> DCutMix) on the GPU
when one is present, otherwise on the CPU, writes a PNG grid of mixed images
captioned with their largest label weights, and prints images/s with and
without the mixing step.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..backends import gpu_available
from .data import class_names, make_photo_tree

__all__ = ["demo_pipeline", "measure_throughput", "save_grid", "run_demo"]


def demo_pipeline(data_dir, *, batch_size=16, device="cpu", mix="dcutmix", k=3, alpha=1.0, seed=0, size=224,
                  num_threads=2):
    """uint8 HWC images and float32 targets (or int labels without mixing)."""
    from nvidia.dali import Pipeline, fn, types

    from .. import dali as kmix_ops

    gpu = device == "gpu"
    num_classes = len(class_names(data_dir))
    pipe = Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=0 if gpu else None, seed=seed)
    with pipe:
        jpegs, labels = fn.readers.file(file_root=str(data_dir), random_shuffle=True, name="Reader")
        images = fn.decoders.image_random_crop(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
        images = fn.resize(images, resize_x=size, resize_y=size)
        if mix is None:
            pipe.set_outputs(images, labels)
        else:
            op = getattr(kmix_ops, mix.replace("-", "_"))
            pipe.set_outputs(*op(images, labels, k=k, alpha=alpha, num_classes=num_classes, layout="HWC"))
    return pipe


def _as_numpy(tl):
    if hasattr(tl, "as_cpu"):
        tl = tl.as_cpu()
    return tl.as_array()


def measure_throughput(pipes, batches: int = 20, warmup: int = 3, rounds: int = 5) -> list[float]:
    """Images per second of built pipelines: ``rounds`` interleaved blocks of ``batches`` runs each
    (after ``warmup`` runs), so a slow spell of a shared machine hits every pipeline alike; returns
    the median block rate per pipeline."""
    import numpy as np

    for pipe in pipes:
        for _ in range(warmup):
            pipe.run()
    rates = [[] for _ in pipes]
    for _ in range(rounds):
        for pipe, r in zip(pipes, rates):
            t0 = time.perf_counter()
            for _ in range(batches):
                pipe.run()
            r.append(batches * pipe.max_batch_size / (time.perf_counter() - t0))
    return [float(np.median(r)) for r in rates]


def save_grid(images, targets, names, path, cols: int = 4, top: int = 3):
    """A PNG grid of uint8 HWC images, each captioned with its ``top`` largest label weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    rows = (n + cols - 1) // cols
    # constrained layout makes room for the three-line captions between the rows
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.8 * rows), layout="constrained")
    for ax in np.ravel(axes):
        ax.axis("off")
    for i, ax in enumerate(np.ravel(axes)[:n]):
        ax.imshow(images[i])
        order = np.argsort(targets[i])[::-1][:top]
        ax.set_title("\n".join(f"{names[c]} {targets[i][c]:.3f}" for c in order if targets[i][c] > 0),
                     fontsize=9)
    fig.suptitle("DCutMix: each caption lists the label weights (exact pixel-area shares)", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def run_demo(out_dir=".demo", device="auto", batch_size=16, k=3, alpha=1.0, batches=20, seed=0):
    """The whole demo; returns a dict with the PNG path and the throughput figures."""
    from .. import _checks
    from .common import check_device, require_gpu

    batches = _checks.check_int("batches", batches, 1)
    seed = _checks.check_int("seed", seed, 0)  # DALI takes a negative seed as "random": the demo would not repeat
    if check_device(device) == "auto":
        device = "gpu" if gpu_available() else "cpu"
    elif device == "gpu":
        require_gpu()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"out_dir (--out) {str(out_dir)!r} exists and is not a folder")
    data_dir = make_photo_tree(out_dir / "photos")
    names = class_names(data_dir)
    pipe = demo_pipeline(data_dir, batch_size=batch_size, device=device, k=k, alpha=alpha, seed=seed)
    pipe.build()
    images, targets = (_as_numpy(x) for x in pipe.run())
    png = save_grid(images[:8], targets[:8], names, out_dir / "dcutmix_grid.png")
    plain = demo_pipeline(data_dir, batch_size=batch_size, device=device, mix=None, seed=seed)
    plain.build()
    mixed_ips, plain_ips = measure_throughput([pipe, plain], batches)
    del pipe, plain
    return {"png": str(png), "device": device, "images_per_s": mixed_ips, "no_mix_images_per_s": plain_ips,
            "batch_size": batch_size, "k": k}
