"""One thread count for numba's parallel loops and for BLAS (used by the GEMM paths).

Both pools are kept at the same size so they never oversubscribe the cores: fastconv never calls
BLAS from inside a ``prange`` loop, so at any moment only one of the two pools is busy.
"""

from __future__ import annotations

import contextlib
import numbers

import numba
from threadpoolctl import threadpool_limits


def get_num_threads():
    """Number of threads fastconv's parallel kernels use."""
    return numba.get_num_threads()


def set_num_threads(n):
    """Use ``n`` threads (1 <= n <= the number numba started with) for kernels and BLAS."""
    if not isinstance(n, numbers.Integral) or isinstance(n, bool):
        raise TypeError(f"n must be an int, got {n!r}")
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= limit:
        raise ValueError(f"n must be between 1 and {limit} (NUMBA_NUM_THREADS), got {n}")
    numba.set_num_threads(int(n))
    threadpool_limits(int(n), user_api="blas")


@contextlib.contextmanager
def threads(n):
    """Context manager: run the block with ``n`` threads, then restore the previous count."""
    previous = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(previous)
