"""Shared by the ``test_reference*.py`` files: PyTorch conversions and the oracle's tolerance.

The reference is checked against ``torch.nn.functional`` and torch autograd in float64, at
rtol 1e-10 / atol 1e-12, so the fast kernels' tests can trust it.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL, ATOL = 1e-10, 1e-12
SEED = 20240607  # the reference tests' own seed, apart from conftest's


def to_torch(a, grad=True):
    """float64 tensor with its own copy of ``a``; a leaf that records gradients by default."""
    return torch.tensor(np.array(a, dtype=np.float64), requires_grad=grad)


def to_numpy(t):
    return t.detach().numpy()


def assert_close(actual, expected):
    expected = to_numpy(expected) if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert actual.shape == expected.shape
    assert actual.dtype == np.float64
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


def permuted(rng, shape):
    """Distinct float64 values (a shuffled range, centred on 0): pooling has no tied maxima."""
    size = int(np.prod(shape))
    return rng.permutation(size).reshape(shape).astype(np.float64) - size / 2
