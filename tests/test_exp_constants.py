"""The exp polynomials in fastsoftmax/_numba/_math.py are the ones tools/exp_minimax.py
derives (a Remez fit in mpmath): rerunning the derivation gives the same constants."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

mpmath = pytest.importorskip("mpmath")
pytestmark = pytest.mark.full  # ~15 s of mpmath

from fastsoftmax._numba import _math  # noqa: E402

TOOL = Path(__file__).resolve().parents[1] / "tools" / "exp_minimax.py"


@pytest.fixture(scope="module")
def remez():
    spec = importlib.util.spec_from_file_location("exp_minimax", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mpmath.mp.dps = 50
    return module.remez


@pytest.mark.parametrize(
    ("prefix", "degree", "dtype"), [("_F32_C", 6, np.float32), ("_F64_C", 11, np.float64)]
)
def test_exp_polynomial_constants_are_the_derived_ones(remez, prefix, degree, dtype):
    coef, err = remez(degree)
    assert float(coef[0]) == 1.0  # exp(0) = 1 exactly
    for k in range(1, degree + 1):
        want = dtype(float(coef[k]))
        got = getattr(_math, f"{prefix}{k}")
        assert dtype(got) == want, (k, got, want)
    assert float(err) < (4e-9 if dtype is np.float32 else 2e-17)
