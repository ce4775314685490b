"""Layers with PyTorch's names: a ``Module`` owns parameters and configuration, and each
``forward``/``backward`` is one call into :mod:`fastconv.functional`.

Split by kind as ``torch.nn.modules`` is: ``module`` (Module, Parameter, the state dict),
``conv``, ``linear``, ``normalization``, ``pooling``, ``activation``, ``dropout``, ``flatten``,
``container`` (Sequential, Residual) and ``loss``.
"""

from fastconv.nn.activation import LeakyReLU, ReLU, Sigmoid, Tanh
from fastconv.nn.container import Residual, Sequential
from fastconv.nn.conv import Conv2d
from fastconv.nn.dropout import Dropout
from fastconv.nn.flatten import Flatten
from fastconv.nn.linear import Linear
from fastconv.nn.loss import CrossEntropyLoss
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
    "CrossEntropyLoss",
]
