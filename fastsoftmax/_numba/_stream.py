"""Writing a gradient row that the kernel will not read again: non-temporal stores.

The large-C cross-entropy writes (N, C) gradients of hundreds of megabytes.  A regular
store first reads the line it writes into the cache (the "read for ownership"), so the
gradient costs a read and a write of memory on top of the logits' read.  A
non-temporal store writes whole 64-byte lines straight to memory, with no read and
without evicting the logits' rows the kernel still needs from L2.

Numba cannot ask for such stores, and LLVM's loop vectoriser will not emit them for
an access it cannot prove aligned, so :func:`stream_row` writes the loop in LLVM IR:
regular stores up to the first 64-byte boundary of the destination, one <64 bytes>
vector store with ``!nontemporal`` per line after it, regular stores for the last
partial line.  (On x86 these are ``vmovntps``/``vmovntpd``; other targets lower the
metadata as they can, or ignore it.)

Non-temporal stores are weakly ordered: :func:`store_fence` (a sequentially consistent
fence: ``mfence`` on x86) must follow them before another thread, or the caller after
a parallel region, reads what they wrote.

The arithmetic is ``src * a - b`` as the kernels write it elsewhere, with the same
``contract`` flag, so LLVM forms the same fused multiply-add where the target has one:
a row written here has the bits it would have had through a Numba loop.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._ir_only import ir_only

LINE_BYTES = 64
_FLAGS = ("contract",)


def _contiguous_vector(t) -> bool:
    return (
        isinstance(t, types.Array)
        and t.ndim == 1
        and t.layout == "C"
        and isinstance(t.dtype, types.Float)
    )


def stream_row(src, dst, a, b, jfix, vfix, ahead):
    """dst[j] = src[j] * a - b for every j, except dst[jfix] = vfix, for 1-D arrays of
    one float dtype and the same length (not checked); where both are contiguous, the
    whole 64-byte lines of dst with non-temporal stores (follow with
    :func:`store_fence`).  ahead: None, or a 1-D array at least as long whose lines are
    prefetched into the cache while dst is written (the row after next, which the
    kernel reads later)."""
    raise NotImplementedError("stream_row is only callable from Numba-compiled code")


@njit(fastmath={"contract"}, error_model="numpy", no_cpython_wrapper=True, no_cfunc_wrapper=True)
def _plain_row(src, dst, a, b, jfix, vfix):
    for j in range(dst.shape[0]):
        dst[j] = src[j] * a - b
    if 0 <= jfix < dst.shape[0]:
        dst[jfix] = vfix


@overload(stream_row)
def _stream_row_overload(src, dst, a, b, jfix, vfix, ahead):
    if _contiguous_vector(src) and _contiguous_vector(dst):
        if isinstance(ahead, types.NoneType) or _contiguous_vector(ahead):
            return lambda src, dst, a, b, jfix, vfix, ahead: _stream_row(
                src, dst, a, b, jfix, vfix, ahead
            )
    return lambda src, dst, a, b, jfix, vfix, ahead: _plain_row(src, dst, a, b, jfix, vfix)


@intrinsic
def _stream_row(typingctx, src, dst, a, b, jfix, vfix, ahead):
    """stream_row for contiguous arrays: the loop in LLVM IR."""
    if not (_contiguous_vector(src) and _contiguous_vector(dst) and src.dtype == dst.dtype):
        return None
    if not (isinstance(jfix, types.Integer) and isinstance(vfix, (types.Float, types.Integer))):
        return None
    if not (isinstance(ahead, types.NoneType) or _contiguous_vector(ahead)):
        return None
    dtype = dst.dtype
    sig = types.void(src, dst, a, b, jfix, vfix, ahead)

    def codegen(context, builder, signature, args):
        i8p, i32, i64 = ir.IntType(8).as_pointer(), ir.IntType(32), ir.IntType(64)
        s = context.make_array(signature.args[0])(context, builder, args[0])
        d = context.make_array(signature.args[1])(context, builder, args[1])
        av = context.cast(builder, args[2], signature.args[2], dtype)
        bv = context.cast(builder, args[3], signature.args[3], dtype)
        jf = context.cast(builder, args[4], signature.args[4], types.int64)
        vf = context.cast(builder, args[5], signature.args[5], dtype)
        itemsize = dtype.bitwidth // 8
        lanes = LINE_BYTES // itemsize
        fty = context.get_data_type(dtype)
        vty = ir.VectorType(fty, lanes)
        n = context.cast(builder, builder.extract_value(d.shape, 0), types.intp, types.int64)
        # elements before dst's first 64-byte boundary (dst is element-aligned)
        addr = builder.ptrtoint(d.data, i64)
        head = builder.udiv(
            builder.and_(builder.sub(i64(0), addr), i64(LINE_BYTES - 1)), i64(itemsize)
        )
        head = builder.select(builder.icmp_signed("<", n, head), n, head)
        nlines = builder.udiv(builder.sub(n, head), i64(lanes))
        tail = builder.add(head, builder.mul(nlines, i64(lanes)))

        def scalar(j):
            x = builder.load(builder.gep(s.data, [j]))
            r = builder.fsub(builder.fmul(x, av, flags=_FLAGS), bv, flags=_FLAGS)
            r = builder.select(builder.icmp_signed("==", j, jf), vf, r)
            builder.store(r, builder.gep(d.data, [j]))

        def splat(v):
            vec = builder.insert_element(ir.Constant(vty, None), v, i32(0))
            zeros = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
            return builder.shuffle_vector(vec, vec, zeros)

        va, vb = splat(av), splat(bv)
        nontemporal = builder.module.add_metadata([i32(1)])
        if not isinstance(signature.args[6], types.NoneType):
            pf_base = context.make_array(signature.args[6])(context, builder, args[6]).data
            prefetch = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                "llvm.prefetch.p0i8",
            )
        else:
            pf_base = None

        with cgutils.for_range(builder, head) as loop:
            scalar(loop.index)
        with cgutils.for_range(builder, nlines) as loop:
            j = builder.add(head, builder.mul(loop.index, i64(lanes)))
            x = builder.load(
                builder.bitcast(builder.gep(s.data, [j]), vty.as_pointer()), align=itemsize
            )
            r = builder.fsub(builder.fmul(x, va, flags=_FLAGS), vb, flags=_FLAGS)
            off = builder.sub(jf, j)  # the fixed element, if it lies in this line
            inside = builder.icmp_unsigned("<", off, i64(lanes))
            fixed = builder.insert_element(r, vf, builder.trunc(off, i32))
            r = builder.select(inside, fixed, r)
            ptr = builder.bitcast(builder.gep(d.data, [j]), vty.as_pointer())
            st = builder.store(r, ptr, align=LINE_BYTES)
            st.set_metadata("nontemporal", nontemporal)
            if pf_base is not None:  # read, keep in all cache levels
                p = builder.bitcast(builder.gep(pf_base, [j]), i8p)
                builder.call(prefetch, [p, i32(0), i32(3), i32(1)])
        with cgutils.for_range(builder, builder.sub(n, tail)) as loop:
            scalar(builder.add(tail, loop.index))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def store_fence(typingctx):
    """Orders this thread's earlier non-temporal stores before its later memory
    accesses (a sequentially consistent fence)."""

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


ir_only(globals())  # _plain_row: IR for its callers only (see _ir_only)
