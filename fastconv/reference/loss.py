"""Dropout, softmax and log-softmax, and the softmax cross-entropy loss, with their gradients."""

from __future__ import annotations

import numpy as np


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
