"""The fastsoftmax command."""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys

import pytest
from conftest import MNIST_DIR

from fastsoftmax.cli import build_parser, main


@pytest.mark.full  # ~15 s: every implementation timed on the MNIST test set
def test_compare_on_real_mnist(mnist_test, capsys):
    assert main(["compare", "--data-dir", str(MNIST_DIR), "--no-download", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "logits (10000, 10) float32" in out
    rows = re.findall(
        r"^\s*(\S+)?\s+(numpy|numba|torch)\s+(\S+)\s+(\S*)\s+([\d.]+)\s+([\d.e+]+)\s+([\d.]+)x$",
        out,
        re.M,
    )
    names = [r[1] for r in rows]
    assert names.count("numpy") == 4 and names.count("numba") == 4
    for _, impl, d_loss, d_grad, *_ in rows:
        assert float(d_loss) < 1e-5, (impl, d_loss)
        if d_grad:
            assert float(d_grad) < 1e-7


def test_compare_without_data_explains(tmp_path, capsys):
    assert main(["compare", "--data-dir", str(tmp_path), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert "t10k-images-idx3-ubyte.gz" in err and str(tmp_path) in err


def test_console_entry_point_runs():
    """python -m fastsoftmax starts and lists its commands (the commands themselves are
    tested in-process; `compare` on MNIST runs with --full)."""
    done = subprocess.run(
        [sys.executable, "-m", "fastsoftmax", "--help"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for command in ("train", "compare", "bench", "warmup"):
        assert command in done.stdout, command


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_has_help_and_shows_its_default(capsys):
    parser = build_parser()
    assert not parser.allow_abbrev
    for name, sub in _subparsers(parser).items():
        assert not sub.allow_abbrev, name
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        text = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
        assert "(default: None)" not in text and "(default: False)" not in text, name
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, (name, action.option_strings)
            if action.default not in (None, False):
                assert f"(default: {action.default})" in text, (name, action.option_strings)


def test_abbreviated_option_is_a_usage_error(capsys):
    # once parsed as --epochs, which a checkpoint's epoch count then silently overrode
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume", "ck.npz", "--epoch", "20"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --epoch 20" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["train", "--quiet"], ["evaluate", "model.npz"], ["compare"]],
    ids=lambda argv: argv[0],
)
def test_source_torchvision_without_torchvision_explains(argv, tmp_path, capsys):
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed")
    rc = main([*argv, "--data-dir", str(tmp_path), "--no-download", "--source", "torchvision"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("fastsoftmax: error: --source torchvision needs torchvision")
    assert "pip install 'fastsoftmax[torchvision]'" in err and "--source idx" in err


def test_source_torchvision_without_torchvision_is_no_traceback(tmp_path):
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed")
    done = subprocess.run(
        [sys.executable, "-m", "fastsoftmax", "train", "--source", "torchvision",
         "--data-dir", str(tmp_path), "--no-download"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "pip install" in done.stderr
