"""Small serial helpers the kernels share: valid output ranges, strided axpy/copy/dot, and
array fills and sums kept out of ``prange`` bodies."""

from fastconv._config import jit


@jit
def _valid_outputs(out_size, in_size, stride, pad, offset):
    """[lo, hi): the output positions o whose input ``o*stride - pad + offset`` is in the input."""
    lo = 0
    if pad - offset > 0:
        lo = (pad - offset + stride - 1) // stride
    last = in_size - 1 + pad - offset  # o*stride <= last
    hi = 0 if last < 0 else min(out_size, last // stride + 1)
    return lo, max(lo, hi)


# Array expressions (``a[:] = 0``, ``a += b``) written directly inside a ``prange`` body become
# nested parallel loops, which numba compiles slowly (seconds per kernel); these two helpers keep
# them serial, inside the iteration that owns the array.


@jit
def _fill(a, value):
    a[...] = value


@jit
def _add(a, b):
    a += b


@jit
def _axpy(a, x, x0, xstep, y, y0, ystep, count):
    """y[y0 + t*ystep] += a * x[x0 + t*xstep] for t < count (the inner loop of direct conv).

    The unit-step case runs on plain slices, which LLVM vectorises; strided steps cannot be.
    """
    if xstep == 1 and ystep == 1:
        xs, ys = x[x0 : x0 + count], y[y0 : y0 + count]
        for t in range(count):
            ys[t] += a * xs[t]
    else:
        for t in range(count):
            y[y0 + t * ystep] += a * x[x0 + t * xstep]


@jit
def _copy(x, x0, xstep, y):
    """y[t] = x[x0 + t*xstep] for every t (contiguous slices in the unit-step case)."""
    n = y.shape[0]
    if xstep == 1:
        xs = x[x0 : x0 + n]
        for t in range(n):
            y[t] = xs[t]
    else:
        for t in range(n):
            y[t] = x[x0 + t * xstep]


@jit
def _dot(x, x0, xstep, y, count):
    """sum of y[t] * x[x0 + t*xstep] for t < count, accumulated in float64."""
    acc = 0.0
    if xstep == 1:
        xs = x[x0 : x0 + count]
        for t in range(count):
            acc += y[t] * xs[t]
    else:
        for t in range(count):
            acc += y[t] * x[x0 + t * xstep]
    return acc
