"""The rank side of test_distributed.py: run under ``mpiexec -n 2 python tests/mpi_worker.py``.

``train OUT``: trains the test cases (:data:`CASES`) data-parallel and has rank 0 write every
rank's final state dict to ``OUT`` (``.npz``; keys ``"<case>/<rank>/<name>"``), for the test to
compare with one process (:func:`run`, imported by the test). ``fail``: rank 1 raises after a
step while rank 0 trains on, the failure the abort hook must turn into a non-zero exit.
``api``: the public functions' contract, asserted on the ranks (:func:`check_api`).
"""

from __future__ import annotations

import sys

import numpy as np

from fastconv import models, nn, optim, training
from fastconv._data_parallel import _parallel_step
from fastconv.datasets import DataLoader

# 9 full global batches of 16 and a last one of 1 sample: with 2 ranks, rank 1's slice of the
# last batch is empty. Two epochs: 20 steps.
N, BATCH, EPOCHS = 145, 16, 2
# (name, dtype, loop, model): "loop" is the public API by hand, "train" is training.train.
CASES = (
    ("loop64", np.float64, "loop", "seed"),
    ("train64", np.float64, "train", "seed"),
    ("train32", np.float32, "train", "seed"),
    ("bn64", np.float64, "train", "bn"),  # BatchNorm and Dropout: ranks must agree at the end
)


def data(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 1, 28, 28)).astype(dtype)
    y = rng.integers(0, 10, N).astype(np.int64)
    return x, y


def run(dtype, loop, model_name, group=None):
    """Train one case; ``group`` None: one process on the global batch. Returns the state dict."""
    model = models.build(model_name, rng=0).to(dtype)
    optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    shard = {} if group is None else {"rank": group.rank, "world_size": group.world_size}
    loader = DataLoader(*data(dtype), BATCH, seed=1, **shard)
    if loop == "train":
        training.train(model, optimizer, loader, epochs=EPOCHS, progress=False, log=None,
                       distributed=group)  # fmt: skip
        return model.state_dict()
    if group is not None:
        import fastconv.distributed as dist

        dist.broadcast_parameters(model)
    criterion = nn.CrossEntropyLoss()
    for _ in range(EPOCHS):
        for xb, yb in loader:
            optimizer.zero_grad()
            if len(yb):  # a rank's empty slice of the short last batch: no forward
                criterion(model(xb), yb)
                model.backward(criterion.backward())
            if group is not None:
                dist.allreduce_gradients(model, count=len(yb))
            optimizer.step()
    return model.state_dict()


def simulate(dtype, model_name, world_size=2):
    """What the documented semantics promise, in one process: ``world_size`` replicas, each on
    its slice with its own BatchNorm batch statistics and its own copy of the dropout stream,
    stepping with the gradients averaged weighted by the slices' sizes; after each epoch every
    replica takes replica 0's buffers. Returns replica 0's state dict."""
    replicas = [models.build(model_name, rng=0).to(dtype) for _ in range(world_size)]
    optimizers = [optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in replicas]
    loaders = [DataLoader(*data(dtype), BATCH, seed=1, rank=r, world_size=world_size)
               for r in range(world_size)]  # fmt: skip
    criterion = nn.CrossEntropyLoss()
    for _ in range(EPOCHS):
        for batches in zip(*loaders, strict=True):
            grads, counts = [], []
            for model, (xb, yb) in zip(replicas, batches, strict=True):
                model.zero_grad()
                if len(yb):
                    criterion(model(xb), yb)
                    model.backward(criterion.backward())
                grads.append([p.grad for p in model.parameters()])
                counts.append(len(yb))
            for i, params in enumerate(zip(*(m.parameters() for m in replicas), strict=True)):
                mean = sum(g[i] * n for g, n in zip(grads, counts, strict=True) if n)
                for p in params:
                    p.grad = mean / sum(counts)
            for opt in optimizers:
                opt.step()
        for model in replicas[1:]:
            for (_, mine), (_, first) in zip(model.named_buffers(), replicas[0].named_buffers(),
                                             strict=True):  # fmt: skip
                np.copyto(mine, first)
    return replicas[0].state_dict()


def check_api(dist, group):
    """The public functions' contract on 2 ranks; an AssertionError ends the job non-zero."""
    import os

    rank = group.rank
    # A float32 and a float64 layer: one buffer per dtype. Rank 1 builds other weights.
    model = nn.Sequential(nn.Linear(3, 2, rng=rank), nn.Linear(2, 2, rng=rank).double())
    dist.broadcast_parameters(model)
    everyone = group.comm.allgather([p.data.copy() for p in model.parameters()])
    for mine, theirs in zip(everyone[0], everyone[1], strict=True):
        assert np.array_equal(mine, theirs)
    assert model[0].weight.data.dtype == np.float32 and model[1].weight.data.dtype == np.float64

    # Plain mean (count=None): rank r's gradients are (r + 1) * base, the mean 1.5 * base. The
    # last bias has a gradient on rank 0 only (zeros on rank 1); model[0].bias on none.
    params = list(model.parameters())
    for p in params:
        p.grad = None
    for p in params[:3]:
        p.grad = (rank + 1) * np.arange(p.data.size, dtype=p.data.dtype).reshape(p.data.shape)
    if rank == 0:
        params[3].grad = np.full(params[3].data.shape, 4.0)
    params[1].grad = None
    assert dist.allreduce_gradients(model) == 2
    for p in (params[0], params[2]):
        assert p.grad.dtype == p.data.dtype
        np.testing.assert_array_equal(p.grad, 1.5 * np.arange(p.data.size).reshape(p.data.shape))
    assert params[1].grad is None
    np.testing.assert_array_equal(params[3].grad, np.full(params[3].data.shape, 2.0))

    # Weighted by count: rank 0 has 3 samples (gradient 1), rank 1 has 1 (gradient 5): 2.
    for p in params:
        p.grad = np.full(p.data.shape, 1.0 if rank == 0 else 5.0, p.data.dtype)
    assert dist.allreduce_gradients(model, count=3 if rank == 0 else 1) == 4
    assert all(np.array_equal(p.grad, np.full(p.data.shape, 2.0)) for p in params)
    try:
        dist.allreduce_gradients(model, count=-1)
        raise AssertionError("count=-1 was accepted")
    except ValueError as e:
        assert "count must be a non-negative int" in str(e)

    # Another network on rank 1: the same ValueError on both ranks, no hang.
    other = models.seed(rng=0) if rank == 0 else models.lenet(rng=0)
    try:
        dist.broadcast_parameters(other)
        raise AssertionError("different networks were accepted")
    except ValueError as e:
        assert "rank 1's model differs from rank 0's" in str(e), e

    # The thread budget: each rank's share of the cores both may use.
    cores = len(os.sched_getaffinity(0))
    assert dist.default_num_threads() == max(1, min(cores // 2, numba_threads())), cores
    print(f"rank {rank}: api ok")


def numba_threads():
    import numba

    return numba.config.NUMBA_NUM_THREADS


def main(argv):
    import fastconv.distributed as dist

    group = dist.init_process_group(threads=1)
    if argv[0] == "api":
        check_api(dist, group)
        return
    if argv[0] == "fail":
        model = models.seed(rng=0)
        optimizer = optim.SGD(model.parameters(), lr=0.05)
        loader = DataLoader(*data(np.float32), BATCH, seed=1, rank=group.rank, world_size=2)
        for step, (xb, yb) in enumerate(loader):
            if group.rank == 1 and step == 2:
                raise RuntimeError("rank 1 fails on purpose")
            _parallel_step(model, nn.CrossEntropyLoss(), optimizer, xb, yb, group)
        return
    results = {}
    for name, dtype, loop, model_name in CASES:
        state = run(dtype, loop, model_name, group)
        for rank, theirs in enumerate(group.comm.gather(state, root=0) or []):
            results.update({f"{name}/{rank}/{k}": v for k, v in theirs.items()})
    if group.rank == 0:
        np.savez(argv[1], **results)


if __name__ == "__main__":
    main(sys.argv[1:])
