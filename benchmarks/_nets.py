"""The three networks of BENCHMARKS.md for fastconv and for PyTorch, and one training step each.

The fastconv networks come from ``examples/train_fashion_mnist.py`` (``build_model``); the PyTorch
ones below are the same layers. Imports happen inside the builders, so a subprocess that measures
one library (start-up time, memory) loads only that library.
"""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path
from unittest import mock

import numpy as np

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NETS = ("seed", "lenet", "bn")
BATCH = 64
STEPS_PER_EPOCH = math.ceil(60000 / BATCH)  # 938: FashionMNIST's train split, last batch short
SGD_ARGS = {  # BENCHMARKS.md: seed plain SGD, lenet and bn SGD with momentum
    "seed": {"lr": 0.1},
    "lenet": {"lr": 0.05, "momentum": 0.9},
    "bn": {"lr": 0.05, "momentum": 0.9},
}


def synthetic_batch(n=BATCH, seed=0):
    """``(x, y)``: float32 (n, 1, 28, 28) images and int64 (n,) labels in [0, 10)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n)


def fastconv_trainer(name, seed=0):
    """``(model, train_step)``; ``train_step(x, y)`` runs forward, loss, backward and an SGD
    step on NumPy arrays and returns the loss."""
    from fastconv import nn, optim

    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    from train_fashion_mnist import build_model

    model = build_model(name, seed=seed)
    optimizer = optim.SGD(model.parameters(), **SGD_ARGS[name])
    criterion = nn.CrossEntropyLoss()

    def train_step(x, y):
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        model.backward(criterion.backward())
        optimizer.step()
        return loss

    return model, train_step


def torch_trainer(name, seed=0):
    """The PyTorch twin of ``fastconv_trainer``; ``train_step`` also takes NumPy arrays."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if name == "seed":
        layers = [nn.Conv2d(1, 16, 5, stride=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                  nn.Linear(576, 20), nn.ReLU(), nn.Linear(20, 10)]  # fmt: skip
    elif name in ("lenet", "bn"):
        bn = name == "bn"

        def conv_block(c_in, c_out):
            norm = [nn.BatchNorm2d(c_out)] if bn else []
            return [nn.Conv2d(c_in, c_out, 3, padding=1), *norm, nn.ReLU(), nn.MaxPool2d(2)]

        layers = [*conv_block(1, 32), *conv_block(32, 64), nn.Flatten(),
                  *([nn.Dropout(0.25)] if bn else []),
                  nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10)]  # fmt: skip
    else:
        raise ValueError(f"name must be one of {NETS}, got {name!r}")
    model = nn.Sequential(*layers)
    optimizer = torch.optim.SGD(model.parameters(), **SGD_ARGS[name])
    criterion = nn.CrossEntropyLoss()

    def train_step(x, y):
        loss = criterion(model(torch.from_numpy(x)), torch.from_numpy(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    return model, train_step


def trainer(impl, name, seed=0):
    """``fastconv_trainer`` or ``torch_trainer`` by name."""
    return {"fastconv": fastconv_trainer, "torch": torch_trainer}[impl](name, seed)


@contextlib.contextmanager
def reference_layers():
    """Inside the block ``fastconv.nn`` layers call ``fastconv.reference`` (the NumPy loops)
    instead of ``fastconv.functional``: a training step of the slow twin."""
    import fastconv.nn
    import fastconv.reference

    with mock.patch.object(fastconv.nn, "F", fastconv.reference):
        yield
