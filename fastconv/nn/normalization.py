"""``BatchNorm2d`` and ``BatchNorm1d``."""

from __future__ import annotations

import numpy as np

import fastconv.functional as F
from fastconv._checks import check_bool, check_probability, float_dtype, positive_int, real
from fastconv.autograd.tensor import _record
from fastconv.nn.linear import _accumulate_weight_and_bias
from fastconv.nn.module import Module, Parameter


def _check_momentum(momentum):
    """None (a cumulative average) or a float in [0, 1]: ``real`` refuses a non-number
    (TypeError), ``check_probability`` the range (ValueError)."""
    if momentum is None:
        return None
    return check_probability("momentum", real("momentum", momentum))


class _BatchNorm(Module):
    """What ``BatchNorm1d`` and ``BatchNorm2d`` share; options as ``torch.nn.BatchNorm2d``.

    Parameters
    ----------
    num_features : C, the channels (features) normalised one by one
    eps : added to the variance
    momentum : float in [0, 1], or None for a cumulative moving average (each batch weighted
        ``1 / num_batches_tracked``, so the running statistics are the plain mean of every
        batch's)
    affine : learn ``weight`` (C,) and ``bias`` (C,); if False both are None (identity scale)
    track_running_stats : keep ``running_mean``, ``running_var`` and ``num_batches_tracked``
        for eval mode; if False they are None and eval normalises with the batch statistics
    dtype : float32 or float64
    """

    _ndims = ()  # the input ranks a subclass accepts

    def __init__(
        self,
        num_features,
        eps=1e-5,
        momentum=0.1,
        affine=True,
        track_running_stats=True,
        dtype=np.float32,
    ):
        super().__init__()
        self.num_features = positive_int("num_features", num_features)
        eps = real("eps", eps)
        if not eps > 0:
            raise ValueError(f"eps must be a positive float, got {eps!r}")
        self.eps = eps
        self.momentum = _check_momentum(momentum)
        self.affine = check_bool("affine", affine)
        self.track_running_stats = check_bool("track_running_stats", track_running_stats)
        dtype = float_dtype(dtype)
        C = self.num_features
        if self.affine:
            self.weight = Parameter(np.ones(C, dtype))
            self.bias = Parameter(np.zeros(C, dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(C, dtype))
            self.register_buffer("running_var", np.ones(C, dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def forward(self, x):
        """Normalise with the batch statistics (training, or always without running
        statistics; training updates the running ones in place) or with the running
        statistics (eval). Output shaped like ``x``."""
        y, self._ctx = self._normalise(x)
        return y

    def _forward_tensor(self, x):
        y, cache = self._normalise(x.data)
        if not self.affine:
            return _record(y, (x,), lambda g: F.batch_norm_backward(g, cache)[:1])
        return _record(y, (x, self.weight, self.bias), lambda g: F.batch_norm_backward(g, cache))

    def _normalise(self, x):
        """``(y, cache)`` of ``F.batch_norm`` with this layer's parameters and statistics,
        chosen as ``torch.nn.BatchNorm2d.forward`` chooses them."""
        # functional accepts 2-D to 4-D for either; the layer's rank is PyTorch's per class.
        if isinstance(x, np.ndarray) and x.ndim not in self._ndims:
            want = " or ".join(f"{d}-D" for d in self._ndims)
            raise ValueError(
                f"{type(self).__name__} expects {want} input, got {x.ndim}-D input "
                f"of shape {x.shape}"
            )
        update = self.training and self.num_batches_tracked is not None
        factor = 0.0 if self.momentum is None else self.momentum
        if update and self.momentum is None:  # cumulative average: this batch's share
            factor = 1.0 / float(self.num_batches_tracked + 1)
        # Batch statistics in training, and in eval too when there are no running ones.
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        # Running statistics are passed only to be used (eval) or updated (tracking).
        track = not self.training or self.track_running_stats
        y, cache = F.batch_norm(
            x,
            self.running_mean if track else None,
            self.running_var if track else None,
            None if self.weight is None else self.weight.data,
            None if self.bias is None else self.bias.data,
            use_batch,
            factor,
            self.eps,
        )
        if update:  # after the call, so a call that raises changes nothing
            self.num_batches_tracked += 1
        return y, cache

    def backward(self, grad_out):
        """Gradient with respect to the input; adds to ``weight.grad`` and ``bias.grad`` (if
        ``affine``)."""
        grad_x, grad_w, grad_b = F.batch_norm_backward(grad_out, self._saved())
        if self.affine:
            _accumulate_weight_and_bias(self, grad_w, grad_b)
        return grad_x

    def extra_repr(self):
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )


class BatchNorm2d(_BatchNorm):
    """Batch normalisation per channel of (N, C, H, W) inputs, as ``torch.nn.BatchNorm2d``.

    ``weight`` (C,) starts at 1, ``bias`` (C,) at 0; buffers ``running_mean`` (C,) start at 0,
    ``running_var`` (C,) at 1, ``num_batches_tracked`` (int64 scalar) at 0. Training updates
    ``running = (1 - momentum) * running + momentum * batch`` (unbiased batch variance), with
    ``momentum = 1 / num_batches_tracked`` when ``momentum=None``, and counts the batch.
    ``affine=False`` drops ``weight``/``bias``; ``track_running_stats=False`` drops the three
    buffers and normalises with the batch statistics in eval mode too. A state dict without
    ``num_batches_tracked`` (saved before fastconv had it) loads, strictly too, leaving the
    counter as it is (PyTorch's rule for old checkpoints).
    """

    _ndims = (4,)


class BatchNorm1d(_BatchNorm):
    """Batch normalisation per feature of (N, C) or (N, C, L) inputs, as
    ``torch.nn.BatchNorm1d``; otherwise as ``BatchNorm2d``."""

    _ndims = (2, 3)
