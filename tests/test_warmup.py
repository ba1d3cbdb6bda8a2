"""Cold start: telling whether Numba's cache holds a kernel, the CLI's one line while
it compiles, and `fastsoftmax warmup`.

Oracles: Numba's own list of compiled specialisations (a kernel called once is in the
cache it writes); the CLI's stderr; the kernels each warm-up call must have compiled.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from fastsoftmax import cli, warmup
from fastsoftmax._numba import _cache
from fastsoftmax._numba import kernels as k


def test_a_called_kernel_is_in_the_cache_for_this_cpu():
    z = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    out = np.empty_like(z)
    k.softmax_serial(z, out)
    assert _cache.compiled_for_this_cpu(k.softmax_serial) is True


def test_the_cli_asks_about_a_cached_kernel():
    """The dispatcher the CLI checks has an on-disk cache, so its answer is True or
    False, never the None of "cannot tell" (which would keep the line silent)."""
    assert _cache.compiled_for_this_cpu(cli._trainer_kernel()) in (True, False)


def test_cache_state_of_something_else_is_unknown():
    assert _cache.compiled_for_this_cpu(object()) is None


@pytest.mark.parametrize(("cached", "says"), [(False, True), (True, False), (None, False)])
def test_cli_says_it_compiles_only_on_a_cold_cache(monkeypatch, capsys, cached, says):
    monkeypatch.setattr(_cache, "compiled_for_this_cpu", lambda dispatcher: cached)
    cli._say_if_compiling(10, 64)
    err = capsys.readouterr().err
    assert ("compiling kernels for this CPU, first run only" in err) is says


def test_warm_up_compiles_each_op_serial_and_parallel(monkeypatch):
    """One dtype and shape: every op's serial and parallel kernel then has a compiled
    specialisation, and progress heard of each."""
    monkeypatch.setattr(warmup, "SHAPES", {"serial": ((64, 10),), "parallel": ((2048, 10),)})
    monkeypatch.setattr(warmup, "DTYPES", (np.float32,))
    heard = []
    warmup.warm_up(lambda name, seconds: heard.append(name), train=False)
    assert len(heard) == 11  # 5 calls x serial, parallel; the torch minibatch call (serial)
    assert {h.split()[-1] for h in heard} == {"serial", "parallel"}
    kernels = (k.xent_index_serial, k.xent_index, k.softmax_serial, k.softmax)
    for fn in (*kernels, k.xent_index_minibatch_f32_at):
        assert fn.overloads, fn
    # with and without label smoothing (eps None): two specialisations of the fused op
    for fn in (k.xent_index_serial, k.xent_index):
        assert len({sig[5] for sig in fn.overloads}) >= 2, fn.overloads.keys()


def test_cli_has_the_warmup_command():
    args = cli.build_parser().parse_args(["warmup", "--no-train", "--quiet"])
    assert args.func is cli.warmup and args.no_train and args.quiet


@pytest.mark.parametrize("batch", [64, 128])
def test_the_trainers_warm_up_compiles_the_kernel_the_epochs_run(batch):
    """train.loop.warm_up (which the CLI runs before its first epoch) runs no step, yet
    compiles the step kernel that the epochs will run (which depends on the batch size),
    so that the first epoch's time holds no compilation.  In a fresh process: this one
    may have compiled it already."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from fastsoftmax._numba import step\n"
        "from fastsoftmax._threads import pool_size\n"
        "from fastsoftmax.train import loop\n"
        "X = np.zeros((100, 784), np.uint8)\n"
        f"loop.warm_up(X, 'numba', batch_size={batch})\n"
        f"kernel = step.step_kernel(10, pool_size(), {batch})\n"
        "print(len(kernel.overloads))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True
    )
    assert int(out.stdout.split()[-1]) >= 1, out.stderr
