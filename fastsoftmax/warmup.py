"""Compile the Numba kernels ahead of use: ``fastsoftmax warmup``.

Numba compiles a kernel the first time it is called with new argument types and keeps
the machine code in its on-disk cache (see ``fastsoftmax._numba._cache``).  A cold
cache costs seconds per kernel on the first run; a container image, a CI job or a
cluster node can pay that once, at build time, by running this.  The cache is valid
for the same installed files on the same kind of CPU.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import numpy as np

from . import _api
from ._backends import load
from .train.loop import warm_up as warm_up_step

# (rows, classes) per kernel mode: one shape per path (the small-C tiles, the large-C
# rows), below the backend's serial cut-off (16384 logits) for the serial kernels and
# above it for the parallel ones.
SHAPES = {"serial": ((64, 10), (4, 1000)), "parallel": ((2048, 10), (32, 1000))}
DTYPES = (np.float32, np.float64)


@contextlib.contextmanager
def _forced(policy, parallel: bool) -> Iterator[None]:
    old = policy.force
    policy.force = parallel
    try:
        yield
    finally:
        policy.force = old


def _op_calls(z: np.ndarray, y: np.ndarray, mode: str) -> list[tuple[str, Callable[[], object]]]:
    calls = [
        ("cross_entropy_with_grad", lambda: _api.cross_entropy_with_grad(z, y)),
        # label smoothing is a specialisation of its own (the kernels compile no
        # smoothing code for the calls without it)
        (
            "cross_entropy_with_grad label_smoothing",
            lambda: _api.cross_entropy_with_grad(z, y, label_smoothing=0.1),
        ),
        ("cross_entropy", lambda: _api.cross_entropy(z, y)),
        ("softmax", lambda: _api.softmax(z)),
        ("log_softmax", lambda: _api.log_softmax(z)),
    ]
    if mode == "serial":  # fastsoftmax.torch's minibatch call: one kernel, by address
        grad = np.empty_like(z)

        def minibatch() -> None:  # the arrays live as long as this closure
            at = (z.ctypes.data, y.ctypes.data, grad.ctypes.data)
            _api.cross_entropy_index_rows_at(*at, *z.shape, z.dtype == np.float64, True, -100)

        calls.append(("torch minibatch cross_entropy", minibatch))
    return calls


def warm_up(progress: Callable[[str, float], None] | None = None, *, train: bool = True) -> float:
    """Compile (or load from the cache) the kernels most programs call: the ops on
    float32 and float64 logits, small and large C, serial and parallel, and (``train``)
    the trainer's step for uint8, float32 and float64 inputs.  ``progress(name, s)``
    hears of each.  Returns the seconds taken."""
    be = load("numba")
    start = time.perf_counter()

    def timed(name: str, fn: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        fn()
        if progress is not None:
            progress(name, time.perf_counter() - t0)

    rng = np.random.default_rng(0)
    for dtype in DTYPES:
        for mode, shapes in SHAPES.items():
            for rows, classes in shapes:
                z = rng.standard_normal((rows, classes)).astype(dtype)
                y = rng.integers(0, classes, rows)
                with _forced(be.policy, mode == "parallel"):
                    for op, call in _op_calls(z, y, mode):
                        timed(f"{op} {np.dtype(dtype).name} C={classes} {mode}", call)
    if train:
        for x_dtype in (np.uint8, np.float32, np.float64):
            X = np.zeros((2, 784), x_dtype)
            w_dtype = np.float64 if x_dtype == np.float64 else np.float32
            # both step kernels: batches of one 64-row block and of more (10 classes)
            for batch in (64, 128):
                timed(
                    f"training step, {np.dtype(x_dtype).name} inputs, batch {batch}",
                    lambda X=X, w=w_dtype, b=batch: warm_up_step(X, "numba", w, batch_size=b),
                )
    return time.perf_counter() - start
