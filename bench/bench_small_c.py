"""The evidence behind two constants of fastsoftmax/_numba/kernels.py and __init__.py.

* SMALL_C_MAX: the transposed tile path against the row path, fused cross-entropy,
  float32, 65536 rows (one thread), at C around the threshold.  The smaller median wins.
* SERIAL_MAX_ELEMENTS: the single-threaded kernel against the parallel one at small
  sizes, where waking the thread pool (~2 us) may cost more than it saves.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from conftest import record

from fastsoftmax._numba import _TILE_KERNEL_ALONE
from fastsoftmax._numba import kernels as k


@numba.njit(error_model="numpy")
def _rows_path(z, y, loss, g):
    k.xent_index_rows(z, y, None, float(z.shape[1]), -100, 0.0, 1.0, loss, g, 0, z.shape[0])


@numba.njit(error_model="numpy")
def _tiles_path(z, y, loss, g):
    buf, f64 = k.scratch_for(z.shape[1], z.dtype)
    n, c = z.shape
    k.xent_index_tiles(z, y, None, float(c), -100, 0.0, 1.0, loss, g, 0, n, buf, f64, None, None, 0)


def _problem(rows, c):
    """float32 logits (rows, c), targets, and the loss and gradient buffers."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((rows, c), dtype=np.float32)
    return z, rng.integers(0, c, rows), np.empty(rows), np.empty_like(z)


@pytest.mark.parametrize("path", ["tiles", "rows"])
@pytest.mark.parametrize("c", [8, 10, 16, 20, 24, 28, 32, 48])
def test_small_c_path(benchmark, c, path):
    n = 65536
    z, y, loss, g = _problem(n, c)
    fn = _tiles_path if path == "tiles" else _rows_path
    benchmark.group = f"small-C path, 1 thread, {n}x{c}"
    benchmark(fn, z, y, loss, g)
    record(benchmark.group, path, benchmark, 2 * z.nbytes, None)


@pytest.mark.parametrize("mode", ["serial", "parallel"])
@pytest.mark.parametrize("rows", [64, 128, 256, 512, 1024])
def test_serial_threshold(benchmark, rows, mode):
    c = 10
    z, y, loss, g = _problem(rows, c)
    args = (z, y, None, float(c), -100, 0.0, 1.0 / rows, loss, g)  # the tile kernels
    benchmark.group = f"serial vs parallel, {rows}x{c} ({rows * c} elements)"
    if mode == "serial":
        benchmark(k.xent_index_serial, *args, *_TILE_KERNEL_ALONE)  # as the op API calls it
    else:
        benchmark(k.xent_index, *args, numba.get_num_threads())
    record(benchmark.group, mode, benchmark, 2 * z.nbytes, None)


@pytest.mark.parametrize("layer", ["kernel", "public API"])
def test_api_overhead(benchmark, layer):
    """What the Python layer (checks, dispatch, target validation) adds at 512 x 10."""
    import fastsoftmax as fs

    rows, c = 512, 10
    z, y, loss, g = _problem(rows, c)
    benchmark.group = f"public API vs kernel alone, {rows}x{c}, out="
    if layer == "kernel":
        benchmark(
            k.xent_index,
            z,
            y,
            None,
            float(c),
            -100,
            0.0,
            1.0 / rows,
            loss,
            g,
            numba.config.NUMBA_NUM_THREADS,
        )
    else:
        benchmark(fs.cross_entropy_with_grad, z, y, out=g)
    record(benchmark.group, layer, benchmark, 2 * z.nbytes, None)
