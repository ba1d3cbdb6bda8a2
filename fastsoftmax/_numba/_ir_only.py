"""Helpers compiled as IR for their callers only: the same bits fresh and cached.

Why
---
Numba compiles every ``@njit`` function a kernel calls into a library of its own and
turns it into machine code, and then links a copy of its IR into each caller, which is
optimised with the caller.  In the process that compiles, the JIT binds a caller's
calls to the helper's own machine code (the first definition of the symbol it loaded);
in a process that loads the kernel from Numba's on-disk cache, the helper's library is
never built, and the caller runs its own copy.  The two copies are optimised apart, and
helpers whose sums are compiled with reassociation (``_FR`` in ``kernels.py`` and
``step.py``) may be vectorised differently in each: the first run on an empty cache gave
other last bits than every run after it (300 x 1000 float32, fused: 15% of the gradient's
elements 1 ulp apart).

What
----
:func:`ir_only` marks a module's helpers (the dispatchers compiled with
``no_cpython_wrapper``, which Python cannot call anyway).  A marked helper's library is
optimised and linked into its callers as before, but never given machine code of its
own, so every process runs the callers' copies, as a cached process always did: fresh
and cached runs give the same bits (``tests/test_first_run.py``), and the first run
skips the helpers' code generation.

This reaches into Numba's code generator (``numba.core.codegen``) and dispatcher
(``_FunctionCompiler._compile_core``).  :func:`supported` checks that what it relies on
is there; where it is not (another Numba), nothing is changed and the old behaviour
stands.  Libraries that are not marked are not affected by the patches.  Setting
``FASTSOFTMAX_IR_ONLY_HELPERS=0`` before fastsoftmax compiles turns it off.
"""

from __future__ import annotations

import functools
import inspect
import os

_MARK = "_fastsoftmax_ir_only"
ENV_SWITCH = "FASTSOFTMAX_IR_ONLY_HELPERS"
_state = {"patched": False}


def _codegen():
    from numba.core import codegen

    return codegen


@functools.cache  # each kernel module asks; the answer cannot change in a process
def supported() -> bool:
    """Whether this Numba has the internals the mark relies on (checked by name and by
    the source of the one dispatcher method it replaces)."""
    try:
        from numba.core import compiler, dispatcher

        cg = _codegen()
        needs = (
            (cg.CPUCodeLibrary, "_finalize_final_module"),
            (cg.CPUCodeLibrary, "_finalize_dynamic_globals"),
            (cg.CPUCodeLibrary, "_verify_declare_only_symbols"),
            (cg.JITCodeLibrary, "get_pointer_to_function"),
            (cg.JITCPUCodegen, "set_env"),
            (cg.JITCPUCodegen, "create_library"),
            (dispatcher._FunctionCompiler, "_compile_core"),
        )
        if not all(callable(getattr(cls, name, None)) for cls, name in needs):
            return False
        params = inspect.signature(compiler.compile_extra).parameters
        source = inspect.getsource(dispatcher._FunctionCompiler._compile_core)
    except Exception:
        return False
    return "library" in params and "compiler.compile_extra(" in source


def _patch_codegen() -> None:
    """Teach Numba's JIT libraries about the mark, once (unmarked ones behave as before)."""
    if _state["patched"]:
        return
    cg = _codegen()
    finalize_module = cg.CPUCodeLibrary._finalize_final_module
    pointer_to = cg.JITCodeLibrary.get_pointer_to_function
    set_env = cg.JITCPUCodegen.set_env

    @functools.wraps(finalize_module)
    def _finalize_final_module(self):
        if not getattr(self, _MARK, False):
            return finalize_module(self)
        # as Numba's, less handing the module to the JIT (its machine code)
        self._finalize_dynamic_globals()
        self._verify_declare_only_symbols()
        self._finalized = True
        return None

    @functools.wraps(pointer_to)
    def get_pointer_to_function(self, name):
        if getattr(self, _MARK, False):
            self._ensure_finalized()
            return 0  # no machine code: as for a symbol the library does not define
        return pointer_to(self, name)

    @functools.wraps(set_env)
    def _set_env(self, env_name, env):
        # a marked library's environment was never given to the JIT: nothing to set
        # (its callers' copies run without it, as they do when loaded from the cache)
        if not self._engine.is_symbol_defined(env_name):
            return None
        return set_env(self, env_name, env)

    cg.CPUCodeLibrary._finalize_final_module = _finalize_final_module
    cg.JITCodeLibrary.get_pointer_to_function = get_pointer_to_function
    cg.JITCPUCodegen.set_env = _set_env
    _state["patched"] = True


def _compile_core_marked(fc, args, return_type):
    """Numba's _FunctionCompiler._compile_core, with a marked library passed in."""
    from numba.core import compiler

    flags = compiler.Flags()
    fc.targetdescr.options.parse_as_flags(flags, fc.targetoptions)
    flags = fc._customize_flags(flags)
    impl = fc._get_implementation(args, {})
    context = fc.targetdescr.target_context
    library = context.codegen().create_library(impl.__qualname__)
    setattr(library, _MARK, True)
    cres = compiler.compile_extra(
        fc.targetdescr.typing_context, context, impl, args=args, return_type=return_type,
        flags=flags, locals=fc.locals, library=library, pipeline_class=fc.pipeline_class,
    )  # fmt: skip
    if cres.typing_error is not None and not flags.enable_pyobject:
        raise cres.typing_error
    return cres


def ir_only(namespace: dict) -> int:
    """Mark the helpers in `namespace` (a module's globals()): every Numba dispatcher
    compiled without a CPython wrapper.  Returns how many were marked (0 where Numba is
    not supported, or FASTSOFTMAX_IR_ONLY_HELPERS=0: nothing is changed then)."""
    from numba.core.registry import CPUDispatcher

    if os.environ.get(ENV_SWITCH, "").strip() == "0" or not supported():
        return 0
    _patch_codegen()
    marked = 0
    for obj in list(namespace.values()):
        if not isinstance(obj, CPUDispatcher) or not obj.targetoptions.get("no_cpython_wrapper"):
            continue
        fc = obj._compiler
        if getattr(fc, _MARK, False):
            continue
        fc._compile_core = functools.partial(_compile_core_marked, fc)
        setattr(fc, _MARK, True)
        marked += 1
    return marked


def is_ir_only(dispatcher) -> bool:
    """Whether `dispatcher` was marked by :func:`ir_only`."""
    return bool(getattr(getattr(dispatcher, "_compiler", None), _MARK, False))
