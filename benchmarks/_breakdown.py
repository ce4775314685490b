"""The training step of a network cut into its operations, for fastconv and for PyTorch.

``step_ops(impl, name, x, y)`` returns the operations of one training step in the order the
step runs them (each layer's forward, the loss forward + backward, each layer's backward in
reverse, the optimizer step) as ``Op(name, prepare, run)``: ``run`` is the operation to time,
``prepare`` (untimed) puts back what it consumes, e.g. a layer's backward needs that layer's
forward to have just run. Every layer gets the input and output gradient it gets in a real
step of the same batch, computed once beforehand.

Each layer is called on its own, so whatever a network does across layers (fastconv's
``Sequential`` runs a ReLU after the max pooling that follows it; a layout kept between layers)
is not in these figures: compare their sum with the whole step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from benchmarks._nets import SGD_ARGS, trainer

SHORT_NAMES = {"Conv2d": "conv", "Linear": "fc", "ReLU": "relu", "MaxPool2d": "pool",
               "Flatten": "flatten", "BatchNorm2d": "bn", "Dropout": "dropout"}  # fmt: skip


@dataclass(frozen=True)
class Op:
    name: str
    prepare: Callable[[], object]
    run: Callable[[], object]


def _nothing():
    return None


def layer_names(layers):
    """``conv1, relu1, pool1, conv2, ...``: the kind of each layer, numbered per kind."""
    counts, names = {}, []
    for layer in layers:
        kind = SHORT_NAMES.get(type(layer).__name__, type(layer).__name__.lower())
        counts[kind] = counts.get(kind, 0) + 1
        names.append(kind if kind == "flatten" else f"{kind}{counts[kind]}")
    return names


def step_ops(impl, name, x, y):
    """``(ops, whole_step)``: the operations of one training step of network ``name`` with
    ``impl`` ("fastconv" or "torch") on the batch ``(x, y)``, and the whole step as one call."""
    model, step = trainer(impl, name)
    ops = (_fastconv_ops if impl == "fastconv" else _torch_ops)(model, name, x, y)
    return ops, lambda: step(x, y)


def _fastconv_ops(model, name, x, y):
    from fastconv import nn, optim

    layers = list(model)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), **SGD_ARGS[name])
    inputs = [x]  # inputs[i]: layer i's input; inputs[-1]: the logits
    for layer in layers:
        inputs.append(np.array(layer(inputs[-1])))  # a copy, in case a layer reuses its output
    criterion(inputs[-1], y)
    grads = [np.array(criterion.backward())]  # grads[i]: gradient of layer L-1-i's output
    for layer in reversed(layers):  # also the first, so every parameter has a gradient
        grads.append(np.array(layer.backward(grads[-1])))
    grad_out = grads[-2::-1]  # grad_out[i]: gradient of layer i's output
    saved = [(p, p.grad.copy()) for p in model.parameters() if p.grad is not None]

    def loss():
        criterion(inputs[-1], y)
        return criterion.backward()

    def restore_grads():
        for p, g in saved:
            p.grad = g.copy()

    def forward(i):
        # ``forward`` itself, timed many times: a call through ``layer(...)`` counts toward the
        # layer-mode check that refuses a backward after several forwards.
        return lambda: layers[i].forward(inputs[i])

    def backward(i):
        def prepare():
            layers[i].zero_grad()
            layers[i](inputs[i])

        if i == 0:  # the images need no gradient: parameters only, as in the training step
            return prepare, lambda: layers[0]._backward_params(grad_out[0])
        return prepare, lambda: layers[i].backward(grad_out[i])

    names = layer_names(layers)
    ops = [Op(f"{names[i]} fwd", _nothing, forward(i)) for i in range(len(layers))]
    ops.append(Op("loss fwd+bwd", _nothing, loss))
    ops += [Op(f"{names[i]} bwd", *backward(i)) for i in reversed(range(len(layers)))]
    ops.append(Op("optimizer step", restore_grads, optimizer.step))
    return ops


def _torch_ops(model, name, x, y):
    import torch

    layers = list(model)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), **SGD_ARGS[name])
    target = torch.from_numpy(y)
    # Each layer's input is a leaf; the images do not require grad (as in a training step, so
    # the first conv computes no input gradient), every later input does.
    inputs = [torch.from_numpy(x)]
    with torch.no_grad():
        for layer in layers:
            inputs.append(layer(inputs[-1]).clone().requires_grad_())
    logits = inputs[-1]
    criterion(logits, target).backward()
    grad_out = [None] * len(layers)
    grad_out[-1] = logits.grad.clone()
    for i in reversed(range(len(layers))):  # also the first, so every parameter has a gradient
        layers[i](inputs[i]).backward(grad_out[i])
        if i > 0:
            grad_out[i - 1] = inputs[i].grad.clone()
    saved = [(p, p.grad.clone()) for p in model.parameters() if p.grad is not None]
    outputs = [None] * len(layers)

    def loss():
        criterion(logits, target).backward()

    def clear_logits_grad():
        logits.grad = None

    def restore_grads():
        for p, g in saved:
            p.grad = g.clone()

    def forward(i):
        return lambda: layers[i](inputs[i])

    def backward(i):
        def prepare():
            layers[i].zero_grad(set_to_none=True)
            inputs[i].grad = None
            outputs[i] = layers[i](inputs[i])

        return prepare, lambda: outputs[i].backward(grad_out[i])

    names = layer_names(layers)
    ops = [Op(f"{names[i]} fwd", _nothing, forward(i)) for i in range(len(layers))]
    ops.append(Op("loss fwd+bwd", clear_logits_grad, loss))
    ops += [Op(f"{names[i]} bwd", *backward(i)) for i in reversed(range(len(layers)))]
    ops.append(Op("optimizer step", restore_grads, optimizer.step))
    return ops
