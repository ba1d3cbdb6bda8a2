"""The Numba CPU backend (see ``fastsoftmax/reference.py`` for the kernel contract).

The wrappers here pick, per call, the parallel kernel or its single-threaded twin.  The
parallel kernels split their chunks into NUMBA_NUM_THREADS contiguous runs (Numba will
not cache a kernel that asks for the thread count itself, and asking costs ~0.8 us per
call); ``prange`` spreads those runs over however many threads ``numba.set_num_threads``
allows, and the result does not depend on either number.
"""

from __future__ import annotations

import os

# Numba's parallel kernels run on GNU OpenMP, whose idle threads spin for ~300k
# iterations (milliseconds) after every kernel.  On a machine with as many cores as
# threads they then steal the cores from the next NumPy/BLAS call: a matmul ->
# cross_entropy_with_grad -> matmul step at 512 x 64 x 1000 ran 8x slower (7.99 ms against
# 0.94 ms for its parts), and the chunked linear cross-entropy up to 30x.  A short spin
# keeps back-to-back kernels fast (60000 x 10: 0.81 against 0.80 ms) without the theft
# (1.37 ms).  libgomp reads this once, when it loads (at Numba's first parallel kernel),
# so it is set before that and only when the user has not chosen a spin policy;
# a process that loaded libgomp earlier (e.g. by importing torch first) keeps its own.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import numba

from . import kernels as _k
from .kernels import log_softmax_backward, softmax_backward, target_stats

name = "numba"

# At or below this many logits a call runs on the calling thread: waking the thread pool
# costs a few us, about what the second core saves at this size.  bench/bench_small_c.py,
# fused, C=10, medians: serial 4 vs parallel 5 us at 1280 logits, 7 vs 7 at 2560, 13 vs
# 12 at 5120, 25 vs 21 at 10240.
SERIAL_MAX_ELEMENTS = 4096
_RUNS = numba.config.NUMBA_NUM_THREADS


def xent_index(z, y, w, wsum, ignore, eps, scale, loss, g):
    if z.size <= SERIAL_MAX_ELEMENTS:
        return _k.xent_index_serial(z, y, w, wsum, ignore, eps, scale, loss, g)
    return _k.xent_index(z, y, w, wsum, ignore, eps, scale, loss, g, _RUNS)


def xent_prob(z, q, w, eps, scale, loss, g):
    nthreads = 1 if z.size <= SERIAL_MAX_ELEMENTS else _RUNS
    return _k.xent_prob(z, q, w, eps, scale, loss, g, nthreads)


def softmax(x, out):
    if x.size <= SERIAL_MAX_ELEMENTS:
        _k.softmax_serial(x, out)
    else:
        _k.softmax(x, out, _RUNS)


def log_softmax(x, out):
    if x.size <= SERIAL_MAX_ELEMENTS:
        _k.log_softmax_serial(x, out)
    else:
        _k.log_softmax(x, out, _RUNS)


def logsumexp(x, out):
    if x.size <= SERIAL_MAX_ELEMENTS:
        _k.logsumexp_serial(x, out)
    else:
        _k.logsumexp(x, out, _RUNS)


__all__ = [
    "log_softmax",
    "log_softmax_backward",
    "logsumexp",
    "name",
    "softmax",
    "softmax_backward",
    "target_stats",
    "xent_index",
    "xent_prob",
]
