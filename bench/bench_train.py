"""Softmax-regression training throughput: ``fit`` on 60000 MNIST-shaped rows, batch 128.

Napkin math per epoch (n = 60000, d = 784, C = 10): the fused step reads X once,
n d 4 B = 188 MB as float32 (4 ms at 45 GB/s) or 47 MB as uint8 pixels; the two
matmuls are 2 x 2 n d C = 1.88 GFLOP, 11 ms at this machine's float32 FMA peak
(2 cores x 2.6 GHz x 32 flop/cycle = 166 GFLOP/s).  So an epoch cannot take less than
about 11 ms here: 5.3 M samples/s.

The peers: the NumPy backend (the readable reference of the same step) and the usual
PyTorch CPU loop (nn.Linear + F.cross_entropy + torch.optim.SGD, 2 threads).  Every
implementation runs EPOCHS epochs from zero weights; samples/s = EPOCHS n / time.
"""

from __future__ import annotations

import pytest
from conftest import record

from fastsoftmax import SoftmaxRegression, benchmarks

N, D, C = 60000, 784, 10
EPOCHS = 3
BATCH = 128
FLOP_PER_EPOCH = benchmarks.train_flop(N, D, C)


@pytest.fixture(scope="module")
def mnist_shaped():
    return benchmarks.mnist_shaped(N, D, C)


def _fit(backend, x, y):
    return SoftmaxRegression(
        backend=backend, batch_size=BATCH, max_epochs=EPOCHS, random_state=0
    ).fit(x, y)


IMPLS = [
    pytest.param("numpy", "float32", id="numpy"),
    pytest.param("numba", "float32", id="numba"),
    pytest.param("numba", "uint8", id="numba-uint8"),
    pytest.param("torch", "float32", id="torch"),
]


@pytest.mark.parametrize(("impl", "xtype"), IMPLS)
def test_fit_mnist_shaped(benchmark, impl, xtype, mnist_shaped, copy_bandwidth):
    pixels, x, y = mnist_shaped
    data = pixels if xtype == "uint8" else x
    benchmark.group = f"fit softmax regression {N}x{D}, batch {BATCH}, {EPOCHS} epochs"
    if impl == "torch":
        pytest.importorskip("torch")
        run = (benchmarks.torch_sgd_epochs, (data, y, EPOCHS, BATCH, 0.1))
    else:
        if impl == "numba":
            pytest.importorskip("numba")
        run = (_fit, (impl, data, y))
    rounds = 3 if impl in ("numpy", "torch") else 5
    result = benchmark.pedantic(run[0], args=run[1], rounds=rounds, warmup_rounds=1)
    name = impl if xtype == "float32" else f"{impl}-{xtype}"
    record(benchmark.group, name, benchmark, EPOCHS * data.nbytes, copy_bandwidth, rows=EPOCHS * N)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["GFLOP/s"] = EPOCHS * FLOP_PER_EPOCH / stats.median / 1e9
    if impl != "torch":  # the benchmark also checks that it learned something
        assert result.score(data[:5000], y[:5000]) > 0.5
