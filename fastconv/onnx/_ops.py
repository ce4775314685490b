"""ONNX converters for the Tensor operations of :mod:`fastconv.autograd.ops` (the operations a
module's ``forward`` may use between layers: ``cat``, ``+``, ``reshape``, ...).

Each converter is ``convert(g, attrs, inputs, tensors, out, name) -> output value name``:
``attrs`` what the operation passed to ``_record``, ``inputs`` its operands' value names,
``tensors`` the operand Tensors and ``out`` the result Tensor (shapes known).
"""

from __future__ import annotations

import numpy as np


def _elementwise(op_type):
    def convert(g, attrs, inputs, tensors, out, name):
        return g.node(op_type, inputs, name)

    return convert


def power(g, attrs, inputs, tensors, out, name):
    exponent = g.constant(np.asarray(attrs["exponent"], out.dtype), f"{name}.exponent")
    return g.node("Pow", [inputs[0], exponent], name)


def _reduce(op_type):
    def convert(g, attrs, inputs, tensors, out, name):
        if not attrs["dims"]:  # a 0-d Tensor: nothing to reduce (ONNX would reduce all axes)
            return g.node("Identity", inputs, name)
        return g.reduce(op_type, inputs[0], attrs["dims"], attrs["keepdim"], name)

    return convert


def reshape(g, attrs, inputs, tensors, out, name):
    shape = list(attrs["shape"])
    if shape and tensors[0].ndim and shape[0] == tensors[0].shape[0] == g.batch:
        # The batch axis kept: 0 copies the input's, so any batch size runs. (Any other size
        # computed from the batch is written as the example's number.)
        shape[0] = 0
    return g.node("Reshape", [inputs[0], g.ints(shape, f"{name}.shape")], name)


def permute(g, attrs, inputs, tensors, out, name):
    return g.node("Transpose", inputs, name, perm=list(attrs["dims"]))


def _softmax(op_type):
    def convert(g, attrs, inputs, tensors, out, name):
        return g.node(op_type, inputs, name, axis=attrs["dim"])

    return convert


def cat(g, attrs, inputs, tensors, out, name):
    return g.node("Concat", inputs, name, axis=attrs["dim"])


def stack(g, attrs, inputs, tensors, out, name):
    dim = attrs["dim"]
    parts = [g.unsqueeze(x, [dim], f"{name}.unsqueeze") for x in inputs]
    return g.node("Concat", parts, name, axis=dim)


CONVERTERS = {
    "add": _elementwise("Add"),
    "sub": _elementwise("Sub"),
    "mul": _elementwise("Mul"),
    "div": _elementwise("Div"),
    "neg": _elementwise("Neg"),
    "matmul": _elementwise("MatMul"),  # numpy's (and PyTorch's) matmul rules are ONNX's
    "exp": _elementwise("Exp"),
    "log": _elementwise("Log"),
    "relu": _elementwise("Relu"),
    "sigmoid": _elementwise("Sigmoid"),
    "tanh": _elementwise("Tanh"),
    "pow": power,
    "sum": _reduce("ReduceSum"),
    "mean": _reduce("ReduceMean"),
    "reshape": reshape,
    "permute": permute,
    "softmax": _softmax("Softmax"),
    "log_softmax": _softmax("LogSoftmax"),
    "cat": cat,
    "stack": stack,
}
