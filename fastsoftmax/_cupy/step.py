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

For small class counts (C <= 128, the trainer's MNIST case) the whole call is one launch
of ``kernels/sgd.cu``: one block runs the steps one after another with every
intermediate in shared memory.  The step above costs ~15 CuPy launches and their Python
per step (~0.5 ms at batch 64 on an H200, all overhead); the launch does the same
arithmetic (within float32 rounding: other summation orders) in a few microseconds per
step.  Other shapes take the per-step path.
"""

from __future__ import annotations

import cupy as cp
import numpy as np

from ..reference import StepData, StepParams, StepPlan, steps_with
from . import _loader
from . import _sgd_plan as sgd_plan
from ._loader import launch, module

_NO_BAD_ROW = np.iinfo(np.int64).max


def _per_step(values, s0: int, s1: int):
    """values[s0:s1] as a float64 device array (a number: that number for each step)."""
    v = np.asarray(values, np.float64)
    v = np.full(s1 - s0, float(v)) if v.ndim == 0 else v[s0:s1]
    return cp.asarray(np.ascontiguousarray(v))


def _steps_in_one_launch(data, params, plan, s0: int, s1: int, losses) -> None:
    X, y, a, sw = data
    W, b, vW, vb, avg = params
    order, batch, lr, mu, wd = plan
    c, d = W.shape
    first = s0 * batch
    rows = np.ascontiguousarray(order[first : min(s1 * batch, order.shape[0])], np.int64)
    rows = cp.asarray(rows)
    null = np.uint64(0)
    coef = null if avg is None else _per_step(avg[2], s0, s1)
    wa, ba = (null, null) if avg is None else avg[:2]
    step_losses = cp.empty(s1 - s0, cp.float64)
    err = cp.full(1, _NO_BAD_ROW, cp.int64)
    args = (X, y, null if sw is None else sw, np.float64(a), rows, np.int64(rows.shape[0]),
            np.int64(batch), np.int64(s1 - s0), _per_step(lr, s0, s1), np.float64(mu),
            np.float64(wd), coef, W, b, vW, vb, wa, ba, step_losses, err, np.int64(c),
            np.int64(d))  # fmt: skip
    kernel = module("sgd.cu", cp.cuda.Device().id).get_function(
        f"sgd_steps_{X.dtype.name}_{W.dtype.name}"
    )
    optin = cp.cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"]
    smem, w_in_smem, stage_rows = sgd_plan.shared_memory(X, W, batch, X.data.ptr, optin)
    if smem > sgd_plan.SMEM_LIMIT:
        kernel.max_dynamic_shared_size_bytes = smem
    args = (*args, np.int32(w_in_smem), np.int32(stage_rows))
    if _loader.CHECK_ARGS:
        _loader.check_args("sgd_steps", args)
    kernel((1, 1, 1), (sgd_plan.SGD_THREADS, 1, 1), args, shared_mem=smem)
    losses[s0:s1] = step_losses.get()
    bad = int(err.get()[0])
    if bad != _NO_BAD_ROW:
        row = int(order[first + bad])
        raise ValueError(f"a class index is out of range for {c} classes (row {row} of the data)")


def sgd_steps(data: StepData, params: StepParams, plan: StepPlan, s0: int, s1: int, losses) -> None:
    """fastsoftmax.reference.sgd_steps on a CUDA device: data.X (n, d) uint8, float32 or
    float64, data.y (n,) int64, data.sw and params' arrays CuPy arrays on the current
    device (params updated in place); plan.order and plan.lr host arrays (or numbers);
    losses a host float64 array."""
    if s1 <= s0:
        return
    if sgd_plan.fits_one_launch(data, params, plan):
        _steps_in_one_launch(data, params, plan, s0, s1, losses)
        return
    W = params.W
    c = W.shape[0]
    err = cp.full(1, _NO_BAD_ROW, cp.int64)
    null = np.uint64(0)

    def fused(z, yb, scale, rows):
        nb = z.shape[0]
        args = (z, yb, null, np.float64(c), np.int64(-1), np.float64(0.0), np.float64(scale),
                null, rows, z, err, np.int64(nb), np.int64(c))  # fmt: skip
        launch("xent_fused", W.dtype, nb, c, args)

    steps_with(cp, fused, data, params, plan, s0, s1, losses)
    bad = int(err.get()[0])
    if bad != _NO_BAD_ROW:
        raise ValueError(f"a class index is out of range for {c} classes (row {bad} of a batch)")
