"""``Builder``: collects ONNX nodes and initializers with unique names while the converters
translate a trace, and gives them the few helpers whose form depends on the opset."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper


class Builder:
    """The graph being built.

    ``opset``: the target opset; ``batch``: the example's batch size (axis 0 of the input), which
    the converters replace by the symbolic one where they can (``Reshape``'s 0).
    """

    def __init__(self, opset, batch):
        self.opset = opset
        self.batch = batch
        self.nodes = []
        self.initializers = {}  # name -> TensorProto
        self._used = {"input", "output"}  # the graph's input and output

    def fresh(self, hint):
        """A value or node name not used yet, built from ``hint``."""
        name, i = hint, 1
        while name in self._used:
            i += 1
            name = f"{hint}_{i}"
        self._used.add(name)
        return name

    def constant(self, array, name):
        """An initializer holding ``array``; the same ``name`` given twice (a module called twice)
        is one initializer if the values agree."""
        array = np.ascontiguousarray(array)
        if name in self.initializers and np.array_equal(
            numpy_helper.to_array(self.initializers[name]), array
        ):
            return name
        name = self.fresh(name)
        self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def ints(self, values, name):
        """An int64 1-D initializer (shapes, axes, pads given as inputs)."""
        return self.constant(np.asarray(values, np.int64), name)

    def node(self, op_type, inputs, name, **attributes):
        """Add one node with one output; return the output's name. ``name`` names both."""
        out = self.fresh(name)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attributes))
        return out

    # ---- operations whose signature changed between opsets ----------------------------------

    def reduce(self, op_type, x, axes, keepdims, name):
        """``ReduceMean``/``ReduceSum`` over ``axes``: the axes are an input from opset 18 on
        (13 for ReduceSum), an attribute before."""
        keep = int(bool(keepdims))
        as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if as_input:
            return self.node(op_type, [x, self.ints(axes, f"{name}.axes")], name, keepdims=keep)
        return self.node(op_type, [x], name, axes=list(axes), keepdims=keep)

    def unsqueeze(self, x, axes, name):
        """``Unsqueeze``: axes as an input (opset 13 on, the lowest this exporter targets)."""
        return self.node("Unsqueeze", [x, self.ints(axes, f"{name}.axes")], name)


def value_info(name, array_like, batch):
    """The graph input/output type: dtype and shape, axis 0 the symbolic "N" if it is the
    batch's size."""
    dims = list(array_like.shape)
    if dims and dims[0] == batch:
        dims[0] = "N"
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(array_like.dtype))
    return helper.make_tensor_value_info(name, elem, dims)
