"""Bad input: a clear error that names the argument and what was wrong, on every backend."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import backend_params

import fastsoftmax as fs

ALL = backend_params(kinds=("reference", "backend"))


@pytest.fixture
def z():
    return np.random.default_rng(0).standard_normal((20, 10)).astype(np.float32)


@pytest.fixture
def y():
    return np.arange(20) % 10


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("op", ["cross_entropy", "cross_entropy_with_grad"])
def test_target_out_of_range_names_first_bad_row(impl, op, z, y):
    y = y.copy()
    y[17], y[18] = 12, -3
    with pytest.raises(
        ValueError,
        match=re.escape("target[17] = 12 is out of range for 10 classes (ignore_index=-100)"),
    ):
        impl(op, z, y)
    y[17] = 4
    with pytest.raises(ValueError, match=re.escape("target[18] = -3 is out of range")):
        impl(op, z, y)
    # the same value is fine once it is the ignore_index
    impl(op, z, y, ignore_index=-3)


@pytest.mark.parametrize("impl", ALL)
def test_uint64_target_past_int64_is_out_of_range(impl, z, y):
    """A uint64 class index past int64's range is an error, not a value wrapped around
    (2**64 - 100 would become -100, the default ignore_index)."""
    y = y.astype(np.uint64)
    y[7] = 2**64 - 100
    with pytest.raises(ValueError, match=re.escape("target[7] = 18446744073709551516 is out")):
        impl("cross_entropy", z, y)
    y[7] = 3
    assert np.isfinite(impl("cross_entropy", z, y))


@pytest.mark.parametrize("impl", ALL)
def test_out_of_range_target_leaves_inputs_and_out_untouched(impl, z, y):
    y = y.copy()
    y[5] = 99
    before = z.copy()
    with pytest.raises(ValueError):
        impl("cross_entropy_with_grad", z, y, inplace=True)
    np.testing.assert_array_equal(z, before)


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize(
    ("logits", "target", "kwargs", "error", "pattern"),
    [
        (
            np.zeros(10),
            np.zeros(1, int),
            {},
            ValueError,
            r"logits must be 2-D \(N, C\), got shape \(10,\)",
        ),
        (np.zeros((2, 3, 4)), np.zeros(2, int), {}, ValueError, r"logits must be 2-D"),
        (np.zeros((2, 0)), np.zeros(2, int), {}, ValueError, r"at least one class"),
        (np.zeros((4, 3)), np.zeros(5, int), {}, ValueError, r"target has 5 rows but logits has 4"),
        (
            np.zeros((4, 3)),
            np.zeros((4, 1), int),
            {},
            ValueError,
            r"target of class indices must be 1-D",
        ),
        (
            np.zeros((4, 3)),
            np.zeros((4, 2)),
            {},
            ValueError,
            r"target of probabilities must have the shape of logits \(4, 3\)",
        ),
        (np.zeros((4, 3)), np.zeros(4), {}, ValueError, r"target of probabilities"),
        (
            np.zeros((4, 3), int),
            np.zeros(4, int),
            {},
            TypeError,
            r"logits must be a floating-point array .* got dtype int64",
        ),
        (
            np.zeros((4, 3), complex),
            np.zeros(4, int),
            {},
            TypeError,
            r"logits must be a floating-point",
        ),
        (
            np.array([["a", "b"]]),
            np.zeros(1, int),
            {},
            TypeError,
            r"logits must be a floating-point",
        ),
        (
            np.zeros((4, 3)),
            np.zeros(4, bool),
            {},
            TypeError,
            r"target must be integer class indices",
        ),
        (
            np.zeros((4, 3)),
            np.array(["a"] * 4),
            {},
            TypeError,
            r"target must be integer class indices",
        ),
        (
            np.zeros((4, 3)),
            np.zeros(4, int),
            {"weight": np.ones(4)},
            ValueError,
            r"weight must have shape \(C,\) = \(3,\), got \(4,\)",
        ),
        (
            np.zeros((4, 3)),
            np.zeros(4, int),
            {"weight": np.ones((3, 1))},
            ValueError,
            r"weight must have shape",
        ),
        (
            np.zeros((4, 3)),
            np.zeros(4, int),
            {"weight": np.array(["x"] * 3)},
            TypeError,
            r"weight must be a real numeric array",
        ),
        (
            np.zeros((4, 3)),
            np.zeros(4, int),
            {"reduction": "avg"},
            ValueError,
            r"reduction must be one of",
        ),
        (
            np.zeros((4, 3)),
            np.zeros(4, int),
            {"label_smoothing": 1.5},
            ValueError,
            r"label_smoothing must be in \[0, 1\], got 1.5",
        ),
        (
            np.zeros((4, 3)),
            np.zeros(4, int),
            {"label_smoothing": float("nan")},
            ValueError,
            r"label_smoothing must be in \[0, 1\]",
        ),
        (
            np.zeros((4, 3)),
            np.zeros(4, int),
            {"label_smoothing": "0.1"},
            TypeError,
            r"label_smoothing must be a real number",
        ),
        (
            np.zeros((4, 3)),
            np.zeros(4, int),
            {"ignore_index": 1.5},
            TypeError,
            r"ignore_index must be an integer, got float",
        ),
        (
            np.zeros((4, 3)),
            np.zeros(4, int),
            {"ignore_index": True},
            TypeError,
            r"ignore_index must be an integer, got bool",
        ),
        (  # past the kernels' int64 (Numba's bare OverflowError before)
            np.zeros((4, 3)),
            np.zeros(4, int),
            {"ignore_index": 2**63},
            ValueError,
            r"ignore_index must fit in int64, got 9223372036854775808",
        ),
        (  # PyTorch's rule: probabilities have no class index to ignore
            np.zeros((4, 3)),
            np.full((4, 3), 1 / 3),
            {"ignore_index": 0},
            ValueError,
            r"ignore_index must be negative with probability targets .*got 0",
        ),
    ],
)
def test_bad_arguments(impl, logits, target, kwargs, error, pattern):
    for op in ("cross_entropy", "cross_entropy_with_grad"):
        with pytest.raises(error, match=pattern):
            impl(op, logits, target, **kwargs)


@pytest.mark.parametrize("impl", ALL)
def test_bad_out_and_inplace(impl, z, y):
    with pytest.raises(ValueError, match=r"out must have shape \(20, 10\), got \(20, 9\)"):
        impl("cross_entropy_with_grad", z, y, out=np.empty((20, 9), np.float32))
    with pytest.raises(TypeError, match=r"out must have dtype float32, got float64"):
        impl("cross_entropy_with_grad", z, y, out=np.empty((20, 10)))
    with pytest.raises(TypeError, match=r"out must be a NumPy array, got list"):
        impl("cross_entropy_with_grad", z, y, out=[0.0] * 200)
    frozen = np.empty_like(z)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match=r"out is read-only"):
        impl("cross_entropy_with_grad", z, y, out=frozen)
    with pytest.raises(ValueError, match=r"either out= or inplace=True"):
        impl("cross_entropy_with_grad", z, y, out=np.empty_like(z), inplace=True)
    z_ro = z.copy()
    z_ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"logits is read-only"):
        impl("cross_entropy_with_grad", z_ro, y, inplace=True)
    before = z.copy()
    with pytest.raises(TypeError, match=r"inplace must be True or False, got 'no'"):
        impl("cross_entropy_with_grad", z, y, inplace="no")  # a truthy string
    np.testing.assert_array_equal(z, before)


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_bad_softmax_arguments(impl, op):
    with pytest.raises(ValueError, match=r"axis 2 is out of bounds for x with 2 dimension"):
        impl(op, np.zeros((2, 3)), axis=2)
    with pytest.raises(TypeError, match=r"axis must be an integer, got float"):
        impl(op, np.zeros((2, 3)), axis=1.0)
    with pytest.raises(TypeError, match=r"axis must be an integer, got bool"):
        impl(op, np.zeros((2, 3)), axis=True)  # NumPy refuses it too
    with pytest.raises(ValueError, match=r"x must have at least one dimension"):
        impl(op, np.float64(1.0))
    with pytest.raises(TypeError, match=r"x must be a floating-point array"):
        impl(op, np.zeros((2, 3), np.int32))
    if op != "logsumexp":
        with pytest.raises(ValueError, match=r"out must have shape \(2, 3\)"):
            impl(op, np.zeros((2, 3)), out=np.empty((3, 2)))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_bad_backward_arguments(backend):
    with pytest.raises(
        ValueError, match=r"grad_out must have the shape of probs \(2, 3\), got \(2, 4\)"
    ):
        fs.softmax_backward(np.zeros((2, 3)), np.zeros((2, 4)), backend=backend)
    with pytest.raises(TypeError, match=r"log_probs must be a floating-point"):
        fs.log_softmax_backward(np.zeros((2, 3), int), np.zeros((2, 3)), backend=backend)


def test_unknown_backend_name(z, y):
    with pytest.raises(
        ValueError, match=r"backend must be one of 'auto', 'numpy', 'numba', 'cupy', got 'jax'"
    ):
        fs.cross_entropy(z, y, backend="jax")
    with pytest.raises(ValueError, match=r"backend must be one of"):
        with fs.use_backend("torch"):
            pass


def test_cupy_backend_on_numpy_arrays_is_refused(z, y):
    with pytest.raises((TypeError, fs.BackendUnavailableError), match=r"cupy"):
        fs.cross_entropy(z, y, backend="cupy")
