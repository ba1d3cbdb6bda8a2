"""The Numba CPU backend (see ``fastsoftmax/reference.py`` for the kernel contract).

The wrappers here pick, per call, the parallel kernel or its single-threaded twin:
calls of at most SERIAL_MAX_ELEMENTS run serially, larger ones as
``fastsoftmax._threads.ThreadPolicy`` decides from the work's size and the measured
cost of waking the pool.  A parallel kernel splits its chunks into as many contiguous
runs as it may use threads (``fastsoftmax.get_num_threads()``; Numba will not cache
a kernel that asks for the thread count itself, and asking numba costs ~1.5 us); a
thread that finishes its run takes over what is left of the others' (see
``kernels._next_chunk``).  The chunking, and so the result, depends on the shape
alone.
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

import ctypes
import time

import numba
import numpy as np

from .._threads import ThreadPolicy, get_num_threads, pool_size
from . import kernels as _k
from .kernels import SMALL_C_MAX, row_path_for, target_stats

name = "numba"

# At or below this many elements a call runs on the calling thread without asking the
# policy: with the pool awake the second core saves a few us at most here, what asking
# and timing cost (~1-3 us), and after any idleness waking it costs far more.
# bench/bench_small_c.py, fused, C=10, pool awake, medians: serial 4 vs parallel 5 us
# at 1280 logits, 7 vs 7 at 2560, 13 vs 12 at 5120, 25 vs 21 at 10240.
SERIAL_MAX_ELEMENTS = 16384

# Serial seconds per element of each tile-kernel family (op, itemsize) before
# any call has been timed; every timed call refines them (see fastsoftmax._threads).
# `pytest bench/bench_threads.py -k serial` (65536 x 10, one thread, medians), AVX2
# code on an Intel Xeon (NUMBA_CPU_NAME=znver3 NUMBA_CPU_FEATURES=), the slower build:
# AVX-512 took 0.7-0.85x of these.
SERIAL_SECONDS_PER_ELEMENT = {
    ("xent", 4): 2.7e-9,
    ("xent", 8): 4.1e-9,
    ("xent_fwd", 4): 2.3e-9,
    ("xent_fwd", 8): 3.6e-9,
    ("softmax", 4): 1.8e-9,
    ("softmax", 8): 3.2e-9,
    ("log_softmax", 4): 1.7e-9,
    ("log_softmax", 8): 3.0e-9,
    ("logsumexp", 4): 1.8e-9,
    ("logsumexp", 8): 3.0e-9,
}
policy = ThreadPolicy(SERIAL_SECONDS_PER_ELEMENT, numba.config.NUMBA_NUM_THREADS)
_clock = time.perf_counter


_omp_found: list = []  # the functions below, once found (a library stays loaded)


def _omp_threads_setting():
    """(omp_get_max_threads, omp_set_num_threads) of the GNU OpenMP library this process
    has loaded, or None where it has none loaded (nobody's setting to keep)."""
    if _omp_found:
        return _omp_found[0]
    try:
        lib = ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD)
    except (OSError, AttributeError):  # not loaded; or no RTLD_NOLOAD (not Linux)
        return None
    _omp_found.append((lib.omp_get_max_threads, lib.omp_set_num_threads))
    return _omp_found[0]


def _keeping_omp_threads(kernel, *args):
    """kernel(*args) (a parallel kernel), leaving the OpenMP thread count of the calling
    thread as it was.  Numba's OpenMP pool sets it to its own size when it starts, and
    PyTorch shares the library: a torch.set_num_threads(1) (as in DataLoader workers)
    silently became 2 after our first parallel call.  ~1 us, parallel calls only."""
    omp = _omp_threads_setting()
    if omp is None:
        return kernel(*args)
    before = omp[0]()
    try:
        return kernel(*args)
    finally:
        if omp[0]() != before:
            omp[1](before)


def _pool_lost_in_fork() -> bool:
    """Whether this process was forked from one whose Numba thread pool had started on
    GNU OpenMP: Numba then terminates the process at its first parallel kernel
    ("fork() called from a process already using GNU OpenMP, this is unsafe"), which is
    what a DataLoader worker or multiprocessing child would meet.  Numba internals;
    where they are missing, a started pool counts as lost."""
    from numba.np.ufunc import parallel

    if not getattr(parallel, "_is_initialized", True):
        return False  # no pool yet: the child starts its own
    try:
        from numba.np.ufunc import omppool

        return numba.threading_layer() == "omp" and omppool.openmp_vendor == "GNU"
    except Exception:  # another layer, or internals that moved
        return numba.config.THREADING_LAYER in ("default", "omp")


# True in such a child: every kernel then runs its serial twin on the calling thread.
# The small-C tile kernels give the same bits; the row-path ones (whose parallel kernel
# runs at any thread count, see _run) may differ from the parent's in the last bit.
serial_only = [False]


def _after_fork_in_child() -> None:
    serial_only[0] = _pool_lost_in_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _run(op, x, serial, parallel, *args, serial_tail=()):
    """serial(*args, *serial_tail) or parallel(*args, threads), as the policy decides;
    timed for it.

    Only kernels whose bits cannot depend on the choice are left to the policy: the
    small-C tile kernels, which add in an order fixed by their source.  The row-path
    kernels add with reassociation allowed (so LLVM can vectorise the sums), and LLVM
    may vectorise a sum differently in the serial twin than in the parallel kernel
    (1-2 ulp apart in tests); above SERIAL_MAX_ELEMENTS they always run the parallel
    kernel, on as many threads as allowed (one included: the same code then)."""
    size = x.size
    if size <= SERIAL_MAX_ELEMENTS or serial_only[0]:
        return serial(*args, *serial_tail)
    allowed = get_num_threads()
    if x.shape[1] > SMALL_C_MAX or op in _FIXED_ORDER_ONLY:
        return _keeping_omp_threads(parallel, *args, allowed)
    family = (op, x.dtype.itemsize)
    k, k_decide = policy.idle_ranges()
    # (policy.force: the warm-up compiles the parallel kernel even on one CPU, for a
    # cache that a machine with more will use)
    par = (allowed > 1 or bool(policy.force)) and policy.parallel_pays(family, size, k_decide)
    fn = parallel if par else serial
    compiled = len(fn.overloads)
    t0 = _clock()
    if par:
        result = _keeping_omp_threads(parallel, *args, allowed)
    else:
        result = serial(*args, *serial_tail)
    seconds = _clock() - t0
    if len(fn.overloads) == compiled:  # a call that compiled says nothing about speed
        policy.observe(family, size, par, k, seconds)
    return result


# ops whose kernels sum rows with reassociation on every path (see _run)
_FIXED_ORDER_ONLY = frozenset({"xent_prob", "softmax_backward", "log_softmax_backward"})


# The serial small-C fused kernel is the tile kernel itself (kernels.xent_index_serial):
# its seven trailing arguments, passed rather than left to Numba's defaults (~0.3 us a
# call), say "the whole call, own scratch"
_TILE_KERNEL_ALONE = (0, 0, None, None, None, None, 0)


def xent_index(z, y, w, wsum, ignore, eps, scale, loss, g):
    # the small-C kernels (tiles) or the large-C ones (rows): each compiles its path
    # alone; eps None when there is no smoothing: no smoothing code compiled for it
    args = (z, y, w, wsum, ignore, None if eps == 0.0 else eps, scale, loss, g)
    if z.shape[1] > SMALL_C_MAX:
        serial, parallel, tail = _k.xent_index_wide_serial, _k.xent_index_wide, ()
    else:
        serial, parallel, tail = _k.xent_index_serial, _k.xent_index, _TILE_KERNEL_ALONE
    if z.size <= SERIAL_MAX_ELEMENTS:  # the common small call, without _run's detour
        return serial(*args, *tail)
    op = "xent_fwd" if g is None else "xent"
    return _run(op, z, serial, parallel, *args, serial_tail=tail)


def xent_index_minibatch(z, y, ignore, mean, g):
    """(first bad target row or -1, the "mean" (else "sum") loss) of class indices y
    without weights or smoothing, the gradient into g unless it is None, in one call on
    the calling thread (for inputs of at most SERIAL_MAX_ELEMENTS logits)."""
    if z.shape[1] > SMALL_C_MAX:
        return _k.xent_index_minibatch_wide(z, y, ignore, mean, g)
    return _k.xent_index_minibatch(z, y, ignore, mean, g)


# (float64, wide) -> the kernel on buffers given by address
_MINIBATCH_AT = {
    (False, False): _k.xent_index_minibatch_f32_at,
    (True, False): _k.xent_index_minibatch_f64_at,
    (False, True): _k.xent_index_minibatch_wide_f32_at,
    (True, True): _k.xent_index_minibatch_wide_f64_at,
}


def xent_index_minibatch_at(z_at, y_at, g_at, n, c, float64, ignore, mean):
    """xent_index_minibatch on C-contiguous buffers given by their addresses: z (n, c)
    float32, or float64 where `float64`; y (n,) int64; g z's shape and dtype (overlapping
    neither).  (first bad target row or -1, the loss); at most SERIAL_MAX_ELEMENTS
    logits."""
    kernel = _MINIBATCH_AT[float64, c > SMALL_C_MAX]
    return kernel(z_at, y_at, g_at, n, c, ignore, mean)


def xent_prob(z, q, w, eps, scale, loss, g):
    return _run("xent_prob", z, _k.xent_prob_serial, _k.xent_prob, z, q, w, eps, scale, loss, g)


def _pair(x, op: str):
    """The (serial, parallel) kernels of a softmax-family op for x's class count."""
    wide = "_wide" if x.shape[1] > SMALL_C_MAX else ""
    return getattr(_k, f"{op}{wide}_serial"), getattr(_k, f"{op}{wide}")


def softmax(x, out):
    _run("softmax", x, *_pair(x, "softmax"), x, out)


def log_softmax(x, out):
    _run("log_softmax", x, *_pair(x, "log_softmax"), x, out)


def logsumexp(x, out):
    _run("logsumexp", x, *_pair(x, "logsumexp"), x, out)


def softmax_backward(p, gout, out):
    _run("softmax_backward", p, _k.softmax_backward_serial, _k.softmax_backward, p, gout, out)


def log_softmax_backward(logp, gout, out):
    serial, parallel = _k.log_softmax_backward_serial, _k.log_softmax_backward
    _run("log_softmax_backward", logp, serial, parallel, logp, gout, out)


# ---------------------------------------------------------------------- training step
# (fastsoftmax/_numba/step.py, imported on first use: the ops never need it)
def sgd_steps(data, params, plan, s0: int, s1: int, losses) -> None:
    """The fused softmax-regression SGD step (fastsoftmax.reference.sgd_steps is its
    NumPy reference), on this process's team of threads; RuntimeError when a thread of
    the team did not reach a barrier in time (the step is then abandoned, the
    parameters partly updated)."""
    from . import step
    from ._team import DEFAULT_TIMEOUT_S

    status = step.sgd_steps(data, params, plan, s0, s1, losses, pool_size(), get_num_threads())
    if status:
        raise RuntimeError(
            "a thread of the training step did not reach its barrier within "
            f"{DEFAULT_TIMEOUT_S:g} s; the step was abandoned (parameters partly updated)"
        )


def loss_grad(X, y, W, b, a, gW, gb) -> float:
    """The step's loss and gradient on every row of X, without the update (for
    full-batch solvers): gW (C, d), gb (C,) get d(sum of row losses)/d(W, b) of the
    cross-entropy of a X W^T + b; returns that sum (float64)."""
    from . import step

    return step.loss_grad(X, y, W, b, a, 1.0, gW, gb, row_path_for(W.shape[0]), get_num_threads())


def all_finite(X) -> bool:
    """No NaN or infinity in the C-contiguous 2-D float array X (at memory speed)."""
    if serial_only[0]:  # a parallel kernel (see _pool_lost_in_fork): NumPy, in blocks
        return all(bool(np.isfinite(X[i : i + 4096]).all()) for i in range(0, len(X), 4096))
    from . import step

    return bool(_keeping_omp_threads(step.all_finite, X))


__all__ = [
    "SERIAL_MAX_ELEMENTS",
    "all_finite",
    "log_softmax",
    "log_softmax_backward",
    "logsumexp",
    "loss_grad",
    "name",
    "policy",
    "sgd_steps",
    "softmax",
    "softmax_backward",
    "target_stats",
    "xent_index",
    "xent_index_minibatch",
    "xent_index_minibatch_at",
    "xent_prob",
]
