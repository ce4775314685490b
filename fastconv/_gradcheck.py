"""Finite-difference gradient checking for functions with a hand-written backward."""

from __future__ import annotations

import numpy as np

from fastconv._checks import generator


class GradcheckError(AssertionError):
    """Raised when an analytic gradient disagrees with the finite-difference one."""


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0):
    """Check a function's analytic backward against central finite differences, in float64.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs)`` returns ``(output, backward)``, where ``backward(grad_out)`` returns one
        gradient per input (``None`` for inputs that have none, e.g. integer targets).
        Example: ``lambda x, w: (F.conv2d(x, w), lambda g: F.conv2d_backward(g, x, w)[:2])``.
    inputs : sequence of arrays (float arrays are copied to float64 and checked) or other values
        (passed through unchanged).
    eps, atol, rtol : step and tolerances; element passes if ``|a - n| <= atol + rtol * |n|``.
    seed : int seed or numpy.random.Generator for the random ``grad_out`` the scalar
        ``sum(output * grad_out)`` is built from.

    Returns
    -------
    True, or raises ``GradcheckError`` naming the input, the element and both values.
    """
    inputs = [
        np.array(a, dtype=np.float64) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
        for a in inputs
    ]
    out, backward = fn(*inputs)
    out = np.asarray(out, dtype=np.float64)
    grad_out = generator(seed, name="seed").standard_normal(out.shape)
    analytic = backward(grad_out)
    if not isinstance(analytic, (tuple, list)):
        analytic = (analytic,)
    if len(analytic) != len(inputs):
        raise ValueError(f"backward returned {len(analytic)} gradients for {len(inputs)} inputs")

    def objective():
        return float(np.sum(np.asarray(fn(*inputs)[0], dtype=np.float64) * grad_out))

    for k, (x, grad) in enumerate(zip(inputs, analytic, strict=True)):
        if grad is None or not isinstance(x, np.ndarray) or x.dtype.kind != "f":
            continue
        grad = np.asarray(grad, dtype=np.float64)
        if grad.shape != x.shape:
            raise GradcheckError(f"input {k}: gradient shape {grad.shape} != input shape {x.shape}")
        flat = x.reshape(-1)  # a view: perturbing it perturbs the input fn sees
        numeric = np.empty(flat.size)
        for i in range(flat.size):
            orig = flat[i]
            flat[i] = orig + eps
            plus = objective()
            flat[i] = orig - eps
            minus = objective()
            flat[i] = orig
            numeric[i] = (plus - minus) / (2 * eps)
        bad = np.abs(grad.reshape(-1) - numeric) > atol + rtol * np.abs(numeric)
        if bad.any():
            i = int(np.argmax(bad))
            where = np.unravel_index(i, x.shape)
            raise GradcheckError(
                f"input {k} at {where}: analytic {grad.reshape(-1)[i]:.8g} vs numeric "
                f"{numeric[i]:.8g} ({int(bad.sum())} of {flat.size} elements differ)"
            )
    return True
