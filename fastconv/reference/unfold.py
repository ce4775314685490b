"""im2col / col2im (PyTorch's ``unfold`` / ``fold``): windows as columns of a matrix, and back."""

from __future__ import annotations

import numpy as np

from fastconv._checks import pair
from fastconv.reference._geometry import check_fits, crop, out_size, pad, symmetric_pads, window


def _unfold_geometry(height, width, kernel_size, stride, padding, dilation):
    """Normalise the arguments; return ``kernel_size, stride, pads, dilation, (H_out, W_out)``."""
    kernel_size = pair("kernel_size", kernel_size, minimum=1)
    stride = pair("stride", stride, minimum=1)
    pads = symmetric_pads(padding)
    dilation = pair("dilation", dilation, minimum=1)
    out = [
        out_size(size, kernel_size[a], stride[a], dilation[a], sum(pads[a]))
        for a, size in enumerate((height, width))
    ]
    return (
        kernel_size,
        stride,
        pads,
        dilation,
        check_fits(out, (height, width), kernel_size, dilation, padding),
    )


def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    """Unfold every sliding window into a column, as ``torch.nn.functional.unfold``.

    Parameters
    ----------
    x : (N, C, H, W)
    kernel_size, stride, padding, dilation : int or (h, w)

    Returns
    -------
    cols : (N, C*kH*kW, L) with ``L = H_out * W_out``. Column ``l = oh * W_out + ow`` is the
        window of output position (oh, ow); row ``c*kH*kW + i*kW + j`` is its tap (i, j) in
        channel c. A convolution is then ``weight.reshape(C_out, -1) @ cols``.
    """
    n_batch, channels, height, width = x.shape
    k, s, pads, d, (h_out, w_out) = _unfold_geometry(
        height, width, kernel_size, stride, padding, dilation
    )
    xp = pad(x, pads)
    rows_per_col = channels * k[0] * k[1]
    cols = np.zeros((n_batch, rows_per_col, h_out * w_out), dtype=x.dtype)
    for oh in range(h_out):
        for ow in range(w_out):
            rows, cols_ = window(oh, ow, k, s, d)
            # (N, C, kH, kW) flattened row-major is exactly the (c, i, j) row order.
            cols[:, :, oh * w_out + ow] = xp[:, :, rows, cols_].reshape(n_batch, rows_per_col)
    return cols


def col2im(cols, input_shape, kernel_size, stride=1, padding=0, dilation=1):
    """Fold columns back into an image, summing overlaps, as ``torch.nn.functional.fold``.

    The adjoint of ``im2col`` (not its inverse): a pixel covered by several windows receives the
    sum of all their entries, and entries that fall in the padding are dropped.

    Parameters
    ----------
    cols : (N, C*kH*kW, L)
    input_shape : (N, C, H, W) of the image to rebuild
    kernel_size, stride, padding, dilation : int or (h, w), as given to ``im2col``

    Returns
    -------
    x : (N, C, H, W)
    """
    n_batch, channels, height, width = input_shape
    k, s, pads, d, (h_out, w_out) = _unfold_geometry(
        height, width, kernel_size, stride, padding, dilation
    )
    if cols.shape[1:] != (channels * k[0] * k[1], h_out * w_out):
        raise ValueError(
            f"cols must have shape (N, {channels * k[0] * k[1]}, {h_out * w_out}) "
            f"for input_shape {tuple(input_shape)}, got {cols.shape}"
        )
    xp = pad(np.zeros((n_batch, channels, height, width), dtype=cols.dtype), pads)
    for oh in range(h_out):
        for ow in range(w_out):
            rows, cols_ = window(oh, ow, k, s, d)
            xp[:, :, rows, cols_] += cols[:, :, oh * w_out + ow].reshape(
                n_batch, channels, k[0], k[1]
            )
    return crop(xp, pads, height, width)
