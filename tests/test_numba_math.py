"""The Numba kernels' building blocks: exp, log and the float keys against NumPy's libm,
ulp by ulp; the register transpose against NumPy's; the row prefetch."""

from __future__ import annotations

import math
import platform

import numpy as np
import pytest

numba = pytest.importorskip("numba")
from numba.extending import intrinsic  # noqa: E402

from fastsoftmax._cpu_target import narrow_registers  # noqa: E402
from fastsoftmax._numba._math import fexp, fexp_neg, fkey, flog, funkey  # noqa: E402
from fastsoftmax._numba._prefetch import prefetch_row  # noqa: E402
from fastsoftmax._numba._transpose import (  # noqa: E402
    _transpose_block,
    block_width,
    block_width_in,
    transpose_block,
)


@numba.njit(error_model="numpy")
def _map_exp(x, out):
    for i in range(x.shape[0]):
        out[i] = fexp(x[i])


@numba.njit(error_model="numpy")
def _map_exp_neg(x, out):
    for i in range(x.shape[0]):
        out[i] = fexp_neg(x[i])


@numba.njit(error_model="numpy")
def _map_log(x, out):
    for i in range(x.shape[0]):
        out[i] = flog(x[i])


@numba.njit
def _map_key_roundtrip(x, keys, back):
    for i in range(x.shape[0]):
        keys[i] = fkey(x[i])
        back[i] = funkey(keys[i])


def _ulp_error(actual, exact, dtype):
    rounded = exact.astype(dtype)
    return np.abs(actual.astype(np.float64) - exact) / np.spacing(rounded).astype(np.float64)


def _libm(fn, x):
    """fn (math.exp or math.log: the C library's, in float64) of every element of x."""
    return np.fromiter(map(fn, x.astype(np.float64).tolist()), np.float64, x.size)


# (dtype, lowest input not flushed to 0, highest finite input)
RANGES = [(np.float32, -86.0, 88.72), (np.float64, -707.0, 709.78)]


@pytest.mark.parametrize(("dtype", "lo", "hi"), RANGES)
def test_exp_is_within_1_2_ulp(dtype, lo, hi):
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(lo, hi, 400_001), rng.uniform(-10, 1, 200_000)]).astype(dtype)
    out = np.empty_like(x)
    _map_exp(x, out)
    exact = _libm(math.exp, x)
    # glibc's exp is within 1 ulp of float64 (exact enough for float32); for float64
    # the bound below includes its error.  Not np.exp: its SIMD code differs between
    # NumPy versions (1.26's float64 exp and log are up to 2 ulp from glibc here).
    assert _ulp_error(out, exact, dtype).max() <= 1.2
    neg = x[x <= 0]
    out_neg = np.empty_like(neg)
    _map_exp_neg(neg, out_neg)
    np.testing.assert_array_equal(out_neg, out[x <= 0])


@pytest.mark.parametrize(("dtype", "lo", "hi"), RANGES)
def test_exp_special_values(dtype, lo, hi):
    x = np.array([-np.inf, np.nan, 0.0, -0.0, lo - 1, hi + 1, np.inf], dtype)
    out = np.empty_like(x)
    _map_exp(x, out)
    assert out[0] == 0 and np.isnan(out[1]) and out[2] == 1 and out[3] == 1
    assert out[4] == 0 and out[5] == np.inf and out[6] == np.inf
    out_neg = np.empty(4, dtype)
    _map_exp_neg(x[:4], out_neg)
    np.testing.assert_array_equal(out_neg, out[:4])


def test_log_is_within_2_ulp():
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            np.linspace(1.0, 300_000.0, 300_001),
            rng.uniform(0.5, 2.0, 200_000),
            np.exp(rng.uniform(-700, 700, 200_000)),
        ]
    )
    out = np.empty_like(x)
    _map_log(x, out)
    exact = _libm(math.log, x)
    err = np.abs(out - exact) / np.spacing(np.maximum(np.abs(exact), 1e-300))
    assert err[exact != 0].max() <= 2.0
    assert out[x == 1.0].max() == 0.0
    special = np.array([0.0, -1.0, np.inf, np.nan])
    out = np.empty_like(special)
    _map_log(special, out)
    assert out[0] == -np.inf and np.isnan(out[1]) and out[2] == np.inf and np.isnan(out[3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_integer_keys_preserve_float_order(dtype):
    x = np.array([-np.inf, -3e30, -1.0, -1e-30, -0.0, 0.0, 1e-30, 1.0, 7.5, 3e30, np.inf], dtype)
    keys = np.empty(len(x), np.int32 if dtype == np.float32 else np.int64)
    back = np.empty_like(x)
    _map_key_roundtrip(x, keys, back)
    assert np.all(np.diff(keys) > 0)
    np.testing.assert_array_equal(back.view(keys.dtype), x.view(keys.dtype))  # bit-exact
    nan = np.array([np.nan], dtype)
    nan_key = np.empty(1, keys.dtype)
    _map_key_roundtrip(nan, nan_key, np.empty_like(nan))
    assert nan_key[0] > keys.max()  # a NaN wins the max, poisoning its row


@numba.njit
def _transpose(src, so, ss, m, k, dst, do, ds):
    transpose_block(src, so, ss, m, k, dst, do, ds)


@numba.njit
def _width(a):
    return block_width(a)


@intrinsic
def _transpose_block_32(typingctx, src, so, ss, m, k, dst, do, ds):
    """The copy into tiles with 16 vector registers (AVX2: transpose_block_in's W),
    whatever CPU runs the tests."""
    return _transpose_block(32, src, so, ss, m, k, dst, do, ds)


@numba.njit
def _transpose_32(src, so, ss, m, k, dst, do, ds):
    _transpose_block_32(src, so, ss, m, k, dst, do, ds)


@numba.njit
def _width_in(a):
    return block_width_in(a)


def test_the_copy_into_tiles_is_half_as_wide_with_16_vector_registers():
    a = np.zeros(1, np.float32)
    assert _width(a) == 16
    assert _width_in(a) == (8 if narrow_registers() else 16)


@intrinsic
def _transpose_block_out_32(typingctx, src, so, ss, m, k, dst, do, ds, end):
    """transpose_block_out with AVX2's W, whatever CPU runs the tests."""
    return _transpose_block(32, src, so, ss, m, k, dst, do, ds, end)


@numba.njit
def _out_of_tile_32(zt, rows_per_tile, x, a, nr):
    """_tile_transfer's copy out of a tile with 16 vector registers (transpose_block_out
    bands, the last column block first), from a class-major zt of rows_per_tile
    columns into rows [a, a + nr) of x."""
    n = x.shape[1]
    xf = x.reshape(x.size)
    w = 32 // x.itemsize
    end = (a + nr) * n
    last = ((n - 1) // w) * w
    for b in range(0, nr, w):
        rows = min(w, nr - b)
        for cb in range(last, -1, -w):
            cols = min(w, n - cb)
            _transpose_block_out_32(
                zt, cb * rows_per_tile + b, rows_per_tile, cols, rows, xf, (a + b) * n + cb, n, end
            )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_copy_out_of_a_tile_writes_its_rows_and_nothing_else(dtype, rng):
    """transpose_block_out's whole-vector stores run into the next row, which the same
    copy writes later; never past the tile's last row (another thread's tile may be
    there, already written).  NaN sentinels around the tile's rows, every class count of
    the tile path, tiles of 1 to R rows."""
    rows_per_tile = 128
    for n in range(1, 33):
        for nr in (1, 3, 7, 8, 9, 31, 128):
            for a, after in ((0, 0), (3, 2)):
                zt = rng.standard_normal((n, rows_per_tile)).astype(dtype)
                x = np.full((a + nr + after, n), np.nan, dtype)
                _out_of_tile_32(zt.reshape(-1), rows_per_tile, x, a, nr)
                expected = np.full_like(x, np.nan)
                expected[a : a + nr] = zt[:, :nr].T
                np.testing.assert_array_equal(x, expected, err_msg=f"n={n} nr={nr} a={a}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("layout", "tail"), [("gaps", 0), ("packed", 0), ("packed", 40), ("gaps", 40)]
)
@pytest.mark.parametrize("vector_bytes", [64, 32])
def test_transpose_block_moves_exactly_the_block(dtype, layout, tail, vector_bytes, rng):
    """Every m x k block (m, k <= W) lands transposed; nothing else is written, and a
    block that ends at the last element of either array is fine (masked lanes are not
    touched, so this would fault or corrupt if they were).  Rows with gaps between them
    (strides wider than the block) and packed rows (stride = row length, as the tile
    kernels use them: whole-vector loads and stores that spill into the next row),
    with and without `tail` elements after the blocks (NaN sentinels in the output).
    W = 64 bytes (transpose_block) and 32 (transpose_block_in with AVX2)."""
    if vector_bytes == 64:
        w, transpose = _width(np.zeros(1, dtype)), _transpose
    else:
        w, transpose = 32 // np.dtype(dtype).itemsize, _transpose_32
    assert w == vector_bytes // np.dtype(dtype).itemsize
    sizes = sorted({1, 2, 3, w // 2 + 1, w - 1, w})
    for m in sizes:
        for k in sizes:
            ss, ds = (k + 3, m + 5) if layout == "gaps" else (k, m)
            so, do = 2, 1
            src = rng.standard_normal(so + (m - 1) * ss + k + tail).astype(dtype)
            dst = np.full(do + (k - 1) * ds + m + tail, np.nan, dtype)
            transpose(src, so, ss, m, k, dst, do, ds)
            expected = np.full_like(dst, np.nan)
            block = np.lib.stride_tricks.as_strided(
                src[so:], shape=(m, k), strides=(ss * src.itemsize, src.itemsize)
            )
            out = np.lib.stride_tricks.as_strided(
                expected[do:], shape=(k, m), strides=(ds * dst.itemsize, dst.itemsize)
            )
            out[...] = block.T
            np.testing.assert_array_equal(dst, expected, err_msg=f"m={m} k={k}")


@numba.njit
def _prefetch_for_reading(a):
    for i in range(a.shape[0]):
        prefetch_row(a, i, False)


@numba.njit
def _prefetch_for_writing(a):
    for i in range(a.shape[0]):
        prefetch_row(a, i, True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cols", [1, 15, 16, 17, 1000])
def test_prefetch_row_emits_one_prefetch_per_line_and_changes_nothing(dtype, cols, rng):
    """prefetch_row on every row (the last included) of odd widths, contiguous or every
    other column of a wider array: the arrays are left as they were, and the code holds
    LLVM's prefetch (read, or write: PREFETCHW on x86) in a loop over the row's 64-byte
    lines."""
    a = rng.standard_normal((5, cols)).astype(dtype)
    wide = rng.standard_normal((5, 2 * cols)).astype(dtype)
    before, wide_before = a.copy(), wide.copy()
    for fn in (_prefetch_for_reading, _prefetch_for_writing):
        fn(a)
        fn(wide[:, ::2])
    np.testing.assert_array_equal(a, before)
    np.testing.assert_array_equal(wide, wide_before)
    for fn, rw in ((_prefetch_for_reading, 0), (_prefetch_for_writing, 1)):
        (sig,) = [s for s in fn.signatures if s[0] == numba.typeof(a)]
        llvm = fn.inspect_llvm(sig)
        assert "call void @llvm.prefetch.p0(" in llvm
        assert f"i32 {rw}, i32 3, i32 1)" in llvm
        if platform.machine() in ("x86_64", "AMD64"):
            asm = fn.inspect_asm(sig).lower()
            if rw:
                assert "prefetchw" in asm
            else:
                assert "prefetcht0" in asm and "prefetchw" not in asm
