"""`fastsoftmax train | evaluate | predict` on real MNIST images, offline.

The training set of these tests is the first 8000 images of the real MNIST test set and
the held-out set its last 2000 (written as IDX files into a temporary data folder).
"""

from __future__ import annotations

import gzip
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import MNIST_DIR

from fastsoftmax import SoftmaxRegression, data
from fastsoftmax.cli import main
from fastsoftmax.estimator import ModelFileError, load_model, save_model
from fastsoftmax.train import loop

EPOCH_LINE = re.compile(
    r"^epoch\s+(\d+)/(\d+)\s+train loss ([\d.]+)\s+test accuracy ([\d.]+)%\s+([\d,]+) samples/s$",
    re.M,
)


def _write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"the real MNIST test set is not in {MNIST_DIR}")
    x, y = data.load("mnist", "test", data_dir=MNIST_DIR, download=False)
    d = tmp_path_factory.mktemp("mnist-split")
    _write_idx(d / "train-images-idx3-ubyte.gz", x[:8000].reshape(-1, 28, 28))
    _write_idx(d / "train-labels-idx1-ubyte.gz", y[:8000])
    _write_idx(d / "t10k-images-idx3-ubyte.gz", x[8000:].reshape(-1, 28, 28))
    _write_idx(d / "t10k-labels-idx1-ubyte.gz", y[8000:])
    return d


def _train(split_dir, *extra):
    return main(["train", "--data-dir", str(split_dir), "--no-download", "--quiet", *extra])


def test_train_default_settings_reach_92_percent_and_evaluate_agrees(split_dir, tmp_path, capsys):
    model_path = tmp_path / "model.npz"
    assert _train(split_dir, "--save", str(model_path)) == 0
    out = capsys.readouterr().out
    epochs = EPOCH_LINE.findall(out)
    assert [int(e[0]) for e in epochs] == list(range(1, 21))
    losses = [float(e[2]) for e in epochs]
    assert losses[-1] < losses[0]
    final = float(re.search(r"final test accuracy: ([\d.]+)%", out).group(1))
    assert final >= 92.0
    assert final == pytest.approx(float(epochs[-1][3]))

    # the saved model reproduces that accuracy, computed here independently
    model, meta = load_model(model_path)
    assert meta["dataset"] == "mnist" and len(meta["history"]["epoch"]) == 20
    x, y = data.load("mnist", "test", data_dir=split_dir, download=False)
    acc = 100 * np.mean(model.predict(x) == y)
    assert acc == pytest.approx(final, abs=0.005)
    assert main(["evaluate", str(model_path), "--data-dir", str(split_dir), "--no-download"]) == 0
    out = capsys.readouterr().out
    assert f"accuracy {acc:.2f}%" in out


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_train_backends_agree(split_dir, tmp_path, backend):
    path = tmp_path / f"{backend}.npz"
    assert _train(split_dir, "--epochs", "2", "--backend", backend, "--save", str(path)) == 0
    ref = SoftmaxRegression(backend="numpy", max_epochs=2, random_state=0)
    x, y = data.load("mnist", "train", data_dir=split_dir, download=False)
    ref.fit(x, y)
    model, _ = load_model(path)
    np.testing.assert_allclose(model.coef_, ref.coef_, rtol=0, atol=1e-4)


def test_stop_mid_epoch_then_resume_equals_uninterrupted(split_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loop, "ROWS_PER_CALL", 1024)  # several stop points per epoch
    full = tmp_path / "full.npz"
    assert _train(split_dir, "--epochs", "3", "--save", str(full)) == 0

    calls = {"n": 0}

    def stop_after_some_calls(self):
        calls["n"] += 1
        return calls["n"] >= 12  # inside epoch 2 (8 calls per epoch)

    from fastsoftmax import cli

    monkeypatch.setattr(cli._StopFlag, "__call__", stop_after_some_calls)
    ckpt = tmp_path / "ck.npz"
    part = tmp_path / "part.npz"
    rc = _train(split_dir, "--epochs", "3", "--save", str(part), "--checkpoint", str(ckpt))
    assert rc == 130
    assert not part.exists()
    err = capsys.readouterr().err
    assert f"--resume {ckpt}" in err
    stopped, _ = load_model(ckpt)
    assert stopped.n_iter_ == 1 and 0 < stopped._state.step < 125

    monkeypatch.setattr(cli._StopFlag, "__call__", lambda self: False)
    assert _train(split_dir, "--resume", str(ckpt), "--save", str(part)) == 0
    a, meta_a = load_model(full)
    b, meta_b = load_model(part)
    np.testing.assert_array_equal(a._state.W, b._state.W)
    np.testing.assert_array_equal(a._state.b, b._state.b)
    assert a.loss_curve_ == b.loss_curve_
    assert meta_a["history"]["test_accuracy"] == meta_b["history"]["test_accuracy"]


def test_ctrl_c_saves_a_checkpoint(split_dir, tmp_path):
    """A real SIGINT to the console script: exit status 130 and a resumable checkpoint."""
    ckpt = tmp_path / "ck.npz"
    cmd = [
        sys.executable, "-m", "fastsoftmax", "train", "--data-dir", str(split_dir),
        "--no-download", "--quiet", "--backend", "numpy", "--batch-size", "8",
        "--epochs", "1000", "--checkpoint", str(ckpt),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while True:  # the handler is installed before the first epoch line
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            if EPOCH_LINE.match(line.strip()):
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err
    model, meta = load_model(ckpt)
    assert 1 <= model.n_iter_ < 1000 and meta["epochs"] == 1000


def test_plots(split_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plots = tmp_path / "plots"
    assert _train(split_dir, "--epochs", "1", "--plots", str(plots)) == 0
    for name in ("history.png", "weights.png", "confusion.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_png_and_idx(split_dir, tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    model_path = tmp_path / "m.npz"
    assert _train(split_dir, "--epochs", "2", "--save", str(model_path)) == 0
    x, _ = data.load("mnist", "test", data_dir=split_dir, download=False)
    pngs = []
    for i in range(3):
        pngs.append(tmp_path / f"digit{i}.png")
        Image.fromarray(x[i].reshape(28, 28)).save(pngs[-1])
    idx = split_dir / "t10k-images-idx3-ubyte.gz"
    capsys.readouterr()
    assert main(["predict", str(model_path), *map(str, pngs), str(idx)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 + len(x)
    model, _ = load_model(model_path)
    expected = model.predict(x)
    for i in range(3):
        name, label, prob = lines[i].split("\t")
        assert name == str(pngs[i]) and int(label) == expected[i] and 0.1 <= float(prob) <= 1
    name, label, _ = lines[3 + 17].split("\t")
    assert name == f"{idx}[17]" and int(label) == expected[17]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--train-size", "-5"], "--train-size must be >= 0"),
        (["--lr", "inf"], "learning_rate must be a positive finite number"),
        (["--weight-decay", "inf"], "weight_decay must be a finite number >= 0"),
        (["--seed", "-1"], "random_state must be None, an int >= 0"),
    ],
)
def test_bad_training_options_are_errors(split_dir, tmp_path, capsys, options, message):
    """Options that cannot train a usable model stop with a message (exit 2) and save
    nothing: not a model of NaN weights, nor 59995 images for --train-size -5."""
    saved = tmp_path / "model.npz"
    assert _train(split_dir, "--epochs", "1", "--save", str(saved), *options) == 2
    assert message in capsys.readouterr().err
    assert not saved.exists()


def test_bad_model_files_are_named(split_dir, tmp_path, capsys):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(os.urandom(200))
    with pytest.raises(ModelFileError, match=r"junk\.npz"):
        load_model(junk)
    assert main(["evaluate", str(junk), "--data-dir", str(split_dir), "--no-download"]) == 2
    assert "junk.npz" in capsys.readouterr().err

    good = tmp_path / "good.npz"
    model = SoftmaxRegression(max_epochs=1, random_state=0).fit(
        np.random.default_rng(0).random((40, 100)), np.arange(40) % 3
    )
    save_model(good, model)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ModelFileError, match=r"truncated\.npz"):
        load_model(truncated)
    # a model of another shape: 100 features, MNIST has 784
    assert main(["evaluate", str(good), "--data-dir", str(split_dir), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert "100 features" in err and "784" in err
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "missing.npz")


def test_model_file_round_trip_with_string_labels(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((60, 5))
    labels = np.array(["cat", "dog", "eel"])[np.arange(60) % 3]
    model = SoftmaxRegression(max_epochs=3, random_state=0, momentum=0.5).fit(x, labels)
    save_model(tmp_path / "m.npz", model, metadata={"note": "x"})
    back, meta = load_model(tmp_path / "m.npz")
    assert meta == {"note": "x"}
    assert back.get_params() == model.get_params()
    np.testing.assert_array_equal(back.predict_proba(x), model.predict_proba(x))
    assert list(back.classes_) == ["cat", "dog", "eel"]
    with np.load(tmp_path / "m.npz", allow_pickle=False) as npz:  # no pickled entries
        assert str(npz["fastsoftmax_version"])


def test_offline_without_data_lists_missing_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(data.SYSTEM_DATA_DIRS, "mnist", ())
    assert main(["train", "--data-dir", str(tmp_path), "--no-download", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and str(tmp_path) in err


DONE_LINE = re.compile(
    r"^done: (\d+) epochs, ([\d,]+) samples in ([\d.]+) s of training \(([\d,]+) samples/s\), "
    r"([\d.]+) s with the per-epoch testing; final test accuracy: ([\d.]+)% \((\d+) images\)$"
)


def test_last_line_gives_time_and_throughput_on_real_mnist(capsys):
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"the real MNIST training set is not in {MNIST_DIR}")
    argv = ["train", "--data-dir", str(MNIST_DIR), "--no-download", "--quiet", "--source", "idx"]
    assert main([*argv, "--train-size", "3000", "--epochs", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    done = DONE_LINE.match(lines[-1])
    assert done, lines[-1]
    epochs, samples, seconds, rate, wall, acc, images = done.groups()
    assert (int(epochs), samples, images) == (2, "6,000", "10000")
    assert 0 < float(seconds) <= float(wall)
    # the training time is the epoch lines' (3000 images each): the same samples/s overall
    epoch_lines = EPOCH_LINE.findall("\n".join(lines))
    epoch_seconds = sum(3000 / int(e[4].replace(",", "")) for e in epoch_lines)
    assert int(rate.replace(",", "")) == pytest.approx(6000 / epoch_seconds, rel=0.01)
    assert 80.0 <= float(acc) <= 100.0
    assert float(acc) == pytest.approx(float(epoch_lines[-1][3]))


def test_resume_honours_epochs_and_rejects_other_settings(split_dir, tmp_path, capsys):
    first, resumed, straight = tmp_path / "1.npz", tmp_path / "2.npz", tmp_path / "s.npz"
    # a constant rate: a decay's horizon is --epochs, which the resumed run changes
    settings = ["--train-size", "2000", "--lr", "0.05", "--momentum", "0.5"]
    settings += ["--lr-schedule", "constant"]
    assert _train(split_dir, *settings, "--epochs", "1", "--save", str(first)) == 0
    assert _train(split_dir, *settings, "--epochs", "2", "--save", str(straight)) == 0
    capsys.readouterr()

    # --epochs beyond the checkpoint's: trained on to 2 epochs, on its 2000 images (not
    # given again), as a run straight to 2 epochs; the same --lr typed again is fine
    assert _train(split_dir, "--resume", str(first), "--epochs", "2", "--lr", "0.05",
                  "--save", str(resumed)) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert [e[:2] for e in EPOCH_LINE.findall(out)] == [("2", "2")]
    assert DONE_LINE.match(out.splitlines()[-1]).group(1, 2) == ("1", "2,000")
    a, meta = load_model(resumed)
    b, _ = load_model(straight)
    assert a.n_iter_ == 2 and meta["epochs"] == 2 and meta["train_size"] == 2000
    np.testing.assert_array_equal(a._state.W, b._state.W)

    # settings the checkpoint fixes: a typed value that differs is an error naming it
    for opt, value in [("--lr", "0.5"), ("--batch-size", "32"), ("--momentum", "0"),
                       ("--weight-decay", "0.001"), ("--seed", "1"),
                       ("--train-size", "3000")]:  # fmt: skip
        assert _train(split_dir, "--resume", str(first), opt, value) == 2, opt
        err = capsys.readouterr().err
        assert err.startswith(f"fastsoftmax: error: {opt} "), err
        assert f"conflicts with --resume {first}" in err and f"leave out {opt}" in err
    # fewer epochs than the checkpoint has trained
    assert _train(split_dir, "--resume", str(resumed), "--epochs", "1") == 2
    assert "pass --epochs 2 or more" in capsys.readouterr().err
    # a misspelt option is not taken for another (it once set --epochs, then ignored)
    with pytest.raises(SystemExit) as exc:
        _train(split_dir, "--resume", str(first), "--epoch", "20")
    assert exc.value.code == 2
    assert "unrecognized arguments: --epoch 20" in capsys.readouterr().err


def test_trainer_options_reach_the_model(split_dir, tmp_path, capsys):
    """The estimator's training options from the command line: the saved model has
    them, and --tol stops as its rule says (a tol larger than any loss: the first epoch
    sets the best, the next --n-iter-no-change epochs stop the run)."""
    path = tmp_path / "opts.npz"
    opts = [
        "--train-size", "2000", "--epochs", "10", "--lr-schedule", "cosine", "--lr", "0.3",
        "--average", "100", "--tol", "1e9", "--n-iter-no-change", "2",
        "--class-weight", "balanced", "--save", str(path),
    ]  # fmt: skip
    assert _train(split_dir, *opts) == 0
    out = capsys.readouterr().out
    assert [int(e[0]) for e in EPOCH_LINE.findall(out)] == [1, 2, 3]
    model, _ = load_model(path)
    params = model.get_params()
    assert params["lr_schedule"] == "cosine" and params["learning_rate"] == 0.3
    assert params["average"] == 100 and params["tol"] == 1e9
    assert params["n_iter_no_change"] == 2 and params["class_weight"] == "balanced"
    # the averaged model is what predicts: coef_ is the mean of the iterates, not W
    assert model._state.Wa is not None
    np.testing.assert_array_equal(model.coef_, model._state.Wa)
    assert not np.array_equal(model.coef_, model._state.W)


def test_help_lists_every_train_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    options = text.split("\noptions:", 1)[1]
    for opt, default in [("--lr", "0.5"), ("--epochs", "20"), ("--lr-schedule", "linear")]:
        entry = options.split(f"\n  {opt} ", 1)[1].split("\n  -", 1)[0]
        assert f"(default: {default})" in " ".join(entry.split()), opt
    for opt in ("--average", "--tol", "--n-iter-no-change", "--early-stopping",
                "--validation-fraction", "--class-weight", "--power-t"):  # fmt: skip
        assert opt in text, opt
