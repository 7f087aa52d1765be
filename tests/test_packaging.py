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
    from dali_kmix.backends import plugin

    # every file a build reads: the CPU kernels, the plugin (CPU and GPU backends), the NVRTC sources
    for src in {*plugin.SOURCES, *plugin.GPU_SOURCES, "kmix_boxes.cu", "kmix_saliency.cu"}:
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


# One GPU stack per venv (setup.py extras cuda12 / cuda13): one CuPy and one DALI, of the CUDA major version of
# torch, whose CUDA libraries load. These need no device, only the installed packages.

def _dists(prefix):
    from importlib import metadata

    names = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in metadata.distributions()}
    return sorted(n for n in names if n == prefix.rstrip("-") or n.startswith(prefix))


def test_one_cupy_and_one_dali_distribution():
    cupys, dalis = _dists("cupy-"), _dists("nvidia-dali-")
    assert len(cupys) == 1, f"expected one CuPy distribution, got {cupys} (install one extra: cuda12 or cuda13)"
    assert len(dalis) == 1, f"expected one DALI distribution, got {dalis} (install one extra: cuda12 or cuda13)"


def test_cupy_dali_and_torch_share_a_cuda_major_version():
    import re

    torch = pytest.importorskip("torch")
    majors = {}
    for name in _dists("cupy-") + _dists("nvidia-dali-"):
        m = re.fullmatch(r"cupy-cuda(\d\d)x|nvidia-dali-cuda(\d\d)0", name)
        if m:
            majors[name] = int(m.group(1) or m.group(2))
    if torch.version.cuda:
        majors["torch"] = int(torch.version.cuda.split(".")[0])
    assert len(set(majors.values())) == 1, f"CUDA major versions differ: {majors}"


def test_cupy_cuda_libraries_load():
    cupy = pytest.importorskip("cupy")
    from cupy.cuda import nvrtc

    assert nvrtc.getVersion()[0] >= 12
    from cupy.cuda import cufft, curand  # ImportError here: CuPy's cuFFT/cuRAND of another CUDA major version

    assert cufft.getVersion() > 0 and curand.getVersion() > 0
    assert cupy.__version__


def test_dali_backend_loads():
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import backend

    assert backend.__name__


@pytest.mark.gpu
def test_cuda_libraries_run_on_the_device():
    import cupy

    x = cupy.random.default_rng(0).random(64, dtype=cupy.float32)  # cuRAND
    y = cupy.fft.ifft(cupy.fft.fft(x)).real  # cuFFT
    cupy.testing.assert_allclose(y, x, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["option", "env"])
def test_require_gpu_fails_loudly_without_a_device(how):
    import os

    from dali_kmix.backends.build import env_flag

    if not env_flag("DALI_KMIX_NO_GPU"):
        from dali_kmix.backends import gpu_available

        if gpu_available():
            pytest.skip("a CUDA device is here: --require-gpu has nothing to fail on")
    args = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
            str(ROOT / "tests" / "test_packaging.py")]
    env = dict(os.environ)
    if how == "option":
        args.append("--require-gpu")
    else:
        env["DALI_KMIX_REQUIRE_GPU"] = "1"
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "the GPU tests cannot run here" in out, out
    assert "CuPy" in out or "DALI_KMIX_NO_GPU" in out, out
    # and without it the same run skips cleanly
    env.pop("DALI_KMIX_REQUIRE_GPU", None)
    proc = subprocess.run(args[:-1] if how == "option" else args, capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode in (0, 5), proc.stdout + proc.stderr


@pytest.mark.parametrize("value,on", [("", False), ("0", False), ("off", False), ("False", False), ("1", True),
                                      ("yes", True), (" TRUE ", True)])
def test_the_tests_read_their_gpu_switches_as_the_package_reads_yes_no_variables(monkeypatch, value, on):
    import types

    import conftest

    monkeypatch.setenv("DALI_KMIX_NO_GPU", value)
    assert ("DALI_KMIX_NO_GPU is set" in conftest.gpu_problems()) is on
    monkeypatch.setenv("DALI_KMIX_REQUIRE_GPU", value)
    assert conftest._require_gpu(types.SimpleNamespace(getoption=lambda name: False)) is on
    monkeypatch.setenv("DALI_KMIX_REQUIRE_GPU", "perhaps")
    with pytest.raises(ValueError, match="DALI_KMIX_REQUIRE_GPU must be 0, 1.* got 'perhaps'"):
        conftest._require_gpu(types.SimpleNamespace(getoption=lambda name: False))
