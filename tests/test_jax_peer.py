"""The JAX row of the implementations table (JAX on the CPU, a benchmark peer) against
the NumPy reference.  Skipped where JAX is not installed.

The parity tests (test_parity.py) run only the "backend" rows; peers are checked here
and in test_reference.py (PyTorch).  JAX computes float32 inputs in float32 (sums
included, where the reference sums in float64); at these shapes it stays within the
float32 tolerances of conftest.TOLERANCES, which are used unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, random_logits

import fastsoftmax as fs
from fastsoftmax.implementations import get

IGNORE = -100
DTYPES = [np.float32, np.float64]


@pytest.fixture(scope="module")
def jax_row():
    pytest.importorskip("jax")
    impl = get("jax")
    reason = impl.unavailable()
    if reason:
        pytest.skip(reason)
    assert impl.kind == "peer" and impl.device == "cpu"
    return impl


def _ref(op, *args, **kwargs):
    return getattr(fs, op)(*args, backend="numpy", **kwargs)


def _scale(a) -> float:
    a = np.abs(np.asarray(a, np.float64))
    return float(a.max()) if a.size else 1.0


def _check_xent(impl, z, y, dtype, **opts):
    ref_loss, ref_grad = _ref("cross_entropy_with_grad", z, y, **opts)
    loss, grad = impl("cross_entropy_with_grad", z, y, **opts)
    assert isinstance(loss, np.ndarray) and isinstance(grad, np.ndarray)
    assert loss.dtype == dtype and grad.dtype == dtype
    assert loss.shape == np.shape(ref_loss) and grad.shape == z.shape
    assert_close(loss, ref_loss, dtype, _scale(ref_loss), "loss")
    # atol in units of the largest possible gradient entry (max weight / denominator)
    assert_close(grad, ref_grad, dtype, _scale(ref_grad), "dlogits")
    fwd = impl("cross_entropy", z, y, **opts)
    assert_close(fwd, ref_loss, dtype, _scale(ref_loss), "forward-only loss")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "shape", [(1, 1), (5, 2), (3, 423), (512, 10), (60000, 10), (257, 1000), (2, 128256)],
    ids=lambda s: f"{s[0]}x{s[1]}",
)  # fmt: skip
def test_jax_matches_reference(jax_row, shape, dtype, rng):
    z = random_logits(rng, shape, dtype)
    for op in ("softmax", "log_softmax", "logsumexp"):
        expected = _ref(op, z)
        actual = jax_row(op, z)
        assert actual.dtype == dtype and actual.shape == expected.shape
        assert_close(actual, expected, dtype, _scale(expected), op)
    _check_xent(jax_row, z, rng.integers(0, shape[1], shape[0]), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["eps0", "eps0.1"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_jax_options_match_reference(jax_row, dtype, reduction, smoothing, weighted, rng):
    n, c = 300, 17
    z = random_logits(rng, (n, c), dtype)
    y = rng.integers(0, c, n)
    y[rng.random(n) < 0.25] = IGNORE
    opts = {
        "reduction": reduction,
        "label_smoothing": smoothing,
        "weight": rng.uniform(0.1, 2.0, c) if weighted else None,
    }
    _check_xent(jax_row, z, y, dtype, **opts)
    q = rng.random((n, c)) ** 4  # peaked probability targets
    q = (q / q.sum(axis=1, keepdims=True)).astype(dtype)
    _check_xent(jax_row, z, q, dtype, **opts)


def test_jax_axis_and_device_path(jax_row, rng):
    """axis= for the softmax family; the benchmark's path (to_device once, on_device
    timed) gives what calling the row gives."""
    x = random_logits(rng, (4, 6, 5), np.float32)
    assert_close(jax_row("softmax", x, axis=1), _ref("softmax", x, axis=1), np.float32)
    z = random_logits(rng, (512, 10), np.float32)
    y = rng.integers(0, 10, 512)
    args = jax_row.to_device(z, y)
    loss, grad = jax_row.on_device("cross_entropy_with_grad", *args)
    ref_loss, ref_grad = jax_row("cross_entropy_with_grad", z, y)
    np.testing.assert_array_equal(np.asarray(loss), ref_loss)
    np.testing.assert_array_equal(np.asarray(grad), ref_grad)


def test_jax_float64_leaves_the_global_x64_setting_alone(jax_row, rng):
    import jax

    before = jax.config.jax_enable_x64
    z = random_logits(rng, (8, 5), np.float64)
    loss, grad = jax_row("cross_entropy_with_grad", z, rng.integers(0, 5, 8))
    assert loss.dtype == np.float64 and grad.dtype == np.float64
    assert jax.config.jax_enable_x64 == before
    if not before:  # the user's own JAX code still gets float32
        assert jax.numpy.asarray(np.ones(2)).dtype == np.float32


def test_jax_refuses_what_it_would_get_wrong(jax_row, rng):
    z = random_logits(rng, (6, 4), np.float32)
    y = np.array([0, 1, 2, 3, IGNORE, 4])  # 4 is not a class
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
        jax_row("cross_entropy_with_grad", z, y)
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
        jax_row("cross_entropy", z, np.array([0, 1, 2, 3, 0, -1]))
    with pytest.raises(ValueError, match="shape"):
        jax_row("cross_entropy", z, np.zeros(5, np.int64))  # would broadcast in jnp
    with pytest.raises(ValueError, match="shape"):
        jax_row("cross_entropy", z, np.full(4, 0.25, np.float32))
    with pytest.raises(TypeError, match="out"):
        jax_row("cross_entropy_with_grad", z, np.zeros(6, np.int64), out=np.empty_like(z))
    with pytest.raises(ValueError, match="reduction"):
        jax_row("cross_entropy", z, np.zeros(6, np.int64), reduction="max")


def test_jax_all_ignored_mean_is_nan_like_pytorch(jax_row):
    """A documented difference: fastsoftmax returns 0 for a mean over no rows, PyTorch
    (and this row, which follows its conventions) NaN."""
    z = np.ones((3, 4), np.float32)
    y = np.full(3, IGNORE)
    assert np.isnan(jax_row("cross_entropy", z, y))
    assert float(_ref("cross_entropy", z, y)) == 0.0
