"""Uncertainty-based subsampling: selection rules, files, scoring, one process = two processes."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dali_kmix.sampling import draw_partners, sample_anchor_params
from dali_kmix.apps.subsample import (Scores, list_files, read_file_list, read_scores, score_batch, select,
                                 write_file_list, write_scores)


def _scores(values_by_class, m=4):
    """Scores whose CV equals the given values (losses built so that std/mean is exact)."""
    paths, labels, losses = [], [], []
    for c, values in enumerate(values_by_class):
        for i, v in enumerate(values):
            paths.append(f"c{c}/img{i:03d}.jpg")
            labels.append(c)
            # two losses mean-1+v, two losses 1-v: mean 1, std v (ddof 0) -> cv v
            losses.append([1 + v, 1 - v] * (m // 2))
    return Scores(paths, np.array(labels), np.array(losses, np.float64))


# --------------------------------------------------------------------------- selection on hand-made scores


def test_top_keeps_the_highest_cv_per_class():
    s = _scores([[0.1, 0.5, 0.3, 0.9, 0.2, 0.7, 0.4, 0.8, 0.6, 0.0], [0.5, 0.1, 0.2, 0.3]])
    np.testing.assert_allclose(s.cv[:3], [0.1, 0.5, 0.3])
    keep = select(s, 0.3, measure="cv", selection="top")
    # class 0: round(3.0) = 3 highest -> 0.9, 0.8, 0.7 (indices 3, 7, 5); class 1: round(1.2) = 1 -> 0.5 (index 10)
    assert keep == [3, 5, 7, 10]


def test_interval_takes_every_nth_in_descending_order():
    cv = [0.1, 0.5, 0.3, 0.9, 0.2, 0.7, 0.4, 0.8, 0.6, 0.0]  # descending ranks: 3,7,5,8,1,6,2,4,0,9
    s = _scores([cv])
    assert select(s, 0.3, selection="interval", interval=2) == sorted([3, 5, 1])   # ranks 0, 2, 4
    assert select(s, 0.3, selection="interval", interval=3) == sorted([3, 8, 2])   # ranks 0, 3, 6
    # more than the walk holds: it restarts at rank 1 (then 2, ...)
    assert select(s, 0.5, selection="interval", interval=4) == sorted([3, 1, 0, 7, 6])  # ranks 0,4,8,1,5


def test_other_measures_and_order():
    s = _scores([[0.1, 0.5, 0.3, 0.9]])  # cv 0.1, 0.5, 0.3, 0.9; mean 1; std = cv
    s.losses[1] *= 4  # sample 1: mean 4, std 2.0, cv unchanged (0.5)
    assert select(s, 0.25, measure="cv", selection="top") == [3]
    assert select(s, 0.25, measure="mean", selection="top") == [1]  # the hardest
    assert select(s, 0.25, measure="std", selection="top") == [1]
    assert select(s, 0.25, measure="cv", selection="top", ascending=True) == [0]  # the lowest cv
    assert select(s, 0.5, measure="mean", selection="top", ascending=True) == [0, 2]  # the easiest (ties by path)
    r1 = select(s, 0.5, measure="random", seed=1)
    assert r1 == select(s, 0.5, measure="random", seed=1) and len(r1) == 2
    assert any(select(s, 0.5, measure="random", seed=t) != r1 for t in range(2, 8))


def test_selection_does_not_depend_on_row_order_and_breaks_ties_by_path():
    s = _scores([[0.5, 0.5, 0.5, 0.5, 0.2, 0.9]])
    keep = [s.paths[i] for i in select(s, 0.5, selection="top")]
    perm = np.random.default_rng(0).permutation(len(s.paths))
    t = Scores([s.paths[i] for i in perm], s.labels[perm], s.losses[perm])
    assert sorted(t.paths[i] for i in select(t, 0.5, selection="top")) == sorted(keep)
    assert keep == ["c0/img000.jpg", "c0/img001.jpg", "c0/img005.jpg"]


@pytest.mark.parametrize("seed", [0, 3], ids=["seed0", "seed3"])
def test_random_selection_does_not_depend_on_row_order(seed):
    s = _scores([[0.1] * 12, [0.2] * 7])
    keep = sorted(s.paths[i] for i in select(s, 0.5, measure="random", seed=seed))
    for shuffle in range(3):
        perm = np.random.default_rng(shuffle).permutation(len(s.paths))
        t = Scores([s.paths[i] for i in perm], s.labels[perm], s.losses[perm])
        assert sorted(t.paths[i] for i in select(t, 0.5, measure="random", seed=seed)) == keep
    # rows in path order (as run() and the scores CSV give them) keep the draws of before
    rows = np.random.default_rng([seed, 0xC0FFEE]).random(len(s.paths))
    assert keep == sorted(s.paths[i] for i in select(Scores(s.paths, s.labels, np.c_[rows, rows]), 0.5,
                                                     measure="mean", seed=seed))


def test_every_class_keeps_at_least_one():
    s = _scores([[0.1, 0.2], [0.3], [0.4, 0.5, 0.6]])
    keep = select(s, 0.05, selection="interval")
    assert sorted(s.labels[keep].tolist()) == [0, 1, 2]


@pytest.mark.parametrize("kwargs,match", [
    (dict(ratio=0.0), r"ratio must be in \(0, 1\], got 0\.0"),
    (dict(ratio=1.5), r"ratio must be in \(0, 1\], got 1\.5"),
    (dict(ratio=0.1, measure="entropy"), r"measure must be one of \['cv', 'mean', 'std', 'random'\]"),
    (dict(ratio=0.1, selection="bottom"), r"selection must be one of \['top', 'interval'\]"),
    (dict(ratio=0.1, interval=0), r"interval must be >= 1, got 0"),
])
def test_selection_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select(_scores([[0.1, 0.2]]), **kwargs)


# --------------------------------------------------------------------------- files


def test_scores_csv_and_file_list_round_trip(tmp_path):
    s = _scores([[0.1, 0.25], [0.3]])
    write_scores(s, tmp_path / "s.csv")
    paths, labels, mean, std, cv = read_scores(tmp_path / "s.csv")
    assert paths == s.paths and labels.tolist() == s.labels.tolist()
    np.testing.assert_array_equal(cv, s.cv)  # repr() keeps every bit
    np.testing.assert_array_equal(mean, s.mean)
    np.testing.assert_array_equal(std, s.std)
    pairs = [("c0/img000.jpg", 0), ("c1/img000.jpg", 1)]
    write_file_list(pairs, tmp_path / "l.txt")
    assert read_file_list(tmp_path / "l.txt") == pairs
    assert (tmp_path / "l.txt").read_text() == "c0/img000.jpg 0\nc1/img000.jpg 1\n"
    assert not list(tmp_path.glob(".*.tmp"))
    spaced = [("c 0/my  img.jpg", 0), ("c1/a\tb.jpg", 12)]  # DALI takes the last field as the label
    write_file_list(spaced, tmp_path / "spaced.txt")
    assert read_file_list(tmp_path / "spaced.txt") == spaced


@pytest.mark.parametrize("rel,match", [
    ("a\nb.jpg", r"path 'a\\nb.jpg' contains a newline or carriage return"),
    ("a\rb.jpg", r"path 'a\\rb.jpg' contains a newline or carriage return"),
    (" a.jpg", r"path ' a.jpg' starts or ends with white space"),
    ("a.jpg ", r"path 'a.jpg ' starts or ends with white space"),
    ("", r"an empty path cannot be a line"),
], ids=["newline", "carriage-return", "leading-space", "trailing-space", "empty"])
def test_file_list_refuses_paths_that_break_a_line(tmp_path, rel, match):
    with pytest.raises(ValueError, match=match):
        write_file_list([("ok.jpg", 0), (rel, 1)], tmp_path / "bad.txt")
    assert not list(tmp_path.iterdir())


def test_list_files_lists_what_readers_file_reads(tmp_path):
    from dali_kmix.pipelines import tree_files

    for rel in ("c0/b.PPM", "c0/a.jpg", "c0/sub/deep.jpg", "c0/notes.txt", "c1/x.jp2", "c1/y.pgm", "c1/z.pbm",
                "c1/w.pnm", "c2/.hidden.png", "c2/q r.webp"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "c1" / "dir.jpg").mkdir()  # a folder is no file, whatever its name
    files = list_files(tmp_path)
    assert files == [("c0/a.jpg", 0), ("c0/b.PPM", 0), ("c1/w.pnm", 1), ("c1/x.jp2", 1), ("c1/y.pgm", 1),
                     ("c1/z.pbm", 1), ("c2/.hidden.png", 2), ("c2/q r.webp", 2)]
    assert [tmp_path / rel for rel, _ in files] == tree_files(tmp_path)


@pytest.mark.parametrize("spaces", [False, True], ids=["plain", "inner-spaces"])
def test_file_list_feeds_a_dali_reader(photo_dir, tmp_path, spaces):
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    if spaces:  # a tree whose class folder and files hold inner spaces
        shutil.copytree(photo_dir, tmp_path / "tree")
        photo_dir = tmp_path / "tree"
        first = sorted(p for p in photo_dir.iterdir() if p.is_dir())[0]
        first = first.rename(first.with_name(first.name + " x  y"))
        for f in sorted(first.iterdir())[:3]:
            f.rename(f.with_name(f"a b\t{f.name}"))
    files = list_files(photo_dir)
    subset = files[::5] + ([f for f in files if " " in f[0]][:3] if spaces else [])
    write_file_list(subset, tmp_path / "subset.txt")

    @pipeline_def(batch_size=len(subset), num_threads=1, device_id=None)
    def pipe():
        jpegs, labels = fn.readers.file(file_root=str(photo_dir), file_list=str(tmp_path / "subset.txt"))
        return fn.pad(fn.get_property(jpegs, key="source_info"), fill_value=0, axes=(0,), shape=(512,)), labels

    p = pipe()
    p.build()
    info, labels = (t.as_array() for t in p.run())
    got = sorted((bytes(r[r != 0]).decode(), int(l[0])) for r, l in zip(info, labels))  # paths as listed
    assert got == sorted(subset)


# --------------------------------------------------------------------------- scoring


class _MeanModel:
    """A tiny deterministic 'model': logits from channel means (enough to make losses vary with the mix)."""

    def __new__(cls, num_classes):
        import torch

        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                   torch.nn.Linear(48, num_classes)).eval()


def test_anchor_params_keep_the_anchor_share():
    p = sample_anchor_params(50, 64, 64, k=3, anchor_ratio=0.5, alpha=(2 / 9, 2 / 9), rng=0)
    p.validate(50, 64, 64)
    side = round(64 * np.sqrt(0.5))
    np.testing.assert_allclose(p.weights[:, 0], 1 - side * side / 64 ** 2)
    assert (p.sources[:, 1:] != np.arange(50)[:, None]).all()  # partners are other samples
    with pytest.raises(ValueError, match=r"anchor_ratio must be in \(0, 1\), got 1\.0"):
        sample_anchor_params(4, 8, 8, anchor_ratio=1.0)
    with pytest.raises(ValueError, match=r"alpha must be a scalar or K - 1 = 2 partner concentrations \(k=3 images"):
        sample_anchor_params(4, 8, 8, k=3, alpha=(1.0, 1.0, 1.0))


def _same_record(a, b):
    for field in ("sources", "weights", "boxes"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_anchor_params_keep_given_partners_and_draw_them_last():
    p = sample_anchor_params(9, 16, 20, k=4, rng=5)
    # the partners are the record's last draw: given the ones it drew, the same record comes out
    _same_record(sample_anchor_params(9, 16, 20, k=4, rng=5, partners=p.sources[:, 1:]), p)
    _same_record(sample_anchor_params(9, 16, 20, k=4, rng=5, partners=p.sources[:, 1:].astype(np.int32)), p)
    mine = np.array([[(i + 1) % 9, (i + 2) % 9, (i + 1) % 9] for i in range(9)])  # a partner twice is allowed
    q = sample_anchor_params(9, 16, 20, k=4, rng=5, partners=mine)
    np.testing.assert_array_equal(q.sources[:, 1:], mine)
    np.testing.assert_array_equal(q.sources[:, 0], np.arange(9))
    np.testing.assert_array_equal(q.weights, p.weights)  # shares and boxes drawn as before
    np.testing.assert_array_equal(q.boxes, p.boxes)


@pytest.mark.parametrize("partners,match", [
    (np.zeros((4, 3), np.int64) + 1, r"partners must be integers of shape \(n, K - 1\) = \(4, 2\), got int64 of "
                                     r"shape \(4, 3\)"),
    (np.ones((4, 2)), r"partners must be integers of shape .* got float64 of shape \(4, 2\)"),
    (np.array([[1, 2], [0, 4], [0, 1], [0, 1]]), r"partners must index the batch of n=4, got partners\[1, 1\] = 4"),
    (np.array([[1, 2], [0, 2], [0, 1], [0, -1]]), r"partners must index the batch of n=4, got partners\[3, 1\] = -1"),
    (np.array([[1, 2], [0, 2], [2, 1], [0, 1]]), r"partners must be other samples than the anchor, got "
                                                 r"partners\[2, 0\] = 2"),
], ids=["shape", "float", "too-big", "negative", "itself"])
def test_anchor_params_refuse_bad_partners(partners, match):
    with pytest.raises(ValueError, match=match):
        sample_anchor_params(4, 8, 8, k=3, rng=0, partners=partners)


def test_draw_partners_are_uniform_over_the_other_samples():
    p = draw_partners(6, 3, 0)
    assert p.shape == (6, 2) and p.dtype == np.int64
    big = draw_partners(6, 2001, 1)  # 2000 partners a row
    assert ((big >= 0) & (big < 6)).all() and (big != np.arange(6)[:, None]).all()
    for i in range(6):
        counts = np.bincount(big[i], minlength=6)
        expected = np.full(6, 2000 / 5)
        expected[i] = 0
        chi2 = (((counts - expected) ** 2)[expected > 0] / expected[expected > 0]).sum()
        assert chi2 < 20.5, (i, counts)  # chi-square, 4 degrees of freedom: p = 0.0004
    np.testing.assert_array_equal(draw_partners(1, 3, 0), np.zeros((1, 2), np.int64))


@pytest.mark.parametrize("partners", ["fixed", "redrawn"])
def test_score_batch_keeps_or_redraws_an_anchors_partners(partners):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((10, 3, 16, 16)).astype(np.float32)
    labels = rng.integers(0, 5, 10)
    model = _MeanModel(5)
    losses, shots = score_batch(model, images, labels, num_classes=5, m=4, rng=np.random.default_rng(7),
                                capture=True, partners=partners)
    # the draws, in the order the scoring takes them from the group's generator
    gen = np.random.default_rng(7)
    kept = draw_partners(10, 3, gen) if partners == "fixed" else None
    for _, _, p in shots:
        _same_record(p, sample_anchor_params(10, 16, 16, k=3, alpha=(2 / 9, 2 / 9), rng=gen, partners=kept))
    drawn = [p.sources[:, 1:] for _, _, p in shots]
    if partners == "fixed":  # Eq. (8): the shares and boxes vary, the images do not
        assert all(np.array_equal(d, drawn[0]) for d in drawn)
        assert not np.array_equal(shots[0][2].boxes, shots[1][2].boxes)
    else:
        assert not all(np.array_equal(d, drawn[0]) for d in drawn)
    assert (losses.std(axis=1) > 0).all()
    with pytest.raises(ValueError, match=r"partners must be one of \['fixed', 'redrawn'\], got 'same'"):
        score_batch(model, images, labels, num_classes=5, m=2, partners="same")


def test_score_batch_is_reproducible_and_varies_with_the_mix():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((12, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 5, 12)
    model = _MeanModel(5)
    a = score_batch(model, images, labels, num_classes=5, m=6, rng=np.random.default_rng(3))
    b = score_batch(model, images, labels, num_classes=5, m=6, rng=np.random.default_rng(3))
    c = score_batch(model, images, labels, num_classes=5, m=6, rng=np.random.default_rng(4))
    assert a.shape == (12, 6) and np.isfinite(a).all() and (a > 0).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (a.std(axis=1) > 0).all()
    losses, shots = score_batch(model, images, labels, num_classes=5, m=2, rng=np.random.default_rng(3), capture=True)
    np.testing.assert_array_equal(losses, a[:, :2])
    mixed, targets, params = shots[0]
    assert mixed.shape == images.shape and targets.shape == (12, 5)
    assert (targets[np.arange(12), labels] >= params.weights[:, 0] - 1e-6).all()


def test_score_dataset_scores_every_sample_once(photo_dir):
    pytest.importorskip("nvidia.dali")
    from dali_kmix.apps.subsample import score_dataset

    files = list_files(photo_dir)
    model = _MeanModel(8)
    s, _ = score_dataset(model, photo_dir, num_classes=8, m=3, group_size=10, crop=32, resize=32)  # 48 = 4x10 + 8
    assert sorted(s.paths) == sorted(rel for rel, _ in files) and len(s.paths) == len(files)
    assert dict(zip(s.paths, s.labels.tolist())) == dict(files)
    # the two "ranks" of a two-process run together give the same scores
    parts = [score_dataset(model, photo_dir, num_classes=8, m=3, group_size=10, crop=32, resize=32, rank=r,
                           world=2)[0] for r in (0, 1)]
    merged = dict(zip(parts[0].paths + parts[1].paths, np.concatenate([parts[0].losses, parts[1].losses])))
    assert len(merged) == len(files)
    for p, row in zip(s.paths, s.losses):
        np.testing.assert_allclose(merged[p], row, rtol=1e-6)


# --------------------------------------------------------------------------- kmix subsample, 1 and 2 processes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    pytest.importorskip("nvidia.dali")
    from dali_kmix.apps.data import make_photo_tree
    from dali_kmix.apps.train import TrainConfig, train

    root = tmp_path_factory.mktemp("sub")
    make_photo_tree(root / "data" / "train", images_per_class=6, size=48, seed=1)
    make_photo_tree(root / "data" / "val", images_per_class=2, size=48, seed=2)
    train(TrainConfig(data=str(root / "data"), out=str(root / "run"), crop=32, epochs=2, batch_size=8, lr=0.05,
                      random_area=(0.5, 1.0), progress=False, threads=1))
    return root


def _kmix(args, cwd, torchrun=False):
    if torchrun:
        exe = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
        cmd = [exe, "--standalone", "--nproc_per_node", "2", "-m", "dali_kmix.apps.cli", *args]
    else:
        cmd = [sys.executable, "-m", "dali_kmix.apps.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


@pytest.mark.slow
def test_kmix_subsample_one_and_two_processes_agree(checkpoint, tmp_path):
    data = checkpoint / "data" / "train"
    common = ["subsample", "--data", str(data), "--checkpoint", str(checkpoint / "run" / "checkpoint.pt"),
              "--ratio", "0.25", "--mixes", "4", "--group-size", "7", "--threads", "1", "--seed", "5"]
    out1 = _kmix(common + ["--out", str(tmp_path / "one" / "subset.txt"), "--figure", str(tmp_path / "fig.png")],
                 tmp_path)
    _kmix(common + ["--out", str(tmp_path / "two" / "subset.txt")], tmp_path, torchrun=True)
    assert "scored 48 samples, kept 16" in out1  # 8 classes x round(0.25 * 6) = 2
    one, two = read_scores(tmp_path / "one" / "subset.csv"), read_scores(tmp_path / "two" / "subset.csv")
    assert one[0] == two[0] and len(set(one[0])) == 48  # every sample exactly once, same order
    np.testing.assert_array_equal(one[1], two[1])
    for a, b in zip(one[2:], two[2:]):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert (tmp_path / "one" / "subset.txt").read_text() == (tmp_path / "two" / "subset.txt").read_text()
    subset = read_file_list(tmp_path / "one" / "subset.txt")
    assert len(subset) == 16 and sorted(lab for _, lab in subset) == sorted(list(range(8)) * 2)
    assert (tmp_path / "fig.png").stat().st_size > 10000
    # and training on the subset reads exactly those files
    from dali_kmix.apps.train import TrainConfig, train

    s = train(TrainConfig(train_dir=str(data), val_dir=str(checkpoint / "data" / "val"),
                          train_list=str(tmp_path / "one" / "subset.txt"), out=str(tmp_path / "subrun"), crop=32,
                          epochs=1, batch_size=8, progress=False, threads=1))
    assert s["history"][0]["train_images"] == 16


# --------------------------------------------------------------------------- groups, arguments, outputs, classes


@pytest.mark.parametrize("n", [2, 3, 8, 15, 48, 49, 65, 129])
@pytest.mark.parametrize("group_size", [2, 7, 47, 64])
def test_groups_never_leave_a_sample_alone_and_cover_every_sample_once(n, group_size):
    from dali_kmix.apps.subsample import _groups

    files = [(f"c{i % 3}/img{i:03d}.jpg", i % 3) for i in range(n)]
    groups = _groups(files, group_size, seed=4)
    assert all(2 <= len(g) <= group_size + 1 for g in groups)  # a last group of one joins the one before
    assert sorted(f for g in groups for f in g) == sorted(files)


class _Batch:
    def __init__(self, a):
        self.a = a

    def as_array(self):
        return self.a


class _FakeGroupPipeline:
    """Stands in for the DALI group pipeline: yields each group's labels (and blank images), in order."""

    def __init__(self, root, groups, **kw):
        self.groups = list(groups)

    def build(self):
        pass

    def run(self):
        g = self.groups.pop(0)
        return _Batch(np.zeros((len(g), 3, 4, 4), np.float32)), _Batch(np.array([[lab] for _, lab in g], np.int32))


@pytest.mark.parametrize("n,group_size", [(31, 4), (48, 7), (9, 8)], ids=["31-by-4", "48-by-7", "9-by-8"])
@pytest.mark.parametrize("world", [2, 3, 5])
def test_score_dataset_ranks_split_the_groups(tmp_path, monkeypatch, n, group_size, world):
    """Rank r of W scores its share of the groups in score_dataset: every group exactly once, the same losses."""
    from dali_kmix.apps import subsample

    for i in range(n):
        (tmp_path / f"c{i % 3}").mkdir(exist_ok=True)
        (tmp_path / f"c{i % 3}" / f"img{i:03d}.jpg").write_bytes(b"")
    monkeypatch.setattr(subsample, "_group_pipeline", _FakeGroupPipeline)
    scored = []

    def fake_score_batch(model, images, labels, *, m, rng, **kw):  # losses from the group's generator alone
        scored.append(len(labels))
        return rng.random((len(labels), m))

    monkeypatch.setattr(subsample, "score_batch", fake_score_batch)
    kw = dict(num_classes=3, m=3, group_size=group_size, seed=2, crop=4, resize=4)
    one, _ = subsample.score_dataset(None, tmp_path, **kw)
    groups_one = len(scored)
    parts = []
    for r in range(world):
        scored.clear()
        parts.append(subsample.score_dataset(None, tmp_path, rank=r, world=world, **kw)[0])
        assert len(scored) == len(range(r, groups_one, world))  # its share of the groups
    paths = [p for s in parts for p in s.paths]
    assert sorted(paths) == sorted(one.paths) and len(paths) == n  # each sample scored by exactly one rank
    merged = dict(zip(paths, np.concatenate([s.losses for s in parts])))
    for p, row in zip(one.paths, one.losses):
        np.testing.assert_array_equal(merged[p], row)


def test_group_generators_never_replay_the_file_order():
    from dali_kmix.apps.subsample import _group_rng

    for seed in (0, 7):
        order = np.random.default_rng([seed, 0x5EED]).random(8)
        assert not np.array_equal(_group_rng(seed, 0x5EED).random(8), order)
        for g in (0, 1, 0x5EED - 1):  # the groups of every dataset so far keep their draws
            np.testing.assert_array_equal(_group_rng(seed, g).random(8), np.random.default_rng([seed, g]).random(8))
        assert not np.array_equal(_group_rng(seed, 0x5EED).random(8), _group_rng(seed, 0x5EED + 1).random(8))


def test_groups_refuse_groups_of_one():
    from dali_kmix.apps.subsample import _groups

    files = [(f"c0/img{i}.jpg", 0) for i in range(5)]
    with pytest.raises(ValueError, match=r"group_size must be >= 2, got 1"):
        _groups(files, 1, 0)
    with pytest.raises(ValueError, match=r"at least 2 images, got 1"):
        _groups(files[:1], 4, 0)


def test_score_dataset_never_scores_a_sample_against_itself(photo_dir):
    pytest.importorskip("nvidia.dali")
    from dali_kmix.apps.subsample import score_dataset

    model = _MeanModel(8)
    s, _ = score_dataset(model, photo_dir, num_classes=8, m=3, group_size=47, crop=32, resize=32)  # 48 = 47 + 1
    assert len(s.paths) == 48 and len(set(s.paths)) == 48
    assert (s.std > 0).all() and (s.cv > 0).all()
    with pytest.raises(ValueError, match=r"m must be >= 2, got 1"):
        score_dataset(model, photo_dir, num_classes=8, m=1, group_size=8, crop=32, resize=32)


def test_scoring_resizes_as_validation_does():
    from argparse import Namespace

    from dali_kmix.apps.subsample import _preprocessing

    args = Namespace(crop=None, resize=None)
    assert _preprocessing(args, {"config": {"crop": 32, "val_resize": None}}) == (32, 37)  # round(32 * 256 / 224)
    assert _preprocessing(args, {"config": {"crop": 224}}) == (224, 256)
    assert _preprocessing(args, {"config": {"crop": 32, "val_resize": 40}}) == (32, 40)
    assert _preprocessing(Namespace(crop=64, resize=None), {"config": {"crop": 32}}) == (64, 73)
    assert _preprocessing(Namespace(crop=None, resize=50), {"config": {"crop": 32}}) == (32, 50)


@pytest.fixture(scope="module")
def tiny_checkpoint(photo_dir, tmp_path_factory):
    """A checkpoint as ``kmix train`` writes it (untrained small-cnn, classes of ``photo_dir``), made in no time."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("nvidia.dali")
    from dali_kmix.apps.data import class_names
    from dali_kmix.apps.train import build_model

    classes = class_names(photo_dir)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "checkpoint.pt"
    torch.save({"model": build_model("small-cnn", len(classes)).state_dict(), "num_classes": len(classes),
                "config": {"model": "small-cnn", "crop": 32, "val_resize": None}, "run": {"classes": list(classes)}},
               path)
    return path


def _subsample_in_process(photo_dir, checkpoint, *extra, data=None):
    from dali_kmix.apps.cli import main

    return main(["--debug", "subsample", "--data", str(data or photo_dir), "--checkpoint", str(checkpoint),
                 "--ratio", "0.25", "--mixes", "2", "--group-size", "8", "--threads", "1", "--device", "cpu", *extra])


def test_subsample_scores_a_last_sample_with_others(photo_dir, tiny_checkpoint, tmp_path, capsys):
    assert _subsample_in_process(photo_dir, tiny_checkpoint, "--group-size", "47", "--out",
                                 str(tmp_path / "subset.txt")) == 0  # 48 files = 47 + 1
    paths, _, _, std, cv = read_scores(tmp_path / "subset.csv")
    assert len(set(paths)) == 48 and (std > 0).all() and (cv > 0).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subset.csv", "subset.json", "subset.txt"]


def test_a_failed_figure_leaves_the_scores_with_their_summary(photo_dir, tiny_checkpoint, tmp_path, monkeypatch):
    from dali_kmix.apps import subsample

    def broken_figure(*a, **kw):
        raise RuntimeError("no figure")

    monkeypatch.setattr(subsample, "plot_figure", broken_figure)
    with pytest.raises(RuntimeError, match="no figure"):
        _subsample_in_process(photo_dir, tiny_checkpoint, "--out", str(tmp_path / "subset.txt"), "--figure",
                              str(tmp_path / "fig.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subset.csv", "subset.json", "subset.txt"]


def test_subsample_partners_option_reaches_the_scoring(photo_dir, tiny_checkpoint, tmp_path):
    import json

    runs = {}
    for mode in ("fixed", "redrawn"):
        extra = () if mode == "fixed" else ("--partners", "redrawn")  # fixed is the default (Eq. 8)
        out = tmp_path / mode / "subset.txt"
        assert _subsample_in_process(photo_dir, tiny_checkpoint, "--out", str(out), *extra) == 0
        assert json.loads(out.with_suffix(".json").read_text())["args"]["partners"] == mode
        runs[mode] = read_scores(out.with_suffix(".csv"))
    assert runs["fixed"][0] == runs["redrawn"][0]  # the same samples, scored with other mixes
    assert not np.array_equal(runs["fixed"][2], runs["redrawn"][2])


@pytest.fixture
def no_scoring(monkeypatch):
    """kmix subsample with its scoring (and the model it loads for it) made to fail the test: what these tests refuse
    must be refused before any scoring starts."""
    from dali_kmix.apps import subsample

    def scoring(*a, **kw):
        raise AssertionError("scored before the arguments and files were checked")

    monkeypatch.setattr(subsample, "score_dataset", scoring)
    monkeypatch.setattr(subsample, "load_checkpoint_model", scoring)


@pytest.mark.parametrize("args,match", [
    (["--group-size", "0"], r"--group-size must be >= 2, got 0"),
    (["--group-size", "-5"], r"--group-size must be >= 2, got -5"),
    (["--group-size", "1"], r"--group-size must be >= 2, got 1"),
    (["--mixes", "0"], r"--mixes must be >= 2, got 0"),
    (["--mixes", "1"], r"--mixes must be >= 2, got 1"),
    (["--threads", "-1"], r"--threads must be >= 1, got -1"),
    (["--crop", "0"], r"--crop must be >= 1, got 0"),
    (["--interval", "0"], r"--interval must be >= 1, got 0"),
    (["--interval", "-2"], r"--interval must be >= 1, got -2"),
    (["--k", "1"], r"--k must be >= 2, got 1"),
    (["--anchor-ratio", "0"], r"--anchor-ratio must be in \(0, 1\), got 0\.0"),
    (["--anchor-ratio", "1"], r"--anchor-ratio must be in \(0, 1\), got 1\.0"),
    (["--anchor-ratio", "-0.5"], r"--anchor-ratio must be in \(0, 1\), got -0\.5"),
    (["--seed", "-1"], r"--seed must be >= 0, got -1"),
    (["--k", "4"], r"--alpha must be one value or K - 1 = 3 values \(--k 4\), got \[0\.22"),
    (["--alpha", "0"], r"--alpha must be finite and > 0, got \[0\.0\]"),
], ids=["group-size-0", "group-size-neg", "group-size-1", "mixes-0", "mixes-1", "threads-neg", "crop-0",
        "interval-0", "interval-neg", "k-1", "anchor-ratio-0", "anchor-ratio-1", "anchor-ratio-neg", "seed-neg",
        "alpha-count", "alpha-0"])
def test_subsample_refuses_bad_arguments(photo_dir, tiny_checkpoint, tmp_path, no_scoring, args, match):
    from dali_kmix.apps.common import UsageError

    with pytest.raises(UsageError, match=match):
        _subsample_in_process(photo_dir, tiny_checkpoint, "--out", str(tmp_path / "subset.txt"), *args)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("folder,name,match", [
    (" lead", "x.jpg", r"--data .*: path ' lead/[^']+\.jpg' starts or ends with white space"),
    (None, "new\nline.jpg", r"--data .*: path '.*/new\\nline\.jpg' contains a newline"),
], ids=["leading-space", "newline"])
def test_subsample_refuses_unlistable_files_before_scoring(photo_dir, tiny_checkpoint, tmp_path, no_scoring, folder,
                                                           name, match):
    from dali_kmix.apps.common import UsageError

    data = tmp_path / "data"
    shutil.copytree(photo_dir, data)
    cls = sorted(p for p in data.iterdir() if p.is_dir())[0]
    if folder is not None:  # a path that starts with white space: its class folder's name does
        cls = cls.rename(data / folder)
    shutil.copy(sorted(cls.iterdir())[0], cls / name)
    with pytest.raises(UsageError, match=match):
        _subsample_in_process(photo_dir, tiny_checkpoint, "--out", str(tmp_path / "o" / "subset.txt"), data=data)
    assert not (tmp_path / "o").exists()


def test_subsample_scores_files_with_inner_spaces(photo_dir, tiny_checkpoint, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(photo_dir, data)
    cls = sorted(p for p in data.iterdir() if p.is_dir())[0]
    for f in sorted(cls.iterdir()):
        f.rename(f.with_name(f"my {f.name}"))
    assert _subsample_in_process(photo_dir, tiny_checkpoint, "--ratio", "1", "--out", str(tmp_path / "subset.txt"),
                                 data=data) == 0
    listed = read_file_list(tmp_path / "subset.txt")
    assert sorted(listed) == sorted(list_files(data)) and any(" " in rel for rel, _ in listed)


@pytest.mark.parametrize("args,match", [
    (["--out", "{t}/subset.csv"], r"--out \(the file list\) and the scores CSV .* are the same file"),
    (["--out", "{t}/s.json"], r"--out \(the file list\) and the summary JSON .* are the same file"),
    (["--out", "{t}/a.txt", "--scores", "{t}/a.txt"], r"--out \(the file list\) and the scores CSV"),
    (["--out", "{t}/a.txt", "--scores", "{t}/b.json"], r"the scores CSV .* and the summary JSON"),
    (["--out", "{t}/a.txt", "--figure", "{t}/a.csv"], r"the scores CSV .* and --figure are the same file"),
])
def test_subsample_refuses_outputs_that_overwrite_each_other(photo_dir, tiny_checkpoint, tmp_path, args, match):
    from dali_kmix.apps.common import UsageError

    with pytest.raises(UsageError, match=match):
        _subsample_in_process(photo_dir, tiny_checkpoint, *(a.format(t=tmp_path) for a in args))
    assert not list(tmp_path.iterdir())  # refused before any scoring or writing


def test_subsample_refuses_data_whose_classes_differ_from_the_checkpoint(photo_dir, tiny_checkpoint, tmp_path):
    from dali_kmix.apps.common import UsageError
    from dali_kmix.apps.data import class_names

    data = tmp_path / "data"
    shutil.copytree(photo_dir, data)
    classes = class_names(data)  # the class folders (the tree also holds its .complete stamp)
    shutil.rmtree(data / classes[2])
    with pytest.raises(UsageError, match=rf"label 2 is {classes[3]!r} in the data, {classes[2]!r} in the "
                                         rf"checkpoint \(7 vs 8 classes\)"):
        _subsample_in_process(photo_dir, tiny_checkpoint, "--out", str(tmp_path / "o" / "subset.txt"), data=data)
    shutil.copytree(photo_dir / classes[2], data / classes[2])
    (data / classes[-1]).rename(data / "zz_other")  # as many classes, one name differs
    with pytest.raises(UsageError, match=rf"label 7 is 'zz_other' in the data, {classes[-1]!r} in the checkpoint"):
        _subsample_in_process(photo_dir, tiny_checkpoint, "--out", str(tmp_path / "o" / "subset.txt"), data=data)
    assert not (tmp_path / "o").exists()
