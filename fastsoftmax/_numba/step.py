"""The fused softmax-regression SGD step on the CPU (Numba).

One step on a minibatch B of rows (``order[s*batch : (s+1)*batch]`` of X)::

    z  = a X_B W^T + b                   (B, C)   a = x_scale (1/255 for uint8 pixels)
    loss, G = mean cross-entropy of z and its gradient (the Core kernel, scale 1/B),
              row i's loss and gradient row times s_i where row weights s are given
    dW = a G^T X_B + wd W,  db = sum_rows G
    v  = momentum v + dW;  W -= lr_s v    (plain SGD when momentum == 0: v = dW)
    Wa += c_s (W - Wa), ba likewise      (averaged SGD, where asked: c_s from the caller)

Work split, two kernels (``step_kernel`` picks one from C, the pool's size and the
batch size: see ``splits_classes``):

* ``team_steps_by_class`` (when every thread of the pool can own five classes and a
  step is one 64-row block, e.g. MNIST's 10 classes on two cores at batch 64): each
  thread owns a fixed range of classes for the whole call and computes their logits,
  gradient and update over all the batch's rows.  Its W rows and dW stay in its own
  cache and no gradient crosses to another core; the threads meet once per block of
  rows, to exchange the block's logits (each then runs the Core kernel's tile
  arithmetic on the whole block itself, on the exchanged class-major logits).  A
  class's arithmetic does not depend on which thread owns it, so the parameters' bits
  are those of one thread, whatever the counts.
* ``team_steps`` otherwise: the batch's rows are cut into ``nparts`` contiguous parts
  (``nparts``: the pool's size), computed by the threads round-robin into per-part dW
  partials, which are added in part order before the update (split by classes); a
  run's bits depend on the batch and the pool's size only.  Two spin barriers per step.

Either way a thread walks its rows ``BLOCK`` at a time: the block's logits, the Core
kernel in place, the block's contribution to dW while its rows are still in L2, before
the next block is read.  So X is read from memory once per step ("one pass"), through
``order`` (shuffling copies nothing), and uint8 pixels move 4x fewer bytes than float32;
they are converted to the parameters' type as they are loaded (a converted copy of
the block made an epoch ~1.1x slower).  All of a call's steps run in one call of the
kernel per thread, the threads meeting at spin barriers (``fastsoftmax._numba._team``),
not in fork/joins per step.

Inner loops, and why they look as they do (AVX-512, float32, d = 784, C = 10):
* logits: 4 rows x 5 classes = 20 dot products over k at once: per
  vector of k, 4 row loads and 5 W loads feed 20 FMAs (one class at a time was
  load-bound at 9 loads per 8 FMAs: Zen 4 does one 512-bit load and one 512-bit FMA per
  cycle).  Vectorising a dot needs reassociation, granted to that helper only.
  Measured (2 threads, batch 128, float32): one class at a time -> 8 rows x 2 classes,
  34.0 -> 28.5 ms per epoch (best of 9 interleaved); 8 x 2 -> 4 x 5, 0.965x (median
  of 30 paired epochs).
* dW: ``dW[c, k] += g0 x0[k] + ... + g3 x3[k]`` for five classes per pass: a plain
  vector loop over k (no reduction, no reassociation) that reads and writes dW[c] once
  per 4 rows; the 20 coefficients fit in registers (eight rows by two classes did not:
  LLVM spilled them and reloaded them every iteration: 18 loads per 16 FMAs).
  Measured: a 64-row block in L1/L2, one thread, 19.6 -> 14.9 us (median of 40
  interleaved runs); an epoch, 8 x 2 -> 4 x 5, 0.92x (median of 30 paired epochs).
* 512-bit vectors: LLVM vectorises for 256-bit registers on Intel's AVX-512 server
  CPUs unless a function asks otherwise; the step's functions ask (``_wide_vectors``).
  The class-split epoch went 20.6 -> 19.0 ms (2 threads, batch 64, MNIST uint8).
* AVX2 has 16 vector registers, not 32: 4 x 5 accumulators left 7 of them on the
  stack (a load and a store each per vector of k), so with 16 registers the logits go
  2 rows x 5 classes at a time (``_logits_pair``, ``NARROW_REGISTERS``).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .._cpu_target import narrow_registers
from .._threads import pool_size
from ._ir_only import ir_only
from ._math import REDUCE_FLAGS, like, smin
from ._team import (
    ABORTED,
    DEFAULT_TIMEOUT_S,
    RESULT,
    item_pointer,
    new_control,
    team_barrier,
    team_join,
)
from .kernels import (
    SMALL_C_MAX,
    row_path_for,
    scratch_for,
    xent_index_rows,
    xent_index_tiles,
    xent_tile_class_major,
)

# Rows gathered into a thread's scratch block at a time (64 x 784 x 4 B = 196 KiB: L2).
BLOCK = 64
# Rows per pass of the logits and dW loops (_logits_quad, _grad_quad: 4 rows x 5 classes).
QUAD = 4
# Rows prefetched before each QUAD-row pass (of either loop over a block): a block has
# 2 BLOCK / QUAD such passes, so the next block (BLOCK rows) arrives while this one is worked
# on.  Two rows (98 lines) at a time rather than four: 0.96-0.99x per epoch (medians of
# 30 paired epochs, three runs); without prefetching, 1.06x.
PF_ROWS = 2
PF_LOCALITY = 2
# 16 vector registers (AVX2 and below), not 32: the logits then go 2 rows at a time
# (see _logits_pair).
NARROW_REGISTERS = narrow_registers()
# A leader whose team is short (a pool thread was not awake when the team formed: this
# VM can take milliseconds to wake one) runs about this many multiply-adds' worth of
# steps (~1 ms) and returns; sgd_steps then forms one new team for the rest, which the
# thread, awake by then, joins.  Without it the call's remaining steps (half an MNIST
# epoch) ran on one thread.  A team's bits do not depend on who joined.
SOLO_MACS = 1 << 24
# A thread gets at least this many rows of a batch (fewer are not worth a wake-up).
MIN_ROWS_PER_THREAD = 16

# helpers: called only from the kernels below, so no CPython or C wrapper is compiled
_NW = {"no_cpython_wrapper": True, "no_cfunc_wrapper": True}
_F = {"fastmath": {"contract"}, "error_model": "numpy", "nogil": True, **_NW}
_FR = {"fastmath": REDUCE_FLAGS, "error_model": "numpy", "nogil": True, **_NW}
_KW = {"fastmath": {"contract"}, "error_model": "numpy", "nogil": True, "cache": True}


@intrinsic
def _prefetch_row(typingctx, x, i):
    """Ask for row i of the C-contiguous 2-D array x to be brought into L2 (a hint:
    llvm.prefetch, read, locality 2), one request per 64-byte line."""
    if not (isinstance(x, types.Array) and x.ndim == 2 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        row = builder.sext(args[1], ir.IntType(64)) if args[1].type.width < 64 else args[1]
        zero = ir.Constant(ir.IntType(64), 0)
        start = item_pointer(context, builder, aryty, args[0], [row, zero])
        i8p = ir.IntType(8).as_pointer()
        base = builder.bitcast(start, i8p)
        nbytes = builder.mul(
            cgutils.unpack_tuple(builder, ary.shape)[1],
            ir.Constant(ir.IntType(64), context.get_abi_sizeof(context.get_data_type(aryty.dtype))),
        )
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        with cgutils.for_range_slice(
            builder, ir.Constant(ir.IntType(64), 0), nbytes, ir.Constant(ir.IntType(64), 64)
        ) as (off, _):
            builder.call(fn, [builder.gep(base, [off]), i32(0), i32(PF_LOCALITY), i32(1)])
        return context.get_dummy_value()

    return types.void(x, i), codegen


@intrinsic
def _wide_vectors(typingctx):
    """Lets LLVM vectorise the calling function's loops with 512-bit registers where the
    CPU has them (the function attribute "prefer-vector-width"="512"; LLVM's default on
    Intel server CPUs is 256).  Without AVX-512 the widest registers are used, as
    before."""

    def codegen(context, builder, sig, args):
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.void(), codegen


def _block(X, order, s0, nr, xb, rows):
    """Where the block's rows order[s0 : s0 + nr] are read from: X itself when it has
    the parameters' dtype (rows[q] = order[s0 + q], no copy), else the scratch xb that
    they are converted into (rows[q] = q)."""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(_block, jit_options=_F)
def _block_overload(X, order, s0, nr, xb, rows):
    if X.dtype == xb.dtype or isinstance(X.dtype, types.Integer):

        def view(X, order, s0, nr, xb, rows):
            for q in range(nr):
                rows[q] = order[s0 + q]
            return X

        return view

    def convert(X, order, s0, nr, xb, rows):
        for q in range(nr):
            rows[q] = q
            src = X[order[s0 + q]]
            dst = xb[q]
            for k in range(src.shape[0]):
                dst[k] = src[k]
        return xb

    return convert


@njit(**_FR)
def _logits_pair(x, rows, q, W, b, a, z):
    """z[q : q + 2] = a x[rows[q : q + 2]] W^T + b: _logits_quad for CPUs with 16
    vector registers (AVX2): 2 rows x 5 classes = 10 accumulators, where 4 x 5 made LLVM
    keep 7 of the 20 on the stack (a load and a store each per vector of k)."""
    _wide_vectors()
    C, d = W.shape
    a = like(W, a)
    i0, i1 = rows[q], rows[q + 1]
    c5 = C - C % 5
    for c in range(0, c5, 5):
        wa, wb, we, wh, wj = W[c], W[c + 1], W[c + 2], W[c + 3], W[c + 4]
        a0 = a1 = b0 = b1 = e0 = e1 = h0 = h1 = j0 = j1 = like(W, 0.0)
        for k in range(d):
            x0 = like(W, x[i0, k])
            x1 = like(W, x[i1, k])
            u = wa[k]
            a0 += x0 * u
            a1 += x1 * u
            u = wb[k]
            b0 += x0 * u
            b1 += x1 * u
            u = we[k]
            e0 += x0 * u
            e1 += x1 * u
            u = wh[k]
            h0 += x0 * u
            h1 += x1 * u
            u = wj[k]
            j0 += x0 * u
            j1 += x1 * u
        bc = b[c : c + 5]
        z[q, c], z[q + 1, c] = a0 * a + bc[0], a1 * a + bc[0]
        z[q, c + 1], z[q + 1, c + 1] = b0 * a + bc[1], b1 * a + bc[1]
        z[q, c + 2], z[q + 1, c + 2] = e0 * a + bc[2], e1 * a + bc[2]
        z[q, c + 3], z[q + 1, c + 3] = h0 * a + bc[3], h1 * a + bc[3]
        z[q, c + 4], z[q + 1, c + 4] = j0 * a + bc[4], j1 * a + bc[4]
    for c in range(c5, C):
        wa = W[c]
        a0 = a1 = like(W, 0.0)
        for k in range(d):
            u = wa[k]
            a0 += like(W, x[i0, k]) * u
            a1 += like(W, x[i1, k]) * u
        z[q, c], z[q + 1, c] = a0 * a + b[c], a1 * a + b[c]


@njit(**_FR)
def _logits_quad(x, rows, q, W, b, a, z):
    """z[q : q + 4] = a x[rows[q : q + 4]] W^T + b: five classes per pass (20 dot
    products at once: per vector of k, 4 row loads and 5 W loads feed 20 FMAs), then
    the C % 5 others one at a time.  Reassociation lets LLVM split each dot product
    across vector lanes."""
    _wide_vectors()
    if NARROW_REGISTERS:  # a global: settled at compile time
        _logits_pair(x, rows, q, W, b, a, z)
        _logits_pair(x, rows, q + 2, W, b, a, z)
        return
    C, d = W.shape
    a = like(W, a)
    i0, i1, i2, i3 = rows[q], rows[q + 1], rows[q + 2], rows[q + 3]
    c5 = C - C % 5
    for c in range(0, c5, 5):
        wa, wb, we, wh, wj = W[c], W[c + 1], W[c + 2], W[c + 3], W[c + 4]
        a0 = a1 = a2 = a3 = like(W, 0.0)
        b0 = b1 = b2 = b3 = like(W, 0.0)
        e0 = e1 = e2 = e3 = like(W, 0.0)
        h0 = h1 = h2 = h3 = like(W, 0.0)
        j0 = j1 = j2 = j3 = like(W, 0.0)
        for k in range(d):
            x0 = like(W, x[i0, k])
            x1 = like(W, x[i1, k])
            x2 = like(W, x[i2, k])
            x3 = like(W, x[i3, k])
            u = wa[k]
            a0 += x0 * u
            a1 += x1 * u
            a2 += x2 * u
            a3 += x3 * u
            u = wb[k]
            b0 += x0 * u
            b1 += x1 * u
            b2 += x2 * u
            b3 += x3 * u
            u = we[k]
            e0 += x0 * u
            e1 += x1 * u
            e2 += x2 * u
            e3 += x3 * u
            u = wh[k]
            h0 += x0 * u
            h1 += x1 * u
            h2 += x2 * u
            h3 += x3 * u
            u = wj[k]
            j0 += x0 * u
            j1 += x1 * u
            j2 += x2 * u
            j3 += x3 * u
        _store4(z, q, c, a, b[c], a0, a1, a2, a3)
        _store4(z, q, c + 1, a, b[c + 1], b0, b1, b2, b3)
        _store4(z, q, c + 2, a, b[c + 2], e0, e1, e2, e3)
        _store4(z, q, c + 3, a, b[c + 3], h0, h1, h2, h3)
        _store4(z, q, c + 4, a, b[c + 4], j0, j1, j2, j3)
    for c in range(c5, C):
        wa = W[c]
        a0 = a1 = a2 = a3 = like(W, 0.0)
        for k in range(d):
            u = wa[k]
            a0 += like(W, x[i0, k]) * u
            a1 += like(W, x[i1, k]) * u
            a2 += like(W, x[i2, k]) * u
            a3 += like(W, x[i3, k]) * u
        _store4(z, q, c, a, b[c], a0, a1, a2, a3)


@njit(**_F)
def _store4(z, q, c, a, bc, s0, s1, s2, s3):
    """z[q : q + 4, c] = a s + bc."""
    z[q, c] = s0 * a + bc
    z[q + 1, c] = s1 * a + bc
    z[q + 2, c] = s2 * a + bc
    z[q + 3, c] = s3 * a + bc


@njit(**_FR)
def _logits_row(x, rows, q, W, b, a, z):
    _wide_vectors()
    C, d = W.shape
    a = like(W, a)
    i = rows[q]
    for c in range(C):
        wc = W[c]
        s = like(W, 0.0)
        for k in range(d):
            s += like(W, x[i, k]) * wc[k]
        z[q, c] = s * a + b[c]


@njit(**_F)
def _grad_quad(x, rows, q, g, a, gW):
    """gW += a g[q : q + 4]^T x[rows[q : q + 4]]: five classes per pass, then the
    C % 5 others one at a time.  A vector loop over k with no reduction (so no
    reassociation): per vector of k, 4 row loads and 5 loads and stores of gW feed 20
    FMAs, and the 20 coefficients stay in registers.  Eight rows by two classes (16
    coefficients, 8 row loads) made LLVM spill half the coefficients to the stack and
    reload them every iteration: 18 loads per 16 FMAs."""
    _wide_vectors()
    C, d = gW.shape
    a = like(gW, a)
    i0, i1, i2, i3 = rows[q], rows[q + 1], rows[q + 2], rows[q + 3]
    c5 = C - C % 5
    for c in range(0, c5, 5):
        a0, a1, a2, a3 = g[q, c] * a, g[q + 1, c] * a, g[q + 2, c] * a, g[q + 3, c] * a
        b0, b1 = g[q, c + 1] * a, g[q + 1, c + 1] * a
        b2, b3 = g[q + 2, c + 1] * a, g[q + 3, c + 1] * a
        e0, e1 = g[q, c + 2] * a, g[q + 1, c + 2] * a
        e2, e3 = g[q + 2, c + 2] * a, g[q + 3, c + 2] * a
        h0, h1 = g[q, c + 3] * a, g[q + 1, c + 3] * a
        h2, h3 = g[q + 2, c + 3] * a, g[q + 3, c + 3] * a
        j0, j1 = g[q, c + 4] * a, g[q + 1, c + 4] * a
        j2, j3 = g[q + 2, c + 4] * a, g[q + 3, c + 4] * a
        ga, gb, ge, gh, gj = gW[c], gW[c + 1], gW[c + 2], gW[c + 3], gW[c + 4]
        for k in range(d):
            x0 = like(gW, x[i0, k])
            x1 = like(gW, x[i1, k])
            x2 = like(gW, x[i2, k])
            x3 = like(gW, x[i3, k])
            ga[k] += a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3
            gb[k] += b0 * x0 + b1 * x1 + b2 * x2 + b3 * x3
            ge[k] += e0 * x0 + e1 * x1 + e2 * x2 + e3 * x3
            gh[k] += h0 * x0 + h1 * x1 + h2 * x2 + h3 * x3
            gj[k] += j0 * x0 + j1 * x1 + j2 * x2 + j3 * x3
    for c in range(c5, C):
        a0, a1, a2, a3 = g[q, c] * a, g[q + 1, c] * a, g[q + 2, c] * a, g[q + 3, c] * a
        ga = gW[c]
        for k in range(d):
            x0, x1 = like(gW, x[i0, k]), like(gW, x[i1, k])
            x2, x3 = like(gW, x[i2, k]), like(gW, x[i3, k])
            ga[k] += a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3


@njit(**_F)
def _grad_row(x, rows, q, g, a, gW):
    _wide_vectors()
    C, d = gW.shape
    a = like(gW, a)
    i = rows[q]
    for c in range(C):
        g0 = g[q, c] * a
        gc = gW[c]
        for k in range(d):
            gc[k] += g0 * like(gW, x[i, k])


@njit(**_F)
def _prefetch_next(X, order, pf, i1, n0, n1):
    """Prefetch PF_ROWS rows from position pf on (past i1: the thread's part of the next
    step, order[n0:n1]); returns the new position.  Called before each QUAD-row pass of
    either loop, so the next block streams in at an even rate over the block's work."""
    for p in range(pf, pf + PF_ROWS):
        if p < i1:
            _prefetch_row(X, order[p])
        elif p - i1 + n0 < n1:
            _prefetch_row(X, order[p - i1 + n0])
    return pf + PF_ROWS


@njit(**_F)
def _logits_block(x, rows, nr, W, b, a, z, ahead, pf):
    """z[:nr] = a x[rows[:nr]] W^T + b, QUAD rows a pass (the last nr % QUAD one at a
    time), with PF_ROWS rows of ahead = (X, order, i1, n0, n1) prefetched before each
    pass (_prefetch_next from position pf); returns the new position."""
    _wide_vectors()
    X, order, i1, n0, n1 = ahead
    full = nr - nr % QUAD
    for q in range(0, full, QUAD):
        pf = _prefetch_next(X, order, pf, i1, n0, n1)
        _logits_quad(x, rows, q, W, b, a, z)
    for q in range(full, nr):
        _logits_row(x, rows, q, W, b, a, z)
    return pf


@njit(**_F)
def _grad_block(x, rows, nr, g, a, gW, ahead, pf):
    """gW += a g[:nr]^T x[rows[:nr]], passed and prefetching as _logits_block."""
    _wide_vectors()
    X, order, i1, n0, n1 = ahead
    full = nr - nr % QUAD
    for q in range(0, full, QUAD):
        pf = _prefetch_next(X, order, pf, i1, n0, n1)
        _grad_quad(x, rows, q, g, a, gW)
    for q in range(full, nr):
        _grad_row(x, rows, q, g, a, gW)
    return pf


@njit(**_F)
def _weigh_and_add(g, lrow, sw, rows_at, nr, gb, total):
    """A block's nr rows after the Core kernel: where row weights sw are given, lrow[q]
    and g[q] times sw[rows_at[q]] (rows_at: the rows' indices in X); then gb[c] += the
    sum of g[:, c], and returns total + lrow[0] + ... + lrow[nr - 1] (added in turn)."""
    if sw is not None:  # a type test: settled at compile time
        for q in range(nr):
            wq = sw[rows_at[q]]
            lrow[q] *= wq
            wg = like(g, wq)
            for c in range(g.shape[1]):
                g[q, c] *= wg
    for q in range(nr):
        total += lrow[q]
        for c in range(g.shape[1]):
            gb[c] += g[q, c]
    return total


@njit(**_F, inline="always")
def _part(data, span, W, b, inv_b, grads, scr, row_path, sw):
    """One thread's rows order[i0:i1]: logits, Core cross-entropy, dW and db partials
    (added into grads = (gW, gb)).  Returns the sum of the part's row losses (float64).

    data: (X, y, order, a); span: (i0, i1, n0, n1), order[n0:n1] being the thread's
    part of the next step (its first rows are prefetched); scr: the thread's scratch
    (xb, rows, z, yb, lrow, buf, f64) of _thread_scratch.  sw: None, or (n,) float64
    row weights that scale each row's loss and gradient (an argument of its own: a test
    on None is settled at compile time only for arguments).

    Rows go BLOCK at a time: the second read of a block (for dW) hits L2."""
    X, y, order, a = data
    i0, i1, n0, n1 = span
    gW, gb = grads
    xb, rows, z, yb, lrow, buf, f64 = scr
    total = 0.0
    pf = i0 + BLOCK  # the next row to prefetch (the first block came with the last step)
    ahead = (X, order, i1, n0, n1)
    for s0 in range(i0, i1, BLOCK):
        nr = smin(BLOCK, i1 - s0)
        for q in range(nr):
            yb[q] = y[order[s0 + q]]
        x = _block(X, order, s0, nr, xb, rows)
        pf = _logits_block(x, rows, nr, W, b, a, z, ahead, pf)
        zz = z[:nr]
        # the Core kernel, in place: z becomes inv_b * (softmax(z) - onehot(y))
        if row_path is None:  # C <= SMALL_C_MAX (a type: see kernels.row_path_for)
            xent_index_tiles(
                zz, yb[:nr], None, 0.0, -1, None, inv_b, lrow, zz, 0, nr, buf, f64, None, None, 0
            )
        else:
            xent_index_rows(zz, yb[:nr], None, 0.0, -1, None, inv_b, lrow, zz, 0, nr)
        total = _weigh_and_add(zz, lrow, sw, order[s0 : s0 + nr], nr, gb, total)
        pf = _grad_block(x, rows, nr, zz, a, gW, ahead, pf)
    return total


@njit(**_F)
def _update_classes(model, partials, nth, rates, c0, c1, avg, s):
    """Classes c0..c1-1 of model = (W, b, vW, vb): add the first nth thread partials
    (gW, gb of partials = (gW, gb, part_loss, sqc)) in thread order, then the (momentum)
    SGD update with rates = (lr, mu, wd); sqc[c] = ||W[c]||^2 afterwards (for the next
    step's decay term); then, where avg = (Wa, ba, coef) is given and coef[s] != 0,
    Wa += coef[s] (W - Wa) and ba likewise (the running mean of the iterates: coef[s] =
    1 / its count)."""
    W, b, vW, vb = model
    gW, gb, _, sqc = partials
    d = W.shape[1]
    lr = like(W, rates[0])
    mu = like(W, rates[1])
    wd = like(W, rates[2])
    for c in range(c0, c1):
        g = gW[0, c]
        for t in range(1, nth):
            gt = gW[t, c]
            for k in range(d):
                g[k] += gt[k]
        gbc = gb[0, c]
        for t in range(1, nth):
            gbc += gb[t, c]
        wc = W[c]
        if mu != 0.0:
            vc = vW[c]
            for k in range(d):
                v = g[k] + wd * wc[k] + mu * vc[k]
                vc[k] = v
                wc[k] -= lr * v
            vb[c] = gbc + mu * vb[c]
            b[c] -= lr * vb[c]
        else:
            for k in range(d):
                wc[k] -= lr * (g[k] + wd * wc[k])
            b[c] -= lr * gbc
        if wd != 0.0:
            sqc[c] = _sq(wc)
        if avg is not None:  # a type test: settled at compile time
            Wa, ba, coef = avg
            k = like(W, coef[s])
            if k != 0.0:
                wa = Wa[c]
                for j in range(d):
                    wa[j] += k * (wc[j] - wa[j])
                ba[c] += k * (b[c] - ba[c])


@njit(**_F)
def _sq(w):
    """sum(w**2) in float64, in index order (the same value wherever it is computed)."""
    acc = 0.0
    for k in range(w.shape[0]):
        acc += float(w[k]) * float(w[k])
    return acc


# Elements added to each thread's row of a shared per-thread array, so that no cache
# line holds two threads' data whatever the allocation's alignment.  Unpadded, the
# (P, C) bias partials of all threads shared one line, written for every row of every
# block, and the tile buffers' ends shared one with the next thread's start: padding
# made an epoch 0.94-0.96x (2 threads, float32, batch 128; medians of 16 paired epochs,
# three runs), with the same bits.
PAD = 64


@njit(**_KW)
def _thread_scratch(P, W):
    """Each of P threads' blocks for _part: gathered rows, logits, labels, row indices,
    row losses and the Core kernel's scratch (each padded by PAD)."""
    C, d = W.shape
    nbuf = scratch_for(C if C <= SMALL_C_MAX else 0, W.dtype)[0].shape[0]
    nf64 = scratch_for(0, W.dtype)[1].shape[0]
    return (
        np.empty((P, BLOCK + 1, d), W.dtype),
        np.empty((P, BLOCK + PAD, C), W.dtype),
        np.empty((P, BLOCK + PAD), np.int64),
        np.empty((P, BLOCK + PAD), np.int64),
        np.empty((P, BLOCK + PAD)),
        np.empty((P, nbuf + PAD), W.dtype),
        np.empty((P, nf64 + PAD)),
    )


@njit(**_KW)
def _thread_partials(P, C, d, dtype):
    """Zeroed per-thread dW (P, C + 1, d) and db (P, C + PAD) partials; a thread's own
    are gW[t][:C] and gb[t][:C] (the spare row and the PAD numbers keep threads apart)."""
    return np.zeros((P, C + 1, d), dtype), np.zeros((P, C + PAD), dtype)


@njit(**_F)
def _last_step(ctl, r, m, size, s0, s1, solo):
    """Where a team's call stops: s1, or after `solo` steps when fewer than `size`
    threads joined (a thread came too late: sgd_steps forms a new team for the rest);
    the leader (r == 0) writes it to ctl[RESULT] for sgd_steps before any step (the
    members return only after the last)."""
    if m < size:
        s1 = smin(s1, s0 + solo)
    if r == 0:
        ctl[RESULT] = s1
    return s1


@njit(**_KW)
def team_steps(ctl, size, NP, data, steps, model, losses, partials, scratch, row_path, sw, avg):
    """One of the `size` threads of a call of sgd_steps: joins the team (see _team) and,
    as member r of m, does its share of the steps.  data: (X, y, order, a); steps: (s0,
    s1, batch, lrs, mu, wd); model: (W, b, vW, vb), updated in place; partials: (gW, gb,
    part_loss, sqc) shared by the team; scratch: _thread_scratch's arrays (one row per
    member); NP: the most parts a step is cut into.  row_path, sw, avg: as in _part and
    _update_classes (arguments of their own: their None-ness is settled at compile
    time)."""
    _wide_vectors()
    r, m = team_join(ctl, size)
    if r < 0:
        return
    s0, s1, batch, lrs, mu, wd, solo = steps
    s1 = _last_step(ctl, r, m, size, s0, s1, solo)
    W, b = model[0], model[1]
    gW, gb, part_loss, sqc = partials
    xbs, zs, ybs, rowss, lrows, bufs, f64s = scratch
    scr = (xbs[r], rowss[r], zs[r], ybs[r], lrows[r], bufs[r], f64s[r])
    n = data[2].shape[0]
    C = W.shape[0]
    if r == 0 and wd != 0.0:  # ||W||^2 per class: only member 0 reads it before a barrier
        for c in range(C):
            sqc[c] = _sq(W[c])
    for s in range(s0, s1):
        r0 = s * batch
        r1 = smin(r0 + batch, n)
        nb = r1 - r0
        nth = _parts(nb, NP)
        # where this member's part of the next step starts: prefetched at the end
        nr0 = smin(r1, n)
        nnb = smin(nr0 + batch, n) - nr0
        nnth = _parts(nnb, NP)
        nxt0 = nr0 + r * nnb // nnth if r < nnth and nnb > 0 else n
        nxt1 = nr0 + (r + 1) * nnb // nnth if r < nnth and nnb > 0 else n
        inv_b = 1.0 / nb
        for t in range(r, nth, m):
            gW[t] = 0
            gb[t] = 0
            span = (r0 + t * nb // nth, r0 + (t + 1) * nb // nth, nxt0, nxt1)
            grads = (gW[t][:C], gb[t][:C])
            part_loss[t] = _part(data, span, W, b, inv_b, grads, scr, row_path, sw)
        sq = 0.0
        if r == 0 and wd != 0.0:  # ||W||^2 before this step's update
            for c in range(C):
                sq += sqc[c]
        if not team_barrier(ctl, m):  # every part is in gW, gb, part_loss
            return
        if r == 0:
            total = 0.0
            for t in range(nth):
                total += part_loss[t]
            losses[s] = total * inv_b + 0.5 * wd * sq
        nu = smin(m, C)
        if r < nu:
            rates = (lrs[s], mu, wd)
            c0, c1 = r * C // nu, (r + 1) * C // nu
            _update_classes(model, partials, nth, rates, c0, c1, avg, s)
        if not team_barrier(ctl, m):  # W, b (and sqc) are the next step's
            return


@njit(**_KW)
def team_steps_by_class(ctl, size, data, steps, model, losses, shared, scratch, row_path, sw, avg):
    """One of the `size` threads of a call of sgd_steps that splits the classes (see
    its docstring): member r of m owns the five-class groups r K // m .. (r + 1) K // m
    - 1 of K = C // 5 (the last member the C % 5 classes after them), and owns them for
    the whole call: it alone computes their logits, gradient and update, so their W
    rows stay in its cache and no gradient partial ever crosses to the other core.
    Per block of BLOCK rows: the member's logits columns go to the shared zt[parity]
    (class-major, so members write lines of their own); one barrier; each member then
    reads all the block's logits, runs the Core kernel on them (the same bits in every
    member: an extra ~1 us rather than a second barrier), adds its classes' dW and db,
    and after the step's last block updates its classes.  A class's arithmetic is the
    same whichever member owns it (a five-class group is always computed as one), so
    the bits depend on neither the thread count nor the pool's size.

    shared: (zt (2, C, BLOCK + PAD), gW (P, C + 1, d), gb (P, C + PAD), sqc (2, C +
    PAD)), member r's gradient in gW[r], gb[r] (apart: the members add into them for
    every row); sqc[s % 2] holds ||W[c]||^2 before step s's update (written by the class's
    owner after step s - 1, read by member 0 after step s's first barrier: the double
    buffer keeps the owner's next write apart)."""
    _wide_vectors()
    r, m = team_join(ctl, size)
    if r < 0:
        return
    X, y, order, a = data
    s0, s1, batch, lrs, mu, wd, solo = steps
    s1 = _last_step(ctl, r, m, size, s0, s1, solo)
    W, b = model[0], model[1]
    zt, gW, gb, sqc = shared
    xbs, zs, ybs, rowss, lrows, bufs, f64s = scratch
    xb, rows, z, yb, lrow, buf, f64 = xbs[r], rowss[r], zs[r], ybs[r], lrows[r], bufs[r], f64s[r]
    n = order.shape[0]
    C = W.shape[0]
    K = C // 5
    c0 = 5 * (r * K // m)
    c1 = C if r == m - 1 else 5 * ((r + 1) * K // m)
    Wr, br, gWr, gbr = W[c0:c1], b[c0:c1], gW[r][c0:c1], gb[r][c0:c1]
    gW1, gb1 = gW[r : r + 1], gb[r : r + 1]  # member r's, as _update_classes reads them
    if wd != 0.0:
        for c in range(c0, c1):
            sqc[s0 % 2, c] = _sq(W[c])
    par = 0
    for s in range(s0, s1):
        r0 = s * batch
        r1 = smin(r0 + batch, n)
        inv_b = 1.0 / (r1 - r0)
        # this step's later blocks, then the next step's rows order[r1:...], prefetched
        ahead = (X, order, r1, r1, smin(r1 + batch, n))
        gWr[...] = 0
        gbr[...] = 0
        total = 0.0
        sq = 0.0
        pf = r0 + BLOCK  # the next row to prefetch (the first block came with the last step)
        for b0 in range(r0, r1, BLOCK):
            nr = smin(BLOCK, r1 - b0)
            x = _block(X, order, b0, nr, xb, rows)
            zr = zt[par][c0:c1].T  # (BLOCK + PAD, c1 - c0): this member's columns
            pf = _logits_block(x, rows, nr, Wr, br, a, zr, ahead, pf)
            for q in range(nr):
                yb[q] = y[order[b0 + q]]
            if not team_barrier(ctl, m):  # every member's logits columns are in zt[par]
                return
            if r == 0 and b0 == r0 and wd != 0.0:  # ||W||^2 before this step's update
                for c in range(C):
                    sq += sqc[s % 2, c]
            zp = zt[par]
            par ^= 1
            # the Core kernel: gr = inv_b * (softmax - onehot(y)) of this member's classes
            if row_path is None:  # C <= SMALL_C_MAX (a type: see kernels.row_path_for)
                gr = xent_tile_class_major(zp, nr, yb, inv_b, lrow, buf, f64)[c0:c1].T
            else:
                zz = z[:nr]
                for q in range(nr):
                    for c in range(C):
                        zz[q, c] = zp[c, q]
                xent_index_rows(zz, yb[:nr], None, 0.0, -1, None, inv_b, lrow, zz, 0, nr)
                gr = zz[:, c0:c1]
            total = _weigh_and_add(gr, lrow, sw, order[b0 : b0 + nr], nr, gbr, total)
            pf = _grad_block(x, rows, nr, gr, a, gWr, ahead, pf)
        if r == 0:
            losses[s] = total * inv_b + 0.5 * wd * sq
        rates = (lrs[s], mu, wd)
        _update_classes(model, (gW1, gb1, 0.0, sqc[(s + 1) % 2]), 1, rates, c0, c1, avg, s)


_workers: list[ThreadPoolExecutor] = []
_workers_lock = threading.Lock()
if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads
    os.register_at_fork(after_in_child=_workers.clear)


def _pool() -> ThreadPoolExecutor:
    """Threads that run the other members of a team (made once, on first use)."""
    with _workers_lock:
        if not _workers:
            _workers.append(ThreadPoolExecutor(max(1, pool_size() - 1), "fastsoftmax-team"))
    return _workers[0]


def sgd_steps(data, params, plan, s0, s1, losses, nparts, nthreads) -> int:
    """Steps s0..s1-1 of an epoch (data, params, plan: fastsoftmax.reference's
    StepData, StepParams, StepPlan); params are updated in place; losses[s] gets step
    s's objective (mean cross-entropy + wd/2 ||W||^2, before its update).

    All the steps run in one call of the kernel (step_kernel: team_steps_by_class or
    team_steps) per thread: this thread's and min(nthreads, nparts) - 1 others (Python
    threads; the kernel releases the GIL).  They form a team (see _team).  With
    team_steps a step's rows are cut into at most `nparts` parts (the pool's size,
    whatever `nthreads` is); member r computes parts r, r + m, ... (m members) into
    part-indexed partials, and after the first barrier updates its share of the
    classes; with team_steps_by_class each member owns classes, whose arithmetic is the
    same whoever owns them.  So the bits depend neither on `nthreads` nor on how many
    threads joined in time.  A team that formed short stops after SOLO_MACS' worth of
    steps, and one new team does the rest.

    Why Python threads and not a prange: Numba compiles a parfor's body as a function
    of its own and then its caller, and each optimises and generates code for the whole
    step again: ~6 s of a cold ~13 s compile.

    Returns 0, or 1 when a member did not reach a barrier within its bound (see
    _team.team_barrier): the team then stops, W and b half-updated."""
    X, y, a, sw = data
    W, b, vW, vb, avg = params
    order, batch, lr, mu, wd = plan
    C, d = W.shape
    NP = max(1, nparts)
    P = max(1, min(nthreads, NP))
    lrs = np.asarray(lr, np.float64)
    if lrs.ndim == 0:
        lrs = np.full(max(s1, 1), float(lr))
    solo = max(1, SOLO_MACS // max(1, batch * d * C))
    kernel = step_kernel(C, NP, batch)
    if kernel is team_steps_by_class:
        zt = np.empty((2, C, BLOCK + PAD), W.dtype)
        shared = (zt, *_thread_partials(P, C, d, W.dtype), np.zeros((2, C + PAD)))
        parts = ()
    else:
        shared = (*_thread_partials(NP, C, d, W.dtype), np.zeros(NP), np.zeros(C))
        parts = (NP,)  # team_steps takes the part count after the team's size
    scratch = _thread_scratch(P, W)
    s = s0
    while True:  # at least one call, even for no steps: that compiles the kernel (warm_up)
        ctl = new_control()
        common = ((X, y, order, a), (s, s1, batch, lrs, mu, wd, solo), (W, b, vW, vb), losses)
        solo = s1  # one new team at most: threads busy with another caller's team would
        # cost each new team the leader's wait for them
        args = (ctl, P, *parts, *common, shared, scratch, row_path_for(C), sw, avg)
        others = [_pool().submit(kernel, *args) for _ in range(P - 1)]
        kernel(*args)
        for f in others:
            # a task that has not started (its thread busy with another caller's team,
            # or not awake yet) would only be turned away by the closed roster: cancel
            # it; a started one is returning, or a member of a team that is done
            # (every wait is bounded anyway)
            if not f.cancel():
                f.result(timeout=2 * DEFAULT_TIMEOUT_S)
        if ctl[ABORTED] != 0:  # every member has returned: plain reads
            return 1
        s = int(ctl[RESULT])
        if s >= s1:
            return 0


@njit(**_KW)
def loss_grad_part(X, y, W, b, a, scale, gW, gb, r0, r1, row_path):
    """Rows r0..r1-1 of X (in row order): gW (C, d) and gb (C,) get scale * d(sum of
    their row losses)/d(W, b) of the cross-entropy of a X W^T + b (their old contents
    are overwritten); returns the sum of the row losses (float64).  The step's _part
    without the update, on one thread (nogil: loss_grad runs the parts concurrently)."""
    _wide_vectors()
    order = np.arange(r0, r1)
    m = r1 - r0
    xbs, zs, ybs, rowss, lrows, bufs, f64s = _thread_scratch(1, W)
    scr = (xbs[0], rowss[0], zs[0], ybs[0], lrows[0], bufs[0], f64s[0])
    gW[...] = 0
    gb[...] = 0
    return _part((X, y, order, a), (0, m, m, m), W, b, scale, (gW, gb), scr, row_path, None)


def loss_grad(X, y, W, b, a, scale, gW_out, gb_out, row_path, nthreads) -> float:
    """The step's work on every row of X, without the update, for full-batch solvers:
    gW_out (C, d) = scale * d(sum of row losses)/dW of the cross-entropy of
    a X W^T + b, gb_out (C,) likewise for b; returns the sum of the row losses
    (float64).  X: (n, d) float32/float64/uint8, in row order; y: (n,) int64.

    The rows are cut into contiguous parts (their number depends on n and nthreads);
    this thread computes the first and the step's pool the others (Python threads
    running the nogil loss_grad_part: a prange would compile the step's body twice,
    ~10 s more on a cold cache per input dtype); the parts' results are added in part
    order."""
    n = X.shape[0]
    C, d = W.shape
    nth = parts_for(n, max(1, nthreads))
    gW, gb = _thread_partials(nth, C, d, W.dtype)
    bounds = [(t * n // nth, (t + 1) * n // nth) for t in range(nth)]
    args = [(X, y, W, b, a, scale, gW[t][:C], gb[t][:C], r0, r1, row_path)
            for t, (r0, r1) in enumerate(bounds)]  # fmt: skip
    others = [_pool().submit(loss_grad_part, *part) for part in args[1:]]
    part_loss = [loss_grad_part(*args[0])]
    for f, part in zip(others, args[1:], strict=True):
        # a part whose thread has not started it (the pool busy with another caller's
        # work) is taken back and computed here: no wait on a queue, only on a running part
        part_loss.append(loss_grad_part(*part) if f.cancel() else f.result())
    total = 0.0
    for value in part_loss:
        total += value
    gW_out[...] = gW[0][:C]
    gb_out[...] = gb[0][:C]
    for t in range(1, nth):
        gW_out += gW[t][:C]
        gb_out += gb[t][:C]
    return total


def splits_classes(C: int, nparts: int, batch: int) -> bool:
    """Whether sgd_steps splits the classes among its threads (team_steps_by_class)
    rather than the rows (team_steps): when every one of `nparts` threads (the pool's
    size) can own a five-class group and a step is one block of rows.  Depends on C,
    the pool's size and the batch only, never on the thread count, so neither does a
    run's kernel nor its bits.  Why one block: the class split's threads meet once per
    block and each reads all of it, the row split's meet twice per step and exchange C x
    d partials; per epoch (2 threads, MNIST uint8, AVX-512; medians of interleaved
    epochs) the class split took 0.83x the row split's time at batch 64, 1.04x at 128,
    1.15x at 256 (and with 100 classes 0.87x at 64, 1.05x at 256)."""
    return C // 5 >= max(1, nparts) and batch <= BLOCK


def step_kernel(C: int, nparts: int, batch: int):
    """The team kernel sgd_steps runs for C classes, a pool of `nparts` threads and
    batches of `batch` rows."""
    return team_steps_by_class if splits_classes(C, nparts, batch) else team_steps


def parts_for(nb, P):
    """Threads (contiguous parts) for a batch of nb rows, at most P."""
    return max(1, min(P, nb // MIN_ROWS_PER_THREAD))


_parts = njit(**_F)(parts_for)  # the same rule inside the kernels


@njit(cache=True, parallel=True, fastmath=REDUCE_FLAGS, nogil=True)
def all_finite(X):
    """True when the C-contiguous 2-D float array X holds no NaN or infinity, at memory
    speed: x * 0 is 0 for finite x and NaN otherwise, and a sum of those vectorises
    (the flags allow reassociation but not the finite-math assumption)."""
    n = X.shape[0]
    nchunks = (n + 255) // 256
    # np.empty and a plain sum below: np.zeros and .sum() would each be a parallel loop
    # of their own in a parallel=True kernel (a fork and join each)
    bad = np.empty(nchunks)
    for c in prange(nchunks):
        acc = X[0, 0] * 0
        for i in range(c * 256, smin(n, c * 256 + 256)):
            row = X[i]
            for k in range(row.shape[0]):
                acc += row[k] * 0
        bad[c] = acc
    total = 0.0
    for c in range(nchunks):
        total += bad[c]
    return total == 0


# The helpers above are linked into their callers as IR and never run on their own, so a
# process that compiles the kernels computes the same bits as one that loads them from
# Numba's cache (see _ir_only).
ir_only(globals())
