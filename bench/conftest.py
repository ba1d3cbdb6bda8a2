"""Shared benchmark machinery: the machine's copy bandwidth, measured in the same run,
and a closing table of ratios (speedups and fraction of the copy bandwidth).

Run: pytest bench/ [--benchmark-json=out.json]   (CI: --benchmark-disable)
"""

from __future__ import annotations

import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import pytest

from fastsoftmax import bench_cases, benchmarks, machine

THREADS = int(os.environ.get("FASTSOFTMAX_BENCH_THREADS", "2"))
_results: dict[str, dict[str, dict]] = defaultdict(dict)


def pytest_configure(config):
    # the Numba backend first: it sets GOMP_SPINCOUNT before libgomp loads, which
    # numba.set_num_threads below would otherwise do under libgomp's default spin (users'
    # programs, which call fastsoftmax before numba, run under the backend's setting)
    try:
        import fastsoftmax._numba  # noqa: F401
    except ImportError:
        pass

    try:
        import numba

        numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    try:
        import torch

        torch.set_num_threads(THREADS)
    except ImportError:
        pass


@pytest.fixture(autouse=True)
def _quiesce(request):
    """Let the previous case's thread pools go idle before this one is timed (the pause
    of `fastsoftmax bench` too: benchmarks.QUIESCE_S)."""
    benchmarks.quiesce(request.config)


def pytest_benchmark_update_machine_info(config, machine_info):
    """The CPU Numba compiles for (name, features, simd; see machine.numba_target)
    in the JSON's machine_info, next to pytest-benchmark's own CPU fields."""
    machine_info["numba_target"] = machine.numba_target()


def pytest_benchmark_update_json(config, output_json):
    """--benchmark-json keeps the statistics, not every round's time (stats.data), unless
    --benchmark-save-data is given: the committed results stay small."""
    if not config.getoption("benchmark_save_data", False):
        benchmarks.drop_raw_data(output_json)


@pytest.fixture(scope="session")
def copy_bandwidth(request) -> float | None:
    """Bytes/s of a parallel copy (read + write counted) of 512 MiB with THREADS threads:
    the physical limit a memory-bound kernel is judged against (None, not measured,
    under --benchmark-disable)."""
    if request.config.getoption("benchmark_disable", False):
        return None
    return machine.copy_bandwidth(THREADS)


@pytest.fixture(scope="session")
def gpu_copy_bandwidth(request) -> float | None:
    """Device-to-device copy bandwidth, or None without a GPU."""
    if request.config.getoption("benchmark_disable", False):
        return None
    return machine.device_copy_bandwidth()


def record(
    group: str,
    name: str,
    benchmark,
    bytes_moved: int | None,
    copy_bw: float | None,
    rows: int | None = None,
    extra: dict | None = None,
):
    """Attach the napkin-math figures (and `extra`) to the result and keep them for the
    summary.  Every result also records the CPU facts (``machine.numba_target``: the
    CPU model, the CPU name and features Numba compiles for, and its simd level), so a
    result read alone says what it ran on."""
    stats = getattr(benchmark, "stats", None)
    if stats is None or getattr(stats, "stats", None) is None:  # --benchmark-disable
        return
    entry = bench_cases.rates(stats.stats.median, bytes_moved, rows, copy_bw)
    entry.update(extra or {})
    benchmark.extra_info.update(machine.numba_target())
    benchmark.extra_info.update(entry)
    _results[group][name] = entry


# Ratios a case measured itself (bench_real_use.py's interleaved rounds and after-idle
# calls), printed after the times: extra_info key -> label
RATIO_LABELS = {
    "ratio_numba_to_numpy": "numba/numpy",
    "ratio_numba_to_torch": "numba/torch",
    "ratio_after_idle": "after-idle/back-to-back",
    "ratio_cli_to_fit": "CLI/fit samples/s",
}


def pytest_terminal_summary(terminalreporter):
    if not _results:
        return
    tr = terminalreporter
    tr.section("fastsoftmax: ratios from this run (median times)")
    target = machine.numba_target()
    tr.write_line(
        f"machine: {target['cpu_model']}, {os.cpu_count()} cores, {THREADS} threads; "
        f"Numba compiles for {target['numba_cpu_name']} ({target['simd']})"
    )
    for group, rows in _results.items():
        # the reference: the NumPy backend, or for a fused op the composition it replaces
        ref_name = "numpy" if "numpy" in rows else "unfused"
        ref = rows.get(ref_name, {}).get("seconds")
        peers = {p: rows[p]["seconds"] for p in ("torch", "jax") if p in rows}
        tr.write_line(f"{group}")
        for name, e in rows.items():
            parts = [f"  {name:20s} {e['seconds'] * 1e3:10.3f} ms"]
            if ref:
                parts.append(f"{ref / e['seconds']:7.2f}x {ref_name}")
            for peer, seconds in peers.items():
                parts.append(f"{seconds / e['seconds']:7.1f}x {peer}")
            if "GB/s" in e:
                parts.append(f"{e['GB/s']:6.1f} GB/s")
            if "fraction_of_copy_bandwidth" in e:
                parts.append(f"{100 * e['fraction_of_copy_bandwidth']:5.0f}% of copy")
            if "seconds_per_step" in e:
                parts.append(f"{e['seconds_per_step'] * 1e3:8.3f} ms/step")
            for key, label in RATIO_LABELS.items():
                if key in e:
                    parts.append(f"{label} {e[key]:.2f}")
            if "peak_extra_bytes" in e:
                parts.append(f"peak extra {e['peak_extra_bytes'] / 2**20:8.0f} MiB")
            tr.write_line("  ".join(parts))


def timing(request) -> bool:
    """False under --benchmark-disable (CI's untimed run): cases then run once, small."""
    return not request.config.getoption("benchmark_disable", False)


def interleaved_rounds(
    steps: dict[str, Callable[[], object]],
    *,
    k: int,
    pause_s: float,
    rounds: tuple[int, int],
    budget_s: float,
) -> dict[str, list[float]]:
    """{name: seconds per call, one per round} of the callables in `steps`, run in turn:
    each round runs every one k times after a pause (the previous one's thread pools go
    idle) and a warm call, the order rotated by one per round.  At least rounds[0]
    rounds, at most rounds[1], no new one once budget_s seconds have passed; ratios
    are then taken per round, so the VM's drift cancels out."""
    names = list(steps)
    per_call: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    r = 0
    while r < rounds[1] and (r < rounds[0] or time.perf_counter() - start < budget_s):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(pause_s)
            run = steps[name]
            run()  # one warm call
            t0 = time.perf_counter()
            for _ in range(k):
                run()
            per_call[name].append((time.perf_counter() - t0) / k)
        r += 1
    return per_call


def benchmark_interleaved(
    benchmark,
    request,
    steps: dict[str, Callable[[], object]],
    *,
    k: int,
    pause_s: float,
    rounds: tuple[int, int],
    budget_s: float,
) -> tuple[dict[str, list[float]], dict]:
    """interleaved_rounds as one pytest-benchmark round (its time is the whole run); under
    --benchmark-disable one round of one call each.  Returns the per-round seconds per
    call and the extra_info every interleaved case records: rounds, calls per round, the
    pause and each callable's median seconds per call (`seconds_per_step_<name>`)."""
    if not timing(request):
        k, pause_s, rounds = 1, 0.0, (1, 1)

    def run() -> dict[str, list[float]]:
        return interleaved_rounds(steps, k=k, pause_s=pause_s, rounds=rounds, budget_s=budget_s)

    per_step = benchmark.pedantic(run, rounds=1, iterations=1)
    extra: dict = {"rounds": len(next(iter(per_step.values()))), "steps_per_round": k}
    extra["pause_s"] = pause_s
    for name, times in per_step.items():
        extra[f"seconds_per_step_{name}"] = statistics.median(times)
    return per_step, extra


def lm_head_info(benchmark, n: int, h: int, v: int, extra_bytes: int, measure: str) -> dict:
    """extra_info of an LM-head case (hidden N x H, weight V x H, float32): its FLOP (the
    forward and backward GEMMs, 6 N H V), the peak memory beyond the outputs against the
    N x V float32 logits, how it was measured, and GFLOP/s when timed."""
    logits = n * v * 4
    info = {
        "flop": 6 * n * h * v,
        "logits_bytes": logits,
        "peak_extra_bytes": extra_bytes,
        "peak_extra_fraction_of_logits": extra_bytes / logits,
        "memory_measure": measure,
    }
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:  # None under --benchmark-disable
        info["GFLOP/s"] = info["flop"] / stats.median / 1e9
    return info
