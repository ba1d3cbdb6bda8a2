"""The softmax-regression SGD step in plain NumPy: the readable reference of the fused
Numba step (``_numba_step.py``), step for step the same arithmetic::

    z  = (a X_B) W^T + b                (B, C), a = x_scale
    loss, G = mean cross-entropy of z, its gradient (the NumPy reference backend)
    dW = G^T (a X_B) + wd W,  db = sum_rows G
    v  = momentum v + dW;  W -= lr v     (v = dW when momentum == 0)

The first three lines are the linear cross-entropy with hidden = a X_B and V = C: the
step runs the same chunk loop as ``fastsoftmax.linear_cross_entropy_with_grad`` (one
chunk, no dhidden), on the reference backend.
"""

from __future__ import annotations

import numpy as np

from .. import reference
from .._linear import fused_chunks


def sgd_steps(X, y, order, s0, s1, batch, W, b, vW, vb, lr, mu, wd, a, losses):
    """Steps s0..s1-1 of the epoch whose row order is `order` (see ``_numba_step``)."""
    n = order.shape[0]
    for s in range(s0, s1):
        idx = order[s * batch : min((s + 1) * batch, n)]
        xb = X[idx].astype(W.dtype) * W.dtype.type(a)
        nb, c = len(idx), W.shape[0]
        gW, gb = np.empty_like(W), np.empty_like(b)
        # mean cross-entropy of xb W^T + b and its gradients (G scaled by 1/B in the kernel)
        total = fused_chunks(
            reference, xb, W, b, "index", y[idx], None, float(c), -1, 0.0, 1.0 / nb, nb,
            np.empty(nb), None, gW, gb,
        )  # fmt: skip
        reg = 0.5 * wd * float(np.sum(W.astype(np.float64) ** 2)) if wd else 0.0
        losses[s] = total / nb + reg
        if wd:
            gW += W.dtype.type(wd) * W
        if mu:
            vW *= W.dtype.type(mu)
            vW += gW
            vb *= W.dtype.type(mu)
            vb += gb
            gW, gb = vW, vb
        W -= W.dtype.type(lr) * gW
        b -= W.dtype.type(lr) * gb
