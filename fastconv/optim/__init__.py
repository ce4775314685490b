"""Optimizers with PyTorch's names, defaults and update rules, working on NumPy arrays.

An optimizer holds parameters: any objects with a ``.data`` ndarray (float32 or float64) and a
``.grad`` that is an ndarray of the same shape and dtype, or None, such as
:class:`fastconv.nn.Parameter`. ``step()`` updates every ``p.data`` **in place** from ``p.grad``
with the rule of the ``torch.optim`` class of the same name (its single-tensor code path, which is
what PyTorch runs on the CPU), and skips parameters whose ``grad`` is None. The arithmetic stays in
the parameter's dtype and writes into preallocated arrays, so a step allocates nothing once the
optimizer state exists.

As in PyTorch, ``params`` may also be a list of dicts, each a parameter group with its own
options (``[{"params": body.parameters()}, {"params": head.parameters(), "lr": 0.1}]``); options
a group does not set come from the constructor's arguments. ``optimizer.lr`` reads the first
group's learning rate and sets every group's; the schedulers in
:mod:`fastconv.optim.lr_scheduler` change ``param_groups[i]["lr"]``.

``state_dict()`` is a flat dict of NumPy arrays and Python numbers with string keys, so it can
be saved without pickle::

    np.savez("opt.npz", **optimizer.state_dict())
    optimizer.load_state_dict(np.load("opt.npz"))
"""

from __future__ import annotations

from fastconv.optim import lr_scheduler
from fastconv.optim.adam import Adam, AdamW
from fastconv.optim.optimizer import Optimizer
from fastconv.optim.sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler"]
