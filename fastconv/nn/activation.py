"""Elementwise activations: ``ReLU``, ``LeakyReLU``, ``Sigmoid``, ``Tanh``."""

from __future__ import annotations

import fastconv.functional as F
from fastconv._checks import check_bool, real
from fastconv.autograd.tensor import _record
from fastconv.nn.module import Module


class _Elementwise(Module):
    """An activation applied elementwise to any shape: one functional call each way.

    A subclass sets ``_forward(x)`` and ``_backward(grad_out, saved)``, each one functional
    call; ``saved`` is the input, or the output if ``_saves_output`` (for Sigmoid and Tanh the
    gradient is a cheap function of the output, which PyTorch uses too; the caller must then
    not modify the output in place before ``backward``, as in PyTorch).
    """

    _saves_output = False

    def forward(self, x):
        y = self._forward(x)
        self._ctx = y if self._saves_output else x
        return y

    def backward(self, grad_out):
        return self._backward(grad_out, self._saved())

    def _forward_tensor(self, x):
        y = self._forward(x.data)
        saved = y if self._saves_output else x.data
        return _record(y, (x,), lambda g: (self._backward(g, saved),))


class ReLU(_Elementwise):
    """``max(x, 0)`` elementwise, any shape. ``inplace`` is accepted for PyTorch compatibility;
    the result is always a new array."""

    _forward = staticmethod(F.relu)
    _backward = staticmethod(F.relu_backward)

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = check_bool("inplace", inplace)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class LeakyReLU(_Elementwise):
    """``x if x > 0 else negative_slope * x`` elementwise, any shape."""

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope = real("negative_slope", negative_slope)
        self.inplace = check_bool("inplace", inplace)

    def _forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def _backward(self, grad_out, x):
        return F.leaky_relu_backward(grad_out, x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class Sigmoid(_Elementwise):
    """``1 / (1 + exp(-x))`` elementwise, any shape."""

    _saves_output = True
    _forward = staticmethod(F.sigmoid)
    _backward = staticmethod(F._sigmoid_backward_from_output)


class Tanh(_Elementwise):
    """``tanh(x)`` elementwise, any shape."""

    _saves_output = True
    _forward = staticmethod(F.tanh)
    _backward = staticmethod(F._tanh_backward_from_output)
