"""Window arithmetic shared by convolution, unfolding and pooling: output sizes, padding
forms and the (N, C, H, W) shape argument of the backward functions."""

from __future__ import annotations

import functools

from fastconv._checks import MAX_SIZE, is_int, pair


def _conv_output_size(size, k, stride, pad_total, dilation):
    return (size + pad_total - dilation * (k - 1) - 1) // stride + 1


def _window_geometry(name, x_hw, kernel, stride, padding, dilation, allow_same):
    """``_compute_window_geometry``, memoized when every argument is a plain int, str or
    tuple of ints (a layer calls it with the same arguments on every step: 6 µs a call, a
    tenth of a small convolution). Other values (lists, NumPy ints) take the full path every
    time, and the memo keeps a bool apart from an int, so it never changes what is accepted."""
    key = (name, x_hw, kernel, stride, padding, dilation, allow_same)
    if all(_plain(v) for v in key):
        return _memo_window_geometry(*key)
    return _compute_window_geometry(*key)


def _plain(value):
    t = type(value)
    return t is int or t is str or t is bool or (t is tuple and all(type(v) is int for v in value))


@functools.lru_cache(maxsize=1024, typed=True)  # typed: True is not 1 (a bool is refused)
def _memo_window_geometry(*key):
    return _compute_window_geometry(*key)


def _compute_window_geometry(name, x_hw, kernel, stride, padding, dilation, allow_same):
    """Normalise stride/padding/dilation and return ``(stride, pad_before, dilation, out_hw)``.

    ``padding`` may be an int, a pair, or (for conv) "same"/"valid". "same" pads a total of
    ``dilation*(k-1)``, the odd one on the bottom/right as PyTorch does; only ``pad_before``
    reaches the kernels because the output size implies the rest.
    """
    stride = pair("stride", stride, minimum=1)
    dilation = pair("dilation", dilation, minimum=1)
    if min(kernel) < 1:  # a conv weight's own shape (pooling's kernel_size is checked >= 1)
        raise ValueError(f"{name}: kernel size must be at least 1x1, got {kernel[0]}x{kernel[1]}")
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
    # Along an axis with one output the window never moves, so any stride is the same as 1:
    # normalised, a huge stride stays out of the kernels' index arithmetic and tile planning.
    stride = tuple(1 if o == 1 else st for st, o in zip(stride, out, strict=True))
    return stride, before, dilation, out


def _check_shape(name, shape):
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != 4
        or not all(is_int(s) and 0 <= s <= MAX_SIZE for s in shape)
    ):
        raise ValueError(
            f"{name} must be a tuple (N, C, H, W) of ints in [0, {MAX_SIZE}], got {shape!r}"
        )
    return tuple(int(s) for s in shape)


def _check_conv_weight(weight_shape):
    """A conv weight needs at least one output channel, input channel, row and column
    (PyTorch refuses the same; an empty one reached the kernels as a division by zero)."""
    if min(weight_shape) < 1:
        raise ValueError(
            "weight must have at least one output channel, input channel, kernel row and "
            f"kernel column, got shape {tuple(weight_shape)}"
        )
