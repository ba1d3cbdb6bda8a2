"""Softmax regression training: the epoch loop (each backend owns its fused step) and
model files."""

from .loop import TrainState, resolve_step_backend, train_epochs

__all__ = ["TrainState", "resolve_step_backend", "train_epochs"]
