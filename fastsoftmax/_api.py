"""The public functions: validate once, resolve options into plain numbers, dispatch.

Options (reduction, weight, label_smoothing, ignore_index) are turned here into what
every backend's kernel takes (a weight array, its sum, a gradient scale), so the
backends cannot disagree on what "mean" means.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import numpy as np

from . import _validate as check
from ._backends import current_cpu_backend, is_cupy_array, load, resolve

Reduction = Literal["mean", "sum", "none"]


def _cupy_api():
    """The CuPy twin of this module (fastsoftmax/_cupy/api.py): CuPy arrays stay on the
    device from validation to result."""
    return load("cupy")


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
# the dtypes the kernels compute in as they are (float16 goes through float32)
_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _rows(x: np.ndarray, axis: int, work: np.dtype) -> np.ndarray:
    """x with `axis` moved last as a C-contiguous (rows, C) array of dtype `work`
    (a view of x when x already is one)."""
    moved = x if axis == x.ndim - 1 else np.moveaxis(x, axis, -1)
    c = moved.shape[-1]
    rows = moved.size // c if c else int(np.prod(moved.shape[:-1]))
    return np.ascontiguousarray(moved, dtype=work).reshape(rows, c)


def _writable_rows(dest: np.ndarray, axis: int, work: np.dtype, *sources: np.ndarray):
    """A (rows, C) view of `dest` the kernel can write directly, or None when it cannot
    (wrong dtype, not contiguous, or sharing memory with an input the kernel reads,
    unless it is exactly that input: the kernels support exact in-place operation)."""
    if dest.dtype != work:
        return None
    moved = dest if axis == dest.ndim - 1 else np.moveaxis(dest, axis, -1)
    if not moved.flags.c_contiguous:
        return None
    c = moved.shape[-1]
    view = moved if moved.ndim == 2 else moved.reshape(int(np.prod(moved.shape[:-1])), c)
    for src in sources:
        if src is not dest and np.may_share_memory(view, src) and not _same_memory(view, src):
            return None
    return view


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """a and b are the same elements in the same layout (checked only for arrays that
    may share memory: reading the data pointer costs ~1 us)."""
    return (
        a.shape == b.shape
        and a.strides == b.strides
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    )


class XentProblem(NamedTuple):
    """A cross-entropy problem resolved into what every backend's kernel takes.

    kind: "index" (target holds class indices, int64) or "prob" (target holds (N, C)
    probabilities in the work dtype); weight: (C,) class weights in the work dtype or
    None, wsum their sum (C without weights); denom: the mean's denominator; scale: the
    factor every gradient is multiplied by (1/denom for "mean", 0 when denom is 0)."""

    backend: Any
    work: np.dtype
    reduction: str
    kind: str
    target: np.ndarray
    weight: np.ndarray | None
    wsum: float
    ignore: int
    eps: float
    denom: float
    scale: float

    @classmethod
    def plain(
        cls, backend: Any, work: np.dtype, target: np.ndarray, num_classes: int
    ) -> XentProblem:
        """Class indices (int64) with no options: no weights, nothing ignored, no
        smoothing, the sum of the row losses (gradient scale 1)."""
        c, n = float(num_classes), float(target.shape[0])
        return cls(backend, work, "sum", "index", target, None, c, -1, 0.0, n, 1.0)

    def run(self, z: np.ndarray, loss_rows: np.ndarray, g, rows: slice | None = None) -> float:
        """The backend's fused kernel on logits z (N, C) in the work dtype, for the
        problem's rows `rows` (None: all): per-row losses (float64) into loss_rows and
        the scaled gradient into g (None: the loss alone; z itself: in place).  Returns
        the float64 sum of the row losses."""
        y = self.target if rows is None else self.target[rows]
        be = self.backend
        if self.kind == "index":
            w, ws, ig, eps, sc = self.weight, self.wsum, self.ignore, self.eps, self.scale
            return be.xent_index(z, y, w, ws, ig, eps, sc, loss_rows, g)
        return be.xent_prob(z, y, self.weight, self.eps, self.scale, loss_rows, g)


def _unaliased(prob: XentProblem, g: np.ndarray) -> XentProblem:
    """prob with private copies of the targets (probabilities or class indices) and
    class weights that share memory with g, the gradient the kernels write (out= or
    inplace=True): the kernels support exact in-place operation on the logits only, not
    on what else they read (a class index overwritten by a gradient would be read as an
    index out of range, after the check)."""
    target, weight = prob.target, prob.weight
    if np.may_share_memory(g, target):
        target = target.copy()
    if weight is not None and np.may_share_memory(g, weight):
        weight = weight.copy()
    if target is prob.target and weight is prob.weight:
        return prob
    return prob._replace(target=target, weight=weight)


def _index_denominator(be, y, w, c: int, ignore: int, target) -> float:
    """The "mean"'s denominator of class indices y (int64), checking them: the sum of
    the weights of the non-ignored rows' classes (their count without weights)."""
    bad, denom = be.target_stats(y, w, c, ignore)
    if bad >= 0:
        _bad_target(target, bad, c, ignore)
    return denom


def _bad_target(target, row: int, c: int, ignore: int):
    value = np.asarray(target)[row]
    raise ValueError(
        f"target[{row}] = {value} is out of range for {c} classes (ignore_index={ignore})"
    )


def resolve_options(
    arr, n, c, target, reduction, label_smoothing, ignore_index, weight, backend,
    weight_name="weight",
) -> XentProblem:  # fmt: skip
    """The cross-entropy options of an (N, C) problem on `arr`, checked and resolved into
    what the kernels take (see XentProblem).

    The denominator is the sum of the target weights of the non-ignored rows for class
    indices (checking them), N for probabilities; the scale is 1/denominator for "mean"
    (0 when it is 0: PyTorch gives NaN), else 1."""
    red = check.reduction_name(reduction)
    eps = check.smoothing(label_smoothing)
    ignore = check.ignore(ignore_index)
    be = resolve(arr, backend)
    work = check.compute_dtype(arr.dtype)
    kind, y = check.target(target, n, c, work)
    w, wsum = check.class_weight(weight, c, work, name=weight_name)
    if kind == "index":
        denom = _index_denominator(be, y, w, c, ignore, target)
    else:
        check.ignore_with_probabilities(ignore)
        denom = float(n)
    scale = check.reduction_scale(red, denom)
    return XentProblem(be, work, red, kind, y, w, wsum, ignore, eps, denom, scale)


def cross_entropy_index_rows(z, y, mean: bool, ignore_index: int, g):
    """The loss of class-index targets without weights or smoothing ("mean" or "sum"),
    with the gradient written into g, for callers that already hold the kernels' layout:
    z a C-contiguous (N, C) float32 or float64 NumPy array, y a C-contiguous int64 (N,)
    array, g None or a writable C-contiguous array of z's shape and dtype that overlaps
    neither.  The targets are checked as in cross_entropy.  This is fastsoftmax.torch's
    path for a classifier's minibatch: at 64 x 10 the public function's argument
    handling costs more than the kernel, so a small call is one call of the backend's
    xent_index_minibatch where it has one (the same bits)."""
    n, c = z.shape
    be = resolve(z, None)
    red = "mean" if mean else "sum"
    # one call on the calling thread: only where the backend's kernels would not use
    # threads anyway
    if hasattr(be, "xent_index_minibatch") and z.size <= be.SERIAL_MAX_ELEMENTS:
        bad, loss = be.xent_index_minibatch(z, y, ignore_index, mean, g)
        if bad >= 0:
            _bad_target(y, bad, c, ignore_index)
        return rounded(loss, z.dtype)
    denom = _index_denominator(be, y, None, c, ignore_index, y)
    scale = check.reduction_scale(red, denom)
    loss_rows = np.empty(n)
    total = be.xent_index(z, y, None, float(c), ignore_index, 0.0, scale, loss_rows, g)
    return reduced_loss(red, loss_rows, total, denom, z.dtype)


def cross_entropy_index_rows_at(
    z_at: int, y_at: int, g_at: int, n: int, c: int, float64: bool, mean: bool, ignore_index: int
) -> float | None:
    """cross_entropy_index_rows with the gradient, on C-contiguous buffers given by
    their addresses, for a caller that holds no NumPy arrays (fastsoftmax.torch's
    tensors: making the arrays would cost more than the kernel at 64 x 10).  z: (n, c)
    float32, or float64 where `float64`; y: (n,) int64; g: z's shape and dtype,
    writable, overlapping neither.  The caller vouches for the buffers.  Returns the
    loss in float64 (the caller rounds it to z's dtype), or None where this takes no
    shortcut (the current backend has no such kernel, the call is too large for one
    serial call, or a target is out of range): the caller then calls
    cross_entropy_index_rows, which checks and raises as usual."""
    be = current_cpu_backend()
    if be is None or not hasattr(be, "xent_index_minibatch_at") or n * c > be.SERIAL_MAX_ELEMENTS:
        return None
    bad, loss = be.xent_index_minibatch_at(z_at, y_at, g_at, n, c, float64, ignore_index, mean)
    return None if bad >= 0 else loss


def reduced_loss(red: str, loss_rows: np.ndarray, total: float, denom: float, dtype):
    """The loss the caller gets from the kernels' float64 row losses and their sum:
    the rows for "none", else a scalar of `dtype` (the "mean" of an all-ignored batch
    is 0, where PyTorch gives NaN)."""
    if red == "none":
        if dtype in _FINITE_MAX:  # rows past float32's range: inf, as rounded's
            with np.errstate(over="ignore"):
                return loss_rows.astype(dtype)
        return loss_rows.astype(dtype)
    if red == "sum":
        return rounded(total, dtype)
    return rounded(total / denom if denom else 0.0, dtype)


# the largest finite value of the narrow float dtypes a loss is returned in
_FINITE_MAX = {np.dtype(t): float(np.finfo(t).max) for t in (np.float16, np.float32)}
_F16_MAX = _FINITE_MAX[np.dtype(np.float16)]  # the smallest of them


def rounded(value: float, dtype: np.dtype) -> np.floating:
    """The float64 `value` as a `dtype` scalar: inf past its range, without NumPy's
    overflow warning (a loss too large for float32 is inf there, as in PyTorch)."""
    if -_F16_MAX <= value <= _F16_MAX:  # no dtype overflows here: no lookup
        return dtype.type(value)
    if abs(value) > _FINITE_MAX.get(dtype, math.inf):
        with np.errstate(over="ignore"):
            return dtype.type(value)
    return dtype.type(value)


# --------------------------------------------------------------------------------------
# softmax family
# --------------------------------------------------------------------------------------
def _apply_rows(kernel, sources, shape, axis, out, dtype, work):
    """Run ``kernel(*sources, result)`` on (rows, C) arrays and return the result in
    `shape` and `dtype` with `axis` back in place (written into `out` when given)."""
    target = None
    if out is not None:
        check.out_array(out, shape, dtype)
        target = _writable_rows(out, axis, work, *sources)
    o2 = target if target is not None else np.empty(sources[0].shape, work)
    if o2.size:
        kernel(*sources, o2)
    if target is not None:
        return out
    # shape without axis, then axis (tuple slices: np.delete costs ~3 us)
    res = o2.reshape(*shape[:axis], *shape[axis + 1 :], shape[axis])
    res = res if axis == len(shape) - 1 else np.moveaxis(res, -1, axis)
    if out is not None:
        np.copyto(out, res, casting="unsafe")
        return out
    return res.astype(dtype, copy=False)


def _rowwise(op: str, x: object, axis: int, out: np.ndarray | None, backend: str | None):
    if (
        out is None
        and type(x) is np.ndarray
        and x.ndim == 2
        and type(axis) is int
        and (axis == -1 or axis == 1)
        and x.dtype in _KERNEL_DTYPES
        and x.flags.c_contiguous
    ):
        # the common (N, C) call: rows as they are, straight to the kernel (what the
        # general path below does for it, less its ~3 us of reshaping at 64 x 10)
        res = np.empty_like(x)
        if res.size:
            getattr(resolve(x, backend), op)(x, res)
        return res
    arr = check.float_array(x, "x")
    if arr.ndim == 0:
        raise ValueError("x must have at least one dimension, got a 0-d array")
    ax = check.axis_index(axis, arr.ndim, "x")
    be = resolve(arr, backend)
    work = check.compute_dtype(arr.dtype)
    x2 = _rows(arr, ax, work)
    return _apply_rows(getattr(be, op), (x2,), arr.shape, ax, out, arr.dtype, work)


def softmax(
    x: np.ndarray, axis: int = -1, *, out: np.ndarray | None = None, backend: str | None = None
) -> np.ndarray:
    """softmax(x) = exp(x - max) / sum(exp(x - max)) along `axis`.

    x: any shape, float16/32/64.  Returns an array of x's shape and dtype (written into
    `out` when given; `out` may be `x` itself for an in-place softmax).  A slice whose
    entries are all -inf gives NaN (0/0), as in PyTorch.
    """
    if is_cupy_array(x):
        return _cupy_api().softmax(x, axis, out=out, backend=backend)
    return _rowwise("softmax", x, axis, out, backend)


def log_softmax(
    x: np.ndarray, axis: int = -1, *, out: np.ndarray | None = None, backend: str | None = None
) -> np.ndarray:
    """log_softmax(x) = x - logsumexp(x) along `axis`; same shapes and rules as softmax."""
    if is_cupy_array(x):
        return _cupy_api().log_softmax(x, axis, out=out, backend=backend)
    return _rowwise("log_softmax", x, axis, out, backend)


def logsumexp(
    x: np.ndarray, axis: int = -1, *, keepdims: bool = False, backend: str | None = None
) -> np.ndarray:
    """log(sum(exp(x))) along `axis`, computed stably.

    x: (..., C, ...) -> x's shape without `axis` (or with it as 1 if keepdims), x's dtype.
    An all -inf slice gives -inf, a slice holding +inf gives +inf, an empty one -inf.
    """
    if is_cupy_array(x):
        return _cupy_api().logsumexp(x, axis, keepdims=keepdims, backend=backend)
    arr = check.float_array(x, "x")
    if arr.ndim == 0:
        raise ValueError("x must have at least one dimension, got a 0-d array")
    ax = check.axis_index(axis, arr.ndim, "x")
    be = resolve(arr, backend)
    work = check.compute_dtype(arr.dtype)
    x2 = _rows(arr, ax, work)
    res = np.empty(x2.shape[0], work)
    if x2.shape[1] == 0:
        res.fill(-np.inf)
    elif res.size:
        be.logsumexp(x2, res)
    res = res.reshape(arr.shape[:ax] + arr.shape[ax + 1 :]).astype(arr.dtype, copy=False)
    return np.expand_dims(res, ax) if keepdims else res


def _backward(op, y, y_name, grad_out, axis, out, backend):
    y_arr = check.float_array(y, y_name)
    g_arr = check.float_array(grad_out, "grad_out")
    if y_arr.ndim == 0:
        raise ValueError(f"{y_name} must have at least one dimension, got a 0-d array")
    check.same_shape(y_arr, g_arr, y_name, "grad_out")
    ax = check.axis_index(axis, y_arr.ndim, y_name)
    be = resolve(y_arr, backend)
    dtype = np.result_type(y_arr, g_arr)
    work = check.compute_dtype(dtype)
    sources = (_rows(y_arr, ax, work), _rows(g_arr, ax, work))
    return _apply_rows(getattr(be, op), sources, y_arr.shape, ax, out, dtype, work)


def softmax_backward(
    probs: np.ndarray,
    grad_out: np.ndarray,
    axis: int = -1,
    *,
    out: np.ndarray | None = None,
    backend: str | None = None,
) -> np.ndarray:
    """Vector-Jacobian product of softmax: given probs = softmax(x) and grad_out = dL/dprobs,
    returns dL/dx = probs * (grad_out - sum(grad_out * probs, axis)).

    probs, grad_out: the same shape; the result has that shape and their common dtype.
    """
    if is_cupy_array(probs):
        return _cupy_api().softmax_backward(probs, grad_out, axis, out=out, backend=backend)
    return _backward("softmax_backward", probs, "probs", grad_out, axis, out, backend)


def log_softmax_backward(
    log_probs: np.ndarray,
    grad_out: np.ndarray,
    axis: int = -1,
    *,
    out: np.ndarray | None = None,
    backend: str | None = None,
) -> np.ndarray:
    """Vector-Jacobian product of log_softmax: given log_probs = log_softmax(x) and
    grad_out = dL/dlog_probs, returns dL/dx = grad_out - exp(log_probs) * sum(grad_out, axis).
    """
    if is_cupy_array(log_probs):
        return _cupy_api().log_softmax_backward(log_probs, grad_out, axis, out=out, backend=backend)
    return _backward("log_softmax_backward", log_probs, "log_probs", grad_out, axis, out, backend)


# --------------------------------------------------------------------------------------
# cross-entropy
# --------------------------------------------------------------------------------------
# class-index dtypes taken as they are or converted to int64 at no risk (not uint64:
# past int64 its values would wrap around)
_INDEX_DTYPES = frozenset(
    np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32)
)
_I64 = np.dtype(np.int64)
_PLAIN_REDUCTIONS = frozenset({"mean", "sum"})


def _plain_call(z, target, reduction, ignore_index, weight, backend, want_grad, g_to):
    """The plain classifier call (class indices, no weights or smoothing, "mean" or
    "sum") with the general path's kernel calls (the backend's target_stats and
    xent_index, so the same bits and the same kernels to compile on a cold cache)
    without its option handling: at 64 x 10 that handling cost more than the kernel.
    Returns the loss, or (loss, gradient); None where the call is not that case (the
    caller's general path then checks and runs it).  g_to: where the gradient goes:
    None (a new array), logits itself (inplace=True, or out= given as logits), or an
    out= array apart from both inputs.  Every test here is a cheap read;
    label_smoothing is 0 (the caller checked)."""
    if not (
        weight is None
        and type(reduction) is str
        and reduction in _PLAIN_REDUCTIONS
        and type(ignore_index) is int
        and check.INT64_MIN <= ignore_index <= check.INT64_MAX
        and type(z) is np.ndarray
        and type(target) is np.ndarray
        and z.ndim == 2
        and target.ndim == 1
        and z.dtype in _KERNEL_DTYPES
        and target.dtype in _INDEX_DTYPES
        and 0 < z.shape[0] == target.shape[0]
        and z.shape[1] > 0
        and z.flags.c_contiguous
    ):
        return None
    be = resolve(z, backend)
    n, c = z.shape
    y = target if target.dtype is _I64 or target.dtype == _I64 else target.astype(_I64)
    y = y if y.flags.c_contiguous else np.ascontiguousarray(y)
    denom = _index_denominator(be, y, None, c, ignore_index, target)
    scale = check.reduction_scale(reduction, denom)
    g = None if not want_grad else (np.empty_like(z) if g_to is None else g_to)
    loss_rows = np.empty(n)
    total = be.xent_index(z, y, None, float(c), ignore_index, 0.0, scale, loss_rows, g)
    loss = reduced_loss(reduction, loss_rows, total, denom, z.dtype)
    return (loss, g) if want_grad else loss


def _separate_out(out, z, target) -> bool:
    """Whether out= can take the kernel's gradient directly: a writable C-contiguous
    array of the logits' shape and dtype sharing memory with neither input (anything
    else takes the general path, which checks it)."""
    return (
        type(out) is np.ndarray
        and type(z) is np.ndarray
        and type(target) is np.ndarray
        and out.dtype is z.dtype
        and out.shape == z.shape
        and out.flags.c_contiguous
        and out.flags.writeable
        and not np.may_share_memory(out, z)
        and not np.may_share_memory(out, target)
    )


def _cross_entropy(
    logits,
    target,
    reduction,
    ignore_index,
    label_smoothing,
    weight,
    backend,
    want_grad,
    out,
    inplace,
):
    if type(label_smoothing) in (float, int) and label_smoothing == 0:
        # the plain classifier call: straight to the kernels (the gradient into a new
        # array, into logits for inplace=True or out=logits, or an out= apart from both)
        if not want_grad or (inplace is False and out is None):
            done = _plain_call(
                logits, target, reduction, ignore_index, weight, backend, want_grad, None
            )
        elif (inplace is True and out is None) or (inplace is False and out is logits):
            writable = (
                type(logits) is np.ndarray
                and logits.flags.writeable
                and not np.may_share_memory(logits, target)  # the general path copies it
            )
            done = None if not writable else _plain_call(
                logits, target, reduction, ignore_index, weight, backend, True, logits
            )  # fmt: skip
        elif inplace is False and _separate_out(out, logits, target):
            done = _plain_call(logits, target, reduction, ignore_index, weight, backend, True, out)
        else:
            done = None
        if done is not None:
            return done
    z = check.logits_2d(logits)
    n, c = z.shape
    prob = resolve_options(
        z, n, c, target, reduction, label_smoothing, ignore_index, weight, backend
    )
    work = prob.work

    if (z.dtype is work or z.dtype == work) and z.flags.c_contiguous:
        zw = z
    else:
        zw = np.ascontiguousarray(z, dtype=work)
    g = None
    if want_grad:
        if check.flag(inplace, "inplace"):
            if out is not None:
                raise ValueError("pass either out= or inplace=True, not both")
            if not z.flags.writeable:
                raise ValueError("logits is read-only; inplace=True needs a writeable array")
            g = zw  # the kernels read each row fully before overwriting it
        elif out is not None:
            check.out_array(out, z.shape, z.dtype)
            g = _writable_rows(out, 1, work, zw)  # out may be logits itself
        if g is None:
            g = np.empty((n, c), work)
        else:
            prob = _unaliased(prob, g)

    loss_rows = np.empty(n)
    total = prob.run(zw, loss_rows, g)
    loss = reduced_loss(prob.reduction, loss_rows, total, prob.denom, z.dtype)
    if not want_grad:
        return loss

    if inplace:
        if g is not z:
            np.copyto(z, g, casting="unsafe")
        return loss, z
    if out is not None:
        if g is not out:
            np.copyto(out, g, casting="unsafe")
        return loss, out
    return loss, (g if g.dtype is z.dtype or g.dtype == z.dtype else g.astype(z.dtype))


def cross_entropy(
    logits: np.ndarray,
    target: np.ndarray,
    *,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    weight: np.ndarray | None = None,
    backend: str | None = None,
):
    """Cross-entropy between softmax(logits) and a target, as PyTorch's F.cross_entropy.

    logits: (N, C) float16/32/64.
    target: class indices (N,) of any integer dtype, or probabilities (N, C) (floating).
    weight: (C,) per-class weights, or None.
    ignore_index: rows whose class index equals it contribute 0 and are left out of the
        mean's denominator (class-index targets only).
    label_smoothing: eps in [0, 1]; the target becomes (1 - eps) * target + eps / C.
    reduction: "mean" (sum of row losses / sum of the target weights of the non-ignored
        rows, or / N for probability targets), "sum", or "none" ((N,) row losses).

    Returns a scalar of logits' dtype, or an (N,) array for reduction="none".

    Differences from PyTorch, both deliberate: a "mean" whose denominator is 0 (every
    target ignored, or an empty batch) is 0, not NaN; and a term with a zero coefficient
    (a zero weight or probability) contributes 0 even where log_softmax is -inf.
    """
    if is_cupy_array(logits):
        return _cupy_api().cross_entropy(
            logits, target, reduction=reduction, ignore_index=ignore_index,
            label_smoothing=label_smoothing, weight=weight, backend=backend,
        )  # fmt: skip
    return _cross_entropy(
        logits,
        target,
        reduction,
        ignore_index,
        label_smoothing,
        weight,
        backend,
        False,
        None,
        False,
    )


def cross_entropy_with_grad(
    logits: np.ndarray,
    target: np.ndarray,
    *,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    weight: np.ndarray | None = None,
    out: np.ndarray | None = None,
    inplace: bool = False,
    backend: str | None = None,
):
    """Fused forward and backward of :func:`cross_entropy`, one pass over the logits.

    Returns (loss, dlogits): loss as cross_entropy returns it; dlogits (N, C) of logits'
    dtype = d(loss)/d(logits) for the chosen reduction (for "none", the gradient of
    loss.sum()), i.e. (softmax(logits) - target) times the reduction's scale.

    out: an (N, C) array of logits' dtype to receive dlogits (saves the allocation).
    inplace: write dlogits over logits and return logits (opt-in memory saving).
    """
    if is_cupy_array(logits):
        return _cupy_api().cross_entropy_with_grad(
            logits, target, reduction=reduction, ignore_index=ignore_index,
            label_smoothing=label_smoothing, weight=weight, out=out, inplace=inplace,
            backend=backend,
        )  # fmt: skip
    return _cross_entropy(
        logits,
        target,
        reduction,
        ignore_index,
        label_smoothing,
        weight,
        backend,
        True,
        out,
        inplace,
    )
