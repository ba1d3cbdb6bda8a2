"""The NumPy reference against oracles that share none of its code: the textbook
definition written as plain loops, central finite differences, and PyTorch (when
installed; not a dependency)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import random_logits

import fastsoftmax as fs

IGNORE = -100


def textbook_rows(z, target, weight, eps, ignore_index=IGNORE):
    """Per-row loss and d(row loss)/dz from PyTorch's documented formula, with loops."""
    n, c = z.shape
    w = np.ones(c) if weight is None else np.asarray(weight, float)
    losses, grads = np.zeros(n), np.zeros((n, c))
    for i in range(n):
        row = [float(v) for v in z[i]]
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        logp = [v - lse for v in row]
        if target.ndim == 1:
            if target[i] == ignore_index:
                continue
            q = [(1 - eps) * (j == target[i]) + eps / c for j in range(c)]
            # PyTorch weights the one-hot part by w[y] and the smoothing part by w[c]
            coef = [(1 - eps) * w[target[i]] * (j == target[i]) + eps / c * w[j] for j in range(c)]
        else:
            q = [(1 - eps) * target[i, j] + eps / c for j in range(c)]
            coef = [w[j] * q[j] for j in range(c)]
        losses[i] = -sum(k * lp for k, lp in zip(coef, logp, strict=True) if k != 0)
        total = sum(coef)
        grads[i] = [total * math.exp(lp) - k for k, lp in zip(coef, logp, strict=True)]
    return losses, grads


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("targets", ["index", "prob"])
def test_reference_matches_textbook_definition(targets, reduction, eps, weighted, rng):
    n, c = 9, 6
    z = random_logits(rng, (n, c), np.float64)
    w = rng.uniform(0.2, 3.0, c) if weighted else None
    if targets == "index":
        y = rng.integers(0, c, n)
        y[[2, 5]] = IGNORE
        valid = y != IGNORE
        denom = valid.sum() if w is None else w[y[valid]].sum()
    else:
        y = rng.random((n, c))
        y /= y.sum(axis=1, keepdims=True)
        denom = n
    rows, row_grads = textbook_rows(z, y, w, eps)
    loss, grad = fs.cross_entropy_with_grad(
        z, y, reduction=reduction, label_smoothing=eps, weight=w, backend="numpy"
    )
    if reduction == "none":
        np.testing.assert_allclose(loss, rows, rtol=1e-12)
        np.testing.assert_allclose(grad, row_grads, rtol=1e-10, atol=1e-14)
    elif reduction == "sum":
        np.testing.assert_allclose(loss, rows.sum(), rtol=1e-12)
        np.testing.assert_allclose(grad, row_grads, rtol=1e-10, atol=1e-14)
    else:
        np.testing.assert_allclose(loss, rows.sum() / denom, rtol=1e-12)
        np.testing.assert_allclose(grad, row_grads / denom, rtol=1e-10, atol=1e-14)


def _finite_difference(f, z, h=1e-6):
    g = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        g[idx] = (f(zp) - f(zm)) / (2 * h)
    return g


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"reduction": "sum"},
        {"reduction": "none"},
        {"label_smoothing": 0.2},
        {"weight": np.array([0.5, 1.0, 2.0, 0.0, 1.5])},
        {"weight": np.array([0.5, 1.0, 2.0, 0.1, 1.5]), "label_smoothing": 0.4, "ignore_index": 3},
    ],
    ids=["mean", "sum", "none", "smoothing", "weight", "all-options"],
)
@pytest.mark.parametrize("targets", ["index", "prob"])
def test_gradient_matches_finite_differences(backend, opts, targets, rng):
    z = rng.standard_normal((4, 5)) * 2
    if targets == "index":
        y = np.array([0, 3, 4, 1])
    else:
        y = rng.random((4, 5))
        y /= y.sum(axis=1, keepdims=True)
        opts = {k: v for k, v in opts.items() if k != "ignore_index"}

    def total(zz):
        return float(np.sum(fs.cross_entropy(zz, y, backend=backend, **opts)))

    _, grad = fs.cross_entropy_with_grad(z, y, backend=backend, **opts)
    np.testing.assert_allclose(grad, _finite_difference(total, z), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_backward_ops_match_finite_differences(backend, op, rng):
    x = rng.standard_normal((3, 7))
    gout = rng.standard_normal((3, 7))
    fwd = getattr(fs, op)
    y = fwd(x, backend=backend)
    vjp = getattr(fs, f"{op}_backward")(y, gout, backend=backend)
    expected = _finite_difference(lambda xx: float(np.sum(fwd(xx, backend="numpy") * gout)), x)
    np.testing.assert_allclose(vjp, expected, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------------------
# PyTorch as a peer oracle (skipped where torch is not installed)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.25])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("targets", ["index", "prob"])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_matches_pytorch(backend, targets, reduction, eps, weighted, rng):
    torch = pytest.importorskip("torch")
    from fastsoftmax.implementations import get

    n, c = 37, 11
    z = random_logits(rng, (n, c), np.float64)
    w = rng.uniform(0.2, 3.0, c) if weighted else None
    if targets == "index":
        y = rng.integers(0, c, n)
        y[[3, 7, 8]] = IGNORE
    else:
        y = rng.random((n, c))
        y /= y.sum(axis=1, keepdims=True)
    opts = {"reduction": reduction, "label_smoothing": eps, "weight": w}
    t_loss, t_grad = get("torch")("cross_entropy_with_grad", z, y, **opts)
    loss, grad = fs.cross_entropy_with_grad(z, y, backend=backend, **opts)
    np.testing.assert_allclose(loss, t_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad, t_grad, rtol=1e-10, atol=1e-14)
    assert torch is not None
