"""Learning-rate schedulers with PyTorch's names and values, epoch by epoch.

Use them as in PyTorch: build the scheduler after the optimizer, call ``optimizer.step()`` for
each batch and ``scheduler.step()`` once per epoch::

    optimizer = fastconv.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = fastconv.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    for epoch in range(epochs):
        train_one_epoch(model, optimizer)
        scheduler.step()

Each scheduler computes the rate for epoch ``last_epoch`` from the closed form (PyTorch's
``_get_closed_form_lr``) and writes it to every parameter group's ``"lr"``. PyTorch's ``step()``
instead updates the current rate recursively; the values agree to rounding (about 1e-15
relative), but a rate set by hand between steps is overwritten here rather than built upon.
"""

from __future__ import annotations

import math

import numpy as np

from fastconv._checks import positive_int, real

__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR"]


def _nonnegative(name, value):
    return real(name, value, minimum=0.0)


class LRScheduler:
    """Base class: sets each group's ``lr`` from its initial value and ``last_epoch``.

    Parameters
    ----------
    optimizer : fastconv.optim.Optimizer
        Any object with ``param_groups``, a list of dicts holding ``"lr"``.

    Attributes
    ----------
    optimizer : Optimizer
    base_lrs : list of float
        Each group's learning rate when the scheduler was built.
    last_epoch : int
        Number of ``step()`` calls so far.
    """

    #: The subclass's settings, each with the check that validates and normalises it; they
    #: become attributes and are saved by ``state_dict``.
    _settings: dict = {}

    def __init__(self, optimizer, **settings):
        for name, value in self._check_settings(settings).items():
            setattr(self, name, value)
        groups = getattr(optimizer, "param_groups", None)
        if not isinstance(groups, list) or not all(
            isinstance(group, dict) and "lr" in group for group in groups
        ):
            raise TypeError(
                "optimizer must be a fastconv.optim.Optimizer (with param_groups), "
                f"got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.base_lrs = [float(group["lr"]) for group in groups]
        self.last_epoch = 0
        self._last_lr = list(self.base_lrs)

    def _lr_at(self, base_lr, epoch):
        """Learning rate at ``epoch`` for a group that started at ``base_lr``."""
        raise NotImplementedError

    def get_lr(self):
        """Learning rates of the groups at ``last_epoch``, as a list of floats."""
        return [self._lr_at(base_lr, self.last_epoch) for base_lr in self.base_lrs]

    def step(self):
        """Advance one epoch and set every group's ``lr``."""
        self.last_epoch += 1
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr

    def get_last_lr(self):
        """Learning rates set by the last ``step()`` (or the initial ones), a list of floats."""
        return list(self._last_lr)

    def state_dict(self):
        """``last_epoch``, ``base_lrs``, ``last_lr`` and the settings, as arrays and numbers.

        Like PyTorch's, it does not include the optimizer; save ``optimizer.state_dict()`` too.
        """
        out = {
            "last_epoch": self.last_epoch,
            "base_lrs": np.array(self.base_lrs, dtype=np.float64),
            "last_lr": np.array(self._last_lr, dtype=np.float64),
        }
        out.update({name: getattr(self, name) for name in self._settings})
        return out

    def load_state_dict(self, state_dict):
        """Restore a :meth:`state_dict` (also one read back with ``np.load``).

        A missing or unexpected key, or a number of learning rates different from the
        optimizer's number of parameter groups, raises ``ValueError`` naming the key.
        """
        source = dict(state_dict)
        expected = {"last_epoch", "base_lrs", "last_lr", *self._settings}
        for key in sorted(expected - set(source)):
            raise ValueError(f"state_dict is missing key {key!r}")
        for key in sorted(set(source) - expected):
            raise ValueError(f"unexpected key {key!r} in state_dict")
        lrs = {}
        for key in ("base_lrs", "last_lr"):
            values = np.asarray(source[key], dtype=np.float64)
            if values.shape != (len(self.optimizer.param_groups),):
                raise ValueError(
                    f"state_dict key {key!r} has shape {values.shape}, but the optimizer has "
                    f"{len(self.optimizer.param_groups)} parameter group(s)"
                )
            if not (np.isfinite(values).all() and (values >= 0).all()):
                raise ValueError(f"state_dict key {key!r} must hold rates >= 0, got {values}")
            lrs[key] = [float(v) for v in values]
        settings = self._check_settings(
            {name: np.asarray(source[name]).item() for name in self._settings}
        )
        # Everything is checked before anything is set: a bad dict leaves the scheduler as it was.
        last_epoch = np.asarray(source["last_epoch"])
        if (
            last_epoch.shape != ()
            or last_epoch.dtype.kind not in "iuf"
            or not np.isfinite(last_epoch)
            or last_epoch != np.floor(last_epoch)
            or last_epoch < -1
        ):
            raise ValueError(
                f"state_dict key 'last_epoch' must be a whole number >= -1, got {last_epoch!r}"
            )
        self.last_epoch = int(last_epoch)
        self.base_lrs, self._last_lr = lrs["base_lrs"], lrs["last_lr"]
        for name, value in settings.items():
            setattr(self, name, value)

    def _check_settings(self, settings):
        """``settings`` (a dict) checked and normalised to ints and floats."""
        return {name: check(name, settings[name]) for name, check in self._settings.items()}


class StepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs, as ``torch``'s.

    ``lr = base_lr * gamma ** (epoch // step_size)``.

    Parameters
    ----------
    optimizer : fastconv.optim.Optimizer
    step_size : int
        Period of the decay in epochs, >= 1.
    gamma : float, default 0.1
        Factor applied every ``step_size`` epochs, >= 0.
    """

    _settings = {"step_size": positive_int, "gamma": _nonnegative}

    def __init__(self, optimizer, step_size, gamma=0.1):
        super().__init__(optimizer, step_size=step_size, gamma=gamma)

    def _lr_at(self, base_lr, epoch):
        return base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from the initial rate to ``eta_min`` over ``T_max`` epochs, as ``torch``'s.

    ``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``; after ``T_max``
    epochs the rate rises again along the same cosine (no warm restart), as in PyTorch.

    Parameters
    ----------
    optimizer : fastconv.optim.Optimizer
    T_max : int
        Number of epochs of the half period, >= 1.
    eta_min : float, default 0
        Minimum learning rate, >= 0.
    """

    _settings = {"T_max": positive_int, "eta_min": _nonnegative}

    def __init__(self, optimizer, T_max, eta_min=0.0):
        super().__init__(optimizer, T_max=T_max, eta_min=eta_min)

    def _lr_at(self, base_lr, epoch):
        cosine = 1 + math.cos(math.pi * epoch / self.T_max)
        return self.eta_min + (base_lr - self.eta_min) * cosine / 2
