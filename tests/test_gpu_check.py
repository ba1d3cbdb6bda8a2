"""tools/gpu_check.sh, the prepared GPU check: without a GPU it stops at once, non-zero,
with a message saying so (it runs nothing and installs nothing)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.sh"


def _has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    return bool(smi) and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


@pytest.mark.skipif(_has_gpu(), reason="a GPU is present: the script would run the check")
def test_without_a_gpu_the_check_stops_at_once(tmp_path):
    done = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "no CUDA GPU found" in done.stderr
    assert list((tmp_path / "out").iterdir()) == []  # nothing ran, nothing was written


def test_the_check_needs_an_output_folder():
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "usage" in done.stderr
