"""fastsoftmax.dask: time per full-batch gradient (loss, dW, db over every row) on a
LocalCluster of 1 and 2 worker processes, against the single-process fused gradient.

Napkin math at n = 60000 MNIST-shaped float32 rows (d = 784, C = 10): X is 188 MB and
the gradient is 2 GEMMs of 2 n d C = 0.94 GFLOP each, so ~11 ms of FMAs on the
2-core machine and ~5 ms of memory; everything else a cluster adds (the task graph, one
round trip per chunk and per tree level, pickling (C, d) arrays) is overhead, and
`overhead` in extra_info states it as time(dask) - time(single process, same threads).

Workers: 1 thread each (NUMBA/OPENBLAS/OMP_NUM_THREADS=1), so 2 workers use the same
2 cores as the single-process run with 2 threads.  The chunks are persisted on the
workers before timing (as fit does).  600k rows (1.9 GB) run with
FASTSOFTMAX_BENCH_FULL=1; CI and the default run use 60k.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import THREADS, record

pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

import dask  # noqa: E402
import dask.array as da  # noqa: E402

from fastsoftmax import bench_cases  # noqa: E402
from fastsoftmax import dask as fsd  # noqa: E402

FULL = os.environ.get("FASTSOFTMAX_BENCH_FULL") == "1"
ROWS = [60000] + ([600000] if FULL else [])
CHUNK_ROWS = 15000
D, C = bench_cases.TRAIN_D, bench_cases.TRAIN_C
ONE_THREAD = {"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data():
    _, x, y = bench_cases.mnist_shaped(max(ROWS), D, C)
    return x, y


def _params():
    rng = np.random.default_rng(1)
    return rng.standard_normal((C, D)) * 0.01, np.zeros(C)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("impl", ["single-process", "dask-1-worker", "dask-2-workers"])
def test_full_batch_gradient(benchmark, impl, rows, data):
    x, y = data[0][:rows], data[1][:rows]
    W, b = _params()
    benchmark.group = f"dask: one full-batch gradient, {rows} x {D} float32, C = {C}"
    model = fsd.SoftmaxRegression()
    if impl == "single-process":

        def gradient():
            return fsd.chunk_loss_grad(x, y, W, b, "auto")

        value = benchmark(gradient)
        extra = {"workers": 0, "threads": THREADS}
    else:
        workers = 1 if impl == "dask-1-worker" else 2
        cluster = distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True,
            dashboard_address=None, env=ONE_THREAD,
        )  # fmt: skip
        try:
            with distributed.Client(cluster):
                Xd = da.from_array(x, chunks=(CHUNK_ROWS, -1))
                yd = da.from_array(y, chunks=CHUNK_ROWS)
                Xd, yd = dask.persist(Xd, yd)
                distributed.wait([Xd, yd])
                Xb = Xd.to_delayed().ravel().tolist()
                yb = yd.to_delayed().ravel().tolist()
                model.objective(Xb, yb, rows, W, b, "auto")  # JIT and caches warm

                def gradient():
                    return model.objective(Xb, yb, rows, W, b, "auto")

                value = benchmark(gradient)
        finally:
            cluster.close()
        extra = {"workers": workers, "threads": workers, "chunks": len(Xb)}
    record(benchmark.group, impl, benchmark, x.nbytes, None, rows=rows, extra=extra)
    if impl != "single-process":
        _check(value, x, y, W, b, model)


def _check(value, x, y, W, b, model):
    """The cluster's (objective, dW, db) is the single-process gradient's."""
    loss, gW, gb, n = fsd.chunk_loss_grad(x, y, W, b, "auto")
    wd = model.weight_decay
    np.testing.assert_allclose(value[0], loss / n + 0.5 * wd * np.sum(W * W), rtol=1e-6)
    np.testing.assert_allclose(value[1], gW / n + wd * W, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(value[2], gb / n, rtol=1e-4, atol=1e-7)
