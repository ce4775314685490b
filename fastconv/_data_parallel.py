"""The data-parallel parts of :func:`fastconv.training.train` that need no MPI themselves: the
group object (``fastconv.distributed.ProcessGroup``) does the communication."""

from __future__ import annotations

from fastconv._run_dir import History, _random_streams


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
