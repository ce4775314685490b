"""Autograd memory: the graph's nodes and saved arrays are freed by backward (not by the garbage
collector: no reference cycles), and training does not grow memory."""

from __future__ import annotations

import gc
import tracemalloc
import weakref

import numpy as np
import pytest

import fastconv
from fastconv import Tensor, models, nn, optim


class _Net(nn.Module):
    """Branches joined by cat, batch norm, dropout, pooling, a shared ReLU, two losses."""

    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()
        self.a = nn.Conv2d(1, 3, 3, padding=1, rng=0)
        self.b = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(1, 2, 1, rng=1), nn.BatchNorm2d(2))
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(0.2, rng=2)
        self.fc = nn.Linear(5 * 4 * 4, 3, rng=3)
        self.aux = nn.Linear(5, 3, rng=4)

    def forward(self, x):
        h = self.act(fastconv.cat([self.a(x), self.b(x)], 1))
        main = self.fc(self.drop(self.act(self.pool(h)).flatten(1)))
        return main, self.aux(h.mean(dim=(2, 3)))


def _step(model, criterion, optimizer, x, y):
    main, aux = model(Tensor(x))
    loss = criterion(main, y) + 0.5 * criterion(aux, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def _graph(root):
    """Every node of ``root``'s graph (Tensors with a recorded backward) and every array saved
    in their closures (directly or in a cache dict or tuple)."""
    nodes, arrays, stack, seen = [], [], [root], set()
    while stack:
        t = stack.pop()
        if id(t) in seen or t._backward is None:
            continue
        seen.add(id(t))
        nodes.append(t)
        stack.extend(t._parents)
        values = [cell.cell_contents for cell in t._backward.__closure__ or ()]
        while values:
            v = values.pop()
            if isinstance(v, np.ndarray):
                arrays.append(v)
            elif isinstance(v, dict):
                values.extend(v.values())
            elif isinstance(v, (tuple, list)):
                values.extend(v)
    return nodes, arrays


def test_backward_frees_every_node_and_saved_array(rng):
    model, criterion = _Net(), nn.CrossEntropyLoss()
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 1])
    main, aux = model(Tensor(x))
    loss = criterion(main, y) + 0.5 * criterion(aux, y)
    nodes, arrays = _graph(loss)
    assert len(nodes) >= 15 and len(arrays) >= 10
    kept = {id(x), id(y)} | {id(a) for _, a in model._state_arrays()}  # parameters, buffers
    node_refs = [weakref.ref(n) for n in nodes if n is not loss]
    array_refs = [weakref.ref(a) for a in arrays if id(a) not in kept and a.base is None]
    loss_ref = weakref.ref(loss)
    del nodes, arrays, main, aux
    gc.disable()  # freed by reference counting, not by the cycle collector
    try:
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        assert [r() for r in node_refs if r() is not None] == []
        assert [r() for r in array_refs if r() is not None] == []
        del loss
        assert loss_ref() is None
    finally:
        gc.enable()


def test_training_steps_do_not_grow_memory(rng):
    model, criterion = _Net(), nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 1])
    # One thread: the steps are tiny, and a thread pool's start-up per kernel would dominate.
    with fastconv.threads(1):
        for _ in range(20):  # compile, plan and allocate the workspaces first
            _step(model, criterion, optimizer, x, y)
        tracemalloc.start()
        try:
            # Bounded growth first, none of it autograd's: Python's free lists of small tuples
            # fill up to their cap (about 30 kB here), threadpoolctl caches what it found, and
            # the dispatch of the blocked conv's weight-gradient kernel keeps about 450 kB
            # over its first ~500 calls (numba's side). Measured per 1,000 steps: +116 kB,
            # +22 kB, then within +-200 bytes up to 8,000 steps.
            for _ in range(2000):
                _step(model, criterion, optimizer, x, y)
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(1000):
                _step(model, criterion, optimizer, x, y)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    # A leak of one small object per step would be over 50 kB; the noise is a few hundred bytes.
    assert grown < 8 * 1024, f"memory grew by {grown} bytes over 1000 steps"


def test_freed_memory_is_reused_not_faulted_back(monkeypatch):
    """An autograd step frees everything it allocated; the next one must find that memory in
    the heap (``autograd._heap``), not page-fault it in again from the system (2,400 faults
    per LeNet step at batch 64 without it)."""
    resource = pytest.importorskip("resource")
    from fastconv.autograd import _heap

    monkeypatch.setenv("FASTCONV_KEEP_HEAP", "0")
    assert not _heap.keep_heap()
    monkeypatch.delenv("FASTCONV_KEEP_HEAP")
    if not _heap.keep_heap():
        pytest.skip("not glibc, or MALLOC_*_ thresholds set by the user")
    model, criterion = models.lenet(rng=0), nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 64)

    def step():
        loss = criterion(model(Tensor(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    faults = []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    assert min(faults) < 200, f"page faults per step: {faults}"
