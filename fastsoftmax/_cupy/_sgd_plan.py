"""How ``kernels/sgd.cu`` is launched: which calls it takes, and its shared memory.
CuPy-free (it reads only dtypes, shapes, flags and pointers), so the decisions are
tested on machines without a GPU."""

from __future__ import annotations

import numpy as np

# one block of SGD_THREADS; C <= SGD_MAX_C; the batch's logits and row bookkeeping in at
# most SMEM_LIMIT bytes of shared memory (more only with the kernel's limit raised)
SGD_THREADS = 512
SGD_MAX_C = 128
SMEM_LIMIT = 48 * 1024
X_DTYPES = ("uint8", "float32", "float64")
W_DTYPES = ("float32", "float64")
# sgd.cu's stage_rows (each step's rows copied into shared memory first): off until
# timed on a GPU against the default (tools/gpu_kernels.py sgd times both)
STAGE_ROWS = False


def smem_bytes(batch: int, c: int, itemsize: int) -> int:
    """Shared memory for the batch's logits, row losses and row numbers."""
    return -(-batch * c * itemsize // 8) * 8 + 16 * batch


def fits_one_launch(data, params, plan) -> bool:
    """Whether kernels/sgd.cu takes this call (else the per-step path).  data, params,
    plan: fastsoftmax.reference's StepData, StepParams, StepPlan."""
    W = params.W
    arrays = [data.X, data.y, data.sw, *params[:4], *(params.avg[:2] if params.avg else ())]
    return (
        W.shape[0] <= SGD_MAX_C
        and data.X.dtype.name in X_DTYPES
        and W.dtype.name in W_DTYPES
        and all(p.dtype == W.dtype for p in params[:4])
        and (params.avg is None or all(p.dtype == W.dtype for p in params.avg[:2]))
        and data.y.dtype == np.int64
        and (data.sw is None or data.sw.dtype == np.float64)
        and all(arr is None or arr.flags.c_contiguous for arr in arrays)
        and smem_bytes(plan.batch, W.shape[0], W.dtype.itemsize) <= SMEM_LIMIT
    )


def shared_memory(X, W, batch: int, x_address: int, optin: int) -> tuple[int, bool, bool]:
    """(dynamic shared memory bytes, w_in_smem, stage_rows) of a launch: the weights go
    into shared memory where everything stays under SMEM_LIMIT; the rows are staged
    (STAGE_ROWS) where a row is whole 16-byte vectors, X is 16-byte aligned (x_address)
    and the total fits the device's opt-in limit `optin`."""
    c, d = W.shape
    smem = smem_bytes(batch, c, W.dtype.itemsize)
    w_in_smem = smem + W.nbytes <= SMEM_LIMIT
    smem += W.nbytes if w_in_smem else 0
    staged = -(-smem // 16) * 16 + batch * d * X.dtype.itemsize
    stage_rows = (
        STAGE_ROWS and (d * X.dtype.itemsize) % 16 == 0 and x_address % 16 == 0 and staged <= optin
    )
    return (staged if stage_rows else smem), w_in_smem, stage_rows
