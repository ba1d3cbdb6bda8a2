"""Fused linear cross-entropy: the loss of ``hidden @ weight.T + bias`` and its gradients,
computed in chunks of rows so that the (N, V) logits never exist at once.

The math, per chunk of rows r (Liger-Kernel's "fused linear cross-entropy"; the chunk's
softmax is the Core kernel, stable by max subtraction)::

    Z_r  = H_r W^T + b                   (n_r, V)   one GEMM into a reused buffer
    loss_r, G_r = cross_entropy_with_grad(Z_r)      in place: G_r overwrites Z_r
    dH_r = G_r W                         (n_r, H)   rows of dhidden, written directly
    dW  += G_r^T H_r                     (V, H)     accumulated over the chunks
    db  += sum over rows of G_r          (V,)

G_r is already scaled by the reduction (the mean's denominator is the sum over *all*
rows, computed before the first chunk), so the chunks' contributions just add.  Peak
extra memory is one chunk of logits plus a small block for the dW accumulation, instead
of the unfused composition's N x V logits (and as many again for their gradient).

Softmax regression (the trainer) is this operation with V = 10 and an SGD update on
top: the NumPy training step calls :func:`fused_chunks` here, and the Numba training
step (``_numba/step.py``) is the small-V specialisation of the same plan (blocks of
rows, logits in cache, the Core kernel in place, dW from the same rows).

The GEMMs go to NumPy's BLAS whatever the backend (they are >99% of the FLOPs at
vocabulary sizes, and BLAS is what runs them at the machine's FMA peak); the backend
runs the cross-entropy on each chunk.
"""

from __future__ import annotations

import operator

import numpy as np

from . import _validate as check
from ._api import Reduction, XentProblem, reduced_loss, resolve_options
from ._backends import is_cupy_array

# The default chunk holds at most this many bytes of logits: at N=8192, V=128256 float32
# it is 523 rows, 6% of the unfused 4.2 GB (the Large-vocabularies target is <= 10%),
# and GEMMs of 500 rows x 4096 still run at BLAS's full speed here (bench_linear.py).
CHUNK_BYTES = 256 * 2**20
# dW += G_r^T H_r goes through a block of at most this many bytes (BLAS cannot add into
# its output): big enough for full-speed GEMMs, small next to a chunk.
ACCUMULATE_BYTES = 16 * 2**20


def bytes_per_logit(be, dtype: np.dtype) -> int:
    """Memory a chunk costs per logit on backend `be`: the logit itself (the Numba
    kernels work in place) plus the backend's cross-entropy temporaries (the reference's
    float64 ones)."""
    return dtype.itemsize + getattr(be, "XENT_WORKSPACE_BYTES", 0)


def default_chunk_size(n: int, v: int, bytes_per_logit: int) -> int:
    """Rows per chunk: as many as fit CHUNK_BYTES (logits and the backend's cross-entropy
    workspace, bytes_per_logit each), at least 1, at most n."""
    return max(1, min(n, CHUNK_BYTES // max(1, v * bytes_per_logit)))


def fused_chunks(
    problem: XentProblem,
    hidden: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    chunk: int,
    loss_rows: np.ndarray,
    *,
    dhidden: np.ndarray | None = None,
    dweight: np.ndarray | None = None,
    dbias: np.ndarray | None = None,
) -> float:
    """The chunk loop (arguments validated, `problem` resolved, all arrays in one float
    dtype): writes per-row losses into loss_rows and, where given, the gradients into
    dhidden (N, H), dweight (V, H) and dbias (V,) (their old contents are overwritten).
    Returns the sum of the row losses (float64)."""
    n, h = hidden.shape
    v = weight.shape[0]
    dtype = weight.dtype
    want_grad = dhidden is not None or dweight is not None or dbias is not None
    buf = np.empty((min(chunk, n), v), dtype)
    block = max(1, ACCUMULATE_BYTES // max(1, h * dtype.itemsize))
    acc = np.empty((min(block, v), h), dtype) if dweight is not None and n > chunk else None
    if dbias is not None:
        db64 = np.zeros(v)
        ones = np.ones(min(chunk, n), dtype)
    total = 0.0
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        z = buf[: r1 - r0]
        hr = hidden[r0:r1]
        np.matmul(hr, weight.T, out=z)
        if bias is not None:
            z += bias
        total += problem.run(z, loss_rows[r0:r1], z if want_grad else None, slice(r0, r1))
        if not want_grad:
            continue
        if dhidden is not None:
            np.matmul(z, weight, out=dhidden[r0:r1])
        if dweight is not None:
            if r0 == 0:
                np.matmul(z.T, hr, out=dweight)
            else:
                for v0 in range(0, v, block):
                    v1 = min(v, v0 + block)
                    part = acc[: v1 - v0]
                    np.matmul(z[:, v0:v1].T, hr, out=part)
                    dweight[v0:v1] += part
        if dbias is not None:
            db64 += ones[: r1 - r0] @ z
    if dbias is not None:
        dbias[...] = db64
    return total


def _chunk_size(chunk_size: object, n: int, v: int, bytes_per_logit: int) -> int:
    if chunk_size is None:
        return default_chunk_size(n, v, bytes_per_logit)
    if isinstance(chunk_size, bool):
        raise TypeError("chunk_size must be a positive integer or None, got bool")
    try:
        value = operator.index(chunk_size)
    except TypeError:
        raise TypeError(
            f"chunk_size must be a positive integer or None, got {type(chunk_size).__name__}"
        ) from None
    if value < 1:
        raise ValueError(f"chunk_size must be >= 1, got {value}")
    return min(value, max(n, 1))


def _linear_cross_entropy(
    hidden, weight, target, bias, reduction, ignore_index, label_smoothing, class_weight,
    chunk_size, backend, want_grad,
):  # fmt: skip
    if is_cupy_array(hidden) or is_cupy_array(weight):
        raise NotImplementedError(
            "linear_cross_entropy has no CuPy backend yet; pass NumPy arrays "
            "(cupy.asnumpy), or on the GPU compose cupy matmuls with "
            "fastsoftmax.cross_entropy_with_grad chunk by chunk"
        )
    h_arr = check.float_array(hidden, "hidden")
    w_arr = check.float_array(weight, "weight")
    if h_arr.ndim != 2:
        raise ValueError(f"hidden must be 2-D (N, H), got shape {h_arr.shape}")
    if w_arr.ndim != 2:
        raise ValueError(f"weight must be 2-D (V, H), got shape {w_arr.shape}")
    n, h = h_arr.shape
    v = w_arr.shape[0]
    if w_arr.shape[1] != h:
        raise ValueError(
            f"weight must have shape (V, H) with H = {h} (hidden's columns), got {w_arr.shape}"
        )
    if v < 1:
        raise ValueError(f"weight must have at least one row (V >= 1 classes), got {w_arr.shape}")
    if w_arr.dtype != h_arr.dtype:
        raise TypeError(
            f"weight must have hidden's dtype {h_arr.dtype}, got {w_arr.dtype}; convert one "
            "of them (a silent cast of a V x H weight would copy it)"
        )
    b_arr = None
    if bias is not None:
        b_arr = check.float_array(bias, "bias")
        if b_arr.shape != (v,):
            raise ValueError(f"bias must have shape (V,) = ({v},), got {b_arr.shape}")
        if b_arr.dtype != h_arr.dtype:
            raise TypeError(f"bias must have hidden's dtype {h_arr.dtype}, got {b_arr.dtype}")
    # the mean's denominator covers every row: each chunk's gradient is final
    problem = resolve_options(
        h_arr, n, v, target, reduction, label_smoothing, ignore_index, class_weight, backend,
        weight_name="class_weight",
    )  # fmt: skip
    work = problem.work
    chunk = _chunk_size(chunk_size, n, v, bytes_per_logit(problem.backend, work))

    # float16 runs in float32 (dweight then accumulates in float32, never in half)
    hw = h_arr.astype(work, copy=False)
    ww = w_arr.astype(work, copy=False)
    bw = None if b_arr is None else np.ascontiguousarray(b_arr, dtype=work)
    loss_rows = np.empty(n)
    dh = dw = db = None
    if want_grad:
        dh = np.empty((n, h), work)
        dw = np.zeros((v, h), work)  # stays zero when N == 0
        db = None if bw is None else np.empty(v, work)
    if n:
        total = fused_chunks(
            problem, hw, ww, bw, chunk, loss_rows, dhidden=dh, dweight=dw, dbias=db
        )
    else:
        total = 0.0
        if db is not None:
            db.fill(0)

    dtype = h_arr.dtype
    loss = reduced_loss(problem.reduction, loss_rows, total, problem.denom, dtype)
    if not want_grad:
        return loss
    cast = (lambda a: a) if work == dtype else (lambda a: a.astype(dtype))
    return loss, cast(dh), cast(dw), None if db is None else cast(db)


def linear_cross_entropy(
    hidden: np.ndarray,
    weight: np.ndarray,
    target: np.ndarray,
    *,
    bias: np.ndarray | None = None,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    class_weight: np.ndarray | None = None,
    chunk_size: int | None = None,
    backend: str | None = None,
):
    """cross_entropy(hidden @ weight.T + bias, target) without materialising the logits.

    hidden: (N, H); weight: (V, H) (PyTorch's nn.Linear layout); bias: (V,) or None; all
        one float dtype (float16 is computed in float32).
    target: class indices (N,) of any integer dtype, or probabilities (N, V).
    class_weight: (V,) per-class weights: :func:`cross_entropy`'s ``weight=``, renamed
        because ``weight`` is the projection here.  reduction, ignore_index and
        label_smoothing are exactly :func:`cross_entropy`'s (an all-ignored "mean" is 0).
    chunk_size: rows of logits computed at once (at most chunk_size x V exist at a
        time); None chooses it from a 256 MiB budget (``_linear.CHUNK_BYTES``, which
        also covers the float64 temporaries of the NumPy reference backend).

    Returns the loss as :func:`cross_entropy` would: a scalar of hidden's dtype, or (N,)
    row losses for reduction="none".
    """
    return _linear_cross_entropy(
        hidden, weight, target, bias, reduction, ignore_index, label_smoothing,
        class_weight, chunk_size, backend, False,
    )  # fmt: skip


def linear_cross_entropy_with_grad(
    hidden: np.ndarray,
    weight: np.ndarray,
    target: np.ndarray,
    *,
    bias: np.ndarray | None = None,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    class_weight: np.ndarray | None = None,
    chunk_size: int | None = None,
    backend: str | None = None,
):
    """Forward and backward of :func:`linear_cross_entropy` in one pass over the chunks.

    Returns (loss, dhidden (N, H), dweight (V, H), dbias (V,) or None when bias is None),
    the gradients of the loss (of loss.sum() for reduction="none") in hidden's dtype.
    dweight and dbias accumulate over the chunks in float32 at least (float64 for
    float64 inputs; dbias in float64).  Same arguments as :func:`linear_cross_entropy`.
    """
    return _linear_cross_entropy(
        hidden, weight, target, bias, reduction, ignore_index, label_smoothing,
        class_weight, chunk_size, backend, True,
    )  # fmt: skip
