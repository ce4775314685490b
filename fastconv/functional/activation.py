"""Elementwise activations and their gradients (NumPy is already the fast way for most)."""

from __future__ import annotations

import numpy as np

from fastconv._checks import check_array, real
from fastconv._threads import get_num_threads
from fastconv.kernels import elementwise as kelem


def _check_pair(x, grad_out, name="input"):
    x = check_array(name, x)
    grad_out = check_array("grad_out", grad_out, dtype=x.dtype)
    if grad_out.shape != x.shape:
        raise ValueError(f"grad_out must have the {name}'s shape {x.shape}, got {grad_out.shape}")
    return x, grad_out


def relu(x):
    """max(x, 0), NaN propagating."""
    x = check_array("input", x)
    y = np.empty_like(x)
    kelem._relu_fwd(x.reshape(-1), y.reshape(-1), get_num_threads())
    return y


def relu_backward(grad_out, x):
    """grad_out where x > 0 (and, as in PyTorch, where x is NaN), else 0."""
    x, grad_out = _check_pair(x, grad_out)
    grad_x = np.empty_like(x)
    kelem._relu_bwd(grad_out.reshape(-1), x.reshape(-1), grad_x.reshape(-1), get_num_threads())
    return grad_x


def leaky_relu(x, negative_slope=0.01):
    x = check_array("input", x)
    slope = x.dtype.type(real("negative_slope", negative_slope))
    return np.where(x > 0, x, x * slope)


def leaky_relu_backward(grad_out, x, negative_slope=0.01):
    x, grad_out = _check_pair(x, grad_out)
    slope = x.dtype.type(real("negative_slope", negative_slope))
    return np.where(x > 0, grad_out, grad_out * slope)


# The ufuncs below write into ``out=``: called on a 0-d array without it they return a NumPy
# scalar, which is not an array of the input's shape (and cannot be updated in place).


def _expit(x):
    """SciPy's stable logistic function, imported on first use: scipy.special costs 0.1 s of
    every ``import fastconv`` (a warm start is about 1 s) and only sigmoid needs it."""
    from scipy.special import expit

    return expit(x, out=np.empty_like(x))


def sigmoid(x):
    x = check_array("input", x)
    return _expit(x)


def sigmoid_backward(grad_out, x):
    x, grad_out = _check_pair(x, grad_out)
    return _sigmoid_grad(grad_out, _expit(x))


def _sigmoid_backward_from_output(grad_out, y):
    """``sigmoid_backward`` from the saved output ``y = sigmoid(x)``, as PyTorch's autograd
    does: no second pass of the forward (for layers that keep their output)."""
    y, grad_out = _check_pair(y, grad_out, name="output")
    return _sigmoid_grad(grad_out, y)


def _sigmoid_grad(grad_out, y):
    """grad_out * (1 - y) * y in PyTorch's order, with one temporary."""
    grad_x = np.subtract(1, y, out=np.empty_like(y))
    grad_x *= grad_out
    grad_x *= y
    return grad_x


def tanh(x):
    x = check_array("input", x)
    return np.tanh(x, out=np.empty_like(x))


def tanh_backward(grad_out, x):
    x, grad_out = _check_pair(x, grad_out)
    return _tanh_grad(grad_out, np.tanh(x, out=np.empty_like(x)))


def _tanh_backward_from_output(grad_out, y):
    """``tanh_backward`` from the saved output ``y = tanh(x)`` (no second pass of the forward)."""
    y, grad_out = _check_pair(y, grad_out, name="output")
    return _tanh_grad(grad_out, y)


def _tanh_grad(grad_out, y):
    """grad_out * (1 - y*y) in PyTorch's order, with one temporary."""
    grad_x = np.multiply(y, y, out=np.empty_like(y))
    np.subtract(1, grad_x, out=grad_x)
    grad_x *= grad_out
    return grad_x
