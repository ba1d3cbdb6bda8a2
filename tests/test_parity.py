"""Every backend against the NumPy reference, over shapes x dtypes x options.

The reference itself is checked against independent oracles in test_reference.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FULL, assert_close, backend_params, random_logits

import fastsoftmax as fs

SHAPES = [(0, 7), (1, 1), (1, 2), (3, 423), (60000, 10), (257, 1000), (8, 50257), (2, 128256)]
SMALL_SHAPES = [
    (0, 7),
    (1, 1),
    (5, 2),
    (3, 423),
    (300, 10),
    (40, 32),
    (40, 33),
    (257, 17),
    (4, 5000),
]
DTYPES = [np.float32, np.float64]
# float64 with --full (see conftest.FULL)
DTYPE_PARAMS = [np.float32, pytest.param(np.float64, marks=FULL)]
IGNORE = -100


def _ref(op, *args, **kwargs):
    return getattr(fs, op)(*args, backend="numpy", **kwargs)


def _scale(a) -> float:
    a = np.asarray(a, np.float64)
    finite = a[np.isfinite(a)]
    return float(np.abs(finite).max()) if finite.size else 1.0


def _grad_unit(y, w, reduction, n) -> float:
    """The largest magnitude a gradient entry can have: max(w) (times 1/denominator for
    a mean); the atol of gradient comparisons is relative to it."""
    wmax = 1.0 if w is None else float(np.max(w))
    if reduction != "mean":
        return wmax
    if y.ndim == 2:  # probability targets: the mean divides by N
        return wmax / max(n, 1)
    valid = y != IGNORE
    denom = valid.sum() if w is None else np.asarray(w)[y[valid]].sum()
    return wmax / denom if denom else 1.0


def _targets(rng, n, c, ignore):
    y = rng.integers(0, c, n)
    if ignore and n:
        y[rng.random(n) < 0.25] = IGNORE
        y[0] = IGNORE
    return y


@pytest.mark.parametrize("impl", backend_params())
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["eps0", "eps0.1"])
@pytest.mark.parametrize("ignore", [False, True], ids=["all-rows", "ignored-rows"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPE_PARAMS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_cross_entropy_with_grad(impl, shape, dtype, reduction, ignore, smoothing, weighted, rng):
    n, c = shape
    z = random_logits(rng, shape, dtype)
    y = _targets(rng, n, c, ignore)
    opts = {
        "reduction": reduction,
        "label_smoothing": smoothing,
        "weight": rng.uniform(0.1, 2.0, c) if weighted else None,
    }
    ref_loss, ref_grad = _ref("cross_entropy_with_grad", z, y, **opts)
    loss, grad = impl("cross_entropy_with_grad", z, y, **opts)
    assert np.asarray(loss).dtype == dtype and grad.dtype == dtype
    assert np.shape(loss) == np.shape(ref_loss) and grad.shape == shape
    assert_close(loss, ref_loss, dtype, _scale(ref_loss), "loss")
    unit = _grad_unit(y, opts["weight"], reduction, n)
    assert_close(grad, ref_grad, dtype, unit, "dlogits")
    fwd = impl("cross_entropy", z, y, **opts)
    assert_close(fwd, ref_loss, dtype, _scale(ref_loss), "forward-only loss")


@pytest.mark.parametrize("impl", backend_params())
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2], ids=["eps0", "eps0.2"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPE_PARAMS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "shape", [*SMALL_SHAPES, (60000, 10), (2, 128256)], ids=lambda s: f"{s[0]}x{s[1]}"
)
def test_cross_entropy_probability_targets(impl, shape, dtype, reduction, smoothing, weighted, rng):
    n, c = shape
    z = random_logits(rng, shape, dtype)
    q = rng.random(shape) ** 4  # peaked soft labels
    q /= np.maximum(q.sum(axis=1, keepdims=True), 1e-30)
    q = q.astype(dtype)
    opts = {
        "reduction": reduction,
        "label_smoothing": smoothing,
        "weight": rng.uniform(0.1, 2.0, c) if weighted else None,
    }
    ref_loss, ref_grad = _ref("cross_entropy_with_grad", z, q, **opts)
    loss, grad = impl("cross_entropy_with_grad", z, q, **opts)
    assert_close(loss, ref_loss, dtype, _scale(ref_loss), "loss")
    unit = _grad_unit(q, opts["weight"], reduction, n)
    assert_close(grad, ref_grad, dtype, unit, "dlogits")
    assert_close(impl("cross_entropy", z, q, **opts), ref_loss, dtype, _scale(ref_loss))


@pytest.mark.parametrize("impl", backend_params())
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("dtype", DTYPE_PARAMS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_softmax_family(impl, op, shape, dtype, rng):
    x = random_logits(rng, shape, dtype)
    expected = _ref(op, x)
    actual = impl(op, x)
    assert actual.dtype == dtype and actual.shape == expected.shape
    assert_close(actual, expected, dtype, _scale(expected), op)


@pytest.mark.parametrize("impl", backend_params())
@pytest.mark.parametrize("op", ["softmax_backward", "log_softmax_backward"])
@pytest.mark.parametrize("dtype", DTYPE_PARAMS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "shape", [*SMALL_SHAPES, (60000, 10), (2, 128256)], ids=lambda s: f"{s[0]}x{s[1]}"
)
def test_backward(impl, op, shape, dtype, rng):
    x = random_logits(rng, shape, dtype)
    y = (
        fs.softmax(x, backend="numpy")
        if op == "softmax_backward"
        else fs.log_softmax(x, backend="numpy")
    )
    gout = rng.standard_normal(shape).astype(dtype)
    expected = getattr(fs, op)(y, gout, backend="numpy")
    actual = getattr(fs, op)(y, gout, backend=impl.name)
    assert actual.dtype == dtype
    assert_close(actual, expected, dtype, _scale(expected), op)


@pytest.mark.parametrize("impl", backend_params())
def test_mnist_parity(impl, mnist_test):
    """Logits from the real MNIST test set times a fixed random W."""
    from fastsoftmax.cli import mnist_logits

    x, y = mnist_test
    assert x.shape == (10000, 784) and y.shape == (10000,)
    for dtype in DTYPES:
        z = mnist_logits(x, np.dtype(dtype))
        ref_loss, ref_grad = _ref("cross_entropy_with_grad", z, y)
        loss, grad = impl("cross_entropy_with_grad", z, y)
        assert_close(loss, ref_loss, dtype, 1.0, "MNIST loss")
        assert_close(grad, ref_grad, dtype, 1.0 / len(y), "MNIST dlogits")
        assert_close(impl("softmax", z), _ref("softmax", z), dtype, 1.0, "MNIST softmax")
        # a sanity anchor independent of every backend: a random model is near chance
        assert 2.0 < float(ref_loss) < 2.6
