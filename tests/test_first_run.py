"""A process that compiles the kernels computes the same bits as one that loads them
from Numba's cache (fastsoftmax/_numba/_ir_only.py).

Oracle: the second process itself.  A child Python with an empty NUMBA_CACHE_DIR
compiles and runs each op on fixed inputs and prints a hash of every result; a second
child with the cache the first one left loads the kernels and runs the same.  Before the
helpers were kept as IR only, the large-C fused gradient at 300 x 1000 float32 differed
in the last bit for 15% of its elements between the two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("numba")

REPO = Path(__file__).resolve().parents[1]

_CHILD = textwrap.dedent(
    """
    import hashlib, json
    import numpy as np
    import fastsoftmax as fs
    from fastsoftmax._numba import kernels

    def h(*arrays):
        d = hashlib.sha256()
        for a in arrays:
            d.update(np.ascontiguousarray(a).tobytes())
        return d.hexdigest()[:16]

    rng = np.random.default_rng(3)
    out = {"marked": sum(map(fs._numba._ir_only.is_ir_only, vars(kernels).values()))}
    for n, c in ((300, 1000), (2000, 10)):
        z = (rng.standard_normal((n, c)) * 3).astype(np.float32)
        y = rng.integers(0, c, n)
        y[::17] = -100
        q = rng.random((n, c)).astype(np.float32)
        q /= q.sum(1, keepdims=True)
        out[f"fused {n}x{c}"] = h(*fs.cross_entropy_with_grad(z, y, label_smoothing=0.1))
        out[f"prob {n}x{c}"] = h(*fs.cross_entropy_with_grad(z, q))
        out[f"softmax {n}x{c}"] = h(fs.softmax(z), fs.log_softmax(z), fs.logsumexp(z))
        out[f"backward {n}x{c}"] = h(fs.softmax_backward(fs.softmax(z), z))
    x = rng.random((2000, 784)).astype(np.float32)
    t = rng.integers(0, 10, 2000)
    m = fs.SoftmaxRegression(max_epochs=1, random_state=0).fit(x, t)
    out["fit"] = h(m.coef_, m.intercept_)
    print(json.dumps(out))
    """
)


def _run(cache: Path, env_extra: dict | None = None) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), **(env_extra or {}))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env,
        cwd=REPO, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fresh_compilation_and_the_cache_give_the_same_bits(tmp_path):
    env = {"FASTSOFTMAX_IR_ONLY_HELPERS": "1"}
    fresh = _run(tmp_path, env)
    assert any(tmp_path.rglob("*.nbi")), "the first process left no cache"
    cached = _run(tmp_path, env)
    assert fresh["marked"] > 0
    assert fresh == cached
