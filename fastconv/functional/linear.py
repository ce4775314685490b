"""linear and its gradient: float32 on fastconv's register tiles (``kernels/gemm.py``),
float64 as BLAS products in row chunks, one per thread."""

from __future__ import annotations

import numba
import numpy as np

from fastconv._checks import check_array
from fastconv._config import tuning
from fastconv._conv_blocked import _AVX512
from fastconv._conv_plan import workspace
from fastconv._kernel_pointer import pointer, typed_flags
from fastconv._threads import single_threaded_blas
from fastconv.kernels import gemm as kgemm
from fastconv.kernels import matmul as kmatmul

# The float32 tile: rows of ``a`` x vectors of 16 columns of ``b``. AVX-512: 24 accumulators,
# 4 vectors of b and a broadcast, 29 of the 32 zmm registers. Without it each vector takes two
# of the 16 ymm registers: one vector of b.
_ROWS = (0,) * 6
_BLOCKS = (0,) * (4 if _AVX512 else 1)


def _matmul(a, b):
    """a @ b for 2-D a (any layout) and b (C- or F-contiguous, e.g. a weight's transpose)."""
    return (_matmul_f32 if a.dtype == np.float32 else _matmul_blas)(a, b)


def _matmul_f32(a, b):
    """``_matmul`` in float32 on register tiles. b is used as it is when C-contiguous and a
    whole number of the tile's column panels wide, else copied (transposed from a weight's
    F-contiguous transpose) into a zero-padded buffer; a gets zero rows up to one tile."""
    M, K = a.shape
    N = b.shape[1]
    if M == 0 or N == 0 or K == 0:  # empty operands (K = 0: a gradient over an empty batch)
        return np.zeros((M, N), np.float32)
    if b.flags.f_contiguous and not b.flags.c_contiguous and M < N:
        # A weight's transpose to pack, with fewer rows in a: a @ b = (b.T @ a.T).T packs
        # a's transpose instead, the smaller (a 32 x 25088 batch into 512 features, 2
        # threads: 3 MB packed instead of 51, 13.8 -> 5.4 ms; BLAS took 9.4).
        return np.ascontiguousarray(_matmul_f32(b.T, a.T).T)
    R, width = len(_ROWS), 16 * len(_BLOCKS)
    Np = -(-N // width) * width
    a = np.ascontiguousarray(a)
    if M < R:
        a = np.concatenate([a, np.zeros((R - M, K), np.float32)])
    if b.flags.c_contiguous and Np == N:
        packed = b
    else:
        (packed,) = workspace(((K, Np), np.float32))
        if b.flags.f_contiguous:
            kgemm._pack_transposed(b.T, packed)
        else:
            packed[:, :N] = b
            packed[:, N:] = 0.0
    out = np.empty((a.shape[0], Np), np.float32)
    # Row chunks only to give the threads enough iterations when there are few panels.
    chunks = max(1, min(a.shape[0] // R, -(-tuning().gemm_iterations // (Np // width))))
    kc = tuning().gemm_k_block
    item = pointer(
        kgemm._gemm_panel, typed_flags(a, packed),  # out is always this call's own
        lambda: (a, packed, out, 0, R, 0, kc, _ROWS, _BLOCKS),
    )  # fmt: skip
    kgemm._gemm(item, a, packed, out, chunks, kc, _ROWS, _BLOCKS)
    return out if (a.shape[0], Np) == (M, N) else np.ascontiguousarray(out[:M, :N])


def _matmul_blas(a, b):
    """``_matmul`` by BLAS: row chunks of ``a``, one single-threaded BLAS call each, in
    parallel. The chunks are one per thread of numba's pool (fixed for the process), not per
    thread in force: every output row comes from the same call at any thread count, so
    results are bit-identical."""
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
