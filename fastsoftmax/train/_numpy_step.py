"""The softmax-regression SGD step in plain NumPy: the readable reference of the fused
Numba step (``_numba_step.py``), step for step the same arithmetic::

    z  = a X_B W^T + b                  (B, C), a = x_scale
    loss, G = mean cross-entropy of z, its gradient (the NumPy reference backend)
    dW = a G^T X_B + wd W,  db = sum_rows G
    v  = momentum v + dW;  W -= lr v     (v = dW when momentum == 0)
"""

from __future__ import annotations

import numpy as np

from .. import reference


def sgd_steps(X, y, order, s0, s1, batch, W, b, vW, vb, lr, mu, wd, a, losses):
    """Steps s0..s1-1 of the epoch whose row order is `order` (see ``_numba_step``)."""
    n = order.shape[0]
    for s in range(s0, s1):
        idx = order[s * batch : min((s + 1) * batch, n)]
        xb = X[idx].astype(W.dtype)
        z = (xb @ W.T) * W.dtype.type(a) + b
        nb = len(idx)
        # the reference kernel: per-row losses and the gradient scaled by 1/B
        row_loss = np.empty(nb)
        G = np.empty_like(z)
        reference.xent_index(z, y[idx], None, float(nb), -1, 0.0, 1.0 / nb, row_loss, G)
        reg = 0.5 * wd * float(np.sum(W.astype(np.float64) ** 2)) if wd else 0.0
        losses[s] = row_loss.sum() / nb + reg
        gW = (G.T @ xb) * W.dtype.type(a) + W.dtype.type(wd) * W
        gb = G.sum(axis=0)
        if mu:
            vW *= W.dtype.type(mu)
            vW += gW
            vb *= W.dtype.type(mu)
            vb += gb
            gW, gb = vW, vb
        W -= W.dtype.type(lr) * gW
        b -= W.dtype.type(lr) * gb
