"""Model and checkpoint files: ``.npz`` archives of plain arrays, read with
``allow_pickle=False`` (nothing in a file can run code).

A file holds the classes, the parameters W (C, d) and b (C,), the hyperparameters (JSON),
the package version and the loss history; a checkpoint also holds the optimiser state
(momentum buffers, the position inside the current epoch, its row order and the shuffling
RNG state), so ``fastsoftmax train --resume`` continues to the same result as an
uninterrupted run.  Callers may attach JSON metadata (the CLI stores the dataset and the
per-epoch history).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .._files import atomic_write
from .._version import __version__
from .loop import TrainState

FORMAT = "fastsoftmax/softmax-regression"
FORMAT_VERSION = 1
# The hyperparameters that files written before them lack, as those files trained.
_DEFAULTS_BEFORE = {
    "lr_schedule": "constant",
    "power_t": 0.5,
    "average": False,
    "tol": None,
    "n_iter_no_change": 5,
    "early_stopping": False,
    "validation_fraction": 0.1,
    "class_weight": None,
}


class ModelFileError(ValueError):
    """A model file is missing, corrupt, or does not fit the data it is used with."""


def write_model_file(
    path: str | os.PathLike,
    *,
    classes: np.ndarray,
    params: dict,
    state: TrainState,
    metadata: dict | None = None,
) -> Path:
    """Write a model's classes, hyperparameters (JSON-able) and training state to `path`
    atomically."""
    st = state
    labels = np.asarray(classes.tolist())
    if labels.dtype.kind not in "biufU" or labels.shape != classes.shape:
        raise ValueError(
            f"cannot store class labels of dtype {classes.dtype} without pickling; "
            "use integer or string labels"
        )
    arrays: dict[str, Any] = {
        "format": np.array(FORMAT),
        "format_version": np.array(FORMAT_VERSION),
        "fastsoftmax_version": np.array(__version__),
        "classes": labels,
        "W": st.W,
        "b": st.b,
        "vW": st.vW,
        "vb": st.vb,
        "hyperparameters": np.array(json.dumps(params)),
        "epoch": np.array(st.epoch),
        "step": np.array(st.step),
        "t": np.array(st.t),
        "loss_curve": np.asarray(st.loss_curve, np.float64),
        "rng_state": np.array(st.rng_json()),
        "metadata": np.array(json.dumps(metadata or {})),
    }
    if st.Wa is not None:
        arrays["Wa"], arrays["ba"] = st.Wa, st.ba
    if st.order is not None:
        arrays["order"] = st.order
        arrays["step_losses"] = st.step_losses
    path = Path(path)
    with atomic_write(path) as fh:
        np.savez(fh, **arrays)
    return path


def read_model_file(path: str | os.PathLike) -> tuple[np.ndarray, dict, TrainState, dict]:
    """(classes, hyperparameters, training state, metadata) from a file written by
    write_model_file; ModelFileError names the file and what is wrong with it."""
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path}: not a fastsoftmax model file (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError as err:
        raise ModelFileError(f"{path}: no such model file") from err
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ModelFileError(f"{path}: not a readable fastsoftmax model file ({err})") from err

    def need(key):
        if key not in arrays:
            raise ModelFileError(f"{path}: not a fastsoftmax model file (no {key!r} entry)")
        return arrays[key]

    if str(need("format")) != FORMAT:
        raise ModelFileError(f"{path}: format {str(arrays['format'])!r}, expected {FORMAT!r}")
    if int(need("format_version")) > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: format version {int(arrays['format_version'])} is newer than this "
            f"fastsoftmax ({__version__}) reads; upgrade fastsoftmax"
        )
    W, b, classes = need("W"), need("b"), need("classes")
    vW, vb = need("vW"), need("vb")
    if W.ndim != 2 or W.dtype not in (np.float32, np.float64):
        raise ModelFileError(f"{path}: W must be a 2-D float array, got {W.dtype} {W.shape}")
    C = W.shape[0]
    if C < 2 or classes.shape != (C,) or b.shape != (C,) or vW.shape != W.shape or vb.shape != (C,):
        raise ModelFileError(
            f"{path}: inconsistent shapes: W {W.shape}, b {b.shape}, classes "
            f"{classes.shape}, momentum {vW.shape} {vb.shape}"
        )
    if not (np.isfinite(W).all() and np.isfinite(b).all()):
        raise ModelFileError(f"{path}: the weights contain NaN or infinity")
    try:
        params = json.loads(str(need("hyperparameters")))
        # files from before these options existed trained as their defaults were then
        for key, old in _DEFAULTS_BEFORE.items():
            params.setdefault(key, old)
        if not isinstance(params, dict) or not isinstance(params.get("batch_size"), int):
            raise ValueError("no integer batch_size")
        metadata = json.loads(str(need("metadata")))
        rng = TrainState.rng_from_json(str(need("rng_state")))
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise ModelFileError(f"{path}: corrupt hyperparameters or state ({err})") from err
    state = TrainState(
        W=W.copy(), b=b.astype(W.dtype), vW=vW.astype(W.dtype), vb=vb.astype(W.dtype), rng=rng,
        epoch=int(need("epoch")), step=int(need("step")),
        loss_curve=[float(v) for v in need("loss_curve")],
    )  # fmt: skip
    # steps taken in all: the schedule's clock (older files trained at a constant rate)
    state.t = int(arrays["t"]) if "t" in arrays else 0
    if "Wa" in arrays:
        Wa, ba = arrays["Wa"], arrays.get("ba")
        if Wa.shape != W.shape or ba is None or ba.shape != (C,):
            raise ModelFileError(f"{path}: inconsistent averaged weights {Wa.shape}")
        state.Wa, state.ba = Wa.astype(W.dtype), ba.astype(W.dtype)
    if "order" in arrays:
        order, losses = arrays["order"], arrays.get("step_losses")
        n = order.shape[0]
        steps = -(-n // int(params["batch_size"])) if n else 0
        if (
            order.ndim != 1
            or order.dtype.kind not in "iu"
            or losses is None
            or losses.shape != (steps,)
            or not 0 <= state.step <= steps
            or not np.array_equal(np.sort(order), np.arange(n))
        ):
            raise ModelFileError(f"{path}: corrupt checkpoint (epoch order or step count)")
        state.order, state.step_losses = order.astype(np.int64), losses.astype(np.float64)
    return classes, params, state, metadata
