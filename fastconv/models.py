"""Small CNNs for (N, 1, 28, 28) images and 10 classes (MNIST, Fashion-MNIST), by name.

As ``torchvision.models``: each builder returns a fresh ``nn.Sequential`` whose
``state_dict`` keys and shapes equal those of the same network written with ``torch.nn``, so a
checkpoint saved by the training example loads without the example's source::

    model = fastconv.models.lenet()
    fastconv.load(model, "runs/lenet/checkpoint.npz")
    model.eval()

``build(name)`` picks one by name (``NAMES``). Every builder takes

- ``activation``: the nonlinearity's class (``nn.ReLU``, ``nn.Sigmoid``, ...);
- ``rng``: a ``numpy.random.Generator`` or an int seed for the weight initialisation (and the
  dropout masks, drawn from the same stream), or None for ``fastconv.init``'s default
  generator, as every layer's ``rng``.
"""

from __future__ import annotations

from fastconv import nn
from fastconv._checks import generator
from fastconv.autograd import cat

__all__ = ["NAMES", "build", "seed", "lenet", "bn", "resnet", "inception", "Inception"]


def _layers(rng):
    """``conv`` and ``linear`` layer factories drawing their initial weights from ``rng``."""
    rng = None if rng is None else generator(rng)  # an int seed becomes one shared stream

    def conv(c_in, c_out, k=3, **kw):
        return nn.Conv2d(c_in, c_out, k, rng=rng, **kw)

    def linear(n_in, n_out):
        return nn.Linear(n_in, n_out, rng=rng)

    return conv, linear, rng


def seed(activation=nn.ReLU, rng=None):
    """The tutorial's network: one strided 5x5 conv (16 channels), max-pool, two linear layers.

    (N,1,28,28) -> conv k5 s2 (N,16,12,12) -> pool (N,16,6,6) -> 576 -> 20 -> 10; 12,166
    parameters.
    """
    conv, linear, _ = _layers(rng)
    act = activation
    return nn.Sequential(
        conv(1, 16, 5, stride=2), act(), nn.MaxPool2d(2), nn.Flatten(),
        linear(576, 20), act(), linear(20, 10),
    )  # fmt: skip


def lenet(activation=nn.ReLU, rng=None):
    """Two 3x3 convs (32, 64 channels, padding 1) each followed by a 2x2 max-pool, then two
    linear layers: 28x28 -> 14x14 -> 7x7, 64 * 7 * 7 = 3136 -> 128 -> 10; 421,642 parameters.
    """
    return _lenet(activation, rng, batch_norm=False)


def bn(activation=nn.ReLU, rng=None):
    """:func:`lenet` with a BatchNorm2d after each conv and Dropout(0.25) before the first
    linear layer; 421,834 parameters."""
    return _lenet(activation, rng, batch_norm=True)


def _lenet(act, rng, batch_norm):
    conv, linear, rng = _layers(rng)

    def norm(channels):
        return [nn.BatchNorm2d(channels)] if batch_norm else []

    return nn.Sequential(
        conv(1, 32, padding=1), *norm(32), act(), nn.MaxPool2d(2),
        conv(32, 64, padding=1), *norm(64), act(), nn.MaxPool2d(2),
        nn.Flatten(), *([nn.Dropout(0.25, rng=rng)] if batch_norm else []),
        linear(3136, 128), act(), linear(128, 10),
    )  # fmt: skip


def resnet(activation=nn.ReLU, rng=None):
    """A small residual network: a 3x3 stem (32 channels) at 28x28, max-pool to 14x14, one
    identity block (32 channels), one downsampling block (32 -> 64 channels, 7x7) with a 1x1
    stride-2 shortcut, global average pool and a linear head; 77,290 parameters.

    Each block is ``act(body(x) + shortcut(x))`` with ``body`` = conv-BN-act-conv-BN (convs
    without bias, as BN follows them).
    """
    conv, linear, _ = _layers(rng)
    act = activation

    def block(c_in, c_out, stride):
        body = nn.Sequential(
            conv(c_in, c_out, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
            act(), conv(c_out, c_out, padding=1, bias=False), nn.BatchNorm2d(c_out),
        )  # fmt: skip
        shortcut = None
        if stride != 1 or c_in != c_out:
            shortcut = nn.Sequential(
                conv(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        return nn.Sequential(nn.Residual(body, shortcut), act())

    return nn.Sequential(
        conv(1, 32, padding=1, bias=False), nn.BatchNorm2d(32), act(), nn.MaxPool2d(2),
        block(32, 32, 1), block(32, 64, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear(64, 10),
    )  # fmt: skip


class Inception(nn.Module):
    """An Inception block (GoogLeNet's, without the 5x5 branch): three branches on the same
    input, concatenated on channels, each unit conv (no bias) -> BatchNorm -> activation::

        b1: 1x1 conv                              -> c1 channels
        b2: 1x1 conv (c2_reduce) -> 3x3 conv       -> c2 channels
        b3: 3x3 max pool (stride 1) -> 1x1 conv   -> c3 channels

    (N, c_in, H, W) -> (N, c1 + c2 + c3, H, W). Its ``forward`` is written with Tensors
    (``fastconv.cat``): it trains in autograd mode, and in layer mode too (a ``Sequential``
    holding it, ``training.train_step``), where its backward runs the graph it recorded.
    """

    def __init__(self, c_in, c1, c2_reduce, c2, c3, activation=nn.ReLU, conv=None):
        super().__init__()
        conv = conv or nn.Conv2d

        def unit(c_in, c_out, k):
            return [conv(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out),
                    activation()]  # fmt: skip

        self.b1 = nn.Sequential(*unit(c_in, c1, 1))
        self.b2 = nn.Sequential(*unit(c_in, c2_reduce, 1), *unit(c2_reduce, c2, 3))
        self.b3 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *unit(c_in, c3, 1))

    def forward(self, x):
        return cat([self.b1(x), self.b2(x), self.b3(x)], dim=1)


def inception(activation=nn.ReLU, rng=None):
    """A small Inception network, the autograd example: a 3x3 stem (32 channels) at 28x28,
    max-pool, an Inception block (32 -> 48 channels) at 14x14, max-pool, an Inception block
    (48 -> 72 channels) at 7x7, then two linear layers: 72 * 7 * 7 = 3528 -> 128 -> 10;
    468,394 parameters.
    """
    conv, linear, _ = _layers(rng)
    act = activation

    def block(*channels):
        return Inception(*channels, activation=act, conv=conv)

    return nn.Sequential(
        conv(1, 32, padding=1, bias=False), nn.BatchNorm2d(32), act(), nn.MaxPool2d(2),
        block(32, 16, 16, 24, 8), nn.MaxPool2d(2),
        block(48, 24, 24, 32, 16),
        nn.Flatten(), linear(72 * 7 * 7, 128), act(), linear(128, 10),
    )  # fmt: skip


_BUILDERS = {"seed": seed, "lenet": lenet, "bn": bn, "resnet": resnet, "inception": inception}
NAMES = tuple(_BUILDERS)


def build(name, activation=nn.ReLU, rng=None):
    """The network ``name`` (one of ``NAMES``: seed, lenet, bn, resnet, inception); see its
    builder."""
    if name not in _BUILDERS:
        raise ValueError(f"name must be one of {', '.join(NAMES)}, got {name!r}")
    return _BUILDERS[name](activation=activation, rng=rng)
