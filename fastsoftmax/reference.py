"""The NumPy reference backend: the executable specification of every kernel.

Plain NumPy straight from the math, every sum in float64.  It is the oracle the other
backends are tested against, so it favours being obviously right over being fast (it
is still vectorised NumPy, the baseline a NumPy user would write).

Kernel contract shared by all backends (arguments already validated by the public API,
arrays C-contiguous, 2-D ``(N, C)``):

* ``xent_index(z, y, w, wsum, ignore_index, eps, scale, loss, g) -> total``
  ``y``: int64 ``(N,)``; ``w``: ``(C,)`` in z's dtype or None; ``wsum``: ``sum(w)`` (C
  when w is None); ``loss``: float64 ``(N,)`` receives the per-row losses (0 for
  ignored rows); ``g``: ``(N, C)`` receives ``scale * d(loss.sum())/dz`` (zero rows for
  ignored rows), or is None for the forward only.  Returns ``loss.sum()`` in float64.
* ``xent_prob(z, q, w, eps, scale, loss, g) -> total`` for probability targets
  ``q: (N, C)``.
* ``target_stats(y, w, C, ignore_index) -> (first bad row or -1, denominator)``.
* ``softmax(x, out)``, ``log_softmax(x, out)``, ``logsumexp(x, out)``,
  ``softmax_backward(p, grad, out)``, ``log_softmax_backward(logp, grad, out)``.
* ``sgd_steps(data, params, plan, s0, s1, losses)``: the softmax-regression training
  step (see the end of this module; StepData, StepParams and StepPlan name its inputs).

Definitions (PyTorch's ``F.cross_entropy``): with the smoothed, weighted target matrix
``Q[n, c] = w_c * ((1 - eps) * onehot(y_n)[c] + eps / C)`` for class indices (or
``w_c * ((1 - eps) * q[n, c] + eps / C)`` for probabilities), and ``Q[n] = 0`` for
ignored rows::

    loss_n = -sum_c Q[n, c] * log_softmax(z_n)[c]
    dloss_n/dz_n = sum_c Q[n, c] * softmax(z_n) - Q[n]

(except that PyTorch puts the one-hot part's weight on the whole row, ``w_{y_n}``,
which is what ``Q`` above gives: ``w_c * onehot[c] = w_{y_n} * onehot[c]``).
A zero entry of ``Q`` contributes nothing even where ``log_softmax = -inf``
(0 * log 0 = 0).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

name = "numpy"
# Bytes of float64 temporaries xent_index/xent_prob hold per logit at their peak (z,
# log-probabilities, probabilities, the gradient, a gather or two): the chunked linear
# cross-entropy sizes its chunks by it.  Measured with tracemalloc: ~55.
XENT_WORKSPACE_BYTES = 64


def _quiet(fn):
    """Run fn without NumPy's floating-point warnings: -inf logits, NaN rows and
    all-masked rows give inf/NaN by IEEE arithmetic, which is the documented result,
    and the other backends do not warn either.  (A fresh errstate per call: a shared
    one is not safe across threads or nested calls.)"""

    @functools.wraps(fn)
    def quiet(*args, **kwargs):
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            return fn(*args, **kwargs)

    return quiet


def _log_sum_exp_shifted(t: np.ndarray) -> np.ndarray:
    """log(sum(exp(t), axis=1)) for rows already shifted by their max (t <= 0).

    The terms equal to 1 (the max) are counted, not added: a confident row has
    sum = 1 + d with d tiny, and log(1 + d) ~ d would be lost if 1 + d were formed
    first (d = 1e-11 keeps only 5 digits in float64); log(k) + log1p(d/k) keeps all."""
    e = np.exp(t)
    is_one = e == 1.0
    k = is_one.sum(axis=1, keepdims=True)
    d = np.where(is_one, 0.0, e).sum(axis=1, keepdims=True)
    return np.log(k) + np.log1p(d / k)


@_quiet
def _log_softmax64(z: np.ndarray) -> np.ndarray:
    """log_softmax in float64: z - max - log(sum(exp(z - max)))."""
    z = z.astype(np.float64)
    # An all -inf row gives -inf - -inf = NaN, as the math says (0/0).
    t = z - z.max(axis=1, keepdims=True)
    return t - _log_sum_exp_shifted(t)


def _xlogy_sum(coef: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """sum_c coef * logp per row, with 0 * (-inf) taken as 0."""
    return np.where(coef != 0, coef * logp, 0.0).sum(axis=1)


def target_stats(y, w, num_classes, ignore_index):
    valid = y != ignore_index
    bad = np.flatnonzero(valid & ((y < 0) | (y >= num_classes)))
    if bad.size:
        return int(bad[0]), 0.0
    if w is None:
        return -1, float(np.count_nonzero(valid))
    return -1, float(w.astype(np.float64)[y[valid]].sum())


@_quiet
def xent_index(z, y, w, wsum, ignore_index, eps, scale, loss, g):
    n, c = z.shape
    logp = _log_softmax64(z)
    w64 = np.ones(c) if w is None else w.astype(np.float64)
    rows = np.flatnonzero(y != ignore_index)
    yv = y[rows]
    lp = logp[rows]
    lp_y = lp[np.arange(rows.size), yv]
    wtot = w64.sum()  # recomputed, not the contract's wsum: the oracle derives its own
    coef_y = (1.0 - eps) * w64[yv]  # Q's one-hot part: Q[n, y_n] = coef_y + eps/C w_y
    row = np.zeros(n)
    row[rows] = -np.where(coef_y != 0, coef_y * lp_y, 0.0)
    if eps:
        row[rows] -= eps / c * _xlogy_sum(np.broadcast_to(w64, lp.shape), lp)
    loss[...] = row
    if g is not None:
        grad = np.zeros((n, c))
        a = coef_y + eps / c * wtot  # sum_c Q[n, c]
        p = np.exp(lp)
        grad[rows] = a[:, None] * p - eps / c * w64
        # at the target a p_y - Q[n, y] = coef_y (p_y - 1) + eps/C (W p_y - w_y), with
        # p_y - 1 = expm1(log p_y): exact even when 1 - p_y is far below float eps
        grad[rows, yv] = coef_y * np.expm1(lp_y) + eps / c * (wtot * np.exp(lp_y) - w64[yv])
        g[...] = (scale * grad).astype(z.dtype)
    return float(row.sum())


@_quiet
def xent_prob(z, q, w, eps, scale, loss, g):
    c = z.shape[1]
    logp = _log_softmax64(z)
    w64 = np.ones(c) if w is None else w.astype(np.float64)
    coef = w64 * ((1.0 - eps) * q.astype(np.float64) + eps / c)  # Q
    row = -_xlogy_sum(coef, logp)
    loss[...] = row
    if g is not None:
        grad = coef.sum(axis=1, keepdims=True) * np.exp(logp) - coef
        g[...] = (scale * grad).astype(z.dtype)
    return float(row.sum())


@_quiet
def softmax(x, out):
    out[...] = np.exp(_log_softmax64(x))


@_quiet
def log_softmax(x, out):
    out[...] = _log_softmax64(x)


@_quiet
def logsumexp(x, out):
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    finite = np.isfinite(m[:, 0])
    out[finite] = (m[finite] + _log_sum_exp_shifted(x[finite] - m[finite]))[:, 0]
    # a row whose max is not finite needs no shift: all -inf gives log(0) = -inf,
    # +inf gives +inf, NaN gives NaN
    out[~finite] = np.log(np.exp(x[~finite]).sum(axis=1))


@_quiet
def softmax_backward(p, gout, out):
    p64 = p.astype(np.float64)
    g64 = gout.astype(np.float64)
    out[...] = p64 * (g64 - (g64 * p64).sum(axis=1, keepdims=True))


@_quiet
def log_softmax_backward(logp, gout, out):
    g64 = gout.astype(np.float64)
    out[...] = g64 - np.exp(logp.astype(np.float64)) * g64.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------
# The softmax-regression SGD step, the readable reference of the fused Numba step
# (fastsoftmax/_numba/step.py), step for step the same arithmetic:
#
#     z  = (a X_B) W^T + b                (B, C), a = x_scale
#     loss, G = mean cross-entropy of z, its gradient (xent_index above);
#               row i's loss and gradient row times s_i where row weights s are given
#     dW = G^T (a X_B) + wd W,  db = sum_rows G
#     v  = momentum v + dW;  W -= lr_s v   (v = dW when momentum == 0)
#     Wa += c_s (W - Wa), ba likewise     (averaged SGD, where asked)
# --------------------------------------------------------------------------------------


class StepData(NamedTuple):
    """What a run of SGD steps reads: the rows X (n, d) float32/float64/uint8 (C-
    contiguous), their class indices y (n,) int64, the x scale a (the model sees a X),
    and per-row weights sw ((n,) float64: row i's loss and gradient times sw[i]) or None."""

    X: np.ndarray
    y: np.ndarray
    a: float
    sw: np.ndarray | None = None


class StepParams(NamedTuple):
    """What it updates in place: W (C, d) and b (C,) in float32 or float64, their
    momentum buffers vW, vb, and avg: None or (Wa, ba, coef) for averaged SGD, coef a
    float64 array with one number per step of the epoch (Wa += coef[s] (W - Wa) after
    step s where coef[s] != 0; ba likewise)."""

    W: np.ndarray
    b: np.ndarray
    vW: np.ndarray
    vb: np.ndarray
    avg: tuple | None = None


class StepPlan(NamedTuple):
    """Which steps and how: step s of the epoch takes the rows order[s * batch :
    (s + 1) * batch]; lr: the learning rate, or a float64 array with one per step of the
    epoch (lr[s]); mu: momentum; wd: weight decay (L2, wd/2 ||W||^2 in the objective)."""

    order: np.ndarray
    batch: int
    lr: float | np.ndarray
    mu: float = 0.0
    wd: float = 0.0


def sgd_steps(data: StepData, params: StepParams, plan: StepPlan, s0: int, s1: int, losses):
    """Steps s0..s1-1 of the epoch; `params` are updated in place and losses[s] gets
    step s's objective (mean cross-entropy + wd/2 ||W||^2, before its update).  The
    arguments are those of every backend's sgd_steps."""
    C = params.W.shape[0]

    def fused(z, yb, scale, rows):
        # z becomes scale * (softmax(z) - onehot(y)), the mean's gradient for scale 1/B
        xent_index(
            z, yb, w=None, wsum=float(C), ignore_index=-1, eps=0.0, scale=scale, loss=rows, g=z
        )

    steps_with(np, fused, data, params, plan, s0, s1, losses)


def steps_with(xp, fused, data: StepData, params: StepParams, plan: StepPlan, s0, s1, losses):
    """sgd_steps' arithmetic on the array module xp: NumPy here, CuPy for the CUDA
    backend (``_cupy/step.py``), whose data and params then live on the device while
    plan's row order and rates stay on the host.  fused(z, y_B, scale, rows) is the
    backend's cross-entropy kernel: each row's loss into rows (float64), scale times
    its gradient over z.  losses[s0:s1] (a host array) is written once, at the end: one
    synchronisation per call on a GPU, none per step."""
    X, y, a, sw = data
    W, b, vW, vb, avg = params
    order, batch, lr, mu, wd = plan
    n = order.shape[0]
    dt = W.dtype.type
    lrs = np.asarray(lr, np.float64)
    lrs = np.full(max(s1, 1), float(lr)) if lrs.ndim == 0 else lrs
    first = s0 * batch
    rows_order = xp.asarray(order[first : min(s1 * batch, n)])  # this call's rows only
    step_losses = xp.empty(max(s1 - s0, 0))
    for s in range(s0, s1):
        idx = rows_order[s * batch - first : min((s + 1) * batch, n) - first]
        nb = idx.shape[0]
        xb = X[idx].astype(W.dtype) * dt(a)
        z = xb @ W.T + b
        loss = xp.empty(nb)
        fused(z, y[idx], 1.0 / nb, loss)
        if sw is not None:
            loss *= sw[idx]
            z *= sw[idx].astype(W.dtype)[:, None]
        gW = z.T @ xb
        gb = z.sum(axis=0)
        reg = 0.5 * wd * xp.sum(W.astype(xp.float64) ** 2) if wd else 0.0
        step_losses[s - s0] = loss.sum() / nb + reg
        if wd:
            gW += dt(wd) * W
        if mu:
            vW *= dt(mu)
            vW += gW
            vb *= dt(mu)
            vb += gb
            gW, gb = vW, vb
        W -= dt(lrs[s]) * gW
        b -= dt(lrs[s]) * gb
        if avg is not None and avg[2][s] != 0.0:
            Wa, ba, coef = avg
            Wa += dt(coef[s]) * (W - Wa)
            ba += dt(coef[s]) * (b - ba)
    losses[s0:s1] = step_losses if xp is np else step_losses.get()
