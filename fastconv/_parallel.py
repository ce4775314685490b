"""``parallel_for``: a serial kernel's iterations shared out over Python threads.

The conv engine's kernels (``kernels/conv_blocked.py``) are large: their register tiles unroll
into thousands of instructions. A ``prange`` loop calling such a kernel made numba optimize and
generate its machine code again inside the parallel kernel (the callee is linked into the
caller's module and compiled again there), and parfor's own machinery costs more than a second
of compile per parallel kernel on top (measured with the callee behind a function pointer):
compiling the forward for the first time took 4.6 s as a ``prange`` kernel and 2.3 s as a
serial kernel over a range of iterations. That compile time is what a new user waits through
on the first training step, so these kernels are serial ``@jit`` functions over ``[lo, hi)``,
and this module runs them on threads. numba's kernels release the GIL (``nogil=True``) and so
does NumPy's ``dot``, so the shares run in parallel.

The work is split as numba splits a ``prange``: one contiguous share per thread, of equal size
(``get_num_threads()`` threads, the caller's setting), the calling thread taking the first. A
share's index picks the thread's row of per-thread scratch. Results never depend on how many
threads run: each iteration owns what it writes.

The workers are plain threads, each woken by releasing a lock it waits on: 8 us per call where
``concurrent.futures`` took 23 us (numba's own pool: 1.5 us), which matters for the ~13 calls
of a LeNet step. One call at a time uses them; a call from another Python thread meanwhile
runs its shares itself, one after another, rather than wait (the cores are busy anyway).
"""

from __future__ import annotations

import os
import threading

import numba

from fastconv._threads import get_num_threads


class _Worker:
    """A daemon thread that runs one job each time ``start`` is released."""

    def __init__(self):
        self.job = None
        self.error = None
        self.start = threading.Lock()
        self.done = threading.Lock()
        self.start.acquire()
        self.done.acquire()
        threading.Thread(target=self._loop, name="fastconv-worker", daemon=True).start()

    def _loop(self):
        while True:
            self.start.acquire()
            kernel, args = self.job
            try:
                kernel(*args)
            except BaseException as e:  # handed to the caller, which raises it
                self.error = e
            self.job = None
            self.done.release()

    def submit(self, kernel, args):
        self.job, self.error = (kernel, args), None
        self.start.release()

    def wait(self):
        """Block until the job is done; return its exception or None."""
        self.done.acquire()
        return self.error


class _Pool:
    def __init__(self):
        self.busy = threading.Lock()
        self.workers = []  # started on first use, one fewer than numba's thread count

    def workers_for(self, count):
        while len(self.workers) < count:
            self.workers.append(_Worker())
        return self.workers[:count]


_pool = _Pool()


def _new_pool_after_fork():
    """A forked child has none of its parent's threads (and may have inherited ``busy`` held):
    it starts a pool of its own on first use. (Also used to abandon workers that an
    interrupted call left running.)"""
    global _pool
    _pool = _Pool()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_pool_after_fork)


def parallel_for(kernel, n, *args):
    """Run ``kernel(lo, hi, share, *args)`` over ``range(n)`` in ``get_num_threads()`` shares:
    share k of t covers ``[n*k // t, n*(k+1) // t)``. Returns when every share is done; an
    exception in any share is raised here after all of them finished."""
    t = max(1, min(get_num_threads(), numba.config.NUMBA_NUM_THREADS, n))
    bounds = [n * k // t for k in range(t + 1)]
    pool = _pool
    if t == 1 or not pool.busy.acquire(blocking=False):
        for k in range(t):
            kernel(bounds[k], bounds[k + 1], k, *args)
        return
    try:
        workers = pool.workers_for(t - 1)
        for k, worker in enumerate(workers, start=1):
            worker.submit(kernel, (bounds[k], bounds[k + 1], k, *args))
        error = None
        try:
            kernel(bounds[0], bounds[1], 0, *args)
        except BaseException as e:
            error = e
        # Every share writes into the caller's arrays: wait for all before returning.
        try:
            errors = [worker.wait() for worker in workers]
        except BaseException:  # interrupted (Ctrl-C) while workers still run: never reuse them
            _new_pool_after_fork()
            raise
        error = error or next((e for e in errors if e is not None), None)
        if error is not None:
            raise error
    finally:
        pool.busy.release()
