"""The CUDA backend: ``kernels/*.cu`` run by CuPy on CuPy arrays, no host copies of the
data.  ``fastsoftmax.softmax(cupy_array)`` & co. come to ``api.py``: the same options,
semantics and errors as the CPU backends.  ``_loader.py`` finds, compiles and launches
the kernels.

This package imports without CuPy (so the loader's checks are testable anywhere);
``api.py`` needs it (``pip install 'fastsoftmax[cuda]'``), and the dispatcher turns its
absence into a BackendUnavailableError naming that extra.
"""
