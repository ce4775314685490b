"""Load a compiled kernel from numba's on-disk cache without numba's compiler set-up.

Why: the warm start (a new process, the cache filled). Before it loads anything from the cache,
numba "refreshes" its target context: it imports and registers every typing and lowering module
it has (``numba.np.linalg``, ``numba.np.arraymath``, the cffi support, which imports pycparser,
...). On this machine kind that took 0.35-0.48 s, a third of a warm start's whole process, and
its tens of thousands of new objects make the interpreter's exit slower too. Only compiling
needs those registries, and numba's compiler refreshes them itself before it compiles
(``CompilerBase.__init__``), so a cache miss still works as before.

Loading machine code needs only the C symbols it may link against, and all of them are
registered by then except two sets that refresh used to bring: numba's runtime (NRT, which a
kernel that allocates calls), initialised here as refresh does first, and the hash secret
symbols that ``numba.cpython.hashing`` registers when imported (string and tuple hashing).
Parallel kernels start numba's thread pool themselves when loaded (their ``reload_init``).

``QuickLoadCache`` is numba's own ``FunctionCache`` with that one method changed; if a numba
version lacks the method it relies on, kernels keep numba's cache class (``cache_class()``).
"""

from __future__ import annotations

from numba.core.caching import FunctionCache
from numba.core.runtime import nrt


class QuickLoadCache(FunctionCache):
    """numba's cache of one kernel: loads without refreshing the target context."""

    def load_overload(self, sig, target_context):
        nrt.rtsys.initialize(target_context)  # no-op after the first time
        import numba.cpython.hashing  # noqa: F401  (registers the hash secret symbols)

        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)


def cache_class():
    """The cache class for fastconv's kernels: ``QuickLoadCache`` where numba has the private
    methods it calls, else numba's own ``FunctionCache``."""
    needed = ("_load_overload", "_guard_against_spurious_io_errors")
    return QuickLoadCache if all(hasattr(FunctionCache, m) for m in needed) else FunctionCache


def use_quick_load(dispatcher):
    """Give ``dispatcher`` (a ``numba.njit(cache=True)`` kernel) the quick-loading cache."""
    cls = cache_class()
    if type(dispatcher._cache) is FunctionCache and cls is not FunctionCache:
        dispatcher._cache = cls(dispatcher.py_func)
    return dispatcher
