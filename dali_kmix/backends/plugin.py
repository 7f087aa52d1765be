"""The blending kernels as native DALI operators with a CPU and a GPU backend (a DALI plugin), built on first use.

``kernels/kmix_dali_op.cpp`` registers ``fn.kmix_dmixup(images, sources, weights,
layout=...)``, ``fn.kmix_dcutmix(images, sources, boxes, layout=...)`` and
``fn.kmix_mix(images, sources, weights, boxes, cut, layout=...)`` (either, per sample): they apply
a :class:`~dali_kmix.MixParams` record (one row per sample, CPU tensors) to a batch of images on
the CPU (the kernels of :mod:`dali_kmix.backends.cpu`, on the pipeline's thread pool) or on the
GPU (the same ``__global__`` kernels, compiled by nvcc, on the operator's CUDA stream), straight
into DALI's output buffer. Both backends share one schema and one set of checks
(``kernels/kmix_record.h``). :mod:`dali_kmix.dali` uses them when they load; the record and the
labels are still drawn in Python.

Build (cached under a key over every source and header, the flags, the compilers' versions and
DALI's version and CUDA version; see :func:`dali_kmix.backends.build.compile_cached`):

1. with a CUDA toolchain (:func:`cuda_toolchain`: ``$CUDA_HOME``/``$CUDA_PATH``, ``nvcc`` on
   PATH, or the pip CUDA compiler package of DALI's CUDA major version; an nvcc of another CUDA
   major version than DALI's is passed over with a warning), nvcc compiles
   ``kernels/kmix_gpu_launch.cu`` (the kernels of ``kmix_blend.cu`` and their launches) with the
   floating-point options of :data:`dali_kmix.backends.sources.FP_OPTIONS` for :data:`GPU_ARCHS`
   plus PTX for newer devices;
2. the system C++ compiler builds the operators against the headers and ``libdali.so`` of the
   installed DALI wheel (``nvidia.dali.sysconfig``) and links that object and the CUDA runtime.

Without nvcc the CPU-only plugin is built, after one warning (:class:`NoGpuBackendWarning`)
naming what is missing; GPU pipelines then blend in ``python_function`` with CuPy. Where the
plugin cannot be built at all, :func:`load` warns once and returns False, and the operators fall
back to ``python_function`` (same results). ``DALI_KMIX_PLUGIN=0`` turns the plugin off; with
``DALI_KMIX_SANITIZE=1`` the CPU-only plugin is built with AddressSanitizer and UBSan (and loaded only
into a process with the ASan runtime preloaded). A ``$DALI_KMIX_MARCH`` the compiler does not know,
or one this processor cannot run, is an error here as for the CPU kernels, not a fall back.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

from . import cpu
from .build import (build_flags, check_sanitizer_runtime, check_target, compile_cached, compiler, env_flag,
                    numpy_random, sanitize_requested, tool_version)
from .sources import FP_OPTIONS, cuda_include_dirs, kernels_dir

__all__ = ["build", "load", "enabled", "gpu_backend", "draw_operator", "expose_to_dynamic_mode", "cuda_toolchain",
           "nvcc_flags", "gpu_object", "gpu_ptx",
           "fatbin_images", "NoGpuBackendWarning",
           "SOURCES", "GPU_SOURCES", "GPU_ARCHS", "PTX_ARCH", "OPERATORS", "DRAW_OPERATOR"]

#: Files the CPU plugin build reads (the operators, the shared checks and the host kernels it links in).
SOURCES = ("kmix_dali_op.cpp", "kmix_record.h") + cpu.HOST_SOURCES
#: Files nvcc reads for the GPU backend.
GPU_SOURCES = ("kmix_gpu_launch.cu", "kmix_launch.h", "kmix_blend.cu", "kmix_common.cuh", "kmix_codes.h")
#: Real architectures the GPU backend is compiled for (from Turing, the oldest CUDA 13 supports: a T4 finds its
#: code), and the PTX that newer devices JIT-compile.
GPU_ARCHS = ("sm_75", "sm_80", "sm_90")
PTX_ARCH = "compute_90"
#: The operators the plugin registers (DALI's schema names), with a CPU and a GPU backend.
OPERATORS = ("KmixDmixup", "KmixDcutmix", "KmixMix")
#: The operator that draws a batch's record natively (CPU only; ``fn.kmix_draw``).
DRAW_OPERATOR = "KmixDraw"


class NoGpuBackendWarning(RuntimeWarning):
    """The plugin was built without its GPU backend (no CUDA toolchain, or nvcc failed)."""


class CudaToolchain(NamedTuple):
    nvcc: str       #: the nvcc executable
    include: str    #: CUDA headers for the operators' C++ (cuda_runtime_api.h and crt/host_config.h)
    cudart: str     #: the shared CUDA runtime library the plugin links


def enabled() -> bool:
    """False when ``DALI_KMIX_PLUGIN`` is a no (0, false, no, off), True when unset, empty or a yes; ValueError
    for any other value (:func:`dali_kmix.backends.build.env_flag`)."""
    return env_flag("DALI_KMIX_PLUGIN", default=True)


def _dali_flags() -> tuple[list[str], list[str], str]:
    import nvidia.dali as dali
    import nvidia.dali.sysconfig as sysconfig

    # DALI's headers as system headers: their warnings are not ours.
    compile_flags = [f"-isystem{f[2:]}" if f.startswith("-I") else f for f in sysconfig.get_compile_flags()]
    link = sysconfig.get_link_flags()
    lib_dirs = [f[2:] for f in link if f.startswith("-L")]
    # libdali_core holds the memory resources the GPU backend's scratchpad allocates from
    core = [f"-l{p.name[3:-3]}" for d in lib_dirs for p in Path(d).glob("libdali_core.so")]
    return compile_flags, link + core + [f"-Wl,-rpath,{d}" for d in lib_dirs], dali.__version__


def _dali_cuda_major() -> str | None:
    """The CUDA major version DALI was built for ("13" for nvidia-dali-cuda130), from its distribution name."""
    from importlib import metadata

    for dist in metadata.distributions():
        m = re.fullmatch(r"nvidia[-_]dali[-_]cuda(\d+?)0", (dist.metadata["Name"] or "").lower())
        if m:
            return m.group(1)
    return None


def _nvcc_candidates() -> list[Path]:
    out = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var, "").strip()
        if value:
            nvcc = Path(value) / "bin" / "nvcc"
            if not nvcc.is_file():
                warnings.warn(f"dali_kmix: {var}={value!r} has no bin/nvcc; looking for nvcc elsewhere",
                              RuntimeWarning, stacklevel=3)
            out.append(nvcc)
    if shutil.which("nvcc"):
        out.append(Path(shutil.which("nvcc")))
    major = _dali_cuda_major()
    for entry in sys.path:  # pip's CUDA compiler: nvidia-cuda-nvcc (cu13 layout) or nvidia-cuda-nvcc-cu12
        base = Path(entry or ".") / "nvidia"
        out += [base / f"cu{major}" / "bin" / "nvcc"] if major else []
        out += [base / "cuda_nvcc" / "bin" / "nvcc"]
    return out


def _nvcc_release(nvcc: Path) -> str | None:
    """The CUDA version of an nvcc ("13.0", from ``nvcc --version``), or None where it does not say."""
    m = re.search(r"release (\d+\.\d+)", tool_version(str(nvcc)))
    return m.group(1) if m else None


def _toolkit_root(nvcc: Path) -> Path:
    """The toolkit folder of an nvcc, as nvcc itself reports it (``TOP``: a wrapper script such as
    /usr/local/bin/nvcc resolves to the real toolkit); else the folder above its bin/."""
    import subprocess

    try:
        out = subprocess.run([str(nvcc), "--dryrun", "-c", "-x", "cu", "/dev/null", "-o", "/dev/null"],
                             capture_output=True, text=True, timeout=60)
        m = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
        if m and Path(m.group(1).strip()).is_dir():
            return Path(m.group(1).strip()).resolve()
    except (OSError, subprocess.SubprocessError):
        pass
    return nvcc.resolve().parent.parent


def _cudart(root: Path) -> Path | None:
    major = _dali_cuda_major()
    names = ["libcudart.so"] + ([f"libcudart.so.{major}"] if major else [])
    dirs = [root / "lib64", root / "lib", *sorted(root.glob("targets/*/lib"))]
    for entry in sys.path:
        base = Path(entry or ".") / "nvidia"
        dirs += [base / f"cu{major}" / "lib", base / "cuda_runtime" / "lib"] if major else []
    for d in dirs:
        for name in names:
            if (d / name).is_file():
                return d / name
    return None


@functools.lru_cache(maxsize=None)
def cuda_toolchain() -> tuple[CudaToolchain | None, str]:
    """``(toolchain, "")`` when nvcc, the CUDA headers and the CUDA runtime are found, else
    ``(None, what is missing)``."""
    major = _dali_cuda_major()
    nvcc = None
    for cand in _nvcc_candidates():
        if not (cand.is_file() and os.access(cand, os.X_OK)):
            continue
        release = _nvcc_release(cand)
        if major and release and release.split(".")[0] != major:
            warnings.warn(f"dali_kmix: passing over {cand}: it is CUDA {release}, and DALI is built for CUDA {major}",
                          RuntimeWarning, stacklevel=2)
            continue
        nvcc = cand
        break
    if nvcc is None:
        places = "$CUDA_HOME/bin, $CUDA_PATH/bin, PATH, pip's nvidia-cuda-nvcc"
        return None, f"nvcc not found (looked in {places})"
    root = _toolkit_root(nvcc)
    heads = [root / "include", *map(Path, cuda_include_dirs())]
    include = next((h for h in heads if (h / "cuda_runtime_api.h").is_file() and
                    (h / "crt" / "host_config.h").is_file()), None)
    if include is None:
        return None, f"no CUDA headers with crt/host_config.h next to {nvcc} or in {list(cuda_include_dirs())}"
    cudart = _cudart(root)
    if cudart is None:
        return None, f"no libcudart.so next to {nvcc} ({root}) or in pip's nvidia packages"
    return CudaToolchain(str(nvcc), str(include), str(cudart)), ""


def nvcc_flags() -> list[str]:
    """nvcc's options for ``kmix_gpu_launch.cu``: the FP options of the NVRTC path, :data:`GPU_ARCHS` plus PTX."""
    gencode = [f"-gencode=arch=compute_{a[3:]},code={a}" for a in GPU_ARCHS]
    gencode.append(f"-gencode=arch={PTX_ARCH},code={PTX_ARCH}")
    return ["-c", "-std=c++17", *FP_OPTIONS, "-O3", *_host_compiler_flags(),
            "-Xcompiler=-fPIC,-fvisibility=hidden,-Wall,-Wextra", *gencode, f"-I{kernels_dir()}"]


def _host_compiler_flags() -> list[str]:
    """nvcc's host compiler: ``-ccbin`` with the compiler of :func:`~dali_kmix.backends.build.compiler` (nvcc runs
    one executable: of a ``$CXX`` such as ``ccache g++``, the last word that is a program, behind the launcher), and
    the words of ``$CXX`` after it through ``-Xcompiler``."""
    cxx = compiler()
    if not cxx:
        return []
    at = max((i for i, w in enumerate(cxx) if not w.startswith("-") and shutil.which(w)), default=0)
    exe, rest = shutil.which(cxx[at]) or cxx[at], cxx[at + 1:]
    return ["-ccbin", exe, *([f"-Xcompiler={','.join(rest)}"] if rest else [])]


def _announce(what: str):
    said = []

    def say():
        if not said:
            said.append(True)
            print(f"dali_kmix: building the DALI plugin ({what}), about {'a minute' if 'GPU' in what else '30 s'}, "
                  "once per version...", file=sys.stderr, flush=True)
    return say


def _build_gpu_object(tc: CudaToolchain, say, verbose: bool) -> Path:
    src_dir = kernels_dir()
    return compile_cached("kmix_gpu_launch.o", [src_dir / "kmix_gpu_launch.cu"], nvcc_flags(),
                          inputs=[src_dir / n for n in GPU_SOURCES], compiler_cmd=tc.nvcc,
                          key_extra=f"host compiler {tool_version(compiler() or [])}", verbose=verbose,
                          what="the GPU backend of the dali_kmix DALI plugin (nvcc)", announce=say)


def gpu_object(verbose: bool = False) -> Path | None:
    """The nvcc-built object of the GPU backend (cached; built if needed), or None without a CUDA toolchain."""
    tc, _ = cuda_toolchain()
    return None if tc is None else _build_gpu_object(tc, _announce("CPU+GPU"), verbose)


def gpu_ptx(arch: str = PTX_ARCH) -> str:
    """PTX of ``kmix_gpu_launch.cu`` for ``arch`` with the GPU backend's own options (what its PTX image holds)."""
    import subprocess
    import tempfile

    tc, missing = cuda_toolchain()
    if tc is None:
        raise FileNotFoundError(missing)
    opts = [f for f in nvcc_flags() if f != "-c" and not f.startswith("-gencode")]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "kmix_gpu_launch.ptx"
        cmd = [tc.nvcc, "-ptx", f"-arch={arch}", *opts, str(kernels_dir() / "kmix_gpu_launch.cu"), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc -ptx failed:\n{' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        return out.read_text()


def fatbin_images(obj) -> list[tuple[str, int, bytes]]:
    """``[(kind, arch, payload)]`` of the device images an nvcc object embeds: ("elf", 80, cubin) for sm_80,
    ("ptx", 90, text) for compute_90 (the PTX payload is as stored: nvcc may compress it with zstd)."""
    import struct

    data = Path(obj).read_bytes()
    at = data.find(struct.pack("<I", 0xBA55ED50))  # the fat binary's magic number
    if at < 0:
        return []
    _, _, header, size = struct.unpack_from("<IHHQ", data, at)
    pos, end, out = at + header, at + header + size, []
    while pos + 32 <= end:
        kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, pos)
        compressed, arch = struct.unpack_from("<I", data, pos + 16)[0], struct.unpack_from("<I", data, pos + 28)[0]
        body = data[pos + entry_header:pos + entry_header + payload]
        out.append(({1: "ptx", 2: "elf"}.get(kind, str(kind)), arch, body[:compressed] if compressed else body))
        pos += entry_header + payload
    return out


def build(verbose: bool = False, gpu: bool | None = None) -> Path:
    """Compile the plugin (cached); return the path of its shared library.

    ``gpu``: None builds the GPU backend where :func:`cuda_toolchain` finds one (else the CPU-only
    plugin, after one :class:`NoGpuBackendWarning`); True requires it; False leaves it out.
    The ASan/UBSan build (``DALI_KMIX_SANITIZE=1``) is CPU-only. Raises FileNotFoundError without
    a compiler or the CUDA runtime headers and RuntimeError with the compiler's output when the
    build fails.
    """
    base = build_flags()  # DALI_KMIX_SANITIZE=1: the ASan/UBSan build, as for the CPU kernels
    sanitize = "-fsanitize=address,undefined" in base
    tc, missing = cuda_toolchain() if gpu is not False and not sanitize else (None, "")
    if gpu and tc is None:
        raise FileNotFoundError(f"the GPU backend of the DALI plugin cannot be built: {missing or 'sanitizer build'}")
    if gpu is None and tc is None and not sanitize:
        warnings.warn(f"dali_kmix: the DALI plugin is built without its GPU backend: {missing}", NoGpuBackendWarning,
                      stacklevel=2)
    src_dir = kernels_dir()
    compile_flags, link_flags, version = _dali_flags()
    say = _announce("CPU+GPU" if tc else "CPU only")
    obj = None
    if tc is not None:
        try:
            obj = _build_gpu_object(tc, say, verbose)
        except RuntimeError as exc:
            if gpu:
                raise
            warnings.warn(f"dali_kmix: the DALI plugin is built without its GPU backend: {exc}", NoGpuBackendWarning,
                          stacklevel=2)
            tc = None
    if tc is not None:
        include, extra, libs = tc.include, ["-DKMIX_WITH_GPU"], [str(obj), tc.cudart,
                                                                  f"-Wl,-rpath,{Path(tc.cudart).parent}"]
    else:
        # A complete toolkit's headers (pip's nvidia/cu13/include lacks crt/host_config.h).
        cuda = [d for d in cuda_include_dirs()
                if (Path(d) / "cuda_runtime_api.h").is_file() and (Path(d) / "crt" / "host_config.h").is_file()]
        if not cuda:
            raise FileNotFoundError("the DALI headers need cuda_runtime_api.h; none found (set $CUDA_HOME)")
        include, extra, libs = cuda[0], [], []
    name = "libkmix_dali_asan.so" if sanitize else "libkmix_dali.so"
    # GCC 12 reports -Wfree-nonheap-object inside DALI's SmallVector (a false positive in its headers).
    quiet = ["-Wno-free-nonheap-object"] if "clang" not in tool_version(compiler() or []).lower() else []
    flags = ["-std=c++20", *[f for f in base if f != "-std=c++17"], *quiet, "-fvisibility=hidden", f"-I{src_dir}",
             *compile_flags, f"-isystem{include}", *extra]
    np_flags, np_libs, np_inputs = numpy_random()
    flags += np_flags
    sources = [src_dir / "kmix_dali_op.cpp", src_dir / "kmix_host.cpp"]
    inputs = [src_dir / n for n in SOURCES] + ([Path(obj)] if obj else []) + np_inputs
    import nvidia.dali as dali

    return compile_cached(name, sources, flags, libs=libs + np_libs + link_flags, inputs=inputs,
                          key_extra=f"dali {version} cuda {getattr(dali, '__cuda_version__', 'unknown')}",
                          verbose=verbose,
                          what="the dali_kmix DALI plugin", announce=say)


@functools.lru_cache(maxsize=None)
def _load() -> bool:
    # what was asked for and cannot be had is an error, not a fall back: a DALI_KMIX_MARCH the compiler does not know
    # or this processor cannot run, an ASan build without the ASan runtime (it would end the process)
    check_target()
    if sanitize_requested():
        check_sanitizer_runtime()
    try:
        import nvidia.dali.plugin_manager as plugin_manager

        path = build()
        plugin_manager.load_library(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure means: use the python_function path
        warnings.warn(f"dali_kmix: the DALI plugin is unavailable, the CPU operators run as python_function "
                      f"instead ({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=3)
        return False
    expose_to_dynamic_mode()
    return True


def expose_to_dynamic_mode() -> bool:
    """Make the loaded operators part of DALI's dynamic mode (``ndd.kmix_dmixup``, ``ndd.kmix_dcutmix``,
    ``ndd.kmix_mix`` and their classes) when ``nvidia.dali.experimental.dynamic`` is already imported; True when
    they are there (or dynamic mode is not imported yet: then its import lists them by itself).

    DALI 2.4 builds dynamic mode's operator table once, when that module is first imported, from the operators
    registered then; ``plugin_manager.load_library`` refreshes ``fn`` and ``ops`` but not that table, and DALI has
    no public call that does. So for a dynamic mode imported before the plugin, exactly our operators are added
    with dynamic mode's own builder (the one its import runs for every operator); nothing else is rebuilt.
    """
    ndd = sys.modules.get("nvidia.dali.experimental.dynamic")
    if ndd is None:
        return True
    try:
        from nvidia.dali import backend
        from nvidia.dali.experimental.dynamic import _op_builder, _ops

        for name in OPERATORS:
            schema = backend.GetSchema(name)
            if hasattr(_ops, schema.OperatorName()):
                continue
            op_class = _op_builder.build_operator_class(schema)
            function = _op_builder.build_fn_wrapper(op_class)
            _ops._all_ops.append(op_class)
            _ops._all_functions.append(function)
    except Exception as exc:  # noqa: BLE001 - DALI's internals moved: the host path still mixes dynamic batches
        warnings.warn(f"dali_kmix: the native operators could not be added to DALI's dynamic mode, imported before "
                      f"the plugin ({type(exc).__name__}: {exc}); dali_kmix.dynamic mixes on the host instead. "
                      f"Calling dali_kmix.backends.plugin.load() before importing nvidia.dali.experimental.dynamic "
                      f"avoids this", RuntimeWarning, stacklevel=2)
        return False
    return True


def load() -> bool:
    """Build and load the plugin once per process; True when ``fn.kmix_dmixup``, ``fn.kmix_mix`` and
    ``fn.kmix_dcutmix`` are available (False when :func:`enabled` is False). They are then part of DALI's dynamic
    mode too (``ndd.kmix_*``), whether it is imported before or after (:func:`expose_to_dynamic_mode`)."""
    return enabled() and _load()


def draw_operator() -> bool:
    """True when the plugin is loaded with ``fn.kmix_draw`` (the record drawn natively)."""
    if not load():
        return False
    from nvidia.dali import backend

    return DRAW_OPERATOR in set(backend.RegisteredCPUOps())


def gpu_backend() -> bool:
    """True when the plugin is loaded with its GPU backend (DALI lists every ``fn.kmix_*`` as a GPU operator).

    Needs no device: loading the library and listing DALI's registered operators never touches one.
    """
    if not load():
        return False
    from nvidia.dali import backend

    return set(OPERATORS) <= set(backend.RegisteredGPUOps())
