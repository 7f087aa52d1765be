"""``kmix bench``: throughput of the mixing kernels and of a DALI pipeline with mixing.

Operator level: time per batch of the CPU kernels (and the CuPy kernels when a
GPU is present) for DMixup and DCutMix at several K, against the yardstick of a
plain copy of the same batch into a preallocated buffer, and against the NumPy
reference. Pipeline level: images/s of a DALI pipeline over a JPEG tree, without
mixing and with each operator.

Every figure is the median (with min and max) over repeats after warm-up, with
fixed seeds; each run writes a JSON file with the machine, the versions and all
figures under ``benchmarks/results/``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
import time
from pathlib import Path

import numpy as np

__all__ = ["time_call", "bench_ops", "bench_pipeline", "run", "metadata", "format_table"]


def time_call(fn, repeats: int, warmup: int = 2) -> dict:
    """Seconds per call: median, min, max over ``repeats`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts = np.asarray(ts)
    return {"median_s": float(np.median(ts)), "min_s": float(ts.min()), "max_s": float(ts.max()), "repeats": repeats}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def metadata() -> dict:
    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "numpy": np.__version__,
    }
    for mod in ("nvidia.dali", "torch", "cupy"):
        try:
            meta[mod] = __import__(mod, fromlist=["__version__"]).__version__
        except Exception:
            meta[mod] = None
    from .demo import gpu_available

    meta["gpu"] = None
    if gpu_available():
        import cupy

        meta["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    return meta


def _batch(dtype, layout, n, size, rng):
    shape = (n, size, size, 3) if layout == "HWC" else (n, 3, size, size)
    if dtype == "uint8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape, dtype=np.float32)


def bench_ops(*, batch=64, size=224, ks=(2, 3, 5, 9), configs=(("uint8", "HWC"), ("float32", "CHW")),
              repeats=15, reference_k=3, progress=True) -> list[dict]:
    """Operator-level figures on the CPU (and on the GPU when present)."""
    from tqdm import tqdm

    from . import cpu_kernels, reference
    from .demo import gpu_available
    from .params import sample_params

    rng = np.random.default_rng(0)
    rows = []
    jobs = [(dt, lay, m, k) for dt, lay in configs for m in ("dmixup", "dcutmix") for k in ks]
    bar = tqdm(total=len(jobs) + len(configs), desc="operators", disable=not progress)
    gpu = gpu_available()
    for dt, lay in configs:
        x = _batch(dt, lay, batch, size, rng)
        ins = list(x)
        out = np.empty_like(x)
        outs = list(out)
        copy = time_call(lambda: np.copyto(out, x), repeats)
        rows.append({"level": "op", "device": "cpu", "impl": "copy (yardstick)", "dtype": dt, "layout": lay,
                     "batch": batch, "size": size, "bytes_moved": 2 * x.nbytes, **copy})
        bar.update()
        for method in ("dmixup", "dcutmix"):
            for k in ks:
                p = sample_params(method, batch, size, size, k=k, alpha=1.0, rng=1)
                if method == "dmixup":
                    def fn():
                        cpu_kernels.dmixup(ins, outs, p.sources, p.weights)
                else:
                    def fn():
                        cpu_kernels.dcutmix(ins, outs, p.sources, p.boxes, lay)
                t = time_call(fn, repeats)
                rows.append({"level": "op", "device": "cpu", "impl": "dali_kmix", "method": method, "k": k,
                             "dtype": dt, "layout": lay, "batch": batch, "size": size, **t,
                             "vs_copy": t["median_s"] / copy["median_s"]})
                if k == reference_k:
                    r = time_call(lambda: reference.mix_images(x, p, lay), max(3, repeats // 5), warmup=1)
                    rows.append({"level": "op", "device": "cpu", "impl": "numpy reference", "method": method,
                                 "k": k, "dtype": dt, "layout": lay, "batch": batch, "size": size, **r,
                                 "vs_copy": r["median_s"] / copy["median_s"]})
                if gpu:
                    rows += _bench_gpu_op(x, p, method, k, dt, lay, batch, size, repeats)
                if method == "dcutmix" and k == reference_k:
                    rows += _bench_saliency(ins, outs, x, lay, dt, batch, size, k, repeats, copy)
                bar.update()
    bar.close()
    return rows


def _bench_saliency(ins, outs, x, lay, dt, batch, size, k, repeats, copy):
    """Saliency-DCutMix on the CPU: the saliency step alone, and the whole operator work per batch."""
    from . import cpu_kernels
    from .params import draw_raw, params_from_draws
    from .saliency import salient_points

    gen = np.random.default_rng(2)
    alpha = np.ones(k)

    def full():
        centers = salient_points(ins, lay)
        p = params_from_draws("saliency-dcutmix", *draw_raw(np, gen, batch, k, alpha, "sample", 1.0), size, size,
                              centers)
        cpu_kernels.dcutmix(ins, outs, p.sources, p.boxes, lay)

    rows = []
    for impl, fn in (("saliency step (spectral residual)", lambda: salient_points(ins, lay)), ("dali_kmix", full)):
        t = time_call(fn, repeats)
        rows.append({"level": "op", "device": "cpu", "impl": impl, "method": "saliency-dcutmix", "k": k, "dtype": dt,
                     "layout": lay, "batch": batch, "size": size, **t, "vs_copy": t["median_s"] / copy["median_s"]})
    return rows


def _bench_gpu_op(x, p, method, k, dt, lay, batch, size, repeats):  # pragma: no cover - needs a GPU
    import cupy

    from . import gpu_kernels

    xd = cupy.asarray(x)
    ins = list(xd)
    out = cupy.empty_like(xd)
    outs = list(out)
    pd = p.to_cupy()

    def timed(fn):
        ev0, ev1 = cupy.cuda.Event(), cupy.cuda.Event()
        for _ in range(3):
            fn()
        ts = []
        for _ in range(repeats):
            ev0.record()
            fn()
            ev1.record()
            ev1.synchronize()
            ts.append(cupy.cuda.get_elapsed_time(ev0, ev1) / 1e3)
        ts = np.asarray(ts)
        return {"median_s": float(np.median(ts)), "min_s": float(ts.min()), "max_s": float(ts.max()),
                "repeats": repeats}

    copy = timed(lambda: cupy.copyto(out, xd))
    if method == "dmixup":
        t = timed(lambda: gpu_kernels.dmixup(ins, outs, pd.sources, pd.weights))
    else:
        t = timed(lambda: gpu_kernels.dcutmix(ins, outs, pd.sources, pd.boxes, lay))
    base = {"level": "op", "device": "gpu", "dtype": dt, "layout": lay, "batch": batch, "size": size}
    return [{**base, "impl": "copy (yardstick)", "method": method, "k": k, **copy,
             "bandwidth_GBps": 2 * x.nbytes / copy["median_s"] / 1e9},
            {**base, "impl": "dali_kmix", "method": method, "k": k, **t, "vs_copy": t["median_s"] / copy["median_s"],
             "bandwidth_GBps": (k + 1 if method == "dmixup" else 2) * x.nbytes / t["median_s"] / 1e9}]


def bench_pipeline(data_dir, *, batch=64, size=224, k=3, iters=12, repeats=3, device="cpu", num_threads=2,
                   progress=True) -> list[dict]:
    """Images/s of read -> decode (random crop) -> resize -> [mix] -> uint8 HWC over a JPEG tree."""
    from tqdm import tqdm

    from .demo import demo_pipeline

    rows = []
    variants = [None, "dcutmix", "dmixup", "saliency-dcutmix"]
    for mix in tqdm(variants, desc=f"pipelines ({device})", disable=not progress):
        pipe = demo_pipeline(data_dir, batch_size=batch, device=device, mix=mix, k=k, seed=0, size=size,
                             num_threads=num_threads)
        pipe.build()
        for _ in range(3):
            pipe.run()
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(iters):
                pipe.run()
            rates.append(iters * batch / (time.perf_counter() - t0))
        del pipe
        rates = np.asarray(rates)
        rows.append({"level": "pipeline", "device": device, "mix": mix or "none", "k": k if mix else None,
                     "batch": batch, "size": size, "threads": num_threads,
                     "images_per_s_median": float(np.median(rates)), "images_per_s_min": float(rates.min()),
                     "images_per_s_max": float(rates.max()), "repeats": repeats, "iters": iters})
    base = rows[0]["images_per_s_median"]
    for r in rows:
        r["vs_no_mix"] = r["images_per_s_median"] / base
    return rows


def format_table(rows) -> str:
    """Markdown tables of a run's figures."""
    lines = []
    ops = [r for r in rows if r["level"] == "op"]
    if ops:
        lines += ["| device | dtype/layout | impl | method | K | median ms | min-max ms | x copy |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in ops:
            lines.append(
                f"| {r['device']} | {r['dtype']} {r['layout']} | {r['impl']} | {r.get('method', '')} | "
                f"{r.get('k', '')} | {1e3 * r['median_s']:.2f} | {1e3 * r['min_s']:.2f}-{1e3 * r['max_s']:.2f} | "
                f"{r.get('vs_copy', 1.0):.2f} |")
    pipes = [r for r in rows if r["level"] == "pipeline"]
    if pipes:
        lines += ["", "| device | mixing | images/s (median) | min-max | vs no mixing |", "|---|---|---|---|---|"]
        for r in pipes:
            name = r["mix"] if r["mix"] == "none" else f"{r['mix']} K={r['k']}"
            lines.append(f"| {r['device']} | {name} | {r['images_per_s_median']:.0f} | "
                         f"{r['images_per_s_min']:.0f}-{r['images_per_s_max']:.0f} | {100 * r['vs_no_mix']:.0f} % |")
    return "\n".join(lines)


def run(out_dir="benchmarks/results", *, quick=False, data_dir=None, progress=True) -> tuple[Path, list[dict]]:
    """The whole benchmark; returns the JSON path and the rows."""
    from .data import make_photo_tree
    from .demo import gpu_available

    rows = bench_ops(ks=(2, 3, 9) if quick else (2, 3, 5, 9), repeats=5 if quick else 15,
                     batch=32 if quick else 64, progress=progress)
    if data_dir is None:
        data_dir = make_photo_tree(Path(".demo") / ("bench-photos-quick" if quick else "bench-photos"),
                                   images_per_class=12 if quick else 48, size=320)
    devices = ["cpu"] + (["gpu"] if gpu_available() else [])
    for dev in devices:
        rows += bench_pipeline(data_dir, batch=32 if quick else 64, iters=4 if quick else 12,
                               repeats=2 if quick else 3, device=dev, progress=progress)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = metadata()
    stamp = meta["date"].replace(":", "").replace("-", "")[:15]
    path = out_dir / f"bench-{'quick-' if quick else ''}{stamp}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "quick": quick, "rows": rows}, indent=1))
    os.replace(tmp, path)
    return path, rows
