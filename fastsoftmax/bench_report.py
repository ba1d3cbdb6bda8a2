"""Reading the JSON of a pytest-benchmark run (``fastsoftmax bench``'s or the bench/
suites'): `load_json` checks it, `format_table` prints the napkin figures and speedups
per group, `plot` draws them (needs matplotlib), and `diff_runs` shows the change
between two runs with pytest-benchmark's own table (``pytest-benchmark compare
--between``; ``fastsoftmax bench --diff``).
"""

from __future__ import annotations

import functools
import json
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

_STATS = ("min", "max", "mean", "median", "stddev", "iqr")


def load_json(path: str | os.PathLike[str]) -> dict:
    """A pytest-benchmark JSON document (of ``fastsoftmax bench`` or of the bench/
    suites); ValueError naming the file when it is not one."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")  # OSError (with the name) when unreadable
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise ValueError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    for b in doc["benchmarks"]:
        stats = b.get("stats") if isinstance(b, dict) else None
        if not (
            isinstance(stats, dict)
            and all(isinstance(stats.get(k), int | float) for k in _STATS)
            and "name" in b
            and "fullname" in b
        ):
            raise ValueError(
                f"{path}: a benchmark without a name, fullname or stats "
                f"({', '.join(_STATS)}): {b!r:.200}"
            )
    return doc


def diff_runs(a_doc: dict, b_doc: dict, columns: Sequence[str] = ("min", "median")) -> int:
    """Print pytest-benchmark's table of the change from run A to run B (``pytest-benchmark
    compare --between``): per group, the benchmarks of both (matched by fullname).
    Return how many benchmarks were in only one of them (left out)."""
    from pytest_benchmark.cli import TerminalReporter
    from pytest_benchmark.logger import Logger
    from pytest_benchmark.plugin import pytest_benchmark_group_stats, pytest_benchmark_scale_unit
    from pytest_benchmark.stats import normalize_stats
    from pytest_benchmark.table import CompareBetweenResults
    from pytest_benchmark.utils import NAME_FORMATTERS, report_noprogress

    names = [{b["fullname"] for b in doc["benchmarks"]} for doc in (a_doc, b_doc)]
    both = names[0] & names[1]
    flat = [
        {**b, **normalize_stats(dict(b["stats"])), "source": source, "path": source}
        for source, doc in (("A", a_doc), ("B", b_doc))
        for b in doc["benchmarks"]
        if b["fullname"] in both
    ]
    if flat:
        table = CompareBetweenResults(
            columns=list(columns),
            sort="min",
            histogram=False,
            name_format=NAME_FORMATTERS["normal"],
            logger=Logger(Logger.NORMAL),
            scale_unit=functools.partial(pytest_benchmark_scale_unit, config=None),
        )
        groups = pytest_benchmark_group_stats(config=None, benchmarks=flat, group_by="group")
        table.display(TerminalReporter(), groups, progress_reporter=report_noprogress)
    else:
        print("no benchmark is in both files (matched by fullname)")
    return len(names[0] ^ names[1])


def _label(b: dict) -> str:
    """A result's row name: its implementation (``params["impl"]``), else its name."""
    impl = (b.get("params") or {}).get("impl")
    return impl if isinstance(impl, str) else b["name"]


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
                f"  {_label(b):14s}{med * 1e3:12.3f}{num('samples_per_s', '.3g'):>12s}"
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


def plot(doc: dict, path: str | os.PathLike[str]) -> Path:
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
        per_c = best.setdefault(_label(b), {})
        if p["c"] not in per_c or p["n"] > per_c[p["c"]]["params"]["n"]:
            per_c[p["c"]] = b
    colors: dict[str, str] = {}  # one colour per implementation in both panels
    for b in doc["benchmarks"]:
        colors.setdefault(_label(b), f"C{len(colors) % 10}")
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
        names = [_label(b) for b in train]
        per_s = [_samples_per_s(b) for b in train]
        bars = right.bar(names, per_s, color=[colors[n] for n in names])
        right.bar_label(bars, labels=[f"{r / 1e6:.2f} M" for r in per_s], fontsize="small")
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
