"""Fused cross-entropy forward+backward (float32) on every implementation.

Napkin math: the fused op must read the logits once and write dlogits once, so
bytes_moved = 2 * N * C * 4; at 4096 x 32000 that is 1.05 GB, 22 ms at ~47 GB/s.
"numba-out" preallocates dlogits (out=): a fresh 0.5 GB array costs page faults on
first touch (at 4096 x 32000, 75 ms without out= against 46 ms with it in the run that
bench/results/xent_fused_cpu.json records), which out= exists to avoid.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import record

from fastsoftmax.implementations import IMPLEMENTATIONS

SHAPES = [(512, 10), (60000, 10), (8192, 1000), (4096, 32000), (1024, 128256)]


def _impl_params():
    params = []
    for impl in IMPLEMENTATIONS:
        marks = [pytest.mark.skip(reason=impl.unavailable())] if impl.unavailable() else []
        params.append(pytest.param(impl, False, id=impl.name, marks=marks))
        if impl.name == "numba":
            params.append(pytest.param(impl, True, id="numba-out", marks=marks))
    return params


@pytest.mark.parametrize(("impl", "preallocated"), _impl_params())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_xent_fused(benchmark, shape, impl, preallocated, copy_bandwidth):
    n, c = shape
    rng = np.random.default_rng(0)
    z = (rng.standard_normal(shape, dtype=np.float32) * 3).astype(np.float32)
    y = rng.integers(0, c, n)
    kwargs = {"out": np.empty_like(z)} if preallocated else {}
    benchmark.group = f"cross_entropy_with_grad float32 {n}x{c}"
    slow = impl.name in ("numpy", "torch") and n * c > 10**7
    if slow:  # seconds per call: a few rounds say enough
        benchmark.pedantic(
            impl, args=("cross_entropy_with_grad", z, y), kwargs=kwargs, rounds=3, warmup_rounds=1
        )
    else:
        benchmark(impl, "cross_entropy_with_grad", z, y, **kwargs)
    name = impl.name + ("-out" if preallocated else "")
    record(benchmark.group, name, benchmark, 2 * z.nbytes, copy_bandwidth, rows=n)
