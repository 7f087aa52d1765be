"""`kmix train`: one process, exact resume (stopped or killed), what it refuses, and two CPU processes under
torchrun (gloo)."""

import csv
import dataclasses
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("nvidia.dali")

from _helpers import kmix_here  # noqa: E402
from dali_kmix.apps import cli  # noqa: E402
from dali_kmix.apps import train as train_mod  # noqa: E402
from dali_kmix.apps.train import (FIXED_ON_RESUME, MAY_CHANGE_ON_RESUME, MIX_CHOICES, SWITCH,  # noqa: E402
                                  TrainConfig, build_model, resolve_mix, train)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """train/ (45 images: an odd count, so two shards differ) and val/ (24 images) of real photographs."""
    from dali_kmix.apps.data import make_photo_tree

    root = tmp_path_factory.mktemp("tree")
    make_photo_tree(root / "train", images_per_class=6, size=48, seed=1)
    make_photo_tree(root / "val", images_per_class=3, size=48, seed=2)
    for f in sorted((root / "train").rglob("*_005.jpg"))[:3]:
        f.unlink()
    return root


def _cfg(tree, out, **kw):
    base = dict(data=str(tree), out=str(out), crop=32, epochs=2, batch_size=8, lr=0.05, random_area=(0.5, 1.0),
                progress=False, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _cli_args(tree, out, *extra):
    return ["train", "--data", str(tree), "--out", str(out), "--crop", "32", "--epochs", "2", "--batch-size", "8",
            "--lr", "0.05", "--random-area", "0.5", "1.0", "--threads", "1", "--no-progress", *extra]


TIMING = ("epoch_s", "train_images_per_s")  # wall-clock columns: the only ones a resumed run may change


def _assert_identical(a, b, where="checkpoint"):
    """Equal bit for bit: tensors (dtype, shape, values), NaN where NaN, recursively."""
    import numpy as np
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max difference {(a.double() - b.double()).abs().max().item()}"
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            if key not in TIMING:
                _assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _assert_same_run(through_out, resumed_out):
    """The resumed run ends where the uninterrupted one did: weights (BatchNorm buffers too), optimiser state,
    random generators, history and metrics.csv (but the wall-clock columns)."""
    import torch

    a, b = (torch.load(Path(o) / "checkpoint.pt", weights_only=False) for o in (through_out, resumed_out))
    for key in ("model", "buffers", "optimizer", "scaler", "rng", "epoch", "step", "history", "num_classes", "run"):
        _assert_identical(a[key], b[key], key)
    rows = [[{k: v for k, v in r.items() if k not in TIMING} for r in _rows(Path(o) / "metrics.csv")]
            for o in (through_out, resumed_out)]
    assert rows[0] == rows[1]


def _train_files(tree):
    return sorted(str(p.relative_to(tree / "train")) for p in (tree / "train").rglob("*.jpg"))


@pytest.mark.parametrize("mix", ["none", "cutmix", "dcutmix"])
def test_single_process_run_writes_its_files(tree, tmp_path, mix):
    s = train(_cfg(tree, tmp_path, mix=mix))
    rows = _rows(tmp_path / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(int(r["train_images"]) == 45 and int(r["val_images"]) == 24 for r in rows)
    assert all(0.0 <= float(r["val_top1_err"]) <= 1.0 for r in rows)
    assert (tmp_path / "curves.png").stat().st_size > 5000
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["final_val_top1_err"] == s["final_val_top1_err"] == float(rows[-1]["val_top1_err"])
    import torch

    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ck["epoch"] == 1 and ck["num_classes"] == 8 and len(ck["history"]) == 2


def test_resume_continues_from_the_checkpoint(tree, tmp_path):
    first = train(_cfg(tree, tmp_path, epochs=1))
    resumed = train(_cfg(tree, tmp_path, epochs=3, resume=True))
    assert [r["epoch"] for r in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][0] == first["history"][0]
    assert len(_rows(tmp_path / "metrics.csv")) == 3


def test_training_lowers_the_loss(tree, tmp_path):
    s = train(_cfg(tree, tmp_path, epochs=6, mix="dmixup", k=3, lr=0.05))
    h = s["history"]
    assert h[-1]["train_loss"] < h[0]["train_loss"]


def _torchrun(tree, out, *extra):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found next to the interpreter"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "dali_kmix.apps.cli", "train", "--data", str(tree),
           "--out", str(out), "--crop", "32", "--epochs", "2", "--batch-size", "11", "--lr", "0.05",
           "--random-area", "0.5", "1.0", "--mix", "dcutmix", "--k", "3", "--threads", "1", "--no-progress",
           "--audit", "--checkpoint-minutes", "1e-9", *extra]  # a time-based checkpoint at once: the ranks must agree
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def torchrun_through(tree, tmp_path_factory):
    """Two ranks under torchrun, 2 epochs through (the reference of the resume test too)."""
    out = tmp_path_factory.mktemp("torchrun-through")
    return out, _torchrun(tree, out)


@pytest.mark.slow
def test_two_processes_under_torchrun(tree, torchrun_through):
    tmp_path, proc = torchrun_through
    files = _train_files(tree)
    for epoch in (1, 2):
        seen = [(tmp_path / f"seen_rank{r}_epoch{epoch}.txt").read_text().split() for r in (0, 1)]
        # the two shards are disjoint, cover the data, and the padded duplicates never count
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == files
        assert {len(seen[0]), len(seen[1])} == {22, 23}  # uneven shards: 3 and 2 batches of 11 (DDP join)
    m0 = json.loads((tmp_path / "metrics_rank0.json").read_text())
    m1 = json.loads((tmp_path / "metrics_rank1.json").read_text())
    keys = ("train_loss", "val_loss", "val_top1_err", "train_images", "val_images")
    assert [{k: r[k] for k in keys} for r in m0] == [{k: r[k] for k in keys} for r in m1]
    # the shorter shard's rank gets an empty batch while the other finishes: its NaN mean loss once made every
    # epoch's train loss NaN (json's one NaN object compared equal above)
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in m0), m0
    rows = _rows(tmp_path / "metrics.csv")
    assert [int(r["train_images"]) for r in rows] == [45, 45] and [int(r["val_images"]) for r in rows] == [24, 24]
    for r, m in zip(rows, m0):
        assert float(r["val_top1_err"]) == pytest.approx(m["val_top1_err"])
    assert "final val top-1 error" in proc.stdout and "2 process(es)" in proc.stdout
    assert not list(tmp_path.glob("checkpoint*.tmp"))


@pytest.mark.slow
def test_two_processes_stopped_and_resumed_are_the_uninterrupted_run(tree, torchrun_through, tmp_path):
    """Under torchrun too: stopped inside the second epoch (step 4 of 3 per epoch: after the first step of epoch 2,
    while both uneven shards still have batches) and resumed with two ranks, the run sees the same files and mixes
    on each rank and ends with the same weights, optimiser state, every rank's random generators and metrics."""
    through, _ = torchrun_through
    stopped = _torchrun(tree, tmp_path, "--stop-after", "4")
    assert "--resume" in stopped.stdout
    _torchrun(tree, tmp_path, "--resume")
    _assert_same_run(through, tmp_path)
    assert _audit(through) == _audit(tmp_path) and len(_audit(tmp_path)) == 4
    for rank in (0, 1):
        for what in ("seen", "mixes"):
            for epoch in (1, 2):
                name = f"{what}_rank{rank}_epoch{epoch}.txt"
                assert (through / name).read_text() == (tmp_path / name).read_text(), name
        m = [json.loads((o / f"metrics_rank{rank}.json").read_text()) for o in (through, tmp_path)]
        keys = ("train_loss", "val_loss", "val_top1_err", "train_images", "val_images")
        assert [{k: r[k] for k in keys} for r in m[0]] == [{k: r[k] for k in keys} for r in m[1]]


def test_mix_choices_map_to_operators():
    assert resolve_mix("mixup", 5) == ("dmixup", 2)
    assert resolve_mix("cutmix", 5) == ("dcutmix", 2)
    assert resolve_mix("dcutmix", 5) == ("dcutmix", 5)
    assert resolve_mix("none", 3) == (None, 3)
    assert set(MIX_CHOICES) == {"none", "mixup", "cutmix", "dmixup", "dcutmix", "saliency-dcutmix", "mixup+cutmix",
                                "dmixup+dcutmix"}
    with pytest.raises(ValueError, match=r"mix must be one of .* got 'puzzlemix'"):
        resolve_mix("puzzlemix", 3)


def test_models():
    import torch

    for name in ("small-cnn", "resnet18"):
        m = build_model(name, 7)
        assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match=r"model must be one of"):
        build_model("vgg99", 3)


def test_bad_configuration(tree, tmp_path):
    with pytest.raises(ValueError, match=r"give --data DIR"):
        train(TrainConfig(out=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match=r"train folder .* does not exist"):
        train(TrainConfig(data=str(tmp_path), out=str(tmp_path)))
    with pytest.raises(ValueError, match=r"optimizer must be 'sgd' or 'adamw', got 'lamb'"):
        train(_cfg(tree, tmp_path, optimizer="lamb"))
    with pytest.raises(ValueError, match=r"epochs must be >= 1, got 0"):
        train(_cfg(tree, tmp_path, epochs=0))


def test_fashion_mnist_tree(tmp_path):
    from dali_kmix.apps.data import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, make_fashion_mnist_tree, read_idx

    if not Path(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    root = make_fashion_mnist_tree(tmp_path / "fm", train_per_class=5, val_per_class=2, seed=3)
    assert sorted(p.name for p in (root / "train").iterdir()) == list(FASHION_MNIST_CLASSES)
    assert len(list((root / "train").rglob("*.jpg"))) == 50 and len(list((root / "val").rglob("*.jpg"))) == 20
    labels = read_idx(Path(FASHION_MNIST_DIR) / "train-labels-idx1-ubyte.gz")
    for cls_dir in (root / "train").iterdir():  # every file sits in its true class folder
        for f in cls_dir.glob("*.jpg"):
            assert labels[int(f.stem.split("_")[1])] == int(cls_dir.name.split("_")[0])
    assert make_fashion_mnist_tree(tmp_path / "fm", train_per_class=5, val_per_class=2, seed=3) == root  # kept
    with pytest.raises(FileExistsError, match=r"already holds a different tree \(train_per_class=5 "):
        make_fashion_mnist_tree(tmp_path / "fm", train_per_class=6, val_per_class=2, seed=3)
    with pytest.raises(FileNotFoundError, match=r"apt-get install dataset-fashion-mnist"):
        make_fashion_mnist_tree(tmp_path / "x", source=tmp_path)


def _audit(out):
    return {p.name: p.read_text() for p in sorted(Path(out).glob("*_rank0_epoch*.txt"))}


# (model, mix, stop after N steps, epochs): every operator (mixup and cutmix are DMixup and DCutMix at K = 2),
# small-cnn (the default, with dropout) and a torchvision model with dropout, BatchNorm and squeeze-excitation
STOPS = [("small-cnn", "dcutmix", 4, 2), ("small-cnn", "dmixup", 3, 2), ("small-cnn", "dcutmix", 6, 2),
         ("small-cnn", "none", 8, 2), ("small-cnn", "saliency-dcutmix", 2, 1), ("small-cnn", "mixup+cutmix", 7, 2),
         ("mobilenet_v3_small", "mixup", 5, 1)]


@pytest.mark.parametrize("model,mix,stop_after,epochs", STOPS,
                         ids=["dcutmix-mid-epoch", "dmixup-mid-epoch", "dcutmix-end-of-epoch", "none-second-epoch",
                              "saliency", "switch-second-epoch", "mobilenet-mixup"])
def test_stopped_and_resumed_run_is_the_uninterrupted_run(tree, tmp_path, model, mix, stop_after, epochs):
    """45 images in batches of 8: 6 steps per epoch. A run stopped after N steps and resumed trains on the
    same files, in the same order, with the same mixed pixels and targets and the same dropout masks
    (small-cnn and mobilenet_v3_small have dropout) as one that ran through, and ends with the same weights,
    optimiser state and metrics bit for bit."""
    kw = dict(model=model, mix=mix, epochs=epochs, audit=True, eval_every=2)
    if mix == "mixup+cutmix":
        kw["mixup_off_epoch"] = 1
    through = train(_cfg(tree, tmp_path / "through", **kw))
    stopped = train(_cfg(tree, tmp_path / "stopped", checkpoint_every=2, stop_after=stop_after, **kw))
    # stopped after step N; on an epoch's last step (6) only after that epoch's end (validation, row)
    assert stopped["stopped_early"] and len(stopped["history"]) == stop_after // 6
    assert stopped["stopped_at"]["step"] == stop_after
    resumed = train(_cfg(tree, tmp_path / "stopped", resume=True, **kw))
    assert not resumed["stopped_early"] and resumed["stopped_at"] is None
    a, b = _audit(tmp_path / "through"), _audit(tmp_path / "stopped")
    assert sorted(a) == sorted(f"{what}_rank0_epoch{e}.txt" for what in ("mixes", "seen") for e in range(1, epochs + 1))
    assert a == b
    assert len(a["seen_rank0_epoch1.txt"].split()) == 45 and len(a["mixes_rank0_epoch1.txt"].split()) == 6
    _assert_same_run(tmp_path / "through", tmp_path / "stopped")
    _assert_identical(through["history"], resumed["history"], "history")


@pytest.mark.slow
def test_killed_and_resumed_run_is_the_uninterrupted_run(tree, tmp_path):
    """SIGKILL wherever it lands (here: soon after the first checkpoint of a run checkpointing at every step),
    then --resume: the same weights, optimiser state and metrics as the uninterrupted run."""
    train(_cfg(tree, tmp_path / "through", epochs=4))  # 24 steps: the kill lands well before the end
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dali_kmix.apps.cli",
           *_cli_args(tree, out, "--epochs", "4", "--checkpoint-every", "1")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-3000:]  # killed before it finished
    import torch

    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["epoch"] * 6 + ck["step"] < 24
    train(_cfg(tree, out, epochs=4, resume=True))
    _assert_same_run(tmp_path / "through", out)


def test_stop_after_exits_0_and_says_how_to_resume(tree, tmp_path, capsys, monkeypatch):
    """Stopped inside the first epoch (no validation yet): exit 0, where it stopped, the command to resume;
    that command finishes the run."""
    monkeypatch.chdir(tmp_path)
    rc, out, err = kmix_here(_cli_args(tree, "run", "--stop-after", "3", "--mix", "dmixup"), capsys)
    assert rc == 0, err
    assert "stopped after step 3 of 12 (epoch 1, step 3 of 6); checkpoint in run/checkpoint.pt\n" in out
    line = [ln for ln in out.splitlines() if ln.startswith("resume with: ")]
    assert len(line) == 1
    argv = shlex.split(line[0][len("resume with: "):])
    assert argv[:3] == [sys.executable, "-m", "dali_kmix.apps.cli"]
    assert argv[3:] == _cli_args(tree, "run", "--mix", "dmixup", "--resume")
    rc, out, err = kmix_here(argv[3:], capsys)
    assert rc == 0, err
    assert "final val top-1 error" in out and "after 2 epochs" in out
    assert cli.resume_command(["train", "--stop-after=5", "--data", "d"], 2) == \
        "torchrun --nproc_per_node 2 -m dali_kmix.apps.cli train --data d --resume"


def test_every_config_field_is_classified_for_resume():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert not set(FIXED_ON_RESUME) & set(MAY_CHANGE_ON_RESUME)
    assert set(FIXED_ON_RESUME) | set(MAY_CHANGE_ON_RESUME) == fields


@pytest.fixture(scope="module")
def stopped_run(tree, tmp_path_factory):
    """A run stopped after 3 steps (the checkpoint the resume tests start from, copied per test)."""
    out = tmp_path_factory.mktemp("stopped")
    listing = out / "subset.txt"
    listing.write_text("".join(f"{f} {i // 6}\n" for i, f in enumerate(_train_files(tree))))
    train(_cfg(tree, out / "run", stop_after=3, train_list=str(listing)))
    return out


CHANGED = [
    (dict(batch_size=16), r"--batch-size 8 in the checkpoint, 16 now"),
    (dict(crop=24), r"--crop 32 in the checkpoint, 24 now"),
    (dict(mix="dmixup"), r"--mix 'dcutmix' in the checkpoint, 'dmixup' now"),
    (dict(k=4), r"--k 3 in the checkpoint, 4 now"),
    (dict(alpha=0.5), r"--alpha 1.0 in the checkpoint, 0.5 now"),
    (dict(seed=1), r"--seed 0 in the checkpoint, 1 now"),
    (dict(model="small-cnn-fc"), r"--model 'small-cnn' in the checkpoint, 'small-cnn-fc' now"),
    (dict(lr=0.1, random_area=(0.08, 1.0)),
     r"--lr 0.05 in the checkpoint, 0.1 now; --random-area \(0.5, 1.0\) in the checkpoint, \(0.08, 1.0\) now"),
    (dict(val_dir="VAL"), r"val folder \(--data/--val-dir\) '.*/tree\d*/val' in the checkpoint, '.*/VAL' now"),
    (dict(train_list="EDITED"), r"--train-list '.*subset.txt \(sha256 \w+\)' in the checkpoint, '.*subset.txt "
                                r"\(sha256 \w+\)' now"),
    (dict(drop_last=True, channels_last=True), r"--drop-last False in the checkpoint, True now; --channels-last"),
    (dict(audit=True), r"--audit False in the checkpoint, True now"),
]


@pytest.mark.parametrize("change,message", CHANGED, ids=[",".join(c) for c, _ in CHANGED])
def test_resume_refuses_a_changed_run(tree, stopped_run, tmp_path, change, message):
    run = tmp_path / "run"
    shutil.copytree(stopped_run / "run", run)
    listing = stopped_run / "subset.txt"
    if change.get("val_dir") == "VAL":
        shutil.copytree(tree / "val", tmp_path / "VAL")
        change = dict(change, val_dir=str(tmp_path / "VAL"), train_dir=str(tree / "train"))
    if change.get("train_list") == "EDITED":
        listing = tmp_path / "subset.txt"
        listing.write_text("".join(stopped_run.joinpath("subset.txt").read_text().splitlines(True)[:-1]))
        change = dict(change, train_list=str(listing))
    cfg = _cfg(tree, run, **{"resume": True, "train_list": str(listing), **change})
    if cfg.train_dir:
        cfg.data = None
    with pytest.raises(ValueError, match=r"^--resume: this command would change the checkpoint's run: "
                                         + message + r".*; resume with the checkpoint's values, or start a new run "
                                                     r"in another --out$"):
        train(cfg)


def test_resume_accepts_what_may_change(tree, stopped_run, tmp_path):
    """Epochs, cadences, output and threads may change; so may how the same folders are named."""
    run = tmp_path / "run"
    shutil.copytree(stopped_run / "run", run)
    s = train(_cfg(tree, run, resume=True, train_list=str(stopped_run / "subset.txt"), epochs=3, eval_every=2,
                   checkpoint_every=2, checkpoint_minutes=0, threads=2, data=None,
                   train_dir=str(tree / "train" / ".." / "train"), val_dir=str(tree / "val")))
    assert [r["epoch"] for r in s["history"]] == [1, 2, 3]
    assert [r["val_images"] for r in s["history"]] == [0, 24, 24]


def test_resume_refuses_changed_class_folders(tree, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tree, data)
    train(_cfg(data, tmp_path / "run", stop_after=2))
    for split in ("train", "val"):
        (data / split / "coins").rename(data / split / "zz_coins")
    with pytest.raises(ValueError, match=r"--resume: .*class folders \(only in the checkpoint's: \['coins'\]; "
                                         r"only now: \['zz_coins'\]\)"):
        train(_cfg(data, tmp_path / "run", resume=True))


def test_resume_needs_a_checkpoint(tree, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--resume: no checkpoint at .*checkpoint.pt"):
        train(_cfg(tree, tmp_path, resume=True))


def test_switch_mixup_off_epoch_drop_last_and_channels_last(tree, tmp_path):
    """The options run end to end (what they do to the batches is tested in test_pipelines.py)."""
    s = train(_cfg(tree, tmp_path, mix="mixup+cutmix", switch_prob=0.5, cutmix_alpha=1.0, mixup_off_epoch=1,
                   drop_last=True, channels_last=True, epochs=2))
    assert [r["train_images"] for r in s["history"]] == [40, 40]  # 45 images: the short batch is dropped
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in s["history"])
    assert resolve_mix("mixup+cutmix", 5) == ("dmixup+dcutmix", 2)
    with pytest.raises(ValueError, match=r"switch_prob must be in \[0, 1\], got 2.0"):
        train(_cfg(tree, tmp_path, mix="dmixup+dcutmix", switch_prob=2.0))
    with pytest.raises(ValueError, match=r"mixup_off_epoch must be >= 0, got -1"):
        train(_cfg(tree, tmp_path, mixup_off_epoch=-1))


@pytest.mark.parametrize("mix", ["none", "dcutmix", "mixup+cutmix"])
def test_the_pipelines_get_the_arguments_that_apply(tree, tmp_path, monkeypatch, mix):
    """Rank 1 of 2 (building its pipelines needs no process group): the builder gets the run's seed, the same on every
    rank (it draws each shard's pipeline seed from it and the shard: no second per-rank derivation here), and only
    the arguments that apply to the mixing, which it refuses otherwise (the CLI accepts them either way); the
    smoothing goes to the pipeline that mixes, or to the iterator's one-hot targets without mixing."""
    from dali_kmix import pipelines
    from dali_kmix.apps.common import Dist

    calls = {}
    build = pipelines.imagenet_train_pipeline

    def train_pipeline(*args, **kw):
        calls.setdefault("imagenet_train_pipeline", []).append(kw)
        return build(*args, **kw)

    class Iterator(pipelines.DALIMixIterator):
        def __init__(self, *args, **kw):
            calls.setdefault("DALIMixIterator", []).append(kw)
            super().__init__(*args, **kw)

    monkeypatch.setattr(pipelines, "imagenet_train_pipeline", train_pipeline)
    monkeypatch.setattr(pipelines, "DALIMixIterator", Iterator)
    cfg = _cfg(tree, tmp_path, mix=mix, k=5, alpha=0.5, prob=0.5, mode="batch", smoothing=0.1, mix_on="float32",
               switch_prob=0.3, cutmix_alpha=0.7, mixup_off_epoch=1, seed=2, crop=16)
    op, k = resolve_mix(cfg.mix, cfg.k)
    train_it, _ = train_mod._pipelines(cfg, Dist(rank=1, world=2), op, k, tree / "train", tree / "val", 8,
                                       train_mod._State())
    (kw,), (train_kw, _) = calls["imagenet_train_pipeline"], calls["DALIMixIterator"]
    assert (kw["seed"], kw["shard_id"], kw["num_shards"]) == (2 * 1_000_003, 1, 2)
    mixing = {"k", "alpha", "prob", "mode", "smoothing", "mix_on", "mixup_off_epoch"}
    switch = {"cutmix_alpha", "switch_prob"}
    assert set(kw) & (mixing | switch) == (set() if op is None else mixing | (switch if op == SWITCH else set()))
    assert train_kw["smoothing"] == (0.1 if op is None else 0.0) and kw.get("smoothing", 0.1) == 0.1
    images, targets = next(train_it)
    assert images.shape[1:] == (3, 16, 16) and targets.shape == (images.shape[0], 8)


def _copy(tree, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tree, data)
    return data


@pytest.mark.parametrize("mess,message", [
    (lambda data: (data / "train" / ".ipynb_checkpoints").mkdir(),
     r"train folder '.*/train' holds hidden folder\(s\) '.ipynb_checkpoints', which DALI's readers.file numbers as "
     r"classes: remove them"),
    (lambda data: (data / "train" / "bread").mkdir(),
     r"train class folder\(s\) 'bread' in '.*/train' hold no image readers.file reads; train and val class folders "
     r"differ \(labels would not match\): only in train: 'bread'"),
    (lambda data: (data / "val" / "coins").rename(data / "val" / "money"),
     r"train and val class folders differ \(labels would not match\): only in train: 'coins'; only in val: 'money'"),
], ids=["hidden-folder", "empty-class-folder", "renamed-class"])
def test_class_folders_that_would_shift_labels_are_refused(tree, tmp_path, capsys, mess, message):
    """A stray folder in train/ would number the classes after it differently from val/: one line, exit 2."""
    data = _copy(tree, tmp_path)
    mess(data)
    rc, out, err = kmix_here(_cli_args(data, tmp_path / "run", "--epochs", "1"), capsys)
    assert rc == 2 and re.fullmatch(r"kmix: error: " + message + r"\n", err), err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_file_dali_cannot_decode_is_named(tree, tmp_path, capsys, split):
    data = _copy(tree, tmp_path)
    bad = data / split / "coffee" / "coffee_001.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # cut short: nvImageCodec refuses it
    rc, out, err = kmix_here(_cli_args(data, tmp_path / "run", "--epochs", "1"), capsys)
    where = "training" if split == "train" else "validation"
    assert rc == 2 and re.fullmatch(rf"kmix: error: DALI could not decode 1 file\(s\) of the {where} data "
                                    rf"\(nvImageCodec failure: [^)]*\): {re.escape(str(bad))}; `kmix data check DIR` "
                                    rf"lists every such file\n", err), err
    rc, out, err = kmix_here(["data", "check", str(data), "--no-progress"], capsys)
    assert rc == 1 and out.splitlines()[0].startswith(f"{bad}: nvImageCodec failure")
    assert out.splitlines()[-1] == f"checked 69 files in {data}: 1 DALI cannot decode"


def test_stale_temporary_files_of_killed_writes_are_removed_on_start(tree, tmp_path):
    """Only the run's own files (.NAME.PID.tmp for what it writes) whose process is gone."""
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [out / f".checkpoint.pt.{dead.pid}.tmp", out / f".metrics.csv.{dead.pid}.tmp",
             out / f".seen_rank1_epoch3.txt.{dead.pid}.tmp"]
    kept = [out / f".checkpoint.pt.{os.getppid()}.tmp",  # a live process may be writing it
            out / f".notes.txt.{dead.pid}.tmp", out / "checkpoint.pt.tmp", out / f".checkpoint.pt.{dead.pid}.tmp.1"]
    for p in stale + kept:
        p.write_bytes(b"x" * 100)
    train(_cfg(tree, out, epochs=1))
    assert [p.exists() for p in stale] == [False] * len(stale)
    assert [p.exists() for p in kept] == [True] * len(kept)


@pytest.mark.parametrize("minutes,saves", [(0.0, 0), (1e-9, 10), (10.0, 0)], ids=["off", "every-step", "default"])
def test_time_based_checkpoints(tree, tmp_path, monkeypatch, minutes, saves):
    """--checkpoint-minutes M checkpoints mid-epoch once M minutes have passed since the last checkpoint (here at
    every step but the last of each epoch), never at an epoch's last step (the epoch-end checkpoint follows)."""
    taken = []
    real = train_mod._save
    monkeypatch.setattr(train_mod, "_save", lambda *a, **kw: (taken.append((a[6].epoch, a[6].step,
                                                                            kw["epoch_done"])), real(*a, **kw)))
    train(_cfg(tree, tmp_path, epochs=2, checkpoint_minutes=minutes))
    mid = [(e, s) for e, s, done in taken if not done]
    assert len(mid) == saves and all(1 <= s <= 5 for _, s in mid)
    assert [(e, done) for e, _, done in taken if done] == [(0, True), (1, True)]
    with pytest.raises(ValueError, match=r"checkpoint_minutes must be >= 0 and finite, got -1"):
        train(_cfg(tree, tmp_path, checkpoint_minutes=-1))


class _OnDevice:
    """Tensors that say they are on cuda:0 but hold CPU data, on a CPU-only build too (a wrapper subclass): what
    ``torch.load(map_location=cuda:0)`` gives, to which ``torch.set_rng_state`` answers as it does to a CUDA tensor
    (TypeError: RNG state must be a torch.ByteTensor)."""

    @staticmethod
    def wrap(t):
        import torch
        from torch.utils._pytree import tree_map

        class OnDevice(torch.Tensor):
            @staticmethod
            def __new__(cls, inner):
                return torch.Tensor._make_wrapper_subclass(cls, inner.shape, dtype=inner.dtype, device="cuda:0")

            def __init__(self, inner):
                self.inner = inner

            @classmethod
            def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
                def unwrap(x):
                    return x.inner if isinstance(x, OnDevice) else x

                return func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {}))

        return OnDevice(t)


def test_rng_states_loaded_onto_the_gpu_are_restored(monkeypatch):
    """--resume on a GPU loads the checkpoint with map_location=cuda:N: the generator states arrive on the GPU, and
    torch takes them from the CPU only (the CUDA generator's too)."""
    import random

    import numpy as np
    import torch

    from dali_kmix.apps.common import Dist

    state = train_mod._rng_state(Dist())
    state["cuda"] = torch.get_rng_state()  # stands in for the CUDA generator's (a ByteTensor as well)
    expected = (torch.rand(5), np.random.rand(3), random.random())
    on_gpu = dict(state, torch=_OnDevice.wrap(state["torch"]), cuda=_OnDevice.wrap(state["cuda"]))
    assert on_gpu["torch"].device.type == "cuda"
    with pytest.raises(TypeError, match="RNG state must be a torch.ByteTensor"):  # what the old code hit
        torch.set_rng_state(on_gpu["torch"])
    cuda_set = []

    def set_cuda_state(new_state, device):  # torch.cuda.set_rng_state's own check, without a GPU
        if new_state.device.type != "cpu" or new_state.dtype != torch.uint8:
            raise TypeError("RNG state must be a torch.ByteTensor")
        cuda_set.append((new_state, device))

    monkeypatch.setattr(torch.cuda, "set_rng_state", set_cuda_state)
    train_mod._set_rng_state(on_gpu, Dist(device=torch.device("cuda", 0), gpu=True))
    assert torch.equal(torch.rand(5), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    assert len(cuda_set) == 1 and torch.equal(cuda_set[0][0], state["cuda"])


def test_bad_numbers_are_refused(tree, tmp_path, capsys):
    """NaN, infinite or negative optimiser settings, and threads, crop, batch size below 1: one line, exit 2."""
    for flag, value, message in [("--lr", "nan", "lr must be >= 0 and finite, got nan"),
                                 ("--lr", "-0.1", "lr must be >= 0 and finite, got -0.1"),
                                 ("--momentum", "inf", "momentum must be >= 0 and finite, got inf"),
                                 ("--weight-decay", "-1", "weight_decay must be >= 0 and finite, got -1.0"),
                                 ("--warmup-epochs", "nan", "warmup_epochs must be >= 0 and finite, got nan"),
                                 ("--threads", "-1", "threads must be >= 1, got -1"),
                                 ("--threads", "0", "threads must be >= 1, got 0"),
                                 ("--crop", "0", "crop must be >= 1, got 0"),
                                 ("--batch-size", "0", "batch_size must be >= 1, got 0")]:
        rc, out, err = kmix_here([*_cli_args(tree, tmp_path / "run"), flag, value], capsys)
        assert (rc, err) == (2, f"kmix: error: {message}\n"), (flag, value)
    assert not (tmp_path / "run").exists()


def _checkpoint_and_metrics(out):
    return (out / "checkpoint.pt").read_bytes(), (out / "metrics.csv").read_text()


def test_a_diverged_run_stops_before_it_overwrites_the_checkpoint(tree, tmp_path, capsys):
    """lr = 1e8: the loss goes NaN within the first epoch; the run stops with an error at that epoch's end, before
    it validates or writes its checkpoint and metrics: the last good run's files are kept."""
    out = tmp_path / "run"
    train(_cfg(tree, out, epochs=1))
    good = _checkpoint_and_metrics(out)
    with pytest.raises(ValueError, match=r"^the run diverged at epoch 1, step 6: the training loss summed over "
                                         r"the epoch so far is (nan|inf) \(--lr 100000000.0\); stopped without "
                                         r"writing a checkpoint .*start again with a lower --lr"):
        train(_cfg(tree, out, epochs=1, lr=1e8, checkpoint_minutes=0))
    assert _checkpoint_and_metrics(out) == good


@pytest.mark.parametrize("nan_from,kept", [(5, (0, 4)), (8, (0, 0))], ids=["epoch-end", "mid-epoch"])
def test_a_nan_loss_keeps_the_last_finite_checkpoint(tree, tmp_path, monkeypatch, nan_from, kept):
    """A loss that turns NaN at step N (1-based, of 6 per epoch) is found at the next checkpoint or epoch end (no
    sync per step), before it is written: the last checkpoint is the finite one before (epoch, step)."""
    import torch

    import dali_kmix.torch as kmix_torch

    real, steps = kmix_torch.soft_target_cross_entropy, []

    def loss(*a, **kw):
        steps.append(1)
        return real(*a, **kw) * (float("nan") if len(steps) >= nan_from else 1.0)

    monkeypatch.setattr(kmix_torch, "soft_target_cross_entropy", loss)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"the run diverged at epoch \d, step \d: the training loss .* is nan"):
        train(_cfg(tree, out, epochs=2, checkpoint_every=4, checkpoint_minutes=0))
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert (ck["epoch"], ck["step"]) == kept
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    finished = kept[0] + (kept[1] == 0)  # epochs whose end was written
    assert len(ck["history"]) == finished and all(math.isfinite(r["train_loss"]) for r in ck["history"])
    assert (out / "metrics.csv").exists() == bool(finished)


def test_resume_refuses_epochs_the_checkpoint_has_passed(tree, tmp_path):
    """A checkpoint in epoch 2 (step 3): --epochs 1 would drop the partial epoch (and report a finished run):
    refused; --epochs 2 finishes it."""
    out = tmp_path / "run"
    train(_cfg(tree, out, epochs=2, stop_after=9))
    with pytest.raises(ValueError, match=r"^--resume: the checkpoint is in epoch 2 \(step 3\); --epochs must be "
                                         r">= 2, got 1$"):
        train(_cfg(tree, out, resume=True, epochs=1))
    s = train(_cfg(tree, out, resume=True, epochs=2))  # finishing the epoch is what it takes
    assert not s["stopped_early"] and [r["epoch"] for r in s["history"]] == [1, 2]
