"""dali_kmix: K-image mixing augmentation (DMixup, DCutMix) as NVIDIA DALI operators.

The array API works anywhere NumPy does (CuPy arrays run on the GPU)::

    import numpy as np
    import dali_kmix

    params = dali_kmix.sample_params("dcutmix", n=8, height=32, width=32, k=3, alpha=1.0, rng=0)
    mixed = dali_kmix.mix_images(images, params, layout="HWC")      # (8, 32, 32, 3)
    targets = dali_kmix.mix_labels(labels, params, num_classes=10)  # (8, 10) float32

Submodules that need DALI, CuPy or PyTorch are imported on first use:
``dali_kmix.dali`` (the operators), ``dali_kmix.torch`` (losses),
``dali_kmix.pipelines`` (ImageNet-style pipelines and the iterator).
"""

from __future__ import annotations

import importlib

from .mixing import mix_images, mix_labels
from .params import MixParams, nest_boxes, sample_dirichlet, sample_params

__version__ = "0.1.0"

__all__ = ["MixParams", "sample_params", "mix_images", "mix_labels", "nest_boxes", "sample_dirichlet",
           "__version__"]

_LAZY = {"dali", "torch", "pipelines", "reference", "cpu_kernels", "gpu_kernels", "kernel_source", "data",
         "demo", "cli"}


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'dali_kmix' has no attribute {name!r}")
