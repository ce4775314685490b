"""``BatchNorm2d`` and ``BatchNorm1d``."""

from __future__ import annotations

import numbers

import numpy as np

import fastconv.functional as F
from fastconv._checks import check_probability, float_dtype, positive_int
from fastconv.autograd.tensor import _record
from fastconv.nn.linear import _accumulate_weight_and_bias
from fastconv.nn.module import Module, Parameter


class _BatchNorm(Module):
    _ndims = ()  # the input ranks a subclass accepts

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=np.float32):
        super().__init__()
        self.num_features = positive_int("num_features", num_features)
        if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not eps > 0:
            raise ValueError(f"eps must be a positive float, got {eps!r}")
        self.eps = float(eps)
        self.momentum = check_probability("momentum", momentum)
        dtype = float_dtype(dtype)
        C = self.num_features
        self.weight = Parameter(np.ones(C, dtype))
        self.bias = Parameter(np.zeros(C, dtype))
        self.register_buffer("running_mean", np.zeros(C, dtype))
        self.register_buffer("running_var", np.ones(C, dtype))
        self.register_buffer("num_batches_tracked", np.zeros((), np.int64))

    def forward(self, x):
        """Normalise with the batch statistics (training; updates the running ones in place)
        or with the running statistics (eval). Output shaped like ``x``."""
        y, self._ctx = self._normalise(x)
        return y

    def _forward_tensor(self, x):
        y, cache = self._normalise(x.data)
        return _record(y, (x, self.weight, self.bias), lambda g: F.batch_norm_backward(g, cache))

    def _normalise(self, x):
        """``(y, cache)`` of ``F.batch_norm`` with this layer's parameters and statistics."""
        # functional accepts 2-D to 4-D for either; the layer's rank is PyTorch's per class.
        if isinstance(x, np.ndarray) and x.ndim not in self._ndims:
            want = " or ".join(f"{d}-D" for d in self._ndims)
            raise ValueError(
                f"{type(self).__name__} expects {want} input, got {x.ndim}-D input "
                f"of shape {x.shape}"
            )
        y, cache = F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight.data,
            self.bias.data,
            self.training,
            self.momentum,
            self.eps,
        )
        if self.training:
            self.num_batches_tracked += 1
        return y, cache

    def backward(self, grad_out):
        """Gradient with respect to the input; adds to ``weight.grad`` and ``bias.grad``."""
        grad_x, grad_w, grad_b = F.batch_norm_backward(grad_out, self._saved())
        _accumulate_weight_and_bias(self, grad_w, grad_b)
        return grad_x

    def extra_repr(self):
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine=True, "
            "track_running_stats=True"
        )


class BatchNorm2d(_BatchNorm):
    """Batch normalisation per channel of (N, C, H, W) inputs, as ``torch.nn.BatchNorm2d``.

    ``weight`` (C,) starts at 1, ``bias`` (C,) at 0; buffers ``running_mean`` (C,) start at 0,
    ``running_var`` (C,) at 1, ``num_batches_tracked`` (int64 scalar) at 0. Training updates
    ``running = (1 - momentum) * running + momentum * batch`` (unbiased batch variance).
    """

    _ndims = (4,)


class BatchNorm1d(_BatchNorm):
    """Batch normalisation per feature of (N, C) or (N, C, L) inputs, as
    ``torch.nn.BatchNorm1d``; otherwise as ``BatchNorm2d``."""

    _ndims = (2, 3)
