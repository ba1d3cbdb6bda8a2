"""What Numba compiles for: the CPU name, the LLVM feature string, and the widest
vectors LLVM makes of them.  In the kernels' layer because a kernel's code depends on it
(``_numba/step.py``); ``fastsoftmax.machine`` reports it with the benchmarks.  Imports
Numba only when asked."""

from __future__ import annotations

import functools
import os

# An x86 function on 16 x int32 vectors (512 bits), allowed 512-bit registers: LLVM
# compiles it to zmm instructions when the target has AVX-512F, to two ymm halves with
# AVX2 (256-bit integer vectors), to xmm quarters below.  Opaque pointers (LLVM >= 15),
# then typed ones for older llvmlite.
_SIMD_PROBE_IR = """
define void @probe({ptr} %p) "min-legal-vector-width"="512" {{
  %v = load <16 x i32>, {ptr} %p, align 64
  %w = add <16 x i32> %v, %v
  store <16 x i32> %w, {ptr} %p, align 64
  ret void
}}
"""


def simd_of_feature_string(features: str) -> str:
    """The simd name ("avx512", "avx2" or "sse") an LLVM feature string spells out
    ("+avx2,-avx512f,...": the last mention of a feature wins)."""
    on: dict[str, bool] = {}
    for item in features.split(","):
        item = item.strip()
        if item[:1] in "+-" and len(item) > 1:
            on[item[1:]] = item[0] == "+"
    return "avx512" if on.get("avx512f") else "avx2" if on.get("avx2") else "sse"


def simd_of_llvm_target(ll, cpu: str, features: str) -> str:
    """What LLVM makes of (cpu, features) as Numba passes them, asked by compiling the
    probe: the CPU model's own features count as much as the feature string (an empty
    string means exactly those), and LLVM resolves the two as it will for the kernels."""
    ll.initialize_native_target()
    ll.initialize_native_asmprinter()
    triple = ll.get_process_triple()
    target = ll.Target.from_triple(triple)
    last_error: Exception | None = None
    for ptr in ("ptr", "<16 x i32>*"):
        try:
            mod = ll.parse_assembly(_SIMD_PROBE_IR.format(ptr=ptr))
        except RuntimeError as err:  # this LLVM does not parse that pointer syntax
            last_error = err
            continue
        mod.triple = triple
        tm = target.create_target_machine(cpu=cpu, features=features, opt=0)
        asm = tm.emit_assembly(mod)
        return "avx512" if "zmm" in asm else "avx2" if "ymm" in asm else "sse"
    raise RuntimeError(f"the SIMD probe did not parse: {last_error}")


@functools.cache
def numba_target() -> dict:
    """What Numba compiles for (computed once): the CPU
    Numba compiles for (``numba_cpu_name``: ``NUMBA_CPU_NAME`` or llvmlite's host CPU)
    and the LLVM feature string it passes with it (``numba_cpu_features``, as
    numba.core.codegen computes it: ``NUMBA_CPU_FEATURES`` when set, ``""`` under
    ``NUMBA_CPU_NAME=generic``, else the host's features, AVX off under
    ``NUMBA_ENABLE_AVX=0``); and ``simd``, "avx512" / "avx2" / "sse", asked of LLVM by
    compiling a 512-bit vector add for that (cpu, features) (None off x86).  So
    ``NUMBA_CPU_NAME=znver3`` alone keeps the host's ``+avx512f`` (zmm code); with
    ``NUMBA_CPU_FEATURES=`` (empty: the model's own features) it gives AVX2.  ``*_from``
    says where each value came from; without Numba the numba_* values and simd are None.
    """
    keys = ("numba_cpu_name", "numba_cpu_features", "simd")
    info = dict.fromkeys(k + s for k in keys for s in ("", "_from"))
    try:
        import llvmlite.binding as ll
        from numba.core import config
        from numba.core.codegen import get_host_cpu_features
    except ImportError:
        return info
    if config.CPU_NAME is None:
        name, name_from = ll.get_host_cpu_name(), "host (llvmlite.binding.get_host_cpu_name)"
    else:
        name, name_from = config.CPU_NAME, "NUMBA_CPU_NAME"
    if config.CPU_FEATURES is not None:
        features = config.CPU_FEATURES
        if "NUMBA_CPU_FEATURES" in os.environ:
            features_from = "NUMBA_CPU_FEATURES"
        else:
            features_from = "none with NUMBA_CPU_NAME=generic"
        if not features:
            features_from += " (empty: the CPU model's own features)"
    else:
        features = get_host_cpu_features()
        features_from = "host (llvmlite.binding.get_host_cpu_features)"
        if not config.ENABLE_AVX:
            features_from += ", AVX off (NUMBA_ENABLE_AVX=0)"
    info.update(numba_cpu_name=name, numba_cpu_name_from=name_from)
    info.update(numba_cpu_features=features, numba_cpu_features_from=features_from)
    if not ll.get_process_triple().startswith(("x86_64", "i386", "i686")):
        info["simd_from"] = "not x86"
        return info
    try:
        info["simd"] = simd_of_llvm_target(ll, name, features)
        info["simd_from"] = "LLVM codegen probe of Numba's (cpu, features)"
    except Exception as err:  # an llvmlite without the calls the probe needs
        info["simd"] = simd_of_feature_string(features)
        info["simd_from"] = f"feature string (the LLVM probe failed: {err})"
    return info


def narrow_registers() -> bool:
    """Whether the CPU Numba compiles for has 16 vector registers (AVX2 and below)
    rather than 32 (AVX-512; arm64's NEON): some kernels then lay out their loops
    differently (``_numba/step.py``, ``_numba/kernels.py``, ``_numba/_transpose.py``).
    Numba's cache is keyed by that CPU and its features, so a cached kernel was compiled
    with the same answer."""
    return numba_target()["simd"] in ("avx2", "sse")
