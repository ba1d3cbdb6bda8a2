"""What the thread policy (fastsoftmax._threads) is built on: the serial cost per
element of each kernel family (the numba backend's SERIAL_SECONDS_PER_ELEMENT), and
the cost of waking the pool after it has been idle for a while.

Run: pytest bench/bench_threads.py [--benchmark-json=out.json]
     NUMBA_CPU_NAME=znver3 pytest bench/bench_threads.py   (AVX2 code on an AVX-512 CPU)
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import record

import fastsoftmax as fs

numba = pytest.importorskip("numba")

# (rows, classes): the small-C tile path, the only one the policy chooses for (the
# row-path kernels always run in parallel above the cut-off: fastsoftmax/_numba)
SHAPES = {"small_c": (65536, 10)}
CALLS = {
    "xent": lambda z, y: fs.cross_entropy_with_grad(z, y, inplace=True),
    "xent_fwd": lambda z, y: fs.cross_entropy(z, y),
    "softmax": lambda z, y: fs.softmax(z, out=z),
    "log_softmax": lambda z, y: fs.log_softmax(z, out=z),
    "logsumexp": lambda z, y: fs.logsumexp(z),
}


@pytest.fixture
def serial_only():
    from fastsoftmax import _numba

    old = _numba.policy.force
    _numba.policy.force = False
    yield
    _numba.policy.force = old


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("path", list(SHAPES))
@pytest.mark.parametrize("op", list(CALLS))
def test_serial_seconds_per_element(benchmark, serial_only, op, path, dtype):
    rows, classes = SHAPES[path]
    rng = np.random.default_rng(0)
    base = rng.standard_normal((rows, classes)).astype(dtype)
    y = rng.integers(0, classes, rows)
    z = base.copy()
    call = CALLS[op]
    call(z, y)  # compile or load, and touch the pages

    def setup():
        np.copyto(z, base)  # in-place ops would otherwise feed on their own output
        return (z, y), {}

    benchmark.pedantic(call, setup=setup, rounds=15, iterations=1, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        per = stats.stats.median / (rows * classes)
        record(f"serial {op} {path} {dtype}", "numba", benchmark, None, None,
               extra={"seconds_per_element": per})  # fmt: skip


@pytest.mark.parametrize("idle_s", [0.0, 1e-4, 1e-3, 1e-2, 5e-2])
def test_wake_up_after_idle(benchmark, idle_s):
    """A parallel no-op region (a fused call forced onto the pool, 4097 logits) after
    `idle_s` of sleep: what the policy's wake-up costs estimate."""
    from fastsoftmax import _numba

    z = np.zeros((4097, 1), np.float32)
    y = np.zeros(4097, np.int64)
    old = _numba.policy.force
    _numba.policy.force = True
    try:
        fs.cross_entropy(z, y)

        def setup():
            if idle_s:
                time.sleep(idle_s)
            return (z, y), {}

        benchmark.pedantic(fs.cross_entropy, setup=setup, rounds=30, iterations=1)
    finally:
        _numba.policy.force = old
    record("wake-up after idle", f"{idle_s * 1e3:g} ms", benchmark, None, None)
