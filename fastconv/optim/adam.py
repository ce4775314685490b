"""Adam and AdamW, as ``torch.optim.Adam`` and ``torch.optim.AdamW``."""

from __future__ import annotations

import numpy as np

from fastconv._checks import real
from fastconv._threads import get_num_threads
from fastconv.kernels import optim as kopt
from fastconv.optim.optimizer import Optimizer

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (without ``amsgrad``).

    With ``g = grad + weight_decay * p`` and ``t`` the parameter's step count::

        m = m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    Parameters
    ----------
    params : iterable
        Parameters or parameter-group dicts (see :class:`Optimizer`).
    lr : float, default 1e-3
        Learning rate, >= 0.
    betas : (float, float), default (0.9, 0.999)
        Decay rates of the moment estimates, each in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, >= 0.
    weight_decay : float, default 0
        L2 penalty added to the gradient, >= 0.
    """

    _state_keys = ("step", "exp_avg", "exp_avg_sq")
    _decoupled_weight_decay = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0):
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def _check_options(self, options):
        options = super()._check_options(options)
        betas = options["betas"]
        if not isinstance(betas, (tuple, list, np.ndarray)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        options["betas"] = tuple(
            real(f"betas[{k}]", beta, minimum=0.0, below=1.0) for k, beta in enumerate(betas)
        )
        options["eps"] = real("eps", options["eps"], minimum=0.0)
        options["weight_decay"] = real("weight_decay", options["weight_decay"], minimum=0.0)
        return options

    def _update(self, p, state, group):
        data = p.data
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(data)
            state["exp_avg_sq"] = np.zeros_like(data)
        state["step"] += 1
        arrays = data, state["exp_avg"], state["exp_avg_sq"]
        if all(a.flags.c_contiguous for a in arrays):
            self._update_fused(data, p.grad, state, group)
        else:
            self._update_numpy(data, p.grad, state, group)

    def _update_fused(self, data, grad, state, group):
        """One pass of ``kernels/optim._adam`` over the parameter, the scalars in its dtype."""
        lr, weight_decay = group["lr"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        step = state["step"]
        decoupled = self._decoupled_weight_decay
        s = data.dtype.type
        kopt._adam(
            data.reshape(-1), np.ascontiguousarray(grad).reshape(-1),
            state["exp_avg"].reshape(-1), state["exp_avg_sq"].reshape(-1),
            s(1 - lr * weight_decay if decoupled else 1), s(0 if decoupled else weight_decay),
            s(1 - beta1), 1 - beta1 >= 0.5, s(beta2), s(1 - beta2),
            s(lr / (1 - beta1**step)), s((1 - beta2**step) ** 0.5), s(group["eps"]),
            get_num_threads(),
        )  # fmt: skip

    def _update_numpy(self, data, grad, state, group):
        """The same update as NumPy operations, for arrays that are not C-contiguous."""
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        tmp, tmp2 = self._scratch(data, 2)

        if weight_decay != 0:
            if self._decoupled_weight_decay:
                data *= 1 - lr * weight_decay
            else:
                np.multiply(data, weight_decay, out=tmp)
                grad = np.add(grad, tmp, out=tmp)

        # exp_avg.lerp_(grad, 1 - beta1), with the two forms torch's lerp uses for accuracy.
        weight = 1 - beta1
        np.subtract(grad, exp_avg, out=tmp2)
        if weight < 0.5:
            tmp2 *= weight
            exp_avg += tmp2
        else:
            tmp2 *= 1 - weight
            np.subtract(grad, tmp2, out=exp_avg)
        exp_avg_sq *= beta2
        np.multiply(grad, 1 - beta2, out=tmp2)
        tmp2 *= grad
        exp_avg_sq += tmp2

        step_size = lr / (1 - beta1**step)
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        denom = np.sqrt(exp_avg_sq, out=tmp2)
        denom /= bias_correction2_sqrt
        denom += eps
        np.multiply(exp_avg, -step_size, out=tmp)
        tmp /= denom
        data += tmp


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW``.

    Each step first shrinks the parameter, ``p *= 1 - lr * weight_decay``, then applies the Adam
    update with the raw gradient (see :class:`Adam`).

    Parameters
    ----------
    params, lr, betas, eps
        As for :class:`Adam`.
    weight_decay : float, default 1e-2
        Decoupled weight decay coefficient, >= 0.
    """

    _decoupled_weight_decay = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
