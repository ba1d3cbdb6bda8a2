"""Property tests (hypothesis): identities every backend must satisfy on any input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import backend_params
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import fastsoftmax as fs

ALL = backend_params(kinds=("reference", "backend"))
PROFILE = settings(max_examples=60, deadline=None)


@st.composite
def logits_and_targets(draw, max_rows=40, max_classes=70, magnitude=1e4):
    n = draw(st.integers(1, max_rows))
    c = draw(st.integers(1, max_classes))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    elements = st.floats(-magnitude, magnitude, allow_nan=False, allow_infinity=False, width=32)
    z = draw(arrays(dtype, (n, c), elements=elements))
    y = draw(arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    return z, y


@pytest.mark.parametrize("impl", ALL)
@PROFILE
@given(data=logits_and_targets())
def test_softmax_rows_are_distributions(impl, data):
    z, _ = data
    p = impl("softmax", z)
    assert np.all(p >= 0) and np.all(p <= 1)
    np.testing.assert_allclose(p.sum(axis=1, dtype=np.float64), 1.0, rtol=2e-6)
    # log_softmax is its log, logsumexp its normaliser
    lp = impl("log_softmax", z)
    np.testing.assert_allclose(np.exp(lp.astype(np.float64)), p, rtol=1e-4, atol=1e-6)
    lse = impl("logsumexp", z).astype(np.float64)
    np.testing.assert_allclose(
        z - lse[:, None], lp, rtol=1e-5, atol=1e-3 * np.abs(lse).max() * 1e-3
    )


@pytest.mark.parametrize("impl", ALL)
@PROFILE
@given(data=logits_and_targets(magnitude=50.0), shift=st.floats(-1e3, 1e3))
def test_softmax_is_shift_invariant(impl, data, shift):
    z, _ = data
    z = z.astype(np.float64)  # the shift must be exact for the identity to be exact
    np.testing.assert_allclose(
        impl("softmax", z + shift), impl("softmax", z), rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("impl", ALL)
@PROFILE
@given(
    data=logits_and_targets(),
    eps=st.sampled_from([0.0, 0.1, 1.0]),
    weighted=st.booleans(),
    reduction=st.sampled_from(["mean", "sum", "none"]),
)
def test_loss_is_nonnegative_and_gradient_rows_sum_to_zero(impl, data, eps, weighted, reduction):
    z, y = data
    w = np.linspace(0.5, 2.0, z.shape[1]) if weighted else None
    loss, grad = impl(
        "cross_entropy_with_grad", z, y, label_smoothing=eps, weight=w, reduction=reduction
    )
    assert np.all(np.asarray(loss) >= 0)
    # sum_c dloss/dz_c = a - (1-eps) w_y - eps/C sum(w) = 0 for every row, by construction
    g = grad.astype(np.float64)
    np.testing.assert_allclose(
        g.sum(axis=1), 0.0, atol=5e-6 * max(1.0, np.abs(g).max()) * z.shape[1]
    )


@pytest.mark.parametrize("impl", backend_params())
@PROFILE
@given(
    data=logits_and_targets(max_rows=300, max_classes=300),
    masked=st.floats(0.0, 0.9),
    eps=st.sampled_from([0.0, 0.2]),
)
def test_backend_matches_reference_with_masked_classes(impl, data, masked, eps):
    z, y = data
    rng = np.random.default_rng(z.size)
    mask = rng.random(z.shape) < masked
    mask[np.arange(len(y)), y] = False  # keep every target live
    z = np.where(mask, -np.inf, z).astype(z.dtype)
    ref_loss, ref_grad = fs.cross_entropy_with_grad(
        z, y, reduction="none", label_smoothing=eps, backend="numpy"
    )
    loss, grad = impl("cross_entropy_with_grad", z, y, reduction="none", label_smoothing=eps)
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=2e-5, atol=2e-6)
