"""Stateless operations with PyTorch's names and semantics (``import fastconv.functional as F``).

Every function validates its arguments, normalises them, allocates the outputs and then calls a
kernel from ``fastconv.kernels`` (or a few NumPy calls where NumPy is already the fast way).
Arrays are NCHW; conv weights are OIHW ``(C_out, C_in // groups, kH, kW)``. float32 and float64
are supported and outputs keep the input dtype.
"""

from __future__ import annotations

import math
import numbers
import threading

import numpy as np
from scipy.special import expit

from fastconv._checks import check_array, check_probability, generator, pair
from fastconv._threads import get_num_threads, single_threaded_blas
from fastconv.kernels import conv as kconv
from fastconv.kernels import elementwise as kelem
from fastconv.kernels import matmul as kmatmul
from fastconv.kernels import norm as knorm
from fastconv.kernels import pool as kpool
from fastconv.kernels import winograd as kwino

__all__ = [
    "conv2d",
    "conv2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool2d_backward",
    "linear",
    "linear_backward",
    "relu",
    "relu_backward",
    "leaky_relu",
    "leaky_relu_backward",
    "sigmoid",
    "sigmoid_backward",
    "tanh",
    "tanh_backward",
    "batch_norm",
    "batch_norm_backward",
    "dropout",
    "dropout_backward",
    "softmax",
    "log_softmax",
    "cross_entropy",
    "cross_entropy_backward",
    "im2col",
    "col2im",
]


# =============================================================================================
# Convolution
# =============================================================================================


def _conv_output_size(size, k, stride, pad_total, dilation):
    return (size + pad_total - dilation * (k - 1) - 1) // stride + 1


def _window_geometry(name, x_hw, kernel, stride, padding, dilation, allow_same):
    """Normalise stride/padding/dilation and return ``(stride, pad_before, dilation, out_hw)``.

    ``padding`` may be an int, a pair, or (for conv) "same"/"valid". "same" pads a total of
    ``dilation*(k-1)``, the odd one on the bottom/right as PyTorch does; only ``pad_before``
    reaches the kernels because the output size implies the rest.
    """
    stride = pair("stride", stride, minimum=1)
    dilation = pair("dilation", dilation, minimum=1)
    if isinstance(padding, str):
        if not allow_same or padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, a pair or 'same'/'valid', got {padding!r}")
        if padding == "same" and stride != (1, 1):
            raise ValueError(f"padding='same' needs stride=1, got stride={stride}")
        if padding == "same":
            totals = tuple(d * (k - 1) for d, k in zip(dilation, kernel, strict=True))
        else:
            totals = (0, 0)
        before = tuple(t // 2 for t in totals)
    else:
        before = pair("padding", padding, minimum=0)
        totals = tuple(2 * p for p in before)
    effective = tuple(d * (k - 1) + 1 for d, k in zip(dilation, kernel, strict=True))
    padded = tuple(s + t for s, t in zip(x_hw, totals, strict=True))
    if effective[0] > padded[0] or effective[1] > padded[1]:
        raise ValueError(
            f"{name}: kernel size {kernel[0]}x{kernel[1]} (dilated {effective[0]}x{effective[1]}) "
            f"is larger than the padded input {padded[0]}x{padded[1]}"
        )
    out = tuple(
        _conv_output_size(s, k, st, t, d)
        for s, k, st, t, d in zip(x_hw, kernel, stride, totals, dilation, strict=True)
    )
    return stride, before, dilation, out


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
        kconv._conv2d_fwd_direct(x, weight, bias, *stride, *before, *dilation, groups, y)
        return y
    if _use_winograd(x.shape[1], weight, stride, dilation, groups, before):
        _winograd(x, weight, bias, before, y)
        return y
    rows = _tile_rows(x, weight, OH, OW)
    cols = _columns_workspace(x, weight, rows * OW)
    prod = np.empty((cols.shape[0], O // groups * rows * OW), dtype=x.dtype)
    with single_threaded_blas():
        kconv._conv2d_fwd_gemm(
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
        kconv._conv2d_bwd_input_direct(
            grad_out, weight, *stride, *before, *dilation, groups, grad_x
        )
        kconv._conv2d_bwd_weight_direct(x, grad_out, *stride, *before, *dilation, groups, grad_w)
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
        kconv._conv2d_bwd_gemm(
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
    kconv._im2col(x, *kernel, *stride, *before, *dilation, *out_hw, out)
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
    kconv._col2im(cols, *kernel, *stride, *before, *dilation, *out_hw, x)
    return x


def _check_shape(name, shape):
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != 4
        or not all(isinstance(s, (numbers.Integral, np.integer)) and s >= 0 for s in shape)
    ):
        raise ValueError(f"{name} must be a tuple (N, C, H, W) of non-negative ints, got {shape!r}")
    return tuple(int(s) for s in shape)


# =============================================================================================
# Pooling
# =============================================================================================


def _pool_output_size(size, k, stride, pad, dilation, ceil_mode):
    """PyTorch's pooling output size: with ceil_mode the last window must start inside the
    input or its left padding, never wholly in the right padding."""
    span = size + 2 * pad - dilation * (k - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _pool_geometry(x_shape, kernel_size, stride, padding, dilation, ceil_mode):
    kernel = pair("kernel_size", kernel_size, minimum=1)
    stride = kernel if stride is None else pair("stride", stride, minimum=1)
    padding = pair("padding", padding, minimum=0)
    dilation = pair("dilation", dilation, minimum=1)
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"padding must be at most half of kernel_size {kernel}, got {padding}")
    H, W = x_shape[2:]
    out = (
        _pool_output_size(H, kernel[0], stride[0], padding[0], dilation[0], ceil_mode),
        _pool_output_size(W, kernel[1], stride[1], padding[1], dilation[1], ceil_mode),
    )
    if out[0] < 1 or out[1] < 1:
        raise ValueError(
            f"kernel_size {kernel} (dilation {dilation}) is larger than the padded input "
            f"{H + 2 * padding[0]}x{W + 2 * padding[1]}: output size would be {out}"
        )
    for size, k, s, p, d in zip((H, W), kernel, stride, padding, dilation, strict=True):
        # Only windows that start in the padding can miss the input (a dilated kernel can step
        # over it); PyTorch returns garbage indices for them, we refuse.
        for o in range(out[0] if size == H else out[1]):
            start = o * s - p
            if start >= 0:
                break
            if not any(0 <= start + t * d < size for t in range(k)):
                raise ValueError(
                    f"padding {padding} with dilation {dilation}: a pooling window lies "
                    f"entirely in the padding for input size {H}x{W}"
                )
    return kernel, stride, padding, dilation, out


def _planes(a):
    """(N, C, H, W) -> (N*C, H, W) view: pooling kernels loop over planes."""
    return a.reshape(-1, *a.shape[2:])


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max pooling, as ``torch.nn.functional.max_pool2d(..., return_indices=True)``.

    Returns
    -------
    y : (N, C, OH, OW) array
    indices : int64 (N, C, OH, OW), each the flat index ``ih*W + iw`` of the max in its plane.
        NaN propagates (a window holding NaN gives NaN).
    """
    x = check_array("input", x, ndim=4)
    kernel, stride, padding, dilation, out_hw = _pool_geometry(
        x.shape, kernel_size, stride, padding, dilation, ceil_mode
    )
    N, C = x.shape[:2]
    y = np.empty((N, C, *out_hw), dtype=x.dtype)
    indices = np.empty((N, C, *out_hw), dtype=np.int64)
    H, W = x.shape[2:]
    inside = all(
        (o - 1) * s + (k - 1) * d < size and p == 0
        for o, s, k, d, size, p in zip(
            out_hw, stride, kernel, dilation, (H, W), padding, strict=True
        )
    )
    if inside:  # every window lies in the input: the kernel without bounds checks
        kpool._maxpool2d_fwd_inside(
            _planes(x), *kernel, *stride, *dilation, _planes(y), _planes(indices)
        )
    else:
        kpool._maxpool2d_fwd(
            _planes(x), *kernel, *stride, *padding, *dilation, _planes(y), _planes(indices)
        )
    return y, indices


def max_pool2d_backward(grad_out, indices, input_shape):
    """Gradient of ``max_pool2d``: each output's gradient is added at its argmax.

    Parameters
    ----------
    grad_out : (N, C, OH, OW) array; indices : int64 array of the same shape from max_pool2d;
    input_shape : (N, C, H, W)
    """
    grad_out = check_array("grad_out", grad_out, ndim=4)
    shape = _check_shape("input_shape", input_shape)
    if not isinstance(indices, np.ndarray) or indices.dtype != np.int64:
        got = indices.dtype if isinstance(indices, np.ndarray) else type(indices).__name__
        raise TypeError(f"indices must be an int64 numpy.ndarray, got {got}")
    if indices.shape != grad_out.shape:
        raise ValueError(
            f"indices must have grad_out's shape {grad_out.shape}, got {indices.shape}"
        )
    if shape[:2] != grad_out.shape[:2]:
        raise ValueError(
            f"input_shape {shape} does not match grad_out's (N, C) {grad_out.shape[:2]}"
        )
    plane = shape[2] * shape[3]
    if indices.size and (indices.min() < 0 or indices.max() >= plane):
        raise ValueError(f"indices must lie in [0, {plane}) for input_shape {shape}")
    grad_x = np.empty(shape, dtype=grad_out.dtype)
    P = shape[0] * shape[1]
    L = grad_out.shape[2] * grad_out.shape[3]
    kpool._maxpool2d_bwd(
        grad_out.reshape(P, L),
        np.ascontiguousarray(indices).reshape(P, L),
        grad_x.reshape(P, plane),
    )
    return grad_x


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Average pooling, as ``torch.nn.functional.avg_pool2d``: (N, C, H, W) -> (N, C, OH, OW).

    With ``count_include_pad`` the divisor counts padded zeros (but never the part of a
    ceil_mode window beyond the padding); otherwise only the input elements.
    """
    x = check_array("input", x, ndim=4)
    kernel, stride, padding, _, out_hw = _pool_geometry(
        x.shape, kernel_size, stride, padding, 1, ceil_mode
    )
    y = np.empty((*x.shape[:2], *out_hw), dtype=x.dtype)
    kpool._avgpool2d_fwd(
        _planes(x), *kernel, *stride, *padding, bool(count_include_pad), _planes(y)
    )
    return y


def avg_pool2d_backward(
    grad_out,
    input_shape,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
):
    """Gradient of ``avg_pool2d`` with respect to its input, of shape ``input_shape``."""
    grad_out = check_array("grad_out", grad_out, ndim=4)
    shape = _check_shape("input_shape", input_shape)
    kernel, stride, padding, _, out_hw = _pool_geometry(
        shape, kernel_size, stride, padding, 1, ceil_mode
    )
    if grad_out.shape != (*shape[:2], *out_hw):
        raise ValueError(f"grad_out must have shape {(*shape[:2], *out_hw)}, got {grad_out.shape}")
    grad_x = np.empty(shape, dtype=grad_out.dtype)
    kpool._avgpool2d_bwd(
        _planes(grad_out), *kernel, *stride, *padding, bool(count_include_pad), _planes(grad_x)
    )
    return grad_x


def adaptive_avg_pool2d(x, output_size):
    """Adaptive average pooling to ``output_size`` (int or (OH, OW)), as PyTorch."""
    x = check_array("input", x, ndim=4)
    out_hw = pair("output_size", output_size, minimum=1)
    y = np.empty((*x.shape[:2], *out_hw), dtype=x.dtype)
    kpool._adaptive_avgpool2d_fwd(_planes(x), _planes(y))
    return y


def adaptive_avg_pool2d_backward(grad_out, input_shape):
    """Gradient of ``adaptive_avg_pool2d``; the output size is read from ``grad_out``."""
    grad_out = check_array("grad_out", grad_out, ndim=4)
    shape = _check_shape("input_shape", input_shape)
    if shape[:2] != grad_out.shape[:2]:
        raise ValueError(
            f"input_shape {shape} does not match grad_out's (N, C) {grad_out.shape[:2]}"
        )
    grad_x = np.empty(shape, dtype=grad_out.dtype)
    kpool._adaptive_avgpool2d_bwd(_planes(grad_out), _planes(grad_x))
    return grad_x


# =============================================================================================
# Linear and activations (NumPy is already the fast way for these)
# =============================================================================================


def _matmul(a, b):
    """a @ b for 2-D a (any layout) and b (C- or F-contiguous, e.g. a weight's transpose)."""
    a = np.ascontiguousarray(a)
    if not (b.flags.c_contiguous or b.flags.f_contiguous):
        b = np.ascontiguousarray(b)
    out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    with single_threaded_blas():
        kmatmul._matmul(a, b, out, get_num_threads())
    return out


def linear(x, weight, bias=None):
    """``y = x @ weight.T + bias``; x (*, in_features), weight (out_features, in_features)."""
    x = check_array("input", x)
    weight = check_array("weight", weight, ndim=2, dtype=x.dtype)
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"input's last dimension must be in_features={weight.shape[1]}, "
            f"got input of shape {x.shape}"
        )
    if bias is not None:
        bias = check_array("bias", bias, ndim=1, dtype=x.dtype)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {bias.shape}")
    y = _matmul(x.reshape(-1, weight.shape[1]), weight.T)
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], weight.shape[0])


def linear_backward(grad_out, x, weight):
    """Returns ``(grad_x, grad_weight, grad_bias)`` of ``linear``."""
    x = check_array("input", x)
    weight = check_array("weight", weight, ndim=2, dtype=x.dtype)
    grad_out = check_array("grad_out", grad_out, dtype=x.dtype)
    if grad_out.shape != (*x.shape[:-1], weight.shape[0]):
        raise ValueError(
            f"grad_out must have shape {(*x.shape[:-1], weight.shape[0])}, got {grad_out.shape}"
        )
    g2 = grad_out.reshape(-1, weight.shape[0])
    x2 = x.reshape(-1, weight.shape[1])
    grad_x = _matmul(g2, weight).reshape(x.shape)
    return grad_x, _matmul(g2.T, x2), g2.sum(axis=0)


def _check_pair(x, grad_out):
    x = check_array("input", x)
    grad_out = check_array("grad_out", grad_out, dtype=x.dtype)
    if grad_out.shape != x.shape:
        raise ValueError(f"grad_out must have the input's shape {x.shape}, got {grad_out.shape}")
    return x, grad_out


def relu(x):
    """max(x, 0), NaN propagating."""
    x = check_array("input", x)
    y = np.empty_like(x)
    kelem._relu_fwd(x.reshape(-1), y.reshape(-1), get_num_threads())
    return y


def relu_backward(grad_out, x):
    """grad_out where x > 0 (and, as in PyTorch, where x is NaN), else 0."""
    x, grad_out = _check_pair(x, grad_out)
    grad_x = np.empty_like(x)
    kelem._relu_bwd(grad_out.reshape(-1), x.reshape(-1), grad_x.reshape(-1), get_num_threads())
    return grad_x


def leaky_relu(x, negative_slope=0.01):
    x = check_array("input", x)
    return np.where(x > 0, x, x * x.dtype.type(negative_slope))


def leaky_relu_backward(grad_out, x, negative_slope=0.01):
    x, grad_out = _check_pair(x, grad_out)
    return np.where(x > 0, grad_out, grad_out * x.dtype.type(negative_slope))


def sigmoid(x):
    return expit(check_array("input", x))


def sigmoid_backward(grad_out, x):
    x, grad_out = _check_pair(x, grad_out)
    s = expit(x)
    return grad_out * s * (1 - s)


def tanh(x):
    return np.tanh(check_array("input", x))


def tanh_backward(grad_out, x):
    x, grad_out = _check_pair(x, grad_out)
    t = np.tanh(x)
    return grad_out * (1 - t * t)


# =============================================================================================
# Batch norm
# =============================================================================================


def _as_ncs(x):
    """(N, C, *spatial) -> (N, C, S) view, S the product of the spatial sizes (1 if none)."""
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


def batch_norm(x, running_mean, running_var, weight, bias, training, momentum=0.1, eps=1e-5):
    """Batch normalisation over (N, C), (N, C, L) or (N, C, H, W) inputs, per channel C.

    In training the batch statistics normalise (biased variance) and ``running_mean`` /
    ``running_var`` are updated in place with the unbiased variance, as PyTorch does:
    ``running = (1 - momentum) * running + momentum * batch``. In eval the running statistics
    normalise. ``weight``/``bias`` may be None (meaning 1 and 0).

    Returns
    -------
    y : array shaped like x; cache : what ``batch_norm_backward`` needs.
    """
    x = check_array("input", x, ndim=(2, 3, 4))
    C = x.shape[1]
    params = {}
    for name, arr in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        if arr is not None:
            if not isinstance(arr, np.ndarray) or arr.shape != (C,):
                got = arr.shape if isinstance(arr, np.ndarray) else type(arr).__name__
                raise ValueError(f"{name} must be an array of shape ({C},), got {got}")
            check_array(name, arr, dtype=x.dtype)
        params[name] = arr
    if not training and (running_mean is None or running_var is None):
        raise ValueError("running_mean and running_var are required when training=False")
    for name in ("running_mean", "running_var"):
        if params[name] is not None and not params[name].flags.writeable:
            raise ValueError(f"{name} must be writeable (it is updated in place)")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")

    x3 = _as_ncs(x)
    count = x3.shape[0] * x3.shape[2]
    w = np.ones(C, x.dtype) if weight is None else np.ascontiguousarray(weight)
    b = np.zeros(C, x.dtype) if bias is None else np.ascontiguousarray(bias)
    if training:
        if count <= 1:
            raise ValueError(
                f"batch_norm needs more than 1 value per channel when training, "
                f"got input of shape {x.shape}"
            )
        mean = np.empty(C, np.float64)
        var = np.empty(C, np.float64)
        knorm._bn_batch_stats(x3, mean, var)
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += (momentum * mean).astype(x.dtype)
        if running_var is not None:
            running_var *= 1 - momentum
            running_var += (momentum * var * count / (count - 1)).astype(x.dtype)
    else:
        mean = running_mean.astype(np.float64)
        var = running_var.astype(np.float64)
    invstd = 1.0 / np.sqrt(var + eps)
    scale = w * invstd
    y = np.empty_like(x)
    knorm._bn_affine(
        x3, scale.astype(x.dtype), (b - mean * scale).astype(x.dtype), y.reshape(x3.shape)
    )
    cache = {"x": x, "mean": mean, "invstd": invstd, "weight": w, "training": bool(training)}
    return y, cache


def batch_norm_backward(grad_out, cache):
    """Returns ``(grad_x, grad_weight, grad_bias)`` of ``batch_norm`` given its ``cache``."""
    x, mean, invstd = cache["x"], cache["mean"], cache["invstd"]
    grad_out = check_array("grad_out", grad_out, dtype=x.dtype)
    if grad_out.shape != x.shape:
        raise ValueError(f"grad_out must have the input's shape {x.shape}, got {grad_out.shape}")
    C = x.shape[1]
    x3 = _as_ncs(x)
    g3 = grad_out.reshape(x3.shape)
    sum_gy = np.empty(C, np.float64)
    sum_gy_xmu = np.empty(C, np.float64)
    knorm._bn_grad_sums(g3, x3, mean, sum_gy, sum_gy_xmu)
    scale = cache["weight"] * invstd
    if cache["training"]:
        count = x3.shape[0] * x3.shape[2]
        shift_gy = sum_gy / count
        coef_xmu = sum_gy_xmu * invstd**2 / count
    else:
        shift_gy = coef_xmu = np.zeros(C)
    grad_x = np.empty_like(x)
    knorm._bn_bwd_input(g3, x3, mean, scale, shift_gy, coef_xmu, grad_x.reshape(x3.shape))
    dtype = x.dtype
    return grad_x, (sum_gy_xmu * invstd).astype(dtype), sum_gy.astype(dtype)


# =============================================================================================
# Dropout, softmax and cross-entropy
# =============================================================================================


def dropout(x, p, training, rng):
    """Inverted dropout: zero each element with probability ``p``, scale the rest by 1/(1-p).

    Returns ``(y, mask)`` with ``y = x * mask``; ``mask`` holds 0 or 1/(1-p) (all ones when
    not training or p == 0). ``rng`` is a ``numpy.random.Generator`` or an int seed.
    """
    x = check_array("input", x)
    p = check_probability("p", p)
    rng = generator(rng)
    if not training or p == 0.0:
        mask = np.ones_like(x)
    elif p == 1.0:
        mask = np.zeros_like(x)
    else:
        mask = (rng.random(x.shape) >= p).astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p))
    return x * mask, mask


def dropout_backward(grad_out, mask):
    grad_out = check_array("grad_out", grad_out)
    mask = check_array("mask", mask, dtype=grad_out.dtype)
    if mask.shape != grad_out.shape:
        raise ValueError(f"mask must have grad_out's shape {grad_out.shape}, got {mask.shape}")
    return grad_out * mask


def _check_axis(x, axis):
    if not isinstance(axis, numbers.Integral) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must be an int in [-{x.ndim}, {x.ndim}), got {axis!r}")
    return int(axis)


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along ``axis``, computed with the max subtracted (stable)."""
    x = check_array("input", x)
    axis = _check_axis(x, axis)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    """x - logsumexp(x) along ``axis``, stable for large |x|."""
    x = check_array("input", x)
    axis = _check_axis(x, axis)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _check_ce_args(logits, target, reduction):
    logits = check_array("logits", logits, ndim=2)
    if not isinstance(target, np.ndarray) or not np.issubdtype(target.dtype, np.integer):
        got = target.dtype if isinstance(target, np.ndarray) else type(target).__name__
        raise TypeError(f"target must be an integer numpy.ndarray of class indices, got {got}")
    if target.shape != (logits.shape[0],):
        raise ValueError(f"target must have shape ({logits.shape[0]},), got {target.shape}")
    if target.size and (target.min() < 0 or target.max() >= logits.shape[1]):
        raise ValueError(
            f"target values must lie in [0, {logits.shape[1]}), got "
            f"[{target.min()}, {target.max()}]"
        )
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return logits, target


def cross_entropy(logits, target, reduction="mean"):
    """Softmax cross-entropy of (N, C) logits against (N,) integer class targets.

    Returns a Python float for "mean" and "sum", an (N,) array for "none".
    """
    logits, target = _check_ce_args(logits, target, reduction)
    losses = -log_softmax(logits)[np.arange(logits.shape[0]), target]
    if reduction == "none":
        return losses
    total = float(losses.sum(dtype=np.float64))
    if reduction == "sum":
        return total
    return total / logits.shape[0] if logits.shape[0] else float("nan")


def cross_entropy_backward(logits, target, reduction="mean"):
    """Gradient of ``cross_entropy`` with respect to the logits: softmax - one_hot(target).

    For reduction "none" the upstream gradient is taken as all ones.
    """
    logits, target = _check_ce_args(logits, target, reduction)
    grad = softmax(logits)
    grad[np.arange(logits.shape[0]), target] -= 1
    if reduction == "mean" and logits.shape[0]:
        grad /= logits.shape[0]
    return grad
