"""The one seam that plans a convolution: which algorithm, how it is tiled, and its workspaces.

``fastconv.functional.conv2d`` and ``conv2d_backward`` validate and normalise their arguments
into a ``Conv`` (every size of the problem), ask ``choose(conv)`` for an ``Algorithm``, allocate
the outputs and call the algorithm's ``forward`` or ``backward``. Those carve their temporaries
out of the one per-thread workspace (``workspace``) and call the kernels.

Adding an algorithm is one entry in ``_algorithms()``: its name, ``runs(conv)`` (the shapes it
can compute), ``chosen(conv)`` (the shapes where it measured fastest; ``choose`` takes the first
entry whose ``chosen`` holds, so the order is the preference), ``forward(conv, x, weight, bias,
y)`` filling ``y``, and ``backward(conv, grad_out, x, weight, grad_x, grad_w, grad_b)`` filling
the three gradients (``grad_x`` is None when the caller does not need the input gradient; an
algorithm skips that work where it can). Inputs are C-contiguous and of one dtype; outputs are
allocated by the caller.

Private controls, for tests and benchmarks (never patch module attributes):
- ``with use_algorithm("gemm"):`` runs every convolution of the block with that algorithm
  wherever it can compute the shape (elsewhere the usual choice);
- ``with fastconv._config.tuned(tile_bytes=...):`` changes tuning constants (see ``Tuning``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import threading
from collections.abc import Callable
from typing import NamedTuple

import numba
import numpy as np

from fastconv._config import tuning
from fastconv._threads import single_threaded_blas
from fastconv.kernels import conv_direct, conv_gemm
from fastconv.kernels import winograd as kwino


class Conv(NamedTuple):
    """A convolution, normalised: x (N, C, H, W), weight (O, C/groups, KH, KW), y (N, O, OH, OW);
    ``before`` is the top/left padding (the output size implies the bottom/right)."""

    N: int
    C: int
    H: int
    W: int
    O: int
    KH: int
    KW: int
    stride: tuple[int, int]
    before: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    OH: int
    OW: int
    dtype: np.dtype

    @property
    def window(self):
        """(sh, sw, ph, pw, dh, dw), the arguments every conv kernel takes in this order."""
        return (*self.stride, *self.before, *self.dilation)

    @property
    def chunks(self):
        """Chunks of the batch for kernels that split it, each with its own partial sums: one
        per thread of numba's pool (fixed for the process), never per thread in force, so the
        partial sums and their fixed-order total are the same at any thread count."""
        return min(numba.config.NUMBA_NUM_THREADS, max(self.N, 1))


class Algorithm(NamedTuple):
    """One way to compute a convolution; see the module docstring for the four callables."""

    name: str
    runs: Callable[[Conv], bool]
    chosen: Callable[[Conv], bool]
    forward: Callable
    backward: Callable


# =============================================================================================
# Choice
# =============================================================================================


@functools.cache
def _algorithms():
    """Every conv algorithm by name, in order of preference: ``choose`` takes the first whose
    ``chosen`` holds. The measurement behind each choice is beside it (shapes of
    ``benchmarks/report.py``).

    An engine kept in its own module joins with one entry, imported here (this function runs
    at the first convolution, so the engine's module may import this one for ``workspace``)::

        "blocked": Algorithm("blocked", runs=_conv_blocked.runs, chosen=_conv_blocked.chosen,
                             forward=_conv_blocked.forward, backward=_conv_blocked.backward),
    """
    from fastconv import _conv_blocked  # here, not at the top: it imports ``workspace``

    return {
        # float32, one group: the register-tiled direct convolution (kernels/conv_blocked.py),
        # chosen for every shape it computes. Against the paths below, one thread: fm_conv2's
        # forward 3.0 ms vs 5.9 (Winograd) and 9.3 (GEMM), faster on every benchmark shape.
        # Against PyTorch (``python -m benchmarks.report``, 2 threads), forward / forward +
        # backward: seed_k5s2 0.92 / 0.32, fm_conv1 0.57 / 0.49, fm_conv2 0.90 / 0.93, res_56
        # 1.05 / 0.98, res_s2 0.92 / 0.92. No transform of the data: inf and NaN as PyTorch's.
        "blocked": Algorithm(
            "blocked",
            runs=functools.partial(_blocked_runs, _conv_blocked),
            chosen=functools.partial(_blocked_runs, _conv_blocked),
            forward=functools.partial(_blocked_forward, _conv_blocked),
            backward=functools.partial(_blocked_backward, _conv_blocked),
        ),
        # Depthwise-style (one input channel per group): direct loops; each group's GEMM would be
        # a tiny (C_out/groups x kH*kW) matrix. Direct loops can compute any convolution, but
        # elsewhere im2col + GEMM beats them, even with one input channel (10x at 1 -> 32
        # channels, 28x28).
        "direct": Algorithm(
            "direct",
            runs=lambda conv: True,
            chosen=lambda conv: conv.groups > 1 and conv.C == conv.groups,
            forward=_direct_forward,
            backward=_direct_backward,
        ),
        # 3x3, stride 1, no dilation, one group, enough channels: Winograd F(2x2, 3x3), 2.25x
        # fewer multiplications than im2col + GEMM; its backward-data pass is the same algorithm
        # on the flipped kernel. With few channels (``Tuning.winograd_min_channels``) the
        # transforms cost more than they save.
        "winograd": Algorithm(
            "winograd",
            runs=_winograd_runs,
            chosen=lambda conv: (
                _winograd_runs(conv) and min(conv.C, conv.O) >= tuning().winograd_min_channels
            ),
            forward=_winograd_forward,
            backward=_winograd_backward,
        ),
        # Everything else: im2col + GEMM.
        "gemm": Algorithm(
            "gemm",
            runs=lambda conv: True,
            chosen=lambda conv: True,
            forward=_gemm_forward,
            backward=_gemm_backward,
        ),
    }


_forced = contextvars.ContextVar("fastconv_conv_algorithm")


def choose(conv):
    """The ``Algorithm`` for this convolution: the one ``use_algorithm`` forces if it can
    compute the shape, else the first in ``_algorithms()`` whose measured ``chosen`` holds."""
    return _choose(conv, _forced.get(None), tuning())


@functools.lru_cache(maxsize=1024)
def _choose(conv, forced, tuning_in_force):
    """``choose``, once per convolution, forced algorithm and tuning (the choice depends on
    nothing else; a layer asks the same question on every step)."""
    del tuning_in_force  # read by ``chosen`` through ``tuning()``; part of the key only
    algorithms = _algorithms()
    if forced is not None and algorithms[forced].runs(conv):
        return algorithms[forced]
    return next(a for a in algorithms.values() if a.chosen(conv))


@contextlib.contextmanager
def use_algorithm(name):
    """Private, for tests and benchmarks: every convolution in the block runs with algorithm
    ``name`` ("direct", "gemm", "winograd", ...) wherever it can compute the shape; shapes it
    cannot compute get the usual choice. Restored on exit, even on error; per thread."""
    if name not in _algorithms():
        raise ValueError(f"name must be one of {sorted(_algorithms())}, got {name!r}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


# =============================================================================================
# The workspace: one buffer per Python thread, shared by every path, forward and backward
# =============================================================================================


_ALIGN = 64  # bytes: a cache line, and the widest vector load


_buffers = threading.local()  # this Python thread's (buffer, aligned start), grown, never shrunk


@functools.lru_cache(maxsize=256)
def _layout(specs):
    """Byte offsets of each ``(shape, dtype)`` in ``specs``, 64-byte aligned, and the total."""
    offsets, total = [], 0
    for shape, dtype in specs:
        offsets.append(total)
        total += -(-math.prod(shape) * np.dtype(dtype).itemsize // _ALIGN) * _ALIGN
    return tuple(offsets), total


def workspace(*specs):
    """Arrays for one call's temporaries, one per ``(shape, dtype)`` in ``specs``, carved out of
    this Python thread's single workspace buffer (64-byte aligned, not overlapping each other).

    They stay valid until the next ``workspace`` call in the same thread, which reuses the
    memory: take every temporary of a kernel call at once, and never return one to a caller.
    """
    try:
        return _buffers.views[specs]  # the same arrays as last time: the buffer has not grown
    except (AttributeError, KeyError):
        pass
    offsets, total = _layout(specs)
    buffer, start = getattr(_buffers, "current", (None, 0))
    if buffer is None or buffer.size < start + total:
        buffer = np.empty(total + _ALIGN, dtype=np.uint8)
        start = -buffer.ctypes.data % _ALIGN
        _buffers.current = buffer, start
        _buffers.views = {}  # views of the old buffer would keep it alive
    views = [
        np.ndarray(shape, dtype, buffer, start + offset)
        for (shape, dtype), offset in zip(specs, offsets, strict=True)
    ]
    if len(_buffers.views) < 256:  # a bound for programs of ever-changing shapes
        _buffers.views[specs] = views
    return views


# =============================================================================================
# Direct loops
# =============================================================================================


def _direct_forward(conv, x, weight, bias, y):
    conv_direct._conv2d_fwd_direct(x, weight, bias, *conv.window, conv.groups, y)


def _direct_backward(conv, grad_out, x, weight, grad_x, grad_w, grad_b):
    if grad_x is not None:
        conv_direct._conv2d_bwd_input_direct(grad_out, weight, *conv.window, conv.groups, grad_x)
    conv_direct._conv2d_bwd_weight_direct(x, grad_out, *conv.window, conv.groups, grad_w)
    _bias_grad(grad_out, grad_b)


def _bias_grad(grad_out, grad_b):
    """grad_b = sum of grad_out over (N, H, W), accumulated in float64 as the GEMM path does."""
    grad_b[...] = grad_out.sum(axis=(0, 2, 3), dtype=np.float64)


# =============================================================================================
# im2col + GEMM
# =============================================================================================


def gemm_tile_rows(conv):
    """Output rows per GEMM tile: all of them, unless a sample's columns exceed
    ``Tuning.tile_bytes``."""
    per_row = max(1, conv.C * conv.KH * conv.KW * conv.OW * conv.dtype.itemsize)
    return int(min(max(conv.OH, 1), max(1, tuning().tile_bytes // per_row)))


def _gemm_geometry(conv):
    return (conv.KH, conv.KW, *conv.window, conv.OH, conv.OW)


def _grouped_weight(weight, groups):
    """OIHW -> (groups, O/groups, C/groups*kH*kW): each group's GEMM operand, contiguous."""
    return weight.reshape(groups, weight.shape[0] // groups, -1)


def _gemm_forward(conv, x, weight, bias, y):
    rows = gemm_tile_rows(conv)
    T, G, width = conv.chunks, conv.groups, rows * conv.OW
    cols, prod = workspace(
        ((T, conv.C * conv.KH * conv.KW * width), conv.dtype),
        ((T, conv.O // G * width), conv.dtype),
    )
    with single_threaded_blas():
        conv_gemm._conv2d_fwd_gemm(
            x,
            _grouped_weight(weight, G),
            bias,
            _gemm_geometry(conv),
            rows,
            cols,
            prod,
            y.reshape(conv.N, G, conv.O // G, conv.OH * conv.OW),
        )


def _gemm_backward(conv, grad_out, x, weight, grad_x, grad_w, grad_b):
    rows = gemm_tile_rows(conv)
    T, G, width = conv.chunks, conv.groups, rows * conv.OW
    Og, Rg = conv.O // G, conv.C // G * conv.KH * conv.KW
    # The kernel computes the input gradient in the same pass (col2im of the column gradient);
    # a caller that does not need it gets it in a workspace array, thrown away.
    gx_shape = (conv.N, conv.C, conv.H, conv.W) if grad_x is None else (0,)
    cols, gtile, gw_part, gw_tmp, gb_part, scratch = workspace(
        ((T, conv.C * conv.KH * conv.KW * width), conv.dtype),
        ((T, Og * width), conv.dtype),
        ((T, G, Og, Rg), conv.dtype),
        ((T, Og, Rg), conv.dtype),
        ((T, conv.O), np.float64),
        (gx_shape, conv.dtype),
    )
    with single_threaded_blas():
        conv_gemm._conv2d_bwd_gemm(
            x,
            grad_out.reshape(conv.N, G, Og, conv.OH * conv.OW),
            _grouped_weight(weight, G),
            _gemm_geometry(conv),
            rows,
            cols,
            gtile,
            gw_part,
            gw_tmp,
            gb_part,
            scratch if grad_x is None else grad_x,
        )
    np.sum(gw_part, axis=0, out=grad_w.reshape(G, Og, Rg))
    grad_b[...] = gb_part.sum(axis=0)


# =============================================================================================
# Winograd F(2x2, 3x3)
# =============================================================================================


def _winograd_runs(conv):
    return (
        (conv.KH, conv.KW) == (3, 3)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and max(conv.before) <= 2  # the input-gradient pass pads by 2 - before
    )


def _winograd_buffers(N, C, O, OW, tiles, dtype):
    """Tile rows per block of about ``tiles`` 2x2 tiles, and the ``workspace`` specs of the
    Winograd kernels' per-thread buffers V, M, rows_in and rows_out."""
    TW = (OW + 1) // 2
    block = max(1, tiles // TW)  # tile rows per block
    T = min(numba.config.NUMBA_NUM_THREADS, max(N, 1))  # as ``Conv.chunks``
    specs = (
        ((T, 16 * C * block * TW), dtype),
        ((T, 16 * O * block * TW), dtype),
        ((T, 8, 2 * TW + 2), dtype),
        ((T, 2, 2 * TW), dtype),
    )
    return block, T, specs


def _winograd(x, weight, bias, before, y):
    """y = conv2d(x, weight) + bias for a 3x3 stride-1 kernel, top/left padding ``before``."""
    O, C = weight.shape[:2]
    block, _, specs = _winograd_buffers(
        x.shape[0], C, O, y.shape[3], tuning().winograd_tiles, x.dtype
    )
    V, M, rows_in, rows_out, U = workspace(*specs, ((16, O, C), x.dtype))
    kwino._winograd_weights(weight, U)
    with single_threaded_blas():
        kwino._conv2d_winograd(x, U, bias, *before, block, V, M, rows_in, rows_out, y)


def _winograd_exact_enough(a, b, taps):
    """Whether Winograd gives what a direct sum of products gives for operands ``a`` and
    ``b``: its transforms add and subtract several inputs before multiplying, so an inf
    becomes inf - inf = NaN where the direct sum keeps inf (PyTorch's result), and values near
    the top of the range overflow in the transforms where the direct sum does not. Such
    inputs go to an exact algorithm instead. ``taps``: products summed per output (C*3*3);
    the factor 64 bounds the transforms' growth (sums of at most 4 terms, twice, and the
    weight transform's 2.25)."""
    if a.size == 0 or b.size == 0:
        return True
    big = float(np.abs(a).max()) * float(np.abs(b).max())
    return np.isfinite(big) and big * taps * 64 < np.finfo(a.dtype).max


def _winograd_forward(conv, x, weight, bias, y):
    if not _winograd_exact_enough(x, weight, conv.C * 9):
        _gemm_forward(conv, x, weight, bias, y)
        return
    _winograd(x, weight, bias, conv.before, y)


def _winograd_backward(conv, grad_out, x, weight, grad_x, grad_w, grad_b):
    taps = max(conv.C, conv.O) * 9
    if not (
        _winograd_exact_enough(grad_out, weight, taps)
        and _winograd_exact_enough(grad_out, x, conv.N * conv.OH * conv.OW)
    ):
        _gemm_backward(conv, grad_out, x, weight, grad_x, grad_w, grad_b)
        return
    # The input gradient of a stride-1 3x3 conv is the full convolution of grad_out with the
    # flipped kernel (channels swapped): Winograd again, with padding 2 - pad on each side.
    ph, pw = conv.before
    if grad_x is not None:
        flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        _winograd(grad_out, flipped, np.zeros(conv.C, conv.dtype), (2 - ph, 2 - pw), grad_x)
    # The weight gradient: Winograd's 16 GEMMs over the tiles, per thread, then back to 3x3.
    block, T, specs = _winograd_buffers(
        conv.N, conv.C, conv.O, conv.OW, tuning().winograd_grad_tiles, conv.dtype
    )
    V, M, rows_in, rows_out, tmp, dU = workspace(
        *specs, ((T, conv.O, conv.C), conv.dtype), ((T, 16, conv.O, conv.C), conv.dtype)
    )
    with single_threaded_blas():
        kwino._conv2d_winograd_grad_weight(
            x, grad_out, ph, pw, block, V, M, rows_in, rows_out, tmp, dU
        )
    kwino._winograd_weights_grad(dU.sum(axis=0), grad_w)
    _bias_grad(grad_out, grad_b)


# =============================================================================================
# Register-tiled direct convolution (float32)
# =============================================================================================


def _blocked_runs(engine, conv):
    return engine.supports(
        (conv.N, conv.C, conv.H, conv.W),
        (conv.O, conv.C // conv.groups, conv.KH, conv.KW),
        conv.stride, conv.before, conv.dilation, conv.groups, conv.dtype,
    )  # fmt: skip


def _blocked_forward(engine, conv, x, weight, bias, y):
    engine.conv2d_forward(x, weight, bias, conv.stride, conv.before, conv.dilation, y)


def _blocked_backward(engine, conv, grad_out, x, weight, grad_x, grad_w, grad_b):
    need_x = grad_x is not None
    if need_x and not engine.supports_input_grad(conv.stride, conv.dilation):
        _gemm_backward(conv, grad_out, x, weight, grad_x, grad_w, grad_b)
        return
    engine.conv2d_backward(
        grad_out, x, weight, conv.stride, conv.before, conv.dilation, need_input_grad=need_x,
        out=(grad_x, grad_w, grad_b),
    )  # fmt: skip
