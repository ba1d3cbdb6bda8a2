"""The Numba CPU backend (see ``fastsoftmax/reference.py`` for the kernel contract).

The wrappers here pick, per call, the parallel kernel or its single-threaded twin and
pass the thread count in (Numba will not cache a kernel that asks for it itself).
"""

from __future__ import annotations

import numba

from . import kernels as _k
from .kernels import log_softmax_backward, softmax_backward, target_stats

name = "numba"

# At or below this many logits a call runs on the calling thread: waking the thread pool
# costs ~2 us, more than the second core saves (bench/bench_small_c.py).
SERIAL_MAX_ELEMENTS = 2048


def xent_index(z, y, w, wsum, ignore, eps, scale, loss, g):
    if z.size <= SERIAL_MAX_ELEMENTS:
        return _k.xent_index_serial(z, y, w, wsum, ignore, eps, scale, loss, g)
    return _k.xent_index(z, y, w, wsum, ignore, eps, scale, loss, g, numba.get_num_threads())


def xent_prob(z, q, w, eps, scale, loss, g):
    nthreads = 1 if z.size <= SERIAL_MAX_ELEMENTS else numba.get_num_threads()
    return _k.xent_prob(z, q, w, eps, scale, loss, g, nthreads)


def softmax(x, out):
    if x.size <= SERIAL_MAX_ELEMENTS:
        _k.softmax_serial(x, out)
    else:
        _k.softmax(x, out, numba.get_num_threads())


def log_softmax(x, out):
    if x.size <= SERIAL_MAX_ELEMENTS:
        _k.log_softmax_serial(x, out)
    else:
        _k.log_softmax(x, out, numba.get_num_threads())


def logsumexp(x, out):
    if x.size <= SERIAL_MAX_ELEMENTS:
        _k.logsumexp_serial(x, out)
    else:
        _k.logsumexp(x, out, numba.get_num_threads())


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
