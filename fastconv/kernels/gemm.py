"""float32 matrix product on register tiles (``kernels/simd.py``): ``out = a @ b``.

Why not BLAS, as float64 does (``kernels/matmul.py``): numba reaches BLAS only through SciPy,
whose import took 0.13 s of a 1.1 s warm start (a new process that loads its kernels from
the cache and trains one LeNet step), and linear layers were the only BLAS users of a float32
network (only grouped float32 convolutions still are). It is faster too: LeNet's fc1 forward
and backward, 2 threads, 0.26 and 0.30 ms against OpenBLAS's 0.31 and 0.53 with its AVX-512
kernels (the platform's BLAS variables unset; 0.40 and 0.71 with the AVX2 kernels it runs
here); 4096-wide layers are about even. The tile is the convolution engine's: ``len(rows)``
rows of ``a`` times ``len(blocks)`` vectors of 16 columns of ``b``, each accumulator one
register; per step of the sum, one vector load per block and one broadcast per row feed
``len(rows) * len(blocks)`` fused multiply-adds.

Each output element is one sum over k in order, whichever tile computes it: the results do
not depend on the tiling, the split into iterations or the thread count.
"""

import numpy as np
from numba import prange

from fastconv._config import jit, pjit
from fastconv._kernel_pointer import call
from fastconv.kernels.simd import (
    tile_fma,
    tile_load,
    tile_repeat,
    tile_store,
    transpose16,
    vload_tuple,
    vzeros,
)


@jit
def _sum_k(acc, a, b, r, j0, k0, k1, rows, blocks):
    """The tile ``acc`` (rows r.. of a x the panel at column j0) plus the products over
    k in [k0, k1), in order."""
    K, N = b.shape[0], b.shape[1]
    at_a, at_b = r * K + k0, k0 * N + j0
    for _ in range(k0, k1):
        acc = tile_fma(acc, a, at_a, K, 0, vload_tuple(b, at_b, 16, blocks), rows)
        at_a += 1
        at_b += N
    return acc


@jit
def _gemm_panel(a, b, out, i0, i1, j0, kc, rows, blocks):
    """out[i0:i1, j0:j0 + 16*len(blocks)] = a[i0:i1] @ b[:, j0:j0 + 16*len(blocks)].

    a (M, K), b (K, N), out (M, N): C-contiguous float32, K >= 1; i1 - i0 >= len(rows). The whole
    tiles of ``len(rows)`` rows go over b's rows in blocks of ``kc``, which stay in cache for
    every tile (their partial sums wait in ``out``: a float32 stored and loaded back is the
    same float32, so the sums are those of one pass). The rows left over form one more tile,
    ending at i1 and overlapping the last whole one: it recomputes those rows' sums, the same
    values, instead of a smaller tile.
    """
    K, N = b.shape[0], b.shape[1]
    R = len(rows)
    whole = i0 + (i1 - i0) // R * R
    for k0 in range(0, K, kc):
        k1 = min(K, k0 + kc)
        for r in range(i0, whole, R):
            if k0 == 0:
                acc = tile_repeat(vzeros(blocks), rows)
            else:
                acc = tile_load(out, r * N + j0, N, 0, 16, blocks, rows, rows)
            acc = _sum_k(acc, a, b, r, j0, k0, k1, rows, blocks)
            tile_store(out, r * N + j0, N, 0, 16, acc, blocks, rows)
    if whole < i1:
        r, k0 = i1 - R, np.int64(0)  # k0 an int64, not the literal 0: one compiled _sum_k
        acc = _sum_k(tile_repeat(vzeros(blocks), rows), a, b, r, j0, k0, K, rows, blocks)
        tile_store(out, r * N + j0, N, 0, 16, acc, blocks, rows)


@pjit
def _gemm(item, a, b, out, chunks, kc, rows, blocks):
    """out = a @ b, ``item`` being ``_gemm_panel``: prange over (panel of 16*len(blocks)
    columns, chunk of rows). N is a multiple of the panel width and M // chunks >= len(rows).
    A thread's iterations are consecutive: it keeps its panels of b in cache across chunks."""
    M, N = a.shape[0], b.shape[1]
    width = 16 * len(blocks)
    for it in prange(N // width * chunks):
        p, c = it // chunks, it % chunks
        i0, i1 = c * M // chunks, (c + 1) * M // chunks
        i0, i1, j0 = np.int64(i0), np.int64(i1), np.int64(p * width)
        call(item, (a, b, out, i0, i1, j0, kc, rows, blocks))


@jit
def _pack_transposed(w, packed):
    """packed[k, n] = w[n, k] for n < N, zero for N <= n < packed.shape[1]: w (N, K),
    packed (K, Np), C-contiguous float32. 16x16 blocks (``transpose16``), scalars at the edges.

    Serial: a weight the size of LeNet's fc1 (1.6 MB) takes 0.04 ms on one thread (0.02 on
    two), and a parallel kernel took 0.7 s more to compile on a new machine's first step."""
    N, K = w.shape
    Np = packed.shape[1]
    for kb in range((K + 15) // 16):
        k0 = kb * 16
        n0 = 0
        if k0 + 16 <= K:
            while n0 + 16 <= N:
                transpose16(w, n0 * K + k0, K, packed, k0 * Np + n0, Np)
                n0 += 16
        for k in range(k0, min(K, k0 + 16)):
            for n in range(n0, N):
                packed[k, n] = w[n, k]
            for n in range(N, Np):
                packed[k, n] = 0.0
