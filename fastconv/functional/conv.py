"""conv2d and conv2d_backward: validate, normalise, plan, allocate, then run the algorithm.

The planning (which algorithm, its tiles and workspaces) is ``fastconv._conv_plan``'s job.
"""

from __future__ import annotations

import numpy as np

from fastconv import _conv_plan
from fastconv._checks import check_array, is_int
from fastconv.functional._geometry import _check_conv_weight, _window_geometry


def _conv_problem(x, weight, stride, padding, dilation, groups):
    """Validate and normalise a convolution's arguments: ``(x, weight, conv)`` with ``x`` and
    ``weight`` C-contiguous and ``conv`` the ``_conv_plan.Conv`` describing every size."""
    x = check_array("input", x, ndim=4)
    weight = check_array("weight", weight, ndim=4, dtype=x.dtype)
    _check_conv_weight(weight.shape)
    if not is_int(groups) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    groups = int(groups)
    (N, C, H, W), (O, Cg, KH, KW) = x.shape, weight.shape
    if C % groups or O % groups:
        raise ValueError(f"groups={groups} must divide in_channels ({C}) and out_channels ({O})")
    if Cg * groups != C:
        raise ValueError(
            f"weight expects {Cg * groups} input channels (weight.shape[1]={Cg} x groups={groups}),"
            f" but input has {C} channels"
        )
    stride, before, dilation, (OH, OW) = _window_geometry(
        "weight", (H, W), (KH, KW), stride, padding, dilation, allow_same=True
    )
    conv = _conv_plan.Conv(N, C, H, W, O, KH, KW, stride, before, dilation, groups, OH, OW, x.dtype)
    return x, weight, conv


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    Parameters
    ----------
    x : (N, C_in, H, W) array
    weight : (C_out, C_in // groups, kH, kW) array, same dtype as ``x``
    bias : (C_out,) array or None
    stride, dilation : int or (h, w); padding : int, (h, w), "same" or "valid"
    groups : int dividing C_in and C_out

    Returns
    -------
    y : (N, C_out, OH, OW) array, ``OH = (H + 2*pad - dilation*(kH-1) - 1) // stride + 1``
    """
    x, weight, conv = _conv_problem(x, weight, stride, padding, dilation, groups)
    if bias is None:
        bias = np.zeros(conv.O, dtype=x.dtype)
    else:
        bias = check_array("bias", bias, ndim=1, dtype=x.dtype)
        if bias.shape[0] != conv.O:
            raise ValueError(f"bias must have shape ({conv.O},), got {bias.shape}")
    algorithm = _conv_plan.choose(conv)
    y = np.empty((conv.N, conv.O, conv.OH, conv.OW), dtype=x.dtype)
    algorithm.forward(conv, x, weight, bias, y)
    return y


def conv2d_backward(grad_out, x, weight, stride=1, padding=0, dilation=1, groups=1):
    """Gradients of ``conv2d`` with respect to its input, weight and bias.

    Parameters
    ----------
    grad_out : (N, C_out, OH, OW) array, the gradient of the loss with respect to ``y``
    x, weight, stride, padding, dilation, groups : as given to ``conv2d``

    Returns
    -------
    grad_x : (N, C_in, H, W); grad_weight : (C_out, C_in // groups, kH, kW); grad_bias : (C_out,)
    """
    return _conv2d_backward(grad_out, x, weight, stride, padding, dilation, groups)


def _conv2d_backward(
    grad_out, x, weight, stride=1, padding=0, dilation=1, groups=1, input_grad=True
):
    """``conv2d_backward``; with ``input_grad=False`` returns ``(None, grad_weight,
    grad_bias)`` and skips the input gradient where the algorithm allows (for a first layer,
    whose input is the data: PyTorch skips it too)."""
    x, weight, conv = _conv_problem(x, weight, stride, padding, dilation, groups)
    grad_out = check_array("grad_out", grad_out, ndim=4, dtype=x.dtype)
    if grad_out.shape != (conv.N, conv.O, conv.OH, conv.OW):
        expected = (conv.N, conv.O, conv.OH, conv.OW)
        raise ValueError(f"grad_out must have shape {expected}, got {grad_out.shape}")
    if conv.N == 0:  # an empty batch: every gradient is an empty sum
        grad_x = np.zeros_like(x) if input_grad else None
        return grad_x, np.zeros_like(weight), np.zeros(conv.O, dtype=x.dtype)
    algorithm = _conv_plan.choose(conv)
    grad_x = np.empty_like(x) if input_grad else None
    grad_w = np.empty_like(weight)
    grad_b = np.empty(conv.O, dtype=x.dtype)
    algorithm.backward(conv, grad_out, x, weight, grad_x, grad_w, grad_b)
    return grad_x, grad_w, grad_b
