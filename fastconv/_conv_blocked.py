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

import functools
from typing import NamedTuple

import llvmlite.binding as llvm
import numba
import numpy as np

from fastconv._config import tuning
from fastconv._conv_plan import workspace
from fastconv._kernel_pointer import pointer, typed_flags
from fastconv._threads import get_num_threads
from fastconv.kernels.conv_blocked import (
    _conv2d_bwd_weight_blocked,
    _conv2d_fwd_blocked,
    _conv2d_fwd_item,
    _conv2d_fwd_pixels,
    _conv2d_fwd_pixels_item,
    _pixels_padded_size,
    _sum_chunks,
    _weight_grad_item,
    _weight_grad_prepare,
)


def _target_has_avx512():
    """Whether numba compiles for AVX-512 (its target: the host, or NUMBA_CPU_FEATURES)."""
    features = numba.config.CPU_FEATURES
    if features is None:
        features = llvm.get_host_cpu_features().flatten()
    return "+avx512f" in features.split(",")


# Register budget. AVX-512: 32 zmm registers hold the tile's accumulators plus the NB weight
# vectors and one broadcast value. fm_conv2 forward on one core (FMA peak measured 215-227
# GFLOP/s), by tile (blocks x rows x columns): 2x1x14 150-160 GFLOP/s, 2x2x7 145, 1x2x14 130,
# 4x1x7 113, 3x1x8 83. One block of 14 pixels still hides the FMA latency (14 chains >= 4
# cycles x 2 FMA ports). Without AVX-512 each 16-float vector takes two of the 16 ymm
# registers: the same tile spills (38 GFLOP/s with AVX2 only), 1x1x7 and 1x1x6 reach 78.
_AVX512 = _target_has_avx512()
if _AVX512:
    _NB = 2  # blocks of 16 output channels per tile, when there are that many
    # (rows, columns) of output pixels per tile; (1, 12) fits rows of 12 or 24 outputs without
    # computing discarded columns (seed_k5s2 forward, 12x12: 67 -> 64 us, one process,
    # alternating with 14-pixel tiles).
    _TILES = ((1, 14), (2, 7), (1, 12))
    _PIXEL_ROWS = (0,) * 14  # pixel kernel: rows of 16 output pixels per tile
    _MAX_TAPS = 28  # weight-gradient tile: blocks x taps accumulators
else:
    _NB, _TILES, _PIXEL_ROWS, _MAX_TAPS = 1, ((1, 7), (1, 6)), (0,) * 6, 7
# The scalar tuning constants (weight chunk, pixel-kernel channels, weight-gradient chunks)
# are fields of ``fastconv._config.Tuning``, with their measurements.
_SCRATCH_ROWS = numba.config.NUMBA_NUM_THREADS  # one per thread of numba's pool


def _scratch_spec(size):
    """The ``workspace`` spec of a kernel's per-thread scratch: ``size`` floats a row, rounded
    to whole cache lines so every row starts on one."""
    return ((_SCRATCH_ROWS, -(-size // 16) * 16), np.float32)


def supports(x_shape, weight_shape, stride, padding, dilation, groups, dtype):
    """Whether this engine computes ``conv2d`` (forward and backward) for these arguments.

    float32, groups 1, any kernel size, stride, dilation and padding; the input gradient
    needs stride 1 or dilation 1 (``supports_input_grad``). float64 stays on the GEMM and
    Winograd paths.
    """
    del x_shape, weight_shape, stride, padding, dilation
    return np.dtype(dtype) == np.float32 and groups == 1


def _blocks(n_channels):
    return -(-n_channels // 16)


def _forward_tile(O, OH, OW):
    """(NB, TR, TW): _NB blocks of 16 output channels when there are that many, the pixel
    tile that computes the fewest discarded edge pixels."""
    nb = min(_NB, _blocks(O))

    def computed(tile):
        tr, tw = tile
        return -(-OH // tr) * tr * (-(-OW // tw) * tw)

    tr, tw = min(_TILES, key=computed)  # ties keep the first (whole rows)
    return nb, tr, tw


def _pack_weights(weight, packed):
    """packed (G, C, KH, KW, nb*16) = weight (O, C, KH, KW) in groups of nb blocks of 16
    output channels, channels innermost; zeros past O."""
    O = weight.shape[0]
    G, group = packed.shape[0], packed.shape[4]
    by_group = packed.transpose(0, 4, 1, 2, 3)  # (G, nb*16, C, KH, KW), a view
    full = O // group
    by_group[:full] = weight[: full * group].reshape(full, group, *weight.shape[1:])
    if full < G:
        by_group[full, : O - full * group] = weight[full * group :]
        by_group[full, O - full * group :] = 0.0


def _step(s):
    """A stride the kernels see as a constant (dummy tuple) when it is small, else an int."""
    return (0,) * s if s <= 2 else s


def _run(x, weight, bias, pad, geo, phases, out, tile, xstep):
    """Pack ``weight`` and call the blocked kernel: bias (O,) or None, geo/phases as in
    ``_conv2d_fwd_item`` (phases: a tuple of tuples). Temporaries come from the planner's one
    per-thread workspace."""
    O = out.shape[1]
    plan = _run_plan(
        out.shape[:2], weight.shape[1:], geo, phases, tile, get_num_threads(),
        tuning().blocked_weight_chunk_bytes,
    )  # fmt: skip
    wb, bb, scratch = workspace(*plan.specs)
    _pack_weights(weight, wb)
    bb[:] = 0.0
    if bias is not None:
        bb[:O] = bias
    args = x, wb, bb, pad, geo, plan.phases, out, plan.gchunk, plan.cchunk
    tiles = (*plan.tiles, xstep)
    item = pointer(
        _conv2d_fwd_item, (tile, xstep, typed_flags(x, out)),  # these fix every argument type
        lambda: (x, wb, bb, pad, geo, plan.phases, out, 0, 0, 0, plan.cchunk, *tiles, scratch[0]),
    )  # fmt: skip
    _conv2d_fwd_blocked(item, *args, *tiles, scratch)
    return out


class _RunPlan(NamedTuple):
    specs: tuple  # the workspace specs: packed weights, bias, per-thread scratch
    gchunk: int
    cchunk: int
    phases: np.ndarray  # read-only: the plan is shared by every call of its shape
    tiles: tuple  # the dummy tuples of the tile shape: blocks, pixels, columns


@functools.lru_cache(maxsize=256)
def _run_plan(NO, CKK, geo, phases, tile, threads, chunk_bytes):
    """What ``_run`` derives from the shapes alone, once per shape (about 10 µs a call)."""
    N, O = NO
    C, KH, KW = CKK
    nb, tr, tw = tile
    sh, sw, dh, dw, tsh, tsw, osh, osw, Hs, Ws, Hb, Wb, r0, c0 = geo
    groups = -(-_blocks(O) // nb)
    specs = (
        ((groups, C, KH, KW, nb * 16), np.float32),
        ((groups * nb * 16,), np.float32),
        _scratch_spec(nb * Hb * Wb * 16 + C * Hs * Ws + tw * sw + 16),
    )
    # One iteration per (sample, all blocks) pads each sample once; with few samples, one per
    # (sample, group of blocks) keeps both threads busy. No effect on the results.
    gchunk = groups if N >= 4 * threads else 1
    taps = max(p[5] * p[7] for p in phases)  # weight taps per channel of the largest phase
    cchunk = max(1, chunk_bytes // (nb * max(1, taps) * 64))
    table = np.array(phases, dtype=np.int64).reshape(-1, 10)
    table.flags.writeable = False
    tiles = (0,) * nb, (0,) * (tr * tw), (0,) * tw
    return _RunPlan(specs, gchunk, cchunk, table, tiles)


def _pixels(x, weight, bias, pad, taps, out):
    """Stride-1 convolution vectorised over pixels; taps as in ``_conv2d_fwd_pixels_item``."""
    kh0, nkh, tsh, kw0, nkw, tsw, dh, dw = taps
    Hs, Ws = _pixels_padded_size(*out.shape[2:], len(_PIXEL_ROWS), nkh, nkw, dh, dw)
    b, scratch = workspace(((out.shape[1],), np.float32), _scratch_spec(x.shape[1] * Hs * Ws + 16))
    b[:] = 0.0 if bias is None else bias
    args = x, weight, b, tuple(pad), taps, out
    item = pointer(
        _conv2d_fwd_pixels_item, typed_flags(x, weight, out),
        lambda: (*args, 0, _PIXEL_ROWS, scratch[0]),
    )  # fmt: skip
    _conv2d_fwd_pixels(item, *args, _PIXEL_ROWS, scratch)
    return out


def conv2d_forward(x, weight, bias, stride, padding_before, dilation, out):
    """out = conv2d(x, weight, bias); returns ``out``.

    x (N, C, H, W), weight (O, C, KH, KW), bias (O,) or None, out (N, O, OH, OW): C-contiguous
    float32. stride, padding_before (top, left), dilation: (h, w) int pairs; the output size
    comes from ``out.shape`` (so the bottom/right padding is implied).
    """
    O, OH, OW = out.shape[1:]
    plan = _forward_plan(
        O, OH, OW, *weight.shape[2:], tuple(stride), tuple(dilation),
        tuning().blocked_pixel_channels,
    )  # fmt: skip
    if plan[0] == "pixels":
        return _pixels(x, weight, bias, padding_before, plan[1], out)
    _, geo, phases, tile, xstep = plan
    return _run(x, weight, bias, tuple(padding_before), geo, phases, out, tile, xstep)


@functools.lru_cache(maxsize=256)
def _forward_plan(O, OH, OW, KH, KW, stride, dilation, pixel_channels):
    """``("pixels", taps)`` or ``("blocked", geo, phases, tile, xstep)``: the kernel and its
    arguments for this shape, worked out once per shape."""
    (sh, sw), (dh, dw) = stride, dilation
    if O <= pixel_channels and (sh, sw) == (1, 1):
        return "pixels", (0, KH, 1, 0, KW, 1, dh, dw)
    tile = nb, tr, tw = _forward_tile(O, OH, OW)
    ohr, owr = -(-OH // tr) * tr, -(-OW // tw) * tw  # rows and columns of whole tiles
    Hs, Ws = (ohr - 1) * sh + (KH - 1) * dh + 1, (OW - 1) * sw + (KW - 1) * dw + 1
    geo = (sh, sw, dh, dw, 1, 1, 1, 1, Hs, Ws, ohr, owr, 0, 0)
    phases = ((OH, OW, 0, 0, 0, KH, 0, KW, 0, 0),)
    return "blocked", geo, phases, tile, _step(sw)


def supports_input_grad(stride, dilation=(1, 1)):
    """The input gradient: any stride with dilation 1, any dilation with stride 1."""
    return tuple(stride) == (1, 1) or tuple(dilation) == (1, 1)


def _residues(K, s, size, p):
    """Phases of a stride-s input gradient along one axis. grad_out gets ``front`` zeros in
    front; residue r of (i + p) mod s takes the taps k = r, r + s, ... < K and the outputs
    i = s*m + r - p in [0, size), m from m0: per residue (count, input offset, first flipped
    tap, taps, buffer offset s*m0 + r)."""
    front = -(-K // s) - 1  # the most taps of a residue, minus one
    phases = []
    for r in range(s):
        taps = max(0, -(-(K - r) // s))
        m0 = max(0, -(-(p - r) // s))  # first m with s*m + r - p >= 0
        count = max(0, -(-(size + p - r) // s) - m0)  # and s*m + r - p < size
        phases.append((count, front - taps + 1 + m0, K - 1 - r - s * (taps - 1), taps, s * m0 + r))
    return front, phases


def _input_grad(grad_out, weight, stride, padding_before, dilation, grad_x):
    """grad_x: grad_out convolved with the flipped, channel-transposed kernel (a transposed
    convolution). Stride 1: one stride-1 convolution, grad_out padded by (K - 1)*d - p in
    front. Stride s: one phase per residue r of (i + p) mod s (rows and columns), a stride-1
    convolution with the taps k = r, r + s, ... whose outputs land every s-th pixel."""
    N, C, H, W = grad_x.shape
    KH, KW = weight.shape[2:]
    (sh, sw), (dh, dw), (ph, pw) = stride, dilation, padding_before
    flipped = np.ascontiguousarray(weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    if (sh, sw) == (1, 1):
        pad = ((KH - 1) * dh - ph, (KW - 1) * dw - pw)
        return conv2d_forward(grad_out, flipped, None, (1, 1), pad, (dh, dw), grad_x)
    fh, rows = _residues(KH, sh, H, ph)
    fw, cols = _residues(KW, sw, W, pw)
    if C <= tuning().blocked_pixel_channels:  # each phase in turn, then every s-th pixel
        for ch, ih0, kh0, nkh, bh in rows:
            for cw, iw0, kw0, nkw, bw in cols:
                if ch == 0 or cw == 0:
                    continue
                part = grad_x[:, :, bh - ph :: sh, bw - pw :: sw]
                if nkh == 0 or nkw == 0:  # a stride beyond the kernel: pixels no tap reaches
                    part[...] = 0.0
                    continue
                # Its own array (``_pixels`` takes the workspace): a few small phases.
                phase = np.empty((N, C, ch, cw), dtype=np.float32)
                taps = (kh0, nkh, sh, kw0, nkw, sw, 1, 1)
                _pixels(grad_out, flipped, None, (fh - ih0, fw - iw0), taps, phase)
                part[...] = phase
        return grad_x
    tile = nb, tr, tw = _forward_tile(C, max(r[0] for r in rows), max(c[0] for c in cols))
    mh = -(-max(r[0] for r in rows) // tr) * tr  # phase rows and columns of whole tiles
    mw = -(-max(c[0] for c in cols) // tw) * tw
    phases = tuple(
        (ch, cw, ih0, iw0, kh0, nkh, kw0, nkw, bh, bw)
        for ch, ih0, kh0, nkh, bh in rows
        for cw, iw0, kw0, nkw, bw in cols
        if ch > 0 and cw > 0
    )
    # Extents: the padded grad_out rows every tile reads, the buffer rows every tile writes.
    Hs = max(mh + max(1, nkh) - 1 + ih0 for _, ih0, _, nkh, _ in rows)
    Ws = max(mw + max(1, nkw) - 1 + iw0 for _, iw0, _, nkw, _ in cols)
    Hb = max(bh + sh * (mh - 1) + 1 for *_, bh in rows)
    Wb = max(bw + sw * (mw - 1) + 1 for *_, bw in cols)
    # Buffer pixel s*m + r is grad_x's pixel s*m + r - p: its region from (ph, pw) on.
    geo = (1, 1, 1, 1, sh, sw, sh, sw, Hs, Ws, Hb, Wb, ph, pw)
    return _run(grad_out, flipped, None, (fh, fw), geo, phases, grad_x, tile, (0,))


def _weight_and_bias_grad(grad_out, x, stride, padding_before, dilation, grad_w, grad_b):
    N, O, OH, OW = grad_out.shape
    C, KH, KW = grad_w.shape[1:]
    # Tile: nb blocks x (krows x KW) taps of one input channel, at most _MAX_TAPS accumulators.
    krows = max(1, min(KH, _MAX_TAPS // KW))
    nb = 2 if _NB == 2 and _blocks(O) >= 2 and 2 * krows * KW <= _MAX_TAPS else 1
    ob = -(-_blocks(O) // nb) * nb
    kht = -(-KH // krows) * krows  # whole tiles of kernel rows; the extra rows read the slack
    sh, sw = stride
    dh, dw = dilation
    Hs = (OH - 1) * sh + (KH - 1) * dh + 1
    Ws = (OW - 1) * sw + (KW - 1) * dw + 1
    xs_len = -(-(C * Hs * Ws + (kht - KH) * dh * Ws + KW * dw + 16) // 16) * 16
    # Channels per iteration: up to 8 share each block of gradient rows. Samples per chunk:
    # all of them (each iteration sums its whole share) unless the other dimensions give
    # fewer than Tuning.blocked_grad_items iterations. A function of the shape only, never of
    # the thread count, so the sums are the same at any thread count.
    cgroup = min(C, 8)
    items = ob // nb * -(-C // cgroup)
    chunk = max(1, -(-N // max(1, min(N, -(-tuning().blocked_grad_items // items)))))
    xs, gb, bias_part, sums, part = workspace(
        ((N, xs_len), np.float32),
        ((N, ob, OH * OW * 16), np.float32),
        ((N, O), np.float64),
        ((N, 16), np.float32),
        ((-(-N // chunk), ob, C, kht, KW, 16), np.float32),
    )
    ph, pw = padding_before
    tiles = (0,) * nb, (0,) * (krows * KW), (0,) * KW
    wstep = _step(dw)  # the taps' column step, a constant when small
    prepare = pointer(
        _weight_grad_prepare, typed_flags(x, grad_out),
        lambda: (x, 0, ph, pw, grad_out, xs, gb, bias_part, sums, Hs, Ws),
    )  # fmt: skip
    item = pointer(
        _weight_grad_item, (nb, krows, KW, wstep),  # its arrays are all this call's temporaries
        lambda: (xs, gb, Hs, Ws, sh, sw, dh, wstep, OW, chunk, part, 0, 0, 0, 0, *tiles),
    )  # fmt: skip
    _conv2d_bwd_weight_blocked(
        prepare, item, x, ph, pw, grad_out, xs, gb, bias_part, sums, Hs, Ws, sh, sw, dh, wstep,
        chunk, cgroup, part, *tiles,
    )  # fmt: skip
    _sum_chunks(part, bias_part, grad_w, grad_b)
    return grad_w, grad_b


def conv2d_backward(
    grad_out, x, weight, stride, padding_before, dilation, need_input_grad=True, out=None
):
    """(grad_x or None, grad_weight, grad_bias) of ``conv2d_forward``.

    grad_out (N, O, OH, OW), x (N, C, H, W), weight (O, C, KH, KW): C-contiguous float32; the
    other arguments as in ``conv2d_forward``. grad_x needs stride 1 or dilation 1
    (``supports_input_grad``). ``out``: optional (grad_x or None, grad_w, grad_b) C-contiguous
    float32 arrays to write into (and return) instead of new ones.
    """
    if out is None:
        grad_x = np.empty(x.shape, np.float32) if need_input_grad else None
        out = grad_x, np.empty(weight.shape, np.float32), np.empty(weight.shape[0], np.float32)
    grad_x, grad_w, grad_b = out
    if need_input_grad:
        if not supports_input_grad(stride, dilation):
            raise ValueError(f"input gradient with stride {stride} and dilation {dilation}")
        _input_grad(grad_out, weight, stride, padding_before, dilation, grad_x)
    else:
        grad_x = None
    _weight_and_bias_grad(grad_out, x, stride, padding_before, dilation, grad_w, grad_b)
    return grad_x, grad_w, grad_b
