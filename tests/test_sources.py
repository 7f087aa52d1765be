"""Compile gate: every kernel compiles with NVRTC for sm_80 and sm_90 with the run-time options, and with
nvcc where it is installed; a compile error carries the compiler log pointing into the .cu file."""

import shutil

import pytest

from dali_kmix.backends import sources as kernel_source

ARCHS = ["sm_80", "sm_90"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", kernel_source.DEVICE_SOURCES)
def test_nvrtc_compiles_every_kernel(name, arch):
    cubin = kernel_source.compile_with_nvrtc(name, arch)
    assert cubin[:4] == b"\x7fELF"
    for expr in kernel_source.NAME_EXPRESSIONS[name] or ("kmix_nest_boxes",):
        assert expr.split("<")[0].encode() in cubin


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", kernel_source.DEVICE_SOURCES)
def test_nvcc_compiles_every_kernel(name, arch):
    cubin = kernel_source.compile_with_nvcc(name, arch)
    assert cubin[:4] == b"\x7fELF"


def test_run_time_options_are_the_gate_options():
    opts = kernel_source.nvrtc_options(None)
    assert "--fmad=false" in opts and "-std=c++17" in opts
    assert not any(o.startswith("--gpu-architecture") for o in opts)  # CuPy adds the device's
    assert kernel_source.nvrtc_options("sm_90") == opts + ("--gpu-architecture=sm_90",)


def test_sources_start_with_a_line_directive():
    src = kernel_source.read_source("kmix_blend.cu")
    first = src.splitlines()[0]
    assert first.startswith("#line 1 \"") and first.endswith("kmix_blend.cu\"")


@pytest.fixture
def broken_kernels(tmp_path, monkeypatch):
    real = kernel_source.kernels_dir()
    for f in real.iterdir():
        if f.suffix in (".cu", ".cuh", ".h"):
            shutil.copy(f, tmp_path / f.name)
    text = (tmp_path / "kmix_boxes.cu").read_text().splitlines()
    text.insert(20, "  this_is_not_cuda;")
    (tmp_path / "kmix_boxes.cu").write_text("\n".join(text) + "\n")
    monkeypatch.setattr(kernel_source, "kernels_dir", lambda: tmp_path)
    kernel_source.read_source.cache_clear()
    yield tmp_path
    kernel_source.read_source.cache_clear()


def test_nvrtc_error_names_the_file_and_line(broken_kernels):
    with pytest.raises(kernel_source.KernelCompileError, match=r"kmix_boxes\.cu\(21\).*this_is_not_cuda"):
        kernel_source.compile_with_nvrtc("kmix_boxes.cu", "sm_90")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_nvcc_error_names_the_file_and_line(broken_kernels):
    with pytest.raises(kernel_source.KernelCompileError, match=r"kmix_boxes\.cu\(21\).*this_is_not_cuda"):
        kernel_source.compile_with_nvcc("kmix_boxes.cu", "sm_90")
