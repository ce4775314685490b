"""ONNX converters for fastconv's built-in layers, one function per layer type.

Each converter is ``convert(g, module, x, xt, yt, name) -> output value name``: ``g`` the
:class:`Builder`, ``x`` the input value's name, ``xt``/``yt`` the traced input and output
Tensors (their shapes are known), ``name`` the module's dotted name (initializers are named
``<name>.weight`` as in the state dict). An option ONNX cannot express raises ``ValueError``
naming the module and the option. Containers and modules without a converter are traced
through (see ``_trace``), so they need none here.
"""

from __future__ import annotations

import numpy as np

from fastconv import nn
from fastconv._checks import pair


def _unsupported(name, module, option):
    return ValueError(
        f"fastconv.onnx.export: module {name!r} ({type(module).__name__}): {option} has no ONNX "
        "equivalent that this exporter writes"
    )


def _weight(g, module, attr, name, default):
    """The parameter ``module.<attr>`` as an initializer; ``default`` (an array) if it is None
    (BatchNorm with ``affine=False``)."""
    param = getattr(module, attr, None)
    if param is None:
        return g.constant(default, f"{name}.{attr}")
    return g.constant(param.data, f"{name}.{attr}")


# ---- convolution and linear -----------------------------------------------------------------


def _conv_pads(module):
    """ONNX ``pads`` (top, left, bottom, right) of a Conv2d's ``padding``."""
    if module.padding == "valid":
        return [0, 0, 0, 0]
    if module.padding == "same":  # PyTorch's split: the odd one out goes to the end
        total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size, strict=True)]
        begin = [t // 2 for t in total]
        return begin + [t - b for t, b in zip(total, begin, strict=True)]
    ph, pw = module.padding
    return [ph, pw, ph, pw]


def conv2d(g, m, x, xt, yt, name):
    mode = getattr(m, "padding_mode", "zeros")
    if mode != "zeros":
        raise _unsupported(name, m, f"padding_mode={mode!r}")
    inputs = [x, g.constant(m.weight.data, f"{name}.weight")]
    if m.bias is not None:
        inputs.append(g.constant(m.bias.data, f"{name}.bias"))
    return g.node(
        "Conv",
        inputs,
        name,
        kernel_shape=list(m.kernel_size),
        strides=list(m.stride),
        pads=_conv_pads(m),
        dilations=list(m.dilation),
        group=m.groups,
    )


def linear(g, m, x, xt, yt, name):
    w = g.constant(m.weight.data, f"{name}.weight")
    if xt.ndim == 2:
        inputs = [x, w] + ([] if m.bias is None else [g.constant(m.bias.data, f"{name}.bias")])
        return g.node("Gemm", inputs, name, transB=1)
    # (*, in) inputs: MatMul broadcasts over the leading axes, Gemm does not.
    y = g.node("MatMul", [x, g.node("Transpose", [w], f"{name}.weight_t")], name)
    if m.bias is None:
        return y
    return g.node("Add", [y, g.constant(m.bias.data, f"{name}.bias")], f"{name}.add_bias")


# ---- normalization --------------------------------------------------------------------------


def batch_norm(g, m, x, xt, yt, name):
    C, dtype = m.num_features, xt.dtype
    scale = _weight(g, m, "weight", name, np.ones(C, dtype))
    bias = _weight(g, m, "bias", name, np.zeros(C, dtype))
    mean, var = getattr(m, "running_mean", None), getattr(m, "running_var", None)
    if mean is not None and var is not None:  # eval: the running statistics
        mean = g.constant(mean, f"{name}.running_mean")
        var = g.constant(var, f"{name}.running_var")
        return g.node("BatchNormalization", [x, scale, bias, mean, var], name, epsilon=m.eps)
    # track_running_stats=False: eval normalises with the batch's statistics, as in training
    # (biased variance), written out with reductions over every axis but the channels'.
    axes = [0, *range(2, xt.ndim)]
    trail = [1] * (xt.ndim - 2)  # (C,) parameters broadcast as (C, 1, ...)
    centred = g.node("Sub", [x, g.reduce("ReduceMean", x, axes, True, f"{name}.mean")], name)
    square = g.node("Mul", [centred, centred], f"{name}.square")
    var = g.reduce("ReduceMean", square, axes, True, f"{name}.var")
    eps = g.constant(np.asarray(m.eps, dtype), f"{name}.eps")
    std = g.node("Sqrt", [g.node("Add", [var, eps], f"{name}.var_eps")], f"{name}.std")
    y = g.node("Div", [centred, std], f"{name}.normalised")
    shape = g.ints([C, *trail], f"{name}.param_shape")
    y = g.node("Mul", [y, g.node("Reshape", [scale, shape], f"{name}.scale")], f"{name}.scaled")
    return g.node("Add", [y, g.node("Reshape", [bias, shape], f"{name}.shift")], f"{name}.out")


# ---- pooling --------------------------------------------------------------------------------


def _pool_pads(xt, yt, kernel, stride, padding, dilation=(1, 1)):
    """``pads`` for an ONNX pool without ceil_mode giving the traced output size: ceil_mode's
    extra windows become extra padding at the end (its windows start inside the input or the
    left padding, PyTorch's rule, so the output size is the traced one)."""
    end = []
    for i in range(2):
        size, out = xt.shape[2 + i], yt.shape[2 + i]
        reach = (out - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1  # last window's end
        end.append(max(padding[i], reach - size - padding[i]))
    return [padding[0], padding[1], *end]


def _window(g, op_type, inputs, name, kernel, stride, pads, **attributes):
    """A pooling window's node (MaxPool, AveragePool, or the Conv that sums windows):
    ``kernel`` and ``stride`` pairs, ``pads`` (top, left, bottom, right), and the operator's
    own ``attributes``."""
    return g.node(
        op_type,
        inputs,
        name,
        kernel_shape=list(kernel),
        strides=list(stride),
        pads=pads,
        **attributes,
    )


def max_pool2d(g, m, x, xt, yt, name):
    kernel, stride = pair("kernel_size", m.kernel_size), pair("stride", m.stride)
    padding, dilation = pair("padding", m.padding), pair("dilation", m.dilation)
    pads = _pool_pads(xt, yt, kernel, stride, padding, dilation)
    if pads[2] >= kernel[0] or pads[3] >= kernel[1]:
        # onnxruntime refuses pads as wide as the (undilated) kernel, which ceil_mode with
        # dilation can need: pad with -inf first (never a window's max, as MaxPool's padding).
        spec = g.ints([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], f"{name}.pads")
        low = g.constant(np.asarray(-np.inf, xt.dtype), f"{name}.pad_value")
        x, pads = g.node("Pad", [x, spec, low], f"{name}.pad"), [0, 0, 0, 0]
    return _window(g, "MaxPool", [x], name, kernel, stride, pads, dilations=list(dilation))


def _avg_divisors(size, out, k, s, p):
    """PyTorch's divisor of each output position along one axis with ``count_include_pad``:
    the window clipped to the padded input."""
    start = np.arange(out) * s - p
    return np.minimum(start + k, size + p) - start


def avg_pool2d(g, m, x, xt, yt, name):
    kernel, stride = pair("kernel_size", m.kernel_size), pair("stride", m.stride)
    padding = pair("padding", m.padding)
    pads = _pool_pads(xt, yt, kernel, stride, padding)
    divisor = getattr(m, "divisor_override", None)
    overhang = pads[2:] != pads[:2]  # ceil_mode added windows past the padding
    if divisor is None and not (m.count_include_pad and overhang):
        include_pad = int(m.count_include_pad)
        return _window(
            g, "AveragePool", [x], name, kernel, stride, pads, count_include_pad=include_pad
        )
    # ONNX's divisor would count the extra end padding too (or ignore divisor_override): sum
    # the windows with a depthwise all-ones convolution and divide by PyTorch's divisors.
    C = xt.shape[1]
    ones = g.constant(np.ones((C, 1, *kernel), xt.dtype), f"{name}.ones")
    sums = _window(g, "Conv", [x, ones], f"{name}.sum", kernel, stride, pads, group=C)
    if divisor is None:
        rows, cols = (
            _avg_divisors(xt.shape[2 + i], yt.shape[2 + i], kernel[i], stride[i], padding[i])
            for i in range(2)
        )
        divisor = np.outer(rows, cols)[None, None]
    return g.node("Div", [sums, g.constant(np.asarray(divisor, xt.dtype), f"{name}.divisor")], name)


def adaptive_avg_pool2d(g, m, x, xt, yt, name):
    (H, W), (OH, OW) = xt.shape[2:], yt.shape[2:]
    if (OH, OW) == (1, 1):
        return g.node("GlobalAveragePool", [x], name)
    if H % OH or W % OW:
        raise _unsupported(
            name, m, f"output_size {(OH, OW)} for a {H}x{W} input (not dividing it: windows of "
            "unequal size)"
        )  # fmt: skip
    kernel = [H // OH, W // OW]
    return g.node("AveragePool", [x], name, kernel_shape=kernel, strides=kernel)


# ---- activations ----------------------------------------------------------------------------


def _unary(op_type):
    def convert(g, m, x, xt, yt, name):
        return g.node(op_type, [x], name)

    convert.__name__ = op_type.lower()
    return convert


def leaky_relu(g, m, x, xt, yt, name):
    return g.node("LeakyRelu", [x], name, alpha=float(m.negative_slope))


CONVERTERS = {
    nn.Conv2d: conv2d,
    nn.Linear: linear,
    nn.BatchNorm1d: batch_norm,
    nn.BatchNorm2d: batch_norm,
    nn.MaxPool2d: max_pool2d,
    nn.AvgPool2d: avg_pool2d,
    nn.AdaptiveAvgPool2d: adaptive_avg_pool2d,
    nn.ReLU: _unary("Relu"),
    nn.LeakyReLU: leaky_relu,
    nn.Sigmoid: _unary("Sigmoid"),
    nn.Tanh: _unary("Tanh"),
}
