"""The two study scripts of the README run end to end (their --quick smoke runs, on Fashion-MNIST)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dali_kmix.apps.data import FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").is_file(),
                                 reason="Debian package dataset-fashion-mnist not installed")]


def _run(script, tmp_path, *extra):
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--data", str(tmp_path / "fm"),
           "--out", str(tmp_path / "out"), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_mixing_study_quick(tmp_path):
    out = _run("study_mixing.py", tmp_path)
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
    again = _run("study_mixing.py", tmp_path)  # resumes: everything is finished, nothing is trained again
    assert "7 of 7 runs already finished; 0 to run" in again


def test_subsample_study_quick(tmp_path):
    out = _run("study_subsample.py", tmp_path)
    (js,) = (tmp_path / "out").glob("subsample2-quick-*.json")
    res = json.loads(js.read_text())["results"]
    assert set(res) == {f"t={t}, {s}" for t in ("0.05", "0.1")
                        for s in ("high CV, top", "high CV, interval n=2", "random", "mean, easy", "mean, hard")}
    assert res["t=0.05, random"][0]["kept"] == 10  # 5 % of 20 per class, 10 classes
    assert (tmp_path / "out" / "subsample2-quick-figure2.png").is_file() and "| t=0.1, random |" in out
    assert "t=0.05: high CV, top − random" in out
