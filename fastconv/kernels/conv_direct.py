"""Direct convolution loops: used for depthwise-style convolutions (one input channel per
group), where each group's GEMM would be a tiny matrix.

Shapes: x (N, C, H, W), weight (O, C/groups, KH, KW), y (N, O, OH, OW). ``ph``/``pw`` are the
top/left padding; the bottom/right padding is implied by the output size, so asymmetric
("same" with an even kernel) padding needs nothing special. Input row of output row ``oh`` and
kernel row ``i``: ``ih = oh*sh - ph + i*dh`` (out of range means a zero from the padding).
"""

from numba import prange

from fastconv._config import pjit
from fastconv.kernels._util import _axpy, _dot, _fill, _valid_outputs


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
        _fill(out, b[o])
        for cg in range(Cg):
            inp = x[n, c0 + cg]
            for i in range(KH):
                oh_lo, oh_hi = _valid_outputs(OH, H, sh, ph, i * dh)
                for j in range(KW):
                    ow_lo, ow_hi = _valid_outputs(OW, W, sw, pw, j * dw)
                    iw0 = ow_lo * sw - pw + j * dw
                    for oh in range(oh_lo, oh_hi):
                        _axpy(
                            w[o, cg, i, j],
                            inp[oh * sh - ph + i * dh],
                            iw0,
                            sw,
                            out[oh],
                            ow_lo,
                            1,
                            ow_hi - ow_lo,
                        )


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
        _fill(out, 0)
        for og in range(Og):
            g = gy[n, o0 + og]
            for i in range(KH):
                oh_lo, oh_hi = _valid_outputs(OH, H, sh, ph, i * dh)
                for j in range(KW):
                    ow_lo, ow_hi = _valid_outputs(OW, W, sw, pw, j * dw)
                    iw0 = ow_lo * sw - pw + j * dw
                    for oh in range(oh_lo, oh_hi):
                        _axpy(
                            w[o0 + og, cg, i, j],
                            g[oh],
                            ow_lo,
                            1,
                            out[oh * sh - ph + i * dh],
                            iw0,
                            sw,
                            ow_hi - ow_lo,
                        )


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
                    iw0 = ow_lo * sw - pw + j * dw
                    acc = 0.0
                    for n in range(N):
                        inp, g = x[n, c0 + cg], gy[n, o]
                        for oh in range(oh_lo, oh_hi):
                            acc += _dot(
                                inp[oh * sh - ph + i * dh],
                                iw0,
                                sw,
                                g[oh, ow_lo:ow_hi],
                                ow_hi - ow_lo,
                            )
                    gw[o, cg, i, j] = acc
