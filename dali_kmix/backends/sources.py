"""The CUDA C sources in ``kernels/``: where they are, how they are read, and how they compile.

One loader reads a ``.cu`` file and prefixes a ``#line`` directive, so a
compiler error (NVRTC, nvcc or g++) names the real file and line.

One function, :func:`compile_nvrtc`, compiles a kernel source with NVRTC's program
API and the options of :func:`nvrtc_options`; the GPU loader
(:mod:`dali_kmix.backends.gpu`, through the disk cache :func:`compile_cached`) and
the compile gate (:func:`compile_with_nvrtc`) that CI runs on machines without a
GPU both go through it, so what is checked is what runs. NVRTC is handed the source and
every header it includes as read once (:func:`read_program`): the disk cache's key is
made of exactly that text. One NVRTC compile runs at a time in a process. CuPy's own compile path
(``RawModule(code=...)``) is not used: it appends ``-ftz=true`` after the caller's
options (cupy/cupy#9576), which flushes float32 subnormals and breaks bit-exactness
with the host build and the NumPy reference.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "KernelCompileError", "kernels_dir", "read_source", "read_program", "Program", "cuda_include_dirs", "nvrtc_options",
    "DEVICE_SOURCES", "NAME_EXPRESSIONS", "FP_OPTIONS", "Compiled", "source_files", "nvrtc_version",
    "nvrtc_supported_archs",
    "compile_nvrtc", "cache_key", "compile_cached", "compile_with_nvrtc", "compile_with_nvcc",
]

#: Kernel sources compiled for the GPU (each a translation unit of its own).
DEVICE_SOURCES = ("kmix_blend.cu", "kmix_boxes.cu", "kmix_saliency.cu")

#: Template instantiations the Python side launches, per source.
NAME_EXPRESSIONS = {
    "kmix_blend.cu": tuple(
        f"{kern}<{t}>" for kern in ("kmix_dmixup", "kmix_dcutmix", "kmix_mix")
        for t in ("unsigned char", "__half", "float")
    ),
    "kmix_boxes.cu": (),
    "kmix_saliency.cu": tuple(f"kmix_grey_resize<{t}>" for t in ("unsigned char", "__half", "float")),
}

#: Parameter lists of the templates, for nvcc's explicit instantiations.
TEMPLATE_PARAMS = {
    "kmix_dmixup": "const {t}* const*, {t}* const*, const int*, const float*, int, int, long long",
    "kmix_dcutmix": "const {t}* const*, {t}* const*, const int*, const int*, int, int, int, int, int, int",
    "kmix_mix": "const {t}* const*, {t}* const*, const int*, const float*, const int*, const unsigned char*, int, "
                "int, int, int, int, int",
    "kmix_grey_resize": "const {t}* const*, float*, int, int, int, int, int, int, int",
}

#: Floating-point options of every device compile, spelled out rather than left to
#: defaults (and never --use_fast_math): --fmad=false, the only fused multiply-adds are
#: the explicit fmaf calls, exactly as in the host build (-ffp-contract=off);
#: -ftz=false, float32 subnormals are kept as on the host; IEEE-rounded division and
#: square root.
FP_OPTIONS = ("--fmad=false", "-ftz=false", "-prec-div=true", "-prec-sqrt=true")

#: Options for every device compile (NVRTC and nvcc alike), before include folders and arch.
BASE_OPTIONS = ("-std=c++17", *FP_OPTIONS)


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


def _with_line(path: Path, text: str) -> str:
    return f'#line 1 "{path.as_posix()}"\n{text}'


def read_source(name: str) -> str:
    """Source text of ``kernels/<name>`` as it is now, starting with ``#line 1 "<absolute path>"``."""
    path = kernels_dir() / name
    return _with_line(path, path.read_text())


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


def nvrtc_options(arch: str) -> tuple[str, ...]:
    """The NVRTC options for ``arch`` ("sm_90": a cubin, "compute_90": PTX).

    The one place options are made: the run-time loader and the compile gate both
    compile through :func:`compile_nvrtc`, which uses exactly these.
    """
    if not re.fullmatch(r"(sm|compute)_\d+[af]?", arch or ""):
        raise ValueError(f"arch must look like 'sm_90' or 'compute_90', got {arch!r}")
    opts = list(BASE_OPTIONS) + [f"-I{kernels_dir()}"]
    inc = cuda_include_dirs()
    if inc:
        opts.append(f"-I{inc[0]}")
    opts.append(f"--gpu-architecture={arch}")
    return tuple(opts)


_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


class Program(NamedTuple):
    """One kernel source as NVRTC is handed it: the text and every header it includes, each read once."""

    name: str
    source: str              #: :func:`read_source`'s text
    headers: tuple           #: ``(include name, text)`` of each ``#include "..."`` reached, the text ``#line``-prefixed
    files: tuple             #: the files read: the source, then the headers


def read_program(name: str) -> Program:
    """``kernels/<name>`` and every file it includes with ``#include "..."``, recursively, each read once.

    Includes are resolved in :func:`kernels_dir` (as ``-I`` does); ``<...>`` system
    headers are left out (the NVRTC version stands for them in :func:`cache_key`).
    Conditional includes count too: a key may change more often than needed, never less.
    """
    root = kernels_dir()
    main = (root / name).resolve()
    texts = {main: main.read_text()}
    headers, files, todo = [], [main], [main]
    while todo:
        path = todo.pop(0)
        for inc in _INCLUDE.findall(texts[path]):
            for cand in (path.parent / inc, root / inc):
                if cand.is_file():
                    cand = cand.resolve()
                    if cand not in texts:
                        texts[cand] = cand.read_text()
                        files.append(cand)
                        todo.append(cand)
                    if inc not in (h[0] for h in headers):
                        headers.append((inc, _with_line(cand, texts[cand])))
                    break
    return Program(name, _with_line(root / name, texts[main]), tuple(headers), tuple(files))


def source_files(name: str) -> tuple[Path, ...]:
    """``kernels/<name>`` and every file it includes with ``#include "..."``, recursively (:func:`read_program`)."""
    return read_program(name).files


#: One NVRTC call at a time in a process: the first compile loads libnvrtc-builtins, which fails
#: (NVRTC_ERROR_BUILTIN_OPERATION_FAILURE) when another thread compiles or asks NVRTC anything meanwhile, even its
#: version. Every NVRTC call here holds it; :func:`compile_cached` holds it from its cache look-up to its cache write.
_NVRTC_LOCK = threading.RLock()


@functools.lru_cache(maxsize=None)
def nvrtc_version() -> tuple[int, int]:
    from cupy.cuda import nvrtc

    with _NVRTC_LOCK:
        return tuple(nvrtc.getVersion())


def nvrtc_supported_archs() -> tuple[int, ...]:
    """``nvrtc.getSupportedArchs()`` (the compute capabilities NVRTC compiles for), under the NVRTC lock."""
    from cupy.cuda import nvrtc

    with _NVRTC_LOCK:
        return tuple(nvrtc.getSupportedArchs())


class Compiled(NamedTuple):
    """What NVRTC made of one source: the image and the kernels' lowered (mangled) names."""

    image: bytes          #: a cubin for "sm_XY", PTX text for "compute_XY"
    kind: str             #: "cubin" or "ptx"
    lowered: dict         #: name expression ("kmix_dmixup<float>") -> lowered name
    arch: str
    options: tuple


def compile_nvrtc(name: str, arch: str, program: Program | None = None) -> Compiled:
    """Compile ``kernels/<name>`` with NVRTC's program API for ``arch``, without touching a GPU.

    ``arch`` "sm_XY" gives a cubin, "compute_XY" gives PTX. The options are
    :func:`nvrtc_options` and nothing else. NVRTC is handed the text of ``program``
    (default: :func:`read_program` now) with its headers, so it reads no kernel file itself.
    Raises KernelCompileError with the full log on failure.
    """
    with _NVRTC_LOCK:
        return _compile_nvrtc(name, arch, program or read_program(name))


def _compile_nvrtc(name: str, arch: str, program: Program) -> Compiled:
    from cupy.cuda import nvrtc

    opts = nvrtc_options(arch)
    exprs = NAME_EXPRESSIONS.get(name, ())
    prog = nvrtc.createProgram(program.source, name, [text.encode() for _, text in program.headers],
                               [inc.encode() for inc, _ in program.headers])
    try:
        for expr in exprs:
            nvrtc.addNameExpression(prog, expr)
        try:
            nvrtc.compileProgram(prog, list(opts))
        except nvrtc.NVRTCError as exc:
            log = nvrtc.getProgramLog(prog)
            raise KernelCompileError(f"NVRTC failed on {name} for {arch}: {exc}\n{log}") from None
        lowered = {expr: nvrtc.getLoweredName(prog, expr) for expr in exprs}  # raises if one is missing
        if arch.startswith("sm_"):
            return Compiled(nvrtc.getCUBIN(prog), "cubin", lowered, arch, opts)
        return Compiled(nvrtc.getPTX(prog), "ptx", lowered, arch, opts)
    finally:
        nvrtc.destroyProgram(prog)


def compile_with_nvrtc(name: str, arch: str) -> bytes:
    """The compile gate: the cubin (or PTX) of ``kernels/<name>`` for ``arch``, as the GPU loader builds it."""
    return compile_nvrtc(name, arch).image


def cache_key(name: str, arch: str, program: Program | None = None) -> str:
    """Hash of the text NVRTC is handed (``program``, default :func:`read_program` now: the source and every header
    it includes), the options, NVRTC's version and ``arch``."""
    program = program or read_program(name)
    h = hashlib.sha256()
    for inc, text in ((program.name, program.source), *program.headers):
        h.update(inc.encode() + b"\0" + text.encode() + b"\0")
    h.update("\0".join(nvrtc_options(arch)).encode())
    h.update(repr(nvrtc_version()).encode())
    h.update(arch.encode())
    return h.hexdigest()


_unwritable: set = set()


def _write_atomically(path: Path, data: bytes) -> None:
    """``data`` into ``path``: written to a temporary file of its own beside it, flushed to disk, then renamed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def compile_cached(name: str, arch: str) -> Compiled:
    """:func:`compile_nvrtc`, kept on disk under ``<cache_dir>/nvrtc/<key>/`` (see :func:`cache_key`).

    The key is made of the very text NVRTC compiles (read once, :func:`read_program`). Threads
    compile one at a time and once (the first one's result is in the cache for the others);
    the image and its lowered names appear atomically (temporary files of their own, then
    renamed), so concurrent processes at worst compile twice. A cache folder that cannot be
    written costs one warning that names ``DALI_KMIX_CACHE``; the compiled kernels are used.
    """
    from .build import cache_dir

    program = read_program(name)
    key = cache_key(name, arch, program)
    folder = cache_dir() / "nvrtc" / key[:24]
    stem = Path(name).stem
    kind = "cubin" if arch.startswith("sm_") else "ptx"
    image_path, names_path = folder / f"{stem}.{kind}", folder / f"{stem}.json"
    with _NVRTC_LOCK:
        if image_path.is_file() and names_path.is_file():
            meta = json.loads(names_path.read_text())
            if meta.get("key") == key:
                return Compiled(image_path.read_bytes(), kind, meta["lowered"], arch, tuple(meta["options"]))
        out = compile_nvrtc(name, arch, program=program)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _write_atomically(image_path, out.image)
            _write_atomically(names_path, json.dumps({"key": key, "lowered": out.lowered,
                                                      "options": list(out.options)}).encode())
        except OSError as exc:
            if str(folder.parent) not in _unwritable:
                _unwritable.add(str(folder.parent))
                warnings.warn(f"dali_kmix: the kernel cache {folder.parent} cannot be written ({exc}); the kernels "
                              f"compiled now are used, and compiled again by the next process. Set DALI_KMIX_CACHE "
                              f"to a writable folder", RuntimeWarning, stacklevel=2)
    return out


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
        cmd = [nvcc, "-cubin", f"-arch={arch}", *BASE_OPTIONS, f"-I{kernels_dir()}",
               "-o", str(out), str(inst)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise KernelCompileError(f"nvcc failed on {name} for {arch}:\n{' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        return out.read_bytes()
