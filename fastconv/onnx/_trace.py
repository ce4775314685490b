"""Run a model once on a Tensor and record what computes its output: the tracer behind
:func:`fastconv.onnx.export`.

While a ``Tracer`` is installed (``_TRACING.tracer``), ``Module.__call__`` hands it every module
called on a Tensor and ``_record`` tells it of every operation's result. A module with an ONNX
converter (a built-in layer) becomes one node and runs untraced inside; any other module
(``Sequential``, ``Residual``, a user's module written with Tensor operations such as
``models.Inception``) runs its ``forward``, so its children and operations are recorded one by
one. The model runs in eval mode under ``no_grad``: nothing is kept for backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastconv.autograd.tensor import _TRACING, Tensor, no_grad
from fastconv.nn.module import Module


@dataclass
class Node:
    """One step of the traced computation: ``output = what(*inputs)``.

    ``kind`` is "module" (``what`` is the Module) or "op" (``what`` is the ``(name, attrs)``
    a Tensor operation passed to ``_record``, or None if it passed none); ``where`` is the
    dotted name of the module it ran in ("" for the model itself).
    """

    kind: str
    what: object
    inputs: tuple
    output: Tensor
    where: str


class Tracer:
    def __init__(self, model, converters):
        self._converters = converters
        self._names = {id(m): name for name, m in model.named_modules()}
        self._where = [""]  # the modules being traced through, innermost last
        self.nodes = []

    def path(self, module):
        """The dotted name of ``module`` in the model, as ``named_modules`` gives it."""
        return self._names.get(id(module), f"<{type(module).__name__} outside the model>")

    def describe(self, module):
        """``'features.0' (Conv2d)``: how messages name a module."""
        name = self.path(module) or "<the model>"
        return f"{name!r} ({type(module).__name__})"

    def call(self, module, args, kwargs):
        """``module(*args, **kwargs)`` on Tensors, recorded."""
        if type(module) in self._converters:
            if kwargs or len(args) != 1 or not isinstance(args[0], Tensor):
                raise TypeError(
                    f"fastconv.onnx.export: module {self.describe(module)} was called with other "
                    "arguments than one "
                    "Tensor; its ONNX converter takes exactly one input"
                )
            _TRACING.tracer = None  # its insides are the converter's business
            try:
                out = module._forward_tensor(*args)
            finally:
                _TRACING.tracer = self
            if not isinstance(out, Tensor):
                raise ValueError(
                    f"fastconv.onnx.export: module {self.describe(module)} returned a "
                    f"{type(out).__name__}, not one Tensor; the exported layers have one output "
                    f"(the module: {module!r})"
                )
            if out is not args[0]:  # a layer that returns its input adds no node
                self.nodes.append(Node("module", module, args, out, self.path(module)))
            return out
        base = next((t for t in type(module).__mro__ if t in self._converters), None)
        if base is not None:
            # A subclass may compute something else: its parent's converter is not trusted.
            raise TypeError(
                f"fastconv.onnx.export: module {self.describe(module)} subclasses "
                f"{base.__name__}, whose ONNX converter takes {base.__name__} itself only; "
                f"use {base.__name__}, or write forward with layers and Tensor operations"
            )
        if (
            type(module).backward is not Module.backward
            and type(module)._forward_tensor is Module._forward_tensor
        ):
            # A layer-mode module (its own backward over arrays): its forward computes with
            # NumPy on arrays, which a trace cannot see.
            raise TypeError(
                f"fastconv.onnx.export: module {self.describe(module)} has no ONNX converter "
                "(supported layers: "
                + ", ".join(sorted(t.__name__ for t in self._converters))
                + "; a module whose forward uses only those layers and Tensor operations is "
                "traced through)"
            )
        self._where.append(self.path(module))
        try:
            return module._forward_tensor(*args, **kwargs)
        finally:
            self._where.pop()

    def record(self, out, parents, op, backward):
        """A Tensor operation's result (called by ``_record``)."""
        if op is None:  # name it for the error the export raises if it is needed
            qualname = getattr(backward, "__qualname__", "") or "an operation"
            op = (qualname.split(".")[0], None)
        self.nodes.append(Node("op", op, tuple(parents), out, self._where[-1]))


def trace(model, x, converters):
    """Run ``model`` (in eval mode, under ``no_grad``) on the Tensor ``x``; return
    ``(tracer, output)``. The training flags of all modules are restored afterwards."""
    if _TRACING.tracer is not None:
        raise RuntimeError("fastconv.onnx.export cannot be called while another export traces")
    modes = [(m, m.training) for m in model.modules()]
    tracer = Tracer(model, converters)
    model.eval()
    _TRACING.tracer = tracer
    try:
        with no_grad():
            out = model(x)
    finally:
        _TRACING.tracer = None
        for module, training in modes:
            module.training = training
    return tracer, out
