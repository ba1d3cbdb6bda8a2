"""Block transpose in vector registers, for the small-C tile kernels.

The tile kernels (C <= 32, e.g. MNIST's 10 classes) work on a transposed copy of 128
rows so that max, exp and the sums run one row per vector lane.  Written as loops, the
copy in and the copy back out become vector gathers and scatters (one element per
cycle or worse on current x86 cores): they took 3.5 and 3.4 us of a 512 x 10 float32
cross-entropy (serial, 13-20 us).  Numba has no way to ask for shuffles, so
:func:`transpose_block` writes the LLVM IR itself: W row vectors in (masked loads), the
classic block-swap network (log2 W stages of W two-input shuffles, one permute
instruction each with AVX-512), W column vectors out (masked stores).  The same copies
then take 1.0 and 1.1 us.  The IR is target-independent: without AVX-512 LLVM splits
the vectors into ymm halves (to get AVX2 code on an AVX-512 machine set both
NUMBA_CPU_NAME=znver3 and NUMBA_CPU_FEATURES= : the name alone keeps the host's
+avx512f).  Masked moves are then VMASKMOVPS, slow on AMD Zen 2/3, so rows are moved
with whole-vector loads and stores wherever those stay inside the arrays, and masked
ones only at the edges.

W = 64 bytes / itemsize: 16 float32 or 8 float64 lanes, one AVX-512 register.  With 16
vector registers (AVX2), a 16 x 16 float32 block is 32 ymm halves, half of them on the
stack between the shuffle stages; there the tiles are copied in 8 x 8 blocks
(:func:`transpose_block_in`, W = 32 bytes / itemsize) and out in 8 x 8 blocks whose
short rows (the last 2 of 10 classes) are whole-vector stores into the next row, which
the caller writes afterwards (:func:`transpose_block_out`).  Fused 60000 x 10 float32,
AVX2 code: 0.95-0.97x the time for the copy in (docs/performance.md, The ops).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .._cpu_target import narrow_registers

VECTOR_BYTES = 64
# transpose_block_in's blocks: half as wide with 16 vector registers (see above)
VECTOR_BYTES_IN = 32 if narrow_registers() else 64


def _width(dtype: types.Float, vector_bytes: int = VECTOR_BYTES) -> int:
    return vector_bytes // (dtype.bitwidth // 8)


def _width_type(arr, vector_bytes: int):
    """The signature and code of a block width intrinsic: a constant (an intrinsic, not
    an overload: see _math.smin)."""
    if not isinstance(arr, types.Array) or not isinstance(arr.dtype, types.Float):
        return None
    w = _width(arr.dtype, vector_bytes)

    def codegen(context, builder, signature, args):
        return context.get_constant(types.intp, w)

    return types.intp(arr), codegen


@intrinsic
def block_width(typingctx, arr):
    """W, the rows and columns of one transpose_block call for arr's dtype."""
    return _width_type(arr, VECTOR_BYTES)


@intrinsic
def block_width_in(typingctx, arr):
    """W, the rows and columns of one transpose_block_in call for arr's dtype."""
    return _width_type(arr, VECTOR_BYTES_IN)


def _splat(builder, value, count):
    vty = ir.VectorType(value.type, count)
    v = builder.insert_element(ir.Constant(vty, None), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(
        v, v, ir.Constant(ir.VectorType(ir.IntType(32), count), [0] * count)
    )


@intrinsic
def transpose_block(typingctx, src, src_off, src_stride, m, k, dst, dst_off, dst_stride):
    """dst[dst_off + j * dst_stride + i] = src[src_off + i * src_stride + j] for i < m,
    j < k, with m, k <= W (block_width): an m x k block in, its k x m transpose out.
    See _transpose_block."""
    args = (src, src_off, src_stride, m, k, dst, dst_off, dst_stride)
    return _transpose_block(VECTOR_BYTES, *args)


@intrinsic
def transpose_block_in(typingctx, src, src_off, src_stride, m, k, dst, dst_off, dst_stride):
    """transpose_block with m, k <= block_width_in(src): the copy into a tile."""
    args = (src, src_off, src_stride, m, k, dst, dst_off, dst_stride)
    return _transpose_block(VECTOR_BYTES_IN, *args)


@intrinsic
def transpose_block_out(
    typingctx, src, src_off, src_stride, m, k, dst, dst_off, dst_stride, spill_end
):
    """transpose_block with transpose_block_in's W, for the copy out of a tile: an
    output row's store may run past its m lanes (a whole vector where a masked store
    would be needed otherwise) as long as it ends by dst[spill_end].  The caller writes
    those elements again after this call (_tile_transfer: the next rows' first columns,
    with each band of rows stored last column block first)."""
    args = (src, src_off, src_stride, m, k, dst, dst_off, dst_stride, spill_end)
    return _transpose_block(VECTOR_BYTES_IN, *args)


def _transpose_block(
    vector_bytes, src, src_off, src_stride, m, k, dst, dst_off, dst_stride, spill_end=None
):
    """The typing and code of transpose_block(_in, _out), W = vector_bytes / itemsize;
    spill_end (transpose_block_out): see there.

    src and dst are 1-D contiguous arrays of one float dtype.  Nothing outside the two
    blocks is read or written (masked loads and stores: lanes and rows past k and m are
    not touched), so the blocks may end at their arrays' last element.  No bounds are
    checked: the caller keeps both blocks inside their arrays."""
    ints = (src_off, src_stride, m, k, dst_off, dst_stride)
    if spill_end is not None:
        ints += (spill_end,)
    if not (
        isinstance(src, types.Array)
        and isinstance(dst, types.Array)
        and src.ndim == 1
        and dst.ndim == 1
        and isinstance(src.dtype, types.Float)
        and src.dtype == dst.dtype
        and all(isinstance(v, types.Integer) for v in ints)
    ):
        return None
    sig_args = (src, src_off, src_stride, m, k, dst, dst_off, dst_stride)
    sig = types.void(*sig_args, *(() if spill_end is None else (spill_end,)))
    w = _width(src.dtype, vector_bytes)

    def codegen(context, builder, signature, args):
        i1, i32, i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
        sarr = context.make_array(signature.args[0])(context, builder, args[0])
        darr = context.make_array(signature.args[5])(context, builder, args[5])
        so, ss, mm, kk, do, ds = (
            context.cast(builder, args[i], signature.args[i], types.int64)
            for i in (1, 2, 3, 4, 6, 7)
        )
        ft = context.get_data_type(signature.args[0].dtype)
        vty = ir.VectorType(ft, w)
        mty = ir.VectorType(i1, w)
        suffix = f"v{w}f{signature.args[0].dtype.bitwidth}.p0"
        load = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(vty, [vty.as_pointer(), i32, mty, vty]),
            f"llvm.masked.load.{suffix}",
        )
        store = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), i32, mty]),
            f"llvm.masked.store.{suffix}",
        )
        align = i32(signature.args[0].dtype.bitwidth // 8)
        lanes = ir.Constant(ir.VectorType(i64, w), [i64(j) for j in range(w)])
        none = ir.Constant(mty, [0] * w)

        def masked(n_lanes, row, n_rows):
            """Lanes < n_lanes, in a row < n_rows (else no lane at all)."""
            lanes_on = builder.icmp_signed("<", lanes, _splat(builder, n_lanes, w))
            return builder.select(builder.icmp_signed("<", i64(row), n_rows), lanes_on, none)

        def address(arr, off, stride, row):
            p = builder.gep(arr.data, [builder.add(off, builder.mul(i64(row), stride))])
            return builder.bitcast(p, vty.as_pointer())

        undef = ir.Constant(vty, None)
        nitems = context.cast(builder, sarr.nitems, types.intp, types.int64)

        def plain_or_masked(plain_ok, plain, masked_op):
            """The value of plain() where plain_ok, else of masked_op()."""
            with builder.if_else(plain_ok, likely=True) as (then, otherwise):
                with then:
                    a = plain()
                    then_block = builder.block
                with otherwise:
                    b = masked_op()
                    else_block = builder.block
            phi = builder.phi(vty)
            phi.add_incoming(a, then_block)
            phi.add_incoming(b, else_block)
            return phi

        rows = []
        for i in range(w):
            # A whole-vector load where it stays inside the source array: the lanes past
            # k only reach output rows >= k, which are never stored.  Masked loads and
            # stores are slow without AVX-512 (VMASKMOVPS, microcoded on AMD Zen 2/3).
            ptr = address(sarr, so, ss, i)
            end = builder.add(builder.add(so, builder.mul(i64(i), ss)), i64(w))
            fits = builder.and_(
                builder.icmp_signed("<", i64(i), mm), builder.icmp_signed("<=", end, nitems)
            )
            rows.append(
                plain_or_masked(
                    fits,
                    lambda ptr=ptr: builder.load(ptr, align=align.constant),
                    lambda ptr=ptr, i=i: builder.call(load, [ptr, align, masked(kk, i, mm), undef]),
                )
            )
        # Block-swap transpose: at width b, rows i and i + b (i // b even) exchange
        # their off-diagonal b-lane blocks; b = W/2, ..., 1 transposes the W x W matrix.
        b = w // 2
        while b:
            lo = [j if (j // b) % 2 == 0 else w + j - b for j in range(w)]
            hi = [j + b if (j // b) % 2 == 0 else w + j for j in range(w)]
            lo_c = ir.Constant(ir.VectorType(i32, w), lo)
            hi_c = ir.Constant(ir.VectorType(i32, w), hi)
            for i in range(w):
                if (i // b) % 2 == 0:
                    top, bottom = rows[i], rows[i + b]
                    rows[i] = builder.shuffle_vector(top, bottom, lo_c)
                    rows[i + b] = builder.shuffle_vector(top, bottom, hi_c)
            b //= 2
        # Output row j < k takes lanes < m.  A whole-vector store is right when m == W,
        # or when its lanes past m land on output rows that are stored after it (rows
        # packed with no gap, ds <= m, and its end not past the last row's end).
        last_end = builder.add(builder.mul(builder.sub(kk, i64(1)), ds), mm)
        packed = builder.icmp_signed("<=", ds, mm)
        full = builder.icmp_signed("==", mm, i64(w))
        if spill_end is not None:  # the caller rewrites [do, spill_end) after this call
            send = context.cast(builder, args[8], signature.args[8], types.int64)
        for j in range(w):
            ptr = address(darr, do, ds, j)
            store_end = builder.add(builder.mul(i64(j), ds), i64(w))
            spill_ok = builder.and_(packed, builder.icmp_signed("<=", store_end, last_end))
            if spill_end is not None:
                later = builder.icmp_signed("<=", builder.add(do, store_end), send)
                spill_ok = builder.or_(spill_ok, later)
            in_block = builder.icmp_signed("<", i64(j), kk)
            with builder.if_then(in_block, likely=True):
                with builder.if_else(builder.or_(full, spill_ok), likely=True) as (plain, other):
                    with plain:
                        builder.store(rows[j], ptr, align=align.constant)
                    with other:
                        builder.call(store, [rows[j], ptr, align, masked(mm, j, kk)])
        return context.get_dummy_value()

    return sig, codegen
