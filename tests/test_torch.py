"""fastsoftmax.torch against PyTorch: losses and gradients of cross_entropy and
linear_cross_entropy equal F.cross_entropy's (and F.linear_cross_entropy's) over the
options and dtypes, gradcheck in float64, the custom ops' registration (opcheck), a
torch.compile(fullgraph=True) model, the zero-copy hand-over to the kernels, threads,
and errors that name the argument.  CUDA cases skip without a GPU."""

from __future__ import annotations

import functools
import itertools
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import fastsoftmax  # noqa: E402
import fastsoftmax.torch as ft  # noqa: E402
from fastsoftmax import _api  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
try:
    import cupy

    HAS_CUPY = True
except ImportError:
    HAS_CUPY = False
cuda = pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# (rtol, atol in units of the largest entry) against a float64 oracle
TOL = {
    torch.float64: (1e-12, 1e-14),
    torch.float32: (2e-5, 2e-6),
    torch.bfloat16: (1e-2, 1e-2),
    torch.float16: (2e-3, 2e-3),
}


@pytest.fixture(params=["function", "custom_op"])
def path(request, monkeypatch):
    """Eager calls through the autograd.Function, or through the custom ops."""
    monkeypatch.setattr(ft, "EAGER_FUNCTION", request.param == "function")
    return request.param


def close(got, want, dtype, what=""):
    rtol, atol = TOL[dtype]
    got, want = got.detach(), want.detach().double()
    scale = float(want.abs().max()) if want.numel() else 1.0
    torch.testing.assert_close(
        got.double(), want, rtol=rtol, atol=atol * max(scale, 1e-30), msg=lambda m: f"{what}: {m}"
    )


def run(fn, x, upstream, **kw):
    """(loss, x.grad) of fn(x, **kw), backpropagating `upstream` (None: .backward())."""
    x = x.detach().clone().requires_grad_()
    loss = fn(x, **kw)
    if upstream is None:
        (loss if loss.dim() == 0 else loss.sum()).backward()
    else:
        (loss * upstream.to(loss.dtype)).sum().backward()
    return loss.detach(), x.grad


def logits(n, c, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=torch.float64) * 3
    x[0, 0] += 30.0  # a confident row
    return x.to(dtype)


# --------------------------------------------------------------------------------------
# parity with F.cross_entropy
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_class_indices_match_pytorch(path, reduction, dtype):
    n, c = 37, 11
    x = logits(n, c, dtype)
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, c, (n,), generator=g)
    w = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    up = torch.rand(() if reduction != "none" else (n,), generator=g, dtype=torch.float64) + 0.5
    for ignore, eps, weighted, upstream in itertools.product(
        (-100, 3), (0.0, 0.2), (False, True), (None, up)
    ):
        kw = {"reduction": reduction, "ignore_index": ignore, "label_smoothing": eps}
        what = f"{path} {dtype} {kw} weighted={weighted} upstream={upstream is not None}"
        wt = w.to(dtype) if weighted else None
        loss, grad = run(lambda x, **k: ft.cross_entropy(x, y, **k), x, upstream, weight=wt, **kw)
        # the oracle: PyTorch in float64 on the same (rounded) inputs
        wt = None if wt is None else wt.double()
        ref = run(lambda x, **k: F.cross_entropy(x, y, **k), x.double(), upstream, weight=wt, **kw)
        ref_loss, ref_grad = ref
        assert loss.dtype == dtype and grad.dtype == dtype, what
        assert loss.shape == ref_loss.shape and grad.shape == x.shape, what
        close(loss, ref_loss, dtype, f"{what} loss")
        close(grad, ref_grad, dtype, f"{what} grad")


def test_all_ignored_mean_is_zero(path):
    x = logits(6, 4, torch.float32).requires_grad_()
    y = torch.full((6,), -100)
    loss = ft.cross_entropy(x, y)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(x.grad) == 0
    assert torch.isnan(F.cross_entropy(x.detach(), y))  # PyTorch's NaN: the documented difference


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_probability_targets_match_pytorch(path, dtype):
    n, c = 29, 9
    x = logits(n, c, dtype)
    g = torch.Generator().manual_seed(2)
    p = torch.softmax(torch.randn(n, c, generator=g, dtype=torch.float64), -1).to(dtype)
    p[3] = 0
    p[3, 2] = 1  # a one-hot row
    w = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    for reduction, eps, weighted in itertools.product(("mean", "sum", "none"), (0.0, 0.1), (0, 1)):
        kw = {"reduction": reduction, "label_smoothing": eps, "weight": w if weighted else None}
        loss, grad = run(lambda x, **k: ft.cross_entropy(x, p, **k), x, None, **kw)
        kw["weight"] = w.double() if weighted else None
        ref_loss, ref_grad = run(
            lambda x, **k: F.cross_entropy(x, p.double(), **k), x.double(), None, **kw
        )
        close(loss, ref_loss, dtype, f"{dtype} {reduction} {eps} {weighted} loss")
        close(grad, ref_grad, dtype, f"{dtype} {reduction} {eps} {weighted} grad")


def test_k_dimensional_and_unbatched_inputs(path):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, 3, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (4, 3, 2), generator=g)
    p = torch.softmax(torch.randn(4, 5, 3, 2, generator=g, dtype=torch.float64), 1)
    cases = [(x, y), (x, p), (x[0, :, 0, 0], y[0, 0, 0]), (x[0, :, 0, 0], p[0, :, 0, 0])]
    for (xi, ti), reduction in itertools.product(cases, ("mean", "sum", "none")):
        batch = xi.shape[:1] + xi.shape[2:] if xi.dim() > 1 else ()
        up = torch.rand(batch, generator=g, dtype=torch.float64) if reduction == "none" else None
        a = run(lambda x, ti=ti, **k: ft.cross_entropy(x, ti, **k), xi, up, reduction=reduction)
        b = run(lambda x, ti=ti, **k: F.cross_entropy(x, ti, **k), xi, up, reduction=reduction)
        for got, want in zip(a, b, strict=True):
            assert got.shape == want.shape
            close(got, want, torch.float64, f"{tuple(xi.shape)} {ti.dtype} {reduction}")


def test_non_contiguous_input_gives_the_contiguous_result(path):
    g = torch.Generator().manual_seed(4)
    base = torch.randn(40, 24, generator=g)
    y = torch.randint(0, 12, (40,), generator=g)
    for strided in (base[:, ::2], base[:, :12], base.t()[:12].t()):
        assert not strided.is_contiguous()
        a = run(lambda x: ft.cross_entropy(x, y, label_smoothing=0.1), strided, None)
        b = run(lambda x: ft.cross_entropy(x, y, label_smoothing=0.1), strided.contiguous(), None)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_module_is_a_drop_in_cross_entropy_loss(path):
    w = torch.rand(7) + 0.5
    ours = ft.CrossEntropyLoss(weight=w, label_smoothing=0.05, ignore_index=2)
    theirs = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.05, ignore_index=2)
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x, y = logits(16, 7, torch.float32), torch.randint(0, 7, (16,))
    close(
        run(lambda x: ours(x, y), x, None)[1],
        run(lambda x: theirs(x, y), x, None)[1],
        torch.float32,
    )
    legacy = ft.cross_entropy(x, y, size_average=False)  # the deprecated arguments map as in torch
    close(legacy, F.cross_entropy(x, y, reduction="sum"), torch.float32)
    assert ft.cross_entropy(x, y, None, None, -100, False).shape == (16,)


# --------------------------------------------------------------------------------------
# gradcheck, opcheck, torch.compile
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck(path, reduction):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 4, 2, -100, 1, 4])
    w = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    p = torch.softmax(torch.randn(6, 5, generator=g, dtype=torch.float64), -1)
    opts = {"reduction": reduction, "label_smoothing": 0.1, "weight": w}
    assert torch.autograd.gradcheck(lambda x: ft.cross_entropy(x, y, **opts), (x,))
    assert torch.autograd.gradcheck(lambda x: ft.cross_entropy(x, p, **opts), (x,))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_linear(reduction):
    g = torch.Generator().manual_seed(6)
    kw = {"generator": g, "dtype": torch.float64, "requires_grad": True}
    h, lw, b = torch.randn(7, 4, **kw), torch.randn(6, 4, **kw), torch.randn(6, **kw)
    y = torch.tensor([0, 5, 2, -100, 1, 3, 3])
    opts = {"reduction": reduction, "label_smoothing": 0.1, "chunk_size": 3}
    fn = lambda h, lw, b: ft.linear_cross_entropy(h, lw, y, linear_bias=b, **opts)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h, lw, b))


def test_custom_ops_pass_opcheck():
    from torch.library import opcheck

    ops = torch.ops.fastsoftmax
    g = torch.Generator().manual_seed(7)
    kw = {"generator": g, "dtype": torch.float64}
    x = torch.randn(5, 7, **kw, requires_grad=True)
    y = torch.tensor([0, 6, 2, -100, 1])
    w = torch.rand(7, **kw) + 0.5
    for red in ("mean", "none"):
        opcheck(ops.cross_entropy.default, (x, y, w, red, -100, 0.1))
        opcheck(ops.cross_entropy_fwd.default, (x, y, None, red, -100, 0.0))
    h = torch.randn(6, 4, **kw, requires_grad=True)
    lw = torch.randn(5, 4, **kw, requires_grad=True)
    b = torch.randn(5, **kw, requires_grad=True)
    t = torch.tensor([0, 4, 1, -100, 2, 2])
    opcheck(ops.linear_cross_entropy.default, (h, lw, t, b, None, "none", -100, 0.0, 2))
    fwd_args = (h, lw, t, b, None, "sum", -100, 0.1, 2, True, True, True)
    opcheck(ops.linear_cross_entropy_fwd.default, fwd_args)
    go = torch.rand(6, **kw)
    bwd_args = (h.detach(), lw.detach(), t, b.detach(), None, go, "none", -100, 0.0, 2)
    opcheck(ops.linear_cross_entropy_bwd.default, (*bwd_args, True, True, True))


def _model_step(model, loss_fn, x, y):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, x, y)
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()]


@pytest.mark.parametrize(
    "backend",
    [
        "aot_eager",
        pytest.param(
            "inductor",
            marks=pytest.mark.skipif(
                os.environ.get("FASTSOFTMAX_TEST_INDUCTOR") != "1",
                reason="inductor compiles C++ (~30 s): FASTSOFTMAX_TEST_INDUCTOR=1 runs it",
            ),
        ),
    ],
)
def test_torch_compile_fullgraph_model(backend):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    x, y = torch.randn(64, 20), torch.randint(0, 10, (64,))
    y[:3] = -100

    def ours(m, x, y):
        return ft.cross_entropy(m(x), y, label_smoothing=0.1)

    def theirs(m, x, y):
        return F.cross_entropy(m(x), y, label_smoothing=0.1)

    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(ours, fullgraph=True, backend=counter)
    for _ in range(2):  # the second call reuses the graph
        got = _model_step(model, compiled, x, y)
    want = _model_step(model, theirs, x, y)
    assert counter.frame_count == 1
    torch.testing.assert_close(got[0], want[0])
    for a, b in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    # the linear op: one graph, mean (gradients from the forward) and none (recomputed)
    h = torch.randn(30, 8, requires_grad=True)
    lw = torch.randn(13, 8, requires_grad=True)
    t = torch.randint(0, 13, (30,))
    for red in ("mean", "none"):
        fn = torch.compile(
            lambda h, lw, red=red: ft.linear_cross_entropy(h, lw, t, reduction=red, chunk_size=7),
            fullgraph=True,
            backend="aot_eager",
        )
        got = torch.autograd.grad(fn(h, lw).sum(), (h, lw))
        want = torch.autograd.grad(
            F.cross_entropy(F.linear(h, lw), t, reduction=red).sum(), (h, lw)
        )
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_plain_classifier_call_and_symbolic_options(backend):
    """The plain classifier call (float32 (N, C), int64 targets, no weight or smoothing:
    the eager minibatch path's case) and CrossEntropyLoss's defaults compile with no
    graph break; so does an ignore_index that reaches the loss as a symbolic int
    (dynamic=True: an argument of the compiled function, or a module built in it)."""
    x = torch.randn(8, 5, requires_grad=True)
    y = torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(4))
    y[0] = 3
    plain = [
        (lambda x, y: ft.cross_entropy(x, y), lambda x, y: F.cross_entropy(x, y)),
        (ft.CrossEntropyLoss(reduction="sum"), torch.nn.CrossEntropyLoss(reduction="sum")),
    ]
    for ours, theirs in plain:
        torch._dynamo.reset()
        got = torch.compile(ours, fullgraph=True, backend=backend)(x, y)
        want = theirs(x, y)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(torch.autograd.grad(got, x), torch.autograd.grad(want, x))
    symbolic = [
        lambda x, y, i, ce=ce: ce(x, y, ignore_index=i, label_smoothing=0.1)
        for ce in (ft.cross_entropy, F.cross_entropy)
    ] + [
        lambda x, y, i, m=m: m(ignore_index=i, label_smoothing=0.1)(x, y)
        for m in (ft.CrossEntropyLoss, torch.nn.CrossEntropyLoss)
    ]
    for ours, theirs in (symbolic[:2], symbolic[2:]):
        torch._dynamo.reset()
        got = torch.compile(ours, fullgraph=True, backend=backend, dynamic=True)(x, y, 3)
        torch.testing.assert_close(got, theirs(x, y, 3))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_gives_pytorchs_float32_loss(dtype):
    """Under torch.autocast PyTorch runs its cross-entropy in float32: a float16 or
    bfloat16 input gives a float32 loss (not one rounded to the input's dtype) and a
    gradient in the input's dtype.  The same here, eagerly (the function, with options
    and probability targets, and the module) and in a torch.compile(fullgraph=True)
    graph."""
    x = logits(64, 10, dtype)
    gen = torch.Generator().manual_seed(13)
    y = torch.randint(0, 10, (64,), generator=gen)
    q = torch.softmax(torch.randn(64, 10, generator=gen), -1).to(dtype)
    w = (torch.rand(10, generator=gen) + 0.5).to(dtype)
    cases = [
        (ft.cross_entropy, F.cross_entropy, y, {}),
        (ft.cross_entropy, F.cross_entropy, y, {"weight": w, "label_smoothing": 0.1}),
        (ft.cross_entropy, F.cross_entropy, y, {"reduction": "none"}),
        (ft.cross_entropy, F.cross_entropy, q, {}),
        (ft.CrossEntropyLoss(), torch.nn.CrossEntropyLoss(), y, {}),
        (
            torch.compile(ft.cross_entropy, fullgraph=True, backend="aot_eager"),
            F.cross_entropy,
            y,
            {},
        ),
    ]
    for ours, theirs, target, kw in cases:
        with torch.autocast("cpu", dtype=dtype):
            got = run(ours, x, None, target=target, **kw)
            want = run(theirs, x, None, target=target, **kw)
        assert got[0].dtype == want[0].dtype == torch.float32
        assert got[1].dtype == dtype
        torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
        close(got[1], want[1], dtype, "gradient")


# --------------------------------------------------------------------------------------
# linear_cross_entropy
# --------------------------------------------------------------------------------------
def _linear_inputs(n=23, h=6, v=17, dtype=torch.float64, seed=8):
    g = torch.Generator().manual_seed(seed)
    hid = torch.randn(n, h, generator=g, dtype=torch.float64).to(dtype)
    lw = (torch.randn(v, h, generator=g, dtype=torch.float64) / h**0.5).to(dtype)
    b = torch.randn(v, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, v, (n,), generator=g)
    y[[2, 9]] = -100
    cw = (torch.rand(v, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    return hid, lw, b, y, cw


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_autocast_gives_pytorchs_float32_loss(dtype, reduction):
    """Under torch.autocast a float16/bfloat16 linear_cross_entropy gives a float32
    loss, as PyTorch's F.linear + F.cross_entropy (its cross-entropy runs in float32),
    with gradients in the inputs' dtypes; eagerly and compiled."""
    h, lw, lb, t, _ = _linear_inputs()
    leaves = [a.to(dtype).requires_grad_() for a in (h, lw, lb)]
    compiled = torch.compile(ft.linear_cross_entropy, fullgraph=True, backend="aot_eager")
    for ours in (ft.linear_cross_entropy, compiled):
        with torch.autocast("cpu", dtype=dtype):
            got = ours(*leaves[:2], t, linear_bias=leaves[2], reduction=reduction)
        assert got.dtype == torch.float32
        grads = torch.autograd.grad(got.sum(), leaves)
        assert [g.dtype for g in grads] == [dtype] * 3
        # the oracle: the same inputs in float64 (PyTorch's own under autocast rounds
        # the logits to `dtype`, which this computes in float32)
        exact = [a.detach().double().requires_grad_() for a in leaves]
        want = F.cross_entropy(F.linear(*exact), t, reduction=reduction)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
        for g, e in zip(grads, torch.autograd.grad(want.sum(), exact), strict=True):
            close(g, e.to(dtype), dtype, "gradient")


def _grads(fn, h, lw, b, upstream):
    h, lw = h.detach().clone().requires_grad_(), lw.detach().clone().requires_grad_()
    b = None if b is None else b.detach().clone().requires_grad_()
    loss = fn(h, lw, b)
    (loss * upstream.to(loss.dtype)).sum().backward()
    return [loss.detach(), h.grad, lw.grad] + ([] if b is None else [b.grad])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_matches_linear_then_cross_entropy(reduction):
    h, lw, b, y, cw = _linear_inputs()
    g = torch.Generator().manual_seed(9)
    up = torch.rand((23,) if reduction == "none" else (), generator=g, dtype=torch.float64) + 0.5
    for bias, weighted, eps, chunk in itertools.product(
        (None, b), (None, cw), (0.0, 0.1), (1, 5, None)
    ):
        opts = {"reduction": reduction, "label_smoothing": eps, "weight": weighted}

        def ours(h, lw, b, chunk=chunk, opts=opts):
            return ft.linear_cross_entropy(h, lw, y, linear_bias=b, chunk_size=chunk, **opts)

        def theirs(h, lw, b, opts=opts):
            return F.cross_entropy(F.linear(h, lw, b), y, **opts)

        got, want = _grads(ours, h, lw, bias, up), _grads(theirs, h, lw, bias, up)
        what = f"{reduction} bias={bias is not None} weight={weighted is not None} {eps} {chunk}"
        for name, a, c in zip(("loss", "dinput", "dweight", "dbias"), got, want, strict=False):
            close(a, c, torch.float64, f"{what} {name}")


def test_linear_probability_targets_and_dtypes():
    for dtype in (torch.float32, torch.bfloat16):
        h, lw, b, _, _ = _linear_inputs(dtype=dtype, seed=10)
        g = torch.Generator().manual_seed(11)
        p = torch.softmax(torch.randn(23, 17, generator=g, dtype=torch.float64), -1).to(dtype)
        one = torch.ones(())

        def ours(h, lw, b, p=p):
            return ft.linear_cross_entropy(h, lw, p, linear_bias=b, chunk_size=4)

        def theirs(h, lw, b, p=p):
            return F.cross_entropy(F.linear(h, lw, b), p.double())

        got = _grads(ours, h, lw, b, one)
        want = _grads(theirs, h.double(), lw.double(), b.double(), one)
        for a, c in zip(got, want, strict=True):
            assert a.dtype == dtype
            close(a, c, dtype, f"{dtype}")
    # unbatched input
    h, lw, b, y, _ = _linear_inputs()
    one = torch.ones(())
    got = _grads(
        lambda h, lw, b: ft.linear_cross_entropy(h[0], lw, y[0], linear_bias=b), h, lw, b, one
    )
    want = _grads(lambda h, lw, b: F.cross_entropy(F.linear(h[0], lw, b), y[0]), h, lw, b, one)
    for a, c in zip(got, want, strict=True):
        close(a, c, torch.float64)


@pytest.mark.skipif(
    not hasattr(F, "linear_cross_entropy"), reason="this PyTorch has no F.linear_cross_entropy"
)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_matches_pytorch_linear_cross_entropy(reduction):
    h, lw, b, y, cw = _linear_inputs(n=64, h=16, v=40, dtype=torch.float32)
    up = torch.rand(64) if reduction == "none" else torch.tensor(1.5)
    opts = {"reduction": reduction, "weight": cw}  # PyTorch's chunked path: no smoothing
    got = _grads(
        lambda h, lw, b: ft.linear_cross_entropy(h, lw, y, linear_bias=b, **opts), h, lw, b, up
    )
    chunked = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=16)
    for options in (None, chunked):

        def theirs(h, lw, b, o=options):
            return F.linear_cross_entropy(h, lw, y, linear_bias=b, options=o, **opts)

        want = _grads(theirs, h, lw, b, up)
        for a, c in zip(got, want, strict=True):
            torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)
    # options.batch_chunk_size is read as the chunk size
    assert torch.equal(
        ft.linear_cross_entropy(h, lw, y, options=chunked),
        ft.linear_cross_entropy(h, lw, y, chunk_size=16),
    )


def test_linear_default_chunk_is_a_sixteenth_of_the_logits():
    assert ft.default_chunk_size(4096, 32000, 4) == 256  # 6.25% of N x V
    assert ft.default_chunk_size(8192, 128256, 4) == 512
    assert ft.default_chunk_size(100, 32000, 4) == 64
    assert ft.default_chunk_size(10, 5, 4) == 10
    assert ft.default_chunk_size(10**6, 32000, 4) * 32000 * 4 <= ft.CHUNK_MAX_BYTES


def test_linear_holds_one_chunk_of_logits_at_a_time(monkeypatch):
    rows = []
    real = ft._kernel

    def spy(z, *args):
        rows.append(z.shape[0])
        return real(z, *args)

    monkeypatch.setattr(ft, "_kernel", spy)
    h, lw, _, y, _ = _linear_inputs(n=300, h=8, v=50, dtype=torch.float32)
    lw.requires_grad_()
    ft.linear_cross_entropy(h, lw, y).backward()
    assert rows == [64] * 4 + [44]  # the default: max(64, 300 // 16) rows
    rows.clear()
    ft.linear_cross_entropy(h, lw, y, chunk_size=128).backward()
    assert rows == [128, 128, 44]
    # the gradient the forward computed becomes weight.grad as it is (no copy)
    made = []
    real_linear = ft._linear

    def keep(*args, **kw):
        out = real_linear(*args, **kw)
        made.append(out[2].data_ptr())
        return out

    monkeypatch.setattr(ft, "_linear", keep)
    lw.grad = None
    ft.linear_cross_entropy(h, lw, y).backward()
    assert made == [lw.grad.data_ptr()]


def test_linear_frozen_weight_gets_no_gradient():
    h, lw, b, y, _ = _linear_inputs()
    h.requires_grad_()
    ft.linear_cross_entropy(h, lw, y, linear_bias=b).backward()
    assert lw.grad is None and b.grad is None and h.grad.shape == h.shape
    with torch.no_grad():
        loss = ft.linear_cross_entropy(h, lw, y)
    close(loss, F.cross_entropy(F.linear(h, lw), y), torch.float64)


# --------------------------------------------------------------------------------------
# torch.func transforms
# --------------------------------------------------------------------------------------
FUNC_OPTIONS = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"label_smoothing": 0.1},
    {"weight": "w"},
    {"ignore_index": 2},
]


def _func_options(kw):
    w = torch.rand(5, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.5
    return {k: (w if v == "w" else v) for k, v in kw.items()}


@pytest.mark.parametrize("kw", FUNC_OPTIONS, ids=lambda kw: ",".join(kw) or "plain")
def test_torch_func_grad_and_jacrev_match_pytorch(kw):
    """torch.func.grad of the summed loss and jacrev of the per-row losses, against
    PyTorch's F.cross_entropy under the same transforms (float64)."""
    kw = _func_options(kw)
    x = logits(8, 5, torch.float64)
    y = torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(1))
    y[3] = kw.get("ignore_index", -100)

    def summed(fn):
        return lambda z: fn(z, y, **kw).sum()

    ours = torch.func.grad(summed(ft.cross_entropy))(x)
    theirs = torch.func.grad(summed(F.cross_entropy))(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    rows = {**kw, "reduction": "none"}
    jac = torch.func.jacrev(lambda z: ft.cross_entropy(z, y, **rows))(x)
    expected = torch.func.jacrev(lambda z: F.cross_entropy(z, y, **rows))(x)
    torch.testing.assert_close(jac, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_torch_func_vmap_and_per_sample_gradients(dtype):
    """vmap of the loss (nested too) and per-sample gradients of a linear model
    (vmap(grad(...)) with functional_call), against F.cross_entropy under the same
    transforms; the plain 64 x 10 classifier call included (the minibatch path must
    step aside under a transform)."""
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-14}
    gen = torch.Generator().manual_seed(2)
    xb = torch.randn(3, 64, 10, generator=gen, dtype=dtype) * 3
    yb = torch.randint(0, 10, (3, 64), generator=gen)
    for fn_kw in ({}, {"reduction": "none"}, {"label_smoothing": 0.2}):
        ours = torch.func.vmap(functools.partial(ft.cross_entropy, **fn_kw))(xb, yb)
        theirs = torch.func.vmap(functools.partial(F.cross_entropy, **fn_kw))(xb, yb)
        torch.testing.assert_close(ours, theirs, **tol)
    nested = torch.func.vmap(torch.func.vmap(ft.cross_entropy))(
        xb.expand(2, 3, 64, 10), yb.expand(2, 3, 64)
    )
    torch.testing.assert_close(nested, torch.func.vmap(F.cross_entropy)(xb, yb).expand(2, 3), **tol)

    model = torch.nn.Linear(10, 4).to(dtype)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = xb[0], yb[0] % 4

    def per_sample(fn):
        def loss(p, xi, yi):
            out = torch.func.functional_call(model, p, (xi.unsqueeze(0),))
            return fn(out, yi.unsqueeze(0))

        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)

    ours, theirs = per_sample(ft.cross_entropy), per_sample(F.cross_entropy)
    for name in params:
        assert ours[name].shape == (64, *params[name].shape)
        torch.testing.assert_close(ours[name], theirs[name], **tol)


# --------------------------------------------------------------------------------------
# second order: double backward, torch.func.hessian, forward-mode AD
# --------------------------------------------------------------------------------------
SECOND_ORDER_OPTIONS = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"label_smoothing": 0.1, "weight": "w"},
    {"ignore_index": 2, "weight": "w"},
    {"probabilities": True, "label_smoothing": 0.2, "weight": "w"},
]


def _second_order_case(kw, n=6, c=5):
    """(x, target, options) in float64: class indices with an ignored row, or
    probabilities."""
    kw = _func_options(kw)
    gen = torch.Generator().manual_seed(4)
    x = logits(n, c, torch.float64)
    if kw.pop("probabilities", False):
        y = torch.softmax(torch.randn(n, c, generator=gen, dtype=torch.float64), -1)
    else:
        y = torch.randint(0, c, (n,), generator=gen)
        y[3] = kw.get("ignore_index", -100)
    return x, y, kw


@pytest.mark.parametrize("kw", SECOND_ORDER_OPTIONS, ids=lambda kw: ",".join(kw) or "plain")
def test_gradgradcheck(path, kw):
    """The gradient's own derivative (the backward's J of the softmax) against finite
    differences of the gradient."""
    x, y, kw = _second_order_case(kw)
    x.requires_grad_()
    assert torch.autograd.gradgradcheck(lambda z: ft.cross_entropy(z, y, **kw), (x,))


def _penalty_grad(fn, x, y, kw):
    """d/dx of |d loss/dx|^2 (create_graph=True), with loss the summed fn(x, y)."""
    x = x.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(fn(x, y, **kw).sum(), x, create_graph=True)
    (h,) = torch.autograd.grad((g * g).sum(), x)
    return h


@pytest.mark.parametrize("kw", SECOND_ORDER_OPTIONS, ids=lambda kw: ",".join(kw) or "plain")
def test_second_order_matches_pytorch(kw):
    """Double backward (create_graph=True), torch.func.jacrev of grad and torch.func.hessian
    (forward over reverse) of the loss, against F.cross_entropy's, float64."""
    x, y, kw = _second_order_case(kw)
    tol = {"rtol": 1e-10, "atol": 1e-12}
    ours, theirs = (
        _penalty_grad(ft.cross_entropy, x, y, kw),
        _penalty_grad(F.cross_entropy, x, y, kw),
    )
    torch.testing.assert_close(ours, theirs, **tol)
    assert ours.abs().max() > 1e-3  # a real second-order term, not zeros

    def summed(fn):
        return lambda z: fn(z, y, **kw).sum()

    want = torch.func.hessian(summed(F.cross_entropy))(x)
    got_rev = torch.func.jacrev(torch.func.grad(summed(ft.cross_entropy)))(x)
    torch.testing.assert_close(got_rev, want, **tol)
    torch.testing.assert_close(torch.func.hessian(summed(ft.cross_entropy))(x), want, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_second_order_through_a_model_step(dtype):
    """A second-order meta-gradient (MAML's): one inner SGD step of a linear model
    (x @ w.T, 20 -> 10 classes) with create_graph=True, the loss after it differentiated
    with respect to the initial weights, on the plain 64 x 10 classifier call (the
    minibatch path) and on a (N, C, d) input (the general one), against
    F.cross_entropy."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(64, 20, generator=gen, dtype=dtype)
    y = torch.randint(0, 10, (64,), generator=gen)
    w0 = (torch.randn(10, 20, generator=gen, dtype=dtype) * 0.3).requires_grad_()

    def meta_grad(loss_fn, reshape):
        def loss_at(w):
            z = x @ w.T
            return (
                loss_fn(z.reshape(16, 4, 10).transpose(1, 2), y.reshape(16, 4))
                if reshape
                else loss_fn(z, y)
            )

        (g,) = torch.autograd.grad(loss_at(w0), w0, create_graph=True)
        (meta,) = torch.autograd.grad(loss_at(w0 - 0.5 * g), w0)
        return meta

    tol = {"rtol": 2e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    for reshape in (False, True):
        ours, theirs = meta_grad(ft.cross_entropy, reshape), meta_grad(F.cross_entropy, reshape)
        torch.testing.assert_close(ours, theirs, **tol)
        first_order = torch.autograd.grad(F.cross_entropy(x @ w0.T, y), w0)[0]  # not it
        assert (theirs - first_order).abs().max() > 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_second_order_in_other_dtypes(dtype):
    """Per-sample Hessians (vmap of hessian) with label smoothing: float32, and bfloat16
    and float16 (computed in float32), against F.cross_entropy's in float64."""
    x = logits(4, 6, torch.float64).reshape(2, 2, 6)
    y = torch.randint(0, 6, (2, 2), generator=torch.Generator().manual_seed(11))

    def hessians(fn, z):
        loss = functools.partial(fn, label_smoothing=0.1)
        return torch.func.vmap(torch.func.hessian(loss))(z, y)

    got = hessians(ft.cross_entropy, x.to(dtype))
    assert got.dtype == dtype
    close(got, hessians(F.cross_entropy, x), dtype, "hessian")


@pytest.mark.parametrize("kw", SECOND_ORDER_OPTIONS, ids=lambda kw: ",".join(kw) or "plain")
def test_forward_mode_ad_matches_pytorch(kw):
    """Tangents of the loss under torch.autograd.forward_ad (dual tensors, which need no
    requires_grad) and torch.func.jvp, against F.cross_entropy's; the plain classifier
    call included."""
    import torch.autograd.forward_ad as fwAD

    x, y, kw = _second_order_case(kw)
    t = torch.randn(x.shape, generator=torch.Generator().manual_seed(8), dtype=x.dtype)
    tol = {"rtol": 1e-10, "atol": 1e-12}
    for fn_kw in (kw, {}):
        yy = (
            y
            if fn_kw is kw
            else torch.randint(0, 5, (6,), generator=torch.Generator().manual_seed(9))
        )
        tangents = []
        for fn in (ft.cross_entropy, F.cross_entropy):
            with fwAD.dual_level():
                out = fn(fwAD.make_dual(x, t), yy, **fn_kw)
                tangents.append(fwAD.unpack_dual(out).tangent)
        assert tangents[0] is not None
        torch.testing.assert_close(tangents[0], tangents[1], **tol)
        jvps = [
            torch.func.jvp(functools.partial(fn, target=yy, **fn_kw), (x,), (t,))[1]
            for fn in (ft.cross_entropy, F.cross_entropy)
        ]
        torch.testing.assert_close(jvps[0], jvps[1], **tol)


def _linear_case(kw, n=6, h=4, v=5):
    """(hidden, linear_weight, linear_bias, target, options) in float64 for
    linear_cross_entropy (PyTorch's argument names), and the same options for
    F.cross_entropy."""
    _, y, kw = _second_order_case(kw, n=n, c=v)
    gen = torch.Generator().manual_seed(12)
    hidden = torch.randn(n, h, generator=gen, dtype=torch.float64)
    lw = torch.randn(v, h, generator=gen, dtype=torch.float64)
    lb = torch.randn(v, generator=gen, dtype=torch.float64)
    return hidden, lw, lb, y, kw


def _linear_pair(y, kw):
    """linear_cross_entropy(h, w, y, linear_bias=b, ...) and PyTorch's composition."""

    def ours(hh, ww, bb, yy=y):
        return ft.linear_cross_entropy(hh, ww, yy, linear_bias=bb, **kw)

    def theirs(hh, ww, bb, yy=y):
        return F.cross_entropy(F.linear(hh, ww, bb), yy, **kw)

    return ours, theirs


@pytest.mark.parametrize("kw", SECOND_ORDER_OPTIONS, ids=lambda kw: ",".join(kw) or "plain")
def test_linear_under_torch_func_and_forward_ad(kw):
    """linear_cross_entropy under torch.func.grad, jacrev, vmap (per-sample gradients),
    jvp and dual tensors, with respect to the hidden states, the head's weight and its
    bias, against F.linear + F.cross_entropy under the same transforms (float64).  The
    chunked custom ops have no rule for these; a tangent must not come back silently
    wrong."""
    import torch.autograd.forward_ad as fwAD

    hidden, lw, lb, y, kw = _linear_case(kw)
    ours, theirs = _linear_pair(y, kw)
    tol = {"rtol": 1e-10, "atol": 1e-12}
    args = (hidden, lw, lb)
    grads = [
        torch.func.grad(lambda *a, f=f: f(*a).sum(), argnums=(0, 1, 2))(*args)
        for f in (ours, theirs)
    ]
    torch.testing.assert_close(grads[0], grads[1], **tol)
    jacs = [torch.func.jacrev(f, argnums=(0, 1))(*args) for f in (ours, theirs)]
    torch.testing.assert_close(jacs[0], jacs[1], **tol)
    tangents = tuple(torch.randn_like(a) for a in args)
    jvps = [torch.func.jvp(f, args, tangents) for f in (ours, theirs)]
    torch.testing.assert_close(jvps[0], jvps[1], **tol)
    duals = []
    for f in (ours, theirs):
        with fwAD.dual_level():  # a tangent on the weight alone, nothing requires grad
            out = f(hidden, fwAD.make_dual(lw, tangents[1]), lb)
            duals.append(fwAD.unpack_dual(out).tangent)
    assert duals[0] is not None and duals[0].abs().max() > 1e-6
    torch.testing.assert_close(duals[0], duals[1], **tol)

    def per_sample(f):
        def loss(hi, yi, ww, bb):
            return f(hi.unsqueeze(0), ww, bb, yi.unsqueeze(0)).sum()

        return torch.func.vmap(torch.func.grad(loss, argnums=(2, 3)), in_dims=(0, 0, None, None))(
            hidden, y, lw, lb
        )

    samples = [per_sample(f) for f in (ours, theirs)]
    assert samples[0][0].shape == (hidden.shape[0], *lw.shape)
    torch.testing.assert_close(samples[0], samples[1], **tol)


@pytest.mark.parametrize("kw", SECOND_ORDER_OPTIONS, ids=lambda kw: ",".join(kw) or "plain")
def test_linear_second_order_matches_pytorch(kw):
    """linear_cross_entropy's gradients are differentiable: a create_graph=True backward
    then a gradient of a penalty on them (through both custom ops: the forward that
    computes the gradients, "mean"/"sum" with grad mode, and the loss alone, "none"),
    gradgradcheck, and torch.func.hessian, against F.linear + F.cross_entropy."""
    hidden, lw, lb, y, kw = _linear_case(kw)
    ours, theirs = _linear_pair(y, kw)
    tol = {"rtol": 1e-10, "atol": 1e-12}

    def penalty_grads(f):
        hh, ww, bb = (a.detach().clone().requires_grad_() for a in (hidden, lw, lb))
        gh, gw, gb = torch.autograd.grad(f(hh, ww, bb).sum(), (hh, ww, bb), create_graph=True)
        penalty = (gh * gh).sum() + gw.sin().sum() + (gb * gb).sum()
        return torch.autograd.grad(penalty, (hh, ww, bb))

    got, want = penalty_grads(ours), penalty_grads(theirs)
    torch.testing.assert_close(got, want, **tol)
    assert want[0].abs().max() > 1e-3  # a real second-order term
    leaves = tuple(a.detach().clone().requires_grad_() for a in (hidden, lw, lb))
    assert torch.autograd.gradgradcheck(ours, leaves)
    hess = [torch.func.hessian(lambda w, f=f: f(hidden, w, lb).sum())(lw) for f in (ours, theirs)]
    torch.testing.assert_close(hess[0], hess[1], **tol)


def test_first_order_gradients_carry_no_graph():
    """torch.autograd.grad without create_graph gives gradients that do not require grad
    and can be changed in place, as PyTorch's: on the general path (2-D and (N, C, d)),
    the minibatch path and linear_cross_entropy.  The saved gradient is an output of
    the Function (for second order); what the backward hands out must not carry that
    graph along."""
    gen = torch.Generator().manual_seed(15)
    y = torch.randint(0, 5, (8,), generator=gen)
    cases = [
        (lambda x: ft.cross_entropy(x, y, label_smoothing=0.1), torch.randn(8, 5, generator=gen)),
        (lambda x: ft.cross_entropy(x, y.reshape(4, 2)), torch.randn(4, 5, 2, generator=gen)),
        (lambda x: ft.cross_entropy(x, y), torch.randn(8, 5, generator=gen)),
        (
            lambda w: ft.linear_cross_entropy(torch.ones(8, 3), w, y),
            torch.randn(5, 3, generator=gen),
        ),
    ]
    for fn, leaf in cases:
        x = leaf.requires_grad_()
        (g,) = torch.autograd.grad(fn(x), x)
        assert not g.requires_grad and g.grad_fn is None
        g.mul_(2.0)  # allowed, as for PyTorch's gradients
        fn(x).backward()
        assert not x.grad.requires_grad


def test_retained_graph_hands_out_separate_gradients():
    """backward(retain_graph=True) more than once on the general path, the minibatch
    path and linear_cross_entropy: every backward gives PyTorch's gradient, in memory
    of its own, and adds into input.grad as PyTorch's does; input.grad changed in place
    between backwards (zero_grad(set_to_none=False), clipping, even through .data,
    which PyTorch's version check does not see) never changes what a later backward
    gives (the gradient a backward reads is never the one it handed out)."""
    gen = torch.Generator().manual_seed(14)
    y = torch.randint(0, 10, (64,), generator=gen)
    h = torch.randn(64, 6, generator=gen, dtype=torch.float64)
    lw = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    cases = [
        (
            lambda x: ft.cross_entropy(x, y, label_smoothing=0.1),
            lambda x: F.cross_entropy(x, y, label_smoothing=0.1),
            logits(64, 10, torch.float64),
        ),
        (
            lambda x: ft.cross_entropy(x, y),
            lambda x: F.cross_entropy(x, y),
            logits(64, 10, torch.float32),
        ),
        (
            lambda w: ft.linear_cross_entropy(h, w, y),
            lambda w: F.cross_entropy(F.linear(h, w), y),
            lw,
        ),
    ]
    for ours, theirs, leaf in cases:
        x = leaf.clone().requires_grad_()
        want = torch.autograd.grad(theirs(x), x)[0]

        def check(factor, x=x, want=want):
            torch.testing.assert_close(x.grad, factor * want, rtol=1e-5, atol=1e-7)

        loss = ours(x)
        grads = []
        for _ in range(3):
            x.grad = None
            loss.backward(retain_graph=True)
            grads.append(x.grad)
            check(1)
        assert len({g.data_ptr() for g in grads}) == 3
        grads[-1].mul_(0.0)  # the next backward is unaffected
        x.grad = None
        loss.backward(retain_graph=True)
        check(1)
        loss = ours(x)
        x.grad = None
        loss.backward(retain_graph=True)
        x.grad.mul_(0.5)  # in place, as zero_grad(set_to_none=False) or clipping
        loss.backward(retain_graph=True)  # adds into x.grad in place
        check(1.5)
        loss.backward(retain_graph=True)
        check(2.5)
        x.grad.data.zero_()  # past PyTorch's version counter
        loss.backward()
        check(1)


def test_second_order_errors_instead_of_wrong_results():
    """A second derivative that cannot be right raises: after the input was modified in
    place, linear_cross_entropy's (its forward computed the first-order gradients, so
    only a create_graph=True backward needs the input) and the minibatch path's."""
    gen = torch.Generator().manual_seed(10)
    lw = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (6,), generator=gen)
    h0 = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    for create_graph in (False, True):
        h = h0 * 1.0
        loss = ft.linear_cross_entropy(h, lw, y)
        h.add_(1.0)
        if create_graph:
            with pytest.raises(RuntimeError, match="its input was modified in place"):
                torch.autograd.grad(loss, lw, create_graph=True)
        else:  # the gradient at the hidden states the forward saw
            got = torch.autograd.grad(loss, lw)[0]
            want = torch.autograd.grad(F.cross_entropy(F.linear(h0 * 1.0, lw), y), lw)[0]
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)

    x = logits(64, 10, torch.float32).requires_grad_()
    t = torch.randint(0, 10, (64,), generator=gen)
    for create_graph in (False, True):
        z = x * 1.0
        loss = ft.cross_entropy(z, t)
        z.add_(1.0)
        if create_graph:
            with pytest.raises(RuntimeError, match="modified in place"):
                torch.autograd.grad(loss, x, create_graph=True)
        else:  # as F.cross_entropy: the gradient at the logits the forward saw
            (g,) = torch.autograd.grad(loss, x)
            want = torch.autograd.grad(F.cross_entropy((x * 1.0), t), x)[0]
            torch.testing.assert_close(g, want, rtol=2e-5, atol=1e-7)


# --------------------------------------------------------------------------------------
# zero copy, threads, errors, import without torch
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("upstream", [None, 2.5])
@pytest.mark.parametrize("classes", [10, 100])  # the small-C kernel, the large-C one
def test_minibatch_path_gives_the_general_paths_bits(
    monkeypatch, dtype, reduction, upstream, classes
):
    """The lean eager path of a plain classifier call (_minibatch_call, whose kernel
    reads the tensors by address) against the general one on the same call: the same
    loss and gradient, bit for bit, with ignored rows, an all-ignored batch and without
    grad mode too."""
    x = logits(64, classes, dtype)
    y = torch.randint(0, classes, (64,), generator=torch.Generator().manual_seed(1))
    y[::5] = -100
    up = None if upstream is None else torch.tensor(upstream)
    calls = []
    real = ft._minibatch_call
    monkeypatch.setattr(ft, "_minibatch_call", lambda *a: calls.append(real(*a)) or calls[-1])
    fast = run(ft.cross_entropy, x, up, target=y, reduction=reduction)
    fast_all_ignored = ft.cross_entropy(x, torch.full_like(y, -100), reduction=reduction)
    with torch.no_grad():
        fast_nograd = ft.cross_entropy(x, y, reduction=reduction)
    monkeypatch.setattr(ft, "_minibatch_call", lambda *a: None)
    general = run(ft.cross_entropy, x, up, target=y, reduction=reduction)
    general_all_ignored = ft.cross_entropy(x, torch.full_like(y, -100), reduction=reduction)
    assert len(calls) == 3 and all(c is not None for c in calls), "the minibatch path was not taken"
    torch.testing.assert_close(fast, general, rtol=0, atol=0)
    torch.testing.assert_close(fast_nograd, general[0], rtol=0, atol=0)
    torch.testing.assert_close(fast_all_ignored, general_all_ignored, rtol=0, atol=0)
    assert float(fast_all_ignored) == 0.0


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])  # the minibatch path, the general one
def test_a_loss_past_float32s_range_is_inf(reduction, weighted):
    """A float32 loss too large for float32 (logits near +-3e38) is inf, as PyTorch's,
    with PyTorch's finite gradient; torch.scalar_tensor refuses such a value."""
    x = torch.tensor([[3e38, -3e38, 0.0], [3e38, -1e38, 1.0]], requires_grad=True)
    y = torch.tensor([1, 1])
    w = torch.ones(3) if weighted else None
    loss = ft.cross_entropy(x, y, weight=w, reduction=reduction)
    want = F.cross_entropy(x, y, weight=w, reduction=reduction)
    assert loss.dtype == torch.float32 and torch.isinf(loss) and torch.isinf(want)
    got_grad = torch.autograd.grad(loss, x)[0]
    torch.testing.assert_close(got_grad, torch.autograd.grad(want, x)[0])


def test_minibatch_path_errors_and_backends():
    """The minibatch path's kernel reads the tensors' memory by address; where it
    declines, the arrays' path decides: a target out of range raises as everywhere,
    use_backend("numpy") runs the reference, and a tensor with PyTorch's negative bit
    set (read as -x, its memory holding x) is read as PyTorch reads it."""
    x = logits(64, 10, torch.float32).requires_grad_()
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(2))
    bad = y.clone()
    bad[7] = 10
    with pytest.raises(ValueError, match=r"target\[7\] = 10 is out of range"):
        ft.cross_entropy(x, bad)
    assert x.grad is None
    want = F.cross_entropy(x.double(), y)
    with fastsoftmax.use_backend("numpy"):
        loss = ft.cross_entropy(x, y)
        loss.backward()
    torch.testing.assert_close(loss.double(), want, rtol=1e-6, atol=0)
    (want_grad,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(x.grad, want_grad, rtol=1e-5, atol=1e-8)
    # tensors with the negative bit (memory holding x, read as -x): read as PyTorch does,
    # on the minibatch path (no class weights) and the general one (class weights)
    w = torch.rand(10, generator=torch.Generator().manual_seed(3)) + 0.5
    for grad in (False, True):
        base = x.detach().clone().requires_grad_(grad)
        negated = torch._neg_view(base)
        assert negated.is_neg()
        for weight in (None, torch._neg_view(-w)):
            loss = ft.cross_entropy(negated, y, weight=weight)
            ref = (-x.detach()).requires_grad_(grad)
            want = F.cross_entropy(ref, y, weight=weight)
            torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
            if grad:
                (got_grad,) = torch.autograd.grad(loss, base)
                (want_grad,) = torch.autograd.grad(want, ref)
                torch.testing.assert_close(got_grad, -want_grad)


def test_minibatch_direct_apply_is_the_functions_apply(monkeypatch):
    """The minibatch path's route past Function.apply's Python layer (_direct_apply)
    gives what Function.apply gives: the loss, the graph node and the gradient, bit for
    bit (torch.func transforms take _TransformableFunction: tested above)."""
    x = logits(64, 10, torch.float32)
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(1))
    real = ft._MinibatchFunction.apply
    routed = []

    def recorded(*args):
        routed.append(args)
        return real(*args)

    monkeypatch.setattr(ft._MinibatchFunction, "apply", recorded)
    direct_x = x.clone().requires_grad_()
    direct = ft.cross_entropy(direct_x, y)
    direct.backward()
    assert routed == [], "the direct route went through Function.apply"
    via_x = x.clone().requires_grad_()
    via = real(via_x, y, True, -100)
    via.backward()
    assert type(direct.grad_fn) is type(via.grad_fn)
    torch.testing.assert_close(direct, via, rtol=0, atol=0)
    torch.testing.assert_close(direct_x.grad, via_x.grad, rtol=0, atol=0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])  # the minibatch path, the general one
def test_cpu_tensors_reach_the_kernel_without_a_copy(monkeypatch, smoothing):
    seen = []
    real_general = _api.cross_entropy_with_grad
    real_minibatch = _api.cross_entropy_index_rows_at

    def spy_general(logits, target, **kw):
        seen.append((logits.ctypes.data, target.ctypes.data, kw.get("out").ctypes.data))
        return real_general(logits, target, **kw)

    def spy_minibatch(z_at, y_at, g_at, *args):
        seen.append((z_at, y_at, g_at))
        return real_minibatch(z_at, y_at, g_at, *args)

    monkeypatch.setattr(_api, "cross_entropy_with_grad", spy_general)
    monkeypatch.setattr(_api, "cross_entropy_index_rows_at", spy_minibatch)
    x = logits(64, 10, torch.float32).requires_grad_()
    y = torch.randint(0, 10, (64,))
    ft.cross_entropy(x, y, label_smoothing=smoothing).backward()
    ((z, t, out),) = seen
    assert z == x.data_ptr() and t == y.data_ptr()
    # the gradient the kernel wrote is x.grad itself: no copy on the way back either
    assert out == x.grad.data_ptr()


def test_kernels_use_at_most_pytorchs_threads(monkeypatch):
    seen = []
    real = _api.cross_entropy_with_grad

    def spy(*args, **kw):
        seen.append(fastsoftmax.get_num_threads())
        return real(*args, **kw)

    monkeypatch.setattr(_api, "cross_entropy_with_grad", spy)
    x = logits(200, 100, torch.float32).requires_grad_()  # > 16384 logits: may go parallel
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ft.cross_entropy(x, torch.zeros(200, dtype=torch.long)).backward()
    finally:
        torch.set_num_threads(before)
    assert seen == [1]


def test_errors_name_the_argument():
    x = logits(5, 4, torch.float32)
    y = torch.tensor([0, 1, 2, 3, 0])
    cases = [
        (lambda: ft.cross_entropy(x.long(), y), TypeError, "input must be a floating"),
        (lambda: ft.cross_entropy(x[0, 0], y), ValueError, "input must have shape"),
        (lambda: ft.cross_entropy(x, y[:4]), ValueError, "target of class indices must have"),
        (lambda: ft.cross_entropy(x, x[:, :3]), ValueError, "target of class probabilities"),
        (lambda: ft.cross_entropy(x, y.bool()), TypeError, "target must be"),
        (lambda: ft.cross_entropy(x, y.to("meta")), ValueError, "target is on meta"),
        (lambda: ft.cross_entropy(x, y, weight=torch.ones(3)), ValueError, "weight must have"),
        (lambda: ft.cross_entropy(x, y, reduction="avg"), ValueError, "reduction"),
        (lambda: ft.cross_entropy(x, y, reduction=["mean"]), ValueError, "reduction"),
        (lambda: ft.cross_entropy(x, y, label_smoothing=torch.zeros(2)), TypeError, "label_smooth"),
        (lambda: ft.cross_entropy(x, y, label_smoothing=1.5), ValueError, "label_smoothing"),
        (lambda: ft.cross_entropy(x, y + 3), ValueError, r"target\[1\] = 4 is out of range"),
        (lambda: ft.cross_entropy(x, y, ignore_index=2**63), ValueError, "fit in int64"),
        (  # the minibatch path's case (grad mode, no weight): checked too
            lambda: ft.cross_entropy(x.detach().requires_grad_(), y, ignore_index=-(2**63) - 1),
            ValueError,
            "ignore_index must fit in int64",
        ),
        (  # PyTorch raises here too
            lambda: ft.cross_entropy(x, torch.full((5, 4), 0.25), ignore_index=0),
            ValueError,
            "ignore_index must be negative with probability targets",
        ),
        (
            lambda: ft.linear_cross_entropy(x, x, torch.full((5, 5), 0.2), ignore_index=1),
            ValueError,
            "ignore_index must be negative with probability targets",
        ),
        (
            lambda: ft.cross_entropy(x, torch.rand(5, 4, requires_grad=True)),
            NotImplementedError,
            "target.detach",
        ),
        (lambda: ft.linear_cross_entropy(x, x[:, :3], y), ValueError, "linear_weight must have"),
        (lambda: ft.linear_cross_entropy(x, x.double(), y), TypeError, "linear_weight must have"),
        (lambda: ft.linear_cross_entropy(x, x, y, linear_bias=x[0, :2]), ValueError, "linear_bias"),
        (lambda: ft.linear_cross_entropy(x, x, y, chunk_size=0), ValueError, "chunk_size"),
        (lambda: ft.linear_cross_entropy(x[None], x, y), ValueError, "input must have shape"),
        (lambda: ft.linear_cross_entropy(x, x, y + 2), ValueError, r"target\[3\] = 5 is out of"),
    ]
    for call, kind, match in cases:
        with pytest.raises(kind, match=match):
            call()


def test_import_fastsoftmax_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, fastsoftmax\n"
        "z, y = np.zeros((2, 3)), np.zeros(2, int)\n"
        "assert fastsoftmax.cross_entropy(z, y, backend='numpy') > 0\n"
        "try:\n    import fastsoftmax.torch\nexcept ImportError:\n    print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "ok", res.stderr


# --------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# --------------------------------------------------------------------------------------
@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_pytorch_on_a_side_stream(dtype):
    x = logits(300, 1000, dtype).cuda()
    y = torch.randint(0, 1000, (300,), device="cuda")
    y[:5] = -100
    w = torch.rand(1000, device="cuda").to(dtype) + 0.5
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for red in ("mean", "none"):
            kw = {"reduction": red, "label_smoothing": 0.1, "weight": w}
            up = torch.rand(300, device="cuda", dtype=torch.float64) if red == "none" else None
            a = run(lambda x, **k: ft.cross_entropy(x, y, **k), x, up, **kw)
            kw["weight"] = w.double()
            b = run(lambda x, **k: F.cross_entropy(x, y, **k), x.double(), up, **kw)
            close(a[0], b[0], dtype, f"{dtype} {red} loss")
            close(a[1], b[1], dtype, f"{dtype} {red} grad")
    torch.cuda.synchronize()


@cuda
def test_cuda_tensors_reach_the_kernel_through_dlpack(monkeypatch):
    seen = []
    real = _api.cross_entropy_with_grad

    def spy(logits, target, **kw):
        seen.append((logits.data.ptr, kw["out"].data.ptr, cupy.cuda.get_current_stream().ptr))
        return real(logits, target, **kw)

    monkeypatch.setattr(_api, "cross_entropy_with_grad", spy)
    x = logits(64, 100, torch.float32).cuda().requires_grad_()
    y = torch.randint(0, 100, (64,), device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        ft.cross_entropy(x, y).backward()
    torch.cuda.synchronize()
    ((zp, gp, sp),) = seen
    assert zp == x.data_ptr() and sp == stream.cuda_stream
    # the kernel wrote its own CUDA buffer; x.grad is that times the upstream gradient
    # (a CUDA upstream is not read on the host: that would synchronise), so compare values
    assert gp != x.data_ptr()
    ref = x.detach().clone().requires_grad_()
    torch.nn.functional.cross_entropy(ref, y).backward()
    torch.testing.assert_close(x.grad, ref.grad, rtol=2e-5, atol=2e-6 / 64)


@cuda
def test_cuda_linear_matches_pytorch():
    h, lw, b, y, cw = (t.cuda() for t in _linear_inputs(n=200, h=32, v=500, dtype=torch.float32))
    up = torch.tensor(1.0, device="cuda")
    opts = {"weight": cw, "chunk_size": 64}
    got = _grads(
        lambda h, lw, b: ft.linear_cross_entropy(h, lw, y, linear_bias=b, **opts), h, lw, b, up
    )
    want = _grads(lambda h, lw, b: F.cross_entropy(F.linear(h, lw, b), y, weight=cw), h, lw, b, up)
    for a, c in zip(got, want, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)


_KEEPS_TORCH_THREADS = """
import numpy as np
import torch

torch.set_num_threads(1)  # as a DataLoader worker does
import fastsoftmax as fs
import fastsoftmax.torch as ft

x = torch.randn(300, 200, requires_grad=True)  # large C: the parallel kernel
ft.cross_entropy(x, torch.zeros(300, dtype=torch.long)).backward()
fs.softmax(np.random.default_rng(0).standard_normal((300, 200)))
print(torch.get_num_threads())
"""


def test_our_thread_pool_leaves_pytorchs_thread_count_alone():
    """Numba's OpenMP pool set the OpenMP thread count to its own size when it started,
    and PyTorch shares that library: torch.set_num_threads(1) silently became 2 after
    the first parallel call.  In a fresh process (the pool starts once)."""
    done = subprocess.run(
        [sys.executable, "-c", _KEEPS_TORCH_THREADS], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]
