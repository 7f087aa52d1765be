"""The host build cache: compile C++ sources into a shared library once per machine and source version.

Used by the CPU kernels (:mod:`dali_kmix.backends.cpu`) and the DALI plugin
(:mod:`dali_kmix.backends.plugin`). The system C++ compiler (``$CXX`` as given, e.g.
``ccache g++``; else ``g++``, ``c++`` or ``clang++``) builds into a cache folder
(``$DALI_KMIX_CACHE``, default ``~/.cache/dali_kmix``), keyed by a hash of the sources with
every header they read, the flags, the compiler's version and the environment variables
that change its output (:data:`BUILD_ENV`); a ``-march=native`` build's key holds what
``native`` means on this machine (the instruction sets the compiler enables for it), a
``$DALI_KMIX_MARCH`` build's key no processor identity, so its cache can be shared by
machines of every kind that target runs on. Concurrent first uses wait on a file lock and
the library appears atomically.

``DALI_KMIX_SANITIZE=1`` selects AddressSanitizer/UBSan-instrumented builds;
``DALI_KMIX_SANITIZE=fuzzer`` adds libFuzzer's coverage instrumentation to them
(``-fsanitize=fuzzer-no-link``: clang only, for ``make fuzz``, see tests/fuzz/).
Yes/no variables (``DALI_KMIX_SANITIZE``, ``DALI_KMIX_PLUGIN``, ``DALI_KMIX_NO_GPU``) are read
by :func:`env_flag`: 0/1, true/false, yes/no, on/off in any case; empty is unset.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

__all__ = ["compiler", "build_flags", "numpy_random", "cache_dir", "compile_cached", "build_log",
           "tool_version", "sanitize_requested", "sanitize_mode", "env_flag", "target_flags", "check_target",
           "check_sanitizer_runtime", "BASE_FLAGS", "SANITIZE_FLAGS", "BUILD_ENV"]

# -fno-math-errno: sqrt and the like set no errno, so they inline and vectorise (no result changes).
BASE_FLAGS = ["-std=c++17", "-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno", "-fPIC", "-shared",
              "-pthread", "-Wall", "-Wextra"]
# -g1: line tables only, which is all a sanitizer's report symbolises (file:line of every frame); full -g cost the
# ASan build of the DALI plugin a third more compile time (60 s against 41) for variable info no report reads.
SANITIZE_FLAGS = ["-O1", "-g1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                  "-fno-sanitize-recover=all"]


#: Environment variables that change what the compilers make: nvcc's own options, and the search paths of GCC (and
#: Clang) for headers, libraries and its own programs. Those set are part of every build key and of the ``.cmd`` file.
BUILD_ENV = ("NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS", "NVCC_CCBIN", "CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH",
             "LIBRARY_PATH", "GCC_EXEC_PREFIX", "COMPILER_PATH")

_YES, _NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def env_flag(name: str, default: bool = False) -> bool:
    """The yes/no environment variable ``name``: 1, true, yes, on or 0, false, no, off (in any case, spaces around
    ignored); unset or empty gives ``default``. Raises ValueError naming the variable and its value otherwise."""
    return _flag_of(name, os.environ.get(name, ""), default)


@functools.lru_cache(maxsize=64)
def _flag_of(name: str, raw: str, default: bool) -> bool:
    """:func:`env_flag` of the value ``raw`` (parsed once per value: the kernels' calls read these variables)."""
    value = raw.strip().lower()
    if not value:
        return default
    if value in _YES:
        return True
    if value in _NO:
        return False
    raise ValueError(f"{name} must be 0, 1, true, false, yes, no, on or off, got {raw!r}")


def compiler() -> list[str] | None:
    """The C++ compiler command of the builds, as a list (its first word a path), or None where none is found.

    ``$CXX`` when set, alone and whole: split as a shell splits it (``ccache g++`` keeps its launcher), its first
    word looked up on PATH; a ``$CXX`` that does not resolve raises FileNotFoundError (never another compiler in
    its place). Without it the first of ``g++``, ``c++``, ``clang++`` on PATH."""
    cxx = os.environ.get("CXX", "")
    if cxx.strip():
        try:
            words = shlex.split(cxx)
        except ValueError as exc:
            raise ValueError(f"CXX must be a command line, got {cxx!r} ({exc})") from None
        exe = shutil.which(words[0])
        if exe is None:
            raise FileNotFoundError(f"CXX={cxx!r} not found")
        return [exe, *words[1:]]
    for cand in ("g++", "c++", "clang++"):
        exe = shutil.which(cand)
        if exe:
            return [exe]
    return None


def _libc_getenv():
    """The C library's ``getenv``, called with the GIL held (``PyDLL``: no Python thread changes the environment
    while it reads), or None where there is no C library to ask."""
    try:
        fn = ctypes.PyDLL(None).getenv
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_char_p], ctypes.c_char_p
    return fn


_GETENV = _libc_getenv()


def _sanitize_raw() -> str:
    """``DALI_KMIX_SANITIZE`` of the process environment, read through the C library's ``getenv``: what
    ``os.environ.get("DALI_KMIX_SANITIZE", "")`` gives, since ``os.environ`` keeps that environment in step (its
    assignments and deletions call ``putenv`` and ``unsetenv``), and also what ``os.putenv`` or C code set behind
    its back. Every kernel call reads it, and the Python mapping takes about three times as long (the unset
    variable's KeyError raised and caught). As for every ``getenv``, C code of another thread must not call
    ``setenv`` meanwhile; Python's own changes hold the GIL, which this call holds too."""
    if _GETENV is None:
        return os.environ.get("DALI_KMIX_SANITIZE", "")
    raw = _GETENV(b"DALI_KMIX_SANITIZE")
    return "" if raw is None else raw.decode(sys.getfilesystemencoding(), "surrogateescape")


def sanitize_mode() -> str:
    """``DALI_KMIX_SANITIZE`` read: "" (unset, empty or a no), "address" (a yes: the ASan/UBSan builds) or
    "fuzzer" (those with libFuzzer's coverage counters too). Raises ValueError for any other value. Read again at
    every call (every kernel call asks which library), parsed once per value."""
    return _sanitize_mode_of(_sanitize_raw())


@functools.lru_cache(maxsize=64)
def _sanitize_mode_of(raw: str) -> str:
    if raw.strip().lower() == "fuzzer":
        return "fuzzer"
    try:
        return "address" if _flag_of("DALI_KMIX_SANITIZE", raw, False) else ""
    except ValueError:
        raise ValueError(f"DALI_KMIX_SANITIZE must be 0, 1 or fuzzer (or false/true, no/yes, off/on), "
                         f"got {raw!r}") from None


def sanitize_requested() -> bool:
    """``DALI_KMIX_SANITIZE`` set to a yes or to fuzzer: build the ASan/UBSan variants."""
    return sanitize_mode() != ""


def _requested_march() -> str:
    """``$DALI_KMIX_MARCH`` ("" when unset or empty)."""
    return os.environ.get("DALI_KMIX_MARCH", "").strip()


def _target_flag(march: str) -> str | None:
    if platform.machine() in ("x86_64", "AMD64"):
        return f"-march={march}"
    if platform.machine() in ("aarch64", "arm64"):
        return f"-mcpu={march}"
    return None


@functools.lru_cache(maxsize=None)
def _predefined_macros(cxx: tuple[str, ...], flag: str) -> tuple[int, str]:
    """``(exit status, output)`` of ``cxx flag -dM -E -x c++ /dev/null``: the macros the compiler predefines for the
    target ``flag`` names (the instruction sets it enables among them: ``__AVX2__``, ``__FMA__``, ...), one line
    each; the compiler's error where it refuses the target. Once a process for each compiler and flag."""
    try:
        proc = subprocess.run([*cxx, flag, "-dM", "-E", "-x", "c++", os.devnull], capture_output=True, text=True,
                              timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return -1, str(exc)
    return proc.returncode, proc.stdout if proc.returncode == 0 else proc.stderr


def target_flags() -> list[str]:
    """The instruction set the host code is built for: ``-march=native`` on x86-64 (``-mcpu=native`` on Arm), or
    ``$DALI_KMIX_MARCH`` in its place (e.g. ``x86-64-v3`` for a build that runs on any AVX2 machine, ``x86-64``
    for the baseline; the SIMD loops then take the width that target has, or the plain loops). Part of the build
    key like every flag. Empty on other machines. A ``$DALI_KMIX_MARCH`` the compiler does not know raises
    ValueError naming it (checked once a process)."""
    march = _requested_march()
    flag = _target_flag(march or "native")
    if flag is None:
        return []
    if march and march != "native":
        cxx = compiler()
        if cxx is not None:
            rc, out = _predefined_macros(tuple(cxx), flag)
            if rc != 0:
                why = next((ln.strip() for ln in out.splitlines() if "error" in ln), out.strip()[:300])
                raise ValueError(f"DALI_KMIX_MARCH={march!r} is not a target {Path(cxx[0]).name} knows ({flag}: "
                                 f"{why})")
    return [flag]


#: The instruction-set macros of an x86 target, and the flag /proc/cpuinfo lists for each.
_X86_FEATURES = {
    "__SSE3__": "pni", "__SSSE3__": "ssse3", "__SSE4_1__": "sse4_1", "__SSE4_2__": "sse4_2", "__POPCNT__": "popcnt",
    "__AVX__": "avx", "__AVX2__": "avx2", "__FMA__": "fma", "__F16C__": "f16c", "__BMI__": "bmi1",
    "__BMI2__": "bmi2", "__LZCNT__": "abm", "__MOVBE__": "movbe", "__XSAVE__": "xsave", "__AES__": "aes",
    "__PCLMUL__": "pclmulqdq", "__SHA__": "sha_ni", "__ADX__": "adx", "__RDRND__": "rdrand", "__RDSEED__": "rdseed",
    "__AVX512F__": "avx512f", "__AVX512CD__": "avx512cd", "__AVX512BW__": "avx512bw", "__AVX512DQ__": "avx512dq",
    "__AVX512VL__": "avx512vl", "__AVX512VNNI__": "avx512_vnni", "__AVX512VBMI__": "avx512vbmi",
    "__AVX512IFMA__": "avx512ifma", "__AVX512VBMI2__": "avx512_vbmi2", "__AVX512BITALG__": "avx512_bitalg",
    "__AVX512VPOPCNTDQ__": "avx512_vpopcntdq", "__AVX512BF16__": "avx512_bf16", "__AVX512FP16__": "avx512_fp16",
    "__AVXVNNI__": "avx_vnni", "__VAES__": "vaes", "__VPCLMULQDQ__": "vpclmulqdq", "__GFNI__": "gfni",
}


def _cpu_flags() -> set[str] | None:
    """The processor's flags as /proc/cpuinfo lists them (x86), or None where it cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return None


def check_target() -> None:
    """Refuse a ``$DALI_KMIX_MARCH`` target before anything is built or loaded for it: ValueError for one the
    compiler does not know (:func:`target_flags`), RuntimeError naming the target and the features this processor
    lacks for one it cannot run (x86: the instruction sets the target predefines against /proc/cpuinfo's flags;
    not checked elsewhere). Code built for such a target stops with an illegal instruction (SIGILL), so there is
    no fall back: the target was asked for."""
    march = _requested_march()
    flags = target_flags()
    if not march or march == "native" or not flags or platform.machine() not in ("x86_64", "AMD64"):
        return
    cxx, have = compiler(), _cpu_flags()
    if cxx is None or have is None:
        return
    _, out = _predefined_macros(tuple(cxx), flags[0])
    defined = {m.group(1) for m in re.finditer(r"^#define (\w+)", out, re.MULTILINE)}
    missing = sorted({_X86_FEATURES[m] for m in defined if m in _X86_FEATURES} - have)
    if missing:
        raise RuntimeError(f"DALI_KMIX_MARCH={march!r} builds for instructions this processor lacks "
                           f"({', '.join(missing)}): its code would stop with an illegal instruction; choose a "
                           f"target this machine runs, or unset DALI_KMIX_MARCH to build for it (-march=native)")


def _runtime_library(name: str) -> str | None:
    """Where the C++ compiler keeps runtime library ``name`` (``-print-file-name``), or None."""
    try:
        cxx = compiler()
        if cxx is None:
            return None
        out = subprocess.run([*cxx, f"-print-file-name={name}"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    path = out.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def check_sanitizer_runtime() -> None:
    """Before an AddressSanitizer build is loaded: RuntimeError unless the ASan runtime is already in this process
    (``__asan_init`` resolves), naming ``DALI_KMIX_SANITIZE`` and the ``LD_PRELOAD`` it needs. Loaded without it,
    the library would end the process ("ASan runtime does not come first in initial library list")."""
    if hasattr(ctypes.CDLL(None), "__asan_init"):
        return
    raw = os.environ.get("DALI_KMIX_SANITIZE", "")
    if sanitize_mode() == "fuzzer":
        preload = "<atheris>/asan_with_fuzzer.so (tests/fuzz/run.py)"
    else:
        preload = _runtime_library("libasan.so") or "libasan.so"
    raise RuntimeError(f"DALI_KMIX_SANITIZE={raw!r} loads AddressSanitizer builds, which need the ASan runtime "
                       f"loaded before anything else: run with LD_PRELOAD={preload} (as tests/test_sanitizers.py "
                       f"does), or unset DALI_KMIX_SANITIZE")


def build_flags(sanitize: bool | None = None) -> list[str]:
    """The CPU build's flags; with ``sanitize`` the ASan/UBSan variant, for the same target (so the sanitizers
    watch the SIMD loops that ship)."""
    sanitize = sanitize_requested() if sanitize is None else sanitize
    flags = list(BASE_FLAGS)
    if sanitize:
        flags = [f for f in flags if f != "-O3"] + SANITIZE_FLAGS
        if sanitize_mode() == "fuzzer":
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
    """The build cache: ``$DALI_KMIX_CACHE`` (``~`` expanded), else ``~/.cache/dali_kmix``; an absolute path.

    Where that is not absolute (a relative ``$DALI_KMIX_CACHE``, or no home folder to expand ``~`` to), a folder of
    this user's under the temporary folder instead, ``dali_kmix-<uid>``, after a warning: never a cache that moves
    with the working folder."""
    raw = os.environ.get("DALI_KMIX_CACHE", "").strip()
    if raw:
        root, what = os.path.expanduser(raw), f"DALI_KMIX_CACHE={raw!r}"
    else:
        root = os.path.join(os.path.expanduser("~"), ".cache", "dali_kmix")
        what = "the default cache ~/.cache/dali_kmix (no home folder; DALI_KMIX_CACHE unset)"
    if root.startswith("~") or not os.path.isabs(root):
        fallback = os.path.join(tempfile.gettempdir(), f"dali_kmix-{os.getuid()}")
        warnings.warn(f"dali_kmix: {what} is not an absolute folder; using {fallback} instead (set DALI_KMIX_CACHE "
                      f"to an absolute path)", RuntimeWarning, stacklevel=2)
        root = fallback
    return Path(os.path.abspath(root))


def _command(exe) -> list[str]:
    """A program as a command list: a path (str or PathLike) alone, or a command given as a list (:func:`compiler`)."""
    return [str(exe)] if isinstance(exe, (str, os.PathLike)) else [str(w) for w in exe]


def tool_version(exe) -> str:
    """``exe --version`` (its first lines), "" when it cannot run: part of the build keys. ``exe``: a path, or a
    command as a list (:func:`compiler`)."""
    cmd = _command(exe)
    if not cmd or not cmd[0]:
        return ""
    try:
        return subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _target_key(cxx: list[str], flags) -> str:
    """The part of a build key the target flags among ``flags`` bring beyond their text: for ``-march=native`` (or
    ``-mcpu``/``-mtune=native``) what the compiler makes of native on this machine (the macros it predefines:
    every instruction set it enables, so two machines whose native targets differ never share a library, whatever
    /proc/cpuinfo calls them); nothing for an explicit target, whose flag says it all. The machine's architecture
    always."""
    out = [platform.machine()]
    for flag in flags:
        if flag in ("-march=native", "-mcpu=native", "-mtune=native"):
            rc, text = _predefined_macros(tuple(cxx), flag)
            out.append(f"{flag} ({rc}):\n" + "\n".join(sorted(text.splitlines())))
    return "\n".join(out)


def compile_cached(lib_name: str, sources, flags, *, libs=(), inputs=(), key_extra: str = "",
                   verbose: bool = False, what: str = "the CPU kernels", compiler_cmd=None,
                   announce=None) -> Path:
    """Compile ``sources`` into the shared library (or object) ``lib_name`` under :func:`cache_dir` (cached).

    The command is ``compiler flags sources libs -o lib`` (libraries after the sources); the
    compiler is ``compiler_cmd`` (e.g. nvcc: a path, or a command as a list), else :func:`compiler`.

    The cache key hashes ``inputs`` (the files the build reads), the command line,
    ``key_extra``, the compiler's version, the :data:`BUILD_ENV` variables that are set and
    what a native target means here (the instruction sets the compiler enables for
    ``-march=native``; an explicit target adds no processor identity), so any change rebuilds.
    Concurrent first uses wait on a file lock; the library appears atomically (written beside,
    flushed to disk, then renamed), with the compiler's own output beside it in
    ``<lib_name>.log`` (empty output: no warning) and the command line, with the
    :data:`BUILD_ENV` variables it ran under, in ``<lib_name>.cmd``.
    ``announce``: a line printed to stderr before a build starts (not when cached), or a
    function called then; by default ``dali_kmix: building <what>, once per version...``, so
    that no first build (tens of seconds) starts unannounced.
    Raises FileNotFoundError without a C++ compiler (or for a ``$CXX`` that is not found) and
    RuntimeError with the compiler's output when the build fails.
    """
    if compiler_cmd is None:
        cxx = compiler()
        if cxx is None:
            raise FileNotFoundError("no C++ compiler found (set $CXX or install g++)")
    else:
        cxx = _command(compiler_cmd)
    cmd = [*cxx, *flags, *map(str, sources), *libs]
    env = [(var, os.environ[var]) for var in BUILD_ENV if os.environ.get(var)]
    h = hashlib.sha256()
    for path in inputs:
        h.update(Path(path).read_bytes())
    h.update(" ".join(cmd).encode())
    h.update(key_extra.encode())
    h.update(_target_key(cxx, flags).encode())
    h.update(tool_version(cxx).encode())
    h.update(repr(env).encode())
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
        shown = " ".join([*(f"{var}={shlex.quote(value)}" for var, value in env), *full])
        proc = subprocess.run(full, capture_output=True, text=True)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"building {what} failed:\n{shown}\n{proc.stdout}{proc.stderr}")
        if verbose:
            print(shown)
        log = lib.with_name(lib.name + ".log")
        log.write_text(proc.stdout + proc.stderr)
        lib.with_name(lib.name + ".cmd").write_text(shown + "\n")  # which flags (and environment) made it
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # on disk before it has its name: a crash leaves no truncated library under the key
        finally:
            os.close(fd)
        os.replace(tmp, lib)
    return lib


def build_log(lib: Path) -> str:
    """What the compiler printed while building ``lib`` (a :func:`compile_cached` output); "" when nothing."""
    log = Path(lib).with_name(Path(lib).name + ".log")
    return log.read_text() if log.is_file() else ""
