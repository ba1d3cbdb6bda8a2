"""CUDA C device code of the CuPy backend, shipped as package data (no Python here)."""
