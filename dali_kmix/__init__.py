"""dali_kmix: K-image mixing augmentation (DMixup, DCutMix) as NVIDIA DALI operators.

The array API works anywhere NumPy does (CuPy arrays run on the GPU)::

    import numpy as np
    import dali_kmix

    params = dali_kmix.sample_params("dcutmix", n=8, height=32, width=32, k=3, alpha=1.0, rng=0)
    mixed = dali_kmix.mix_images(images, params, layout="HWC")      # (8, 32, 32, 3)
    targets = dali_kmix.mix_labels(labels, params, num_classes=10)  # (8, 10) float32

The package, from the record to the model:

* :mod:`dali_kmix.record` (``MixParams``) and :mod:`dali_kmix.sampling` (the draws);
* :mod:`dali_kmix.mixing` (apply a record) over :mod:`dali_kmix.backends` (where the
  kernels run: CPU build, GPU, NumPy reference) and :mod:`dali_kmix.reference`;
* :mod:`dali_kmix.saliency` (salient points for Saliency-DCutMix);
* :mod:`dali_kmix.dali` (the DALI operators), :mod:`dali_kmix.pipelines` (ImageNet-style
  pipelines and the iterator), :mod:`dali_kmix.torch` (losses);
* :mod:`dali_kmix.apps`: the applications built on them (the ``kmix`` command, training,
  subsampling, benchmarks, the demo); nothing in the library imports them.

Submodules that need DALI, CuPy or PyTorch are imported on first use.
"""

from __future__ import annotations

import importlib

from .mixing import mix_images, mix_labels
from .record import MixParams
from .sampling import nest_boxes, sample_dirichlet, sample_params

__version__ = "0.1.0"

__all__ = ["MixParams", "sample_params", "mix_images", "mix_labels", "nest_boxes", "sample_dirichlet",
           "__version__"]

_LAZY = {"dali", "torch", "pipelines", "reference", "saliency", "backends", "apps"}


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'dali_kmix' has no attribute {name!r}")
