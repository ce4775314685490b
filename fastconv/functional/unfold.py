"""im2col and col2im (PyTorch's unfold and fold)."""

from __future__ import annotations

import numpy as np

from fastconv._checks import check_array, pair
from fastconv.functional._geometry import _check_shape, _window_geometry
from fastconv.kernels import conv_gemm


def _unfold_geometry(x_shape, kernel_size, stride, padding, dilation):
    kernel = pair("kernel_size", kernel_size, minimum=1)
    stride, before, dilation, out_hw = _window_geometry(
        "kernel_size", x_shape[2:], kernel, stride, padding, dilation, allow_same=False
    )
    return kernel, stride, before, dilation, out_hw


def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    """Unfold sliding windows into columns, as ``torch.nn.functional.unfold``.

    Returns
    -------
    cols : (N, C*kH*kW, L) array, L = OH*OW; row ``c*kH*kW + i*kW + j`` holds tap (i, j) of
        channel c for every output position.
    """
    x = check_array("input", x, ndim=4)
    kernel, stride, before, dilation, out_hw = _unfold_geometry(
        x.shape, kernel_size, stride, padding, dilation
    )
    N, C = x.shape[:2]
    out = np.empty((N, C * kernel[0] * kernel[1], out_hw[0] * out_hw[1]), dtype=x.dtype)
    conv_gemm._im2col(x, *kernel, *stride, *before, *dilation, *out_hw, out)
    return out


def col2im(cols, input_shape, kernel_size, stride=1, padding=0, dilation=1):
    """Sum columns back into an image, as ``torch.nn.functional.fold`` (the adjoint of im2col).

    Parameters
    ----------
    cols : (N, C*kH*kW, L) array
    input_shape : (N, C, H, W) of the image to rebuild
    """
    cols = check_array("cols", cols, ndim=3)
    shape = _check_shape("input_shape", input_shape)
    kernel, stride, before, dilation, out_hw = _unfold_geometry(
        shape, kernel_size, stride, padding, dilation
    )
    N, C = shape[:2]
    expected = (N, C * kernel[0] * kernel[1], out_hw[0] * out_hw[1])
    if cols.shape != expected:
        raise ValueError(
            f"cols must have shape {expected} for input_shape {shape}, got {cols.shape}"
        )
    x = np.empty(shape, dtype=cols.dtype)
    conv_gemm._col2im(cols, *kernel, *stride, *before, *dilation, *out_hw, x)
    return x
