"""Say so, once, when numba starts compiling a kernel (first run on a machine, empty cache).

A new machine's first training step compiles every kernel it meets, which takes seconds; later
processes load them from numba's on-disk cache. Without a word the program seems to hang at 0%.
numba fires its ``numba:compile`` event only on a cache miss (``Dispatcher.compile`` loads from
the cache first), so a listener on that event speaks exactly when there is something to wait for.
"""

from __future__ import annotations

import contextlib

from numba.core import event

MESSAGE = "compiling kernels, first run only (later runs load them from the cache)..."


class _FirstCompile(event.Listener):
    def __init__(self, say):
        self.say = say
        self.said = False

    def on_start(self, ev):
        if not self.said:
            self.said = True
            self.say(MESSAGE)

    def on_end(self, ev):
        pass


@contextlib.contextmanager
def announce_compilation(say=print):
    """Within the block, call ``say(MESSAGE)`` before the first kernel compilation (if any)."""
    listener = _FirstCompile(say)
    with event.install_listener("numba:compile", listener):
        yield listener
