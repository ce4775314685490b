"""Stochastic gradient descent with momentum, as ``torch.optim.SGD``."""

from __future__ import annotations

import numpy as np

from fastconv._checks import check_bool, real
from fastconv._threads import get_num_threads
from fastconv.kernels import optim as kopt
from fastconv.optim.optimizer import Optimizer

__all__ = ["SGD"]


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, as ``torch.optim.SGD``.

    With ``g = grad + weight_decay * p``, the first step sets ``buf = g``, later steps
    ``buf = momentum * buf + (1 - dampening) * g``; the update is ``p -= lr * d`` with
    ``d = g + momentum * buf`` (Nesterov), ``d = buf`` (momentum) or ``d = g`` (momentum 0).

    Parameters
    ----------
    params : iterable
        Parameters or parameter-group dicts (see :class:`Optimizer`).
    lr : float
        Learning rate, >= 0.
    momentum : float, default 0
        Momentum factor, >= 0.
    dampening : float, default 0
        Dampening for momentum.
    weight_decay : float, default 0
        L2 penalty added to the gradient, >= 0.
    nesterov : bool, default False
        Nesterov momentum; requires ``momentum > 0`` and ``dampening == 0``.
    """

    _state_keys = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False):
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
        }
        super().__init__(params, defaults)

    def _check_options(self, options):
        options = super()._check_options(options)
        options["momentum"] = real("momentum", options["momentum"], minimum=0.0)
        options["dampening"] = real("dampening", options["dampening"])
        options["weight_decay"] = real("weight_decay", options["weight_decay"], minimum=0.0)
        options["nesterov"] = check_bool("nesterov", options["nesterov"])
        if options["nesterov"] and (options["momentum"] <= 0 or options["dampening"] != 0):
            raise ValueError(
                "nesterov=True requires momentum > 0 and dampening == 0, got "
                f"momentum={options['momentum']}, dampening={options['dampening']}"
            )
        return options

    def _update(self, p, state, group):
        data, buf = p.data, state.get("momentum_buffer")
        if data.flags.c_contiguous and (buf is None or buf.flags.c_contiguous):
            self._update_fused(data, p.grad, state, group)
        else:
            self._update_numpy(data, p.grad, state, group)

    @staticmethod
    def _update_fused(data, grad, state, group):
        """One pass of ``kernels/optim._sgd`` over the parameter."""
        momentum = group["momentum"]
        buf = state.get("momentum_buffer")
        first = buf is None
        if first and momentum != 0:  # the kernel sets it to the first step's gradient
            buf = state["momentum_buffer"] = np.empty_like(data)
        s = data.dtype.type  # the arithmetic in the parameter's dtype, as PyTorch's
        kopt._sgd(
            data.reshape(-1), np.ascontiguousarray(grad).reshape(-1),
            (data if buf is None else buf).reshape(-1),  # without momentum, never touched
            s(group["lr"]), s(momentum), s(group["dampening"]), s(group["weight_decay"]),
            group["nesterov"], first, get_num_threads(),
        )  # fmt: skip

    def _update_numpy(self, data, grad, state, group):
        """The same update as NumPy operations, for a parameter or buffer that is not
        C-contiguous (a user's own arrays)."""
        lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
        tmp, tmp2 = self._scratch(data, 2)
        if group["weight_decay"] != 0:
            np.multiply(data, group["weight_decay"], out=tmp)
            grad = np.add(grad, tmp, out=tmp)
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()
            else:
                buf *= momentum
                if dampening == 0:
                    buf += grad
                else:
                    buf += np.multiply(grad, 1 - dampening, out=tmp2)
            if group["nesterov"]:
                np.multiply(buf, momentum, out=tmp2)
                grad = np.add(grad, tmp2, out=tmp2)
            else:
                grad = buf
        data += np.multiply(grad, -lr, out=tmp)
