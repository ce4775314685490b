"""Matrix product split into row chunks, one per thread, each a single-threaded BLAS call.

fastconv keeps BLAS single-threaded and takes its parallelism from numba alone: two thread
pools on two cores (numba's workers spin for a while after each parallel loop) slow each
other down several times over.

One compiled kernel serves ``a @ b`` and ``a @ b.T`` (a linear layer's forward), and the
parallel kernel calls it through its address (``fastconv._kernel_pointer``): a
``prange`` loop calling ``np.dot`` directly compiled BLAS's wrapper again inside the parallel
kernel, once per operand layout (2.1 s of a new machine's first LeNet step).
"""

import numpy as np
from numba import prange

from fastconv._config import jit, pjit
from fastconv._kernel_pointer import call


@jit
def _matmul_rows(a, b, transpose_b, out, r0, r1):
    """out[r0:r1] = a[r0:r1] @ (b.T if transpose_b else b); a, b, out C-contiguous."""
    if transpose_b:
        np.dot(a[r0:r1], b.T, out[r0:r1])
    else:
        np.dot(a[r0:r1], b, out[r0:r1])


@pjit
def _matmul(item, a, b, transpose_b, out, T):
    """out = a @ b (or a @ b.T) in T row chunks; ``item`` is ``_matmul_rows``."""
    M = a.shape[0]
    for t in prange(T):
        r0, r1 = np.int64(t) * M // T, (np.int64(t) + 1) * M // T
        if r1 > r0:
            call(item, (a, b, transpose_b, out, r0, r1))
