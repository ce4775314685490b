"""``Conv2d``."""

from __future__ import annotations

import numpy as np

import fastconv.functional as F
from fastconv._checks import pair, positive_int
from fastconv.autograd.tensor import _record
from fastconv.nn.linear import _accumulate_weight_and_bias, _add_weight_and_bias, _with_bias
from fastconv.nn.module import Module


class Conv2d(Module):
    """2-D convolution (cross-correlation), as ``torch.nn.Conv2d``.

    Parameters
    ----------
    in_channels, out_channels : int
        Both divisible by ``groups``.
    kernel_size, stride, dilation : int or (int, int)
    padding : int, (int, int), "same" (stride 1 only) or "valid"
    groups : int
    bias : bool
    dtype : float32 (default) or float64
    rng : numpy.random.Generator, int seed or None
        Source of the default initialisation; None means ``fastconv.init``'s default generator
        (see ``fastconv.init.manual_seed``).

    Shapes: input (N, C_in, H, W) -> output (N, C_out, OH, OW), with PyTorch's
    ``OH = (H + 2*pH - dH*(kH - 1) - 1) // sH + 1``. ``weight`` is
    (C_out, C_in // groups, kH, kW), ``bias`` (C_out,).
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        dtype=np.float32,
        *,
        rng=None,
    ):
        super().__init__()
        # Checked here, as PyTorch does, so a bad layer fails where it is built, not at its
        # first forward.
        self.in_channels = positive_int("in_channels", in_channels)
        self.out_channels = positive_int("out_channels", out_channels)
        self.groups = positive_int("groups", groups)
        for name, channels in (
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
        ):
            if channels % self.groups:
                raise ValueError(
                    f"{name} must be divisible by groups, got {name}={channels}, "
                    f"groups={self.groups}"
                )
        self.kernel_size = pair("kernel_size", kernel_size, minimum=1)
        self.stride = pair("stride", stride, minimum=1)
        self.dilation = pair("dilation", dilation, minimum=1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(
                    f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}"
                )
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f"padding='same' needs stride=1, got stride={stride!r}")
            self.padding = padding
        else:
            self.padding = pair("padding", padding, minimum=0)
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        _add_weight_and_bias(self, shape, bias, dtype, shape[1] * shape[2] * shape[3], rng)

    def _args(self):
        return self.stride, self.padding, self.dilation, self.groups

    def forward(self, x):
        """(N, C_in, H, W) -> (N, C_out, OH, OW)."""
        bias = None if self.bias is None else self.bias.data
        y = F.conv2d(x, self.weight.data, bias, *self._args())
        self._ctx = x
        return y

    def _forward_tensor(self, x):
        weight, bias = self.weight, self.bias
        args = self._args()
        y = F.conv2d(x.data, weight.data, None if bias is None else bias.data, *args)
        xd, wd, input_grad = x.data, weight.data, x.requires_grad

        def backward(grad):  # the input gradient is skipped for data (PyTorch skips it too)
            return F._conv2d_backward(grad, xd, wd, *args, input_grad=input_grad)

        return _record(y, _with_bias(x, weight, bias), backward)

    def backward(self, grad_out, input_grad=True):
        """(N, C_out, OH, OW) -> (N, C_in, H, W); adds to ``weight.grad`` and ``bias.grad``.

        ``input_grad=False``: the input gradient is not computed and None is returned (a first
        layer, whose input is the data)."""
        grad_x, grad_w, grad_b = F._conv2d_backward(
            grad_out, self._saved(), self.weight.data, *self._args(), input_grad=input_grad
        )
        _accumulate_weight_and_bias(self, grad_w, grad_b)
        return grad_x

    def _backward_params(self, grad_out):
        self.backward(grad_out, input_grad=False)

    def extra_repr(self):
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s
