"""A team of threads that stays inside one parallel region, with spin barriers.

The trainer's step runs ~470 times an epoch, and each needs two synchronisations of its
threads (all parts done before the update; the update done before the next step's
logits).  As two ``prange`` regions per step, every synchronisation is an OpenMP fork
and join (~1.2 us each here, more in this VM's slow phases); as one region per call
with the barriers below, an epoch took 0.93-0.94x the time (2 threads, batch 128,
float32; medians of 14-16 paired epochs, three runs).

Numba gives no atomics on the CPU, so :func:`atomic_add` and :func:`atomic_load` emit
LLVM's ``atomicrmw add`` (sequentially consistent) and an acquire load themselves.

A barrier is only safe when every member really runs at the same time, and ``prange``
does not promise that: nested in another parallel region, under a threading layer
that chains iterations on one thread, or with more iterations than threads, an
iteration can start only after another has finished.  So a team is formed by
:func:`team_join`: the first iteration to arrive leads; it waits (a bounded spin, then
yields) for the others, then closes the roster with one atomic add, which also tells
it how many made it.  An iteration arriving after that is not a member and returns at
once.  The caller must make its results independent of the member count (the trainer
assigns fixed parts to members round-robin), so a late thread costs time, never bits.

Waits spin with ``pause`` and then yield the CPU (``sched_yield`` where it exists), so
a member that is descheduled, e.g. with more threads than cores, is not starved by
the ones waiting for it.

Every wait is bounded.  A member that never arrives (a bug, or a thread the system
stopped) would otherwise hang the others for ever; instead a wait that has lasted the
team's timeout (``new_control(timeout_s)``, on the monotonic clock) marks the team
aborted and returns False, every other wait then returns False at once, and the
caller stops and reports it (the trainer raises ``RuntimeError``).
"""

from __future__ import annotations

import platform
import sys

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
_HAS_SCHED_YIELD = sys.platform != "win32"
# clock_gettime with a 64-bit struct timespec; CLOCK_MONOTONIC is 1 on Linux, 6 on macOS
_HAS_CLOCK_GETTIME = sys.platform.startswith("linux") or sys.platform == "darwin"
_CLOCK_MONOTONIC = 6 if sys.platform == "darwin" else 1

# Control words, each on its own 128-byte pair of cache lines (index in int64s); the
# last pair holds the words that are only read while waiting.
ARRIVALS = 0
COUNT = 16
BARRIER = 32
ABORTED = 48
TIMEOUT_NS = 49
# Written by a team's leader as it returns, for the caller: e.g. the step it reached.
RESULT = 56
CONTROL_WORDS = 64
# A wait longer than this is taken for a member that will never come.  Waits normally
# last microseconds; a descheduled member on an oversubscribed machine, milliseconds.
DEFAULT_TIMEOUT_S = 30.0
# Wait iterations between two reads of the clock (~0.1 us each).
CLOCK_EVERY = 256
# Added to ARRIVALS to close the roster: arrivals after it read at least this much.
CLOSED = 1 << 40
# Spins of `pause` before a wait starts yielding the CPU, and the leader's bound on its
# wait for the others to arrive (in spins; each yields once past SPINS_BEFORE_YIELD:
# ~2 ms in all on Linux, where a yield with nothing else to run costs ~0.5 us).
SPINS_BEFORE_YIELD = 1000
JOIN_SPINS = 2000


def item_pointer(context, builder, aryty, ary, indices):
    """In an intrinsic's codegen: the address of ary[indices] (no bounds check)."""
    arr = context.make_array(aryty)(context, builder, ary)
    return cgutils.get_item_pointer2(
        context,
        builder,
        arr.data,
        cgutils.unpack_tuple(builder, arr.shape),
        cgutils.unpack_tuple(builder, arr.strides),
        aryty.layout,
        indices,
    )


def _int64_vector(arr) -> bool:
    return isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.int64


@intrinsic
def atomic_add(typingctx, arr, idx, val):
    """arr[idx] += val atomically (sequentially consistent); returns the old value.
    arr: 1-D int64."""
    if not (_int64_vector(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = item_pointer(context, builder, sig.args[0], args[0], [idx])
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, val, "seq_cst")

    return types.int64(arr, idx, val), codegen


@intrinsic
def atomic_load(typingctx, arr, idx):
    """arr[idx], read atomically with acquire ordering.  arr: 1-D int64."""
    if not (_int64_vector(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = item_pointer(context, builder, sig.args[0], args[0], [idx])
        return builder.load_atomic(ptr, "acquire", 8)

    return types.int64(arr, idx), codegen


@intrinsic
def spin_pause(typingctx):
    """The x86 ``pause`` hint inside a spin loop (nothing elsewhere)."""

    def codegen(context, builder, sig, args):
        if _X86:
            fnty = ir.FunctionType(ir.VoidType(), [])
            builder.call(
                cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse2.pause"), []
            )
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def yield_cpu(typingctx):
    """sched_yield(): let another runnable thread have this CPU (nothing on Windows)."""

    def codegen(context, builder, sig, args):
        if _HAS_SCHED_YIELD:
            fnty = ir.FunctionType(ir.IntType(32), [])
            builder.call(cgutils.get_or_insert_function(builder.module, fnty, "sched_yield"), [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def monotonic_ns(typingctx):
    """CLOCK_MONOTONIC in nanoseconds (clock_gettime), where it exists; elsewhere 0, and
    waits are bounded by their spin count (see _wait_expired)."""

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        if not _HAS_CLOCK_GETTIME:
            return ir.Constant(i64, 0)
        ts_ty = ir.LiteralStructType([i64, i64])  # struct timespec on 64-bit Linux/macOS
        ts = cgutils.alloca_once(builder, ts_ty)
        fnty = ir.FunctionType(ir.IntType(32), [ir.IntType(32), ts_ty.as_pointer()])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "clock_gettime")
        builder.call(fn, [ir.Constant(ir.IntType(32), _CLOCK_MONOTONIC), ts])
        sec = builder.load(builder.gep(ts, [ir.Constant(ir.IntType(32), 0)] * 2))
        nsec = builder.load(
            builder.gep(ts, [ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 1)])
        )
        return builder.add(builder.mul(sec, ir.Constant(i64, 1_000_000_000)), nsec)

    return types.int64(), codegen


@njit(nogil=True)
def _wait(spins):
    """One iteration of a wait loop that has spun `spins` times so far."""
    if spins < SPINS_BEFORE_YIELD:
        spin_pause()
    else:
        yield_cpu()


@njit(nogil=True)
def _wait_expired(ctl, spins, start):
    """Whether a wait that began at `start` (monotonic_ns) and has spun `spins` times
    must give up: the team was aborted, or this wait outlasted the team's timeout (it
    then aborts the team).  Reads the clock every CLOCK_EVERY spins only."""
    if atomic_load(ctl, ABORTED) != 0:
        return True
    if spins % CLOCK_EVERY != CLOCK_EVERY - 1:
        return False
    limit = atomic_load(ctl, TIMEOUT_NS)
    now = monotonic_ns()
    # without a clock, count ~1 us per spin past the yields (a lower bound on their cost)
    elapsed = now - start if now != 0 else (spins - SPINS_BEFORE_YIELD) * 1000
    if elapsed > limit:
        atomic_add(ctl, ABORTED, 1)
        return True
    return False


@njit(nogil=True, cache=True)
def new_control(timeout_s=DEFAULT_TIMEOUT_S):
    """Zeroed control words for one team whose waits give up after `timeout_s`."""
    ctl = np.zeros(CONTROL_WORDS, np.int64)
    ctl[TIMEOUT_NS] = np.int64(timeout_s * 1e9)
    return ctl


@njit(nogil=True)
def team_aborted(ctl):
    """Whether a wait of this team gave up (see the module's docstring)."""
    return atomic_load(ctl, ABORTED) != 0


@njit(nogil=True)
def team_join(ctl, size):
    """Called once by each of `size` iterations of a prange: (rank, members), rank in
    [0, members) for a member, -1 for an iteration that came after the roster closed
    (it must do nothing with the team).  Rank 0 leads."""
    rank = atomic_add(ctl, ARRIVALS, 1)
    if rank >= CLOSED:
        return -1, 0
    if rank == 0:
        spins = 0
        while atomic_load(ctl, ARRIVALS) < size and spins < JOIN_SPINS:
            _wait(spins)
            spins += 1
        members = atomic_add(ctl, ARRIVALS, CLOSED)
        atomic_add(ctl, COUNT, members)
        return 0, members
    spins = 0
    start = monotonic_ns()
    members = atomic_load(ctl, COUNT)
    while members == 0:
        if _wait_expired(ctl, spins, start):
            return -1, 0
        _wait(spins)
        spins += 1
        members = atomic_load(ctl, COUNT)
    return rank, members


@njit(nogil=True)
def team_barrier(ctl, members):
    """Wait until all `members` have arrived here; True then, False when the wait gave
    up (the team is aborted: see the module's docstring).  The counter's old value
    tells an arrival which barrier this is (k = old // members: no member can start
    barrier k + 1 before all have arrived at k), and barrier k passes at
    (k + 1) * members."""
    if atomic_load(ctl, ABORTED) != 0:
        return False
    target = (atomic_add(ctl, BARRIER, 1) // members + 1) * members
    spins = 0
    start = monotonic_ns()
    while atomic_load(ctl, BARRIER) < target:
        if _wait_expired(ctl, spins, start):
            return False
        _wait(spins)
        spins += 1
    return True
