"""fastsoftmax.benchmarks' timing side and ``fastsoftmax bench``: the timer, the
statistics (against NumPy and pytest-benchmark's own Stats), the JSON (read back by
pytest-benchmark's compare command), the table, the comparison and the plot."""

from __future__ import annotations

import copy
import csv
import importlib.util
import io
import json
import math
import os
import platform
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from fastsoftmax import benchmarks
from fastsoftmax.benchmarks import OpCase, compare, format_compare, stats_of, time_it
from fastsoftmax.cli import main

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STAT_KEYS = {
    "min",
    "max",
    "mean",
    "stddev",
    "rounds",
    "median",
    "iqr",
    "q1",
    "q3",
    "iqr_outliers",
    "stddev_outliers",
    "outliers",
    "ld15iqr",
    "hd15iqr",
    "ops",
    "total",
    "iterations",
    "data",
}


# ---------------------------------------------------------------- time_it


class FakeClock:
    """perf_counter stand-in: every read advances 0.1 s and is logged."""

    def __init__(self, log):
        self.log, self.now = log, 0.0

    def __call__(self):
        self.log.append("clock")
        self.now += 0.1
        return self.now


def test_time_it_syncs_before_every_clock_stop_and_keeps_warmup_untimed(monkeypatch):
    log: list[str] = []
    monkeypatch.setattr(benchmarks, "perf_counter", FakeClock(log))
    times = time_it(
        lambda: log.append("call"),
        sync=lambda: log.append("sync"),
        warmup=2,
        min_rounds=2,
        max_rounds=50,
        min_time=0.35,
    )
    # warm-up: two calls (each synchronised) before the clock is first read
    assert log[:4] == ["call", "sync", "call", "sync"]
    timed = log[4:]
    # every timed round: clock start, call, sync, clock stop (never a stop before a sync)
    assert timed == ["clock", "call", "sync", "clock"] * len(times)
    # each round reads 0.1 s; 0.35 s needs 4 rounds (min_rounds=2 alone would stop at 2)
    assert len(times) == 4
    assert times == pytest.approx([0.1] * 4)


def test_time_it_round_limits(monkeypatch):
    monkeypatch.setattr(benchmarks, "perf_counter", FakeClock([]))
    calls = []
    times = time_it(lambda: calls.append(1), warmup=0, min_rounds=3, max_rounds=5, min_time=100)
    assert len(times) == 5 and len(calls) == 5  # max_rounds caps a slow min_time
    calls.clear()
    times = time_it(lambda: calls.append(1), warmup=1, min_rounds=3, max_rounds=5, min_time=0)
    assert len(times) == 3 and len(calls) == 4  # min_rounds, plus the warm-up call
    with pytest.raises(ValueError, match="min_rounds"):
        time_it(lambda: None, min_rounds=5, max_rounds=2)


def test_time_it_measures_real_time():
    import time

    times = time_it(lambda: time.sleep(0.01), warmup=0, min_rounds=3, min_time=0)
    assert len(times) == 3
    assert all(0.009 <= t < 0.5 for t in times)


# ---------------------------------------------------------------- stats_of


def test_stats_of_against_numpy_on_known_data():
    data = [0.3, 0.1, 0.4, 0.1, 0.5, 0.9, 0.2, 0.6, 0.5, 3.0]  # 3.0: a Tukey outlier
    s = stats_of(data)
    assert set(s) == STAT_KEYS
    a = np.array(data)
    assert s["min"] == 0.1 and s["max"] == 3.0 and s["rounds"] == 10
    assert s["mean"] == pytest.approx(a.mean(), rel=1e-12)
    assert s["stddev"] == pytest.approx(a.std(ddof=1), rel=1e-12)  # sample std, as pytest-bm
    assert s["median"] == pytest.approx(np.median(a), rel=1e-12)
    assert s["total"] == pytest.approx(a.sum(), rel=1e-12)
    assert s["ops"] == pytest.approx(10 / a.sum(), rel=1e-12)
    # pytest-benchmark's quartiles (Wikipedia methods 3 and 2) are NumPy's "hazen" ones
    q1, q3 = np.percentile(a, [25, 75], method="hazen")
    assert (s["q1"], s["q3"]) == pytest.approx((q1, q3), rel=1e-12)
    assert (s["q1"], s["q3"]) == pytest.approx((0.2, 0.6))  # medians of the two halves
    assert s["iqr"] == pytest.approx(q3 - q1)
    lo, hi = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
    assert s["iqr_outliers"] == int(np.sum((a < lo) | (a > hi))) == 1
    sd_out = int(np.sum(np.abs(a - a.mean()) > a.std(ddof=1)))
    assert s["stddev_outliers"] == sd_out == 1
    assert s["outliers"] == "1;1"
    assert s["ld15iqr"] == 0.1  # lowest datum within 1.5 IQR under Q1
    # highest datum within 1.5 IQR over Q3 (Tukey; pytest-benchmark >= 5.3.1)
    assert s["hd15iqr"] == float(a[a <= hi].max())
    assert s["data"] == data and s["iterations"] == 1


@pytest.mark.parametrize("n", [2, 3, 5, 7, 9, 11, 12, 14])
def test_stats_of_quartiles_are_hazen_percentiles(n):
    a = np.random.default_rng(n).lognormal(size=n)
    s = stats_of(a)
    assert (s["q1"], s["q3"]) == pytest.approx(np.percentile(a, [25, 75], method="hazen"))


def test_stats_of_one_round_and_empty():
    s = stats_of([0.25])
    assert s["stddev"] == 0 and s["q1"] == s["q3"] == s["ld15iqr"] == s["hd15iqr"] == 0.25
    assert s["ops"] == 4.0 and s["outliers"] == "0;0"
    with pytest.raises(ValueError):
        stats_of([])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 50, 201])
def test_stats_of_matches_pytest_benchmark_stats(n):
    pb_stats = pytest.importorskip("pytest_benchmark.stats")
    rng = np.random.default_rng(n)
    data = list(rng.lognormal(-7, 0.5, size=n))
    if n > 4:
        data[n // 2] *= 20  # an outlier
    theirs = pb_stats.Stats()
    for v in data:
        theirs.update(v)
    ours = stats_of(data)
    expected = theirs.as_dict()
    assert set(ours) == set(expected) | {"data", "iterations"}
    for key, value in expected.items():
        if isinstance(value, str):
            assert ours[key] == value, key
        else:
            assert ours[key] == pytest.approx(value, rel=1e-12, abs=0), key


# ---------------------------------------------------------------- a real tiny run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`fastsoftmax bench` on softmax float32 512x10, numpy and numba, no trainer."""
    pytest.importorskip("numba")
    path = tmp_path_factory.mktemp("bench") / "tiny.json"
    out = io.StringIO()
    with redirect_stdout(out):
        status = main(
            [
                *("bench", "--op", "softmax", "--impl", "numpy", "--impl", "numba"),
                *("--no-train", "--shape", "512x10", "--json", str(path)),
            ]
        )
    assert status == 0
    return path, out.getvalue()


def test_tiny_run_json_is_pytest_benchmark_format_with_consistent_extra_info(tiny_run):
    path, _ = tiny_run
    doc = json.loads(path.read_text())
    assert set(doc) == {"machine_info", "commit_info", "benchmarks", "datetime", "version"}
    m = doc["machine_info"]
    assert m["threads"] >= 1 and m["cores"] >= 1 and m["cpu_model"]
    assert m["numpy"] == np.__version__ and m["mode"] == "quick"
    case = OpCase("softmax", 512, 10, "float32")
    by_name = {b["name"]: b for b in doc["benchmarks"]}
    assert sorted(by_name) == ["numba", "numpy"]
    for b in doc["benchmarks"]:
        assert b["group"] == case.group == "softmax float32 512x10"
        assert b["params"] == {
            "impl": b["name"],
            "op": "softmax",
            "n": 512,
            "c": 10,
            "dtype": "float32",
        }
        st = b["stats"]
        assert set(st) == STAT_KEYS - {"data"}  # the statistics, not every round's time
        assert st["rounds"] >= 3 and st["iterations"] == 1
        assert 0 < st["min"] <= st["median"] <= st["max"] < 1
        e = b["extra_info"]
        med = st["median"]
        assert e["bytes_moved"] == case.bytes_moved == 2 * 512 * 10 * 4
        assert e["GB/s"] == pytest.approx(e["bytes_moved"] / med / 1e9, rel=1e-12)
        assert e["copy_GB/s"] == m["copy_GB/s"] > 0.1  # the one measurement of this run
        assert e["fraction_of_copy_bandwidth"] == pytest.approx(
            e["GB/s"] / e["copy_GB/s"], rel=1e-12
        )
        assert e["samples_per_s"] == pytest.approx(512 / med, rel=1e-12)
        ref = by_name["numpy"]["stats"]["median"]
        assert e["speedup"] == pytest.approx(ref / med, rel=1e-12)
    assert by_name["numpy"]["extra_info"]["speedup"] == 1.0


def test_tiny_run_prints_table_and_writes_plot(tiny_run):
    path, out = tiny_run
    doc = json.loads(path.read_text())
    assert "softmax float32 512x10" in out and f"JSON (pytest-benchmark format): {path}" in out
    numba = next(b for b in doc["benchmarks"] if b["name"] == "numba")
    row = next(line for line in out.splitlines() if line.strip().startswith("numba"))
    cols = row.split()
    assert float(cols[1]) == pytest.approx(numba["stats"]["median"] * 1e3, abs=1e-3)
    assert float(cols[-1].rstrip("x")) == pytest.approx(numba["extra_info"]["speedup"], abs=0.05)
    frac = 100 * numba["extra_info"]["fraction_of_copy_bandwidth"]
    assert float(cols[4]) == pytest.approx(frac, abs=0.05)
    if importlib.util.find_spec("matplotlib"):
        png = path.with_suffix(".png")
        assert f"plot: {png}" in out and png.read_bytes()[:8] == PNG_SIGNATURE


def test_tiny_run_is_read_by_pytest_benchmark_compare(tiny_run, tmp_path):
    pytest.importorskip("pytest_benchmark")
    path, _ = tiny_run
    doc = json.loads(path.read_text())
    csv_prefix = tmp_path / "cmp"
    done = subprocess.run(
        [sys.executable, "-m", "pytest_benchmark", "compare", str(path), "--csv", str(csv_prefix)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "Failed to load" not in done.stderr + done.stdout
    assert "benchmark 'softmax float32 512x10': 2 tests" in done.stdout
    with open(csv_prefix.with_suffix(".csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    got = {r["param:impl"]: float(r["median"]) for r in rows}
    want = {b["name"]: b["stats"]["median"] for b in doc["benchmarks"]}
    assert got == pytest.approx(want, rel=1e-9)


# ---------------------------------------------------------------- run(): selection


@pytest.fixture
def fake_copy(monkeypatch):
    """copy_bandwidth replaced by a fixed 10 GB/s; records the thread counts asked."""
    asked = []

    def fake(threads=None, *args, **kwargs):
        asked.append(threads)
        return 1e10

    monkeypatch.setattr(benchmarks, "copy_bandwidth", fake)
    return asked


def test_run_trainer_cases(fake_copy):
    numba = pytest.importorskip("numba")
    before = numba.get_num_threads()
    doc = benchmarks.run(
        threads=1, impls=["numpy", "numba"], ops=[], train_rows=2000, progress=None
    )
    assert fake_copy == [1]  # measured once, with the run's thread count
    assert numba.get_num_threads() == before  # restored
    assert doc["machine_info"]["threads"] == 1
    by_name = {b["name"]: b for b in doc["benchmarks"]}
    assert sorted(by_name) == ["numba", "numba-uint8", "numpy"]
    flop = benchmarks.train_flop(2000, benchmarks.TRAIN_D, benchmarks.TRAIN_C)
    ref = by_name["numpy"]["stats"]["median"]
    for name, b in by_name.items():
        assert b["group"].startswith("train ") and "2000 of 60000" in b["group"]
        e, med = b["extra_info"], b["stats"]["median"]
        itemsize = 1 if name == "numba-uint8" else 4
        assert e["bytes_moved"] == 2000 * benchmarks.TRAIN_D * itemsize
        assert e["GFLOP/s"] == pytest.approx(flop / med / 1e9, rel=1e-12)
        assert e["samples_per_s"] == pytest.approx(2000 / med, rel=1e-12)
        assert e["fraction_of_copy_bandwidth"] == pytest.approx(
            e["bytes_moved"] / med / 1e10, rel=1e-12
        )
        assert e["speedup"] == pytest.approx(ref / med, rel=1e-12)


def test_quick_run_skips_the_reference_on_large_cases(fake_copy):
    pytest.importorskip("numba")
    lines: list[str] = []
    doc = benchmarks.run(
        impls=["numpy", "numba"],
        ops=["softmax"],
        shapes=[(2000, 6000)],
        train=False,
        progress=lines.append,
    )
    (only,) = doc["benchmarks"]  # N x C = 1.2e7: the reference is left out in quick mode
    assert only["name"] == "numba" and only["group"] == "softmax float32 2000x6000"
    assert "speedup" not in only["extra_info"]
    assert any("numpy" in line and "skipped" in line for line in lines)


def test_run_times_a_gpu_row_on_device_arrays_against_the_device_copy(fake_copy, monkeypatch):
    """A stand-in GPU row: inputs moved once before timing, its synchronizer called after
    every call, its fraction taken of the device-to-device copy bandwidth."""
    from fastsoftmax import implementations

    class OnDevice:
        def __init__(self, a):
            self.a = a

    moved, ran, synced = [], [], []

    def to_device(a):
        moved.append(a.shape)
        return OnDevice(a)

    def run_on_device(op, x):
        assert isinstance(x, OnDevice)  # never a host array while timed
        ran.append(op)
        return x

    fake = implementations.Implementation(
        "fake-gpu", "gpu-peer", lambda: None, run_on_device, ("softmax",), "gpu", to_device
    )
    monkeypatch.setattr(implementations, "IMPLEMENTATIONS", (fake,))
    monkeypatch.setattr(benchmarks, "device_copy_bandwidth", lambda: 2e12)
    monkeypatch.setattr(
        benchmarks, "synchronizer", lambda name: (lambda: synced.append(name)) if name else None
    )
    doc = benchmarks.run(
        ops=["softmax", "cross_entropy"], shapes=[(64, 10)], train=False, progress=None
    )
    (b,) = doc["benchmarks"]  # cross_entropy is not among the row's ops
    assert b["name"] == "fake-gpu" and b["extra_info"]["device"] == "gpu"
    assert moved == [(64, 10)]  # moved once, outside the timed calls
    assert len(ran) == len(synced) == b["stats"]["rounds"] + 1  # + the warm-up call
    assert set(synced) == {"fake-gpu"}
    assert b["extra_info"]["copy_GB/s"] == doc["machine_info"]["gpu_copy_GB/s"] == 2000.0
    assert b["extra_info"]["fraction_of_copy_bandwidth"] == pytest.approx(
        b["extra_info"]["GB/s"] / 2000.0, rel=1e-12
    )


def test_run_rejects_unknown_names(fake_copy):
    with pytest.raises(ValueError, match="nope"):
        benchmarks.run(impls=["nope"], train=False, progress=None)
    with pytest.raises(ValueError, match="softmin"):
        benchmarks.run(ops=["softmin"], train=False, progress=None)
    assert fake_copy == []  # nothing measured before the arguments are checked


# ---------------------------------------------------------------- compare


def entry(group, name, median, **extra):
    """A benchmark entry whose median is exactly `median` (three rounds around it)."""
    stats = stats_of([median * 0.9, median, median * 1.2])
    return {
        "group": group,
        "name": name,
        "fullname": f"x::{group}::{name}",
        "params": {"impl": name, **extra.pop("params", {})},
        "param": name,
        "options": {},
        "extra_info": extra,
        "stats": stats,
    }


def doc_of(*entries, **machine):
    return {
        "machine_info": machine,
        "commit_info": {},
        "benchmarks": list(entries),
        "datetime": "2026-01-01T00:00:00+00:00",
        "version": benchmarks.FORMAT_VERSION,
    }


A_DOC = doc_of(
    entry("g1", "numpy", 2.0e-3),
    entry("g1", "numba", 1.0e-3),
    entry("g2", "numba", 5.0e-3),
    entry("only-a", "numba", 1.0),
)
B_DOC = doc_of(
    entry("g1", "numba", 1.5e-3),
    entry("g1", "numpy", 1.0e-3),
    entry("g2", "numba", 5.0e-3),
    entry("only-b", "x", 1.0),
)


def test_compare_matches_by_group_and_name():
    rows = compare(A_DOC, B_DOC)
    assert [(r["group"], r["name"]) for r in rows] == [
        ("g1", "numpy"),
        ("g1", "numba"),
        ("g2", "numba"),
    ]
    assert [r["median_a"] for r in rows] == pytest.approx([2e-3, 1e-3, 5e-3])
    assert [r["median_b"] for r in rows] == pytest.approx([1e-3, 1.5e-3, 5e-3])
    assert [r["change"] for r in rows] == pytest.approx([-0.5, 0.5, 0.0])
    text = format_compare(rows)
    assert "-50.0%" in text and "+50.0%" in text and "2.00x faster" in text
    assert "only-a" not in text and "only-b" not in text
    assert "no benchmark" in format_compare(compare(A_DOC, doc_of()))


def test_write_json_drops_raw_data_and_keeps_the_document(tmp_path):
    doc = copy.deepcopy(A_DOC)
    path = benchmarks.write_json(doc, tmp_path / "a.json")
    assert doc == A_DOC  # the caller's document keeps its data
    written = benchmarks.load_json(path)
    assert all("data" not in b["stats"] for b in written["benchmarks"])
    for w, a in zip(written["benchmarks"], A_DOC["benchmarks"], strict=True):
        assert w["stats"] == {k: v for k, v in a["stats"].items() if k != "data"}
    assert compare(written, A_DOC) == compare(A_DOC, A_DOC)
    kept = benchmarks.load_json(benchmarks.write_json(doc, tmp_path / "b.json", raw_data=True))
    assert kept["benchmarks"][0]["stats"]["data"] == A_DOC["benchmarks"][0]["stats"]["data"]


def test_cli_compare_two_files(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    benchmarks.write_json(A_DOC, a)
    benchmarks.write_json(B_DOC, b)
    assert main(["bench", "--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert str(a) in out and str(b) in out
    numba_g1 = next(line for line in out.splitlines() if line.strip().startswith("numba"))
    assert numba_g1.split()[1:4] == ["1.000", "1.500", "+50.0%"]


def test_cli_compare_reads_pytest_benchmarks_own_json(capsys):
    own = REPO / "bench" / "results" / "train_cpu.json"
    if not own.exists():
        pytest.skip(f"{own} is not there")
    assert main(["bench", "--compare", str(own), str(own)]) == 0
    out = capsys.readouterr().out
    n = len(json.loads(own.read_text())["benchmarks"])
    assert out.count("+0.0%") == n > 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"runs": []}', "no 'benchmarks'"),
        ('{"benchmarks": [{"name": "x"}]}', "stats.median"),
        (None, "No such file"),
    ],
)
def test_cli_compare_bad_file_exits_2_naming_it(tmp_path, capsys, content, message):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    benchmarks.write_json(A_DOC, good)
    if content is not None:
        bad.write_text(content)
    assert main(["bench", "--compare", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and message in err and str(good) not in err


# ---------------------------------------------------------------- table, CLI options


def test_format_table_rows():
    doc = doc_of(
        entry(
            "softmax float32 512x10",
            "numpy",
            4e-3,
            **{
                "samples_per_s": 128000.0,
                "GB/s": 0.01,
                "fraction_of_copy_bandwidth": 0.001,
                "speedup": 1.0,
            },
        ),
        entry(
            "softmax float32 512x10",
            "numba",
            1e-3,
            **{
                "samples_per_s": 512000.0,
                "GB/s": 0.04,
                "fraction_of_copy_bandwidth": 0.25,
                "speedup": 4.0,
            },
        ),
        cpu_model="Test CPU",
        cores=2,
        threads=2,
        mode="quick",
        **{"copy_GB/s": 40.0},
    )
    text = benchmarks.format_table(doc)
    assert "Test CPU, 2 cores, 2 threads; copy bandwidth 40.0 GB/s" in text
    numba = next(line for line in text.splitlines() if line.strip().startswith("numba"))
    assert numba.split() == ["numba", "1.000", "5.12e+05", "0.04", "25.0", "-", "4.0x"]


def test_cli_bench_passes_options_and_notes_missing_matplotlib(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_run(**kwargs):
        seen.update(kwargs)
        return doc_of(entry("g", "numba", 1e-3), cpu_model="CPU", **{"copy_GB/s": 1.0})

    monkeypatch.setattr(benchmarks, "run", fake_run)
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)  # import of it raises ImportError
    path = tmp_path / "sub" / "r.json"
    argv = [
        "bench",
        "--full",
        "--threads",
        "3",
        "--impl",
        "numba",
        "--op",
        "softmax",
        "--op",
        "cross_entropy",
        "--shape",
        "512x10",
        "--shape",
        "8X4",
        "--no-train",
        "--json",
        str(path),
    ]
    assert main(argv) == 0
    assert seen["full"] is True and seen["threads"] == 3 and seen["train"] is False
    assert seen["impls"] == ["numba"] and seen["ops"] == ["softmax", "cross_entropy"]
    assert seen["shapes"] == [(512, 10), (8, 4)]
    captured = capsys.readouterr()
    assert benchmarks.load_json(path)["benchmarks"][0]["name"] == "numba"
    assert not path.with_suffix(".png").exists()
    assert "no plot written" in captured.err and "fastsoftmax[plot]" in captured.err


def test_cli_bench_rejects_a_bad_shape():
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--shape", "512"])
    assert exc.value.code == 2


def test_importing_the_cli_stays_light():
    code = (
        "import sys, fastsoftmax.cli\n"
        "print(sorted(m for m in ('matplotlib', 'torch', 'pytest', 'pytest_benchmark') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"


# ---------------------------------------------------------------- numba_target


def test_numba_target_describes_this_process():
    info = benchmarks.numba_target()
    assert info["cpu_model"] == benchmarks.cpu_model()
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
            assert info["simd"] == benchmarks._simd_of_feature_string(info["numba_cpu_features"])


def test_simd_of_feature_string():
    f = benchmarks._simd_of_feature_string
    assert f("+sse2,+avx,+avx2,+avx512f,+fma") == "avx512"
    assert f("+avx2,-avx512f") == "avx2"
    assert f("+avx512f,-avx512f,+avx2") == "avx2"  # the last mention wins
    assert f("+sse4.2,-avx2") == "sse"
    assert f("") == "sse"


def _numba_target_in_child(env: dict) -> dict:
    """numba_target() in a child process whose NUMBA_CPU_* variables are `env`'s."""
    code = "import json; from fastsoftmax import benchmarks as b; "
    code += "print(json.dumps(b.numba_target()))"
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
        assert info["simd"] == benchmarks._simd_of_feature_string(get_host_cpu_features())


# ---------------------------------------------------------------- plot


def plot_doc():
    entries = []
    for name, scale in (("numpy", 0.5), ("numba", 10.0)):
        for n, c in ((512, 10), (60000, 10), (8192, 1000), (4096, 32000)):
            gbs = scale * math.log10(c) * (0.5 if n == 512 else 1)
            entries.append(
                entry(
                    f"cross_entropy_with_grad float32 {n}x{c}",
                    name,
                    1e-3,
                    params={"op": "cross_entropy_with_grad", "n": n, "c": c, "dtype": "float32"},
                    **{"GB/s": gbs},
                )
            )
    for name, rate in (("numpy", 5e5), ("numba", 2e6), ("numba-uint8", 3e6)):
        entries.append(
            entry(
                "train fit 1 epoch 60000x784 batch 128",
                name,
                60000 / rate,
                params={"n": 60000},
                samples_per_s=rate,
            )
        )
    return doc_of(*entries, cpu_model="Test CPU", threads=2, **{"copy_GB/s": 40.0})


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    path = benchmarks.plot(plot_doc(), tmp_path / "deep" / "bench.png")
    assert path == tmp_path / "deep" / "bench.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)[..., :3]
    assert image.shape[0] > 300 and image.shape[1] > 800
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10  # lines, bars, text


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ImportError, match=r"pip install 'fastsoftmax\[plot\]'"):
        benchmarks.plot(plot_doc(), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
