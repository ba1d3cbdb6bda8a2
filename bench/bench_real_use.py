"""Benchmarks of real use: what a user's program sees, not a kernel timed alone.

* A user's NumPy training loop (softmax regression on MNIST-shaped float32 rows, batch
  512 and 4096): ``z = X_B @ W.T + b``, the fused ``cross_entropy_with_grad`` (inplace),
  ``W -= lr * g.T @ X_B``, ``b -= lr * g.sum(0)``, with backend "numba" and "numpy", and
  PyTorch's usual loop (nn.Linear, F.cross_entropy, optim.SGD).  A round is STEPS
  consecutive minibatches (cycling through the data), after one untimed warm round;
  pytest-benchmark picks the number of rounds (--benchmark-max-time, at least
  --benchmark-min-rounds); extra_info["seconds_per_step"].
  This VM's speed drifts 30-50% over minutes, so ratios between cases timed minutes
  apart are unreliable; the "interleaved" case per batch size times the three in
  alternation (per round, each implementation in turn, order rotated: a 0.1 s pause, one
  warm step, K timed steps; 5 to 15 rounds, as many as fit in about 6 s) and reports
  the median over rounds of the per-round ratios
  (extra_info["ratio_numba_to_numpy"], ["ratio_numba_to_torch"]).  Its benchmark time is
  the whole interleaved run; the ratios are the product.
* A call after idle: the fused op at 512x10 and 60000x10 float32 back to back, after
  50 ms of sleep (untimed, pedantic's setup), and after 50 ms with the kernels held to
  one thread: the floor the VM itself imposes on a call after idle (caches and the
  vCPU going cold), without waking a worker thread.  extra_info["ratio_after_idle"] =
  this case's median / the back-to-back median of the same run.
* The CLI's epoch rate against an isolated fit: ``fastsoftmax train`` run in-process on
  the real MNIST (../shared/data/mnist from the repository), its printed samples/s of
  the epochs after the first, against ``SoftmaxRegression(same settings).fit`` on the
  same training rows timed alone (rows x epochs / seconds).
* Cold start: a child Python with an empty NUMBA_CACHE_DIR times ``import fastsoftmax``,
  the first fused call (512x10 float32) and the first ``SoftmaxRegression(max_epochs=1)
  .fit`` (2000x784 float32); then the same child with the cache it left warm.  Timed runs
  only (it compiles every kernel: ~20 s); skipped under --benchmark-disable.

Under --benchmark-disable every other case runs its code once, on little data (CI).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import textwrap
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from conftest import benchmark_interleaved, record, timing

import fastsoftmax as fs
from fastsoftmax import bench_cases

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist"
D, C = bench_cases.TRAIN_D, bench_cases.TRAIN_C
LR = 0.1
STEPS = 10  # steps per timed round of the training loop
LOOP_IMPLS = ("numba", "numpy", "torch")
BATCHES = (512, 4096)
# interleaved rounds: at least MIN, at most MAX, no new one after BUDGET_S seconds
MIN_ROUNDS, MAX_ROUNDS, BUDGET_S = 5, 15, 6.0
# 60 steps per round: PyTorch's first steps after the pause run up to 3x slower on this
# VM (batch 512: 2.5 ms per step with 10 per round, 0.87 ms with 60)
K_INTERLEAVED, PAUSE_S = 60, 0.1
IDLE_S = 0.05
CLI_EPOCHS = 3


def _needs(impl):
    if impl == "torch":
        pytest.importorskip("torch")
    elif impl == "numba":
        pytest.importorskip("numba")


@pytest.fixture(scope="module")
def mnist_shaped_f32(request):
    """(X float32 (n, 784) in [0, 1], y int64): 60000 rows (8192 under
    --benchmark-disable)."""
    n = bench_cases.TRAIN_N if timing(request) else 8192
    _, x, y = bench_cases.mnist_shaped(n, D, C)
    return x, y


# ------------------------------------------------------------ a user's training loop
def make_step(impl: str, x: np.ndarray, y: np.ndarray, batch: int):
    """One training step of `impl` per call, on the next minibatch (cycling)."""
    n_batches = len(x) // batch
    at = [0]

    def next_slice() -> slice:
        i = at[0]
        at[0] = (i + 1) % n_batches
        return slice(i * batch, (i + 1) * batch)

    if impl == "torch":
        import torch
        import torch.nn.functional as F

        torch.manual_seed(0)
        model = torch.nn.Linear(D, C)
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def step():
            s = next_slice()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xt[s]), yt[s]).backward()
            opt.step()

        return step

    W = np.zeros((C, D), np.float32)
    b = np.zeros(C, np.float32)

    def step():
        s = next_slice()
        xb, yb = x[s], y[s]
        z = xb @ W.T + b
        _, g = fs.cross_entropy_with_grad(z, yb, inplace=True, backend=impl)
        W[...] -= LR * (g.T @ xb)
        b[...] -= LR * g.sum(0)

    return step


@pytest.mark.parametrize("impl", LOOP_IMPLS)
@pytest.mark.parametrize("batch", BATCHES)
def test_numpy_training_loop(benchmark, batch, impl, mnist_shaped_f32, request):
    """STEPS consecutive steps of a user's loop per round."""
    _needs(impl)
    x, y = mnist_shaped_f32
    step = make_step(impl, x, y, batch)
    steps = STEPS if timing(request) else 2

    def steps_round():
        for _ in range(steps):
            step()

    benchmark.group = f"real use: NumPy training loop, batch {batch}, {D}->{C} float32"
    steps_round()  # warm: compiled, caches and thread pools in use
    benchmark(steps_round)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    extra = {"steps_per_round": steps}
    if stats is not None:  # None under --benchmark-disable
        extra["seconds_per_step"] = stats.median / steps
    record(benchmark.group, impl, benchmark, None, None, rows=steps * batch, extra=extra)


@pytest.mark.parametrize("batch", BATCHES)
def test_numpy_training_loop_interleaved(benchmark, batch, mnist_shaped_f32, request):
    """The three loops in alternation; the median of per-round time ratios."""
    _needs("numba")
    x, y = mnist_shaped_f32
    impls = [i for i in LOOP_IMPLS if i != "torch" or _has("torch")]
    steps = {impl: make_step(impl, x, y, batch) for impl in impls}
    benchmark.group = f"real use: NumPy training loop, batch {batch}, interleaved rounds"
    per_step, extra = benchmark_interleaved(
        benchmark, request, steps, k=K_INTERLEAVED, pause_s=PAUSE_S,
        rounds=(MIN_ROUNDS, MAX_ROUNDS), budget_s=BUDGET_S,
    )  # fmt: skip

    def ratio(a, b):
        if a not in per_step or b not in per_step:
            return None
        return statistics.median(ta / tb for ta, tb in zip(per_step[a], per_step[b], strict=True))

    extra["ratio_numba_to_numpy"] = ratio("numba", "numpy")
    extra["ratio_numba_to_torch"] = ratio("numba", "torch")
    extra = {key: v for key, v in extra.items() if v is not None}
    benchmark.extra_info.update(extra)  # also under --benchmark-disable
    record(benchmark.group, "interleaved", benchmark, None, None, extra=extra)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ------------------------------------------------------------------ a call after idle
_back_to_back: dict[tuple[int, int], float] = {}


@contextlib.contextmanager
def _one_thread():
    """Kernels on one thread: Numba's count for this thread and, where fastsoftmax has
    its own cap (fastsoftmax.thread_limit), that too; both restored after."""
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        limit = getattr(fs, "thread_limit", None)
        with limit(1) if limit is not None else contextlib.nullcontext():
            yield
    finally:
        numba.set_num_threads(old)


@pytest.mark.parametrize("mode", ["back-to-back", "after-idle", "after-idle-1-thread"])
@pytest.mark.parametrize("shape", [(512, 10), (60000, 10)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_call_after_idle(benchmark, shape, mode, request):
    _needs("numba")
    n, c = shape
    case = bench_cases.OpCase("cross_entropy_with_grad", n, c, "float32")
    z, y = case.inputs()

    def call():
        return fs.cross_entropy_with_grad(z, y, backend="numba")

    benchmark.group = f"real use: cross_entropy_with_grad float32 {n}x{c}, after idle"
    rounds = (200 if n * c < 10**5 else 100) if mode == "back-to-back" else 40
    if mode == "back-to-back":
        benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=3)
    else:
        call()  # compiled and warm before the first timed round

        def idle():
            time.sleep(IDLE_S)

        threads = _one_thread() if mode.endswith("1-thread") else contextlib.nullcontext()
        with threads:
            benchmark.pedantic(call, setup=idle, rounds=rounds, iterations=1)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    extra = {
        "idle_s": 0.0 if mode == "back-to-back" else IDLE_S,
        "numba_threads": 1 if mode.endswith("1-thread") else _numba_threads(),
    }
    if stats is not None:
        if mode == "back-to-back":
            _back_to_back[shape] = stats.median
        if shape in _back_to_back:
            extra["ratio_after_idle"] = stats.median / _back_to_back[shape]
    record(benchmark.group, mode, benchmark, case.bytes_moved, None, rows=n, extra=extra)


def _numba_threads() -> int:
    import numba

    return numba.get_num_threads()


# --------------------------------------------------- the CLI's epoch rate vs a fit
_fit_rate: dict[str, float] = {}
_EPOCH_LINE = re.compile(r"^epoch\s+(\d+)/\d+\s.*?([\d,]+) samples/s\s*$", re.M)


@pytest.fixture(scope="module")
def mnist_train():
    from fastsoftmax import data

    if not (MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"the real MNIST training set is not in {MNIST}")
    return data.load("mnist", "train", data_dir=MNIST, download=False)


def _cli_settings(request) -> tuple[int, int]:
    """(epochs, training rows): CLI_EPOCHS on all rows, or 1 epoch on 2000 rows under
    --benchmark-disable."""
    return (CLI_EPOCHS, 0) if timing(request) else (1, 2000)


@pytest.mark.parametrize("how", ["fit", "cli"])
def test_cli_epoch_rate_vs_fit(benchmark, how, mnist_train, request):
    """`fastsoftmax train` (the CLI's defaults: batch 64, lr 0.1, backend auto, seed 0)
    in-process, and SoftmaxRegression.fit with the same settings on the same rows."""
    epochs, rows = _cli_settings(request)
    x, y = mnist_train
    if rows:
        x, y = x[:rows], y[:rows]
    benchmark.group = f"real use: CLI train vs fit, real MNIST {len(x)}x{D}, {epochs} epochs"
    if how == "fit":

        def fit():
            return fs.SoftmaxRegression(
                learning_rate=0.1, batch_size=64, max_epochs=epochs, random_state=0
            ).fit(x, y)

        benchmark.pedantic(fit, rounds=3, warmup_rounds=1)
        stats = getattr(getattr(benchmark, "stats", None), "stats", None)
        extra = {"epochs": epochs}
        if stats is not None:
            _fit_rate["samples_per_s"] = len(x) * epochs / stats.median
        record(benchmark.group, "fit", benchmark, None, None, rows=len(x) * epochs, extra=extra)
        return

    from fastsoftmax.cli import main

    argv = ["train", "--data-dir", str(MNIST), "--no-download", "--quiet"]
    argv += ["--epochs", str(epochs)] + (["--train-size", str(rows)] if rows else [])
    out = StringIO()

    def cli() -> int:
        out.seek(0)
        out.truncate()
        with redirect_stdout(out):
            return main(argv)

    assert benchmark.pedantic(cli, rounds=1, iterations=1) == 0, out.getvalue()
    rates = [float(r.replace(",", "")) for _, r in _EPOCH_LINE.findall(out.getvalue())]
    assert len(rates) == epochs, out.getvalue()
    later = rates[1:] or rates  # the epochs after the first (all of them for 1 epoch)
    extra = {
        "epochs": epochs,
        "cli_samples_per_s_per_epoch": rates,
        "cli_samples_per_s": statistics.median(later),
    }
    if "samples_per_s" in _fit_rate:
        extra["fit_samples_per_s"] = _fit_rate["samples_per_s"]
        extra["ratio_cli_to_fit"] = extra["cli_samples_per_s"] / _fit_rate["samples_per_s"]
    benchmark.extra_info.update(extra)
    record(benchmark.group, "cli", benchmark, None, None, extra=extra)


# --------------------------------------------------------------------------- cold start
_CHILD = textwrap.dedent(
    """
    import json, time
    t0 = time.perf_counter()
    import numpy as np
    t1 = time.perf_counter()
    import fastsoftmax as fs
    t2 = time.perf_counter()
    rng = np.random.default_rng(0)
    z = rng.standard_normal((512, 10), dtype=np.float32)
    y = rng.integers(0, 10, 512)
    t3 = time.perf_counter()
    fs.cross_entropy_with_grad(z, y)
    t4 = time.perf_counter()
    x = rng.random((2000, 784), dtype=np.float32)
    labels = rng.integers(0, 10, 2000)
    t5 = time.perf_counter()
    fs.SoftmaxRegression(max_epochs=1, random_state=0).fit(x, labels)
    t6 = time.perf_counter()
    from fastsoftmax._backends import resolve
    print(json.dumps({
        "import_numpy_s": t1 - t0,
        "import_fastsoftmax_s": t2 - t1,
        "first_fused_call_s": t4 - t3,
        "first_fit_s": t6 - t5,
        "backend": getattr(resolve(z, None), "name", "?"),
    }))
    """
)
_warm_cache: list[Path] = []


def _run_child(cache: Path) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cache", ["empty-cache", "warm-cache"])
def test_cold_start(benchmark, cache, request, tmp_path_factory):
    if not timing(request):
        pytest.skip("cold start compiles every kernel in a child process (~20 s): timed runs only")
    _needs("numba")
    benchmark.group = "real use: cold start in a fresh process"
    if cache == "empty-cache":
        cache_dir = tmp_path_factory.mktemp("numba-cache")
        figures = benchmark.pedantic(_run_child, args=(cache_dir,), rounds=1, iterations=1)
        _warm_cache[:] = [cache_dir]  # the warm case reuses what this one compiled
    else:
        if not _warm_cache:  # the empty-cache case did not run: fill a cache, untimed
            _warm_cache.append(tmp_path_factory.mktemp("numba-cache"))
            _run_child(_warm_cache[0])
        figures = benchmark.pedantic(_run_child, args=(_warm_cache[0],), rounds=1, iterations=1)
    record(benchmark.group, cache, benchmark, None, None, extra=figures)
