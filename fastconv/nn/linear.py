"""``Linear``, and the weight-and-bias setup and gradient bookkeeping it shares with ``Conv2d``
and the batch norms."""

from __future__ import annotations

import math

import numpy as np

import fastconv.functional as F
from fastconv import init
from fastconv._checks import check_bool, float_dtype, generator, positive_int
from fastconv.autograd.tensor import _accumulate, _record
from fastconv.nn.module import Module, Parameter


def _add_weight_and_bias(layer, weight_shape, bias, dtype, fan_in, rng):
    """Register ``layer.weight`` and ``layer.bias`` (None unless ``bias``) with PyTorch's
    default initialisation for Conv2d and Linear: ``kaiming_uniform_(weight, a=sqrt(5))``, i.e.
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the bias uniform with the same bound."""
    check_bool("bias", bias)
    dtype = float_dtype(dtype)
    rng = generator(rng, default=init.get_rng())
    layer.weight = Parameter(np.empty(weight_shape, dtype))
    layer.register_parameter("bias", Parameter(np.empty(weight_shape[0], dtype)) if bias else None)
    init.kaiming_uniform_(layer.weight.data, a=math.sqrt(5), rng=rng)
    if bias:
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        init.uniform_(layer.bias.data, -bound, bound, rng=rng)


def _accumulate_weight_and_bias(layer, grad_w, grad_b):
    """Add a backward's parameter gradients; a layer without bias drops ``grad_b``."""
    _accumulate(layer.weight, grad_w)
    if layer.bias is not None:
        _accumulate(layer.bias, grad_b)


def _with_bias(x, weight, bias):
    """The parents of a node whose backward returns ``(grad_x, grad_weight, grad_bias)``."""
    return (x, weight) if bias is None else (x, weight, bias)


class Linear(Module):
    """Fully connected layer ``y = x @ weight.T + bias``, as ``torch.nn.Linear``.

    Shapes: input (*, in_features) -> output (*, out_features); ``weight`` is
    (out_features, in_features), ``bias`` (out_features,). ``dtype`` and ``rng`` as in
    ``Conv2d``.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, *, rng=None):
        super().__init__()
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        shape = (self.out_features, self.in_features)
        _add_weight_and_bias(self, shape, bias, dtype, self.in_features, rng)

    def forward(self, x):
        """(*, in_features) -> (*, out_features)."""
        y = F.linear(x, self.weight.data, None if self.bias is None else self.bias.data)
        self._ctx = x
        return y

    def _forward_tensor(self, x):
        weight, bias = self.weight, self.bias
        y = F.linear(x.data, weight.data, None if bias is None else bias.data)
        xd, wd = x.data, weight.data
        return _record(y, _with_bias(x, weight, bias), lambda g: F.linear_backward(g, xd, wd))

    def backward(self, grad_out):
        """(*, out_features) -> (*, in_features); adds to ``weight.grad`` and ``bias.grad``."""
        grad_x, grad_w, grad_b = F.linear_backward(grad_out, self._saved(), self.weight.data)
        _accumulate_weight_and_bias(self, grad_w, grad_b)
        return grad_x

    def extra_repr(self):
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )
