"""Backend selection: by array type, by ``backend=``, or by ``use_backend(...)``.

Backends are modules implementing the kernel contract described in
``fastsoftmax/reference.py``.  They are imported on first use, so ``import fastsoftmax``
costs only NumPy.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
from collections.abc import Iterator
from types import ModuleType

import numpy as np

# name -> (module, what to pip install for its dependency).  Each module runs the ops of
# the kernel contract (fastsoftmax/reference.py); the CPU ones also run the training
# step (sgd_steps).
_REGISTRY: dict[str, tuple[str, str]] = {
    "numpy": ("fastsoftmax.reference", ""),
    "numba": ("fastsoftmax._numba", "numba"),
    "cupy": ("fastsoftmax._cupy.api", "fastsoftmax[cuda]"),
}
CPU_BACKENDS = ("numba", "numpy")  # order of preference for NumPy arrays
AUTO = "auto"

_current: contextvars.ContextVar[str] = contextvars.ContextVar("fastsoftmax_backend", default=AUTO)
_loaded: dict[str, ModuleType] = {}


class BackendUnavailableError(ImportError):
    """The requested backend cannot be used here (a dependency is missing)."""


def _check_name(name: str) -> str:
    if not isinstance(name, str) or (name != AUTO and name not in _REGISTRY):
        choices = ", ".join(repr(n) for n in (AUTO, *_REGISTRY))
        raise ValueError(f"backend must be one of {choices}, got {name!r}")
    return name


def load(name: str) -> ModuleType:
    """The backend module for ``name``, importing it on first use."""
    mod = _loaded.get(name)
    if mod is not None:
        return mod
    _check_name(name)
    if name == AUTO:
        # what auto means is settled once per process (numba imports or it does not)
        mod = _loaded[AUTO] = default_cpu_backend()
        return mod
    module, requirement = _REGISTRY[name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name == module:
            raise BackendUnavailableError(
                f"backend {name!r} is not part of this version of fastsoftmax"
            ) from err
        raise BackendUnavailableError(
            f"backend {name!r} needs {err.name!r}, which is not installed; "
            f"install it with: pip install '{requirement}'"
        ) from err
    _loaded[name] = mod
    return mod


def is_available(name: str) -> bool:
    try:
        load(name)
    except BackendUnavailableError:
        return False
    return True


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine."""
    return [n for n in _REGISTRY if is_available(n)]


def default_cpu_backend() -> ModuleType:
    """numba when it imports, else the NumPy reference."""
    for name in CPU_BACKENDS:
        if is_available(name):
            return _loaded[name]
    raise AssertionError("unreachable: the numpy backend is always available")


def is_cupy_array(x: object) -> bool:
    t = type(x)
    return t is not np.ndarray and t.__module__.split(".", 1)[0] == "cupy"


def resolve(x: object, backend: str | None) -> ModuleType:
    """The backend that runs an op on array ``x``."""
    name = _current.get() if backend is None else _check_name(backend)
    if type(x) is not np.ndarray and is_cupy_array(x):
        if name not in (AUTO, "cupy"):
            raise ValueError(f"backend {name!r} cannot run on CuPy arrays; use 'cupy' or 'auto'")
        return load("cupy")
    if name == "cupy":
        raise TypeError(
            f"backend 'cupy' needs CuPy arrays, got {type(x).__name__}; "
            "move the data with cupy.asarray first"
        )
    return load(name)


def current_cpu_backend() -> ModuleType | None:
    """The backend that runs an op on NumPy arrays here (use_backend's choice, else
    auto's); None under use_backend("cupy"), which runs no NumPy arrays."""
    name = _current.get()
    return None if name == "cupy" else load(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the enclosed calls on backend ``name`` (unless a call passes ``backend=``).

    >>> with fastsoftmax.use_backend("numpy"):
    ...     loss = fastsoftmax.cross_entropy(logits, target)
    """
    _check_name(name)
    if name != AUTO:
        load(name)  # fail here, at the `with`, not inside it
    token = _current.set(name)
    try:
        yield
    finally:
        _current.reset(token)
