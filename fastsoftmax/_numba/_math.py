"""Scalar building blocks for the Numba kernels: a vectorisable exp and an exact max.

Why not ``math.exp`` / ``max``?  Numba ships without Intel's SVML here, so LLVM cannot
vectorise a loop that calls ``exp``: every element becomes a libm call.  And a float
``max`` reduction written as ``m = v if v > m else m`` is not vectorised either unless
the compiler may assume there are no NaNs, which we refuse to promise (``nnan``/``ninf``
would make NaN and -inf rows silently wrong).  The two tricks below keep full IEEE
semantics and let LLVM emit AVX2/AVX-512 code:

* ``fexp(t)``: Cody-Waite range reduction ``t = k*ln2 + r`` with ``|r| <= ln2/2``, a
  minimax polynomial for ``exp(r)`` (degree 6 for float32, 11 for float64; see
  tools/exp_minimax.py) and ``2**k`` built by writing ``k`` straight into the exponent
  bits: within 1.2 ulp of the correctly rounded result (tests/test_numba_math.py).
  Results below about twice the smallest normal number are flushed to 0 (an absolute
  error under 5e-38 in float32, which no softmax can see: the row maximum contributes
  exp(0) = 1 to every sum).  NaN in gives NaN out; -inf gives 0; +inf and anything
  above ~88.7 (float32) or ~709.8 (float64) gives +inf.  ``fexp_neg`` is the same for
  ``t <= 0`` only (always ``z - max`` in the softmax kernels), without the overflow
  handling, and rounds ``t/ln2`` by adding a shift constant whose sum also holds the
  exponent bits of ``2**k``: 14 vector instructions instead of 19 in the hottest loop
  (exp of 4096 float32 in L1: 0.72 against 1.03 us with AVX-512, 1.02 against 1.32
  with AVX2).  Both round to nearest; they can differ only where ``t/ln2`` is a
  half-integer (ties to even here, up before), where both ``r`` stay in range.
* ``fkey(x)`` maps a float to an integer with the same order (flip the magnitude bits of
  negative numbers), so the row max becomes an integer max reduction, which vectorises
  with no fast-math assumption.  ``funkey`` is its inverse.  A NaN with a clear sign bit
  becomes the maximum, which makes its whole row NaN, as it should.
"""

from __future__ import annotations

import operator

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.typing import signature as typing_signature
from numba.extending import intrinsic, overload

from ._ir_only import ir_only

# Flags for functions whose loops reduce: `reassoc` lets LLVM split a sum over vector
# lanes; `contract` allows FMA.  Deliberately absent: nnan, ninf (NaN/-inf rows must
# stay exact) and afn (approximate log).
REDUCE_FLAGS = {"reassoc", "contract", "nsz"}
# The exp polynomial must not be reassociated (that would undo the Cody-Waite split).
EXP_FLAGS = {"contract"}
# Called only from compiled code: no CPython or C wrapper, and (ir_only below) no
# machine code of their own: their callers' copies run.
_HELPER = {
    "fastmath": EXP_FLAGS, "error_model": "numpy",
    "no_cpython_wrapper": True, "no_cfunc_wrapper": True,
}  # fmt: skip


@intrinsic
def fkey(typingctx, x):
    """Order-preserving float -> int key (same width)."""
    if not isinstance(x, types.Float):
        return None
    bits = x.bitwidth
    ity = types.int32 if bits == 32 else types.int64

    def codegen(context, builder, signature, args):
        it = ir.IntType(bits)
        v = builder.bitcast(args[0], it)
        sign = builder.ashr(v, ir.Constant(it, bits - 1))
        return builder.xor(v, builder.and_(sign, ir.Constant(it, (1 << (bits - 1)) - 1)))

    return ity(x), codegen


@intrinsic
def funkey(typingctx, k):
    """Inverse of :func:`fkey`."""
    if not isinstance(k, types.Integer) or k.bitwidth not in (32, 64):
        return None
    bits = k.bitwidth
    fty = types.float32 if bits == 32 else types.float64

    def codegen(context, builder, signature, args):
        it = ir.IntType(bits)
        v = args[0]
        sign = builder.ashr(v, ir.Constant(it, bits - 1))
        v = builder.xor(v, builder.and_(sign, ir.Constant(it, (1 << (bits - 1)) - 1)))
        return builder.bitcast(v, ir.FloatType() if bits == 32 else ir.DoubleType())

    return fty(k), codegen


@intrinsic
def _pow2_f32(typingctx, k):
    """2.0**k as float32 for an integer k in [-126, 127], by writing the exponent bits."""
    if not isinstance(k, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        v = builder.trunc(args[0], i32) if k.bitwidth > 32 else builder.sext(args[0], i32)
        v = builder.shl(builder.add(v, ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(k), codegen


@intrinsic
def _pow2_f64(typingctx, k):
    """2.0**k as float64 for an integer k in [-1022, 1023]."""
    if not isinstance(k, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        v = builder.sext(args[0], i64) if k.bitwidth < 64 else args[0]
        v = builder.shl(builder.add(v, ir.Constant(i64, 1023)), ir.Constant(i64, 52))
        return builder.bitcast(v, ir.DoubleType())

    return types.float64(k), codegen


@intrinsic
def _pow2_from_sum(typingctx, s):
    """2.0**k from s = k + SHIFT (a float whose low mantissa bits hold k + bias, see
    fexp_neg): those bits moved into the exponent field.  Shifting left by the mantissa
    width keeps only the low 9 (float32) or 12 (float64) bits of s, i.e. k + bias for
    the k in [1 - bias, 0] that fexp_neg forms."""
    if not isinstance(s, types.Float):
        return None
    bits = s.bitwidth
    mant = 23 if bits == 32 else 52

    def codegen(context, builder, signature, args):
        it = ir.IntType(bits)
        v = builder.shl(builder.bitcast(args[0], it), ir.Constant(it, mant))
        return builder.bitcast(v, args[0].type)

    return s(s), codegen


@intrinsic
def _f64_bits(typingctx, x):
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(x), codegen


@intrinsic
def _f64_from_bits(typingctx, k):
    if k != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(k), codegen


# ln2 = LN2_HI + LN2_LO, where LN2_HI has enough trailing zero bits that k*LN2_HI is exact
# for every k the reduction can produce.  LN2_LO is the exact remainder, rounded.
# Polynomials: minimax for relative error on [-ln2/2, ln2/2] with c0 = 1 (so exp(0) = 1
# exactly), from tools/exp_minimax.py: 3.9e-9 (float32, degree 6) and 1.8e-17 (float64,
# degree 11), below the formats' half-ulp.
_F32_LOG2E = np.float32(1.4426950408889634)
_F32_LN2_HI = np.float32(0.693115234375)
_F32_LN2_LO = np.float32(3.194618329871446e-05)
_F32_UNDERFLOW = np.float32(-86.0)  # below: flushed to 0 (exp(-86) ~ 4.5e-38)
_F32_OVERFLOW = np.float32(88.72)  # exp(88.73) > FLT_MAX
_F32_KMIN = np.float32(-125.0)
_F32_SHIFT = np.float32(1.5 * 2**23 + 127)  # see _fexp_neg_f32
_F32_KMAX = np.float32(128.0)
_F32_TWO = np.float32(2.0)
_F32_HALF = np.float32(0.5)
_F32_ZERO = np.float32(0.0)
_F32_INF = np.float32(np.inf)
_F32_C1 = np.float32(1.0000000646833270546)
_F32_C2 = np.float32(0.50000000808002470782)
_F32_C3 = np.float32(0.16666325694062521396)
_F32_C4 = np.float32(0.041666240712711107458)
_F32_C5 = np.float32(0.0083811092900786012807)
_F32_C6 = np.float32(0.0013948580818093910978)
_F32_ONE = np.float32(1.0)

_F64_LOG2E = 1.4426950408889634
_F64_LN2_HI = 0.6931467056274414
_F64_LN2_LO = 4.7493250390316726e-07
_F64_UNDERFLOW = -707.0  # below: flushed to 0 (exp(-707) ~ 9e-308)
_F64_OVERFLOW = 709.78  # exp(709.79) > DBL_MAX
_F64_KMIN = -1021.0
_F64_SHIFT = 1.5 * 2**52 + 1023  # see _fexp_neg_f32
_F64_KMAX = 1024.0
_F64_C1 = 1.0000000000000005588
_F64_C2 = 0.50000000000000055725
_F64_C3 = 0.16666666666657302374
_F64_C4 = 0.04166666666657363583
_F64_C5 = 0.0083333333377154602736
_F64_C6 = 0.0013888888932340796724
_F64_C7 = 0.00019841261491392798694
_F64_C8 = 0.000024801504511037080072
_F64_C9 = 2.7564254929439037522e-6
_F64_C10 = 2.7626296554217169468e-7
_F64_C11 = 2.298131153883436429e-8


@njit(**_HELPER)
def _poly_f32(r):
    p = _F32_C6
    p = p * r + _F32_C5
    p = p * r + _F32_C4
    p = p * r + _F32_C3
    p = p * r + _F32_C2
    p = p * r + _F32_C1
    return p * r + _F32_ONE


@njit(**_HELPER)
def _poly_f64(r):
    p = _F64_C11
    p = p * r + _F64_C10
    p = p * r + _F64_C9
    p = p * r + _F64_C8
    p = p * r + _F64_C7
    p = p * r + _F64_C6
    p = p * r + _F64_C5
    p = p * r + _F64_C4
    p = p * r + _F64_C3
    p = p * r + _F64_C2
    p = p * r + _F64_C1
    return p * r + 1.0


@njit(**_HELPER)
def _fexp_neg_f32(t):
    # t log2(e) rounded to an integer k by adding SHIFT (1.5 * 2**23: the sum's unit in
    # the last place is 1), which also leaves k + 127 in the sum's low mantissa bits:
    # 2**k is those bits moved into the exponent.  No floor, clamp or float-to-int
    # conversion (5 of 19 vector instructions).  NaN propagates through every step;
    # below the underflow bound (-inf included) whatever was formed is replaced by 0.
    sk = t * _F32_LOG2E + _F32_SHIFT
    kf = sk - _F32_SHIFT
    r = t - kf * _F32_LN2_HI
    r = r - kf * _F32_LN2_LO
    res = _poly_f32(r) * _pow2_from_sum(sk)
    return _F32_ZERO if t < _F32_UNDERFLOW else res


@njit(**_HELPER)
def _fexp_f32(t):
    kf = np.floor(t * _F32_LOG2E + _F32_HALF)
    kf = kf if kf > _F32_KMIN else _F32_KMIN
    kf = kf if kf < _F32_KMAX else _F32_KMAX
    r = t - kf * _F32_LN2_HI
    r = r - kf * _F32_LN2_LO
    # 2**k as 2**(k-1) * 2 so that k = 128 (t just below the overflow bound) needs no
    # clamp that would widen |r| and cost accuracy.
    res = _poly_f32(r) * _pow2_f32(np.int32(kf) - 1) * _F32_TWO
    res = _F32_INF if t > _F32_OVERFLOW else res
    return _F32_ZERO if t < _F32_UNDERFLOW else res


@njit(**_HELPER)
def _fexp_neg_f64(t):
    # as _fexp_neg_f32, with SHIFT = 1.5 * 2**52 + 1023
    sk = t * _F64_LOG2E + _F64_SHIFT
    kf = sk - _F64_SHIFT
    r = t - kf * _F64_LN2_HI
    r = r - kf * _F64_LN2_LO
    res = _poly_f64(r) * _pow2_from_sum(sk)
    return 0.0 if t < _F64_UNDERFLOW else res


@njit(**_HELPER)
def _fexp_f64(t):
    kf = np.floor(t * _F64_LOG2E + 0.5)
    kf = kf if kf > _F64_KMIN else _F64_KMIN
    kf = kf if kf < _F64_KMAX else _F64_KMAX
    r = t - kf * _F64_LN2_HI
    r = r - kf * _F64_LN2_LO
    res = _poly_f64(r) * _pow2_f64(np.int64(kf) - 1) * 2.0
    res = np.inf if t > _F64_OVERFLOW else res
    return 0.0 if t < _F64_UNDERFLOW else res


def fexp_neg(t):
    """exp(t) for t <= 0 or NaN (``z - max`` in the softmax kernels): no overflow
    handling, which saves a few instructions per element."""
    raise NotImplementedError("fexp_neg is only callable from Numba-compiled code")


@overload(fexp_neg)
def _fexp_neg_overload(t):
    if t == types.float32:
        return lambda t: _fexp_neg_f32(t)
    if t == types.float64:
        return lambda t: _fexp_neg_f64(t)
    return None


def fexp(t):
    """exp(t) (see the module docstring); dispatches on the float width."""
    raise NotImplementedError("fexp is only callable from Numba-compiled code")


@overload(fexp)
def _fexp_overload(t):
    if t == types.float32:
        return lambda t: _fexp_f32(t)
    if t == types.float64:
        return lambda t: _fexp_f64(t)
    return None


def like(arr, x):
    """``x`` converted to ``arr``'s element type (keeps float32 arithmetic in float32)."""
    raise NotImplementedError("like is only callable from Numba-compiled code")


# An overload (a function compiled for each signature, then inlined by LLVM), not an
# intrinsic like smin below: lowered in place as an intrinsic, the constants it makes
# reach LLVM earlier and the reassociated row sums of the large-C kernels vectorise
# differently (other last bits).
@overload(like)
def _like_overload(arr, x):
    if arr.dtype == types.float32:
        return lambda arr, x: np.float32(x)
    if arr.dtype == types.float64:
        return lambda arr, x: np.float64(x)
    return None


def _pick(typingctx, a, b, op):
    """Python's min (op <) or max (op >) of two numbers, b if ``b op a`` else a, as
    numba.cpython.builtins lowers them: NaN propagation and ties as Numba's own."""
    if not all(isinstance(t, (types.Number, types.Boolean)) for t in (a, b)):
        return None
    ty = typingctx.unify_types(a, b)
    if ty is None:
        return None

    def codegen(context, builder, signature, args):
        va = context.cast(builder, args[0], a, ty)
        vb = context.cast(builder, args[1], b, ty)
        cmp = context.get_function(op, typing_signature(types.boolean, ty, ty))
        return builder.select(cmp(builder, (vb, va)), vb, va)

    return ty(a, b), codegen


@intrinsic
def smin(typingctx, a, b):
    """min(a, b) for two numbers, lowered in place: Numba's own min is an overload,
    compiled as a function of its own for every signature (20-130 ms each on a cold
    cache) for what is one instruction here."""
    return _pick(typingctx, a, b, operator.lt)


@intrinsic
def smax(typingctx, a, b):
    """max(a, b) for two numbers, lowered in place (see ``smin``)."""
    return _pick(typingctx, a, b, operator.gt)


# log(x) = e ln2 + log(m) with x = 2**e m, m in [sqrt(1/2), sqrt(2)), and
# log(m) = 2 atanh(u), u = (m - 1) / (m + 1), |u| <= 0.1716: the series
# 2u (1 + u^2/3 + u^4/5 + ...) truncated after u^20/21 leaves a relative error < 4e-18.
_SQRT2 = 1.4142135623730951
_MANT_MASK = (1 << 52) - 1
_ONE_BITS = 0x3FF0000000000000
_L_C = tuple(1.0 / (2 * k + 1) for k in range(11))
_L_C0, _L_C1, _L_C2, _L_C3, _L_C4, _L_C5, _L_C6, _L_C7, _L_C8, _L_C9, _L_C10 = _L_C


@njit(**_HELPER)
def flog(x):
    """Natural log of a float64, vectorisable (libm's log is not, without SVML).

    Within ~2 ulp for normal positive x; 0 -> -inf, negative -> NaN, inf -> inf,
    NaN -> NaN.  Subnormal x are not supported (the softmax sums it serves are >= 1).
    """
    x = np.float64(x)
    bits = _f64_bits(x)
    e = (bits >> 52) - 1023
    m = _f64_from_bits((bits & _MANT_MASK) | _ONE_BITS)
    big = m > _SQRT2
    m = m * 0.5 if big else m
    ef = float(e + 1) if big else float(e)
    u = (m - 1.0) / (m + 1.0)
    z = u * u
    p = _L_C10
    p = p * z + _L_C9
    p = p * z + _L_C8
    p = p * z + _L_C7
    p = p * z + _L_C6
    p = p * z + _L_C5
    p = p * z + _L_C4
    p = p * z + _L_C3
    p = p * z + _L_C2
    p = p * z + _L_C1
    res = ef * _F64_LN2_HI + (2.0 * u * (p * z) + (2.0 * u + ef * _F64_LN2_LO))
    res = res if x < np.inf else x
    res = -np.inf if x == 0.0 else res
    return np.nan if x < 0.0 else res


@njit(**_HELPER)
def flog1p(u):
    """log(1 + u) for u >= 0, vectorisable, accurate for tiny u (Kahan's trick: the
    rounding of 1 + u is undone by scaling with u / ((1 + u) - 1))."""
    u = np.float64(u)
    w = 1.0 + u
    return u if w == 1.0 else flog(w) * (u / (w - 1.0))


ir_only(globals())
