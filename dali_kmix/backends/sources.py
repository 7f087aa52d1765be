"""The CUDA C sources in ``kernels/``: where they are, how they are read, and how they compile.

One cached loader reads a ``.cu`` file and prefixes a ``#line`` directive, so a
compiler error (NVRTC, nvcc or g++) names the real file and line. The options
used at run time are defined here once and used by the GPU loader
(:mod:`dali_kmix.backends.gpu`) and by the compile gate
(:func:`compile_with_nvrtc`, :func:`compile_with_nvcc`) that CI runs on
machines without a GPU.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = [
    "KernelCompileError", "kernels_dir", "read_source", "cuda_include_dirs", "nvrtc_options",
    "DEVICE_SOURCES", "NAME_EXPRESSIONS", "compile_with_nvrtc", "compile_with_nvcc",
]

#: Kernel sources compiled for the GPU (each a translation unit of its own).
DEVICE_SOURCES = ("kmix_blend.cu", "kmix_boxes.cu", "kmix_saliency.cu")

#: Template instantiations the Python side launches, per source.
NAME_EXPRESSIONS = {
    "kmix_blend.cu": tuple(
        f"{kern}<{t}>" for kern in ("kmix_dmixup", "kmix_dcutmix") for t in ("unsigned char", "__half", "float")
    ),
    "kmix_boxes.cu": (),
    "kmix_saliency.cu": tuple(f"kmix_grey_resize<{t}>" for t in ("unsigned char", "__half", "float")),
}

#: Parameter lists of the templates, for nvcc's explicit instantiations.
TEMPLATE_PARAMS = {
    "kmix_dmixup": "const {t}* const*, {t}* const*, const int*, const float*, int, int, long long",
    "kmix_dcutmix": "const {t}* const*, {t}* const*, const int*, const int*, int, int, int, int, int, int",
    "kmix_grey_resize": "const {t}* const*, float*, int, int, int, int, int, int, int",
}

#: Options for every device compile. --fmad=false: the only fused multiply-adds are
#: the explicit fmaf calls, exactly as in the host build (-ffp-contract=off).
BASE_OPTIONS = ("-std=c++17", "--fmad=false")


class KernelCompileError(RuntimeError):
    """A kernel failed to compile; the message carries the compiler's log."""


def kernels_dir() -> Path:
    """The folder with the .cu sources: installed package data, or ``kernels/`` of a checkout.

    Found next to this module's own package (never through the import system), so a
    second checkout run with ``PYTHONPATH`` uses its own sources, not an editable
    install's.
    """
    pkg = Path(__file__).resolve().parent.parent  # dali_kmix/
    for here in (pkg / "kernels", pkg.parent / "kernels"):
        if (here / "kmix_blend.cu").is_file():
            return here
    raise FileNotFoundError("dali_kmix kernel sources not found (expected package data dali_kmix/kernels/*.cu)")


@functools.lru_cache(maxsize=None)
def read_source(name: str) -> str:
    """Source text of ``kernels/<name>``, starting with ``#line 1 "<absolute path>"``."""
    path = kernels_dir() / name
    text = path.read_text()
    return f'#line 1 "{path.as_posix()}"\n{text}'


@functools.lru_cache(maxsize=None)
def cuda_include_dirs() -> tuple[str, ...]:
    """Folders that hold ``cuda_fp16.h``: $CUDA_PATH, pip's nvidia wheels, /usr/local/cuda."""
    candidates = []
    for var in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "include")
    for entry in sys.path:
        base = Path(entry) / "nvidia"
        if base.is_dir():
            candidates += [base / "cu13" / "include", base / "cuda_runtime" / "include",
                           base / "cuda_nvrtc" / "include"]
    candidates += [Path("/usr/local/cuda/include")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent / "include")
    seen, out = set(), []
    for c in candidates:
        if (c / "cuda_fp16.h").is_file() and str(c) not in seen:
            seen.add(str(c))
            out.append(str(c))
    return tuple(out)


def nvrtc_options(arch: str | None = None) -> tuple[str, ...]:
    """NVRTC options for run time (``arch=None``: CuPy adds the device's) or for the gate."""
    opts = list(BASE_OPTIONS) + [f"-I{kernels_dir()}"]
    inc = cuda_include_dirs()
    if inc:
        opts.append(f"-I{inc[0]}")
    if arch is not None:
        opts.append(f"--gpu-architecture={arch}")
    return tuple(opts)


def compile_with_nvrtc(name: str, arch: str) -> bytes:
    """Compile ``kernels/<name>`` with NVRTC for ``arch`` (e.g. "sm_90") without touching a GPU.

    CuPy's own helper asks the current device for its architecture, so this drives
    NVRTC's program API directly. Returns the cubin; raises KernelCompileError with
    the full log on failure.
    """
    from cupy.cuda import nvrtc

    prog = nvrtc.createProgram(read_source(name), name, [], [])
    try:
        for expr in NAME_EXPRESSIONS.get(name, ()):
            nvrtc.addNameExpression(prog, expr)
        try:
            nvrtc.compileProgram(prog, list(nvrtc_options(arch)))
        except nvrtc.NVRTCError as exc:
            log = nvrtc.getProgramLog(prog)
            raise KernelCompileError(f"NVRTC failed on {name} for {arch}: {exc}\n{log}") from None
        for expr in NAME_EXPRESSIONS.get(name, ()):
            nvrtc.getLoweredName(prog, expr)  # raises if an instantiation is missing
        return nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)


def compile_with_nvcc(name: str, arch: str, nvcc: str | None = None) -> bytes:
    """Compile ``kernels/<name>`` with nvcc to a cubin (same language options as NVRTC)."""
    nvcc = nvcc or shutil.which("nvcc")
    if not nvcc:
        raise FileNotFoundError("nvcc not found on PATH")
    src = kernels_dir() / name
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / (Path(name).stem + ".cubin")
        inst = Path(tmp) / "inst.cu"
        # nvcc has no name expressions: instantiate the templates explicitly.
        lines = [f'#include "{src.as_posix()}"']
        for expr in NAME_EXPRESSIONS.get(name, ()):
            kern, t = expr[:-1].split("<", 1)
            lines.append(f"template __global__ void {kern}<{t}>({TEMPLATE_PARAMS[kern].format(t=t)});")
        inst.write_text("\n".join(lines) + "\n")
        cmd = [nvcc, "-cubin", f"-arch={arch}", "-std=c++17", "--fmad=false", f"-I{kernels_dir()}",
               "-o", str(out), str(inst)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise KernelCompileError(f"nvcc failed on {name} for {arch}:\n{' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        return out.read_bytes()
