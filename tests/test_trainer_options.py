"""SoftmaxRegression's training options against oracles: a worked example by hand,
the NumPy step, scikit-learn's definitions (class_weight="balanced", averaged SGD as the
mean of the iterates, SGDClassifier's early-stopping rule) and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import MNIST_DIR

from fastsoftmax.estimator import SoftmaxRegression
from fastsoftmax.train.loop import average_coefficients, learning_rates

BACKENDS = ["numpy", "numba"]


def _blobs(n=300, d=6, C=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, (C, d))
    y = rng.integers(0, C, n)
    X = centers[y] + rng.normal(0, 1.0, (n, d))
    return X.astype(np.float64), y


# ------------------------------------------------------------ a worked example by hand
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_step_by_hand(backend):
    """One sample x = 1.4 of class 0, two classes, W = [[0.2], [-0.1]], b = [0.1, 0.05],
    lr 0.1, batch 1, no shuffling.  By hand:
      z = (0.2 * 1.4 + 0.1, -0.1 * 1.4 + 0.05) = (0.38, -0.09)
      p0 = 1 / (1 + exp(-0.47)) = 0.615384, loss = -log p0 = 0.485509
      dz = p - onehot = (-0.384616, 0.384616);  dW = dz x = (-0.538463, 0.538463)
      W' = W - 0.1 dW = (0.253846, -0.153846);  b' = b - 0.1 dz = (0.138462, 0.011538)
      z' = (0.253846 * 1.4 + 0.138462, -0.153846 * 1.4 + 0.011538) = (0.493846, -0.203846)
      p0' = 1 / (1 + exp(-0.697693)) = 0.667676"""
    model = SoftmaxRegression(
        learning_rate=0.1, lr_schedule="constant", batch_size=1, shuffle=False, backend=backend
    )
    model.partial_fit(
        np.array([[1.4]]), np.array([0]), classes=[0, 1],
        coef_init=[[0.2], [-0.1]], intercept_init=[0.1, 0.05],
    )  # fmt: skip
    assert model.loss_curve_[0] == pytest.approx(0.485509, abs=1e-6)
    W, b = model._state.W, model._state.b
    np.testing.assert_allclose(W[:, 0], [0.253846, -0.153846], atol=1e-6)
    np.testing.assert_allclose(b, [0.138462, 0.011538], atol=1e-6)
    # two classes: one logit, W[1] - W[0] and b[1] - b[0]
    np.testing.assert_allclose(model.coef_, [[-0.153846 - 0.253846]], atol=2e-6)
    np.testing.assert_allclose(model.intercept_, [0.011538 - 0.138462], atol=2e-6)
    np.testing.assert_allclose(model.predict_proba([[1.4]])[0], [0.667676, 1 - 0.667676], atol=1e-6)
    assert model.predict([[1.4]])[0] == 0


# ----------------------------------------------------------------- coef_init shapes
@pytest.mark.parametrize("backend", BACKENDS)
def test_coef_init_multinomial_and_single_logit_forms_agree(backend):
    """For two classes the single logit (1, d) and (1,) starts the same model as its
    multinomial split (-c/2, c/2): the same weights after training."""
    X, y = _blobs(C=2)
    c, i = np.linspace(-1, 1, X.shape[1])[None, :], np.array([0.3])
    kw = dict(backend=backend, random_state=0, max_epochs=2)
    single = SoftmaxRegression(**kw).fit(X, y, coef_init=c, intercept_init=i)
    split = SoftmaxRegression(**kw).fit(
        X, y, coef_init=np.vstack([-c / 2, c / 2]), intercept_init=[-0.15, 0.15]
    )
    np.testing.assert_allclose(single.coef_, split.coef_, rtol=1e-12)
    np.testing.assert_allclose(single.intercept_, split.intercept_, rtol=1e-12)
    assert single.coef_.shape == (1, X.shape[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_from_coef_init_equals_the_numpy_steps_from_it(backend):
    """fit(coef_init, intercept_init) continues from them: the same weights as the NumPy
    reference trainer started from them (and not as one started from zeros)."""
    X, y = _blobs()
    rng = np.random.default_rng(1)
    W0, b0 = rng.normal(size=(3, X.shape[1])), rng.normal(size=3)
    kw = dict(random_state=3, max_epochs=2)
    got = SoftmaxRegression(backend=backend, **kw).fit(X, y, coef_init=W0, intercept_init=b0)
    ref = SoftmaxRegression(backend="numpy", **kw).fit(X, y, coef_init=W0, intercept_init=b0)
    zeros = SoftmaxRegression(backend="numpy", **kw).fit(X, y)
    np.testing.assert_allclose(got.coef_, ref.coef_, rtol=1e-9, atol=1e-12)
    assert not np.allclose(got.coef_, zeros.coef_, atol=1e-3)


@pytest.mark.parametrize(
    ("coef", "intercept", "match"),
    [
        (np.zeros((2, 6)), None, r"coef_init must have shape \(3, 6\)"),
        (np.zeros((3, 5)), None, r"coef_init must have shape \(3, 6\)"),
        (None, np.zeros(2), r"intercept_init must have shape \(3,\)"),
        (np.full((3, 6), np.nan), None, "coef_init contains NaN"),
    ],
)
def test_bad_starting_weights_are_refused_and_leave_the_model_unfitted(coef, intercept, match):
    X, y = _blobs()
    model = SoftmaxRegression()
    with pytest.raises(ValueError, match=match):
        model.fit(X, y, coef_init=coef, intercept_init=intercept)
    assert not hasattr(model, "coef_")


def test_coef_init_only_on_the_first_partial_fit():
    X, y = _blobs()
    model = SoftmaxRegression().partial_fit(X, y)
    with pytest.raises(ValueError, match="only read by the first partial_fit"):
        model.partial_fit(X, y, coef_init=np.zeros((3, 6)))


# ------------------------------------------------------- sample and class weights
@pytest.mark.parametrize("backend", BACKENDS)
def test_unit_sample_weights_change_nothing(backend):
    X, y = _blobs()
    kw = dict(backend=backend, random_state=0, max_epochs=2)
    a = SoftmaxRegression(**kw).fit(X, y)
    b = SoftmaxRegression(**kw).fit(X, y, sample_weight=np.ones(len(y)))
    np.testing.assert_array_equal(a.coef_, b.coef_)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_weights_against_the_numpy_trainer(backend):
    """Weighted fits of both backends agree, and the weights matter."""
    X, y = _blobs()
    sw = np.random.default_rng(5).random(len(y)) * 2
    kw = dict(random_state=0, max_epochs=2)
    got = SoftmaxRegression(backend=backend, **kw).fit(X, y, sample_weight=sw)
    ref = SoftmaxRegression(backend="numpy", **kw).fit(X, y, sample_weight=sw)
    plain = SoftmaxRegression(backend="numpy", **kw).fit(X, y)
    np.testing.assert_allclose(got.coef_, ref.coef_, rtol=1e-9, atol=1e-12)
    assert not np.allclose(ref.coef_, plain.coef_, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_class_weight_is_a_sample_weight_per_label(backend):
    """class_weight {label: w} is sample_weight w[y]; "balanced" is scikit-learn's
    n / (C * count(label)) (sklearn.utils.class_weight.compute_class_weight)."""
    X, y = _blobs()
    y = np.where(y == 2, 1, y)  # unbalanced: classes 0 and 1
    labels = np.array(["a", "b"])[y]
    kw = dict(backend=backend, random_state=0, max_epochs=2)
    by_class = SoftmaxRegression(class_weight={"a": 3.0, "b": 0.5}, **kw).fit(X, labels)
    by_row = SoftmaxRegression(**kw).fit(X, labels, sample_weight=np.where(y == 0, 3.0, 0.5))
    np.testing.assert_array_equal(by_class.coef_, by_row.coef_)
    counts = np.bincount(y)
    expected = len(y) / (2 * counts)
    sklearn = pytest.importorskip("sklearn.utils.class_weight")
    np.testing.assert_allclose(
        sklearn.compute_class_weight("balanced", classes=np.array(["a", "b"]), y=labels),
        expected,
    )
    balanced = SoftmaxRegression(class_weight="balanced", **kw).fit(X, labels)
    by_row = SoftmaxRegression(**kw).fit(X, labels, sample_weight=expected[y])
    np.testing.assert_array_equal(balanced.coef_, by_row.coef_)


@pytest.mark.parametrize(
    ("sw", "match"),
    [
        (np.ones(5), r"sample_weight must have shape \(300,\)"),
        (-np.ones(300), r"sample_weight\[0\] = -1.0"),
        (np.zeros(300), "zero for every row"),
    ],
)
def test_bad_sample_weight(sw, match):
    X, y = _blobs()
    with pytest.raises(ValueError, match=match):
        SoftmaxRegression().fit(X, y, sample_weight=sw)


def test_bad_class_weight():
    X, y = _blobs()
    with pytest.raises(ValueError, match="class_weight has the label 7"):
        SoftmaxRegression(class_weight={7: 2.0}).fit(X, y)
    with pytest.raises(ValueError, match="class_weight must be None, 'balanced' or a dict"):
        SoftmaxRegression(class_weight="auto").fit(X, y)
    with pytest.raises(ValueError, match="'balanced' needs the labels of all the data"):
        SoftmaxRegression(class_weight="balanced").partial_fit(X, y)


# --------------------------------------------------------------------- schedules
def test_learning_rate_schedules_closed_forms():
    t = np.arange(10)
    kw = dict(power_t=0.5, steps_per_epoch=4, horizon=8)
    np.testing.assert_allclose(learning_rates("constant", 0.3, t, **kw), 0.3)
    np.testing.assert_allclose(learning_rates("invscaling", 0.3, t, **kw), 0.3 / np.sqrt(1 + t / 4))
    lin = learning_rates("linear", 0.3, t, **kw)
    np.testing.assert_allclose(lin[:8], 0.3 * (1 - t[:8] / 8))
    np.testing.assert_allclose(lin[8:], 0.3 / 8)  # past the horizon: its last rate
    cos = learning_rates("cosine", 0.3, t, **kw)
    np.testing.assert_allclose(cos[:8], 0.15 * (1 + np.cos(math.pi * t[:8] / 8)))
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        learning_rates("optimal", 0.3, t, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("schedule", ["invscaling", "linear", "cosine"])
def test_scheduled_fit_equals_constant_rate_epochs_stitched(backend, schedule):
    """Without shuffling and with one step per epoch (batch = n), the schedule's rate
    of epoch e is its rate at t = e: the fit equals epochs run one at a time at those
    constant rates."""
    X, y = _blobs(n=120)
    epochs = 4
    kw = dict(backend=backend, shuffle=False, batch_size=len(y), random_state=0)
    fit = SoftmaxRegression(lr_schedule=schedule, max_epochs=epochs, **kw).fit(X, y)
    rates = learning_rates(
        schedule, 0.5, np.arange(epochs), power_t=0.5, steps_per_epoch=1, horizon=epochs
    )
    stitched = SoftmaxRegression(lr_schedule="constant", **kw)
    for rate in rates:
        stitched.set_params(learning_rate=float(rate))
        stitched.partial_fit(X, y)
    np.testing.assert_allclose(fit.coef_, stitched.coef_, rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------- averaging
def test_average_coefficients_form_the_mean():
    coef = average_coefficients(np.arange(6), 2)
    np.testing.assert_allclose(coef, [0, 0, 1, 1 / 2, 1 / 3, 1 / 4])
    assert average_coefficients(np.arange(3), None) is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("average", "start"), [(True, 0), (250, 2)])
def test_averaged_model_is_the_mean_of_the_iterates(backend, average, start):
    """average=True: coef_ is the mean of the iterates of every step; average=n: of
    those after n samples were seen (scikit-learn's SGDClassifier semantics): with batch
    100, after step ceil(250 / 100) - 1 = 2."""
    X, y = _blobs(n=300)
    kw = dict(backend=backend, random_state=0, batch_size=100, shuffle=False)
    model = SoftmaxRegression(average=average, max_epochs=2, **kw).fit(X, y)
    # the iterates, one step at a time (an epoch of one batch = one step)
    iterates = []
    W = np.zeros((3, X.shape[1]))
    b = np.zeros(3)
    step = SoftmaxRegression(lr_schedule="constant", max_epochs=1, **kw)
    for e in range(2):
        rates = learning_rates("linear", 0.5, 3 * e + np.arange(3), power_t=0.5,
                               steps_per_epoch=3, horizon=6)  # fmt: skip
        for s in range(3):
            step.set_params(learning_rate=float(rates[s]), batch_size=100)
            rows = slice(100 * s, 100 * (s + 1))
            step.fit(X[rows], y[rows], coef_init=W, intercept_init=b)
            W, b = step._state.W.copy(), step._state.b.copy()
            iterates.append((W, b))
    np.testing.assert_allclose(model._state.W, iterates[-1][0], rtol=1e-9, atol=1e-12)
    kept = iterates[start:]
    np.testing.assert_allclose(
        model.coef_, np.mean([w for w, _ in kept], axis=0), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(
        model.intercept_, np.mean([v for _, v in kept], axis=0), rtol=1e-9, atol=1e-12
    )


# ---------------------------------------------------------------- early stopping
def test_tol_stops_after_n_iter_no_change_epochs():
    """SGDClassifier's rule: an epoch improves when its loss is below the best so far
    minus tol; n_iter_no_change epochs in a row that do not, stop.  With tol larger
    than any loss, the first epoch sets the best and the next 3 stop it."""
    X, y = _blobs()
    model = SoftmaxRegression(tol=1e6, n_iter_no_change=3, max_epochs=50).fit(X, y)
    assert model.n_iter_ == 4
    model = SoftmaxRegression(tol=None, max_epochs=6).fit(X, y)
    assert model.n_iter_ == 6


def test_tol_follows_the_loss_curve():
    """The stopping epoch is the one the rule gives on the model's own loss curve."""
    X, y = _blobs()
    tol, patience = 1e-3, 2
    model = SoftmaxRegression(tol=tol, n_iter_no_change=patience, max_epochs=60).fit(X, y)
    best, stale, stop = None, 0, None
    for e, loss in enumerate(model.loss_curve_):
        improved = best is None or loss <= best - tol
        best = loss if best is None else min(best, loss)
        stale = 0 if improved else stale + 1
        if stale >= patience:
            stop = e + 1
            break
    assert stop is not None and model.n_iter_ == stop < 60


def test_early_stopping_scores_a_stratified_held_out_part():
    X, y = _blobs(n=400)
    model = SoftmaxRegression(
        early_stopping=True, validation_fraction=0.25, tol=1e-9, n_iter_no_change=2,
        max_epochs=30, random_state=0,
    ).fit(X, y)  # fmt: skip
    scores = model.validation_scores_
    assert len(scores) == model.n_iter_ and all(0.0 <= s <= 1.0 for s in scores)
    # it trained on 3/4 of the rows: an epoch's steps cover 300 rows, not 400
    assert model.n_iter_ < 30 or max(scores) - scores[-1] < 1.0
    best = np.maximum.accumulate(scores)
    if model.n_iter_ < 30:  # stopped: the last 2 epochs did not beat the best before them
        assert scores[-1] < best[-3] + 1e-9 and scores[-2] < best[-3] + 1e-9


# ----------------------------------------------------------------- the defaults
@pytest.fixture(scope="module")
def mnist_full():
    from fastsoftmax import data

    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"the full MNIST is not at {MNIST_DIR}")
    return (
        *data.load("mnist", "train", data_dir=MNIST_DIR, download=False),
        *data.load("mnist", "test", data_dir=MNIST_DIR, download=False),
    )


def test_defaults_reach_92_5_percent_on_full_mnist(mnist_full):
    Xtr, ytr, Xte, yte = mnist_full
    accs = [SoftmaxRegression(random_state=s).fit(Xtr, ytr).score(Xte, yte) for s in (0, 1)]
    assert min(accs) >= 0.925, accs
