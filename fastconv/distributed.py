"""Data-parallel training over MPI: every rank holds the whole model and a slice of each batch.

Needs the optional extra ``fastconv[mpi]`` (``mpi4py`` and an MPI from PyPI, the ``mpich``
wheel: no system MPI and no compiler). ``import fastconv`` never imports it; this module does,
and without it raises ``ImportError`` naming the extra. Run a script under ``mpiexec``::

    mpiexec -n 2 python examples/train_fashion_mnist.py --distributed --model lenet

A training script does what ``fastconv.training.train(..., distributed=group)`` does::

    import fastconv.distributed as dist
    group = dist.init_process_group()        # abort on error, threads = cores / local ranks
    model = fastconv.models.lenet(rng=0)
    dist.broadcast_parameters(model)         # every rank starts from rank 0's weights
    loader = DataLoader(x, y, 64, seed=0, rank=group.rank, world_size=group.world_size)
    for xb, yb in loader:                    # each rank: its slice of the global batch of 64
        optimizer.zero_grad()
        if len(yb):                          # a short last batch may leave a rank no sample
            loss = criterion(model(xb), yb)  # reduction="mean" over the local slice
            model.backward(criterion.backward())
        dist.allreduce_gradients(model, count=len(yb))   # now the global batch's mean gradient
        optimizer.step()

Semantics:

- **Batch size** is global: ``DataLoader(..., batch_size=B, rank=r, world_size=W)`` deals each
  global batch of ``B`` samples out in ``W`` contiguous slices (sizes differ by one at most), so
  an epoch has the same steps as one process with batch ``B``. ``allreduce_gradients(model,
  count=n)`` weights each rank's mean gradient by its ``n`` samples, so the result is the mean
  over the global batch even when the last batch splits unevenly (a rank may get no sample).
  The loss must be a mean over the local samples (``reduction="mean"``).
- **BatchNorm** normalises with each rank's local batch statistics (as PyTorch's DDP without
  ``SyncBatchNorm``), so a network with BatchNorm trains differently from one process; the
  running statistics kept are rank 0's, copied to every rank by ``broadcast_buffers`` (which
  ``training.train`` calls after every epoch, as DDP's ``broadcast_buffers=True``). Networks
  without BatchNorm train as one process does, to rounding.
- **Dropout** draws each rank's masks from its own copy of the model's generator, which is the
  same stream on every rank: rank ``r``'s ``i``-th sample gets the same mask on every rank.
- **Threads**: ``init_process_group`` gives each rank its share of the cores the ranks on its
  machine may use (``len(os.sched_getaffinity(0))`` divided by the local ranks), unless the
  caller passes ``threads`` or the environment sets ``NUMBA_NUM_THREADS``.
- **Failure**: after ``init_process_group`` an uncaught exception on any rank calls
  ``MPI_Abort``, so ``mpiexec`` ends the job with a non-zero status instead of the other ranks
  waiting forever in a collective.
"""

from __future__ import annotations

import os
import pickle
import sys

import numpy as np

try:
    from mpi4py import MPI
except ImportError as e:  # the extra is optional: say which one to install
    raise ImportError(
        "fastconv.distributed needs mpi4py and an MPI library, the optional extra "
        f"fastconv[mpi]: pip install 'fastconv[mpi]' ({e})"
    ) from e

import numba

from fastconv._checks import is_int, positive_int
from fastconv._threads import set_num_threads

__all__ = [
    "ProcessGroup",
    "allreduce_gradients",
    "broadcast_buffers",
    "broadcast_parameters",
    "default_num_threads",
    "init_process_group",
]


def _comm(comm):
    return MPI.COMM_WORLD if comm is None else comm


def _check_root(root, comm):
    if not is_int(root):
        raise TypeError(f"root must be an int, got {root!r}")
    if not 0 <= root < comm.Get_size():
        raise ValueError(f"root must be a rank in [0, {comm.Get_size()}), got {root}")
    return int(root)


# ---------------------------------------------------------------------------------------------
# Flat buffers: one contiguous array per dtype, so one collective moves all of a model's arrays
# ---------------------------------------------------------------------------------------------


def _by_dtype(arrays):
    """``[(dtype, [(index, array), ...]), ...]`` in a fixed order (dtype name, then position),
    the same on every rank whose model has the same structure."""
    groups = {}
    for i, a in enumerate(arrays):
        groups.setdefault(np.dtype(a.dtype), []).append((i, a))
    return sorted(groups.items(), key=lambda item: item[0].str)


def _check_same_structure(named, comm, root, what):
    """Raise the same ``ValueError`` on every rank unless all ranks hold arrays of the same names,
    shapes and dtypes as ``root`` (a mismatch would otherwise mix up or hang the collectives)."""
    mine = [(name, a.shape, a.dtype.str) for name, a in named]
    everyone = comm.allgather(mine)
    for rank, theirs in enumerate(everyone):
        if theirs != everyone[root]:
            diff = next(
                (f"{a} vs {b}" for a, b in zip(everyone[root], theirs, strict=False) if a != b),
                f"{len(everyone[root])} vs {len(theirs)} arrays",
            )
            raise ValueError(
                f"{what}: rank {rank}'s model differs from rank {root}'s ({diff}); every rank "
                "must build the same network"
            )


def _broadcast_arrays(named, comm, root, what):
    """Copy rank ``root``'s arrays into every rank's, in place: one ``Bcast`` per dtype."""
    _check_same_structure(named, comm, root, what)
    arrays = [a for _, a in named]
    for dtype, members in _by_dtype(arrays):
        if comm.Get_rank() == root:
            flat = np.concatenate([a.reshape(-1) for _, a in members])
        else:
            flat = np.empty(sum(a.size for _, a in members), dtype)
        comm.Bcast(flat, root=root)
        start = 0
        for _, a in members:
            np.copyto(a, flat[start : start + a.size].reshape(a.shape))
            start += a.size


def broadcast_parameters(model, root=0, comm=None):
    """Give every rank rank ``root``'s parameters and buffers (BatchNorm's running statistics),
    in place, as PyTorch's DDP does when it wraps a model.

    Parameters
    ----------
    model : fastconv.nn.Module
        The same network on every rank (names, shapes and dtypes are checked first: a mismatch
        raises the same ``ValueError`` on every rank).
    root : int
        The rank whose values are kept.
    comm : mpi4py.MPI.Comm, optional
        Default ``MPI.COMM_WORLD``.

    Notes
    -----
    A collective: every rank of ``comm`` must call it. One ``Bcast`` per dtype, over a flat copy
    of the arrays.
    """
    comm = _comm(comm)
    root = _check_root(root, comm)
    named = [(n, p.data) for n, p in model.named_parameters()]
    named += list(model.named_buffers())
    _broadcast_arrays(named, comm, root, "broadcast_parameters")


def broadcast_buffers(model, root=0, comm=None):
    """Give every rank rank ``root``'s buffers (BatchNorm's running statistics and counts), in
    place; the parameters are left alone. A collective, like :func:`broadcast_parameters`."""
    comm = _comm(comm)
    root = _check_root(root, comm)
    _broadcast_arrays(list(model.named_buffers()), comm, root, "broadcast_buffers")


def _allreduce_gradients(model, count, stats, comm):
    """Average the gradients across ranks, weighted by ``count``; sum ``stats`` in the same call.

    The buffer of each dtype holds, in order: every parameter's ``grad * count`` (zeros for a
    parameter without a gradient), one flag per parameter (1 if it had a gradient) and
    ``count``; the last dtype's buffer (float64 if the model has any) also carries ``stats``.
    After the ``Allreduce`` (SUM), each gradient is the sum divided by the total count; a
    parameter that had no gradient on any rank keeps ``grad = None``. MPICH's ``Allreduce``
    hands every rank the same sums (the tests check the ranks' weights stay bit-identical), so
    the ranks take the same optimizer steps.

    Returns ``(total count, summed stats as a float64 array)``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = _by_dtype([p.data for p in params]) or [(np.dtype(np.float64), [])]
    weight = 1 if count is None else count
    stats = np.asarray(stats, dtype=np.float64).reshape(-1)
    total, summed = 0, np.zeros(0)
    for g, (dtype, members) in enumerate(groups):
        last = g == len(groups) - 1
        sizes = [params[i].data.size for i, _ in members]
        n = sum(sizes)
        flat = np.zeros(n + len(members) + 1 + (stats.size if last else 0), dtype)
        start = 0
        for k, ((i, _), size) in enumerate(zip(members, sizes, strict=True)):
            grad = params[i].grad
            if grad is not None:  # times 1 when count is None: the same values
                np.multiply(grad.reshape(-1), weight, out=flat[start : start + size])
                flat[n + k] = 1
            start += size
        flat[n + len(members)] = weight
        if last:
            flat[n + len(members) + 1 :] = stats
        comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        total = flat[n + len(members)]
        if last:
            summed = flat[n + len(members) + 1 :].astype(np.float64)
        if total > 0:
            flat[:n] /= total
        start = 0
        for k, ((i, _), size) in enumerate(zip(members, sizes, strict=True)):
            p = params[i]
            # A view of the buffer: each parameter owns its slice, and the buffer is new per call.
            if flat[n + k] > 0 and total > 0:
                p.grad = flat[start : start + size].reshape(p.data.shape)
            start += size
    return int(round(float(total))), summed  # the world size when every weight is 1


def allreduce_gradients(model, count=None, comm=None):
    """Replace every parameter's ``.grad`` by its average over the ranks, in place.

    Parameters
    ----------
    model : fastconv.nn.Module
        The same network on every rank, after ``backward``.
    count : int, optional
        The number of samples this rank's gradient is the mean over (its local batch size, with
        ``reduction="mean"``). Given, each rank's gradient is weighted by it, so the result is
        the mean over all ranks' samples, exactly what one process computes on the global
        batch even when the slices differ in size; a rank with ``count=0`` (no samples, its
        gradients may be None) contributes nothing. None: the plain mean over the ranks.
    comm : mpi4py.MPI.Comm, optional
        Default ``MPI.COMM_WORLD``.

    Returns
    -------
    int
        The total count over the ranks (the world size when ``count`` is None).

    Notes
    -----
    One ``Allreduce`` (SUM, then a division) per dtype over a flat buffer of every gradient, not
    one call per parameter. A parameter whose ``grad`` is None on some ranks counts as zeros
    there; one whose ``grad`` is None on every rank stays None. The reduced gradients are views
    of that buffer (a new one per call).
    """
    comm = _comm(comm)
    if count is not None:
        if not is_int(count) or count < 0:
            raise ValueError(f"count must be a non-negative int, got {count!r}")
        count = int(count)
    total, _ = _allreduce_gradients(model, count, (), comm)
    return total


# ---------------------------------------------------------------------------------------------
# Threads, failure, and the group object the training loop uses
# ---------------------------------------------------------------------------------------------


def default_num_threads(comm=None):
    """The kernel threads each rank should use: its share of the CPUs it may run on.

    Each CPU in this process's affinity mask counts ``1 / k``, where ``k`` is the number of
    ranks on this machine whose masks hold it: ``cores // local ranks`` when the ranks share all
    cores (mpiexec's default), the rank's own cores when mpiexec binds ranks to disjoint ones.
    At least 1 and at most numba's pool size. A collective over ``comm``.
    """
    comm = _comm(comm)
    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        masks = local.allgather(mine)
    finally:
        local.Free()
    if mine is None:  # no affinity masks (macOS): all cores, shared by the local ranks
        share = (os.cpu_count() or 1) // len(masks)
    else:
        share = int(sum(1 / sum(cpu in m for m in masks) for cpu in mine) + 1e-9)
    return max(1, min(share, numba.config.NUMBA_NUM_THREADS))


def _abort_on_uncaught_exception(comm):
    """After the usual traceback, ``MPI_Abort``: the other ranks may be waiting in a collective
    that this rank will never join, and only an abort makes ``mpiexec`` end them."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        try:
            previous(kind, value, tb)
            sys.stderr.flush()
        finally:
            comm.Abort(1)

    sys.excepthook = hook


class ProcessGroup:
    """The ranks of an MPI communicator training one model; what :func:`init_process_group`
    returns and ``fastconv.training.train(..., distributed=)`` takes.

    Attributes
    ----------
    comm : mpi4py.MPI.Comm
    rank, world_size : int
        This process's rank and the number of ranks.
    """

    def __init__(self, comm=None):
        self.comm = _comm(comm)
        self.rank = self.comm.Get_rank()
        self.world_size = self.comm.Get_size()

    def __repr__(self):
        return f"ProcessGroup(rank={self.rank}, world_size={self.world_size})"

    def broadcast_parameters(self, model, root=0):
        broadcast_parameters(model, root, self.comm)

    def broadcast_buffers(self, model, root=0):
        broadcast_buffers(model, root, self.comm)

    def allreduce_gradients(self, model, count=None):
        return allreduce_gradients(model, count, self.comm)

    def allreduce_step(self, model, count, stats):
        """One training step's collective: the gradients averaged (weighted by ``count``) and
        ``stats`` (floats) summed, in the one ``Allreduce`` per dtype. Returns ``(total count,
        summed stats)``."""
        return _allreduce_gradients(model, count, stats, self.comm)

    def allreduce_sum(self, values):
        """``values`` (floats) summed over the ranks, as a float64 array."""
        out = np.array(values, dtype=np.float64)
        self.comm.Allreduce(MPI.IN_PLACE, out, op=MPI.SUM)
        return out

    def broadcast_object(self, obj, root=0):
        """Rank ``root``'s ``obj`` on every rank (pickled: small objects, once per run)."""
        if self.rank == root and isinstance(obj, BaseException):
            try:
                pickle.dumps(obj)
            except Exception:  # an exception that does not pickle: its type and message
                obj = RuntimeError(f"{type(obj).__name__}: {obj}")
        return self.comm.bcast(obj, root=root)

    def abort(self, code=1):
        """End every rank of the job now with exit status ``code`` (``MPI_Abort``)."""
        self.comm.Abort(code)


def init_process_group(threads=None, comm=None, abort_on_error=True):
    """Set this rank up for data-parallel training and return its :class:`ProcessGroup`.

    Parameters
    ----------
    threads : int, optional
        Kernel threads for this rank. Default: ``NUMBA_NUM_THREADS`` if the environment sets it
        (numba's pool is then what the user asked for), else :func:`default_num_threads`, the
        rank's share of its machine's cores.
    comm : mpi4py.MPI.Comm, optional
        Default ``MPI.COMM_WORLD``.
    abort_on_error : bool
        Install a ``sys.excepthook`` that calls ``MPI_Abort`` after printing an uncaught
        exception (with more than one rank), so a failing rank ends the job instead of leaving
        the others waiting in a collective.

    A collective: every rank of ``comm`` must call it.
    """
    group = ProcessGroup(comm)
    if threads is not None:
        set_num_threads(positive_int("threads", threads))
    elif "NUMBA_NUM_THREADS" not in os.environ:
        set_num_threads(default_num_threads(group.comm))
    if abort_on_error and group.world_size > 1:
        _abort_on_uncaught_exception(group.comm)
    return group
