"""Softmax regression training: the fused SGD step per backend and the epoch loop."""

from .loop import STEP_BACKENDS, TrainState, resolve_step_backend, train_epochs

__all__ = ["STEP_BACKENDS", "TrainState", "resolve_step_backend", "train_epochs"]
