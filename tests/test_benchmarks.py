"""``fastsoftmax bench``: a pytest-benchmark run of the cases (fastsoftmax.benchmarks,
fastsoftmax.bench_cases; its JSON, read back by pytest-benchmark's compare command), the
pause between cases shared with bench/, the napkin figures, and what
fastsoftmax.bench_report reads back: the table, the change between two runs
(``--diff``, formerly ``--compare``) and the plot."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from fastsoftmax import bench_cases, bench_report, benchmarks, machine
from fastsoftmax.bench_cases import OpCase
from fastsoftmax.cli import main

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def stats_fields() -> set[str]:
    """The keys of a benchmark's "stats" in pytest-benchmark's JSON, per-round times
    left out."""
    return set(pytest.importorskip("pytest_benchmark.stats").Stats.fields) | {"iterations"}


@pytest.fixture
def pauses(monkeypatch):
    """benchmarks.quiesce recorded (the configs it was called with), its pause 0."""
    calls = []
    real = benchmarks.quiesce
    monkeypatch.setattr(benchmarks, "QUIESCE_S", 0.0)
    monkeypatch.setattr(benchmarks, "quiesce", lambda config: (calls.append(config), real(config)))
    return calls


@pytest.fixture
def fake_copy(monkeypatch):
    """copy_bandwidth replaced by a fixed 10 GB/s; records the thread counts asked."""
    asked = []

    def fake(threads=None, *args, **kwargs):
        asked.append(threads)
        return 1e10

    monkeypatch.setattr(machine, "copy_bandwidth", fake)
    return asked


# ---------------------------------------------------------------- the pause between cases


class Config:
    def __init__(self, disabled):
        self.disabled = disabled

    def getoption(self, name, default=None):
        return self.disabled if name == "benchmark_disable" else default


def test_quiesce_sleeps_before_timed_cases_only(monkeypatch):
    slept = []
    monkeypatch.setattr(benchmarks.time, "sleep", slept.append)
    benchmarks.quiesce(Config(disabled=False))
    assert slept == [benchmarks.QUIESCE_S] and benchmarks.QUIESCE_S > 0
    benchmarks.quiesce(Config(disabled=True))
    assert slept == [benchmarks.QUIESCE_S]  # untimed runs (CI) do not wait


def test_the_bench_suites_pause_through_the_same_policy(tmp_path, pauses):
    """bench/conftest.py's autouse fixture calls benchmarks.quiesce before every case."""
    pytest.importorskip("pytest_benchmark")
    spec = importlib.util.spec_from_file_location("bench_conftest", REPO / "bench" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    (tmp_path / "bench_x.py").write_text(
        "def test_a(benchmark):\n    benchmark(sum, [1, 2])\n"
        "def test_b(benchmark):\n    benchmark(sum, [3])\n"
    )
    args = [str(tmp_path / "bench_x.py"), "-c", os.devnull, "--rootdir", str(tmp_path)]
    args += ["-p", "no:cacheprovider", "-q", "--benchmark-max-time", "0.001"]
    with redirect_stdout(io.StringIO()):
        assert pytest.main(args, plugins=[conftest]) == 0
    assert len(pauses) == 2


# ---------------------------------------------------------------- a real tiny run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`fastsoftmax bench` on softmax float32 512x10, numpy and numba, no trainer: (JSON
    path, stdout, stderr, the pauses taken)."""
    pytest.importorskip("numba")
    pytest.importorskip("pytest_benchmark")
    path = tmp_path_factory.mktemp("bench") / "tiny.json"
    out, err, calls = io.StringIO(), io.StringIO(), []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(benchmarks, "QUIESCE_S", 0.01)
        real = benchmarks.quiesce
        mp.setattr(benchmarks, "quiesce", lambda config: (calls.append(config), real(config)))
        with redirect_stdout(out), redirect_stderr(err):
            status = main(
                [
                    *("bench", "--op", "softmax", "--impl", "numpy", "--impl", "numba"),
                    *("--no-train", "--shape", "512x10", "--json", str(path)),
                ]
            )
    assert status == 0, err.getvalue()
    return path, out.getvalue(), err.getvalue(), calls


def test_tiny_run_json_is_pytest_benchmarks_own(tiny_run):
    import pytest_benchmark

    path, _, err, calls = tiny_run
    doc = json.loads(path.read_text())
    assert set(doc) == {"machine_info", "commit_info", "benchmarks", "datetime", "version"}
    assert doc["version"] == pytest_benchmark.__version__  # written by pytest-benchmark
    assert len(calls) == 2  # one pause before each case, through benchmarks.quiesce
    assert "2 passed" in err  # pytest's report goes to stderr
    m = doc["machine_info"]
    assert m["python_version"] == platform.python_version() and "cpu" in m  # its own
    assert m["threads"] >= 1 and m["cores"] >= 1 and m["cpu_model"]  # ours
    assert m["numpy"] == np.__version__ and m["mode"] == "quick"
    assert m["numba_target"] == machine.numba_target()
    by_impl = {b["params"]["impl"]: b for b in doc["benchmarks"]}
    assert sorted(by_impl) == ["numba", "numpy"]
    case = OpCase("softmax", 512, 10, "float32")
    for impl, b in by_impl.items():
        assert b["group"] == case.group == "softmax float32 512x10"
        assert b["params"] == {"impl": impl, "op": "softmax", "n": 512, "c": 10, "dtype": "float32"}
        assert b["fullname"] == f"benchmarks.py::bench_op[softmax-float32-512x10-{impl}]"
        assert b["options"]["max_time"] == 0.3 and b["options"]["min_rounds"] == 3
        st = b["stats"]
        assert set(st) == stats_fields()  # the statistics, not every round's time
        assert st["rounds"] >= 3 and st["iterations"] >= 1
        assert 0 < st["min"] <= st["median"] <= st["max"] < 1
        assert st["ops"] == pytest.approx(1 / st["mean"], rel=1e-9)
        e, med = b["extra_info"], st["median"]
        assert e["bytes_moved"] == case.bytes_moved == 2 * 512 * 10 * 4
        assert e["GB/s"] == pytest.approx(e["bytes_moved"] / med / 1e9, rel=1e-12)
        assert e["copy_GB/s"] == m["copy_GB/s"] > 0.1  # the one measurement of this run
        assert e["fraction_of_copy_bandwidth"] == pytest.approx(
            e["GB/s"] / e["copy_GB/s"], rel=1e-12
        )
        assert e["samples_per_s"] == pytest.approx(512 / med, rel=1e-12)
        assert e["device"] == "cpu" and e["bytes_model"] == bench_cases.BYTES_MODEL["softmax"]
        ref = by_impl["numpy"]["stats"]["median"]
        assert e["speedup"] == pytest.approx(ref / med, rel=1e-12) and e["reference"] == "numpy"
    assert by_impl["numpy"]["extra_info"]["speedup"] == 1.0


def test_tiny_run_prints_table_and_writes_plot(tiny_run):
    import pytest_benchmark

    path, out, _, _ = tiny_run
    doc = json.loads(path.read_text())
    assert "softmax float32 512x10" in out
    assert f"JSON (pytest-benchmark {pytest_benchmark.__version__}): {path}" in out
    numba = next(b for b in doc["benchmarks"] if b["params"]["impl"] == "numba")
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
    path, _, _, _ = tiny_run
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
    want = {b["params"]["impl"]: b["stats"]["median"] for b in doc["benchmarks"]}
    assert got == pytest.approx(want, rel=1e-9)


# ---------------------------------------------------------------- run(): what is timed


@pytest.mark.full  # ~20 s: real pytest-benchmark runs of the trainer
def test_run_trainer_cases(fake_copy, pauses, tmp_path):
    numba = pytest.importorskip("numba")
    before = numba.get_num_threads()
    doc = benchmarks.run(
        threads=1, impls=["numpy", "numba"], ops=[], train_rows=2000, json_path=tmp_path / "t.json"
    )
    assert fake_copy == [1]  # measured once, with the run's thread count
    assert numba.get_num_threads() == before  # restored
    assert doc["machine_info"]["threads"] == 1
    by_name = {b["params"]["impl"]: b for b in doc["benchmarks"]}
    assert sorted(by_name) == ["numba", "numba-uint8", "numpy"] and len(pauses) == 3
    flop = bench_cases.train_flop(2000, bench_cases.TRAIN_D, bench_cases.TRAIN_C)
    ref = by_name["numpy"]["stats"]["median"]
    for name, b in by_name.items():
        assert b["group"].startswith("train fit 1 epoch") and "2000 of 60000" in b["group"]
        assert b["params"]["xtype"] == ("uint8" if name == "numba-uint8" else "float32")
        e, med = b["extra_info"], b["stats"]["median"]
        itemsize = 1 if name == "numba-uint8" else 4
        assert e["bytes_moved"] == 2000 * bench_cases.TRAIN_D * itemsize
        assert e["GFLOP/s"] == pytest.approx(flop / med / 1e9, rel=1e-12)
        assert e["samples_per_s"] == pytest.approx(2000 / med, rel=1e-12)
        assert e["fraction_of_copy_bandwidth"] == pytest.approx(
            e["bytes_moved"] / med / 1e10, rel=1e-12
        )
        assert e["speedup"] == pytest.approx(ref / med, rel=1e-12)


def test_quick_run_skips_the_reference_on_large_cases(fake_copy, pauses, tmp_path, capsys):
    pytest.importorskip("numba")
    doc = benchmarks.run(
        impls=["numpy", "numba"],
        ops=["softmax"],
        shapes=[(2000, 6000)],
        train=False,
        json_path=tmp_path / "q.json",
    )
    (only,) = doc["benchmarks"]  # N x C = 1.2e7: the reference is left out in quick mode
    assert only["params"]["impl"] == "numba" and only["group"] == "softmax float32 2000x6000"
    assert "speedup" not in only["extra_info"]
    err = capsys.readouterr().err
    assert "1 skipped" in err and "numpy at N x C > 1e7" in err


def fake_row(name, run_on_device, device="cpu", to_device=None):
    from fastsoftmax import implementations

    return implementations.Implementation(
        name, "peer", lambda: None, run_on_device, ("softmax",), device, to_device
    )


def test_run_times_a_gpu_row_on_device_arrays_against_the_device_copy(
    fake_copy, pauses, monkeypatch, tmp_path
):
    """A stand-in GPU row: inputs moved once before timing, its synchronizer called after
    every call, its fraction taken of the device-to-device copy bandwidth."""
    from fastsoftmax import implementations

    class OnDevice:
        def __init__(self, a):
            self.a = a

    moved, log = [], []

    def to_device(a):
        moved.append(a.shape)
        return OnDevice(a)

    def run_on_device(op, x):
        assert isinstance(x, OnDevice)  # never a host array while timed
        log.append("run")
        return x

    fake = fake_row("fake-gpu", run_on_device, "gpu", to_device)
    monkeypatch.setattr(implementations, "IMPLEMENTATIONS", (fake,))
    monkeypatch.setattr(machine, "device_copy_bandwidth", lambda: 2e12)
    monkeypatch.setattr(benchmarks, "synchronizer", lambda name: lambda: log.append(f"sync {name}"))
    doc = benchmarks.run(
        ops=["softmax", "cross_entropy"], shapes=[(64, 10)], train=False, json_path=tmp_path / "g"
    )
    (b,) = doc["benchmarks"]  # cross_entropy is not among the row's ops
    assert b["params"]["impl"] == "fake-gpu" and b["extra_info"]["device"] == "gpu"
    assert moved == [(64, 10)]  # moved once, outside the timed calls
    n_calls = len(log) // 2
    assert n_calls > b["stats"]["rounds"] * b["stats"]["iterations"]  # + warm-up calls
    assert log == ["run", "sync fake-gpu"] * n_calls  # a sync after every call
    assert b["extra_info"]["copy_GB/s"] == doc["machine_info"]["gpu_copy_GB/s"] == 2000.0
    assert b["extra_info"]["fraction_of_copy_bandwidth"] == pytest.approx(
        b["extra_info"]["GB/s"] / 2000.0, rel=1e-12
    )


def test_a_failing_case_fails_the_command_and_keeps_the_others(
    fake_copy, pauses, monkeypatch, tmp_path, capsys
):
    from fastsoftmax import implementations

    def broken(op, x):
        raise ArithmeticError("the kernel broke")

    rows = (fake_row("fine", lambda op, x: x), fake_row("broken", broken))
    monkeypatch.setattr(implementations, "IMPLEMENTATIONS", rows)
    path = tmp_path / "f.json"
    argv = ["bench", "--op", "softmax", "--shape", "8x4", "--no-train", "--json", str(path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "the kernel broke" in err and "1 failed, 1 passed" in err
    assert "fastsoftmax: error: the pytest-benchmark run failed" in err and str(path) in err
    assert [b["params"]["impl"] for b in bench_report.load_json(path)["benchmarks"]] == ["fine"]


def test_run_rejects_unknown_names_and_empty_runs(fake_copy, tmp_path):
    with pytest.raises(ValueError, match="nope"):
        benchmarks.run(impls=["nope"], train=False)
    with pytest.raises(ValueError, match="softmin"):
        benchmarks.run(ops=["softmin"], train=False)
    with pytest.raises(ValueError, match="threads"):
        benchmarks.run(threads=0)
    with pytest.raises(ValueError, match="nothing to time"):
        benchmarks.run(ops=[], train=False, json_path=tmp_path / "e.json")
    assert fake_copy == []  # nothing measured before the arguments are checked


def test_run_without_pytest_benchmark_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pytest_benchmark", None)  # its import raises
    with pytest.raises(ImportError, match=r"pip install 'fastsoftmax\[bench\]'"):
        benchmarks.run(train=False)
    assert main(["bench", "--no-train"]) == 2
    assert "fastsoftmax[bench]" in capsys.readouterr().err


# ---------------------------------------------------------------- documents, --diff


def entry(group, name, median, **extra):
    """A benchmark entry as pytest-benchmark writes it, whose median is exactly `median`
    (pytest-benchmark's Stats of three rounds around it)."""
    stats = pytest.importorskip("pytest_benchmark.stats").Stats()
    for t in (median * 0.9, median, median * 1.2):
        stats.update(t)
    return {
        "group": group,
        "name": f"bench_x[{name}]",
        "fullname": f"x.py::bench_x[{group}-{name}]",
        "params": {"impl": name, **extra.pop("params", {})},
        "param": name,
        "options": {},
        "extra_info": extra,
        "stats": {**stats.as_dict(), "iterations": 1},
    }


def doc_of(*entries, **machine):
    return {
        "machine_info": machine,
        "commit_info": {},
        "benchmarks": list(entries),
        "datetime": "2026-01-01T00:00:00+00:00",
        "version": "5.3.1",
    }


def write(tmp_path, name, doc) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_drop_raw_data_keeps_the_statistics():
    doc = doc_of(entry("g", "numba", 1e-3))
    doc["benchmarks"][0]["stats"]["data"] = [1e-3] * 3
    stats = dict(doc["benchmarks"][0]["stats"])
    assert benchmarks.drop_raw_data(doc) is doc
    assert doc["benchmarks"][0]["stats"] == {k: v for k, v in stats.items() if k != "data"}


def test_cli_diff_two_files_with_pytest_benchmarks_table(tmp_path, capsys):
    a = write(tmp_path, "a.json", doc_of(
        entry("g1", "numpy", 4.0e-3), entry("g1", "numba", 2.0e-3),
        entry("g2", "numba", 5.0e-3), entry("only-a", "numba", 1.0),
    ))  # fmt: skip
    b = write(tmp_path, "b.json", doc_of(
        entry("g1", "numba", 3.0e-3), entry("g1", "numpy", 2.0e-3),
        entry("g2", "numba", 5.0e-3), entry("only-b", "x", 1.0),
    ))  # fmt: skip
    assert main(["bench", "--diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert f"A = {a}" in out and f"B = {b}" in out
    assert "benchmark 'g1': 2 tests, 2 sources" in out and "A Median" in out
    assert "only-a" not in out and "only-b" not in out
    assert "2 benchmark(s) in only one of the files left out" in out
    rows, group = {}, None
    for line in out.splitlines():
        if "benchmark '" in line:
            group = line.split("'")[1]
        elif "bench_x[" in line:  # name, A min, B min, change, A median, B median, change
            rows[group, line.split()[0]] = line.split()[1:]
    assert sorted(rows) == [("g1", "bench_x[numba]"), ("g1", "bench_x[numpy]"),
                            ("g2", "bench_x[numba]")]  # fmt: skip
    assert "Name (time in ms)" in out
    assert rows["g1", "bench_x[numba]"][3:] == ["2.0000", "3.0000", "+50.0%"]
    assert rows["g1", "bench_x[numpy]"][3:] == ["4.0000", "2.0000", "-50.0%"]
    assert rows["g2", "bench_x[numba]"][2::3] == ["+0.0%", "+0.0%"]


def test_cli_diff_reads_the_bench_suites_json(tmp_path, capsys):
    own = REPO / "bench" / "results" / "train_cpu.json"
    if not own.exists():
        pytest.skip(f"{own} is not there")
    copy = shutil.copy(own, tmp_path / "again.json")
    assert main(["bench", "--diff", str(own), str(copy)]) == 0
    out = capsys.readouterr().out
    n = len(json.loads(own.read_text())["benchmarks"])
    assert out.count("+0.0%") == 2 * n > 0  # min and median of every benchmark


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"runs": []}', "no 'benchmarks'"),
        ('{"benchmarks": [{"name": "x"}]}', "without a name, fullname or stats"),
        (None, "No such file"),
    ],
)
def test_cli_diff_bad_file_exits_2_naming_it(tmp_path, capsys, content, message):
    good, bad = write(tmp_path, "good.json", doc_of(entry("g", "n", 1.0))), tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    assert main(["bench", "--diff", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and message in err and str(good) not in err


def test_cli_compare_is_the_deprecated_name_of_diff(tmp_path, capsys):
    a = write(tmp_path, "a.json", doc_of(entry("g", "numba", 2.0e-3)))
    b = write(tmp_path, "b.json", doc_of(entry("g", "numba", 3.0e-3)))
    assert main(["bench", "--diff", str(a), str(b)]) == 0
    diff = capsys.readouterr()
    assert main(["bench", "--compare", str(a), str(b)]) == 0
    old = capsys.readouterr()
    assert old.out == diff.out and "+50.0%" in old.out
    assert diff.err == ""
    assert old.err == "fastsoftmax: bench --compare is deprecated; use bench --diff\n"
    assert main(["bench", "--diff", str(a), str(b), "--compare", str(a), str(b)]) == 2
    assert "give --diff alone" in capsys.readouterr().err


def test_cli_bench_help_names_diff_not_compare(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--diff A.json B.json" in text and "--compare" not in text


# ---------------------------------------------------------------- table, CLI options


def test_rates():
    r = bench_cases.rates(0.5, bytes_moved=2e9, rows=1000, copy_bw=8e9)
    assert r == {"seconds": 0.5, "samples_per_s": 2000.0, "bytes_moved": 2e9, "GB/s": 4.0,
                 "copy_GB/s": 8.0, "fraction_of_copy_bandwidth": 0.5}  # fmt: skip
    assert bench_cases.rates(0.5) == {"seconds": 0.5}


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
    text = bench_report.format_table(doc)
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
    assert seen["shapes"] == [(512, 10), (8, 4)] and seen["json_path"] == str(path)
    captured = capsys.readouterr()
    assert "numba" in captured.out and f"JSON (pytest-benchmark 5.3.1): {path}" in captured.out
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

    path = bench_report.plot(plot_doc(), tmp_path / "deep" / "bench.png")
    assert path == tmp_path / "deep" / "bench.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)[..., :3]
    assert image.shape[0] > 300 and image.shape[1] > 800
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10  # lines, bars, text


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ImportError, match=r"pip install 'fastsoftmax\[plot\]'"):
        bench_report.plot(plot_doc(), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
