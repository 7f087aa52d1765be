"""The blending kernels as native DALI CPU operators (a DALI plugin), built on first use.

``kernels/kmix_dali_op.cpp`` registers ``fn.kmix_dmixup(images, sources, weights,
layout=...)``, ``fn.kmix_dcutmix(images, sources, boxes, layout=...)`` and
``fn.kmix_mix(images, sources, weights, boxes, cut, layout=...)`` (either, per sample): they apply
a :class:`~dali_kmix.MixParams` record (one row per sample) with the same kernels as
:mod:`dali_kmix.backends.cpu`, on the pipeline's thread pool, straight into DALI's output
buffer. The CPU operators of :mod:`dali_kmix.dali` use them when they load, so a
pipeline no longer pays the copy of every ``python_function`` output (one full pass
over the batch per iteration); the record and the labels are still drawn in Python.

The plugin is compiled with the system C++ compiler against the headers and
``libdali.so`` of the installed DALI wheel (``nvidia.dali.sysconfig``) and the CUDA
runtime headers those include (see :func:`dali_kmix.backends.sources.cuda_include_dirs`),
cached like the CPU kernels. Where it cannot be built, :func:`load` warns once and
returns False, and the operators fall back to ``python_function`` (same results).
``DALI_KMIX_PLUGIN=0`` turns the plugin off; with ``DALI_KMIX_SANITIZE=1`` the plugin is
built with AddressSanitizer and UBSan (the tests run its suite so, with libasan preloaded).
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

from . import cpu
from .build import build_flags, compile_cached
from .sources import cuda_include_dirs, kernels_dir

__all__ = ["build", "load", "enabled", "SOURCES"]

#: Files the plugin build reads (the operator plus the host kernels it links in).
SOURCES = ("kmix_dali_op.cpp",) + cpu.HOST_SOURCES


def enabled() -> bool:
    """False when ``DALI_KMIX_PLUGIN`` is set to 0 (or empty), else True."""
    return os.environ.get("DALI_KMIX_PLUGIN", "1").strip() not in ("0", "")


def _dali_flags() -> tuple[list[str], list[str], str]:
    import nvidia.dali as dali
    import nvidia.dali.sysconfig as sysconfig

    # DALI's headers as system headers: their warnings are not ours.
    compile_flags = [f"-isystem{f[2:]}" if f.startswith("-I") else f for f in sysconfig.get_compile_flags()]
    link = sysconfig.get_link_flags()
    lib_dirs = [f[2:] for f in link if f.startswith("-L")]
    return compile_flags, link + [f"-Wl,-rpath,{d}" for d in lib_dirs], dali.__version__


def build(verbose: bool = False) -> Path:
    """Compile the plugin (cached); return the path of ``libkmix_dali.so``.

    Raises FileNotFoundError without a compiler or the CUDA runtime headers and
    RuntimeError with the compiler's output when the build fails.
    """
    # A complete toolkit's headers (pip's nvidia/cu13/include lacks crt/host_config.h).
    cuda = [d for d in cuda_include_dirs()
            if (Path(d) / "cuda_runtime_api.h").is_file() and (Path(d) / "crt" / "host_config.h").is_file()]
    if not cuda:
        raise FileNotFoundError("the DALI headers need cuda_runtime_api.h; none found (set $CUDA_HOME)")
    src_dir = kernels_dir()
    compile_flags, link_flags, version = _dali_flags()
    base = build_flags()  # DALI_KMIX_SANITIZE=1: the ASan/UBSan build, as for the CPU kernels
    name = "libkmix_dali_asan.so" if "-fsanitize=address,undefined" in base else "libkmix_dali.so"
    flags = ["-std=c++20", *[f for f in base if f != "-std=c++17"], "-fvisibility=hidden", f"-I{src_dir}",
             *compile_flags, f"-isystem{cuda[0]}"]
    sources = [src_dir / "kmix_dali_op.cpp", src_dir / "kmix_host.cpp"]
    return compile_cached(name, sources, flags, libs=link_flags,
                                      inputs=[src_dir / n for n in SOURCES], key_extra=f"dali {version}",
                                      verbose=verbose, what="the dali_kmix DALI plugin")


@functools.lru_cache(maxsize=None)
def _load() -> bool:
    try:
        import nvidia.dali.plugin_manager as plugin_manager

        path = build()
        plugin_manager.load_library(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure means: use the python_function path
        warnings.warn(f"dali_kmix: the DALI plugin is unavailable, the CPU operators run as python_function "
                      f"instead ({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=3)
        return False
    return True


def load() -> bool:
    """Build and load the plugin once per process; True when ``fn.kmix_dmixup``, ``fn.kmix_mix`` and
    ``fn.kmix_dcutmix`` are available (False when :func:`enabled` is False)."""
    return enabled() and _load()
