"""Numba CPU kernels: softmax, log-softmax, logsumexp, fused cross-entropy.

Every kernel takes C-contiguous 2-D arrays (rows, classes) that the public API has
already validated, and writes into buffers the API allocated.  The contract is the one
in ``fastsoftmax/reference.py``: per-row losses in float64, gradients already
multiplied by the reduction's ``scale``.

Layout of the work
------------------
* Rows are grouped into chunks (one small-C tile, or about ``ROW_CHUNK_ELEMENTS``
  elements of whole rows); each thread takes a contiguous run of chunks and allocates
  its scratch once.  The chunking depends only on the shape, never on the thread count,
  and per-chunk partial sums are added in chunk order, so every result is bit-identical
  for any number of threads.  Each parallel kernel has a ``*_serial`` twin for inputs
  too small to repay waking the thread pool.
* Large C (``C > SMALL_C_MAX``): one row at a time, three passes over a row that sits in
  L1/L2: (1) max, (2) ``e = exp(z - max)`` stored into the output and summed, (3) scale
  the stored ``e`` into the result.  A one-pass online softmax (Milakov & Gimelshein
  2018, arXiv:1805.02867) saves a read of the row, but here the row is cache-resident
  after pass 1 and the online version's per-element rescaling cost more than it saved.
* Small C (``C <= SMALL_C_MAX``, MNIST's 10 classes): a row is too short for a
  vectorised loop (LLVM's AVX-512 loop needs at least 16 iterations) and per-row
  reductions would run as scalar dependency chains.  So a tile of ``TILE_ROWS`` rows is
  transposed into a small class-major buffer (``zt[c, r]``) and every step (max, exp,
  sums, gradient) runs across rows, 16 rows per AVX-512 instruction; the result is
  transposed back on the way out.

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
sum of non-negative numbers: no cancellation at logits of 1e4.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._math import REDUCE_FLAGS, fexp, fexp_neg, fkey, flog, funkey, like

# Largest C that takes the transposed small-C path (bench/bench_small_c.py chose it).
SMALL_C_MAX = 32
# Rows per small-C tile (and per small-C chunk): a multiple of 16 (one AVX-512 vector of
# float32 rows); the class-major buffer is then at most 32 x 128 x 8 B = 32 KiB.
TILE_ROWS = 128
# Elements per chunk on the large-C path (whole rows; at least one row).
ROW_CHUNK_ELEMENTS = 1 << 14
# Partial sums in the storage type are flushed to float64 every SUM_BLOCK elements:
# each vector lane then adds at most SUM_BLOCK/16 float32 numbers.
SUM_BLOCK = 256

_KW = {"cache": True, "fastmath": REDUCE_FLAGS, "nogil": True, "error_model": "numpy"}
_F = {"fastmath": REDUCE_FLAGS, "error_model": "numpy"}


# --------------------------------------------------------------------------------------
# Work split
# --------------------------------------------------------------------------------------
@njit(**_F)
def _chunking(nrows, n):
    """(rows per chunk, number of chunks): a function of the shape alone."""
    per = TILE_ROWS if n <= SMALL_C_MAX else max(1, ROW_CHUNK_ELEMENTS // max(n, 1))
    return per, (nrows + per - 1) // per


@njit(**_F)
def _threads(nchunks, nthreads):
    # nthreads comes from numba.get_num_threads() in Python: calling it in here would
    # make Numba refuse to cache the kernels.
    return max(1, min(nthreads, nchunks))


@njit(**_F)
def _ordered_sum(partial):
    total = 0.0
    for c in range(partial.shape[0]):
        total += partial[c]
    return total


@njit(**_F)
def _scratch(x):
    """Per-thread scratch of the small-C path: (buffer in x's dtype, float64 buffer)."""
    n = x.shape[1] if x.shape[1] <= SMALL_C_MAX else 0
    return np.empty((n + 3) * TILE_ROWS + n, x.dtype), np.empty(5 * TILE_ROWS)


# --------------------------------------------------------------------------------------
# Row primitives (large-C path)
# --------------------------------------------------------------------------------------
@njit(**_F)
def _row_max(z, i):
    """max(z[i]) exactly, NaN-propagating for NaNs with a clear sign bit (see _math)."""
    mk = fkey(z[i, 0])
    for j in range(1, z.shape[1]):
        k = fkey(z[i, j])
        mk = k if k > mk else mk
    return funkey(mk)


@njit(**_F)
def _row_expsum(z, i, m):
    """sum_j exp(z[i, j] - m) as float64, without storing the exponentials."""
    n = z.shape[1]
    nfull = n - n % SUM_BLOCK
    s = 0.0
    for b0 in range(0, nfull, SUM_BLOCK):
        sb = like(z, 0.0)
        for j in range(SUM_BLOCK):
            sb += fexp_neg(z[i, b0 + j] - m)
        s += sb
    sb = like(z, 0.0)
    for j in range(nfull, n):
        sb += fexp_neg(z[i, j] - m)
    return s + sb


@njit(**_F)
def _row_blocked_sum(a, i):
    """sum_j a[i, j] in float64, in SUM_BLOCK blocks of storage-type partial sums."""
    n = a.shape[1]
    nfull = n - n % SUM_BLOCK
    s = 0.0
    for b0 in range(0, nfull, SUM_BLOCK):
        sb = like(a, 0.0)
        for j in range(SUM_BLOCK):
            sb += a[i, b0 + j]
        s += sb
    sb = like(a, 0.0)
    for j in range(nfull, n):
        sb += a[i, j]
    return s + sb


@njit(**_F)
def _same_memory(a, b):
    """True when b is a itself (the in-place mode); False for b None."""
    if b is None:
        return False
    return a.ctypes.data == b.ctypes.data


@njit(**_F)
def _row_expsum_into(z, i, m, e, inplace):
    """e[i, j] = exp(z[i, j] - m); returns their float64 sum.  e may be z (inplace).

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
def _row_smooth_sum(z, i, m, w):
    """sum_c w_c (m - z[i, c]) in float64; classes of zero weight are skipped."""
    acc = 0.0
    if w is None:
        for j in range(z.shape[1]):
            acc += m - z[i, j]
    else:
        zero = like(z, 0.0)
        for j in range(z.shape[1]):
            wj = w[j]
            acc += wj * (m - z[i, j]) if wj != zero else zero
    return acc


@njit(**_F)
def _row_sum(x, i):
    acc = 0.0
    for j in range(x.shape[1]):
        acc += x[i, j]
    return acc


@njit(**_F)
def _row_lse(x, i):
    """max + log(sum(exp(x[i] - max))) in float64 (NaN where the max is not finite)."""
    m = _row_max(x, i)
    return float(m) + math.log(_row_expsum(x, i, m))


# --------------------------------------------------------------------------------------
# Tile primitives (small-C path): zt[c * TILE_ROWS + r] holds x[a + r, c]
#
# The loops index through per-class slices (zt[c * TILE_ROWS:...][r]) rather than
# zt[c * TILE_ROWS + r]: Numba cannot prove the compound index non-negative and guards
# it against wraparound, which kept LLVM from vectorising these loops (3x slower).
# --------------------------------------------------------------------------------------
@njit(**_F)
def _tile_load(x, a, nr, zt):
    """Transpose rows [a, a + nr) of x into zt (a strided gather per class)."""
    n = x.shape[1]
    xf = x.reshape(x.size)
    base = a * n
    for c in range(n):
        xc = xf[base + c : base + nr * n : n]
        zc = zt[c * TILE_ROWS : c * TILE_ROWS + nr]
        for r in range(nr):
            zc[r] = xc[r]


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
            m[r] = max(m[r], zc[r])


@njit(**_F)
def _tile_expsum(zt, nr, n, m, s):
    """zt <- exp(zt - m[r]); s[r] <- float64 row sums."""
    for r in range(nr):
        s[r] = 0.0
    for c in range(n):
        zc = zt[c * TILE_ROWS : c * TILE_ROWS + nr]
        for r in range(nr):
            v = fexp_neg(zc[r] - m[r])
            zc[r] = v
            s[r] += v


@njit(**_F)
def _tile_smooth_sum(zt, nr, n, m, w, out):
    """out[r] = sum_c w_c (m[r] - zt[c, r]) in float64 (zero weights skipped)."""
    zero = like(zt, 0.0)
    for r in range(nr):
        out[r] = 0.0
    for c in range(n):
        wc = like(zt, 1.0) if w is None else w[c]
        if wc == zero:
            continue
        zc = zt[c * TILE_ROWS : c * TILE_ROWS + nr]
        for r in range(nr):
            out[r] += wc * (m[r] - zc[r])


@njit(**_F)
def _tile_softmax(x, a, nr, buf, f64):
    """zt <- softmax of rows [a, a + nr), transposed; returns zt (and m, s, as views)."""
    n = x.shape[1]
    zt = buf[: n * TILE_ROWS]
    m = buf[n * TILE_ROWS : (n + 1) * TILE_ROWS]
    s = f64[:TILE_ROWS]
    _tile_load(x, a, nr, zt)
    _tile_max(zt, nr, n, m)
    _tile_expsum(zt, nr, n, m, s)
    return zt, m, s


# --------------------------------------------------------------------------------------
# Target statistics (class-index targets): validation and the mean's denominator
# --------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def target_stats(y, w, num_classes, ignore_index):
    """(first bad row or -1, sum of weights of the non-ignored rows)."""
    denom = 0.0
    for i in range(y.shape[0]):
        yi = y[i]
        if yi == ignore_index:
            continue
        if yi < 0 or yi >= num_classes:
            return i, 0.0
        denom += 1.0 if w is None else w[yi]
    return -1, denom


# --------------------------------------------------------------------------------------
# Cross-entropy, class-index targets
# --------------------------------------------------------------------------------------
@njit(**_F)
def _xent_index_rows(z, y, w, wsum, ignore, eps, scale, loss, g, r0, r1):
    """Large-C path over rows [r0, r1).  g is None for the forward-only kernel."""
    n = z.shape[1]
    eps_c = eps / n
    inplace = _same_memory(z, g)
    for i in range(r0, r1):
        yi = y[i]
        if yi == ignore:
            loss[i] = 0.0
            if g is not None:
                for j in range(n):
                    g[i, j] = like(g, 0.0)
            continue
        m = _row_max(z, i)
        coef_y = (1.0 - eps) * (1.0 if w is None else float(w[yi]))
        ty = float(z[i, yi]) - float(m)
        smooth = _row_smooth_sum(z, i, m, w) if eps_c != 0.0 else 0.0
        # all of z[i] has been read: g may now overwrite it (in-place mode)
        if g is None:
            s = _row_expsum(z, i, m)
        else:
            s = _row_expsum_into(z, i, m, g, inplace)
        logs = math.log(s)
        row = coef_y * (logs - ty) if coef_y != 0.0 else 0.0
        loss[i] = row + (eps_c * (wsum * logs + smooth) if eps_c != 0.0 else 0.0)
        if g is not None:
            ga = like(g, scale * (coef_y + eps_c * wsum) / s)
            gb = like(g, scale * eps_c)
            if w is None:
                for j in range(n):
                    g[i, j] = g[i, j] * ga - gb
            else:
                for j in range(n):
                    g[i, j] = g[i, j] * ga - gb * w[j]
            g[i, yi] -= like(g, scale * coef_y)


@njit(**_F)
def _xent_index_tiles(z, y, w, wsum, ignore, eps, scale, loss, g, r0, r1, buf, f64):
    """Small-C path over rows [r0, r1), TILE_ROWS rows at a time, transposed."""
    n = z.shape[1]
    R = TILE_ROWS
    eps_c = eps / n
    zero = like(z, 0.0)
    ga = buf[(n + 1) * R : (n + 2) * R]
    gb = buf[(n + 3) * R : (n + 3) * R + n]  # scale (eps/C) w_c
    ty = f64[R : 2 * R]  # z[y] - max
    coef = f64[2 * R : 3 * R]  # (1 - eps) w_y; 0 for ignored rows
    valid = f64[3 * R : 4 * R]  # 1.0 unless the row is ignored
    smooth = f64[4 * R : 5 * R]
    for c in range(n):
        gb[c] = like(z, scale * eps_c * (1.0 if w is None else float(w[c])))
    for a in range(r0, r1, R):
        nr = min(R, r1 - a)
        zt = buf[: n * R]
        m = buf[n * R : (n + 1) * R]
        _tile_load(z, a, nr, zt)
        _tile_max(zt, nr, n, m)
        if eps_c != 0.0:
            _tile_smooth_sum(zt, nr, n, m, w, smooth)
        for r in range(nr):
            yi = y[a + r]
            ok = yi != ignore
            yc = yi if ok else 0
            valid[r] = 1.0 if ok else 0.0
            ty[r] = float(zt[yc * R + r]) - float(m[r])
            coef[r] = (1.0 - eps) * (1.0 if w is None else float(w[yc])) if ok else 0.0
        s = f64[:R]
        _tile_expsum(zt, nr, n, m, s)
        # per-row loss and gradient factor, vectorised across rows (flog, not libm's log)
        for r in range(nr):
            logs = flog(s[r])
            cy = coef[r]
            row = cy * (logs - ty[r]) if cy != 0.0 else 0.0
            row += eps_c * (wsum * logs + smooth[r]) if eps_c != 0.0 else 0.0
            ok = valid[r] != 0.0
            loss[a + r] = row if ok else 0.0
            ga[r] = like(z, scale * (cy + eps_c * wsum) / s[r]) if ok else zero
        if g is None:
            continue
        # g = (a p - b) scale, stored row-major straight from the transposed buffer
        # (class-major loop order: LLVM turns it into vector scatters, 1.5x faster here)
        gf = g.reshape(g.size)
        base = a * n
        for c in range(n):
            gbc = gb[c]
            zc = zt[c * R : c * R + nr]
            gc = gf[base + c : base + nr * n : n]
            for r in range(nr):
                gc[r] = zc[r] * ga[r] - gbc
        for r in range(nr):
            i = a + r
            if valid[r] != 0.0:
                g[i, y[i]] -= like(z, scale * coef[r])
            else:
                for c in range(n):
                    g[i, c] = zero


@njit(**_F)
def _xent_index_run(z, y, w, wsum, ignore, eps, scale, loss, g, partial, t, nth):
    """Thread t of nth: its run of chunks, one partial loss sum per chunk."""
    per, nchunks = _chunking(z.shape[0], z.shape[1])
    buf, f64 = _scratch(z)
    for c in range(t * nchunks // nth, (t + 1) * nchunks // nth):
        r0 = c * per
        r1 = min(r0 + per, z.shape[0])
        if z.shape[1] <= SMALL_C_MAX:
            _xent_index_tiles(z, y, w, wsum, ignore, eps, scale, loss, g, r0, r1, buf, f64)
        else:
            _xent_index_rows(z, y, w, wsum, ignore, eps, scale, loss, g, r0, r1)
        acc = 0.0
        for i in range(r0, r1):
            acc += loss[i]
        partial[c] = acc


@njit(**_KW, parallel=True)
def xent_index(z, y, w, wsum, ignore, eps, scale, loss, g, nthreads):
    """Per-row loss into `loss` (float64); scaled gradient into `g` unless it is None.
    Returns the float64 sum of the row losses, added in chunk order."""
    partial = np.empty(_chunking(z.shape[0], z.shape[1])[1])
    nth = _threads(partial.shape[0], nthreads)
    for t in prange(nth):
        _xent_index_run(z, y, w, wsum, ignore, eps, scale, loss, g, partial, t, nth)
    return _ordered_sum(partial)


@njit(**_KW)
def xent_index_serial(z, y, w, wsum, ignore, eps, scale, loss, g):
    partial = np.empty(_chunking(z.shape[0], z.shape[1])[1])
    if partial.shape[0]:
        _xent_index_run(z, y, w, wsum, ignore, eps, scale, loss, g, partial, 0, 1)
    return _ordered_sum(partial)


# --------------------------------------------------------------------------------------
# Cross-entropy, probability targets (row path for every C)
# --------------------------------------------------------------------------------------
@njit(**_F)
def _prob_coef(q, w, i, j, keep, eps_c):
    c = keep * q[i, j] + eps_c
    return c if w is None else w[j] * c


@njit(**_F)
def _xent_prob_run(z, q, w, eps, scale, loss, g, partial, t, nth):
    nrows, n = z.shape
    per = max(1, ROW_CHUNK_ELEMENTS // n)
    nchunks = partial.shape[0]
    keep = like(z, 1.0 - eps)
    eps_c = like(z, eps / n)
    zero = like(z, 0.0)
    inplace = _same_memory(z, g)
    for c in range(t * nchunks // nth, (t + 1) * nchunks // nth):
        acc = 0.0
        for i in range(c * per, min(c * per + per, nrows)):
            m = _row_max(z, i)
            a = 0.0  # sum_c wq_c
            lin = 0.0  # sum_c wq_c (m - z_c)
            for j in range(n):
                wq = _prob_coef(q, w, i, j, keep, eps_c)
                a += wq
                lin += wq * (m - z[i, j]) if wq != zero else zero
            if g is None:
                s = _row_expsum(z, i, m)
            else:
                s = _row_expsum_into(z, i, m, g, inplace)
            row = a * math.log(s) + lin
            loss[i] = row
            acc += row
            if g is not None:
                ga = like(g, scale * a / s)
                gs = like(g, scale)
                for j in range(n):
                    g[i, j] = g[i, j] * ga - gs * _prob_coef(q, w, i, j, keep, eps_c)
        partial[c] = acc


@njit(**_KW, parallel=True)
def xent_prob(z, q, w, eps, scale, loss, g, nthreads):
    """Probability-target cross-entropy; same contract as :func:`xent_index`."""
    per = max(1, ROW_CHUNK_ELEMENTS // z.shape[1])
    partial = np.empty((z.shape[0] + per - 1) // per)
    nth = _threads(partial.shape[0], nthreads)
    for t in prange(nth):
        _xent_prob_run(z, q, w, eps, scale, loss, g, partial, t, nth)
    return _ordered_sum(partial)


# --------------------------------------------------------------------------------------
# softmax, log_softmax, logsumexp
# --------------------------------------------------------------------------------------
@njit(**_F)
def _softmax_run(x, out, t, nth):
    nrows, n = x.shape
    per, nchunks = _chunking(nrows, n)
    buf, f64 = _scratch(x)
    for c in range(t * nchunks // nth, (t + 1) * nchunks // nth):
        r0 = c * per
        r1 = min(r0 + per, nrows)
        if n <= SMALL_C_MAX:
            nr = r1 - r0
            zt, m, s = _tile_softmax(x, r0, nr, buf, f64)
            inv = m  # m is no longer needed
            for r in range(nr):
                inv[r] = like(x, 1.0 / s[r])
            of = out.reshape(out.size)
            for j in range(n):
                zc = zt[j * TILE_ROWS : j * TILE_ROWS + nr]
                oc = of[r0 * n + j : r1 * n : n]
                for r in range(nr):
                    oc[r] = zc[r] * inv[r]
        else:
            inplace = _same_memory(x, out)
            for i in range(r0, r1):
                s = _row_expsum_into(x, i, _row_max(x, i), out, inplace)
                inv = like(out, 1.0 / s)
                for j in range(n):
                    out[i, j] *= inv


@njit(**_KW, parallel=True)
def softmax(x, out, nthreads):
    """out = softmax(x) along axis 1; out may be x."""
    nth = _threads(_chunking(x.shape[0], x.shape[1])[1], nthreads)
    for t in prange(nth):
        _softmax_run(x, out, t, nth)


@njit(**_KW)
def softmax_serial(x, out):
    if x.shape[0]:
        _softmax_run(x, out, 0, 1)


@njit(**_F)
def _lse_block(x, a, r1, buf, f64, lse):
    """lse[r] for the rows from a: a whole tile (small C) or one row; returns the count."""
    n = x.shape[1]
    if n <= SMALL_C_MAX:
        nr = min(TILE_ROWS, r1 - a)
        _, m, s = _tile_softmax(x, a, nr, buf, f64)
        for r in range(nr):
            lse[r] = float(m[r]) + flog(s[r])
        return nr
    lse[0] = _row_lse(x, a)
    return 1


@njit(**_F)
def _log_softmax_run(x, out, t, nth):
    nrows, n = x.shape
    per, nchunks = _chunking(nrows, n)
    inplace = _same_memory(x, out)
    buf, f64 = _scratch(x)
    lse = f64[TILE_ROWS : 2 * TILE_ROWS]
    for c in range(t * nchunks // nth, (t + 1) * nchunks // nth):
        a = c * per
        r1 = min(a + per, nrows)
        while a < r1:
            nr = _lse_block(x, a, r1, buf, f64, lse)
            for r in range(nr):
                li = like(x, lse[r])
                if inplace:  # one array: see _row_expsum_into
                    for j in range(n):
                        out[a + r, j] -= li
                else:
                    for j in range(n):
                        out[a + r, j] = x[a + r, j] - li
            a += nr


@njit(**_F)
def _logsumexp_run(x, out, t, nth):
    nrows, n = x.shape
    per, nchunks = _chunking(nrows, n)
    buf, f64 = _scratch(x)
    lse = f64[TILE_ROWS : 2 * TILE_ROWS]
    for c in range(t * nchunks // nth, (t + 1) * nchunks // nth):
        a = c * per
        r1 = min(a + per, nrows)
        while a < r1:
            nr = _lse_block(x, a, r1, buf, f64, lse)
            for r in range(nr):
                v = lse[r]
                out[a + r] = v if np.isfinite(v) else _lse_nonfinite(x, a + r, v)
            a += nr


@njit(**_F)
def _lse_nonfinite(x, i, v):
    """logsumexp of a row whose stable formula gave inf or NaN: the conventions of scipy
    and PyTorch (all -inf -> -inf; +inf and no NaN -> +inf; else NaN)."""
    m = _row_max(x, i)
    if np.isfinite(m):
        return v  # a finite max: the formula's result stands (NaN from a NaN entry)
    if m == -np.inf:
        return -np.inf
    if m == np.inf:
        for j in range(x.shape[1]):
            if np.isnan(x[i, j]):
                return np.nan
        return np.inf
    return np.nan


@njit(**_KW, parallel=True)
def log_softmax(x, out, nthreads):
    """out = log_softmax(x) along axis 1; out may be x."""
    nth = _threads(_chunking(x.shape[0], x.shape[1])[1], nthreads)
    for t in prange(nth):
        _log_softmax_run(x, out, t, nth)


@njit(**_KW)
def log_softmax_serial(x, out):
    if x.shape[0]:
        _log_softmax_run(x, out, 0, 1)


@njit(**_KW, parallel=True)
def logsumexp(x, out, nthreads):
    """out[i] = log(sum_j exp(x[i, j])), stably (see _lse_nonfinite)."""
    nth = _threads(_chunking(x.shape[0], x.shape[1])[1], nthreads)
    for t in prange(nth):
        _logsumexp_run(x, out, t, nth)


@njit(**_KW)
def logsumexp_serial(x, out):
    if x.shape[0]:
        _logsumexp_run(x, out, 0, 1)


# --------------------------------------------------------------------------------------
# Backward (vector-Jacobian products): no exp on the hot path but log_softmax's, and
# rows that vectorise plainly, so one row loop serves every C.
# --------------------------------------------------------------------------------------
@njit(**_KW, parallel=True)
def softmax_backward(p, gout, out):
    """out = p * (gout - sum(gout * p)) along axis 1 (out may alias p or gout)."""
    for i in prange(p.shape[0]):
        dot = 0.0
        for j in range(p.shape[1]):
            dot += gout[i, j] * p[i, j]
        d = like(out, dot)
        for j in range(p.shape[1]):
            out[i, j] = p[i, j] * (gout[i, j] - d)


@njit(**_KW, parallel=True)
def log_softmax_backward(logp, gout, out):
    """out = gout - exp(logp) * sum(gout) along axis 1 (out may alias logp or gout)."""
    for i in prange(logp.shape[0]):
        sg = like(out, _row_sum(gout, i))
        for j in range(logp.shape[1]):
            out[i, j] = gout[i, j] - fexp(logp[i, j]) * sg
