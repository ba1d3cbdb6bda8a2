"""Facts about the machine a benchmark runs on, and what it measures of it.

The CPU's model (`cpu_model`), the CPU and SIMD level Numba compiles for
(`numba_target`), the GPU's name (`gpu_name`), the copy bandwidth a memory-bound kernel
is judged against (`copy_bandwidth` on the CPU, `device_copy_bandwidth` on a GPU) and
the peak memory of a block of code (`peak_memory`).  Read by ``fastsoftmax bench`` and
the pytest-benchmark suites in ``bench/``; imports nothing of the package.
"""

from __future__ import annotations

import contextlib
import functools
import time
import tracemalloc
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np


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
def peak_memory() -> Iterator[dict[str, int | None]]:
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


@functools.cache
def numba_target() -> dict:
    """The CPU facts a CPU result depends on: ``cpu_model`` and what Numba compiles
    for (``fastsoftmax._cpu_target.numba_target``: the CPU name, the feature string,
    ``simd``)."""
    from ._cpu_target import numba_target as compiled_for

    return {"cpu_model": cpu_model(), **compiled_for()}


def gpu_name(impls: Iterable[Any]) -> str | None:
    """The GPU's name, asked of the library (CuPy or PyTorch) of the first GPU row of
    `impls` (rows of ``fastsoftmax.implementations``) that can name it; None without one."""
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
