"""A typed pointer from an integer address, for kernels that take buffers by address."""

from __future__ import annotations

from numba import types
from numba.extending import intrinsic


@intrinsic
def pointer_at(typingctx, address, dtype):
    """``address`` (an integer, e.g. a tensor's ``data_ptr()``) as a pointer to
    ``dtype``'s elements (a NumPy scalar type such as ``np.float32``); ``numba.carray``
    makes an array of it.  The caller vouches for what lies there."""
    if not isinstance(address, types.Integer) or not isinstance(dtype, types.NumberClass):
        return None
    signature = types.CPointer(dtype.instance_type)(address, dtype)

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(sig.return_type))

    return signature, codegen
