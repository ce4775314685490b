"""Elementwise activations: ``f(x)`` and ``grad_x = grad_out * f'(x)``."""

from __future__ import annotations

import numpy as np


def relu(x):
    """``max(x, 0)`` elementwise; NaN stays NaN as in PyTorch."""
    return np.maximum(x, x.dtype.type(0))


def relu_backward(grad_out, x):
    """``grad_out`` where ``x > 0``, else 0 (0 at ``x == 0``; PyTorch lets it through at NaN)."""
    return np.where(x <= 0, grad_out.dtype.type(0), grad_out)


def leaky_relu(x, negative_slope=0.01):
    """``x`` where ``x > 0``, else ``negative_slope * x``."""
    return np.where(x > 0, x, x * x.dtype.type(negative_slope))


def leaky_relu_backward(grad_out, x, negative_slope=0.01):
    """``grad_out`` where ``x > 0``, else ``negative_slope * grad_out`` (also at 0 and NaN)."""
    return np.where(x > 0, grad_out, grad_out * grad_out.dtype.type(negative_slope))


def sigmoid(x):
    """``1 / (1 + exp(-x))``, computed without overflow for large ``|x|``."""
    z = np.exp(-np.abs(x))  # in (0, 1], never overflows
    # For x >= 0: 1 / (1 + e^-x). For x < 0 the same value is e^x / (1 + e^x).
    return np.where(x >= 0, 1 / (1 + z), z / (1 + z)).astype(x.dtype, copy=False)


def sigmoid_backward(grad_out, x):
    """``grad_out * s * (1 - s)`` with ``s = sigmoid(x)``."""
    s = sigmoid(x)
    return grad_out * s * (1 - s)


def tanh(x):
    """``tanh(x)`` elementwise."""
    return np.tanh(x)


def tanh_backward(grad_out, x):
    """``grad_out * (1 - tanh(x)**2)``."""
    t = np.tanh(x)
    return grad_out * (1 - t * t)


# ---------------------------------------------------------------------------------------------
# Batch normalisation and dropout
