"""The softmax-regression SGD step in plain NumPy: the readable reference of the fused
Numba step (``_numba_step.py``), step for step the same arithmetic::

    z  = (a X_B) W^T + b                (B, C), a = x_scale
    loss, G = mean cross-entropy of z, its gradient (the NumPy reference backend);
              row i's loss and gradient row times s_i where row weights s are given
    dW = G^T (a X_B) + wd W,  db = sum_rows G
    v  = momentum v + dW;  W -= lr_s v   (v = dW when momentum == 0)
    Wa += c_s (W - Wa), ba likewise     (averaged SGD, where asked)
"""

from __future__ import annotations

import numpy as np

from .. import reference


def sgd_steps(X, y, order, s0, s1, batch, W, b, vW, vb, lr, mu, wd, a, losses, sw=None, avg=None):
    """Steps s0..s1-1 of the epoch whose row order is `order` (see ``_numba_step``)."""
    n = order.shape[0]
    C = W.shape[0]
    dt = W.dtype.type
    lrs = np.asarray(lr, np.float64)
    lrs = np.full(max(s1, 1), float(lr)) if lrs.ndim == 0 else lrs
    for s in range(s0, s1):
        idx = order[s * batch : min((s + 1) * batch, n)]
        nb = len(idx)
        xb = X[idx].astype(W.dtype) * dt(a)
        z = xb @ W.T + b
        loss = np.empty(nb)
        # z becomes (softmax(z) - onehot(y)) / nb, the mean's gradient (reference kernel)
        reference.xent_index(z, y[idx], None, float(C), -1, 0.0, 1.0 / nb, loss, z)
        if sw is not None:
            loss *= sw[idx]
            z *= sw[idx].astype(W.dtype)[:, None]
        gW = z.T @ xb
        gb = z.sum(axis=0)
        reg = 0.5 * wd * float(np.sum(W.astype(np.float64) ** 2)) if wd else 0.0
        losses[s] = float(loss.sum()) / nb + reg
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
