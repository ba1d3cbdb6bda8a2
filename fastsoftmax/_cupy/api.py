"""The public functions for CuPy arrays: the same validation and option resolution as
``fastsoftmax/_api.py`` (shared scalar checks from ``_validate``), with every array on
the device.  The kernels follow the contract of ``fastsoftmax/reference.py``: per-row
float64 losses and gradients already multiplied by the reduction's scale.

Target validation happens on the device: the kernel records the smallest bad row with
atomicMin into a flag the host reads once after the launch (one synchronisation, not
one per row), and the ValueError names the row and the value as on the CPU.
"""

from __future__ import annotations

import cupy as cp
import numpy as np

from .. import _validate as check
from ._loader import check_device_array, launch, launch_one_block

name = "cupy"
# Class-index calls without weights take three launches and one synchronisation
# (kernels/xent.cu's xent_prologue and xent_epilogue do the denominator and the loss's
# sum on the device) instead of ~10 CuPy operations and two synchronisations.  Off until
# timed on a GPU against the default (tools/gpu_kernels.py sweep times both).
LEAN_INDEX_PATH = False


def _backend_ok(backend) -> None:
    if backend not in (None, "auto", "cupy"):
        raise ValueError(f"backend {backend!r} cannot run on CuPy arrays; use 'cupy' or 'auto'")


def _float(x, name: str):
    if not isinstance(x, cp.ndarray):
        raise TypeError(f"{name} must be a CuPy array here, got {type(x).__name__}")
    if x.dtype not in check.FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating array (float16, float32 or float64), got dtype "
            f"{x.dtype}; convert it with {name}.astype(cupy.float32)"
        )
    return x


def _rows(x, axis: int):
    """x with `axis` last, as a C-contiguous (rows, C) array (a view when possible)."""
    moved = x if axis == x.ndim - 1 else cp.moveaxis(x, axis, -1)
    c = moved.shape[-1]
    return cp.ascontiguousarray(moved).reshape(-1, c) if c else moved.reshape(-1, 0)


def _finish(res2, shape, axis, out):
    res = res2.reshape(*shape[:axis], *shape[axis + 1 :], shape[axis])
    res = res if axis == len(shape) - 1 else cp.moveaxis(res, -1, axis)
    if out is not None:
        check.out_array_like(out, shape, res.dtype, cp.ndarray)
        out[...] = res
        return out
    return res


def _rowwise(op, x, axis, out, backend):
    _backend_ok(backend)
    x = _float(x, "x")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension, got a 0-d array")
    ax = check.axis_index(axis, x.ndim, "x")
    x2 = _rows(x, ax)
    n, c = x2.shape
    res = cp.empty_like(x2)
    if x2.size:
        check_device_array(x2, "x", x2.dtype, (n, c))
        launch(op, x2.dtype, n, c, (x2, res, np.int64(n), np.int64(c)))
    return _finish(res, x.shape, ax, out)


def softmax(x, axis=-1, *, out=None, backend=None):
    return _rowwise("softmax", x, axis, out, backend)


def log_softmax(x, axis=-1, *, out=None, backend=None):
    return _rowwise("log_softmax", x, axis, out, backend)


def logsumexp(x, axis=-1, *, keepdims=False, backend=None):
    _backend_ok(backend)
    x = _float(x, "x")
    ax = check.axis_index(axis, x.ndim, "x")
    x2 = _rows(x, ax)
    n, c = x2.shape
    res = cp.empty(n, x2.dtype)
    if n:
        if c == 0:
            res.fill(-np.inf)
        else:
            launch("logsumexp", x2.dtype, n, c, (x2, res, np.int64(n), np.int64(c)))
    shape = tuple(s for i, s in enumerate(x.shape) if i != ax)
    res = res.reshape(shape)
    return cp.expand_dims(res, ax) if keepdims else res


def softmax_backward(probs, grad_out, axis=-1, *, out=None, backend=None):
    _backend_ok(backend)
    p, g = _float(probs, "probs"), _float(grad_out, "grad_out")
    check.same_shape(p, g, "probs", "grad_out")
    ax = check.axis_index(axis, p.ndim, "probs")
    res = p * (g - (g * p).sum(axis=ax, keepdims=True))
    return _store(res, out)


def log_softmax_backward(log_probs, grad_out, axis=-1, *, out=None, backend=None):
    _backend_ok(backend)
    lp, g = _float(log_probs, "log_probs"), _float(grad_out, "grad_out")
    check.same_shape(lp, g, "log_probs", "grad_out")
    ax = check.axis_index(axis, lp.ndim, "log_probs")
    res = g - cp.exp(lp) * g.sum(axis=ax, keepdims=True)
    return _store(res, out)


def _store(res, out):
    if out is None:
        return res
    check.out_array_like(out, res.shape, res.dtype, cp.ndarray)
    out[...] = res
    return out


_NULL = np.uint64(0)


def _ptr(a):
    """A nullable device pointer argument: the array, or a null pointer."""
    return a if a is not None else _NULL


def _target(target, n, c, dtype):
    if not isinstance(target, cp.ndarray):
        raise TypeError(f"target must be a CuPy array with CuPy logits, got {type(target)}")
    if target.dtype.kind in "iu" and target.shape == (n,):
        return "index", cp.ascontiguousarray(target, dtype=cp.int64)
    if target.dtype.kind == "f" and target.shape == (n, c):
        return "prob", cp.ascontiguousarray(target, dtype=dtype)
    raise ValueError(
        f"target must be class indices of shape ({n},) (an integer dtype) or "
        f"probabilities of shape ({n}, {c}) (floating), got {target.dtype} {target.shape}"
    )


def _cross_entropy(
    logits, target, reduction, ignore_index, label_smoothing, weight, backend, want_grad,
    out, inplace,
):  # fmt: skip
    _backend_ok(backend)
    z = _float(logits, "logits")
    if z.ndim != 2:
        raise ValueError(f"logits must be 2-D (N, C), got {z.ndim}-D shape {z.shape}")
    n, c = z.shape
    red = check.reduction_name(reduction)
    eps = check.smoothing(label_smoothing)
    ignore = check.ignore(ignore_index)
    acc = cp.float64 if z.dtype == cp.float64 else cp.float32
    kind, y = _target(target, n, c, z.dtype)
    if kind == "prob":
        check.ignore_with_probabilities(ignore)
    w, wsum = None, float(c)
    if weight is not None:
        if not isinstance(weight, cp.ndarray) or weight.shape != (c,):
            raise ValueError(f"weight must be a CuPy array of shape ({c},), got {weight!r}")
        w = cp.ascontiguousarray(weight, dtype=acc)
        wsum = float(w.sum(dtype=cp.float64))
    # the lean path: class indices without weights, the denominator and the loss's sum
    # on the device (xent_prologue, xent_epilogue): no host wait before the launch
    lean = LEAN_INDEX_PATH and kind == "index" and w is None and n > 0 and c > 0
    if lean:
        denom = scale = None
    elif kind == "index":
        valid = y != ignore
        if w is None:
            denom = float(valid.sum())
        else:
            denom = float(cp.where(valid, w[cp.clip(y, 0, c - 1)], 0).sum())
        scale = check.reduction_scale(red, denom)
    else:
        denom = float(n)
        scale = check.reduction_scale(red, denom)
    zc = cp.ascontiguousarray(z)
    loss = cp.empty(n, cp.float64)
    g = None
    if want_grad:
        if inplace:
            if out is not None:
                raise ValueError("pass either out= or inplace=True, not both")
            g = zc
        elif out is not None:
            check.out_array_like(out, z.shape, z.dtype, cp.ndarray)
            # the kernel writes out directly when it can (not into the logits it reads:
            # exact in-place is inplace=True's); else a buffer, copied after
            direct = out.flags.c_contiguous and not cp.may_share_memory(out, zc)
            g = out if direct else cp.empty_like(zc)
        else:
            g = cp.empty_like(zc)
        # targets (probabilities or class indices) or class weights in the memory the
        # gradient goes to: read from copies (the kernels read them while writing g)
        if cp.may_share_memory(g, y):
            y = y.copy()
        if w is not None and cp.may_share_memory(g, w):
            w = w.copy()
    value = None
    if n and c:
        check_device_array(zc, "logits", z.dtype, (n, c))
        if kind == "index":
            op = "xent_fused" if want_grad else "xent_fwd"
            if lean:
                scalars = cp.empty(2, cp.float64)  # the count of rows, the scale
                err = cp.empty(1, cp.int64)
                mean = np.int32(red == "mean")
                prologue = (y, np.int64(ignore), mean, scalars, err, np.int64(n))
                launch_one_block("xent_prologue", None, prologue)
                scale_args = (np.float64(0.0), scalars[1:])
            else:
                err = cp.full(1, n, cp.int64)
                scale_args = (np.float64(scale), _NULL)
            args = (zc, y, _ptr(w), np.float64(wsum), np.int64(ignore), np.float64(eps),
                    *scale_args, loss, *((g,) if want_grad else ()), err, np.int64(n),
                    np.int64(c))  # fmt: skip
            launch(op, z.dtype, n, c, args)
            if lean and red != "none":
                value = cp.empty((), z.dtype)
                launch_one_block("xent_epilogue", z.dtype,
                                 (loss, np.int64(n), scalars, mean, value))  # fmt: skip
            bad = int(err.get()[0])  # the one synchronisation
            if bad < n:
                bad_value = int(y[bad].get())
                raise ValueError(
                    f"target[{bad}] = {bad_value} is out of range for {c} classes "
                    f"(ignore_index={ignore})"
                )
        else:
            args = (zc, y, _ptr(w), np.float64(eps), np.float64(scale), loss, _ptr(g),
                    np.int64(n), np.int64(c))  # fmt: skip
            launch("xent_prob", z.dtype, n, c, args)
    if value is None:  # (the lean path's epilogue has written it)
        value = _reduced(loss, red, denom, z.dtype)
    if not want_grad:
        return value
    if inplace:
        if g is not z:
            z[...] = g
        return value, z
    if out is not None:
        if g is not out:
            check.out_array_like(out, z.shape, z.dtype, cp.ndarray)
            out[...] = g
        return value, out
    return value, g


def _reduced(loss, red: str, denom, dtype):
    """The per-row losses reduced as `red` says, in the logits' dtype."""
    if red == "none":
        return loss.astype(dtype)
    if red == "sum":
        return loss.sum().astype(dtype)
    return (loss.sum() / denom if denom else cp.zeros((), cp.float64)).astype(dtype)


def cross_entropy(
    logits, target, *, reduction="mean", ignore_index=-100, label_smoothing=0.0,
    weight=None, backend=None,
):  # fmt: skip
    return _cross_entropy(
        logits, target, reduction, ignore_index, label_smoothing, weight, backend,
        False, None, False,
    )  # fmt: skip


def cross_entropy_with_grad(
    logits, target, *, reduction="mean", ignore_index=-100, label_smoothing=0.0,
    weight=None, out=None, inplace=False, backend=None,
):  # fmt: skip
    return _cross_entropy(
        logits, target, reduction, ignore_index, label_smoothing, weight, backend,
        True, out, inplace,
    )  # fmt: skip


def sgd_steps(data, params, plan, s0: int, s1: int, losses) -> None:
    """The softmax-regression SGD step on CuPy arrays (see _cupy/step.py); the
    reference's arguments (fastsoftmax.reference.sgd_steps)."""
    from .step import sgd_steps as steps

    steps(data, params, plan, s0, s1, losses)
