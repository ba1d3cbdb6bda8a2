"""fastsoftmax.torch in PyTorch programs, against PyTorch's own loss.

* Loss + backward: ``ft.cross_entropy(x, y).backward()`` against ``F.cross_entropy``
  at 4096 x 32000 and 60000 x 10 float32, x a leaf that requires grad (its .grad
  cleared before each call).  Napkin math for ours: read the logits once, write the
  gradient once (it becomes x.grad as it is), 2 x 524 MB at 4096 x 32000; PyTorch's
  writes log_softmax, reads it back, and writes and reads two N x C gradients.
  Target: >= 3x PyTorch's at 4096 x 32000.
* A training step of nn.Linear(784, 10) with optim.SGD on MNIST-shaped float32 batches
  (batch 64 and 512), our loss against F.cross_entropy: STEPS steps per round, and an
  "interleaved" case that alternates the two (per round, each in turn, order rotated,
  a pause, one warm step, K timed steps) and reports the median per-round ratio of our
  step time to PyTorch's (extra_info["ratio_numba_to_torch"]: the CPU kernels are the
  Numba backend's).  Target: <= 1, no slower than PyTorch's own step.
* A language-model head step, N x H x V = 4096 x 1024 x 32000 float32: loss of
  ``hidden @ weight.T`` and the backward to hidden and weight.  ``fused``:
  ``ft.linear_cross_entropy`` (chunks of 256 rows, 1/16 of the logits); ``unfused``:
  PyTorch's ``F.cross_entropy(F.linear(hidden, weight), y)``; ``fastsoftmax-logits``:
  ``ft.cross_entropy(F.linear(...))`` (the fused loss on full logits);
  ``torch-chunked``: PyTorch 2.13's ``F.linear_cross_entropy`` with
  ``LinearCrossEntropyOptions(batch_chunk_size=256)``.  Peak extra memory: the
  resident-set high-water mark above the start of a step, less the gradients it
  leaves (hidden.grad, weight.grad).  Target: fused <= 10% of N x V x 4 bytes (52 MB).
  Three GEMMs of 2 N H V = 268 GFLOP each: seconds per step on two cores.

Under --benchmark-disable (CI) each case runs once, the LM head at 512 x 256 x 32000.
"""

from __future__ import annotations

import statistics

import pytest
from conftest import benchmark_interleaved, lm_head_info, record, timing

from fastsoftmax import bench_cases, machine

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import fastsoftmax.torch as ft  # noqa: E402

LOSS_SHAPES = [(4096, 32000), (60000, 10)]
D, C, LR = 784, 10, 0.1
BATCHES = (64, 512)
STEPS = 20  # steps per timed round of the training step
MIN_ROUNDS, MAX_ROUNDS, BUDGET_S = 5, 15, 6.0  # interleaved rounds
# 300 steps per round: the first tens of steps after the pause run several times slower
# (this VM wakes its vCPUs slowly) and with 20 per round they dominated the figure
K_INTERLEAVED, PAUSE_S = 300, 0.1
LM_SHAPE, LM_SMALL = (4096, 1024, 32000), (512, 256, 32000)
LM_CHUNK = 256
LM_IMPLS = ("fused", "unfused", "fastsoftmax-logits", "torch-chunked")
LOSSES = {"fastsoftmax": ft.cross_entropy, "torch": F.cross_entropy}
_losses: dict[tuple, dict[str, float]] = {}


# ------------------------------------------------------------------ loss + backward
@pytest.mark.parametrize("impl", list(LOSSES))
@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_loss_backward(benchmark, shape, impl, copy_bandwidth):
    n, c = shape
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(n, c, generator=g) * 4).requires_grad_()
    y = torch.randint(0, c, (n,), generator=g)
    loss_fn = LOSSES[impl]

    def call():
        x.grad = None  # the previous round's gradient is freed first
        loss = loss_fn(x, y)
        loss.backward()
        return loss.item()

    benchmark.group = f"torch: loss + backward, {n} x {c} float32"
    big = n * c > 10**7
    loss = benchmark.pedantic(call, rounds=3 if big else 20, warmup_rounds=1)
    record(benchmark.group, impl, benchmark, 2 * n * c * 4, copy_bandwidth, rows=n)
    seen = _losses.setdefault(shape, {})
    seen[impl] = loss
    if len(seen) == 2:
        assert abs(seen["fastsoftmax"] - seen["torch"]) <= 1e-5 * abs(seen["torch"])


# ------------------------------------------------------------------ MNIST training step
@pytest.fixture(scope="module")
def mnist_shaped(request):
    n = bench_cases.TRAIN_N if timing(request) else 8192
    _, x, y = bench_cases.mnist_shaped(n, D, C)
    return torch.from_numpy(x), torch.from_numpy(y)


def make_step(impl: str, x, y, batch: int):
    """One SGD step of nn.Linear(784, 10) with `impl`'s loss per call, on the next
    minibatch (cycling through the data)."""
    loss_fn = LOSSES[impl]
    torch.manual_seed(0)
    model = torch.nn.Linear(D, C)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    n_batches = len(x) // batch
    at = [0]

    def step():
        i = at[0]
        at[0] = (i + 1) % n_batches
        xb, yb = x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xb), yb).backward()
        opt.step()

    return step


@pytest.mark.parametrize("impl", list(LOSSES))
@pytest.mark.parametrize("batch", BATCHES)
def test_mnist_training_step(benchmark, batch, impl, mnist_shaped, request):
    x, y = mnist_shaped
    step = make_step(impl, x, y, batch)
    steps = STEPS if timing(request) else 2

    def steps_round():
        for _ in range(steps):
            step()

    benchmark.group = f"torch: nn.Linear({D}, {C}) + loss + SGD step, batch {batch}"
    steps_round()  # warm
    benchmark(steps_round)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    extra = {"steps_per_round": steps}
    if stats is not None:
        extra["seconds_per_step"] = stats.median / steps
    record(benchmark.group, impl, benchmark, None, None, rows=steps * batch, extra=extra)


@pytest.mark.parametrize("batch", BATCHES)
def test_mnist_training_step_interleaved(benchmark, batch, mnist_shaped, request):
    x, y = mnist_shaped
    impls = list(LOSSES)
    steps = {impl: make_step(impl, x, y, batch) for impl in impls}
    benchmark.group = f"torch: nn.Linear({D}, {C}) step, batch {batch}, interleaved rounds"
    per_step, extra = benchmark_interleaved(
        benchmark, request, steps, k=K_INTERLEAVED, pause_s=PAUSE_S,
        rounds=(MIN_ROUNDS, MAX_ROUNDS), budget_s=BUDGET_S,
    )  # fmt: skip
    ratios = [a / b for a, b in zip(per_step["fastsoftmax"], per_step["torch"], strict=True)]
    extra["ratio_numba_to_torch"] = statistics.median(ratios)
    benchmark.extra_info.update(extra)
    record(benchmark.group, "interleaved", benchmark, None, None, extra=extra)


# ------------------------------------------------------------------ LM head
@pytest.fixture(scope="module")
def lm_inputs(request):
    n, h, v = LM_SHAPE if timing(request) else LM_SMALL
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=g).requires_grad_()
    weight = (torch.randn(v, h, generator=g) / h**0.5).requires_grad_()
    target = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, target


def _lm_loss(impl: str):
    if impl == "fused":
        return lambda h, w, y: ft.linear_cross_entropy(h, w, y, chunk_size=LM_CHUNK)
    if impl == "unfused":
        return lambda h, w, y: F.cross_entropy(F.linear(h, w), y)
    if impl == "fastsoftmax-logits":
        return lambda h, w, y: ft.cross_entropy(F.linear(h, w), y)
    if not hasattr(F, "linear_cross_entropy"):
        pytest.skip("this PyTorch has no F.linear_cross_entropy")
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=LM_CHUNK)
    return lambda h, w, y: F.linear_cross_entropy(h, w, y, options=options)


@pytest.mark.parametrize("impl", LM_IMPLS)
def test_lm_head_step(benchmark, impl, lm_inputs):
    hidden, weight, target = lm_inputs
    n, h = hidden.shape
    v = weight.shape[0]
    loss_fn = _lm_loss(impl)
    peaks: list[int] = []
    losses: list[float] = []

    def clear():
        hidden.grad = weight.grad = None

    def step():
        clear()  # the previous round's gradients go before this one is measured
        with machine.peak_memory() as mem:
            loss = loss_fn(hidden, weight, target)
            loss.backward()
        peaks.append(mem["rss"] if mem["rss"] is not None else 0)
        losses.append(loss.item())

    benchmark.group = f"torch: LM head step (linear + loss + backward), {n} x {h} x {v} float32"
    step()  # warm: BLAS buffers, the allocator's first pages (not counted)
    peaks.clear()
    benchmark.pedantic(step, rounds=3)
    extra_bytes = max(peaks) - (hidden.grad.nbytes + weight.grad.nbytes)
    measure = "RSS high-water mark above the step's start, less the gradients"
    info = lm_head_info(benchmark, n, h, v, extra_bytes, measure)
    info["loss"] = losses[-1]
    benchmark.extra_info.update(info)
    record(benchmark.group, impl, benchmark, None, None, extra=info)
    clear()
    ref = F.cross_entropy(F.linear(hidden[:256], weight), target[:256]).item()
    got = loss_fn(hidden[:256], weight, target[:256]).item()
    assert abs(got - ref) <= 1e-4 * abs(ref)
