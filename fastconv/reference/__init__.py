"""Slow, readable NumPy versions of every op in ``fastconv.functional``.

Each function here has the same name, signature, argument forms, return values and dtypes as its
fast twin, and is written the way a textbook draws it: loop over the output positions and compute
one window at a time. Only the innermost window sum is left to NumPy, so the small shapes the
tests use still run in milliseconds.

The package has two jobs:

1. it is the oracle the tests of the fast kernels compare against (float64, rtol 1e-10), and is
   itself checked against PyTorch in ``tests/test_reference*.py``;
2. it is the code a learner reads next to the tutorials.

One file per op family:

====================  =============================================================
``conv.py``           ``conv2d``, ``conv2d_backward``
``pooling.py``        max, average and adaptive average pooling
``activation.py``     relu, leaky_relu, sigmoid, tanh
``normalization.py``  ``batch_norm``
``linear.py``         ``linear``
``loss.py``           dropout, softmax, log_softmax, cross_entropy
``unfold.py``         ``im2col``, ``col2im``
``_geometry.py``      output sizes, windows and padding, shared by conv, pooling, unfold
====================  =============================================================

It deliberately imports nothing from ``fastconv.functional`` or ``fastconv.kernels``: an oracle
that shared code with what it checks could share its bugs. Validation is minimal (this is not the
user-facing API); int-or-pair arguments are normalised with the same ``fastconv._checks`` helpers.
"""

from __future__ import annotations

from fastconv.reference.activation import (
    leaky_relu,
    leaky_relu_backward,
    relu,
    relu_backward,
    sigmoid,
    sigmoid_backward,
    tanh,
    tanh_backward,
)
from fastconv.reference.conv import conv2d, conv2d_backward
from fastconv.reference.linear import linear, linear_backward
from fastconv.reference.loss import (
    cross_entropy,
    cross_entropy_backward,
    dropout,
    dropout_backward,
    log_softmax,
    softmax,
)
from fastconv.reference.normalization import batch_norm, batch_norm_backward
from fastconv.reference.pooling import (
    adaptive_avg_pool2d,
    adaptive_avg_pool2d_backward,
    avg_pool2d,
    avg_pool2d_backward,
    max_pool2d,
    max_pool2d_backward,
)
from fastconv.reference.unfold import col2im, im2col

# The same public names as fastconv.functional (tests/test_reference.py checks it), by file.
__all__ = [
    "conv2d", "conv2d_backward",  # conv.py
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",  # pooling.py
    "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward",
    "linear", "linear_backward",  # linear.py
    "relu", "relu_backward", "leaky_relu", "leaky_relu_backward",  # activation.py
    "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
    "batch_norm", "batch_norm_backward",  # normalization.py
    "dropout", "dropout_backward", "softmax", "log_softmax",  # loss.py
    "cross_entropy", "cross_entropy_backward",
    "im2col", "col2im",  # unfold.py
]  # fmt: skip
