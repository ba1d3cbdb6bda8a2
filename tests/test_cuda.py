"""The CUDA backend.  Without CuPy or a GPU only the parts that need neither run (the
kernels shipped in the wheel, the loader's lookups, the launch rule and the argument
checks); the parity tests skip with the reason."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import TOLERANCES

from fastsoftmax._cupy import _loader, _sgd_plan
from fastsoftmax.implementations import get

ROOT = Path(__file__).resolve().parents[1]
KERNEL_FILES = sorted(p.name for p in (ROOT / "kernels").glob("*.cu"))


def _gpu_reason() -> str | None:
    # the implementations table already knows whether CuPy can use a GPU here
    return get("cupy-reference").unavailable()


GPU = pytest.mark.skipif(_gpu_reason() is not None, reason=str(_gpu_reason()))


# ------------------------------------------------------------- no GPU needed
@pytest.mark.full  # builds a wheel with pip (~3-5 s)
def test_every_kernel_file_is_in_the_wheel(tmp_path):
    assert KERNEL_FILES, "kernels/ holds no .cu file"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("fastsoftmax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in KERNEL_FILES:
        assert f"fastsoftmax/_kernels/{name}" in names, name


def test_loader_reads_the_shipped_sources():
    sources = _loader.kernel_sources()
    assert sorted(sources) == KERNEL_FILES
    for name, text in sources.items():
        assert text == (ROOT / "kernels" / name).read_text(encoding="utf-8")


def _ptx(file: str, tmp_path) -> str:
    """kernels/`file` compiled by nvcc to PTX for sm_80 (as CI compiles it)."""
    ptx = tmp_path / f"{file}.ptx"
    done = subprocess.run(
        ["nvcc", "-std=c++17", "-arch=sm_80", "--ptx", "-o", str(ptx),
         str(ROOT / "kernels" / file)],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return ptx.read_text()


@pytest.mark.full  # nvcc compiles both files to PTX (~5 s)
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_every_entry_point_the_loader_looks_up_is_exported(tmp_path):
    """Compile each file to PTX (as CI does for sm_80 and sm_90) and find every
    f"{op}_{dtype}" symbol the loader asks for among its extern "C" entries."""
    for file in sorted(set(_loader.FILES.values())):
        entries = set(re.findall(r"\.entry\s+(\w+)\(", _ptx(file, tmp_path)))
        for op, f in _loader.FILES.items():
            if f == file:
                for dt in _loader.DTYPES:
                    assert _loader.kernel_name(op, dt) in entries, (file, op, dt)


# PTX parameter types by the kinds of _loader.SIGNATURES ("p" and "i" are both 64-bit)
_PTX_KINDS = {"u64": {"p", "i"}, "s64": {"p", "i"}, "b64": {"p", "i"}, "f64": {"d"},
              "u32": {"i32"}, "s32": {"i32"}, "b32": {"i32"}}  # fmt: skip


def _signature_of(entry: str) -> str:
    """The SIGNATURES key of an entry point: its name without the dtype suffixes."""
    return re.sub(r"(_(uint8|float16|float32|float64))+$", "", entry)


@pytest.mark.full  # nvcc compiles every file to PTX (~10 s)
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_host_signatures_match_every_kernel(tmp_path):
    """Every extern "C" entry of kernels/*.cu has a row in _loader.SIGNATURES, and the
    row has the entry's parameters in number and type: the tuple a host builds is
    checked against that row (CHECK_ARGS), so the host and the kernel cannot drift."""
    seen = set()
    for file in KERNEL_FILES:
        for entry, params in re.findall(r"\.entry\s+(\w+)\(([^)]*)\)", _ptx(file, tmp_path)):
            key = _signature_of(entry)
            assert key in _loader.SIGNATURES, f"{entry} ({file}) has no host signature"
            types = re.findall(r"\.param\s+\.(\w+)", params)
            want = _loader.SIGNATURES[key]
            assert len(types) == len(want), (entry, types, want)
            for i, (t, k) in enumerate(zip(types, want, strict=True)):
                assert k in _PTX_KINDS[t], (entry, i, t, k)
            seen.add(key)
    assert seen == set(_loader.SIGNATURES)


def test_launch_arguments_are_checked_against_the_signature():
    args = (np.uint64(0), np.uint64(0), np.int64(3), np.int64(4))
    assert _loader.arg_kinds(args) == ("p", "p", "i", "i")
    _loader.check_args("softmax", args)
    with pytest.raises(TypeError, match="softmax: host arguments"):
        _loader.check_args("softmax", args[:3])
    with pytest.raises(TypeError, match="do not match"):
        _loader.check_args("softmax", (*args[:2], 3, np.int64(4)))  # a Python int: "?"


def test_a_checkout_that_was_never_installed_reads_the_repositorys_kernels(monkeypatch, tmp_path):
    # PYTHONPATH=. on a machine where pip cannot install (an offline GPU box): the
    # resource package fastsoftmax._kernels does not exist, kernels/ does
    monkeypatch.setattr(_loader, "KERNEL_PACKAGE", "fastsoftmax._no_such_kernels")
    monkeypatch.setattr(_loader, "CHECKOUT_KERNELS", ROOT / "kernels")
    assert Path(str(_loader.kernel_root())) == ROOT / "kernels"
    assert sorted(_loader.kernel_sources()) == KERNEL_FILES
    # an installed package without its resource package and no checkout: the import error
    monkeypatch.setattr(_loader, "CHECKOUT_KERNELS", tmp_path)
    with pytest.raises(ModuleNotFoundError, match="_no_such_kernels"):
        _loader.kernel_root()


@pytest.mark.parametrize(
    ("x_dtype", "w_dtype", "d", "stage", "want"),
    [
        # MNIST, float32 weights: logits 2.5 KB + rows 1 KB + weights 31 KB, under 48 KB
        ("uint8", "float32", 784, False, (34944, True, False)),
        # rows staged: + 64 x 784 bytes at the next 16-byte boundary
        ("uint8", "float32", 784, True, (34944 + 50176, True, True)),
        # float32 rows: 200 KB more would pass the device's 227 KB: not staged
        ("float32", "float32", 784, True, (34944, True, False)),
        # a row of 783 bytes is not whole 16-byte vectors: not staged
        ("uint8", "float32", 783, True, (3584 + 31320, True, False)),
        # float64 weights (63 KB) stay in global memory
        ("uint8", "float64", 784, True, (6144 + 50176, False, True)),
    ],
)
def test_sgd_launch_shared_memory(monkeypatch, x_dtype, w_dtype, d, stage, want):
    from fastsoftmax.reference import StepData, StepParams, StepPlan

    monkeypatch.setattr(_sgd_plan, "STAGE_ROWS", stage)
    X, W = np.zeros((100, d), x_dtype), np.zeros((10, d), w_dtype)
    assert _sgd_plan.shared_memory(X, W, 64, 256, 232448) == want
    b = np.zeros(10, w_dtype)
    params = StepParams(W, b, np.zeros_like(W), np.zeros_like(b))
    data = StepData(X, np.zeros(100, np.int64), 1.0)
    assert _sgd_plan.fits_one_launch(data, params, StepPlan(np.arange(100), 64, 0.1))
    wide = StepParams(*(np.zeros((129, d), w_dtype) if i % 2 == 0 else np.zeros(129, w_dtype)
                        for i in range(4)))  # fmt: skip
    assert not _sgd_plan.fits_one_launch(data, wide, StepPlan(np.arange(100), 64, 0.1))
    assert not _sgd_plan.fits_one_launch(data._replace(X=X[:, ::2]), params,
                                         StepPlan(np.arange(100), 64, 0.1))  # fmt: skip


def test_kernel_names_by_dtype():
    assert _loader.kernel_name("xent_fused", np.float32) == "xent_fused_float32"
    assert _loader.kernel_name("softmax", "float16") == "softmax_float16"
    with pytest.raises(TypeError, match="int32"):
        _loader.kernel_name("softmax", np.int32)
    with pytest.raises(ValueError, match="no CUDA kernel"):
        _loader.kernel_name("bogus", np.float32)


@pytest.mark.parametrize(
    ("c", "rows"), [(1, 256), (4, 256), (5, 128), (10, 64), (16, 64), (17, 32), (100, 8),
                    (128, 8), (129, 8), (1024, 8), (1025, 1), (256000, 1)]
)  # fmt: skip
def test_launch_rule_gives_each_row_a_team(c, rows):
    """kernels/README.md: a group of G = pow2ceil(ceil(C/4)) lanes per row up to C = 128
    (256 // G rows per block), a warp per row up to 1024, a block per row above."""
    assert _loader.rows_per_block(c) == rows
    for n in (1, rows, rows + 1, 10**6):
        (blocks, y, z) = _loader.grid_for(n, c)
        assert (y, z) == (1, 1)
        assert (blocks - 1) * rows < n <= blocks * rows
    assert _loader.grid_for(2**40, c)[0] == 2**31 - 1  # capped: the kernels are grid-stride


def test_argument_checks_refuse_what_a_raw_kernel_would_misread():
    """RawKernel takes a raw pointer: a float64 array passed as float*, or a strided view,
    would give wrong numbers silently.  NumPy arrays stand in for CuPy ones (the check
    reads only dtype, shape and strides)."""
    x = np.zeros((4, 6), np.float32)
    _loader.check_device_array(x, "x", np.float32, (4, 6))
    with pytest.raises(TypeError, match=r"x must be float32.*float64"):
        _loader.check_device_array(x.astype(np.float64), "x", np.float32, (4, 6))
    with pytest.raises(ValueError, match="C-contiguous"):
        _loader.check_device_array(x[:, ::2], "x", np.float32, (4, 3))
    with pytest.raises(ValueError, match="C-contiguous"):
        _loader.check_device_array(np.zeros((6, 4), np.float32).T, "x", np.float32, (4, 6))
    with pytest.raises(ValueError, match="shape"):
        _loader.check_device_array(x, "x", np.float32, (4, 7))
    # a single row or column has no stride to get wrong
    _loader.check_device_array(np.zeros((1, 6), np.float32)[:, :], "x", np.float32, (1, 6))


def test_cupy_backend_missing_names_the_extra():
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed")
    import fastsoftmax as fs
    from fastsoftmax._backends import load

    with pytest.raises(fs.BackendUnavailableError, match=r"fastsoftmax\[cuda\]"):
        load("cupy")
    assert "cupy" not in fs.available_backends()


# ------------------------------------------------------------- on a GPU
@pytest.fixture(params=[False, True], ids=["host-denominator", "lean"])
def lean(request, monkeypatch):
    """Both ways a class-index call can run (fastsoftmax._cupy.api.LEAN_INDEX_PATH)."""
    from fastsoftmax._cupy import api

    monkeypatch.setattr(api, "LEAN_INDEX_PATH", request.param)
    return request.param


@GPU
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize(
    "shape", [(0, 7), (1, 1), (1, 2), (3, 423), (60000, 10), (257, 1000), (8, 50257), (2, 128256)]
)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cupy_parity_with_reference(dtype, shape, reduction, smoothing, lean):
    import cupy as cp

    import fastsoftmax as fs

    rng = np.random.default_rng(0)
    n, c = shape
    z = (rng.standard_normal(shape) * 3).astype(dtype)
    y = rng.integers(0, c, n) if c else np.zeros(n, np.int64)
    if n > 2:
        y[1] = -100  # ignored row
    opts = dict(reduction=reduction, label_smoothing=smoothing)
    loss, grad = fs.cross_entropy_with_grad(cp.asarray(z), cp.asarray(y), **opts)
    ref_loss, ref_grad = fs.cross_entropy_with_grad(z, y, backend="numpy", **opts)
    tol = TOLERANCES[np.dtype(dtype)]
    np.testing.assert_allclose(cp.asnumpy(loss), ref_loss, **tol)
    np.testing.assert_allclose(cp.asnumpy(grad), ref_grad, **tol)
    for op in ("softmax", "log_softmax", "logsumexp"):
        np.testing.assert_allclose(
            cp.asnumpy(getattr(fs, op)(cp.asarray(z))), getattr(fs, op)(z, backend="numpy"), **tol
        )


@GPU
def test_cupy_bad_target_raises_like_the_cpu(lean):
    import cupy as cp

    import fastsoftmax as fs

    z = cp.zeros((20, 10), cp.float32)
    y = cp.arange(20) % 10
    y[17] = 12
    with pytest.raises(ValueError, match=r"target\[17\] = 12 is out of range for 10 classes"):
        fs.cross_entropy_with_grad(z, y)


@GPU
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cupy_every_target_ignored(reduction, lean):
    import cupy as cp

    import fastsoftmax as fs

    z = np.random.default_rng(1).standard_normal((6, 300)).astype(np.float32)
    y = np.full(6, -100)
    loss, grad = fs.cross_entropy_with_grad(cp.asarray(z), cp.asarray(y), reduction=reduction)
    ref_loss, ref_grad = fs.cross_entropy_with_grad(z, y, reduction=reduction, backend="numpy")
    np.testing.assert_array_equal(cp.asnumpy(loss), ref_loss)  # 0 (PyTorch: NaN for mean)
    np.testing.assert_array_equal(cp.asnumpy(grad), ref_grad)


@GPU
def test_cupy_extremes_and_inplace(lean):
    import cupy as cp

    import fastsoftmax as fs

    z = np.array([[1e4, -1e4, 0.0], [3e38, -3e38, 0], [-np.inf, 0, 1], [np.nan, 0, 1]], np.float32)
    y = np.array([0, 1, 2, 0])
    loss, grad = fs.cross_entropy_with_grad(cp.asarray(z), cp.asarray(y), reduction="none")
    rl, rg = fs.cross_entropy_with_grad(z, y, reduction="none", backend="numpy")
    np.testing.assert_allclose(cp.asnumpy(loss), rl, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(cp.asnumpy(grad), rg, rtol=1e-6, atol=1e-7, equal_nan=True)
    zd = cp.asarray(z[:3])
    _, g = fs.cross_entropy_with_grad(zd, cp.asarray(y[:3]), inplace=True)
    assert g is zd
    _, rg3 = fs.cross_entropy_with_grad(z[:3], y[:3], backend="numpy")
    np.testing.assert_allclose(cp.asnumpy(zd), rg3, rtol=1e-6, atol=1e-7)


@GPU
def test_cupy_gradient_into_memory_the_kernel_reads():
    """As tests/test_api.py's NumPy cases: out= the probability targets, the logits as
    their own targets in place, out= sharing memory with the class weights or the class
    indices, against the same calls on separate arrays."""
    import cupy as cp

    import fastsoftmax as fs

    rng = np.random.default_rng(3)
    z = cp.asarray(rng.standard_normal((64, 10)).astype(np.float32))
    q = cp.asarray(rng.random((64, 10)).astype(np.float32))
    q /= q.sum(axis=1, keepdims=True)
    want = fs.cross_entropy_with_grad(z, q.copy())
    t = q.copy()
    got = fs.cross_entropy_with_grad(z, t, out=t)
    np.testing.assert_array_equal(cp.asnumpy(t), cp.asnumpy(want[1]))
    zz = z.copy()
    self_want = fs.cross_entropy_with_grad(z, z.copy())
    got = fs.cross_entropy_with_grad(zz, zz, inplace=True)
    np.testing.assert_array_equal(cp.asnumpy(zz), cp.asnumpy(self_want[1]))
    y = cp.asarray(rng.integers(0, 10, 64))
    w = cp.asarray(rng.uniform(0.5, 2.0, 10).astype(np.float32))
    want = fs.cross_entropy_with_grad(z, y, weight=w)
    out = cp.ones_like(z)
    out[0] = w
    got = fs.cross_entropy_with_grad(z, y, weight=out[0], out=out)
    assert float(got[0]) == float(want[0])
    np.testing.assert_array_equal(cp.asnumpy(out), cp.asnumpy(want[1]))
    # int64 class indices in the memory out= takes (read first, not as the gradient)
    z64 = z.astype(cp.float64)
    want = fs.cross_entropy_with_grad(z64, y)
    buf = cp.zeros(64 * 10 + 64)
    out = buf[: 64 * 10].reshape(64, 10)
    y_in_out = buf.view(cp.int64)[:64]
    y_in_out[:] = y
    got = fs.cross_entropy_with_grad(z64, y_in_out, out=out)
    assert float(got[0]) == float(want[0])
    np.testing.assert_array_equal(cp.asnumpy(out), cp.asnumpy(want[1]))


@GPU
@pytest.mark.parametrize("path", ["one launch", "one launch, rows staged", "per step"])
@pytest.mark.parametrize("x_kind", ["uint8", "float32"])
@pytest.mark.parametrize("options", ["plain", "momentum+decay", "weights+average", "float64"])
def test_cupy_training_step_matches_the_reference(x_kind, options, path, monkeypatch):
    """The CUDA step (_cupy/step.py: kernels/sgd.cu's one launch for C <= 128, else a
    launch per operation) against the NumPy reference step on the same rows, order and
    rates: parameters, momentum buffers, step losses and the running mean.

    float32 parameters: 16 steps at rates up to 0.5 carry the rounding of any summation
    order forward (on an H200 the device and NumPy's float32 results were up to 1.7e-6
    apart, 1e-4 of a bias), so the oracle is the reference in float64 from the same
    start, and the device must be as close to it as NumPy's own float32 run, within 4x
    (reordering the reference's sums gives up to 2.1x; a wrong rate, momentum or weight
    is off by orders of magnitude more).  float64 parameters: the reference, tightly."""
    import cupy as cp

    from fastsoftmax._backends import load
    from fastsoftmax.reference import StepData, StepParams, StepPlan, sgd_steps

    if path == "per step":
        monkeypatch.setattr(_sgd_plan, "SGD_MAX_C", 0)
    monkeypatch.setattr(_sgd_plan, "STAGE_ROWS", path == "one launch, rows staged")

    rng = np.random.default_rng(3)
    n, d, c, batch, steps = 1000, 784, 10, 64, 16
    X = rng.integers(0, 256, (n, d)).astype(np.uint8)
    X = X if x_kind == "uint8" else (X / 255.0).astype(np.float32)
    a = 1.0 / 255.0 if x_kind == "uint8" else 1.0
    y = rng.integers(0, c, n)
    order = rng.permutation(n)
    lr = np.linspace(0.5, 0.05, steps)
    mu, wd = (0.9, 1e-3) if options == "momentum+decay" else (0.0, 0.0)
    sw = rng.random(n) + 0.5 if options == "weights+average" else None
    coef = 1.0 / np.arange(1, steps + 1) if options == "weights+average" else None
    # float64: too big for shared memory, so sgd.cu keeps the weights in global memory
    wdt = np.float64 if options == "float64" else np.float32
    W0 = np.random.default_rng(4).standard_normal((c, d)).astype(np.float32) * np.float32(0.01)

    def params(xp, dtype):
        W = xp.asarray(W0.astype(dtype))
        b = xp.zeros(c, dtype)
        avg = None if coef is None else (xp.zeros_like(W), xp.zeros_like(b), coef)
        return StepParams(W, b, xp.zeros_like(W), xp.zeros_like(b), avg)

    plan = StepPlan(order, batch, lr, mu, wd)

    def reference(dtype):
        p, losses = params(np, dtype), np.zeros(steps)
        sgd_steps(StepData(X, y, a, sw), p, plan, 0, steps, losses)
        return [*p[:4], *(p.avg[:2] if p.avg else ())], losses

    dev, dev_losses = params(cp, wdt), np.zeros(steps)
    dev_data = StepData(cp.asarray(X), cp.asarray(y), a, None if sw is None else cp.asarray(sw))
    assert _sgd_plan.fits_one_launch(dev_data, dev, plan) == (path != "per step")
    load("cupy").sgd_steps(dev_data, dev, plan, 0, 8, dev_losses)  # two calls: the
    load("cupy").sgd_steps(dev_data, dev, plan, 8, steps, dev_losses)  # order is sliced
    got = [cp.asnumpy(v) for v in (*dev[:4], *(dev.avg[:2] if dev.avg else ()))]
    truth, truth_losses = reference(np.float64)
    if wdt == np.float64:
        np.testing.assert_allclose(dev_losses, truth_losses, rtol=1e-10)
        for g, t in zip(got, truth, strict=True):
            np.testing.assert_allclose(g, t, rtol=1e-10, atol=1e-13)
        return
    ref, ref_losses = reference(np.float32)
    names = [*["W", "b", "vW", "vb", "Wa", "ba"][: len(got)], "losses"]
    got, ref, truth = [*got, dev_losses], [*ref, ref_losses], [*truth, truth_losses]
    for name, g, r, t in zip(names, got, ref, truth, strict=True):
        err, ref_err = np.abs(g - t).max(), np.abs(r - t).max()
        floor = 1e-7 * np.abs(t).max()  # arrays both get exactly (vW without momentum: 0)
        assert err <= 4 * ref_err + floor, (name, err, ref_err)


@GPU
def test_cupy_one_launch_step_names_a_bad_class_index():
    import cupy as cp

    from fastsoftmax._cupy import step
    from fastsoftmax.reference import StepData, StepParams, StepPlan

    X = cp.ones((100, 5), cp.float32)
    y = cp.zeros(100, cp.int64)
    y[37] = 3  # 3 classes: out of range
    W, b = cp.zeros((3, 5), cp.float32), cp.zeros(3, cp.float32)
    params = StepParams(W, b, cp.zeros_like(W), cp.zeros_like(b))
    plan = StepPlan(np.arange(100)[::-1].copy(), 10, 0.1)
    data = StepData(X, y, 1.0)
    assert _sgd_plan.fits_one_launch(data, params, plan)
    with pytest.raises(ValueError, match=r"out of range for 3 classes \(row 37 of the data\)"):
        step.sgd_steps(data, params, plan, 0, 10, np.zeros(10))
