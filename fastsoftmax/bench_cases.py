"""What ``fastsoftmax bench`` and the pytest-benchmark suites in ``bench/`` time, and
the napkin math of it.

A case is an op (or a training run) at a shape and dtype, run by one implementation of
``fastsoftmax.implementations``.  Its ``bytes_moved`` is a stated pass-count model:

* softmax, log_softmax: read the input once, write the output once (2 passes of N x C);
* cross_entropy (forward): read the logits once (1 pass) and the N targets;
* cross_entropy_with_grad (fused): read the logits once, write dlogits once (2 passes)
  and read the targets;
* training: read X once per epoch (n x d x itemsize); FLOPs = 2 matmuls of 2 n d C.

`rates` turns a median time into samples/s, GB/s and the fraction of the machine's copy
bandwidth measured in the same run (``fastsoftmax.machine.copy_bandwidth``: read +
write bytes per second of a parallel copy).  Also here: the MNIST-shaped training data
(`mnist_shaped`), PyTorch's SGD loop as the trainer's peer (`torch_sgd_epochs`) and
what a GPU row must wait for before the clock stops (`synchronizer`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .implementations import OPS

if TYPE_CHECKING:
    import torch

# The ops the benchmarks time: those of the implementations table but logsumexp (a
# softmax without its second pass, which the table's parity tests cover).
BENCH_OPS = tuple(op for op in OPS if op != "logsumexp")
# (N, C): MNIST's batch and epoch, a 1000-class head, two LM vocabularies
SHAPES = ((60000, 10), (512, 10), (8192, 1000), (4096, 32000), (1024, 128256))
QUICK_SHAPES = ((512, 10), (60000, 10), (8192, 1000))
DTYPES = ("float32", "float64")
# Above this N x C the reference is left out (quick) or timed 3 rounds (--full), and so
# are the PyTorch and JAX peers: seconds per call
SLOW_ELEMENTS = 10**7
# Each op's bytes-moved model: its passes over N x C, and in words (in every result)
PASSES = {"softmax": 2, "log_softmax": 2, "cross_entropy": 1, "cross_entropy_with_grad": 2}
BYTES_MODEL = {
    "softmax": "read N x C once, write N x C once (2 passes)",
    "log_softmax": "read N x C once, write N x C once (2 passes)",
    "cross_entropy": "read N x C once (1 pass) + N int64 targets",
    "cross_entropy_with_grad": "read N x C once, write dlogits once (2 passes) + N int64 targets",
}

# The trainer's cases: MNIST-shaped rows (the real training set is downloaded by users;
# the benchmark's numbers do not depend on pixel values)
TRAIN_N, TRAIN_D, TRAIN_C = 60000, 784, 10
TRAIN_BATCH = 128
QUICK_TRAIN_N = 20000  # the rows of a quick run's trainer cases
# (result name, backend, X dtype) of the trainer's cases
TRAIN_CASES = (("numpy", "numpy", "float32"), ("numba", "numba", "float32"),
               ("numba-uint8", "numba", "uint8"), ("torch", "torch", "float32"))  # fmt: skip
TRAIN_MODELS = {
    "bytes_model": "X read once per epoch (n x d x itemsize)",
    "flop_model": "2 matmuls per epoch, 2 n d C each",
}


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


def op_cases(
    full: bool = True, ops: Iterable[str] = BENCH_OPS, dtypes: Iterable[str] = DTYPES
) -> list[OpCase]:
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


def mnist_shaped(
    n: int = TRAIN_N, d: int = TRAIN_D, c: int = TRAIN_C, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixels uint8 (n, d), x float32 = pixels / 255, y int64 (n,)): labels from a fixed
    random linear teacher, so the problem is learnable like MNIST."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, d), dtype=np.uint8)
    x = pixels.astype(np.float32) / 255
    teacher = rng.standard_normal((d, c)).astype(np.float32)
    noise = rng.standard_normal((n, c)).astype(np.float32)
    y = np.argmax(x @ teacher + noise, axis=1).astype(np.int64)
    return pixels, x, y


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


def torch_sgd_epochs(
    x: np.ndarray, y: np.ndarray, epochs: int, batch: int, lr: float = 0.1, seed: int = 0
) -> torch.nn.Linear:
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


def rates(
    seconds: float,
    bytes_moved: float | None = None,
    rows: float | None = None,
    copy_bw: float | None = None,
) -> dict[str, float]:
    """The napkin figures of a median time: samples/s (of `rows`), GB/s (of a
    `bytes_moved` model) and that as a fraction of the copy bandwidth `copy_bw` (B/s)."""
    out = {"seconds": seconds}
    if rows:
        out["samples_per_s"] = rows / seconds
    if bytes_moved:
        out["bytes_moved"] = bytes_moved
        out["GB/s"] = bytes_moved / seconds / 1e9
        if copy_bw:
            out["copy_GB/s"] = copy_bw / 1e9
            out["fraction_of_copy_bandwidth"] = bytes_moved / seconds / copy_bw
    return out
