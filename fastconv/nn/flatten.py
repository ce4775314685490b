"""``Flatten``: a reshape, so no functional op behind it."""

from __future__ import annotations

import numpy as np

from fastconv._checks import is_int
from fastconv.nn.module import Module


class Flatten(Module):
    """Merge dimensions ``start_dim..end_dim`` into one, as ``torch.nn.Flatten``:
    (N, C, H, W) -> (N, C*H*W) with the defaults."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        for name, dim in (("start_dim", start_dim), ("end_dim", end_dim)):
            if not is_int(dim):
                raise TypeError(f"{name} must be an int, got {dim!r}")
        self.start_dim = int(start_dim)
        self.end_dim = int(end_dim)

    def forward(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"input must be a numpy.ndarray, got {type(x).__name__}")
        shape = self._shape(x.shape)
        self._ctx = x.shape
        return x.reshape(shape)

    def _forward_tensor(self, x):
        return x.reshape(self._shape(x.shape))

    def _shape(self, shape):
        """The output shape for an input of ``shape``."""
        ndim = len(shape)
        start = self.start_dim + ndim if self.start_dim < 0 else self.start_dim
        end = self.end_dim + ndim if self.end_dim < 0 else self.end_dim
        if not 0 <= start <= end < max(ndim, 1):
            raise ValueError(
                f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}) does "
                f"not fit an input of shape {shape}"
            )
        return (*shape[:start], -1, *shape[end + 1 :])

    def backward(self, grad_out):
        return np.reshape(grad_out, self._saved())

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
