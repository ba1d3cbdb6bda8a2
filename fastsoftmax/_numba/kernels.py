"""Numba CPU kernels: softmax, log-softmax, logsumexp, fused cross-entropy.

Every kernel takes C-contiguous 2-D arrays (rows, classes) that the public API has
already validated, and writes into buffers the API allocated.  The contract is the one
in ``fastsoftmax/reference.py``: per-row losses in float64, gradients already
multiplied by the reduction's ``scale``.

Layout of the work
------------------
* Rows are grouped into chunks (one small-C tile, or about ``ROW_CHUNK_ELEMENTS``
  elements of whole rows).  Threads claim their chunks (``_next_chunk``: their own
  segment first, then what is left of the others'; on the large-C path a claim is a
  run of chunks, ``_next_rows``), so a worker that wakes late does not hold the call
  up.  Each thread allocates its scratch once.  The chunking depends only on
  the shape, never on the thread count, a chunk's results not on the thread that
  computes it, and per-chunk partial sums are added in chunk order, so every result is
  bit-identical for any number of threads.  Each parallel kernel has a ``*_serial``
  twin for inputs too small to repay waking the thread pool; both run the same
  ``_*_run`` body and the same per-chunk helpers: the same bits whichever runs.
* Large C (``C > SMALL_C_MAX``): one row at a time, passes over a row that stays in
  L1/L2 after the first: (1) max, read from memory; (2) ``e = exp(z - max)`` stored
  into the output; (3) the sum of ``e``; (4) ``e`` scaled into the result.  Passes 2
  and 3 are separate so the sum's order is the same whether the output is a new array
  or the logits themselves (in-place results are bit-identical).  In the fused
  cross-entropy with class indices and in softmax, where the output is a separate
  array, pass 1 of row i + 1 runs inside pass 2 of row i: the max pass
  waits on memory, the exp pass on arithmetic, and side by side the core overlaps
  them (fused cross-entropy at 4096 x 32000 with ``out=``, 2 threads: 74 -> 58.5 ms,
  the same bits).  So each thread runs its rows in one call, not chunk by chunk.  A blocked one-pass
  online softmax (Milakov & Gimelshein 2018, arXiv:1805.02867) was tried: it saves a
  read of the row, but the row is cache-resident after pass 1 here, and the per-block
  rescaling made it 1.5-2x slower at C = 32000 and 128256 (prototype, not kept).
  Software prefetch of the next row during pass 2 made no measurable difference at
  vocabulary rows; rows of up to 16 KB (C = 1000) prefetch the row after next and
  the next gradient row after pass 2, which their look-ahead alone leaves idle.
* Small C (``C <= SMALL_C_MAX``, MNIST's 10 classes): a row is too short for a
  vectorised loop (LLVM's AVX-512 loop needs at least 16 iterations) and per-row
  reductions would run as scalar dependency chains.  So a tile of ``TILE_ROWS`` rows is
  transposed into a small class-major buffer (``zt[c, r]``) and every step (max, exp,
  sums, gradient) runs across rows, 16 rows per AVX-512 instruction; the result is
  transposed back on the way out.
* The path is chosen in Python, so that a first call compiles one path alone (~2 s
  less each on a cold cache): the large-C kernels are separate functions (``*_wide``).
  The trainer's step (``step.py``) serves both with one kernel and an argument
  ``row_path``, None for the tiles: ``row_path is None`` is a test on a type, which
  Numba settles at compile time when the type is None.  An int cannot be settled (only
  None and literal constants can, and a literal from Python would send every call
  through Numba's slow dispatch, ~6 ms), so a large-C step compiles both paths.

Cross-entropy math (class-index targets, PyTorch's definition)
--------------------------------------------------------------
With weight ``w``, smoothing ``eps``, ``C`` classes, ``t_c = z_c - max`` and
``s = sum_c exp(t_c)`` (so ``log p_c = t_c - log s``)::

    loss  = (1-eps) w_y (log s - t_y) + (eps/C) sum_c w_c (log s - t_c)
          = a log s - (1-eps) w_y t_y + (eps/C) sum_c w_c (max - z_c)
    a     = (1-eps) w_y + (eps/C) sum_c w_c
    dloss/dz_c = a p_c - (1-eps) w_y [c == y] - (eps/C) w_c

Probability targets ``q`` use ``wq_c = w_c ((1-eps) q_c + eps/C)``: ``loss = sum_c
wq_c (log s - t_c)`` and ``dloss/dz_c = (sum wq) p_c - wq_c``.  A term whose
coefficient is exactly 0 contributes nothing even where ``log p_c = -inf`` (the usual
0 log 0 = 0 convention).  Writing the smoothing sum as ``sum (max - z_c)`` keeps it a
sum of non-negative numbers: no cancellation at logits of 1e4.  Differences of logits
that enter a loss (``t_y``, ``max - z_c``) are formed in float64 (``np.float64``, not
``float()``, which leaves a float32 a float32 in Numba): between float32 logits of
+-3e38 they overflow float32.
"""

from __future__ import annotations

import math

import numpy as np
from numba import carray, njit, prange

from .._cpu_target import narrow_registers
from ._address import pointer_at
from ._ir_only import ir_only
from ._math import REDUCE_FLAGS, fexp, fexp_neg, fkey, flog1p, funkey, like, smax, smin
from ._prefetch import prefetch_row
from ._team import atomic_add
from ._transpose import (
    block_width,
    block_width_in,
    transpose_block,
    transpose_block_in,
    transpose_block_out,
)

# 16 vector registers (AVX2 and below), not 32: see _tile_expsum.
NARROW_REGISTERS = narrow_registers()
# Largest C that takes the transposed small-C path.  bench/bench_small_c.py, fused
# float32, 65536 rows, one thread (median): tiles 1.6 ms vs rows 5.0 ms at C=10, 4.1 vs
# 5.5 at C=24, 5.0 vs 5.7 at C=32, 8.7 vs 6.4 at C=48.
SMALL_C_MAX = 32
# Rows per small-C tile (and per small-C chunk): a multiple of 16 (one AVX-512 vector of
# float32 rows); the class-major buffer is then at most 32 x 128 x 8 B = 32 KiB (L1).
TILE_ROWS = 128
# Elements per chunk on the large-C path (whole rows; at least one row).
ROW_CHUNK_ELEMENTS = 1 << 14
# Partial sums in the storage type are flushed to float64 every SUM_BLOCK elements:
# each vector lane then adds at most SUM_BLOCK/16 float32 numbers.
SUM_BLOCK = 256
# Rows of at most this many bytes are prefetched ahead on the large-C path (see
# xent_index_rows); longer ones were slower with it (8000 and 16000 float32 classes)
PREFETCH_MAX_ROW_BYTES = 16384

# Floating-point flags.  Reassociation (which lets LLVM split a sum across vector lanes)
# is granted only to the small helpers that do nothing but add (_FR): on a whole kernel
# it licenses rewrites such as (x - m) - log(s) -> x - (m + log(s)), which loses the
# precision the kernels are written to keep.  `contract` (FMA) only ever adds accuracy.
# error_model="numpy": a division by zero gives inf/NaN rather than a branch that
# blocks vectorisation.
# Helpers (_F, _FR) are only ever called from other kernels: no CPython or C wrapper
# is generated for them (less to compile on a cold cache).
_NW = {"no_cpython_wrapper": True, "no_cfunc_wrapper": True}
_F = {"fastmath": {"contract"}, "error_model": "numpy", **_NW}
_FR = {"fastmath": REDUCE_FLAGS, "error_model": "numpy", **_NW}
_KW = {"cache": True, "nogil": True, "fastmath": {"contract"}, "error_model": "numpy"}


# --------------------------------------------------------------------------------------
# Work split
# --------------------------------------------------------------------------------------
@njit(**_F, inline="always")
def _row_chunking(nrows, n):
    """(rows per chunk, number of chunks) for chunks of whole rows of about
    ROW_CHUNK_ELEMENTS elements (at least one row): the row path's split."""
    per = smax(1, ROW_CHUNK_ELEMENTS // smax(n, 1))
    return per, (nrows + per - 1) // per


@njit(**_F, inline="always")
def _chunking(nrows, n):
    """(rows per chunk, number of chunks): a function of the shape alone."""
    if n <= SMALL_C_MAX:
        return TILE_ROWS, (nrows + TILE_ROWS - 1) // TILE_ROWS
    return _row_chunking(nrows, n)


def row_path_for(num_classes: int):
    """The kernels' `row_path` argument for C classes: None for the small-C tiles (a
    type, so a call compiles that path alone), 1 for the row path."""
    return None if num_classes <= SMALL_C_MAX else 1


@njit(**_F, inline="always")
def _threads(nchunks, nthreads):
    # nthreads comes from fastsoftmax.get_num_threads() in Python: asking Numba for the
    # thread count in here would make it refuse to cache the kernels.
    return smax(1, smin(nthreads, nchunks))


@njit(**_F, inline="always")
def _ordered_sum(partial):
    total = 0.0
    for c in range(partial.shape[0]):
        total += partial[c]
    return total


# The small-C path's chunks are claimed, not assigned (see _next_chunk).  Each thread's
# segment of chunks is one int64 (its back end in the high 32 bits, its front end in the
# low ones) on a cache line of its own.
WORK_STRIDE = 8
_LOW = (1 << 32) - 1


@njit(**_F, inline="always")
def _work_queue(nchunks, nth):
    """The segments of nchunks chunks for nth threads: thread t's is [t n / nth,
    (t + 1) n / nth), as a static split would give it."""
    # np.empty and a plain loop: in a parallel=True kernel, np.zeros would become a
    # parallel loop of its own (a second fork and join per call)
    work = np.empty(nth * WORK_STRIDE, np.int64)
    for i in range(work.shape[0]):
        work[i] = 0
    for t in range(nth):
        work[t * WORK_STRIDE] = ((t + 1) * nchunks // nth << 32) | (t * nchunks // nth)
    return work


@njit(**_F, inline="always")
def _claim(work, seg, owner):
    """A chunk of segment seg, from its front (its owner) or its back (another thread);
    -1 when the segment is used up.  One atomic add on the packed (back, front) word:
    the old value says whether the claim got a chunk, and a failed claim leaves the
    segment used up."""
    old = atomic_add(work, seg * WORK_STRIDE, 1 if owner else -(1 << 32))
    front, back = old & _LOW, old >> 32
    if front >= back:
        return -1
    return front if owner else back - 1


@njit(**_F, inline="always")
def _next_chunk(work, t, c, k, nchunks):
    """(the chunk thread t does after chunk c, or -1 when none is left; k).  Start with
    c = -1, k = 0.  Serial kernels (work None): c + 1.

    A parallel call's thread works through its own segment from the front, then takes
    the chunks still left in the others' segments from their backs (k counts the
    segments it has used up).  On these VMs a sleeping worker wakes 0.05-1 ms late; with
    fixed halves the caller waited for the worker's whole half after finishing its own
    (60000 x 10 fused, back to back: 1.2 ms on two threads, 1.0 on one, 0.49 with the
    worker kept awake).  Each thread still streams through contiguous memory (chunks
    handed out in turn instead were 1.2x slower).  A chunk's results, and its partial
    loss sum, do not depend on which thread computed it."""
    if work is None:
        return (c + 1 if c + 1 < nchunks else -1), k
    nth = work.shape[0] // WORK_STRIDE
    while k < nth:
        got = _claim(work, (t + k) % nth, k == 0)
        if got >= 0:
            return got, k
        k += 1
    return -1, k


# Claims per thread's segment on the large-C path: a claim is a run of whole chunks, so
# that the look-ahead (see xent_index_rows) spans all but its last row.
CLAIMS_PER_SEGMENT = 8


@njit(**_F, inline="always")
def _row_queue(x, nth):
    """(work queue, chunks per claim) of a parallel large-C call on nth threads: each
    thread's segment cut into about CLAIMS_PER_SEGMENT claims (see _next_chunk)."""
    nchunks = _row_chunking(x.shape[0], x.shape[1])[1]
    per_claim = smax(1, nchunks // (nth * CLAIMS_PER_SEGMENT))
    return _work_queue((nchunks + per_claim - 1) // per_claim, nth), per_claim


@njit(**_F, inline="always")
def _next_rows(x, rq, t, a, k):
    """(claim, k, rows [r0, r1), chunks [c0, c1)) that thread t does after claim a on
    the large-C path (start with a = -1, k = 0; claim -1 when none is left).  rq: the
    call's _row_queue, or None in a serial kernel (one claim: every row)."""
    nrows = x.shape[0]
    per, nchunks = _row_chunking(nrows, x.shape[1])
    if rq is None:
        a = 0 if a < 0 and nchunks > 0 else -1
        return a, k, 0, nrows, 0, nchunks
    work, per_claim = rq
    a, k = _next_chunk(work, t, a, k, (nchunks + per_claim - 1) // per_claim)
    c0 = a * per_claim
    c1 = smin(c0 + per_claim, nchunks)
    return a, k, smin(c0 * per, nrows), smin(c1 * per, nrows), c0, c1


@njit(**_F, inline="always")
def scratch_for(n, dtype):
    """Per-thread scratch of the tiled path for n classes: (buffer in `dtype`, float64
    buffer), whose parts _tile_views and _f64_row name (the one place that knows the
    layout): (4 R + n) + n R numbers in `dtype`, 8 rows of R in float64 (R = TILE_ROWS)."""
    return np.empty((n + 4) * TILE_ROWS + n, dtype), np.empty(8 * TILE_ROWS)


@njit(**_F, inline="always")
def _tile_views(buf, n):
    """The storage-type scratch of scratch_for(n): the transposed tile zt (n x R), the
    row maxima m, the gradient factor ga (per row), the per-class constants gb (n),
    and the per-row sums acc and counts ones of _tile_expsum."""
    R = TILE_ROWS
    zt = buf[: n * R]
    m = buf[n * R : (n + 1) * R]
    ga = buf[(n + 1) * R : (n + 2) * R]
    gb = buf[(n + 2) * R : (n + 2) * R + n]
    acc = buf[(n + 2) * R + n : (n + 3) * R + n]
    ones = buf[(n + 3) * R + n : (n + 4) * R + n]
    return zt, m, ga, gb, acc, ones


@njit(**_F, inline="always")
def _f64_row(f64, k):
    """Row k of the float64 scratch: R per-row numbers (0: sums, 1: their logs, 2-7:
    the kernel's own)."""
    return f64[k * TILE_ROWS : (k + 1) * TILE_ROWS]


@njit(**_F, inline="always")
def _scratch(x):
    """scratch_for x's class count on the tiled path; token buffers on the row path."""
    return scratch_for(x.shape[1] if x.shape[1] <= SMALL_C_MAX else 0, x.dtype)


# --------------------------------------------------------------------------------------
# Row primitives (large-C path)
# --------------------------------------------------------------------------------------
@njit(**_F, inline="always")
def _short_rows(z):
    """Whether z's rows are short enough to prefetch the next ones (see
    xent_index_rows)."""
    return z.shape[1] * z.itemsize <= PREFETCH_MAX_ROW_BYTES


@njit(**_F)
def _row_max(z, i):
    """max(z[i]) exactly, NaN-propagating for NaNs with a clear sign bit (see _math)."""
    mk = fkey(z[i, 0])
    for j in range(1, z.shape[1]):
        k = fkey(z[i, j])
        mk = k if k > mk else mk
    return funkey(mk)


@njit(**_FR)
def _row_expsum(z, i, m):
    """sum_j exp(z[i, j] - m) as (k, d), without storing the exponentials (see
    _row_blocked_sum)."""
    n = z.shape[1]
    nfull = n - n % SUM_BLOCK
    one = like(z, 1.0)
    zero = like(z, 0.0)
    ones = 0.0
    s = 0.0
    for b0 in range(0, nfull, SUM_BLOCK):
        sb = zero
        ob = zero
        for j in range(SUM_BLOCK):
            v = fexp_neg(z[i, b0 + j] - m)
            ob += one if v == one else zero
            sb += zero if v == one else v
        s += sb
        ones += ob
    sb = zero
    ob = zero
    for j in range(nfull, n):
        v = fexp_neg(z[i, j] - m)
        ob += one if v == one else zero
        sb += zero if v == one else v
    return ones + ob, s + sb


@njit(**_FR)
def _row_blocked_sum(a, i):
    """sum_j a[i, j] of exponentials (all in [0, 1]) as the float64 pair (k, d): k terms
    equal to exactly 1 (the row max gives exp(0) = 1) are counted, d is the sum of the
    others.  The row sum is k + d and its log is log1p((k - 1) + d) (_log_kd): a
    confident row's loss is log(1 + d) ~ d, and forming 1 + d first, in float32 partial
    sums (an error of 6e-8) or even in float64 (2e-16), would lose it.  The others are
    added in SUM_BLOCK blocks of storage-type partial sums (each vector lane then adds at
    most SUM_BLOCK/16 numbers), flushed to float64."""
    n = a.shape[1]
    nfull = n - n % SUM_BLOCK
    one = like(a, 1.0)
    zero = like(a, 0.0)
    ones = 0.0
    s = 0.0
    for b0 in range(0, nfull, SUM_BLOCK):
        sb = zero
        ob = zero
        for j in range(SUM_BLOCK):
            v = a[i, b0 + j]
            ob += one if v == one else zero
            sb += zero if v == one else v
        s += sb
        ones += ob
    sb = zero
    ob = zero
    for j in range(nfull, n):
        v = a[i, j]
        ob += one if v == one else zero
        sb += zero if v == one else v
    return ones + ob, s + sb


@njit(**_F, inline="always")
def _true_class_grad(e_y, k, d, coef_y, eps_c, wsum, w_y, scale):
    """scale * dloss/dz_y = scale (coef_y (p_y - 1) + eps_c (W p_y - w_y)), formed in
    float64 without rounding p_y first: p_y - 1 = -(s - e_y) / s, and s - e_y is
    (k - 1) + d when e_y is one of the k terms equal to 1.  For a confident row
    (1 - p_y ~ 1e-11) the float32 product e_y * (1 / s) - 1 would be 0."""
    inv_s = 1.0 / (k + d)
    rest = ((k - 1.0) + d) if e_y == 1.0 else ((k + d) - e_y)
    return scale * (-coef_y * (rest * inv_s) + eps_c * (wsum * (e_y * inv_s) - w_y))


@njit(**_F)
def _log_kd(k, d):
    """log(k + d) for the pair of _row_blocked_sum (k >= 1 unless the row is NaN), as
    log1p((k - 1) + d): k - 1 is an exact integer, so a confident row (k = 1, d tiny)
    keeps all of d, and for k >= 2 the argument is >= 1, where rounding the sum costs
    only the half-ulp of a well-conditioned log.  One log, no division."""
    return math.log1p((k - 1.0) + d)


@njit(**_F)
def _same_memory(a, b):
    """True when b is a itself (the in-place mode); False for b None."""
    if b is None:
        return False
    return a.ctypes.data == b.ctypes.data


@njit(**_F)
def _row_expsum_into(z, i, m, e, inplace):
    """e[i, j] = exp(z[i, j] - m); returns their sum as (k, d) (_row_blocked_sum).  e
    may be z (inplace).

    The exp pass and the sum pass are separate loops (the second over e in L1/L2) so
    that the sum's order, which LLVM's vectoriser picks, is the same function of e in
    both modes: in-place and out-of-place results are bit-identical.  The in-place exp
    loop takes one array: given two that may overlap, LLVM guards the vectorised loop
    with an overlap test and runs scalar code when they do (4x slower)."""
    n = z.shape[1]
    if inplace:
        for j in range(n):
            e[i, j] = fexp_neg(e[i, j] - m)
    else:
        for j in range(n):
            e[i, j] = fexp_neg(z[i, j] - m)
    return _row_blocked_sum(e, i)


@njit(**_F)
def _row_expsum_into_next_max(z, i, m, e):
    """_row_expsum_into(z, i, m, e, False) (e not z) and, in the same loop, the max of
    row i + 1 (as _row_max), which must exist.  The exps are compute-bound and reading
    the next row from memory is not: side by side, the core overlaps them (vocabulary
    rows, fused with out=, 2 threads: 0.83x the time of a separate max pass; the same
    bits, as the sum is _row_blocked_sum's)."""
    n = z.shape[1]
    mk = fkey(z[i + 1, 0])
    for j in range(n):
        e[i, j] = fexp_neg(z[i, j] - m)
        k = fkey(z[i + 1, j])
        mk = k if k > mk else mk
    k, d = _row_blocked_sum(e, i)
    return k, d, funkey(mk)


@njit(**_FR)
def _row_smooth_sum(z, i, m, w):
    """sum_c w_c (m - z[i, c]) in float64, the differences too (see _tile_smooth_sum);
    classes of zero weight are skipped."""
    acc = 0.0
    if w is None:
        for j in range(z.shape[1]):
            acc += np.float64(m) - np.float64(z[i, j])
    else:
        zero = like(z, 0.0)
        for j in range(z.shape[1]):
            wj = w[j]
            acc += wj * (np.float64(m) - np.float64(z[i, j])) if wj != zero else 0.0
    return acc


@njit(**_FR)
def _row_sum(x, i):
    acc = 0.0
    for j in range(x.shape[1]):
        acc += x[i, j]
    return acc


# --------------------------------------------------------------------------------------
# Tile primitives (small-C path): zt[c * TILE_ROWS + r] holds x[a + r, c]
#
# The loops index through per-class slices (zt[c * TILE_ROWS:...][r]) rather than
# zt[c * TILE_ROWS + r]: Numba cannot prove the compound index non-negative and guards
# it against wraparound, which kept LLVM from vectorising these loops (3x slower).
# --------------------------------------------------------------------------------------
# The direction argument of _tile_transfer.  A test on None is settled when Numba
# compiles (see row_path in the module's docstring), so each direction compiles alone.
INTO_TILE = None
OUT_OF_TILE = 1


@njit(**_F)
def _tile_transfer(x, a, nr, zt, direction):
    """Rows [a, a + nr) of the C-contiguous x into zt (direction INTO_TILE) or zt back
    into them (OUT_OF_TILE), W x W blocks at a time, transposed in vector registers (see
    _transpose).  Called directly, not through one-line wrappers: each level of calls
    is compiled and optimised once more on a cold cache."""
    n = x.shape[1]
    xf = x.reshape(x.size)
    R = TILE_ROWS
    if direction is None:
        W = block_width_in(zt)
        for b in range(0, nr, W):
            rows = smin(W, nr - b)
            for cb in range(0, n, W):
                cols = smin(W, n - cb)
                transpose_block_in(xf, (a + b) * n + cb, n, rows, cols, zt, cb * R + b, R)
    elif NARROW_REGISTERS:
        # 8 x 8 blocks, each W-row band's last column block first: its rows' stores may
        # then run on into the next row, which a later store of this call rewrites (up to
        # the tile's last row: past it may be another thread's tile)
        W = block_width_in(zt)
        end = (a + nr) * n
        last = ((n - 1) // W) * W
        for b in range(0, nr, W):
            rows = smin(W, nr - b)
            for cb in range(last, -1, -W):
                cols = smin(W, n - cb)
                transpose_block_out(zt, cb * R + b, R, cols, rows, xf, (a + b) * n + cb, n, end)
    else:
        W = block_width(zt)
        for b in range(0, nr, W):
            rows = smin(W, nr - b)
            for cb in range(0, n, W):
                cols = smin(W, n - cb)
                transpose_block(zt, cb * R + b, R, cols, rows, xf, (a + b) * n + cb, n)


@njit(**_F)
def _tile_max(zt, nr, n, m):
    """m[r] = max_c zt[c, r]: an elementwise max across rows, so it vectorises as is.
    A NaN may or may not win here; either way it makes the row's exp sum NaN later."""
    z0 = zt[:nr]
    for r in range(nr):
        m[r] = z0[r]
    for c in range(1, n):
        zc = zt[c * TILE_ROWS : c * TILE_ROWS + nr]
        for r in range(nr):
            m[r] = smax(m[r], zc[r])


@njit(**_F)
def _tile_expsum(zt, nr, n, m, s, logs, acc, ones):
    """zt <- exp(zt - m[r]); s[r] <- row sums and logs[r] <- their logs (float64).

    As in _row_blocked_sum, terms equal to 1 are counted (`ones`) and the others summed
    (`acc`), both in the storage type: at most SMALL_C_MAX terms, so float32 is exact
    for the counts and within a few ulp for the rest, and 1.6x faster than converting
    every term to float64."""
    one = like(zt, 1.0)
    zero = like(zt, 0.0)
    for r in range(nr):
        acc[r] = zero
        ones[r] = zero
    # With 16 vector registers (AVX2) the exp's constants do not all stay in registers
    # and are loaded again every iteration: there each pass over the rows does two
    # classes, sharing those loads and the load and store of acc[r] and ones[r].  Each
    # sum still adds class c, then c + 1: the same bits.  Fused 60000 x 10 float32, AVX2
    # code: 0.94-0.96x the time (no gain with AVX-512's 32 registers).
    paired = (n // 2) * 2 if NARROW_REGISTERS else 0  # a global: settled at compile time
    for c in range(0, paired, 2):
        z0 = zt[c * TILE_ROWS : c * TILE_ROWS + nr]
        z1 = zt[(c + 1) * TILE_ROWS : (c + 1) * TILE_ROWS + nr]
        for r in range(nr):
            v0 = fexp_neg(z0[r] - m[r])
            v1 = fexp_neg(z1[r] - m[r])
            z0[r] = v0
            z1[r] = v1
            ones[r] = ones[r] + (one if v0 == one else zero) + (one if v1 == one else zero)
            acc[r] = acc[r] + (zero if v0 == one else v0) + (zero if v1 == one else v1)
    for c in range(paired, n):
        zc = zt[c * TILE_ROWS : c * TILE_ROWS + nr]
        for r in range(nr):
            v = fexp_neg(zc[r] - m[r])
            zc[r] = v
            ones[r] += one if v == one else zero
            acc[r] += zero if v == one else v
    for r in range(nr):
        k = float(ones[r])
        d = float(acc[r])
        s[r] = k + d
        logs[r] = flog1p((k - 1.0) + d)


@njit(**_F)
def _tile_smooth_sum(zt, nr, n, m, w, out):
    """out[r] = sum_c w_c (m[r] - zt[c, r]) in float64 (zero weights skipped).

    The differences too are float64 (np.float64: Numba's float() keeps a float32 a
    float32): between float32 logits of +-3e38 the difference overflows float32."""
    zero = like(zt, 0.0)
    for r in range(nr):
        out[r] = 0.0
    for c in range(n):
        wc = like(zt, 1.0) if w is None else w[c]
        if wc == zero:
            continue
        zc = zt[c * TILE_ROWS : c * TILE_ROWS + nr]
        for r in range(nr):
            out[r] += wc * (np.float64(m[r]) - np.float64(zc[r]))


@njit(**_F)
def _tile_softmax(x, a, nr, buf, f64):
    """zt <- exp(x - max) of rows [a, a + nr), transposed; returns zt and views of the
    row maxima, sums and log-sums."""
    n = x.shape[1]
    zt, m, _, _, acc, ones = _tile_views(buf, n)
    _tile_transfer(x, a, nr, zt, INTO_TILE)
    _tile_max(zt, nr, n, m)
    s, logs = _f64_row(f64, 0), _f64_row(f64, 1)
    _tile_expsum(zt, nr, n, m, s, logs, acc, ones)
    return zt, m, s, logs


# --------------------------------------------------------------------------------------
# Target statistics (class-index targets): validation and the mean's denominator
# --------------------------------------------------------------------------------------
def _target_stats(y, w, num_classes, ignore_index):
    """(first bad row or -1, sum of weights of the non-ignored rows).

    The counting loop has no early exit, so it vectorises (60000 targets: 12 against
    52 us for a loop that returns at the first bad row); the bad row is looked for only
    when there is one."""
    count = 0
    nbad = 0
    for i in range(y.shape[0]):
        yi = y[i]
        keep = yi != ignore_index
        count += 1 if keep else 0
        nbad += 1 if keep and (yi < 0 or yi >= num_classes) else 0
    if nbad:
        for i in range(y.shape[0]):
            yi = y[i]
            if yi != ignore_index and (yi < 0 or yi >= num_classes):
                return i, 0.0
    if w is None:
        return -1, float(count)
    denom = 0.0
    for i in range(y.shape[0]):
        yi = y[i]
        if yi != ignore_index:
            denom += w[yi]
    return -1, denom


# the public kernel, and the same function compiled as a helper for xent_index_minibatch
target_stats = njit(cache=True, nogil=True)(_target_stats)
_target_stats_helper = njit(**_F)(_target_stats)


# --------------------------------------------------------------------------------------
# Cross-entropy, class-index targets
# --------------------------------------------------------------------------------------
@njit(**_F)
def xent_index_rows(z, y, w, wsum, ignore, eps, scale, loss, g, r0, r1):
    """Large-C path over rows [r0, r1).  g is None for the forward-only kernel; eps is
    None without label smoothing (see fastsoftmax._numba.xent_index)."""
    n = z.shape[1]
    # eps None (no smoothing) is a type: the smoothing sums below are then not compiled
    eps_f = 0.0 if eps is None else float(eps)
    eps_c = eps_f / n
    inplace = _same_memory(z, g)
    # a row's max is found during the previous row's exp pass where that pass stores
    # into a separate g (see _row_expsum_into_next_max), else at the row itself
    m_next = like(z, 0.0)
    have_next = False
    for i in range(r0, r1):
        yi = y[i]
        if yi == ignore:
            loss[i] = 0.0
            if g is not None:
                for j in range(n):
                    g[i, j] = like(g, 0.0)
            have_next = False
            continue
        m = m_next if have_next else _row_max(z, i)
        have_next = False
        coef_y = (1.0 - eps_f) * (1.0 if w is None else float(w[yi]))
        ty = np.float64(z[i, yi]) - np.float64(m)  # see _tile_smooth_sum
        smooth = 0.0
        if eps is not None:
            if eps_c != 0.0:
                smooth = _row_smooth_sum(z, i, m, w)
        # all of z[i] has been read: g may now overwrite it (in-place mode)
        if g is None:
            if i + 1 < r1 and _short_rows(z):  # the next row streams in during the exps
                prefetch_row(z, i + 1, False)
            k, d = _row_expsum(z, i, m)
        elif i + 1 < r1 and not inplace:
            k, d, m_next = _row_expsum_into_next_max(z, i, m, g)
            have_next = True
            # Short rows (C = 1000: 4 KB) give the look-ahead little to overlap with:
            # the sum and scale passes below run from L1 while memory idles.  Asking
            # now for the row after next (read) and the next gradient row (owned, for
            # its stores) keeps memory busy through them: 8192 x 1000 float32 fused,
            # 2 threads, 0.78-1.0x the time (median of 11 alternated rounds 0.94x;
            # AVX2 code 0.81-1.08x, median 0.89x); the same bits.  The gradient's
            # prefetch alone was slower (1.2x).
            if i + 2 < r1 and _short_rows(z):
                prefetch_row(z, i + 2, False)
                prefetch_row(g, i + 1, True)
        else:
            k, d = _row_expsum_into(z, i, m, g, inplace)
        s = k + d
        logs = _log_kd(k, d)
        row = coef_y * (logs - ty) if coef_y != 0.0 else 0.0
        loss[i] = row + (eps_c * (wsum * logs + smooth) if eps_c != 0.0 else 0.0)
        if g is not None:
            e_y = float(g[i, yi])
            ga = like(g, scale * (coef_y + eps_c * wsum) / s)
            gb = like(g, scale * eps_c)
            if w is None:
                for j in range(n):
                    g[i, j] = g[i, j] * ga - gb
            else:
                for j in range(n):
                    g[i, j] = g[i, j] * ga - gb * w[j]
            w_y = 1.0 if w is None else float(w[yi])
            g[i, yi] = like(g, _true_class_grad(e_y, k, d, coef_y, eps_c, wsum, w_y, scale))


def _xent_index_tiles(
    z, y, w, wsum, ignore, eps, scale, loss, g,
    r0=0, r1=0, buf=None, f64=None, partial=None, work=None, t=0,
):  # fmt: skip
    """Small-C path over rows [r0, r1), TILE_ROWS rows at a time, transposed.

    Thread t does the tiles it claims (_next_chunk; work None: every tile, in order).
    partial: None, or the call's partial loss sums, one per tile (the tiles are then the
    call's chunks: r0 = 0, r1 = all rows).
    The tiles of a call go through one call of this function, which builds its views
    and constants once: one call per tile cost 10% more time at 60000 x 10 (1 thread).

    With buf None (the defaults after the first nine arguments) it is the serial
    kernel (xent_index_serial): every row, with scratch and one partial loss sum per
    tile of its own, returning their sum in tile order (as xent_index adds them).  Compiled as
    the entry itself rather than a callee of a serial wrapper, the first call compiles
    the tile path one level less deep (see docs/threads-and-cold-start.md).

    The per-row work is written so that LLVM vectorises it: target lookups (gathers)
    sit in one short scalar loop of their own, rows are indexed through slices and
    flat views with unsigned indices (no negative-index wraparound), and the loop
    that forms each row's loss and gradient factors reads only per-row buffers and
    selects rather than branches.  22% less time at 60000 x 10 float32 than a loop that
    did it all per row (bench: same bits)."""
    n = z.shape[1]
    R = TILE_ROWS
    # buf None (the serial kernel) is a type: each case compiles alone
    if buf is None:
        rows0, rows1 = 0, z.shape[0]
        tile_buf, tile_f64 = _scratch(z)
        sums = np.empty(_chunking(rows1, n)[1])
    else:
        rows0, rows1, tile_buf, tile_f64 = r0, r1, buf, f64
    # eps None (no smoothing) is a type: _tile_smooth_sum is then not compiled
    eps_f = 0.0 if eps is None else float(eps)
    eps_c = eps_f / n
    zero = like(z, 0.0)
    zt, m, ga, gb, acc, ones = _tile_views(tile_buf, n)  # gb: scale (eps/C) w_c
    s, logs = _f64_row(tile_f64, 0), _f64_row(tile_f64, 1)
    ty = _f64_row(tile_f64, 2)  # z[y] - max
    coef = _f64_row(tile_f64, 3)  # (1 - eps) w_y; 0 for ignored rows
    valid = _f64_row(tile_f64, 4)  # 1.0 unless the row is ignored
    smooth = _f64_row(tile_f64, 5)
    g_y = _f64_row(tile_f64, 6)  # exp(z[y] - max), then the gradient at the target
    w_y = _f64_row(tile_f64, 7)  # w[y] (1 without weights)
    # Read by the vectorised loop even without smoothing (whose term it then discards):
    # uninitialised memory there could hold subnormals, ~100x slower arithmetic.
    for r in range(R):
        smooth[r] = 0.0
    for c in range(n):
        gb[c] = like(z, scale * eps_c * (1.0 if w is None else float(w[c])))
    zf = z.reshape(z.size)
    gf = None if g is None else g.reshape(g.size)  # not zf: a read-only z would make gf read-only
    ntiles = (rows1 - rows0 + R - 1) // R
    tile, used = _next_chunk(work, t, -1, 0, ntiles)
    while tile >= 0:
        a = rows0 + tile * R
        nr = smin(R, rows1 - a)
        yt = y[a : a + nr]
        _tile_transfer(z, a, nr, zt, INTO_TILE)
        _tile_max(zt, nr, n, m)
        if eps is not None:
            if eps_c != 0.0:
                _tile_smooth_sum(zt, nr, n, m, w, smooth)
        for r in range(nr):
            yi = yt[r]
            ok = yi != ignore
            wy = 1.0 if w is None else float(w[yi if ok else 0])
            valid[r] = 1.0 if ok else 0.0
            w_y[r] = wy
            coef[r] = (1.0 - eps_f) * wy if ok else 0.0
        _tile_expsum(zt, nr, n, m, s, logs, acc, ones)
        # the target's logit (from z: zt now holds the exps) and its exp
        for r in range(nr):
            yi = yt[r]
            yc = yi if yi != ignore else 0
            ty[r] = np.float64(zf[np.uintp((a + r) * n + yc)]) - np.float64(m[r])
            g_y[r] = float(zt[np.uintp(yc * R + r)])
        # per-row loss and gradient factors, vectorised across rows
        lt = loss[a : a + nr]
        for r in range(nr):
            cy = coef[r]
            lg = logs[r]
            v = cy * (lg - ty[r])
            row = v if cy != 0.0 else 0.0
            v = eps_c * (wsum * lg + smooth[r])
            row += v if eps_c != 0.0 else 0.0
            ok = valid[r] != 0.0
            lt[r] = row if ok else 0.0
            gar = like(z, scale * (cy + eps_c * wsum) / s[r])
            ga[r] = gar if ok else zero
            k, d = float(ones[r]), float(acc[r])
            e_y = like(z, g_y[r])
            g_y[r] = _true_class_grad(e_y, k, d, cy, eps_c, wsum, w_y[r], scale)
        if g is not None:
            # g = (a p - b) scale, formed in the transposed buffer and transposed back
            for c in range(n):
                gbc = gb[c]
                zc = zt[c * R : c * R + nr]
                for r in range(nr):
                    zc[r] = zc[r] * ga[r] - gbc
            _tile_transfer(g, a, nr, zt, OUT_OF_TILE)
            for r in range(nr):
                yi = yt[r]
                row0 = (a + r) * n
                if yi != ignore:
                    gf[np.uintp(row0 + yi)] = like(z, g_y[r])
                else:
                    for c in range(n):
                        gf[np.uintp(row0 + c)] = zero
        if buf is None:
            _chunk_loss(loss, sums, tile, R)
        elif partial is not None:
            _chunk_loss(loss, partial, tile, R)
        tile, used = _next_chunk(work, t, tile, used, ntiles)
    if buf is None:
        return _ordered_sum(sums)
    return 0.0


xent_index_tiles = njit(**_F)(_xent_index_tiles)


@njit(**_F)
def xent_tile_class_major(zp, nr, y, scale, loss, buf, f64):
    """One tile of xent_index_tiles (without class weights, label smoothing or ignored
    rows: the same operations, so the same bits) on logits that are already
    class-major, as the trainer's class split exchanges them: zp (C, >= nr), zp[c, r]
    the logit of row r < nr <= TILE_ROWS for class c; y the rows' labels.  loss[r]
    gets row r's loss; returns the (C, TILE_ROWS) class-major gradient, scale (softmax -
    onehot), in buf (scratch_for(C)).  The logits go straight into the tile: no
    transposes into rows and back."""
    C = zp.shape[0]
    R = TILE_ROWS
    zt, m, ga, _, acc, ones = _tile_views(buf, C)
    s, logs = _f64_row(f64, 0), _f64_row(f64, 1)
    ty = _f64_row(f64, 2)  # z[y] - max
    g_y = _f64_row(f64, 6)  # exp(z[y] - max), then the gradient at the target
    for c in range(C):
        src = zp[c]
        dst = zt[c * R : c * R + nr]
        for r in range(nr):
            dst[r] = src[r]
    _tile_max(zt, nr, C, m)
    _tile_expsum(zt, nr, C, m, s, logs, acc, ones)
    for r in range(nr):
        yc = y[r]
        ty[r] = np.float64(zp[yc, r]) - np.float64(m[r])
        g_y[r] = float(zt[np.uintp(yc * R + r)])
    for r in range(nr):
        # as xent_index_tiles with coefficient 1, no smoothing (its "+ 0.0" included)
        row = 1.0 * (logs[r] - ty[r])
        row += 0.0
        loss[r] = row
        ga[r] = like(zt, scale / s[r])
        e_y = like(zt, g_y[r])
        g_y[r] = _true_class_grad(e_y, float(ones[r]), float(acc[r]), 1.0, 0.0, 0.0, 1.0, scale)
    for c in range(C):
        zc = zt[c * R : c * R + nr]
        for r in range(nr):
            zc[r] = zc[r] * ga[r]
    for r in range(nr):
        zt[np.uintp(y[r] * R + r)] = like(zt, g_y[r])
    return zt.reshape((C, R))


@njit(**_F, inline="always")
def _chunk_loss(loss, partial, c, per):
    """partial[c] = the sum of chunk c's row losses (rows [c per, c per + per)), in a
    fixed order: four running sums (rows i mod 4 after the chunk's first), added
    pairwise.  One running sum is a chain of dependent float64 adds (128 x 4 cycles a
    small-C tile, 7% of a 60000 x 10 call); four overlap."""
    i0 = c * per
    i1 = smin(i0 + per, loss.shape[0])
    full = i0 + (i1 - i0) // 4 * 4
    a0 = a1 = a2 = a3 = 0.0
    for i in range(i0, full, 4):
        a0 += loss[i]
        a1 += loss[i + 1]
        a2 += loss[i + 2]
        a3 += loss[i + 3]
    for i in range(full, i1):
        a0 += loss[i]
    partial[c] = (a0 + a1) + (a2 + a3)


@njit(**_F, inline="always")
def _xent_index_run(z, y, w, wsum, ignore, eps, scale, loss, g, partial, work, t):
    """Thread t on the small-C path: the tiles it claims (_next_chunk), one partial loss
    sum per tile."""
    buf, f64 = _scratch(z)
    nr = z.shape[0]
    xent_index_tiles(z, y, w, wsum, ignore, eps, scale, loss, g, 0, nr, buf, f64, partial, work, t)


@njit(**_F, inline="always")
def _xent_index_wide_run(z, y, w, wsum, ignore, eps, scale, loss, g, partial, rq, t):
    """Thread t on the large-C path: the runs of chunks it claims (_next_rows), each in
    one xent_index_rows call (look-ahead), then one partial loss sum per chunk, as
    _xent_index_run adds them."""
    per = _row_chunking(z.shape[0], z.shape[1])[0]
    a, k, r0, r1, c0, c1 = _next_rows(z, rq, t, -1, 0)
    while a >= 0:
        xent_index_rows(z, y, w, wsum, ignore, eps, scale, loss, g, r0, r1)
        for c in range(c0, c1):
            _chunk_loss(loss, partial, c, per)
        a, k, r0, r1, c0, c1 = _next_rows(z, rq, t, a, k)


@njit(**_KW, parallel=True)
def xent_index_wide(z, y, w, wsum, ignore, eps, scale, loss, g, nthreads):
    """xent_index for C > SMALL_C_MAX (the row path alone: a first call compiles no
    tile code, and the other way round)."""
    partial = np.empty(_row_chunking(z.shape[0], z.shape[1])[1])
    rq = _row_queue(z, _threads(partial.shape[0], nthreads))
    for t in prange(rq[0].shape[0] // WORK_STRIDE):
        i = np.int64(t)
        _xent_index_wide_run(z, y, w, wsum, ignore, eps, scale, loss, g, partial, rq, i)
    return _ordered_sum(partial)


def _xent_index_wide_serial(z, y, w, wsum, ignore, eps, scale, loss, g):
    partial = np.empty(_row_chunking(z.shape[0], z.shape[1])[1])
    _xent_index_wide_run(z, y, w, wsum, ignore, eps, scale, loss, g, partial, None, 0)
    return _ordered_sum(partial)


@njit(**_KW, parallel=True)
def xent_index(z, y, w, wsum, ignore, eps, scale, loss, g, nthreads):
    """Per-row loss into `loss` (float64); scaled gradient into `g` unless it is None;
    C <= SMALL_C_MAX (xent_index_wide above).  Returns the float64 sum of the row
    losses, added in chunk order."""
    partial = np.empty(_chunking(z.shape[0], z.shape[1])[1])
    nth = _threads(partial.shape[0], nthreads)
    work = _work_queue(partial.shape[0], nth)
    for t in prange(nth):
        i = np.int64(t)
        _xent_index_run(z, y, w, wsum, ignore, eps, scale, loss, g, partial, work, i)
    return _ordered_sum(partial)


# the serial kernels (on the small-C path the tile kernel itself, buf None: one level
# less to compile); the large-C body is also inlined into its minibatch kernel below
xent_index_serial = njit(**_KW)(_xent_index_tiles)
xent_index_wide_serial = njit(**_KW)(_xent_index_wide_serial)
_rows_serial = njit(**_F, inline="always")(_xent_index_wide_serial)


@njit(**_F, inline="always")
def _minibatch_scale(z, y, ignore, mean):
    """(first bad target row or -1, the "mean"'s denominator, the gradient's scale)."""
    bad, denom = _target_stats_helper(y, None, z.shape[1], ignore)
    return bad, denom, ((1.0 / denom if denom else 0.0) if mean else 1.0)


@njit(**_F, inline="always")
def _minibatch_loss(total, denom, mean):
    if not mean:
        return total
    return total / denom if denom else 0.0


def _xent_index_minibatch(z, y, ignore, mean, g):
    """A classifier's minibatch in one call (fastsoftmax.torch's eager path, where each
    dispatch from Python costs several us), C <= SMALL_C_MAX: class indices without
    weights or smoothing, checked as by target_stats, then xent_index_serial's work
    with "mean"'s or "sum"'s scale.  Returns (first bad row or -1, the reduced loss in
    float64); nothing is written when a target is bad.  Bit-identical to target_stats,
    xent_index_serial and the reduction done in Python."""
    bad, denom, scale = _minibatch_scale(z, y, ignore, mean)
    if bad >= 0:
        return bad, 0.0
    loss = np.empty(z.shape[0])
    # the tile kernel with buf None: xent_index_serial's work
    total = xent_index_tiles(z, y, None, float(z.shape[1]), ignore, None, scale, loss, g)
    return -1, _minibatch_loss(total, denom, mean)


def _xent_index_minibatch_wide(z, y, ignore, mean, g):
    """xent_index_minibatch for C > SMALL_C_MAX (xent_index_wide_serial's work)."""
    bad, denom, scale = _minibatch_scale(z, y, ignore, mean)
    if bad >= 0:
        return bad, 0.0
    loss = np.empty(z.shape[0])
    total = _rows_serial(z, y, None, float(z.shape[1]), ignore, None, scale, loss, g)
    return -1, _minibatch_loss(total, denom, mean)


xent_index_minibatch = njit(**_KW)(_xent_index_minibatch)
xent_index_minibatch_wide = njit(**_KW)(_xent_index_minibatch_wide)
# inlined into the address entry points below: each compiles alone
_minibatch_inline = njit(**_F, inline="always")(_xent_index_minibatch)
_minibatch_wide_inline = njit(**_F, inline="always")(_xent_index_minibatch_wide)


# The minibatch kernels on buffers given by their addresses, for a caller that holds
# no NumPy arrays (fastsoftmax.torch's tensors): making the three arrays and Numba's
# typing of them cost ~2 us of a ~4 us call at 64 x 10; integers are typed at once.
# z: (n, c) float32 (f32) or float64 (f64); y: (n,) int64; g: z's shape and dtype;
# C-contiguous, g overlapping neither.  One function per dtype and path, each a
# specialisation of its own in Numba's cache (the integers' types alone would not tell
# them apart).
@njit(**_F, inline="always")
def _arrays_at(z_at, y_at, g_at, n, c, dtype):
    z = carray(pointer_at(z_at, dtype), (n, c))
    g = carray(pointer_at(g_at, dtype), (n, c))
    return z, carray(pointer_at(y_at, np.int64), (n,)), g


@njit(**_KW)
def xent_index_minibatch_f32_at(z_at, y_at, g_at, n, c, ignore, mean):
    z, y, g = _arrays_at(z_at, y_at, g_at, n, c, np.float32)
    return _minibatch_inline(z, y, ignore, mean, g)


@njit(**_KW)
def xent_index_minibatch_f64_at(z_at, y_at, g_at, n, c, ignore, mean):
    z, y, g = _arrays_at(z_at, y_at, g_at, n, c, np.float64)
    return _minibatch_inline(z, y, ignore, mean, g)


@njit(**_KW)
def xent_index_minibatch_wide_f32_at(z_at, y_at, g_at, n, c, ignore, mean):
    z, y, g = _arrays_at(z_at, y_at, g_at, n, c, np.float32)
    return _minibatch_wide_inline(z, y, ignore, mean, g)


@njit(**_KW)
def xent_index_minibatch_wide_f64_at(z_at, y_at, g_at, n, c, ignore, mean):
    z, y, g = _arrays_at(z_at, y_at, g_at, n, c, np.float64)
    return _minibatch_wide_inline(z, y, ignore, mean, g)


# --------------------------------------------------------------------------------------
# Cross-entropy, probability targets (row path for every C)
# --------------------------------------------------------------------------------------
@njit(**_F)
def _prob_coef(q, w, i, j, keep, eps_c):
    c = keep * q[i, j] + eps_c
    return c if w is None else w[j] * c


@njit(**_FR)
def _prob_row_sums(z, q, w, i, m, keep, eps_c):
    """(sum_c wq_c, sum_c wq_c (m - z_c)) in float64, the differences too (see
    _tile_smooth_sum); zero coefficients skipped."""
    zero = like(z, 0.0)
    a = 0.0
    lin = 0.0
    for j in range(z.shape[1]):
        wq = _prob_coef(q, w, i, j, keep, eps_c)
        a += wq
        lin += wq * (np.float64(m) - np.float64(z[i, j])) if wq != zero else 0.0
    return a, lin


@njit(**_F, inline="always")
def _xent_prob_run(z, q, w, eps, scale, loss, g, partial, rq, t):
    """Thread t: the chunks it claims (_next_rows)."""
    nrows, n = z.shape
    per = _row_chunking(nrows, n)[0]
    keep = like(z, 1.0 - eps)
    eps_c = like(z, eps / n)
    inplace = _same_memory(z, g)
    a, k, _, _, c0, c1 = _next_rows(z, rq, t, -1, 0)
    while a >= 0:
        for c in range(c0, c1):
            _prob_chunk(z, q, w, scale, loss, g, partial, keep, eps_c, inplace, c, per)
        a, k, _, _, c0, c1 = _next_rows(z, rq, t, a, k)


@njit(**_F, inline="always")
def _prob_chunk(z, q, w, scale, loss, g, partial, keep, eps_c, inplace, c, per):
    """Chunk c of the probability-target kernel; its partial loss sum into partial[c].
    No look-ahead here (see xent_index_rows): with q's row as well, rows of 128k
    classes no longer stay in L2 (AVX2 code 1.09x slower at 1024 x 128256)."""
    n = z.shape[1]
    acc = 0.0
    for i in range(c * per, smin(c * per + per, z.shape[0])):
        m = _row_max(z, i)
        if i + 1 < z.shape[0] and _short_rows(z):  # see xent_index_rows
            prefetch_row(z, i + 1, False)
            prefetch_row(q, i + 1, False)
        a, lin = _prob_row_sums(z, q, w, i, m, keep, eps_c)
        if g is None:
            k, d = _row_expsum(z, i, m)
        else:
            k, d = _row_expsum_into(z, i, m, g, inplace)
        s = k + d
        row = a * _log_kd(k, d) + lin
        loss[i] = row
        acc += row
        if g is not None:
            ga = like(g, scale * a / s)
            gs = like(g, scale)
            for j in range(n):
                g[i, j] = g[i, j] * ga - gs * _prob_coef(q, w, i, j, keep, eps_c)
    partial[c] = acc


@njit(**_F)
def _prob_chunks(z):
    """One partial loss per row chunk (probability targets take the row path)."""
    return np.empty(_row_chunking(z.shape[0], z.shape[1])[1])


@njit(**_KW, parallel=True)
def xent_prob(z, q, w, eps, scale, loss, g, nthreads):
    """Probability-target cross-entropy; same contract as :func:`xent_index`."""
    partial = _prob_chunks(z)
    rq = _row_queue(z, _threads(partial.shape[0], nthreads))
    for t in prange(rq[0].shape[0] // WORK_STRIDE):
        _xent_prob_run(z, q, w, eps, scale, loss, g, partial, rq, np.int64(t))
    return _ordered_sum(partial)


@njit(**_KW)
def xent_prob_serial(z, q, w, eps, scale, loss, g):
    partial = _prob_chunks(z)
    _xent_prob_run(z, q, w, eps, scale, loss, g, partial, None, 0)
    return _ordered_sum(partial)


# --------------------------------------------------------------------------------------
# softmax, log_softmax, logsumexp
# --------------------------------------------------------------------------------------
@njit(**_F, inline="always")
def _claimed_rows(rows_fn, x, out, rq, t):
    """rows_fn(x, out, r0, r1) over the runs of rows thread t claims (_next_rows)."""
    a, k, r0, r1, _, _ = _next_rows(x, rq, t, -1, 0)
    while a >= 0:
        rows_fn(x, out, r0, r1)
        a, k, r0, r1, _, _ = _next_rows(x, rq, t, a, k)


@njit(**_F, inline="always")
def _softmax_run(x, out, work, t):
    """Thread t on the small-C path: the tiles it claims (_next_chunk)."""
    nrows, n = x.shape
    per, nchunks = _chunking(nrows, n)
    buf, f64 = _scratch(x)
    c, k = _next_chunk(work, t, -1, 0, nchunks)
    while c >= 0:
        r0 = c * per
        nr = smin(r0 + per, nrows) - r0
        zt, m, s, _ = _tile_softmax(x, r0, nr, buf, f64)
        inv = m  # m is no longer needed
        for r in range(nr):
            inv[r] = like(x, 1.0 / s[r])
        for j in range(n):
            zc = zt[j * TILE_ROWS : j * TILE_ROWS + nr]
            for r in range(nr):
                zc[r] = zc[r] * inv[r]
        _tile_transfer(out, r0, nr, zt, OUT_OF_TILE)
        c, k = _next_chunk(work, t, c, k, nchunks)


@njit(**_F)
def _softmax_rows(x, out, r0, r1):
    """Large-C softmax of rows [r0, r1), each row's max found during the previous
    row's exp pass unless out is x (see _row_expsum_into_next_max)."""
    n = x.shape[1]
    inplace = _same_memory(x, out)
    m_next = like(x, 0.0)
    have_next = False
    for i in range(r0, r1):
        m = m_next if have_next else _row_max(x, i)
        have_next = i + 1 < r1 and not inplace
        if have_next:
            k, d, m_next = _row_expsum_into_next_max(x, i, m, out)
            if i + 2 < r1 and _short_rows(x):  # see xent_index_rows
                prefetch_row(x, i + 2, False)
                prefetch_row(out, i + 1, True)
        else:
            k, d = _row_expsum_into(x, i, m, out, inplace)
        inv = like(out, 1.0 / (k + d))
        for j in range(n):
            out[i, j] *= inv


@njit(**_KW, parallel=True)
def softmax(x, out, nthreads):
    """out = softmax(x) along axis 1, C <= SMALL_C_MAX; out may be x."""
    nchunks = _chunking(x.shape[0], x.shape[1])[1]
    nth = _threads(nchunks, nthreads)
    work = _work_queue(nchunks, nth)
    for t in prange(nth):
        _softmax_run(x, out, work, np.int64(t))


@njit(**_KW)
def softmax_serial(x, out):
    if x.shape[0]:
        _softmax_run(x, out, None, 0)


@njit(**_KW, parallel=True)
def softmax_wide(x, out, nthreads):
    """softmax for C > SMALL_C_MAX (the row path alone: a first call compiles no
    tile code, and the other way round)."""
    rq = _row_queue(x, _threads(_row_chunking(x.shape[0], x.shape[1])[1], nthreads))
    for t in prange(rq[0].shape[0] // WORK_STRIDE):
        _claimed_rows(_softmax_rows, x, out, rq, np.int64(t))


@njit(**_KW)
def softmax_wide_serial(x, out):
    _softmax_rows(x, out, 0, x.shape[0])


@njit(**_F)
def _lse_block(x, a, r1, buf, f64, shift, logs):
    """shift[r] = max and logs[r] = log(sum(exp(x - max))) for the tile of rows from a
    (small C).  Returns the number of rows done."""
    nr = smin(TILE_ROWS, r1 - a)
    _, m, _, tile_logs = _tile_softmax(x, a, nr, buf, f64)
    for r in range(nr):
        shift[r] = m[r]
        logs[r] = tile_logs[r]
    return nr


@njit(**_F)
def _row_lse(x, i):
    """(max of row i, log(sum(exp(x[i] - max))) in float64).  No look-ahead (see
    xent_index_rows): taking the next row's max inside the exp sum's loop made AVX2
    code 1.2-1.6x slower (AVX-512: 0.8-0.93x), and reading it before row i's output is
    written, 1.18x at 128k classes (row i leaves L2)."""
    m = _row_max(x, i)
    if i + 1 < x.shape[0] and _short_rows(x):  # the next row streams in during the exps
        prefetch_row(x, i + 1, False)
    k, d = _row_expsum(x, i, m)
    return m, _log_kd(k, d)


@njit(**_F)
def _log_softmax_rows(x, out, r0, r1):
    """Large-C log_softmax of rows [r0, r1) (out may be x)."""
    n = x.shape[1]
    inplace = _same_memory(x, out)
    for i in range(r0, r1):
        m, logs = _row_lse(x, i)
        ls = like(x, logs)
        # (x - max) - log(s): see _log_softmax_run
        if inplace:
            for j in range(n):
                out[i, j] = (out[i, j] - m) - ls
        else:
            for j in range(n):
                out[i, j] = (x[i, j] - m) - ls


@njit(**_F)
def _logsumexp_rows(x, out, r0, r1):
    """Large-C logsumexp of rows [r0, r1)."""
    for i in range(r0, r1):
        m, logs = _row_lse(x, i)
        v = float(m) + logs
        out[i] = v if np.isfinite(v) else _lse_nonfinite(x, i, v)


@njit(**_F, inline="always")
def _log_softmax_run(x, out, work, t):
    nrows, n = x.shape
    per, nchunks = _chunking(nrows, n)
    inplace = _same_memory(x, out)
    buf, f64 = _scratch(x)
    shift = _f64_row(f64, 2)
    logs = _f64_row(f64, 3)
    c, k = _next_chunk(work, t, -1, 0, nchunks)
    while c >= 0:
        a = c * per
        r1 = smin(a + per, nrows)
        while a < r1:
            nr = _lse_block(x, a, r1, buf, f64, shift, logs)
            for r in range(nr):
                # (x - max) - log(s), not x - (max + log(s)): x - max is exact for the
                # entries that matter, so the result keeps full relative precision
                # even at |x| ~ 1e4 in float32
                m = like(x, shift[r])
                ls = like(x, logs[r])
                if inplace:  # one array: see _row_expsum_into
                    for j in range(n):
                        out[a + r, j] = (out[a + r, j] - m) - ls
                else:
                    for j in range(n):
                        out[a + r, j] = (x[a + r, j] - m) - ls
            a += nr
        c, k = _next_chunk(work, t, c, k, nchunks)


@njit(**_F, inline="always")
def _logsumexp_run(x, out, work, t):
    nrows, n = x.shape
    per, nchunks = _chunking(nrows, n)
    buf, f64 = _scratch(x)
    shift = _f64_row(f64, 2)
    logs = _f64_row(f64, 3)
    c, k = _next_chunk(work, t, -1, 0, nchunks)
    while c >= 0:
        a = c * per
        r1 = smin(a + per, nrows)
        while a < r1:
            nr = _lse_block(x, a, r1, buf, f64, shift, logs)
            for r in range(nr):
                v = shift[r] + logs[r]
                out[a + r] = v if np.isfinite(v) else _lse_nonfinite(x, a + r, v)
            a += nr
        c, k = _next_chunk(work, t, c, k, nchunks)


@njit(**_F)
def _lse_nonfinite(x, i, v):
    """logsumexp of a row whose stable formula gave inf or NaN: the conventions of scipy
    and PyTorch (all -inf -> -inf; +inf and no NaN -> +inf; else NaN)."""
    m = _row_max(x, i)
    if np.isfinite(m):
        return v  # a finite max: the formula's result stands (NaN from a NaN entry)
    if m == -np.inf or m == np.inf:
        # the max key orders a NaN with its sign bit set (x86's inf - inf) below -inf
        for j in range(x.shape[1]):
            if np.isnan(x[i, j]):
                return np.nan
        return m
    return np.nan


@njit(**_KW, parallel=True)
def log_softmax(x, out, nthreads):
    """out = log_softmax(x) along axis 1; out may be x; C <= SMALL_C_MAX."""
    nchunks = _chunking(x.shape[0], x.shape[1])[1]
    nth = _threads(nchunks, nthreads)
    work = _work_queue(nchunks, nth)
    for t in prange(nth):
        _log_softmax_run(x, out, work, np.int64(t))


@njit(**_KW)
def log_softmax_serial(x, out):
    if x.shape[0]:
        _log_softmax_run(x, out, None, 0)


@njit(**_KW, parallel=True)
def log_softmax_wide(x, out, nthreads):
    """log_softmax for C > SMALL_C_MAX (the row path alone)."""
    rq = _row_queue(x, _threads(_row_chunking(x.shape[0], x.shape[1])[1], nthreads))
    for t in prange(rq[0].shape[0] // WORK_STRIDE):
        _claimed_rows(_log_softmax_rows, x, out, rq, np.int64(t))


@njit(**_KW)
def log_softmax_wide_serial(x, out):
    _log_softmax_rows(x, out, 0, x.shape[0])


@njit(**_KW, parallel=True)
def logsumexp(x, out, nthreads):
    """out[i] = log(sum_j exp(x[i, j])), stably (see _lse_nonfinite); C <= SMALL_C_MAX."""
    nchunks = _chunking(x.shape[0], x.shape[1])[1]
    nth = _threads(nchunks, nthreads)
    work = _work_queue(nchunks, nth)
    for t in prange(nth):
        _logsumexp_run(x, out, work, np.int64(t))


@njit(**_KW)
def logsumexp_serial(x, out):
    if x.shape[0]:
        _logsumexp_run(x, out, None, 0)


@njit(**_KW, parallel=True)
def logsumexp_wide(x, out, nthreads):
    """logsumexp for C > SMALL_C_MAX (the row path alone)."""
    rq = _row_queue(x, _threads(_row_chunking(x.shape[0], x.shape[1])[1], nthreads))
    for t in prange(rq[0].shape[0] // WORK_STRIDE):
        _claimed_rows(_logsumexp_rows, x, out, rq, np.int64(t))


@njit(**_KW)
def logsumexp_wide_serial(x, out):
    _logsumexp_rows(x, out, 0, x.shape[0])


# --------------------------------------------------------------------------------------
# Backward (vector-Jacobian products): no exp on the hot path but log_softmax's, and
# rows that vectorise plainly, so one row loop serves every C.
# --------------------------------------------------------------------------------------
@njit(**_FR)
def _row_dot(a, b, i):
    acc = 0.0
    for j in range(a.shape[1]):
        acc += a[i, j] * b[i, j]
    return acc


@njit(**_F, inline="always")
def _softmax_backward_run(p, gout, out, rq, t):
    """Thread t: the runs of rows it claims (_next_rows; rows are independent here)."""
    a, k, r0, r1, _, _ = _next_rows(p, rq, t, -1, 0)
    while a >= 0:
        for i in range(r0, r1):
            d = like(out, _row_dot(p, gout, i))
            for j in range(p.shape[1]):
                out[i, j] = p[i, j] * (gout[i, j] - d)
        a, k, r0, r1, _, _ = _next_rows(p, rq, t, a, k)


@njit(**_F, inline="always")
def _log_softmax_backward_run(logp, gout, out, rq, t):
    a, k, r0, r1, _, _ = _next_rows(logp, rq, t, -1, 0)
    while a >= 0:
        for i in range(r0, r1):
            sg = like(out, _row_sum(gout, i))
            for j in range(logp.shape[1]):
                out[i, j] = gout[i, j] - fexp(logp[i, j]) * sg
        a, k, r0, r1, _, _ = _next_rows(logp, rq, t, a, k)


@njit(**_KW, parallel=True)
def softmax_backward(p, gout, out, nthreads):
    """out = p * (gout - sum(gout * p)) along axis 1 (out may alias p or gout)."""
    rq = _row_queue(p, _threads(_row_chunking(p.shape[0], p.shape[1])[1], nthreads))
    for t in prange(rq[0].shape[0] // WORK_STRIDE):
        _softmax_backward_run(p, gout, out, rq, np.int64(t))


@njit(**_KW)
def softmax_backward_serial(p, gout, out):
    _softmax_backward_run(p, gout, out, None, 0)


@njit(**_KW, parallel=True)
def log_softmax_backward(logp, gout, out, nthreads):
    """out = gout - exp(logp) * sum(gout) along axis 1 (out may alias logp or gout)."""
    rq = _row_queue(logp, _threads(_row_chunking(logp.shape[0], logp.shape[1])[1], nthreads))
    for t in prange(rq[0].shape[0] // WORK_STRIDE):
        _log_softmax_backward_run(logp, gout, out, rq, np.int64(t))


@njit(**_KW)
def log_softmax_backward_serial(logp, gout, out):
    _log_softmax_backward_run(logp, gout, out, None, 0)


# The helpers above are linked into their callers as IR and never run on their own, so a
# process that compiles the kernels computes the same bits as one that loads them from
# Numba's cache (see _ir_only).
ir_only(globals())
