"""2-D convolution and its gradients, one output pixel at a time."""

from __future__ import annotations

import numpy as np

from fastconv._checks import pair
from fastconv.reference._geometry import check_fits, crop, out_size, pad, symmetric_pads, window


def _conv_pads(padding, kernel_size, dilation):
    """``((top, bottom), (left, right))`` for a conv ``padding``: int, pair, "same" or "valid"."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            # A total of d * (k - 1) keeps the size at stride 1. When it is odd PyTorch puts the
            # extra pixel on the right/bottom: left = total // 2, right = total - left.
            pads = []
            for k, d in zip(kernel_size, dilation, strict=True):
                total = d * (k - 1)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    return symmetric_pads(padding)


def _conv_geometry(x_shape, w_shape, stride, padding, dilation, groups):
    """Normalise conv arguments; return ``stride, dilation, pads, (H_out, W_out)``."""
    stride = pair("stride", stride, minimum=1)
    dilation = pair("dilation", dilation, minimum=1)
    kernel_size = tuple(w_shape[2:])
    if isinstance(padding, str) and padding == "same" and stride != (1, 1):
        raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
    if x_shape[1] != w_shape[1] * groups:
        raise ValueError(
            f"x has {x_shape[1]} channels but weight expects {w_shape[1]} * groups={groups}"
        )
    if w_shape[0] % groups:
        raise ValueError(
            f"weight has {w_shape[0]} output channels, not divisible by groups={groups}"
        )
    pads = _conv_pads(padding, kernel_size, dilation)
    out = [
        out_size(x_shape[2 + a], kernel_size[a], stride[a], dilation[a], sum(pads[a]))
        for a in range(2)
    ]
    return stride, dilation, pads, check_fits(out, x_shape[2:], kernel_size, dilation, pads)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution (cross-correlation) exactly as ``torch.nn.functional.conv2d``.

    Parameters
    ----------
    x : (N, C_in, H, W)
    weight : (C_out, C_in // groups, kH, kW)
    bias : (C_out,) or None
    stride, dilation : int or (h, w)
    padding : int, (h, w), "same" (stride 1 only) or "valid"
    groups : the channels are split into ``groups`` independent convolutions

    Returns
    -------
    y : (N, C_out, H_out, W_out) with ``H_out = floor((H + pad_h - dH*(kH-1) - 1) / sH) + 1``.
    """
    stride, dilation, pads, (h_out, w_out) = _conv_geometry(
        x.shape, weight.shape, stride, padding, dilation, groups
    )
    kernel_size = weight.shape[2:]
    xp = pad(x, pads)
    n_batch, c_out, c_in_g = x.shape[0], weight.shape[0], weight.shape[1]
    c_out_g = c_out // groups  # output channels per group
    y = np.zeros((n_batch, c_out, h_out, w_out), dtype=x.dtype)
    for n in range(n_batch):
        for oc in range(c_out):
            g = oc // c_out_g  # output channel oc reads only the input channels of group g
            x_g = xp[n, g * c_in_g : (g + 1) * c_in_g]  # (C_in // groups, Hp, Wp)
            for oh in range(h_out):
                for ow in range(w_out):
                    rows, cols = window(oh, ow, kernel_size, stride, dilation)
                    y[n, oc, oh, ow] = np.sum(x_g[:, rows, cols] * weight[oc])
    if bias is not None:
        y += bias[:, None, None]
    return y


def conv2d_backward(grad_out, x, weight, stride=1, padding=0, dilation=1, groups=1):
    """Gradients of ``conv2d`` with respect to ``x``, ``weight`` and the bias.

    Parameters
    ----------
    grad_out : (N, C_out, H_out, W_out)
    x : (N, C_in, H, W);  weight : (C_out, C_in // groups, kH, kW);  the rest as in ``conv2d``.

    Returns
    -------
    grad_x : (N, C_in, H, W);  grad_weight : (C_out, C_in // groups, kH, kW);  grad_bias : (C_out,)
    """
    stride, dilation, pads, (h_out, w_out) = _conv_geometry(
        x.shape, weight.shape, stride, padding, dilation, groups
    )
    kernel_size = weight.shape[2:]
    xp = pad(x, pads)
    grad_xp = np.zeros_like(xp)
    grad_weight = np.zeros_like(weight)
    n_batch, c_out, c_in_g = x.shape[0], weight.shape[0], weight.shape[1]
    c_out_g = c_out // groups
    for n in range(n_batch):
        for oc in range(c_out):
            group = slice((oc // c_out_g) * c_in_g, (oc // c_out_g + 1) * c_in_g)
            for oh in range(h_out):
                for ow in range(w_out):
                    rows, cols = window(oh, ow, kernel_size, stride, dilation)
                    g = grad_out[n, oc, oh, ow]
                    # y[n, oc, oh, ow] = sum(window * weight[oc]): each input pixel of the window
                    # receives g times the weight it met, each weight g times the pixel it met.
                    grad_xp[n, group, rows, cols] += g * weight[oc]
                    grad_weight[oc] += g * xp[n, group, rows, cols]
    grad_x = crop(grad_xp, pads, x.shape[2], x.shape[3])  # padding pixels have no gradient
    grad_bias = grad_out.sum(axis=(0, 2, 3)).astype(x.dtype)
    return grad_x, grad_weight, grad_bias
