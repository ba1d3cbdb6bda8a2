"""One table of implementations, read by the parity tests, the benchmarks and the CLI.

Each row runs the public ops on NumPy arrays and returns NumPy arrays: the reference,
each backend, and peers (PyTorch on the CPU and on a GPU, the reference's math run by
CuPy) when installed.  Peers are never dependencies: a row whose library (or GPU) is
missing reports why and is skipped.  Adding a backend is adding a row.

GPU rows (``device == "gpu"``) also run on device arrays: a benchmark moves the inputs
once with ``impl.to_device`` and times ``impl.on_device(op, *args)`` (then synchronises,
see ``fastsoftmax.benchmarks.synchronizer``), so transfers are not timed; calling the row
itself moves NumPy inputs there and the results back.
"""

from __future__ import annotations

import importlib.util
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
        if self.device == "cpu":
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


_GPU_OPS = ("softmax", "log_softmax", "logsumexp", "cross_entropy", "cross_entropy_with_grad")

IMPLEMENTATIONS: tuple[Implementation, ...] = (
    _backend_row("numpy", "reference"),
    _backend_row("numba", "backend"),
    Implementation("torch", "peer", _torch_unavailable, _torch_run),
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
