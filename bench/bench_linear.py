"""Linear cross-entropy, forward + backward (loss, dhidden, dweight): the chunked
``linear_cross_entropy_with_grad`` against the unfused composition and PyTorch.

Napkin math at the Large-vocabularies shape N=8192, H=4096, V=128256 float32: three
GEMMs of 2 N H V = 8.6 TFLOP each, 25.8 TFLOP, so ~150 s at this machine's ~170 GFLOP/s
(2 cores, sgemm); the unfused logits are N V 4 B = 4.2 GB, the weight and dweight
2.1 GB each, hidden and dhidden 0.13 GB.  Time is all GEMM: what chunking can cost is
GEMM efficiency at chunk-sized operands and the dweight accumulation (V H 4 B read and
written once per chunk after the first: 16 chunks x 4.2 GB here); what it saves is the
4.2 GB of logits (and their first-touch page faults).

Implementations:
* ``fused``: fastsoftmax.linear_cross_entropy_with_grad (default 256 MiB chunks: 523
  rows at V=128256), Numba cross-entropy, NumPy BLAS GEMMs;
* ``unfused``: logits = hidden @ weight.T, cross_entropy_with_grad in place (Numba),
  dhidden = G @ weight, dweight = G.T @ hidden: the composition the fused op replaces;
* ``torch-chunked``: PyTorch 2.13's F.linear_cross_entropy with
  LinearCrossEntropyOptions() (its chunked path, default chunking), then backward;
* ``torch-chunked-512``: the same with batch_chunk_size=512 (about fastsoftmax's chunk;
  PyTorch's default chunking for float32 on the CPU is ~5x slower here);
* ``torch-unfused``: F.linear + F.cross_entropy, then backward.

Peak memory is the resident-set high-water mark above the start of a call, less the
outputs (dhidden, dweight, the loss): the intermediates each implementation needs.
The fused result is checked against every other implementation's (same inputs).

The full shape takes ~10 minutes and ~12 GB: it runs with FASTSOFTMAX_BENCH_FULL=1;
otherwise (and in CI) 2048 x 512 x 128256 (four default chunks, 1 GB of unfused
logits) stands in for it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import lm_head_info, record

import fastsoftmax as fs
from fastsoftmax import machine

FULL = os.environ.get("FASTSOFTMAX_BENCH_FULL") == "1"
SMALL, LARGE = (2048, 512, 128256), (8192, 4096, 128256)
IMPLS = ("fused", "unfused", "torch-chunked", "torch-chunked-512", "torch-unfused")
# at the full shape PyTorch's default chunking (6x slower) and its unfused path (~10 GB
# of intermediates) would add half an hour; its tuned chunking stands for it there
CASES = [(SMALL, i) for i in IMPLS] + (
    [(LARGE, i) for i in ("fused", "unfused", "torch-chunked-512")] if FULL else []
)
_fused_result: dict[tuple, tuple] = {}


@pytest.fixture(scope="module")
def inputs():
    cache: dict[tuple, tuple] = {}

    def get(shape):
        if shape not in cache:
            cache.clear()  # one shape's arrays at a time (2.3 GB at the full shape)
            n, h, v = shape
            rng = np.random.default_rng(0)
            hidden = rng.standard_normal((n, h), dtype=np.float32)
            weight = rng.standard_normal((v, h), dtype=np.float32)
            weight *= np.float32(1 / np.sqrt(h))
            target = rng.integers(0, v, n)
            cache[shape] = (hidden, weight, target)
        return cache[shape]

    return get


def _numpy_impl(name, hidden, weight, target):
    if name == "fused":
        return lambda: fs.linear_cross_entropy_with_grad(hidden, weight, target)

    def unfused():
        z = hidden @ weight.T
        loss, g = fs.cross_entropy_with_grad(z, target, inplace=True)
        return loss, g @ weight, g.T @ hidden, None

    return unfused


def _torch_impl(name, hidden, weight, target):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    h = torch.from_numpy(hidden).requires_grad_()
    w = torch.from_numpy(weight).requires_grad_()
    y = torch.from_numpy(target)

    def run():
        if name.startswith("torch-chunked"):
            size = 512 if name.endswith("-512") else None
            options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=size)
            loss = F.linear_cross_entropy(h, w, y, options=options)
        else:
            loss = F.cross_entropy(F.linear(h, w), y)
        loss.backward()
        return loss.detach().numpy(), h.grad.numpy(), w.grad.numpy(), None

    def free():
        h.grad = w.grad = None

    run.free = free  # the previous round's gradients go before the next is measured
    return run


@pytest.mark.parametrize(
    ("shape", "impl"), CASES, ids=[f"{'x'.join(map(str, s))}-{i}" for s, i in CASES]
)
def test_linear_xent_fused(benchmark, shape, impl, inputs, copy_bandwidth):
    n, h, v = shape
    hidden, weight, target = inputs(shape)
    make = _torch_impl if impl.startswith("torch") else _numpy_impl
    fn = make(impl, hidden, weight, target)
    benchmark.group = f"linear cross-entropy fwd+bwd, float32, N x H x V = {n} x {h} x {v}"
    peaks: list[int] = []
    result: list = []
    big = n * h * v > 10**12

    def measured():
        result.clear()  # the previous round's outputs are freed before the next round
        getattr(fn, "free", lambda: None)()
        with machine.peak_memory() as mem:
            result.append(fn())
        peaks.append(mem["rss"] if mem["rss"] is not None else mem["traced"])

    if not big and not benchmark.disabled:
        fn()  # warm-up outside the measurement: first calls allocate BLAS buffers, JIT
        getattr(fn, "free", lambda: None)()
    benchmark.pedantic(measured, rounds=1 if big else 3)
    loss, dh, dw, _ = result[0]
    extra = max(peaks) - (dh.nbytes + dw.nbytes)
    measure = "RSS high-water mark above the call's start, less outputs"
    info = lm_head_info(benchmark, n, h, v, extra, measure)
    record(benchmark.group, impl, benchmark, None, copy_bandwidth, extra=info)

    if impl == "fused":
        _fused_result.clear()
        _fused_result[shape] = (np.asarray(loss), dh, dw)
    elif shape in _fused_result:
        ref = _fused_result[shape]
        for name, a, b in zip(("loss", "dhidden", "dweight"), (loss, dh, dw), ref, strict=True):
            scale = float(np.max(np.abs(b)))
            np.testing.assert_allclose(
                np.asarray(a), b, rtol=1e-3, atol=1e-4 * scale, err_msg=f"{impl} {name}"
            )
