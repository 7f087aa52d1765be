"""dali_kmix: K-image mixing augmentation (DMixup, DCutMix) as NVIDIA DALI operators.

The CUDA sources live in the top-level ``kernels/`` folder and are installed as
the package-data package ``dali_kmix.kernels`` (find_packages() would not ship
them): the GPU path compiles them with NVRTC at run time, the CPU path with the
system C++ compiler on first use.

The GPU stack comes in one of two extras, so that a venv holds exactly one CuPy and
one DALI, built for one CUDA major version, whose CUDA libraries (NVRTC, cuRAND,
cuFFT) all load: ``cuda12`` (the default of the docs) or ``cuda13``. Pick the one
that matches the CUDA major version of the installed torch (``torch.version.cuda``)
and the driver; the Makefile does so (``make test CUDA=12`` overrides).
"""

from setuptools import setup

setup(
    name="dali_kmix",
    version="0.1.0",
    description="K-image mixing augmentation (DMixup, DCutMix) as NVIDIA DALI operators with CUDA kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["dali_kmix", "dali_kmix.backends", "dali_kmix.apps", "dali_kmix.kernels"],
    package_dir={"dali_kmix": "dali_kmix", "dali_kmix.kernels": "kernels"},
    package_data={"dali_kmix.kernels": ["*.cu", "*.cuh", "*.h", "*.cpp"]},
    include_package_data=False,
    install_requires=[
        "numpy>=1.24",
        "torch>=2.1",
        "tqdm",
        "matplotlib",
        "scikit-image",
        "pillow",
    ],
    extras_require={
        # CuPy's [ctk] extra installs the CUDA libraries it loads, as pip wheels of that same major version.
        "cuda12": ["nvidia-dali-cuda120>=2.0", "cupy-cuda12x[ctk]>=14"],
        "cuda13": ["nvidia-dali-cuda130>=2.4", "cupy-cuda13x[ctk]>=14"],
        "saliency": ["opencv-contrib-python-headless"],
        "bench": ["timm", "kornia", "torchvision"],
        # with one of cuda12/cuda13 (the Makefile installs .[test,cudaNN])
        "test": ["pytest>=8", "hypothesis>=6.100,<7", "scipy", "torchvision", "opencv-contrib-python-headless", "timm",
                 "kornia"],
        # `make fuzz`: coverage-guided fuzzing of the native operators (tests/fuzz/)
        "fuzz": ["atheris==3.0.0"],
    },
    entry_points={"console_scripts": ["kmix=dali_kmix.apps.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Environment :: GPU :: NVIDIA CUDA",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
