"""conv2d and conv2d_backward: validate, normalise, pick the algorithm, allocate, call a kernel."""

from __future__ import annotations

import math
import numbers
import threading

import numpy as np

from fastconv._checks import check_array
from fastconv._threads import get_num_threads, single_threaded_blas
from fastconv.functional._geometry import _window_geometry
from fastconv.kernels import conv_direct, conv_gemm
from fastconv.kernels import winograd as kwino


def _check_conv_args(x, weight, groups):
    x = check_array("input", x, ndim=4)
    weight = check_array("weight", weight, ndim=4, dtype=x.dtype)
    if not isinstance(groups, numbers.Integral) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    C, O, Cg = x.shape[1], weight.shape[0], weight.shape[1]
    if C % groups or O % groups:
        raise ValueError(f"groups={groups} must divide in_channels ({C}) and out_channels ({O})")
    if Cg * groups != C:
        raise ValueError(
            f"weight expects {Cg * groups} input channels (weight.shape[1]={Cg} x groups={groups}),"
            f" but input has {C} channels"
        )
    return x, weight


# Dispatch, measured on the BENCHMARKS.md shapes (see ``benchmarks/report.py``):
# - 3x3, stride 1, no dilation, one group, enough channels: Winograd F(2x2, 3x3), 2.25x fewer
#   multiplications than im2col + GEMM; its backward-data pass is the same algorithm on the
#   flipped kernel. With few input channels the transforms cost more than they save.
# - depthwise-style (one input channel per group): direct loops; each group's GEMM would be a
#   tiny (C_out/groups x kH*kW) matrix.
# - everything else: im2col + GEMM, which beats direct loops even with one input channel (10x
#   at 1 -> 32 channels, 28x28).
_WINOGRAD_MIN_CHANNELS = 16


def _use_winograd(x_channels, weight, stride, dilation, groups, before):
    return (
        weight.shape[2:] == (3, 3)
        and stride == (1, 1)
        and dilation == (1, 1)
        and groups == 1
        and max(before) <= 2  # the input-gradient pass pads by 2 - before
        and min(x_channels, weight.shape[0]) >= _WINOGRAD_MIN_CHANNELS
    )


def _use_direct(weight, groups):
    return groups > 1 and weight.shape[1] == 1


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
    x, weight = _check_conv_args(x, weight, groups)
    O, _, KH, KW = weight.shape
    if bias is None:
        bias = np.zeros(O, dtype=x.dtype)
    else:
        bias = check_array("bias", bias, ndim=1, dtype=x.dtype)
        if bias.shape[0] != O:
            raise ValueError(f"bias must have shape ({O},), got {bias.shape}")
    stride, before, dilation, (OH, OW) = _window_geometry(
        "weight", x.shape[2:], (KH, KW), stride, padding, dilation, allow_same=True
    )
    N = x.shape[0]
    y = np.empty((N, O, OH, OW), dtype=x.dtype)
    if _use_direct(weight, groups):
        conv_direct._conv2d_fwd_direct(x, weight, bias, *stride, *before, *dilation, groups, y)
        return y
    if _use_winograd(x.shape[1], weight, stride, dilation, groups, before):
        _winograd(x, weight, bias, before, y)
        return y
    rows = _tile_rows(x, weight, OH, OW)
    cols = _columns_workspace(x, weight, rows * OW)
    prod = np.empty((cols.shape[0], O // groups * rows * OW), dtype=x.dtype)
    with single_threaded_blas():
        conv_gemm._conv2d_fwd_gemm(
            x,
            _grouped_weight(weight, groups),
            bias,
            (KH, KW, *stride, *before, *dilation, OH, OW),
            rows,
            cols,
            prod,
            y.reshape(N, groups, O // groups, OH * OW),
        )
    return y


# The GEMM path unfolds one sample at a time into a per-thread buffer, in tiles of output rows
# only when a sample's columns exceed this budget (large images: a 64-channel 224x224 layer
# would need 115 MB per sample). Measured on the BENCHMARKS.md shapes, whole samples were as
# fast as or faster than tiles of rows (kept in L2) or of several small samples.
_TILE_BYTES = 8 << 20


def _tile_rows(x, weight, OH, OW):
    """Output rows per GEMM tile: all of them, unless a sample's columns exceed the budget."""
    R = x.shape[1] * weight.shape[2] * weight.shape[3]  # column rows, all groups
    per_row = max(1, R * OW * x.dtype.itemsize)
    return int(min(max(OH, 1), max(1, _TILE_BYTES // per_row)))


_workspaces = threading.local()


def _columns_workspace(x, weight, tile_len):
    """The (threads, C_in*kH*kW*tile_len) im2col buffer of the GEMM path, one row per thread.

    Reused between calls (per Python thread) rather than allocated each time.
    """
    KH, KW = weight.shape[2:]
    shape = (min(get_num_threads(), max(x.shape[0], 1)), x.shape[1] * KH * KW * tile_len)
    cache = getattr(_workspaces, "cols", None)
    if cache is None or cache.dtype != x.dtype or cache.size < math.prod(shape):
        cache = _workspaces.cols = np.empty(math.prod(shape), dtype=x.dtype)
    return cache[: math.prod(shape)].reshape(shape)


# Winograd works on blocks of about this many 2x2 output tiles: the block's transformed patches
# and products (16 x channels x tiles each) should stay in cache. The weight gradient's GEMMs
# reduce over the tiles, so they prefer longer blocks (measured on fm_conv2 and res_56: 128
# tiles for the convolution, 256 for the weight gradient; at 112 tiles of 64 channels the
# weight gradient ran at half speed).
_WINOGRAD_TILES = 128
_WINOGRAD_GRAD_TILES = 256


def _winograd_workspaces(x, C, O, OW, tiles):
    """Tile rows per block of about ``tiles`` tiles, and the Winograd kernels' thread buffers."""
    TW = (OW + 1) // 2
    block = max(1, tiles // TW)  # tile rows per block
    T = min(get_num_threads(), max(x.shape[0], 1))
    V = np.empty((T, 16 * C * block * TW), dtype=x.dtype)
    M = np.empty((T, 16 * O * block * TW), dtype=x.dtype)
    rows_in = np.empty((T, 8, 2 * TW + 2), dtype=x.dtype)
    rows_out = np.empty((T, 2, 2 * TW), dtype=x.dtype)
    return block, V, M, rows_in, rows_out


def _winograd(x, weight, bias, before, y):
    """y = conv2d(x, weight) + bias for a 3x3 stride-1 kernel, top/left padding ``before``."""
    O, C = weight.shape[:2]
    U = np.empty((16, O, C), dtype=x.dtype)
    kwino._winograd_weights(weight, U)
    workspaces = _winograd_workspaces(x, C, O, y.shape[3], _WINOGRAD_TILES)
    with single_threaded_blas():
        kwino._conv2d_winograd(x, U, bias, *before, *workspaces, y)


def _winograd_grad_weight(x, grad_out, before, grad_w):
    """grad_w of a 3x3 stride-1 conv: Winograd's 16 GEMMs, then back to 3x3."""
    O, C = grad_w.shape[:2]
    block, V, M, rows_in, rows_out = _winograd_workspaces(
        x, C, O, grad_out.shape[3], _WINOGRAD_GRAD_TILES
    )
    T = V.shape[0]
    dU = np.empty((T, 16, O, C), dtype=x.dtype)
    tmp = np.empty((T, O, C), dtype=x.dtype)
    with single_threaded_blas():
        kwino._conv2d_winograd_grad_weight(
            x, grad_out, *before, block, V, M, rows_in, rows_out, tmp, dU
        )
    kwino._winograd_weights_grad(dU.sum(axis=0), grad_w)


def _bias_grad(grad_out):
    """Sum of grad_out over (N, H, W), accumulated in float64 as the GEMM path's kernel does."""
    return grad_out.sum(axis=(0, 2, 3), dtype=np.float64).astype(grad_out.dtype)


def _grouped_weight(weight, groups):
    """OIHW -> (groups, O/groups, C/groups*kH*kW): each group's GEMM operand, contiguous."""
    O = weight.shape[0]
    return weight.reshape(groups, O // groups, -1)


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
    x, weight = _check_conv_args(x, weight, groups)
    O, Cg, KH, KW = weight.shape
    C = x.shape[1]
    stride, before, dilation, out_hw = _window_geometry(
        "weight", x.shape[2:], (KH, KW), stride, padding, dilation, allow_same=True
    )
    N = x.shape[0]
    grad_out = check_array("grad_out", grad_out, ndim=4, dtype=x.dtype)
    if grad_out.shape != (N, O, *out_hw):
        raise ValueError(f"grad_out must have shape {(N, O, *out_hw)}, got {grad_out.shape}")
    grad_x = np.empty_like(x)
    if _use_direct(weight, groups):
        grad_w = np.empty_like(weight)
        conv_direct._conv2d_bwd_input_direct(
            grad_out, weight, *stride, *before, *dilation, groups, grad_x
        )
        conv_direct._conv2d_bwd_weight_direct(
            x, grad_out, *stride, *before, *dilation, groups, grad_w
        )
        return grad_x, grad_w, _bias_grad(grad_out)
    if _use_winograd(C, weight, stride, dilation, groups, before):
        # The input gradient of a stride-1 3x3 conv is the full convolution of grad_out with the
        # flipped kernel (channels swapped): Winograd again, with padding 2 - pad on each side.
        flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        _winograd(grad_out, flipped, np.zeros(C, x.dtype), (2 - before[0], 2 - before[1]), grad_x)
        grad_w = np.empty_like(weight)
        _winograd_grad_weight(x, grad_out, before, grad_w)
        return grad_x, grad_w, _bias_grad(grad_out)
    OH, OW = out_hw
    rows = _tile_rows(x, weight, OH, OW)
    width = rows * OW
    cols = _columns_workspace(x, weight, width)
    T, Og, Rg = cols.shape[0], O // groups, Cg * KH * KW
    gw_part = np.empty((T, groups, Og, Rg), dtype=x.dtype)
    gb_part = np.empty((T, O), dtype=np.float64)
    with single_threaded_blas():
        conv_gemm._conv2d_bwd_gemm(
            x,
            grad_out.reshape(N, groups, Og, OH * OW),
            _grouped_weight(weight, groups),
            (KH, KW, *stride, *before, *dilation, OH, OW),
            rows,
            cols,
            np.empty((T, Og * width), dtype=x.dtype),
            gw_part,
            np.empty((T, Og, Rg), dtype=x.dtype),
            gb_part,
            grad_x,
        )
    grad_w = gw_part.sum(axis=0).reshape(weight.shape)
    return grad_x, grad_w, gb_part.sum(axis=0).astype(x.dtype)
