"""The three benchmark networks for fastconv and for PyTorch, and one training step each.

The fastconv networks are ``fastconv.models``; the PyTorch ones below are the same layers
(``tests/test_models.py`` checks that their state dicts match key for key). Imports happen inside
the builders, so a subprocess that measures one library (start-up time, memory) loads only that
library.
"""

from __future__ import annotations

import math

import numpy as np

NETS = ("seed", "lenet", "bn")
BATCH = 64
STEPS_PER_EPOCH = math.ceil(60000 / BATCH)  # 938: FashionMNIST's train split, last batch short
SGD_ARGS = {  # as the training example: seed plain SGD, lenet and bn SGD with momentum
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
    from fastconv import models, nn, optim, training

    model = models.build(name, rng=seed)
    optimizer = optim.SGD(model.parameters(), **SGD_ARGS[name])
    criterion = nn.CrossEntropyLoss()

    def train_step(x, y):
        return training.train_step(model, criterion, optimizer, x, y)[0]

    return model, train_step


def torch_model(name, seed=0):
    """The PyTorch twin of ``fastconv.models.build(name)`` (any of its names, not only ``NETS``),
    initialised after ``torch.manual_seed(seed)``."""
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
    elif name == "resnet":

        class Residual(nn.Module):  # fastconv.nn.Residual: block(x) + shortcut(x)
            def __init__(self, block, shortcut=None):
                super().__init__()
                self.block, self.shortcut = block, shortcut

            def forward(self, x):
                return self.block(x) + (x if self.shortcut is None else self.shortcut(x))

        def res_block(c_in, c_out, stride):
            body = nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
            )  # fmt: skip
            shortcut = None
            if stride != 1 or c_in != c_out:
                shortcut = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
                )
            return nn.Sequential(Residual(body, shortcut), nn.ReLU())

        layers = [nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                  nn.MaxPool2d(2), res_block(32, 32, 1), res_block(32, 64, 2),
                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]  # fmt: skip
    elif name == "inception":

        class Inception(nn.Module):  # fastconv.models.Inception
            def __init__(self, c_in, c1, c2_reduce, c2, c3):
                super().__init__()

                def unit(c_in, c_out, k):
                    return [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
                            nn.BatchNorm2d(c_out), nn.ReLU()]  # fmt: skip

                self.b1 = nn.Sequential(*unit(c_in, c1, 1))
                self.b2 = nn.Sequential(*unit(c_in, c2_reduce, 1), *unit(c2_reduce, c2, 3))
                self.b3 = nn.Sequential(nn.MaxPool2d(3, 1, 1), *unit(c_in, c3, 1))

            def forward(self, x):
                return torch.cat([self.b1(x), self.b2(x), self.b3(x)], 1)

        layers = [nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                  nn.MaxPool2d(2), Inception(32, 16, 16, 24, 8), nn.MaxPool2d(2),
                  Inception(48, 24, 24, 32, 16), nn.Flatten(), nn.Linear(72 * 7 * 7, 128),
                  nn.ReLU(), nn.Linear(128, 10)]  # fmt: skip
    else:
        raise ValueError(f"name must be seed, lenet, bn, resnet or inception, got {name!r}")
    return nn.Sequential(*layers)


def torch_trainer(name, seed=0):
    """The PyTorch twin of ``fastconv_trainer``; ``train_step`` also takes NumPy arrays."""
    import torch

    model = torch_model(name, seed)
    optimizer = torch.optim.SGD(model.parameters(), **SGD_ARGS[name])
    criterion = torch.nn.CrossEntropyLoss()

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
