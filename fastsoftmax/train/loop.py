"""The epoch loop of minibatch SGD for softmax regression, shared by the estimator and
the CLI: shuffling, the per-backend fused step, progress and stop hooks, and a state
that can be saved mid-epoch and resumed to the same result as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .._backends import AUTO, CPU_BACKENDS, default_cpu_backend, load
from ..reference import StepData, StepParams, StepPlan

LR_SCHEDULES = ("constant", "invscaling", "linear", "cosine")
# At most this many rows, and rows x features x classes multiply-adds, per call into the
# step kernel: between calls the loop reports progress and checks for a stop request
# (Ctrl-C); the kernels' results do not depend on it.  A call costs ~0.15 ms of thread
# wake-up and scratch on top of its steps, so an MNIST epoch (60000 x 784, 10 classes:
# ~20 ms) goes in two calls of ~10 ms: with 8192 rows a call (8 calls) it took 1.1x the
# time (2 threads, batch 64, AVX-512).
ROWS_PER_CALL = 32768
MACS_PER_CALL = 1 << 28


@dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped.

    W: (C, d) and b: (C,) the parameters; vW, vb their momentum buffers; `epoch` the
    completed epochs; `step` the completed steps of the current epoch, whose row order is
    `order` (None between epochs) and whose per-step objectives go into `step_losses`;
    `t` the steps taken in all (the learning-rate schedule's clock).  Wa, ba: the
    running mean of the iterates (averaged SGD), None unless asked for.
    """

    W: np.ndarray
    b: np.ndarray
    vW: np.ndarray
    vb: np.ndarray
    rng: np.random.Generator
    epoch: int = 0
    step: int = 0
    order: np.ndarray | None = None
    step_losses: np.ndarray | None = None
    loss_curve: list[float] = field(default_factory=list)
    t: int = 0
    Wa: np.ndarray | None = None
    ba: np.ndarray | None = None

    @classmethod
    def zeros(cls, num_classes: int, num_features: int, dtype, rng) -> TrainState:
        W = np.zeros((num_classes, num_features), dtype)
        b = np.zeros(num_classes, dtype)
        return cls(W, b, np.zeros_like(W), np.zeros_like(b), rng)

    def rng_json(self) -> str:
        return json.dumps(self.rng.bit_generator.state)

    @staticmethod
    def rng_from_json(text: str) -> np.random.Generator:
        state = json.loads(text)
        bitgen = getattr(np.random, state["bit_generator"])()
        bitgen.state = state
        return np.random.Generator(bitgen)


def resolve_step_backend(backend: str) -> str:
    """The backend whose training step runs: 'auto' -> numba when it imports, else
    numpy; a backend that cannot run here -> BackendUnavailableError; one without a
    training step (cupy) -> ValueError."""
    if backend == AUTO:
        return default_cpu_backend().name
    if backend not in CPU_BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {CPU_BACKENDS}, got {backend!r}")
    return load(backend).name


def step_function(backend: str):
    """The backend's fused SGD step (see fastsoftmax.reference.sgd_steps)."""
    return load(resolve_step_backend(backend)).sgd_steps


def warm_up(
    X: np.ndarray,
    backend: str,
    dtype=np.float32,
    num_classes: int = 10,
    *,
    batch_size: int = 1,
    weighted: bool = False,
    averaged: bool = False,
) -> None:
    """Compile (or load from Numba's cache) the step kernel for X's dtype, with or
    without row weights and averaging, running no step, so that timings of the first
    epoch do not include it.  The kernel depends on the class count and the batch size
    too (the numba backend splits the classes for one-block batches): pass the run's."""
    if backend != "numba":
        return
    d = X.shape[1]
    W = np.zeros((num_classes, d), dtype)
    b = np.zeros(num_classes, dtype)
    order = np.arange(min(len(X), 1))
    y = np.zeros(len(X), np.int64)
    sw = np.ones(len(X)) if weighted else None
    avg = (W.copy(), b.copy(), np.zeros(1)) if averaged else None
    params = StepParams(W, b, W.copy(), b.copy(), avg)
    step_function(backend)(
        StepData(X, y, 1.0, sw), params, StepPlan(order, batch_size, 0.0), 0, 0, np.zeros(1)
    )


def learning_rates(
    schedule: str, lr: float, t: np.ndarray, *, power_t: float, steps_per_epoch: int, horizon: int
) -> np.ndarray:
    """The learning rate of each step whose index (steps taken before it) is in t:

    constant    lr
    invscaling  lr / (1 + t / steps_per_epoch) ** power_t   (the epoch count, not the
                sample count as in scikit-learn's SGD: the same decay for any batch size)
    linear      lr (1 - t / horizon)                       (horizon: the steps of the run)
    cosine      lr (1 + cos(pi t / horizon)) / 2
    Past the horizon linear and cosine stay at their last rate, lr / horizon."""
    t = np.asarray(t, np.float64)
    if schedule == "constant":
        return np.full(t.shape, float(lr))
    if schedule == "invscaling":
        return lr / (1.0 + t / steps_per_epoch) ** power_t
    frac = np.minimum(t, horizon - 1) / horizon
    if schedule == "linear":
        return lr * (1.0 - frac)
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + np.cos(math.pi * frac))
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")


def average_coefficients(t: np.ndarray, start: int | None) -> np.ndarray | None:
    """Averaged SGD's weights of the new iterate, per step: after step t (0-based) the
    mean of the iterates of steps start..t gets the new one with weight 1 / (t - start
    + 1) (so Wa = W at the first); 0 before start.  None when start is None."""
    if start is None:
        return None
    k = np.asarray(t, np.float64) - start + 1.0
    return np.where(k >= 1.0, 1.0 / np.maximum(k, 1.0), 0.0)


def x_scale_for(X: np.ndarray) -> float:
    """uint8 inputs are 8-bit intensities: the model sees X / 255."""
    return 1.0 / 255.0 if X.dtype == np.uint8 else 1.0


def train_epochs(
    state: TrainState,
    X: np.ndarray,
    y: np.ndarray,
    *,
    until_epoch: int,
    batch_size: int,
    learning_rate: float,
    momentum: float,
    weight_decay: float,
    shuffle: bool,
    backend: str,
    lr_schedule: str = "constant",
    power_t: float = 0.5,
    horizon_epochs: int | None = None,
    sample_weight: np.ndarray | None = None,
    average_start: int | None = None,
    on_progress: Callable[[TrainState, int], None] | None = None,
    on_epoch_end: Callable[[TrainState, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> bool:
    """Run epochs until `state.epoch == until_epoch`.  X: (n, d) C-contiguous float32,
    float64 (the parameters' dtype) or uint8; y: (n,) int64 class indices.

    The rate of each step follows `lr_schedule` (see learning_rates; linear and cosine
    decay over `horizon_epochs` epochs, default until_epoch).  sample_weight: None or
    (n,) float64 weights of the rows (their loss and gradient are multiplied by them).
    average_start: None, or the step from which state.Wa, state.ba hold the mean of
    the iterates (averaged SGD).

    on_progress(state, steps_per_epoch) runs after every call into the kernel,
    on_epoch_end(state, seconds) after every epoch.  Returns False when should_stop()
    asked to stop: `state` is then consistent (a whole number of steps) and can be saved.
    """
    step = step_function(backend)
    n = X.shape[0]
    steps = -(-n // batch_size)
    rows_per_call = min(ROWS_PER_CALL, MACS_PER_CALL // max(1, X.shape[1] * state.W.shape[0]))
    per_call = max(1, rows_per_call // batch_size)
    a = x_scale_for(X)
    horizon = steps * (until_epoch if horizon_epochs is None else horizon_epochs)
    if average_start is not None and state.Wa is None:
        state.Wa, state.ba = np.zeros_like(state.W), np.zeros_like(state.b)
    sw = None if sample_weight is None else np.ascontiguousarray(sample_weight, np.float64)
    data = StepData(X, y, a, sw)
    while state.epoch < until_epoch:
        if state.order is None:
            state.order = state.rng.permutation(n) if shuffle else np.arange(n)
            state.step = 0
            state.step_losses = np.zeros(steps)
        t0 = time.perf_counter()
        # the schedule's clock at this epoch's step 0, and the per-step rates from there
        clock = state.t - state.step + np.arange(steps)
        lrs = learning_rates(
            lr_schedule, learning_rate, clock, power_t=power_t, steps_per_epoch=steps,
            horizon=max(horizon, 1),
        )  # fmt: skip
        coef = average_coefficients(clock, average_start)
        avg = None if coef is None else (state.Wa, state.ba, coef)
        params = StepParams(state.W, state.b, state.vW, state.vb, avg)
        plan = StepPlan(state.order, batch_size, lrs, momentum, weight_decay)
        while state.step < steps:
            s1 = min(state.step + per_call, steps)
            step(data, params, plan, state.step, s1, state.step_losses)
            state.t += s1 - state.step
            state.step = s1
            if on_progress is not None:
                on_progress(state, steps)
            if should_stop is not None and should_stop() and state.step < steps:
                return False
        # the epoch's objective: the batch-size-weighted mean of its steps' objectives
        sizes = np.full(steps, batch_size, dtype=np.float64)
        sizes[-1] = n - batch_size * (steps - 1)
        state.loss_curve.append(float(np.dot(state.step_losses, sizes) / n))
        state.epoch += 1
        state.order = None
        state.step = 0
        state.step_losses = None
        if on_epoch_end is not None:
            on_epoch_end(state, time.perf_counter() - t0)
        if should_stop is not None and should_stop() and state.epoch < until_epoch:
            return False
    return True
