"""Winograd F(2x2, 3x3): 3x3 stride-1 convolution with 2.25x fewer multiplications.

Each 2x2 block ("tile") of the output needs the 4x4 input patch around it. In the transformed
domain the convolution becomes, for each of the 16 positions xi of a 4x4 patch, one matrix
product over channels:  M[xi] (O x P) = U[xi] (O x C) @ V[xi] (C x P)  for P tiles, where
U = G g G^T (the weights), V = B^T d B (the input patches) and the output tile is A^T m A.
Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2015).

The batch's rows of tiles are split into one contiguous range per thread, processed a block of
tile rows at a time: transform the block's patches into the thread's workspace V, run the 16
GEMMs (single-threaded BLAS, inside ``prange``) into M, write the output tiles. V and M are
sized to stay in cache.
"""

import numpy as np
from numba import prange

from fastconv._config import jit, pjit
from fastconv.kernels._util import _add, _fill


@pjit
def _winograd_weights(w, U):
    """U[xi, o, c] = (G w[o, c] G^T)[xi]; G = [[1,0,0], [.5,.5,.5], [.5,-.5,.5], [0,0,1]]."""
    O, C = w.shape[0], w.shape[1]
    for o in prange(O):
        for c in range(C):
            g = w[o, c]
            for r in range(4):
                # row r of G g, then that row times G^T
                if r == 0:
                    a0, a1, a2 = g[0, 0], g[0, 1], g[0, 2]
                elif r == 3:
                    a0, a1, a2 = g[2, 0], g[2, 1], g[2, 2]
                else:
                    sign = 1.0 if r == 1 else -1.0
                    a0 = 0.5 * (g[0, 0] + sign * g[1, 0] + g[2, 0])
                    a1 = 0.5 * (g[0, 1] + sign * g[1, 1] + g[2, 1])
                    a2 = 0.5 * (g[0, 2] + sign * g[1, 2] + g[2, 2])
                U[4 * r + 0, o, c] = a0
                U[4 * r + 1, o, c] = 0.5 * (a0 + a1 + a2)
                U[4 * r + 2, o, c] = 0.5 * (a0 - a1 + a2)
                U[4 * r + 3, o, c] = a2


@jit
def _input_transform(x, ph, pw, TH, TW, u0, u1, rows, V):
    """V[xi, c, (u-u0)*TW + tw] = (B^T d B)[xi] for every tile of the tile rows u in [u0, u1).

    Tile row u = n*TH + th covers input rows 2*th - ph .. +3 of sample n. Works a row of tiles
    at a time so every loop runs along contiguous memory: ``rows`` (8, 2*TW + 2) holds the four
    zero-padded input rows, then B^T times them. B^T = [[1,0,-1,0], [0,1,1,0], [0,-1,1,0],
    [0,1,0,-1]].
    """
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    d, bt = rows[:4], rows[4:]
    for u in range(u0, u1):
        n, th = u // TH, u % TH
        p0 = (u - u0) * TW
        for c in range(C):
            for a in range(4):  # the patch rows, padding included, at column offset pw
                r = 2 * th - ph + a
                d[a] = 0
                if 0 <= r < H:
                    src, dst = x[n, c, r], d[a, pw : pw + W]
                    for k in range(min(W, dst.shape[0])):
                        dst[k] = src[k]
            for k in range(d.shape[1]):  # B^T d, for all columns at once
                d0, d1, d2, d3 = d[0, k], d[1, k], d[2, k], d[3, k]
                bt[0, k], bt[1, k], bt[2, k], bt[3, k] = d0 - d2, d1 + d2, d2 - d1, d1 - d3
            for a in range(4):  # (B^T d) B: tile tw uses columns 2*tw .. 2*tw + 3
                e = bt[a]
                v0, v1, v2, v3 = V[4 * a, c], V[4 * a + 1, c], V[4 * a + 2, c], V[4 * a + 3, c]
                for tw in range(TW):
                    e0, e1, e2, e3 = e[2 * tw], e[2 * tw + 1], e[2 * tw + 2], e[2 * tw + 3]
                    v0[p0 + tw] = e0 - e2
                    v1[p0 + tw] = e1 + e2
                    v2[p0 + tw] = e2 - e1
                    v3[p0 + tw] = e1 - e3


@jit
def _output_transform(M, b, TH, TW, u0, u1, rows, y):
    """The output tiles of tile rows [u0, u1): A^T m A + b, m = M[:, o, p].

    A^T = [[1,1,1,0], [0,1,-1,-1]]. A row of tiles goes to ``rows`` (2, 2*TW) first, then the
    part inside the output (odd sizes cut the last tile) is copied to y.
    """
    O, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    for u in range(u0, u1):
        n, th = u // TH, u % TH
        p0 = (u - u0) * TW
        for o in range(O):
            m = M[:, o, p0 : p0 + TW]
            top, bottom = rows[0], rows[1]
            bo = b[o]
            for tw in range(TW):
                s00 = m[0, tw] + m[4, tw] + m[8, tw]
                s01 = m[1, tw] + m[5, tw] + m[9, tw]
                s02 = m[2, tw] + m[6, tw] + m[10, tw]
                s03 = m[3, tw] + m[7, tw] + m[11, tw]
                s10 = m[4, tw] - m[8, tw] - m[12, tw]
                s11 = m[5, tw] - m[9, tw] - m[13, tw]
                s12 = m[6, tw] - m[10, tw] - m[14, tw]
                s13 = m[7, tw] - m[11, tw] - m[15, tw]
                top[2 * tw] = s00 + s01 + s02 + bo
                top[2 * tw + 1] = s01 - s02 - s03 + bo
                bottom[2 * tw] = s10 + s11 + s12 + bo
                bottom[2 * tw + 1] = s11 - s12 - s13 + bo
            for a in range(min(2, OH - 2 * th)):
                dst, src = y[n, o, 2 * th + a], rows[a]
                for k in range(OW):
                    dst[k] = src[k]


@jit
def _transformed_block(x, ph, pw, TH, TW, u0, block, end, rows, V, M, O):
    """Tile rows [u0, u1) (at most ``block``, not past ``end``) of x, transformed into the front
    of the thread's buffer V; returns u1 and the (16, C, P) and (16, O, P) views of V and M for
    the block's P tiles."""
    C = x.shape[1]
    u1 = min(u0 + block, end)
    P = (u1 - u0) * TW
    Vb = V[: 16 * C * P].reshape(16, C, P)
    _input_transform(x, ph, pw, TH, TW, u0, u1, rows, Vb)
    return u1, Vb, M[: 16 * O * P].reshape(16, O, P)


@pjit
def _conv2d_winograd(x, U, b, ph, pw, block, V, M, rows_in, rows_out, y):
    """y = conv2d(x, w) + b for a 3x3 kernel, stride 1, given U = the transformed weights.

    Work is split by tile rows (N * TH of them), ``block`` tile rows at a time; workspaces per
    thread t: V[t] (16 * C * block*TW), M[t] (16 * O * block*TW), rows_in[t], rows_out[t].
    """
    N = x.shape[0]
    O, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    TH, TW = (OH + 1) // 2, (OW + 1) // 2
    total, T = N * TH, V.shape[0]
    for t in prange(T):
        end = (t + 1) * total // T
        for u0 in range(t * total // T, end, block):
            u1, Vb, Mb = _transformed_block(
                x, ph, pw, TH, TW, u0, block, end, rows_in[t], V[t], M[t], O
            )
            for xi in range(16):
                np.dot(U[xi], Vb[xi], Mb[xi])
            _output_transform(Mb, b, TH, TW, u0, u1, rows_out[t], y)


# Weight gradient. With U = G g G^T and Y = A^T (U * V) A per tile, dL/dU = (A dY A^T) * V
# elementwise, so over all tiles dU[xi] (O x C) = Mg[xi] (O x P) @ V[xi].T (P x C), where
# Mg = A dY A^T, and dL/dg = G^T dU G.


@jit
def _grad_output_transform(gy, TH, TW, u0, u1, rows, Mg):
    """Mg[xi, o, (u-u0)*TW + tw] = (A dy A^T)[xi] for each 2x2 tile dy of gy (0 outside).

    A = [[1,0], [1,1], [1,-1], [0,-1]]. ``rows`` (2, 2*TW) holds the tile row's two gy rows,
    zero-padded to whole tiles.
    """
    O, OH, OW = gy.shape[1], gy.shape[2], gy.shape[3]
    for u in range(u0, u1):
        n, th = u // TH, u % TH
        p0 = (u - u0) * TW
        for o in range(O):
            rows[:, :] = 0
            for a in range(min(2, OH - 2 * th)):
                src, dst = gy[n, o, 2 * th + a], rows[a]
                for k in range(OW):
                    dst[k] = src[k]
            top, bottom = rows[0], rows[1]
            for tw in range(TW):
                y00, y01 = top[2 * tw], top[2 * tw + 1]
                y10, y11 = bottom[2 * tw], bottom[2 * tw + 1]
                p = p0 + tw
                # rows of A dy: (y0), (y0 + y1), (y0 - y1), (-y1); each row (a, b) times A^T
                # gives (a, a + b, a - b, -b)
                _store_row(Mg, 0, o, p, y00, y01)
                _store_row(Mg, 4, o, p, y00 + y10, y01 + y11)
                _store_row(Mg, 8, o, p, y00 - y10, y01 - y11)
                _store_row(Mg, 12, o, p, -y10, -y11)


@jit
def _store_row(Mg, xi, o, p, a, b):
    Mg[xi, o, p] = a
    Mg[xi + 1, o, p] = a + b
    Mg[xi + 2, o, p] = a - b
    Mg[xi + 3, o, p] = -b


@pjit
def _conv2d_winograd_grad_weight(x, gy, ph, pw, block, V, Mg, rows_in, rows_out, tmp, dU):
    """Per-thread partial sums dU[t] (16, O, C) of the transformed weight gradient.

    Same split and workspaces as ``_conv2d_winograd``; tmp[t] is (O, C).
    """
    N = x.shape[0]
    O, OH, OW = gy.shape[1], gy.shape[2], gy.shape[3]
    TH, TW = (OH + 1) // 2, (OW + 1) // 2
    total, T = N * TH, V.shape[0]
    for t in prange(T):
        _fill(dU[t], 0)
        end = (t + 1) * total // T
        for u0 in range(t * total // T, end, block):
            u1, Vb, Mb = _transformed_block(
                x, ph, pw, TH, TW, u0, block, end, rows_in[t], V[t], Mg[t], O
            )
            _grad_output_transform(gy, TH, TW, u0, u1, rows_out[t], Mb)
            for xi in range(16):
                np.dot(Mb[xi], Vb[xi].T, tmp[t])
                _add(dU[t, xi], tmp[t])


@pjit
def _winograd_weights_grad(dU, gw):
    """gw[o, c] = G^T dU[:, o, c] G (4x4 -> 3x3); G^T = [[1,.5,.5,0], [0,.5,-.5,0], [0,.5,.5,1]]."""
    O, C = gw.shape[0], gw.shape[1]
    for o in prange(O):
        for c in range(C):
            for s in range(4):  # G^T D, column s
                d0, d1, d2, d3 = dU[s, o, c], dU[4 + s, o, c], dU[8 + s, o, c], dU[12 + s, o, c]
                e0 = d0 + 0.5 * (d1 + d2)
                e1 = 0.5 * (d1 - d2)
                e2 = 0.5 * (d1 + d2) + d3
                if s == 0:
                    r00, r10, r20 = e0, e1, e2
                elif s == 1:
                    r01, r11, r21 = e0, e1, e2
                elif s == 2:
                    r02, r12, r22 = e0, e1, e2
                else:
                    r03, r13, r23 = e0, e1, e2
            g = gw[o, c]  # (G^T D) G, row by row
            g[0, 0] = r00 + 0.5 * (r01 + r02)
            g[0, 1] = 0.5 * (r01 - r02)
            g[0, 2] = 0.5 * (r01 + r02) + r03
            g[1, 0] = r10 + 0.5 * (r11 + r12)
            g[1, 1] = 0.5 * (r11 - r12)
            g[1, 2] = 0.5 * (r11 + r12) + r13
            g[2, 0] = r20 + 0.5 * (r21 + r22)
            g[2, 1] = 0.5 * (r21 - r22)
            g[2, 2] = 0.5 * (r21 + r22) + r23
