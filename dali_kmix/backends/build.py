"""The host build cache: compile C++ sources into a shared library once per machine and source version.

Used by the CPU kernels (:mod:`dali_kmix.backends.cpu`) and the DALI plugin
(:mod:`dali_kmix.backends.plugin`). The system C++ compiler (``$CXX``, else ``g++``,
else ``c++``) builds into a cache folder (``$DALI_KMIX_CACHE``, default
``~/.cache/dali_kmix``), keyed by a hash of the sources with every header they read,
the flags, the processor and the compiler's version. Concurrent first uses wait on a
file lock and the library appears atomically.

``DALI_KMIX_SANITIZE=1`` selects AddressSanitizer/UBSan-instrumented builds;
``DALI_KMIX_SANITIZE=fuzzer`` adds libFuzzer's coverage instrumentation to them
(``-fsanitize=fuzzer-no-link``: clang only, for ``make fuzz``, see tests/fuzz/).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["compiler", "cpu_id", "build_flags", "numpy_random", "cache_dir", "compile_cached", "build_log", "tool_version",
           "sanitize_requested", "target_flags", "BASE_FLAGS", "SANITIZE_FLAGS"]

# -fno-math-errno: sqrt and the like set no errno, so they inline and vectorise (no result changes).
BASE_FLAGS = ["-std=c++17", "-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno", "-fPIC", "-shared",
              "-pthread", "-Wall", "-Wextra"]
# -g1: line tables only, which is all a sanitizer's report symbolises (file:line of every frame); full -g cost the
# ASan build of the DALI plugin a third more compile time (60 s against 41) for variable info no report reads.
SANITIZE_FLAGS = ["-O1", "-g1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                  "-fno-sanitize-recover=all"]


def compiler() -> str | None:
    """Path of the C++ compiler the CPU build uses, or None."""
    for cand in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def sanitize_requested() -> bool:
    """``DALI_KMIX_SANITIZE`` set (and not 0): build the ASan/UBSan variants."""
    return os.environ.get("DALI_KMIX_SANITIZE", "") not in ("", "0")


def cpu_id() -> str:
    """One line that names the processor (its model, or its flags): part of every build key."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def target_flags() -> list[str]:
    """The instruction set the host code is built for: ``-march=native`` on x86-64 (``-mcpu=native`` on Arm), or
    ``$DALI_KMIX_MARCH`` in its place (e.g. ``x86-64-v3`` for a build that runs on any AVX2 machine, ``x86-64``
    for the baseline; the SIMD loops then take the width that target has, or the plain loops). Part of the build
    key like every flag. Empty on other machines."""
    march = os.environ.get("DALI_KMIX_MARCH", "").strip() or "native"
    if platform.machine() in ("x86_64", "AMD64"):
        return [f"-march={march}"]
    if platform.machine() in ("aarch64", "arm64"):
        return [f"-mcpu={march}"]
    return []


def build_flags(sanitize: bool | None = None) -> list[str]:
    """The CPU build's flags; with ``sanitize`` the ASan/UBSan variant, for the same target (so the sanitizers
    watch the SIMD loops that ship)."""
    sanitize = sanitize_requested() if sanitize is None else sanitize
    flags = list(BASE_FLAGS)
    if sanitize:
        flags = [f for f in flags if f != "-O3"] + SANITIZE_FLAGS
        if os.environ.get("DALI_KMIX_SANITIZE", "").strip() == "fuzzer":
            # clang: coverage for a libFuzzer linked elsewhere (atheris); no vptr check (its handler
            # lives in a C++ UBSan runtime that atheris's preloaded sanitizer library does not carry)
            flags += ["-fsanitize=fuzzer-no-link", "-fno-sanitize=vptr"]
    return flags + target_flags()


def numpy_random() -> tuple[list[str], list[str], list[Path]]:
    """``(compile flags, libraries, inputs)`` for code that calls NumPy's random distributions from C
    (``kernels/kmix_draw.h``): NumPy's headers and the static library it ships for C users
    (``numpy/random/lib/libnpyrandom.a``: the functions behind ``numpy.random.Generator``, so a draw from
    the same bit generator is the same number). Where this NumPy lacks the library, ``-DKMIX_NO_NPYRANDOM``:
    the builds leave the native sampler out (and the DALI operators draw in Python)."""
    import numpy

    lib = Path(numpy.random.__file__).parent / "lib" / "libnpyrandom.a"
    include = f"-isystem{numpy.get_include()}"
    if not lib.is_file():
        return [include, "-DKMIX_NO_NPYRANDOM"], [], []
    return [include], [str(lib), "-lm"], [lib]


def cache_dir() -> Path:
    root = os.environ.get("DALI_KMIX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dali_kmix")
    return Path(root)


def tool_version(exe: str) -> str:
    """``exe --version`` (its first lines), "" when it cannot run: part of the build keys."""
    try:
        return subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def compile_cached(lib_name: str, sources, flags, *, libs=(), inputs=(), key_extra: str = "",
                   verbose: bool = False, what: str = "the CPU kernels", compiler_cmd: str | None = None,
                   announce=None) -> Path:
    """Compile ``sources`` into the shared library (or object) ``lib_name`` under :func:`cache_dir` (cached).

    The command is ``compiler flags sources libs -o lib`` (libraries after the sources); the
    compiler is ``compiler_cmd`` (e.g. nvcc), else :func:`compiler`.

    The cache key hashes ``inputs`` (the files the build reads), the command line,
    ``key_extra``, the processor and the compiler's version, so any change rebuilds.
    Concurrent first uses wait on a file lock; the library appears atomically, with the
    compiler's own output beside it in ``<lib_name>.log`` (empty output: no warning) and the command line in
    ``<lib_name>.cmd``.
    ``announce``: a line printed to stderr before a build starts (not when cached), or a
    function called then; by default ``dali_kmix: building <what>, once per version...``, so
    that no first build (tens of seconds) starts unannounced.
    Raises FileNotFoundError without a C++ compiler and RuntimeError with the
    compiler's output when the build fails.
    """
    cxx = compiler_cmd or compiler()
    if cxx is None:
        raise FileNotFoundError("no C++ compiler found (set $CXX or install g++)")
    cmd = [cxx, *flags, *map(str, sources), *libs]
    h = hashlib.sha256()
    for path in inputs:
        h.update(Path(path).read_bytes())
    h.update(" ".join(cmd).encode())
    h.update(key_extra.encode())
    h.update(cpu_id().encode())
    h.update(tool_version(cxx).encode())
    out_dir = cache_dir() / h.hexdigest()[:16]
    lib = out_dir / lib_name
    if lib.is_file():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if lib.is_file():
            return lib
        if announce is None:
            announce = f"dali_kmix: building {what}, once per version..."
        if callable(announce):
            announce()
        elif announce:
            print(announce, file=sys.stderr, flush=True)
        tmp = lib.with_name(f"{lib.stem}.{os.getpid()}.tmp{lib.suffix}")
        full = cmd + ["-o", str(tmp)]
        proc = subprocess.run(full, capture_output=True, text=True)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"building {what} failed:\n{' '.join(full)}\n{proc.stdout}{proc.stderr}")
        if verbose:
            print(" ".join(full))
        log = lib.with_name(lib.name + ".log")
        log.write_text(proc.stdout + proc.stderr)
        lib.with_name(lib.name + ".cmd").write_text(" ".join(full) + "\n")  # which flags made it
        os.replace(tmp, lib)
    return lib


def build_log(lib: Path) -> str:
    """What the compiler printed while building ``lib`` (a :func:`compile_cached` output); "" when nothing."""
    log = Path(lib).with_name(Path(lib).name + ".log")
    return log.read_text() if log.is_file() else ""
