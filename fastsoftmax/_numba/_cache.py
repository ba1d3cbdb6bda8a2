"""What Numba's on-disk cache holds: whether a first run will compile.

Numba caches a compiled kernel next to its source (``__pycache__``, or under
``NUMBA_CACHE_DIR``), in an index keyed by the source file's path and modification
time and, per entry, by the signature and the CPU it was compiled for (name and
features).  So a cache is reused only by the same installed files on the same kind of
CPU; anything else compiles again (seconds per kernel).
"""

from __future__ import annotations


def compiled_for_this_cpu(dispatcher) -> bool | None:
    """Whether the cache holds at least one specialisation of `dispatcher` (a cached
    ``@njit`` function) for this CPU, or None when that cannot be told (a Numba whose
    cache internals differ).  Reads only the index file."""
    try:
        index = dispatcher._cache._cache_file._load_index()
        magic = dispatcher.targetctx.codegen().magic_tuple()
        return any(key[1] == magic for key in index)
    except Exception:  # private API: absent or changed in this numba
        return None
