"""The kmix command line: the demo writes its PNG grid and prints the throughput line."""

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("nvidia.dali")


def _kmix(*args, cwd):
    return subprocess.run([sys.executable, "-m", "dali_kmix.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


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


def test_data_command(tmp_path):
    proc = _kmix("data", "photos", str(tmp_path / "p"), "--per-class", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "p").rglob("*.jpg"))) == 16


def test_kernels_check_command(tmp_path):
    proc = _kmix("kernels", "check", "--arch", "sm_90", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nvrtc sm_90 kmix_blend.cu: ok" in proc.stdout and "host build:" in proc.stdout


def test_bad_command_line(tmp_path):
    proc = _kmix("demo", "--device", "tpu", cwd=tmp_path)
    assert proc.returncode == 2 and "invalid choice: 'tpu'" in proc.stderr


def test_kernels_build_command_builds_the_plugin_too(tmp_path):
    proc = _kmix("kernels", "build", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "libkmix.so" in proc.stdout and "libkmix_dali.so" in proc.stdout
