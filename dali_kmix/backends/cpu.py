"""The CUDA kernels compiled for the CPU, called through ctypes.

``kernels/kmix_host.cpp`` includes the same ``.cu`` files the GPU runs, through a
small shim header (``kernels/kmix_host_shim.h``), and is built on first use by the
host build cache (:mod:`dali_kmix.backends.build`), then loaded with ctypes.

Where no compiler is available (or the build fails) :func:`load` returns None
after one warning, and :func:`dali_kmix.backends.backend_for` falls back to the
NumPy reference (same results, several times slower); the functions here then raise
RuntimeError with the build's error. A cached library that does not load (truncated:
a build cut short) is moved aside and built once more. What was asked for and cannot
be had raises instead of falling back: a ``$DALI_KMIX_MARCH`` the compiler does not know
or this processor cannot run, and an ASan build (``DALI_KMIX_SANITIZE=1``) in a process
without the ASan runtime preloaded.
"""

from __future__ import annotations

import ctypes
import functools
import os
import warnings
from pathlib import Path

import numpy as np

from .._checks import LAYOUTS, check_choice, dense_blend_samples, dense_samples, hwc_dims
from ..record import MixParams
from .build import (build_flags, check_sanitizer_runtime, check_target, compile_cached, compiler, numpy_random,
                    sanitize_requested)
from .sources import kernels_dir

__all__ = ["load", "build", "available", "compiler", "dmixup", "dcutmix", "mix", "nest_boxes", "grey_resize",
           "spectral_residual", "salient_points", "dirichlet", "pcg64_raw", "draw_record", "native_sampler",
           "DRAW_METHODS", "draw_record_from", "record_valid", "mix_labels", "blend_batch",
           "half_to_float", "float_to_half", "DTYPE_CODES", "LAYOUT_CODES", "HOST_SOURCES", "default_workers",
           "launch_config", "launch_cover", "host_dcutmix_shape", "mix_normalize", "norm_bands", "validate_record",
           "KERNEL_CODES", "METHOD_CODES"]

#: Element-type and layout codes of the C entry points, as kernels/kmix_codes.h defines them for C++.
DTYPE_CODES = {np.dtype(np.uint8): 0, np.dtype(np.float16): 1, np.dtype(np.float32): 2}
LAYOUT_CODES = {"HWC": 0, "CHW": 1}

#: Files the host build reads (the entry points, the shim and every kernel source and header).
HOST_SOURCES = ("kmix_host.cpp", "kmix_host_api.h", "kmix_host_shim.h", "kmix_codes.h", "kmix_common.cuh",
                "kmix_blend.cu", "kmix_boxes.cu", "kmix_saliency.cu", "kmix_spectral.h", "kmix_record.h",
                "kmix_launch.h", "kmix_draw.h")

#: Kernel codes of the GPU launch configuration (kernels/kmix_launch.h).
KERNEL_CODES = {"dmixup": 0, "dcutmix": 1, "mix": 2}
#: Method codes of the record checks (kernels/kmix_record.h): the operators kmix_dmixup, kmix_dcutmix, kmix_mix.
METHOD_CODES = {"dmixup": 0, "dcutmix": 1, "mix": 2}
_I32_CODE = 3  # KMIX_I32: record inputs only


def build(sanitize: bool | None = None, verbose: bool = False) -> Path:
    """Compile ``kmix_host.cpp`` to a shared library (cached); return its path.

    Raises FileNotFoundError without a C++ compiler and RuntimeError with the
    compiler's output when the build fails.
    """
    flags = build_flags(sanitize)
    src_dir = kernels_dir()
    name = "libkmix_asan.so" if "-fsanitize=address,undefined" in flags else "libkmix.so"
    np_flags, np_libs, np_inputs = numpy_random()
    return compile_cached(name, [src_dir / "kmix_host.cpp"], [*flags, f"-I{src_dir}", *np_flags], libs=np_libs,
                          inputs=[*(src_dir / n for n in HOST_SOURCES), *np_inputs], verbose=verbose)


_P = ctypes.c_void_p
_I = ctypes.c_int
_L = ctypes.c_longlong


class _KmixList(ctypes.Structure):
    """``kmix::KmixList`` (kernels/kmix_record.h): one operator input, per-sample pointers and shapes."""

    _fields_ = [("num_samples", _I), ("ndim", _I), ("shape", _P), ("data", _P), ("dtype", _I),
                ("type_name", ctypes.c_char_p)]


#: Why :func:`load` found no library, per sanitize setting (the build's error), for the functions' errors.
_unavailable: dict[bool, str] = {}


def _fall_back(sanitize: bool, why) -> None:
    _unavailable[sanitize] = str(why)
    warnings.warn(f"dali_kmix: CPU kernels unavailable, using the NumPy reference instead ({why})",
                  RuntimeWarning, stacklevel=4)


def _move_aside(path: Path) -> None:
    """Take a cached library that does not load out of the cache (to ``<name>.bad``), so the next build makes it."""
    try:
        os.replace(path, path.with_name(path.name + ".bad"))
    except OSError:
        path.unlink(missing_ok=True)


@functools.lru_cache(maxsize=None)
def _load(sanitize: bool):
    check_target()  # an unknown DALI_KMIX_MARCH, or one this processor lacks: an error, no fall back
    for attempt in (1, 2):
        try:
            path = build(sanitize)
        except (FileNotFoundError, RuntimeError, OSError) as exc:
            return _fall_back(sanitize, exc)
        if sanitize:
            check_sanitizer_runtime()  # loaded without it, the library would end the process
        try:
            lib = ctypes.CDLL(str(path))
            break
        except OSError as exc:  # e.g. "file too short": a build cut short, left in the cache
            if attempt == 2:
                return _fall_back(sanitize, f"{path} does not load, even built again: {exc}")
            _move_aside(path)
    _unavailable.pop(sanitize, None)
    lib.kmix_host_dmixup.argtypes = [_I, _P, _P, _P, _P, _I, _I, _L, _I, _I, _I]
    lib.kmix_host_dcutmix.argtypes = [_I, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _I, _I, _I]
    lib.kmix_host_mix.argtypes = [_I, _P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _I, _I, _I]
    lib.kmix_host_blend_batch.argtypes = [_I, _P, _L, _P, _L, _P, _P, _P, _I, _I, _I, _I, _I, _I, _I, _I, _I]
    lib.kmix_host_blend_batch.restype = _I
    lib.kmix_host_nest_boxes.argtypes = [_P, _P, _I, _P, _P, _I, _I, _I, _I, _P, _P, _P, _P, _I, _I]
    lib.kmix_host_grey_resize.argtypes = [_I, _P, _P, _I, _I, _I, _I, _I, _I, _I, _I, _I]
    lib.kmix_host_grey_resize.restype = _I
    lib.kmix_host_mix_labels.argtypes = [_P, _L, _P, _P, _I, _I, _I, ctypes.c_float, ctypes.c_float, _P, _I]
    lib.kmix_host_mix_labels.restype = _I
    lib.kmix_host_record_valid.argtypes = [_P, _P, _P, _I, _I, _I, _I]
    lib.kmix_host_record_valid.restype = _I
    lib.kmix_host_spectral_residual.argtypes = [_P, _P, _P, _I, _I, _I, _P, _I]
    lib.kmix_host_spectral_residual.restype = _I
    lib.kmix_host_dirichlet.argtypes = [_P, _I, _P, _P, _I, _I, _P]
    lib.kmix_host_dirichlet.restype = None
    if hasattr(lib, "kmix_host_draw_record"):  # built with NumPy's libnpyrandom.a (build.numpy_random)
        lib.kmix_host_pcg64_raw.argtypes = [_P, _I, _P, _I, _L, _P]
        lib.kmix_host_pcg64_raw.restype = None
        lib.kmix_host_draw_record.argtypes = [_P, _I, _P, _I, _I, _I, _I, _P, _I, _P, _I, _P, _I, ctypes.c_double,
                                              _P, _I, _I, _P, _P, _P, _P, _P]
        lib.kmix_host_draw_record.restype = _I
        lib.kmix_host_draw_record_bitgen.argtypes = [_P, _I, _I, _I, _P, _I, _I, _P, _I, _I, _I, _P, _P, _P, _P, _P]
        lib.kmix_host_draw_record_bitgen.restype = _I
    lib.kmix_host_salient_points.argtypes = [_I, _P, _P, _I, _I, _I, _I, _I, _I, _I, _P, _I]
    lib.kmix_host_salient_points.restype = _I
    lib.kmix_host_half_to_float.argtypes = [_P, _P, _L]
    lib.kmix_host_float_to_half.argtypes = [_P, _P, _L]
    for fn in (lib.kmix_host_dmixup, lib.kmix_host_dcutmix, lib.kmix_host_nest_boxes):
        fn.restype = _I
    lib.kmix_host_launch_config.argtypes = [_I, _I, _I, _I, _I, _I, _P]
    lib.kmix_host_launch_config.restype = None
    lib.kmix_host_launch_cover.argtypes = [_I, _I, _I, _I, _I, _I, _P, _P]
    lib.kmix_host_launch_cover.restype = _I
    lib.kmix_host_dcutmix_chunks.argtypes = [_I, _I, _I, _I, _I, _I]
    lib.kmix_host_dcutmix_chunks.restype = _I
    lib.kmix_host_dcutmix_samples_first.argtypes = [_I, _I]
    lib.kmix_host_dcutmix_samples_first.restype = _I
    lib.kmix_host_mix_norm.argtypes = [_I, _I, _P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _I, _I, _P, _P, _P,
                                       _I, _I, _I]
    lib.kmix_host_mix_norm.restype = _I
    lib.kmix_host_norm_bands.argtypes = [_I, _I, _I, _I]
    lib.kmix_host_norm_bands.restype = _I
    lst = ctypes.POINTER(_KmixList)
    lib.kmix_host_validate_record.argtypes = [_I, ctypes.c_char_p, ctypes.c_char_p, lst, lst, lst, lst, lst,
                                              ctypes.c_char_p, _I]
    lib.kmix_host_validate_record.restype = _I
    return lib


def load():
    """The loaded library, or None (with one warning) when it cannot be built."""
    return _load(sanitize_requested())


def _lib():
    """The loaded library; RuntimeError with the build's error where there is none."""
    lib = load()
    if lib is None:
        why = _unavailable.get(sanitize_requested(), "no C++ compiler or a failed build")
        raise RuntimeError(f"dali_kmix CPU kernels are not built: {why}")
    return lib


def available() -> bool:
    return load() is not None


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


_buffer_of = ctypes.c_char.from_buffer
_address_of = ctypes.addressof


def _addr(a):
    """The address of array ``a``'s data for a kernel argument, or None (a null pointer). Read through the buffer
    protocol (``addressof(c_char.from_buffer(a))``): about a third of the time of NumPy's ``a.ctypes.data``, which
    builds an object at every read, and a call reads up to a dozen; ``a.ctypes.data`` where the buffer cannot be
    had that way (a read-only, an empty or a strided array)."""
    if a is None:
        return None
    try:
        return _address_of(_buffer_of(a))
    except (TypeError, ValueError, BufferError):
        return a.ctypes.data


def _ptrs(arrays) -> np.ndarray:
    try:
        return np.fromiter((_address_of(_buffer_of(a)) for a in arrays), dtype=np.uint64, count=len(arrays))
    except (TypeError, ValueError, BufferError):  # a read-only, empty or strided sample: NumPy's reading for all
        return np.fromiter((a.ctypes.data for a in arrays), dtype=np.uint64, count=len(arrays))


def _batch_ptrs(batch: np.ndarray) -> np.ndarray:
    """The addresses of the rows of a C-contiguous batch, computed at once (no view per sample)."""
    n, base, step = batch.shape[0], _addr(batch), batch.strides[0]
    if n > 1 and step > 0:  # one NumPy operation
        return np.arange(base, base + step * n, step, dtype=np.uint64)
    return np.full(n, base, np.uint64)  # one sample (its stride may be anything), or samples of no element


def _blend_ptrs(inputs, outputs):
    """``(input addresses, output addresses, inputs, one output sample)`` of a blend (``inputs`` kept alive by the
    caller: strided inputs are copied). Batch arrays (N, ...) of one shape and dtype, the outputs C-contiguous, give
    their rows' addresses at once; lists of samples are checked one by one (:func:`dense_blend_samples`)."""
    if isinstance(inputs, np.ndarray) and isinstance(outputs, np.ndarray) and outputs.ndim >= 2 and \
            outputs.flags.c_contiguous and inputs.shape == outputs.shape and inputs.dtype == outputs.dtype:
        inputs = np.ascontiguousarray(inputs)
        return _batch_ptrs(inputs), _batch_ptrs(outputs), inputs, outputs[0]
    inputs, outputs = dense_blend_samples(inputs, outputs)
    return _ptrs(inputs), _ptrs(outputs), inputs, outputs[0]


def _record_out(n: int, k: int, boxed: bool):
    """Uninitialised ``(sources, weights, boxes or None)`` of an ``n`` x ``k`` record, for a kernel to fill."""
    return (np.empty((n, k), np.int32), np.empty((n, k), np.float32),
            np.empty((n, k - 1, 4), np.int32) if boxed else None)


def _c(a, dtype):
    """A C-contiguous array of ``dtype`` (no copy when it already is one)."""
    return np.ascontiguousarray(a, dtype=dtype)


def _launch(entry: str, result, *args):
    """Call C entry point ``entry`` with ``args`` and return ``result``; raises on a non-zero code."""
    rc = getattr(_lib(), entry)(*args)
    if rc:
        raise RuntimeError(f"{entry} failed with code {rc}")
    return result


def _threads(workers, block_threads, reverse):
    return workers or default_workers(), block_threads, int(reverse)


def dmixup(inputs, outputs, sources, weights, *, workers=None, block_threads=1, reverse=False):
    """DMixup on the CPU. ``inputs``/``outputs``: lists of N arrays of one shape and dtype (outputs C-contiguous), or
    two (N, ...) batch arrays."""
    n = len(outputs)
    if n == 0:
        return outputs
    pin, pout, inputs, one = _blend_ptrs(inputs, outputs)
    src, w = _c(sources, np.int32), _c(weights, np.float32)
    return _launch("kmix_host_dmixup", outputs, DTYPE_CODES[one.dtype], _addr(pin), _addr(pout),
                   _addr(src), _addr(w), n, src.shape[1], one.size,
                   *_threads(workers, block_threads, reverse))


def dcutmix(inputs, outputs, sources, boxes, layout, *, workers=None, block_threads=1, reverse=False):
    """DCutMix on the CPU. Samples are (H, W, C) for "HWC" or (C, H, W) for "CHW"."""
    n = len(outputs)
    if n == 0:
        return outputs
    pin, pout, inputs, one = _blend_ptrs(inputs, outputs)
    h, w, c = hwc_dims(one.shape, layout)
    src, bx = _c(sources, np.int32), _c(boxes, np.int32)
    return _launch("kmix_host_dcutmix", outputs, DTYPE_CODES[one.dtype], _addr(pin), _addr(pout),
                   _addr(src), _addr(bx), n, src.shape[1], h, w, c, LAYOUT_CODES[layout],
                   *_threads(workers, block_threads, reverse))


def blend_batch(inputs: np.ndarray, outputs: np.ndarray, params, layout: str, *, workers=None, block_threads=1,
                reverse=False) -> bool:
    """``params`` (a NumPy record) checked as :func:`record_valid` checks it against the batch, then applied to
    ``inputs`` into ``outputs`` in one call (``kmix_host_blend_batch``): DMixup, or DCutMix where the record has
    boxes. True when written. False, nothing written, where the call does not apply: ``inputs`` and ``outputs``
    not two C-contiguous (N, H, W, C) or (N, C, H, W) batch arrays of one shape and a kernel dtype, ``params`` not
    a NumPy :class:`~dali_kmix.MixParams` of N = ``params.n`` rows, or a record that check does not pass (the
    caller then goes the general way: ``params.validate``, which names a fault, and :func:`dmixup` /
    :func:`dcutmix`, which take lists of samples)."""
    code = DTYPE_CODES.get(outputs.dtype) if isinstance(outputs, np.ndarray) else None
    if not (code is not None and isinstance(inputs, np.ndarray) and outputs.ndim == 4 and
            inputs.shape == outputs.shape and inputs.dtype == outputs.dtype and layout in LAYOUT_CODES and
            isinstance(params, MixParams) and params.xp is np and params.n == len(outputs) and
            inputs.flags.c_contiguous and outputs.flags.c_contiguous):
        return False
    h, w, c = hwc_dims(outputs.shape[1:], layout)
    if not _c_int_sides(h, w):
        return False
    src, wt, bx = params.sources, params.weights, params.boxes  # int32 / float32 / int32, C-contiguous (MixParams)
    n = len(outputs)
    in_step, out_step = (inputs.strides[0], outputs.strides[0]) if n > 1 else (0, 0)  # one sample: no stride
    rc = _lib().kmix_host_blend_batch(code, _addr(inputs), in_step, _addr(outputs), out_step, _addr(src), _addr(wt),
                                      _addr(bx), n, src.shape[1], h, w, c, LAYOUT_CODES[layout],
                                      *_threads(workers, block_threads, reverse))
    if rc == 2:
        return False
    if rc:
        raise RuntimeError(f"kmix_host_blend_batch failed with code {rc}")
    return True


def mix(inputs, outputs, sources, weights, boxes, cut, layout, *, workers=None, block_threads=1, reverse=False):
    """DMixup where ``cut[s]`` is 0 and DCutMix where it is 1, per sample, in one launch (``kmix_mix``)."""
    n = len(outputs)
    if n == 0:
        return outputs
    pin, pout, inputs, one = _blend_ptrs(inputs, outputs)
    h, w, c = hwc_dims(one.shape, layout)
    src, wt, bx = _c(sources, np.int32), _c(weights, np.float32), _c(boxes, np.int32)
    ct = _c(np.asarray(cut).reshape(n), np.uint8)
    return _launch("kmix_host_mix", outputs, DTYPE_CODES[one.dtype], _addr(pin), _addr(pout),
                   _addr(src), _addr(wt), _addr(bx), _addr(ct), n, src.shape[1], h, w, c,
                   LAYOUT_CODES[layout], *_threads(workers, block_threads, reverse))


def mix_normalize(inputs: np.ndarray, outputs: np.ndarray, sources, weights, boxes, cut, method: str, layout: str,
                  out_layout: str, mean, inv_std, mirror=None, *, workers=None, block_threads=1, reverse=False):
    """The mix with crop_mirror_normalize's normalisation fused (``kmix_mix_norm``): ``inputs`` an (N, ...) batch of
    uint8, float16 or float32 in ``layout``, ``outputs`` a C-contiguous (N, ...) float32 or float16 batch in
    ``out_layout``; ``method`` "dmixup" (weights), "dcutmix" (boxes) or "mix" (weights, boxes and ``cut`` per sample);
    ``mean``/``inv_std`` float32 per channel; ``mirror`` one flag per sample or None. ``block_threads`` > 1 runs the
    GPU's element-by-element kernel instead of the host bands (the tests compare the two)."""
    check_choice("layout", layout, LAYOUTS)
    check_choice("out_layout", out_layout, LAYOUTS)
    n = len(outputs)
    inputs = np.ascontiguousarray(inputs)
    if len(inputs) != n:
        raise ValueError(f"inputs and outputs must hold the same number of samples, got {len(inputs)} and {n}")
    if inputs.dtype not in DTYPE_CODES:
        raise ValueError(f"inputs must be uint8, float16 or float32, got {inputs.dtype}")
    if outputs.dtype not in (np.float32, np.float16) or not outputs.flags.c_contiguous:
        raise ValueError(f"outputs must be a C-contiguous float32 or float16 array, got {outputs.dtype}"
                         f"{'' if outputs.flags.c_contiguous else ' (not C-contiguous)'}")
    h, w, c = hwc_dims(inputs.shape[1:], layout)
    want = (n, h, w, c) if out_layout == "HWC" else (n, c, h, w)
    if outputs.shape != want:
        raise ValueError(f"outputs must have shape {want} ({out_layout} samples of the {layout} inputs), "
                         f"got {outputs.shape}")
    if n == 0:
        return outputs
    src = _c(sources, np.int32)
    k = src.shape[1]
    wt = None if weights is None else _c(weights, np.float32)
    bx = None if boxes is None else _c(boxes, np.int32)
    ct = None if cut is None else _c(np.asarray(cut).reshape(n), np.uint8)
    mr = None if mirror is None else _c(np.asarray(mirror).reshape(n), np.uint8)
    mean, inv_std = _c(mean, np.float32), _c(inv_std, np.float32)
    if mean.size != c or inv_std.size != c:
        raise ValueError(f"mean and inv_std must hold one value per channel ({c}), got {mean.size} and {inv_std.size}")
    pin, pout = _batch_ptrs(inputs), _batch_ptrs(outputs)
    return _launch("kmix_host_mix_norm", outputs, DTYPE_CODES[inputs.dtype], DTYPE_CODES[outputs.dtype],
                   _addr(pin), _addr(pout), _addr(src), _addr(wt), _addr(bx), _addr(ct),
                   METHOD_CODES[method], n, k, h, w, c, LAYOUT_CODES[layout], LAYOUT_CODES[out_layout],
                   _addr(mean), _addr(inv_std), _addr(mr), *_threads(workers, block_threads, reverse))


def norm_bands(dtype, height: int, width: int, channels: int) -> int:
    """How many bands of rows the fused launch cuts a sample into on the host (``kmix_host_norm_bands``)."""
    return _lib().kmix_host_norm_bands(DTYPE_CODES[np.dtype(dtype)], height, width, channels)


def nest_boxes(method, phi, uniforms, perms, mixed, height, width, *, centers=None, workers=1, reverse=False):
    """The device nesting kernel run on the CPU; returns (sources, weights, boxes or None).

    ``centers``: int32 (N, 2) salient point of every image (Saliency-DCutMix), or None.
    """
    n = int(mixed.shape[0])
    k = int(phi.shape[1])
    phi = _c(phi, np.float64)
    uni = _c(uniforms, np.float64)
    perms = _c(perms, np.int32)
    mixed = _c(mixed, np.uint8)
    stride = 1 if phi.shape[0] == n else 0
    sources, weights, boxes = _record_out(n, k, method != "dmixup")
    if centers is not None:
        centers = _c(centers, np.int32)
    _launch("kmix_host_nest_boxes", None, _addr(phi), _addr(uni), stride, _addr(perms),
            _addr(mixed), n, k, height, width, _addr(sources), _addr(weights),
            _addr(boxes), _addr(centers), workers, int(reverse))
    return sources, weights, boxes


def _image_pointers(inputs, layout):
    """``(samples, their addresses, (H, W, C))`` of N >= 1 same-shape images for a kernel that reads each through
    its own pointer (the caller keeps ``samples`` alive: strided ones are copies)."""
    samples = dense_samples("samples", inputs, inputs[0].shape, inputs[0].dtype)
    return samples, _ptrs(samples), hwc_dims(inputs[0].shape, layout)


def grey_resize(inputs, layout, out_h, out_w, *, workers=None, reverse=False):
    """Small grey copies (float32 ``(N, out_h, out_w)``) of N same-shape samples."""
    n = len(inputs)
    out = np.empty((n, out_h, out_w), np.float32)
    if n == 0:
        return out
    inputs, pin, (h, w, c) = _image_pointers(inputs, layout)
    return _launch("kmix_host_grey_resize", out, DTYPE_CODES[inputs[0].dtype], _addr(pin), _addr(out), n,
                   h, w, c, LAYOUT_CODES[layout], out_h, out_w, workers or default_workers(), int(reverse))


def spectral_residual(g: np.ndarray, gauss: np.ndarray, *, workers=None):
    """``(maps, peaks)``: the spectral-residual maps (float32 ``(N, h, w)``) of N grey images (``(N, h, w)``, h and
    w powers of two) and the flat index of each map's first peak (int32 ``(N,)``); ``gauss``: the 5 taps of
    the smoothing Gaussian. The host implementation of :func:`dali_kmix.saliency.spectral_residual`."""
    g = _c(g, np.float32)
    n, h, w = g.shape
    maps = np.empty((n, h, w), np.float32)
    peaks = np.zeros(n, np.int32)
    k = _c(gauss, np.float32)
    return _launch("kmix_host_spectral_residual", (maps, peaks), _addr(g), _addr(maps), _addr(peaks),
                   n, h, w, _addr(k), workers or default_workers())


def salient_points(inputs, layout, out_h, out_w, gauss: np.ndarray, *, workers=None):
    """The most salient pixel ``(y, x)`` of N same-shape samples (int32 ``(N, 2)``): their grey copies on an
    ``out_h`` x ``out_w`` grid (powers of two), their spectral-residual maps and each map's first peak, one image
    per worker in one launch. The same points as :func:`grey_resize`, :func:`spectral_residual` and the peak's
    cell (:func:`dali_kmix.saliency.salient_points`), without the intermediate arrays."""
    n = len(inputs)
    points = np.empty((n, 2), np.int32)
    if n == 0:
        return points
    inputs, pin, (h, w, c) = _image_pointers(inputs, layout)
    k = _c(gauss, np.float32)
    return _launch("kmix_host_salient_points", points, DTYPE_CODES[inputs[0].dtype], _addr(pin),
                   _addr(points), n, h, w, c, LAYOUT_CODES[layout], out_h, out_w, _addr(k),
                   workers or default_workers())


def dirichlet(alpha, gamma1, uniform) -> np.ndarray:
    """:func:`dali_kmix.sampling._dirichlet_from_draws` on the host (``kmix_host_dirichlet``): float64 ``(rows, K)``
    shares of Gamma(alpha + 1) draws and uniforms ``(rows, K)``; ``alpha`` ``(K,)`` or ``(rows, K)``."""
    gamma1, uniform = _c(gamma1, np.float64), _c(uniform, np.float64)
    alpha = _c(alpha, np.float64)
    rows, k = gamma1.shape
    phi = np.empty((rows, k), np.float64)
    _lib().kmix_host_dirichlet(_addr(alpha), k if alpha.ndim == 2 else 0, _addr(gamma1), _addr(uniform),
                               rows, k, _addr(phi))
    return phi


def pcg64_raw(entropy, spawn, count: int) -> np.ndarray:
    """``count`` raw outputs of ``numpy.random.PCG64(SeedSequence(entropy, spawn_key=spawn))`` from the native
    generator of ``kernels/kmix_draw.h`` (``entropy`` and ``spawn`` as uint32 words)."""
    entropy, spawn = _c(entropy, np.uint32), _c(spawn, np.uint32)
    out = np.empty(count, np.uint64)
    _lib().kmix_host_pcg64_raw(_addr(entropy), entropy.size, _addr(spawn), spawn.size, count,
                               _addr(out))
    return out


def native_sampler() -> bool:
    """Whether the CPU build holds the native sampler (``kernels/kmix_draw.h``, linked with NumPy's C library)."""
    lib = load()
    return lib is not None and hasattr(lib, "kmix_host_draw_record")


#: Method codes of the native sampler (kmix_host_draw_record).
DRAW_METHODS = {"dmixup": 0, "dcutmix": 1, "saliency-dcutmix": 2, "dmixup+dcutmix": 3}


def draw_record(entropy, spawn, method: str, n: int, k: int, alpha, mode: str, prob, height: int, width: int, *,
                valid=None, cutmix_alpha=None, switch_prob: float = 0.0, centers=None):
    """The record of one batch drawn natively (``kmix_host_draw_record``): ``(MixParams fields, cut)`` with the
    numbers of :class:`dali_kmix.dali._HostRecord` for a generator seeded with ``entropy`` and ``spawn`` (uint32
    words). What ``fn.kmix_draw`` computes, exposed for the tests."""
    entropy, spawn = _c(entropy, np.uint32), _c(spawn, np.uint32)
    alpha, prob = _c(alpha, np.float64), _c(prob, np.float64)  # a number: shape (1,)
    c = None if centers is None else _c(centers, np.int32)
    sources, weights, boxes = _record_out(n, k, True)
    cut_a = _c(cutmix_alpha if cutmix_alpha is not None else alpha.reshape(-1)[:k], np.float64)
    v = None if valid is None else _c(valid, np.uint8)
    cut = ctypes.c_int(0)
    rc = _lib().kmix_host_draw_record(_addr(entropy), entropy.size, _addr(spawn), spawn.size,
                                      DRAW_METHODS[method], n, k, _addr(alpha), int(alpha.ndim == 2),
                                      _addr(cut_a), int(mode == "batch"), _addr(prob), int(prob.size > 1),
                                      float(switch_prob), _addr(v), height, width, _addr(c), _addr(sources),
                                      _addr(weights), _addr(boxes), ctypes.byref(cut))
    if rc:
        raise RuntimeError(f"kmix_host_draw_record failed with code {rc}")
    return (sources, weights, boxes if cut.value else None), bool(cut.value)


def draw_record_from(gen: np.random.Generator, method: str, n: int, k: int, alpha, mode: str, prob: float,
                     height: int, width: int, centers=None):
    """``(sources, weights, boxes or None)`` of ``sample_params`` drawn natively from ``gen`` itself: its bit
    generator (``bit_generator.ctypes.bit_generator``, NumPy's ``bitgen_t``) advanced in place by the same calls, in
    the same order, as ``draw_raw`` + ``record_from_draws`` make (so the record and the generator's state after it
    are those of the Python drawing, for any NumPy bit generator). ``alpha``: K values; ``n`` >= 1; ``centers``
    for "saliency-dcutmix". None where ``gen``'s bit generator has no C interface, or the build has no native
    sampler (:func:`native_sampler`)."""
    bg = gen.bit_generator
    try:
        handle = bg.ctypes.bit_generator
    except (AttributeError, TypeError):  # a bit generator written in Python: no bitgen_t
        return None
    draw = getattr(_lib(), "kmix_host_draw_record_bitgen", None)
    if draw is None:
        return None
    alpha, prob = _c(alpha, np.float64), _c(prob, np.float64)  # a number: shape (1,)
    c = None if centers is None else _c(centers, np.int32)
    sources, weights, boxes = _record_out(n, k, method != "dmixup")
    with bg.lock:  # as every Generator method holds it while it draws
        rc = draw(handle, DRAW_METHODS[method], n, k, _addr(alpha), int(alpha.ndim == 2), int(mode == "batch"),
                  _addr(prob), int(prob.size > 1), height, width, _addr(c), _addr(sources), _addr(weights),
                  _addr(boxes), None)  # no cut flag: the method says it
    if rc:
        raise RuntimeError(f"kmix_host_draw_record_bitgen failed with code {rc}")
    return sources, weights, boxes


def _c_int_sides(height: int, width: int) -> bool:
    """Whether an image size is one the one-pass record check takes (C ints); where not, ``validate`` decides."""
    return 0 <= height < 2**31 and 0 <= width < 2**31


def record_valid(params, height: int | None, width: int | None) -> bool:
    """True when the NumPy record ``params`` passes ``params.validate(N, height, width)`` (the same checks, in one
    pass); False when it may not (then ``validate`` decides, and names the fault). ``height=width=None``: the
    rows alone, as ``params.validate_rows()`` checks them."""
    src, w, b = params.sources, params.weights, params.boxes  # int32 / float32 / int32, C-contiguous (MixParams)
    if height is None or width is None:
        b, height, width = None, 0, 0
    if not _c_int_sides(height, width):
        return False
    return bool(_lib().kmix_host_record_valid(_addr(src), _addr(w), _addr(b),
                                              src.shape[0], src.shape[1], height, width))


def mix_labels(labels: np.ndarray, params, num_classes: int, on, off, *, check_rows: bool = True):
    """The targets of :func:`dali_kmix.reference.mix_labels` (the same bits) for integer ``labels`` (N,) and a NumPy
    record, with the smoothed one-hot values ``on`` and ``off``; None, for the caller's checks to report, where a
    source or a label it reads is out of range, or (``check_rows``) the record's rows do not pass
    :func:`record_valid`'s check (whose anchors ``sources[:, 0] == arange(N)`` make it read every label), or
    ``num_classes`` is no C int."""
    if num_classes >= 2**31:
        return None
    labels = _c(labels, np.int64)
    out = np.empty((params.n, num_classes), np.float32)
    src, w = params.sources, params.weights  # int32 / float32, C-contiguous (MixParams)
    rc = _lib().kmix_host_mix_labels(_addr(labels), labels.shape[0], _addr(src), _addr(w), params.n,
                                     params.k, num_classes, on, off, _addr(out), int(check_rows))
    return None if rc else out


def half_to_float(bits: np.ndarray) -> np.ndarray:
    bits = _c(bits, np.uint16)
    out = np.empty(bits.shape, np.float32)
    _lib().kmix_host_half_to_float(_addr(bits), _addr(out), bits.size)
    return out


def float_to_half(values: np.ndarray) -> np.ndarray:
    values = _c(values, np.float32)
    out = np.empty(values.shape, np.uint16)
    _lib().kmix_host_float_to_half(_addr(values), _addr(out), values.size)
    return out


# --------------------------------------------------------------------------- the GPU launch configuration, on the host


def launch_config(kernel: str, n: int, height: int, width: int, channels: int, layout: str) -> tuple[int, int, int]:
    """``(grid.x, grid.y, block.x)`` of kernels/kmix_launch.h for ``kernel`` ("dmixup", "dcutmix", "mix")."""
    cfg = np.zeros(3, np.uint32)
    _lib().kmix_host_launch_config(KERNEL_CODES[kernel], n, height, width, channels, LAYOUT_CODES[layout],
                                   _addr(cfg))
    return tuple(int(v) for v in cfg)


def host_dcutmix_shape(dtype, k: int, height: int, width: int, channels: int, layout: str) -> tuple[int, bool]:
    """``(chunks of a sample, samples first)`` of a host DCutMix launch (kernels/kmix_host.cpp): deep float32
    nestings cut a sample into more chunks and run the same chunk of every sample before the next."""
    lib = _lib()
    code = DTYPE_CODES[np.dtype(dtype)]
    chunks = lib.kmix_host_dcutmix_chunks(code, k, height, width, channels, LAYOUT_CODES[layout])
    return int(chunks), bool(lib.kmix_host_dcutmix_samples_first(code, k))


def launch_cover(kernel: str, n: int, height: int, width: int, channels: int, layout: str):
    """``(tiles, visits, last)``: whether the launch's chunks (through the kernels' own work split) tile every
    sample's elements and rows exactly, how often each sample is visited, and the largest element offset reached."""
    visits = np.zeros(max(n, 0), np.int32)
    last = ctypes.c_longlong(0)
    rc = _lib().kmix_host_launch_cover(KERNEL_CODES[kernel], n, height, width, channels, LAYOUT_CODES[layout],
                                       _addr(visits), ctypes.addressof(last))
    return rc == 0, visits, last.value


# --------------------------------------------------------------------------- the record checks of the DALI operators


def _kmix_list(samples, with_data: bool):
    """``(_KmixList, keep-alive)`` for a batch: a list of arrays (or an array whose first axis is the batch)."""
    arrays = [np.ascontiguousarray(a) for a in samples]
    batch = samples if isinstance(samples, np.ndarray) else None  # an empty batch still has a dtype and ndim
    ndim = arrays[0].ndim if arrays else (batch.ndim - 1 if batch is not None else 0)
    if any(a.ndim != ndim for a in arrays):
        raise ValueError(f"every sample must have the same number of dimensions, got {[a.ndim for a in arrays]}")
    shape = np.array([a.shape for a in arrays], np.int64).reshape(-1)
    ptrs = _ptrs(arrays) if with_data else np.zeros(len(arrays), np.uint64)
    dtype = arrays[0].dtype if arrays else (batch.dtype if batch is not None else np.dtype(np.uint8))
    code = DTYPE_CODES.get(dtype, _I32_CODE if dtype == np.int32 else -1)
    name = dtype.name.encode()
    lst = _KmixList(len(arrays), ndim, _addr(shape), _addr(ptrs), code, name)
    return lst, (arrays, shape, ptrs, name)


def validate_record(method: str, images, sources, weights=None, boxes=None, cut=None, *, layout: str = "HWC",
                    found_layout: str = "") -> str:
    """The checks the DALI operators run on a record, before any kernel (kernels/kmix_record.h).

    ``method``: "dmixup" (sources, weights), "dcutmix" (sources, boxes) or "mix" (all four). Every
    input is a batch (a list of per-sample arrays, or an array whose first axis is the batch); of the
    images only the shapes and the dtype are read. Returns "" for a valid record, else the message
    the operators raise (the dtypes named as NumPy names them).
    """
    keep, lists = [], []
    for x, data in ((images, False), (sources, True), (weights, True), (boxes, True), (cut, True)):
        if x is None:
            lists.append(None)
            continue
        lst, alive = _kmix_list(x, data)
        keep.append(alive)
        lists.append(ctypes.pointer(lst))
    msg = ctypes.create_string_buffer(1024)
    _lib().kmix_host_validate_record(METHOD_CODES[method], layout.encode(), found_layout.encode(), *lists, msg,
                                     len(msg))
    return msg.value.decode()
