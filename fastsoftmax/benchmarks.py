"""Benchmark cases and their napkin math: one source of truth for the pytest-benchmark
files in ``bench/`` and for ``fastsoftmax bench``.

A case is an op (or a training run) at a shape and dtype, run by one implementation of
``fastsoftmax.implementations``.  Its ``bytes_moved`` is a stated pass-count model:

* softmax, log_softmax: read the input once, write the output once (2 passes of N x C);
* cross_entropy (forward): read the logits once (1 pass) and the N targets;
* cross_entropy_with_grad (fused): read the logits once, write dlogits once (2 passes)
  and read the targets;
* training: read X once per epoch (n x d x itemsize); FLOPs = 2 matmuls of 2 n d C.

Speed is judged against the machine's copy bandwidth measured in the same run
(``copy_bandwidth``): read + write bytes per second of a parallel copy.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import statistics
import textwrap
import tracemalloc
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

import numpy as np

OPS = ("softmax", "log_softmax", "cross_entropy", "cross_entropy_with_grad")
# (N, C): MNIST's batch and epoch, a 1000-class head, two LM vocabularies
SHAPES = ((60000, 10), (512, 10), (8192, 1000), (4096, 32000), (1024, 128256))
QUICK_SHAPES = ((512, 10), (60000, 10), (8192, 1000))
DTYPES = ("float32", "float64")
PASSES = {"softmax": 2, "log_softmax": 2, "cross_entropy": 1, "cross_entropy_with_grad": 2}

# The trainer's cases: MNIST-shaped rows (the real training set is downloaded by users;
# the benchmark's numbers do not depend on pixel values)
TRAIN_N, TRAIN_D, TRAIN_C = 60000, 784, 10
TRAIN_BATCH = 128


@dataclass(frozen=True)
class OpCase:
    """One op at one shape and dtype."""

    op: str
    n: int
    c: int
    dtype: str

    @property
    def group(self) -> str:
        """pytest-benchmark group: cases in one group are compared with each other."""
        return f"{self.op} {self.dtype} {self.n}x{self.c}"

    @property
    def bytes_moved(self) -> int:
        item = np.dtype(self.dtype).itemsize
        targets = 8 * self.n if self.op.startswith("cross_entropy") else 0
        return PASSES[self.op] * self.n * self.c * item + targets

    def inputs(self, seed: int = 0) -> tuple:
        """(logits,) or (logits, target): standard normal logits x 3, uniform targets."""
        rng = np.random.default_rng(seed)
        z = (rng.standard_normal((self.n, self.c), dtype=np.float32) * 3).astype(self.dtype)
        if self.op.startswith("cross_entropy"):
            return z, rng.integers(0, self.c, self.n)
        return (z,)


def op_cases(full: bool = True, ops=OPS, dtypes=DTYPES) -> list[OpCase]:
    """Every op x shape x dtype (full) or the quick subset (small shapes, float32)."""
    shapes = SHAPES if full else QUICK_SHAPES
    dts = dtypes if full else ("float32",)
    return [OpCase(op, n, c, dt) for op in ops for (n, c) in shapes for dt in dts]


def train_bytes(x: np.ndarray, epochs: int = 1) -> int:
    """Bytes of X read by `epochs` epochs of the fused step (X read once per epoch)."""
    return epochs * x.nbytes


def train_flop(n: int, d: int, c: int, epochs: int = 1) -> int:
    """Floating-point operations of `epochs` epochs: logits and dW, 2 n d C each."""
    return epochs * 2 * 2 * n * d * c


def mnist_shaped(n: int = TRAIN_N, d: int = TRAIN_D, c: int = TRAIN_C, seed: int = 0):
    """(pixels uint8 (n, d), x float32 = pixels / 255, y int64 (n,)): labels from a fixed
    random linear teacher, so the problem is learnable like MNIST."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, d), dtype=np.uint8)
    x = pixels.astype(np.float32) / 255
    teacher = rng.standard_normal((d, c)).astype(np.float32)
    noise = rng.standard_normal((n, c)).astype(np.float32)
    y = np.argmax(x @ teacher + noise, axis=1).astype(np.int64)
    return pixels, x, y


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


@contextlib.contextmanager
def peak_memory():
    """Peak memory of the enclosed code above what was in use when it started.

    Yields a dict filled on exit: ``traced`` (bytes, tracemalloc: NumPy's allocations,
    not BLAS's, Numba's or PyTorch's own) and ``rss`` (bytes, the resident-set
    high-water mark, which sees every allocation; Linux only, reset through
    /proc/self/clear_refs; None elsewhere).
    """
    result: dict[str, int | None] = {"traced": None, "rss": None}
    rss0 = _proc_status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        rss0 = None
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    traced0 = tracemalloc.get_traced_memory()[0]
    try:
        yield result
    finally:
        result["traced"] = tracemalloc.get_traced_memory()[1] - traced0
        if not was_tracing:
            tracemalloc.stop()
        hwm = _proc_status_kib("VmHWM")
        if rss0 is not None and hwm is not None:
            result["rss"] = (hwm - rss0) * 1024


def copy_bandwidth(threads: int | None = None, nbytes: int = 1 << 29, repeat: int = 7) -> float:
    """Bytes per second (read + write) of a parallel copy of `nbytes` on the CPU: the
    physical limit a memory-bound kernel is judged against (Numba; NumPy's copy, one
    thread, where Numba is missing)."""
    import time

    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    try:
        import numba

        if threads:
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))

        @numba.njit(parallel=True, cache=False)
        def copy(a, b):
            for i in numba.prange(a.shape[0]):
                b[i] = a[i]

    except ImportError:

        def copy(a, b):
            np.copyto(b, a)

    copy(src, dst)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        copy(src, dst)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def gpu_copy_bandwidth(nbytes: int = 1 << 30, repeat: int = 10) -> float | None:
    """Device-to-device copy bandwidth (read + write) with CuPy, or None without a GPU."""
    try:
        import cupy as cp

        if cp.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:  # no CuPy, no driver, no device
        return None
    src = cp.ones(nbytes // 4, cp.float32)
    dst = cp.empty_like(src)
    dst[...] = src
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    best = float("inf")
    for _ in range(repeat):
        start.record()
        dst[...] = src
        stop.record()
        stop.synchronize()
        best = min(best, cp.cuda.get_elapsed_time(start, stop) / 1e3)
    return 2 * src.nbytes / best


def synchronizer(impl_name: str) -> Callable[[], None] | None:
    """What must run before the clock stops for an implementation whose work is queued on
    a GPU (otherwise only the launches are timed); None on the CPU."""
    if impl_name.endswith("cuda"):
        import torch

        return torch.cuda.synchronize
    if impl_name.startswith("cupy"):
        import cupy as cp

        return lambda: cp.cuda.get_current_stream().synchronize()
    return None


def torch_sgd_epochs(x, y, epochs: int, batch: int, lr: float = 0.1, seed: int = 0):
    """The usual PyTorch CPU loop, the trainer's peer: nn.Linear + F.cross_entropy +
    torch.optim.SGD over shuffled minibatches.  x: (n, d) float32; y: (n,) int64."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for s in range(0, len(xt), batch):
            idx = perm[s : s + batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model


# ----------------------------------------------------------------- fastsoftmax bench
# The command's side of the suite: the same cases and napkin math as bench/, timed
# without pytest, written in pytest-benchmark's JSON format (so `pytest-benchmark
# compare` and `--benchmark-compare` read it), tabulated, plotted and compared.

# pytest-benchmark version whose JSON layout the documents follow (its "version" field)
FORMAT_VERSION = "5.2.3"
QUICK_TRAIN_N = 20000
# The reference is skipped (quick) or timed with few rounds (full) above this N x C
SLOW_ELEMENTS = 10**7
BYTES_MODEL = {
    "softmax": "read N x C once, write N x C once (2 passes)",
    "log_softmax": "read N x C once, write N x C once (2 passes)",
    "cross_entropy": "read N x C once (1 pass) + N int64 targets",
    "cross_entropy_with_grad": "read N x C once, write dlogits once (2 passes) + N int64 targets",
}
TRAIN_BYTES_MODEL = "X read once per epoch (n x d x itemsize)"
TRAIN_FLOP_MODEL = "2 matmuls per epoch, 2 n d C each"


def time_it(
    fn: Callable[[], object],
    *,
    sync: Callable[[], object] | None = None,
    warmup: int = 1,
    min_rounds: int = 3,
    max_rounds: int = 200,
    min_time: float = 0.3,
) -> list[float]:
    """Wall seconds (``time.perf_counter``) of each timed call of `fn`.

    `warmup` untimed calls come first (JIT and NVRTC compilation, first-touch
    allocations).  Then at least `min_rounds` and at most `max_rounds` timed calls, until
    they add up to `min_time` seconds.  `sync` (a GPU's synchronize) runs after every
    call, before the clock stops, so queued work is timed rather than its launch.
    """
    if warmup < 0 or min_rounds < 1 or max_rounds < min_rounds:
        raise ValueError(
            f"need warmup >= 0 and 1 <= min_rounds <= max_rounds, got warmup={warmup}, "
            f"min_rounds={min_rounds}, max_rounds={max_rounds}"
        )
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    times: list[float] = []
    total = 0.0
    while len(times) < max_rounds and (len(times) < min_rounds or total < min_time):
        t0 = perf_counter()
        fn()
        if sync is not None:
            sync()
        dt = perf_counter() - t0
        times.append(dt)
        total += dt
    return times


def _quartiles(data: list[float]) -> tuple[float, float]:
    """q1, q3 as pytest-benchmark computes them (Wikipedia's quartile methods 3 and 2)."""
    rounds = len(data)
    if rounds == 1:
        return data[0], data[0]
    if rounds % 2:  # method 3
        n, q = rounds // 4, rounds % 4
        if q == 1:
            return (
                0.25 * data[n - 1] + 0.75 * data[n],
                0.75 * data[3 * n] + 0.25 * data[3 * n + 1],
            )
        return (
            0.75 * data[n] + 0.25 * data[n + 1],
            0.25 * data[3 * n + 1] + 0.75 * data[3 * n + 2],
        )
    return statistics.median(data[: rounds // 2]), statistics.median(data[rounds // 2 :])


def stats_of(times) -> dict:
    """pytest-benchmark's "stats" of per-round seconds, computed as its ``Stats`` does:
    sample standard deviation, quartiles by Wikipedia's methods 3 (odd) and 2 (even),
    Tukey's 1.5 IQR fences, ops = rounds / total, one iteration per round."""
    data = [float(t) for t in times]
    if not data:
        raise ValueError("no timings")
    s = sorted(data)
    rounds = len(data)
    mean = statistics.mean(data)
    stddev = statistics.stdev(data) if rounds > 1 else 0
    q1, q3 = _quartiles(s)
    iqr = q3 - q1
    if rounds == 1:
        ld15iqr = hd15iqr = data[0]
    else:
        ld15iqr = s[bisect_left(s, q1 - 1.5 * iqr)]
        # the highest datum within the fence (pytest-benchmark >= 5.3.1; earlier
        # versions returned the first datum above it)
        hd15iqr = s[bisect_right(s, q3 + 1.5 * iqr) - 1]
    iqr_outliers = sum(v < q1 - 1.5 * iqr or v > q3 + 1.5 * iqr for v in data)
    stddev_outliers = sum(v < mean - stddev or v > mean + stddev for v in data)
    total = sum(data)
    return {
        "min": min(data),
        "max": max(data),
        "mean": mean,
        "stddev": stddev,
        "rounds": rounds,
        "median": statistics.median(data),
        "iqr": iqr,
        "q1": q1,
        "q3": q3,
        "iqr_outliers": iqr_outliers,
        "stddev_outliers": stddev_outliers,
        "outliers": f"{stddev_outliers};{iqr_outliers}",
        "ld15iqr": ld15iqr,
        "hd15iqr": hd15iqr,
        "ops": rounds / total if total else 0,
        "total": total,
        "data": data,
        "iterations": 1,
    }


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    import platform

    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# An x86 function on 16 x int32 vectors (512 bits), allowed 512-bit registers: LLVM
# compiles it to zmm instructions when the target has AVX-512F, to two ymm halves with
# AVX2 (256-bit integer vectors), to xmm quarters below.  Opaque pointers (LLVM >= 15),
# then typed ones for older llvmlite.
_SIMD_PROBE_IR = """
define void @probe({ptr} %p) "min-legal-vector-width"="512" {{
  %v = load <16 x i32>, {ptr} %p, align 64
  %w = add <16 x i32> %v, %v
  store <16 x i32> %w, {ptr} %p, align 64
  ret void
}}
"""


def _simd_of_feature_string(features: str) -> str:
    """The simd name ("avx512", "avx2" or "sse") an LLVM feature string spells out
    ("+avx2,-avx512f,...": the last mention of a feature wins)."""
    on: dict[str, bool] = {}
    for item in features.split(","):
        item = item.strip()
        if item[:1] in "+-" and len(item) > 1:
            on[item[1:]] = item[0] == "+"
    return "avx512" if on.get("avx512f") else "avx2" if on.get("avx2") else "sse"


def _simd_of_llvm_target(ll, cpu: str, features: str) -> str:
    """What LLVM makes of (cpu, features) as Numba passes them, asked by compiling the
    probe: the CPU model's own features count as much as the feature string (an empty
    string means exactly those), and LLVM resolves the two as it will for the kernels."""
    ll.initialize_native_target()
    ll.initialize_native_asmprinter()
    triple = ll.get_process_triple()
    target = ll.Target.from_triple(triple)
    last_error: Exception | None = None
    for ptr in ("ptr", "<16 x i32>*"):
        try:
            mod = ll.parse_assembly(_SIMD_PROBE_IR.format(ptr=ptr))
        except RuntimeError as err:  # this LLVM does not parse that pointer syntax
            last_error = err
            continue
        mod.triple = triple
        tm = target.create_target_machine(cpu=cpu, features=features, opt=0)
        asm = tm.emit_assembly(mod)
        return "avx512" if "zmm" in asm else "avx2" if "ymm" in asm else "sse"
    raise RuntimeError(f"the SIMD probe did not parse: {last_error}")


@functools.cache
def numba_target() -> dict:
    """The CPU facts a CPU benchmark result depends on (one dict, computed once).

    * ``cpu_model``: /proc/cpuinfo's model name (`cpu_model`).
    * ``numba_cpu_name``: the CPU Numba compiles for: ``NUMBA_CPU_NAME`` (read by Numba
      at import, ``numba.core.config.CPU_NAME``) or llvmlite's host CPU name.
    * ``numba_cpu_features``: the LLVM feature string Numba passes with it, as Numba
      computes it (numba.core.codegen): ``NUMBA_CPU_FEATURES`` when set (``""`` under
      ``NUMBA_CPU_NAME=generic``), else the host's features from
      ``llvmlite.binding.get_host_cpu_features()`` (AVX ones off under
      ``NUMBA_ENABLE_AVX=0``).  So ``NUMBA_CPU_NAME`` alone does *not* lower the ISA:
      the host's features (``+avx512f`` on an AVX-512 host) still come with it, and
      ``NUMBA_CPU_NAME=znver3`` on an AVX-512 machine still gives zmm code.  An empty
      string means the named CPU's own features (``NUMBA_CPU_NAME=znver3
      NUMBA_CPU_FEATURES=`` gives AVX2 code).
    * ``simd``: "avx512" when that target has AVX-512F, "avx2" when it has AVX2, else
      "sse".  llvmlite has no call that lists a CPU model's features, so this asks LLVM
      itself: a target machine made with Numba's (cpu, features) compiles a 512-bit
      vector add, and the registers it uses (zmm / ymm / xmm) say which.  This covers
      the feature string, the CPU model's defaults and how LLVM combines them.  Where
      the probe cannot run, the feature string decides (``simd_from`` says which);
      None off x86.
    * ``*_from``: where each value came from.

    Without Numba the numba_* values and ``simd`` are None.
    """
    info: dict = {
        "cpu_model": cpu_model(),
        "numba_cpu_name": None,
        "numba_cpu_name_from": None,
        "numba_cpu_features": None,
        "numba_cpu_features_from": None,
        "simd": None,
        "simd_from": None,
    }
    try:
        import llvmlite.binding as ll
        from numba.core import config
        from numba.core.codegen import get_host_cpu_features
    except ImportError:
        return info
    if config.CPU_NAME is None:
        name, name_from = ll.get_host_cpu_name(), "host (llvmlite.binding.get_host_cpu_name)"
    else:
        name, name_from = config.CPU_NAME, "NUMBA_CPU_NAME"
    if config.CPU_FEATURES is not None:
        features = config.CPU_FEATURES
        if "NUMBA_CPU_FEATURES" in os.environ:
            features_from = "NUMBA_CPU_FEATURES"
        else:
            features_from = "none with NUMBA_CPU_NAME=generic"
        if not features:
            features_from += " (empty: the CPU model's own features)"
    else:
        features = get_host_cpu_features()
        features_from = "host (llvmlite.binding.get_host_cpu_features)"
        if not config.ENABLE_AVX:
            features_from += ", AVX off (NUMBA_ENABLE_AVX=0)"
    info.update(
        numba_cpu_name=name,
        numba_cpu_name_from=name_from,
        numba_cpu_features=features,
        numba_cpu_features_from=features_from,
    )
    if not ll.get_process_triple().startswith(("x86_64", "i386", "i686")):
        info["simd_from"] = "not x86"
        return info
    try:
        info["simd"] = _simd_of_llvm_target(ll, name, features)
        info["simd_from"] = "LLVM codegen probe of Numba's (cpu, features)"
    except Exception as err:  # an llvmlite without the calls the probe needs
        info["simd"] = _simd_of_feature_string(features)
        info["simd_from"] = f"feature string (the LLVM probe failed: {err})"
    return info


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _gpu_name(impls) -> str | None:
    """The GPU's name, asked of the library of an available GPU row (None without one)."""
    for impl in impls:
        if impl.device != "gpu":
            continue
        try:
            if impl.name.startswith("cupy"):
                import cupy as cp

                name = cp.cuda.runtime.getDeviceProperties(0)["name"]
                return name.decode() if isinstance(name, bytes) else str(name)
            import torch

            return torch.cuda.get_device_name(0)
        except Exception:  # a GPU row we cannot name: leave it out
            continue
    return None


def device_copy_bandwidth() -> float | None:
    """`gpu_copy_bandwidth` (CuPy), else the same device-to-device copy with PyTorch's
    CUDA events, else None."""
    bw = gpu_copy_bandwidth()
    if bw is not None:
        return bw
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        src = torch.ones((1 << 30) // 4, dtype=torch.float32, device="cuda")
        dst = torch.empty_like(src)
        dst.copy_(src)
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        best = float("inf")
        for _ in range(10):
            start.record()
            dst.copy_(src)
            stop.record()
            stop.synchronize()
            best = min(best, start.elapsed_time(stop) / 1e3)
        return 2 * src.numel() * src.element_size() / best
    except Exception:  # no PyTorch, no CUDA build, no device
        return None


def _set_threads(threads: int, torch_too: bool) -> tuple[int | None, int | None]:
    """Set Numba's and (when `torch_too` and it is installed) PyTorch's thread counts;
    return the previous ones."""
    import importlib.util

    old_nb = old_torch = None
    try:
        import numba

        old_nb = numba.get_num_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    if torch_too and importlib.util.find_spec("torch") is not None:
        import torch

        old_torch = torch.get_num_threads()
        torch.set_num_threads(threads)
    return old_nb, old_torch


def _restore_threads(old: tuple[int | None, int | None]) -> None:
    old_nb, old_torch = old
    if old_nb is not None:
        import numba

        numba.set_num_threads(old_nb)
    if old_torch is not None:
        import torch

        torch.set_num_threads(old_torch)


def _entry(group, name, params, times, options, extra) -> dict:
    return {
        "group": group,
        "name": name,
        "fullname": f"fastsoftmax bench::{group}::{name}",
        "params": params,
        "param": name,
        "extra_info": extra,
        "options": options,
        "stats": stats_of(times),
    }


def _rates(seconds, bytes_moved, rows, copy_bw) -> dict:
    extra = {
        "seconds": seconds,
        "samples_per_s": rows / seconds,
        "bytes_moved": bytes_moved,
        "GB/s": bytes_moved / seconds / 1e9,
    }
    if copy_bw:
        extra["copy_GB/s"] = copy_bw / 1e9
        extra["fraction_of_copy_bandwidth"] = bytes_moved / seconds / copy_bw
    return extra


def _add_speedups(benchmarks_: list[dict], reference: str) -> None:
    """extra_info["speedup"] = reference median / this median, in groups where the
    reference ran."""
    ref = {
        b["group"]: b["stats"]["median"] for b in benchmarks_ if b["params"]["impl"] == reference
    }
    for b in benchmarks_:
        if b["group"] in ref:
            b["extra_info"]["speedup"] = ref[b["group"]] / b["stats"]["median"]
            b["extra_info"]["reference"] = reference


def _train_cases(impls):
    """(name, base implementation, xtype) of the trainer's cases that can run here."""
    names = {i.name for i in impls}
    cases = [("numpy", "numpy", "float32"), ("numba", "numba", "float32")]
    cases.append(("numba-uint8", "numba", "uint8"))
    cases.append(("torch", "torch", "float32"))
    return [c for c in cases if c[1] in names]


def run(
    *,
    full: bool = False,
    threads: int = 2,
    impls=None,
    ops=None,
    train: bool = True,
    progress: Callable[[str], object] | None = print,
    shapes=None,
    train_rows: int | None = None,
) -> dict:
    """Time every available implementation on every case; return a pytest-benchmark
    JSON document (``machine_info``, ``commit_info``, ``benchmarks``, ``datetime``,
    ``version``).

    full: every shape and both dtypes (else ``QUICK_SHAPES``, float32, and the trainer on
    ``QUICK_TRAIN_N`` rows).  threads: Numba's and PyTorch's thread count, and the copy
    bandwidth's (restored afterwards).  impls: implementation names (default: all that
    can run here).  ops: a subset of ``OPS``.  shapes: (N, C) pairs instead of the mode's.
    train: also time one ``SoftmaxRegression.fit`` epoch per backend (and PyTorch's SGD
    loop) on MNIST-shaped data; train_rows overrides its row count.  progress: called
    with a line per result (None: silent).
    """
    import datetime
    import os
    import platform

    from . import __version__
    from .implementations import IMPLEMENTATIONS

    say = progress or (lambda line: None)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    known = {i.name: i for i in IMPLEMENTATIONS}
    if impls is not None:
        impls = list(dict.fromkeys(impls))
        unknown = [n for n in impls if n not in known]
        if unknown:
            raise ValueError(f"unknown implementation(s) {unknown}; have {sorted(known)}")
    ops = OPS if ops is None else tuple(dict.fromkeys(ops))
    bad_ops = [op for op in ops if op not in OPS]
    if bad_ops:
        raise ValueError(f"unknown op(s) {bad_ops}; have {list(OPS)}")
    selected = [i for i in IMPLEMENTATIONS if impls is None or i.name in impls]
    runnable = []
    for impl in selected:
        reason = impl.unavailable()
        if reason is None:
            runnable.append(impl)
        elif impls is not None or impl.device == "cpu":
            say(f"skipping {impl.name}: {reason}")
    reference = next((i.name for i in IMPLEMENTATIONS if i.kind == "reference"), "numpy")

    if shapes is None:
        cases = op_cases(full, ops=ops)
    else:
        dts = DTYPES if full else ("float32",)
        cases = [OpCase(op, int(n), int(c), dt) for op in ops for (n, c) in shapes for dt in dts]
    n_train = train_rows or (TRAIN_N if full else QUICK_TRAIN_N)
    train_cases = _train_cases(runnable) if train else []

    import sys

    uses_torch = any(i.name.startswith("torch") for i in runnable) or "torch" in sys.modules
    old_threads = _set_threads(threads, uses_torch)
    try:
        try:
            import numba

            used_threads = numba.get_num_threads()
        except ImportError:
            used_threads = 1
        copy_bw = copy_bandwidth(threads)
        say(f"copy bandwidth ({threads} threads): {copy_bw / 1e9:.1f} GB/s")
        gpu_bw = None
        if any(i.device == "gpu" for i in runnable):
            gpu_bw = device_copy_bandwidth()
            if gpu_bw:
                say(f"GPU device-to-device copy bandwidth: {gpu_bw / 1e9:.1f} GB/s")
        options = {
            "disable_gc": False,
            "timer": "perf_counter",
            "min_rounds": 3,
            "max_rounds": 200,
            "min_time": 0.3 if not full else 1.0,
            "warmup": 1,
        }
        results: list[dict] = []
        for case in cases:
            host_args = None
            for impl in runnable:
                if case.op not in impl.ops:
                    continue
                slow = impl.kind == "reference" or impl.name in ("torch", "jax")
                slow = slow and case.n * case.c > SLOW_ELEMENTS
                if slow and not full and impl.kind == "reference":
                    say(f"{case.group:36s} {impl.name:14s} skipped (N x C > 1e7; --full times it)")
                    continue
                if host_args is None:
                    host_args = case.inputs()
                args = impl.to_device(*host_args)
                sync = synchronizer(impl.name)
                opts = dict(options, min_rounds=3, min_time=0.0) if slow else options
                times = time_it(
                    lambda i=impl, a=args, op=case.op: i.on_device(op, *a),
                    sync=sync,
                    warmup=opts["warmup"],
                    min_rounds=opts["min_rounds"],
                    max_rounds=opts["max_rounds"],
                    min_time=opts["min_time"],
                )
                del args
                limit = gpu_bw if impl.device == "gpu" else copy_bw
                extra = _rates(statistics.median(times), case.bytes_moved, case.n, limit)
                extra["bytes_model"] = BYTES_MODEL[case.op]
                extra["device"] = impl.device
                params = {"impl": impl.name, "op": case.op, "n": case.n, "c": case.c}
                params["dtype"] = case.dtype
                results.append(_entry(case.group, impl.name, params, times, opts, extra))
                say(
                    f"{case.group:36s} {impl.name:14s} {extra['seconds'] * 1e3:10.3f} ms "
                    f"{extra['GB/s']:8.2f} GB/s"
                )
        if train_cases:
            results += _run_train(train_cases, n_train, full, copy_bw, options, say)
    finally:
        _restore_threads(old_threads)
    _add_speedups(results, reference)

    machine = {
        "node": platform.node(),
        "processor": platform.processor(),
        "machine": platform.machine(),
        "python_implementation": platform.python_implementation(),
        "python_version": platform.python_version(),
        "release": platform.release(),
        "system": platform.system(),
        "cpu": {
            "brand_raw": cpu_model(),
            "count": os.cpu_count(),
            "arch_string_raw": platform.machine(),
        },
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "threads": used_threads,
        "copy_GB/s": copy_bw / 1e9,
        "gpu": _gpu_name(runnable),
        "gpu_copy_GB/s": None if gpu_bw is None else gpu_bw / 1e9,
        "mode": "full" if full else "quick",
        "fastsoftmax": __version__,
        "numpy": np.__version__,
        "numba": _version("numba"),
        "torch": _version("torch"),
    }
    return {
        "machine_info": machine,
        "commit_info": {},
        "benchmarks": results,
        "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "version": FORMAT_VERSION,
    }


def _run_train(train_cases, n, full, copy_bw, options, say) -> list[dict]:
    """One epoch of ``SoftmaxRegression.fit`` (validation included) per backend, and
    the PyTorch loop, on n MNIST-shaped rows."""
    from .estimator import SoftmaxRegression

    pixels, x, y = mnist_shaped(n)
    d, c = x.shape[1], TRAIN_C
    group = f"train fit 1 epoch {n}x{d} batch {TRAIN_BATCH}"
    if n < TRAIN_N:
        group += f" (quick: {n} of {TRAIN_N} rows)"
    opts = dict(options, min_rounds=3, max_rounds=20)
    out = []
    for name, backend, xtype in train_cases:
        data = pixels if xtype == "uint8" else x
        if backend == "torch":
            fn = lambda: torch_sgd_epochs(x, y, 1, TRAIN_BATCH, 0.1)  # noqa: E731
        else:
            fn = lambda b=backend, X=data: SoftmaxRegression(  # noqa: E731
                backend=b, batch_size=TRAIN_BATCH, max_epochs=1, random_state=0
            ).fit(X, y)
        times = time_it(
            fn,
            warmup=opts["warmup"],
            min_rounds=opts["min_rounds"],
            max_rounds=opts["max_rounds"],
            min_time=opts["min_time"],
        )
        seconds = statistics.median(times)
        extra = _rates(seconds, train_bytes(data), n, copy_bw)
        extra["GFLOP/s"] = train_flop(n, d, c) / seconds / 1e9
        extra["bytes_model"] = TRAIN_BYTES_MODEL
        extra["flop_model"] = TRAIN_FLOP_MODEL
        extra["device"] = "cpu"
        params = {"impl": backend, "xtype": xtype, "n": n, "d": d, "c": c}
        params.update(batch=TRAIN_BATCH, epochs=1)
        out.append(_entry(group, name, params, times, opts, extra))
        say(
            f"{group:36s} {name:14s} {seconds * 1e3:10.3f} ms "
            f"{n / seconds:12,.0f} samples/s {extra['GFLOP/s']:6.2f} GFLOP/s"
        )
    return out


def drop_raw_data(doc: dict) -> dict:
    """Remove each benchmark's per-round times (``stats["data"]``) from a pytest-benchmark
    document, in place, and return it.  The statistics (min, max, mean, median, stddev,
    quartiles, rounds, iterations), extra_info, machine_info and commit_info stay; they
    are all that `compare`, `format_table`, `plot` and ``pytest-benchmark compare`` read."""
    for b in doc.get("benchmarks", []):
        if isinstance(b, dict) and isinstance(b.get("stats"), dict):
            b["stats"].pop("data", None)
    return doc


def write_json(doc: dict, path, *, raw_data: bool = False) -> Path:
    """Write a document of `run` (pytest-benchmark's format) to `path`, without the
    per-round times unless raw_data (`doc` itself is left as it is)."""
    path = Path(path)
    if path.parent != Path():
        path.parent.mkdir(parents=True, exist_ok=True)
    if not raw_data:
        doc = drop_raw_data(
            {**doc, "benchmarks": [{**b, "stats": dict(b["stats"])} for b in doc["benchmarks"]]}
        )
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path


def load_json(path) -> dict:
    """A pytest-benchmark JSON document (ours or pytest-benchmark's own); ValueError
    naming the file when it is not one."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")  # OSError (with the name) when unreadable
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise ValueError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    for b in doc["benchmarks"]:
        if not (
            isinstance(b, dict)
            and isinstance(b.get("stats"), dict)
            and isinstance(b["stats"].get("median"), int | float)
            and "name" in b
        ):
            raise ValueError(f"{path}: a benchmark without a name or stats.median: {b!r:.200}")
    return doc


def _key(b: dict) -> tuple[str, str]:
    return (str(b.get("group")), str(b["name"]))


def compare(a_doc: dict, b_doc: dict) -> list[dict]:
    """The benchmarks present in both documents (matched by group and name), in A's
    order: median_a, median_b (seconds) and change = median_b / median_a - 1 (negative:
    B is faster)."""
    b_by_key = {_key(b): b for b in b_doc["benchmarks"]}
    rows = []
    for a in a_doc["benchmarks"]:
        b = b_by_key.get(_key(a))
        if b is None:
            continue
        ma, mb = a["stats"]["median"], b["stats"]["median"]
        rows.append(
            {
                "group": _key(a)[0],
                "name": _key(a)[1],
                "median_a": ma,
                "median_b": mb,
                "change": mb / ma - 1 if ma else float("nan"),
            }
        )
    return rows


def format_compare(rows: list[dict]) -> str:
    """A table of `compare`'s rows."""
    if not rows:
        return "no benchmark is in both files (matched by group and name)"
    lines = [f"{'implementation':16s}{'A ms':>12s}{'B ms':>12s}{'change':>10s}"]
    lines.append("-" * len(lines[0]))
    group = None
    for r in rows:
        if r["group"] != group:
            group = r["group"]
            lines.append(group)
        ratio = r["median_b"] / r["median_a"] if r["median_a"] else float("nan")
        verdict = f"{1 / ratio:.2f}x faster" if ratio < 1 else f"{ratio:.2f}x slower"
        lines.append(
            f"  {r['name']:14s}{r['median_a'] * 1e3:12.3f}{r['median_b'] * 1e3:12.3f}"
            f"{100 * r['change']:+9.1f}%  {verdict}"
        )
    lines.append("change = B median / A median - 1 (negative: B is faster)")
    return "\n".join(lines)


def format_table(doc: dict) -> str:
    """Per group, one line per implementation: median ms, samples/s, GB/s, % of the copy
    bandwidth measured in the same run, speedup vs the reference."""
    m = doc.get("machine_info", {})
    head = []
    if m.get("cpu_model"):
        head.append(
            f"{m.get('mode', '')} run on {m['cpu_model']}, {m.get('cores')} cores, "
            f"{m.get('threads')} threads; copy bandwidth {m.get('copy_GB/s', 0):.1f} GB/s"
            + (f"; GPU {m['gpu']}" if m.get("gpu") else "")
            + (f" ({m['gpu_copy_GB/s']:.0f} GB/s)" if m.get("gpu_copy_GB/s") else "")
        )
    cols = f"{'implementation':16s}{'median ms':>12s}{'samples/s':>12s}{'GB/s':>9s}"
    cols += f"{'% copy':>8s}{'GFLOP/s':>9s}{'speedup':>9s}"
    head += [cols, "-" * len(cols)]
    groups: dict[str, list[dict]] = {}
    for b in doc["benchmarks"]:
        groups.setdefault(str(b.get("group")), []).append(b)
    lines = list(head)
    for group, entries in groups.items():
        lines.append(group)
        for b in entries:
            e = b.get("extra_info", {})
            med = b["stats"]["median"]

            def num(key, fmt, scale=1.0, e=e):
                return format(e[key] * scale, fmt) if e.get(key) is not None else "-"

            lines.append(
                f"  {b['name']:14s}{med * 1e3:12.3f}{num('samples_per_s', '.3g'):>12s}"
                f"{num('GB/s', '.2f'):>9s}{num('fraction_of_copy_bandwidth', '.1f', 100):>8s}"
                f"{num('GFLOP/s', '.2f'):>9s}"
                + (f"{e['speedup']:8.1f}x" if e.get("speedup") else f"{'-':>9s}")
            )
    lines.append("speedup = reference (numpy) median time / implementation median time")
    lines.append(
        "% copy = GB/s (bytes of a stated pass-count model) / copy bandwidth measured in this run"
    )
    return "\n".join(lines)


def _samples_per_s(b: dict) -> float:
    rate = b.get("extra_info", {}).get("samples_per_s")
    if rate is None:
        rate = b.get("params", {}).get("n", 0) / b["stats"]["median"]
    return rate


def plot(doc: dict, path) -> Path:
    """A PNG: left, GB/s of the fused cross_entropy_with_grad (float32) against the
    number of classes per implementation (the largest N per C), the copy bandwidth
    dashed; right, MNIST training samples/s per implementation."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "the benchmark plot needs matplotlib: pip install 'fastsoftmax[plot]'"
        ) from exc

    fig = Figure(figsize=(12, 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, width_ratios=(3, 2))
    m = doc.get("machine_info", {})

    best: dict[str, dict[int, dict]] = {}
    for b in doc["benchmarks"]:
        p = b.get("params", {})
        e = b.get("extra_info", {})
        if p.get("op") != "cross_entropy_with_grad" or p.get("dtype") != "float32":
            continue
        if e.get("GB/s") is None:
            continue
        per_c = best.setdefault(b["name"], {})
        if p["c"] not in per_c or p["n"] > per_c[p["c"]]["params"]["n"]:
            per_c[p["c"]] = b
    colors: dict[str, str] = {}  # one colour per implementation in both panels
    for b in doc["benchmarks"]:
        colors.setdefault(b["name"], f"C{len(colors) % 10}")
    top = m.get("copy_GB/s") or 0.0
    for name, per_c in best.items():
        cs = sorted(per_c)
        gbs = [per_c[c]["extra_info"]["GB/s"] for c in cs]
        left.plot(cs, gbs, "o-", label=name, color=colors[name])
        top = max(top, *gbs)
    if m.get("copy_GB/s"):
        label = f"CPU copy, {m.get('threads')} threads ({m['copy_GB/s']:.0f} GB/s)"
        left.axhline(m["copy_GB/s"], color="k", ls="--", lw=1, label=label)
    on_gpu = any(
        b["extra_info"].get("device") == "gpu" for per_c in best.values() for b in per_c.values()
    )
    if on_gpu and m.get("gpu_copy_GB/s"):
        label = f"GPU device-to-device copy ({m['gpu_copy_GB/s']:.0f} GB/s)"
        left.axhline(m["gpu_copy_GB/s"], color="k", ls=":", lw=1, label=label)
    if best:
        left.set_xscale("log")
        left.set_yscale("log")
        left.set_ylim(top=4 * top)  # room for the legend above the copy line
        left.legend(fontsize="small", loc="upper left", ncols=2)
    else:
        msg = "no cross_entropy_with_grad float32\nin this run"
        left.text(0.5, 0.5, msg, ha="center", va="center", transform=left.transAxes)
    left.set_xlabel("number of classes C (largest N run per C)")
    left.set_ylabel("GB/s (read logits + write dlogits)")
    left.set_title("fused cross-entropy + gradient, float32")
    left.grid(True, which="both", alpha=0.3)

    train = [b for b in doc["benchmarks"] if str(b.get("group", "")).startswith("train")]
    if train:
        group = train[0]["group"]
        train = [b for b in train if b["group"] == group]
        names = [b["name"] for b in train]
        rates = [_samples_per_s(b) for b in train]
        bars = right.bar(names, rates, color=[colors[n] for n in names])
        right.bar_label(bars, labels=[f"{r / 1e6:.2f} M" for r in rates], fontsize="small")
        right.set_title(textwrap.fill(group, 45), fontsize="medium")
    else:
        msg = "no training run\n(--no-train)"
        right.text(0.5, 0.5, msg, ha="center", va="center", transform=right.transAxes)
        right.set_title("MNIST-shaped training")
    right.set_ylabel("samples/s (one epoch of fit)")
    right.grid(True, axis="y", alpha=0.3)
    fig.suptitle(
        f"fastsoftmax bench: {m.get('cpu_model', '')}"
        + (f", {m['threads']} threads" if m.get("threads") else "")
        + (f"; {m['gpu']}" if m.get("gpu") else "")
    )
    path = Path(path)
    if path.parent != Path():
        path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
