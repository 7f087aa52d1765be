"""The kmix command line: the demo writes its PNG grid and prints the throughput line; a user's mistake
gets one line and exit status 2 (checked in this process through ``cli.main``; the tests marked slow start the
real ``python -m dali_kmix.apps.cli`` process)."""

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("nvidia.dali")

from _helpers import kmix_here  # noqa: E402


def _kmix(*args, cwd):
    return subprocess.run([sys.executable, "-m", "dali_kmix.apps.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.mark.slow
def test_demo_writes_grid_and_throughput(tmp_path):
    proc = _kmix("demo", "--out", str(tmp_path / "demo"), "--device", "cpu", "--batches", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    png = tmp_path / "demo" / "dcutmix_grid.png"
    assert f"wrote {png}" in proc.stdout
    img = np.asarray(Image.open(png))
    assert img.shape[0] > 300 and img.shape[1] > 600 and img.std() > 10
    m = re.search(r"DCutMix K=3 (\d+) images/s, without mixing (\d+) images/s \((\d+) %\)", proc.stdout)
    assert m, proc.stdout
    assert int(m.group(1)) > 0 and int(m.group(2)) > 0


@pytest.mark.slow
def test_data_command(tmp_path):
    proc = _kmix("data", "photos", str(tmp_path / "p"), "--per-class", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "p").rglob("*.jpg"))) == 16


@pytest.mark.slow
def test_kernels_check_command(tmp_path):
    proc = _kmix("kernels", "check", "--arch", "sm_90", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nvrtc sm_90 kmix_blend.cu: ok" in proc.stdout and "host build:" in proc.stdout


@pytest.mark.slow
def test_bad_command_line(tmp_path):
    proc = _kmix("demo", "--device", "tpu", cwd=tmp_path)
    assert proc.returncode == 2 and "invalid choice: 'tpu'" in proc.stderr


@pytest.mark.slow
def test_kernels_build_command_builds_the_plugin_too(tmp_path):
    proc = _kmix("kernels", "build", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "libkmix.so" in proc.stdout and "libkmix_dali.so" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["train", "--data", "missing-folder"], r"kmix: error: train folder 'missing-folder/train' does not exist"),
    (["train", "--data", ".", "--k", "1"], r"kmix: error: k must be >= 2, got 1"),
    (["train", "--data", ".", "--alpha", "-1"], r"kmix: error: alpha must be > 0 and finite, got -1.0"),
    (["subsample", "--data", ".", "--checkpoint", "missing.pt", "--ratio", "0.1", "--out", "s.txt"],
     r"kmix: error: --checkpoint 'missing.pt' does not exist"),
    (["train", "--data", ".", "--resume"], r"kmix: error: train folder 'train' does not exist"),
    (["demo", "--k", "1", "--batches", "1"], r"kmix: error: k must be >= 2, got 1"),
    (["demo", "--batches", "0"], r"kmix: error: batches must be >= 1, got 0"),
    (["demo", "--batches", "1", "--seed", "-1"], r"kmix: error: seed must be >= 0, got -1"),
    (["demo", "--out", "a_file"], r"kmix: error: out_dir \(--out\) 'a_file' exists and is not a folder"),
    (["data", "photos", "p", "--per-class", "0"], r"kmix: error: --per-class must be >= 1, got 0"),
    (["data", "fashion-mnist", "f", "--val-per-class", "-1"], r"kmix: error: --val-per-class must be >= 1, got -1"),
    (["data", "photos", "p", "--source", "x"], r"kmix: error: --source applies to fashion-mnist only, not to photos"),
    (["data", "photos", "p", "--seed", "-2"], r"kmix: error: --seed must be >= 0, got -2"),
    (["data", "photos", "docs"], r"kmix: error: 'docs' already exists and is not a photo tree written by dali_kmix; "
                                 r"pass overwrite=True \(kmix data --overwrite\) to replace it, or choose another folder"),
    (["data", "photos", "a_file"], r"kmix: error: 'a_file' exists and is not a folder"),
    (["data", "check", "a_file"], r"kmix: error: data folder 'a_file' is not a folder"),
    (["bench", "--data", "missing-folder"], r"kmix: error: data_dir 'missing-folder' is not a folder"),
    (["bench", "--data", "docs"], r"kmix: error: data_dir \(--data\) 'docs' holds no image that readers.file reads"),
    (["bench", "--out", "a_file"], r"kmix: error: out_dir \(--out\) 'a_file' exists and is not a folder"),
], ids=["missing-folder", "k1", "negative-alpha", "missing-checkpoint", "resume-no-data", "demo-k1", "demo-batches0",
        "demo-seed", "demo-out-file", "photos-per-class0", "fmnist-val-per-class", "photos-source", "photos-seed",
        "photos-over-user-files", "photos-over-a-file", "check-a-file", "bench-missing-data", "bench-empty-data",
        "bench-out-file"])
def test_user_mistakes_get_one_line_and_status_2(tmp_path, monkeypatch, capsys, args, message):
    from dali_kmix.apps import bench

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "docs" / "thesis").mkdir(parents=True)
    (tmp_path / "docs" / "thesis" / "chapter1.txt").write_text("irreplaceable")

    def no_timing(*a, **kw):
        raise AssertionError("the benchmark started timing before it checked its arguments")

    monkeypatch.setattr(bench, "bench_ops", no_timing)
    rc, out, err = kmix_here(args, capsys)
    assert rc == 2, out + err
    assert re.fullmatch(message + r"\n", err), err
    assert "Traceback" not in err
    assert (tmp_path / "docs" / "thesis" / "chapter1.txt").read_text() == "irreplaceable"
    assert (tmp_path / "a_file").read_text() == "x"


def test_abbreviated_options_are_refused(tmp_path, monkeypatch, capsys):
    # an abbreviated --stop-after would survive into the printed resume command, which would stop again
    monkeypatch.chdir(tmp_path)
    rc, out, err = kmix_here(["train", "--data", ".", "--stop-aft", "2"], capsys)
    assert rc == 2 and "unrecognized arguments: --stop-aft 2" in err, err
    rc, out, err = kmix_here(["--deb", "demo"], capsys)
    assert rc == 2 and "unrecognized arguments: --deb" in err, err


def test_gpu_asked_without_one_gets_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DALI_KMIX_NO_GPU", "1")
    (tmp_path / "t" / "a").mkdir(parents=True)
    for args in (["demo", "--device", "gpu", "--batches", "1"], ["data", "check", "t", "--device", "gpu"]):
        rc, out, err = kmix_here(args, capsys)
        assert rc == 2 and err == "kmix: error: device='gpu' (--device gpu) but no CUDA device is available\n", err


def test_data_check_fails_on_trees_that_train_refuses(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "tonly" / "train" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "tonly" / "train" / "a" / "x.jpg")
    for tree, problem in (("empty", "data folder 'empty' has no class sub-folders (nor train/ and val/)"),
                          ("tonly", "val folder 'tonly/val' does not exist")):
        rc, out, err = kmix_here(["data", "check", tree, "--no-progress"], capsys)
        assert rc == 1 and f"kmix: problem: {problem}" in out, out + err


@pytest.mark.slow
def test_a_user_mistake_in_the_real_process(tmp_path):
    proc = _kmix("train", "--data", "missing-folder", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "kmix: error: train folder 'missing-folder/train' does not exist\n", proc.stderr


def test_subsample_ratio_out_of_range(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "ck.pt").write_bytes(b"")
    rc, out, err = kmix_here(["subsample", "--data", "d", "--checkpoint", "ck.pt", "--ratio", "2", "--out", "s.txt"],
                              capsys)
    assert rc == 2 and err == "kmix: error: ratio must be in (0, 1], got 2.0\n", err


@pytest.mark.slow
def test_debug_shows_the_traceback(tmp_path):
    proc = _kmix("--debug", "train", "--data", "missing-folder", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "FileNotFoundError" in proc.stderr
