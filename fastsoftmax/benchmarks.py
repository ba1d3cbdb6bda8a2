"""``fastsoftmax bench``: a pytest-benchmark run of the cases of
``fastsoftmax.bench_cases``, and what the bench/ suites share with it.

`run` has pytest run `bench_op` and `bench_train` below as its test functions, with
this module's plugin (`_Suite`) as their parameters: pytest-benchmark times the cases,
computes the statistics and writes the JSON; the plugin adds the machine's facts
(``fastsoftmax.machine``), the napkin figures (``bench_cases.rates``) and the speedups
to it.  `quiesce` (the pause before each case) and `drop_raw_data` (JSON without
per-round times) serve the bench/ suites too.  The table, the plot and the change
between two runs read the JSON back: ``fastsoftmax.bench_report``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import machine
from .bench_cases import (
    BENCH_OPS,
    BYTES_MODEL,
    DTYPES,
    QUICK_SHAPES,
    QUICK_TRAIN_N,
    SHAPES,
    SLOW_ELEMENTS,
    TRAIN_BATCH,
    TRAIN_C,
    TRAIN_CASES,
    TRAIN_D,
    TRAIN_MODELS,
    TRAIN_N,
    OpCase,
    mnist_shaped,
    rates,
    synchronizer,
    torch_sgd_epochs,
    train_bytes,
    train_flop,
)
from .bench_report import load_json

if TYPE_CHECKING:
    import pytest

# ---------------------------------------------------------------- pytest-benchmark runs
# Seconds to wait before each timed case, in the bench/ suites (bench/conftest.py) and
# in `fastsoftmax bench` alike.  Thread pools spin for a while after their last task
# (OpenBLAS's for up to ~0.1 s, PyTorch's and Numba's OpenMP teams for their
# GOMP_SPINCOUNT), and on a 2-core machine those spinning threads take cycles from the
# next case: the numba epoch measured 34.6 ms right after the numpy backend's epochs
# against 22.3 ms alone (bench_train.py, same machine).
QUIESCE_S = 0.3
_PLUGIN = "fastsoftmax-bench"


def quiesce(config: pytest.Config) -> None:
    """Let the previous case's thread pools go idle (not under --benchmark-disable):
    called before every case of a pytest-benchmark run."""
    if not config.getoption("benchmark_disable", False):
        time.sleep(QUIESCE_S)


def drop_raw_data(doc: dict) -> dict:
    """Remove each benchmark's per-round times (``stats["data"]``) from a pytest-benchmark
    document, in place, and return it; the statistics, extra_info, machine_info and
    commit_info stay (all that the table, the plot and the comparisons read)."""
    for b in doc.get("benchmarks", []):
        if isinstance(b, dict) and isinstance(b.get("stats"), dict):
            b["stats"].pop("data", None)
    return doc


def _suite(request) -> _Suite:
    return request.config.pluginmanager.get_plugin(_PLUGIN)


def bench_op(benchmark, request, impl, op, n, c, dtype):
    """`op` on an (n, c) `dtype` case by the implementation `impl`, on its device arrays
    (moved there before the clock starts); a GPU row synchronises before the clock
    stops.  pytest-benchmark's warm-up calls compile (Numba, jax.jit, NVRTC)."""
    suite, case = _suite(request), OpCase(op, n, c, dtype)
    row = suite.impls[impl]
    args, sync = row.to_device(*case.inputs()), synchronizer(impl)

    def call():
        out = row.on_device(op, *args)
        if sync is not None:
            sync()
        return out

    benchmark.group = case.group
    if (row.kind == "reference" or impl in ("torch", "jax")) and n * c > SLOW_ELEMENTS:
        benchmark.pedantic(call, rounds=3, warmup_rounds=1)
    else:
        benchmark(call)
    limit = suite.gpu_bw if row.device == "gpu" else suite.copy_bw
    benchmark.extra_info.update(rates(benchmark.stats.stats.median, case.bytes_moved, n, limit))
    benchmark.extra_info.update(bytes_model=BYTES_MODEL[op], device=row.device)


def bench_train(benchmark, request, impl, backend, xtype, n, d, c, batch):
    """One epoch of ``SoftmaxRegression.fit`` (validation included) by `backend`, or of
    PyTorch's SGD loop, on n MNIST-shaped rows (X as float32 or as uint8 pixels)."""
    from .estimator import SoftmaxRegression

    suite = _suite(request)
    pixels, x, y = suite.mnist(n, d, c)
    data = pixels if xtype == "uint8" else x

    def fit():
        if backend == "torch":
            return torch_sgd_epochs(x, y, 1, batch, 0.1)
        model = SoftmaxRegression(backend=backend, batch_size=batch, max_epochs=1, random_state=0)
        return model.fit(data, y)

    benchmark.group = f"train fit 1 epoch {n}x{d} batch {batch}"
    benchmark.group += f" (quick: {n} of {TRAIN_N} rows)" if n < TRAIN_N else ""
    benchmark(fit)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(rates(seconds, train_bytes(data), n, suite.copy_bw))
    benchmark.extra_info["GFLOP/s"] = train_flop(n, d, c) / seconds / 1e9
    benchmark.extra_info.update(TRAIN_MODELS, device="cpu")


class _Suite:
    """The pytest plugin of one `run`: its cases as the parameters of `bench_op` and
    `bench_train`, the pause before each, its facts in machine_info, and the speedups
    (and no per-round times) in the JSON."""

    __name__ = _PLUGIN  # the name pytest registers it under

    def __init__(self, op_params, train_params, impls, reference, copy_bw, gpu_bw, machine_info):
        self.params = {"bench_op": op_params, "bench_train": train_params}
        self.impls, self.reference, self.machine_info = impls, reference, machine_info
        self.copy_bw, self.gpu_bw, self._mnist = copy_bw, gpu_bw, {}

    def mnist(self, n, d, c):
        if (n, d, c) not in self._mnist:  # made once per run
            self._mnist[n, d, c] = mnist_shaped(n, d, c)
        return self._mnist[n, d, c]

    def pytest_generate_tests(self, metafunc):
        params, code = self.params.get(metafunc.function.__name__), metafunc.function.__code__
        if params is not None:  # the arguments after (benchmark, request)
            metafunc.parametrize(code.co_varnames[2 : code.co_argcount], params)

    def pytest_runtest_setup(self, item):
        quiesce(item.config)

    def pytest_benchmark_update_machine_info(self, config, machine_info):
        machine_info.update(self.machine_info)

    def pytest_benchmark_update_json(self, config, benchmarks, output_json):
        results = output_json["benchmarks"]
        ref = {
            b["group"]: b["stats"]["median"]
            for b in results
            if b["params"]["impl"] == self.reference
        }
        for b in results:  # speedup = the reference's median / this median
            if b["group"] in ref:
                b["extra_info"]["speedup"] = ref[b["group"]] / b["stats"]["median"]
                b["extra_info"]["reference"] = self.reference
        drop_raw_data(output_json)


@contextlib.contextmanager
def _threads(n: int, torch_too: bool):
    """Numba's and (when `torch_too` and it is installed) PyTorch's thread counts set to
    n, restored on exit; yields Numba's count (1 without Numba)."""
    import importlib.util

    undo, used = [], 1
    with contextlib.suppress(ImportError):
        import numba

        undo.append(functools.partial(numba.set_num_threads, numba.get_num_threads()))
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        used = numba.get_num_threads()
    if torch_too and importlib.util.find_spec("torch") is not None:
        import torch

        undo.append(functools.partial(torch.set_num_threads, torch.get_num_threads()))
        torch.set_num_threads(n)
    try:
        yield used
    finally:
        for restore in undo:
            restore()


def run(
    *,
    full: bool = False,
    threads: int = 2,
    impls: Sequence[str] | None = None,
    ops: Sequence[str] | None = None,
    train: bool = True,
    shapes: Sequence[tuple[int, int]] | None = None,
    train_rows: int | None = None,
    json_path: str | os.PathLike[str] = "fastsoftmax-bench.json",
) -> dict:
    """Time every available implementation on every case with pytest-benchmark (pytest
    runs `bench_op` and `bench_train`); return the JSON it writes to `json_path`.

    full: every shape and both dtypes, ~1 s per case (else ``QUICK_SHAPES``, float32,
    ~0.3 s per case, the trainer on ``QUICK_TRAIN_N`` rows).  threads: Numba's and
    PyTorch's thread count, and the copy bandwidth's (restored afterwards).  impls:
    implementation names (default: all that can run here).  ops: a subset of ``BENCH_OPS``.
    shapes: (N, C) pairs instead of the mode's.  train: also one epoch of
    ``SoftmaxRegression.fit`` per backend and of PyTorch's SGD loop (train_rows rows).
    Notes and pytest's report go to stderr; RuntimeError when a case fails.
    """
    from . import __version__
    from .implementations import IMPLEMENTATIONS

    known = {i.name: i for i in IMPLEMENTATIONS}
    ops = BENCH_OPS if ops is None else tuple(dict.fromkeys(ops))
    for kind, bad, have in (("implementation", set(impls or ()) - set(known), sorted(known)),
                            ("op", set(ops) - set(BENCH_OPS), list(BENCH_OPS))):  # fmt: skip
        if bad:
            raise ValueError(f"unknown {kind}(s) {sorted(bad)}; have {have}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    try:
        import pytest
        import pytest_benchmark  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{exc}: fastsoftmax bench runs pytest-benchmark; pip install "
                          "'fastsoftmax[bench]'") from exc  # fmt: skip

    runnable = []
    for impl in (i for i in IMPLEMENTATIONS if impls is None or i.name in impls):
        reason = impl.unavailable()
        if reason is None:
            runnable.append(impl)
        elif impls is not None or impl.device == "cpu":
            print(f"skipping {impl.name}: {reason}", file=sys.stderr)
    dts = DTYPES if full else ("float32",)
    shapes = shapes or (SHAPES if full else QUICK_SHAPES)
    op_params = []
    for case in (OpCase(op, int(n), int(c), dt) for op in ops for n, c in shapes for dt in dts):
        for impl in (i for i in runnable if case.op in i.ops):
            skip = impl.kind == "reference" and not full and case.n * case.c > SLOW_ELEMENTS
            why = f"{impl.name} at N x C > 1e7 (seconds per call; --full times it)"
            op_params.append(pytest.param(
                impl.name, case.op, case.n, case.c, case.dtype,
                id=f"{case.group.replace(' ', '-')}-{impl.name}",
                marks=[pytest.mark.skip(reason=why)] if skip else [],
            ))  # fmt: skip
    n_train = train_rows or (TRAIN_N if full else QUICK_TRAIN_N)
    train_params = [
        pytest.param(name, backend, xtype, n_train, TRAIN_D, TRAIN_C, TRAIN_BATCH, id=name)
        for name, backend, xtype in TRAIN_CASES
        if train and backend in {i.name for i in runnable}
    ]
    if not op_params and not train_params:
        raise ValueError("nothing to time: no available implementation runs these cases")

    path, here = Path(json_path), Path(__file__)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # pytest-benchmark writes it only when a case ran
    args = [f"{here}::bench_op"] * bool(op_params) + [f"{here}::bench_train"] * bool(train_params)
    args += [  # this module is the test file; none of the caller's pytest set-up applies
        *("-c", os.devnull, "--rootdir", str(here.parent), "--noconftest", "-q", "-rs"),
        *("-p", "no:cacheprovider", "--import-mode=importlib", "-o", "python_functions=bench_*"),
        *("--benchmark-json", str(path), "--benchmark-quiet", "--benchmark-min-rounds", "3"),
        *("--benchmark-max-time", "1.0" if full else "0.3"),
        *("--benchmark-warmup", "on", "--benchmark-warmup-iterations", "1"),
    ]
    uses_torch = any(i.name.startswith("torch") for i in runnable) or "torch" in sys.modules
    with _threads(threads, uses_torch) as used_threads:
        copy_bw = machine.copy_bandwidth(threads)
        print(f"copy bandwidth ({threads} threads): {copy_bw / 1e9:.1f} GB/s", file=sys.stderr)
        on_gpu = any(i.device == "gpu" for i in runnable)
        gpu_bw = machine.device_copy_bandwidth() if on_gpu else None
        facts = {
            "cpu_model": machine.cpu_model(), "cores": os.cpu_count(), "threads": used_threads,
            "copy_GB/s": copy_bw / 1e9, "gpu": machine.gpu_name(runnable),
            "gpu_copy_GB/s": None if gpu_bw is None else gpu_bw / 1e9,
            "mode": "full" if full else "quick", "fastsoftmax": __version__,
            "numpy": np.__version__, "numba": _version("numba"), "torch": _version("torch"),
            "numba_target": machine.numba_target(),
        }  # fmt: skip
        reference = next((i.name for i in IMPLEMENTATIONS if i.kind == "reference"), "numpy")
        suite = _Suite(op_params, train_params, known, reference, copy_bw, gpu_bw, facts)
        with contextlib.redirect_stdout(sys.stderr):
            status = pytest.main(args, plugins=[suite])
    if status != 0 or not path.exists():
        ran = f"; the cases that ran are in {path}" if path.exists() else ""
        raise RuntimeError(f"the pytest-benchmark run failed (pytest's exit status {status}){ran}")
    return load_json(path)


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
