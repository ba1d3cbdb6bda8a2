"""Multinomial softmax regression on Dask arrays: the data stay on the workers, chunk by
chunk; only (C, d) weights and gradients travel.

``pip install "fastsoftmax[dask]"`` (dask[distributed] and scipy).  With a
``dask.distributed.Client`` connected (a LocalCluster, or a real cluster by its scheduler
address) the tasks run on its workers; without one, on Dask's local scheduler.

Solvers (the objective is the single-machine estimator's: mean cross-entropy +
weight_decay/2 ||W||^2, bias not decayed):

* ``"lbfgs"`` (default): full batch; each objective evaluation is one task graph: per
  row chunk, the loss sum and gradient of ``X_k W^T + b`` by the fused linear
  cross-entropy (``fastsoftmax.linear_cross_entropy_with_grad``, Numba kernels), then a
  tree reduction (pairwise sums) to one (loss, dW, db); scipy's L-BFGS-B drives it.
* ``"gd"``: full-batch gradient descent on the same gradient, ``learning_rate`` steps.
* ``"sgd"``: minibatch SGD, one pass per chunk: the parameters (and momentum) travel
  from chunk to chunk (the task runs where the chunk is), and each chunk runs the
  single-machine trainer's fused step over its rows (``batch_size`` rows per step).

X: (n, d) float32/float64 or uint8 (read as X/255, as the trainer does), chunked by rows
only; y: (n,) labels chunked like X's rows.  CuPy chunks run the same code on the GPU
(matmuls in CuPy, the cross-entropy on the CuPy backend); only small host arrays come
back.  NumPy inputs are accepted too (one chunk).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

try:
    import dask
    import dask.array as da
except ImportError as err:  # pragma: no cover - exercised without the extra
    raise ImportError("fastsoftmax.dask needs dask: pip install 'fastsoftmax[dask]'") from err

from ._api import XentProblem, cross_entropy_with_grad, softmax
from ._backends import is_cupy_array, load
from ._threads import blas_limit, thread_limit
from .estimator import check_discrete_labels, encode_labels, non_finite_error
from .reference import StepData, StepParams, StepPlan
from .train.loop import resolve_step_backend, x_scale_for

SOLVERS = ("lbfgs", "gd", "sgd")


# ------------------------------------------------------------------ per-chunk tasks
def _xp(a):
    if is_cupy_array(a):
        import cupy

        return cupy
    return np


def _to_host(a):
    return a.get() if is_cupy_array(a) else a


def work_dtype(x_dtype) -> np.dtype:
    """The chunks compute in float64 for float64 X, else in float32 (uint8 pixels too)."""
    return np.dtype(np.float64) if x_dtype == np.float64 else np.dtype(np.float32)


def _hidden(X):
    """The chunk as the model sees it: X (or X/255 for uint8) in the work dtype."""
    dtype = work_dtype(X.dtype)
    a = x_scale_for(X)
    h = X.astype(dtype, copy=False)
    return h * dtype.type(a) if a != 1.0 else h


def chunk_loss_grad(X, y_idx, W, b, backend):
    """(sum of the chunk's row losses, dW (C, d), db (C,), rows) of X W^T + b for one
    chunk, on the worker that holds it: the fused linear cross-entropy with the sum
    reduction and no dhidden.  Results are float64 host arrays.

    On the CPU a chunk runs on one thread, its BLAS calls included: Dask runs a task
    per core at once, and each task's own thread pools would fight over those cores."""
    if is_cupy_array(X):
        return _chunk_loss_grad(X, y_idx, W, b, backend)
    with thread_limit(1), blas_limit(1):
        return _chunk_loss_grad(X, y_idx, W, b, backend)


def _chunk_loss_grad(X, y_idx, W, b, backend):
    if is_cupy_array(X):
        import cupy

        h = _hidden(X)
        z = h @ cupy.asarray(W, h.dtype).T + cupy.asarray(b, h.dtype)
        loss, g = cross_entropy_with_grad(z, cupy.asarray(y_idx), reduction="sum")
        dW, db = (g.T @ h).get(), g.sum(axis=0).get()
        return float(loss), dW.astype(np.float64), db.astype(np.float64), X.shape[0]
    from ._linear import bytes_per_logit, default_chunk_size, fused_chunks

    n, c = X.shape[0], W.shape[0]
    dtype = work_dtype(X.dtype)
    Wc = np.ascontiguousarray(W, dtype)
    bc = np.ascontiguousarray(b, dtype)
    dW, db = np.empty_like(Wc), np.empty_like(bc)
    be = load(backend)
    if hasattr(be, "loss_grad") and n:
        # the trainer's fused step without its update: one pass over X, which it reads
        # as it is (uint8 pixels too), where BLAS's C-column GEMMs run at ~30 GFLOP/s
        Xc = np.ascontiguousarray(X)
        yc = np.ascontiguousarray(y_idx, np.int64)
        total = be.loss_grad(Xc, yc, Wc, bc, x_scale_for(X), dW, db)
        return total, dW.astype(np.float64), db.astype(np.float64), n
    h = _hidden(X)
    total = 0.0
    if n:
        problem = XentProblem.plain(be, h.dtype, y_idx, c)
        chunk = default_chunk_size(n, c, bytes_per_logit(be, h.dtype))
        total = fused_chunks(problem, h, Wc, bc, chunk, np.empty(n), dweight=dW, dbias=db)
    else:
        dW.fill(0)
        db.fill(0)
    return total, dW.astype(np.float64), db.astype(np.float64), n


# Chunk results summed per task of the reduction tree.  Dask costs ~5 ms per task on
# the 2-core machine (bench_dask.py), and a (C, d) sum is microseconds: wide nodes keep
# the tree to few tasks (40 chunks: 6 sums instead of 39 pairwise).
SPLIT_EVERY = 8


def _add(*parts):
    """The sum of (loss, dW, db, rows) tuples, added in the order given."""
    total = list(parts[0])
    for p in parts[1:]:
        for i in range(4):
            total[i] = total[i] + p[i]
    return tuple(total)


def _tree_sum(parts: list, split_every: int = SPLIT_EVERY) -> Any:
    """A tree of sums in the task graph: each node adds up to `split_every` results, in
    a fixed order, so the result does not depend on which worker ran what."""
    while len(parts) > 1:
        parts = [
            dask.delayed(_add)(*parts[i : i + split_every])
            if len(parts[i : i + split_every]) > 1
            else parts[i]
            for i in range(0, len(parts), split_every)
        ]
    return parts[0]


def chunk_sgd_pass(state, X, y_idx, seed, batch, lr, mu, wd, shuffle, backend):
    """One SGD pass over a chunk's rows with the single-machine fused step; returns the
    updated (W, b, vW, vb) and the chunk's summed step losses weighted by batch size."""
    from .train.loop import step_function

    W, b, vW, vb = (np.array(p, copy=True) for p in state[:4])
    Xh = np.ascontiguousarray(_to_host(X))
    yh = np.ascontiguousarray(_to_host(y_idx), np.int64)
    n = Xh.shape[0]
    steps = -(-n // batch)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    losses = np.zeros(steps)
    if n:
        data = StepData(Xh, yh, x_scale_for(Xh))
        step_function(backend)(
            data, StepParams(W, b, vW, vb), StepPlan(order, batch, lr, mu, wd), 0, steps, losses
        )
    sizes = np.full(steps, batch, dtype=np.float64)
    if steps:
        sizes[-1] = n - batch * (steps - 1)
    return W, b, vW, vb, state[4] + float(np.dot(losses, sizes)), state[5] + n


def _encode_chunk(yb, classes):
    return encode_labels(classes, _to_host(yb))


def _logits_chunk(X, W, b):
    xp = _xp(X)
    if X.dtype.kind == "f" and not bool(xp.isfinite(X).all()):
        raise non_finite_error("X")
    a = x_scale_for(X)
    return (X.astype(xp.float64) * a) @ xp.asarray(W).T + xp.asarray(b)


def _proba_chunk(X, W, b):
    return softmax(_logits_chunk(X, W, b), axis=1)


def _predict_chunk(X, W, b, classes):
    xp = _xp(X)
    idx = _logits_chunk(X, W, b).argmax(axis=1)
    return xp.asarray(classes)[idx] if xp is not np else classes[idx]


# ------------------------------------------------------------------------ estimator
class SoftmaxRegression:
    """Multinomial logistic regression fit on row-chunked Dask arrays.

    solver: "lbfgs" (full batch, scipy L-BFGS-B), "gd" (full-batch gradient descent) or
    "sgd" (one minibatch SGD pass per chunk per epoch).  max_iter: L-BFGS/GD iterations
    or SGD epochs.  weight_decay: the L2 term's lambda (lambda/2 ||W||^2).
    learning_rate, momentum, batch_size, shuffle: gd/sgd settings.  tol: L-BFGS's
    gradient tolerance.  backend: the per-chunk kernels' CPU backend ("auto", "numba",
    "numpy").  Chunks compute in float64 for float64 X, else in float32; lbfgs and gd
    keep float64 parameters and sum the chunks' gradients in float64; sgd keeps the
    single-machine trainer's parameter dtype (float32 unless X is float64).

    Attributes after fit: classes_, coef_ (C, d), intercept_ (C,), n_iter_, loss_curve_
    (the full objective per iteration for lbfgs/gd; the mean step objective per epoch
    for sgd), n_features_in_.
    """

    def __init__(
        self,
        *,
        solver: str = "lbfgs",
        max_iter: int = 100,
        weight_decay: float = 1e-4,
        tol: float = 1e-6,
        learning_rate: float = 0.1,
        momentum: float = 0.0,
        batch_size: int = 64,
        shuffle: bool = True,
        random_state: int | None = None,
        backend: str = "auto",
        verbose: bool = False,
    ):
        self.solver = solver
        self.max_iter = max_iter
        self.weight_decay = weight_decay
        self.tol = tol
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.random_state = random_state
        self.backend = backend
        self.verbose = verbose

    # ------------------------------------------------------------------ validation
    def _check_params(self) -> str:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        for name in ("max_iter", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, low in (("weight_decay", 0.0), ("momentum", 0.0), ("tol", 0.0)):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not math.isfinite(value) or value < low:
                raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}")
        lr = self.learning_rate
        if not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"learning_rate must be a finite number > 0, got {lr!r}")
        if self.momentum >= 1:
            raise ValueError(f"momentum must be < 1, got {self.momentum!r}")
        return resolve_step_backend(self.backend)

    @staticmethod
    def _as_dask_X(X) -> da.Array:
        if not isinstance(X, (da.Array, np.ndarray)) and not is_cupy_array(X):
            X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n, d), got shape {X.shape}")
        if not isinstance(X, da.Array):
            X = da.from_array(X, chunks=(-1, -1))
        if X.dtype not in (np.uint8, np.float32, np.float64):
            raise TypeError(f"X must be float32, float64 or uint8, got dtype {X.dtype}")
        if X.numblocks[1] != 1:
            X = X.rechunk({1: -1})  # chunked by rows only: a chunk holds whole rows
        return X

    def _check_Xy(self, X, y) -> tuple[da.Array, da.Array]:
        X = self._as_dask_X(X)
        if not isinstance(y, da.Array):
            y = da.from_array(np.asarray(y) if not is_cupy_array(y) else y, chunks=-1)
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D (n,), got shape {y.shape}")
        if math.isnan(X.shape[0]) or math.isnan(y.shape[0]):
            X, y = X.compute_chunk_sizes(), y.compute_chunk_sizes()
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"y has {y.shape[0]} rows but X has {X.shape[0]}")
        if y.chunks[0] != X.chunks[0]:
            y = y.rechunk((X.chunks[0],))
        if X.shape[0] == 0:
            raise ValueError("X has no rows; fit needs at least one sample")
        return X, y

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise RuntimeError("this SoftmaxRegression is not fitted yet; call fit first")

    # ------------------------------------------------------------------------- fit
    def fit(self, X, y) -> SoftmaxRegression:
        """Fit on X: (n, d) and y: (n,) (Dask arrays chunked by rows, or NumPy)."""
        backend = self._check_params()
        X, y = self._check_Xy(X, y)
        # keep the chunks where they are computed: every iteration reads them there
        X, y = dask.persist(X, y)
        # the classes, and whether X is finite, in one pass over the chunks
        finite = da.isfinite(X).all() if X.dtype.kind == "f" else True
        labels, finite = dask.compute(da.unique(y), finite)
        if not finite:
            raise non_finite_error("X")
        classes = np.unique(_to_host(labels))
        check_discrete_labels(classes)
        if len(classes) < 2:
            raise ValueError(f"y needs at least 2 classes, got {len(classes)}")
        y_idx = y.map_blocks(_encode_chunk, classes, dtype=np.int64)
        (y_idx,) = dask.persist(y_idx)
        n, d = X.shape
        c = len(classes)
        self.classes_ = classes
        self.n_features_in_ = d
        Xb = X.to_delayed().ravel().tolist()
        yb = y_idx.to_delayed().ravel().tolist()
        if self.solver == "sgd":
            W, b, curve = self._fit_sgd(Xb, yb, n, d, c, backend, work_dtype(X.dtype))
        else:
            W, b, curve = self._fit_full_batch(Xb, yb, n, d, c, backend)
        self.coef_, self.intercept_ = W, b
        self.loss_curve_ = curve
        self.n_iter_ = len(curve)
        return self

    def objective(self, Xb, yb, n, W, b, backend):
        """(objective, dW, db) of the full data, computed on the workers."""
        task = dask.delayed(chunk_loss_grad)
        parts = [task(xk, yk, W, b, backend) for xk, yk in zip(Xb, yb, strict=True)]
        loss, dW, db, rows = dask.compute(_tree_sum(parts))[0]
        assert rows == n
        wd = float(self.weight_decay)
        value = loss / n + 0.5 * wd * float(np.sum(W * W))
        return value, dW / n + wd * W, db / n

    def _fit_full_batch(self, Xb, yb, n, d, c, backend):
        W = np.zeros((c, d))
        b = np.zeros(c)
        curve: list[float] = []
        if self.solver == "gd":
            lr, mu = float(self.learning_rate), float(self.momentum)
            vW, vb = np.zeros_like(W), np.zeros_like(b)
            for it in range(self.max_iter):
                value, gW, gb = self.objective(Xb, yb, n, W, b, backend)
                curve.append(value)
                vW = mu * vW + gW
                vb = mu * vb + gb
                W = W - lr * vW
                b = b - lr * vb
                if self.verbose:
                    print(f"iteration {it + 1}: objective {value:.6f}")
            return W, b, curve
        from scipy.optimize import minimize

        last = [math.nan]  # the objective of the latest evaluation

        def fun(theta):
            Wt = theta[: c * d].reshape(c, d)
            value, gW, gb = self.objective(Xb, yb, n, Wt, theta[c * d :], backend)
            last[0] = value
            return value, np.concatenate([gW.ravel(), gb])

        def record(theta):
            # the objective at the accepted iterate: L-BFGS's last evaluation
            curve.append(last[0])
            if self.verbose:
                print(f"iteration {len(curve)}: objective {last[0]:.6f}")

        res = minimize(
            fun, np.zeros(c * d + c), jac=True, method="L-BFGS-B", callback=record,
            options={"maxiter": int(self.max_iter), "gtol": float(self.tol)},
        )  # fmt: skip
        theta = res.x
        self.optimizer_result_ = res
        return theta[: c * d].reshape(c, d).copy(), theta[c * d :].copy(), curve

    def _fit_sgd(self, Xb, yb, n, d, c, backend, dtype):
        # the single-machine trainer's parameters: X's float dtype (float32 for uint8)
        W = np.zeros((c, d), dtype)
        state = (W, np.zeros(c, dtype), np.zeros_like(W), np.zeros(c, dtype), 0.0, 0)
        rng = np.random.default_rng(self.random_state)
        curve: list[float] = []
        lr, mu, wd = float(self.learning_rate), float(self.momentum), float(self.weight_decay)
        for epoch in range(self.max_iter):
            chunks = rng.permutation(len(Xb)) if self.shuffle else np.arange(len(Xb))
            seeds = rng.integers(0, 2**63, len(Xb))
            st = (*state[:4], 0.0, 0)
            for k in chunks:
                st = dask.delayed(chunk_sgd_pass)(
                    st, Xb[k], yb[k], int(seeds[k]), int(self.batch_size), lr, mu, wd,
                    bool(self.shuffle), backend,
                )  # fmt: skip
            st = dask.compute(st)[0]
            curve.append(st[4] / st[5])
            state = st
            if self.verbose:
                print(f"epoch {epoch + 1}: mean step objective {curve[-1]:.6f}")
        return state[0], state[1], curve

    # ------------------------------------------------------------------- predict
    def _check_X(self, X) -> da.Array:
        self._check_fitted()
        X = self._as_dask_X(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but this model was fit with {self.n_features_in_}"
            )
        return X

    def decision_function(self, X) -> da.Array:
        """Logits (n, C) as a Dask array, chunked like X's rows."""
        X = self._check_X(X)
        c = len(self.classes_)
        return X.map_blocks(
            _logits_chunk, self.coef_, self.intercept_, dtype=np.float64, chunks=(X.chunks[0], (c,))
        )

    def predict_proba(self, X) -> da.Array:
        """Class probabilities (n, C) as a Dask array (fastsoftmax.softmax per chunk)."""
        X = self._check_X(X)
        c = len(self.classes_)
        return X.map_blocks(
            _proba_chunk, self.coef_, self.intercept_, dtype=np.float64, chunks=(X.chunks[0], (c,))
        )

    def predict(self, X) -> da.Array:
        """Predicted labels (n,) as a Dask array."""
        X = self._check_X(X)
        return X.map_blocks(
            _predict_chunk, self.coef_, self.intercept_, self.classes_,
            dtype=self.classes_.dtype, drop_axis=1,
        )  # fmt: skip

    def score(self, X, y) -> float:
        """Mean accuracy on (X, y), computed on the workers."""
        X, y = self._check_Xy(X, y)
        return float((self.predict(X) == y).mean().compute())
