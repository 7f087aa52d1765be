"""The CUDA kernels compiled for the CPU, called through ctypes.

``kernels/kmix_host.cpp`` includes the same ``.cu`` files the GPU runs, through a
small shim header (``kernels/kmix_host_shim.h``). It is built with the system C++
compiler (``$CXX``, else ``g++``, else ``c++``) on first use into a cache folder
(``$DALI_KMIX_CACHE``, default ``~/.cache/dali_kmix``), keyed by a hash of the
sources, the flags and the compiler, and loaded with ctypes. The build runs once
per machine and source version; concurrent first uses wait on a file lock.

Where no compiler is available (or the build fails) :func:`load` returns None
after one warning, and callers fall back to the NumPy reference (same results,
several times slower).

Set ``DALI_KMIX_SANITIZE=1`` to build an AddressSanitizer/UBSan-instrumented
variant (the test suite does this in a subprocess with libasan preloaded).
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np

from ._checks import hwc_dims
from .kernel_source import kernels_dir

__all__ = ["load", "build", "compile_cached", "available", "compiler", "dmixup", "dcutmix", "nest_boxes", "grey_resize", "DTYPE_CODES", "default_workers"]

DTYPE_CODES = {np.dtype(np.uint8): 0, np.dtype(np.float16): 1, np.dtype(np.float32): 2}
LAYOUT_CODES = {"HWC": 0, "CHW": 1}

HOST_SOURCES = ("kmix_host.cpp", "kmix_host_shim.h", "kmix_common.cuh", "kmix_blend.cu", "kmix_boxes.cu",
                "kmix_saliency.cu")

BASE_FLAGS = ["-std=c++17", "-O3", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared", "-pthread",
              "-Wall", "-Wextra"]
SANITIZE_FLAGS = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                  "-fno-sanitize-recover=all"]


def compiler() -> str | None:
    """Path of the C++ compiler the CPU build uses, or None."""
    for cand in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def _sanitize() -> bool:
    return os.environ.get("DALI_KMIX_SANITIZE", "") not in ("", "0")


def _cpu_id() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def build_flags(sanitize: bool | None = None) -> list[str]:
    sanitize = _sanitize() if sanitize is None else sanitize
    flags = list(BASE_FLAGS)
    if sanitize:
        flags = [f for f in flags if f != "-O3"] + SANITIZE_FLAGS
    elif platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"):
        flags.append("-march=native" if platform.machine() in ("x86_64", "AMD64") else "-mcpu=native")
    return flags


def cache_dir() -> Path:
    root = os.environ.get("DALI_KMIX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dali_kmix")
    return Path(root)


def compile_cached(lib_name: str, sources, flags, *, libs=(), inputs=(), key_extra: str = "",
                   verbose: bool = False, what: str = "the CPU kernels") -> Path:
    """Compile ``sources`` into the shared library ``lib_name`` under :func:`cache_dir` (cached).

    The command is ``$CXX flags sources libs -o lib`` (libraries after the sources).

    The cache key hashes ``inputs`` (the files the build reads), the command line,
    ``key_extra``, the processor and the compiler's version, so any change rebuilds.
    Concurrent first uses wait on a file lock; the library appears atomically.
    Raises FileNotFoundError without a C++ compiler and RuntimeError with the
    compiler's output when the build fails.
    """
    cxx = compiler()
    if cxx is None:
        raise FileNotFoundError("no C++ compiler found (set $CXX or install g++)")
    cmd = [cxx, *flags, *map(str, sources), *libs]
    h = hashlib.sha256()
    for path in inputs:
        h.update(Path(path).read_bytes())
    h.update(" ".join(cmd).encode())
    h.update(key_extra.encode())
    h.update(_cpu_id().encode())
    try:
        h.update(subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.encode())
    except OSError:
        pass
    out_dir = cache_dir() / h.hexdigest()[:16]
    lib = out_dir / lib_name
    if lib.is_file():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if lib.is_file():
            return lib
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        full = cmd + ["-o", str(tmp)]
        proc = subprocess.run(full, capture_output=True, text=True)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"building {what} failed:\n{' '.join(full)}\n{proc.stdout}{proc.stderr}")
        if verbose:
            print(" ".join(full))
        os.replace(tmp, lib)
    return lib


def build(sanitize: bool | None = None, verbose: bool = False) -> Path:
    """Compile ``kmix_host.cpp`` to a shared library (cached); return its path.

    Raises FileNotFoundError without a C++ compiler and RuntimeError with the
    compiler's output when the build fails.
    """
    flags = build_flags(sanitize)
    src_dir = kernels_dir()
    name = "libkmix_asan.so" if "-fsanitize=address,undefined" in flags else "libkmix.so"
    return compile_cached(name, [src_dir / "kmix_host.cpp"], [*flags, f"-I{src_dir}"],
                          inputs=[src_dir / n for n in HOST_SOURCES], verbose=verbose)


_P = ctypes.c_void_p
_I = ctypes.c_int
_L = ctypes.c_longlong


@functools.lru_cache(maxsize=None)
def _load(sanitize: bool):
    try:
        path = build(sanitize)
    except (FileNotFoundError, RuntimeError, OSError) as exc:
        warnings.warn(f"dali_kmix: CPU kernels unavailable, using the NumPy reference instead ({exc})",
                      RuntimeWarning, stacklevel=3)
        return None
    lib = ctypes.CDLL(str(path))
    lib.kmix_host_dmixup.argtypes = [_I, _P, _P, _P, _P, _I, _I, _L, _I, _I, _I]
    lib.kmix_host_dcutmix.argtypes = [_I, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _I, _I, _I]
    lib.kmix_host_nest_boxes.argtypes = [_P, _P, _I, _P, _P, _I, _I, _I, _I, _P, _P, _P, _P, _I, _I]
    lib.kmix_host_grey_resize.argtypes = [_I, _P, _P, _I, _I, _I, _I, _I, _I, _I, _I, _I]
    lib.kmix_host_grey_resize.restype = _I
    lib.kmix_host_half_to_float.argtypes = [_P, _P, _L]
    lib.kmix_host_float_to_half.argtypes = [_P, _P, _L]
    for fn in (lib.kmix_host_dmixup, lib.kmix_host_dcutmix, lib.kmix_host_nest_boxes):
        fn.restype = _I
    return lib


def load():
    """The loaded library, or None (with one warning) when it cannot be built."""
    return _load(_sanitize())


def available() -> bool:
    return load() is not None


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _ptrs(arrays) -> np.ndarray:
    return np.fromiter((a.ctypes.data for a in arrays), dtype=np.uint64, count=len(arrays))


def _c(a, dtype):
    """A C-contiguous array of ``dtype`` (no copy when it already is one)."""
    return np.ascontiguousarray(a, dtype=dtype)


def dmixup(inputs, outputs, sources, weights, *, workers=None, block_threads=1, reverse=False):
    """DMixup on the CPU. ``inputs``/``outputs``: lists of N C-contiguous arrays of one shape and dtype."""
    lib = load()
    n = len(outputs)
    if n == 0:
        return outputs
    src = _c(sources, np.int32)
    w = _c(weights, np.float32)
    pin, pout = _ptrs(inputs), _ptrs(outputs)
    rc = lib.kmix_host_dmixup(DTYPE_CODES[outputs[0].dtype], pin.ctypes.data, pout.ctypes.data,
                              src.ctypes.data, w.ctypes.data, n, src.shape[1], outputs[0].size,
                              workers or default_workers(), block_threads, int(reverse))
    if rc:
        raise RuntimeError(f"kmix_host_dmixup failed with code {rc}")
    return outputs


def dcutmix(inputs, outputs, sources, boxes, layout, *, workers=None, block_threads=1, reverse=False):
    """DCutMix on the CPU. Samples are (H, W, C) for "HWC" or (C, H, W) for "CHW"."""
    lib = load()
    n = len(outputs)
    if n == 0:
        return outputs
    h, w, c = hwc_dims(outputs[0].shape, layout)
    src = _c(sources, np.int32)
    bx = _c(boxes, np.int32)
    pin, pout = _ptrs(inputs), _ptrs(outputs)
    rc = lib.kmix_host_dcutmix(DTYPE_CODES[outputs[0].dtype], pin.ctypes.data, pout.ctypes.data,
                               src.ctypes.data, bx.ctypes.data, n, src.shape[1], h, w, c,
                               LAYOUT_CODES[layout], workers or default_workers(), block_threads,
                               int(reverse))
    if rc:
        raise RuntimeError(f"kmix_host_dcutmix failed with code {rc}")
    return outputs


def nest_boxes(method, phi, uniforms, perms, mixed, height, width, *, centers=None, workers=1, reverse=False):
    """The device nesting kernel run on the CPU; returns (sources, weights, boxes or None).

    ``centers``: int32 (N, 2) salient point of every image (Saliency-DCutMix), or None.
    """
    lib = load()
    n = int(mixed.shape[0])
    k = int(phi.shape[1])
    phi = _c(phi, np.float64)
    uni = _c(uniforms, np.float64)
    perms = _c(perms, np.int32)
    mixed = _c(mixed, np.uint8)
    stride = 1 if phi.shape[0] == n else 0
    sources = np.empty((n, k), np.int32)
    weights = np.empty((n, k), np.float32)
    boxes = np.empty((n, k - 1, 4), np.int32) if method != "dmixup" else None
    if centers is not None:
        centers = _c(centers, np.int32)
    rc = lib.kmix_host_nest_boxes(phi.ctypes.data, uni.ctypes.data, stride, perms.ctypes.data,
                                  mixed.ctypes.data, n, k, height, width, sources.ctypes.data,
                                  weights.ctypes.data, None if boxes is None else boxes.ctypes.data,
                                  None if centers is None else centers.ctypes.data, workers, int(reverse))
    if rc:
        raise RuntimeError(f"kmix_host_nest_boxes failed with code {rc}")
    return sources, weights, boxes


def grey_resize(inputs, layout, out_h, out_w, *, workers=None, reverse=False):
    """Small grey copies (float32 ``(N, out_h, out_w)``) of N same-shape samples."""
    lib = load()
    n = len(inputs)
    out = np.empty((n, out_h, out_w), np.float32)
    if n == 0:
        return out
    h, w, c = hwc_dims(inputs[0].shape, layout)
    inputs = [np.ascontiguousarray(a) for a in inputs]
    pin = _ptrs(inputs)
    rc = lib.kmix_host_grey_resize(DTYPE_CODES[inputs[0].dtype], pin.ctypes.data, out.ctypes.data, n, h, w, c,
                                   LAYOUT_CODES[layout], out_h, out_w, workers or default_workers(), int(reverse))
    if rc:
        raise RuntimeError(f"kmix_host_grey_resize failed with code {rc}")
    return out


def half_to_float(bits: np.ndarray) -> np.ndarray:
    bits = _c(bits, np.uint16)
    out = np.empty(bits.shape, np.float32)
    load().kmix_host_half_to_float(bits.ctypes.data, out.ctypes.data, bits.size)
    return out


def float_to_half(values: np.ndarray) -> np.ndarray:
    values = _c(values, np.float32)
    out = np.empty(values.shape, np.uint16)
    load().kmix_host_float_to_half(values.ctypes.data, out.ctypes.data, values.size)
    return out
