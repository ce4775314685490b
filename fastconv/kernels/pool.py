"""Pooling kernels. Every loop runs over (n, c) planes, which each iteration owns.

Arrays come in as (P, H, W) with P = N*C planes (a free reshape of NCHW), so one ``prange``
covers the whole batch. Window of output (oh, ow): rows ``oh*sh - ph + i*dh`` for i < KH.
"""

from numba import prange

from fastconv._config import jit, pjit
from fastconv.kernels._util import _fill
from fastconv.kernels.simd_pool import maxpool2x2_row


@jit
def _taps_inside(start, size, dilation, k):
    """[lo, hi): the taps t < k whose position ``start + t*dilation`` lies in [0, size)."""
    lo = 0
    if start < 0:
        lo = (-start + dilation - 1) // dilation
    hi = 0 if start >= size else min(k, (size - 1 - start) // dilation + 1)
    return lo, max(lo, hi)


@pjit
def _maxpool2d_fwd(x, KH, KW, sh, sw, ph, pw, dh, dw, y, idx):
    """y = window max, idx = its flat index ``ih*W + iw`` in the plane.

    PyTorch's rule: start from the first tap inside the input, take a later value if it is
    greater or NaN (so NaN propagates and the last NaN's index wins, and an all -inf window
    gives its first tap).
    """
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for p in prange(P):
        plane = x[p]
        for oh in range(OH):
            h0 = oh * sh - ph
            i_lo, i_hi = _taps_inside(h0, H, dh, KH)
            for ow in range(OW):
                w0 = ow * sw - pw
                j_lo, j_hi = _taps_inside(w0, W, dw, KW)
                best = plane[h0 + i_lo * dh, w0 + j_lo * dw]
                best_at = (h0 + i_lo * dh) * W + w0 + j_lo * dw
                for i in range(i_lo, i_hi):
                    ih = h0 + i * dh
                    row = plane[ih]
                    for j in range(j_lo, j_hi):
                        v = row[w0 + j * dw]
                        if v > best or v != v:  # v != v: NaN
                            best = v
                            best_at = ih * W + w0 + j * dw
                y[p, oh, ow] = best
                idx[p, oh, ow] = best_at


@pjit
def _maxpool2d_fwd_inside(x, KH, KW, sh, sw, dh, dw, y, idx):
    """``_maxpool2d_fwd`` for windows that all lie inside the input (no padding reached):
    the same visiting order and update rule, without the bounds arithmetic."""
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for p in prange(P):
        plane = x[p]
        for oh in range(OH):
            h0 = oh * sh
            for ow in range(OW):
                w0 = ow * sw
                best = plane[h0, w0]
                best_at = h0 * W + w0
                for i in range(KH):
                    row = plane[h0 + i * dh]
                    for j in range(KW):
                        v = row[w0 + j * dw]
                        if v > best or v != v:  # v != v: NaN
                            best = v
                            best_at = (h0 + i * dh) * W + w0 + j * dw
                y[p, oh, ow] = best
                idx[p, oh, ow] = best_at


@jit
def _take(v, v_at, best, best_at):
    """PyTorch's update rule as a select (no branch): the later tap wins if greater or NaN."""
    take = (v > best) | (v != v)
    return (v, v_at) if take else (best, best_at)


@pjit
def _maxpool2d_2x2(x, y, idx, with_indices):
    """``_maxpool2d_fwd_inside`` for the commonest window, 2x2 with stride 2: the four taps
    written out so LLVM turns the update rule into vector selects (2.7x faster than the general
    loop). ``idx`` is written only ``with_indices`` (eval mode needs the values alone)."""
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for p in prange(P):
        plane = x[p]
        for oh in range(OH):
            top, bottom = plane[2 * oh], plane[2 * oh + 1]
            at = 2 * oh * W
            for ow in range(OW):
                k = 2 * ow
                best, best_at = top[k], at + k
                best, best_at = _take(top[k + 1], at + k + 1, best, best_at)
                best, best_at = _take(bottom[k], at + W + k, best, best_at)
                best, best_at = _take(bottom[k + 1], at + W + k + 1, best, best_at)
                y[p, oh, ow] = best
                if with_indices:
                    idx[p, oh, ow] = best_at


@pjit
def _maxpool2d_2x2_f32(x, y, idx, with_indices):
    """``_maxpool2d_2x2`` for float32, 16 windows per step (``simd_pool.maxpool2x2_row``):
    the same values and indices, about 4x faster. x (P, H, W), y and idx (P, OH, OW),
    C-contiguous."""
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for p in prange(P):
        for oh in range(OH):
            top = (p * H + 2 * oh) * W
            out = (p * OH + oh) * OW
            for ow in range(0, OW, 16):
                maxpool2x2_row(
                    x, top + 2 * ow, W, min(16, OW - ow), y, out + ow, idx, 2 * oh * W + 2 * ow,
                    with_indices,
                )  # fmt: skip


@pjit
def _maxpool2d_bwd(gy, idx, gx):
    """gx[p, idx] += gy[p]: the gradient goes to each window's argmax (windows may overlap)."""
    P, L = gy.shape
    for p in prange(P):
        _fill(gx[p], 0)
        for l in range(L):
            gx[p, idx[p, l]] += gy[p, l]


@jit
def _avg_window(o, stride, pad, k, size, count_include_pad):
    """Clipped [start, end) of an average-pool window and its divisor, as PyTorch computes them."""
    start = o * stride - pad
    end = min(start + k, size + pad)
    padded_len = end - start  # counts the padding, but not past the padded input
    start, end = max(start, 0), min(end, size)
    return start, end, padded_len if count_include_pad else end - start


@pjit
def _avgpool2d_fwd(x, KH, KW, sh, sw, ph, pw, count_include_pad, y):
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for p in prange(P):
        for oh in range(OH):
            h0, h1, dh_ = _avg_window(oh, sh, ph, KH, H, count_include_pad)
            for ow in range(OW):
                w0, w1, dw_ = _avg_window(ow, sw, pw, KW, W, count_include_pad)
                acc = 0.0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        acc += x[p, ih, iw]
                y[p, oh, ow] = acc / (dh_ * dw_)


@pjit
def _avgpool2d_bwd(gy, KH, KW, sh, sw, ph, pw, count_include_pad, gx):
    P, H, W = gx.shape
    OH, OW = gy.shape[1], gy.shape[2]
    for p in prange(P):
        _fill(gx[p], 0)
        for oh in range(OH):
            h0, h1, dh_ = _avg_window(oh, sh, ph, KH, H, count_include_pad)
            for ow in range(OW):
                w0, w1, dw_ = _avg_window(ow, sw, pw, KW, W, count_include_pad)
                g = gy[p, oh, ow] / (dh_ * dw_)
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        gx[p, ih, iw] += g


@jit
def _adaptive_window(o, out_size, in_size):
    """[floor(o*in/out), ceil((o+1)*in/out)): PyTorch's adaptive pooling window."""
    return (o * in_size) // out_size, -((-(o + 1) * in_size) // out_size)


@pjit
def _adaptive_avgpool2d_fwd(x, y):
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for p in prange(P):
        for oh in range(OH):
            h0, h1 = _adaptive_window(oh, OH, H)
            for ow in range(OW):
                w0, w1 = _adaptive_window(ow, OW, W)
                acc = 0.0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        acc += x[p, ih, iw]
                y[p, oh, ow] = acc / ((h1 - h0) * (w1 - w0))


@pjit
def _adaptive_avgpool2d_bwd(gy, gx):
    P, H, W = gx.shape
    OH, OW = gy.shape[1], gy.shape[2]
    for p in prange(P):
        _fill(gx[p], 0)
        for oh in range(OH):
            h0, h1 = _adaptive_window(oh, OH, H)
            for ow in range(OW):
                w0, w1 = _adaptive_window(ow, OW, W)
                g = gy[p, oh, ow] / ((h1 - h0) * (w1 - w0))
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        gx[p, ih, iw] += g
