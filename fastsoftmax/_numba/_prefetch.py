"""Software prefetch for the row kernels: ``prefetch_row(a, i, write)`` asks the CPU to
bring row i of the 2-D array a into its caches ahead of use, one ``llvm.prefetch`` per
64-byte line (PREFETCHT0, or PREFETCHW when `write`: the lines come in owned, so the
stores that follow do not wait for them).  A prefetch is a hint: it never faults and
changes no result."""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LINE_BYTES = 64


@intrinsic
def prefetch_row(typingctx, a, i, write):
    """Prefetch the bytes of row i of a (2-D; from its start, as many bytes as a
    contiguous row holds), for writing when `write` (a literal bool)."""
    if not (
        isinstance(a, types.Array)
        and a.ndim == 2
        and isinstance(i, types.Integer)
        and isinstance(write, types.BooleanLiteral)
    ):
        return None
    rw = 1 if write.literal_value else 0
    itemsize = a.dtype.bitwidth // 8

    def codegen(context, builder, signature, args):
        i8p, i32, i64 = ir.IntType(8).as_pointer(), ir.IntType(32), ir.IntType(64)
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        row = context.cast(builder, args[1], signature.args[1], types.int64)
        ncols = builder.extract_value(arr.shape, 1)
        row_stride = builder.extract_value(arr.strides, 0)
        base = builder.gep(builder.bitcast(arr.data, i8p), [builder.mul(row, row_stride)])
        nbytes = builder.mul(ncols, i64(itemsize))
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
        )
        with cgutils.for_range_slice(builder, i64(0), nbytes, i64(LINE_BYTES)) as (off, _):
            builder.call(fn, [builder.gep(base, [off]), i32(rw), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(a, i, write), codegen
