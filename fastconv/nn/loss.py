"""``CrossEntropyLoss`` and ``MSELoss``."""

from __future__ import annotations

import numpy as np

import fastconv.functional as F
from fastconv._checks import check_array
from fastconv.autograd.tensor import Tensor, _record, as_tensor, enable_grad
from fastconv.nn.module import Module


def _check_reduction(reduction):
    # Checked at construction too (functional checks it per call) so a typo fails where it is
    # written.
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


class CrossEntropyLoss(Module):
    """Softmax cross-entropy of (N, C) logits against (N,) integer class targets.

    Layer mode: ``loss = crit(logits, target)`` is a float for reduction "mean" or "sum", an
    (N,) array for "none"; ``crit.backward()`` then returns the (N, C) gradient with respect to
    the logits. Autograd mode (``logits`` a Tensor): the loss is a Tensor, 0-d for "mean" and
    "sum"; ``target`` is an integer ndarray or Tensor.
    """

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = _check_reduction(reduction)

    def _forward_tensor(self, logits, target):
        if isinstance(target, Tensor):
            target = target.data
        logits = logits if isinstance(logits, Tensor) else Tensor(check_array("logits", logits))
        ld, reduction = logits.data, self.reduction
        loss = np.asarray(F.cross_entropy(ld, target, reduction), dtype=ld.dtype)

        def backward(g):
            return (_scale(F.cross_entropy_backward(ld, target, reduction), g, reduction),)

        return _record(loss, (logits,), backward)

    def forward(self, logits, target):
        loss = F.cross_entropy(logits, target, self.reduction)
        self._ctx = (logits, target)
        return loss

    def backward(self, grad_out=None):
        """Gradient with respect to the logits, (N, C).

        ``grad_out`` is the upstream gradient of the loss: None means 1; a scalar for "mean"
        and "sum", an (N,) array for "none".
        """
        grad = F.cross_entropy_backward(*self._saved(), self.reduction)
        return grad if grad_out is None else _scale(grad, grad_out, self.reduction)

    def extra_repr(self):
        return "" if self.reduction == "mean" else f"reduction={self.reduction!r}"


def _scale(grad, grad_out, reduction):
    """The (N, C) gradient of the loss times the upstream gradient ``grad_out`` (a scalar, or
    (N,) for reduction "none")."""
    grad_out = np.asarray(grad_out, dtype=grad.dtype)
    want = grad.shape[:1] if reduction == "none" else ()
    if grad_out.shape != want:
        raise ValueError(
            f"grad_out must have shape {want} for reduction={reduction!r}, got {grad_out.shape}"
        )
    return grad * grad_out.reshape(grad_out.shape + (1,) * (grad.ndim - grad_out.ndim))


class MSELoss(Module):
    """Mean squared error ``(input - target) ** 2``, averaged ("mean"), summed ("sum") or
    elementwise ("none"), as ``torch.nn.MSELoss``; ``input`` and ``target`` have one shape.

    Built from Tensor operations, so its gradient is theirs. Layer mode: ``crit(input, target)``
    on arrays is a float ("mean", "sum") or an array ("none"), and ``crit.backward()`` returns
    the gradient with respect to ``input``. Autograd mode: a Tensor.
    """

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = _check_reduction(reduction)

    def forward(self, input, target):  # noqa: A002 - PyTorch's name
        if isinstance(input, Tensor) or isinstance(target, Tensor):
            return self._loss(input, target)
        x = Tensor(check_array("input", input), requires_grad=True)
        with enable_grad():
            loss = self._loss(x, target)
        self._ctx = (x, loss)
        return float(loss.data) if self.reduction != "none" else loss.data

    def _loss(self, input, target):
        input = input if isinstance(input, Tensor) else Tensor(check_array("input", input))
        target = as_tensor(target, input, "target")
        if input.shape != target.shape:
            raise ValueError(f"target must have input's shape {input.shape}, got {target.shape}")
        diff = input - target
        squares = diff * diff
        if self.reduction == "none":
            return squares
        return squares.mean() if self.reduction == "mean" else squares.sum()

    def backward(self, grad_out=None):
        """Gradient with respect to ``input``; ``grad_out`` as in ``CrossEntropyLoss``."""
        x, loss = self._saved()
        if grad_out is not None:
            grad_out = np.asarray(grad_out, dtype=loss.dtype)
        loss.backward(grad_out, retain_graph=True)  # layer mode allows a repeated backward
        grad, x.grad = x.grad, None
        return grad

    def extra_repr(self):
        return "" if self.reduction == "mean" else f"reduction={self.reduction!r}"
