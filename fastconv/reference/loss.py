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


def _target_distribution(target_n, n_classes, weight, label_smoothing):
    """The weighted target of one sample: ``coef[c]`` with ``loss = -sum_c coef[c] log p[c]``.

    ``target_n`` is a class index or a (C,) distribution over the classes. PyTorch's label
    smoothing spreads ``s`` uniformly over the classes and keeps ``1 - s`` on the target; with
    class weights each class's share is scaled by its weight.
    """
    w = np.ones(n_classes) if weight is None else weight.astype(np.float64)
    coef = np.full(n_classes, label_smoothing / n_classes)
    if np.ndim(target_n) == 0:
        coef[target_n] += 1 - label_smoothing
    else:
        coef += (1 - label_smoothing) * target_n
    return coef * w


def _mean_share(target_n, weight):
    """What one kept sample adds to the divisor of "mean": its target's weight for a class
    index (1 without weights), 1 for a distribution (PyTorch divides those by N)."""
    if np.ndim(target_n) == 1 or weight is None:
        return 1.0
    return float(weight[target_n])


def cross_entropy(
    logits, target, reduction="mean", *, weight=None, ignore_index=-100, label_smoothing=0.0
):
    """Softmax cross-entropy, as ``torch.nn.functional.cross_entropy``.

    Parameters
    ----------
    logits : (N, C) unnormalised scores
    target : (N,) int class indices in [0, C), or ``ignore_index`` for a row to skip; or
        (N, C) class probabilities (``ignore_index`` unused, "mean" divides by N)
    reduction : "mean" | "sum" | "none"
    weight : (C,) class weights or None (all 1)
    ignore_index : rows with this target add 0 and are not counted
    label_smoothing : s in [0, 1]; the target becomes ``(1 - s) * one_hot + s / C``

    Returns
    -------
    loss : Python float for "mean"/"sum", else an (N,) array of per-sample losses. "mean"
        divides by the summed weight of the kept targets (their count without ``weight``):
        NaN if that is 0 (no row kept, or N = 0), as PyTorch.
    """
    _check_reduction(reduction)
    n_batch, n_classes = logits.shape
    logp = log_softmax(logits, axis=1)
    losses = np.zeros(n_batch, logits.dtype)
    divisor = 0.0
    for n in range(n_batch):
        if target.ndim == 1 and target[n] == ignore_index:
            continue
        coef = _target_distribution(target[n], n_classes, weight, label_smoothing)
        losses[n] = -(coef * logp[n]).sum()
        divisor += _mean_share(target[n], weight)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return float(losses.sum())
    return float(losses.sum() / divisor) if divisor else float("nan")


def cross_entropy_backward(
    logits, target, reduction="mean", *, weight=None, ignore_index=-100, label_smoothing=0.0
):
    """Gradient of ``cross_entropy`` (same arguments) with respect to ``logits``.

    For one sample ``d(-sum_c coef[c] log softmax(z)[c]) / dz = sum(coef) * softmax(z) - coef``
    (``coef = one_hot(t)`` in the plain case). Ignored rows get 0. For "none" each row is the
    gradient of its own loss; for "mean" the kept rows are divided by the divisor (NaN if it
    is 0, as PyTorch).

    Returns
    -------
    grad_logits : (N, C)
    """
    _check_reduction(reduction)
    n_batch, n_classes = logits.shape
    p = softmax(logits, axis=1)
    grad = np.zeros_like(p)
    kept, divisor = [], 0.0
    for n in range(n_batch):
        if target.ndim == 1 and target[n] == ignore_index:
            continue
        coef = _target_distribution(target[n], n_classes, weight, label_smoothing)
        grad[n] = coef.sum() * p[n] - coef
        kept.append(n)
        divisor += _mean_share(target[n], weight)
    if reduction == "mean" and kept:
        grad[kept] = grad[kept] / divisor if divisor else np.nan
    return grad


# ---------------------------------------------------------------------------------------------
# im2col / col2im (PyTorch unfold / fold)
