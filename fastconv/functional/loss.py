"""softmax, log_softmax and the softmax cross-entropy loss."""

from __future__ import annotations

import numbers

import numpy as np

from fastconv._checks import check_array, check_probability, is_int, real


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


def _check_ce_args(logits, target, reduction, weight, ignore_index, label_smoothing):
    logits = check_array("logits", logits, ndim=2)
    C = logits.shape[1]
    ignore_index = check_ignore_index(ignore_index)
    target = _check_target(target, logits, ignore_index)
    check_reduction(reduction)
    if weight is not None:
        weight = check_array("weight", weight, ndim=1, dtype=logits.dtype)
        if weight.shape != (C,):
            raise ValueError(f"weight must have shape ({C},) (one per class), got {weight.shape}")
    return logits, target, weight, ignore_index, check_label_smoothing(label_smoothing)


def _check_target(target, logits, ignore_index):
    """(N,) integer class indices in [0, C) (or ``ignore_index``), or (N, C) class
    probabilities of the logits' dtype (a 2-D float array: PyTorch tells the two apart the
    same way)."""
    N, C = logits.shape
    if isinstance(target, np.ndarray) and target.dtype.kind == "f" and target.ndim == 2:
        target = check_array("target", target, dtype=logits.dtype)
        if target.shape != (N, C):
            raise ValueError(
                f"target of class probabilities must have the logits' shape ({N}, {C}), got "
                f"{target.shape}"
            )
        if ignore_index >= 0:  # PyTorch's rule: a class cannot be ignored in a distribution
            raise ValueError(
                f"ignore_index must be negative (unused) with class-probability targets, got "
                f"{ignore_index}"
            )
        return target
    if not isinstance(target, np.ndarray) or not np.issubdtype(target.dtype, np.integer):
        got = target.dtype if isinstance(target, np.ndarray) else type(target).__name__
        raise TypeError(
            "target must be an integer numpy.ndarray of class indices (N,), or a float "
            f"(N, C) array of class probabilities, got {got}"
        )
    if target.shape != (N,):
        raise ValueError(f"target must have shape ({N},), got {target.shape}")
    # Two reductions in the common case (every target a class); only a target outside [0, C)
    # sets the ignored rows aside (a copy) to look again.
    if target.size and (target.min() < 0 or target.max() >= C):
        kept = target[target != ignore_index]
        if kept.size and (kept.min() < 0 or kept.max() >= C):
            raise ValueError(
                f"target values must lie in [0, {C}) or equal ignore_index ({ignore_index}), "
                f"got [{kept.min()}, {kept.max()}]"
            )
    return target


def check_reduction(reduction):
    """``reduction`` if it is "mean", "sum" or "none" (the losses' shared rule)."""
    if not isinstance(reduction, str):
        # CrossEntropyLoss(weight) as written for PyTorch lands here: say where weight goes.
        hint = " (pass class weights as weight=...)" if isinstance(reduction, np.ndarray) else ""
        raise TypeError(
            f"reduction must be 'mean', 'sum' or 'none', got {type(reduction).__name__}{hint}"
        )
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


def check_ignore_index(ignore_index):
    """``ignore_index`` as an int (any value; -100 by default, as in PyTorch)."""
    if not is_int(ignore_index):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    return int(ignore_index)


def check_label_smoothing(label_smoothing):
    """``label_smoothing`` as a float in [0, 1]: ``real`` refuses a non-number (TypeError),
    ``check_probability`` the range (ValueError)."""
    return check_probability("label_smoothing", real("label_smoothing", label_smoothing))


def _ce_coefficients(logits, target, weight, ignore_index, label_smoothing):
    """PyTorch's loss as ``loss[n] = -sum_c coef[n, c] * log_softmax(logits)[n, c]``.

    ``coef = (1 - s) * w[t] * one_hot(t) + (s / C) * w`` for label smoothing ``s`` and class
    weights ``w`` (ones if None), a zero row where ``target == ignore_index``; for class
    probabilities ``coef = ((1 - s) * target + s / C) * w``. Returns ``coef`` (N, C) or None
    for the plain case (``one_hot(target)``, no work needed), the rows kept (N,) bool, and the
    divisor of reduction "mean": the sum of ``w[t]`` over the kept rows (N for probabilities,
    as PyTorch).
    """
    N, C = logits.shape
    if target.ndim == 2:  # class probabilities: every row counts, "mean" divides by N
        coef = target  # read only: no copy unless smoothed or weighted (both keep its dtype)
        if label_smoothing:
            coef = coef * (1 - label_smoothing) + label_smoothing / C
        if weight is not None:
            coef = coef * weight
        return coef, np.ones(N, bool), float(N)
    keep = target != ignore_index
    if weight is None and label_smoothing == 0.0 and keep.all():
        return None, keep, float(N)
    t = np.where(keep, target, 0)  # any valid class for ignored rows; their weight is zeroed
    w = np.ones(C, logits.dtype) if weight is None else weight
    w_t = np.where(keep, w[t], 0).astype(logits.dtype)
    coef = np.zeros((N, C), logits.dtype)
    if label_smoothing:
        coef[keep] = (label_smoothing / C) * w
    coef[np.arange(N), t] += (1 - label_smoothing) * w_t
    return coef, keep, float(w_t.sum(dtype=np.float64))


def cross_entropy(
    logits, target, reduction="mean", *, weight=None, ignore_index=-100, label_smoothing=0.0
):
    """Softmax cross-entropy of (N, C) logits against (N,) integer class targets or (N, C)
    class probabilities, as ``torch.nn.functional.cross_entropy``.

    Parameters
    ----------
    logits : (N, C) float array
    target : (N,) integer array, each in [0, C) or equal to ``ignore_index``; or an (N, C)
        float array of the logits' dtype, each row a distribution over the classes (not
        checked, as in PyTorch), for which "mean" divides by N and ``ignore_index`` is unused
        (it must then be negative, as PyTorch requires)
    reduction : "mean", "sum" or "none"
    weight : (C,) array of the logits' dtype, or None: class ``c``'s loss is scaled by
        ``weight[c]``, and "mean" (class indices) divides by the sum of ``weight[target]``
        over the rows kept
    ignore_index : int; rows whose target equals it contribute 0 and are not counted
    label_smoothing : float in [0, 1]; the target becomes ``(1 - s) * one_hot + s / C``
        (with ``weight``, PyTorch weights the smoothing term by ``weight`` too)

    Returns
    -------
    A Python float for "mean" and "sum" ("mean" is NaN when no row is kept, as in PyTorch), an
    (N,) array for "none" (0 on ignored rows).
    """
    logits, target, weight, ignore_index, smoothing = _check_ce_args(
        logits, target, reduction, weight, ignore_index, label_smoothing
    )
    coef, keep, divisor = _ce_coefficients(logits, target, weight, ignore_index, smoothing)
    logp = log_softmax(logits)
    if coef is None:
        losses = -logp[np.arange(logits.shape[0]), target]
    else:
        losses = -(coef * logp).sum(axis=1)
    if reduction == "none":
        return losses
    total = float(losses.sum(dtype=np.float64))
    if reduction == "sum":
        return total
    return total / divisor if divisor else float("nan")


def cross_entropy_backward(
    logits, target, reduction="mean", *, weight=None, ignore_index=-100, label_smoothing=0.0
):
    """Gradient of ``cross_entropy`` (same arguments) with respect to the logits, (N, C):
    ``sum_c(coef) * softmax(logits) - coef`` per row, ``coef`` the one-hot target made
    weighted and smoothed (see ``cross_entropy``); 0 on ignored rows.

    For reduction "none" the upstream gradient is taken as all ones. For "mean" with nothing
    to divide by (every row ignored, or target weights summing to 0) the kept rows are NaN and
    the ignored ones 0, as in PyTorch.
    """
    logits, target, weight, ignore_index, smoothing = _check_ce_args(
        logits, target, reduction, weight, ignore_index, label_smoothing
    )
    coef, keep, divisor = _ce_coefficients(logits, target, weight, ignore_index, smoothing)
    grad = softmax(logits)
    if coef is None:
        grad[np.arange(logits.shape[0]), target] -= 1
    else:
        grad *= coef.sum(axis=1, keepdims=True)
        grad -= coef
    if reduction == "mean" and logits.shape[0]:
        scale = 1 / divisor if divisor else np.nan
        if coef is None:
            grad /= divisor
        elif keep.all():  # no ignored row: in place, without a masked copy of grad
            grad *= scale
        else:  # only the kept rows: an ignored row stays 0 even when the divisor is 0
            grad[keep] *= scale
    return grad
