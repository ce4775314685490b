"""Comparison helpers shared by the tests, and the start of the programs they run in fresh
processes."""

import textwrap

import numpy as np

# The start of a program run in a fresh process: ``compiled`` collects the name of every kernel
# the process compiles itself (numba fires ``numba:compile`` on a cache miss only).
COMPILE_LISTENER = textwrap.dedent(
    """
    import json, sys
    from numba.core import event
    import numpy as np
    import fastconv.functional as F

    compiled = []

    class Listen(event.Listener):
        def on_start(self, ev):
            compiled.append(ev.data["dispatcher"].py_func.__name__)

        def on_end(self, ev):
            pass

    event.register("numba:compile", Listen())
    """
)


def to_numpy(t):
    return t.detach().numpy() if hasattr(t, "detach") else np.asarray(t)


def assert_close64(actual, expected):
    """float64 against the reference loops: agreement to rounding."""
    np.testing.assert_allclose(actual, to_numpy(expected), rtol=1e-10, atol=1e-12)


def assert_close32(actual, expected):
    """float32 against PyTorch: relative 1e-4, with an absolute floor scaled to the data."""
    expected = to_numpy(expected)
    scale = float(np.max(np.abs(expected))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * max(scale, 1.0))
