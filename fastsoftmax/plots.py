"""Figures for ``fastsoftmax train --plots DIR`` (needs matplotlib: ``fastsoftmax[plot]``).

Everything is drawn on the non-interactive Agg canvas through the object-oriented
:class:`matplotlib.figure.Figure` API, so nothing touches pyplot's global state.  Importing
this module imports matplotlib; ``import fastsoftmax`` does not import this module.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError("plots need matplotlib: pip install 'fastsoftmax[plot]'") from exc

__all__ = [
    "confusion_matrix",
    "plot_confusion_matrix",
    "plot_history",
    "plot_weight_templates",
    "template_grid",
    "write_training_plots",
]

PathLike = str | os.PathLike[str]

_DPI = 100


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI)
    return path


# ---------------------------------------------------------------- training history


def _series(history: Mapping[str, Any], key: str, n: int) -> np.ndarray | None:
    """``history[key]`` as float64 (None -> NaN), or None when absent or all None."""
    values = history.get(key)
    if values is None:
        return None
    values = list(values)
    if len(values) != n:
        raise ValueError(f"history[{key!r}] has {len(values)} entries but 'epoch' has {n}")
    out = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return None if np.isnan(out).all() else out


def plot_history(history: Mapping[str, Sequence[Any]], path: PathLike) -> Path:
    """Plot training loss and test accuracy against the epoch; write a PNG to ``path``.

    ``history`` maps ``"epoch"`` (E,) 1-based ints, ``"train_loss"`` (E,) floats and,
    optionally, ``"test_accuracy"`` (E,) floats in [0, 1] (entries may be None when no test
    set was evaluated) and ``"samples_per_s"`` (E,) floats.  Returns ``Path(path)``.
    """
    if "epoch" not in history or "train_loss" not in history:
        raise ValueError("history needs 'epoch' and 'train_loss' entries")
    epochs = np.asarray(list(history["epoch"]), dtype=np.int64)
    n = epochs.size
    if n == 0:
        raise ValueError("history is empty: no epochs to plot")
    loss = _series(history, "train_loss", n)
    accuracy = _series(history, "test_accuracy", n)
    speed = _series(history, "samples_per_s", n)

    fig = _new_figure(10.0, 4.0)
    ax_loss, ax_acc = fig.subplots(1, 2)
    marker = "o" if n <= 30 else None

    ax_loss.set_title("training loss")
    if loss is not None:
        seen = ~np.isnan(loss)
        ax_loss.plot(epochs[seen], loss[seen], marker=marker, color="tab:blue")
        ax_loss.set_title(f"training loss (last {loss[seen][-1]:.4f})")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("mean cross-entropy")
    ax_loss.grid(True, alpha=0.3)

    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.grid(True, alpha=0.3)
    if accuracy is not None:
        seen = ~np.isnan(accuracy)  # epochs without a test evaluation are skipped
        ax_acc.plot(epochs[seen], 100.0 * accuracy[seen], marker=marker, color="tab:green")
        last = 100.0 * accuracy[seen][-1]
        best = int(np.nanargmax(accuracy))
        ax_acc.plot(
            epochs[best],
            100.0 * accuracy[best],
            marker="o",
            markersize=12,
            fillstyle="none",
            color="tab:red",
            linestyle="none",
            label=f"best (epoch {epochs[best]})",
        )
        ax_acc.legend(loc="best")
        ax_acc.set_title(f"test accuracy (last {last:.2f}%, best {100.0 * accuracy[best]:.2f}%)")
    else:
        ax_acc.set_title("test accuracy")
        ax_acc.text(
            0.5, 0.5, "no test set evaluated", ha="center", va="center", transform=ax_acc.transAxes
        )
        ax_acc.set_yticks([])
    if speed is not None:
        fig.suptitle(f"training throughput: median {np.nanmedian(speed):,.0f} samples/s per epoch")
    for ax in (ax_loss, ax_acc):
        ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


# ---------------------------------------------------------------- weight templates


def _grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) for ``n`` panels: one row up to 5, then 5 wide (10 -> 2x5)."""
    cols = n if n <= 5 else 5 if n <= 25 else math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def template_grid(
    coef: np.ndarray, image_shape: tuple[int, int] = (28, 28)
) -> tuple[np.ndarray, tuple[int, int]]:
    """The rows of ``coef`` (C, d) as images (C, h, w), and the (rows, cols) panel grid.

    Raises ValueError if ``d != h * w``.
    """
    coef = np.asarray(coef)
    if coef.ndim != 2:
        raise ValueError(f"coef must be 2-D (C, d), got shape {coef.shape}")
    h, w = image_shape
    if coef.shape[1] != h * w:
        raise ValueError(
            f"coef has width {coef.shape[1]} but image_shape {tuple(image_shape)} "
            f"needs {h * w} pixels"
        )
    return coef.reshape(coef.shape[0], h, w), _grid_shape(coef.shape[0])


def plot_weight_templates(
    coef: np.ndarray,
    classes: Sequence[Any],
    path: PathLike,
    *,
    image_shape: tuple[int, int] = (28, 28),
) -> Path:
    """Draw each class's weight row ``coef[c]`` (C, d) as an ``image_shape`` image.

    One panel per class titled with its label, on a shared diverging colour scale symmetric
    around 0 (so templates are comparable), with one colour bar.  Writes a PNG to ``path``
    and returns it.  Raises ValueError if ``coef``'s width is not ``prod(image_shape)`` or
    ``len(classes)`` is not its number of rows.
    """
    images, (rows, cols) = template_grid(coef, image_shape)
    if len(classes) != images.shape[0]:
        raise ValueError(f"coef has {images.shape[0]} rows but classes has {len(classes)} labels")
    images = images.astype(np.float64)
    finite = images[np.isfinite(images)]
    limit = float(np.abs(finite).max()) if finite.size else 0.0
    limit = limit if limit > 0 else 1.0

    fig = _new_figure(1.6 * cols + 1.0, 1.75 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    image = None
    for ax, img, label in zip(axes, images, classes, strict=False):
        image = ax.imshow(img, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(str(label))
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(classes) :]:
        ax.set_axis_off()
    fig.suptitle("weight templates (rows of W; red = evidence for the class)")
    fig.colorbar(image, ax=axes.tolist(), shrink=0.9, label="weight")
    return _save(fig, path)


# ---------------------------------------------------------------- confusion matrix


def _as_list(labels: Any) -> list[Any]:
    """Labels as a list of Python scalars (NumPy scalars become int/str/float)."""
    if isinstance(labels, np.ndarray):
        return labels.ravel().tolist()
    return [v.item() if isinstance(v, np.generic) else v for v in labels]


def _label_indices(labels: Any, lookup: dict[Any, int], name: str) -> np.ndarray:
    try:
        return np.fromiter((lookup[v] for v in labels), dtype=np.intp, count=len(labels))
    except KeyError as exc:
        raise ValueError(f"{name} contains {exc.args[0]!r}, which is not in classes") from None
    except TypeError as exc:  # an unhashable label
        raise ValueError(f"{name} contains a label that is not in classes: {exc}") from None


def confusion_matrix(y_true: Any, y_pred: Any, classes: Sequence[Any]) -> np.ndarray:
    """Counts (C, C) int64: entry [i, j] = samples of true ``classes[i]`` predicted ``classes[j]``.

    ``y_true`` and ``y_pred`` are (N,) labels (ints or strings) that must appear in
    ``classes``; a label's row/column is its position in ``classes``.  Raises ValueError
    naming the argument on a length mismatch or a label that is not in ``classes``.
    """
    classes = _as_list(classes)
    lookup: dict[Any, int] = {}
    for i, c in enumerate(classes):
        if c in lookup:
            raise ValueError(f"classes contains {c!r} twice")
        lookup[c] = i
    y_true = _as_list(y_true)
    y_pred = _as_list(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}")
    t = _label_indices(y_true, lookup, "y_true")
    p = _label_indices(y_pred, lookup, "y_pred")
    n = len(classes)
    return np.bincount(t * n + p, minlength=n * n).astype(np.int64).reshape(n, n)


def plot_confusion_matrix(y_true: Any, y_pred: Any, classes: Sequence[Any], path: PathLike) -> Path:
    """Draw the confusion matrix of (N,) ``y_true`` vs ``y_pred`` with counts in the cells.

    Rows are true classes, columns predicted; the title gives the overall accuracy.  Writes
    a PNG to ``path`` and returns it.
    """
    matrix = confusion_matrix(y_true, y_pred, classes)
    n = matrix.shape[0]
    total = int(matrix.sum())
    correct = int(np.trace(matrix))
    accuracy = f"{100.0 * correct / total:.2f}%" if total else "n/a"

    side = min(max(4.5, 0.6 * n + 2.0), 20.0)
    fig = _new_figure(side + 1.0, side)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
    labels = [str(c) for c in classes]
    long_labels = max(map(len, labels), default=0) > 3
    ax.set_xticks(
        range(n),
        labels,
        rotation=45 if long_labels else 0,
        ha="right" if long_labels else "center",
        rotation_mode="anchor",
    )
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix: accuracy {accuracy} ({correct:,}/{total:,})")
    if n <= 30:
        threshold = matrix.max() / 2.0
        fontsize = 9 if n <= 12 else 7
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(
                j,
                i,
                f"{count}",
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if count > threshold else "black",
            )
    fig.colorbar(image, ax=ax, shrink=0.8, label="count")
    return _save(fig, path)


# ---------------------------------------------------------------- all three


def write_training_plots(
    directory: PathLike,
    history: Mapping[str, Sequence[Any]],
    coef: np.ndarray,
    classes: Sequence[Any],
    y_true: Any,
    y_pred: Any,
) -> list[Path]:
    """Write ``history.png``, ``weights.png`` and ``confusion.png`` into ``directory``.

    Creates ``directory`` if needed; ``coef`` is (C, 784), ``y_true``/``y_pred`` are the
    (N,) test labels and predictions.  Returns the three paths in that order.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return [
        plot_history(history, directory / "history.png"),
        plot_weight_templates(coef, classes, directory / "weights.png"),
        plot_confusion_matrix(y_true, y_pred, classes, directory / "confusion.png"),
    ]
