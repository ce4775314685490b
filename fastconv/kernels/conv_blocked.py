"""Direct convolution with register tiles of 16-channel vectors (oneDNN's design, in numba).

Shapes: x (N, C, H, W) NCHW; packed weights wb (G, C, KH, KW, NB*16) for groups of NB blocks
of 16 output channels: ``wb[g, c, kh, kw, 16*b + j] = weight[16*(g*NB + b) + j, c, kh, kw]``
(zero past O; a tap's NB weight vectors are adjacent); y (N, O, OH, OW) NCHW. Output pixel
(oh, ow) and tap (kh, kw) read input ``(oh*sh - ph + kh*dh, ow*sw - pw + kw*dw)``; outside
the input is a zero of the padding.

The forward kernel keeps a tile of ``NB`` blocks of 16 output channels x ``TR x TW`` output
pixels in registers (``simd.tile_fma``): each step broadcasts one input value per pixel and
multiplies it with one weight vector per block, so a 3x3 tile of 14 pixels x 2 blocks does 28
FMAs per 2 weight loads and 14 broadcasts. The input sample is first copied into a zero-padded
workspace so the inner loop has no bounds checks. A finished tile is transposed in registers
and stored as NCHW rows; partial sums between chunks of input channels, and the phases of a
strided input gradient, wait in a blocked buffer (pixel-major, 16 channels contiguous).
Convolutions with few output channels use ``_conv2d_fwd_pixels`` instead (16-pixel vectors).

Every ``prange`` body is one call of a serial kernel (``_item`` suffix): one unit of work
reads as a plain function. The parallel kernels receive their item as an argument, the address
of its compiled code, and call it with ``call(item, (args...))`` (``fastconv._kernel_pointer``):
called directly, the item would be compiled again inside every parallel kernel that calls it,
which doubled the engine's compile time. The arguments must have exactly the types the item
was compiled for, so the loops pass int64 indices (prange's are unsigned).

Tile shapes are compile-time constants carried by the types of dummy tuples ``(0,) * k``:
``blocks`` (NB), ``pixels`` (TR*TW) and ``cols`` (TW); ``_conv_blocked.py`` chooses them per
shape. ``xstep`` is ``(0,) * sw`` (the column stride as a constant) or ``sw`` itself.
"""

import numba
import numpy as np
from numba import prange

from fastconv._config import jit, pjit
from fastconv._kernel_pointer import call
from fastconv.kernels.simd import (
    tile_fma,
    tile_load,
    tile_repeat,
    tile_store,
    tile_store_nchw,
    tile_store_rows,
    transpose16,
    vadd,
    vload,
    vload_part,
    vload_tuple,
    vsplat,
    vstore,
    vstore_part,
    vzero,
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
    item, x, wb, bb, pad, geo, phases, out, gchunk, cchunk, blocks, pixels, cols, xstep, scratch
):
    """out = conv2d(x, weight) + bias, or a transposed convolution (an input gradient) as
    phases: ``item`` is ``_conv2d_fwd_item``. prange over (sample, chunk of ``gchunk`` groups
    of NB blocks): the iteration pads its sample once and computes all its groups' channels.
    ``scratch`` (threads, buffer + padded sample): one row per thread of numba's pool, which
    each iteration uses for its temporaries (no allocation per iteration)."""
    G = wb.shape[0]
    nchunks = (G + gchunk - 1) // gchunk
    for it in prange(x.shape[0] * nchunks):
        n, g0 = np.int64(it) // nchunks, np.int64(it) % nchunks * gchunk
        call(item, (
            x, wb, bb, pad, geo, phases, out, n, g0, min(G, g0 + gchunk), cchunk,
            blocks, pixels, cols, xstep, scratch[numba.get_thread_id()],
        ))  # fmt: skip


@jit
def _conv2d_fwd_item(
    x, wb, bb, pad, geo, phases, out, n, g0, g1, cchunk, blocks, pixels, cols, xstep, scratch
):
    """Sample n, groups [g0, g1) of NB blocks of output channels.

    The sample is zero-padded by ``pad`` (top, left) into xs (C, Hs, Ws). Each phase
    (a row of ``phases``: Mh, Mw, ih0, iw0, kh0, nkh, kw0, nkw, oh0, ow0) computes Mh x Mw
    pixels: pixel (m, m') and tap (jh, jw) read ``xs[c, m*sh + jh*dh + ih0, m'*sw + jw*dw + iw0]``
    times weight tap ``(kh0 + jh*tsh, kw0 + jw*tsw)``, and land in the blocked buffer
    (NB, Hb, Wb, 16) at pixel ``(m*osh + oh0, m'*osw + ow0)``. The buffer's region starting at
    (r0, c0) is then ``out[n]``. A forward convolution is one phase (all taps, ts = os = 1); the
    input gradient of a stride-s convolution is s*s phases of a stride-1 convolution with the
    flipped kernel, one per output residue mod s, each with the taps of that residue (ts = os = s).
    Tiles at the edges compute whole tiles: the buffer and xs cover them, and their extra
    pixels are never copied out.
    """
    ph, pw = pad
    sh, sw, dh, dw, tsh, tsw, osh, osw, Hs, Ws, Hb, Wb, r0, c0 = geo
    C = x.shape[1]
    O, OH, OW = out.shape[1], out.shape[2], out.shape[3]
    KH, KW = wb.shape[2], wb.shape[3]
    NB, TW = len(blocks), len(cols)
    TR = len(pixels) // TW
    Pb = Hb * Wb
    NB16 = NB * 16  # a tap's weights: NB blocks of 16 output channels, side by side
    # The thread's scratch: the blocked buffer first (it starts on a cache line), then the
    # padded sample with slack for the edge tiles (``fwd_scratch_size``).
    buf = scratch[: NB * Pb * 16]
    xs = scratch[NB * Pb * 16 : NB * Pb * 16 + C * Hs * Ws + TW * sw + 16]
    _pad_sample(x, n, ph, pw, xs, Hs, Ws)
    # One phase writing whole rows of out: the final tiles go straight to NCHW rows (transposed
    # in registers); otherwise they wait in the blocked buffer for a 16x16 transpose pass.
    direct = phases.shape[0] == 1 and osh == 1 and osw == 1 and r0 == 0 and c0 == 0
    for g in range(g0, g1):
        bias = vload_tuple(bb, g * NB16, 16, blocks)  # the first chunk's tiles start here
        w0 = g * C * KH * KW * NB16
        # Input channels in chunks of ``cchunk`` so the chunk's weights stay in L1 while every
        # tile reads them; the tiles' partial sums wait in ``buf`` between chunks (loading and
        # storing a tile once per chunk is ~1% of its FMAs).
        for ci in range(0, C, cchunk):
            for k in range(phases.shape[0]):
                Mh, Mw, ih0, iw0, kh0, nkh, kw0, nkw, oh0, ow0 = phases[k]
                for th in range(0, Mh, TR):
                    for tw in range(0, Mw, TW):
                        at = ((th * osh + oh0) * Wb + tw * osw + ow0) * 16
                        if ci == 0:
                            acc = tile_repeat(bias, pixels)
                        else:
                            acc = tile_load(
                                buf, at, osw * 16, osh * Wb * 16, Pb * 16, blocks, pixels, cols
                            )
                        # Channels innermost: a long loop (the taps' loops are 1-5 long
                        # and their exits cost ~20% of the FMA rate when innermost).
                        for jh in range(nkh):
                            for jw in range(nkw):
                                xi = (ci * Hs + th * sh + jh * dh + ih0) * Ws + tw * sw + iw0
                                xi += jw * dw
                                wi = w0 + ((ci * KH + kh0 + jh * tsh) * KW + kw0 + jw * tsw) * NB16
                                for _ in range(ci, min(C, ci + cchunk)):
                                    w = vload_tuple(wb, wi, 16, blocks)
                                    acc = tile_fma(acc, xs, xi, xstep, sh * Ws, w, cols)
                                    xi += Hs * Ws
                                    wi += KH * KW * NB16
                        if direct and ci + cchunk >= C:  # final: NCHW, no buffer
                            at = ((n * O + g * NB * 16) * OH + th) * OW + tw
                            nr, nc = min(TR, OH - th), min(TW, OW - tw)
                            nch = O - g * NB * 16
                            tile_store_nchw(out, at, OH * OW, OW, acc, blocks, cols, nch, nr, nc)
                        else:
                            tile_store(buf, at, osw * 16, osh * Wb * 16, Pb * 16, acc, blocks, cols)
        for b in range(NB if not direct else 0):
            o0 = (g * NB + b) * 16
            if o0 < O:
                block = buf[b * Pb * 16 : (b + 1) * Pb * 16]
                if r0 != 0 or c0 != 0 or Wb != OW:
                    _compact_region(block, r0, c0, OH, OW, Wb)
                _blocked_to_nchw(block, n, o0, out)


@jit
def _compact_region(block, r0, c0, OH, OW, Wb):
    """Pixel (r0 + oh, c0 + ow) of a (., Wb) grid of 16-float pixels -> pixel oh*OW + ow, in
    place (front to back is safe: every destination lies at or before its source)."""
    for oh in range(OH):
        src = ((r0 + oh) * Wb + c0) * 16
        for i in range(0, OW * 16, 16):
            vstore(block, oh * OW * 16 + i, vload(block, src + i))


@jit
def _nchw_to_blocked(g, n, gb, bias_part, sums):
    """gb[ob, p*16 + j] = g[n, 16*ob + j, p] (zero for channels >= O), gb (OB, OH*OW*16);
    bias_part[o] = sum of g[n, o] over pixels (``sums``: 16 floats of scratch). 16x16
    transposes, scalars at the edges."""
    O, OW = g.shape[1], g.shape[3]
    P = g.shape[2] * OW
    for ob in range(gb.shape[0]):
        dst = gb[ob]
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
        # The bias gradient from the blocks: 16 channels per vector add, four running sums.
        s0 = s1 = s2 = s3 = vzero()
        p = 0
        while p + 4 <= P:
            s0 = vadd(s0, vload(dst, p * 16))
            s1 = vadd(s1, vload(dst, p * 16 + 16))
            s2 = vadd(s2, vload(dst, p * 16 + 32))
            s3 = vadd(s3, vload(dst, p * 16 + 48))
            p += 4
        for q in range(p, P):
            s0 = vadd(s0, vload(dst, q * 16))
        vstore(sums, 0, vadd(vadd(s0, s1), vadd(s2, s3)))
        for j in range(nj):
            bias_part[o0 + j] = sums[j]


@pjit
def _conv2d_bwd_weight_blocked(
    prepare, item, x, ph, pw, g, xs, gb, bias_part, sums, Hs, Ws, sh, sw, dh, wstep, chunk, cgroup,
    part, blocks, taps, cols,
):  # fmt: skip
    """Partial weight and bias gradients, one per chunk of ``chunk`` samples:
    ``part[k, ob, c, kh, kw, j] = sum over samples n of chunk k and output pixels (oh, ow) of
    g[n, 16*ob + j, oh, ow] * x[n, c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw]``,
    ``bias_part[n, o]`` = sum over pixels of g[n, o].

    First, per sample (``prepare`` is ``_weight_grad_prepare``): xs[n] (C*Hs*Ws + slack) = x[n]
    zero-padded, gb[n] (OB, P*16) = g[n] in 16-channel blocks. Then the products (``item`` is
    ``_weight_grad_item``): part
    (K, OB, C, KHt, KW, 16), KHt a multiple of TRK. The register tile is NB blocks x TRK kernel
    rows x KW taps of one input channel (``taps`` has TRK*KW entries, ``cols`` KW): each output
    pixel loads NB gradient vectors and broadcasts TRK*KW inputs. prange over (chunk, group of
    NB blocks, group of ``cgroup`` channels). The chunks depend on the shape only, so the sum
    over chunks (``_sum_chunks``) is the same at any thread count. One function for both
    passes: each parallel kernel costs its own compile time.
    """
    for n in prange(x.shape[0]):
        call(prepare, (x, np.int64(n), ph, pw, g, xs, gb, bias_part, sums, Hs, Ws))
    G, C = part.shape[1] // len(blocks), part.shape[2]
    CG = (C + cgroup - 1) // cgroup
    OW = g.shape[3]
    for it in prange(part.shape[0] * G * CG):
        k, rest = np.int64(it) // (G * CG), np.int64(it) % (G * CG)
        grp, c0 = rest // CG, rest % CG * cgroup
        call(item, (
            xs, gb, Hs, Ws, sh, sw, dh, wstep, OW, chunk, part, k, grp, c0, min(C, c0 + cgroup),
            blocks, taps, cols,
        ))  # fmt: skip


@jit
def _weight_grad_prepare(x, n, ph, pw, g, xs, gb, bias_part, sums, Hs, Ws):
    """Sample n: xs[n] = x[n] zero-padded (``_pad_sample``), gb[n] = g[n] in 16-channel blocks
    and bias_part[n] its sums over pixels (``_nchw_to_blocked``)."""
    _pad_sample(x, n, ph, pw, xs[n], Hs, Ws)
    _nchw_to_blocked(g, n, gb[n], bias_part[n], sums[n])


@jit
def _weight_grad_item(
    xs, gb, Hs, Ws, sh, sw, dh, wstep, OW, chunk, part, k, g, c0, c1, blocks, taps, cols
):
    """Chunk k of samples, group g of NB blocks, input channels [c0, c1). ``wstep`` is the
    column dilation dw, like the forward's ``xstep`` a dummy tuple when small: with a runtime
    step each of the tile's taps needed its own address register, and the spilled addresses
    were reloaded from the stack in the inner loop (fm_conv2's weight gradient ran 8% slower).

    Rows of output pixels in blocks of at least 128 pixels (16 KB of gradient vectors, in L1
    while every channel's tiles, kept in ``part`` between blocks, pass over them; 64 pixels
    measured ~10% slower on fm_conv2). With one channel per pass over all pixels, res_56
    re-read 400 KB of gradient per channel and ran at half the FMA rate."""
    OB, C, KHt, KW = part.shape[1], part.shape[2], part.shape[3], part.shape[4]
    P = gb.shape[2] // 16
    OH = P // OW
    NB, TRK = len(blocks), len(taps) // len(cols)
    RB = max(1, 128 // OW)  # output rows per block
    bstep = C * KHt * KW * 16  # part: from one block to the next
    zero = tile_repeat(vzeros(blocks), taps)
    for c in range(c0, c1):
        for kh0 in range(0, KHt, TRK):
            at = (((k * OB + g * NB) * C + c) * KHt + kh0) * KW * 16
            tile_store(part, at, 16, KW * 16, bstep, zero, blocks, cols)
    for n in range(k * chunk, min(gb.shape[0], (k + 1) * chunk)):
        grad, x = gb[n], xs[n]
        for oh0 in range(0, OH, RB):
            for c in range(c0, c1):
                for kh0 in range(0, KHt, TRK):
                    at = (((k * OB + g * NB) * C + c) * KHt + kh0) * KW * 16
                    acc = tile_load(part, at, 16, KW * 16, bstep, blocks, taps, cols)
                    for oh in range(oh0, min(OH, oh0 + RB)):
                        gi = (g * NB * P + oh * OW) * 16
                        xi = (c * Hs + oh * sh + kh0 * dh) * Ws
                        for ow in range(OW):
                            gv = vload_tuple(grad, gi + ow * 16, P * 16, blocks)
                            acc = tile_fma(acc, x, xi + ow * sw, wstep, dh * Ws, gv, cols)
                    tile_store(part, at, 16, KW * 16, bstep, acc, blocks, cols)


@jit
def _sum_chunks(part, bias_part, grad_w, grad_b):
    """grad_w[o, c, kh, kw] = sum over k (in order) of part[k, o // 16, c, kh, kw, o % 16]
    (part may have more kernel rows than grad_w: whole tiles of rows); grad_b[o] = sum over
    n (in order) of bias_part[n, o]. Serial: small next to the products."""
    K = part.shape[0]
    O, C, KH, KW = grad_w.shape
    for o in range(O):
        ob, j = o // 16, o % 16
        for c in range(C):
            for kh in range(KH):
                for kw in range(KW):
                    s = np.float32(0.0)  # no chunks when there are no samples
                    for k in range(K):
                        s += part[k, ob, c, kh, kw, j]
                    grad_w[o, c, kh, kw] = s
        t = 0.0
        for n in range(bias_part.shape[0]):
            t += bias_part[n, o]
        grad_b[o] = t


@jit
def _pixels_padded_size(OH, OW, TR, nkh, nkw, dh, dw):
    """(Hs, Ws) of the padded sample the pixel kernel reads: whole tiles of TR rows and 16
    columns, plus the taps' reach."""
    return (OH + TR - 1) // TR * TR + (nkh - 1) * dh, (OW + 15) // 16 * 16 + (nkw - 1) * dw


@pjit
def _conv2d_fwd_pixels(item, x, w, bias, pad, taps, out, rows, scratch):
    """out = a stride-1 convolution of x with few output channels, vectorised over pixels:
    ``item`` is ``_conv2d_fwd_pixels_item``. prange over samples; ``scratch`` (threads, padded
    sample size): one row per thread of numba's pool for the padded sample."""
    for n in prange(x.shape[0]):
        call(item, (x, w, bias, pad, taps, out, np.int64(n), rows, scratch[numba.get_thread_id()]))


@jit
def _conv2d_fwd_pixels_item(x, w, bias, pad, taps, out, n, rows, scratch):
    """Sample n of a stride-1 convolution, 16 output pixels of a row per vector.

    For few output channels (an input gradient with C_in = 1) the 16-channel blocks would be
    mostly zeros. Here a tile is ``len(rows)`` output rows x 16 columns of one output channel:
    each step broadcasts one weight and loads one 16-pixel input vector per row. ``taps``
    (kh0, nkh, tsh, kw0, nkw, tsw, dh, dw): tap (jh, jw) uses weight (kh0 + jh*tsh,
    kw0 + jw*tsw) and reads the padded input at (oh + jh*dh, ow + jw*dw). w (O, C, KH, KW),
    bias (O,), out (N, O, OH, OW); edge tiles' extra rows and lanes are not stored.
    """
    ph, pw = pad
    kh0, nkh, tsh, kw0, nkw, tsw, dh, dw = taps
    C, KH, KW = w.shape[1], w.shape[2], w.shape[3]
    O, OH, OW = out.shape[1], out.shape[2], out.shape[3]
    TR = len(rows)
    Hs, Ws = _pixels_padded_size(OH, OW, TR, nkh, nkw, dh, dw)
    xs = scratch[: C * Hs * Ws + 16]
    _pad_sample(x, n, ph, pw, xs, Hs, Ws)
    wflat = w.reshape(w.size)
    for o in range(O):
        start = vsplat(bias[o])
        for th in range(0, OH, TR):
            for v0 in range(0, OW, 16):
                acc = tile_repeat((start,), rows)
                for c in range(C):
                    for jh in range(nkh):
                        xi = (c * Hs + th + jh * dh) * Ws + v0
                        wi = ((o * C + c) * KH + kh0 + jh * tsh) * KW + kw0
                        for jw in range(nkw):
                            xv = vload_tuple(xs, xi + jw * dw, Ws, rows)
                            acc = tile_fma(acc, wflat, wi + jw * tsw, 0, 0, xv, (0,))
                at = ((n * O + o) * OH + th) * OW + v0
                tile_store_rows(out, at, OW, acc, min(16, OW - v0), min(TR, OH - th))
