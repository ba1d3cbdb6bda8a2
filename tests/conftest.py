"""Shared test helpers: the tolerance table, input generators, the MNIST location."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fastsoftmax.implementations import IMPLEMENTATIONS

# The float64 half of the big parameter matrices compiles its own set of kernels; the
# default run leaves it to `pytest --full` (which CI runs too).
FULL = pytest.mark.full


def pytest_addoption(parser):
    parser.addoption(
        "--full",
        action="store_true",
        help="also run the tests marked `full` (the whole parameter matrix; CI runs them)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "full: part of the whole matrix, run with --full")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--full"):
        return
    kept = [item for item in items if "full" not in item.keywords]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if "full" in i.keywords])
        items[:] = kept


# One tolerance table per dtype, for comparisons with the float64 reference.  atol is
# relative to the gradient's scale (1/N for a mean), so it means "units of the largest
# possible entry".  float32: the kernels' exp is within 1.2 ulp and sums are float64.
TOLERANCES = {
    np.dtype(np.float16): {"rtol": 2e-3, "atol": 2e-3},
    np.dtype(np.float32): {"rtol": 2e-5, "atol": 2e-6},
    np.dtype(np.float64): {"rtol": 1e-11, "atol": 1e-13},
}

MNIST_DIR = Path(
    os.environ.get(
        "FASTSOFTMAX_TEST_MNIST", Path(__file__).parents[2] / "shared" / "data" / "mnist"
    )
)


def assert_close(actual, expected, dtype, scale=1.0, what=""):
    tol = TOLERANCES[np.dtype(dtype)]
    np.testing.assert_allclose(
        np.asarray(actual, np.float64),
        np.asarray(expected, np.float64),
        rtol=tol["rtol"],
        atol=tol["atol"] * scale,
        err_msg=what,
    )


def random_logits(rng: np.random.Generator, shape, dtype, spread=4.0) -> np.ndarray:
    """Logits with a realistic spread, a few confident rows and ties."""
    z = rng.standard_normal(shape) * spread
    if z.ndim == 2 and z.shape[0] > 2 and z.shape[1] > 1:
        z[0, 0] += 30.0  # one confident row
        z[1] = z[1, 0]  # one row of equal values
    return z.astype(dtype)


def backend_params(kinds=("backend",)):
    """pytest params over the implementations table, skipping unavailable rows."""
    params = []
    for impl in IMPLEMENTATIONS:
        if impl.kind not in kinds:
            continue
        reason = impl.unavailable()
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(impl, id=impl.name, marks=marks))
    return params


@pytest.fixture
def rng():
    return np.random.default_rng(20261123)


@pytest.fixture(scope="session")
def mnist_test():
    """The real MNIST test set from ../shared/data/mnist: (X uint8 (10000, 784), y int64)."""
    from fastsoftmax import data

    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"the MNIST test set is not at {MNIST_DIR}")
    return data.load("mnist", "test", data_dir=MNIST_DIR, download=False)


@pytest.fixture(autouse=True, scope="session")
def _check_kernel_arguments():
    """Every CUDA launch in the tests checks its host arguments against the kernel's
    signature (fastsoftmax._cupy._loader.SIGNATURES); CuPy-free, so harmless here."""
    from fastsoftmax._cupy import _loader

    _loader.CHECK_ARGS = True
    yield
    _loader.CHECK_ARGS = False
