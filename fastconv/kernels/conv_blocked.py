"""Direct convolution with register tiles of 16-channel vectors (oneDNN's design, in numba).

Shapes: x (N, C, H, W) NCHW; packed weights wb (OB, C, KH, KW, 16) with
``wb[ob, c, kh, kw, j] = weight[16*ob + j, c, kh, kw]`` (zero where ``16*ob + j >= O``);
y (N, O, OH, OW) NCHW. Output pixel (oh, ow) and tap (kh, kw) read input
``(oh*sh - ph + kh*dh, ow*sw - pw + kw*dw)``; outside the input is a zero of the padding.

The forward kernel keeps a tile of ``NB`` blocks of 16 output channels x ``TR x TW`` output
pixels in registers (``simd.tile_fma``): each step broadcasts one input value per pixel and
multiplies it with one weight vector per block, so a 3x3 tile of 14 pixels x 2 blocks does 28
FMAs per 2 weight loads and 14 broadcasts. The input sample is first copied into a zero-padded
workspace so the inner loop has no bounds checks; the tile's results go to a blocked buffer
(pixel-major, 16 channels contiguous) and are transposed to NCHW 16x16 at a time.

Tile shapes are compile-time constants carried by the types of dummy tuples ``(0,) * k``:
``blocks`` (NB), ``pixels`` (TR*TW) and ``cols`` (TW); ``_conv_blocked.py`` chooses them per
shape. ``xstep`` is ``(0,) * sw`` (the column stride as a constant) or ``sw`` itself.
"""

import numpy as np
from numba import prange

from fastconv._config import jit, pjit
from fastconv.kernels.simd import (
    tile_fma,
    tile_load,
    tile_repeat,
    tile_store,
    transpose16,
    vload_part,
    vload_tuple,
    vstore_part,
    vzeros,
)


@jit
def _pad_sample(x, n, ph, pw, xs, Hs, Ws):
    """xs[(c*Hs + r)*Ws + q] = x[n, c, r - ph, q - pw] (0 outside x); zeros after the planes.

    ``ph``/``pw`` may be negative (the window starts inside x) or leave rows and columns of x
    unused at the end (bottom/right padding is implied by Hs, Ws). Rows are copied with masked
    16-float loads and stores: numba's scalar loop over a short row ran at ~1 element/cycle."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    xs[:] = 0.0
    r0, r1 = max(0, ph), min(Hs, H + ph)  # rows of xs that hold input
    q0, q1 = max(0, pw), min(Ws, W + pw)  # columns
    for c in range(C):
        for r in range(r0, r1):
            dst = (c * Hs + r) * Ws + q0
            src = ((n * C + c) * H + r - ph) * W + q0 - pw
            for k in range(0, q1 - q0, 16):
                m = min(16, q1 - q0 - k)
                vstore_part(xs, dst + k, vload_part(x, src + k, m), m)


@jit
def _blocked_to_nchw(buf, n, o0, out):
    """out[n, o0 + j, p] = buf[p*16 + j] for the valid channels j < min(16, O - o0), every
    pixel p (flat over OH x OW): 16x16 transposes, scalars for the edges."""
    O, OH, OW = out.shape[1], out.shape[2], out.shape[3]
    P = OH * OW
    nj = min(16, O - o0)
    p0 = 0
    base = (n * O + o0) * P
    if nj == 16:
        while p0 + 16 <= P:
            transpose16(buf, p0 * 16, 16, out, base + p0, P)
            p0 += 16
    for j in range(nj):
        oh, ow = p0 // OW, p0 % OW
        for p in range(p0, P):
            out[n, o0 + j, oh, ow] = buf[p * 16 + j]
            ow += 1
            if ow == OW:
                oh, ow = oh + 1, 0


@pjit
def _conv2d_fwd_blocked(
    x, wb, bb, ph, pw, sh, sw, dh, dw, out, gchunk, cchunk, blocks, pixels, cols, xstep
):
    """out = conv2d(x, weight) + bias; wb packed as above with OB a multiple of NB blocks,
    bb (OB*16,) the bias (zeros for none). prange over (sample, chunk of ``gchunk`` groups of NB
    blocks): the iteration pads its sample once and computes all its groups' channels."""
    N, C = x.shape[0], x.shape[1]
    O, OH, OW = out.shape[1], out.shape[2], out.shape[3]
    OB, KH, KW = wb.shape[0], wb.shape[2], wb.shape[3]
    NB, TW = len(blocks), len(cols)
    TR = len(pixels) // TW
    G = OB // NB
    nchunks = (G + gchunk - 1) // gchunk
    # Workspace extent: every row and column any tile reads, edge tiles included (their extra
    # pixels read real or zero data and are never stored). A tile past the last column reads
    # into the next row, and after the last plane into the zeroed slack.
    OHt = (OH + TR - 1) // TR * TR
    Hs = (OHt - 1) * sh + (KH - 1) * dh + 1
    Ws = (OW - 1) * sw + (KW - 1) * dw + 1
    slack = TW * sw + 16
    P = OH * OW
    wstep = C * KH * KW * 16  # from one block of weights to the next
    for it in prange(N * nchunks):
        n, chunk = it // nchunks, it % nchunks
        xs = np.empty(C * Hs * Ws + slack, dtype=np.float32)
        _pad_sample(x, n, ph, pw, xs, Hs, Ws)
        buf = np.empty(NB * P * 16, dtype=np.float32)  # (NB, OH, OW, 16)
        for g in range(chunk * gchunk, min(G, (chunk + 1) * gchunk)):
            bias = vload_tuple(bb, g * NB * 16, 16, blocks)
            w0 = g * NB * wstep
            # Input channels in chunks of ``cchunk`` so the chunk's weights stay in L1 while
            # every tile reads them; the tiles' partial sums wait in ``buf`` between chunks.
            for c0 in range(0, C, cchunk):
                for th in range(0, OH, TR):
                    for tw in range(0, OW, TW):
                        nr, nc = min(TR, OH - th), min(TW, OW - tw)
                        at = (th * OW + tw) * 16
                        if c0 == 0:
                            acc = tile_repeat(bias, pixels)
                        else:
                            acc = tile_load(
                                buf, at, 16, OW * 16, P * 16, blocks, pixels, cols, nr, nc
                            )
                        for c in range(c0, min(C, c0 + cchunk)):
                            for kh in range(KH):
                                xrow = (c * Hs + th * sh + kh * dh) * Ws + tw * sw
                                wrow = w0 + (c * KH + kh) * KW * 16
                                for kw in range(KW):
                                    w = vload_tuple(wb, wrow + kw * 16, wstep, blocks)
                                    acc = tile_fma(acc, xs, xrow + kw * dw, xstep, sh * Ws, w, cols)
                        tile_store(buf, at, 16, OW * 16, P * 16, acc, blocks, cols, nr, nc)
            for b in range(NB):
                o0 = (g * NB + b) * 16
                if o0 < O:
                    _blocked_to_nchw(buf[b * P * 16 : (b + 1) * P * 16], n, o0, out)


@pjit
def _pad_batch(x, ph, pw, xs, Hs, Ws):
    """xs[n] = the zero-padded sample n, as ``_pad_sample`` (xs (N, C*Hs*Ws + slack))."""
    for n in prange(x.shape[0]):
        _pad_sample(x, n, ph, pw, xs[n], Hs, Ws)


@pjit
def _nchw_to_blocked(g, gb):
    """gb[n, ob, p*16 + j] = g[n, 16*ob + j, p] (zero for channels >= O); g (N, O, OH, OW)
    and gb (N, OB, OH*OW*16). 16x16 transposes, scalars for the edges."""
    N, O, OW = g.shape[0], g.shape[1], g.shape[3]
    P = g.shape[2] * OW
    OB = gb.shape[1]
    for it in prange(N * OB):
        n, ob = it // OB, it % OB
        dst = gb[n, ob]
        o0 = ob * 16
        nj = min(16, O - o0)
        p0 = 0
        if nj == 16:
            while p0 + 16 <= P:
                transpose16(g, (n * O + o0) * P + p0, P, dst, p0 * 16, 16)
                p0 += 16
        else:
            dst[:] = 0.0
        for j in range(nj):
            oh, ow = p0 // OW, p0 % OW
            for p in range(p0, P):
                dst[p * 16 + j] = g[n, o0 + j, oh, ow]
                ow += 1
                if ow == OW:
                    oh, ow = oh + 1, 0


@pjit
def _conv2d_bwd_weight_blocked(xs, gb, Hs, Ws, sh, sw, dh, dw, OW, chunk, part, blocks, taps, cols):
    """Partial weight gradients, one per chunk of ``chunk`` samples:
    ``part[k, ob, c, kh, kw, j] = sum over samples n of chunk k and output pixels (oh, ow) of
    gb[n, ob, (oh*OW + ow)*16 + j] * x[n, c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw]``.

    xs (N, C*Hs*Ws + slack) the padded input (``_pad_batch``), gb (N, OB, P*16) the output
    gradient in blocks (``_nchw_to_blocked``), part (K, OB, C, KH, KW, 16). The register tile is
    NB blocks x TRK kernel rows x KW taps of one input channel (``taps`` has TRK*KW entries,
    ``cols`` KW): each output pixel loads NB gradient vectors and broadcasts TRK*KW inputs. The
    chunks depend on the shape only, so the sum over chunks (``_sum_chunks``) is the same at
    any thread count.
    """
    N = gb.shape[0]
    OB, C, KH, KW = part.shape[1], part.shape[2], part.shape[3], part.shape[4]
    P = gb.shape[2] // 16
    OH = P // OW
    NB, TRK = len(blocks), len(taps) // len(cols)
    G, K = OB // NB, part.shape[0]
    R = (KH + TRK - 1) // TRK  # tiles of kernel rows
    for it in prange(K * G * C * R):
        k, rest = it // (G * C * R), it % (G * C * R)
        g, rest = rest // (C * R), rest % (C * R)
        c, kh0 = rest // R, rest % R * TRK
        acc = tile_repeat(vzeros(blocks), taps)
        for n in range(k * chunk, min(N, (k + 1) * chunk)):
            grad, x = gb[n], xs[n]
            for oh in range(OH):
                for ow in range(OW):
                    gv = vload_tuple(grad, (g * NB * P + oh * OW + ow) * 16, P * 16, blocks)
                    at = (c * Hs + oh * sh + kh0 * dh) * Ws + ow * sw
                    acc = tile_fma(acc, x, at, dw, dh * Ws, gv, cols)
        at = (((k * OB + g * NB) * C + c) * KH + kh0) * KW * 16
        nr = min(TRK, KH - kh0)
        tile_store(part, at, 16, KW * 16, C * KH * KW * 16, acc, blocks, cols, nr, KW)


@pjit
def _sum_chunks(part, O, grad_w):
    """grad_w[o, c, kh, kw] = sum over k (in order) of part[k, o // 16, c, kh, kw, o % 16]."""
    K, C, KH, KW = part.shape[0], part.shape[2], part.shape[3], part.shape[4]
    for o in prange(O):
        ob, j = o // 16, o % 16
        for c in range(C):
            for kh in range(KH):
                for kw in range(KW):
                    s = part[0, ob, c, kh, kw, j]
                    for k in range(1, K):
                        s += part[k, ob, c, kh, kw, j]
                    grad_w[o, c, kh, kw] = s
