"""Max, average and adaptive average pooling and their gradients."""

from __future__ import annotations

import numpy as np

from fastconv._checks import check_array, check_bool, pair, pool_padding
from fastconv.functional._geometry import _check_shape
from fastconv.kernels import pool as kpool


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
    padding = pool_padding(padding, kernel_size)
    dilation = pair("dilation", dilation, minimum=1)
    ceil_mode = check_bool("ceil_mode", ceil_mode)
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


def _max_pool_setup(x, kernel_size, stride, padding, dilation, ceil_mode):
    """The checks of max pooling's forward, written once: returns the contiguous input, the
    normalised geometry, the output shape and whether every window lies inside the input (then
    the kernels without bounds arithmetic run)."""
    x = check_array("input", x, ndim=4)
    kernel, stride, padding, dilation, out_hw = _pool_geometry(
        x.shape, kernel_size, stride, padding, dilation, ceil_mode
    )
    inside = all(
        (o - 1) * s + (k - 1) * d < size and p == 0
        for o, s, k, d, size, p in zip(
            out_hw, stride, kernel, dilation, x.shape[2:], padding, strict=True
        )
    )
    return x, (kernel, stride, padding, dilation), (*x.shape[:2], *out_hw), inside


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max pooling, as ``torch.nn.functional.max_pool2d(..., return_indices=True)``.

    Returns
    -------
    y : (N, C, OH, OW) array
    indices : int64 (N, C, OH, OW), each the flat index ``ih*W + iw`` of the max in its plane.
        NaN propagates (a window holding NaN gives NaN).
    """
    x, geometry, out_shape, inside = _max_pool_setup(
        x, kernel_size, stride, padding, dilation, ceil_mode
    )
    y = np.empty(out_shape, dtype=x.dtype)
    indices = np.empty(out_shape, dtype=np.int64)
    _max_pool_run(x, geometry, inside, y, indices)
    return y, indices


def _max_pool2d_values(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """The ``y`` of ``max_pool2d`` alone (eval mode, where no gradient is routed back): same
    checks, same values; the common 2x2 stride-2 window builds no int64 indices."""
    x, geometry, out_shape, inside = _max_pool_setup(
        x, kernel_size, stride, padding, dilation, ceil_mode
    )
    y = np.empty(out_shape, dtype=x.dtype)
    _max_pool_run(x, geometry, inside, y, None)
    return y


def _max_pool_run(x, geometry, inside, y, indices):
    """Fill ``y`` (and ``indices`` unless None) with the kernel that fits the windows."""
    kernel, stride, padding, dilation = geometry
    if inside and kernel == (2, 2) and stride == (2, 2) and dilation == (1, 1):
        with_indices = indices is not None
        idx = indices if with_indices else np.empty((1, 1, 1, 1), np.int64)
        # float32: 16 windows per vector step; float64 keeps the scalar loop
        kernel = kpool._maxpool2d_2x2_f32 if x.dtype == np.float32 else kpool._maxpool2d_2x2
        kernel(_planes(x), _planes(y), _planes(idx), with_indices)
        return
    if indices is None:  # other windows: the indexed kernels, with scratch indices
        indices = np.empty(y.shape, np.int64)
    if inside:
        kpool._maxpool2d_fwd_inside(
            _planes(x), *kernel, *stride, *dilation, _planes(y), _planes(indices)
        )
    else:
        kpool._maxpool2d_fwd(
            _planes(x), *kernel, *stride, *padding, *dilation, _planes(y), _planes(indices)
        )


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
    _check_indices_shape(indices, grad_out)
    if shape[:2] != grad_out.shape[:2]:
        raise ValueError(
            f"input_shape {shape} does not match grad_out's (N, C) {grad_out.shape[:2]}"
        )
    plane = shape[2] * shape[3]
    if indices.size and (indices.min() < 0 or indices.max() >= plane):
        raise ValueError(f"indices must lie in [0, {plane}) for input_shape {shape}")
    return _max_pool2d_bwd(grad_out, np.ascontiguousarray(indices), shape)


def _max_pool2d_backward_trusted(grad_out, indices, input_shape):
    """``max_pool2d_backward`` for the ``indices`` and ``input_shape`` of fastconv's own
    ``max_pool2d`` (a layer's saved forward): no scan that every index is in range. Only
    ``grad_out``, which comes from the caller, is checked."""
    grad_out = check_array("grad_out", grad_out, ndim=4)
    _check_indices_shape(indices, grad_out)
    return _max_pool2d_bwd(grad_out, indices, input_shape)


def _check_indices_shape(indices, grad_out):
    if indices.shape != grad_out.shape:
        raise ValueError(
            f"indices must have grad_out's shape {grad_out.shape}, got {indices.shape}"
        )


def _max_pool2d_bwd(grad_out, indices, input_shape):
    N, C, H, W = input_shape
    grad_x = np.empty((N, C, H, W), dtype=grad_out.dtype)
    P, L = N * C, grad_out.shape[2] * grad_out.shape[3]
    kpool._maxpool2d_bwd(grad_out.reshape(P, L), indices.reshape(P, L), grad_x.reshape(P, H * W))
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
        _planes(x),
        *kernel,
        *stride,
        *padding,
        check_bool("count_include_pad", count_include_pad),
        _planes(y),
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
        _planes(grad_out),
        *kernel,
        *stride,
        *padding,
        check_bool("count_include_pad", count_include_pad),
        _planes(grad_x),
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
