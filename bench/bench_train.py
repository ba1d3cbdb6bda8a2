"""Softmax-regression training: one SGD step, one MNIST-sized epoch, ``fit``, and time
to accuracy on real MNIST against scikit-learn.

Napkin math per epoch (n = 60000, d = 784, C = 10): the fused step reads X once,
n d 4 B = 188 MB as float32 (4 ms at 45 GB/s) or 47 MB as uint8 pixels; the two
matmuls are 2 x 2 n d C = 1.88 GFLOP, 11 ms at this machine's float32 FMA peak
(2 cores x 2.6 GHz x 32 flop/cycle = 166 GFLOP/s).  So an epoch cannot take less than
about 11 ms here: 5.3 M samples/s.

Peers: the NumPy backend (the readable reference of the same step), the usual PyTorch
CPU loop (nn.Linear + F.cross_entropy + torch.optim.SGD, 2 threads) and, for time to
accuracy, scikit-learn's LogisticRegression (lbfgs).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import record

from fastsoftmax import SoftmaxRegression, bench_cases
from fastsoftmax.train import TrainState, train_epochs

N, D, C = bench_cases.TRAIN_N, bench_cases.TRAIN_D, bench_cases.TRAIN_C
BATCH = bench_cases.TRAIN_BATCH
EPOCHS = 3
BACKENDS = [
    pytest.param("numpy", "float32", id="numpy"),
    pytest.param("numba", "float32", id="numba"),
    pytest.param("numba", "uint8", id="numba-uint8"),
    pytest.param("torch", "float32", id="torch"),
]


@pytest.fixture(scope="module")
def mnist_shaped():
    return bench_cases.mnist_shaped(N, D, C)


def _extra(benchmark, flop):
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["GFLOP/s"] = flop / stats.median / 1e9


def _inputs(mnist_shaped, impl, xtype):
    """(x float32, y, the X this case trains on, the result's name)."""
    pixels, x, y = mnist_shaped
    data = pixels if xtype == "uint8" else x
    return x, y, data, impl if xtype == "float32" else f"{impl}-{xtype}"


def _needs(impl):
    if impl == "torch":
        pytest.importorskip("torch")
    elif impl == "numba":
        pytest.importorskip("numba")


@pytest.mark.parametrize(("impl", "xtype"), BACKENDS)
def test_sgd_step(benchmark, impl, xtype, mnist_shaped, copy_bandwidth):
    """One SGD step on a shuffled batch of 128 rows (the unit the epoch repeats)."""
    _needs(impl)
    x, y, data, name = _inputs(mnist_shaped, impl, xtype)
    benchmark.group = f"train: one SGD step, batch {BATCH}, d={D}, C={C}"
    order = np.random.default_rng(0).permutation(N)
    if impl == "torch":
        import torch
        import torch.nn.functional as F

        model = torch.nn.Linear(D, C)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        idx = torch.from_numpy(order[:BATCH])

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()

    else:
        from fastsoftmax.reference import StepData, StepParams, StepPlan
        from fastsoftmax.train.loop import step_function, x_scale_for

        st = TrainState.zeros(C, D, np.float32, np.random.default_rng(0))
        losses = np.zeros(1)
        run = step_function(impl)
        inputs = StepData(data, y, x_scale_for(data))
        params, plan = StepParams(st.W, st.b, st.vW, st.vb), StepPlan(order, BATCH, 0.1)

        def step():
            run(inputs, params, plan, 0, 1, losses)

    benchmark.pedantic(step, rounds=200, warmup_rounds=3)
    nbytes = BATCH * D * data.itemsize
    record(benchmark.group, name, benchmark, nbytes, copy_bandwidth, rows=BATCH)
    _extra(benchmark, bench_cases.train_flop(BATCH, D, C))


@pytest.mark.parametrize(("impl", "xtype"), BACKENDS)
def test_mnist_epoch(benchmark, impl, xtype, mnist_shaped, copy_bandwidth):
    """One epoch over 60000 MNIST-shaped rows, batch 128, from zero weights."""
    _needs(impl)
    x, y, data, name = _inputs(mnist_shaped, impl, xtype)
    benchmark.group = f"train: one epoch, {N}x{D}, batch {BATCH}"
    if impl == "torch":

        def epoch():
            bench_cases.torch_sgd_epochs(x, y, 1, BATCH, 0.1)

    else:

        def epoch():
            st = TrainState.zeros(C, D, np.float32, np.random.default_rng(0))
            train_epochs(
                st, data, y, until_epoch=1, batch_size=BATCH, learning_rate=0.1,
                momentum=0.0, weight_decay=0.0, shuffle=True, backend=impl,
            )  # fmt: skip

    rounds = 3 if impl in ("numpy", "torch") else 7
    benchmark.pedantic(epoch, rounds=rounds, warmup_rounds=1)
    record(benchmark.group, name, benchmark, data.nbytes, copy_bandwidth, rows=N)
    _extra(benchmark, bench_cases.train_flop(N, D, C))


@pytest.mark.parametrize("xtype", ["uint8", "float32"])
def test_mnist_epoch_gpu(benchmark, xtype, mnist_shaped):
    """One epoch over 60000 MNIST-shaped rows on a CUDA device with our CuPy step
    (_cupy/step.py), batch 64 (the trainer's default): data and parameters stay on the
    device, the epoch ends with its one synchronisation.  Skips without a GPU."""
    from fastsoftmax.implementations import get

    reason = get("cupy").unavailable()
    if reason is not None:
        pytest.skip(reason)
    import cupy as cp

    from fastsoftmax._backends import load
    from fastsoftmax.reference import StepData, StepParams, StepPlan
    from fastsoftmax.train.loop import x_scale_for

    _, y, data, name = _inputs(mnist_shaped, "cupy", xtype)
    batch = 64
    steps = -(-N // batch)
    dev = StepData(cp.asarray(data), cp.asarray(y), x_scale_for(data))
    W, b = cp.zeros((C, D), cp.float32), cp.zeros(C, cp.float32)
    params = StepParams(W, b, cp.zeros_like(W), cp.zeros_like(b))
    plan = StepPlan(np.random.default_rng(0).permutation(N), batch, 0.1)
    losses = np.zeros(steps)
    step = load("cupy").sgd_steps
    benchmark.group = f"train: one epoch on the GPU, {N}x{D}, batch {batch}"
    benchmark.pedantic(lambda: step(dev, params, plan, 0, steps, losses), rounds=5, warmup_rounds=1)
    assert np.isfinite(losses).all()
    record(benchmark.group, name, benchmark, data.nbytes, None, rows=N)
    _extra(benchmark, bench_cases.train_flop(N, D, C))


@pytest.mark.parametrize(("impl", "xtype"), BACKENDS)
def test_fit(benchmark, impl, xtype, mnist_shaped, copy_bandwidth):
    """``fit`` (validation included) for EPOCHS epochs: what a user's call costs."""
    _needs(impl)
    _, y, data, name = _inputs(mnist_shaped, impl, xtype)
    benchmark.group = f"train: fit {N}x{D}, batch {BATCH}, {EPOCHS} epochs"
    if impl == "torch":
        run = (bench_cases.torch_sgd_epochs, (data, y, EPOCHS, BATCH, 0.1))
    else:

        def fit(backend, x, y):
            return SoftmaxRegression(
                backend=backend, batch_size=BATCH, max_epochs=EPOCHS, random_state=0
            ).fit(x, y)

        run = (fit, (impl, data, y))
    rounds = 3 if impl in ("numpy", "torch") else 5
    result = benchmark.pedantic(run[0], args=run[1], rounds=rounds, warmup_rounds=1)
    record(benchmark.group, name, benchmark, EPOCHS * data.nbytes, copy_bandwidth, rows=EPOCHS * N)
    _extra(benchmark, bench_cases.train_flop(N, D, C, EPOCHS))
    if impl != "torch":  # the benchmark also checks that it learned something
        assert result.score(data[:5000], y[:5000]) > 0.5


@pytest.mark.parametrize("impl", ["fastsoftmax", "sklearn"])
def test_time_to_accuracy_real_mnist(benchmark, impl, mnist_test_split):
    """Default settings on the real MNIST test set's 8000/2000 split: seconds to fit and
    the held-out accuracy reached (extra_info["accuracy"])."""
    x_train, y_train, x_test, y_test = mnist_test_split
    benchmark.group = "train: time to accuracy, real MNIST 8000/2000"
    if impl == "sklearn":
        linear_model = pytest.importorskip("sklearn.linear_model")
        xf = x_train.astype(np.float32) / 255

        def fit():
            return linear_model.LogisticRegression(max_iter=200).fit(xf, y_train)

        score = lambda m: m.score(x_test.astype(np.float32) / 255, y_test)  # noqa: E731
    else:

        def fit():
            return SoftmaxRegression(random_state=0).fit(x_train, y_train)

        score = lambda m: m.score(x_test, y_test)  # noqa: E731
    model = benchmark.pedantic(fit, rounds=3, warmup_rounds=1)
    accuracy = score(model)
    record(benchmark.group, impl, benchmark, None, None, rows=len(x_train))
    benchmark.extra_info["accuracy"] = accuracy
    assert accuracy > 0.9


@pytest.fixture(scope="module")
def mnist_test_split():
    from pathlib import Path

    from fastsoftmax import data

    mnist = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
    if not (mnist / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"the real MNIST test set is not in {mnist}")
    x, y = data.load("mnist", "test", data_dir=mnist, download=False)
    return x[:8000], y[:8000], x[8000:], y[8000:]
