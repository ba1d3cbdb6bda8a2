"""One table of implementations, read by the parity tests, the benchmarks and the CLI.

Each row runs the public ops on NumPy arrays and returns NumPy arrays: the reference,
each backend, and peers (PyTorch on the CPU) when installed.  Peers are never
dependencies: a row whose library is missing reports why and is skipped.  Adding a
backend is adding a row.
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

    def unavailable(self) -> str | None:
        """None when this implementation can run here, else the reason it cannot."""
        return self._unavailable()

    def __call__(self, op: str, *args, **kwargs):
        if op not in self.ops:
            raise ValueError(f"{self.name} does not implement {op!r}")
        return self._run(op, *args, **kwargs)


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


IMPLEMENTATIONS: tuple[Implementation, ...] = (
    _backend_row("numpy", "reference"),
    _backend_row("numba", "backend"),
    Implementation("torch", "peer", _torch_unavailable, _torch_run),
)


def get(name: str) -> Implementation:
    for impl in IMPLEMENTATIONS:
        if impl.name == name:
            return impl
    raise KeyError(f"no implementation named {name!r}; have {[i.name for i in IMPLEMENTATIONS]}")


def available(kind: str | None = None) -> list[Implementation]:
    """The implementations that can run here (optionally only those of one kind)."""
    return [i for i in IMPLEMENTATIONS if (kind is None or i.kind == kind) and not i.unavailable()]
