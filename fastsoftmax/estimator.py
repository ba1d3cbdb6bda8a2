"""``SoftmaxRegression``: multinomial logistic regression trained by minibatch SGD on the
fused kernels, with scikit-learn's estimator API (scikit-learn itself is not needed).

Model and objective (the UFLDL softmax-regression notes)::

    z = X W^T + b,   p = softmax(z),
    J(W, b) = mean_i -log p_{i, y_i} + (weight_decay / 2) ||W||^2     (b not decayed)

``coef_``/``intercept_`` follow scikit-learn's ``LogisticRegression``: (C, d) and (C,)
for C > 2 classes; for two classes the model is still a 2-way softmax, reported as the
equivalent single logit: ``coef_ = W[1] - W[0]`` (1, d), ``decision_function`` (n,).

uint8 inputs are read as 8-bit intensities: the model sees ``X / 255`` (the scale is
fused into the kernels, so MNIST moves 4x fewer bytes than as float32).  Other integer
and boolean inputs are converted to float64; float32 and float64 inputs train in their
own precision.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ._api import log_softmax, softmax
from ._threads import blas_limit
from .train.loop import (
    LR_SCHEDULES,
    TrainState,
    resolve_step_backend,
    train_epochs,
    x_scale_for,
)
from .train.model_file import ModelFileError, read_model_file, write_model_file


class NotFittedError(ValueError, AttributeError):
    """The estimator is used before ``fit``.  Where scikit-learn is installed the error
    raised is also an instance of ``sklearn.exceptions.NotFittedError``."""


@functools.cache
def _not_fitted_error() -> type[NotFittedError]:
    try:
        from sklearn.exceptions import NotFittedError as SklearnNotFittedError
    except ImportError:
        return NotFittedError

    class _NotFitted(NotFittedError, SklearnNotFittedError):
        pass

    _NotFitted.__name__ = _NotFitted.__qualname__ = "NotFittedError"
    return _NotFitted


def _data_conversion_warning() -> type[Warning]:
    try:  # scikit-learn's class where it is installed, so its filters apply
        from sklearn.exceptions import DataConversionWarning

        return DataConversionWarning
    except ImportError:
        return UserWarning


def _is_sparse(X) -> bool:
    return hasattr(X, "tocsr") or type(X).__module__.startswith("scipy.sparse")


def _as_2d_features(X, name: str = "X", check_finite: bool = True) -> np.ndarray:
    """X as a C-contiguous 2-D array of float32/float64/uint8 (validated; finite unless
    check_finite is False: the caller then checks it itself)."""
    if _is_sparse(X):
        raise TypeError(
            f"{name} is a sparse matrix, and sparse input is not supported: "
            f"pass a dense array ({name}.toarray())"
        )
    arr = np.asarray(X)
    if arr.dtype.kind == "O":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must hold numbers; could not convert it: {err}") from err
    if arr.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} has dtype {arr.dtype}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(
            f"Expected 2D array for {name}, got {arr.ndim}D array instead (shape "
            f"{arr.shape}). Reshape your data: X.reshape(1, -1) for a single sample, "
            f"X.reshape(-1, 1) for a single feature"
        )
    if arr.shape[0] < 1:
        raise ValueError(
            f"Found array with 0 sample(s) (shape={arr.shape}) while a minimum of 1 is required."
        )
    if arr.shape[1] < 1:
        raise ValueError(
            f"Found array with 0 feature(s) (shape={arr.shape}) while a minimum of 1 is required."
        )
    if arr.dtype not in (np.float32, np.float64, np.uint8):
        arr = arr.astype(np.float64)
    arr = np.ascontiguousarray(arr)
    if check_finite and arr.dtype.kind == "f" and not _all_finite(arr):
        raise non_finite_error(name)
    return arr


def non_finite_error(name: str) -> ValueError:
    return ValueError(f"Input {name} contains NaN or infinity; every value must be finite")


def check_discrete_labels(labels: np.ndarray) -> None:
    """A classifier's labels: floating-point ones must be whole numbers (what
    scikit-learn calls a continuous target is an error)."""
    if labels.dtype.kind == "f" and np.any(labels != np.round(labels)):
        raise ValueError(
            "Unknown label type: continuous. SoftmaxRegression is a classifier: y must "
            "hold class labels (integers or strings), not continuous values"
        )


def _all_finite(arr: np.ndarray) -> bool:
    if arr.size >= 1 << 18:
        try:
            from ._numba import all_finite
        except ImportError:
            pass
        else:
            return all_finite(arr)
    # in blocks of rows: no temporary the size of X (whose first touch alone costs more
    # than an epoch of the fused step on MNIST)
    rows = max(1, (1 << 16) // max(arr.shape[1], 1))
    return all(np.isfinite(arr[i : i + rows]).all() for i in range(0, arr.shape[0], rows))


def _as_labels(y, n: int) -> np.ndarray:
    if y is None:
        raise ValueError("SoftmaxRegression requires y to be passed, but the target y is None")
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        warnings.warn(
            "A column-vector y was passed when a 1d array was expected. Please change "
            "the shape of y to (n_samples,), for example using ravel().",
            _data_conversion_warning(),
            stacklevel=3,
        )
        arr = arr.ravel()
    if arr.ndim != 1:
        raise ValueError(f"y must be 1-D (n_samples,), got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"X and y have different numbers of samples: {n} and {arr.shape[0]}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError("Input y contains NaN or infinity")
        check_discrete_labels(arr)
    if arr.dtype.kind == "O":
        kinds = {type(v) for v in arr.tolist()}
        if len(kinds) > 1 and not all(issubclass(k, numbers.Number) for k in kinds):
            raise ValueError(f"y mixes label types {sorted(k.__name__ for k in kinds)}")
    return arr


def _unique_inverse(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(y, return_inverse=True), in O(n) for integer labels of a bounded range
    (a count per value instead of a sort: 60000 labels of 10 classes, 0.54 against 2.4 ms)."""
    if y.dtype.kind in "iu" and y.ndim == 1 and y.size:
        lo, hi = y.min(), y.max()
        span = int(hi) - int(lo)
        if span <= max(1 << 16, 4 * y.size):
            # offsets in [0, span]: unsigned y - lo cannot wrap; signed in int64 (span bounded)
            off = y - lo if y.dtype.kind == "u" else y.astype(np.int64) - np.int64(lo)
            off = off.astype(np.intp, copy=False)
            present = np.bincount(off, minlength=span + 1) > 0
            rank = np.cumsum(present) - 1
            wide = np.uint64 if y.dtype.kind == "u" else np.int64
            classes = (np.flatnonzero(present).astype(wide) + wide(lo)).astype(y.dtype)
            return classes, rank[off]
    return np.unique(y, return_inverse=True)


def encode_labels(classes: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of y's labels in the sorted `classes`; ValueError naming the first label
    that is not one of them."""
    idx = np.clip(np.searchsorted(classes, y), 0, len(classes) - 1)
    bad = classes[idx] != y
    if np.any(bad):
        first = int(np.argmax(bad))
        raise ValueError(
            f"y[{first}] = {y[first]!r} is not one of the classes {classes.tolist()!r}"
        )
    return idx.astype(np.int64)


def _as_sample_weight(sample_weight, n: int) -> np.ndarray | None:
    """sample_weight as float64 (n,): None stays None, a number is every row's weight.
    Weights must be finite and >= 0, and not all 0."""
    if sample_weight is None:
        return None
    sw = np.asarray(sample_weight, dtype=np.float64)
    if sw.ndim == 0:
        sw = np.full(n, float(sw))
    if sw.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},) (one per row of X), got {sw.shape}")
    if not np.isfinite(sw).all() or (sw < 0).any():
        bad = int(np.flatnonzero(~(np.isfinite(sw) & (sw >= 0)))[0])
        raise ValueError(
            f"sample_weight[{bad}] = {float(sw[bad])}: weights must be finite and >= 0"
        )
    if not sw.any():
        raise ValueError("sample_weight is zero for every row: nothing to learn from")
    return sw


def _stratified_split(
    y_idx: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): about `fraction` of each class's rows held out (at
    least one of any class with two or more rows), both sorted."""
    held = []
    for c in np.unique(y_idx):
        rows = np.flatnonzero(y_idx == c)
        k = round(fraction * len(rows))
        k = min(max(k, 1 if len(rows) > 1 else 0), len(rows) - 1)
        held.append(rng.choice(rows, size=k, replace=False))
    val = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    if len(val) == 0:
        raise ValueError(
            f"early_stopping: validation_fraction={fraction} of {len(y_idx)} rows holds "
            "out no row; use more data or a larger fraction"
        )
    keep = np.ones(len(y_idx), bool)
    keep[val] = False
    return np.flatnonzero(keep), val


def _initial_coef(coef_init, C: int, d: int) -> np.ndarray:
    """W (C, d) from coef_init: (C, d), or for two classes the single logit's (1, d) or
    (d,), split as W = [-c/2, c/2] (the form training from zeros keeps: W[0] = -W[1])."""
    c = np.asarray(coef_init, dtype=np.float64)
    if C == 2 and c.shape in ((1, d), (d,)):
        c = c.reshape(1, d)
        return np.concatenate([-0.5 * c, 0.5 * c])
    if c.shape != (C, d):
        single = f" or (1, {d})" if C == 2 else ""
        raise ValueError(
            f"coef_init must have shape ({C}, {d}){single} for {C} classes and {d} "
            f"features, got {c.shape}"
        )
    if not np.isfinite(c).all():
        raise ValueError("coef_init contains NaN or infinity")
    return c


def _initial_intercept(intercept_init, C: int) -> np.ndarray:
    """b (C,) from intercept_init: (C,), or for two classes the single logit's (1,) or a
    number, split as [-i/2, i/2]."""
    i = np.asarray(intercept_init, dtype=np.float64)
    if C == 2 and i.shape in ((), (1,)):
        v = float(i.reshape(()))
        i = np.array([-0.5 * v, 0.5 * v])
    if i.shape != (C,):
        single = " or (1,)" if C == 2 else ""
        raise ValueError(f"intercept_init must have shape ({C},){single}, got {i.shape}")
    if not np.isfinite(i).all():
        raise ValueError("intercept_init contains NaN or infinity")
    return i


class SoftmaxRegression:
    """Multinomial logistic (softmax) regression trained by minibatch SGD.

    Parameters
    ----------
    learning_rate : the initial step size of SGD.
    lr_schedule : how the step size changes with the step count t (see
        ``fastsoftmax.train.loop.learning_rates``): "constant"; "invscaling",
        ``lr / (1 + epochs done) ** power_t``; "linear" or "cosine" decay to 0 over the
        ``max_epochs`` epochs of ``fit``.
    power_t : the exponent of "invscaling".
    batch_size : rows per minibatch (the last one of an epoch may be smaller).
    max_epochs : passes over the data made by ``fit`` (fewer if early stopping stops it).
    weight_decay : L2 coefficient lambda in ``lambda/2 ||W||^2`` (the bias is not decayed).
    momentum : heavy-ball momentum mu (PyTorch's form: ``v = mu v + g; W -= lr v``).
    average : averaged SGD, as in scikit-learn's SGDClassifier: False; True (the model
        is the mean of the iterates of every step); or an int n (the mean of those
        from step ceil(n / batch_size) on, counting from 1: after n samples where every
        batch is full; an epoch's short last batch is counted as a full one).
    tol, n_iter_no_change : early stopping: when tol is not None, ``fit`` stops after
        ``n_iter_no_change`` epochs in a row that did not improve the best score by tol
        (the training objective, or the validation accuracy with ``early_stopping``).
    early_stopping, validation_fraction : hold out this (stratified) fraction of the
        training data and score on it.
    class_weight : None, a dict {label: weight}, or "balanced" (n / (C * count(label))):
        each row's loss and gradient are multiplied by its class's weight.
    shuffle : draw a new row order every epoch.
    backend : "auto" (numba if installed, else numpy), "numba" or "numpy".
    random_state : seed (int), ``np.random.Generator`` or None, for the shuffling.
    verbose : print the objective after every epoch.
    warm_start : ``fit`` continues from the previous solution instead of zeros.

    The objective of a step on the minibatch B is ``sum_B s_i loss_i / |B|`` (plus the
    decay term), s_i = sample_weight_i * class_weight[y_i] (1 without them).

    Attributes (after fitting)
    --------------------------
    classes_ : (C,) the sorted labels.  coef_ : (C, d), or (1, d) for two classes.
    intercept_ : (C,) or (1,).  n_features_in_ : d.  n_iter_ : epochs trained in total.
    loss_curve_ : the objective of every epoch (batch-size-weighted mean over its steps).
    validation_scores_ : the accuracy on the held-out data after every epoch (with
    ``early_stopping``), else None.

    Same data, random_state, backend and thread count give identical weights.
    """

    def __init__(
        self,
        *,
        learning_rate: float = 0.5,
        lr_schedule: str = "linear",
        power_t: float = 0.5,
        batch_size: int = 64,
        max_epochs: int = 20,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        average: bool | int = False,
        tol: float | None = None,
        n_iter_no_change: int = 5,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        class_weight: dict | str | None = None,
        shuffle: bool = True,
        backend: str = "auto",
        random_state: Any = None,
        verbose: bool = False,
        warm_start: bool = False,
    ) -> None:
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.power_t = power_t
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.average = average
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.class_weight = class_weight
        self.shuffle = shuffle
        self.backend = backend
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start

    # ---------------------------------------------------------------- scikit-learn API
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values() if p.kind == p.KEYWORD_ONLY)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> SoftmaxRegression:
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(
                    f"Invalid parameter {key!r} for estimator {type(self).__name__}; "
                    f"valid parameters are {valid}"
                )
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        defaults = {
            p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()
        }
        changed = [
            f"{k}={v!r}"
            for k, v in self.get_params().items()
            if not (v is defaults.get(k) or (type(v) is type(defaults.get(k)) and v == defaults[k]))
        ]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags

        return Tags(
            estimator_type="classifier",
            target_tags=TargetTags(required=True),
            classifier_tags=ClassifierTags(multi_class=True),
            input_tags=InputTags(),
        )

    # ---------------------------------------------------------------- validation
    def _validate_params(self) -> None:
        def positive(name, integer=False):
            v = getattr(self, name)
            kind = numbers.Integral if integer else numbers.Real
            if isinstance(v, bool) or not isinstance(v, kind) or not 0 < v < math.inf:
                what = "a positive integer" if integer else "a positive finite number"
                raise ValueError(f"{name} must be {what}, got {v!r}")

        positive("learning_rate")
        positive("batch_size", integer=True)
        positive("max_epochs", integer=True)
        for name, upper in (("weight_decay", None), ("momentum", 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
            if upper is not None and not v < upper:
                raise ValueError(f"{name} must be < {upper}, got {v!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.lr_schedule == "invscaling":
            positive("power_t")
        avg = self.average
        if not isinstance(avg, (bool, np.bool_)) and not (
            isinstance(avg, numbers.Integral) and avg >= 0
        ):
            raise ValueError(f"average must be a bool or an int >= 0, got {avg!r}")
        if self.tol is not None:
            tol = self.tol
            if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol >= 0:
                raise ValueError(f"tol must be None or a number >= 0, got {tol!r}")
            positive("n_iter_no_change", integer=True)
        vf = self.validation_fraction
        if self.early_stopping and not (isinstance(vf, numbers.Real) and 0.0 < vf < 1.0):
            raise ValueError(f"validation_fraction must be in (0, 1), got {vf!r}")
        for name in ("shuffle", "early_stopping"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        cw = self.class_weight
        if not (cw is None or cw == "balanced" or isinstance(cw, dict)):
            raise ValueError(f"class_weight must be None, 'balanced' or a dict, got {cw!r}")
        resolve_step_backend(self.backend)

    def _rng(self) -> np.random.Generator:
        rs = self.random_state
        if isinstance(rs, np.random.RandomState):
            return np.random.default_rng(rs.randint(2**32))
        if rs is None or isinstance(rs, np.random.Generator):
            return np.random.default_rng(rs)
        if isinstance(rs, numbers.Integral) and rs >= 0:
            return np.random.default_rng(rs)
        raise ValueError(f"random_state must be None, an int >= 0 or a Generator, got {rs!r}")

    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise _not_fitted_error()(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator."
            )

    def _feature_count_error(self, X: np.ndarray):
        raise ValueError(
            f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
            f"{self.n_features_in_} features as input."
        )

    def _check_X_predict(self, X) -> np.ndarray:
        self._check_fitted()
        arr = _as_2d_features(X)
        if arr.shape[1] != self.n_features_in_:
            self._feature_count_error(arr)
        return arr

    @staticmethod
    def _param_dtype(X: np.ndarray) -> np.dtype:
        return np.dtype(np.float64 if X.dtype == np.float64 else np.float32)

    # ---------------------------------------------------------------- training
    def fit(
        self, X, y, coef_init=None, intercept_init=None, sample_weight=None
    ) -> SoftmaxRegression:
        """Train for ``max_epochs`` epochs (fewer if early stopping stops it).

        X: (n, d); y: (n,) labels of any kind.  coef_init, intercept_init: the starting
        weights, (C, d) and (C,), or for two classes also the single logit's (1, d) and
        (1,) (as ``coef_``, ``intercept_`` report them); they override ``warm_start``.
        sample_weight: (n,) non-negative weights of the rows, or a number.
        A fit that raises leaves the estimator as it was."""
        self._validate_params()
        fresh = coef_init is not None or intercept_init is not None
        warm = self.warm_start and hasattr(self, "_state") and not fresh
        # A fresh fit checks X for NaN/inf through its first epoch instead of a pass of
        # its own (5 ms, memory speed, for 60000 x 784 float32: 6% of a 3-epoch fit):
        # any non-finite x makes its row's logits, and so that step's loss, NaN or inf
        # (inf * w is +-inf, inf * 0 and inf - inf are NaN), and the first epoch visits
        # every row.  Only a non-finite first epoch pays for the check, which then tells
        # bad input (raise, leaving the estimator as it was) from divergence (go on).
        deferred = not warm and self.max_epochs >= 1 and not self.early_stopping
        X = _as_2d_features(X, check_finite=not deferred)
        y = _as_labels(y, X.shape[0])
        sw = _as_sample_weight(sample_weight, X.shape[0])
        before = dict(self.__dict__)
        try:
            if warm:
                y_idx = self._begin(X, y, None, "")
                self._state.order = None  # a new fit starts a new epoch
            else:
                classes, y_idx = _unique_inverse(y)
                if len(classes) < 2:
                    raise ValueError(
                        f"SoftmaxRegression needs samples of at least 2 classes; y holds "
                        f"only one class: {classes[0]!r}"
                    )
                self._init(classes, X, coef_init, intercept_init)
                y_idx = y_idx.astype(np.int64)
            self._epochs(X, y_idx, sw, self._state.epoch + self.max_epochs, deferred=deferred)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise
        return self

    def partial_fit(
        self, X, y, classes=None, sample_weight=None, coef_init=None, intercept_init=None
    ) -> SoftmaxRegression:
        """One epoch of SGD over (X, y).  The first call fixes the classes: `classes`
        (all labels that will ever occur) or, if None, those present in y, and may give
        the starting weights (coef_init, intercept_init: as in ``fit``).
        sample_weight: (n,) non-negative weights of the rows, or a number."""
        self._validate_params()
        X = _as_2d_features(X)
        y = _as_labels(y, X.shape[0])
        sw = _as_sample_weight(sample_weight, X.shape[0])
        fitted = hasattr(self, "_state")
        if fitted and classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(
                f"classes={classes!r} differs from the classes of the first partial_fit "
                f"call: {self.classes_!r}"
            )
        if fitted and (coef_init is not None or intercept_init is not None):
            raise ValueError(
                "coef_init and intercept_init are only read by the first partial_fit call "
                "(the model is already fitted: use fit to start again)"
            )
        if self.class_weight == "balanced":
            raise ValueError(
                "class_weight='balanced' needs the labels of all the data, which "
                "partial_fit does not see: pass a dict of class weights"
            )
        before = dict(self.__dict__)
        try:
            y_idx = self._begin(
                X, y, classes,
                "partial_fit needs at least 2 classes: pass classes= on the first call",
                coef_init, intercept_init,
            )  # fmt: skip
            self._state.order = None
            self._train(X, y_idx, self._state.epoch + 1, self._row_weights(y_idx, sw))
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise
        return self

    def train_until(
        self,
        X,
        y,
        epochs: int,
        *,
        classes=None,
        on_progress=None,
        on_epoch_end=None,
        should_stop=None,
    ) -> bool:
        """Continue training (from zeros when unfitted) until ``n_iter_ == epochs``,
        resuming mid-epoch where a stopped run left off, or until early stopping (tol,
        as in ``fit``; the count of epochs without improvement starts again on every
        call).  The CLI's loop, usable from code.

        X: (n, d); y: (n,).  `classes` fixes the labels on the first call (default: those
        in y).  Hooks: ``on_progress(state, steps_per_epoch)`` after every kernel call,
        ``on_epoch_end(state, seconds)`` after every epoch, ``should_stop() -> bool``
        polled between kernel calls.  Returns False when should_stop() stopped it (the
        model is then consistent and can be saved with ``fastsoftmax.save_model``;
        the continuation gives the same weights as an uninterrupted run).
        """
        self._validate_params()
        X = _as_2d_features(X)
        y = _as_labels(y, X.shape[0])
        y_idx = self._begin(X, y, classes, "training needs at least 2 classes")
        if self._state.order is not None and len(self._state.order) != X.shape[0]:
            raise ValueError(
                f"the stopped epoch ran over {len(self._state.order)} rows, but X has "
                f"{X.shape[0]}: resume with the same training data"
            )
        hooks = {"on_progress": on_progress, "on_epoch_end": on_epoch_end}
        return self._epochs(X, y_idx, None, int(epochs), should_stop=should_stop, **hooks)

    def _epochs(self, X, y_idx, sw, until_epoch, *, deferred=False, **hooks) -> bool:
        """Train until epoch `until_epoch`, or until early stopping stops it (tol):
        with early_stopping on a held-out stratified part of (X, y_idx), scored after
        every epoch.  deferred: X has not been checked for NaN/inf yet (see fit).
        Returns False when hooks' should_stop() stopped it."""
        rows = self._row_weights(y_idx, sw)
        held_out = None
        self.validation_scores_ = None
        if self.early_stopping:
            train, val = _stratified_split(y_idx, self.validation_fraction, self._state.rng)
            held_out = (X[val], y_idx[val])
            X, y_idx = X[train], y_idx[train]
            rows = None if rows is None else rows[train]
            self.validation_scores_ = []
        if self.tol is None and held_out is None and not deferred:
            return self._train(X, y_idx, until_epoch, rows, **hooks)
        tol = self.tol
        best = None
        stale = 0
        while self._state.epoch < until_epoch:
            if deferred:
                with np.errstate(invalid="ignore"):  # NaN from bad input is reported below
                    done = self._train(X, y_idx, self._state.epoch + 1, rows, **hooks)
                if not np.isfinite(self._state.loss_curve[-1]) and not _all_finite(X):
                    raise non_finite_error("X")
                deferred = False
            else:
                epoch_end = until_epoch if tol is None and held_out is None else None
                done = self._train(X, y_idx, epoch_end or self._state.epoch + 1, rows, **hooks)
            if not done:
                return False
            if held_out is not None:
                score = float(np.mean(np.argmax(self._logits(held_out[0]), 1) == held_out[1]))
                self.validation_scores_.append(score)
                improved = best is None or score >= best + tol if tol is not None else True
                best = score if best is None else max(best, score)
            else:
                loss = self._state.loss_curve[-1]
                improved = best is None or (tol is not None and loss <= best - tol)
                best = loss if best is None else min(best, loss)
            stale = 0 if improved else stale + 1
            if tol is not None and stale >= self.n_iter_no_change:
                break
        return True

    def _row_weights(self, y_idx: np.ndarray, sw: np.ndarray | None) -> np.ndarray | None:
        """Per-row multipliers of the loss: sample_weight times class_weight[y], float64
        (n,); None when both are absent."""
        cw = self.class_weight
        if cw is None:
            return sw
        C = len(self.classes_)
        if cw == "balanced":
            counts = np.bincount(y_idx, minlength=C).astype(np.float64)
            if sw is not None:
                counts = np.bincount(y_idx, weights=sw, minlength=C)
            with np.errstate(divide="ignore"):
                per_class = np.where(counts > 0, counts.sum() / (C * counts), 1.0)
        else:
            per_class = np.ones(C)
            labels = self.classes_.tolist()
            for label, weight in cw.items():
                if label not in labels:
                    raise ValueError(
                        f"class_weight has the label {label!r}, which is not one of the "
                        f"classes {labels!r}"
                    )
                if not (isinstance(weight, numbers.Real) and np.isfinite(weight) and weight >= 0):
                    raise ValueError(
                        f"class_weight[{label!r}] must be a finite number >= 0, got {weight!r}"
                    )
                per_class[labels.index(label)] = float(weight)
        rows = per_class[y_idx]
        return rows if sw is None else rows * sw

    def _average_start(self) -> int | None:
        """The step from which the model is the mean of the iterates (None: never)."""
        avg = self.average
        if avg is False or avg is None or (not isinstance(avg, (bool, np.bool_)) and avg == 0):
            return None
        if avg is True or avg == 1:
            return 0
        return max(0, -(-int(avg) // int(self.batch_size)) - 1)

    def _begin(
        self, X: np.ndarray, y: np.ndarray, classes, too_few: str, coef_init=None,
        intercept_init=None,
    ) -> np.ndarray:  # fmt: skip
        """y as class indices (n,) int64.  On the first call this fixes the classes
        (`classes`, or those in y) and starts from zero weights (or the given ones);
        later calls check X's width.  A label outside the classes raises before anything
        is changed."""
        if hasattr(self, "_state"):
            if X.shape[1] != self.n_features_in_:
                self._feature_count_error(X)
            return self._encode(y)
        labels = np.unique(y) if classes is None else np.unique(np.asarray(classes))
        if len(labels) < 2:
            raise ValueError(too_few)
        y_idx = encode_labels(labels, y)  # before _init: a bad label leaves it unfitted
        self._init(labels, X, coef_init, intercept_init)
        return y_idx

    def _init(self, classes: np.ndarray, X: np.ndarray, coef_init=None, intercept_init=None):
        C, d = len(classes), X.shape[1]
        dtype = self._param_dtype(X)
        W = _initial_coef(coef_init, C, d) if coef_init is not None else None
        b = _initial_intercept(intercept_init, C) if intercept_init is not None else None
        self.classes_ = classes
        self.n_features_in_ = d
        self._state = TrainState.zeros(C, d, dtype, self._rng())
        if W is not None:
            self._state.W[...] = W
        if b is not None:
            self._state.b[...] = b
        self._publish()

    def _encode(self, y: np.ndarray) -> np.ndarray:
        return encode_labels(self.classes_, y)

    def _train(self, X, y_idx, until_epoch, rows=None, **hooks) -> bool:
        state = self._state
        dtype = state.W.dtype
        if X.dtype != np.uint8 and X.dtype != dtype:
            X = X.astype(dtype)
        verbose = self.verbose

        def report(st: TrainState, seconds: float) -> None:
            self._publish()  # the hooks see this epoch's model
            if verbose:
                print(f"epoch {st.epoch}: loss {st.loss_curve[-1]:.6f} ({seconds:.3f} s)")
            if hooks.get("on_epoch_end") is not None:
                hooks["on_epoch_end"](st, seconds)

        done = train_epochs(
            state,
            X,
            y_idx,
            until_epoch=until_epoch,
            batch_size=int(self.batch_size),
            learning_rate=float(self.learning_rate),
            momentum=float(self.momentum),
            weight_decay=float(self.weight_decay),
            shuffle=bool(self.shuffle),
            backend=resolve_step_backend(self.backend),
            lr_schedule=self.lr_schedule,
            power_t=float(self.power_t),
            horizon_epochs=int(self.max_epochs),
            sample_weight=rows,
            average_start=self._average_start(),
            on_progress=hooks.get("on_progress"),
            on_epoch_end=report,
            should_stop=hooks.get("should_stop"),
        )
        self._publish()
        return done

    @property
    def training_state_(self) -> TrainState:
        """The state training continues from: parameters, momentum buffers, epoch and
        step, the current epoch's row order, the shuffling generator (see
        ``fastsoftmax.train.TrainState``).  Read it; changing it changes the model."""
        self._check_fitted()
        return self._state

    def _weights(self) -> tuple[np.ndarray, np.ndarray]:
        """The model's (W, b): the mean of the iterates once averaging has begun."""
        st = self._state
        start = self._average_start()
        if start is not None and st.Wa is not None and st.t > start:
            return st.Wa, st.ba
        return st.W, st.b

    def _publish(self) -> None:
        """Public attributes from the training state."""
        st = self._state
        W, b = self._weights()
        if len(self.classes_) == 2:
            self.coef_ = (W[1] - W[0])[None, :]
            self.intercept_ = np.array([b[1] - b[0]])
        else:
            self.coef_ = W.copy()
            self.intercept_ = b.copy()
        self.n_iter_ = st.epoch
        self.loss_curve_ = list(st.loss_curve)

    # ---------------------------------------------------------------- prediction
    def _logits(self, X) -> np.ndarray:
        """(n, C) logits of the full softmax model."""
        X = self._check_X_predict(X)
        W, b = self._weights()
        a = x_scale_for(X)
        dtype = np.promote_types(W.dtype, X.dtype) if X.dtype.kind == "f" else W.dtype
        # single-threaded BLAS: a multi-threaded one leaves its threads spinning on the
        # cores the next training epoch's team wants (see fastsoftmax._threads)
        with blas_limit(1):
            z = X.astype(dtype, copy=False) @ W.T.astype(dtype, copy=False)
        if a != 1.0:
            z *= dtype.type(a)
        return z + b.astype(dtype)

    def decision_function(self, X) -> np.ndarray:
        """X: (n, d) -> logits (n, C); for two classes the single logit z1 - z0 (n,)."""
        z = self._logits(X)
        return z[:, 1] - z[:, 0] if len(self.classes_) == 2 else z

    def predict_log_proba(self, X) -> np.ndarray:
        """X: (n, d) -> log class probabilities (n, C), columns in ``classes_`` order."""
        return log_softmax(self._logits(X), axis=1)

    def predict_proba(self, X) -> np.ndarray:
        """X: (n, d) -> class probabilities (n, C), columns in ``classes_`` order."""
        return softmax(self._logits(X), axis=1)

    def predict(self, X) -> np.ndarray:
        """X: (n, d) -> labels (n,) from ``classes_``."""
        z = self._logits(X)
        return self.classes_[np.argmax(z, axis=1)]

    def score(self, X, y) -> float:
        """Mean accuracy of ``predict(X)`` against y."""
        y = _as_labels(y, np.asarray(X).shape[0] if hasattr(X, "shape") else len(X))
        return float(np.mean(self.predict(X) == y))


# ------------------------------------------------------------------------ model files
def _jsonable_params(model: SoftmaxRegression) -> dict:
    params = model.get_params()
    rs = params["random_state"]
    if not (rs is None or isinstance(rs, int)):
        params["random_state"] = None  # the RNG's state is saved separately
    return params


def save_model(
    path: str | os.PathLike, model: SoftmaxRegression, *, metadata: dict | None = None
) -> Path:
    """Write a fitted model, with its training state (a checkpoint: ``load_model`` and
    more training continue it exactly), to `path` atomically (an ``.npz`` of plain
    arrays, read without pickle).  metadata: JSON-able, returned by load_model."""
    if not hasattr(model, "_state"):
        raise ValueError("model is not fitted: nothing to save")
    return write_model_file(
        path, classes=model.classes_, params=_jsonable_params(model), state=model._state,
        metadata=metadata,
    )  # fmt: skip


def load_model(path: str | os.PathLike) -> tuple[SoftmaxRegression, dict]:
    """(model, metadata) from a file written by save_model; ModelFileError (a
    ValueError) names the file and what is wrong with it."""
    classes, params, state, metadata = read_model_file(path)
    try:
        model = SoftmaxRegression(**params)
        model._validate_params()
    except (ValueError, TypeError) as err:
        raise ModelFileError(f"{path}: corrupt hyperparameters ({err})") from err
    model.classes_ = classes
    model.n_features_in_ = state.W.shape[1]
    model._state = state
    model._publish()
    return model, metadata
