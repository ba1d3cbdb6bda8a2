"""SoftmaxRegression: scikit-learn compatibility, accuracy on real MNIST, determinism,
labels of any kind, the binary case, partial_fit, warm_start, parameters and errors.

Oracles are written here: logits from coef_/intercept_, softmax by hand, scikit-learn's
LogisticRegression where installed.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from conftest import MNIST_DIR

import fastsoftmax
from fastsoftmax import NotFittedError, SoftmaxRegression

BACKENDS = ["numpy", "numba"]

try:  # scikit-learn is a test extra: without it only its checks are skipped
    from sklearn.utils.estimator_checks import parametrize_with_checks
except ImportError:  # pragma: no cover - depends on the environment
    parametrize_with_checks = None


# ------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def mnist_split():
    """The real MNIST test set: the first 8000 images to train, the last 2000 held out."""
    from fastsoftmax import data

    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"the MNIST test set is not at {MNIST_DIR}")
    X, y = data.load("mnist", "test", data_dir=MNIST_DIR, download=False)
    assert X.shape == (10000, 784) and X.dtype == np.uint8
    return X[:8000], y[:8000], X[8000:], y[8000:]


def blobs(n=300, d=10, C=3, seed=0, sep=3.0, dtype=np.float64):
    """Gaussian clusters, one per class (well separated: a linear model fits them)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((C, d)) * sep
    y = np.arange(n) % C
    rng.shuffle(y)
    X = centers[y] + rng.standard_normal((n, d))
    return X.astype(dtype), y.astype(np.int64)


def softmax_rows(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def scaled(X):
    """What the model sees: uint8 as X/255, anything else as is (float64)."""
    X = np.asarray(X)
    return X / 255.0 if X.dtype == np.uint8 else X.astype(np.float64)


# ---------------------------------------------------------------- scikit-learn checks
if parametrize_with_checks is not None:
    # A check that minibatch SGD cannot pass, by its nature (scikit-learn marks the same
    # for its SGDClassifier):
    SGD_XFAIL = {
        "check_sample_weight_equivalence_on_dense_data": (
            "a row of weight 2 is not two rows: SGD visits them in different steps"
        ),
    }

    @parametrize_with_checks(
        [SoftmaxRegression(backend=b) for b in BACKENDS],
        expected_failed_checks=lambda est: SGD_XFAIL,
    )
    def test_sklearn_check_estimator(estimator, check):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "does not inherit BaseEstimator"
            check(estimator)

else:  # pragma: no cover - depends on the environment

    @pytest.mark.skip(reason="scikit-learn is not installed (a test extra)")
    def test_sklearn_check_estimator():
        pass


# ---------------------------------------------------------------------------- MNIST
@pytest.mark.parametrize("backend", ["auto", "numpy"])
def test_mnist_accuracy_with_default_settings(mnist_split, backend):
    Xtr, ytr, Xte, yte = mnist_split
    model = SoftmaxRegression(backend=backend, random_state=0).fit(Xtr, ytr)
    acc = model.score(Xte, yte)
    assert acc >= 0.92, acc
    assert acc == pytest.approx(np.mean(model.predict(Xte) == yte))
    np.testing.assert_array_equal(model.classes_, np.arange(10))
    assert model.coef_.shape == (10, 784) and model.intercept_.shape == (10,)
    assert model.n_iter_ == 20 and len(model.loss_curve_) == 20
    # the objective decreases every epoch on this data, from below log(10)
    curve = np.array(model.loss_curve_)
    assert curve[0] < np.log(10)
    assert np.all(np.diff(curve) < 0), curve
    assert curve[-1] < 0.4


def test_mnist_backends_agree(mnist_split):
    """The numba fit (float32) and the numpy reference fit reach the same model."""
    pytest.importorskip("numba")
    Xtr, ytr, Xte, _ = mnist_split
    a = SoftmaxRegression(backend="numba", random_state=1, max_epochs=3).fit(Xtr, ytr)
    b = SoftmaxRegression(backend="numpy", random_state=1, max_epochs=3).fit(Xtr, ytr)
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-4)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-3, atol=1e-4 * np.abs(b.coef_).max())
    assert np.mean(a.predict(Xte) == b.predict(Xte)) > 0.995


def test_agrees_with_sklearn_logistic_regression(mnist_split):
    sklearn_lm = pytest.importorskip("sklearn.linear_model")
    Xtr, ytr, Xte, yte = mnist_split
    ours = SoftmaxRegression(random_state=0).fit(Xtr, ytr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs may stop at max_iter
        theirs = sklearn_lm.LogisticRegression(max_iter=100).fit(Xtr / 255.0, ytr)
    p_ours = ours.predict(Xte)
    p_theirs = theirs.predict(Xte / 255.0)
    assert np.mean(p_ours == yte) > 0.9
    assert np.mean(p_theirs == yte) > 0.9
    assert np.mean(p_ours == p_theirs) > 0.9


# ---------------------------------------------------------------------- determinism
@pytest.mark.parametrize("backend", BACKENDS)
def test_same_random_state_gives_identical_weights(backend):
    X, y = blobs(n=500, d=12, C=4)
    kw = dict(backend=backend, max_epochs=3, batch_size=16, momentum=0.9)
    a = SoftmaxRegression(random_state=42, **kw).fit(X, y)
    b = SoftmaxRegression(random_state=42, **kw).fit(X, y)
    c = SoftmaxRegression(random_state=43, **kw).fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.intercept_, b.intercept_)
    assert a.loss_curve_ == b.loss_curve_
    assert not np.array_equal(a.coef_, c.coef_)
    # refitting the same estimator (no warm start) starts over: the same result again
    a.fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert a.n_iter_ == 3 and len(a.loss_curve_) == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_shuffle_false_does_not_depend_on_random_state(backend):
    X, y = blobs(n=200, d=6, C=3)
    kw = dict(backend=backend, max_epochs=2, batch_size=16, shuffle=False)
    a = SoftmaxRegression(random_state=0, **kw).fit(X, y)
    b = SoftmaxRegression(random_state=123, **kw).fit(X, y)
    c = SoftmaxRegression(random_state=None, **kw).fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.coef_, c.coef_)
    # and shuffling does change the trajectory
    d = SoftmaxRegression(random_state=0, **{**kw, "shuffle": True}).fit(X, y)
    assert not np.array_equal(a.coef_, d.coef_)


def test_shuffle_false_is_plain_sgd_in_row_order():
    """Oracle: minibatch SGD over the rows in order, written here in float64."""
    X, y = blobs(n=50, d=4, C=3, seed=2)
    lr, batch, wd = 0.2, 16, 0.01
    model = SoftmaxRegression(
        backend="numpy", learning_rate=lr, batch_size=batch, max_epochs=2, shuffle=False,
        weight_decay=wd, lr_schedule="constant",
    ).fit(X, y)  # fmt: skip
    W, b = np.zeros((3, 4)), np.zeros(3)
    curve = []
    for _ in range(2):
        total = 0.0
        for s in range(0, 50, batch):
            Xb, yb = X[s : s + batch], y[s : s + batch]
            p = softmax_rows(Xb @ W.T + b)
            total += len(yb) * (-np.log(p[np.arange(len(yb)), yb]).mean() + 0.5 * wd * np.sum(W**2))
            G = (p - np.eye(3)[yb]) / len(yb)
            W, b = W - lr * (G.T @ Xb + wd * W), b - lr * G.sum(axis=0)
        curve.append(total / 50)
    np.testing.assert_allclose(model.coef_, W, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.intercept_, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.loss_curve_, curve, rtol=1e-10)


# --------------------------------------------------------------------------- labels
@pytest.mark.parametrize("backend", BACKENDS)
def test_string_and_non_contiguous_labels(backend):
    X, y = blobs(n=240, d=5, C=3, seed=3)
    kw = dict(backend=backend, random_state=0, max_epochs=3)
    ref = SoftmaxRegression(**kw).fit(X, y)
    for names in (np.array(["zebra", "ant", "moose"]), np.array([11, 3, 7])):
        # names sorted: the class order (classes_) is that of the sorted labels
        order = np.argsort(names)
        labels = names[order][y]  # y == k -> the k-th smallest label: the same encoding
        model = SoftmaxRegression(**kw).fit(X, labels)
        np.testing.assert_array_equal(model.classes_, np.sort(names))
        np.testing.assert_array_equal(model.coef_, ref.coef_)
        pred = model.predict(X)
        assert pred.dtype == labels.dtype
        np.testing.assert_array_equal(pred, np.sort(names)[ref.predict(X)])
        assert set(pred.tolist()) <= set(names.tolist())
        assert model.score(X, labels) == pytest.approx(ref.score(X, y))
        assert model.score(X, labels) > 0.95


def test_labels_given_as_a_list_of_strings():
    X, y = blobs(n=90, d=3, C=3, seed=4)
    labels = [["no", "maybe", "yes"][k] for k in y]
    model = SoftmaxRegression(backend="numpy", random_state=0).fit(X.tolist(), labels)
    assert model.classes_.tolist() == ["maybe", "no", "yes"]
    assert model.predict(X[:5]).tolist() == [labels[i] for i in range(5)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_binary_case(backend):
    X, y = blobs(n=200, d=7, C=2, seed=5, sep=1.0)
    labels = np.array(["neg", "pos"])[y]
    model = SoftmaxRegression(backend=backend, random_state=0, max_epochs=3).fit(X, labels)
    assert model.coef_.shape == (1, 7)
    assert model.intercept_.shape == (1,)
    dec = model.decision_function(X)
    assert dec.shape == (200,)
    np.testing.assert_allclose(
        dec, X @ model.coef_[0] + model.intercept_[0], rtol=1e-10, atol=1e-10
    )
    pred = model.predict(X)
    # scikit-learn's convention: a positive score is classes_[1]
    np.testing.assert_array_equal(pred, model.classes_[(dec > 0).astype(int)])
    assert 0.6 < np.mean(pred == labels)  # something was learned (overlapping blobs)
    proba = model.predict_proba(X)
    assert proba.shape == (200, 2)
    np.testing.assert_allclose(proba[:, 1], 1.0 / (1.0 + np.exp(-dec)), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_probabilities_are_softmax_of_the_logits(backend, dtype):
    X, y = blobs(n=150, d=6, C=4, seed=6)
    if dtype == np.uint8:
        X = np.clip(X * 20 + 128, 0, 255).astype(np.uint8)
    else:
        X = X.astype(dtype)
    model = SoftmaxRegression(backend=backend, random_state=0, max_epochs=2).fit(X, y)
    param_dtype = np.float64 if dtype == np.float64 else np.float32
    assert model.coef_.dtype == param_dtype
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=1e-6)

    logits = scaled(X) @ model.coef_.astype(np.float64).T + model.intercept_
    np.testing.assert_allclose(model.decision_function(X), logits, **tol)
    proba = model.predict_proba(X)
    assert proba.shape == (150, 4)
    np.testing.assert_allclose(proba, softmax_rows(logits), **tol)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5 if dtype != np.float64 else 1e-12)
    assert np.all(proba >= 0)
    np.testing.assert_allclose(model.predict_log_proba(X), np.log(proba), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.predict(X), model.classes_[np.argmax(proba, axis=1)])


def test_predict_log_proba_is_finite_for_confident_predictions():
    """log-probabilities come from a log-softmax, not log(softmax): no -inf where the
    probability underflows."""
    X, y = blobs(n=60, d=2, C=2, seed=7, sep=50.0)
    model = SoftmaxRegression(backend="numpy", random_state=0, learning_rate=5.0).fit(X, y)
    Xfar = X * 100  # logits of thousands
    logp = model.predict_log_proba(Xfar)
    assert np.all(np.isfinite(logp))
    z = model.decision_function(Xfar)
    np.testing.assert_allclose(np.abs(logp).max(axis=1), np.abs(z), rtol=1e-9)


def test_uint8_input_equals_float_input_divided_by_255():
    rng = np.random.default_rng(8)
    X = rng.integers(0, 256, (400, 30)).astype(np.uint8)
    w = rng.standard_normal((3, 30))
    y = np.argmax(X / 255.0 @ w.T + rng.standard_normal((400, 3)) * 0.3, axis=1)
    kw = dict(backend="numpy", random_state=0, max_epochs=4, learning_rate=0.5)
    a = SoftmaxRegression(**kw).fit(X, y)
    b = SoftmaxRegression(**kw).fit((X / 255.0).astype(np.float32), y)
    assert a.coef_.dtype == b.coef_.dtype == np.float32
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-4, atol=1e-5 * np.abs(b.coef_).max())
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-5)
    np.testing.assert_allclose(
        a.predict_proba(X), b.predict_proba((X / 255.0).astype(np.float32)), atol=1e-4
    )
    assert np.mean(a.predict(X) == b.predict((X / 255.0).astype(np.float32))) > 0.99


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_does_not_modify_its_inputs(backend):
    X, y = blobs(n=100, d=5, C=3, seed=9, dtype=np.float32)
    X0, y0 = X.copy(), y.copy()
    model = SoftmaxRegression(backend=backend, random_state=0, max_epochs=2, momentum=0.5)
    model.fit(X, y)
    model.partial_fit(X, y)
    model.predict_proba(X)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)


# ---------------------------------------------------------------------- partial_fit
@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_fit_with_classes_absent_from_the_first_batch(backend):
    X, y = blobs(n=300, d=6, C=3, seed=10)
    first = y != 2
    model = SoftmaxRegression(backend=backend, random_state=0)
    model.partial_fit(X[first], y[first], classes=[0, 1, 2])
    np.testing.assert_array_equal(model.classes_, [0, 1, 2])
    assert model.n_iter_ == 1 and len(model.loss_curve_) == 1
    assert model.predict_proba(X).shape == (300, 3)
    assert not np.any(model.predict(X) == 2)  # class 2 was never seen
    for _ in range(5):
        model.partial_fit(X, y)
    assert model.n_iter_ == 6 and len(model.loss_curve_) == 6
    assert model.score(X, y) > 0.95

    with pytest.raises(ValueError, match="99"):
        model.partial_fit(X[:3], np.array([0, 99, 1]))
    with pytest.raises(ValueError, match="features"):
        model.partial_fit(X[:, :5], y)
    # the failed calls changed nothing
    assert model.n_iter_ == 6


def test_failed_first_partial_fit_leaves_the_model_unfitted():
    """A first partial_fit call rejected for a label outside `classes` must not leave a
    half-fitted model behind (classes_ set, no coef_, predictions from zero weights)."""
    X, y = blobs(n=40, d=3, C=3, seed=21)
    model = SoftmaxRegression(backend="numpy", random_state=0)
    with pytest.raises(ValueError, match="2"):
        model.partial_fit(X, y, classes=[0, 1])  # y holds 2 as well
    with pytest.raises(NotFittedError):
        model.predict(X)
    # the corrected call then works as a first call
    model.partial_fit(X, y, classes=[0, 1, 2])
    np.testing.assert_array_equal(model.classes_, [0, 1, 2])
    assert model.n_iter_ == 1


def test_partial_fit_with_string_classes():
    X, y = blobs(n=60, d=3, C=3, seed=11)
    labels = np.array(["a", "b", "c"])[y]
    model = SoftmaxRegression(backend="numpy", random_state=0)
    model.partial_fit(X[labels != "c"], labels[labels != "c"], classes=["c", "a", "b"])
    assert model.classes_.tolist() == ["a", "b", "c"]
    with pytest.raises(ValueError, match="'d'"):
        model.partial_fit(X[:2], np.array(["a", "d"]))


def test_partial_fit_first_call_needs_two_classes():
    X, y = blobs(n=20, d=3, C=2, seed=12)
    with pytest.raises(ValueError, match="classes"):
        SoftmaxRegression(backend="numpy").partial_fit(X[y == 0], y[y == 0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_fit_epochs_equal_fit(backend):
    """k partial_fit calls on the same data == fit(max_epochs=k), same random_state."""
    X, y = blobs(n=200, d=5, C=3, seed=13, dtype=np.float32)
    # max_epochs too: the linear decay's horizon
    kw = dict(backend=backend, random_state=7, momentum=0.9, batch_size=32, max_epochs=3)
    a = SoftmaxRegression(**kw).fit(X, y)
    b = SoftmaxRegression(**kw)
    for _ in range(3):
        b.partial_fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert a.loss_curve_ == b.loss_curve_


# ----------------------------------------------------------------------- warm_start
@pytest.mark.parametrize("backend", BACKENDS)
def test_warm_start_continues_the_run(backend):
    """fit(2 epochs) twice with warm_start == one fit of 4 epochs: the parameters, the
    momentum buffers and the shuffling generator all carry over.  (At a constant rate: a
    decay schedule's horizon is max_epochs, 2 here and 4 there.)"""
    X, y = blobs(n=300, d=8, C=4, seed=14, dtype=np.float32)
    kw = dict(backend=backend, random_state=5, momentum=0.9, batch_size=16)
    kw.update(lr_schedule="constant", learning_rate=0.1)
    warm = SoftmaxRegression(max_epochs=2, warm_start=True, **kw).fit(X, y)
    first = warm.coef_.copy()
    warm.fit(X, y)
    assert warm.n_iter_ == 4 and len(warm.loss_curve_) == 4
    assert not np.array_equal(first, warm.coef_)
    once = SoftmaxRegression(max_epochs=4, **kw).fit(X, y)
    np.testing.assert_array_equal(warm.coef_, once.coef_)
    np.testing.assert_array_equal(warm.intercept_, once.intercept_)
    assert warm.loss_curve_ == once.loss_curve_


def test_without_warm_start_fit_starts_over():
    X, y = blobs(n=100, d=4, C=3, seed=15)
    model = SoftmaxRegression(backend="numpy", max_epochs=2, random_state=0).fit(X, y)
    c1 = model.coef_.copy()
    model.fit(X, y)
    assert model.n_iter_ == 2 and len(model.loss_curve_) == 2
    np.testing.assert_array_equal(model.coef_, c1)


def test_warm_start_rejects_new_labels_and_features():
    X, y = blobs(n=60, d=4, C=3, seed=16)
    model = SoftmaxRegression(backend="numpy", warm_start=True, max_epochs=1).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        model.fit(X[:, :3], y)
    with pytest.raises(ValueError, match="5"):
        model.fit(X, np.where(y == 2, 5, y))


# ------------------------------------------------------ weight decay, momentum, curve
@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_decay_shrinks_the_weights(backend):
    X, y = blobs(n=300, d=10, C=3, seed=17, dtype=np.float32)
    kw = dict(backend=backend, random_state=0, max_epochs=20, lr_schedule="constant")
    kw.update(learning_rate=0.1)
    norms = [
        np.linalg.norm(SoftmaxRegression(weight_decay=wd, **kw).fit(X, y).coef_)
        for wd in (0.0, 0.03, 0.1, 0.3)
    ]
    assert np.all(np.diff(norms) < 0), norms
    assert norms[-1] < 0.7 * norms[0], norms
    assert SoftmaxRegression(weight_decay=0.3, **kw).fit(X, y).score(X, y) > 0.95
    # the bias is not decayed: a strong decay leaves the weights near 0 but the bias free
    X2, y2 = blobs(n=300, d=10, C=2, seed=18, dtype=np.float32)
    y2[:240] = 0  # imbalanced: the bias carries the prior
    strong = SoftmaxRegression(
        backend=backend, random_state=0, weight_decay=50.0, learning_rate=0.02, batch_size=10,
        max_epochs=30, lr_schedule="constant",
    ).fit(X2, y2)  # fmt: skip
    assert np.abs(strong.coef_).max() < 0.05
    # p(class 1) = sigmoid(intercept) -> the class frequency 60/300 when W ~ 0
    p1 = 1 / (1 + np.exp(-strong.intercept_[0]))
    assert p1 == pytest.approx(np.mean(y2 == 1), abs=0.05)


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_batch_with_decay_converges_to_the_stationary_point(backend):
    """Full-batch gradient descent on the regularised objective (strongly convex in W):
    at the end the gradient computed here, a X^T (p - onehot)/n + wd W and the bias
    part, is ~0."""
    X, y = blobs(n=120, d=5, C=3, seed=20, sep=1.0)
    wd = 0.2
    model = SoftmaxRegression(
        backend=backend, batch_size=120, max_epochs=400, learning_rate=1.0, weight_decay=wd,
        momentum=0.5,
    ).fit(X, y)  # fmt: skip
    W, b = model.coef_, model.intercept_
    G = (softmax_rows(X @ W.T + b) - np.eye(3)[y]) / len(y)
    np.testing.assert_allclose(G.T @ X + wd * W, 0, atol=1e-8)
    np.testing.assert_allclose(G.sum(axis=0), 0, atol=1e-8)
    assert np.abs(W).max() > 0.05  # not the trivial solution


@pytest.mark.parametrize("backend", BACKENDS)
def test_momentum_changes_the_trajectory(backend):
    X, y = blobs(n=300, d=10, C=3, seed=19, dtype=np.float32, sep=1.0)
    kw = dict(backend=backend, random_state=0, max_epochs=3, learning_rate=0.01)
    plain = SoftmaxRegression(**kw).fit(X, y)
    heavy = SoftmaxRegression(momentum=0.9, **kw).fit(X, y)
    assert not np.allclose(plain.coef_, heavy.coef_)
    # with a small step, momentum 0.9 moves ~10x faster: the first epoch's loss is lower
    assert heavy.loss_curve_[0] < plain.loss_curve_[0]
    assert heavy.loss_curve_[-1] < plain.loss_curve_[-1]


# ------------------------------------------------------------- parameters and errors
@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("learning_rate", 0),
        ("learning_rate", -0.1),
        ("learning_rate", float("nan")),
        ("batch_size", 0),
        ("batch_size", 2.5),
        ("max_epochs", 0),
        ("weight_decay", -1.0),
        ("momentum", 1),
        ("momentum", -0.5),
        ("backend", "bogus"),
        ("learning_rate", float("inf")),
        ("weight_decay", float("inf")),
        ("tol", float("nan")),
        ("tol", -1e-3),
        ("shuffle", "no"),
        ("early_stopping", "no"),
        ("random_state", -1),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(param, value):
    X, y = blobs(n=20, d=3, C=2)
    model = SoftmaxRegression(**{param: value})
    with pytest.raises(ValueError, match=param):
        model.fit(X, y)
    with pytest.raises(ValueError, match=param):
        SoftmaxRegression(**{param: value}).partial_fit(X, y)
    assert not hasattr(model, "classes_")


def test_set_params_rejects_unknown_names():
    model = SoftmaxRegression()
    with pytest.raises(ValueError, match="bogus"):
        model.set_params(bogus=1)
    assert model.set_params(learning_rate=0.5) is model
    assert model.get_params()["learning_rate"] == 0.5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("row", [0, 13, 299])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_x_raises(bad, row, dtype, backend):
    """fit finds NaN/inf through its first epoch (no pass of its own): wherever the bad
    value is, it raises the same error and leaves the estimator as it was, unfitted or
    with its previous fit; warm_start and predict check up front."""
    X, y = blobs(n=300, d=5, C=3)
    X = X.astype(dtype)
    bad_X = X.copy()
    bad_X[row, 3] = bad
    fresh = SoftmaxRegression(backend=backend, max_epochs=3, random_state=0)
    with pytest.raises(ValueError, match="X contains NaN or infinity"):
        fresh.fit(bad_X, y)
    assert not hasattr(fresh, "coef_") and not hasattr(fresh, "classes_")
    with pytest.raises(NotFittedError):
        fresh.predict(X)

    fitted = SoftmaxRegression(backend=backend, max_epochs=2, random_state=0).fit(X, y)
    coef = fitted.coef_.copy()
    with pytest.raises(ValueError, match="NaN or infinity"):
        fitted.fit(bad_X, y)
    np.testing.assert_array_equal(fitted.coef_, coef)
    assert fitted.n_iter_ == 2
    with pytest.raises(ValueError, match="NaN or infinity"):
        fitted.predict(bad_X)
    fitted.set_params(warm_start=True)
    with pytest.raises(ValueError, match="NaN or infinity"):
        fitted.fit(bad_X, y)
    np.testing.assert_array_equal(fitted.coef_, coef)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_that_diverges_on_finite_x_is_not_called_bad_input(backend):
    """A first epoch whose loss overflows on finite X (a huge learning rate) is
    divergence, not bad input: fit returns, as it always did, with the non-finite loss
    in loss_curve_."""
    X, y = blobs(n=200, d=4, C=3)
    X = (X * 1e30).astype(np.float32)
    with np.errstate(all="ignore"):
        model = SoftmaxRegression(backend=backend, learning_rate=1e10, max_epochs=2).fit(X, y)
    assert not np.isfinite(model.loss_curve_[0])
    assert model.n_iter_ == 2


def test_deferred_finite_check_gives_the_weights_of_one_run():
    """Training the first epoch apart (for the finiteness check) changes nothing: the
    weights equal those of warm-started 1 + 2 epochs, bit for bit."""
    X, y = blobs(n=500, d=6, C=4)
    kw = dict(random_state=3, lr_schedule="constant")  # (a decay's horizon is max_epochs)
    one = SoftmaxRegression(max_epochs=3, **kw).fit(X, y)
    split = SoftmaxRegression(max_epochs=1, warm_start=True, **kw).fit(X, y)
    split.set_params(max_epochs=2).fit(X, y)
    np.testing.assert_array_equal(one.coef_, split.coef_)
    np.testing.assert_array_equal(one.intercept_, split.intercept_)
    assert one.loss_curve_ == split.loss_curve_


def test_single_class_y_raises():
    X, _ = blobs(n=10, d=2, C=2)
    with pytest.raises(ValueError, match="class"):
        SoftmaxRegression().fit(X, np.zeros(10))


def test_continuous_y_raises():
    X, _ = blobs(n=10, d=2, C=2)
    with pytest.raises(ValueError, match="continuous"):
        SoftmaxRegression().fit(X, np.linspace(0, 1, 10))


def test_predict_with_wrong_feature_count_raises():
    X, y = blobs(n=30, d=4, C=3)
    model = SoftmaxRegression(backend="numpy", max_epochs=1).fit(X, y)
    with pytest.raises(ValueError, match="4 features"):
        model.predict(X[:, :3])


@pytest.mark.parametrize(
    "method", ["predict", "predict_proba", "predict_log_proba", "decision_function"]
)
def test_unfitted_model_raises_not_fitted_error(method):
    model = SoftmaxRegression()
    X = np.zeros((2, 3))
    with pytest.raises(NotFittedError) as info:
        getattr(model, method)(X)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, AttributeError)
    assert fastsoftmax.NotFittedError is NotFittedError
    assert "not fitted" in str(info.value)
    try:
        from sklearn.exceptions import NotFittedError as SklearnNotFittedError
    except ImportError:  # pragma: no cover - depends on the environment
        return
    assert isinstance(info.value, SklearnNotFittedError)


def test_verbose_prints_one_line_per_epoch(capsys):
    X, y = blobs(n=80, d=4, C=3)
    model = SoftmaxRegression(backend="numpy", max_epochs=4, verbose=True, random_state=0)
    model.fit(X, y)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    for k, line in enumerate(lines):
        assert re.search(rf"\bepoch {k + 1}\b", line), line
        printed = float(re.search(r"loss ([0-9.eE+-]+)", line).group(1))
        assert printed == pytest.approx(model.loss_curve_[k], abs=1e-6)
    SoftmaxRegression(backend="numpy", max_epochs=2).fit(X, y)  # quiet by default
    assert capsys.readouterr().out == ""


def test_repr_shows_changed_parameters():
    assert repr(SoftmaxRegression()) == "SoftmaxRegression()"
    text = repr(SoftmaxRegression(learning_rate=0.2, backend="numpy"))
    assert "learning_rate=0.2" in text and "backend='numpy'" in text
    assert "batch_size" not in text


# ----------------------------------------------------------------------------- labels
@pytest.mark.parametrize(
    "dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]
)
def test_integer_labels_encode_as_np_unique_does(dtype):
    """fit's O(n) label encoding (a count per value) against np.unique: the same sorted
    classes in y's dtype and the same indices, at the ends of each integer range too."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    from fastsoftmax.estimator import _unique_inverse

    info = np.iinfo(dtype)
    # values near the ends of the range (where y - min could wrap) and spread over it
    # (where the sort fallback takes over)
    ends = st.one_of(
        st.integers(info.min, info.min + 40),
        st.integers(info.max - 40, info.max),
        st.integers(info.min, info.max),
    )

    @settings(max_examples=60, deadline=None)
    @given(arrays(dtype, st.integers(1, 60), elements=ends))
    def check(y):
        classes, idx = _unique_inverse(y)
        want_classes, want_idx = np.unique(y, return_inverse=True)
        assert classes.dtype == want_classes.dtype
        np.testing.assert_array_equal(classes, want_classes)
        np.testing.assert_array_equal(idx, want_idx)

    check()
