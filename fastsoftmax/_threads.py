"""Threads: how many the kernels may use, when using them pays, and keeping our own BLAS
calls from fighting them.

Why a policy at all
-------------------
A parallel kernel pays only when the second core's share of the work is worth more
than getting that core: waking a sleeping worker thread.  On the 2-vCPU KVM machines
this project is measured on, that wake-up is the whole story for small calls (a no-op
``prange`` region, median of 40, numba 0.68, GOMP_SPINCOUNT=10000):

* back to back (worker still spinning): ~2 us;
* 0.1-1 ms after the last region (worker asleep, its vCPU awake): ~50 us;
* 10 ms: ~0.1-0.5 ms; 50 ms (the vCPU halted by the host): 0.3-5 ms.

And in a user's loop, ``X @ W.T`` -> our kernel -> ``G.T @ X``, the worker is woken
every step while OpenBLAS's own threads spin on the other core: a 512 x 10 fused call
that takes ~20 us on one thread made each step of such a loop 8.6 ms instead of 0.6.

So the Numba backend asks :class:`ThreadPolicy` whether a call should use the pool.
The policy knows how long the pool has been idle, keeps a *measured* wake-up cost
for each range of idle times (the excess of observed parallel calls over their
expected work), and measured serial and parallel costs per element for each kernel
family; a call goes parallel only when the time saved beats the expected wake-up.
The backend asks only for kernels whose bits cannot depend on the answer (see
``fastsoftmax._numba._run``): only the time does.

The thread count
----------------
``set_num_threads(n)`` (or the environment variable ``FASTSOFTMAX_NUM_THREADS``) caps
the threads of every fastsoftmax kernel, the trainer's included; ``thread_limit(n)``
caps them for the calling thread inside a ``with`` block.  Neither can exceed Numba's
pool (``NUMBA_NUM_THREADS``, the number of cores by default).

Our own BLAS calls
------------------
Where fastsoftmax itself calls BLAS next to its kernels (the estimator's prediction,
the Dask chunks), :func:`blas_limit` runs those calls single-threaded through
threadpoolctl (when installed), so no OpenBLAS thread is left spinning on a core the
next kernel wants: after a multi-threaded ``score()`` the trainer's next epoch ran at
0.42-0.8 M samples/s instead of 1.3-1.5 M.
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import threading
import time
from collections.abc import Iterator

ENV_THREADS = "FASTSOFTMAX_NUM_THREADS"

_local = threading.local()


def _check_count(n: object, name: str = "n") -> int:
    if isinstance(n, bool) or not hasattr(n, "__index__"):
        raise TypeError(f"{name} must be a positive int, got {type(n).__name__}")
    count = operator.index(n)  # type: ignore[arg-type]
    if count < 1:
        raise ValueError(f"{name} must be >= 1, got {count}")
    return count


def _from_env() -> int | None:
    text = os.environ.get(ENV_THREADS, "").strip()
    if not text:
        return None
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{ENV_THREADS} must be a positive integer, got {text!r}") from None
    return _check_count(n, ENV_THREADS)


def set_num_threads(n: int | None) -> None:
    """Cap the threads of every fastsoftmax kernel at ``n`` (at most Numba's pool size,
    ``NUMBA_NUM_THREADS``); ``None`` restores the default (the environment variable
    ``FASTSOFTMAX_NUM_THREADS``, else the whole pool).  Results do not depend on it."""
    n = (_from_env() or pool_size()) if n is None else _check_count(n)
    _setting[0] = max(1, min(n, pool_size()))


def get_num_threads() -> int:
    """The most threads a fastsoftmax kernel called from this thread may use now."""
    n = _setting[0] or _first_setting()
    cap = getattr(_local, "limit", None)
    return n if cap is None or cap >= n else cap


def _first_setting() -> int:
    if not _setting[0]:
        set_num_threads(None)
    return _setting[0]


def pool_size() -> int:
    """Numba's thread pool size (NUMBA_NUM_THREADS); 1 without numba.  Imports numba
    only when asked (``import fastsoftmax`` must not)."""
    try:
        import numba
    except ImportError:
        return 1
    return int(numba.config.NUMBA_NUM_THREADS)


@contextlib.contextmanager
def thread_limit(n: int) -> Iterator[None]:
    """Within the block, kernels called from this thread use at most ``n`` threads."""
    n = _check_count(n)
    old = getattr(_local, "limit", None)
    _local.limit = n if old is None else min(old, n)
    try:
        yield
    finally:
        _local.limit = old


_setting = [0]  # the process-wide cap (set_num_threads); 0 until first asked

# --------------------------------------------------------------------------------------
# BLAS
# --------------------------------------------------------------------------------------
_controller: list[object] = []


@contextlib.contextmanager
def blas_limit(n: int = 1) -> Iterator[None]:
    """BLAS calls inside the block run on at most ``n`` threads (threadpoolctl; a no-op
    when it is not installed).  The controller is built once: scanning the loaded
    libraries costs milliseconds, setting a limit microseconds."""
    if not _controller:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _controller.append(None)
        else:
            _controller.append(ThreadpoolController())
    ctl = _controller[0]
    if ctl is None:
        yield
        return
    with ctl.limit(limits=n, user_api="blas"):  # type: ignore[attr-defined]
        yield


# --------------------------------------------------------------------------------------
# When threads pay
# --------------------------------------------------------------------------------------
# Upper ends (seconds of pool idleness) of the ranges that each keep a wake-up cost, and
# the costs assumed before any call in the range was measured (the 2-vCPU KVM figures
# above, rounded down so that a machine that wakes faster gets measured at all).
IDLE_RANGES = (3e-5, 3e-4, 3e-3, 3e-2, math.inf)
DEFAULT_WAKE_S = (3e-6, 4e-5, 1.5e-4, 4e-4, 8e-4)
# Weight of a new observation in the running estimates (exponential moving averages).
EMA = 0.25
# An observation counts for at most this many times the estimate it updates: one call
# that the VM stalled (2.4 ms for a 0.6 ms parallel call, seen at 60000 x 10) must not
# set the wake-up cost of its range for good.
OUTLIER = 4.0
# What a serial decision forgets of a learned cost above its default: only parallel
# calls measure the parallel costs, so without forgetting a family once judged serial
# would stay serial (measured: a loop of 60000 x 10 calls stuck at the serial 1.2 ms
# instead of 0.6); ~1/FORGET decisions later the parallel path is tried again.
FORGET = 0.02


class ThreadPolicy:
    """Chooses serial or parallel per call, and learns from the calls it is told about.

    Per kernel family (op, path, dtype: any hashable key) it keeps two costs per
    element, serial and parallel with the pool awake (seconds; the backend gives
    measured defaults); per idle range, the pool's wake-up cost.  A call goes parallel
    when ``serial * size > parallel * size + wake[range]``.  Every timed call refines
    one estimate: a serial call its family's serial cost; a parallel call with the pool
    awake (the first range) its family's parallel cost; a parallel call after longer
    idleness that range's wake-up cost (its excess over the parallel cost).

    The range a decision uses counts idleness from the end of the last call of any
    kind: calls that follow each other closely (a loop of large calls) are taken as a
    burst that pays the wake-up once, so a first serial call does not keep the rest
    serial; a call after other work (a user's matmul) sees the pool as idle as it is.
    Pure Python, ~1 us a call: the backend consults it only above a size at which a
    call is serial regardless.

    Robust to a stalled call: an observation counts for at most OUTLIER times the
    estimate it updates, and a serial decision forgets a little of the learned costs
    that stand above their defaults (FORGET), so that a family judged serial after a
    bad patch is tried on the pool again rather than never.
    """

    def __init__(self, serial_rates: dict[object, float], pool: int, clock=time.perf_counter):
        self.serial = dict(serial_rates)
        self.parallel = {key: rate / max(1, pool) for key, rate in serial_rates.items()}
        self._parallel0 = dict(self.parallel)
        self.wake = list(DEFAULT_WAKE_S)
        self.last_parallel_end = -math.inf
        self.last_call_end = -math.inf
        self.clock = clock
        self.force: bool | None = None  # True/False: always/never parallel (warm-up)
        self._lock = threading.Lock()

    @staticmethod
    def _range(idle: float) -> int:
        for i, upper in enumerate(IDLE_RANGES[:-1]):
            if idle < upper:
                return i
        return len(IDLE_RANGES) - 1

    def idle_ranges(self) -> tuple[int, int]:
        """(the pool's idle range, the range a decision uses: idleness since the last
        call of any kind), indices into IDLE_RANGES."""
        now = self.clock()
        pool = self._range(now - self.last_parallel_end)
        return pool, min(pool, self._range(now - self.last_call_end))

    def parallel_pays(self, family: object, size: int, k: int) -> bool:
        """Whether `size` elements of `family` run faster on the pool, idle range k.
        A "no" forgets a little (FORGET) of the learned parallel and wake-up costs that
        stand above their defaults, so that the pool is tried again in time."""
        if self.force is not None:
            return self.force
        if (self.serial[family] - self.parallel[family]) * size > self.wake[k]:
            return True
        with self._lock:
            if self.wake[k] > DEFAULT_WAKE_S[k]:
                self.wake[k] += FORGET * (DEFAULT_WAKE_S[k] - self.wake[k])
            base = self._parallel0[family]
            if self.parallel[family] > base:
                self.parallel[family] += FORGET * (base - self.parallel[family])
        return False

    def observe(self, family: object, size: int, parallel: bool, k: int, seconds: float) -> None:
        """A call of `size` elements took `seconds`, on the pool (`parallel`) or not, the
        pool's idle range having been `k` when it started."""
        with self._lock:
            self.last_call_end = now = self.clock()
            if not parallel:
                self.serial[family] += EMA * (seconds / size - self.serial[family])
                return
            self.last_parallel_end = now
            if k == 0:
                sample = max(0.0, seconds - self.wake[0]) / size
                sample = min(sample, OUTLIER * self.parallel[family])
                self.parallel[family] += EMA * (sample - self.parallel[family])
            else:
                excess = max(0.0, seconds - self.parallel[family] * size)
                excess = min(excess, OUTLIER * self.wake[k])
                self.wake[k] += EMA * (excess - self.wake[k])
