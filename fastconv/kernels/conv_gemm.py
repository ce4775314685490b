"""im2col/col2im and the GEMM path of convolution (unfold a tile, one BLAS product per group).

Shapes: x (N, C, H, W), weight (O, C/groups, KH, KW), y (N, O, OH, OW). ``ph``/``pw`` are the
top/left padding; the bottom/right padding is implied by the output size, so asymmetric
("same" with an even kernel) padding needs nothing special. Input row of output row ``oh`` and
kernel row ``i``: ``ih = oh*sh - ph + i*dh`` (out of range means a zero from the padding).
"""

import numpy as np
from numba import prange

from fastconv._config import jit, pjit
from fastconv.kernels._util import _add, _axpy, _copy, _fill, _valid_outputs


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


@jit
def _unfold_tile(x, geometry, oh0, rows, buffer, G):
    """im2col of output rows [oh0, oh1) of one sample x (C, H, W) into the front of ``buffer``.

    Returns (oh1, l0, tl, tile): the end row, the first output position and the number of
    positions of the tile, and its columns as a (G, C/G*KH*KW, tl) view of ``buffer``.
    """
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = geometry
    oh1 = min(OH, oh0 + rows)
    l0, tl = oh0 * OW, (oh1 - oh0) * OW
    R = x.shape[0] * KH * KW
    tile = buffer[: R * tl].reshape(R, tl)
    _im2col_rows(x, KH, KW, sh, sw, ph, pw, dh, dw, oh0, oh1, OW, tile)
    return oh1, l0, tl, tile.reshape(G, R // G, tl)


@pjit
def _conv2d_fwd_gemm(x, w, b, geometry, rows, cols, prod, y):
    """y[n, g] = w[g] @ im2col(x[n])[g] + b, tile by tile.

    ``geometry`` = (KH, KW, sh, sw, ph, pw, dh, dw, OH, OW). Workspaces per thread t: cols[t]
    holds a tile's columns, prod[t] the product of one group before it moves into y with the
    bias added.
    """
    OH = geometry[8]
    N, T = x.shape[0], cols.shape[0]
    G, Og = w.shape[0], w.shape[1]
    for t in prange(T):
        for n in range(t * N // T, (t + 1) * N // T):
            for oh0 in range(0, OH, rows):
                _, l0, tl, tile = _unfold_tile(x[n], geometry, oh0, rows, cols[t], G)
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
                oh1, l0, tl, tile = _unfold_tile(x[n], geometry, oh0, rows, cols[t], G)
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
