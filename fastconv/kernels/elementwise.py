"""Elementwise kernels over flat arrays, split into one contiguous chunk per thread.

NumPy runs these on one core and allocates temporaries (``np.where`` builds a mask first);
activations of a conv layer are millions of elements per training step.
"""

from numba import prange

from fastconv._config import pjit


@pjit
def _relu_fwd(x, y, T):
    """y = max(x, 0), NaN kept (``x > 0`` is False for NaN, so test ``x < 0`` instead)."""
    n = x.shape[0]
    for t in prange(T):
        for i in range(t * n // T, (t + 1) * n // T):
            v = x[i]
            y[i] = 0 if v < 0 else v


@pjit
def _relu_bwd(g, x, gx, T):
    """gx = g where x > 0 or x is NaN, else 0 (PyTorch zeroes the gradient where x <= 0)."""
    n = x.shape[0]
    for t in prange(T):
        for i in range(t * n // T, (t + 1) * n // T):
            gx[i] = 0 if x[i] <= 0 else g[i]
