"""Comparison helpers shared by the tests."""

import numpy as np


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
