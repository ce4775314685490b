"""The one-line notice before the first kernel compilation of a run."""

import numba

from fastconv._jit_notice import MESSAGE, announce_compilation


def test_says_once_when_compiling_and_not_when_compiled():
    @numba.njit
    def add_one(x):
        return x + 1

    said = []
    with announce_compilation(said.append):
        add_one(1)
        add_one(2.0)  # a second specialisation: still one notice
    assert said == [MESSAGE]
    with announce_compilation(said.append):
        add_one(3)  # already compiled: nothing to wait for, nothing said
    assert said == [MESSAGE]
