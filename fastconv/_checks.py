"""Argument checks shared by every public function: functional, nn, optim, init and datasets.

Each check raises before any kernel runs, with a ``TypeError`` (wrong kind of value) or a
``ValueError`` (right kind, wrong value) whose message names the argument, says what was
expected and shows what was given. Each returns the normalised value, so callers write
``stride = pair("stride", stride, minimum=1)`` and never re-check.
"""

from __future__ import annotations

import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# The largest size, stride, padding, dilation or count accepted. Kernels index with int64 and
# add or multiply two such numbers at most, which stays far from overflow; no array has an axis
# this long (a numba typing error, an OverflowError or a wrong shape came out of larger ones).
MAX_SIZE = 2**31 - 1


def is_int(value):
    """True for Python and NumPy integers, but not for bools (``True`` is not a size)."""
    if type(value) is int:  # the common case, without the slower ABC check below
        return True
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(
        value, (bool, np.bool_)
    )


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
    if x.ndim == 0:
        return x  # contiguous already; np.ascontiguousarray would make it 1-d
    return np.ascontiguousarray(x)


def pair(name, value, minimum=None):
    """Normalise an int or an ``(h, w)`` pair of ints to a tuple, checking ``value >= minimum``."""
    if is_int(value):
        result = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(is_int(v) for v in value):
        result = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints (h, w), got {value!r}")
    if minimum is not None and min(result) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if max(abs(v) for v in result) > MAX_SIZE:
        raise ValueError(f"{name} must be at most {MAX_SIZE}, got {value!r}")
    return result


def positive_int(name, value):
    """``value`` as an int >= 1."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not 1 <= value <= MAX_SIZE:
        raise ValueError(f"{name} must be a positive int (at most {MAX_SIZE}), got {value!r}")
    return int(value)


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def real(name, value, minimum=None, below=None):
    """``value`` as a Python float, checking ``minimum <= value < below`` (each bound optional)."""
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if minimum is not None and below is not None:
        if not minimum <= value < below:
            raise ValueError(f"{name} must be in [{minimum:g}, {below:g}), got {value!r}")
    elif minimum is not None and not value >= minimum:  # `not >=` also rejects NaN
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")
    return value


def check_probability(name, p):
    """``p`` as a float in [0, 1]."""
    if not isinstance(p, numbers.Real) or isinstance(p, (bool, np.bool_)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a float in [0, 1], got {p!r}")
    return float(p)


def float_dtype(dtype, name="dtype"):
    """``dtype`` as ``np.dtype('float32')`` or ``np.dtype('float64')``."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}")
    return dt


def generator(rng, default=None, name="rng"):
    """The one random-generator contract of fastconv.

    ``rng`` may be a ``numpy.random.Generator`` (used as is, so the caller's stream advances),
    an int seed (a new generator seeded with it) or None, which means ``default`` (callers pass
    ``fastconv.init``'s module generator, reseeded by ``fastconv.init.manual_seed``).
    """
    if rng is None and default is not None:
        return default
    if isinstance(rng, np.random.Generator):
        return rng
    if is_int(rng):
        return np.random.default_rng(int(rng))
    want = "a numpy.random.Generator, an int seed" + (" or None" if default is not None else "")
    raise TypeError(f"{name} must be {want}, got {rng!r}")


def pool_padding(padding, kernel_size):
    """PyTorch's rule for pooling layers: padding at most half the window, on each axis."""
    pad = pair("padding", padding, minimum=0)
    kernel = pair("kernel_size", kernel_size, minimum=1)
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(
            f"padding must be at most half of kernel_size {kernel_size!r}, got {padding!r}"
        )
    return pad
