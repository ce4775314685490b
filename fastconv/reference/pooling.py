"""Max, average and adaptive average pooling and their gradients, one window at a time."""

from __future__ import annotations

import numpy as np

from fastconv._checks import pair, pool_padding
from fastconv.reference._geometry import check_fits, out_size


def _pool_out_size(size, kernel, stride, padding, dilation, ceil_mode):
    """Output length along one axis, with PyTorch's pooling rule.

    Floor mode is the convolution formula. Ceil mode rounds up instead, and
    ``ceil(a / s) == floor((a + s - 1) / s)``: the same formula on an axis ``s - 1`` longer.
    """
    extra = stride - 1 if ceil_mode else 0
    out = out_size(size + extra, kernel, stride, dilation, 2 * padding)
    # In ceil mode the extra window must start inside the input or the left padding; one that
    # would start in the right padding is dropped.
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _pool_geometry(x_shape, kernel_size, stride, padding, dilation, ceil_mode):
    """Normalise pooling arguments; return ``kernel_size, stride, padding, dilation, out``."""
    kernel_size = pair("kernel_size", kernel_size, minimum=1)
    stride = kernel_size if stride is None else pair("stride", stride, minimum=1)
    padding = pool_padding(padding, kernel_size)  # at most half the window, as in PyTorch
    dilation = pair("dilation", dilation, minimum=1)
    out = [
        _pool_out_size(
            x_shape[2 + a], kernel_size[a], stride[a], padding[a], dilation[a], ceil_mode
        )
        for a in range(2)
    ]
    return (
        kernel_size,
        stride,
        padding,
        dilation,
        check_fits(out, x_shape[2:], kernel_size, dilation, padding),
    )


def _taps(o, kernel, stride, padding, dilation, size):
    """Input coordinates read by output index ``o`` along one axis, padding taps left out."""
    start = o * stride - padding  # first tap, in input coordinates (negative = in the padding)
    taps = np.arange(kernel) * dilation + start
    return taps[(taps >= 0) & (taps < size)]


def _argmax_like_torch(values):
    """Position PyTorch's max pooling picks in a 1-D window scanned in row-major order.

    PyTorch keeps a running max, starting at -inf with the index of the first tap, and replaces
    it when ``value > max or isnan(value)``. So the first of tied maxima wins, a window of -inf
    keeps the first tap, and a NaN always wins -- the *last* NaN if there are several.
    """
    nans = np.flatnonzero(np.isnan(values))
    if nans.size:
        return nans[-1]
    return int(np.argmax(values))  # np.argmax returns the first of tied maxima as well


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max pooling with argmax, as ``torch.nn.functional.max_pool2d(..., return_indices=True)``.

    Parameters
    ----------
    x : (N, C, H, W)
    kernel_size, padding, dilation : int or (h, w); padding at most half the kernel
    stride : int, (h, w) or None (= kernel_size)
    ceil_mode : round the output size up (an extra, partial window at the end)

    Returns
    -------
    y : (N, C, H_out, W_out), same dtype as ``x``
    indices : (N, C, H_out, W_out) int64, flat index ``h * W + w`` of each max in its input plane
    """
    k, s, p, d, (h_out, w_out) = _pool_geometry(
        x.shape, kernel_size, stride, padding, dilation, ceil_mode
    )
    n_batch, channels, height, width = x.shape
    y = np.zeros((n_batch, channels, h_out, w_out), dtype=x.dtype)
    indices = np.zeros((n_batch, channels, h_out, w_out), dtype=np.int64)
    for oh in range(h_out):
        rows = _taps(oh, k[0], s[0], p[0], d[0], height)
        for ow in range(w_out):
            cols = _taps(ow, k[1], s[1], p[1], d[1], width)
            if rows.size == 0 or cols.size == 0:
                # Only possible with dilation: every tap jumps over the input. PyTorch returns
                # -inf with an index outside the plane (and its backward corrupts memory).
                raise ValueError(
                    f"a max_pool2d window reads only padding (kernel_size={k}, "
                    f"padding={p}, dilation={d}, input {(height, width)})"
                )
            for n in range(n_batch):
                for c in range(channels):
                    window = x[n, c][np.ix_(rows, cols)]  # (len(rows), len(cols)), no padding
                    pos = _argmax_like_torch(window.ravel())
                    r, q = divmod(pos, cols.size)  # back from the flat window position
                    y[n, c, oh, ow] = window[r, q]
                    indices[n, c, oh, ow] = rows[r] * width + cols[q]
    return y, indices


def max_pool2d_backward(grad_out, indices, input_shape):
    """Route each output gradient back to the input pixel that was the max.

    Parameters
    ----------
    grad_out, indices : (N, C, H_out, W_out), as returned by ``max_pool2d``
    input_shape : (N, C, H, W)

    Returns
    -------
    grad_x : (N, C, H, W). Overlapping windows that picked the same pixel add up.
    """
    n_batch, channels, height, width = input_shape
    grad_x = np.zeros((n_batch, channels, height * width), dtype=grad_out.dtype)
    for n in range(n_batch):
        for c in range(channels):
            for oh in range(grad_out.shape[2]):
                for ow in range(grad_out.shape[3]):
                    grad_x[n, c, indices[n, c, oh, ow]] += grad_out[n, c, oh, ow]
    return grad_x.reshape(input_shape)


def _avg_window(o, kernel, stride, padding, size):
    """``(start, end, padded_length)`` of output index ``o``'s window along one axis.

    ``padded_length`` counts the padding taps but stops at the end of the right padding (a ceil
    mode window can hang past it); ``[start, end)`` is then clipped to the input.
    """
    start = o * stride - padding
    end = min(start + kernel, size + padding)
    return max(start, 0), min(end, size), end - start


def _avg_windows(input_shape, kernel_size, stride, padding, ceil_mode, count_include_pad):
    """Yield ``(oh, ow, rows, cols, divisor)`` for every output position of ``avg_pool2d``."""
    k, s, p, _, (h_out, w_out) = _pool_geometry(
        input_shape, kernel_size, stride, padding, 1, ceil_mode
    )
    height, width = input_shape[2:]
    for oh in range(h_out):
        h0, h1, h_padded = _avg_window(oh, k[0], s[0], p[0], height)
        for ow in range(w_out):
            w0, w1, w_padded = _avg_window(ow, k[1], s[1], p[1], width)
            if count_include_pad:
                divisor = h_padded * w_padded  # padding zeros count
            else:
                divisor = (h1 - h0) * (w1 - w0)  # only real input pixels count
            yield oh, ow, slice(h0, h1), slice(w0, w1), divisor


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Average pooling, as ``torch.nn.functional.avg_pool2d``.

    Parameters
    ----------
    x : (N, C, H, W)
    kernel_size, padding : int or (h, w); padding at most half the kernel
    stride : int, (h, w) or None (= kernel_size)
    ceil_mode : round the output size up
    count_include_pad : divide by the window size including zero padding (else only the pixels
        inside the input)

    Returns
    -------
    y : (N, C, H_out, W_out)
    """
    shape = _pool_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode)[-1]
    y = np.zeros(x.shape[:2] + shape, dtype=x.dtype)
    for oh, ow, rows, cols, divisor in _avg_windows(
        x.shape, kernel_size, stride, padding, ceil_mode, count_include_pad
    ):
        y[:, :, oh, ow] = x[:, :, rows, cols].sum(axis=(2, 3)) / divisor  # all (n, c) at once
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
    """Spread each output gradient evenly (``/ divisor``) over its window.

    Parameters
    ----------
    grad_out : (N, C, H_out, W_out)
    input_shape : (N, C, H, W); the rest as in ``avg_pool2d``.

    Returns
    -------
    grad_x : (N, C, H, W)
    """
    grad_x = np.zeros(input_shape, dtype=grad_out.dtype)
    for oh, ow, rows, cols, divisor in _avg_windows(
        input_shape, kernel_size, stride, padding, ceil_mode, count_include_pad
    ):
        grad_x[:, :, rows, cols] += grad_out[:, :, oh, ow, None, None] / divisor
    return grad_x


def _adaptive_range(i, in_len, out_len):
    """Input range ``[floor(i*in/out), ceil((i+1)*in/out))`` averaged into output index ``i``."""
    start = (i * in_len) // out_len
    end = -((-(i + 1) * in_len) // out_len)  # ceil division with floor division
    return slice(start, end)


def _adaptive_output_size(output_size, height, width):
    """``output_size`` as a pair; a ``None`` entry keeps that input size (as in PyTorch)."""
    if isinstance(output_size, (tuple, list)) and len(output_size) == 2:
        output_size = tuple(
            size if o is None else o for o, size in zip(output_size, (height, width), strict=True)
        )
    return pair("output_size", output_size, minimum=1)


def adaptive_avg_pool2d(x, output_size):
    """Average pooling to a fixed output size, as ``torch.nn.functional.adaptive_avg_pool2d``.

    Parameters
    ----------
    x : (N, C, H, W)
    output_size : int or (H_out, W_out); windows have varying size and may overlap

    Returns
    -------
    y : (N, C, H_out, W_out)
    """
    height, width = x.shape[2:]
    h_out, w_out = _adaptive_output_size(output_size, height, width)
    y = np.zeros(x.shape[:2] + (h_out, w_out), dtype=x.dtype)
    for oh in range(h_out):
        rows = _adaptive_range(oh, height, h_out)
        for ow in range(w_out):
            cols = _adaptive_range(ow, width, w_out)
            y[:, :, oh, ow] = x[:, :, rows, cols].mean(axis=(2, 3))
    return y


def adaptive_avg_pool2d_backward(grad_out, input_shape):
    """Gradient of ``adaptive_avg_pool2d``: ``grad_out`` (N, C, H_out, W_out) -> (N, C, H, W)."""
    height, width = input_shape[2:]
    h_out, w_out = grad_out.shape[2:]
    grad_x = np.zeros(input_shape, dtype=grad_out.dtype)
    for oh in range(h_out):
        rows = _adaptive_range(oh, height, h_out)
        for ow in range(w_out):
            cols = _adaptive_range(ow, width, w_out)
            count = (rows.stop - rows.start) * (cols.stop - cols.start)
            grad_x[:, :, rows, cols] += grad_out[:, :, oh, ow, None, None] / count
    return grad_x
