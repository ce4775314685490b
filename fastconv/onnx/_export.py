"""``export``: trace a model, translate the trace to an ONNX graph, check it, write it."""

from __future__ import annotations

import functools
import os

import numpy as np
import onnx
from onnx import helper

import fastconv
from fastconv._checks import check_array, is_int
from fastconv.autograd.tensor import Tensor
from fastconv.nn.module import Module, Parameter
from fastconv.onnx import _layers, _ops
from fastconv.onnx._builder import Builder, value_info
from fastconv.onnx._trace import trace
from fastconv.serialization import _write_atomically

# Opset 13 is the oldest written: Softmax's per-axis meaning, and Unsqueeze/ReduceSum taking
# their axes as inputs, start there. The default is the newest opset the installed onnx and
# onnxruntime both accept, at most _NEWEST_DEFAULT (the newest this exporter was tested with;
# onnxruntime 1.17, the oldest the extra allows, stops at 20, which the probe finds).
_OLDEST_OPSET = 13
_NEWEST_DEFAULT = 21


def export(model, example_input, path, opset=None):
    """Write ``model`` as an ONNX file that computes its eval-mode output.

    The model is run once, in eval mode and under ``no_grad``, on ``example_input``; each
    built-in layer it calls becomes the matching ONNX operator (Conv, Gemm, BatchNormalization,
    MaxPool, ...) with its parameters as initializers named as in ``state_dict()``, and any other
    module (``Sequential``, ``Residual``, a module of your own whose ``forward`` uses layers and
    Tensor operations, as ``models.Inception`` with ``fastconv.cat``) is traced through. The
    input's axis 0 is the symbolic batch ``"N"``: the file runs any batch size.

    Tensor operations exported: ``+ - * / **``, unary ``-``, ``@``, ``sum``, ``mean``,
    ``reshape``/``view``/``flatten``, ``transpose``, ``permute``, basic indexing (ints, slices,
    None, ``...``), ``exp``, ``log``, ``relu``, ``sigmoid``, ``tanh``, ``softmax``,
    ``log_softmax``, ``fastconv.cat`` and ``fastconv.stack``. Like any trace, this records what
    the example computed: Python control flow that depends on the input's values, values
    computed with NumPy from a Tensor's ``.data`` (they become constants), and sizes computed
    from the batch size other than keeping axis 0 of a ``reshape``, are frozen at the example's.

    Parameters
    ----------
    model : fastconv.nn.Module
        Left as it was: parameters, buffers, training flags.
    example_input : numpy.ndarray or fastconv.Tensor
        float32 or float64, shaped as the model takes, e.g. (N, C, H, W); the dtype of the
        exported model.
    path : str or os.PathLike
        The file to write (replaced atomically if it exists).
    opset : int, optional
        ONNX opset version, >= 13. None: the newest that the installed onnx and onnxruntime
        both support, at most 21 (:func:`default_opset`).

    Returns
    -------
    onnx.ModelProto
        The model written, checked with ``onnx.checker.check_model``.

    Raises
    ------
    TypeError
        A module without an ONNX converter that cannot be traced through (one written for
        layer mode, with its own ``backward``), or a bad argument.
    ValueError
        An option or an operation ONNX cannot express (named with the module it is in), or a
        bad argument.
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a fastconv.nn.Module, got {type(model).__name__}")
    data = example_input.data if isinstance(example_input, Tensor) else example_input
    data = check_array("example_input", data)
    if data.ndim == 0:
        raise ValueError("example_input must have a batch axis (axis 0), got a 0-d array")
    path = _check_path(path)
    opset = default_opset() if opset is None else _check_opset(opset)

    x = Tensor(data)
    tracer, out = trace(model, x, _layers.CONVERTERS)
    if not isinstance(out, Tensor):
        raise TypeError(
            f"fastconv.onnx.export: the model must return one Tensor when called on a Tensor, "
            f"got {type(out).__name__}"
        )
    graph = _build(model, tracer, x, out, opset, data.shape[0])
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="fastconv",
        producer_version=fastconv.__version__,
    )
    # The oldest IR version the opset allows: the newest would shut out older runtimes.
    proto.ir_version = helper.find_min_ir_version_for(list(proto.opset_import))
    onnx.checker.check_model(proto, full_check=True)
    _write_atomically(path, lambda f: f.write(proto.SerializeToString()))
    return proto


def _build(model, tracer, x, out, opset, batch):
    """The ONNX graph of the traced computation of ``out`` from ``x``."""
    g = Builder(opset, batch)
    params = {id(p): name for name, p in model.named_parameters()}
    producers = {id(node.output): node for node in tracer.nodes}
    names = {id(x): "input"}

    # Only what the output needs (a branch computed and dropped is not exported); the same walk
    # finds whether the output depends on the input at all (checked after the converters).
    needed, stack, uses_input = set(), [out], False
    while stack:
        t = stack.pop()
        uses_input = uses_input or t is x
        node = producers.get(id(t))
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack.extend(node.inputs)

    def value(t):
        if id(t) not in names:  # a leaf other than the input: a constant
            hint = params.get(id(t), "constant") if isinstance(t, Parameter) else "constant"
            names[id(t)] = g.constant(t.data, hint)
        return names[id(t)]

    for node in tracer.nodes:
        if id(node) not in needed:
            continue
        inputs = [value(t) for t in node.inputs]
        if node.kind == "module":
            convert = _layers.CONVERTERS[type(node.what)]
            name = node.where or type(node.what).__name__.lower()
            result = convert(g, node.what, inputs[0], node.inputs[0], node.output, name)
        else:
            op, attrs = node.what
            convert = _ops.CONVERTERS.get(op) if attrs is not None else None
            if convert is None:
                raise ValueError(
                    f"fastconv.onnx.export: the operation {op!r} in {_site(node)} has no ONNX "
                    "converter "
                    f"(supported Tensor operations: {', '.join(sorted(_ops.CONVERTERS))})"
                )
            name = f"{node.where}.{op}" if node.where else op
            try:
                result = convert(g, attrs, inputs, node.inputs, node.output, name)
            except _ops.Unsupported as e:
                raise ValueError(
                    f"fastconv.onnx.export: the operation {op!r} in {_site(node)}: {e} has no "
                    "ONNX converter"
                ) from None
        names[id(node.output)] = result

    if not uses_input:
        raise ValueError(
            "fastconv.onnx.export: the model's output does not depend on its input through "
            "Tensor operations (was it computed from .data with NumPy?), so it cannot be traced"
        )
    result = names[id(out)]
    g.nodes.append(helper.make_node("Identity", [result], ["output"], name="output"))
    return helper.make_graph(
        g.nodes,
        "fastconv",
        [value_info("input", x.data, batch)],
        [value_info("output", out.data, batch)],
        initializer=list(g.initializers.values()),
    )


def _site(node):
    return f"module {node.where!r}" if node.where else "the model's forward"


def _check_path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or an os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"path must be a str path, got {type(path).__name__}")
    if os.path.isdir(path):
        raise ValueError(f"path must be a file name, got the directory {path!r}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"path's directory {directory!r} does not exist")
    return path


def _check_opset(opset):
    if not is_int(opset):
        raise TypeError(f"opset must be an int or None, got {opset!r}")
    newest = onnx.defs.onnx_opset_version()
    if not _OLDEST_OPSET <= opset <= newest:
        raise ValueError(
            f"opset must be in [{_OLDEST_OPSET}, {newest}] (the installed onnx {onnx.__version__} "
            f"knows up to {newest}), got {opset}"
        )
    return int(opset)


@functools.cache
def default_opset():
    """The opset ``export`` writes by default: the newest that the installed ``onnx`` knows and
    ``onnxruntime`` (if installed) loads, at most 21."""
    newest = min(onnx.defs.onnx_opset_version(), _NEWEST_DEFAULT)
    try:
        import onnxruntime
    except ImportError:
        return newest
    for opset in range(newest, _OLDEST_OPSET, -1):
        if _runtime_loads(onnxruntime, opset):
            return opset
    return _OLDEST_OPSET


def _runtime_loads(onnxruntime, opset):
    """Whether onnxruntime accepts a one-Relu model of ``opset`` (its error names the opset
    for one too new)."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    try:
        onnxruntime.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        ).run(None, {"x": np.zeros(1, np.float32)})
    except Exception:  # any refusal means: not this opset
        return False
    return True
