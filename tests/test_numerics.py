"""Numerical edge cases, each checked on every backend against the value the math gives.

The large-C (row) and small-C (tiled) kernel paths are both exercised: C=1000 and C=10.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import backend_params

import fastsoftmax as fs

ALL = backend_params(kinds=("reference", "backend"))
DTYPES = [np.float32, np.float64]


def xent(impl, z, y, **kw):
    return impl("cross_entropy_with_grad", z, y, **kw)


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("c", [3, 10, 1000])
def test_logits_of_plus_minus_1e4(impl, dtype, c):
    z = np.zeros((3, c), dtype)
    z[:, 0], z[:, 1] = 1e4, -1e4
    y = np.array([0, 1, 2])
    loss, grad = xent(impl, z, y, reduction="none")
    # exp(-1e4) underflows to exactly 0, so these are the exact values
    np.testing.assert_allclose(loss, [0.0, 2e4, 1e4], rtol=1e-6)
    expected = np.zeros((3, c))
    expected[:, 0] = 1.0
    expected[[0, 1, 2], y] -= 1.0
    np.testing.assert_array_equal(grad, expected.astype(dtype))


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=lambda d: np.dtype(d).name)
def test_a_loss_past_the_dtypes_range_is_inf_without_warnings(impl, reduction, dtype):
    """The float64 loss rounded to a dtype it overflows is inf (as PyTorch's), with no
    NumPy overflow warning from inside the package; the gradient stays exact."""
    big = float(np.finfo(dtype).max)
    z = np.array([[big, -big, 0.0], [big, -big / 2, 1.0]], dtype)
    y = np.array([1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad = xent(impl, z, y, reduction=reduction)
        alone = impl("cross_entropy", z, y, reduction=reduction)
    assert np.all(np.isposinf(loss)) and np.all(np.isposinf(alone))
    assert np.asarray(loss).dtype == dtype
    np.testing.assert_array_equal(
        grad, np.array([[1, -1, 0], [1, -1, 0]], dtype) * (0.5 if reduction == "mean" else 1.0)
    )


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("c", [2, 10, 1000])
def test_logits_near_float_max(impl, c):
    # float64: the loss 6e38 is representable
    z = np.zeros((2, c))
    z[:, 0], z[:, 1] = 3e38, -3e38
    loss, grad = xent(impl, z, np.array([0, 1]), reduction="none")
    np.testing.assert_allclose(loss, [0.0, 6e38], rtol=1e-12)
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[1, :2], [1.0, -1.0])
    # float32: finite wherever the true loss is representable in float32
    z32 = np.full((2, c), -3e38, np.float32)
    z32[:, 0], z32[:, 1] = 3e38, 2.9e38
    loss32, grad32 = xent(impl, z32, np.array([0, 1]), reduction="none")
    np.testing.assert_allclose(loss32, [0.0, 1e37], rtol=1e-6)
    assert loss32.dtype == np.float32 and np.all(np.isfinite(grad32))
    np.testing.assert_array_equal(grad32[:, 0], [0.0, 1.0])


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("c", [3, 10, 1000])
def test_float32_losses_beyond_float32_differences(impl, c):
    """float32 logits of +-3e38, whose differences (6e38) overflow float32 while the
    losses asked for do not: label smoothing (with and without class weights), the
    "mean" of a row whose own loss is 6e38, and probability targets.  Against the
    float64 reference on the same logits, rounded to float32."""
    z = np.zeros((4, c), np.float32)
    z[:, 0], z[:, 1] = 3e38, -3e38
    y = np.array([0, 2, 2, 0])  # losses of 3e37 (smoothing alone) and 3e38
    q = np.zeros((4, c), np.float32)
    q[:, 0], q[:, 2] = 0.75, 0.25
    q[1, :2] = 0.25  # a quarter on the -3e38 class: a loss of 1.5e38
    w = np.linspace(0.5, 1.5, c).astype(np.float32)
    cases = [
        (y, {"label_smoothing": 0.1, "reduction": "none"}),
        (y, {"label_smoothing": 0.1, "weight": w}),
        (np.array([1, 0, 2, 0]), {"reduction": "mean"}),
        (q, {"reduction": "none"}),
    ]
    for target, kw in cases:
        loss, grad = xent(impl, z, target, **kw)
        want = fs.cross_entropy(z.astype(np.float64), target, backend="numpy", **kw)
        assert np.all(np.isfinite(loss)), (kw, loss)
        np.testing.assert_allclose(loss, np.float32(want), rtol=1e-6, err_msg=str(kw))
        assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("c", [1, 2, 7, 10, 40, 1000])
def test_equal_logits_give_uniform_softmax(impl, dtype, c):
    z = np.full((5, c), 3.25, dtype)
    y = np.arange(5) % c
    loss, grad = xent(impl, z, y, reduction="none")
    np.testing.assert_allclose(loss, np.log(c), rtol=1e-6, atol=1e-7)
    expected = np.full((5, c), 1.0 / c)
    expected[np.arange(5), y] -= 1.0
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(impl("softmax", z), np.full((5, c), 1.0 / c), rtol=1e-6)


@pytest.mark.parametrize("impl", ALL)
def test_single_class(impl):
    z = np.array([[5.0], [-1e4], [0.0]])
    loss, grad = xent(impl, z, np.zeros(3, np.int64), reduction="none", label_smoothing=0.3)
    np.testing.assert_array_equal(loss, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(grad, np.zeros((3, 1)))
    np.testing.assert_array_equal(impl("softmax", z), np.ones((3, 1)))
    np.testing.assert_array_equal(impl("logsumexp", z), z[:, 0])


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("c", [10, 1000])
def test_masked_classes(impl, dtype, c):
    """-inf logits, including a masked run longer than the kernels' 256-element sum block
    and a row whose first classes are all masked (the online-softmax NaN trap)."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4, c)).astype(dtype)
    z[0, 1::2] = -np.inf
    z[1, : c - 3] = -np.inf  # only the last 3 classes live
    z[2, : c // 2] = -np.inf
    y = np.array([0, c - 1, c - 2, 3])
    loss, grad = xent(impl, z, y, reduction="none")
    z64 = z.astype(np.float64)
    lse = np.log(np.sum(np.exp(z64), axis=1))
    np.testing.assert_allclose(loss, lse - z64[np.arange(4), y], rtol=2e-6)
    p = np.exp(z64 - lse[:, None])
    p[np.arange(4), y] -= 1
    np.testing.assert_allclose(grad, p, rtol=2e-5, atol=2e-7)
    assert np.all(grad[np.isinf(z)] == 0)
    # the target itself masked: infinite loss, finite gradient
    y_masked = np.array([1, 0, 0, 3])
    loss, grad = xent(impl, z, y_masked, reduction="none")
    assert np.all(np.isposinf(loss[:3])) and np.isfinite(loss[3])
    assert np.all(np.isfinite(grad))
    # label smoothing puts mass on masked classes: infinite loss (as in PyTorch)
    loss, _ = xent(impl, z, y, reduction="none", label_smoothing=0.1)
    assert np.all(np.isposinf(loss[:3])) and np.isfinite(loss[3])
    # a masked class of weight 0 contributes nothing, even smoothed (0 * log 0 = 0)
    w = np.ones(c)
    w[np.isinf(z[1])] = 0.0
    loss, _ = xent(impl, z[1:2], y[1:2], reduction="none", label_smoothing=0.1, weight=w)
    assert np.isfinite(loss[0])


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("c", [10, 1000])
def test_all_masked_row_is_nan_for_that_row_only(impl, c):
    z = np.random.default_rng(1).standard_normal((3, c))
    z[1] = -np.inf
    y = np.array([0, 1, 2])
    loss, grad = xent(impl, z, y, reduction="none")
    assert np.isnan(loss[1]) and np.all(np.isnan(grad[1]))
    assert np.all(np.isfinite(loss[[0, 2]])) and np.all(np.isfinite(grad[[0, 2]]))
    ref_loss, ref_grad = fs.cross_entropy_with_grad(
        z[[0, 2]], y[[0, 2]], reduction="none", backend="numpy"
    )
    np.testing.assert_allclose(loss[[0, 2]], ref_loss, rtol=1e-12)
    np.testing.assert_allclose(grad[[0, 2]], ref_grad, rtol=1e-10, atol=1e-15)
    assert np.isnan(xent(impl, z, y)[0])  # and the mean says so
    sm = impl("softmax", z)
    assert np.all(np.isnan(sm[1])) and np.all(np.isfinite(sm[[0, 2]]))
    assert impl("logsumexp", z)[1] == -np.inf  # log(0), as scipy and PyTorch


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("c", [10, 1000])
@pytest.mark.parametrize("bad", [np.nan, -np.nan, np.inf], ids=["nan", "negative-nan", "inf"])
def test_nan_or_inf_in_a_row_poisons_that_row_only(impl, c, bad):
    rng = np.random.default_rng(2)
    z = rng.standard_normal((5, c)).astype(np.float32)
    z[2, c // 3] = bad
    y = np.array([0, 1, 2, 3, 4])
    loss, grad = xent(impl, z, y, reduction="none")
    assert np.isnan(loss[2]) and np.all(np.isnan(grad[2]))
    ok = [0, 1, 3, 4]
    ref_loss, ref_grad = fs.cross_entropy_with_grad(z[ok], y[ok], reduction="none", backend="numpy")
    np.testing.assert_allclose(loss[ok], ref_loss, rtol=2e-6)
    np.testing.assert_allclose(grad[ok], ref_grad, rtol=2e-5, atol=2e-7)
    for op in ("softmax", "log_softmax"):
        out = impl(op, z)
        assert np.all(np.isnan(out[2])) and np.all(np.isfinite(out[ok]))
    lse = impl("logsumexp", z)
    assert np.isposinf(lse[2]) if bad == np.inf else np.isnan(lse[2])
    assert np.all(np.isfinite(lse[ok]))


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("c", [10, 1000])
def test_ignored_rows_are_exactly_zero_whatever_their_logits(impl, c):
    z = np.random.default_rng(3).standard_normal((4, c))
    z[1] = np.nan
    z[2] = -np.inf
    y = np.array([0, -100, -100, 3])
    loss, grad = xent(impl, z, y, reduction="none", label_smoothing=0.2)
    np.testing.assert_array_equal(loss[1:3], 0.0)
    np.testing.assert_array_equal(grad[1:3], 0.0)
    mean, gmean = xent(impl, z, y)
    assert np.isfinite(mean) and np.all(np.isfinite(gmean))


@pytest.mark.parametrize("impl", ALL)
def test_logsumexp_infinite_rows(impl):
    x = np.array([[-np.inf, -np.inf], [np.inf, 0.0], [np.inf, np.nan], [1.0, 2.0]])
    out = impl("logsumexp", x)
    assert out[0] == -np.inf and out[1] == np.inf and np.isnan(out[2])
    np.testing.assert_allclose(out[3], np.log(np.exp(1.0) + np.exp(2.0)))


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("c", [3, 40])  # the tile path, the row path
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logsumexp_nan_beside_infinities(impl, c, dtype):
    """A NaN in a row of infinities gives NaN whatever its sign bit (x86 makes NaNs
    with it set, e.g. inf - inf), as scipy and PyTorch: the kernels' max orders such a
    NaN below -inf, and a row whose max was -inf came out -inf."""
    neg_nan = -np.asarray(np.nan, dtype)
    assert np.signbit(neg_nan)
    x = np.full((4, c), -np.inf, dtype)
    x[0, 1] = neg_nan
    x[1, 0] = np.nan
    x[2, c - 1] = neg_nan
    x[2, 0] = np.inf
    x[3, 2] = neg_nan
    x[3, 1] = -np.inf
    out = impl("logsumexp", x)
    assert out.dtype == dtype and np.all(np.isnan(out)), out


@pytest.mark.parametrize("impl", ALL)
def test_float32_row_sums_are_accurate_at_large_c(impl):
    """256k classes of equal logits: a float32 running sum would lose ~1e-3 here; the
    blocked float64 accumulation keeps log(C) to float32 precision."""
    c = 262144
    z = np.zeros((2, c), np.float32)
    loss = impl("cross_entropy", z, np.array([0, c - 1]), reduction="none")
    np.testing.assert_allclose(loss, np.log(c), rtol=1e-7)


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("c", [22, 1000])
def test_precision_kept_at_large_logits(impl, c):
    """Formulas that cancel badly at |z| ~ 1e4 in float32 (x - (max + log s), or
    C*lse - sum(z) for the smoothing term) would be off by ~1e-3 here."""
    z = np.full((2, c), 4093.0, np.float32)
    np.testing.assert_allclose(impl("log_softmax", z), np.log(1.0 / c), rtol=1e-7)
    loss = impl("cross_entropy", z, np.array([0, 1]), reduction="none", label_smoothing=0.3)
    np.testing.assert_allclose(loss, np.log(c), rtol=1e-7)
    z[:, 1::2] = -4093.0  # half the classes far below: smoothing adds 0.3/C * 8186 each
    loss = impl("cross_entropy", z, np.array([0, 0]), reduction="none", label_smoothing=0.3)
    live = c - c // 2
    expected = np.log(live) + 0.3 / c * (c // 2) * 8186.0
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("c", [2, 10, 1000, 32000])
def test_confident_rows_keep_relative_precision(impl, dtype, c):
    """loss = log(1 + d) with d ~ 1e-6..1e-9: forming 1 + d in float32 would lose it."""
    gap = np.array([12.0, 16.0, 20.0, 25.0])
    z = np.zeros((4, c), dtype)
    z[:, 0] = gap
    y = np.zeros(4, np.int64)
    expected = np.log1p((c - 1) * np.exp(-gap))
    loss, grad = xent(impl, z, y, reduction="none")
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(impl("cross_entropy", z, y, reduction="none"), expected, rtol=1e-6)
    # the true-class gradient p_y - 1 = -(1 - p_y) keeps its relative precision too
    np.testing.assert_allclose(
        -grad[:, 0], -np.expm1(-expected), rtol=2e-6 if dtype == np.float32 else 1e-12
    )
    np.testing.assert_allclose(impl("logsumexp", z), gap + expected, rtol=1e-7)
