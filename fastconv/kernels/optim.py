"""Optimizer updates in one pass over each parameter, one contiguous chunk per thread.

Why: SGD with momentum written as NumPy operations passes over the parameter four times
(``buf *= m``, ``buf += g``, ``tmp = -lr * buf``, ``p += tmp``), each on one core; LeNet's
421,642 parameters took 0.54 ms a step that way, on 1 thread or 2, about 5% of the step and the
largest part that did not scale with threads. In one pass: 0.33 ms on 2 threads, 0.39 on 1.
Adam's update was twelve passes.
"""

import numpy as np
from numba import prange

from fastconv._config import pjit


@pjit
def _sgd(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first, T):
    """``torch.optim.SGD``'s update of one parameter, flat arrays p, g, buf of one dtype (the
    scalars too, so the arithmetic stays in it): ``d = g + weight_decay * p``; with momentum,
    ``buf = d`` on the first step, else ``buf = momentum * buf + (1 - dampening) * d``, and
    ``d = d + momentum * buf`` (nesterov) or ``buf``; then ``p -= lr * d``. ``buf`` is not
    touched when momentum is 0."""
    n = p.shape[0]
    keep = 1 - dampening
    for t in prange(T):
        lo, hi = t * n // T, (t + 1) * n // T
        ps, gs, bs = p[lo:hi], g[lo:hi], buf[lo:hi]
        for i in range(hi - lo):
            d = gs[i]
            if weight_decay != 0:
                d += weight_decay * ps[i]
            if momentum != 0:
                b = d if first else momentum * bs[i] + keep * d
                bs[i] = b
                d = d + momentum * b if nesterov else b
            ps[i] -= lr * d


@pjit
def _adam(
    p, g, m, v, shrink, weight_decay, weight, lerp_high, beta2, keep2, step_size, bc2, eps, T
):
    """``torch.optim.Adam``'s (and AdamW's) update of one parameter: flat arrays p, g, m
    (exp_avg), v (exp_avg_sq) and the scalars in one dtype, in the order of the NumPy
    operations of ``Adam._update_numpy``. ``shrink``: AdamW's ``1 - lr * weight_decay`` (1 for
    Adam), applied first; ``weight_decay``: Adam's, added to the gradient. ``m`` moves toward
    the gradient by ``weight`` (``1 - beta1``) with the two forms of torch's lerp
    (``lerp_high``: weight >= 0.5); ``v = beta2 * v + keep2 * g * g``; then
    ``p += -step_size * m / (sqrt(v) / bc2 + eps)``."""
    n = p.shape[0]
    for t in prange(T):
        lo, hi = t * n // T, (t + 1) * n // T
        ps, gs, ms, vs = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
        for i in range(hi - lo):
            x = ps[i] * shrink
            d = gs[i]
            if weight_decay != 0:
                d += x * weight_decay
            diff = d - ms[i]
            a = d - diff * (1 - weight) if lerp_high else ms[i] + diff * weight
            ms[i] = a
            b = vs[i] * beta2 + d * keep2 * d
            vs[i] = b
            ps[i] = x + a * -step_size / (np.sqrt(b) / bc2 + eps)
