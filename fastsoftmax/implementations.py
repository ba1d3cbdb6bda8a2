"""One table of implementations, read by the parity tests, the benchmarks and the CLI.

Each row runs the public ops on NumPy arrays and returns NumPy arrays: the reference,
each backend, and peers (PyTorch on the CPU and on a GPU, the reference's math run by
CuPy) when installed.  Peers are never dependencies: a row whose library (or GPU) is
missing reports why and is skipped.  Adding a backend is adding a row.

GPU rows (``device == "gpu"``) also run on device arrays: a benchmark moves the inputs
once with ``impl.to_device`` and times ``impl.on_device(op, *args)`` (then synchronises,
see ``fastsoftmax.bench_cases.synchronizer``), so transfers are not timed; calling the row
itself moves NumPy inputs there and the results back.  The JAX row works the same way on
the CPU (its arrays are JAX buffers, filled by a copy from NumPy); its ``on_device`` waits
for the result, so it needs no synchroniser.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _api
from ._backends import BackendUnavailableError, load

OPS = ("softmax", "log_softmax", "logsumexp", "cross_entropy", "cross_entropy_with_grad")


@dataclass(frozen=True)
class Implementation:
    """A named way to run the ops.  ``impl(op, *args, **kwargs)`` calls it."""

    name: str
    kind: str  # "reference", "backend" or "peer"
    _unavailable: Callable[[], str | None] = field(repr=False)
    _run: Callable[..., Any] = field(repr=False)
    ops: tuple[str, ...] = OPS
    device: str = "cpu"
    _to_device: Callable[[Any], Any] | None = field(default=None, repr=False)
    _to_host: Callable[[Any], Any] | None = field(default=None, repr=False)

    def unavailable(self) -> str | None:
        """None when this implementation can run here, else the reason it cannot."""
        return self._unavailable()

    def __call__(self, op: str, *args, **kwargs):
        if self._to_device is None:  # works on NumPy arrays as they are
            return self.on_device(op, *args, **kwargs)
        out = self.on_device(op, *self.to_device(*args), **kwargs)
        return tuple(map(self._to_host, out)) if isinstance(out, tuple) else self._to_host(out)

    def on_device(self, op: str, *args, **kwargs):
        """Run `op` on arguments already where this implementation works."""
        if op not in self.ops:
            raise ValueError(f"{self.name} does not implement {op!r}")
        return self._run(op, *args, **kwargs)

    def to_device(self, *arrays) -> tuple:
        """The arrays moved to where this implementation works (unchanged on the CPU)."""
        if self._to_device is None:
            return arrays
        return tuple(self._to_device(a) for a in arrays)


def _backend_row(name: str, kind: str) -> Implementation:
    def unavailable() -> str | None:
        try:
            load(name)
        except BackendUnavailableError as err:
            return str(err)
        return None

    def run(op, *args, **kwargs):
        return getattr(_api, op)(*args, backend=name, **kwargs)

    return Implementation(name, kind, unavailable, run)


def _torch_unavailable() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed (pip install torch)"
    return None


def _torch_run(op, x, *args, axis=-1, **kwargs):
    import torch
    import torch.nn.functional as F

    if op == "softmax":
        return torch.softmax(torch.from_numpy(x), dim=axis).numpy()
    if op == "log_softmax":
        return torch.log_softmax(torch.from_numpy(x), dim=axis).numpy()
    if op == "logsumexp":
        return torch.logsumexp(torch.from_numpy(x), dim=axis).numpy()
    (target,) = args
    weight = kwargs.pop("weight", None)
    t = torch.from_numpy(np.asarray(target))
    if t.dtype.is_floating_point:
        t = t.to(torch.from_numpy(x).dtype)
    else:
        t = t.long()
    opts = {
        "reduction": kwargs.pop("reduction", "mean"),
        "ignore_index": kwargs.pop("ignore_index", -100),
        "label_smoothing": kwargs.pop("label_smoothing", 0.0),
        "weight": None if weight is None else torch.from_numpy(np.asarray(weight, x.dtype)),
    }
    if kwargs:
        raise TypeError(f"the torch peer does not take {sorted(kwargs)}")
    if op == "cross_entropy":
        with torch.no_grad():
            return F.cross_entropy(torch.from_numpy(x), t, **opts).numpy()
    z = torch.from_numpy(x).requires_grad_(True)
    loss = F.cross_entropy(z, t, **opts)
    (loss.sum() if loss.ndim else loss).backward()
    return loss.detach().numpy(), z.grad.numpy()


def _torch_cuda_unavailable() -> str | None:
    reason = _torch_unavailable()
    if reason:
        return reason
    import torch

    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA GPU"
    return None


def _torch_cuda_run(op, x, *args, axis=-1, **kwargs):
    """F.cross_entropy & co. on CUDA tensors (the GPU peer of the CUDA issue)."""
    import torch
    import torch.nn.functional as F

    if op == "softmax":
        return torch.softmax(x, dim=axis)
    if op == "log_softmax":
        return torch.log_softmax(x, dim=axis)
    if op == "logsumexp":
        return torch.logsumexp(x, dim=axis)
    (target,) = args
    if kwargs:
        raise TypeError(f"the torch-cuda peer does not take {sorted(kwargs)}")
    if op == "cross_entropy":
        with torch.no_grad():
            return F.cross_entropy(x, target)
    z = x.detach().requires_grad_(True)
    loss = F.cross_entropy(z, target)
    loss.backward()
    return loss.detach(), z.grad


def _torch_cuda_device(a):
    import torch

    t = torch.from_numpy(np.ascontiguousarray(a)).cuda()
    return t.long() if not t.dtype.is_floating_point else t


def _torch_to_host(t):
    return t.detach().cpu().numpy()


def _cupy_unavailable() -> str | None:
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed (pip install 'fastsoftmax[cuda]')"
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no GPU"
    except Exception as err:  # no driver or no device
        return f"CuPy cannot use a GPU: {err}"
    return None


def _cupy_reference_run(op, x, *args, axis=-1, **kwargs):
    """The reference's math (subtract the row max; loss = logsumexp - z_y; gradient =
    softmax - onehot, scaled by 1/N) as plain CuPy array code: what a user gets from
    running NumPy-style code on the GPU without fused kernels."""
    import cupy as cp

    if kwargs:
        raise TypeError(f"the cupy-reference peer does not take {sorted(kwargs)}")
    m = x.max(axis=axis, keepdims=True)
    e = cp.exp(x - m)
    s = e.sum(axis=axis, keepdims=True)
    if op == "softmax":
        return e / s
    lse = m + cp.log(s)
    if op == "log_softmax":
        return x - lse
    if op == "logsumexp":
        return cp.squeeze(lse, axis=axis)
    (target,) = args
    rows = cp.arange(x.shape[0])
    loss = (lse[:, 0] - x[rows, target]).mean()
    if op == "cross_entropy":
        return loss
    g = e / s
    g[rows, target] -= 1
    g /= x.shape[0]
    return loss, g


def _cupy_device(a):
    import cupy as cp

    return cp.asarray(a)


def _cupy_to_host(a):
    import cupy as cp

    return cp.asnumpy(a)


# ------------------------------------------------------------------------------ JAX
# JAX on the CPU: jax.nn.softmax & co. and a cross-entropy written the way a JAX user
# writes it (log_softmax, gather, mean), differentiated by jax.value_and_grad, each
# jax.jit-compiled once per (op, static options) and then per shape and dtype by JAX.
#
# Global JAX state is left alone.  The CPU is chosen per call (inputs committed to
# jax.devices("cpu")[0], inside jax.default_device), not with jax_platforms, which would
# have to be set before JAX starts and would bind the user's own JAX code too.  JAX
# computes in float32 unless jax_enable_x64 is on; rather than turning that on for the
# whole process, float64 inputs are moved and computed inside JAX's thread-local
# enable_x64(True) scope, so float64 stays float64 here and nothing changes for other
# JAX code (float32 inputs run without the scope; int64 class indices become int32).
#
# Where JAX would go silently wrong the row raises instead: a class index outside
# [0, C) (jnp.take_along_axis would clamp it; checked inside the compiled function),
# targets of the wrong shape (jnp would broadcast them), logits that are not (N, C).
# Conventions are PyTorch's (the torch row's): probability targets are float arrays of
# the logits' shape; "none" returns per-row losses and the gradient of their sum; a
# "mean" over rows that are all ignored is NaN (fastsoftmax's API returns 0 there).
# Calling the row returns NumPy arrays (np.asarray of JAX's results: read-only).
_JAX_SOFTMAX_OPS = ("softmax", "log_softmax", "logsumexp")
_INT32 = np.iinfo(np.int32)


def _jax_unavailable() -> str | None:
    if importlib.util.find_spec("jax") is None or importlib.util.find_spec("jaxlib") is None:
        return "JAX is not installed (pip install 'jax[cpu]')"
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms and "cpu" not in [p.strip() for p in platforms.lower().split(",")]:
        return f"JAX_PLATFORMS={platforms} leaves JAX no CPU backend"
    return None


@functools.cache
def _jax_cpu():
    import jax

    return jax.devices("cpu")[0]


def _jax_scope(dtype) -> contextlib.ExitStack:
    """JAX's CPU as the default device and, for 64-bit floating inputs when x64 is off,
    JAX's thread-local enable_x64(True) scope (never the global setting)."""
    import jax

    stack = contextlib.ExitStack()
    stack.enter_context(jax.default_device(_jax_cpu()))
    dtype = np.dtype(dtype)
    wide = dtype.itemsize >= (8 if dtype.kind == "f" else 16) and dtype.kind in "fc"
    if wide and not jax.config.jax_enable_x64:
        scope = getattr(jax, "enable_x64", None)
        if scope is None:  # JAX before enable_x64 moved out of jax.experimental
            from jax.experimental import enable_x64 as scope
        stack.enter_context(scope(True))
    return stack


def _jax_device(a):
    """A NumPy array as a JAX array on the CPU (unchanged when it already is one);
    integer arrays (class indices) as int32."""
    import jax

    if isinstance(a, jax.Array):
        return a
    a = np.asarray(a)
    if a.dtype.kind in "iu" and a.dtype != np.int32:
        if a.size and (a.min() < _INT32.min or a.max() > _INT32.max):
            raise ValueError("the jax peer: a class index is outside the int32 range")
        a = a.astype(np.int32)
    with _jax_scope(a.dtype):
        return jax.device_put(a, _jax_cpu())


def _jax_to_host(a):
    return np.asarray(a)


@functools.cache
def _jax_fn(op: str, axis: int = -1, reduction="mean", ignore_index=-100, eps=0.0, prob=False):
    """The jax.jit-compiled function of `op` for these static options."""
    import jax
    import jax.numpy as jnp

    if op in _JAX_SOFTMAX_OPS:
        fn = {"softmax": jax.nn.softmax, "log_softmax": jax.nn.log_softmax}.get(op)
        if fn is None:
            fn = jax.nn.logsumexp
        return jax.jit(functools.partial(fn, axis=axis))

    def objective(z, t, w):
        """(the differentiated scalar, (the loss as returned, any bad class index))"""
        n, c = z.shape
        logp = jax.nn.log_softmax(z, axis=1)
        if prob:
            q = t if eps == 0 else (1 - eps) * t + eps / c
            coef = q if w is None else w * q
            row = -jnp.sum(jnp.where(coef != 0, coef * logp, 0), axis=1)
            denom = n
            bad = jnp.zeros((), bool)
        else:
            valid = t != ignore_index
            bad = jnp.any(valid & ((t < 0) | (t >= c)))
            safe = jnp.where(valid, t, 0)
            lp_y = jnp.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
            w_y = valid.astype(z.dtype) if w is None else jnp.where(valid, w[safe], 0)
            coef_y = (1 - eps) * w_y
            row = -jnp.where(coef_y != 0, coef_y * lp_y, 0)
            if eps:
                smooth = jnp.sum(logp if w is None else w * logp, axis=1)
                row = row - jnp.where(valid, eps / c * smooth, 0)
            denom = jnp.sum(w_y)
        if reduction == "none":
            return jnp.sum(row), (row, bad)
        loss = jnp.sum(row) if reduction == "sum" else jnp.sum(row) / denom
        return loss, (loss, bad)

    if op == "cross_entropy":
        return jax.jit(lambda z, t, w: objective(z, t, w)[1])
    return jax.jit(jax.value_and_grad(objective, has_aux=True))


def _jax_run(op, x, *args, axis=-1, **kwargs):
    """One op on NumPy or JAX arrays; returns JAX arrays, computed (blocked on)."""
    import jax

    dtype = np.dtype(x.dtype)
    with _jax_scope(dtype):
        x = _jax_device(x)
        if op in _JAX_SOFTMAX_OPS:
            if args or kwargs:
                raise TypeError(f"the jax peer's {op} takes (x, axis=...) only")
            return _jax_fn(op, int(axis))(x).block_until_ready()
        (target,) = args
        reduction = kwargs.pop("reduction", "mean")
        ignore_index = kwargs.pop("ignore_index", -100)
        eps = float(kwargs.pop("label_smoothing", 0.0))
        weight = kwargs.pop("weight", None)
        if kwargs:
            raise TypeError(f"the jax peer does not take {sorted(kwargs)}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {eps}")
        if not _INT32.min <= int(ignore_index) <= _INT32.max:
            raise ValueError(f"the jax peer takes an int32 ignore_index, got {ignore_index}")
        if x.ndim != 2:
            raise ValueError(f"the jax peer takes (N, C) logits, got shape {x.shape}")
        n, c = x.shape
        prob = np.dtype(target.dtype).kind == "f"
        if prob and tuple(target.shape) != (n, c):
            raise ValueError(f"probability targets must have shape {(n, c)}, got {target.shape}")
        if not prob and tuple(target.shape) != (n,):
            raise ValueError(f"class-index targets must have shape {(n,)}, got {target.shape}")
        t = _jax_device(target)
        if prob and t.dtype != dtype:
            t = t.astype(dtype)
        w = None if weight is None else _jax_device(np.asarray(weight, dtype))
        if w is not None and w.shape != (c,):
            raise ValueError(f"weight must have shape {(c,)}, got {w.shape}")
        fn = _jax_fn(op, -1, reduction, int(ignore_index), eps, prob)
        if op == "cross_entropy":
            (loss, bad), grad = fn(x, t, w), None
        else:
            (_, (loss, bad)), grad = fn(x, t, w)
        if bool(bad):
            raise ValueError(f"target holds a class index outside [0, {c}) (not ignore_index)")
        if grad is None:
            return loss.block_until_ready()
        return jax.block_until_ready((loss, grad))


_GPU_OPS = ("softmax", "log_softmax", "logsumexp", "cross_entropy", "cross_entropy_with_grad")


def _cupy_backend_unavailable() -> str | None:
    """Why fastsoftmax's own CUDA kernels (backend "cupy") cannot run here, or None."""
    reason = _cupy_unavailable()
    if reason is not None:
        return reason
    try:
        load("cupy")
    except BackendUnavailableError as err:
        return str(err)
    return None


def _cupy_backend_run(op, *args, **kwargs):
    return getattr(_api, op)(*args, backend="cupy", **kwargs)


IMPLEMENTATIONS: tuple[Implementation, ...] = (
    _backend_row("numpy", "reference"),
    _backend_row("numba", "backend"),
    Implementation("torch", "peer", _torch_unavailable, _torch_run),
    Implementation(
        "jax", "peer", _jax_unavailable, _jax_run, OPS, "cpu", _jax_device, _jax_to_host,
    ),
    Implementation(
        "cupy", "gpu-backend", _cupy_backend_unavailable, _cupy_backend_run, _GPU_OPS,
        "gpu", _cupy_device, _cupy_to_host,
    ),
    Implementation(
        "torch-cuda", "gpu-peer", _torch_cuda_unavailable, _torch_cuda_run, _GPU_OPS,
        "gpu", _torch_cuda_device, _torch_to_host,
    ),
    Implementation(
        "cupy-reference", "gpu-peer", _cupy_unavailable, _cupy_reference_run, _GPU_OPS,
        "gpu", _cupy_device, _cupy_to_host,
    ),
)  # fmt: skip


def get(name: str) -> Implementation:
    for impl in IMPLEMENTATIONS:
        if impl.name == name:
            return impl
    raise KeyError(f"no implementation named {name!r}; have {[i.name for i in IMPLEMENTATIONS]}")


def available(kind: str | None = None) -> list[Implementation]:
    """The implementations that can run here (optionally only those of one kind)."""
    return [i for i in IMPLEMENTATIONS if (kind is None or i.kind == kind) and not i.unavailable()]
