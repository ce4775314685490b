"""``CrossEntropyLoss``."""

from __future__ import annotations

import numpy as np

import fastconv.functional as F
from fastconv.nn.module import Module


class CrossEntropyLoss(Module):
    """Softmax cross-entropy of (N, C) logits against (N,) integer class targets.

    ``loss = crit(logits, target)`` is a float for reduction "mean" or "sum", an (N,) array for
    "none"; ``crit.backward()`` then returns the (N, C) gradient with respect to the logits.
    """

    def __init__(self, reduction="mean"):
        super().__init__()
        # Checked here too (functional checks it per call) so a typo fails where it is written.
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction

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
        if grad_out is None:
            return grad
        grad_out = np.asarray(grad_out, dtype=grad.dtype)
        want = grad.shape[:1] if self.reduction == "none" else ()
        if grad_out.shape != want:
            raise ValueError(
                f"grad_out must have shape {want} for reduction="
                f"{self.reduction!r}, got {grad_out.shape}"
            )
        return grad * grad_out.reshape(grad_out.shape + (1,) * (grad.ndim - grad_out.ndim))

    def extra_repr(self):
        return "" if self.reduction == "mean" else f"reduction={self.reduction!r}"
