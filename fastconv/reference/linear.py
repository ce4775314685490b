"""The fully connected layer ``y = x @ W.T + b`` and its gradients."""

from __future__ import annotations


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
