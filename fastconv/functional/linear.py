"""linear and its gradient: BLAS products in row chunks, one per thread."""

from __future__ import annotations

import numba
import numpy as np

from fastconv._checks import check_array
from fastconv._kernel_pointer import pointer, typed_flags
from fastconv._threads import single_threaded_blas
from fastconv.kernels import matmul as kmatmul


def _matmul(a, b):
    """a @ b for 2-D a (any layout) and b (C- or F-contiguous, e.g. a weight's transpose).

    Row chunks of ``a``, one single-threaded BLAS call each, in parallel. The chunks are one
    per thread of numba's pool (fixed for the process), not per thread in force: every output
    row comes from the same call at any thread count, so results are bit-identical."""
    a = np.ascontiguousarray(a)
    transpose_b = b.flags.f_contiguous and not b.flags.c_contiguous
    b = b.T if transpose_b else np.ascontiguousarray(b)  # C-contiguous either way
    out = np.empty((a.shape[0], b.shape[0 if transpose_b else 1]), dtype=a.dtype)
    T = numba.config.NUMBA_NUM_THREADS
    item = pointer(
        kmatmul._matmul_rows, (a.dtype, typed_flags(a, b)), lambda: (a, b, transpose_b, out, 0, 0)
    )
    with single_threaded_blas():
        kmatmul._matmul(item, a, b, transpose_b, out, T)
    return out


def _check_weight(weight):
    """At least one feature in and out (as ``nn.Linear``; an empty one broke the reshapes)."""
    if min(weight.shape) < 1:
        raise ValueError(
            f"weight must have at least one output and one input feature, got shape {weight.shape}"
        )


def linear(x, weight, bias=None):
    """``y = x @ weight.T + bias``; x (*, in_features), weight (out_features, in_features)."""
    x = check_array("input", x)
    weight = check_array("weight", weight, ndim=2, dtype=x.dtype)
    _check_weight(weight)
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"input's last dimension must be in_features={weight.shape[1]}, "
            f"got input of shape {x.shape}"
        )
    if bias is not None:
        bias = check_array("bias", bias, ndim=1, dtype=x.dtype)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {bias.shape}")
    y = _matmul(x.reshape(-1, weight.shape[1]), weight.T)
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], weight.shape[0])


def linear_backward(grad_out, x, weight):
    """Returns ``(grad_x, grad_weight, grad_bias)`` of ``linear``."""
    x = check_array("input", x)
    weight = check_array("weight", weight, ndim=2, dtype=x.dtype)
    _check_weight(weight)
    grad_out = check_array("grad_out", grad_out, dtype=x.dtype)
    if grad_out.shape != (*x.shape[:-1], weight.shape[0]):
        raise ValueError(
            f"grad_out must have shape {(*x.shape[:-1], weight.shape[0])}, got {grad_out.shape}"
        )
    g2 = grad_out.reshape(-1, weight.shape[0])
    x2 = x.reshape(-1, weight.shape[1])
    grad_x = _matmul(g2, weight).reshape(x.shape)
    # grad_weight = g2.T @ x2 as row chunks of a copy of g2.T: that copy is small (batch x
    # out_features), while x2 is the large operand. On LeNet's fc1 (64 x 128 and 64 x 3136),
    # 2 threads: 0.27 ms, against 0.57 ms for partial products over batch chunks summed after.
    grad_w = _matmul(np.ascontiguousarray(g2.T), x2)
    return grad_x, grad_w, g2.sum(axis=0)
