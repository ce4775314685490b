"""Layers with PyTorch's names: a ``Module`` owns parameters and configuration, and each
``forward``/``backward`` is one call into :mod:`fastconv.functional`.

Split by kind as ``torch.nn.modules`` is: ``module`` (Module, Parameter, the state dict),
``conv``, ``linear``, ``normalization``, ``pooling``, ``activation``, ``dropout``, ``flatten``,
``container`` (Sequential, Residual, Identity, ModuleList, ModuleDict) and ``loss``.

Every module runs in two modes: called on NumPy arrays, layer mode (``forward`` caches, then
``backward(grad_out)``); called on a ``fastconv.Tensor``, autograd mode (the result is a Tensor
and ``loss.backward()`` fills every ``Parameter.grad``).
"""

from fastconv.nn.activation import LeakyReLU, ReLU, Sigmoid, Tanh
from fastconv.nn.container import Identity, ModuleDict, ModuleList, Residual, Sequential
from fastconv.nn.conv import Conv2d
from fastconv.nn.dropout import Dropout
from fastconv.nn.flatten import Flatten
from fastconv.nn.linear import Linear
from fastconv.nn.loss import CrossEntropyLoss, MSELoss
from fastconv.nn.module import IncompatibleKeys, Module, Parameter
from fastconv.nn.normalization import BatchNorm1d, BatchNorm2d
from fastconv.nn.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

__all__ = [
    "Parameter",
    "Module",
    "IncompatibleKeys",
    "Conv2d",
    "Linear",
    "BatchNorm2d",
    "BatchNorm1d",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "ReLU",
    "LeakyReLU",
    "Sigmoid",
    "Tanh",
    "Flatten",
    "Dropout",
    "Sequential",
    "Residual",
    "Identity",
    "ModuleList",
    "ModuleDict",
    "CrossEntropyLoss",
    "MSELoss",
]
