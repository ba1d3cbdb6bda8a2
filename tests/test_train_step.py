"""The fused SGD step of each backend (``fastsoftmax.train``) against oracles written
here from the math in float64, against finite differences, and against each other.

Spec of one step on the minibatch B = order[s*batch : (s+1)*batch] (the last one may be
smaller)::

    z = a X_B W^T + b,  G = (softmax(z) - onehot(y_B)) / |B|
    objective = mean_B -log softmax(z)_y + wd/2 ||W||^2     (recorded before the update)
    dW = a G^T X_B + wd W,  db = sum_rows G
    v = mu v + g;  W -= lr v                               (PyTorch-style momentum)
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FULL, MNIST_DIR

from fastsoftmax.reference import StepData, StepParams, StepPlan
from fastsoftmax.train import TrainState, train_epochs
from fastsoftmax.train.loop import x_scale_for

BACKENDS = ["numpy", "numba"]
DTYPES = [np.float32, np.float64]
# float64 with --full (see conftest.FULL)
DTYPE_PARAMS = [np.float32, pytest.param(np.float64, marks=FULL)]

# Comparisons of a few steps with the float64 oracle: (rtol, atol in units of the
# compared array's largest entry).
STEP_TOL = {
    np.dtype(np.float32): (2e-5, 2e-6),
    np.dtype(np.float64): (1e-11, 1e-13),
}


# ----------------------------------------------------------------------------- helpers
def _kernel(backend):
    if backend == "numba":
        pytest.importorskip("numba")
        from fastsoftmax._numba import step

        return step.sgd_steps
    from fastsoftmax import reference

    return reference.sgd_steps


def run_steps(
    backend, X, y, order, s0, s1, batch, W, b, vW, vb, lr, mu, wd, a, losses, nthreads=2, **kw
):  # fmt: skip
    """Call one backend's kernel (the numba one takes the part and thread counts last:
    here as many parts as threads, so each count splits the batches its own way).
    kw: sw= row weights, avg= (Wa, ba, coef)."""
    fn = _kernel(backend)
    data = StepData(X, y, a, kw.get("sw"))
    params = StepParams(W, b, vW, vb, kw.get("avg"))
    plan = StepPlan(order, batch, lr, mu, wd)
    if backend == "numba":
        assert fn(data, params, plan, s0, s1, losses, nthreads, nthreads) == 0
    else:
        fn(data, params, plan, s0, s1, losses)


def oracle_objective(Xb, yb, W, b):
    """Mean cross-entropy of the rows Xb (already scaled, float64), explicit softmax."""
    z = Xb @ W.T + b
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(yb)), yb].mean()


def oracle_steps(X, y, order, s0, s1, batch, W, b, vW, vb, lr, mu, wd, a, sw=None):
    """The spec in float64, written independently of the package.  Returns the new
    (W, b, vW, vb), the per-step objectives and the iterates (W, b) after each step.
    lr: a number or one per step (lr[s]); sw: None or per-row weights s_i (row i's
    loss and gradient times s_i)."""
    X = np.asarray(X, np.float64) * a
    W, b, vW, vb = (np.array(t, np.float64) for t in (W, b, vW, vb))
    n = len(order)
    C = W.shape[0]
    losses, iterates = [], []
    for s in range(s0, s1):
        idx = order[s * batch : min((s + 1) * batch, n)]
        Xb, yb = X[idx], y[idx]
        B = len(idx)
        rw = np.ones(B) if sw is None else np.asarray(sw, np.float64)[idx]
        z = Xb @ W.T + b
        e = np.exp(z - z.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        onehot = np.eye(C)[yb]
        row_loss = -np.log(p[np.arange(B), yb])
        losses.append((rw * row_loss).sum() / B + 0.5 * wd * np.sum(W * W))
        G = rw[:, None] * (p - onehot) / B
        gW = G.T @ Xb + wd * W
        gb = G.sum(axis=0)
        vW = mu * vW + gW
        vb = mu * vb + gb
        rate = lr[s] if np.ndim(lr) else lr
        W = W - rate * vW
        b = b - rate * vb
        iterates.append((W, b))
    return W, b, vW, vb, np.array(losses), iterates


def assert_close_to(actual, expected, dtype, what):
    rtol, atol = STEP_TOL[np.dtype(dtype)]
    expected = np.asarray(expected, np.float64)
    scale = max(float(np.abs(expected).max()), 1e-300)
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol * scale, err_msg=what
    )


def make_problem(rng, n, d, C, dtype, x_kind):
    """X (uint8 pixels or floats in the parameter dtype), y covering the classes, and
    non-zero starting parameters and momentum buffers (so every term of the update
    matters from the first step)."""
    if x_kind == "uint8":
        X = rng.integers(0, 256, (n, d)).astype(np.uint8)
        X[rng.random((n, d)) < 0.5] = 0  # sparse-ish, like pixels
    else:
        X = rng.standard_normal((n, d)).astype(dtype)
    y = rng.integers(0, C, n).astype(np.int64)
    y[: min(n, C)] = np.arange(min(n, C))
    scale = 1.0 / np.sqrt(d)
    W = (rng.standard_normal((C, d)) * scale).astype(dtype)
    b = (rng.standard_normal(C) * 0.1).astype(dtype)
    vW = (rng.standard_normal((C, d)) * scale * 0.1).astype(dtype)
    vb = (rng.standard_normal(C) * 0.01).astype(dtype)
    return X, y, W, b, vW, vb


@pytest.fixture(scope="module")
def mnist():
    from fastsoftmax import data

    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"the MNIST test set is not at {MNIST_DIR}")
    return data.load("mnist", "test", data_dir=MNIST_DIR, download=False)


# --------------------------------------------------------------- steps vs the oracle
# (n, batch, d, lr, mu, wd): last batch smaller, batch of 1, batch larger than n, odd
# d, batches longer than the numba kernel's 64-row block and split across threads.
CASES = [
    pytest.param(37, 8, 13, 0.5, 0.9, 0.05, id="n37-b8-d13-mom-wd"),
    pytest.param(5, 1, 13, 0.3, 0.0, 0.05, id="n5-b1-d13-wd"),
    pytest.param(7, 16, 13, 0.5, 0.9, 0.0, id="n7-b16-d13-mom"),
    pytest.param(100, 50, 784, 0.5, 0.0, 0.0, id="n100-b50-d784-plain"),
    pytest.param(150, 64, 784, 0.5, 0.5, 0.01, id="n150-b64-d784-mom-wd"),
    pytest.param(203, 101, 31, 1.0, 0.9, 0.1, id="n203-b101-d31-mom-wd"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPE_PARAMS, ids=["f32", "f64"])
@pytest.mark.parametrize("x_kind", ["uint8", "float"])
@pytest.mark.parametrize("C", [2, 10, 33])
@pytest.mark.parametrize(("n", "batch", "d", "lr", "mu", "wd"), CASES)
def test_epoch_of_steps_matches_float64_oracle(backend, dtype, x_kind, C, n, batch, d, lr, mu, wd):
    rng = np.random.default_rng(hash((n, batch, d, C)) % 2**32)
    X, y, W, b, vW, vb = make_problem(rng, n, d, C, dtype, x_kind)
    a = 1.0 / 255.0 if x_kind == "uint8" else 1.0
    assert x_scale_for(X) == a
    order = rng.permutation(n)
    steps = -(-n // batch)
    expected = oracle_steps(X, y, order, 0, steps, batch, W, b, vW, vb, lr, mu, wd, a)

    losses = np.full(steps, np.nan)
    run_steps(backend, X, y, order, 0, steps, batch, W, b, vW, vb, lr, mu, wd, a, losses)

    # with mu = 0 the buffers play no part (plain SGD), so they are compared only with mu
    names = ("W", "b", "vW", "vb") if mu else ("W", "b")
    for name, got, want in zip(
        names, (W, b, vW, vb)[: len(names)], expected[: len(names)], strict=True
    ):
        assert got.dtype == np.dtype(dtype), name
        assert_close_to(got, want, dtype, f"{name} after {steps} steps")
    assert_close_to(losses, expected[4], dtype, "per-step objectives")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPE_PARAMS, ids=["f32", "f64"])
@pytest.mark.parametrize("C", [2, 10, 33])
@pytest.mark.parametrize("mu", [0.0, 0.9])
def test_rates_row_weights_and_averaging_match_the_oracle(backend, dtype, C, mu):
    """A rate per step, per-row weights (some 0, some large) and averaged SGD from step
    2 on: the weights, the objectives and the mean of the iterates (the oracle averages
    the iterates it kept; the kernels keep a running mean)."""
    rng = np.random.default_rng(C)
    n, batch, d = 203, 40, 31
    X, y, W, b, vW, vb = make_problem(rng, n, d, C, dtype, "uint8")
    a = 1.0 / 255.0
    order = rng.permutation(n)
    steps = -(-n // batch)
    lrs = np.linspace(0.8, 0.1, steps)
    sw = rng.random(n) * 3.0
    sw[::7] = 0.0
    start = 2
    expected = oracle_steps(X, y, order, 0, steps, batch, W, b, vW, vb, lrs, mu, 0.01, a, sw)
    Wa, ba = np.zeros_like(W), np.zeros_like(b)
    k = np.arange(steps) - start + 1.0
    coef = np.where(k >= 1, 1.0 / np.maximum(k, 1), 0.0)
    losses = np.zeros(steps)
    run_steps(
        backend, X, y, order, 0, steps, batch, W, b, vW, vb, lrs, mu, 0.01, a, losses,
        sw=sw, avg=(Wa, ba, coef),
    )  # fmt: skip
    assert_close_to(W, expected[0], dtype, "W")
    assert_close_to(b, expected[1], dtype, "b")
    assert_close_to(losses, expected[4], dtype, "per-step objectives")
    kept = expected[5][start:]
    assert_close_to(Wa, np.mean([w for w, _ in kept], axis=0), dtype, "mean of the W iterates")
    assert_close_to(ba, np.mean([v for _, v in kept], axis=0), dtype, "mean of the b iterates")


@pytest.mark.parametrize("nthreads", [1, 2, 3, 4])
@pytest.mark.parametrize("x_kind", ["uint8", "float"])
@pytest.mark.parametrize("C", [10, 33])
def test_numba_thread_counts_against_the_oracle(nthreads, x_kind, C):
    """Batches of 300 rows: one thread walks 300 rows (several 64-row blocks), four
    threads 75 each; the last batch (100 rows) is split differently."""
    rng = np.random.default_rng(21)
    n, batch, d = 700, 300, 20
    X, y, W, b, vW, vb = make_problem(rng, n, d, C, np.float32, x_kind)
    a = x_scale_for(X)
    order = rng.permutation(n)
    expected = oracle_steps(X, y, order, 0, 3, batch, W, b, vW, vb, 0.5, 0.9, 0.01, a)
    losses = np.zeros(3)
    run_steps("numba", X, y, order, 0, 3, batch, W, b, vW, vb, 0.5, 0.9, 0.01, a, losses, nthreads)
    for name, got, want in zip(("W", "b", "vW", "vb"), (W, b, vW, vb), expected[:4], strict=True):
        assert_close_to(got, want, np.float32, name)
    assert_close_to(losses, expected[4], np.float32, "losses")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPE_PARAMS, ids=["f32", "f64"])
def test_steps_in_the_middle_of_an_epoch(backend, dtype):
    """s0 > 0: the kernel runs steps s0..s1-1 of the order and writes only losses[s0:s1]."""
    rng = np.random.default_rng(7)
    n, d, C, batch = 45, 9, 4, 6
    X, y, W, b, vW, vb = make_problem(rng, n, d, C, dtype, "float")
    order = rng.permutation(n)
    expected = oracle_steps(X, y, order, 3, 6, batch, W, b, vW, vb, 0.2, 0.8, 0.02, 1.0)
    losses = np.full(8, -7.0)
    run_steps(backend, X, y, order, 3, 6, batch, W, b, vW, vb, 0.2, 0.8, 0.02, 1.0, losses)
    assert_close_to(W, expected[0], dtype, "W")
    assert_close_to(b, expected[1], dtype, "b")
    assert_close_to(losses[3:6], expected[4], dtype, "losses[3:6]")
    np.testing.assert_array_equal(losses[:3], -7.0)
    np.testing.assert_array_equal(losses[6:], -7.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_kind", ["uint8", "float"])
def test_split_calls_give_the_same_result(backend, x_kind):
    """Steps 0..k then k..S in two calls == 0..S in one (the loop splits epochs into calls)."""
    rng = np.random.default_rng(11)
    n, d, C, batch = 300, 40, 10, 32
    X, y, W, b, vW, vb = make_problem(rng, n, d, C, np.float32, x_kind)
    a = x_scale_for(X)
    order = rng.permutation(n)
    steps = -(-n // batch)
    one = [t.copy() for t in (W, b, vW, vb)]
    l1 = np.zeros(steps)
    run_steps(backend, X, y, order, 0, steps, batch, *one, 0.3, 0.9, 1e-3, a, l1)
    two = [t.copy() for t in (W, b, vW, vb)]
    l2 = np.zeros(steps)
    run_steps(backend, X, y, order, 0, 4, batch, *two, 0.3, 0.9, 1e-3, a, l2)
    run_steps(backend, X, y, order, 4, steps, batch, *two, 0.3, 0.9, 1e-3, a, l2)
    for p, q in zip(one, two, strict=True):
        np.testing.assert_array_equal(p, q)
    np.testing.assert_array_equal(l1, l2)


# ------------------------------------------------------------ finite-difference check
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_kind", ["uint8", "float"])
def test_applied_gradient_is_the_finite_difference_gradient(backend, x_kind):
    """With mu = 0 the step applies W -= lr g: g = (W_before - W_after) / lr must be the
    gradient of the recorded objective (central differences, float64)."""
    rng = np.random.default_rng(3)
    n, d, C, wd = 6, 5, 3, 0.3
    X, y, W0, b0, _, _ = make_problem(rng, n, d, C, np.float64, x_kind)
    a = x_scale_for(X)
    Xs = X.astype(np.float64) * a
    order = np.arange(n)

    def J(W, b):
        return oracle_objective(Xs, y, W, b) + 0.5 * wd * np.sum(W * W)

    h = 1e-6
    fdW = np.zeros_like(W0)
    for idx in np.ndindex(W0.shape):
        Wp, Wm = W0.copy(), W0.copy()
        Wp[idx] += h
        Wm[idx] -= h
        fdW[idx] = (J(Wp, b0) - J(Wm, b0)) / (2 * h)
    fdb = np.zeros_like(b0)
    for c in range(C):
        bp, bm = b0.copy(), b0.copy()
        bp[c] += h
        bm[c] -= h
        fdb[c] = (J(W0, bp) - J(W0, bm)) / (2 * h)

    lr = 0.5
    W, b = W0.copy(), b0.copy()
    vW, vb = np.zeros_like(W), np.zeros_like(b)
    losses = np.zeros(1)
    run_steps(backend, X, y, order, 0, 1, n, W, b, vW, vb, lr, 0.0, wd, a, losses)
    np.testing.assert_allclose((W0 - W) / lr, fdW, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose((b0 - b) / lr, fdb, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(losses[0], J(W0, b0), rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_momentum_accumulates_the_previous_update(backend):
    """Two steps with momentum from v = 0: the second update is lr (mu g1 + g2), where
    g2 is the gradient at the parameters after the first step (found by a plain step)."""
    rng = np.random.default_rng(5)
    n, d, C = 8, 6, 3
    X, y, W0, b0, _, _ = make_problem(rng, n, d, C, np.float64, "float")
    order = np.concatenate([np.arange(n), np.arange(n)])  # the same batch twice
    lr, mu, wd = 0.4, 0.7, 0.05

    W, b = W0.copy(), b0.copy()
    vW, vb = np.zeros_like(W), np.zeros_like(b)
    run_steps(backend, X, y, order, 0, 1, n, W, b, vW, vb, lr, mu, wd, 1.0, np.zeros(2))
    g1W, g1b = (W0 - W) / lr, (b0 - b) / lr
    np.testing.assert_allclose(vW, g1W, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(vb, g1b, rtol=1e-12, atol=1e-15)
    W1, b1 = W.copy(), b.copy()

    # the plain gradient at (W1, b1)
    Wp, bp = W1.copy(), b1.copy()
    run_steps(backend, X, y, order, 0, 1, n, Wp, bp, 0 * W1, 0 * b1, lr, 0.0, wd, 1.0, np.zeros(2))
    g2W, g2b = (W1 - Wp) / lr, (b1 - bp) / lr

    run_steps(backend, X, y, order, 1, 2, n, W, b, vW, vb, lr, mu, wd, 1.0, np.zeros(2))
    np.testing.assert_allclose((W1 - W) / lr, mu * g1W + g2W, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose((b1 - b) / lr, mu * g1b + g2b, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(vW, mu * g1W + g2W, rtol=1e-10, atol=1e-13)


# ------------------------------------------------------------------ backends together
def _mnist_run(backend, X, y, orders, batch, dtype, nthreads=2, lr=0.1, mu=0.9, wd=1e-4):
    """Epochs over the given row orders with one backend: (per-step losses, W, b)."""
    C, d = 10, X.shape[1]
    W, b = np.zeros((C, d), dtype), np.zeros(C, dtype)
    vW, vb = np.zeros_like(W), np.zeros_like(b)
    steps = -(-X.shape[0] // batch)
    all_losses = []
    for order in orders:
        losses = np.zeros(steps)
        run_steps(
            backend,
            X,
            y,
            order,
            0,
            steps,
            batch,
            W,
            b,
            vW,
            vb,
            lr,
            mu,
            wd,
            1 / 255,
            losses,
            nthreads,
        )
        all_losses.append(losses)
    return np.concatenate(all_losses), W, b


def test_numba_and_numpy_per_step_losses_agree_on_mnist(mnist):
    """A few hundred float32 steps on real MNIST rows (uint8, momentum, decay): the
    per-step objectives of the two backends agree within float32 accuracy and the final
    weights are close."""
    pytest.importorskip("numba")
    X, y = mnist
    X, y = X[:3000], y[:3000]
    rng = np.random.default_rng(0)
    orders = [rng.permutation(len(y)) for _ in range(3)]
    batch = 32  # 94 steps per epoch, 282 in all, the last batch of each epoch 24 rows
    l_np, W_np, b_np = _mnist_run("numpy", X, y, orders, batch, np.float32)
    l_nb, W_nb, b_nb = _mnist_run("numba", X, y, orders, batch, np.float32)
    assert len(l_np) == 282
    assert l_np[0] == pytest.approx(np.log(10), rel=1e-6)  # W = 0: uniform prediction
    assert l_np[-50:].mean() < 0.6 * l_np[:10].mean()  # it learns
    np.testing.assert_allclose(l_nb, l_np, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(W_nb, W_np, rtol=1e-3, atol=1e-4 * np.abs(W_np).max())
    np.testing.assert_allclose(b_nb, b_np, rtol=1e-3, atol=1e-4 * np.abs(b_np).max())

    # and both against the float64 oracle over the first epoch
    W0 = np.zeros((10, X.shape[1]))
    expected = oracle_steps(
        X, y, orders[0], 0, 94, batch, W0, W0[:, 0], W0, W0[:, 0], 0.1, 0.9, 1e-4, 1 / 255
    )
    np.testing.assert_allclose(l_np[:94], expected[4], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(l_nb[:94], expected[4], rtol=1e-4, atol=1e-6)


def test_numba_thread_counts_are_valid_and_deterministic(mnist):
    """nthreads = 1 and 2 (the kernel's last argument) both agree with numpy; two runs
    with the same thread count are bit-identical."""
    pytest.importorskip("numba")
    X, y = mnist
    X, y = X[:2000], y[:2000]
    orders = [np.random.default_rng(1).permutation(len(y)) for _ in range(2)]
    batch = 100  # split across threads (at least 16 rows per thread), 20 steps per epoch
    l_ref, W_ref, _ = _mnist_run("numpy", X, y, orders, batch, np.float32)
    for nthreads in (1, 2):
        l1, W1, b1 = _mnist_run("numba", X, y, orders, batch, np.float32, nthreads=nthreads)
        l2, W2, b2 = _mnist_run("numba", X, y, orders, batch, np.float32, nthreads=nthreads)
        np.testing.assert_array_equal(l1, l2)
        np.testing.assert_array_equal(W1, W2)
        np.testing.assert_array_equal(b1, b2)
        np.testing.assert_allclose(l1, l_ref, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(W1, W_ref, rtol=1e-3, atol=1e-4 * np.abs(W_ref).max())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_kind", ["uint8", "float"])
def test_inputs_are_not_modified(backend, x_kind):
    rng = np.random.default_rng(2)
    n, d, C, batch = 70, 17, 5, 16
    X, y, W, b, vW, vb = make_problem(rng, n, d, C, np.float32, x_kind)
    order = rng.permutation(n)
    X0, y0, order0 = X.copy(), y.copy(), order.copy()
    losses = np.zeros(5)
    run_steps(
        backend, X, y, order, 0, 5, batch, W, b, vW, vb, 0.5, 0.9, 0.01, x_scale_for(X), losses
    )
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(order, order0)

    state = TrainState.zeros(C, d, np.float32, np.random.default_rng(0))
    train_epochs(
        state, X, y, until_epoch=2, batch_size=batch, learning_rate=0.5, momentum=0.9,
        weight_decay=0.01, shuffle=True, backend=backend,
    )  # fmt: skip
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)


# ------------------------------------------------------------------------ epoch loop
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shuffle", [True, False])
def test_each_epoch_visits_a_permutation_of_the_rows(backend, shuffle):
    """train_epochs: every epoch's order is a permutation of 0..n-1 (a fresh one per
    epoch when shuffling, the identity otherwise); the weights are those of the oracle
    run over exactly these orders; loss_curve is the batch-size-weighted mean of the
    oracle's step objectives."""
    rng = np.random.default_rng(4)
    n, d, C, batch = 37, 11, 4, 8  # 5 steps per epoch, the last of 5 rows
    X, y, *_ = make_problem(rng, n, d, C, np.float64, "float")
    lr, mu, wd = 0.3, 0.5, 0.01
    state = TrainState.zeros(C, d, np.float64, np.random.default_rng(123))
    seen = {}

    def on_progress(st, steps):
        assert steps == 5
        seen.setdefault(st.epoch, []).append((st.step, st.order.copy()))

    epoch_ends = []
    done = train_epochs(
        state, X, y, until_epoch=3, batch_size=batch, learning_rate=lr, momentum=mu,
        weight_decay=wd, shuffle=shuffle, backend=backend, on_progress=on_progress,
        on_epoch_end=lambda st, sec: epoch_ends.append(st.epoch),
    )  # fmt: skip
    assert done is True
    assert state.epoch == 3 and epoch_ends == [1, 2, 3]
    assert sorted(seen) == [0, 1, 2]
    orders = []
    for e in range(3):
        assert seen[e][-1][0] == 5  # the epoch ran all its steps
        order = seen[e][0][1]
        for _, o in seen[e]:
            np.testing.assert_array_equal(o, order)  # fixed within an epoch
        np.testing.assert_array_equal(np.sort(order), np.arange(n))
        orders.append(order)
    if shuffle:
        assert not np.array_equal(orders[0], orders[1])
        assert not np.array_equal(orders[1], orders[2])
        assert not np.array_equal(orders[0], np.arange(n))
    else:
        for o in orders:
            np.testing.assert_array_equal(o, np.arange(n))

    W, b = np.zeros((C, d)), np.zeros(C)
    vW, vb = np.zeros_like(W), np.zeros_like(b)
    sizes = np.array([8, 8, 8, 8, 5])
    for e, order in enumerate(orders):
        W, b, vW, vb, losses, _ = oracle_steps(
            X, y, order, 0, 5, batch, W, b, vW, vb, lr, mu, wd, 1.0
        )
        assert state.loss_curve[e] == pytest.approx(np.dot(losses, sizes) / n, rel=1e-10)
    np.testing.assert_allclose(state.W, W, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(state.b, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shuffled_orders_come_from_the_state_rng(backend):
    """The same rng seed gives the same orders and bit-identical weights; another seed
    gives other orders."""
    rng = np.random.default_rng(8)
    n, d, C = 50, 7, 3
    X, y, *_ = make_problem(rng, n, d, C, np.float32, "uint8")

    def run(seed):
        state = TrainState.zeros(C, d, np.float32, np.random.default_rng(seed))
        orders = []
        train_epochs(
            state, X, y, until_epoch=2, batch_size=16, learning_rate=0.5, momentum=0.0,
            weight_decay=0.0, shuffle=True, backend=backend,
            on_progress=lambda st, steps: orders.append(st.order.copy()),
        )  # fmt: skip
        return orders, state

    o1, s1 = run(1)
    o2, s2 = run(1)
    o3, s3 = run(2)
    for p, q in zip(o1, o2, strict=True):
        np.testing.assert_array_equal(p, q)
    np.testing.assert_array_equal(s1.W, s2.W)
    assert s1.loss_curve == s2.loss_curve
    assert not np.array_equal(o1[0], o3[0])
    assert not np.array_equal(s1.W, s3.W)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stop_at_call", [2, 3, 16])
def test_stopped_and_resumed_run_equals_uninterrupted_run(backend, stop_at_call, monkeypatch):
    """should_stop leaves a consistent state (mid-epoch or between epochs); continuing
    it gives bit-for-bit the run that never stopped."""
    from fastsoftmax.train import loop

    # 10 steps per kernel call: an epoch of 150 steps is 15 calls, should_stop is asked
    # after every call and after every epoch (call 16 is the end of epoch 0)
    monkeypatch.setattr(loop, "ROWS_PER_CALL", 40)
    rng = np.random.default_rng(9)
    n, d, C = 600, 20, 5
    X, y, *_ = make_problem(rng, n, d, C, np.float32, "uint8")
    kw = dict(
        batch_size=4, learning_rate=0.2, momentum=0.9, weight_decay=1e-3, shuffle=True,
        backend=backend,
    )  # fmt: skip
    full = TrainState.zeros(C, d, np.float32, np.random.default_rng(5))
    assert train_epochs(full, X, y, until_epoch=2, **kw) is True

    part = TrainState.zeros(C, d, np.float32, np.random.default_rng(5))
    calls = []

    def stop_once():
        calls.append(1)
        return len(calls) == stop_at_call

    assert train_epochs(part, X, y, until_epoch=2, should_stop=stop_once, **kw) is False
    if stop_at_call == 16:
        assert (part.epoch, part.step, part.order) == (1, 0, None)
    else:
        assert (part.epoch, part.step) == (0, 10 * stop_at_call)
        assert part.order is not None
    assert train_epochs(part, X, y, until_epoch=2, **kw) is True
    np.testing.assert_array_equal(part.W, full.W)
    np.testing.assert_array_equal(part.b, full.b)
    assert part.loss_curve == full.loss_curve


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_finite_kernel_matches_numpy(dtype):
    pytest.importorskip("numba")
    from fastsoftmax._numba import all_finite

    rng = np.random.default_rng(5)
    x = (rng.standard_normal((1000, 301)) * 1e30).astype(dtype)  # large but finite
    assert all_finite(x) and np.isfinite(x).all()
    for bad in (np.nan, np.inf, -np.inf):
        for pos in [(0, 0), (999, 300), tuple(rng.integers(0, (1000, 301)))]:
            y = x.copy()
            y[pos] = bad
            assert not all_finite(y), (bad, pos)


def test_estimator_rejects_nan_in_large_input():
    from fastsoftmax import SoftmaxRegression

    x = np.random.default_rng(0).random((3000, 100), dtype=np.float32)
    x[2999, 99] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        SoftmaxRegression(max_epochs=1).fit(x, np.arange(3000) % 3)
