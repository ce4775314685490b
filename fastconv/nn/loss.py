"""``CrossEntropyLoss`` and ``MSELoss``."""

from __future__ import annotations

import numpy as np

import fastconv.functional as F
from fastconv._checks import check_array
from fastconv.autograd.tensor import Tensor, _record, as_tensor, enable_grad
from fastconv.functional.loss import (
    check_ignore_index,
    check_label_smoothing,
    check_reduction,
)
from fastconv.nn.module import Module


class CrossEntropyLoss(Module):
    """Softmax cross-entropy of (N, C) logits against (N,) integer class targets or (N, C)
    class probabilities, as ``torch.nn.CrossEntropyLoss`` (see ``F.cross_entropy``).

    Layer mode: ``loss = crit(logits, target)`` is a float for reduction "mean" or "sum", an
    (N,) array for "none"; ``crit.backward()`` then returns the (N, C) gradient with respect to
    the logits. Autograd mode (``logits`` a Tensor): the loss is a Tensor, 0-d for "mean" and
    "sum"; ``target`` is an ndarray or a Tensor that does not require grad (the target gets no
    gradient here).

    Parameters
    ----------
    reduction : "mean" (default), "sum" or "none"; positional, as fastconv always had it (PyTorch
        takes ``weight`` first: pass the others by keyword)
    weight : (C,) float32/float64 array or None; each class's loss is scaled by its weight and
        "mean" divides by the summed weights of the class-index targets kept (by N for
        probabilities). A buffer, as in PyTorch (in ``state_dict`` when given); cast to the
        logits' dtype at each call.
    ignore_index : int, default -100; targets equal to it contribute nothing and are not counted
    label_smoothing : float in [0, 1], default 0; mixes the one-hot target with the uniform
        distribution, ``(1 - s) * one_hot + s / C`` (weighted by ``weight`` as PyTorch does)
    """

    def __init__(self, reduction="mean", *, weight=None, ignore_index=-100, label_smoothing=0.0):
        super().__init__()
        self.reduction = check_reduction(reduction)
        if weight is not None:
            weight = check_array("weight", weight, ndim=1).copy()
        self.register_buffer("weight", weight)
        self.ignore_index = check_ignore_index(ignore_index)
        self.label_smoothing = check_label_smoothing(label_smoothing)

    def _options(self, logits):
        """The keyword options of ``F.cross_entropy`` for ``logits`` (an ndarray)."""
        weight = self.weight
        if weight is not None and isinstance(logits, np.ndarray):
            weight = weight.astype(logits.dtype, copy=False)
        return {
            "weight": weight,
            "ignore_index": self.ignore_index,
            "label_smoothing": self.label_smoothing,
        }

    def _forward_tensor(self, logits, target):
        if isinstance(target, Tensor):
            if target.requires_grad:  # refused rather than a silently missing gradient
                raise ValueError(
                    "target requires grad, but CrossEntropyLoss gives the target no gradient; "
                    "pass target.detach()"
                )
            target = target.data
        logits = logits if isinstance(logits, Tensor) else Tensor(check_array("logits", logits))
        ld, reduction = logits.data, self.reduction
        options = self._options(ld)
        loss = np.asarray(F.cross_entropy(ld, target, reduction, **options), dtype=ld.dtype)

        def backward(g):
            grad = F.cross_entropy_backward(ld, target, reduction, **options)
            return (_scale(grad, g, reduction),)

        return _record(loss, (logits,), backward)

    def forward(self, logits, target):
        options = self._options(logits)
        loss = F.cross_entropy(logits, target, self.reduction, **options)
        self._ctx = (logits, target, options)
        return loss

    def backward(self, grad_out=None):
        """Gradient with respect to the logits, (N, C).

        ``grad_out`` is the upstream gradient of the loss: None means 1; a scalar for "mean"
        and "sum", an (N,) array for "none".
        """
        logits, target, options = self._saved()
        grad = F.cross_entropy_backward(logits, target, self.reduction, **options)
        return grad if grad_out is None else _scale(grad, grad_out, self.reduction)

    def extra_repr(self):
        # PyTorch's repr shows no options; fastconv's names those that are not the default.
        parts = [] if self.reduction == "mean" else [f"reduction={self.reduction!r}"]
        if self.weight is not None:
            parts.append(f"weight=<array of shape {self.weight.shape}>")
        if self.ignore_index != -100:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        return ", ".join(parts)


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
        self.reduction = check_reduction(reduction)

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
