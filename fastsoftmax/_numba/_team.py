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

# Control words, each on its own 128-byte pair of cache lines (index in int64s).
ARRIVALS = 0
COUNT = 16
BARRIER = 32
CONTROL_WORDS = 48
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


@njit(nogil=True)
def _wait(spins):
    """One iteration of a wait loop that has spun `spins` times so far."""
    if spins < SPINS_BEFORE_YIELD:
        spin_pause()
    else:
        yield_cpu()


@njit(nogil=True)
def new_control():
    """Zeroed control words for one team."""
    return np.zeros(CONTROL_WORDS, np.int64)


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
    members = atomic_load(ctl, COUNT)
    while members == 0:
        _wait(spins)
        spins += 1
        members = atomic_load(ctl, COUNT)
    return rank, members


@njit(nogil=True)
def team_barrier(ctl, members):
    """Wait until all `members` have arrived here.  The counter's old value tells an
    arrival which barrier this is (k = old // members: no member can start barrier
    k + 1 before all have arrived at k), and barrier k passes at (k + 1) * members."""
    target = (atomic_add(ctl, BARRIER, 1) // members + 1) * members
    spins = 0
    while atomic_load(ctl, BARRIER) < target:
        _wait(spins)
        spins += 1
