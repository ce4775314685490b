"""Convolution kernels: direct loops, im2col/col2im and the layout moves around the GEMM path.

Shapes: x (N, C, H, W), weight (O, C/groups, KH, KW), y (N, O, OH, OW). ``ph``/``pw`` are the
top/left padding; the bottom/right padding is implied by the output size, so asymmetric
("same" with an even kernel) padding needs nothing special. Input row of output row ``oh`` and
kernel row ``i``: ``ih = oh*sh - ph + i*dh`` (out of range means a zero from the padding).
"""

import numpy as np
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


# Array expressions (``a[:] = 0``, ``a += b``) written directly inside a ``prange`` body become
# nested parallel loops, which numba compiles slowly (seconds per kernel); these two helpers keep
# them serial, inside the iteration that owns the array.


@jit
def _fill(a, value):
    a[...] = value


@jit
def _add(a, b):
    a += b


@jit
def _axpy(a, x, x0, xstep, y, y0, ystep, count):
    """y[y0 + t*ystep] += a * x[x0 + t*xstep] for t < count (the inner loop of direct conv).

    The unit-step case runs on plain slices, which LLVM vectorises; strided steps cannot be.
    """
    if xstep == 1 and ystep == 1:
        xs, ys = x[x0 : x0 + count], y[y0 : y0 + count]
        for t in range(count):
            ys[t] += a * xs[t]
    else:
        for t in range(count):
            y[y0 + t * ystep] += a * x[x0 + t * xstep]


@jit
def _copy(x, x0, xstep, y):
    """y[t] = x[x0 + t*xstep] for every t (contiguous slices in the unit-step case)."""
    n = y.shape[0]
    if xstep == 1:
        xs = x[x0 : x0 + n]
        for t in range(n):
            y[t] = xs[t]
    else:
        for t in range(n):
            y[t] = x[x0 + t * xstep]


@jit
def _dot(x, x0, xstep, y, count):
    """sum of y[t] * x[x0 + t*xstep] for t < count, accumulated in float64."""
    acc = 0.0
    if xstep == 1:
        xs = x[x0 : x0 + count]
        for t in range(count):
            acc += y[t] * xs[t]
    else:
        for t in range(count):
            acc += y[t] * x[x0 + t * xstep]
    return acc


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


@jit
def _im2col_rows(x, KH, KW, sh, sw, ph, pw, dh, dw, oh0, oh1, OW, cols):
    """cols[c*KH*KW + i*KW + j, (oh-oh0)*OW + ow] = x[c, ih, iw] for output rows [oh0, oh1).

    x is one sample (C, H, W); cols (C*KH*KW, (oh1-oh0)*OW), rows in PyTorch's unfold order;
    0 where the tap falls in the padding.
    """
    C, H, W = x.shape
    OH = oh1  # rows past oh1 are not needed
    for r in range(C * KH * KW):
        c, i, j = r // (KH * KW), (r // KW) % KH, r % KW
        oh_lo, oh_hi = _valid_outputs(OH, H, sh, ph, i * dh)
        ow_lo, ow_hi = _valid_outputs(OW, W, sw, pw, j * dw)
        row = cols[r]
        for oh in range(oh0, oh1):
            base = (oh - oh0) * OW
            if oh < oh_lo or oh >= oh_hi:
                row[base : base + OW] = 0
                continue
            row[base : base + ow_lo] = 0
            _copy(
                x[c, oh * sh - ph + i * dh],
                ow_lo * sw - pw + j * dw,
                sw,
                row[base + ow_lo : base + ow_hi],
            )
            row[base + ow_hi : base + OW] = 0


@jit
def _col2im_add_rows(cols, KH, KW, sh, sw, ph, pw, dh, dw, oh0, oh1, OW, x):
    """The adjoint of ``_im2col_rows``: add every column entry back where it was taken from."""
    C, H, W = x.shape
    for r in range(C * KH * KW):
        c, i, j = r // (KH * KW), (r // KW) % KH, r % KW
        oh_lo, oh_hi = _valid_outputs(oh1, H, sh, ph, i * dh)
        ow_lo, ow_hi = _valid_outputs(OW, W, sw, pw, j * dw)
        row = cols[r]
        for oh in range(max(oh0, oh_lo), oh_hi):
            base = (oh - oh0) * OW
            _axpy(
                1.0,
                row,
                base + ow_lo,
                1,
                x[c, oh * sh - ph + i * dh],
                ow_lo * sw - pw + j * dw,
                sw,
                ow_hi - ow_lo,
            )


@pjit
def _im2col(x, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, cols):
    """cols[n] = im2col of x[n]; cols is (N, C*KH*KW, OH*OW), PyTorch's unfold layout."""
    for n in prange(x.shape[0]):
        _im2col_rows(x[n], KH, KW, sh, sw, ph, pw, dh, dw, 0, OH, OW, cols[n])


@pjit
def _col2im(cols, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, x):
    """x[n] = col2im of cols[n] (PyTorch's fold)."""
    for n in prange(x.shape[0]):
        _fill(x[n], 0)
        _col2im_add_rows(cols[n], KH, KW, sh, sw, ph, pw, dh, dw, 0, OH, OW, x[n])


# The GEMM path. The batch is split into one contiguous chunk of samples per thread t. Each
# sample is unfolded into the thread's workspace ``cols[t]`` (a tile of ``rows`` output rows at
# a time, so that large images need a bounded buffer) and multiplied there with BLAS. BLAS runs
# inside ``prange``, so the caller must make it single-threaded (``single_threaded_blas``) or
# the two thread pools oversubscribe the cores.
# Shapes, with G groups: w (G, O/G, R/G), y and gy (N, G, O/G, OH*OW), workspaces flat per t.


@pjit
def _conv2d_fwd_gemm(x, w, b, geometry, rows, cols, prod, y):
    """y[n, g] = w[g] @ im2col(x[n])[g] + b, tile by tile.

    ``geometry`` = (KH, KW, sh, sw, ph, pw, dh, dw, OH, OW). Workspaces per thread t: cols[t]
    holds a tile's columns, prod[t] the product of one group before it moves into y with the
    bias added.
    """
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = geometry
    N, T = x.shape[0], cols.shape[0]
    G, Og, Rg = w.shape
    for t in prange(T):
        for n in range(t * N // T, (t + 1) * N // T):
            for oh0 in range(0, OH, rows):
                oh1 = min(OH, oh0 + rows)
                l0, tl = oh0 * OW, (oh1 - oh0) * OW
                tile = cols[t, : G * Rg * tl].reshape(G, Rg, tl)
                _im2col_rows(
                    x[n], KH, KW, sh, sw, ph, pw, dh, dw, oh0, oh1, OW, tile.reshape(G * Rg, tl)
                )
                p = prod[t, : Og * tl].reshape(Og, tl)
                for g in range(G):
                    np.dot(w[g], tile[g], p)
                    for o in range(Og):
                        dst, src, bo = y[n, g, o], p[o], b[g * Og + o]
                        for l in range(tl):
                            dst[l0 + l] = src[l] + bo


@pjit
def _conv2d_bwd_gemm(x, gy, w, geometry, rows, cols, gtile, gw_part, gw_tmp, gb_part, gx):
    """gx, and per-thread partial sums gw_part[t] / gb_part[t] (the caller adds them up).

    Per tile: gw[g] += gy[g] @ cols[g].T; then cols[g] is overwritten with w[g].T @ gy[g], the
    gradient of the columns, which col2im adds into gx[n]. Tiles as in ``_conv2d_fwd_gemm``.
    """
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = geometry
    N, T = x.shape[0], cols.shape[0]
    G, Og, Rg = w.shape
    for t in prange(T):
        gw, tmp, gb = gw_part[t], gw_tmp[t], gb_part[t]
        _fill(gw, 0)
        _fill(gb, 0)
        for n in range(t * N // T, (t + 1) * N // T):
            _fill(gx[n], 0)
            for oh0 in range(0, OH, rows):
                oh1 = min(OH, oh0 + rows)
                l0, tl = oh0 * OW, (oh1 - oh0) * OW
                tile = cols[t, : G * Rg * tl].reshape(G, Rg, tl)
                _im2col_rows(
                    x[n], KH, KW, sh, sw, ph, pw, dh, dw, oh0, oh1, OW, tile.reshape(G * Rg, tl)
                )
                g_out = gtile[t, : Og * tl].reshape(Og, tl)
                for g in range(G):
                    for o in range(Og):  # this tile of gy, made contiguous for BLAS
                        src, dst = gy[n, g, o], g_out[o]
                        acc = 0.0
                        for l in range(tl):
                            dst[l] = src[l0 + l]
                            acc += src[l0 + l]
                        gb[g * Og + o] += acc
                    np.dot(g_out, tile[g].T, tmp)
                    _add(gw[g], tmp)
                    np.dot(w[g].T, g_out, tile[g])
                _col2im_add_rows(
                    tile.reshape(G * Rg, tl), KH, KW, sh, sw, ph, pw, dh, dw, oh0, oh1, OW, gx[n]
                )
