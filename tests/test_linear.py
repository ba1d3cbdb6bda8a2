"""linear_cross_entropy(_with_grad) against the unfused composition (the oracle: logits in
float64, the NumPy reference cross-entropy, then the two backward matmuls), against
finite differences, and for its memory promise (at most chunk_size x V logits at once)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import _linear

BACKENDS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    not fs._backends.is_available("numba"), reason="numba is not installed"))]  # fmt: skip

# Per-dtype tolerances against the float64 oracle.  The logits come from a GEMM in the
# input dtype (float16 runs in float32 and rounds its results to float16), so float32
# errors grow like sqrt(H) ulps of |h||w|; atol is in units of the largest entry of the
# compared array.
TOL = {
    np.dtype(np.float16): (5e-3, 5e-3),
    np.dtype(np.float32): (2e-4, 2e-5),
    np.dtype(np.float64): (1e-9, 1e-12),
}


def unfused(hidden, weight, target, bias=None, class_weight=None, **opts):
    """The composition the fused op must equal, computed in float64 from the same inputs."""
    h = hidden.astype(np.float64)
    w = weight.astype(np.float64)
    z = h @ w.T
    if bias is not None:
        z = z + bias.astype(np.float64)
    if np.ndim(target) == 2:
        target = target.astype(np.float64)
    loss, g = fs.cross_entropy_with_grad(z, target, weight=class_weight, backend="numpy", **opts)
    return loss, g @ w, g.T @ h, g.sum(axis=0)


def assert_matches(got, want, dtype, what=""):
    rtol, atol = TOL[np.dtype(dtype)]
    names = ("loss", "dhidden", "dweight", "dbias")
    for name, a, b in zip(names, got, want, strict=True):
        if a is None:
            continue
        a = np.asarray(a)
        assert a.dtype == dtype, f"{name} dtype {a.dtype}, want {dtype}"
        b = np.asarray(b, np.float64)
        assert a.shape == b.shape, f"{name} shape {a.shape}, want {b.shape}"
        scale = float(np.max(np.abs(b), initial=0.0)) or 1.0
        np.testing.assert_allclose(
            a.astype(np.float64), b, rtol=rtol, atol=atol * scale, err_msg=f"{what} {name}"
        )


def make(rng, n, h, v, dtype, spread=1.0):
    hidden = (rng.standard_normal((n, h)) * spread).astype(dtype)
    weight = (rng.standard_normal((v, h)) / np.sqrt(max(h, 1))).astype(dtype)
    bias = rng.standard_normal(v).astype(dtype)
    target = rng.integers(0, v, n)
    return hidden, weight, bias, target


SHAPES = [
    (1, 1, 2),
    (3, 17, 5),
    (0, 8, 4),
    (4, 0, 3),
    (5, 6, 1),
    (257, 33, 1000),
    (2048, 16, 10),
    (7, 64, 32000),
    (3, 8, 128256),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_matches_unfused(rng, backend, dtype, shape, chunk_size):
    hidden, weight, bias, target = make(rng, *shape, dtype)
    got = fs.linear_cross_entropy_with_grad(
        hidden, weight, target, bias=bias, chunk_size=chunk_size, backend=backend
    )
    assert_matches(got, unfused(hidden, weight, target, bias), dtype)
    loss = fs.linear_cross_entropy(
        hidden, weight, target, bias=bias, chunk_size=chunk_size, backend=backend
    )
    assert loss == got[0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_every_option(
    rng, backend, reduction, ignore, label_smoothing, weighted, with_bias, chunk_size
):
    n, h, v = 53, 11, 37
    hidden, weight, bias, target = make(rng, n, h, v, np.float64, spread=2.0)
    bias = bias if with_bias else None
    opts = {"reduction": reduction, "label_smoothing": label_smoothing}
    if ignore:
        target[::4] = 7  # some ignored rows, spread over every chunk
        opts["ignore_index"] = 7
    cw = rng.uniform(0.1, 3.0, v) if weighted else None
    got = fs.linear_cross_entropy_with_grad(
        hidden, weight, target, bias=bias, class_weight=cw, chunk_size=chunk_size,
        backend=backend, **opts,
    )  # fmt: skip
    want = unfused(hidden, weight, target, bias, class_weight=cw, **opts)
    assert_matches(got, want, np.float64, what=str(opts))
    assert (got[3] is None) == (bias is None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_probability_targets(rng, backend, dtype):
    n, h, v = 29, 9, 13
    hidden, weight, bias, _ = make(rng, n, h, v, dtype)
    q = rng.dirichlet(np.ones(v), n).astype(dtype)
    got = fs.linear_cross_entropy_with_grad(
        hidden, weight, q, bias=bias, label_smoothing=0.1, chunk_size=4, backend=backend
    )
    assert_matches(got, unfused(hidden, weight, q, bias, label_smoothing=0.1), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float16_runs_in_float32(rng, backend):
    hidden, weight, bias, target = make(rng, 40, 32, 300, np.float16)
    got = fs.linear_cross_entropy_with_grad(
        hidden, weight, target, bias=bias, chunk_size=16, backend=backend
    )
    assert_matches(got, unfused(hidden, weight, target, bias), np.float16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_finite_differences(rng, backend):
    n, h, v = 6, 4, 5
    hidden, weight, bias, target = make(rng, n, h, v, np.float64)
    target[2] = -100
    cw = rng.uniform(0.5, 2.0, v)
    opts = {"label_smoothing": 0.1, "class_weight": cw, "chunk_size": 4, "backend": backend}

    def f(hh, ww, bb):
        return float(fs.linear_cross_entropy(hh, ww, target, bias=bb, **opts))

    _, dh, dw, db = fs.linear_cross_entropy_with_grad(hidden, weight, target, bias=bias, **opts)
    step = 1e-6
    for arr, grad, pos in ((hidden, dh, 0), (weight, dw, 1), (bias, db, 2)):
        numeric = np.empty_like(arr)
        for idx in np.ndindex(arr.shape):
            args = [hidden.copy(), weight.copy(), bias.copy()]
            args[pos][idx] += step
            up = f(*args)
            args[pos][idx] -= 2 * step
            numeric[idx] = (up - f(*args)) / (2 * step)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ignored_mean_is_zero(rng, backend):
    hidden, weight, bias, _ = make(rng, 9, 5, 6, np.float32)
    target = np.full(9, -100)
    loss, dh, dw, db = fs.linear_cross_entropy_with_grad(
        hidden, weight, target, bias=bias, chunk_size=4, backend=backend
    )
    assert loss == 0.0
    assert not dh.any() and not dw.any() and not db.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_classes_by_minus_inf_bias(rng, backend):
    hidden, weight, bias, target = make(rng, 20, 6, 12, np.float32)
    bias[[3, 8]] = -np.inf
    target[target == 3] = 0
    target[target == 8] = 1
    got = fs.linear_cross_entropy_with_grad(
        hidden, weight, target, bias=bias, chunk_size=6, backend=backend
    )
    for a in got:
        assert np.all(np.isfinite(a))
    assert not got[2][[3, 8]].any() and not got[3][[3, 8]].any()
    assert_matches(got, unfused(hidden, weight, target, bias), np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_stay_finite(rng, backend, dtype):
    # logits of order +-1e4: a naive exp overflows
    hidden, weight, bias, target = make(rng, 16, 8, 40, dtype, spread=3e3)
    got = fs.linear_cross_entropy_with_grad(
        hidden, weight, target, bias=bias, chunk_size=5, backend=backend
    )
    assert np.max(np.abs(hidden.astype(np.float64) @ weight.T.astype(np.float64))) > 1e3
    for a in got:
        assert np.all(np.isfinite(a))
    assert_matches(got, unfused(hidden, weight, target, bias), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_row_stays_in_its_row(rng, backend):
    hidden, weight, bias, target = make(rng, 10, 4, 7, np.float64)
    hidden[3, 1] = np.nan
    loss, dh, _, _ = fs.linear_cross_entropy_with_grad(
        hidden, weight, target, bias=bias, reduction="none", chunk_size=4, backend=backend
    )
    assert np.isnan(loss[3]) and np.isnan(dh[3]).all()
    keep = np.arange(10) != 3
    want = unfused(hidden[keep], weight, target[keep], bias, reduction="none")
    np.testing.assert_allclose(loss[keep], want[0], rtol=1e-12)
    np.testing.assert_allclose(dh[keep], want[1], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs_and_no_mutation(rng, backend):
    hidden, weight, bias, target = make(rng, 30, 12, 25, np.float32)
    h_f = np.asfortranarray(hidden)
    w_big = np.zeros((25, 24), np.float32)
    w_big[:, ::2] = weight
    w_view = w_big[:, ::2]
    b_view = np.repeat(bias, 2)[::2]
    t_view = np.repeat(target, 2)[::2].astype(np.int32)
    before = [a.copy() for a in (h_f, w_big, b_view, t_view)]
    got = fs.linear_cross_entropy_with_grad(
        h_f, w_view, t_view, bias=b_view, chunk_size=7, backend=backend
    )
    want = fs.linear_cross_entropy_with_grad(
        hidden, weight, target, bias=bias, chunk_size=7, backend=backend
    )
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip((h_f, w_big, b_view, t_view), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_default_chunk_size_follows_the_budget():
    assert _linear.default_chunk_size(8192, 128256, 4) == _linear.CHUNK_BYTES // (128256 * 4)
    assert _linear.default_chunk_size(8192, 128256, 68) == _linear.CHUNK_BYTES // (128256 * 68)
    assert _linear.default_chunk_size(100, 10, 4) == 100  # everything fits in one chunk
    assert _linear.default_chunk_size(5, 2**40, 8) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_peak_memory_is_one_chunk_not_n_by_v(rng, backend):
    n, h, v, chunk = 2048, 8, 20000, 4
    hidden, weight, bias, target = make(rng, n, h, v, np.float32)
    fs.linear_cross_entropy_with_grad(hidden, weight, target, bias=bias, chunk_size=chunk)
    outputs = hidden.nbytes + weight.nbytes + bias.nbytes + n * 8
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        got = fs.linear_cross_entropy_with_grad(
            hidden, weight, target, bias=bias, chunk_size=chunk, backend=backend
        )
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    logits = n * v * 4
    # the chunk's logits (float32), plus the reference's float64 temporaries
    per_logit = 4 + getattr(fs._backends.load(backend), "XENT_WORKSPACE_BYTES", 0)
    chunk_bytes = chunk * v * per_logit
    accumulate = min(_linear.ACCUMULATE_BYTES, v * h * 4)
    assert peak - outputs <= chunk_bytes + accumulate + 64 * v + 2**16, (peak, outputs)
    assert peak - outputs < 0.1 * logits
    assert np.isfinite(got[0]) and got[1].shape == hidden.shape  # values: the tests above


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"hidden": np.zeros(4)}, ValueError, r"hidden must be 2-D \(N, H\)"),
        ({"weight": np.zeros(5, np.float32)}, ValueError, r"weight must be 2-D \(V, H\)"),
        ({"weight": np.zeros((5, 4), np.float32)}, ValueError, r"H = 3"),
        ({"weight": np.zeros((0, 3), np.float32)}, ValueError, r"V >= 1"),
        ({"weight": np.zeros((5, 3))}, TypeError, r"weight must have hidden's dtype float32"),
        ({"hidden": np.zeros((4, 3), np.int64)}, TypeError, r"hidden must be a floating"),
        ({"bias": np.zeros(4, np.float32)}, ValueError, r"bias must have shape \(V,\) = \(5,\)"),
        ({"bias": np.zeros(5)}, TypeError, r"bias must have hidden's dtype"),
        ({"target": np.array([0, 1, 9, 2])}, ValueError, r"target\[2\] = 9 is out of range"),
        ({"target": np.array([0, 1, 2])}, ValueError, r"target has 3 rows but logits has 4"),
        ({"target": np.zeros((4, 4), np.float32)}, ValueError, r"target of probabilities"),
        ({"class_weight": np.ones(4)}, ValueError, r"class_weight must have shape"),
        ({"chunk_size": 0}, ValueError, r"chunk_size must be >= 1, got 0"),
        ({"chunk_size": 2.5}, TypeError, r"chunk_size must be a positive integer"),
        ({"chunk_size": True}, TypeError, r"chunk_size must be a positive integer"),
        ({"reduction": "avg"}, ValueError, r"reduction must be one of"),
        ({"backend": "cupy"}, TypeError, r"backend 'cupy' needs CuPy arrays"),
    ],
)
def test_bad_input_names_the_argument(kwargs, error, match):
    args = {
        "hidden": np.zeros((4, 3), np.float32),
        "weight": np.zeros((5, 3), np.float32),
        "target": np.array([0, 1, 2, 3]),
    }
    args.update(kwargs)
    hidden, weight, target = args.pop("hidden"), args.pop("weight"), args.pop("target")
    with pytest.raises(error, match=match):
        fs.linear_cross_entropy_with_grad(hidden, weight, target, **args)
    with pytest.raises(error, match=match):
        fs.linear_cross_entropy(hidden, weight, target, **args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vocabulary_sized_rows_over_many_chunks(rng, backend):
    # V = 128256 (Llama 3) with an uneven last chunk; every chunk adds into dweight
    hidden, weight, bias, target = make(rng, 37, 16, 128256, np.float32)
    target[5] = -100
    got = fs.linear_cross_entropy_with_grad(
        hidden, weight, target, bias=bias, label_smoothing=0.05, chunk_size=8, backend=backend
    )
    want = unfused(hidden, weight, target, bias, label_smoothing=0.05)
    assert_matches(got, want, np.float32)


def test_cupy_arrays_get_a_clear_error_until_the_cupy_half_lands():
    fake_cupy_array = type("ndarray", (), {"__module__": "cupy"})()
    with pytest.raises(NotImplementedError, match="no CuPy backend yet"):
        fs.linear_cross_entropy_with_grad(fake_cupy_array, np.zeros((3, 2)), np.zeros(4, int))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", ["plain", "all"])
def test_matches_pytorch_linear_cross_entropy(rng, reduction, options):
    """A second oracle: PyTorch 2.13's F.linear_cross_entropy and autograd (when installed)."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    if not hasattr(F, "linear_cross_entropy"):
        pytest.skip("this PyTorch has no F.linear_cross_entropy")
    hidden, weight, bias, target = make(rng, 41, 10, 23, np.float64)
    kw, tkw = {}, {}
    if options == "all":
        target[::5] = 3
        cw = rng.uniform(0.2, 2.0, 23)
        kw = {"ignore_index": 3, "label_smoothing": 0.2, "class_weight": cw}
        tkw = {"ignore_index": 3, "label_smoothing": 0.2, "weight": torch.from_numpy(cw)}
    h = torch.from_numpy(hidden).requires_grad_()
    w = torch.from_numpy(weight).requires_grad_()
    b = torch.from_numpy(bias).requires_grad_()
    t_loss = F.linear_cross_entropy(
        h, w, torch.from_numpy(target), linear_bias=b, reduction=reduction, **tkw
    )
    t_loss.sum().backward()
    got = fs.linear_cross_entropy_with_grad(
        hidden, weight, target, bias=bias, reduction=reduction, chunk_size=8, **kw
    )
    want = (t_loss.detach().numpy(), h.grad.numpy(), w.grad.numpy(), b.grad.numpy())
    assert_matches(got, want, np.float64)
