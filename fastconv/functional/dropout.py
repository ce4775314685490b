"""Inverted dropout."""

from __future__ import annotations

import numpy as np

from fastconv._checks import check_array, check_bool, check_probability, generator


def dropout(x, p, training, rng):
    """Inverted dropout: zero each element with probability ``p``, scale the rest by 1/(1-p).

    Returns ``(y, mask)`` with ``y = x * mask``; ``mask`` holds 0 or 1/(1-p) (all ones when
    not training or p == 0). ``rng`` is a ``numpy.random.Generator`` or an int seed.
    """
    x = check_array("input", x)
    p = check_probability("p", p)
    training = check_bool("training", training)
    rng = generator(rng)
    if not training or p == 0.0:
        mask = np.ones_like(x)
    elif p == 1.0:
        mask = np.zeros_like(x)
    else:
        mask = (rng.random(x.shape) >= p).astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p))
    return x * mask, mask


def dropout_backward(grad_out, mask):
    grad_out = check_array("grad_out", grad_out)
    mask = check_array("mask", mask, dtype=grad_out.dtype)
    if mask.shape != grad_out.shape:
        raise ValueError(f"mask must have grad_out's shape {grad_out.shape}, got {mask.shape}")
    return grad_out * mask
