"""The CUDA kernels on the GPU: compiled by NVRTC with our options, loaded into CuPy as a module.

Compilation does not go through ``cupy.RawModule(code=...)``: CuPy appends
``-ftz=true`` to the caller's options (cupy/cupy#9576), which flushes float32
subnormals to zero and makes the GPU disagree with the host build and the NumPy
reference. Instead :func:`dali_kmix.backends.sources.compile_cached` drives NVRTC
with :func:`~dali_kmix.backends.sources.nvrtc_options` (the compile gate's options),
the image is loaded with ``cupy.cuda.function.Module().load`` and kernels are looked
up by their lowered (mangled) names. Compiled images are kept on disk (see
``compile_cached``) and the loaded module in memory, per device.

Which image (:func:`target_arch`): a cubin for the device's own ``sm_XY`` whenever
NVRTC knows that architecture. A cubin also loads on a driver older than NVRTC
within one CUDA major version (minor-version compatibility), where PTX would not:
PTX must be JIT-compiled by the driver, which rejects a PTX ISA newer than itself.
PTX (``compute_XY``, the newest architecture NVRTC knows below the device's) is used
only for a device newer than NVRTC, whose driver is then the newer party and can
JIT it. A driver of an older CUDA major version than NVRTC loads neither: the error
then names both versions (install the ``cuda12`` extra for a CUDA 12 driver).

Kernels launch on CuPy's current stream: inside ``fn.python_function(device="gpu")``
DALI binds that to its own CUDA stream, so the mixing is ordered with the rest of
the pipeline. Nothing here synchronises the device or copies data to the host;
the only transfer per batch is the small array of per-sample pointers sent to
the device. Inputs are never written.

Samples: the kernels read and write each sample as a dense block from its first element.
Strided inputs (a transposed batch, a sliced view) are copied to contiguous ones first, one
sample at a time and only those; strided outputs raise (:func:`dali_kmix._checks.dense_samples`).

Lifetime of what a queued kernel reads: the pointer arrays, the record's arrays cast to the
kernel's types and the contiguous copies of strided inputs are CuPy arrays that a launching
function drops as soon as the kernel is queued, before it has run. That is safe:

* with CuPy's memory pool (CuPy 14), a freed block goes back to the arena of the stream that
  was current when it was allocated -- here the launch stream -- and is handed out again only
  to allocations made while a stream with that handle is current, whose work is queued after
  the kernel (stream order). A block is never given to another stream;
* without a pool (``cupy.cuda.set_allocator(None)``, as under compute-sanitizer: see
  ``DALI_KMIX_NO_POOL`` in :func:`configure_allocator`) the array is released with
  ``cudaFree``, which waits for the device's pending work first;
* the host side of the pointer copy is CuPy's pinned staging buffer, kept until an event
  recorded after the copy has completed; the NumPy array of addresses may go at once.

The one case this reasoning does not cover is a stream destroyed while its work is pending and
a new stream created at the same handle (CuPy keys its arenas by handle); DALI and torch keep
their streams for the life of the pipeline or process. The arrays a caller passes in (samples,
outputs) stay the caller's to keep alive until the work on the stream is done, as with any
CuPy kernel. A :class:`Launch` holds everything it points into for as long as it lives.
"""

from __future__ import annotations

import functools

import numpy as np

from .._checks import dense_blend_samples, dense_samples, hwc_dims
from . import sources

__all__ = ["module", "configure_allocator", "NO_POOL_ENV", "target_arch", "device_arch", "KernelModule", "Launch", "dmixup", "dcutmix", "mix",
           "dmixup_launch", "dcutmix_launch", "mix_launch", "nest_boxes", "grey_resize"]

_TYPE_NAMES = {np.dtype(np.uint8): "unsigned char", np.dtype(np.float16): "__half", np.dtype(np.float32): "float"}
_MAX_GRID_Y = 65535


def target_arch(compute_capability, supported) -> str:
    """The NVRTC target for a device of ``compute_capability`` ("90" or 90).

    ``supported``: the architectures NVRTC can compile for (``nvrtc.getSupportedArchs()``).
    "sm_XY" (a cubin) when NVRTC knows the device; else "compute_XY" (PTX) for the
    newest architecture it knows below the device's, which the driver JIT-compiles.
    """
    cc = int(compute_capability)
    known = sorted(int(a) for a in supported)
    if cc in known:
        return f"sm_{cc}"
    older = [a for a in known if a < cc]
    if not older:
        raise RuntimeError(f"NVRTC (supported architectures {known}) cannot compile for compute capability "
                           f"{cc}; got a device older than any architecture it supports")
    return f"compute_{older[-1]}"


def device_arch(device_id: int | None = None) -> str:
    """:func:`target_arch` of CUDA device ``device_id`` (default: the current one)."""
    import cupy

    dev = cupy.cuda.Device(device_id) if device_id is not None else cupy.cuda.Device()
    return target_arch(dev.compute_capability, sources.nvrtc_supported_archs())  # under the NVRTC lock


class KernelModule:
    """A compiled kernel source loaded on one device; ``get_function`` takes name expressions."""

    def __init__(self, name: str, compiled: sources.Compiled):
        from cupy.cuda import function

        self.name, self.compiled = name, compiled
        image = compiled.image
        if compiled.kind == "ptx" and not image.endswith(b"\0"):
            image += b"\0"  # cuModuleLoadData reads PTX as a C string
        self._module = function.Module()
        try:
            self._module.load(image)
        except Exception as exc:  # noqa: BLE001 - add what explains the usual cause, keep the CUDA error
            import cupy

            driver = cupy.cuda.runtime.driverGetVersion()
            raise RuntimeError(
                f"loading the {compiled.kind} of {name} for {compiled.arch} failed: {exc}; CUDA driver "
                f"{driver // 1000}.{driver % 1000 // 10}, NVRTC {'.'.join(map(str, sources.nvrtc_version()))} "
                "(a driver of an older CUDA major version than NVRTC cannot load its output: install the "
                "dali_kmix extra that matches the driver, cuda12 or cuda13)") from exc
        self._functions = {}

    def get_function(self, expr: str):
        """The kernel of name expression ``expr`` ("kmix_dmixup<float>", or an extern "C" name)."""
        fn = self._functions.get(expr)
        if fn is None:
            fn = self._functions[expr] = self._module.get_function(self.compiled.lowered.get(expr, expr))
        return fn


#: Set to 1 to run CuPy without its memory pools (see :func:`configure_allocator`).
NO_POOL_ENV = "DALI_KMIX_NO_POOL"


@functools.lru_cache(maxsize=None)
def configure_allocator() -> bool:
    """Honour ``DALI_KMIX_NO_POOL=1``: CuPy allocates device memory with ``cudaMalloc`` (and pinned host memory
    with ``cudaHostAlloc``) one array at a time, without its pools; returns True when it did so.

    For compute-sanitizer: memcheck checks accesses against the allocations it sees, and a pool
    hands out pieces of large blocks, so a kernel reading past the end of a sample inside a pooled
    block is not reported. Applied once per process, before the first kernel is loaded (the test
    suite's conftest applies it at start-up, before any array is made).
    """
    from .build import env_flag

    if not env_flag(NO_POOL_ENV):
        return False
    import cupy

    cupy.cuda.set_allocator(None)
    cupy.cuda.set_pinned_memory_allocator(None)
    return True


@functools.lru_cache(maxsize=None)
def _module(name: str, device_id: int) -> KernelModule:
    # called by module() with the current device: the image loads into its context
    return KernelModule(name, sources.compile_cached(name, device_arch(device_id)))


def module(name: str) -> KernelModule:
    """The compiled module of ``kernels/<name>`` on the current device (cached on disk and per device)."""
    import cupy

    configure_allocator()
    return _module(name, cupy.cuda.runtime.getDevice())


def _data_ptr(a) -> int:
    """Device address of a CuPy array's first element (the tests' launch recorder stands NumPy in for it)."""
    return a.data.ptr


def _ptrs(arrays):
    """A device array of the samples' addresses (one small asynchronous host-to-device copy)."""
    import cupy

    host = np.fromiter((_data_ptr(a) for a in arrays), dtype=np.uint64, count=len(arrays))
    return cupy.asarray(host)


# The launch configuration mirrors kernels/kmix_launch.h (the DALI plugin's GPU operators use that header; the
# tests compare both over batch sizes and image sizes): block 256, grid.y min(N, 65535), grid.x as below.
def _blend_grid_x(elems: int, block: int) -> int:
    """Blocks along grid.x for a blend of ``elems`` per sample: about 4 elements per thread."""
    return max(1, min((elems + block * 4 - 1) // (block * 4), 1 << 20))


def _paste_grid_x(h: int, w: int, c: int, layout: str) -> int:
    """Blocks along grid.x for a paste: the rows (H, or C x H for CHW) in groups of about 4096 elements."""
    rows = h if layout == "HWC" else c * h
    row_len = w * (c if layout == "HWC" else 1)
    rows_per_block = max(1, 4096 // max(1, row_len))
    return max(1, (rows + rows_per_block - 1) // rows_per_block)


def _type_name(dtype) -> str:
    try:
        return _TYPE_NAMES[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"the kernels take uint8, float16 or float32 samples, got dtype {dtype}") from None


class Launch:
    """One kernel launch with its arguments gathered: calling it only launches, on the current stream.

    Gathering (the per-sample pointer arrays, their host-to-device copies, contiguous copies of
    strided inputs, the record's arrays in the kernel's types) happens once, when the launch is
    made; :mod:`dali_kmix.apps.bench_gpu` times calls of a prepared launch, so its kernel rows
    measure the kernel. ``keep`` holds the arrays the pointer arrays point into for as long as
    the launch lives.
    """

    __slots__ = ("kernel", "grid", "block", "args", "keep")

    def __init__(self, kernel, grid, block, args, keep=()):
        self.kernel, self.grid, self.block, self.args, self.keep = kernel, grid, block, args, keep

    def __call__(self):
        self.kernel(self.grid, self.block, self.args)


def dmixup_launch(inputs, outputs, sources, weights) -> Launch | None:
    """The prepared :func:`dmixup` launch (None for an empty batch)."""
    import cupy

    n = len(outputs)
    if n == 0:
        return None
    inputs, outputs = dense_blend_samples(inputs, outputs)
    elems = outputs[0].size
    kern = module("kmix_blend.cu").get_function(f"kmix_dmixup<{_type_name(outputs[0].dtype)}>")
    block = 256
    grid_x = _blend_grid_x(elems, block)
    src = cupy.ascontiguousarray(sources, dtype=cupy.int32)
    w = cupy.ascontiguousarray(weights, dtype=cupy.float32)
    return Launch(kern, (grid_x, min(n, _MAX_GRID_Y)), (block,),
                  (_ptrs(inputs), _ptrs(outputs), src, w, np.int32(n), np.int32(src.shape[1]), np.int64(elems)),
                  (inputs, outputs))


def dcutmix_launch(inputs, outputs, sources, boxes, layout) -> Launch | None:
    """The prepared :func:`dcutmix` launch (None for an empty batch)."""
    import cupy

    n = len(outputs)
    if n == 0:
        return None
    inputs, outputs = dense_blend_samples(inputs, outputs)
    h, w, c = hwc_dims(outputs[0].shape, layout)
    grid_x = _paste_grid_x(h, w, c, layout)
    kern = module("kmix_blend.cu").get_function(f"kmix_dcutmix<{_type_name(outputs[0].dtype)}>")
    src = cupy.ascontiguousarray(sources, dtype=cupy.int32)
    bx = cupy.ascontiguousarray(boxes, dtype=cupy.int32)
    return Launch(kern, (grid_x, min(n, _MAX_GRID_Y)), (256,),
                  (_ptrs(inputs), _ptrs(outputs), src, bx, np.int32(n), np.int32(src.shape[1]), np.int32(h),
                   np.int32(w), np.int32(c), np.int32(0 if layout == "HWC" else 1)),
                  (inputs, outputs))


def mix_launch(inputs, outputs, sources, weights, boxes, cut, layout) -> Launch | None:
    """The prepared :func:`mix` launch (None for an empty batch)."""
    import cupy

    n = len(outputs)
    if n == 0:
        return None
    inputs, outputs = dense_blend_samples(inputs, outputs)
    h, w, c = hwc_dims(outputs[0].shape, layout)
    elems = outputs[0].size
    block = 256
    grid_x = _blend_grid_x(elems, block)  # the blend's split; a paste shares these blocks among its rows
    kern = module("kmix_blend.cu").get_function(f"kmix_mix<{_type_name(outputs[0].dtype)}>")
    src = cupy.ascontiguousarray(sources, dtype=cupy.int32)
    wt = cupy.ascontiguousarray(weights, dtype=cupy.float32)
    bx = cupy.ascontiguousarray(boxes, dtype=cupy.int32)
    ct = cupy.ascontiguousarray(cut, dtype=cupy.uint8).reshape(n)
    return Launch(kern, (grid_x, min(n, _MAX_GRID_Y)), (block,),
                  (_ptrs(inputs), _ptrs(outputs), src, wt, bx, ct, np.int32(n), np.int32(src.shape[1]),
                   np.int32(h), np.int32(w), np.int32(c), np.int32(0 if layout == "HWC" else 1)),
                  (inputs, outputs))


def _run(launch, outputs):
    if launch is not None:
        launch()
    return outputs


def dmixup(inputs, outputs, sources, weights):
    """DMixup on the GPU. ``inputs``/``outputs``: lists of N CuPy arrays of one shape and dtype (outputs
    C-contiguous; strided inputs are copied first)."""
    return _run(dmixup_launch(inputs, outputs, sources, weights), outputs)


def dcutmix(inputs, outputs, sources, boxes, layout):
    """DCutMix on the GPU. Samples are (H, W, C) for "HWC" or (C, H, W) for "CHW"."""
    return _run(dcutmix_launch(inputs, outputs, sources, boxes, layout), outputs)


def mix(inputs, outputs, sources, weights, boxes, cut, layout):
    """DMixup where ``cut[s]`` is 0 and DCutMix where it is 1, per sample, in one launch (``kmix_mix``).

    ``cut`` is a device array, read by the kernel: which method a sample gets is never
    read back to the host.
    """
    return _run(mix_launch(inputs, outputs, sources, weights, boxes, cut, layout), outputs)


def nest_boxes(method, phi, uniforms, perms, mixed, height, width, centers=None):
    """Run ``kmix_nest_boxes`` on device arrays; returns (sources, weights, boxes or None).

    ``centers``: int32 (N, 2) device array of salient points (Saliency-DCutMix), or None.
    """
    import cupy

    n = int(mixed.shape[0])
    k = int(phi.shape[1])
    sources = cupy.empty((n, k), cupy.int32)
    weights = cupy.empty((n, k), cupy.float32)
    boxes = cupy.empty((n, k - 1, 4), cupy.int32) if method != "dmixup" else None
    if n == 0:
        return sources, weights, boxes
    kern = module("kmix_boxes.cu").get_function("kmix_nest_boxes")
    stride = 1 if phi.shape[0] == n else 0
    block = 64
    kern(((n + block - 1) // block,), (block,),
         (cupy.ascontiguousarray(phi, dtype=cupy.float64), cupy.ascontiguousarray(uniforms, dtype=cupy.float64),
          np.int32(stride), cupy.ascontiguousarray(perms, dtype=cupy.int32),
          cupy.ascontiguousarray(mixed, dtype=cupy.uint8), np.int32(n), np.int32(k), np.int32(height),
          np.int32(width), sources, weights, boxes if boxes is not None else np.uintp(0),
          cupy.ascontiguousarray(centers, dtype=cupy.int32) if centers is not None else np.uintp(0)))
    return sources, weights, boxes


def grey_resize(inputs, layout, out_h, out_w):
    """Small grey copies (float32 ``(N, out_h, out_w)`` CuPy array) of N same-shape device samples."""
    import cupy

    n = len(inputs)
    out = cupy.empty((n, out_h, out_w), cupy.float32)
    if n == 0:
        return out
    inputs = dense_samples("samples", inputs, inputs[0].shape, inputs[0].dtype)
    h, w, c = hwc_dims(inputs[0].shape, layout)
    kern = module("kmix_saliency.cu").get_function(f"kmix_grey_resize<{_type_name(inputs[0].dtype)}>")
    block = 256
    grid = max(1, min((n * out_h * out_w + block - 1) // block, 1 << 16))
    kern((grid,), (block,), (_ptrs(inputs), out, np.int32(n), np.int32(h), np.int32(w), np.int32(c),
                             np.int32(0 if layout == "HWC" else 1), np.int32(out_h), np.int32(out_w)))
    return out
