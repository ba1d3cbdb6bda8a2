"""fastsoftmax.plots: the confusion matrix against an oracle, and the PNGs it writes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import matplotlib.image

from fastsoftmax import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DIGITS = list(range(10))


def read_png(path) -> np.ndarray:
    """The PNG at ``path`` as (H, W, 3) floats in [0, 1], after checking its signature."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return matplotlib.image.imread(path)[..., :3]


def assert_not_blank(image: np.ndarray) -> None:
    flat = image.reshape(-1, 3)
    assert len(np.unique(flat, axis=0)) > 10, "the image is (nearly) one colour"
    assert (flat.sum(axis=1) < 1.5).mean() > 0.001, "no dark pixels (text, lines)"


def oracle_confusion(y_true, y_pred, classes) -> np.ndarray:
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        for i, c in enumerate(classes):
            for j, d in enumerate(classes):
                if t == c and p == d:
                    matrix[i, j] += 1
    return matrix


def history(epochs=5, with_test=True, with_speed=True):
    h = {
        "epoch": list(range(1, epochs + 1)),
        "train_loss": [0.7 / e + 0.2 for e in range(1, epochs + 1)],
    }
    if with_test:
        h["test_accuracy"] = [0.9 + 0.005 * e for e in range(1, epochs + 1)]
    if with_speed:
        h["samples_per_s"] = [4e5 + 1e3 * e for e in range(1, epochs + 1)]
    return h


# ---------------------------------------------------------------- confusion matrix


@pytest.mark.parametrize("seed", range(5))
def test_confusion_matrix_matches_double_loop_on_int_labels(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    classes = DIGITS
    y_true = rng.integers(0, 9, n)  # class 9 never occurs as a true label
    y_pred = rng.integers(0, 10, n)
    got = plots.confusion_matrix(y_true, y_pred, classes)
    assert got.dtype == np.int64 and got.shape == (10, 10)
    np.testing.assert_array_equal(got, oracle_confusion(y_true.tolist(), y_pred.tolist(), classes))
    assert got[9].sum() == 0 and got.sum() == n


def test_confusion_matrix_string_labels_map_by_position_in_classes():
    rng = np.random.default_rng(7)
    classes = ["zebra", "ant", "moth", "never"]  # not sorted; "never" never occurs
    y_true = rng.choice(classes[:3], 200).tolist()
    y_pred = rng.choice(np.array(classes[:3]), 200)  # np.str_ labels
    got = plots.confusion_matrix(y_true, y_pred, classes)
    np.testing.assert_array_equal(got, oracle_confusion(y_true, y_pred.tolist(), classes))
    assert got[3].sum() == 0 and got[:, 3].sum() == 0
    # the row of "zebra" counts the true zebras
    assert got[0].sum() == y_true.count("zebra")


def test_confusion_matrix_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    classes = [3, 1, 4, 0, 2]
    y_true = rng.choice([3, 1, 4, 0], 500)
    y_pred = rng.choice(classes, 500)
    np.testing.assert_array_equal(
        plots.confusion_matrix(y_true, y_pred, classes),
        metrics.confusion_matrix(y_true, y_pred, labels=classes),
    )


def test_confusion_matrix_small_example_orientation():
    got = plots.confusion_matrix([0, 0, 1, 2], [0, 1, 1, 1], [0, 1, 2])
    # rows = true, columns = predicted
    np.testing.assert_array_equal(got, [[1, 1, 0], [0, 1, 0], [0, 1, 0]])


def test_confusion_matrix_empty():
    got = plots.confusion_matrix([], [], ["a", "b"])
    np.testing.assert_array_equal(got, np.zeros((2, 2), np.int64))


@pytest.mark.parametrize(
    ("y_true", "y_pred", "classes", "name"),
    [
        ([0, 1, 2], [0, 1], DIGITS, "y_true"),
        ([0, 1, 11], [0, 1, 2], DIGITS, "y_true"),
        ([0, 1, 2], [0, -1, 2], DIGITS, "y_pred"),
        (["a", "b"], ["a", "c"], ["a", "b"], "y_pred"),
        ([0, 1], ["0", "1"], DIGITS, "y_pred"),
        ([0, 1], [0, 1], [0, 1, 1], "classes"),
    ],
)
def test_confusion_matrix_errors_name_the_argument(y_true, y_pred, classes, name):
    with pytest.raises(ValueError, match=name):
        plots.confusion_matrix(y_true, y_pred, classes)


# ---------------------------------------------------------------- the figures


def test_plot_history_writes_a_png(tmp_path):
    path = plots.plot_history(history(), tmp_path / "history.png")
    assert path == tmp_path / "history.png"
    image = read_png(path)
    h, w = image.shape[:2]
    assert w > 1.8 * h  # two panels side by side
    assert_not_blank(image)


@pytest.mark.parametrize("accuracy", ["absent", "none", "some none"])
def test_plot_history_without_test_accuracy(tmp_path, accuracy):
    h = history(epochs=3, with_speed=False)
    if accuracy == "absent":
        del h["test_accuracy"]
    elif accuracy == "none":
        h["test_accuracy"] = [None, None, None]
    else:
        h["test_accuracy"] = [None, 0.91, None]
    assert_not_blank(read_png(plots.plot_history(h, tmp_path / "h.png")))


def test_plot_history_single_epoch_and_str_path(tmp_path):
    path = plots.plot_history(history(epochs=1), str(tmp_path / "sub" / "h.png"))
    assert_not_blank(read_png(path))


def test_plot_history_rejects_ragged_lists(tmp_path):
    h = history()
    h["train_loss"] = h["train_loss"][:-1]
    with pytest.raises(ValueError, match="train_loss"):
        plots.plot_history(h, tmp_path / "h.png")
    with pytest.raises(ValueError, match="epoch"):
        plots.plot_history({"train_loss": [1.0]}, tmp_path / "h.png")


def test_grid_is_two_by_five_for_ten_classes():
    coef = np.arange(10 * 784, dtype=np.float64).reshape(10, 784)
    images, grid = plots.template_grid(coef)
    assert grid == (2, 5)
    assert images.shape == (10, 28, 28)
    np.testing.assert_array_equal(images[3, 2], coef[3, 56:84])  # row-major reshape
    assert plots.template_grid(coef[:3])[1] == (1, 3)
    assert plots.template_grid(np.zeros((25, 4)), (2, 2))[1] == (5, 5)
    assert plots.template_grid(np.zeros((26, 4)), (2, 2))[1] == (5, 6)


def _saturated_red(image: np.ndarray) -> np.ndarray:
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return (r > 0.35) & (r - g > 0.25) & (r - b > 0.25)


def _saturated_blue(image: np.ndarray) -> np.ndarray:
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return (b > 0.35) & (b - r > 0.25) & (b - g > 0.15)


def test_weight_templates_show_the_pattern_in_its_class_panel(tmp_path):
    # class 0: a bright square; class 7: a dark (negative) bar; everything else 0
    coef = np.zeros((10, 784), dtype=np.float32)
    square = np.zeros((28, 28), np.float32)
    square[8:20, 8:20] = 1.0
    coef[0] = square.ravel()
    bar = np.zeros((28, 28), np.float32)
    bar[4:24, 12:16] = -1.0
    coef[7] = bar.ravel()
    image = read_png(plots.plot_weight_templates(coef, DIGITS, tmp_path / "w.png"))
    assert_not_blank(image)
    h, w = image.shape[:2]
    assert w > h  # a 2x5 grid is wider than tall

    # the colour bar is red at the top and blue at the bottom too, so look left of it
    panels = image[:, : int(0.85 * w)]
    red_rows, red_cols = np.nonzero(_saturated_red(panels))
    blue_rows, blue_cols = np.nonzero(_saturated_blue(panels))
    assert red_rows.size > 100 and blue_rows.size > 50
    # red square: top-left panel (row 0, column 0 of the grid), and square-ish
    assert red_rows.max() < h / 2 and red_cols.max() < w / 4
    red_h = np.ptp(red_rows) + 1
    red_w = np.ptp(red_cols) + 1
    assert 0.8 < red_h / red_w < 1.25
    # blue bar: bottom row, third column (class 7), taller than wide
    assert blue_rows.min() > h / 2 and w / 4 < blue_cols.mean() < w / 2
    assert np.ptp(blue_rows) > 3 * np.ptp(blue_cols)


def test_weight_templates_shared_symmetric_scale(tmp_path):
    # class 1's weights are 10x class 0's: with a shared scale class 0 stays pale, so the
    # strongest red in the figure comes from class 1's panel only
    coef = np.zeros((2, 16), dtype=np.float64)
    coef[0, :8] = 0.1
    coef[1, :8] = 1.0
    image = read_png(
        plots.plot_weight_templates(coef, ["a", "b"], tmp_path / "w.png", image_shape=(4, 4))
    )
    w = image.shape[1]
    red = _saturated_red(image[:, : int(0.75 * w)])
    cols = np.nonzero(red)[1]
    assert cols.size > 0 and cols.min() > 0.3 * w


@pytest.mark.parametrize(
    ("coef", "classes", "match"),
    [
        (np.zeros((10, 783)), DIGITS, "coef"),
        (np.zeros((10, 784)), DIGITS[:9], "classes"),
        (np.zeros(784), DIGITS[:1], "coef"),
    ],
)
def test_weight_templates_errors(tmp_path, coef, classes, match):
    with pytest.raises(ValueError, match=match):
        plots.plot_weight_templates(coef, classes, tmp_path / "w.png")
    assert not (tmp_path / "w.png").exists()


def test_plot_confusion_matrix_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 10, 1000)
    y_pred = np.where(rng.random(1000) < 0.9, y_true, rng.integers(0, 10, 1000))
    image = read_png(plots.plot_confusion_matrix(y_true, y_pred, DIGITS, tmp_path / "c.png"))
    assert_not_blank(image)
    # the diagonal is dark blue: plenty of saturated blue pixels
    assert _saturated_blue(image).sum() > 1000


def test_plot_confusion_matrix_string_labels(tmp_path):
    classes = ["cat", "dog", "bird"]
    path = plots.plot_confusion_matrix(
        ["cat", "dog", "dog"], ["cat", "dog", "bird"], classes, tmp_path / "c.png"
    )
    assert_not_blank(read_png(path))


def test_write_training_plots_writes_three_pngs(tmp_path):
    rng = np.random.default_rng(1)
    directory = tmp_path / "new" / "plots"
    y_true = rng.integers(0, 10, 200)
    paths = plots.write_training_plots(
        directory, history(), rng.normal(size=(10, 784)), DIGITS, y_true, y_true[::-1]
    )
    assert paths == [directory / n for n in ("history.png", "weights.png", "confusion.png")]
    for path in paths:
        assert_not_blank(read_png(path))


# ---------------------------------------------------------------- import hygiene


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_import_fastsoftmax_does_not_import_matplotlib():
    result = run_python(
        """
        import sys
        import fastsoftmax
        import fastsoftmax.cli
        bad = sorted(m for m in sys.modules if m.split(".")[0] == "matplotlib")
        assert not bad, bad
        assert "fastsoftmax.plots" not in sys.modules
        """
    )
    assert result.returncode == 0, result.stderr


def test_missing_matplotlib_explains_how_to_install():
    result = run_python(
        """
        import sys
        sys.modules["matplotlib"] = None  # makes `import matplotlib...` raise ImportError
        try:
            import fastsoftmax.plots
        except ImportError as exc:
            print(exc)
        else:
            raise SystemExit("imported without matplotlib")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "plots need matplotlib: pip install 'fastsoftmax[plot]'" in result.stdout
