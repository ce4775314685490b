"""Batch normalisation over (N, C), (N, C, L) or (N, C, H, W) inputs."""

from __future__ import annotations

import math

import numpy as np

from fastconv._checks import check_array, check_bool, real
from fastconv.kernels import norm as knorm


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
    training = check_bool("training", training)
    momentum = real("momentum", momentum)
    eps = real("eps", eps)
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
