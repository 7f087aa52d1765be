"""The two study scripts of the README run end to end (their --quick smoke runs, on Fashion-MNIST).

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
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not HAVE_DATA, reason="Debian package dataset-fashion-mnist not installed")]


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


def test_subsample_study_quick(study):
    out, tmp_path = study
    (js,) = (tmp_path / "out").glob("subsample3-quick-*.json")
    res = json.loads(js.read_text())["results"]
    assert set(res) == {f"t={t}, {s}" for t in ("0.05", "0.1")
                        for s in ("high CV, top", "high CV, interval n=2", "random", "mean, easy", "mean, hard")}
    assert res["t=0.05, random"][0]["kept"] == 10  # 5 % of 20 per class, 10 classes
    assert (tmp_path / "out" / "subsample3-quick-figure2.png").is_file() and "| t=0.1, random |" in out
    assert "t=0.05: high CV, top − random" in out
