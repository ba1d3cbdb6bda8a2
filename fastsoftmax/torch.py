"""fastsoftmax for PyTorch: the fused cross-entropy as a drop-in loss (the ``torch`` extra).

``cross_entropy`` and ``CrossEntropyLoss`` take ``torch.nn.functional.cross_entropy``'s
and ``torch.nn.CrossEntropyLoss``'s arguments, ``linear_cross_entropy`` those of
PyTorch 2.13's ``F.linear_cross_entropy``; results and gradients are PyTorch's, with
the package's two documented differences (a "mean" over no kept row is 0, not NaN; a
term with a zero coefficient is 0 even where log_softmax is -inf).

How a call runs
---------------
* The forward pass computes the loss *and* d(loss)/d(input) in one pass over the
  logits (``fastsoftmax.cross_entropy_with_grad``); the gradient is saved, and the
  backward pass only multiplies it by the upstream gradient (a scalar for "mean" and
  "sum", one factor per row for "none").  When that factor is exactly 1 (the usual
  ``loss.backward()``) on the CPU, the saved gradient itself becomes ``input.grad``.
  Without grad mode, or when the input does not require grad, only the loss is computed.
* CPU tensors reach the Numba kernels as zero-copy NumPy views (``tensor.numpy()``),
  and the gradient is written straight into a tensor PyTorch owns.  float32 and float64
  compute in their own type; float16 and bfloat16 are copied to float32 (the gradient
  then overwrites that copy) and come back in their dtype.  A non-contiguous input is
  copied once and gives exactly the contiguous input's result.
* CUDA tensors reach the CuPy kernels through DLPack on PyTorch's current stream, with
  no copy to the host (the CuPy backend reads back one flag per call to report a bad
  target).  They need the ``cuda`` extra.
* The kernels use at most ``torch.get_num_threads()`` threads (and never more than
  ``fastsoftmax.get_num_threads()``), so they share the cores with PyTorch's intra-op
  pool; calls of up to 16384 logits, such as a classifier's minibatch, run on the
  calling thread.
* The ops are ``torch.library`` custom ops (``fastsoftmax::cross_entropy``,
  ``cross_entropy_fwd``, ``linear_cross_entropy``, ``linear_cross_entropy_fwd``,
  ``linear_cross_entropy_bwd``) with fake (meta) implementations and autograd formulas,
  so ``torch.compile(fullgraph=True)`` traces them without a graph break.  Outside
  ``torch.compile`` the eager ``cross_entropy`` runs the same code through a
  ``torch.autograd.Function``, which costs ~100 us less per call than the custom op's
  dispatch (what matters for small minibatches); the plain classifier call (a small
  contiguous float32/float64 input, int64 class indices, "mean" or "sum", no weights or
  smoothing) takes a leaner one still (``_MinibatchFunction``, applied past
  ``Function.apply``'s Python layer: one kernel call checks the targets and computes
  the loss and the gradient), with the same bits.  Its
  forward without grad mode costs ~10 us at 64 x 10, PyTorch's ~13 us; in a training
  step the autograd node's Python is the rest of the difference (docs/performance.md).

* Under torch.func transforms (``grad``, ``vjp``, ``jacrev``, ``vmap`` and their
  compositions, such as per-sample gradients) ``cross_entropy`` runs through
  ``_TransformableFunction``, which has the form torch.func asks of a Function; its
  vmap rule makes one kernel call per sample.  ``linear_cross_entropy`` is then
  ``F.linear`` followed by ``cross_entropy`` (the logits whole: the custom ops have no
  vmap or jvp rule), and so under forward-mode AD.
* Second order: the saved gradient is an output of the Function (not returned to the
  caller), so a gradient flowing into it (double backward with ``create_graph=True``,
  ``torch.func.jacrev`` of ``grad``, ``hessian``) gets the softmax's Jacobian, computed
  from that gradient alone (``_SecondOrder``); forward-mode AD (dual tensors,
  ``torch.func.jvp``) has a jvp rule.  The minibatch path holds its small input and, in
  a backward with ``create_graph=True``, runs the call again through that Function.
  ``linear_cross_entropy``'s backward with ``create_graph=True`` computes the logits
  again, whole, and differentiates through that Function (``_linear_second_order``).

``linear_cross_entropy`` runs PyTorch's GEMMs (MKL, cuBLAS) on chunks of rows and the
fused kernel on each chunk's logits in place, so at most ``chunk_size x V`` logits exist
at a time (default: 1/16 of the N x V logits, 64 rows at least, 256 MiB at most); dinput,
dweight and dbias are computed in the forward pass for "mean" and "sum".  For "none"
the backward needs each row's upstream factor inside dweight's sum, so the forward
computes the loss alone and the backward computes the logits again, chunk by chunk.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor

from . import _api
from . import _validate as check
from ._backends import BackendUnavailableError
from ._threads import get_num_threads, thread_limit

__all__ = ["CrossEntropyLoss", "cross_entropy", "linear_cross_entropy"]

# the dtype each input dtype is computed in
_WORK = {
    torch.float32: torch.float32,
    torch.float64: torch.float64,
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
}
# The eager cross_entropy runs through _CrossEntropyFunction (lower per-call cost than
# the custom op's dispatch); False sends eager calls through the custom ops too (tests)
EAGER_FUNCTION = True

# CPU buffers of at least this many elements are allocated by NumPy (_new); smaller
# ones by torch.empty, 0.5 us faster
NUMPY_MIN_ELEMENTS = 2**18

# Calls of at most this many logits run on the calling thread whatever the thread
# settings (README, Threads), so they skip thread_limit's ~3 us
SERIAL_LOGITS = 16384

# linear_cross_entropy's default chunk: at most 1/CHUNK_FRACTION of the logits (peak
# extra memory ~6% of N x V, the target is <= 10%), at least CHUNK_MIN_ROWS rows (GEMMs
# of fewer rows run well below BLAS's speed), at most CHUNK_MAX_BYTES of logits
CHUNK_FRACTION = 16
CHUNK_MIN_ROWS = 64
CHUNK_MAX_BYTES = 256 * 2**20


# Whether a torch.func transform (grad, vjp, jacrev, vmap, ...) is active: our kernels
# then run through _TransformableFunction, whose forward sees plain tensors
_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


def _dual_level_active() -> bool:
    """Whether forward-mode AD (torch.autograd.forward_ad.dual_level) is on: an input
    may then carry a tangent without requiring grad, and only the Function computes the
    loss's (jvp)."""
    return getattr(_forward_ad, "_current_level", 0) >= 0


# Under torch.autocast, PyTorch computes its cross-entropy in float32 from float16 and
# bfloat16 inputs (float64 stays)
_AUTOCAST_FP32 = (torch.float16, torch.bfloat16)


def _autocast_enabled(x: Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except TypeError:  # a PyTorch before 2.4: no device_type argument
        return torch.is_autocast_enabled() if x.is_cuda else torch.is_autocast_cpu_enabled()


# --------------------------------------------------------------------------------------
# argument checks (PyTorch's argument names)
# --------------------------------------------------------------------------------------
def _legacy_reduction(size_average, reduce) -> str:
    """torch.nn's mapping of the deprecated size_average and reduce to a reduction."""
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    if not reduce:
        return "none"
    return "mean" if size_average else "sum"


def _float_tensor(x, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _WORK:
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got {x.dtype}"
        )
    return x


def _same_device(x: Tensor, name: str, ref: Tensor, ref_name: str) -> None:
    if x.device != ref.device:
        raise ValueError(f"{name} is on {x.device} but {ref_name} is on {ref.device}")


def _not_differentiable(x, name: str) -> None:
    if x is not None and x.requires_grad and torch.is_grad_enabled():
        raise NotImplementedError(
            f"fastsoftmax.torch does not differentiate with respect to {name}; pass {name}.detach()"
        )


def _target(target, c: int, batch: tuple, input_shape: tuple, ref: Tensor) -> bool:
    """Check `target` against the input; True for probabilities, False for indices."""
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    _same_device(target, "target", ref, "input")
    if target.is_floating_point():
        if tuple(target.shape) != input_shape:
            raise ValueError(
                f"target of class probabilities must have input's shape {input_shape}, got "
                f"{tuple(target.shape)}; class indices must be an integer tensor of shape "
                f"{batch}"
            )
        return True
    if target.dtype == torch.bool or target.is_complex():
        raise TypeError(
            f"target must be integer class indices or floating-point probabilities, got "
            f"{target.dtype}"
        )
    if tuple(target.shape) != batch:
        raise ValueError(
            f"target of class indices must have shape {batch} (input's shape {input_shape} "
            f"without the class dimension), got {tuple(target.shape)}"
        )
    return False


def _class_weight(weight, c: int, ref: Tensor, name: str = "weight"):
    if weight is None:
        return None
    if not isinstance(weight, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(weight).__name__}")
    if tuple(weight.shape) != (c,):
        raise ValueError(f"{name} must have shape (C,) = ({c},), got {tuple(weight.shape)}")
    if not (weight.is_floating_point() or weight.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must be a real tensor, got {weight.dtype}")
    _same_device(weight, name, ref, "input")
    _not_differentiable(weight, name)
    return weight


# --------------------------------------------------------------------------------------
# the kernels on tensors
# --------------------------------------------------------------------------------------
# NumPy dtypes of the same item size: CPU buffers are allocated by NumPy
_NUMPY = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.float16: np.float16,
    torch.bfloat16: np.uint16,
}


def _new(shape, dtype: torch.dtype, like: Tensor, zero: bool = False) -> Tensor:
    """An uninitialised (or zero) contiguous tensor on `like`'s device.  On the CPU its
    memory comes from NumPy, which asks for transparent huge pages for large arrays:
    a fresh 4096 x 32000 float32 gradient is written in 56 ms there against 141 ms in
    torch.empty's 4 KiB pages (Linux, THP "madvise" mode)."""
    if not like.is_cpu or math.prod(shape) < NUMPY_MIN_ELEMENTS:
        return (torch.zeros if zero else torch.empty)(shape, dtype=dtype, device=like.device)
    arr = (np.zeros if zero else np.empty)(shape, _NUMPY[dtype])
    t = torch.from_numpy(arr)
    return t if t.dtype == dtype else t.view(dtype)


def _cast(x: Tensor, dtype: torch.dtype) -> Tensor:
    """A contiguous copy of x in `dtype` (in a _new buffer)."""
    return _new(x.shape, dtype, x).copy_(x)


def _cupy():
    try:
        import cupy
    except ImportError as err:
        raise BackendUnavailableError(
            "CUDA tensors run on fastsoftmax's CuPy kernels: pip install 'fastsoftmax[cuda]'"
        ) from err
    return cupy


INPLACE = "inplace"  # _kernel's grad= for a gradient written over the logits


def _call(z, y, w, red: str, ignore: int, eps: float, grad):
    """The op API on NumPy or CuPy arrays; grad: None, INPLACE or an array."""
    if grad is None:
        return _api.cross_entropy(
            z, y, reduction=red, ignore_index=ignore, label_smoothing=eps, weight=w
        )
    if grad is INPLACE:
        return _api.cross_entropy_with_grad(
            z, y, reduction=red, ignore_index=ignore, label_smoothing=eps, weight=w,
            inplace=True,
        )[0]  # fmt: skip
    return _api.cross_entropy_with_grad(
        z, y, reduction=red, ignore_index=ignore, label_smoothing=eps, weight=w, out=grad
    )[0]


def _kernel(z: Tensor, y: Tensor, w, red: str, ignore: int, eps: float, grad) -> Tensor:
    """The fused kernel on a contiguous (M, C) float32/float64 tensor `z` (detached):
    returns the loss as a tensor of z's dtype; `grad` is None (loss only), INPLACE (the
    gradient overwrites z) or an (M, C) tensor to receive it.  y, w: the target (int64 or
    z's dtype) and class weights (z's dtype), contiguous, on z's device."""
    if z.is_cpu:
        wn = None if w is None else w.numpy()
        gn = grad if grad is None or grad is INPLACE else grad.numpy()
        threads = torch.get_num_threads()
        if z.numel() <= SERIAL_LOGITS or threads >= get_num_threads():
            loss = _call(z.numpy(), y.numpy(), wn, red, ignore, eps, gn)
        else:  # PyTorch was told to use fewer threads than we may: so do we
            with thread_limit(max(1, threads)):
                loss = _call(z.numpy(), y.numpy(), wn, red, ignore, eps, gn)
        return torch.from_numpy(np.asarray(loss))
    if not z.is_cuda:
        raise NotImplementedError(
            f"input is on {z.device}; fastsoftmax.torch runs CPU and CUDA tensors"
        )
    cp = _cupy()
    index = z.device.index
    stream = torch.cuda.current_stream(z.device)
    with cp.cuda.Device(index), cp.cuda.ExternalStream(stream.cuda_stream, index):
        wc = None if w is None else cp.from_dlpack(w)
        gc = grad if grad is None or grad is INPLACE else cp.from_dlpack(grad)
        loss = _call(cp.from_dlpack(z), cp.from_dlpack(y), wc, red, ignore, eps, gc)
        return torch.from_dlpack(loss)


def _prepared(target: Tensor, weight, work: torch.dtype):
    """target and class weights as the kernels take them (views when they already are)."""
    # resolve_neg: a tensor with PyTorch's negative bit holds -x in memory (a no-op else)
    y = target.detach().resolve_neg()
    y = y.to(work) if y.is_floating_point() else y
    w = None if weight is None else weight.detach().resolve_neg().to(work).contiguous()
    return y.contiguous(), w


def _xent(x: Tensor, target: Tensor, weight, red: str, ignore: int, eps: float, want_grad):
    """(loss, d loss/d x or None) of an (M, C) input, both in x's dtype; for "none" the
    gradient is that of loss.sum()."""
    dtype = x.dtype
    work = _WORK[dtype]
    z = x.detach()
    fresh = dtype != work or not z.is_contiguous() or z.is_neg()
    if fresh:  # our own copy (negative bit resolved): the gradient can overwrite it
        z = _cast(z, work)
    y, w = _prepared(target, weight, work)
    g = None
    if not want_grad:
        loss = _kernel(z, y, w, red, ignore, eps, None)
    elif fresh:
        loss = _kernel(z, y, w, red, ignore, eps, INPLACE)
        g = z
    else:
        g = _new(z.shape, work, z)
        loss = _kernel(z, y, w, red, ignore, eps, g)
    if dtype != work:
        loss = loss.to(dtype)
        g = None if g is None else _cast(g, dtype)
    return loss, g


def _is_one(go: Tensor) -> bool:
    """go is exactly 1 and may be read now (a plain CPU tensor outside tracing)."""
    return (
        type(go) is Tensor
        and go.is_cpu
        and go.dim() == 0
        and not go.requires_grad
        and not torch.compiler.is_compiling()
        and not _transforms_active()  # go may be batched (vmap): no .item()
        and go.item() == 1.0
    )


def _scaled(g: Tensor, go: Tensor | None, rows: bool) -> Tensor | None:
    """The saved gradient g times the upstream gradient go (per row when `rows`); None
    when go is (an undefined gradient: no materialised zeros)."""
    if go is None:
        return None
    if rows:
        return g * go.unsqueeze(-1).to(g.dtype)
    if _is_one(go):
        return g
    return g * go.to(g.dtype)


def _given(ctx, saved, go: Tensor | None, rows: bool) -> list:
    """[_scaled(g, go, rows) for g in saved (None where g is None)] for a backward to
    return.  Where that is a saved g itself: g the first time (no copy: input.grad is the
    forward's own gradient), a copy after that (a graph kept with retain_graph=True
    would otherwise hand the same memory out twice).

    In a first-order backward each g must be the very tensor that ctx saved as a
    non-output (_saved_gradient): PyTorch then takes it over as input.grad without a
    copy only where the graph is freed after this backward (its saved reference gone),
    and copies it where the graph is kept, so that input.grad (which a later backward
    adds to in place, or the caller zeroes) never shares memory with what a later
    backward reads.  A detached view of a saved output would be taken over in both
    cases.  In a backward with create_graph=True, g is the differentiable output."""
    if torch.compiler.is_compiling():
        return [None if g is None else _scaled(g, go, rows) for g in saved]
    again = getattr(ctx, "given", False)
    ctx.given = True
    out = []
    for g in saved:
        d = None if g is None else _scaled(g, go, rows)
        if d is not None and d is g and again:
            d = g.clone()
        out.append(d)
    return out


def _saved_gradient(g: Tensor) -> tuple[Tensor, Tensor]:
    """What a Function whose output g is its gradient saves: g (differentiable, for
    second order) and a detached alias of it (no copy), the tensor a first-order
    backward hands out (see _given)."""
    return g, g.detach()


# --------------------------------------------------------------------------------------
# second order: the derivative of the gradient the forward computed
# --------------------------------------------------------------------------------------
# Row i of the gradient is g_i = a_i p_i - b_i, p_i = softmax(x_i).  b_i holds the target
# row's class coefficients times the reduction's scale s: s ((1 - eps) w_y e_y + eps/C w)
# for a class index y (0 for an ignored row), s w * ((1 - eps) q_i + eps/C) for
# probabilities q_i (w: the class weights, or ones); it does not depend on x, and
# a_i = sum_c b_ic (differentiate the loss row -sum_c b_ic log p_ic).  So
#     d g_i / d x_i = a_i (diag(p_i) - p_i p_i^T),
# a symmetric matrix: J v = a_i (p_i * v_i - p_i (p_i . v_i)) for a tangent v and for a
# cotangent alike.  p_i = (g_i + b_i) / a_i gives the probabilities back from the saved
# gradient (a row with a_i = 0 has g_i = 0 and J = 0), so second order needs nothing kept
# beyond the gradient, and as these are PyTorch ops on it, any order works.
def _target_coefficients(g: Tensor, target: Tensor, weight, red: str, ignore: int, eps: float):
    """b (the rows' target coefficients times the reduction scale, see above) for the
    gradient g (M, C) of the loss of target (M,) or (M, C), in g's compute dtype."""
    m, c = g.shape[-2:]
    work = _WORK[g.dtype]
    w = torch.ones(c, dtype=work, device=g.device) if weight is None else weight.to(work)
    if target.is_floating_point():
        b = w * ((1.0 - eps) * target.to(work) + eps / c)
        denom = torch.tensor(float(m), dtype=work, device=g.device)
    else:
        valid = target != ignore
        y = torch.where(valid, target, 0).to(torch.int64)
        wy = torch.where(valid, w[y], 0.0)
        b = torch.zeros(g.shape, dtype=work, device=g.device)
        b = b.scatter(-1, y.unsqueeze(-1), ((1.0 - eps) * wy).unsqueeze(-1))
        b = b + (eps / c) * w * valid.unsqueeze(-1).to(work)
        denom = wy.sum()
    if red == "mean":  # a denominator of 0 (nothing kept) gives a zero gradient
        b = b * torch.where(denom != 0, 1.0 / torch.where(denom != 0, denom, 1.0), 0.0)
    return b


def _curvature(g: Tensor, b: Tensor, v: Tensor) -> Tensor:
    """J v for the gradient rows g = a p - b (see above) and v of g's shape."""
    dtype, work = g.dtype, _WORK[g.dtype]
    g, b, v = g.to(work), b.to(work), v.to(work)
    a = b.sum(-1, keepdim=True)
    p = (g + b) / torch.where(a != 0, a, 1.0)
    return (a * p * (v - (p * v).sum(-1, keepdim=True))).to(dtype)


def _loss_tangent(g: Tensor, t: Tensor, rows: bool) -> Tensor:
    """The forward-mode derivative of the loss along t, the input's tangent (M, C)."""
    prod = g * t.to(g.dtype)
    return prod.sum(-1) if rows else prod.sum()


class _SecondOrder:
    """The backward and jvp of a Function whose forward returns (loss, g) with g a
    differentiable output and saves g: the first-order backward is go * g as before
    (nothing recomputed); a gradient flowing into g (a double backward: create_graph=True,
    torch.func.jacrev of grad, hessian) adds J of it.  ctx.xent = (target, weight, red,
    ignore, eps) of the (M, C) call."""

    @staticmethod
    def input_grad(ctx, go, go_g):
        g, alias = ctx.saved_tensors
        handed = g if torch.is_grad_enabled() else alias  # create_graph=True: g
        (d,) = _given(ctx, (handed,), go, ctx.xent[2] == "none")
        if go_g is not None:
            h = _curvature(g, _target_coefficients(g, *ctx.xent), go_g)
            d = h if d is None else d + h
        return d

    @staticmethod
    def tangents(ctx, t):
        (g,) = ctx.saved_tensors
        b = _target_coefficients(g, *ctx.xent)
        return _loss_tangent(g, t, ctx.xent[2] == "none"), _curvature(g, b, t)


# --------------------------------------------------------------------------------------
# custom ops: cross-entropy on (M, C)
# --------------------------------------------------------------------------------------
def _loss_like(x: Tensor, red: str, dtype: torch.dtype | None = None) -> Tensor:
    return x.new_empty((x.shape[0],) if red == "none" else (), dtype=dtype or x.dtype)


@torch.library.custom_op("fastsoftmax::cross_entropy", mutates_args=())
def _op_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: str,
    ignore_index: int,
    label_smoothing: float,
) -> Tensor:
    """The loss alone (its backward computes the gradient again)."""
    return _xent(input, target, weight, reduction, ignore_index, label_smoothing, False)[0]


@_op_cross_entropy.register_fake
def _(input, target, weight, reduction, ignore_index, label_smoothing):
    return _loss_like(input, reduction)


def _setup_cross_entropy(ctx, inputs, output):
    input, target, weight, *opts = inputs
    ctx.save_for_backward(input, target, weight)
    ctx.opts = opts


def _backward_cross_entropy(ctx, go):
    input, target, weight = ctx.saved_tensors
    _, g = torch.ops.fastsoftmax.cross_entropy_fwd(input, target, weight, *ctx.opts)
    return _scaled(g, go, ctx.opts[0] == "none"), None, None, None, None, None


_op_cross_entropy.register_autograd(_backward_cross_entropy, setup_context=_setup_cross_entropy)


@torch.library.custom_op("fastsoftmax::cross_entropy_fwd", mutates_args=())
def _op_cross_entropy_fwd(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: str,
    ignore_index: int,
    label_smoothing: float,
) -> tuple[Tensor, Tensor]:
    """(loss, the gradient of the loss, of loss.sum() for "none"): the fused forward."""
    return _xent(input, target, weight, reduction, ignore_index, label_smoothing, True)


@_op_cross_entropy_fwd.register_fake
def _(input, target, weight, reduction, ignore_index, label_smoothing):
    return _loss_like(input, reduction), torch.empty_like(
        input, memory_format=torch.contiguous_format
    )


def _unused_outputs(ctx, outputs) -> None:
    """The saved gradients are outputs only to reach setup_context: no gradient flows
    into them (and none is materialised: zeros of dweight's size in every backward)."""
    ctx.mark_non_differentiable(*outputs)
    ctx.set_materialize_grads(False)


def _setup_cross_entropy_fwd(ctx, inputs, output):
    if torch.compiler.is_compiling():  # no double backward of compiled graphs anyway:
        _unused_outputs(ctx, output[1:])  # keep J out of the traced backward
    else:  # eager (tests): as _CrossEntropyFunction
        ctx.set_materialize_grads(False)
    ctx.save_for_backward(*_saved_gradient(output[1]))
    ctx.xent = inputs[1:]


def _backward_cross_entropy_fwd(ctx, go, go_g):
    return _SecondOrder.input_grad(ctx, go, go_g), None, None, None, None, None


_op_cross_entropy_fwd.register_autograd(
    _backward_cross_entropy_fwd, setup_context=_setup_cross_entropy_fwd
)


class _CrossEntropyFunction(torch.autograd.Function):
    """cross_entropy_fwd's autograd for eager calls, without the custom op's dispatch:
    (loss, g), g differentiable for second order (_SecondOrder)."""

    @staticmethod
    def forward(ctx, input, target, weight, opts):
        loss, g = _xent(input, target, weight, *opts, True)
        ctx.save_for_backward(*_saved_gradient(g))
        ctx.save_for_forward(g)
        ctx.set_materialize_grads(False)
        ctx.xent = (target, weight, *opts)
        return loss, g

    @staticmethod
    def backward(ctx, go, go_g):
        return _SecondOrder.input_grad(ctx, go, go_g), None, None, None

    @staticmethod
    def jvp(ctx, t, *_):
        return _SecondOrder.tangents(ctx, t)


class _TransformableFunction(torch.autograd.Function):
    """cross_entropy under torch.func transforms (grad, vjp, jacrev, vmap and their
    compositions, such as per-sample gradients): the form torch.func asks of a Function
    (a forward without ctx, setup_context, a vmap rule).  The forward returns the
    gradient beside the loss (non-differentiable) so that setup_context can save it.
    The vmap rule runs each sample's call through this Function again (at the level
    below, where an outer transform may still wrap the tensors), so it composes with
    any nesting; one kernel call per sample.  Eager calls keep _CrossEntropyFunction:
    for a Function with setup_context, Function.apply binds the arguments through
    inspect.signature on every call (fwd + bwd at 64 x 10: ~155 against ~103 us)."""

    @staticmethod
    def forward(input, target, weight, red, ignore, eps):
        return _xent(input, target, weight, red, ignore, eps, True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*_saved_gradient(output[1]))
        ctx.save_for_forward(output[1])
        ctx.set_materialize_grads(False)
        ctx.xent = inputs[1:]

    @staticmethod
    def backward(ctx, go, go_g):
        return _SecondOrder.input_grad(ctx, go, go_g), None, None, None, None, None

    @staticmethod
    def jvp(ctx, t, *_):
        return _SecondOrder.tangents(ctx, t)

    @staticmethod
    def vmap(info, in_dims, input, target, weight, red, ignore, eps):
        def sample(x, dim, i):
            return x if dim is None else x.select(dim, i)

        d_input, d_target, d_weight = in_dims[:3]
        losses, grads = [], []
        for i in range(info.batch_size):
            w = None if weight is None else sample(weight, d_weight, i)
            x_i, t_i = sample(input, d_input, i), sample(target, d_target, i)
            loss, g = _TransformableFunction.apply(x_i, t_i, w, red, ignore, eps)
            losses.append(loss)
            grads.append(g)
        return (torch.stack(losses), torch.stack(grads)), (0, 0)


def _scalar(value: float, dtype: torch.dtype) -> Tensor:
    """A 0-d tensor of `dtype` holding the float64 `value` rounded to it; past float32's
    range, inf (torch.scalar_tensor refuses such a value; the op API's rounding gives
    it)."""
    try:
        return torch.scalar_tensor(value, dtype=dtype)
    except RuntimeError:
        return torch.from_numpy(np.asarray(_api.rounded(value, np.dtype(_NUMPY[dtype]))))


class _MinibatchFunction(torch.autograd.Function):
    """The common classifier call in eager mode, with as little Python as possible
    (PyTorch's own cross-entropy is ~12 us of C++ at 64 x 10; the general path's checks
    and conversions cost more than our kernel there): a contiguous CPU float32/float64
    (N, C) input of at most SERIAL_LOGITS logits, int64 class indices, "mean" or "sum",
    no class weights, no smoothing (see _minibatch_call)."""

    @staticmethod
    def forward(ctx, input, target, mean, ignore):
        n, c = input.shape
        g = torch.empty_like(input)
        # the kernel on the tensors' memory (checked by _minibatch_call): no NumPy
        # views to make, ~2 us less a call; the arrays' path where that declines
        loss = _api.cross_entropy_index_rows_at(
            input.data_ptr(), target.data_ptr(), g.data_ptr(), n, c,
            input.dtype is torch.float64, mean, ignore,
        )  # fmt: skip
        if loss is None:  # e.g. a target out of range: this raises
            z = input.detach().numpy()
            loss = _api.cross_entropy_index_rows(z, target.numpy(), mean, ignore, g.numpy())
        ctx.save_for_backward(g)
        # for a second order only (the input is small): see _minibatch_second_order
        ctx.call = (input, input._version, target, mean, ignore)
        return _scalar(loss, input.dtype)

    @staticmethod
    def backward(ctx, go):
        if torch.is_grad_enabled():  # create_graph=True
            return _minibatch_second_order(ctx.call, go), None, None, None
        (g,) = ctx.saved_tensors
        d = _scaled(g, go, False)
        # _given's rule, written out: this backward is a hot spot of a small training
        # step, and its g is no output of the Function (nothing to detach)
        if d is g:
            if getattr(ctx, "given", False):
                d = g.clone()
            ctx.given = True
        return d, None, None, None


def _minibatch_second_order(call, go):
    """_MinibatchFunction's gradient in a backward with create_graph=True: the call
    again through _CrossEntropyFunction (the same bits), whose gradient is
    differentiable (a few us more on a small input, only in such a backward).  The input
    is held for this; the saved gradient needs no input, so an input modified in place
    after the forward is only an error here."""
    input, version, target, mean, ignore = call
    if input._version != version:
        raise RuntimeError(
            "fastsoftmax.torch.cross_entropy: its input was modified in place after the "
            "forward, and a backward with create_graph=True needs it"
        )
    g = _CrossEntropyFunction.apply(input, target, None, (_REDUCTION[mean], ignore, 0.0))[1]
    return _scaled(g, go, False)


def _direct_apply(function: type[torch.autograd.Function]):
    """``function.apply`` without its Python layer, for the eager calls of a small
    minibatch outside torch.func transforms (the caller checks: _minibatch_call).
    There that layer only unwraps dead functorch wrappers, which it does through a
    generator over the arguments, and calls the C++ apply; done here for the two
    tensors directly, 3.3 us less per call (14.3 -> 10.9 us at 64 x 10, alone).
    function.apply itself where this PyTorch lacks what it uses."""
    try:
        raw = torch._C._FunctionBase.__dict__["apply"].__get__(None, function)
        unwrap = torch._C._functorch.unwrap_if_dead
    except (AttributeError, KeyError):
        return function.apply

    def apply(input: Tensor, target: Tensor, *options):
        return raw(unwrap(input), unwrap(target), *options)

    return apply


_apply_minibatch = _direct_apply(_MinibatchFunction)

_MINIBATCH_DTYPES = (torch.float32, torch.float64)
_MEAN = {"mean": True, "sum": False}
_REDUCTION = {True: "mean", False: "sum"}


def _minibatch_call(input, target, weight, ignore_index, reduction, label_smoothing):
    """The loss through _MinibatchFunction (or the loss alone without grad mode) when
    the call is the plain classifier case it serves; None otherwise.  Every test here is
    a cheap attribute read; anything unusual takes the general path, which checks it."""
    if not (
        weight is None
        and type(label_smoothing) is float
        and label_smoothing == 0.0
        and type(reduction) is str
        and reduction in _MEAN
        and type(ignore_index) is int
        and check.INT64_MIN <= ignore_index <= check.INT64_MAX  # else check.ignore raises
        and type(input) is Tensor
        and type(target) is Tensor
        and input.dtype in _MINIBATCH_DTYPES
        and target.dtype == torch.int64
        and input.dim() == 2
        and target.dim() == 1
        and input.is_cpu
        and target.is_cpu
        and 0 < input.shape[0] == target.shape[0]
        and input.shape[1] > 0
        and input.numel() <= SERIAL_LOGITS
        and input.is_contiguous()
        and target.is_contiguous()
        and not target.requires_grad
        and not torch.compiler.is_compiling()
        and not _transforms_active()
        and not _dual_level_active()
        # after is_compiling: Dynamo cannot trace is_neg (a graph break)
        and not input.is_neg()  # read as -x, its memory holds x
        and not target.is_neg()
    ):
        return None
    mean = _MEAN[reduction]
    if input.requires_grad and torch.is_grad_enabled():
        return _apply_minibatch(input, target, mean, ignore_index)
    z = input.detach().numpy()
    loss = _api.cross_entropy_index_rows(z, target.numpy(), mean, ignore_index, None)
    return torch.from_numpy(np.asarray(loss))


# --------------------------------------------------------------------------------------
# cross_entropy, CrossEntropyLoss
# --------------------------------------------------------------------------------------
def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """``torch.nn.functional.cross_entropy`` on fastsoftmax's fused kernels.

    input: (C,), (N, C) or (N, C, d1, ..., dK) logits, float16/bfloat16/float32/float64,
        on the CPU or a CUDA device.
    target: class indices of shape (), (N,) or (N, d1, ..., dK) (any integer dtype), or
        class probabilities of input's shape (floating).
    weight: (C,) class weights or None; ignore_index, reduction, label_smoothing, and the
        deprecated size_average and reduce: as in PyTorch.

    Returns the loss in input's dtype (a scalar, or the batch shape for "none"); the
    backward reuses the gradient the forward computed.  A "mean" whose denominator is 0
    (every target ignored) is 0 with a zero gradient, where PyTorch gives NaN.
    Differentiable with respect to input only.
    """
    if size_average is None and reduce is None and EAGER_FUNCTION:
        loss = _minibatch_call(input, target, weight, ignore_index, reduction, label_smoothing)
        if loss is not None:
            return loss
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce)
    red = check.reduction_name(reduction)
    eps = check.smoothing(label_smoothing)
    ignore = check.ignore(ignore_index)
    _float_tensor(input, "input")
    if input.dtype in _AUTOCAST_FP32 and _autocast_enabled(input):
        # as PyTorch's autocast treats its cross-entropy (an op it runs in float32): the
        # loss in float32, the gradient cast back to the input's dtype by autograd
        input = input.float()
    d = input.dim()
    if d == 0:
        raise ValueError("input must have shape (C,), (N, C) or (N, C, d1, ...), got a 0-d tensor")
    shape = tuple(input.shape)
    c = shape[0] if d == 1 else shape[1]
    batch = () if d == 1 else shape[:1] + shape[2:]
    prob = _target(target, c, batch, shape, input)
    if prob:
        check.ignore_with_probabilities(ignore)
    _not_differentiable(target, "target")
    weight = _class_weight(weight, c, input)

    if d == 1:
        x, t = input.unsqueeze(0), target.unsqueeze(0)
    elif d == 2:
        x, t = input, target
    else:  # classes last, one row per position (a copy: the gradient comes back strided)
        x = input.movedim(1, -1).reshape(-1, c)
        t = target.movedim(1, -1).reshape(-1, c) if prob else target.reshape(-1)
    grad = (torch.is_grad_enabled() and input.requires_grad) or _dual_level_active()
    if _transforms_active() and not torch.compiler.is_compiling():
        loss = _TransformableFunction.apply(x, t, weight, red, ignore, eps)[0]
    elif torch.compiler.is_compiling() or not EAGER_FUNCTION:
        if grad:
            loss = torch.ops.fastsoftmax.cross_entropy_fwd(x, t, weight, red, ignore, eps)[0]
        else:
            loss = torch.ops.fastsoftmax.cross_entropy(x, t, weight, red, ignore, eps)
    elif grad:
        loss = _CrossEntropyFunction.apply(x, t, weight, (red, ignore, eps))[0]
    else:
        loss = _xent(x, t, weight, red, ignore, eps, False)[0]
    return loss.reshape(batch) if red == "none" else loss


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` (same arguments, buffers and state_dict) whose
    forward is :func:`cross_entropy`."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )


# --------------------------------------------------------------------------------------
# linear cross-entropy: the chunk loop on tensors
# --------------------------------------------------------------------------------------
def default_chunk_size(n: int, v: int, itemsize: int) -> int:
    """linear_cross_entropy's rows per chunk when chunk_size is None."""
    by_bytes = CHUNK_MAX_BYTES // max(1, v * itemsize)
    return max(1, min(n, max(CHUNK_MIN_ROWS, min(n // CHUNK_FRACTION, by_bytes))))


def _denominator(y: Tensor, cw, v: int, ignore: int) -> float:
    """The "mean"'s denominator over all rows of class-index targets (checking them)."""
    valid = y != ignore
    bad = valid & ((y < 0) | (y >= v))
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"target[{row}] = {int(y[row])} is out of range for {v} classes (ignore_index={ignore})"
        )
    if cw is None:
        return float(valid.sum())
    return float(torch.where(valid, cw[y.clamp(0, v - 1)], 0).sum(dtype=torch.float64))


def _linear(
    h, w, target, b, cw, red, ignore, eps, chunk_size, want, grad_output=None
):  # fmt: skip
    """(loss, dh, dw, db) of cross_entropy(h @ w.T + b): h (N, H), w (V, H), checked;
    the loss in the work dtype (float32 for float16/bfloat16: linear_cross_entropy
    rounds it to h's dtype outside autocast), the gradients in their inputs' dtypes.
    `want` = (dh, dw, db) wanted; unwanted gradients are None.  Without grad_output
    the gradients are those of the loss ("mean", "sum" only); with it (the backward),
    those of (loss * grad_output).sum()."""
    dtype = h.dtype
    work = _WORK[dtype]
    hw, ww = h.detach(), w.detach()
    hw = hw if hw.dtype == work and hw.is_contiguous() else _cast(hw, work)
    ww = ww if ww.dtype == work and ww.is_contiguous() else _cast(ww, work)
    bw = None if b is None else b.detach().to(work).contiguous()
    n, v = hw.shape[0], ww.shape[0]
    y, cwt = _prepared(target, cw, work)
    denom = float(n) if y.is_floating_point() else _denominator(y, cwt, v, ignore)
    scale = check.reduction_scale(red, denom)
    rows = red == "none"
    want_h, want_w, want_b = want
    want_w = want_w or want_b  # dbias comes from the same chunks
    any_grad = want_h or want_w
    if rows and any_grad and grad_output is None:
        raise ValueError('the forward computes no gradient for reduction="none"')
    chunk = chunk_size or default_chunk_size(n, v, ww.element_size())
    kw = {"dtype": work, "device": hw.device}
    buf = _new((min(chunk, n), v), work, hw)
    dh = _new((n, hw.shape[1]), work, hw) if want_h else None
    dw = _new(ww.shape, work, hw, zero=True) if want[1] else None
    db = torch.zeros(v, **kw) if want_b and bw is not None else None
    loss_rows = torch.empty(n, **kw) if rows else None
    total = torch.zeros((), dtype=torch.float64, device=hw.device)
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        z = buf[: r1 - r0]
        hr = hw[r0:r1]
        if bw is None:
            torch.mm(hr, ww.t(), out=z)
        else:
            torch.addmm(bw, hr, ww.t(), out=z)
        loss = _kernel(
            z, y[r0:r1], cwt, "none" if rows else "sum", ignore, eps,
            INPLACE if any_grad else None,
        )  # fmt: skip
        if rows:
            loss_rows[r0:r1] = loss
        else:
            total += loss
        if not any_grad:
            continue
        if rows:
            z.mul_(grad_output[r0:r1].to(work).unsqueeze(-1))
        if dh is not None:
            torch.mm(z, ww, out=dh[r0:r1])
        if dw is not None:
            dw.addmm_(z.t(), hr)
        if db is not None:
            db += z.sum(0)
    factor = scale
    if grad_output is not None and not rows:
        factor = grad_output.to(work) * scale
    if not (isinstance(factor, float) and factor == 1.0):
        for t in (dh, dw, db):
            if t is not None:
                t.mul_(factor)
    loss = loss_rows if rows else (total * scale).to(work)
    return (
        loss,
        dh if dh is None or dh.dtype == dtype else _cast(dh, dtype),
        dw if dw is None or dw.dtype == w.dtype else _cast(dw, w.dtype),
        None if db is None else db.to(b.dtype),
    )


def _empty(x: Tensor) -> Tensor:
    return x.new_empty(0)


@torch.library.custom_op("fastsoftmax::linear_cross_entropy", mutates_args=())
def _op_linear(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    linear_bias: Tensor | None,
    weight: Tensor | None,
    reduction: str,
    ignore_index: int,
    label_smoothing: float,
    chunk_size: int | None,
) -> Tensor:
    """The loss alone, chunk by chunk (its backward computes the logits again)."""
    return _linear(
        input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
        label_smoothing, chunk_size, (False, False, False),
    )[0]  # fmt: skip


@_op_linear.register_fake
def _(input, linear_weight, target, linear_bias, weight, reduction, *_):
    return _loss_like(input, reduction, _WORK[input.dtype])


def _setup_linear(ctx, inputs, output):
    input, linear_weight, target, linear_bias, weight, *opts = inputs
    ctx.save_for_backward(input, linear_weight, target, linear_bias, weight)
    ctx.opts = opts


def _linear_logits_whole(input, linear_weight, target, linear_bias, weight, red, ignore, eps):
    """linear_cross_entropy as F.linear, then cross_entropy: for what the chunked ops
    have no rule for (torch.func transforms and forward-mode AD; cross_entropy has
    them).  The (N, V) logits exist whole here, as in PyTorch's unfused composition."""
    logits = torch.nn.functional.linear(input, linear_weight, linear_bias)
    return cross_entropy(
        logits, target, weight, ignore_index=ignore, reduction=red, label_smoothing=eps
    )


def _higher_order() -> bool:
    """A backward with create_graph=True (grad mode on inside it), outside compilation."""
    return torch.is_grad_enabled() and not torch.compiler.is_compiling()


def _linear_second_order(inputs, go, want):
    """linear_cross_entropy's gradients in a backward with create_graph=True, as
    differentiable tensors: the logits computed again (whole) and their gradient through
    _CrossEntropyFunction, whose gradient is differentiable (see _SecondOrder); then
    dinput = G W, dweight = G^T input, dbias = sum_rows G.  The first order is the same
    math as the chunked path (results agree to rounding)."""
    input, linear_weight, target, linear_bias, weight, red, ignore, eps = inputs
    logits = torch.nn.functional.linear(input, linear_weight, linear_bias)
    g = _CrossEntropyFunction.apply(logits, target, weight, (red, ignore, eps))[1]
    g = _scaled(g, go, red == "none")
    if g is None:
        return None, None, None
    return (
        g @ linear_weight if want[0] else None,
        g.T @ input if want[1] else None,
        g.sum(0) if want[2] and linear_bias is not None else None,
    )


def _backward_linear(ctx, go):
    input, linear_weight, target, linear_bias, weight = ctx.saved_tensors
    want = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[3]
    if _higher_order():
        inputs = (input, linear_weight, target, linear_bias, weight, *ctx.opts[:3])
        dh, dw, db = _linear_second_order(inputs, go, want)
    else:
        dh, dw, db = torch.ops.fastsoftmax.linear_cross_entropy_bwd(
            input, linear_weight, target, linear_bias, weight, go, *ctx.opts, *want
        )
    return (
        dh if want[0] else None, dw if want[1] else None, None, db if want[2] else None,
        None, None, None, None, None,
    )  # fmt: skip


_op_linear.register_autograd(_backward_linear, setup_context=_setup_linear)


def _grads_or_empty(input, linear_weight, linear_bias, grads):
    dh, dw, db = grads
    return (
        _empty(input) if dh is None else dh,
        _empty(linear_weight) if dw is None else dw,
        _empty(input) if db is None else db,
    )


def _grads_like(input, linear_weight, linear_bias, want):
    return (
        torch.empty_like(input) if want[0] else _empty(input),
        torch.empty_like(linear_weight) if want[1] else _empty(linear_weight),
        torch.empty_like(linear_bias) if want[2] and linear_bias is not None else _empty(input),
    )


@torch.library.custom_op("fastsoftmax::linear_cross_entropy_fwd", mutates_args=())
def _op_linear_fwd(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    linear_bias: Tensor | None,
    weight: Tensor | None,
    reduction: str,
    ignore_index: int,
    label_smoothing: float,
    chunk_size: int | None,
    grad_input: bool,
    grad_weight: bool,
    grad_bias: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, dinput, dweight, dbias) in one pass over the chunks ("mean" and "sum");
    a gradient not asked for is an empty tensor."""
    want = grad_input, grad_weight, grad_bias
    loss, *grads = _linear(
        input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
        label_smoothing, chunk_size, want,
    )  # fmt: skip
    return loss, *_grads_or_empty(input, linear_weight, linear_bias, grads)


@_op_linear_fwd.register_fake
def _(input, linear_weight, target, linear_bias, weight, reduction, *rest):
    want = rest[-3:]
    loss = _loss_like(input, reduction, _WORK[input.dtype])
    return loss, *_grads_like(input, linear_weight, linear_bias, want)


def _setup_linear_fwd(ctx, inputs, output):
    _unused_outputs(ctx, output[1:])
    # non-output aliases of the gradients: what _given needs to hand them out
    ctx.save_for_backward(*(g.detach() for g in output[1:]))
    ctx.want = inputs[-3:]
    if not torch.compiler.is_compiling():
        # for a backward with create_graph=True only (_linear_second_order): references,
        # no copies; an input modified in place by then is an error there, not here
        tensors = inputs[:5]
        ctx.call = inputs[:8], [None if t is None else t._version for t in tensors]


def _backward_linear_fwd(ctx, go, *_):
    if _higher_order():
        inputs, versions = ctx.call
        for t, version, name in zip(inputs, versions, _LINEAR_NAMES, strict=False):
            if t is not None and t._version != version:
                raise RuntimeError(
                    f"fastsoftmax.torch.linear_cross_entropy: its {name} was modified in "
                    "place after the forward, and a backward with create_graph=True needs it"
                )
        grads = _linear_second_order(inputs, go, ctx.want)
    else:
        saved = [g if w else None for g, w in zip(ctx.saved_tensors, ctx.want, strict=True)]
        grads = _given(ctx, saved, go, False)
    return grads[0], grads[1], None, grads[2], None, None, None, None, None, None, None, None


_LINEAR_NAMES = ("input", "linear_weight", "target", "linear_bias", "weight")
_op_linear_fwd.register_autograd(_backward_linear_fwd, setup_context=_setup_linear_fwd)


@torch.library.custom_op("fastsoftmax::linear_cross_entropy_bwd", mutates_args=())
def _op_linear_bwd(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    linear_bias: Tensor | None,
    weight: Tensor | None,
    grad_output: Tensor,
    reduction: str,
    ignore_index: int,
    label_smoothing: float,
    chunk_size: int | None,
    grad_input: bool,
    grad_weight: bool,
    grad_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of (loss * grad_output).sum(), the logits computed again."""
    want = grad_input, grad_weight, grad_bias
    _, *grads = _linear(
        input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
        label_smoothing, chunk_size, want, grad_output.detach(),
    )  # fmt: skip
    return _grads_or_empty(input, linear_weight, linear_bias, grads)


@_op_linear_bwd.register_fake
def _(input, linear_weight, target, linear_bias, weight, grad_output, *rest):
    return _grads_like(input, linear_weight, linear_bias, rest[-3:])


def _chunk_rows(chunk_size, options) -> int | None:
    if chunk_size is None and options is not None:
        chunk_size = getattr(options, "batch_chunk_size", None)
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(
            f"chunk_size must be a positive int or None, got {type(chunk_size).__name__}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return chunk_size


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options=None,
    chunk_size: int | None = None,
) -> Tensor:
    """``cross_entropy(F.linear(input, linear_weight, linear_bias), target, ...)`` without
    the (N, V) logits: PyTorch 2.13's ``F.linear_cross_entropy`` on fastsoftmax.

    input: (H,) or (N, H); linear_weight: (V, H); linear_bias: (V,) or None; one
        floating dtype (float16 and bfloat16 are computed in float32, and under
        torch.autocast give a float32 loss, as PyTorch's), one device.
    target: class indices () or (N,) (any integer dtype), or probabilities of shape
        (V,) or (N, V).  weight (class weights), reduction, ignore_index (None: -100) and
        label_smoothing: as in PyTorch.
    chunk_size: rows of logits computed at once; None takes ``options.batch_chunk_size``
        (a ``torch.nn.LinearCrossEntropyOptions``) when given, else the default (about
        1/16 of the logits).  Other options are ignored: this is always the chunked path.

    Differentiable with respect to input, linear_weight and linear_bias, to any order;
    under torch.func transforms, forward-mode AD and in a backward with
    create_graph=True the (N, V) logits are computed whole (F.linear, then
    cross_entropy): the memory saving is first-order training's.
    """
    red = check.reduction_name(reduction)
    eps = check.smoothing(label_smoothing)
    ignore = -100 if ignore_index is None else check.ignore(ignore_index)
    chunk = _chunk_rows(chunk_size, options)
    _float_tensor(input, "input")
    _float_tensor(linear_weight, "linear_weight")
    if input.dim() not in (1, 2):
        raise ValueError(f"input must have shape (H,) or (N, H), got {tuple(input.shape)}")
    if linear_weight.dim() != 2:
        raise ValueError(
            f"linear_weight must have shape (V, H), got {tuple(linear_weight.shape)} "
            "(K-dimensional weights are not supported)"
        )
    h = input.shape[-1]
    v = linear_weight.shape[0]
    if linear_weight.shape[1] != h:
        raise ValueError(
            f"linear_weight must have shape (V, H) with H = {h} (input's last dimension), "
            f"got {tuple(linear_weight.shape)}"
        )
    if linear_weight.dtype != input.dtype:
        raise TypeError(
            f"linear_weight must have input's dtype {input.dtype}, got {linear_weight.dtype}"
        )
    _same_device(linear_weight, "linear_weight", input, "input")
    if linear_bias is not None:
        _float_tensor(linear_bias, "linear_bias")
        if tuple(linear_bias.shape) != (v,):
            raise ValueError(
                f"linear_bias must have shape (V,) = ({v},), got {tuple(linear_bias.shape)}"
            )
        if linear_bias.dtype != input.dtype:
            raise TypeError(
                f"linear_bias must have input's dtype {input.dtype}, got {linear_bias.dtype}"
            )
        _same_device(linear_bias, "linear_bias", input, "input")
    unbatched = input.dim() == 1
    batch = () if unbatched else tuple(input.shape[:1])
    if _target(target, v, batch, (*batch, v), input):
        check.ignore_with_probabilities(ignore)
    _not_differentiable(target, "target")
    weight = _class_weight(weight, v, input)
    x, t = (input.unsqueeze(0), target.unsqueeze(0)) if unbatched else (input, target)

    if (_transforms_active() or _dual_level_active()) and not torch.compiler.is_compiling():
        # torch.func transforms and forward-mode AD: the custom ops have no vmap or jvp
        # rule, cross_entropy's Functions have
        return _linear_logits_whole(
            input, linear_weight, target, linear_bias, weight, red, ignore, eps
        )
    on = torch.is_grad_enabled()
    want = (
        on and input.requires_grad,
        on and linear_weight.requires_grad,
        on and linear_bias is not None and linear_bias.requires_grad,
    )
    args = (x, linear_weight, t, linear_bias, weight, red, ignore, eps, chunk)
    if any(want) and red != "none":
        loss = torch.ops.fastsoftmax.linear_cross_entropy_fwd(*args, *want)[0]
    else:
        loss = torch.ops.fastsoftmax.linear_cross_entropy(*args)
    # the ops give the loss in their work dtype (float32 for float16/bfloat16), which
    # is PyTorch's under autocast (its cross-entropy runs in float32); else input's
    if loss.dtype != input.dtype and not _autocast_enabled(input):
        loss = loss.to(input.dtype)
    return loss.reshape(batch) if red == "none" else loss
