"""Driver of the register-tiled direct convolution (``kernels/conv_blocked.py``), float32.

Takes arrays the caller has validated (C-contiguous float32, NCHW inputs, OIHW weights, groups
1) and explicit top/left padding; the bottom/right padding is implied by the output size, as
everywhere in fastconv. Packs the weights into 16-output-channel blocks, chooses the register
tile for the shape and calls the kernels.

Exact arithmetic (no transform of the data): each output is a sum of products rounded by
fused multiply-adds, so inf and NaN propagate as in PyTorch and results agree with it to
float32 rounding. Every result is written by one ``prange`` iteration, and the weight
gradient's sum over samples runs in chunks fixed by the shape, added in a fixed order: the
results are bit-identical at any thread count.
"""

from __future__ import annotations

import numpy as np

from fastconv._threads import get_num_threads
from fastconv.kernels.conv_blocked import (
    _conv2d_bwd_weight_blocked,
    _conv2d_fwd_blocked,
    _nchw_to_blocked,
    _pad_batch,
    _sum_chunks,
)

# Register budget: 32 zmm registers hold the tile's accumulators plus the NB weight vectors and
# one broadcast value. A tile of 14 output pixels x 2 blocks (28 accumulators) ran fm_conv2's
# forward at ~70% of the measured FMA peak on one core; one block of 14 pixels still hides the
# FMA latency (14 independent chains >= 4 cycles x 2 FMA ports).
_TILES = ((1, 14), (2, 7))  # (rows, columns) of output pixels per tile
_WEIGHT_CHUNK_BYTES = 16384  # a chunk of input channels' weights stays in L1 across tiles
_MAX_TAPS = 28  # weight-gradient tile: blocks x taps accumulators
_GRAD_PIXELS = 4096  # weight gradient: samples per chunk cover at least this many pixels


def supports(x_shape, weight_shape, stride, padding, dilation, groups, dtype):
    """Whether this engine computes ``conv2d`` (forward and backward) for these arguments.

    float32, groups 1, any kernel size, stride, dilation and padding; the input gradient only
    for stride 1 (``supports_input_grad``). float64 stays on the GEMM/Winograd paths.
    """
    del x_shape, weight_shape, stride, padding, dilation
    return np.dtype(dtype) == np.float32 and groups == 1


def supports_input_grad(stride):
    """The input gradient is a stride-1 convolution of grad_out only when the stride is 1."""
    return tuple(stride) == (1, 1)


def _blocks(n_channels):
    return -(-n_channels // 16)


def _forward_tile(O, OH, OW):
    """(NB, TR, TW): 2 blocks of 16 output channels when there are 2+, the pixel tile that
    computes the fewest discarded edge pixels."""
    nb = 1 if _blocks(O) == 1 else 2

    def computed(tile):
        tr, tw = tile
        return -(-OH // tr) * tr * (-(-OW // tw) * tw)

    tr, tw = min(_TILES, key=computed)  # ties keep the first (whole rows)
    return nb, tr, tw


def _pack_weights(weight, nb):
    """(OB, C, KH, KW, 16) with OB a multiple of nb; zero weights for channels past O."""
    O, C, KH, KW = weight.shape
    ob = -(-_blocks(O) // nb) * nb
    wp = np.zeros((ob * 16, C, KH, KW), dtype=np.float32)
    wp[:O] = weight
    return np.ascontiguousarray(wp.reshape(ob, 16, C, KH, KW).transpose(0, 2, 3, 4, 1))


def _step(s):
    """A stride the kernels see as a constant (dummy tuple) when it is small, else an int."""
    return (0,) * s if s <= 2 else s


def conv2d_forward(x, weight, bias, stride, padding_before, dilation, out):
    """out = conv2d(x, weight, bias); returns ``out``.

    x (N, C, H, W), weight (O, C, KH, KW), bias (O,) or None, out (N, O, OH, OW): C-contiguous
    float32. stride, padding_before (top, left), dilation: (h, w) int pairs; the output size
    comes from ``out.shape`` (so the bottom/right padding is implied).
    """
    N, O, OH, OW = out.shape
    C, KH, KW = weight.shape[1:]
    nb, tr, tw = _forward_tile(O, OH, OW)
    wb = _pack_weights(weight, nb)
    bb = np.zeros(wb.shape[0] * 16, dtype=np.float32)
    if bias is not None:
        bb[:O] = bias
    groups = wb.shape[0] // nb
    # One iteration per (sample, all blocks) pads each sample once; with few samples, one per
    # (sample, group of blocks) keeps both threads busy. No effect on the results.
    gchunk = groups if N >= 4 * get_num_threads() else 1
    cchunk = max(1, _WEIGHT_CHUNK_BYTES // (nb * KH * KW * 64))
    _conv2d_fwd_blocked(
        x, wb, bb, *padding_before, *stride, *dilation, out, gchunk, cchunk,
        (0,) * nb, (0,) * (tr * tw), (0,) * tw, _step(stride[1]),
    )  # fmt: skip
    return out


def _input_grad(grad_out, weight, padding_before, dilation, x_shape):
    """Stride 1: grad_x is grad_out convolved with the flipped, channel-transposed kernel,
    padded by (K - 1)*d - p in front."""
    KH, KW = weight.shape[2:]
    flipped = np.ascontiguousarray(weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    pad = ((KH - 1) * dilation[0] - padding_before[0], (KW - 1) * dilation[1] - padding_before[1])
    grad_x = np.empty(x_shape, dtype=np.float32)
    return conv2d_forward(grad_out, flipped, None, (1, 1), pad, dilation, grad_x)


def _weight_grad(grad_out, x, weight_shape, stride, padding_before, dilation):
    N, O, OH, OW = grad_out.shape
    C, KH, KW = weight_shape[1:]
    # Tile: nb blocks x (krows x KW) taps of one input channel, at most _MAX_TAPS accumulators.
    krows = max(1, min(KH, _MAX_TAPS // KW))
    nb = 2 if _blocks(O) >= 2 and 2 * krows * KW <= _MAX_TAPS else 1
    ob = -(-_blocks(O) // nb) * nb
    gb = np.empty((N, ob, OH * OW * 16), dtype=np.float32)
    _nchw_to_blocked(grad_out, gb)
    sh, sw = stride
    dh, dw = dilation
    Hs = (OH - 1) * sh + (KH - 1) * dh + 1
    Ws = (OW - 1) * sw + (KW - 1) * dw + 1
    xs = np.empty((N, C * Hs * Ws + KW * dw + 16), dtype=np.float32)
    _pad_batch(x, *padding_before, xs, Hs, Ws)
    chunk = max(1, _GRAD_PIXELS // (OH * OW))
    part = np.empty((-(-N // chunk), ob, C, KH, KW, 16), dtype=np.float32)
    _conv2d_bwd_weight_blocked(
        xs, gb, Hs, Ws, sh, sw, dh, dw, OW, chunk, part,
        (0,) * nb, (0,) * (krows * KW), (0,) * KW,
    )  # fmt: skip
    grad_w = np.empty(weight_shape, dtype=np.float32)
    _sum_chunks(part, O, grad_w)
    return grad_w


def conv2d_backward(grad_out, x, weight, stride, padding_before, dilation, need_input_grad=True):
    """(grad_x or None, grad_weight, grad_bias) of ``conv2d_forward``.

    grad_out (N, O, OH, OW), x (N, C, H, W), weight (O, C, KH, KW): C-contiguous float32; the
    other arguments as in ``conv2d_forward``. grad_x needs stride 1 (``supports_input_grad``).
    """
    grad_x = None
    if need_input_grad:
        if not supports_input_grad(stride):
            raise ValueError(f"the input gradient needs stride 1, got {tuple(stride)}")
        grad_x = _input_grad(grad_out, weight, padding_before, dilation, x.shape)
    grad_w = _weight_grad(grad_out, x, weight.shape, stride, padding_before, dilation)
    grad_b = grad_out.sum(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
    return grad_x, grad_w, grad_b
