"""softmax, log_softmax and the softmax cross-entropy loss."""

from __future__ import annotations

import numbers

import numpy as np

from fastconv._checks import check_array


def _check_axis(x, axis):
    if x.ndim == 0:
        raise ValueError("input must have at least one dimension (an axis to normalise over)")
    if not isinstance(axis, numbers.Integral) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must be an int in [-{x.ndim}, {x.ndim}), got {axis!r}")
    return int(axis)


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along ``axis``, computed with the max subtracted (stable)."""
    x = check_array("input", x)
    axis = _check_axis(x, axis)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    """x - logsumexp(x) along ``axis``, stable for large |x|."""
    x = check_array("input", x)
    axis = _check_axis(x, axis)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _check_ce_args(logits, target, reduction):
    logits = check_array("logits", logits, ndim=2)
    if not isinstance(target, np.ndarray) or not np.issubdtype(target.dtype, np.integer):
        got = target.dtype if isinstance(target, np.ndarray) else type(target).__name__
        raise TypeError(f"target must be an integer numpy.ndarray of class indices, got {got}")
    if target.shape != (logits.shape[0],):
        raise ValueError(f"target must have shape ({logits.shape[0]},), got {target.shape}")
    if target.size and (target.min() < 0 or target.max() >= logits.shape[1]):
        raise ValueError(
            f"target values must lie in [0, {logits.shape[1]}), got "
            f"[{target.min()}, {target.max()}]"
        )
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return logits, target


def cross_entropy(logits, target, reduction="mean"):
    """Softmax cross-entropy of (N, C) logits against (N,) integer class targets.

    Returns a Python float for "mean" and "sum", an (N,) array for "none".
    """
    logits, target = _check_ce_args(logits, target, reduction)
    losses = -log_softmax(logits)[np.arange(logits.shape[0]), target]
    if reduction == "none":
        return losses
    total = float(losses.sum(dtype=np.float64))
    if reduction == "sum":
        return total
    return total / logits.shape[0] if logits.shape[0] else float("nan")


def cross_entropy_backward(logits, target, reduction="mean"):
    """Gradient of ``cross_entropy`` with respect to the logits: softmax - one_hot(target).

    For reduction "none" the upstream gradient is taken as all ones.
    """
    logits, target = _check_ce_args(logits, target, reduction)
    grad = softmax(logits)
    grad[np.arange(logits.shape[0]), target] -= 1
    if reduction == "mean" and logits.shape[0]:
        grad /= logits.shape[0]
    return grad
