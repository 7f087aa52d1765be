"""Where the kernels run: one place decides, behind one signature.

:func:`backend_for` looks at an array (or the first sample of a batch) and returns

* :class:`GpuBackend` for CuPy arrays: the CUDA kernels, compiled by NVRTC
  (:mod:`dali_kmix.backends.gpu`), launched on CuPy's current stream;
* :class:`CpuBackend` for NumPy arrays: the same ``.cu`` kernels compiled for the host
  (:mod:`dali_kmix.backends.cpu`, built by :mod:`dali_kmix.backends.build`);
* :class:`NumpyBackend` for NumPy arrays where no C++ compiler could build them:
  the NumPy reference (:mod:`dali_kmix.reference`), which gives the same bits.

Every backend takes lists of same-shape, C-contiguous samples (DALI's batches are
read without stacking) and writes into given outputs; inputs are never written::

    backend_for(samples[0]).blend(samples, outputs, params, layout)
    backend_for(samples[0]).grey_resize(samples, layout, out_h, out_w)

The modules beside this one hold the rest of the kernel plumbing: the sources and
their compile options (:mod:`.sources`), the host build cache (:mod:`.build`), the
ctypes and CuPy bindings (:mod:`.cpu`, :mod:`.gpu`) and the DALI plugin loader
(:mod:`.plugin`).
"""

from __future__ import annotations

import functools

import numpy as np

from .. import reference
from .._checks import array_module, spatial_size
from . import cpu
from .build import env_flag

__all__ = ["backend_for", "Backend", "CpuBackend", "GpuBackend", "NumpyBackend", "gpu_available", "cuda_device_count",
           "host_kernels"]


class Backend:
    """The kernels behind one signature (subclasses: one per place they run)."""

    name = "?"

    def dmixup(self, inputs, outputs, sources, weights):
        raise NotImplementedError

    def dcutmix(self, inputs, outputs, sources, boxes, layout):
        raise NotImplementedError

    def mix(self, inputs, outputs, sources, weights, boxes, cut, layout):
        """Per sample: DMixup with ``weights`` where ``cut[s]`` is 0, DCutMix with ``boxes`` where it is 1."""
        raise NotImplementedError

    def grey_resize(self, samples, layout, out_h, out_w):
        """float32 ``(N, out_h, out_w)`` grey copies (same array kind as the samples)."""
        raise NotImplementedError

    def blend(self, inputs, outputs, params, layout):
        """Apply a :class:`~dali_kmix.MixParams` of this backend's array kind; returns ``outputs``."""
        if params.boxes is None:
            return self.dmixup(inputs, outputs, params.sources, params.weights)
        return self.dcutmix(inputs, outputs, params.sources, params.boxes, layout)

    def blend_checked(self, inputs, outputs, params, layout):
        """:meth:`blend` of a record checked first against the batch (:meth:`~dali_kmix.MixParams.validate`, which
        names a fault in a ValueError); returns ``outputs``."""
        h, w = spatial_size(outputs[0].shape, layout)
        params.validate(len(outputs), h, w)
        return self.blend(inputs, outputs, params, layout)

    def prepare_blend(self, inputs, outputs, params, layout):
        """A callable that applies ``params`` as :meth:`blend` does, with whatever can be gathered once (the GPU's
        pointer arrays and their copies to the device) gathered now: calling it only runs the kernel."""
        return lambda: self.blend(inputs, outputs, params, layout)

    def __repr__(self):
        return f"<dali_kmix backend {self.name}>"


class CpuBackend(Backend):
    """The CUDA kernels compiled for the CPU; ``workers`` threads (default: all cores).

    ``block_threads`` and ``reverse`` change how blocks and threads are scheduled (the
    tests use them to show the result does not depend on it).
    """

    name = "cpu"

    def __init__(self, workers=None, block_threads: int = 1, reverse: bool = False):
        self._k = cpu
        self.workers, self.block_threads, self.reverse = workers, block_threads, reverse

    def _opts(self):
        return dict(workers=self.workers, block_threads=self.block_threads, reverse=self.reverse)

    def dmixup(self, inputs, outputs, sources, weights):
        return self._k.dmixup(inputs, outputs, sources, weights, **self._opts())

    def dcutmix(self, inputs, outputs, sources, boxes, layout):
        return self._k.dcutmix(inputs, outputs, sources, boxes, layout, **self._opts())

    def mix(self, inputs, outputs, sources, weights, boxes, cut, layout):
        return self._k.mix(inputs, outputs, sources, weights, boxes, cut, layout, **self._opts())

    def grey_resize(self, samples, layout, out_h, out_w):
        return self._k.grey_resize(samples, layout, out_h, out_w, workers=self.workers, reverse=self.reverse)

    def blend_checked(self, inputs, outputs, params, layout):
        # Two C-contiguous batch arrays: the one-pass check of the record and the blend in one call
        # (cpu.blend_batch); validate's NumPy operations only where that call does not apply or pass the record.
        if self._k.blend_batch(inputs, outputs, params, layout, **self._opts()):
            return outputs
        return super().blend_checked(inputs, outputs, params, layout)


class GpuBackend(Backend):
    """The CUDA kernels on the current CuPy device and stream."""

    name = "gpu"

    def __init__(self):
        from . import gpu

        self._k = gpu

    def dmixup(self, inputs, outputs, sources, weights):
        return self._k.dmixup(inputs, outputs, sources, weights)

    def dcutmix(self, inputs, outputs, sources, boxes, layout):
        return self._k.dcutmix(inputs, outputs, sources, boxes, layout)

    def mix(self, inputs, outputs, sources, weights, boxes, cut, layout):
        return self._k.mix(inputs, outputs, sources, weights, boxes, cut, layout)

    def grey_resize(self, samples, layout, out_h, out_w):
        return self._k.grey_resize(samples, layout, out_h, out_w)

    def prepare_blend(self, inputs, outputs, params, layout):
        if params.boxes is None:
            launch = self._k.dmixup_launch(inputs, outputs, params.sources, params.weights)
        else:
            launch = self._k.dcutmix_launch(inputs, outputs, params.sources, params.boxes, layout)
        return launch if launch is not None else (lambda: None)


class NumpyBackend(Backend):
    """The NumPy reference, for machines without a C++ compiler (same bits, slower)."""

    name = "numpy"

    def _apply(self, inputs, outputs, params, layout):
        for o, r in zip(outputs, reference.mix_images(np.stack(inputs), params, layout)):
            o[...] = r
        return outputs

    def dmixup(self, inputs, outputs, sources, weights):
        from ..record import MixParams

        return self._apply(inputs, outputs, MixParams(sources, weights), "HWC")

    def dcutmix(self, inputs, outputs, sources, boxes, layout):
        from ..record import MixParams, area_weights

        h, w = spatial_size(inputs[0].shape, layout)
        return self._apply(inputs, outputs, MixParams(sources, area_weights(np.asarray(boxes), h, w), boxes), layout)

    def mix(self, inputs, outputs, sources, weights, boxes, cut, layout):
        from ..record import MixParams, area_weights

        x = np.stack(inputs)
        h, w = spatial_size(inputs[0].shape, layout)
        boxes = np.asarray(boxes)
        blend = reference.mix_images(x, MixParams(sources, weights), layout)
        paste = reference.mix_images(x, MixParams(sources, area_weights(boxes, h, w), boxes), layout)
        for o, c, b, p in zip(outputs, np.asarray(cut).reshape(-1), blend, paste):
            o[...] = p if c else b
        return outputs

    def grey_resize(self, samples, layout, out_h, out_w):
        return reference.resize_bilinear(reference.grey(np.stack(samples), layout), out_h, out_w)


def backend_for(array, *, workers=None) -> Backend:
    """The backend for ``array``'s kind: GPU for CuPy, else the CPU kernels, else the NumPy reference.

    ``workers``: CPU threads of the CPU kernels (default: all cores of this process).
    """
    if array_module(array) is not np:
        return GpuBackend()
    if cpu.available():
        return CpuBackend(workers=workers)
    return NumpyBackend()


def host_kernels():
    """The CPU build (:mod:`dali_kmix.backends.cpu`) where it loads, else None: what the host-side steps beside the
    blend use when they can (the box nesting of the samplers, the one-pass targets of ``mix_labels``, the
    spectral residual of the saliency); without it they run their NumPy code, which gives the same results."""
    return cpu if cpu.available() else None


@functools.lru_cache(maxsize=None)
def cuda_device_count() -> int:
    """CUDA devices the driver sees, without CuPy (DALI's GPU operators need none): 0 without a driver or a device,
    and with ``DALI_KMIX_NO_GPU=1`` (a yes/no variable, :func:`~dali_kmix.backends.build.env_flag`)."""
    if env_flag("DALI_KMIX_NO_GPU"):
        return 0
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def gpu_available() -> bool:
    """True when CuPy imports and sees a CUDA device (``DALI_KMIX_NO_GPU=1``, or true/yes/on, forces False)."""
    if env_flag("DALI_KMIX_NO_GPU"):
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no device: all mean "no GPU"
        return False
