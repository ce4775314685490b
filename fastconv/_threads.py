"""Thread control: numba's parallel loops are fastconv's only source of parallelism.

Every BLAS call fastconv makes runs single-threaded, from inside a ``prange`` loop over chunks
of the work (see ``kernels/matmul.py``). Two thread pools on two cores (numba's workers and
BLAS's) slow each other down several times over, so BLAS's own pool is never used: kernels
that call it are wrapped in ``single_threaded_blas()``, which restores the user's setting.

numba's threading layer is numba's default choice, in its order: ``tbb`` (the ``tbb`` wheel),
then GNU OpenMP, then ``workqueue``. Only tbb both survives ``fork`` (a forked child, e.g. a
``multiprocessing`` worker, can run parallel kernels after its parent did) and serves calls from
several Python threads at once: OpenMP kills a forked child at its first parallel kernel, and
workqueue aborts on concurrent calls. So fastconv depends on tbb where the wheel exists; without
it, use the ``spawn`` or ``forkserver`` start method for processes that run kernels. Measured
(2 cores, medians of interleaved runs): a small parallel kernel's per-call overhead is the same
under tbb and OpenMP (3.5 us; workqueue 22 us), a LeNet training step too (12.9 vs 13.1 ms on a
quiet machine; on a loaded one OpenMP's spinning threads suffered most).
"""

from __future__ import annotations

import contextlib
import numbers
import threading

import numba


def get_num_threads():
    """Number of threads fastconv's parallel kernels use, in the calling Python thread.

    numba's setting is per Python thread: ``set_num_threads`` and ``threads`` apply to the
    thread that calls them (a new Python thread starts with numba's full count)."""
    return numba.get_num_threads()


def set_num_threads(n):
    """Use ``n`` threads (1 <= n <= the number numba started with) in fastconv's kernels called
    from this Python thread."""
    if not isinstance(n, numbers.Integral) or isinstance(n, bool):
        raise TypeError(f"n must be an int, got {n!r}")
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= limit:
        raise ValueError(f"n must be between 1 and {limit} (NUMBA_NUM_THREADS), got {n}")
    numba.set_num_threads(int(n))


@contextlib.contextmanager
def threads(n):
    """Context manager: run the block with ``n`` threads, then restore the previous count
    (this Python thread's setting, as ``set_num_threads``)."""
    previous = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(previous)


def _thread_count_calls(lib):
    """``(get, set)`` of a BLAS library's thread count. For OpenBLAS, its C functions (threadpoolctl
    finds them once): a plain ctypes call, several times cheaper than threadpoolctl's methods,
    and a small layer runs four of them per call."""
    if lib.internal_api == "openblas":
        get = lib._get_symbol("openblas_get_num_threads")
        set_ = lib._get_symbol("openblas_set_num_threads")
        if get is not None and set_ is not None:
            return get, set_
    return lib.get_num_threads, lib.set_num_threads


_blas_calls = None


def _blas_thread_calls():
    """``(get, set)`` of every BLAS library's thread count: NumPy's and SciPy's (numba calls
    SciPy's from compiled code). Found at the first use, not at import: only float64 layers and
    grouped float32 convolutions call BLAS, and loading SciPy's took 0.13 s of a process's
    start."""
    global _blas_calls
    if _blas_calls is None:
        import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS numba's np.dot calls)
        from threadpoolctl import ThreadpoolController

        libs = ThreadpoolController().select(user_api="blas").lib_controllers
        _blas_calls = [_thread_count_calls(lib) for lib in libs]
    return _blas_calls


class _SingleThreadedBlas:
    """BLAS's thread count is one setting for the whole process, while several Python threads
    may run fastconv kernels at once: the first to enter saves the user's setting and sets 1,
    the last to leave restores it. (Each thread restoring its own saved value let one thread's
    exit turn BLAS multithreaded inside another thread's parallel loop.) A class rather than a
    generator: it is entered around every BLAS-calling kernel."""

    def __init__(self):
        self._lock = threading.Lock()
        self._users = 0
        self._saved = None

    def __enter__(self):
        with self._lock:
            if self._users == 0:
                calls = _blas_thread_calls()
                self._saved = [get() for get, _ in calls]
                for _, set_ in calls:
                    set_(1)
            self._users += 1

    def __exit__(self, *exc):
        with self._lock:
            self._users -= 1
            if self._users == 0:
                for (_, set_), n in zip(_blas_calls, self._saved, strict=True):
                    set_(n)
        return False


_single_threaded_blas = _SingleThreadedBlas()


def single_threaded_blas():
    """Context manager: BLAS runs on one thread in the block (for kernels that call BLAS
    inside ``prange``); safe when several Python threads use it at once."""
    return _single_threaded_blas
