"""Sliding-window geometry shared by the reference's conv, pooling and unfold families.

Every windowed op sees its input the same way: pad the plane, slide a (dilated) kernel over it
with a stride, and count how many window positions fit. These helpers draw that picture once;
each family adds only its own rules (conv's "same"/"valid" padding, pooling's ceil mode).

Pads are written ``((top, bottom), (left, right))`` so an asymmetric "same" padding fits too.
"""

from __future__ import annotations

import numpy as np

from fastconv._checks import pair


def out_size(size, kernel, stride, dilation, pad_total):
    """How many window positions fit along one axis.

    A dilated kernel spans ``dilation * (kernel - 1) + 1`` pixels, and the window moves by
    ``stride``: ``floor((size + pad_total - span) / stride) + 1``.
    """
    span = dilation * (kernel - 1) + 1
    return (size + pad_total - span) // stride + 1


def check_fits(out, in_hw, kernel_size, dilation, padding):
    """Return ``out`` (H_out, W_out), or raise if an axis has no window position at all."""
    if min(out) < 1:
        raise ValueError(
            f"kernel_size {tuple(kernel_size)} (dilation {dilation}) is larger than the padded "
            f"input {tuple(in_hw)} with padding {padding}"
        )
    return tuple(out)


def symmetric_pads(padding):
    """``((p_h, p_h), (p_w, p_w))`` for an int or ``(p_h, p_w)`` padding: the same on both sides."""
    ph, pw = pair("padding", padding, minimum=0)
    return (ph, ph), (pw, pw)


def window(oh, ow, kernel_size, stride, dilation):
    """The two slices that pick output position ``(oh, ow)``'s window out of a padded plane."""
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    top, left = oh * sh, ow * sw  # the window's top-left corner, in padded coordinates
    # Every dilation-th pixel, kernel taps in all: top, top + dh, ..., top + dh * (kh - 1).
    return slice(top, top + dh * (kh - 1) + 1, dh), slice(left, left + dw * (kw - 1) + 1, dw)


def pad(x, pads):
    """Zero-pad the last two axes of ``x`` (N, C, H, W) by ``((top, bottom), (left, right))``."""
    return np.pad(x, ((0, 0), (0, 0), pads[0], pads[1]))


def crop(xp, pads, height, width):
    """Cut the ``(height, width)`` interior back out of a padded ``(N, C, Hp, Wp)`` array."""
    (top, _), (left, _) = pads
    return np.ascontiguousarray(xp[:, :, top : top + height, left : left + width])
