"""Slow, readable NumPy versions of every op in ``fastconv.functional``.

Each function here has the same name, signature, argument forms, return values and dtypes as its
fast twin, and is written the way a textbook draws it: loop over the output positions and compute
one window at a time. Only the innermost window sum is left to NumPy, so the small shapes the
tests use still run in milliseconds.

The module has two jobs:

1. it is the oracle the tests of the fast kernels compare against (float64, rtol 1e-10), and is
   itself checked against PyTorch in ``tests/test_reference.py``;
2. it is the code a learner reads next to the tutorials.

It deliberately imports nothing from ``fastconv.functional`` or ``fastconv.kernels``: an oracle
that shared code with what it checks could share its bugs. Validation is minimal (this is not the
user-facing API); int-or-pair arguments are normalised with the same ``pair`` helper.
"""

from __future__ import annotations

import numpy as np

from fastconv._checks import pair

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


# ---------------------------------------------------------------------------------------------
# Sliding-window geometry shared by convolution and im2col/col2im
# ---------------------------------------------------------------------------------------------


def _out_size(size, kernel, stride, dilation, pad_total):
    """How many window positions fit along one axis.

    A dilated kernel spans ``dilation * (kernel - 1) + 1`` pixels, and the window moves by
    ``stride``: ``floor((size + pad_total - span) / stride) + 1``.
    """
    span = dilation * (kernel - 1) + 1
    return (size + pad_total - span) // stride + 1


def _window(oh, ow, kernel_size, stride, dilation):
    """The two slices that pick output position ``(oh, ow)``'s window out of a padded plane."""
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    top, left = oh * sh, ow * sw  # the window's top-left corner, in padded coordinates
    # Every dilation-th pixel, kernel taps in all: top, top + dh, ..., top + dh * (kh - 1).
    return slice(top, top + dh * (kh - 1) + 1, dh), slice(left, left + dw * (kw - 1) + 1, dw)


def _pad(x, pads):
    """Zero-pad the last two axes of ``x`` (N, C, H, W) by ``((top, bottom), (left, right))``."""
    return np.pad(x, ((0, 0), (0, 0), pads[0], pads[1]))


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
    ph, pw = pair("padding", padding, minimum=0)
    return (ph, ph), (pw, pw)


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
    out = tuple(
        _out_size(x_shape[2 + a], kernel_size[a], stride[a], dilation[a], sum(pads[a]))
        for a in range(2)
    )
    if min(out) < 1:
        raise ValueError(
            f"kernel {kernel_size} (dilation {dilation}) is larger than the padded "
            f"input {x_shape[2:]} with padding {pads}"
        )
    return stride, dilation, pads, out


def _crop(xp, pads, height, width):
    """Cut the ``(height, width)`` interior back out of a padded ``(N, C, Hp, Wp)`` array."""
    (top, _), (left, _) = pads
    return np.ascontiguousarray(xp[:, :, top : top + height, left : left + width])


# ---------------------------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------------------------


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
    xp = _pad(x, pads)
    n_batch, c_out, c_in_g = x.shape[0], weight.shape[0], weight.shape[1]
    c_out_g = c_out // groups  # output channels per group
    y = np.zeros((n_batch, c_out, h_out, w_out), dtype=x.dtype)
    for n in range(n_batch):
        for oc in range(c_out):
            g = oc // c_out_g  # output channel oc reads only the input channels of group g
            x_g = xp[n, g * c_in_g : (g + 1) * c_in_g]  # (C_in // groups, Hp, Wp)
            for oh in range(h_out):
                for ow in range(w_out):
                    rows, cols = _window(oh, ow, kernel_size, stride, dilation)
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
    xp = _pad(x, pads)
    grad_xp = np.zeros_like(xp)
    grad_weight = np.zeros_like(weight)
    n_batch, c_out, c_in_g = x.shape[0], weight.shape[0], weight.shape[1]
    c_out_g = c_out // groups
    for n in range(n_batch):
        for oc in range(c_out):
            group = slice((oc // c_out_g) * c_in_g, (oc // c_out_g + 1) * c_in_g)
            for oh in range(h_out):
                for ow in range(w_out):
                    rows, cols = _window(oh, ow, kernel_size, stride, dilation)
                    g = grad_out[n, oc, oh, ow]
                    # y[n, oc, oh, ow] = sum(window * weight[oc]): each input pixel of the window
                    # receives g times the weight it met, each weight g times the pixel it met.
                    grad_xp[n, group, rows, cols] += g * weight[oc]
                    grad_weight[oc] += g * xp[n, group, rows, cols]
    grad_x = _crop(grad_xp, pads, x.shape[2], x.shape[3])  # padding pixels have no gradient
    grad_bias = grad_out.sum(axis=(0, 2, 3)).astype(x.dtype)
    return grad_x, grad_weight, grad_bias


# ---------------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------------


def _pool_out_size(size, kernel, stride, padding, dilation, ceil_mode):
    """Output length along one axis, with PyTorch's pooling rule."""
    numerator = size + 2 * padding - dilation * (kernel - 1) - 1
    if ceil_mode:
        numerator += stride - 1  # floor((a + s - 1) / s) == ceil(a / s)
    out = numerator // stride + 1
    # In ceil mode the extra window must start inside the input or the left padding; one that
    # would start in the right padding is dropped.
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _pool_geometry(x_shape, kernel_size, stride, padding, dilation, ceil_mode):
    """Normalise pooling arguments; return ``kernel_size, stride, padding, dilation, out``."""
    kernel_size = pair("kernel_size", kernel_size, minimum=1)
    stride = kernel_size if stride is None else pair("stride", stride, minimum=1)
    padding = pair("padding", padding, minimum=0)
    dilation = pair("dilation", dilation, minimum=1)
    if any(2 * p > k for p, k in zip(padding, kernel_size, strict=True)):
        raise ValueError(
            f"padding must be at most half of kernel_size={kernel_size}, got {padding}"
        )
    out = tuple(
        _pool_out_size(
            x_shape[2 + a], kernel_size[a], stride[a], padding[a], dilation[a], ceil_mode
        )
        for a in range(2)
    )
    if min(out) < 1:
        raise ValueError(
            f"kernel_size {kernel_size} gives an empty output for input "
            f"{tuple(x_shape[2:])} with padding {padding}"
        )
    return kernel_size, stride, padding, dilation, out


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


def _adaptive_range(i, in_size, out_size):
    """Input range ``[floor(i*in/out), ceil((i+1)*in/out))`` averaged into output index ``i``."""
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)  # ceil division with floor division
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


# ---------------------------------------------------------------------------------------------
# Linear layer
# ---------------------------------------------------------------------------------------------


def linear(x, weight, bias=None):
    """``y = x @ weight.T + bias``, as ``torch.nn.functional.linear``.

    Parameters
    ----------
    x : (N, in_features) or (*, in_features)
    weight : (out_features, in_features)
    bias : (out_features,) or None

    Returns
    -------
    y : (*, out_features), ``y[..., o] = sum_i x[..., i] * weight[o, i] + bias[o]``
    """
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return y


def linear_backward(grad_out, x, weight):
    """Gradients of ``linear``.

    Parameters
    ----------
    grad_out : (*, out_features);  x : (*, in_features);  weight : (out_features, in_features)

    Returns
    -------
    grad_x : (*, in_features);  grad_weight : (out_features, in_features);
    grad_bias : (out_features,)
    """
    out_features, in_features = weight.shape
    grad_x = grad_out @ weight
    g = grad_out.reshape(-1, out_features)  # every leading axis is a batch axis
    grad_weight = g.T @ x.reshape(-1, in_features)
    grad_bias = g.sum(axis=0)
    return grad_x, grad_weight, grad_bias


# ---------------------------------------------------------------------------------------------
# Elementwise activations: f(x) and grad_x = grad_out * f'(x)
# ---------------------------------------------------------------------------------------------


def relu(x):
    """``max(x, 0)`` elementwise; NaN stays NaN as in PyTorch."""
    return np.maximum(x, x.dtype.type(0))


def relu_backward(grad_out, x):
    """``grad_out`` where ``x > 0``, else 0 (0 at ``x == 0``; PyTorch lets it through at NaN)."""
    return np.where(x <= 0, grad_out.dtype.type(0), grad_out)


def leaky_relu(x, negative_slope=0.01):
    """``x`` where ``x > 0``, else ``negative_slope * x``."""
    return np.where(x > 0, x, x * x.dtype.type(negative_slope))


def leaky_relu_backward(grad_out, x, negative_slope=0.01):
    """``grad_out`` where ``x > 0``, else ``negative_slope * grad_out`` (also at 0 and NaN)."""
    return np.where(x > 0, grad_out, grad_out * grad_out.dtype.type(negative_slope))


def sigmoid(x):
    """``1 / (1 + exp(-x))``, computed without overflow for large ``|x|``."""
    z = np.exp(-np.abs(x))  # in (0, 1], never overflows
    # For x >= 0: 1 / (1 + e^-x). For x < 0 the same value is e^x / (1 + e^x).
    return np.where(x >= 0, 1 / (1 + z), z / (1 + z)).astype(x.dtype, copy=False)


def sigmoid_backward(grad_out, x):
    """``grad_out * s * (1 - s)`` with ``s = sigmoid(x)``."""
    s = sigmoid(x)
    return grad_out * s * (1 - s)


def tanh(x):
    """``tanh(x)`` elementwise."""
    return np.tanh(x)


def tanh_backward(grad_out, x):
    """``grad_out * (1 - tanh(x)**2)``."""
    t = np.tanh(x)
    return grad_out * (1 - t * t)


# ---------------------------------------------------------------------------------------------
# Batch normalisation and dropout
# ---------------------------------------------------------------------------------------------


def _channel_axes(x):
    """Axes to reduce over (all but the channel axis 1) and a shape that broadcasts (C,) to x."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return axes, shape


def batch_norm(x, running_mean, running_var, weight, bias, training, momentum=0.1, eps=1e-5):
    """Batch normalisation over every axis but the channels, as ``torch.nn.functional.batch_norm``.

    Parameters
    ----------
    x : (N, C), (N, C, L) or (N, C, H, W)
    running_mean, running_var : (C,); updated IN PLACE when ``training`` (may be None then)
    weight, bias : (C,) or None (meaning ones / zeros)
    training : normalise with this batch's statistics (else with the running ones)
    momentum, eps : ``running = (1 - momentum) * running + momentum * batch``; ``eps`` is added
        to the variance

    Returns
    -------
    y : same shape as ``x``
    cache : dict for ``batch_norm_backward``
    """
    axes, shape = _channel_axes(x)
    channels = x.shape[1]
    if training:
        m = x.size // channels  # values per channel
        if m < 2:
            raise ValueError(
                f"batch_norm in training needs more than 1 value per channel, "
                f"got input of shape {x.shape}"
            )
        mean = x.mean(axis=axes)
        var = x.var(axis=axes)  # biased (divide by m): used to normalise
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
        if running_var is not None:
            unbiased = var * (m / (m - 1))  # the running estimate uses the unbiased variance
            running_var[...] = (1 - momentum) * running_var + momentum * unbiased
    else:
        mean, var = running_mean, running_var
    inv_std = (1 / np.sqrt(var + eps)).astype(x.dtype, copy=False)  # (C,)
    x_hat = (x - mean.reshape(shape)) * inv_std.reshape(shape)  # zero mean, unit variance
    w = np.ones(channels, x.dtype) if weight is None else weight
    y = x_hat * w.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    cache = {"x_hat": x_hat, "inv_std": inv_std, "weight": w, "training": bool(training)}
    return y.astype(x.dtype, copy=False), cache


def batch_norm_backward(grad_out, cache):
    """Gradients of ``batch_norm``.

    Parameters
    ----------
    grad_out : same shape as the input ``x``
    cache : from ``batch_norm``

    Returns
    -------
    grad_x : same shape as ``x``
    grad_weight, grad_bias : (C,); computed even if the layer had no weight/bias
    """
    x_hat, inv_std, w = cache["x_hat"], cache["inv_std"], cache["weight"]
    axes, shape = _channel_axes(grad_out)
    grad_bias = grad_out.sum(axis=axes)
    grad_weight = (grad_out * x_hat).sum(axis=axes)
    grad_x_hat = grad_out * w.reshape(shape)
    if not cache["training"]:
        # Running statistics are constants: y is an affine function of x.
        return grad_x_hat * inv_std.reshape(shape), grad_weight, grad_bias
    # In training x also moves the batch mean and variance. Differentiating
    # x_hat = (x - mean) * inv_std through both gives, per channel (means over the m values):
    #   grad_x = inv_std * (grad_x_hat - mean(grad_x_hat) - x_hat * mean(grad_x_hat * x_hat))
    mean_g = grad_x_hat.mean(axis=axes).reshape(shape)
    mean_gx = (grad_x_hat * x_hat).mean(axis=axes).reshape(shape)
    grad_x = inv_std.reshape(shape) * (grad_x_hat - mean_g - x_hat * mean_gx)
    return grad_x, grad_weight, grad_bias


def dropout(x, p, training, rng):
    """Inverted dropout: zero each value with probability ``p``, scale the rest by ``1/(1-p)``.

    Parameters
    ----------
    x : any shape
    p : drop probability in [0, 1]
    training : in eval mode dropout is the identity
    rng : ``numpy.random.Generator``; drawn from (once, ``rng.random(x.shape)``) only when
        ``training and 0 < p < 1``, so the fast version makes the identical mask from the same
        generator state

    Returns
    -------
    y : ``x * mask``
    mask : same shape and dtype as ``x``, each value 0 or ``1/(1-p)``
    """
    if not training or p == 0:
        mask = np.ones_like(x)
    elif p == 1:
        mask = np.zeros_like(x)  # everything dropped (PyTorch returns zeros too)
    else:
        keep = rng.random(x.shape) >= p  # True with probability 1 - p
        mask = np.where(keep, 1 / (1 - p), 0.0).astype(x.dtype)
    return x * mask, mask


def dropout_backward(grad_out, mask):
    """``grad_out * mask``: dropped values get no gradient, kept ones are scaled the same way."""
    return grad_out * mask


# ---------------------------------------------------------------------------------------------
# Softmax and the cross-entropy loss
# ---------------------------------------------------------------------------------------------


def softmax(x, axis=-1):
    """``exp(x) / sum(exp(x))`` along ``axis``, stable for large values."""
    shifted = x - x.max(axis=axis, keepdims=True)  # largest entry becomes 0: exp cannot overflow
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    """``x - log(sum(exp(x)))`` along ``axis``, stable for large values."""
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _check_reduction(reduction):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def cross_entropy(logits, target, reduction="mean"):
    """Softmax cross-entropy, as ``torch.nn.functional.cross_entropy``.

    Parameters
    ----------
    logits : (N, C) unnormalised scores
    target : (N,) int class indices in [0, C)
    reduction : "mean" | "sum" | "none"

    Returns
    -------
    loss : Python float for "mean"/"sum" (NaN for a mean over N = 0, as PyTorch), else an (N,)
        array of per-sample losses ``-log_softmax(logits)[n, target[n]]``
    """
    _check_reduction(reduction)
    n_batch = logits.shape[0]
    losses = -log_softmax(logits, axis=1)[np.arange(n_batch), target]
    if reduction == "none":
        return losses
    if reduction == "sum":
        return float(losses.sum())
    return float(losses.sum() / n_batch) if n_batch else float("nan")


def cross_entropy_backward(logits, target, reduction="mean"):
    """Gradient of ``cross_entropy`` with respect to ``logits``.

    For one sample ``d(-log softmax(z)[t]) / dz = softmax(z) - one_hot(t)``. For "none" each
    row is the gradient of its own loss (i.e. of the sum of the per-sample losses).

    Returns
    -------
    grad_logits : (N, C)
    """
    _check_reduction(reduction)
    n_batch = logits.shape[0]
    grad = softmax(logits, axis=1)
    grad[np.arange(n_batch), target] -= 1
    if reduction == "mean" and n_batch:
        grad /= n_batch
    return grad


# ---------------------------------------------------------------------------------------------
# im2col / col2im (PyTorch unfold / fold)
# ---------------------------------------------------------------------------------------------


def _unfold_geometry(height, width, kernel_size, stride, padding, dilation):
    kernel_size = pair("kernel_size", kernel_size, minimum=1)
    stride = pair("stride", stride, minimum=1)
    padding = pair("padding", padding, minimum=0)
    dilation = pair("dilation", dilation, minimum=1)
    out = (
        _out_size(height, kernel_size[0], stride[0], dilation[0], 2 * padding[0]),
        _out_size(width, kernel_size[1], stride[1], dilation[1], 2 * padding[1]),
    )
    if min(out) < 1:
        raise ValueError(
            f"kernel_size {kernel_size} (dilation {dilation}) is larger than the "
            f"padded input {(height, width)} with padding {padding}"
        )
    pads = ((padding[0], padding[0]), (padding[1], padding[1]))
    return kernel_size, stride, pads, dilation, out


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
    xp = _pad(x, pads)
    rows_per_col = channels * k[0] * k[1]
    cols = np.zeros((n_batch, rows_per_col, h_out * w_out), dtype=x.dtype)
    for oh in range(h_out):
        for ow in range(w_out):
            rows, cols_ = _window(oh, ow, k, s, d)
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
    (top, bottom), (left, right) = pads
    xp = np.zeros(
        (n_batch, channels, height + top + bottom, width + left + right), dtype=cols.dtype
    )
    for oh in range(h_out):
        for ow in range(w_out):
            rows, cols_ = _window(oh, ow, k, s, d)
            xp[:, :, rows, cols_] += cols[:, :, oh * w_out + ow].reshape(
                n_batch, channels, k[0], k[1]
            )
    return _crop(xp, pads, height, width)
