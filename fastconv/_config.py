"""Settings every kernel and public function shares: the numba flags, and argument checks.

Kernels (``fastconv.kernels``) are compiled with ``jit``/``pjit`` below and nothing else, so the
fastmath flags and the cache policy live in exactly one place.
"""

from __future__ import annotations

import numbers

import numba
import numpy as np

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


FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ---------------------------------------------------------------------------------------------
# Argument checks. Each raises before any kernel runs, naming the argument, what was expected
# and what was given.
# ---------------------------------------------------------------------------------------------


def check_array(name, x, ndim=None, dtype=None):
    """Return ``x`` as a C-contiguous float32/float64 array, or raise naming ``name``.

    ``ndim`` is an int or a tuple of allowed ints; ``dtype`` (if given) is the dtype ``x`` must
    share, e.g. the input's dtype when checking a weight.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} must have the same dtype as the input ({dtype}), got {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{name} must be {want}, got {x.ndim}-D array of shape {x.shape}")
    return np.ascontiguousarray(x)


def pair(name, value, minimum=None):
    """Normalise an int or an ``(h, w)`` pair of ints to a tuple, checking ``value >= minimum``."""
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool):
        result = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(
            isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, bool) for v in value
        )
    ):
        result = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints (h, w), got {value!r}")
    if minimum is not None and min(result) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return result


def check_probability(name, p):
    if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a float in [0, 1], got {p!r}")
    return float(p)
