"""The data-parallel parts of :func:`fastconv.training.train` that need no MPI themselves: the
group object (``fastconv.distributed.ProcessGroup``) does the communication."""

from __future__ import annotations

import math

import numpy as np

from fastconv._run_dir import History, NonFiniteLossError, _random_streams


def _check_averages(criterion):
    """Data-parallel training averages the ranks' gradients: the loss must be a batch mean."""
    if getattr(criterion, "reduction", "mean") != "mean":
        raise ValueError(
            "distributed training averages the ranks' gradients, so the criterion must "
            f"average over the batch (reduction='mean'), got {criterion.reduction!r}"
        )


def _parallel_step(model, criterion, optimizer, x, y, group, interrupts=None):
    """One rank's ``fastconv.training.train_step`` in data-parallel training: ``(loss, count,
    correct)`` of the global batch (every rank's slice), the same on every rank.

    The local slice's mean gradient is averaged over the ranks weighted by the slice's size
    (``fastconv.distributed.allreduce_gradients``); the loss sum, the correct count and the
    interrupt flag ride in the same collective. Every rank joins it even if its own loss is not
    finite (or its slice is empty), and all raise :class:`NonFiniteLossError` together from the
    summed loss, before the optimizer step.
    """
    n = len(y)
    loss, right = 0.0, 0
    stop = bool(interrupts is not None and interrupts.local.requested)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        optimizer.zero_grad()
        if n:  # the last global batch may leave this rank no sample
            logits = model(x)
            loss = criterion(logits, y)
            model._backward_params(criterion.backward())
            right = int((logits.argmax(axis=1) == y).sum())
        total, (loss_sum, right, stop) = group.allreduce_step(model, n, (loss * n, right, stop))
        if interrupts is not None:
            interrupts.requested = stop > 0
        if not math.isfinite(loss_sum):
            raise NonFiniteLossError(f"the training loss became {loss_sum / max(total, 1)}")
        optimizer.step()
    return loss_sum / max(total, 1), total, int(right)


def _open_on_root(group, open_run, model, optimizer, scheduler, loader):
    """Rank 0 alone calls ``open_run()`` (checks the run directory, reads a resume); its error,
    if any, is raised on every rank, else its state is sent to every rank
    (:func:`_sync_from_root`). Returns the History to continue from."""
    restored, failure = History(), None
    if group.rank == 0:
        try:
            restored = open_run()
        except Exception as e:
            failure = e
    agreed = group.broadcast_object(failure)
    if agreed is not None:
        raise failure if failure is not None else agreed
    return _sync_from_root(group, model, optimizer, scheduler, loader, restored)


def _sync_from_root(group, model, optimizer, scheduler, loader, restored):
    """Rank 0's model, optimizer, scheduler, loader and dropout streams and history, on every
    rank; returns the History. The weights go by ``broadcast_parameters`` (checking that every
    rank built the same network), the rest pickled, once per run."""
    group.broadcast_parameters(model)
    loader_rng = getattr(loader, "rng", None)
    state = None
    if group.rank == 0:
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "loader_rng": None if loader_rng is None else loader_rng.bit_generator.state,
            "module_rngs": [rng.bit_generator.state for rng in _random_streams(model)],
            "history": list(restored),
            "position": (restored.step, restored.totals, restored.loader_state, restored.config),
        }
    state = group.broadcast_object(state)
    if group.rank != 0:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        if loader_rng is not None and state["loader_rng"] is not None:
            loader_rng.bit_generator.state = state["loader_rng"]
        for rng, saved in zip(_random_streams(model), state["module_rngs"], strict=True):
            rng.bit_generator.state = saved
    history = History(state["history"])
    history.step, history.totals, history.loader_state, history.config = state["position"]
    return history


class _AgreedInterrupts:
    """Ctrl-C in data-parallel training: ``requested`` is what the ranks agreed on in the last
    step's collective (any rank's Ctrl-C stops all of them at the same step), not this rank's
    own flag (``local``), which a signal may set between two steps on one rank only."""

    def __init__(self, local):
        self.local = local
        self.requested = False
