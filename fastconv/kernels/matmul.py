"""Matrix product split into row chunks, one per thread, each a single-threaded BLAS call.

fastconv keeps BLAS single-threaded and takes its parallelism from numba alone: two thread
pools on two cores (numba's workers spin for a while after each parallel loop) slow each
other down several times over.
"""

import numpy as np
from numba import prange

from fastconv._config import jit, pjit
from fastconv.kernels._util import _fill


@pjit
def _matmul(a, b, out, T):
    """out = a @ b in T row chunks; a (M, K) C-contiguous, b (K, N) C- or F-contiguous."""
    M = a.shape[0]
    for t in prange(T):
        r0, r1 = t * M // T, (t + 1) * M // T
        if r1 > r0:
            np.dot(a[r0:r1], b, out[r0:r1])


@jit
def _matmul_tn(a, b, out):
    """out = a.T @ b in one BLAS call; a (K, M) C-contiguous, so ``a.T`` is F-contiguous."""
    np.dot(a.T, b, out)


@pjit
def _matmul_tn_parts(a, b, parts):
    """parts[t] = a[k0:k1].T @ b[k0:k1] for T = len(parts) chunks of the shared first axis (any
    number, not tied to the thread count); the caller adds the parts, so ``a.T @ b`` needs no
    transposed copy of ``a``.

    a (K, M) and b (K, N) C-contiguous; a row chunk of ``a`` is C-contiguous, so its transpose
    is an F-contiguous operand BLAS takes as is. A chunk of output rows instead would need
    ``a[:, r0:r1]``, which is neither.
    """
    K, T = a.shape[0], parts.shape[0]
    for t in prange(T):
        k0, k1 = t * K // T, (t + 1) * K // T
        if k1 > k0:
            np.dot(a[k0:k1].T, b[k0:k1], parts[t])
        else:
            _fill(parts[t], 0)
