"""`kmix train`: one process, resume, and two CPU processes under torchrun (gloo)."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nvidia.dali")

from dali_kmix.apps.train import MIX_CHOICES, TrainConfig, build_model, resolve_mix, train  # noqa: E402


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


@pytest.mark.slow
def test_two_processes_under_torchrun(tree, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found next to the interpreter"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "dali_kmix.apps.cli", "train", "--data", str(tree),
           "--out", str(tmp_path), "--crop", "32", "--epochs", "2", "--batch-size", "11", "--lr", "0.05",
           "--random-area", "0.5", "1.0", "--mix", "dcutmix", "--k", "3", "--threads", "1", "--no-progress",
           "--audit"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
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
    rows = _rows(tmp_path / "metrics.csv")
    assert [int(r["train_images"]) for r in rows] == [45, 45] and [int(r["val_images"]) for r in rows] == [24, 24]
    for r, m in zip(rows, m0):
        assert float(r["val_top1_err"]) == pytest.approx(m["val_top1_err"])
    assert "final val top-1 error" in proc.stdout and "2 process(es)" in proc.stdout
    assert not list(tmp_path.glob("checkpoint*.tmp"))


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


@pytest.mark.parametrize("mix,stop_after", [("dcutmix", 4), ("dmixup", 3), ("dcutmix", 6), ("none", 8)],
                         ids=["dcutmix-mid-epoch", "dmixup-mid-epoch", "dcutmix-end-of-epoch", "none-second-epoch"])
def test_stopped_and_resumed_run_sees_the_same_files_and_mixes(tree, tmp_path, mix, stop_after):
    """45 images in batches of 8: 6 steps per epoch. A run stopped after N steps and resumed trains on the
    same files, in the same order, with the same mixed pixels and targets as one that ran through."""
    kw = dict(mix=mix, epochs=2, audit=True, eval_every=2)
    through = train(_cfg(tree, tmp_path / "through", **kw))
    stopped = train(_cfg(tree, tmp_path / "stopped", checkpoint_every=2, stop_after=stop_after, **kw))
    # stopped after step N; on an epoch's last step (6) only after that epoch's end (validation, row)
    assert stopped["stopped_early"] and len(stopped["history"]) == stop_after // 6
    resumed = train(_cfg(tree, tmp_path / "stopped", resume=True, **kw))
    assert not resumed["stopped_early"]
    a, b = _audit(tmp_path / "through"), _audit(tmp_path / "stopped")
    assert sorted(a) == ["mixes_rank0_epoch1.txt", "mixes_rank0_epoch2.txt", "seen_rank0_epoch1.txt",
                         "seen_rank0_epoch2.txt"]
    assert a == b
    assert len(a["seen_rank0_epoch1.txt"].split()) == 45 and len(a["mixes_rank0_epoch2.txt"].split()) == 6
    assert [r["train_images"] for r in resumed["history"]] == [r["train_images"] for r in through["history"]]


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
