"""The two study scripts of the README run end to end (their --quick smoke runs, on Fashion-MNIST), and what they
check before reusing a finished run (fast, no training).

Each smoke run is a background job (tests/_background.py): it runs beside the session on the second core, and its
test, last in the session, checks what it wrote."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import _background as background
import pytest

from dali_kmix.apps.data import FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parent.parent
HAVE_DATA = Path(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").is_file()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="Debian package dataset-fashion-mnist not installed")
sys.path.insert(0, str(ROOT / "benchmarks"))  # the studies import their shared module as ``common``

import common  # noqa: E402
import study_mixing  # noqa: E402
import study_subsample  # noqa: E402


def _cmd(script, folder):
    return [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--data", str(folder / "fm"),
            "--out", str(folder / "out")]


def _study_job(script):
    """The background job of one study's smoke run, in a fresh folder that its test removes."""

    def job():
        if not HAVE_DATA:
            pytest.skip("Debian package dataset-fashion-mnist not installed")
        folder = Path(tempfile.mkdtemp(prefix="kmix-study-"))
        # unbuffered: the job's stdout and stderr share one file, so each table line is written whole, not split by
        # a block flush around a warning
        return _cmd(script, folder), dict(os.environ, PYTHONUNBUFFERED="1"), folder

    return job


BACKGROUND_JOBS = {"test_mixing_study_quick": _study_job("study_mixing.py"),
                   "test_subsample_study_quick": _study_job("study_subsample.py")}


@pytest.fixture
def study(request):
    """(output, folder) of this test's smoke run, which ran clean; the folder goes when the test ends."""
    out, returncode, folder = background.RUNNER.result(request.node.name, BACKGROUND_JOBS[request.node.name])
    try:
        assert returncode == 0, out[-6000:]
        yield out, folder
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@needs_data
def test_mixing_study_quick(study):
    out, tmp_path = study
    (js,) = (tmp_path / "out").glob("study2-quick-*.json")
    summary = json.loads(js.read_text())
    res = summary["results"]
    assert list(res) == ["none", "Mixup (K=2)", "CutMix (K=2)", "DMixup (K=3)", "DCutMix (K=3)", "DCutMix (K=5)",
                         "Saliency-DCutMix (K=3)"]
    assert all(0 <= r[0]["final_val_top1_err"] <= 1 and r[0]["history"][0]["train_loss"] > 0 for r in res.values())
    assert js.with_suffix(".png").is_file() and "| Saliency-DCutMix (K=3) |" in out
    assert "| DCutMix (K=3) − CutMix (K=2) | 1 |" in out  # the paired difference of seed 0
    records = sorted(p.name for p in (tmp_path / "out" / "study2-quick").glob("*.json"))
    assert len([r for r in records if not r.startswith("flat-")]) == 7  # one record per run
    assert len([r for r in records if r.startswith("flat-")]) == 3  # and per flatness model
    assert [len(f["val_loss"]) for f in summary["flatness"]["DCutMix (K=3)"]] == [2]  # two sigmas
    assert list((tmp_path / "out").glob("study2-quick-flatness-*.png"))
    # resumes: everything is finished, nothing is trained again
    again = subprocess.run(_cmd("study_mixing.py", tmp_path), capture_output=True, text=True, timeout=900,
                           cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "7 of 7 runs already finished; 0 to run" in again.stdout


@pytest.mark.slow
@needs_data
def test_subsample_study_quick(study):
    out, tmp_path = study
    (js,) = (tmp_path / "out").glob("subsample3-quick-*.json")
    res = json.loads(js.read_text())["results"]
    assert set(res) == {f"t={t}, {s}" for t in ("0.05", "0.1")
                        for s in ("high CV, top", "high CV, interval n=2", "random", "mean, easy", "mean, hard")}
    assert res["t=0.05, random"][0]["kept"] == 10  # 5 % of 20 per class, 10 classes
    assert (tmp_path / "out" / "subsample3-quick-figure2.png").is_file() and "| t=0.1, random |" in out
    assert "t=0.05: high CV, top − random" in out


# --------------------------------------------------------------------------- checks before anything trains or is reused


@pytest.fixture
def no_data(monkeypatch):
    """The studies' data tree may not be made: a test that reaches it has let a bad option through."""

    def refuse(args):
        raise AssertionError("the data was made before the options were checked")

    monkeypatch.setattr(common, "fashion_mnist", refuse)


@pytest.mark.parametrize("study,args,match", [
    (study_mixing, ["--seeds", "0", "1", "0"], r"--seeds must not repeat a value, got \[0, 1, 0\] \(0 twice\)"),
    (study_mixing, ["--directions", "0"], r"--directions must be >= 1, got 0"),
    (study_mixing, ["--directions", "-2"], r"--directions must be >= 1, got -2"),
    (study_mixing, ["--jobs", "0"], r"--jobs must be >= 1, got 0"),
    (study_mixing, ["--epochs", "0"], r"--epochs must be >= 1, got 0"),
    (study_subsample, ["--seeds", "2", "2"], r"--seeds must not repeat a value, got \[2, 2\] \(2 twice\)"),
    (study_subsample, ["--ratios", "0.1", "0.05", "0.1"], r"--ratios must not repeat a value, got \[0\.1, 0\.05, "
                                                          r"0\.1\] \(0\.1 twice\)"),
    (study_subsample, ["--ratios", "0.1", "0"], r"--ratios must each be in \(0, 1\], got \[0\.1, 0\.0\]"),
    (study_subsample, ["--ratios", "1.5"], r"--ratios must each be in \(0, 1\], got \[1\.5\]"),
    (study_subsample, ["--samples-seen", "0"], r"--samples-seen must be >= 1, got 0"),
    (study_subsample, ["--pass-size", "-1"], r"--pass-size must be >= 1, got -1"),
    (study_subsample, ["--full-epochs", "0"], r"--full-epochs must be >= 1, got 0"),
    (study_subsample, ["--jobs", "0"], r"--jobs must be >= 1, got 0"),
    (study_subsample, ["--seeds", "-1"], r"--seeds must be >= 0, got -1"),
], ids=["mixing-seeds-twice", "mixing-directions-0", "mixing-directions-neg", "mixing-jobs-0", "mixing-epochs-0",
        "subsample-seeds-twice", "subsample-ratios-twice", "subsample-ratio-0", "subsample-ratio-over-1",
        "subsample-samples-seen-0", "subsample-pass-size-neg", "subsample-full-epochs-0", "subsample-jobs-0",
        "subsample-seed-neg"])
def test_studies_refuse_bad_arguments_before_anything_runs(no_data, tmp_path, study, args, match):
    from dali_kmix.apps.common import UsageError

    with pytest.raises(UsageError, match=match):
        study.main(["--out", str(tmp_path / "out"), *args])
    assert not list(tmp_path.iterdir())


def test_run_pending_counts_failures_with_one_job(tmp_path, monkeypatch):
    trained = []

    def fake_train(cfg, path, record):
        trained.append(record["run"])
        if record["run"] == "a":
            raise RuntimeError("diverged")
        return {"final_val_top1_err": 0.5, "final_train_loss": 1.0, "final_val_loss": 2.0, "run_s": 1}

    monkeypatch.setattr(common, "train_to_json", fake_train)
    tasks = [(tmp_path / f"{r}.json", {"seed": 0}, {"run": r}) for r in ("a", "b")]
    lines = []
    assert common.run_pending(tasks, 1, log=lambda *a, **kw: lines.append(a[0])) == 1
    assert trained == ["a", "b"]  # the failure did not stop the grid
    assert any("a: FAILED: RuntimeError('diverged')" in line for line in lines)


def _record(path, cfg, identity=None):
    common.write_json(path, {"run": "r", "finished": "2026-12-07T00:00:00", "config": cfg,
                             **({"identity": identity} if identity is not None else {})})


@pytest.mark.parametrize("recorded,wanted,match", [
    ({"train_per_class": 100, "val_per_class": 300}, {"train_per_class": 20, "val_per_class": 300},
     r"trained on other data \(differs in \['train_per_class'\]"),
    ({"train_per_class": 100, "train_list_sha256": "aa"}, {"train_per_class": 100, "train_list_sha256": "bb"},
     r"differs in \['train_list_sha256'\]: recorded \{'train_list_sha256': 'aa'\}, now "
     r"\{'train_list_sha256': 'bb'\}"),
    ({"train_per_class": 100}, {"train_per_class": 100}, None),
    (None, {"train_per_class": 20, "train_list_sha256": "bb"}, None),  # a record from before: taken as matching
    ({"train_per_class": 100}, {"train_per_class": 100, "train_list_sha256": "bb"}, None),
], ids=["per-class-count", "train-list", "same", "old-record", "old-record-without-hash"])
def test_load_finished_refuses_records_of_other_data(tmp_path, recorded, wanted, match):
    cfg = {"seed": 0, "data": "/somewhere", "train_list": "/somewhere/list.txt"}
    _record(tmp_path / "r.json", cfg, recorded)
    if match is None:
        assert common.load_finished(tmp_path / "r.json", dict(cfg, data="/elsewhere"), wanted)["run"] == "r"
    else:
        with pytest.raises(SystemExit, match=match):
            common.load_finished(tmp_path / "r.json", cfg, wanted)


def test_run_pending_records_and_checks_the_identity(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "train_to_json", lambda cfg, path, rec: pytest.fail("trained again"))
    _record(tmp_path / "r.json", {"seed": 0}, {"train_per_class": 20})
    task = (tmp_path / "r.json", {"seed": 0}, {"run": "r", "identity": {"train_per_class": 100}})
    with pytest.raises(SystemExit, match=r"r\.json was trained on other data"):
        common.run_pending([task], 1, log=lambda *a, **kw: None)


def test_file_list_hash_is_the_hash_of_the_written_list(tmp_path):
    import hashlib

    from dali_kmix.apps.subsample import write_file_list

    pairs = [("c0/a b.jpg", 0), ("c1/x.jpg", 1)] * 3
    write_file_list(pairs, tmp_path / "l.txt")
    assert common.file_list_sha256(pairs) == hashlib.sha256((tmp_path / "l.txt").read_bytes()).hexdigest()
    assert common.file_list_sha256(pairs) != common.file_list_sha256(pairs[:4])


@pytest.mark.parametrize("recorded,wanted,match", [
    (dict(partners="fixed"), dict(partners="redrawn"), r"scored with other settings \(differs in \['partners'\]"),
    (dict(m=10, k=3), dict(m=5, k=3), r"differs in \['m'\]"),
    (dict(scoring_model_finished="A", pool_per_class=600), dict(scoring_model_finished="B", pool_per_class=20),
     r"differs in \['pool_per_class', 'scoring_model_finished'\]"),
    (dict(partners="fixed"), dict(partners="fixed", scoring_model_finished="B"), None),  # a summary from before
    (None, dict(partners="fixed"), r"has no scores\.json beside it"),
], ids=["partners", "mixes", "model-and-pool", "old-summary", "no-summary"])
def test_scores_are_reused_only_when_scored_alike(tmp_path, recorded, wanted, match):
    if recorded is not None:
        common.write_json(tmp_path / "scores.json", {"scored": 6, "args": dict(study_subsample.SCORING, **recorded)})
    wanted = dict(study_subsample.SCORING, **wanted)
    if match is None:
        study_subsample.check_scoring(tmp_path / "scores.json", wanted)
    else:
        with pytest.raises(SystemExit, match=match):
            study_subsample.check_scoring(tmp_path / "scores.json", wanted)


@pytest.mark.parametrize("stamp,reused", [("A", True), ("B", False), (None, True)],
                         ids=["same-model", "other-model", "old-record"])
def test_flatness_records_are_reused_only_for_their_model(tmp_path, stamp, reused):
    rec = {"label": "none", "run": "none-s0", "seed": 0, "sigmas": [0.0, 0.1], "directions": 1,
           "val_loss": [[1.0], [2.0]]}
    if stamp is not None:
        rec["model_finished"] = stamp
    common.write_json(tmp_path / "flat-none-s0.json", rec)
    lines = []
    flat = study_mixing.flatness({"none": [{"run": "none-s0", "seed": 0, "finished": "A"}]}, tmp_path / "runs",
                                 tmp_path, tmp_path / "data", [0.0, 0.1], 1, log=lambda *a, **kw: lines.append(a[0]))
    if reused:
        assert flat["none"] == [rec] and not lines
    else:  # measured again, from the run's checkpoint (absent here)
        assert flat["none"] == [] and "no checkpoint" in lines[0]
