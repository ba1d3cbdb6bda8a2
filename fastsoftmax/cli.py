"""The ``fastsoftmax`` command.

``fastsoftmax train``: softmax regression on MNIST (or Fashion-MNIST) with the fused
kernels; progress per epoch, Ctrl-C saves a checkpoint, ``--resume`` continues it.
``fastsoftmax evaluate MODEL`` and ``fastsoftmax predict MODEL IMAGES...`` use a saved model.
``fastsoftmax warmup``: compile the kernels into Numba's cache before the first run.
``fastsoftmax bench``: the benchmark cases (quick, or ``--full``), a table of speedups and
fractions of the copy bandwidth, pytest-benchmark JSON and a plot; ``--diff A B``, the
change between two such runs.
``fastsoftmax compare``: parity and speed of every available implementation on logits
computed from the real MNIST test set.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from . import data
from .implementations import available
from .train.loop import LR_SCHEDULES

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
    x, y = data.load(
        "mnist", "test", data_dir=args.data_dir, download=not args.no_download, source=args.source
    )
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


# ------------------------------------------------------------------------------ train
class _StopFlag:
    """Set by SIGINT (Ctrl-C) while training: the loop stops after the kernel call in
    progress, so the saved checkpoint holds a whole number of steps."""

    def __init__(self) -> None:
        self.stop = False

    def __call__(self) -> bool:
        return self.stop

    def install(self):
        import signal

        def handler(signum, frame):
            if self.stop:  # a second Ctrl-C: give up at once
                raise KeyboardInterrupt
            self.stop = True

        try:
            return signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
            return None


def _default_checkpoint(args: argparse.Namespace) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint)
    if args.save:
        save = Path(args.save)
        return save.with_name(save.stem + ".checkpoint.npz")
    return Path("fastsoftmax-checkpoint.npz")


def train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .estimator import SoftmaxRegression, load_model, save_model

    if args.plots:
        from . import plots  # fail now, not after training, if matplotlib is missing
    load = dict(data_dir=args.data_dir, download=not args.no_download, source=args.source)
    train_size = args.train_size
    if train_size < 0:
        raise ValueError(f"--train-size must be >= 0 (0: all images), got {train_size}")
    if args.resume:
        model, meta = load_model(args.resume)
        dataset = meta.get("dataset", args.dataset)
        if dataset != args.dataset and "dataset" in args.given:
            raise ValueError(
                f"--resume {args.resume} was trained on {dataset!r}, not {args.dataset!r}"
            )
        _check_resume_options(args, model, meta)
        train_size = meta.get("train_size", args.train_size)
        history = meta.get("history", {})
        epochs = args.epochs if "epochs" in args.given else meta.get("epochs", args.epochs)
        _check_resume_epochs(args.resume, model, epochs)
        model.set_params(max_epochs=epochs)  # a saved model tells how far it was trained
    else:
        dataset = args.dataset
        model = SoftmaxRegression(
            learning_rate=args.lr,
            lr_schedule=args.lr_schedule,
            power_t=args.power_t,
            batch_size=args.batch_size,
            max_epochs=args.epochs,
            weight_decay=args.weight_decay,
            momentum=args.momentum,
            average=args.average,
            tol=args.tol,
            n_iter_no_change=args.n_iter_no_change,
            early_stopping=args.early_stopping,
            validation_fraction=args.validation_fraction,
            class_weight=args.class_weight,
            backend=args.backend,
            random_state=args.seed,
        )
        history = {}
        epochs = args.epochs
    if "backend" in args.given:
        model.set_params(backend=args.backend)
    x_train, y_train = data.load(dataset, "train", **load)
    x_test, y_test = data.load(dataset, "test", **load)
    if train_size:
        x_train, y_train = x_train[:train_size], y_train[:train_size]
    for key in ("epoch", "train_loss", "test_accuracy", "samples_per_s"):
        history.setdefault(key, [])
    ckpt = _default_checkpoint(args)
    # train_size too: a resumed run must see the same training images
    meta = {"dataset": dataset, "epochs": epochs, "train_size": train_size, "history": history}
    from .train.loop import resolve_step_backend, warm_up

    backend = resolve_step_backend(model.backend)
    num_classes = len(np.unique(y_train))
    if backend == "numba":
        _say_if_compiling(num_classes, model.batch_size)
    # JIT compilation stays out of the first epoch's samples/s
    warm_up(
        x_train, backend, num_classes=num_classes, batch_size=model.batch_size,
        weighted=model.class_weight is not None, averaged=bool(model.average),
    )  # fmt: skip
    print(
        f"{dataset}: {len(x_train)} training and {len(x_test)} test images; backend "
        f"{backend}; {epochs} epochs, batch {model.batch_size}, lr {model.learning_rate} "
        f"({model.lr_schedule}), "
        f"weight decay {model.weight_decay}, momentum {model.momentum}"
        + (f"; resuming {args.resume} at epoch {model.n_iter_}" if args.resume else "")
    )
    bar = None
    start = getattr(model, "_state", None)
    done_rows = [(start.step * model.batch_size) if start is not None else 0]
    # what this command trained (a resumed run: since resuming); seconds as the epoch
    # lines count them, without the test-set scoring after each epoch
    run = {"epochs": 0, "rows": 0, "seconds": 0.0}

    def on_progress(state, steps):
        nonlocal bar
        if bar is None:
            bar = tqdm(
                total=len(x_train), unit="img", unit_scale=True, leave=False,
                desc=f"epoch {state.epoch + 1}/{epochs}", disable=args.quiet,
            )  # fmt: skip
            bar.update(done_rows[0])
        rows = min(state.step * model.batch_size, len(x_train))
        bar.update(rows - bar.n)

    def on_epoch_end(state, seconds):
        nonlocal bar
        if bar is not None:
            bar.close()
            bar = None
        rows = len(x_train) - done_rows[0]
        done_rows[0] = 0
        run["epochs"] += 1
        run["rows"] += rows
        run["seconds"] += seconds
        acc = model.score(x_test, y_test)
        history["epoch"].append(state.epoch)
        history["train_loss"].append(state.loss_curve[-1])
        history["test_accuracy"].append(acc)
        history["samples_per_s"].append(rows / seconds)
        print(
            f"epoch {state.epoch:3d}/{epochs}  train loss {state.loss_curve[-1]:.4f}  "
            f"test accuracy {100 * acc:.2f}%  {rows / seconds:,.0f} samples/s",
            flush=True,
        )

    flag = _StopFlag()
    previous = flag.install()
    t0 = time.perf_counter()
    try:
        finished = model.train_until(
            x_train, y_train, epochs, classes=np.arange(10),
            on_progress=on_progress, on_epoch_end=on_epoch_end, should_stop=flag,
        )  # fmt: skip
    finally:
        wall = time.perf_counter() - t0  # the epochs with their test-set scoring
        if bar is not None:
            bar.close()
        if previous is not None:
            import signal

            signal.signal(signal.SIGINT, previous)
    if not finished:
        save_model(ckpt, model, metadata=meta)
        st = model.training_state_
        print(
            f"interrupted at epoch {st.epoch + 1}, step {st.step}: checkpoint saved to "
            f"{ckpt}; continue with: fastsoftmax train --resume {ckpt}",
            file=sys.stderr,
        )
        return 130
    acc = model.score(x_test, y_test)
    if args.save:
        save_model(args.save, model, metadata=meta)
        print(f"model saved to {args.save}")
    if args.plots:
        paths = plots.write_training_plots(
            args.plots, history, model.coef_, model.classes_, y_test, model.predict(x_test)
        )
        print("plots: " + ", ".join(str(p) for p in paths))
    # last, so that it is the line a log's tail shows
    rate = run["rows"] / run["seconds"] if run["seconds"] > 0 else 0.0
    print(
        f"done: {run['epochs']} epochs, {run['rows']:,} samples in {run['seconds']:.3f} s "
        f"of training ({rate:,.0f} samples/s), {wall:.3f} s with the per-epoch testing; "
        f"final test accuracy: {100 * acc:.2f}% ({len(x_test)} images)"
    )
    return 0


# the train options a checkpoint fixes -> the model's hyperparameter
_RESUME_FIXED = {
    "lr": "learning_rate",
    "batch_size": "batch_size",
    "weight_decay": "weight_decay",
    "momentum": "momentum",
    "seed": "random_state",
    "lr_schedule": "lr_schedule",
    "power_t": "power_t",
    "average": "average",
    "tol": "tol",
    "n_iter_no_change": "n_iter_no_change",
    "early_stopping": "early_stopping",
    "validation_fraction": "validation_fraction",
    "class_weight": "class_weight",
}


def _check_resume_options(args: argparse.Namespace, model, meta: dict) -> None:
    """ValueError naming the first option typed with --resume that differs from the
    checkpoint: the continued run keeps the checkpoint's hyperparameters and training set
    (so that it equals an uninterrupted run), and must not look as if it used another."""
    params = model.get_params()
    fixed = {opt: params[name] for opt, name in _RESUME_FIXED.items()}
    if "train_size" in meta:  # written since the train size was recorded
        fixed["train_size"] = meta["train_size"]
    for opt, value in fixed.items():
        typed = getattr(args, opt)
        if opt in args.given and typed != value:
            flag = "--" + opt.replace("_", "-")
            raise ValueError(
                f"{flag} {typed} conflicts with --resume {args.resume}, which was trained "
                f"with {flag} {value}: a resumed run keeps the checkpoint's settings; leave "
                f"out {flag}, or start a new run without --resume"
            )


def _check_resume_epochs(path: str, model, epochs: int) -> None:
    """ValueError when the checkpoint is already past `epochs`: otherwise the run would
    do nothing and report the checkpoint as if it were trained for `epochs`."""
    state = model.training_state_
    needed = state.epoch + (1 if state.order is not None else 0)  # finish a stopped epoch
    if epochs < needed:
        part = f" and part of epoch {state.epoch + 1}" if state.order is not None else ""
        raise ValueError(
            f"--epochs {epochs}: --resume {path} has trained {state.epoch} epochs{part}; "
            f"pass --epochs {needed} or more"
        )


def _trainer_kernel(num_classes: int = 10, batch_size: int = 64):
    """The trainer's compiled kernel for this many classes and this batch size on this
    process's pool (the Numba dispatcher whose cache tells a first run)."""
    from ._numba.step import step_kernel
    from ._threads import pool_size

    return step_kernel(num_classes, pool_size(), batch_size)


def _say_if_compiling(num_classes: int, batch_size: int) -> None:
    """One line on stderr when the trainer's kernel is not in Numba's cache yet."""
    from ._numba._cache import compiled_for_this_cpu

    if compiled_for_this_cpu(_trainer_kernel(num_classes, batch_size)) is False:
        print(
            "compiling kernels for this CPU, first run only (`fastsoftmax warmup` does it "
            "ahead of time)",
            file=sys.stderr,
            flush=True,
        )


def warmup(args: argparse.Namespace) -> int:
    from .warmup import warm_up

    def progress(name: str, seconds: float) -> None:
        if not args.quiet:
            print(f"  {name:50s} {seconds:6.2f} s", flush=True)

    import numba

    where = numba.config.CACHE_DIR or "__pycache__ beside the installed sources"
    print(f"compiling the kernels for this CPU into Numba's cache ({where})", flush=True)
    total = warm_up(progress, train=not args.no_train)
    print(f"done in {total:.1f} s")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from .estimator import ModelFileError, encode_labels, load_model

    model, meta = load_model(args.model)
    x, y = data.load(
        args.dataset,
        args.split,
        data_dir=args.data_dir,
        download=not args.no_download,
        source=args.source,
    )
    if x.shape[1] != model.n_features_in_:
        raise ModelFileError(
            f"{args.model}: the model takes {model.n_features_in_} features per image, "
            f"{args.dataset} images have {x.shape[1]}"
        )
    trained_on = meta.get("dataset")
    if trained_on and trained_on != args.dataset:
        print(f"note: {args.model} was trained on {trained_on}", file=sys.stderr)
    logp = model.predict_log_proba(x)
    idx = encode_labels(model.classes_, y)  # a label the model does not know: an error
    pred = model.classes_[np.argmax(logp, axis=1)]
    loss = -np.mean(logp[np.arange(len(idx)), idx])
    print(
        f"{args.dataset} {args.split}: {len(y)} images, accuracy {100 * np.mean(pred == y):.2f}%,"
        f" mean cross-entropy {float(loss):.4f}"
    )
    for c in model.classes_:
        sel = y == c
        if sel.any():
            print(f"  class {c}: {100 * np.mean(pred[sel] == c):6.2f}% of {int(sel.sum())}")
    return 0


def predict(args: argparse.Namespace) -> int:
    from .estimator import ModelFileError, load_model

    model, _ = load_model(args.model)
    blocks, names = [], []  # each file read once; one name per image
    for path in args.images:
        images = data.read_images([path])
        blocks.append(images)
        names += [f"{path}[{i}]" for i in range(len(images))] if _is_idx(path) else [path]
    x = np.concatenate(blocks)
    if x.shape[1] != model.n_features_in_:
        raise ModelFileError(
            f"{args.model}: the model takes {model.n_features_in_} features per image, "
            f"the images have {x.shape[1]}"
        )
    proba = model.predict_proba(x)
    labels = model.classes_[np.argmax(proba, axis=1)]
    for name, label, p in zip(names, labels, proba.max(axis=1), strict=True):
        print(f"{name}\t{label}\t{p:.4f}")
    return 0


def _need_torchvision() -> None:
    """ImportError with the install line when torchvision (an optional extra) is missing."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        raise ImportError(
            "--source torchvision needs torchvision, which is not installed: "
            "pip install 'fastsoftmax[torchvision]' (or pip install torchvision), "
            "or use --source idx"
        )


def _is_idx(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(4)
    return head[:2] == b"\x1f\x8b" or (head[:2] == b"\x00\x00" and len(head) == 4)


# ------------------------------------------------------------------------------ bench
def _shape(text: str) -> tuple[int, int]:
    try:
        n, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NxC (e.g. 512x10), got {text!r}") from None
    if n < 1 or c < 1:
        raise argparse.ArgumentTypeError(f"N and C must be >= 1, got {text!r}")
    return n, c


def bench(args: argparse.Namespace) -> int:
    from . import bench_report, benchmarks

    if args.compare:  # the old name of --diff, kept working
        if args.diff:
            raise ValueError("--compare is the old name of --diff: give --diff alone")
        print("fastsoftmax: bench --compare is deprecated; use bench --diff", file=sys.stderr)
        args.diff = args.compare
    if args.diff:
        a_path, b_path = args.diff
        a_doc, b_doc = bench_report.load_json(a_path), bench_report.load_json(b_path)
        print(f"A = {a_path}\nB = {b_path}")
        left_out = bench_report.diff_runs(a_doc, b_doc)
        if left_out:
            print(f"{left_out} benchmark(s) in only one of the files left out")
        return 0
    started = time.perf_counter()
    try:
        doc = benchmarks.run(
            full=args.full,
            threads=args.threads,
            impls=args.impl,
            ops=args.op,
            train=not args.no_train,
            shapes=args.shape,
            json_path=args.json,
        )
    except RuntimeError as err:  # a case failed: pytest's report is above
        print(f"fastsoftmax: error: {err}", file=sys.stderr)
        return 1
    print(bench_report.format_table(doc))
    print(f"JSON (pytest-benchmark {doc.get('version')}): {args.json}")
    if not args.no_plot:
        png = Path(args.plot) if args.plot else Path(args.json).with_suffix(".png")
        try:
            print(f"plot: {bench_report.plot(doc, png)}")
        except ImportError as err:
            print(f"note: no plot written ({err})", file=sys.stderr)
    print(f"took {time.perf_counter() - started:.1f} s")
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to every option's help, except where the default is None or
    the False of an on/off flag: "(default: None)" says nothing, so those help strings
    say what happens without the option instead."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Options must be spelled in full (``--epoch`` is not taken for ``--epochs``: a typo
    must not set another option), and help shows the defaults.  add_subparsers makes
    its subparsers of the parser's own class, so every subcommand gets both."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _estimator_defaults() -> dict:
    from .estimator import SoftmaxRegression

    return SoftmaxRegression().get_params()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastsoftmax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir", default=None, help="folder with the IDX files (default: "
            "$FASTSOFTMAX_DATA_DIR/<dataset> or ~/.cache/fastsoftmax/<dataset>)",
        )  # fmt: skip
        p.add_argument("--no-download", action="store_true", help="fail instead of downloading")
        p.add_argument(
            "--source", default="idx", choices=data.SOURCES, help="read the IDX files "
            "(idx) or load through torchvision.datasets (pip install 'fastsoftmax[torchvision]')",
        )  # fmt: skip

    p = sub.add_parser(
        "train",
        help="train softmax regression on MNIST",
        description="Minibatch SGD for softmax regression with the fused kernels. Ctrl-C "
        "saves a checkpoint; --resume continues it to the same result as an "
        "uninterrupted run: with the checkpoint's hyperparameters and training set, up "
        "to --epochs when given.",
    )
    p.add_argument("--dataset", default="mnist", choices=data.DATASETS, help="dataset to train on")
    p.add_argument(
        "--backend", default="auto", choices=("auto", "numba", "numpy"), help="training step code"
    )
    # the estimator's defaults: one source of truth for code and command line
    est = _estimator_defaults()
    p.add_argument(
        "--epochs", type=int, default=est["max_epochs"], help="train until this many epochs"
    )
    p.add_argument("--batch-size", type=int, default=est["batch_size"], help="images per SGD step")
    p.add_argument("--lr", type=float, default=est["learning_rate"], help="initial learning rate")
    p.add_argument(
        "--lr-schedule", default=est["lr_schedule"], choices=LR_SCHEDULES,
        help="how the rate changes: linear/cosine decay to 0 over --epochs, "
        "invscaling lr/(1+epochs done)^power_t, or constant",
    )  # fmt: skip
    p.add_argument(
        "--power-t", type=float, default=est["power_t"], help="the exponent of invscaling"
    )
    p.add_argument(
        "--weight-decay", type=float, default=est["weight_decay"], help="L2 coefficient lambda"
    )
    p.add_argument("--momentum", type=float, default=est["momentum"], help="heavy-ball momentum")
    p.add_argument(
        "--average", type=int, default=int(est["average"]), metavar="N",
        help="averaged SGD: the model is the mean of the iterates after N samples "
        "(1: from the start; 0: off)",
    )  # fmt: skip
    p.add_argument(
        "--tol", type=float, default=est["tol"],
        help="stop when --n-iter-no-change epochs in a row improve the training loss "
        "(or the validation accuracy) by less than this (default: off)",
    )  # fmt: skip
    p.add_argument(
        "--n-iter-no-change", type=int, default=est["n_iter_no_change"],
        help="epochs without improvement that stop training (with --tol)",
    )  # fmt: skip
    p.add_argument(
        "--early-stopping", action="store_true",
        help="score --tol on a held-out part of the training set (default: training loss)",
    )  # fmt: skip
    p.add_argument(
        "--validation-fraction", type=float, default=est["validation_fraction"],
        help="the held-out part for --early-stopping",
    )  # fmt: skip
    p.add_argument(
        "--class-weight", default=None, choices=("balanced",),
        help="weigh each class by n / (C * its count) (default: all 1)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffling")
    p.add_argument(
        "--train-size", type=int, default=0, help="use the first N training images, 0 for all"
    )
    p.add_argument(
        "--save",
        default=None,
        metavar="MODEL.npz",
        help="write the model here (default: not saved)",
    )
    p.add_argument(
        "--plots", default=None, metavar="DIR", help="write PNG plots here (default: none)"
    )
    p.add_argument(
        "--checkpoint", default=None, help="where Ctrl-C saves the checkpoint (default: "
        "MODEL.checkpoint.npz beside --save, else ./fastsoftmax-checkpoint.npz)",
    )  # fmt: skip
    p.add_argument(
        "--resume", default=None, metavar="CHECKPOINT", help="continue the run saved here"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    data_args(p)
    p.set_defaults(func=train)

    p = sub.add_parser(
        "warmup",
        help="compile the kernels into Numba's cache ahead of the first run",
        description="Compile (or load from Numba's cache) the kernels most programs use, "
        "so that a first run does not pay for it: e.g. at a container image's build. "
        "The cache is kept for the same installed files on the same kind of CPU.",
    )
    p.add_argument("--no-train", action="store_true", help="skip the trainer's kernels")
    p.add_argument("--quiet", action="store_true", help="no line per kernel")
    p.set_defaults(func=warmup)

    p = sub.add_parser("evaluate", help="accuracy of a saved model on a dataset split")
    p.add_argument("model", help="a model file written by train --save")
    p.add_argument("--dataset", default="mnist", choices=data.DATASETS, help="dataset to score")
    p.add_argument("--split", default="test", choices=data.SPLITS, help="split to score")
    data_args(p)
    p.set_defaults(func=evaluate)

    p = sub.add_parser("predict", help="classify images with a saved model")
    p.add_argument("model", help="a model file written by train --save")
    p.add_argument("images", nargs="+", help="IDX image files and/or 28x28 PNG files")
    p.set_defaults(func=predict)
    p = sub.add_parser(
        "compare",
        help="parity and speed of every backend on MNIST logits",
        description="Parity (max abs difference from the NumPy reference) and speed of "
        "every available implementation on logits from the real MNIST test set.",
    )
    data_args(p)
    p.add_argument(
        "--dtype", default="float32", choices=("float32", "float64"), help="dtype of the logits"
    )
    p.add_argument(
        "--rows", type=int, default=0, help="repeat the 10k rows up to this count, 0 for no repeat"
    )
    p.add_argument("--repeat", type=int, default=20, help="timed runs per cell (best is kept)")
    p.set_defaults(func=compare)

    from .bench_cases import BENCH_OPS
    from .implementations import IMPLEMENTATIONS

    p = sub.add_parser(
        "bench",
        help="time every implementation; table, JSON and plot",
        description="Time every available implementation on the benchmark cases (a quick "
        "subset unless --full) and the trainer on MNIST-shaped data.  Prints median times, "
        "speedup = reference (numpy) time / implementation time and the fraction of the copy "
        "bandwidth measured in the same run; writes pytest-benchmark JSON and a PNG plot.  "
        "--diff A.json B.json shows the change between two runs.",
    )
    p.add_argument("--full", action="store_true", help="every shape and dtype (minutes)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument(
        "--json", default="fastsoftmax-bench.json", metavar="PATH", help="where the results go"
    )
    p.add_argument(
        "--plot", default=None, metavar="PATH", help="PNG plot (default: the JSON's path with .png)"
    )
    p.add_argument("--no-plot", action="store_true", help="write no plot")
    p.add_argument(
        "--impl",
        action="append",
        default=None,
        metavar="NAME",
        choices=[i.name for i in IMPLEMENTATIONS],
        help="only this implementation (repeatable; default: every available one)",
    )
    p.add_argument(
        "--op",
        action="append",
        default=None,
        choices=BENCH_OPS,
        help="only this op (repeatable; default: every op)",
    )
    p.add_argument(
        "--shape",
        action="append",
        default=None,
        type=_shape,
        metavar="NxC",
        help="only this shape, e.g. 512x10 (repeatable; default: the quick or --full shapes)",
    )
    p.add_argument("--no-train", action="store_true", help="skip the trainer's cases")
    p.add_argument(
        "--diff",
        nargs=2,
        default=None,
        metavar=("A.json", "B.json"),
        help="show the change from run A to run B (pytest-benchmark JSON of this command or "
        "of the bench/ suites), then exit",
    )
    # the old name of --diff (`fastsoftmax compare` is the parity and speed command)
    p.add_argument("--compare", nargs=2, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # the options typed on the command line, by dest: a resumed run checks them against
    # the checkpoint.  Options are spelled in full (allow_abbrev=False), so `--name` and
    # `--name=value` are the only forms; "--" ends the options.
    options = argv[: argv.index("--")] if "--" in argv else argv
    args.given = {a[2:].split("=", 1)[0].replace("-", "_") for a in options if a.startswith("--")}
    try:
        if getattr(args, "source", "idx") == "torchvision":
            _need_torchvision()  # fail now, before a model is read or anything trained
        return args.func(args)
    except BrokenPipeError:  # e.g. `fastsoftmax predict ... | head`
        sys.stderr.close()
        return 141
    except (
        ValueError,  # IDXFormatError, ModelFileError and bad options among them
        OSError,  # DatasetNotFoundError, missing or unreadable files
        ImportError,  # an optional extra that is not installed
    ) as err:
        print(f"fastsoftmax: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
