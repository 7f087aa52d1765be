"""What the studies share: the Fashion-MNIST subset they are run on, and running a list of
trainings as resumable jobs (one small JSON per finished run)."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

DATA_DEFAULT = ".demo/fashion-mnist-study"


def add_data_arguments(ap, train_per_class=1000, val_per_class=500, data=DATA_DEFAULT):
    ap.add_argument("--data", default=data, help="where the Fashion-MNIST tree is written")
    ap.add_argument("--train-per-class", type=int, default=train_per_class)
    ap.add_argument("--val-per-class", type=int, default=val_per_class)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--quick", action="store_true", help="a smoke run on a tiny subset")


def fashion_mnist(args):
    """The tree of ``args`` (a separate folder for --quick runs, so they never touch the real one)."""
    from dali_kmix.apps.data import make_fashion_mnist_tree

    data = args.data + "-quick" if args.quick else args.data
    return make_fashion_mnist_tree(data, train_per_class=args.train_per_class, val_per_class=args.val_per_class,
                                   seed=0)


def check_unique(flag: str, values):
    """``values`` if none is given twice, else a UsageError naming ``flag`` and the repeated values (a repeated seed
    or ratio would count the same runs twice in the tables)."""
    from dali_kmix.apps.common import UsageError

    twice = sorted({v for v in values if list(values).count(v) > 1})
    if twice:
        raise UsageError(f"{flag} must not repeat a value, got {list(values)} ({', '.join(map(str, twice))} twice)")
    return values


def data_identity(args) -> dict:
    """What identifies the Fashion-MNIST tree of ``args`` (the tree is made with seed 0 from these counts; its folder
    name does not identify it and is not compared)."""
    return {"train_per_class": args.train_per_class, "val_per_class": args.val_per_class}


def file_list_sha256(pairs) -> str:
    """The SHA-256 of the ``file_list`` that ``dali_kmix.apps.subsample.write_file_list(pairs)`` writes."""
    from dali_kmix.apps.subsample import file_list_text

    return hashlib.sha256(file_list_text(pairs).encode()).hexdigest()


def identity_differences(recorded: dict | None, wanted: dict | None) -> list[str]:
    """The keys of ``wanted`` whose value differs in ``recorded``. A key missing from ``recorded`` is not compared:
    records written before that key was recorded (the committed ones under benchmarks/results/) are taken as
    made with the settings asked for, so ``--report`` still reads them; any record written since holds every key."""
    recorded, wanted = recorded or {}, wanted or {}
    return sorted(k for k in wanted if k in recorded and clean(recorded[k]) != clean(wanted[k]))


# --------------------------------------------------------------------------- resumable runs


def clean(obj):
    """JSON-safe: NaN / inf become None (epochs without validation), tuples become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def write_json(path, obj):
    """The JSON of ``obj`` written whole (dali_kmix's atomic write)."""
    from dali_kmix.apps.common import atomic_write

    atomic_write(path, json.dumps(clean(obj), indent=1))


# Fields of a run's config that do not change what is trained. The data's paths are left out (a tree may move); what
# is in them is compared through the record's "identity" (see load_finished).
_IRRELEVANT = {"out", "progress", "threads", "resume", "data", "train_dir", "val_dir", "train_list"}


def _same_config(a: dict, b: dict) -> list[str]:
    keys = (set(a) | set(b)) - _IRRELEVANT
    return sorted(k for k in keys if clean(a.get(k)) != clean(b.get(k)))


def load_finished(path, cfg: dict, identity: dict | None = None):
    """The record of a finished run, or None; refuses a record trained with another configuration or on other data.

    ``identity`` says what the run's data is (per-class counts, the SHA-256 of its ``train_list``: what the paths of
    ``cfg`` do not say); a record holds it as ``"identity"`` (``run_pending`` writes the task record's). A key the
    record lacks is not compared (see :func:`identity_differences`)."""
    path = Path(path)
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    diff = _same_config(rec.get("config", {}), cfg)
    if diff:
        raise SystemExit(f"{path} was trained with another configuration (differs in {diff}); "
                         f"move it away or restore the settings it was run with")
    diff = identity_differences(rec.get("identity"), identity)
    if diff:
        raise SystemExit(f"{path} was trained on other data (differs in {diff}: recorded "
                         f"{ {k: rec['identity'][k] for k in diff} }, now { {k: identity[k] for k in diff} }); "
                         f"move it away or restore the data it was run on")
    return rec


def train_to_json(cfg: dict, path: str, record: dict) -> dict:
    """Train (resuming from ``cfg['out']/checkpoint.pt`` if a run was cut off) and write its record."""
    from dali_kmix.apps.train import TrainConfig, train

    resume = (Path(cfg["out"]) / "checkpoint.pt").is_file()  # a run cut off earlier continues, mid-epoch too
    s = train(TrainConfig(**{**cfg, "resume": resume}))
    last = s["history"][-1]
    rec = {**record, "final_val_top1_err": s["final_val_top1_err"], "best_val_top1_err": s["best_val_top1_err"],
           "final_train_loss": last["train_loss"], "final_val_loss": last["val_loss"], "epochs": s["epochs"],
           "run_s": s["run_s"], "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": cfg,
           "history": s["history"]}
    write_json(path, rec)
    return clean(rec)


def run_pending(tasks, jobs: int = 1, log=print):
    """Run ``tasks`` (``(path, cfg, record)`` each) whose ``path`` does not exist yet, ``jobs`` at a time.

    Each worker process trains one run and writes its JSON, so a grid stopped at any point
    loses at most the runs in flight (and those resume from their checkpoint). A failed run is
    logged and the others go on, with one job as with several. Returns the number of runs that failed.
    ``record["identity"]``, if given, is checked against a finished record (:func:`load_finished`) and written.
    """
    todo = [t for t in tasks if load_finished(t[0], t[1], t[2].get("identity")) is None]
    log(f"{len(tasks) - len(todo)} of {len(tasks)} runs already finished; {len(todo)} to run, {jobs} at a time",
        flush=True)
    failed, t0 = 0, time.perf_counter()
    if jobs <= 1:
        for path, cfg, rec in todo:
            try:
                r = train_to_json(cfg, str(path), rec)
            except Exception as e:  # as with several jobs: the other runs are worth having
                failed += 1
                log(f"{Path(path).stem}: FAILED: {e!r}", flush=True)
                continue
            log(f"{Path(path).stem}: top-1 error {100 * r['final_val_top1_err']:.2f} %, train loss "
                f"{r['final_train_loss']:.3f}, val loss {r['final_val_loss']:.3f} ({time.perf_counter() - t0:.0f} s)",
                flush=True)
        return failed
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futs = {pool.submit(train_to_json, cfg, str(path), rec): path for path, cfg, rec in todo}
        for f in as_completed(futs):
            name = Path(futs[f]).stem
            try:
                r = f.result()
            except Exception as e:  # keep going: the other runs are worth having
                failed += 1
                log(f"{name}: FAILED: {e!r}", flush=True)
                continue
            log(f"{name}: top-1 error {100 * r['final_val_top1_err']:.2f} %, train loss "
                f"{r['final_train_loss']:.3f}, val loss {r['final_val_loss']:.3f} "
                f"({r['run_s']:.0f} s; {time.perf_counter() - t0:.0f} s so far)", flush=True)
    return failed


def load_val(data_dir, crop: int, threads: int = 1):
    """The whole validation split as tensors ``(images, labels)`` (decoded once, for repeated evaluation)."""
    import torch

    from dali_kmix.pipelines import DALIMixIterator, imagenet_val_pipeline

    pipe = imagenet_val_pipeline(Path(data_dir) / "val", batch_size=256, device="cpu", crop=crop, size=crop,
                                 num_threads=threads)
    it = DALIMixIterator(pipe, one_hot=False, auto_reset=False)
    xs, ys = [], []
    for x, y in it:
        xs.append(x.clone())
        ys.append(y.clone())
    del it, pipe
    return torch.cat(xs), torch.cat(ys)
