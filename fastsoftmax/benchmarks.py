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

from collections.abc import Callable
from dataclasses import dataclass

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
