"""Thread control: numba's parallel loops are fastconv's only source of parallelism.

Every BLAS call fastconv makes runs single-threaded, from inside a ``prange`` loop over chunks
of the work (see ``kernels/matmul.py``). Two thread pools on two cores (numba's workers and
BLAS's) slow each other down several times over, so BLAS's own pool is never used: kernels
that call it are wrapped in ``single_threaded_blas()``, which restores the user's setting.
"""

from __future__ import annotations

import contextlib
import numbers

import numba
import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS numba's np.dot calls, so it is seen)
from threadpoolctl import ThreadpoolController

# The BLAS libraries loaded now: NumPy's and SciPy's (numba calls SciPy's from compiled code).
# Found once; switching their thread count afterwards is a plain C call.
_BLAS = ThreadpoolController().select(user_api="blas").lib_controllers


def get_num_threads():
    """Number of threads fastconv's parallel kernels use."""
    return numba.get_num_threads()


def set_num_threads(n):
    """Use ``n`` threads (1 <= n <= the number numba started with) in fastconv's kernels."""
    if not isinstance(n, numbers.Integral) or isinstance(n, bool):
        raise TypeError(f"n must be an int, got {n!r}")
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= limit:
        raise ValueError(f"n must be between 1 and {limit} (NUMBA_NUM_THREADS), got {n}")
    numba.set_num_threads(int(n))


@contextlib.contextmanager
def threads(n):
    """Context manager: run the block with ``n`` threads, then restore the previous count."""
    previous = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(previous)


@contextlib.contextmanager
def single_threaded_blas():
    """Run BLAS on one thread in the block: for kernels that call BLAS inside ``prange``."""
    previous = [lib.get_num_threads() for lib in _BLAS]
    for lib in _BLAS:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(_BLAS, previous, strict=True):
            lib.set_num_threads(n)
