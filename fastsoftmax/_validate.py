"""Argument checks of the public API: every error names the argument, what was expected
and what was given."""

from __future__ import annotations

import numbers
import operator

import numpy as np

_F16, _F32, _F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
_I64 = np.dtype(np.int64)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # the kernels' integer
_I64_MAX = np.uint64(INT64_MAX)
FLOAT_DTYPES = (_F16, _F32, _F64)
REDUCTIONS = ("mean", "sum", "none")
# The checks below test the native dtypes by identity first (NumPy returns these very
# objects for native arrays): comparing a dtype with == costs ~0.1 us, with a scalar
# type (dtype == np.float16) ~0.2 us, and a 512 x 10 cross-entropy takes ~12 us.


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype the kernels run in: float16 is computed in float32."""
    if dtype is _F32 or dtype is _F64:
        return dtype
    return _F32 if dtype == _F16 else dtype


def float_array(x: object, name: str) -> np.ndarray:
    """``x`` as an ndarray of a floating dtype (no copy for an ndarray)."""
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    dt = arr.dtype
    if dt is not _F32 and dt is not _F64 and dt not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating-point array (float16, float32 or float64), "
            f"got dtype {arr.dtype}; convert it with {name}.astype(np.float32)"
        )
    return arr


def flag(value: object, name: str) -> bool:
    """A True/False option (a string such as "no" would be true)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def axis_index(axis: object, ndim: int, name: str) -> int:
    if isinstance(axis, bool | np.bool_):  # an index to Python, not an axis
        raise TypeError("axis must be an integer, got bool")
    try:
        ax = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis must be an integer, got {type(axis).__name__}") from None
    if not -ndim <= ax < ndim:
        raise ValueError(f"axis {ax} is out of bounds for {name} with {ndim} dimension(s)")
    return ax % ndim


def logits_2d(logits: object) -> np.ndarray:
    z = float_array(logits, "logits")
    if z.ndim != 2:
        raise ValueError(f"logits must be 2-D (N, C), got shape {z.shape}")
    if z.shape[1] < 1:
        raise ValueError(f"logits must have at least one class (C >= 1), got shape {z.shape}")
    return z


def reduction_name(reduction: object) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction  # type: ignore[return-value]


def reduction_scale(reduction: str, denom: float) -> float:
    """The factor every gradient of a reduction is multiplied by: 1/denom for "mean"
    (0 when denom is 0: every target ignored, where PyTorch gives NaN), 1 otherwise."""
    if reduction != "mean":
        return 1.0
    return 1.0 / denom if denom else 0.0


def smoothing(label_smoothing: object) -> float:
    if type(label_smoothing) is float and 0.0 <= label_smoothing <= 1.0:
        return label_smoothing  # the common case, without the slower ABC check
    if not isinstance(label_smoothing, numbers.Real) or isinstance(label_smoothing, bool):
        raise TypeError(
            f"label_smoothing must be a real number in [0, 1], got {type(label_smoothing).__name__}"
        )
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    return eps


def ignore(ignore_index: object) -> int:
    if type(ignore_index) is not int:
        if isinstance(ignore_index, bool | np.bool_):
            raise TypeError("ignore_index must be an integer, got bool")
        try:
            ignore_index = operator.index(ignore_index)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"ignore_index must be an integer, got {type(ignore_index).__name__}"
            ) from None
        if type(ignore_index) is not int:  # a symbolic int under torch.compile: as is
            return ignore_index
    if not INT64_MIN <= ignore_index <= INT64_MAX:  # the kernels' integer
        raise ValueError(f"ignore_index must fit in int64, got {ignore_index}")
    return ignore_index


def ignore_with_probabilities(ignore: int) -> None:
    """PyTorch's rule: an ignore_index that could name a class (>= 0) is an error with
    probability targets, which have no class index to ignore."""
    if ignore >= 0:
        raise ValueError(
            f"ignore_index must be negative with probability targets (there is no class "
            f"index to ignore), got {ignore}"
        )


def target(target: object, n: int, c: int, dtype: np.dtype) -> tuple[str, np.ndarray]:
    """("index", int64 (N,)) or ("prob", (N, C) in `dtype`), contiguous."""
    t = target if isinstance(target, np.ndarray) else np.asarray(target)
    if t.dtype is _I64 and t.shape == (n,) and t.flags.c_contiguous:
        return "index", t
    kind = t.dtype.kind
    if kind in "iu":
        if t.ndim != 1:
            raise ValueError(
                f"target of class indices must be 1-D (N,), got shape {t.shape}; "
                f"probability targets must be floating-point (N, C) = ({n}, {c})"
            )
        if t.shape[0] != n:
            raise ValueError(f"target has {t.shape[0]} rows but logits has {n} (N mismatch)")
        if t.dtype == np.uint64 and t.size and t.max() > _I64_MAX:
            # past int64 a value would wrap around (onto ignore_index, even)
            row = int(np.argmax(t > _I64_MAX))
            raise ValueError(f"target[{row}] = {t[row]} is out of range for {c} classes")
        return "index", np.ascontiguousarray(t, dtype=np.int64)
    if kind == "f":
        if t.shape != (n, c):
            raise ValueError(
                f"target of probabilities must have the shape of logits {(n, c)}, got "
                f"{t.shape}; class indices must be an integer array (N,)"
            )
        return "prob", np.ascontiguousarray(t, dtype=dtype)
    raise TypeError(
        "target must be integer class indices (N,) or floating-point probabilities "
        f"(N, C), got dtype {t.dtype}"
    )


def class_weight(
    weight: object, c: int, dtype: np.dtype, name: str = "weight"
) -> tuple[np.ndarray | None, float]:
    """(weight as a contiguous (C,) array of `dtype`, its float64 sum); (None, C) if unset."""
    if weight is None:
        return None, float(c)
    w = weight if isinstance(weight, np.ndarray) else np.asarray(weight)
    if w.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real numeric array (C,), got dtype {w.dtype}")
    if w.shape != (c,):
        raise ValueError(f"{name} must have shape (C,) = ({c},), got {w.shape}")
    w = np.ascontiguousarray(w, dtype=dtype)
    return w, float(w.sum(dtype=np.float64))


def same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_b} must have the shape of {name_a} {a.shape}, got {b.shape}")


def out_array(
    out: object, shape: tuple[int, ...], dtype: np.dtype, name: str = "out"
) -> np.ndarray:
    out_array_like(out, shape, dtype, np.ndarray, name)
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out


def out_array_like(out: object, shape, dtype, array_type: type, name: str = "out") -> None:
    """`out` is an `array_type` (NumPy or CuPy) of `shape` and `dtype`."""
    if not isinstance(out, array_type):
        kind = "a NumPy" if array_type is np.ndarray else f"a {array_type.__module__}"
        raise TypeError(f"{name} must be {kind} array, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(out.shape)}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {out.dtype}")
