"""Settings every kernel shares: the numba flags, the cache policy and the tuning constants.

Kernels (``fastconv.kernels``) are compiled with ``jit``/``pjit`` below and nothing else, so the
fastmath flags and the cache policy live in exactly one place.
"""

from __future__ import annotations

import numba

# Not the blanket fastmath option: its ``nnan``/``ninf`` flags let LLVM assume there is no NaN
# or inf, which silently breaks max pooling's ``-inf`` start value and NaN propagation. These
# three are safe:
# ``reassoc`` lets LLVM vectorise sums, ``contract`` allows fused multiply-add, ``nsz`` ignores the
# sign of zero. Results still match the float64 reference to ~1e-12.
FASTMATH = frozenset({"reassoc", "contract", "nsz"})

# Cache policy: every kernel is compiled lazily, once per dtype, and written to numba's on-disk
# cache (``__pycache__`` beside the source, or ``$NUMBA_CACHE_DIR``), so only the first process on
# a machine pays the compile time. ``cache=True`` works with ``parallel=True`` on numba >= 0.59.
CACHE = True


def jit(fn):
    """Serial kernel: ``@jit`` on a function of preallocated arrays."""
    return numba.njit(cache=CACHE, fastmath=set(FASTMATH), nogil=True)(fn)


def pjit(fn):
    """Parallel kernel: its ``prange`` iterations must each own what they write."""
    return numba.njit(cache=CACHE, fastmath=set(FASTMATH), nogil=True, parallel=True)(fn)
