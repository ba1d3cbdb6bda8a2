"""Behaviour of the public API: views, out=, inplace=, dtypes, axes, dispatch."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from conftest import backend_params, random_logits

import fastsoftmax as fs
from fastsoftmax import _backends

ALL = backend_params(kinds=("reference", "backend"))
SHAPES = [(64, 10), (9, 1000)]  # the small-C and the large-C kernel paths


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("shape", SHAPES)
def test_inputs_are_not_modified(impl, shape, rng):
    z = random_logits(rng, shape, np.float32)
    y = rng.integers(0, shape[1], shape[0])
    w = rng.random(shape[1])
    q = rng.random(shape).astype(np.float32)
    copies = [a.copy() for a in (z, y, w, q)]
    impl("cross_entropy_with_grad", z, y, weight=w, label_smoothing=0.1)
    impl("cross_entropy_with_grad", z, q, weight=w)
    impl("cross_entropy", z, y)
    for op in ("softmax", "log_softmax", "logsumexp"):
        impl(op, z)
    fs.softmax_backward(z, q, backend=impl.name)
    fs.log_softmax_backward(z, q, backend=impl.name)
    for a, b in zip((z, y, w, q), copies, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("shape", SHAPES)
def test_strided_views_give_exactly_the_contiguous_result(impl, shape, rng):
    n, c = shape
    big = random_logits(rng, (2 * n, 2 * c), np.float64).astype(np.float32)
    views = {
        "every-other": big[::2, ::2],
        "fortran": np.asfortranarray(big[:n, :c]),
        "reversed": big[n - 1 :: -1, c - 1 :: -1][:n, :c],
    }
    ys = rng.integers(0, c, 2 * n)
    y_view = ys[::2]
    for view in views.values():
        contiguous = np.ascontiguousarray(view)
        loss_v, grad_v = impl("cross_entropy_with_grad", view, y_view, label_smoothing=0.1)
        loss_c, grad_c = impl(
            "cross_entropy_with_grad", contiguous, y_view.copy(), label_smoothing=0.1
        )
        assert loss_v == loss_c
        np.testing.assert_array_equal(grad_v, grad_c)
        for op in ("softmax", "log_softmax", "logsumexp"):
            np.testing.assert_array_equal(impl(op, view), impl(op, contiguous))


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("shape", SHAPES)
def test_gradient_into_memory_the_kernel_reads(impl, shape, rng):
    """out= or inplace=True on memory that the call also reads besides the logits (the
    probability targets, the class weights): the result of the same call on separate
    arrays, not one computed from half-overwritten inputs."""
    n, c = shape
    z = random_logits(rng, shape, np.float32)
    q = rng.random(shape).astype(np.float32)
    q /= q.sum(axis=1, keepdims=True)
    y = rng.integers(0, c, n)
    w = rng.uniform(0.5, 2.0, c).astype(np.float32)
    for kw in ({}, {"label_smoothing": 0.1}):
        want = impl("cross_entropy_with_grad", z, q, **kw)
        t = q.copy()  # out= the targets
        got = impl("cross_entropy_with_grad", z, t, out=t, **kw)
        assert got[0] == want[0]
        np.testing.assert_array_equal(t, want[1])
        zz = z.copy()  # the logits as their own targets, in place
        self_want = impl("cross_entropy_with_grad", z, z.copy(), **kw)
        got = impl("cross_entropy_with_grad", zz, zz, inplace=True, **kw)
        assert got[0] == self_want[0]
        np.testing.assert_array_equal(zz, self_want[1])
    want = impl("cross_entropy_with_grad", z, y, weight=w)
    out = np.ones_like(z)  # the class weights in out's first row
    out[0] = w
    got = impl("cross_entropy_with_grad", z, y, weight=out[0], out=out)
    assert got[0] == want[0]
    np.testing.assert_array_equal(out, want[1])


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("shape", SHAPES)
def test_out_and_inplace(impl, shape, rng):
    z = random_logits(rng, shape, np.float32)
    y = rng.integers(0, shape[1], shape[0])
    loss, grad = impl("cross_entropy_with_grad", z, y)
    out = np.full_like(z, 7.0)
    loss_o, grad_o = impl("cross_entropy_with_grad", z, y, out=out)
    assert grad_o is out and loss_o == loss
    np.testing.assert_array_equal(out, grad)
    # a non-contiguous out is filled correctly too
    holder = np.zeros((shape[0], 2 * shape[1]), np.float32)
    impl("cross_entropy_with_grad", z, y, out=holder[:, ::2])
    np.testing.assert_array_equal(holder[:, ::2], grad)
    np.testing.assert_array_equal(holder[:, 1::2], 0.0)
    # out=logits is in-place
    z2 = z.copy()
    loss_a, grad_a = impl("cross_entropy_with_grad", z2, y, out=z2)
    assert grad_a is z2 and loss_a == loss
    np.testing.assert_array_equal(z2, grad)
    # inplace=True overwrites logits and returns them
    z3 = z.copy()
    loss_i, grad_i = impl("cross_entropy_with_grad", z3, y, inplace=True)
    assert grad_i is z3 and loss_i == loss
    np.testing.assert_array_equal(z3, grad)
    # inplace on a strided view writes through to the base array
    base = np.zeros((shape[0], 2 * shape[1]), np.float32)
    base[:, ::2] = z
    impl("cross_entropy_with_grad", base[:, ::2], y, inplace=True)
    np.testing.assert_array_equal(base[:, ::2], grad)
    # an out overlapping logits without being it is computed via a temporary
    zz = np.concatenate([z, z], axis=1)
    _, g_overlap = impl("cross_entropy_with_grad", zz[:, : shape[1]], y, out=zz[:, shape[1] :])
    np.testing.assert_array_equal(g_overlap, grad)
    # softmax in place
    s = z.copy()
    assert impl("softmax", s, out=s) is s
    np.testing.assert_array_equal(s, impl("softmax", z))


@pytest.mark.parametrize("impl", ALL)
def test_float16_computes_in_float32(impl, rng):
    z16 = random_logits(rng, (50, 10), np.float16)
    y = rng.integers(0, 10, 50)
    loss, grad = impl("cross_entropy_with_grad", z16, y)
    assert np.asarray(loss).dtype == np.float16 and grad.dtype == np.float16
    loss32, grad32 = impl("cross_entropy_with_grad", z16.astype(np.float32), y)
    np.testing.assert_allclose(loss, loss32, rtol=1e-3)
    np.testing.assert_allclose(grad, grad32.astype(np.float16), rtol=1e-3, atol=1e-6)
    assert impl("softmax", z16).dtype == np.float16


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("axis", [0, 1, -1, -3])
def test_softmax_axes(impl, axis, rng):
    x = rng.standard_normal((4, 5, 6)) * 3
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    expected = e / e.sum(axis=axis, keepdims=True)
    np.testing.assert_allclose(impl("softmax", x, axis=axis), expected, rtol=1e-12)
    np.testing.assert_allclose(
        impl("log_softmax", x, axis=axis), np.log(expected), rtol=1e-12, atol=1e-14
    )
    lse = np.log(np.exp(x).sum(axis=axis))
    np.testing.assert_allclose(impl("logsumexp", x, axis=axis), lse, rtol=1e-12)
    kept = fs.logsumexp(x, axis=axis, keepdims=True, backend=impl.name)
    assert kept.shape == np.expand_dims(lse, axis).shape
    out = np.empty_like(x)
    assert fs.softmax(x, axis=axis, out=out, backend=impl.name) is out
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    g = rng.standard_normal(x.shape)
    vjp = fs.softmax_backward(expected, g, axis=axis, backend=impl.name)
    np.testing.assert_allclose(
        vjp, expected * (g - (g * expected).sum(axis=axis, keepdims=True)), atol=1e-14
    )


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(64, 10), (3, 1000), (0, 5), (5, 0)])
def test_plain_rows_take_the_short_way_with_the_same_result(impl, dtype, shape, rng):
    """softmax and log_softmax of a C-contiguous (N, C) array along its last axis skip
    the general reshaping: a new array holding the general path's bits (the same
    kernel on the same rows), here the rows of a (N, C, 1) array along axis 1 and of
    the same array with out= (both the general path)."""
    x = random_logits(rng, shape, dtype)
    frozen = x.copy()
    for op in ("softmax", "log_softmax"):
        for axis in (-1, 1):
            res = impl(op, x, axis=axis)
            assert type(res) is np.ndarray and res.dtype == dtype and res.shape == shape
            assert not np.may_share_memory(res, x)
            general = impl(op, x[:, :, None], axis=1)[:, :, 0]
            np.testing.assert_array_equal(res, general)
            out = np.full_like(x, np.nan)
            getattr(fs, op)(x, axis=axis, out=out, backend=impl.name)
            np.testing.assert_array_equal(res, out)
    np.testing.assert_array_equal(x, frozen)


def _read_only(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(64, 10), (3000, 10), (8, 1000)])  # lean/tiles, rows
def test_read_only_inputs(impl, dtype, shape, rng):
    """Read-only arrays (np.load(mmap_mode="r"), broadcasts, other libraries' buffers)
    are read like any others: every op's result equals that of writable copies.  A
    read-only float32 logits array with a gradient to compute was a Numba typing error
    on the small-C path."""
    n, c = shape
    arrays = {
        "z": (rng.standard_normal(shape) * 3).astype(dtype),
        "y": rng.integers(0, c, n),
        "w": rng.random(c).astype(dtype),
        "q": rng.random(shape).astype(dtype),
    }
    frozen = {k: _read_only(v) for k, v in arrays.items()}
    calls = [
        ("cross_entropy", ("z", "y"), {}),
        ("cross_entropy_with_grad", ("z", "y"), {}),
        ("cross_entropy_with_grad", ("z", "y"), {"reduction": "none"}),
        ("cross_entropy_with_grad", ("z", "y"), {"label_smoothing": 0.1, "weight": "w"}),
        ("cross_entropy_with_grad", ("z", "q"), {"weight": "w"}),
        ("softmax", ("z",), {}),
        ("log_softmax", ("z",), {}),
        ("logsumexp", ("z",), {}),
    ]

    def run(source, op, args, kw):
        got = impl(op, *(source[a] for a in args), **{k: source.get(v, v) for k, v in kw.items()})
        return got if isinstance(got, tuple) else (got,)

    for op, args, kw in calls:
        got, want = run(frozen, op, args, kw), run(arrays, op, args, kw)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w, err_msg=f"{op} {kw}")
    for op in ("softmax_backward", "log_softmax_backward"):
        got = getattr(fs, op)(frozen["z"], frozen["q"], backend=impl.name)
        np.testing.assert_array_equal(
            got, getattr(fs, op)(arrays["z"], arrays["q"], backend=impl.name)
        )


@pytest.mark.parametrize("shape", [(6, 5), (3000, 10), (8, 1000)])
def test_gradient_written_over_class_indices_reads_them_first(shape, rng):
    """An out= (or logits, with inplace=True) whose memory also holds the int64 class
    indices: the targets are read as they were (copied first), not as the gradient
    written over them, which read as indices out of range after the check (a crash).
    Oracle: the same call on separate copies."""
    n, c = shape
    z = rng.standard_normal(shape)
    y = rng.integers(0, c, n)
    want_loss, want_grad = fs.cross_entropy_with_grad(z, y)
    # out= over a float64 buffer whose first n items are the targets' int64s
    buf = np.zeros(n * c + n)
    out = buf[: n * c].reshape(n, c)
    y_in_out = buf.view(np.int64)[:n]
    y_in_out[:] = y
    loss, grad = fs.cross_entropy_with_grad(z, y_in_out, out=out)
    assert grad is out and loss == want_loss
    np.testing.assert_array_equal(out, want_grad)
    # inplace=True (and out=logits) with the targets inside the logits' memory
    for kw in ({"inplace": True}, {"out": "logits"}):
        zbuf = np.zeros(n * c + n)
        logits = zbuf[n:].reshape(n, c)
        logits[...] = z
        y_in_z = zbuf.view(np.int64)[n : 2 * n]  # the logits' first n items
        targets = np.array(y_in_z)  # what those bits read as, as class indices
        if targets.min() < 0 or targets.max() >= c:
            targets = rng.integers(0, c, n)
            y_in_z[:] = targets
        expect_loss, expect_grad = fs.cross_entropy_with_grad(logits.copy(), targets)
        args = {"inplace": True} if "inplace" in kw else {"out": logits}
        loss, grad = fs.cross_entropy_with_grad(logits, y_in_z, **args)
        assert grad is logits and loss == expect_loss
        np.testing.assert_array_equal(logits, expect_grad)


@pytest.mark.parametrize("impl", ALL)
def test_empty_inputs(impl):
    assert impl("softmax", np.zeros((0, 5))).shape == (0, 5)
    assert impl("softmax", np.zeros((3, 0))).shape == (3, 0)
    np.testing.assert_array_equal(impl("logsumexp", np.zeros((3, 0))), [-np.inf] * 3)
    loss, grad = impl("cross_entropy_with_grad", np.zeros((0, 4)), np.zeros(0, int))
    assert loss == 0.0 and grad.shape == (0, 4)
    assert impl("cross_entropy", np.zeros((0, 4)), np.zeros(0, int), reduction="none").shape == (0,)


@pytest.mark.parametrize("impl", ALL)
def test_target_dtypes_and_python_lists(impl, rng):
    z = random_logits(rng, (30, 7), np.float64)
    y = rng.integers(0, 7, 30)
    expected = impl("cross_entropy_with_grad", z, y)
    for dt in (np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.uint64):
        loss, grad = impl("cross_entropy_with_grad", z, y.astype(dt))
        assert loss == expected[0]
        np.testing.assert_array_equal(grad, expected[1])
    loss, grad = impl("cross_entropy_with_grad", z.tolist(), y.tolist())
    assert loss == expected[0]


@pytest.mark.parametrize("impl", ALL)
def test_reductions_shapes_and_all_ignored(impl, rng):
    z = random_logits(rng, (6, 4), np.float32)
    y = np.array([0, 1, 2, 3, 0, 1])
    none = impl("cross_entropy", z, y, reduction="none")
    assert none.shape == (6,) and none.dtype == np.float32
    assert isinstance(impl("cross_entropy", z, y), np.float32)
    np.testing.assert_allclose(impl("cross_entropy", z, y, reduction="sum"), none.sum(), rtol=1e-6)
    np.testing.assert_allclose(impl("cross_entropy", z, y), none.mean(), rtol=1e-6)
    # every target ignored: 0 and a zero gradient for "mean" (PyTorch gives NaN)
    loss, grad = impl("cross_entropy_with_grad", z, np.full(6, -100))
    assert loss == 0.0 and np.all(grad == 0)
    loss, grad = impl("cross_entropy_with_grad", z, np.full(6, -100), reduction="sum")
    assert loss == 0.0 and np.all(grad == 0)


@pytest.mark.parametrize("impl", ALL)
def test_ignore_index_inside_the_class_range(impl, rng):
    z = random_logits(rng, (8, 5), np.float64)
    y = np.array([0, 1, 2, 3, 4, 1, 1, 0])
    loss, grad = impl("cross_entropy_with_grad", z, y, ignore_index=1)
    keep = y != 1
    ref_loss, ref_grad = fs.cross_entropy_with_grad(z[keep], y[keep], backend="numpy")
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(grad[keep], ref_grad, rtol=1e-12, atol=1e-15)
    assert np.all(grad[~keep] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 40), (2, 33), (9, 1000), (5, 3000), (40, 3000)])
def test_large_c_look_ahead_keeps_each_rows_bits(dtype, shape, rng):
    """The large-C kernels take row i + 1's max inside row i's pass over row i: the
    results must be those of each row computed alone, and those of the in-place mode
    (whose exp pass stands alone), bit for bit, with ignored rows (first, consecutive,
    last), masked and huge logits, a NaN row, probability targets, smoothing and
    weights, on one thread and on all of them."""
    n, c = shape
    z = random_logits(rng, shape, dtype)
    z[0, :3] = -np.inf
    z[-1, -1] = 1e4
    if n > 3:
        z[2, 7] = np.nan
    y = rng.integers(0, c, n)
    y[0] = -100
    y[n // 2 : n // 2 + 2] = -100
    y[-1] = -100 if n > 2 else y[-1]
    q = rng.random(shape).astype(dtype)
    q /= q.sum(axis=1, keepdims=True)
    w = rng.random(c).astype(dtype)
    threads = numba.get_num_threads()
    try:
        for nt in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(nt)
            for target, kw in [(y, {}), (y, {"label_smoothing": 0.1, "weight": w}), (q, {})]:
                loss, grad = fs.cross_entropy_with_grad(z, target, backend="numba", **kw)
                z_in = z.copy()
                loss_in, _ = fs.cross_entropy_with_grad(z_in, target, inplace=True, **kw)
                assert loss == loss_in or (np.isnan(loss) and np.isnan(loss_in))
                np.testing.assert_array_equal(grad, z_in)
            s = z.copy()
            fs.softmax(s, out=s)
            np.testing.assert_array_equal(fs.softmax(z, backend="numba"), s)
    finally:
        numba.set_num_threads(threads)
    if z.size > 16384:  # the parallel kernel: its sums may round unlike the serial one's
        return
    # each row alone (no look-ahead): the same rows, bit for bit ("sum": scale 1)
    for target, kw in [(y, {}), (y, {"label_smoothing": 0.1, "weight": w}), (q, {})]:
        rows, grad = fs.cross_entropy_with_grad(z, target, reduction="none", **kw)
        _, grad_sum = fs.cross_entropy_with_grad(z, target, reduction="sum", **kw)
        for i in range(n):
            row, g_row = fs.cross_entropy_with_grad(
                z[i : i + 1], target[i : i + 1], reduction="sum", **kw
            )
            np.testing.assert_array_equal(rows[i], row)
            np.testing.assert_array_equal(grad_sum[i], g_row[0])
    for op in ("softmax", "log_softmax", "logsumexp"):
        whole = getattr(fs, op)(z, axis=1)
        for i in range(n):
            np.testing.assert_array_equal(whole[i], getattr(fs, op)(z[i : i + 1], axis=1)[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(64, 10), (3, 2), (50, 40), (4, 3000)])  # tiles, rows
@pytest.mark.parametrize("mean", [True, False])
def test_small_index_call_is_one_kernel_call_with_the_public_bits(dtype, shape, mean, rng):
    """fastsoftmax.torch's minibatch path (_api.cross_entropy_index_rows): one call of
    the Numba backend's xent_index_minibatch (target check, kernel and reduction), with
    the public function's loss and gradient bit for bit, ignored rows, an all-ignored
    batch and the loss alone too; a bad target is an error naming its row."""
    from fastsoftmax import _api
    from fastsoftmax import _numba as nb

    z = random_logits(rng, shape, dtype)
    y = rng.integers(0, shape[1], shape[0])
    y[::3] = -100
    red = "mean" if mean else "sum"
    calls = []
    real = nb.xent_index_minibatch
    try:
        nb.xent_index_minibatch = lambda *a: calls.append(1) or real(*a)
        g = np.empty_like(z)
        loss = _api.cross_entropy_index_rows(z, y, mean, -100, g)
        loss_alone = _api.cross_entropy_index_rows(z, y, mean, -100, None)
        g_ignored = np.full_like(z, np.nan)
        ignored = _api.cross_entropy_index_rows(z, np.full_like(y, -100), mean, -100, g_ignored)
        bad = y.copy()
        bad[-1] = shape[1]
        g_bad = np.full_like(z, 7.0)
        message = rf"target\[{shape[0] - 1}\] = {shape[1]} is out of range"
        with pytest.raises(ValueError, match=message):
            _api.cross_entropy_index_rows(z, bad, mean, -100, g_bad)
    finally:
        nb.xent_index_minibatch = real
    assert len(calls) == 4
    with _general_path_only():
        ref_loss, ref_grad = fs.cross_entropy_with_grad(z, y, reduction=red, backend="numba")
    assert type(loss) is type(ref_loss) and loss == ref_loss and loss_alone == ref_loss
    np.testing.assert_array_equal(g, ref_grad)
    assert ignored == 0.0 and np.all(g_ignored == 0)
    assert np.all(g_bad == 7.0)  # nothing written
    # the NumPy backend has no such kernel: the general route, the reference's result
    with fs.use_backend("numpy"):
        g_np = np.empty_like(z)
        loss_np = _api.cross_entropy_index_rows(z, y, mean, -100, g_np)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss_np, ref_loss, rtol=tol)
    np.testing.assert_allclose(g_np, ref_grad, rtol=tol, atol=tol * np.abs(ref_grad).max())


@contextlib.contextmanager
def _general_path_only():
    """The public cross-entropy without its short way for plain calls
    (_api._plain_call): option handling, target_stats, xent_index, reduction."""
    from fastsoftmax import _api

    real = _api._plain_call
    _api._plain_call = lambda *a: None
    try:
        yield
    finally:
        _api._plain_call = real


def _lean_calls(monkeypatch) -> list:
    """Records each call that _api._plain_call served (returned a result for)."""
    from fastsoftmax import _api

    calls = []
    real = _api._plain_call

    def spy(*args):
        done = real(*args)
        if done is not None:
            calls.append(1)
        return done

    monkeypatch.setattr(_api, "_plain_call", spy)
    return calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape", [(64, 10), (1, 1), (7, 2), (50, 33), (4, 3000), (1638, 10), (5000, 10), (40, 3000)]
)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_plain_call_skips_the_option_handling_with_the_general_bits(
    dtype, shape, reduction, rng, monkeypatch
):
    """A plain call of the public cross-entropy (class indices of an integer dtype
    other than uint64, no weights or smoothing, "mean"/"sum", C-contiguous float32/64
    logits) goes straight to the backend's target_stats and xent_index (_plain_call),
    with the general path's loss and gradient bit for bit: a new gradient,
    inplace=True, out=logits, a separate out=, the loss alone; ignored rows; targets of
    int8/uint8/int32/strided int64; the serial and the parallel kernels."""
    n, c = shape
    z = random_logits(rng, shape, dtype)
    y = rng.integers(0, c, n)
    y[::4] = -100 if c < 128 else 0
    ignore = -100 if c < 128 else 0
    calls = _lean_calls(monkeypatch)
    kw = {"reduction": reduction, "ignore_index": ignore}
    with _general_path_only():
        ref_loss, ref_grad = fs.cross_entropy_with_grad(z, y, **kw)
        ref_alone = fs.cross_entropy(z, y, **kw)
    assert not calls
    loss, grad = fs.cross_entropy_with_grad(z, y, **kw)
    assert type(loss) is type(ref_loss) and loss == ref_loss
    np.testing.assert_array_equal(grad, ref_grad)
    alone = fs.cross_entropy(z, y, **kw)
    assert type(alone) is type(ref_alone) and alone == ref_alone
    out = np.full_like(z, np.nan)
    loss_out, got = fs.cross_entropy_with_grad(z, y, out=out, **kw)
    assert got is out and loss_out == ref_loss
    np.testing.assert_array_equal(out, ref_grad)
    zi = z.copy()
    loss_in, got = fs.cross_entropy_with_grad(zi, y, inplace=True, **kw)
    assert got is zi and loss_in == ref_loss
    np.testing.assert_array_equal(zi, ref_grad)
    zo = z.copy()
    loss_self, got = fs.cross_entropy_with_grad(zo, y, out=zo, **kw)
    assert got is zo and loss_self == ref_loss
    np.testing.assert_array_equal(zo, ref_grad)
    assert len(calls) == 5
    if c < 128:
        for t in (y.astype(np.int8), y.astype(np.int32), np.repeat(y, 2)[::2]):
            loss_t, grad_t = fs.cross_entropy_with_grad(z, t, **kw)
            assert loss_t == ref_loss
            np.testing.assert_array_equal(grad_t, ref_grad)
        y8 = np.where(y < 0, 255, y).astype(np.uint8)
        loss_u, grad_u = fs.cross_entropy_with_grad(z, y8, reduction=reduction, ignore_index=255)
        assert loss_u == ref_loss
        np.testing.assert_array_equal(grad_u, ref_grad)
        assert len(calls) == 9


def test_plain_call_declines_what_it_does_not_serve(rng, monkeypatch):
    """Everything but the plain call goes the general way (which checks and runs it):
    weights, smoothing, "none", float16, uint64 or probability targets, strided logits,
    an out= overlapping an input; and its errors are the general path's (a bad target
    names its row and value, and nothing is written)."""
    z = random_logits(rng, (64, 10), np.float32)
    y = rng.integers(0, 10, 64)
    calls = _lean_calls(monkeypatch)
    cases = [
        lambda: fs.cross_entropy_with_grad(z, y, weight=np.ones(10)),
        lambda: fs.cross_entropy_with_grad(z, y, label_smoothing=0.1),
        lambda: fs.cross_entropy_with_grad(z, y, reduction="none"),
        lambda: fs.cross_entropy_with_grad(z.astype(np.float16), y),
        lambda: fs.cross_entropy_with_grad(z, y.astype(np.uint64)),
        lambda: fs.cross_entropy_with_grad(z, rng.random((64, 10)).astype(np.float32)),
        lambda: fs.cross_entropy_with_grad(np.asfortranarray(z), y),
        lambda: fs.cross_entropy_with_grad(z, y, out=np.empty((64, 20), np.float32)[:, :10]),
    ]
    for case in cases:
        case()
    buf = np.zeros((2, 64, 10), np.float32)
    buf[0] = z
    fs.cross_entropy_with_grad(buf[0], y, out=buf.reshape(-1)[5 : 5 + 640].reshape(64, 10))
    assert not calls
    bad = y.astype(np.int32)
    bad[17] = 12
    g = np.full_like(z, 7.0)
    zi = z.copy()
    for call in (
        lambda: fs.cross_entropy_with_grad(z, bad),
        lambda: fs.cross_entropy_with_grad(z, bad, out=g),
        lambda: fs.cross_entropy_with_grad(zi, bad, inplace=True),
    ):
        with pytest.raises(ValueError, match=r"target\[17\] = 12 is out of range for 10 classes"):
            call()
    assert np.all(g == 7.0) and np.array_equal(zi, z)  # nothing written
    frozen = z.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fs.cross_entropy_with_grad(frozen, y, inplace=True)
    with pytest.raises(TypeError, match="inplace must be True or False"):
        fs.cross_entropy_with_grad(z, y, inplace=1)


@pytest.mark.parametrize("shape", [*SHAPES, (5000, 10), (40, 3000)])
def test_numba_results_do_not_depend_on_thread_count(shape, rng):
    z = random_logits(rng, shape, np.float32)
    y = rng.integers(0, shape[1], shape[0])
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = fs.cross_entropy_with_grad(z, y, reduction="sum", backend="numba")
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = fs.cross_entropy_with_grad(z, y, reduction="sum", backend="numba")
    finally:
        numba.set_num_threads(threads)
    assert one[0] == many[0]
    np.testing.assert_array_equal(one[1], many[1])


def test_dispatch_and_use_backend(monkeypatch, rng):
    z = random_logits(rng, (5, 3), np.float64)
    y = np.array([0, 1, 2, 0, 1])
    calls = []
    ref = _backends.load("numpy")
    monkeypatch.setattr(ref, "xent_index", _spy(ref.xent_index, calls, "numpy"))
    numba_mod = _backends.load("numba")
    monkeypatch.setattr(numba_mod, "xent_index", _spy(numba_mod.xent_index, calls, "numba"))
    fs.cross_entropy(z, y)  # auto: numba is installed here
    with fs.use_backend("numpy"):
        fs.cross_entropy(z, y)
        fs.cross_entropy(z, y, backend="numba")  # an explicit argument wins
        with fs.use_backend("auto"):
            fs.cross_entropy(z, y)
    fs.cross_entropy(z, y)
    assert calls == ["numba", "numpy", "numba", "numba", "numba"]
    assert fs.available_backends()[:2] == ["numpy", "numba"]


def _spy(fn, calls, name):
    def spy(*args, **kwargs):
        calls.append(name)
        return fn(*args, **kwargs)

    return spy


def test_missing_backend_dependency_names_the_extra(monkeypatch):
    monkeypatch.setitem(_backends._REGISTRY, "numba", ("fastsoftmax._numba_missing_dep", "numba"))
    monkeypatch.delitem(_backends._loaded, "numba", raising=False)
    import sys

    monkeypatch.setitem(sys.modules, "fastsoftmax._numba_missing_dep", None)
    with pytest.raises(fs.BackendUnavailableError, match="not part of this version"):
        fs.cross_entropy(np.zeros((2, 2)), np.zeros(2, int), backend="numba")


def test_auto_falls_back_to_numpy_without_numba(monkeypatch):
    import sys

    monkeypatch.delitem(_backends._loaded, "numba", raising=False)
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba now fails
    monkeypatch.setitem(sys.modules, "fastsoftmax._numba", None)
    assert _backends.default_cpu_backend().name == "numpy"
    with pytest.raises(fs.BackendUnavailableError, match=r"pip install 'numba'|not part"):
        _backends.load("numba")
    monkeypatch.delitem(_backends._loaded, "numba", raising=False)


def test_import_needs_only_numpy():
    """numba is imported on first use of its backend, not by `import fastsoftmax`."""
    import subprocess
    import sys

    code = "import sys, fastsoftmax; assert 'numba' not in sys.modules, 'numba imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_out_is_x_runs_in_place(shape, rng, monkeypatch):
    """out=x is computed in x's memory (no temporary and copy), and right."""
    x = random_logits(rng, shape, np.float32)
    expected = fs.softmax(x, backend="numba")
    copies = []
    real_copyto = np.copyto
    monkeypatch.setattr(np, "copyto", lambda *a, **k: copies.append(1) or real_copyto(*a, **k))
    assert fs.softmax(x, out=x, backend="numba") is x
    assert copies == []
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize(
    ("user_env", "expected"),
    [
        ({}, "10000"),  # the default: a short spin
        ({"GOMP_SPINCOUNT": "5"}, "5"),  # the user's choice wins
        ({"OMP_WAIT_POLICY": "active"}, None),  # a chosen policy is left alone
    ],
)
def test_numba_backend_sets_a_short_openmp_spin_unless_the_user_chose(user_env, expected):
    # libgomp reads its spin count when Numba first loads it; the backend must set it
    # before that (see fastsoftmax/_numba/__init__.py for the measurements).  256 x 100
    # logits: above the serial cut-off, on the row path, which always runs in parallel.
    code = (
        "import os, numpy as np, fastsoftmax as fs\n"
        "fs.cross_entropy_with_grad(np.zeros((256, 100), np.float32), np.zeros(256, int))\n"
        "import numba.np.ufunc.parallel as p\n"
        "print(os.environ.get('GOMP_SPINCOUNT'), p._is_initialized)\n"
    )
    # compiled here first (the suite needs this kernel anyway): the child processes then
    # load it from Numba's cache instead of each compiling it (~6 s)
    fs.cross_entropy_with_grad(np.zeros((256, 100), np.float32), np.zeros(256, int))
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(user_env)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [str(expected), "True"]
