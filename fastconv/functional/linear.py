"""linear and its gradient: BLAS products in row chunks, one per thread."""

from __future__ import annotations

import numba
import numpy as np

from fastconv._checks import check_array
from fastconv._config import tuning
from fastconv._threads import get_num_threads, single_threaded_blas
from fastconv.kernels import matmul as kmatmul


def _matmul(a, b):
    """a @ b for 2-D a (any layout) and b (C- or F-contiguous, e.g. a weight's transpose)."""
    a = np.ascontiguousarray(a)
    if not (b.flags.c_contiguous or b.flags.f_contiguous):
        b = np.ascontiguousarray(b)
    out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    with single_threaded_blas():
        kmatmul._matmul(a, b, out, get_num_threads())
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
    return grad_x, _matmul_tn(g2, x2), g2.sum(axis=0)


def _matmul_tn(a, b):
    """a.T @ b for C-contiguous a (K, M) and b (K, N), without a transposed copy of ``a``
    (``a.T`` is an F-contiguous operand BLAS takes as is).

    Small products are one BLAS call; larger ones are summed, in order, from parts over chunks
    of the K rows computed in parallel (``Tuning.matmul_serial_macs``). The chunks depend on the
    shapes and numba's pool size (fixed for the process), never on the thread count in force,
    so results are bit-identical at 1 and 2 threads; the parts stay within
    ``Tuning.matmul_parts_bytes``.
    """
    K, M, N = a.shape[0], a.shape[1], b.shape[1]
    settings = tuning()
    P = min(
        numba.config.NUMBA_NUM_THREADS, K, settings.matmul_parts_bytes // max(1, M * N * a.itemsize)
    )
    if P <= 1 or K * M * N <= settings.matmul_serial_macs:
        out = np.empty((M, N), dtype=a.dtype)
        with single_threaded_blas():
            kmatmul._matmul_tn(a, b, out)
        return out
    parts = np.empty((P, M, N), dtype=a.dtype)
    with single_threaded_blas():
        kmatmul._matmul_tn_parts(a, b, parts)
    return parts.sum(axis=0)
