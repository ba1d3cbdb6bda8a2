"""fastsoftmax.dask on a LocalCluster of two worker processes: full-batch L-BFGS and
gradient descent against a single-machine NumPy oracle, the SGD mode against the
single-machine estimator, predictions, a worker killed during fit, bad input."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

pytest.importorskip("dask")
pytest.importorskip("scipy")
distributed = pytest.importorskip("distributed")

import dask.array as da  # noqa: E402
from scipy.optimize import minimize  # noqa: E402

import fastsoftmax as fs  # noqa: E402
from fastsoftmax import dask as fsd  # noqa: E402

# the tests build arrays from NumPy data, which Dask embeds in the graph (and says so)
pytestmark = pytest.mark.filterwarnings("ignore:Sending large graph:UserWarning")

N_ROWS = 3000
CHUNK = 640  # uneven: 4 chunks of 640 and one of 440 (a multiple of the SGD batch, 40)
WD = 1e-2


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        env={"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def data(mnist_test):
    X, y = mnist_test
    return X[:N_ROWS], y[:N_ROWS]


def numpy_objective(Xf, y, classes, W, b, wd):
    """The objective and its gradient straight from the math, in float64."""
    n = len(y)
    z = Xf @ W.T + b
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    yi = np.searchsorted(classes, y)
    value = -logp[np.arange(n), yi].mean() + 0.5 * wd * np.sum(W * W)
    G = np.exp(logp)
    G[np.arange(n), yi] -= 1.0
    G /= n
    return value, G.T @ Xf + wd * W, G.sum(axis=0)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_chunk_gradient_against_the_math(data, backend, dtype):
    """In this process, before the cluster tests: the workers then load these kernels
    from Numba's cache instead of each compiling them (the file took ~50 s cold)."""
    X, y = data
    X = X[:777]  # not a multiple of the kernel's row groups
    y = y[:777]
    Xc = X if dtype == np.uint8 else (X / 255.0).astype(dtype)
    classes = np.arange(10)
    rng = np.random.default_rng(3)
    W, b = rng.standard_normal((10, X.shape[1])) * 0.02, rng.standard_normal(10)
    loss, gW, gb, rows = fsd.chunk_loss_grad(Xc, y, W, b, backend)
    value, wW, wb = numpy_objective(X / 255.0, y, classes, W, b, 0.0)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    assert rows == 777
    assert loss / rows == pytest.approx(value, rel=tol)
    np.testing.assert_allclose(gW / rows, wW, rtol=0, atol=tol * np.abs(wW).max())
    np.testing.assert_allclose(gb / rows, wb, rtol=0, atol=tol * np.abs(wb).max())


@pytest.mark.full  # ~35 s of L-BFGS iterations through the cluster
def test_lbfgs_matches_the_single_machine_full_batch_solution(client, data):
    X, y = data
    Xf = X / 255.0  # float64: the chunks then compute in float64
    classes = np.unique(y)
    c, d = len(classes), X.shape[1]

    def fun(theta):
        value, gW, gb = numpy_objective(Xf, y, classes, theta[: c * d].reshape(c, d),
                                        theta[c * d :], WD)  # fmt: skip
        return value, np.concatenate([gW.ravel(), gb])

    opts = {"maxiter": 500, "gtol": 1e-7}
    want = minimize(fun, np.zeros(c * d + c), jac=True, method="L-BFGS-B", options=opts)
    assert want.success, want.message

    model = fsd.SoftmaxRegression(weight_decay=WD, max_iter=500, tol=1e-7)
    model.fit(da.from_array(Xf, chunks=(CHUNK, -1)), da.from_array(y, chunks=CHUNK))
    assert model.optimizer_result_.success
    W, b = want.x[: c * d].reshape(c, d), want.x[c * d :]
    scale = np.abs(W).max()
    np.testing.assert_allclose(model.coef_, W, atol=1e-4 * scale)
    np.testing.assert_allclose(model.intercept_, b, atol=1e-4 * scale)
    assert model.loss_curve_[-1] == pytest.approx(want.fun, rel=1e-7)
    assert np.all(np.diff(model.loss_curve_) <= 1e-12)  # L-BFGS never goes uphill here


def test_gradient_descent_equals_numpy_steps(client, data):
    X, y = data
    classes = np.unique(y)
    Xf = X / 255.0
    W, b = np.zeros((10, X.shape[1])), np.zeros(10)
    curve = []
    for _ in range(4):
        value, gW, gb = numpy_objective(Xf, y, classes, W, b, WD)
        curve.append(value)
        W, b = W - 0.5 * gW, b - 0.5 * gb
    model = fsd.SoftmaxRegression(solver="gd", learning_rate=0.5, weight_decay=WD, max_iter=4)
    model.fit(da.from_array(Xf, chunks=(CHUNK, -1)), da.from_array(y, chunks=CHUNK))
    np.testing.assert_allclose(model.loss_curve_, curve, rtol=1e-12)
    np.testing.assert_allclose(model.coef_, W, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(model.intercept_, b, rtol=1e-10, atol=1e-14)


def test_uint8_chunks_compute_like_float32_pixels(client, data):
    X, y = data
    classes = np.unique(y)
    W = np.random.default_rng(0).standard_normal((10, X.shape[1])) * 0.01
    b = np.linspace(-1, 1, 10)
    model = fsd.SoftmaxRegression(weight_decay=WD)
    Xd = da.from_array(X, chunks=(CHUNK, -1))
    yi = da.from_array(np.searchsorted(classes, y), chunks=CHUNK)
    Xb, yb = Xd.to_delayed().ravel().tolist(), yi.to_delayed().ravel().tolist()
    value, gW, gb = model.objective(Xb, yb, N_ROWS, W, b, "auto")
    want = numpy_objective(X / 255.0, y, classes, W, b, WD)
    assert value == pytest.approx(want[0], rel=1e-5)
    np.testing.assert_allclose(gW, want[1], atol=1e-5 * np.abs(want[1]).max())
    np.testing.assert_allclose(gb, want[2], atol=1e-5 * np.abs(want[2]).max())


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_sgd_pass_per_chunk_equals_the_single_machine_trainer(client, data, backend):
    X, y = data
    kw = {"learning_rate": 0.1, "weight_decay": 1e-4, "batch_size": 40, "momentum": 0.5}
    # the Dask solver's SGD runs at a constant rate
    local = fs.SoftmaxRegression(
        max_epochs=2, shuffle=False, backend=backend, lr_schedule="constant", **kw
    )
    local.fit(X, y)
    model = fsd.SoftmaxRegression(solver="sgd", max_iter=2, shuffle=False, backend=backend, **kw)
    model.fit(da.from_array(X, chunks=(CHUNK, -1)), da.from_array(y, chunks=CHUNK))
    assert model.coef_.dtype == np.float32
    np.testing.assert_allclose(model.coef_, local.coef_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.intercept_, local.intercept_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.loss_curve_, local.loss_curve_, rtol=1e-5)


def test_sgd_with_shuffling_learns(client, data):
    X, y = data
    model = fsd.SoftmaxRegression(solver="sgd", max_iter=3, random_state=0)
    Xd = da.from_array(X, chunks=(CHUNK, -1))
    yd = da.from_array(y, chunks=CHUNK)
    model.fit(Xd, yd)
    again = fsd.SoftmaxRegression(solver="sgd", max_iter=3, random_state=0).fit(Xd, yd)
    np.testing.assert_array_equal(model.coef_, again.coef_)  # same seed, same weights
    assert model.loss_curve_[-1] < model.loss_curve_[0]
    assert model.score(Xd, yd) > 0.85


def test_predictions_are_dask_arrays_matching_numpy(client, data):
    X, y = data
    Xd = da.from_array(X, chunks=(CHUNK, -1))
    yd = da.from_array(y, chunks=CHUNK)
    model = fsd.SoftmaxRegression(max_iter=30).fit(Xd, yd)
    logits = (X / 255.0) @ model.coef_.T + model.intercept_
    proba = model.predict_proba(Xd)
    pred = model.predict(Xd)
    assert isinstance(proba, da.Array) and isinstance(pred, da.Array)
    assert proba.chunks[0] == Xd.chunks[0] and pred.chunks[0] == Xd.chunks[0]
    np.testing.assert_allclose(proba.compute(), fs.softmax(logits, backend="numpy"), rtol=1e-10)
    atol = 1e-12 * np.abs(logits).max()  # X * (1/255) against X / 255: an ulp apart
    np.testing.assert_allclose(model.decision_function(Xd).compute(), logits, atol=atol)
    want = model.classes_[logits.argmax(axis=1)]
    np.testing.assert_array_equal(pred.compute(), want)
    assert model.score(Xd, yd) == pytest.approx(np.mean(want == y))
    assert model.score(Xd, yd) > 0.85


def test_string_labels(client, data):
    X, y = data
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven",
                      "eight", "nine"])  # fmt: skip
    labels = names[y]
    model = fsd.SoftmaxRegression(max_iter=10)
    model.fit(da.from_array(X, chunks=(CHUNK, -1)), da.from_array(labels, chunks=CHUNK))
    assert set(model.classes_) == set(names)
    pred = model.predict(da.from_array(X[:50], chunks=(25, -1))).compute()
    assert set(pred) <= set(names)


def test_a_worker_killed_during_fit_is_survived(client, data):
    X, y = data
    Xf = X / 255.0

    def fit(kill_at=None):
        model = fsd.SoftmaxRegression(solver="gd", learning_rate=0.5, weight_decay=WD,
                                      max_iter=6)  # fmt: skip
        calls = [0]
        objective = model.objective

        def objective_then_kill(*args):
            calls[0] += 1
            if calls[0] == kill_at:
                # SIGKILL one worker process: its chunks are lost, the nanny restarts
                # it, and the scheduler recomputes what it held
                pids = client.run(os.getpid)
                os.kill(sorted(pids.values())[0], signal.SIGKILL)
            return objective(*args)

        model.objective = objective_then_kill
        Xd = da.from_array(Xf, chunks=(CHUNK, -1))
        return model.fit(Xd, da.from_array(y, chunks=CHUNK))

    clean = fit()
    before = set(client.run(os.getpid).values())
    survived = fit(kill_at=3)
    np.testing.assert_array_equal(survived.coef_, clean.coef_)
    np.testing.assert_array_equal(survived.loss_curve_, clean.loss_curve_)
    client.wait_for_workers(2, timeout=60)
    after = set(client.run(os.getpid).values())
    assert len(before - after) == 1  # one worker process really died and was replaced


def test_numpy_inputs_run_as_one_chunk(data):
    X, y = data
    model = fsd.SoftmaxRegression(max_iter=5).fit(X[:500], y[:500])  # local scheduler
    assert isinstance(model.predict(X[:10]), da.Array)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"solver": "newton"}, "solver must be one of"),
        ({"max_iter": 0}, "max_iter must be a positive integer"),
        ({"weight_decay": -1.0}, "weight_decay must be a finite number >= 0"),
        ({"learning_rate": 0.0}, "learning_rate must be a finite number > 0"),
        ({"momentum": 1.0}, "momentum must be < 1"),
        ({"learning_rate": float("nan")}, "learning_rate must be a finite number > 0"),
        ({"tol": "small"}, "tol must be a finite number >= 0"),
    ],
)
def test_bad_parameters_name_themselves(params, match):
    X = da.zeros((10, 3), chunks=(5, 3))
    y = da.from_array(np.arange(10) % 2, chunks=5)
    with pytest.raises(ValueError, match=match):
        fsd.SoftmaxRegression(**params).fit(X, y)


def test_bad_data_is_named():
    model = fsd.SoftmaxRegression()
    with pytest.raises(ValueError, match=r"X must be 2-D"):
        model.fit(da.zeros(10, chunks=5), da.zeros(10, chunks=5))
    with pytest.raises(ValueError, match=r"y has 9 rows but X has 10"):
        model.fit(da.zeros((10, 2), chunks=5), da.zeros(9, chunks=5))
    with pytest.raises(TypeError, match=r"X must be float32, float64 or uint8"):
        model.fit(da.zeros((10, 2), dtype=np.int32, chunks=5), da.zeros(10, chunks=5))
    with pytest.raises(ValueError, match=r"at least 2 classes"):
        model.fit(da.zeros((10, 2), chunks=5), da.zeros(10, chunks=5))
    with pytest.raises(RuntimeError, match="not fitted"):
        model.predict(da.zeros((10, 2), chunks=5))


def test_non_finite_x_and_continuous_y_raise_as_in_memory():
    """NaN or infinity in X (fit, and predict when computed) and continuous y are
    errors, as for the in-memory estimator: not a silent all-zero or NaN model."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(40, 3))
    y = np.arange(40) % 3
    bad = X.copy()
    bad[7, 1] = np.nan
    for solver in ("lbfgs", "gd", "sgd"):
        with pytest.raises(ValueError, match="X contains NaN or infinity"):
            fsd.SoftmaxRegression(solver=solver, max_iter=3).fit(da.from_array(bad, chunks=10), y)
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        fsd.SoftmaxRegression(max_iter=3).fit(X, y + 0.5)
    model = fsd.SoftmaxRegression(max_iter=3).fit(X, y)
    with pytest.raises(ValueError, match="X contains NaN or infinity"):
        model.predict(da.from_array(bad, chunks=10)).compute()
    with pytest.raises(ValueError, match=r"X must be 2-D"):
        model.predict(X[0])
    fitted = fsd.SoftmaxRegression(max_iter=2).fit(
        da.random.random((20, 3), chunks=(7, 3)), da.from_array(np.arange(20) % 2, chunks=7)
    )
    with pytest.raises(ValueError, match=r"X has 4 features, but this model was fit with 3"):
        fitted.predict(da.zeros((5, 4), chunks=5))


def _gpu_reason() -> str | None:
    from fastsoftmax.implementations import get

    return get("cupy-reference").unavailable()


@pytest.mark.skipif(_gpu_reason() is not None, reason=str(_gpu_reason()))
def test_cupy_chunks_give_the_numpy_result(data):
    import cupy

    X, y = data
    Xf = (X[:2000] / 255.0).astype(np.float32)
    yy = y[:2000]
    rng = np.random.default_rng(5)
    W, b = rng.standard_normal((10, X.shape[1])) * 0.02, rng.standard_normal(10)
    want = fsd.chunk_loss_grad(Xf, yy, W, b, "numpy")
    got = fsd.chunk_loss_grad(cupy.asarray(Xf), cupy.asarray(yy), W, b, "numpy")
    assert got[0] == pytest.approx(want[0], rel=1e-5)
    np.testing.assert_allclose(got[1], want[1], atol=1e-5 * np.abs(want[1]).max())
    np.testing.assert_allclose(got[2], want[2], atol=1e-5 * np.abs(want[2]).max())
    # a whole fit on CuPy chunks (local scheduler) matches the NumPy-chunk fit
    kw = {"solver": "gd", "max_iter": 3, "learning_rate": 0.5}
    Xd = da.from_array(cupy.asarray(Xf), chunks=(500, -1))
    yd = da.from_array(cupy.asarray(yy), chunks=500)
    on_gpu = fsd.SoftmaxRegression(**kw).fit(Xd, yd)
    on_cpu = fsd.SoftmaxRegression(**kw).fit(
        da.from_array(Xf, chunks=(500, -1)), da.from_array(yy, chunks=500)
    )
    np.testing.assert_allclose(on_gpu.coef_, on_cpu.coef_, rtol=1e-4, atol=1e-6)
    pred = on_gpu.predict(Xd).compute()
    np.testing.assert_array_equal(cupy.asnumpy(pred), on_cpu.predict(Xf).compute())


@pytest.mark.parametrize("k", [1, 2, 7, 8, 9, 19, 64])
def test_tree_sum_adds_every_chunk_once_in_a_few_tasks(k):
    import dask

    parts = [dask.delayed(lambda i: (float(i), np.full(2, i), np.ones(1), 1))(i) for i in range(k)]
    tree = fsd._tree_sum(parts)
    loss, dW, db, rows = dask.compute(tree, scheduler="sync")[0]
    assert (loss, rows) == (k * (k - 1) / 2, k)
    np.testing.assert_array_equal(dW, np.full(2, k * (k - 1) / 2))
    np.testing.assert_array_equal(db, np.full(1, k))
    adds = sum(1 for key in dict(tree.__dask_graph__()) if str(key).startswith("_add"))
    bound, m = 0, k  # at most ceil(m / SPLIT_EVERY) sums per level
    while m > 1:
        m = -(-m // fsd.SPLIT_EVERY)
        bound += m
    assert adds <= bound
