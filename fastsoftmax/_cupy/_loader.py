"""Finding, compiling and launching the CUDA kernels in ``kernels/*.cu``.

The ``.cu`` files ship inside the package as ``fastsoftmax._kernels`` (the repository's
``kernels/`` folder; see ``pyproject.toml``) and are read with importlib.resources.
Each file is compiled once per process and device by ``cupy.RawModule`` (NVRTC); kernels
are looked up by op and dtype name, ``f"{op}_{dtype.name}"``.

Everything in this module except ``module()`` and ``launch()`` runs without CuPy, so
the argument checks are tested on machines without a GPU.
"""

from __future__ import annotations

import importlib.resources
from functools import cache
from pathlib import Path

import numpy as np

KERNEL_PACKAGE = "fastsoftmax._kernels"
# The file that holds each op's entry points.
FILES = {
    "softmax": "softmax.cu",
    "log_softmax": "softmax.cu",
    "logsumexp": "softmax.cu",
    "xent_fused": "xent.cu",
    "xent_fwd": "xent.cu",
    "xent_prob": "xent.cu",
    "xent_epilogue": "xent.cu",
}
# Entry points without a dtype in their name
UNTYPED = {"xent_prologue": "xent.cu"}
DTYPES = ("float16", "float32", "float64")
COMPILE_OPTIONS = ("-std=c++17",)

# Each entry point's parameters, as the host passes them: "p" a device pointer (a CuPy
# array, or numpy.uint64(0) for NULL), "i" numpy.int64, "d" numpy.float64, "i32"
# numpy.int32.  A RawKernel takes any tuple and reinterprets it, so a host argument list
# that drifts from the kernel gives wrong numbers, not an error: tests/test_cuda.py
# checks this table against the PTX of every entry, and with CHECK_ARGS set (the GPU
# tests set it) every launch checks its arguments against it.
_SIGNATURES = {  # the parameters in order, by kind
    "softmax": "p p i i",  # x out N C
    "log_softmax": "p p i i",
    "logsumexp": "p p i i",
    # z y w wsum ignore eps scale scale_dev loss g err N C
    "xent_fused": "p p p d i d d p p p p i i",
    "xent_fwd": "p p p d i d d p p p i i",  # as xent_fused, without g
    "xent_prob": "p p p d d p p i i",  # z q w eps scale loss g N C
    "xent_epilogue": "p i p i32 p",  # loss N scalars mean value
    "xent_prologue": "p i i32 p p i",  # y ignore mean scalars err N
    # x y sw a rows n_rows batch steps lr mu wd coef w b vw vb wa ba losses err C d
    # w_in_smem stage_rows
    "sgd_steps": "p p p d p i i i p d d p p p p p p p p p i i i32 i32",
}
SIGNATURES = {op: tuple(kinds.split()) for op, kinds in _SIGNATURES.items()}
CHECK_ARGS = False


def kernel_name(op: str, dtype) -> str:
    """The extern "C" symbol of `op` for `dtype`, e.g. ``xent_fused_float32``."""
    name = np.dtype(dtype).name
    if op not in FILES:
        raise ValueError(f"no CUDA kernel for op {op!r}; have {sorted(FILES)}")
    if name not in DTYPES:
        raise TypeError(f"the CUDA kernels take {DTYPES}, got {name}")
    return f"{op}_{name}"


# Where the .cu files are in a source checkout (the repository's kernels/)
CHECKOUT_KERNELS = Path(__file__).resolve().parents[2] / "kernels"


def kernel_root():
    """The folder of the ``.cu`` files: the installed resource package, else (a source
    checkout on ``PYTHONPATH``, never installed) the repository's ``kernels/``."""
    try:
        return importlib.resources.files(KERNEL_PACKAGE)
    except ModuleNotFoundError:
        if (CHECKOUT_KERNELS / "common.cuh").is_file():
            return CHECKOUT_KERNELS
        raise


def kernel_sources() -> dict[str, str]:
    """{file name: CUDA source} of every ``.cu`` file shipped with the package."""
    root = kernel_root()
    return {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in root.iterdir()
        if entry.name.endswith(".cu")
    }


def check_device_array(arr, name: str, dtype, shape: tuple[int, ...]) -> None:
    """Refuse what a RawKernel would silently misread: it takes a raw pointer, so a view
    with strides, an offset layout or another dtype gives wrong numbers, not an error.

    `arr` needs .dtype, .shape, .strides (CuPy and NumPy arrays both have them)."""
    want = np.dtype(dtype)
    if arr.dtype != want:
        raise TypeError(f"{name} must be {want.name} for this kernel, got {arr.dtype}")
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(arr.shape)}")
    expected = []
    step = want.itemsize
    for size in reversed(shape):
        expected.append(step)
        step *= max(int(size), 1)
    expected.reverse()
    if any(s > 1 and st != ex for s, st, ex in zip(shape, arr.strides, expected, strict=True)):
        raise ValueError(
            f"{name} must be C-contiguous for the kernel (strides {tuple(arr.strides)}, "
            f"expected {tuple(expected)}); pass cupy.ascontiguousarray({name})"
        )


# Launch rule of the kernels (kernels/README.md): 256 threads per block, no dynamic
# shared memory; every kernel loops over rows grid-stride, so any grid >= 1 gives the same
# bits, and the grid below only gives each row its own team: a group of G lanes for
# C <= REG_C_MAX (the row in registers), a warp for C <= WARP_C_MAX, else a block.
THREADS = 256
REG_C_MAX = 128
WARP_C_MAX = 1024
MAX_GRID = 2**31 - 1


def rows_per_block(c: int) -> int:
    """Rows one 256-thread block works on at a time for rows of c classes."""
    if c <= REG_C_MAX:
        lanes = 1
        while lanes < 32 and lanes * 4 < c:
            lanes *= 2
        return THREADS // lanes
    return THREADS // 32 if c <= WARP_C_MAX else 1


def grid_for(n: int, c: int) -> tuple[int, int, int]:
    """Grid of the launch over n >= 1 rows of c >= 1 classes (capped: grid-stride)."""
    return (max(1, min(-(-n // rows_per_block(c)), MAX_GRID)), 1, 1)


@cache
def module(file: str, device_id: int):
    """The compiled RawModule of `file` on device `device_id` (compiled once)."""
    import cupy as cp

    # common.cuh is prepended rather than #included: CuPy's compile cache keys on the
    # source text, so an edited header must change the text (the .cu files guard their
    # #include with FASTSOFTMAX_COMMON_CUH)
    root = kernel_root()
    header = (root / "common.cuh").read_text(encoding="utf-8")
    source = header + "\n" + kernel_sources()[file]
    with cp.cuda.Device(device_id):
        return cp.RawModule(code=source, options=COMPILE_OPTIONS)


def arg_kinds(args: tuple) -> tuple[str, ...]:
    """The SIGNATURES kinds of host arguments ("?" for anything a kernel cannot take)."""
    kinds = []
    for a in args:
        if isinstance(a, np.uint64) or type(a).__module__.startswith("cupy"):
            kinds.append("p")
        elif isinstance(a, np.int64):
            kinds.append("i")
        elif isinstance(a, np.float64):
            kinds.append("d")
        elif isinstance(a, np.int32):
            kinds.append("i32")
        else:
            kinds.append("?")
    return tuple(kinds)


def check_args(signature: str, args: tuple) -> None:
    """Raise if `args` do not match SIGNATURES[signature] (see CHECK_ARGS)."""
    if arg_kinds(args) != SIGNATURES[signature]:
        raise TypeError(
            f"{signature}: host arguments {arg_kinds(args)} do not match the kernel's "
            f"{SIGNATURES[signature]}"
        )


def launch(op: str, dtype, n: int, c: int, args: tuple) -> None:
    """Launch `op` for `dtype` over n rows of c classes on the current device."""
    import cupy as cp

    if CHECK_ARGS:
        check_args(op, args)
    name = kernel_name(op, dtype)
    kernel = module(FILES[op], cp.cuda.Device().id).get_function(name)
    kernel(grid_for(n, c), (THREADS, 1, 1), args)


def launch_one_block(op: str, dtype, args: tuple) -> None:
    """Launch one block of `op`: xent_prologue (dtype None) or xent_epilogue for dtype."""
    import cupy as cp

    if CHECK_ARGS:
        check_args(op, args)
    name = op if dtype is None else kernel_name(op, dtype)
    kernel = module(UNTYPED.get(op) or FILES[op], cp.cuda.Device().id).get_function(name)
    kernel((1, 1, 1), (THREADS, 1, 1), args)
