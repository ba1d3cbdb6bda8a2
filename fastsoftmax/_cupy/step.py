"""The softmax-regression SGD step on a CUDA device (CuPy arrays).

The arithmetic is ``fastsoftmax.reference.steps_with``'s, step for step, on the device:
the minibatch gathered through the row order, its logits by cuBLAS, the Core
cross-entropy by the same ``xent_fused`` kernel as the op (in place: the logits become
the gradient), dW and db by cuBLAS and a reduction, then the (momentum) update and the
running mean.  The data and the parameters stay on the device; the row order and the
rates come from the host (a few KB per call), and the step losses go back once per call.
So a call is asynchronous until its end: no synchronisation per step.

The targets are the estimator's encoded labels, so every one is in range; the kernel
still reports an out-of-range one (it writes the row into ``err``), checked once at
the end of the call.
"""

from __future__ import annotations

import cupy as cp
import numpy as np

from ..reference import StepData, StepParams, StepPlan, steps_with
from ._loader import launch

_NO_BAD_ROW = np.iinfo(np.int64).max


def sgd_steps(data: StepData, params: StepParams, plan: StepPlan, s0: int, s1: int, losses) -> None:
    """fastsoftmax.reference.sgd_steps on a CUDA device: data.X (n, d) uint8, float32 or
    float64, data.y (n,) int64, data.sw and params' arrays CuPy arrays on the current
    device (params updated in place); plan.order and plan.lr host arrays (or numbers);
    losses a host float64 array."""
    W = params.W
    c = W.shape[0]
    err = cp.full(1, _NO_BAD_ROW, cp.int64)
    null = np.uint64(0)

    def fused(z, yb, scale, rows):
        nb = z.shape[0]
        args = (z, yb, null, np.float64(c), np.int64(-1), np.float64(0.0), np.float64(scale),
                rows, z, err, np.int64(nb), np.int64(c))  # fmt: skip
        launch("xent_fused", W.dtype, nb, c, args)

    steps_with(cp, fused, data, params, plan, s0, s1, losses)
    bad = int(err.get()[0])
    if bad != _NO_BAD_ROW:
        raise ValueError(f"a class index is out of range for {c} classes (row {bad} of a batch)")
