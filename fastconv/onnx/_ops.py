"""ONNX converters for the Tensor operations of :mod:`fastconv.autograd.ops` (the operations a
module's ``forward`` may use between layers: ``cat``, ``+``, ``reshape``, ...).

Each converter is ``convert(g, attrs, inputs, tensors, out, name) -> output value name``:
``attrs`` what the operation passed to ``_record``, ``inputs`` its operands' value names,
``tensors`` the operand Tensors and ``out`` the result Tensor (shapes known).
"""

from __future__ import annotations

import numpy as np

from fastconv._checks import is_int


class Unsupported(ValueError):
    """A converter's refusal: the exporter adds which operation in which module."""


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


def transpose(g, attrs, inputs, tensors, out, name):
    """``transpose(dim0, dim1)``: the permutation that swaps the two axes."""
    perm = list(range(tensors[0].ndim))
    d0, d1 = attrs["dims"]
    perm[d0], perm[d1] = d1, d0
    return g.node("Transpose", inputs, name, perm=perm)


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


_LAST, _FIRST = 2**63 - 1, -(2**63)  # Slice clamps these to an axis's ends, whatever its size
SLICE_INPUTS = ("starts", "ends", "axes", "steps")


def getitem(g, attrs, inputs, tensors, out, name):
    """Basic indexing (ints, slices, None, ``...``) as Slice, Squeeze and Unsqueeze, with the
    bounds as written (not resolved against the example's sizes), so any batch size runs."""
    index = attrs["index"]
    parts = list(index) if isinstance(index, tuple) else [index]
    if not all(is_int(p) or p is None or p is Ellipsis or isinstance(p, slice) for p in parts):
        raise Unsupported("indexing with arrays, lists, Tensors or bools")
    if Ellipsis in parts:  # numpy allows one; it stands for the axes not otherwise indexed
        i = parts.index(Ellipsis)
        used = sum(p is not None for p in parts) - 1
        parts[i : i + 1] = [slice(None)] * (tensors[0].ndim - used)
    bounds = []  # (start, end, input axis, step) of each Slice
    squeeze, new = [], []  # input axes an int removes; output axes a None adds
    axis = out_axis = 0
    for p in parts:
        if p is None:
            new.append(out_axis)
            out_axis += 1
            continue
        if is_int(p):
            bounds.append((int(p), int(p) + 1 if p != -1 else _LAST, axis, 1))
            squeeze.append(axis)
        else:
            if p != slice(None):
                step = 1 if p.step is None else int(p.step)
                start = int(p.start) if p.start is not None else (0 if step > 0 else _LAST)
                end = int(p.stop) if p.stop is not None else (_LAST if step > 0 else _FIRST)
                bounds.append((start, end, axis, step))
            out_axis += 1
        axis += 1
    y = inputs[0]
    if bounds:
        columns = zip(*bounds, strict=True)  # starts, ends, axes, steps
        lists = [g.ints(v, f"{name}.{n}") for v, n in zip(columns, SLICE_INPUTS, strict=True)]
        y = g.node("Slice", [y, *lists], f"{name}.slice" if squeeze or new else name)
    if squeeze:
        y = g.node("Squeeze", [y, g.ints(squeeze, f"{name}.squeeze_axes")], f"{name}.squeeze")
    if new:
        y = g.unsqueeze(y, new, f"{name}.unsqueeze")
    return y if y != inputs[0] else g.node("Identity", [y], name)


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
    "transpose": transpose,
    "softmax": _softmax("Softmax"),
    "log_softmax": _softmax("LogSoftmax"),
    "cat": cat,
    "stack": stack,
    "getitem": getitem,
}
