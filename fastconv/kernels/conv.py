"""Convolution kernels: direct loops, im2col/col2im and the layout moves around the GEMM path.

Shapes: x (N, C, H, W), weight (O, C/groups, KH, KW), y (N, O, OH, OW). ``ph``/``pw`` are the
top/left padding; the bottom/right padding is implied by the output size, so asymmetric
("same" with an even kernel) padding needs nothing special. Input row of output row ``oh`` and
kernel row ``i``: ``ih = oh*sh - ph + i*dh`` (out of range means a zero from the padding).
"""

from numba import prange

from fastconv._config import jit, pjit


@jit
def _valid_outputs(out_size, in_size, stride, pad, offset):
    """[lo, hi): the output positions o whose input ``o*stride - pad + offset`` is in the input."""
    lo = 0
    if pad - offset > 0:
        lo = (pad - offset + stride - 1) // stride
    last = in_size - 1 + pad - offset  # o*stride <= last
    hi = 0 if last < 0 else min(out_size, last // stride + 1)
    return lo, max(lo, hi)


@pjit
def _conv2d_fwd_direct(x, w, b, sh, sw, ph, pw, dh, dw, groups, y):
    """y[n, o] = b[o] + sum over the group's channels and taps; one (n, o) plane per iteration."""
    N, C, H, W = x.shape
    O, Cg, KH, KW = w.shape
    OH, OW = y.shape[2], y.shape[3]
    Og = O // groups
    for p in prange(N * O):
        n, o = p // O, p % O
        c0 = (o // Og) * Cg
        out = y[n, o]
        out[:, :] = b[o]
        for cg in range(Cg):
            inp = x[n, c0 + cg]
            for i in range(KH):
                oh_lo, oh_hi = _valid_outputs(OH, H, sh, ph, i * dh)
                for j in range(KW):
                    ow_lo, ow_hi = _valid_outputs(OW, W, sw, pw, j * dw)
                    wv = w[o, cg, i, j]
                    for oh in range(oh_lo, oh_hi):
                        ih = oh * sh - ph + i * dh
                        for ow in range(ow_lo, ow_hi):
                            out[oh, ow] += wv * inp[ih, ow * sw - pw + j * dw]


@pjit
def _conv2d_bwd_input_direct(gy, w, sh, sw, ph, pw, dh, dw, groups, gx):
    """gx[n, c] = sum over the group's out-channels of gy scattered through the taps."""
    N, C, H, W = gx.shape
    O, Cg, KH, KW = w.shape
    OH, OW = gy.shape[2], gy.shape[3]
    Og = O // groups
    for p in prange(N * C):
        n, c = p // C, p % C
        o0, cg = (c // Cg) * Og, c % Cg
        out = gx[n, c]
        out[:, :] = 0
        for og in range(Og):
            g = gy[n, o0 + og]
            for i in range(KH):
                oh_lo, oh_hi = _valid_outputs(OH, H, sh, ph, i * dh)
                for j in range(KW):
                    ow_lo, ow_hi = _valid_outputs(OW, W, sw, pw, j * dw)
                    wv = w[o0 + og, cg, i, j]
                    for oh in range(oh_lo, oh_hi):
                        ih = oh * sh - ph + i * dh
                        for ow in range(ow_lo, ow_hi):
                            out[ih, ow * sw - pw + j * dw] += wv * g[oh, ow]


@pjit
def _conv2d_bwd_weight_direct(x, gy, sh, sw, ph, pw, dh, dw, groups, gw):
    """gw[o, cg, i, j] = sum over n, oh, ow of gy * the input under tap (i, j); one o each."""
    N, C, H, W = x.shape
    O, Cg, KH, KW = gw.shape
    OH, OW = gy.shape[2], gy.shape[3]
    Og = O // groups
    for o in prange(O):
        c0 = (o // Og) * Cg
        for cg in range(Cg):
            for i in range(KH):
                oh_lo, oh_hi = _valid_outputs(OH, H, sh, ph, i * dh)
                for j in range(KW):
                    ow_lo, ow_hi = _valid_outputs(OW, W, sw, pw, j * dw)
                    acc = 0.0
                    for n in range(N):
                        inp = x[n, c0 + cg]
                        g = gy[n, o]
                        for oh in range(oh_lo, oh_hi):
                            ih = oh * sh - ph + i * dh
                            for ow in range(ow_lo, ow_hi):
                                acc += g[oh, ow] * inp[ih, ow * sw - pw + j * dw]
                    gw[o, cg, i, j] = acc


@pjit
def _im2col(x, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, cols):
    """cols[c*KH*KW + i*KW + j, n, oh*OW + ow] = x[n, c, ih, iw] (0 in the padding).

    ``cols`` is (C*KH*KW, N, OH*OW): rows in PyTorch's unfold order, so ``cols.reshape(R, N*L)``
    is the right operand of one GEMM for the whole batch. One row per iteration.
    """
    N, C, H, W = x.shape
    for r in prange(C * KH * KW):
        c, i, j = r // (KH * KW), (r // KW) % KH, r % KW
        oh_lo, oh_hi = _valid_outputs(OH, H, sh, ph, i * dh)
        ow_lo, ow_hi = _valid_outputs(OW, W, sw, pw, j * dw)
        for n in range(N):
            row = cols[r, n]
            for oh in range(OH):
                base = oh * OW
                if oh < oh_lo or oh >= oh_hi:
                    row[base:base + OW] = 0
                    continue
                ih = oh * sh - ph + i * dh
                row[base:base + ow_lo] = 0
                for ow in range(ow_lo, ow_hi):
                    row[base + ow] = x[n, c, ih, ow * sw - pw + j * dw]
                row[base + ow_hi:base + OW] = 0


@pjit
def _col2im(cols, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, x):
    """The adjoint of ``_im2col``: x[n, c] = sum of every column entry that came from it."""
    N, C, H, W = x.shape
    for p in prange(N * C):
        n, c = p // C, p % C
        out = x[n, c]
        out[:, :] = 0
        for i in range(KH):
            oh_lo, oh_hi = _valid_outputs(OH, H, sh, ph, i * dh)
            for j in range(KW):
                ow_lo, ow_hi = _valid_outputs(OW, W, sw, pw, j * dw)
                row = cols[(c * KH + i) * KW + j, n]
                for oh in range(oh_lo, oh_hi):
                    ih = oh * sh - ph + i * dh
                    for ow in range(ow_lo, ow_hi):
                        out[ih, ow * sw - pw + j * dw] += row[oh * OW + ow]


@pjit
def _onl_to_nol_add_bias(z, b, y):
    """y[n, o, l] = z[o, n, l] + b[o]: the GEMM result (O, N, L) moved to NCHW, bias added."""
    O, N, L = z.shape
    for p in prange(N * O):
        n, o = p // O, p % O
        bo = b[o]
        for l in range(L):
            y[n, o, l] = z[o, n, l] + bo


@pjit
def _nol_to_onl(g, out):
    """out[o, n, l] = g[n, o, l]: grad_out moved to the (O, N*L) layout of the GEMM path."""
    N, O, L = g.shape
    for p in prange(N * O):
        n, o = p // O, p % O
        for l in range(L):
            out[o, n, l] = g[n, o, l]
