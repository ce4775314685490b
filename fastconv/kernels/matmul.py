"""Matrix product split into row chunks, one per thread, each a single-threaded BLAS call.

fastconv keeps BLAS single-threaded and takes its parallelism from numba alone: two thread
pools on two cores (numba's workers spin for a while after each parallel loop) slow each
other down several times over.
"""

import numpy as np
from numba import prange

from fastconv._config import pjit


@pjit
def _matmul(a, b, out, T):
    """out = a @ b in T row chunks; a (M, K) C-contiguous, b (K, N) C- or F-contiguous."""
    M = a.shape[0]
    for t in prange(T):
        r0, r1 = t * M // T, (t + 1) * M // T
        if r1 > r0:
            np.dot(a[r0:r1], b, out[r0:r1])
