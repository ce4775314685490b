"""Stateless operations with PyTorch's names and semantics (``import fastconv.functional as F``).

Every function validates its arguments, normalises them, allocates the outputs and then calls a
kernel from ``fastconv.kernels`` (or a few NumPy calls where NumPy is already the fast way).
Arrays are NCHW; conv weights are OIHW ``(C_out, C_in // groups, kH, kW)``. float32 and float64
are supported and outputs keep the input dtype.
"""

from fastconv.functional.activation import (
    _sigmoid_backward_from_output as _sigmoid_backward_from_output,
)
from fastconv.functional.activation import _tanh_backward_from_output as _tanh_backward_from_output
from fastconv.functional.activation import (
    leaky_relu,
    leaky_relu_backward,
    relu,
    relu_backward,
    sigmoid,
    sigmoid_backward,
    tanh,
    tanh_backward,
)
from fastconv.functional.conv import _conv2d_backward as _conv2d_backward
from fastconv.functional.conv import conv2d, conv2d_backward
from fastconv.functional.dropout import dropout, dropout_backward
from fastconv.functional.linear import linear, linear_backward
from fastconv.functional.loss import cross_entropy, cross_entropy_backward, log_softmax, softmax
from fastconv.functional.normalization import batch_norm, batch_norm_backward
from fastconv.functional.pooling import (
    _max_pool2d_backward_trusted as _max_pool2d_backward_trusted,
)
from fastconv.functional.pooling import _max_pool2d_values as _max_pool2d_values
from fastconv.functional.pooling import (
    adaptive_avg_pool2d,
    adaptive_avg_pool2d_backward,
    avg_pool2d,
    avg_pool2d_backward,
    max_pool2d,
    max_pool2d_backward,
)
from fastconv.functional.unfold import col2im, im2col

# Also imported above, outside ``__all__``: the private entry points fastconv's own layers call
# (``_max_pool2d_values``, ``_max_pool2d_backward_trusted``, ``_sigmoid_backward_from_output``,
# ``_tanh_backward_from_output``, ``_conv2d_backward``). Each skips work a layer knows is not
# needed: the int64 indices in eval mode, the range scan of indices its own forward produced, a
# second forward pass, the input gradient of a first layer (``input_grad=False``).
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
