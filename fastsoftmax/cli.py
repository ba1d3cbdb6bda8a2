"""The ``fastsoftmax`` command.

``fastsoftmax compare``: parity and speed of every available implementation on logits
computed from the real MNIST test set (downloaded on first use).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from . import data
from .implementations import available

_COMPARE_OPS = ("cross_entropy_with_grad", "cross_entropy", "softmax", "log_softmax")


def mnist_logits(
    x_uint8: np.ndarray, dtype: np.dtype, seed: int = 0, num_classes: int = 10
) -> np.ndarray:
    """Logits of a fixed random linear model: (x / 255) @ W, W ~ N(0, 0.05^2) from `seed`."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.05, size=(x_uint8.shape[1], num_classes))
    return ((x_uint8 / 255.0) @ w).astype(dtype)


def _best_time(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: JIT compilation and first-touch allocations stay out of the timing
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _max_abs_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.abs(a - b))
    return float(diff.max()) if diff.size else 0.0


def compare(args: argparse.Namespace) -> int:
    x, y = data.load("mnist", "test", data_dir=args.data_dir, download=not args.no_download)
    if args.rows and args.rows != len(x):
        reps = -(-args.rows // len(x))
        x, y = np.tile(x, (reps, 1))[: args.rows], np.tile(y, reps)[: args.rows]
    dtype = np.dtype(args.dtype)
    logits = mnist_logits(x, dtype)
    impls = available()
    try:
        import numba

        threads = numba.get_num_threads()
    except ImportError:
        threads = os.cpu_count() or 1
    if any(i.name == "torch" for i in impls):
        import torch

        torch.set_num_threads(threads)
    n = len(logits)
    print(
        f"MNIST test set -> logits {logits.shape} {dtype} of a fixed random linear model; "
        f"{threads} thread(s); best of {args.repeat} runs"
    )
    header = (
        f"{'op':26s}{'impl':8s}{'max|d loss|':>13s}{'max|d grad|':>13s}"
        f"{'ms':>10s}{'samples/s':>12s}{'speedup':>9s}"
    )
    print(header)
    print("-" * len(header))
    for op in _COMPARE_OPS:
        call_args = (logits, y) if op.startswith("cross") else (logits,)
        ref_out, ref_time = None, None
        label = op  # printed once per group
        for impl in impls:
            out = impl(op, *call_args)
            seconds = _best_time(lambda i=impl, o=op, a=call_args: i(o, *a), args.repeat)
            if ref_out is None:
                ref_out, ref_time = out, seconds
            if op == "cross_entropy_with_grad":
                d_loss, d_grad = (
                    _max_abs_diff(out[0], ref_out[0]),
                    _max_abs_diff(out[1], ref_out[1]),
                )
            else:
                d_loss, d_grad = _max_abs_diff(out, ref_out), float("nan")
            grad_col = "" if np.isnan(d_grad) else f"{d_grad:.2e}"
            print(
                f"{label:26s}{impl.name:8s}{d_loss:13.2e}{grad_col:>13s}"
                f"{seconds * 1e3:10.3f}{n / seconds:12.3g}{ref_time / seconds:9.1f}x"
            )
            label = ""
    print("speedup = reference (numpy) time / implementation time, measured in this run")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastsoftmax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "compare",
        help="parity and speed of every backend on MNIST logits",
        description="Parity (max abs difference from the NumPy reference) and speed of "
        "every available implementation on logits from the real MNIST test set.",
    )
    p.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--rows", type=int, default=0, help="repeat the 10k rows up to this count")
    p.add_argument("--repeat", type=int, default=20, help="timed runs per cell (best is kept)")
    p.set_defaults(func=compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (data.DatasetNotFoundError, data.IDXFormatError) as err:
        print(f"fastsoftmax: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
