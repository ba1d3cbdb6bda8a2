"""The fastsoftmax command."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import MNIST_DIR

from fastsoftmax.cli import main


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
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("no MNIST test set")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastsoftmax",
            "compare",
            "--data-dir",
            str(MNIST_DIR),
            "--no-download",
            "--repeat",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "speedup = reference (numpy) time" in done.stdout
