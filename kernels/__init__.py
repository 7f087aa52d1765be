"""CUDA C sources of dali_kmix, installed as package data (``dali_kmix.kernels``)."""
