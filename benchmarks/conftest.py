"""Benchmarks run only under ``pytest --benchmark-only``; every library gets 2 threads."""

from pathlib import Path

import pytest

import fastconv
from benchmarks._threading import use_openmp_unless_set

use_openmp_unless_set()  # before any kernel runs: see benchmarks/_threading.py
THREADS = 2  # every library gets 2 threads (benchmarks/README.md)
REFERENCE_ROUNDS = 3  # the NumPy loops take up to a few seconds per call
HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    """Plain ``pytest`` skips the benchmarks, so nothing is timed. ``--benchmark-only``
    deselects the tests that are not benchmarks (one summary line instead of a skip per test)."""
    if not config.getoption("benchmark_only"):
        skip = pytest.mark.skip(reason="benchmarks run only with pytest --benchmark-only")
        for item in items:
            if HERE in item.path.parents:
                item.add_marker(skip)
        return
    is_benchmark = {item: "benchmark" in getattr(item, "fixturenames", ()) for item in items}
    config.hook.pytest_deselected(items=[item for item in items if not is_benchmark[item]])
    items[:] = [item for item in items if is_benchmark[item]]


@pytest.fixture(autouse=True)
def benchmark_threads():
    """fastconv (numba and BLAS) and PyTorch on ``THREADS`` threads; restored afterwards."""
    try:
        import torch
    except ImportError:
        torch = None
    before = torch.get_num_threads() if torch else None
    try:
        if torch:
            torch.set_num_threads(THREADS)
        with fastconv.threads(THREADS):
            yield
    finally:
        if torch:
            torch.set_num_threads(before)


@pytest.fixture
def measure(benchmark):
    """``measure(impl, fn)`` times ``fn``: the NumPy reference in pedantic mode (a few rounds,
    no warm-up as there is nothing to compile), the others after one untimed call so numba's
    JIT compile stays out of the figures."""

    def measure(impl, fn):
        if impl.startswith("reference"):
            return benchmark.pedantic(fn, rounds=REFERENCE_ROUNDS, iterations=1)
        fn()
        return benchmark(fn)

    return measure
