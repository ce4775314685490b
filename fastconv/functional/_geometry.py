"""Window arithmetic shared by convolution, unfolding and pooling: output sizes, padding
forms and the (N, C, H, W) shape argument of the backward functions."""

from __future__ import annotations

import numbers

import numpy as np

from fastconv._checks import pair


def _conv_output_size(size, k, stride, pad_total, dilation):
    return (size + pad_total - dilation * (k - 1) - 1) // stride + 1


def _window_geometry(name, x_hw, kernel, stride, padding, dilation, allow_same):
    """Normalise stride/padding/dilation and return ``(stride, pad_before, dilation, out_hw)``.

    ``padding`` may be an int, a pair, or (for conv) "same"/"valid". "same" pads a total of
    ``dilation*(k-1)``, the odd one on the bottom/right as PyTorch does; only ``pad_before``
    reaches the kernels because the output size implies the rest.
    """
    stride = pair("stride", stride, minimum=1)
    dilation = pair("dilation", dilation, minimum=1)
    if isinstance(padding, str):
        if not allow_same or padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, a pair or 'same'/'valid', got {padding!r}")
        if padding == "same" and stride != (1, 1):
            raise ValueError(f"padding='same' needs stride=1, got stride={stride}")
        if padding == "same":
            totals = tuple(d * (k - 1) for d, k in zip(dilation, kernel, strict=True))
        else:
            totals = (0, 0)
        before = tuple(t // 2 for t in totals)
    else:
        before = pair("padding", padding, minimum=0)
        totals = tuple(2 * p for p in before)
    effective = tuple(d * (k - 1) + 1 for d, k in zip(dilation, kernel, strict=True))
    padded = tuple(s + t for s, t in zip(x_hw, totals, strict=True))
    if effective[0] > padded[0] or effective[1] > padded[1]:
        raise ValueError(
            f"{name}: kernel size {kernel[0]}x{kernel[1]} (dilated {effective[0]}x{effective[1]}) "
            f"is larger than the padded input {padded[0]}x{padded[1]}"
        )
    out = tuple(
        _conv_output_size(s, k, st, t, d)
        for s, k, st, t, d in zip(x_hw, kernel, stride, totals, dilation, strict=True)
    )
    return stride, before, dilation, out


def _check_shape(name, shape):
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != 4
        or not all(isinstance(s, (numbers.Integral, np.integer)) and s >= 0 for s in shape)
    ):
        raise ValueError(f"{name} must be a tuple (N, C, H, W) of non-negative ints, got {shape!r}")
    return tuple(int(s) for s in shape)
