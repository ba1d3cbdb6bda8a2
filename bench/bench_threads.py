"""What the thread policy (fastsoftmax._threads) is built on: the serial cost per
element of each kernel family (the numba backend's SERIAL_SECONDS_PER_ELEMENT), the
cost of waking the pool after it has been idle for a while, and what the pool gains a
small-C call back to back in a process of the backend's own (no PyTorch loaded, so
libgomp spins as the backend set it: docs/threads-and-cold-start.md).

Run: pytest bench/bench_threads.py [--benchmark-json=out.json]
     NUMBA_CPU_NAME=znver3 pytest bench/bench_threads.py   (AVX2 code on an AVX-512 CPU)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import record, timing

import fastsoftmax as fs

numba = pytest.importorskip("numba")

# (rows, classes): the small-C tile path, the only one the policy chooses for (the
# row-path kernels always run in parallel above the cut-off: fastsoftmax/_numba)
SHAPES = {"small_c": (65536, 10)}
CALLS = {
    "xent": lambda z, y: fs.cross_entropy_with_grad(z, y, inplace=True),
    "xent_fwd": lambda z, y: fs.cross_entropy(z, y),
    "softmax": lambda z, y: fs.softmax(z, out=z),
    "log_softmax": lambda z, y: fs.log_softmax(z, out=z),
    "logsumexp": lambda z, y: fs.logsumexp(z),
}


@pytest.fixture
def serial_only():
    from fastsoftmax import _numba

    old = _numba.policy.force
    _numba.policy.force = False
    yield
    _numba.policy.force = old


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("path", list(SHAPES))
@pytest.mark.parametrize("op", list(CALLS))
def test_serial_seconds_per_element(benchmark, serial_only, op, path, dtype):
    rows, classes = SHAPES[path]
    rng = np.random.default_rng(0)
    base = rng.standard_normal((rows, classes)).astype(dtype)
    y = rng.integers(0, classes, rows)
    z = base.copy()
    call = CALLS[op]
    call(z, y)  # compile or load, and touch the pages

    def setup():
        np.copyto(z, base)  # in-place ops would otherwise feed on their own output
        return (z, y), {}

    benchmark.pedantic(call, setup=setup, rounds=15, iterations=1, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        per = stats.stats.median / (rows * classes)
        record(f"serial {op} {path} {dtype}", "numba", benchmark, None, None,
               extra={"seconds_per_element": per})  # fmt: skip


@pytest.mark.parametrize("idle_s", [0.0, 1e-4, 1e-3, 1e-2, 5e-2])
def test_wake_up_after_idle(benchmark, idle_s):
    """A parallel no-op region (a fused call forced onto the pool, 4097 logits) after
    `idle_s` of sleep: what the policy's wake-up costs estimate."""
    from fastsoftmax import _numba

    z = np.zeros((4097, 1), np.float32)
    y = np.zeros(4097, np.int64)
    old = _numba.policy.force
    _numba.policy.force = True
    try:
        fs.cross_entropy(z, y)

        def setup():
            if idle_s:
                time.sleep(idle_s)
            return (z, y), {}

        benchmark.pedantic(fs.cross_entropy, setup=setup, rounds=30, iterations=1)
    finally:
        _numba.policy.force = old
    record("wake-up after idle", f"{idle_s * 1e3:g} ms", benchmark, None, None)


# A child Python, so that no other library has loaded libgomp first (PyTorch's keeps
# its own, longer spin).  "pool": the fused 60000 x 10 call on the pool (the policy
# forced) and held to one thread, interleaved rounds.  "loop": a user's NumPy loop whose
# fused call takes the pool, z = X_B @ W.T, the call in place, W -= lr g.T @ X_B, at
# 512 x 64 x 1000, where our spinning worker meets OpenBLAS's threads.  Prints
# {"seconds_per_call_<name>": median, ...} as JSON.
_CHILD = textwrap.dedent(
    """
    import json, statistics, sys
    import numpy as np
    import fastsoftmax as fs
    from fastsoftmax import _numba
    from conftest import interleaved_rounds

    mode, rows, k, rounds = sys.argv[1], *(int(a) for a in sys.argv[2:5])
    rng = np.random.default_rng(0)
    if mode == "pool":
        z = rng.standard_normal((rows, 10)).astype(np.float32)
        y = rng.integers(0, 10, rows)
        g = np.empty_like(z)
        _numba.policy.force = True  # on the pool whenever more than one thread is allowed

        def pool():
            fs.cross_entropy_with_grad(z, y, out=g)

        def one():
            with fs.thread_limit(1):
                fs.cross_entropy_with_grad(z, y, out=g)

        steps = {"pool": pool, "one_thread": one}
    else:
        x = rng.standard_normal((8 * rows, 64)).astype(np.float32)
        t = rng.integers(0, 1000, 8 * rows)
        w = (rng.standard_normal((1000, 64)) * 0.01).astype(np.float32)
        at = [0]

        def step():
            i = at[0] = (at[0] + 1) % 8
            xb, yb = x[i * rows : (i + 1) * rows], t[i * rows : (i + 1) * rows]
            _, g = fs.cross_entropy_with_grad(xb @ w.T, yb, inplace=True)
            w[...] -= 0.1 * (g.T @ xb)

        steps = {"loop": step}
    per = interleaved_rounds(steps, k=k, pause_s=0.1, rounds=(rounds, rounds), budget_s=0.0)
    out = {f"seconds_per_call_{n}": statistics.median(t) for n, t in per.items()}
    if mode == "pool":
        ratios = [a / b for a, b in zip(per["one_thread"], per["pool"])]
        out["ratio_one_thread_to_pool"] = statistics.median(ratios)
    out["rounds"] = rounds
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("spin", [None, 1000, 30000, 300000], ids=lambda s: f"spin{s or 'default'}")
@pytest.mark.parametrize("mode", ["pool", "loop"])
def test_spin_count_back_to_back(benchmark, request, mode, spin):
    """What libgomp's spin count does, in a child process with GOMP_SPINCOUNT=`spin`
    (None: the backend's own setting).  "pool": the fused 60000 x 10 float32 call back
    to back (20 per round after a pause and a warm call) on the pool and held to one
    thread, extra_info["ratio_one_thread_to_pool"] (2.0 would be a perfect second
    core); "loop": seconds per step of a NumPy loop at 512 x 64 x 1000 (40 per round)."""
    rows, k = {"pool": (60000, 20), "loop": (512, 40)}[mode]
    rounds = 9
    if not timing(request):
        rows, k, rounds = min(rows, 4096), 1, 1
    bench_dir = Path(__file__).resolve().parent
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    if spin is not None:
        env["GOMP_SPINCOUNT"] = str(spin)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(bench_dir.parent), str(bench_dir), env.get("PYTHONPATH")) if p
    )
    args = [sys.executable, "-c", _CHILD, mode, str(rows), str(k), str(rounds)]

    def child() -> dict:
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    figures = benchmark.pedantic(child, rounds=1, iterations=1)
    figures["GOMP_SPINCOUNT"] = spin if spin is not None else "backend default"
    benchmark.extra_info.update(figures)
    record(f"spin count: {mode}", f"spin {spin or 'default'}", benchmark, None, None,
           extra=figures)  # fmt: skip
