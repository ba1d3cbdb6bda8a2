"""softmax, log_softmax, cross_entropy (forward) and the fused forward+backward, at
(60000,10), (512,10), (8192,1000), (4096,32000), (1024,128256), float32 and float64, on
every implementation of ``fastsoftmax.implementations`` that can run here.

The cases and their bytes-moved models live in ``fastsoftmax/bench_cases.py`` (shared
with ``fastsoftmax bench``).  Napkin math for the fused op: read the logits once, write
dlogits once, so at 4096 x 32000 float32 2 x 524 MB = 1.05 GB, 22 ms at ~47 GB/s.
"numba-out" preallocates dlogits (out=): a fresh 0.5 GB array costs page faults on
first touch, which out= exists to avoid.  GPU rows time device arrays (moved there before
the clock starts) and synchronise before it stops.  So does the JAX row on the CPU: its
inputs are JAX buffers made before the clock starts (the copy from NumPy is not timed),
and each call waits for its result.  Every case makes one untimed warm-up call first
(warmup_rounds=1), which is where Numba and jax.jit compile for the case's shape and
dtype.  JAX runs on its own CPU thread pool, sized by XLA from the core count
(FASTSOFTMAX_BENCH_THREADS does not reach it).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import record

from fastsoftmax import bench_cases
from fastsoftmax.implementations import IMPLEMENTATIONS

CASES = bench_cases.op_cases(full=True)
# float16 on the GPU rows only (the CPU backends compute float16 in float32 and are timed
# in float32): the CUDA issue's half-precision figures
GPU_HALF_CASES = bench_cases.op_cases(
    full=True, ops=("softmax", "cross_entropy_with_grad"), dtypes=("float16",)
)


def _impl_params():
    params = []
    for impl in IMPLEMENTATIONS:
        marks = [pytest.mark.skip(reason=impl.unavailable())] if impl.unavailable() else []
        params.append(pytest.param(impl, False, id=impl.name, marks=marks))
        if impl.name == "numba":
            params.append(pytest.param(impl, True, id="numba-out", marks=marks))
    return params


@pytest.mark.parametrize(("impl", "preallocated"), _impl_params())
@pytest.mark.parametrize("case", CASES + GPU_HALF_CASES, ids=lambda c: c.group.replace(" ", "-"))
def test_op(benchmark, case, impl, preallocated, copy_bandwidth, gpu_copy_bandwidth):
    if case.dtype == "float16" and impl.device != "gpu":
        pytest.skip("float16 is timed on the GPU rows only")
    if preallocated and case.op not in ("softmax", "log_softmax", "cross_entropy_with_grad"):
        pytest.skip("out= applies to ops that return an (N, C) array")
    if case.op not in impl.ops:
        pytest.skip(f"{impl.name} does not implement {case.op}")
    args = impl.to_device(*case.inputs())
    kwargs = {"out": np.empty_like(args[0])} if preallocated else {}
    sync = bench_cases.synchronizer(impl.name)

    def call():
        out = impl.on_device(case.op, *args, **kwargs)
        if sync is not None:
            sync()
        return out

    benchmark.group = case.group
    slow = impl.name in ("numpy", "torch", "jax") and case.n * case.c > 10**7
    if slow:  # seconds per call: a few rounds say enough
        benchmark.pedantic(call, rounds=3, warmup_rounds=1)
    else:
        benchmark.pedantic(call, rounds=_rounds(case), warmup_rounds=1)
    name = impl.name + ("-out" if preallocated else "")
    limit = gpu_copy_bandwidth if impl.device == "gpu" else copy_bandwidth
    record(benchmark.group, name, benchmark, case.bytes_moved, limit, rows=case.n)


def _rounds(case) -> int:
    """Enough rounds for a stable median within ~1 s per implementation."""
    per_call = case.n * case.c * 2e-9  # ~0.5 GB/s worst case among the fast rows
    return int(min(200, max(5, 1.0 / max(per_call, 1e-6))))
