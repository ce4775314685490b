"""Batch normalisation over every axis but the channels, and its gradients."""

from __future__ import annotations

import numpy as np


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
