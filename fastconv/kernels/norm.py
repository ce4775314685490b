"""Batch-norm kernels over x viewed as (N, C, S), S = H*W (or L, or 1).

Per-channel reductions run one channel per iteration; elementwise passes one (n, c) row each.
Sums accumulate in float64 whatever the input dtype, as PyTorch's CPU kernels do.
"""

from numba import prange

from fastconv._config import pjit


@pjit
def _bn_batch_stats(x, mean, var):
    """mean[c] and biased var[c] over (n, s), two passes for accuracy."""
    N, C, S = x.shape
    M = N * S
    for c in prange(C):
        total = 0.0
        for n in range(N):
            for s in range(S):
                total += x[n, c, s]
        m = total / M
        sq = 0.0
        for n in range(N):
            for s in range(S):
                d = x[n, c, s] - m
                sq += d * d
        mean[c] = m
        var[c] = sq / M


@pjit
def _bn_affine(x, scale, shift, y):
    """y[n, c] = x[n, c] * scale[c] + shift[c] (normalisation folded into one multiply-add)."""
    N, C, S = x.shape
    for p in prange(N * C):
        n, c = p // C, p % C
        a, b = scale[c], shift[c]
        for s in range(S):
            y[n, c, s] = x[n, c, s] * a + b


@pjit
def _bn_grad_sums(gy, x, mean, sum_gy, sum_gy_xmu):
    """sum_gy[c] = sum gy, sum_gy_xmu[c] = sum gy * (x - mean), over (n, s)."""
    N, C, S = x.shape
    for c in prange(C):
        m = mean[c]
        a = 0.0
        b = 0.0
        for n in range(N):
            for s in range(S):
                g = gy[n, c, s]
                a += g
                b += g * (x[n, c, s] - m)
        sum_gy[c] = a
        sum_gy_xmu[c] = b


@pjit
def _bn_bwd_input(gy, x, mean, scale, shift_gy, coef_xmu, gx):
    """gx = scale[c] * (gy - shift_gy[c] - (x - mean[c]) * coef_xmu[c]).

    Training: scale = weight*invstd, shift_gy = mean of gy, coef_xmu = mean(gy*(x-mean))*invstd^2.
    Eval (running statistics are constants): shift_gy = coef_xmu = 0.
    """
    N, C, S = x.shape
    for p in prange(N * C):
        n, c = p // C, p % C
        k, a, b, m = scale[c], shift_gy[c], coef_xmu[c], mean[c]
        for s in range(S):
            gx[n, c, s] = k * (gy[n, c, s] - a - (x[n, c, s] - m) * b)
