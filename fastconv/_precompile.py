"""On a new machine, compile the common kernels in a second process while this one compiles.

Why: the first training step on a machine compiles every kernel it meets, one after the other
on one core (numba compiles serially), while the other cores sit idle: about 8 s for lenet.
Kernels compiled by another process land in numba's on-disk cache, and a process that needs a
kernel looks in that cache first. So when this process misses the cache for the first time
(the first convolution's forward, as a rule), it starts one helper process (``python -m
fastconv._precompile``) that compiles the rest of a training step meanwhile: the end of the step
first (the convolutions' weight gradient, the optimizer, the loss, linear layers, the backward
passes of ReLU and max pooling), since this process reaches the start first, then a whole step
of the other layers and the other models' kernels. Most of what this process needs next is
then already compiled. Cold start of lenet (import, build, first step, whole process) on 2
cores: 8.3 s before, 6.3 s with the helper (``python -m benchmarks.report --only startup``).

The helper changes nothing but the cache: it runs on random arrays, prints nothing, runs at a
lower priority, and any failure in it only means this process compiles the kernel itself. At
most one helper runs per cache directory (a lock file), and none is started once a helper has
finished for the current kernel sources (a marker file), or when ``FASTCONV_PRECOMPILE=0`` (the
helper sets it for itself), or when numba cannot cache, or in a frozen application.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from numba.core import event

ENV = "FASTCONV_PRECOMPILE"
_LOCK = "fastconv-precompile.lock"
_DONE = "fastconv-precompile.done"
_STALE_LOCK_SECONDS = 600  # a helper that died without removing its lock


def _sources_stamp():
    """Identifies the kernel sources: numba's cache entries are keyed on the same files."""
    import hashlib  # here: only a cold start needs it (import fastconv stays 6 ms shorter)

    kernels = Path(__file__).parent / "kernels"
    digest = hashlib.sha256()
    for path in sorted(kernels.glob("*.py")):
        stat = path.stat()
        digest.update(f"{path.name} {stat.st_mtime_ns} {stat.st_size}\n".encode())
    return digest.hexdigest()


def _claim(cache_dir):
    """True if this process may start the helper for ``cache_dir``: no helper has finished for
    these sources, and none is running (the lock is taken here, atomically)."""
    done = cache_dir / _DONE
    try:
        if done.read_text() == _sources_stamp():
            return False
    except OSError:
        pass
    lock = cache_dir / _LOCK
    try:
        if time.time() - lock.stat().st_mtime > _STALE_LOCK_SECONDS:
            lock.unlink()
    except OSError:
        pass
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except OSError:
        return False
    return True


def _start_helper(cache_dir):
    import subprocess

    # The helper imports this very copy of fastconv (its kernels' cache entries are keyed on
    # these source files), whatever the program did to sys.path.
    package_parent = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, **{ENV: "0", "PYTHONPATH": path})
    subprocess.Popen(  # noqa: S603 - our own module, with this interpreter
        [sys.executable, "-m", "fastconv._precompile", str(cache_dir)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C in the terminal stops the program, not the helper
    )


class _OnFirstMiss(event.Listener):
    """Starts the helper at the first fastconv kernel this process compiles (a cache miss)."""

    def __init__(self):
        self.done = False
        self.lock = threading.Lock()

    def on_start(self, ev):
        if self.done:
            return
        dispatcher = ev.data["dispatcher"]
        if not dispatcher.py_func.__module__.startswith("fastconv.kernels"):
            return
        with self.lock:
            if self.done:
                return
            self.done = True
        try:
            cache_dir = Path(dispatcher._cache._cache_path)  # numba's, for this kernel
        except AttributeError:  # no on-disk cache: nothing a helper could share
            return
        try:
            claimed = _claim(cache_dir)
        except OSError:
            return  # no helper: this process compiles everything itself, as without one
        if claimed:
            try:
                _start_helper(cache_dir)
            except OSError:  # e.g. no process may be started: let a later process try
                (cache_dir / _LOCK).unlink(missing_ok=True)

    def on_end(self, ev):
        pass


def helper_running(cache_root):
    """Whether a helper holds a lock anywhere under ``cache_root`` (a ``NUMBA_CACHE_DIR``:
    numba keeps each source directory's cache in a subdirectory of it)."""
    return any(Path(cache_root).rglob(_LOCK))


def install():
    """Listen for this process's first kernel compilation (once; not in the helper itself, and
    not in a frozen application, whose executable is the application rather than Python)."""
    if os.environ.get(ENV, "1") != "0" and sys.executable and not getattr(sys, "frozen", False):
        event.register("numba:compile", _OnFirstMiss())


def warm_up():
    """One small training step of every kernel kind lenet and its kin use, except the first
    convolution's forward, in the order a step needs them. Random float32 data, batch 2; the
    shapes are lenet's where a kernel is specialised on them (the conv tile)."""
    import numpy as np

    import fastconv.functional as F
    from fastconv import nn, optim, training

    rng = np.random.default_rng(0)

    def rand(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    # First, while this process compiles the first conv's forward, the kernels of the end of
    # the step, backwards: this process will compile the first layers' ReLU and max pooling
    # next, and the two meet in the middle.
    x, w = rand(2, 32, 14, 14), rand(64, 32, 3, 3)
    F._conv2d_backward(rand(2, 64, 14, 14), x, w, padding=1, input_grad=False)  # weight grad
    param = nn.Parameter(rand(4))  # the optimizer, which ends the step
    param.grad = rand(4)
    optim.SGD([param], lr=0.01, momentum=0.9).step()
    labels = np.array([1, 2])
    linear, criterion = nn.Linear(16, 10), nn.CrossEntropyLoss()
    criterion(linear(rand(2, 16)), labels)
    linear.backward(criterion.backward())
    F.relu_backward(x, x)
    F._max_pool2d_backward_trusted(rand(2, 32, 7, 7), np.zeros((2, 32, 7, 7), np.int64), x.shape)
    # Then a whole step of the layers after the first conv (the ReLU-after-pooling order of
    # ``Sequential`` included), as ``training.train_step`` runs them.
    head = nn.Sequential(
        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 7 * 7, 16), nn.ReLU(),
        nn.Linear(16, 10),
    )  # fmt: skip
    sgd = optim.SGD(head.parameters(), lr=0.01, momentum=0.9)
    training.train_step(head, criterion, sgd, x, labels)
    # The other built-in models' layers and optimizers: batch norm, dropout, plain SGD, Adam.
    head = nn.Sequential(
        nn.BatchNorm2d(32), nn.Flatten(), nn.Dropout(0.25), nn.Linear(32 * 196, 10)
    )
    for optimizer in (optim.SGD(head.parameters(), lr=0.01), optim.Adam(head.parameters())):
        training.train_step(head, nn.CrossEntropyLoss(), optimizer, rand(2, 32, 14, 14), labels)


def _main(cache_dir):
    cache_dir = Path(cache_dir)
    try:
        os.nice(5)  # the program the user waits for comes first
    except (AttributeError, OSError):
        pass
    try:
        warm_up()
        (cache_dir / _DONE).write_text(_sources_stamp())
    finally:
        try:
            (cache_dir / _LOCK).unlink()
        except OSError:
            pass


if __name__ == "__main__":
    _main(sys.argv[1])
