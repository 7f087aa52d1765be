"""A built wheel ships the CUDA sources as package data, and the installed package finds them."""

import subprocess
import sys
import zipfile

import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_contains_the_kernel_sources(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = tmp_path.glob("dali_kmix-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for src in ("kmix_blend.cu", "kmix_boxes.cu", "kmix_saliency.cu", "kmix_common.cuh", "kmix_codes.h",
                "kmix_host_shim.h", "kmix_host.cpp", "kmix_dali_op.cpp"):
        assert f"dali_kmix/kernels/{src}" in names, sorted(names)
    for mod in ("record.py", "sampling.py", "backends/__init__.py", "backends/gpu.py", "apps/cli.py"):
        assert f"dali_kmix/{mod}" in names, sorted(names)
    # and the installed wheel resolves its kernels from the package data, not from a checkout
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = ("import dali_kmix.backends.sources as k; p = k.kernels_dir(); print(p); "
            "assert (p / 'kmix_blend.cu').is_file()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert str(target) in proc.stdout
