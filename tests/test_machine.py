"""fastsoftmax.machine: the CPU facts a result records (the CPU model, the CPU and
SIMD level Numba compiles for)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from fastsoftmax import machine
from fastsoftmax._cpu_target import simd_of_feature_string


def test_numba_target_describes_this_process():
    info = machine.numba_target()
    assert info["cpu_model"] == machine.cpu_model()
    pytest.importorskip("numba")
    from numba.core import config

    assert info["numba_cpu_name"]
    assert isinstance(info["numba_cpu_features"], str)
    if config.CPU_FEATURES is None:  # the host's features, as Numba computes them
        from numba.core.codegen import get_host_cpu_features

        assert info["numba_cpu_features"] == get_host_cpu_features()
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert info["simd"] in ("avx512", "avx2", "sse")
        assert "probe" in info["simd_from"]
        # on the host's own features the probe agrees with reading the feature string
        if info["numba_cpu_features_from"].startswith("host") and config.ENABLE_AVX:
            assert info["simd"] == simd_of_feature_string(info["numba_cpu_features"])


def test_simd_of_feature_string():
    f = simd_of_feature_string
    assert f("+sse2,+avx,+avx2,+avx512f,+fma") == "avx512"
    assert f("+avx2,-avx512f") == "avx2"
    assert f("+avx512f,-avx512f,+avx2") == "avx2"  # the last mention wins
    assert f("+sse4.2,-avx2") == "sse"
    assert f("") == "sse"


def _numba_target_in_child(env: dict) -> dict:
    """numba_target() in a child process whose NUMBA_CPU_* variables are `env`'s."""
    code = "import json; from fastsoftmax import machine as m; "
    code += "print(json.dumps(m.numba_target()))"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU_")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
        env={**child_env, **env},
    )  # fmt: skip
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    ("env", "simd"),
    [
        # NUMBA_CPU_NAME alone keeps the host's features (+avx512f where the host has it),
        # so the name does not lower the ISA; an empty NUMBA_CPU_FEATURES means the named
        # CPU's own features
        ({"NUMBA_CPU_NAME": "znver3", "NUMBA_CPU_FEATURES": ""}, "avx2"),
        ({"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""}, "avx2"),
        ({"NUMBA_CPU_NAME": "skylake-avx512", "NUMBA_CPU_FEATURES": ""}, "avx512"),
        ({"NUMBA_CPU_NAME": "skylake-avx512", "NUMBA_CPU_FEATURES": "-avx512f"}, "avx2"),
        ({"NUMBA_CPU_NAME": "generic"}, "sse"),
    ],
)
def test_numba_target_follows_numbas_environment(env, simd):
    """The record follows what Numba compiles for (checked against LLVM, in a child
    process: Numba reads these variables at import)."""
    pytest.importorskip("numba")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the simd names are x86's")
    info = _numba_target_in_child(env)
    assert info["numba_cpu_name"] == env["NUMBA_CPU_NAME"]
    assert info["numba_cpu_name_from"] == "NUMBA_CPU_NAME"
    assert info["numba_cpu_features"] == env.get("NUMBA_CPU_FEATURES", "")
    assert info["simd"] == simd


def test_numba_target_with_only_a_cpu_name_keeps_the_host_features():
    pytest.importorskip("numba")
    from numba.core.codegen import get_host_cpu_features

    info = _numba_target_in_child({"NUMBA_CPU_NAME": "znver3"})
    assert info["numba_cpu_features"] == get_host_cpu_features()
    assert info["numba_cpu_features_from"].startswith("host")
    if platform.machine().lower() in ("x86_64", "amd64"):
        # what the host's features give: avx512 on an AVX-512 host, though znver3 has none
        assert info["simd"] == simd_of_feature_string(get_host_cpu_features())


def test_gpu_name_asks_only_gpu_rows():
    class Row:
        def __init__(self, name, device):
            self.name, self.device = name, device

    assert machine.gpu_name([Row("numpy", "cpu"), Row("numba", "cpu")]) is None


def test_peak_memory_sees_a_numpy_allocation():
    with machine.peak_memory() as mem:
        a = np.ones(1 << 22)  # 32 MiB
        del a
    assert mem["traced"] >= 8 << 22
    assert mem["rss"] is None or mem["rss"] >= 0
