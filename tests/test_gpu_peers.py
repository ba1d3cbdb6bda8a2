"""The GPU rows of the implementations table (fastsoftmax's own CUDA kernels, PyTorch on
CUDA, the reference's math in CuPy) against the NumPy reference.  They skip, with the
reason, where there is no GPU."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import backend_params

from fastsoftmax.implementations import get

GPU_PEERS = backend_params(kinds=("gpu-backend", "gpu-peer"))


@pytest.mark.parametrize("impl", GPU_PEERS)
@pytest.mark.parametrize("shape", [(1, 2), (3, 423), (257, 1000), (2, 128256)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_peer_matches_reference(impl, shape, dtype):
    rng = np.random.default_rng(3)
    z = (rng.standard_normal(shape) * 3).astype(dtype)
    y = rng.integers(0, shape[1], shape[0])
    ref = get("numpy")
    tol = {np.float32: 2e-5, np.float64: 1e-11}[dtype]
    for op, args in (("softmax", (z,)), ("log_softmax", (z,)), ("cross_entropy", (z, y))):
        np.testing.assert_allclose(impl(op, *args), ref(op, *args), rtol=tol, atol=tol)
    loss, grad = impl("cross_entropy_with_grad", z, y)
    ref_loss, ref_grad = ref("cross_entropy_with_grad", z, y)
    # atol as for the forward above: the peers form lse - z_y, whose rounding is relative
    # to lse, not to a tiny loss (a (1, 2) row with loss 1e-6 is off by 5% in float32)
    np.testing.assert_allclose(loss, ref_loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad, ref_grad, rtol=tol, atol=tol / shape[0])


def test_gpu_rows_say_why_they_cannot_run():
    for name in ("cupy", "torch-cuda", "cupy-reference"):
        impl = get(name)
        reason = impl.unavailable()
        assert impl.device == "gpu"
        assert reason is None or any(w in reason for w in ("CuPy", "PyTorch", "GPU"))
