"""The differentiable operations on ``Tensor``: arithmetic with broadcasting, ``@``, reductions,
shape changes, indexing, elementwise functions, ``cat`` and ``stack``.

Each is a function ``op(x, ...)`` that computes its result with NumPy or
:mod:`fastconv.functional` and records a ``backward(grad)`` closure returning one gradient per
operand (``None`` where no gradient is needed). The bottom of the file binds them to ``Tensor``
as its operators and methods, with PyTorch's names.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

import fastconv.functional as F
from fastconv._checks import is_int
from fastconv.autograd.tensor import Tensor, _record, as_tensor, unbroadcast

# ---- arithmetic with broadcasting -----------------------------------------------------------


def _operands(x, other, reverse=False):
    other = as_tensor(other, x, "other")
    try:
        np.broadcast_shapes(x.shape, other.shape)
    except ValueError:
        raise ValueError(
            f"shapes {x.shape} (self) and {other.shape} (other) cannot be broadcast together"
        ) from None
    return (other, x) if reverse else (x, other)


def add(a, b):
    def backward(g):
        return unbroadcast(g, a.shape), unbroadcast(g, b.shape)

    return _record(a.data + b.data, (a, b), backward, ("add", {}))


def sub(a, b):
    def backward(g):
        return unbroadcast(g, a.shape), (unbroadcast(-g, b.shape) if b._rg else None)

    return _record(a.data - b.data, (a, b), backward, ("sub", {}))


def mul(a, b):
    da, db = a.data, b.data

    def backward(g):
        return (
            unbroadcast(g * db, da.shape) if a._rg else None,
            unbroadcast(g * da, db.shape) if b._rg else None,
        )

    return _record(da * db, (a, b), backward, ("mul", {}))


def div(a, b):
    da, db = a.data, b.data

    def backward(g):
        ga = g / db
        gb = unbroadcast(-ga * da / db, db.shape) if b._rg else None
        return unbroadcast(ga, da.shape) if a._rg else None, gb

    return _record(da / db, (a, b), backward, ("div", {}))


def neg(x):
    return _record(-x.data, (x,), lambda g: (-g,), ("neg", {}))


def power(x, exponent):
    """``x ** exponent`` for a real number ``exponent``."""
    if not isinstance(exponent, numbers.Real) or isinstance(exponent, bool):
        raise TypeError(f"exponent must be a real number, got {type(exponent).__name__}")
    d = x.data
    p = d.dtype.type(exponent) if d.dtype.kind == "f" else exponent
    return _record(d**p, (x,), lambda g: (g * p * d ** (p - 1),), ("pow", {"exponent": p}))


def matmul(a, b):
    """``a @ b`` as ``torch.matmul``: 1-D operands are promoted to a row (a) or a column (b)
    and the added dimension removed; leading (batch) dimensions broadcast."""
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"@ needs operands of at least 1 dimension, got {a.shape} @ {b.shape}")
    try:
        y = np.matmul(a.data, b.data)
    except ValueError:
        raise ValueError(
            f"shapes {a.shape} (self) and {b.shape} (other) do not match for @: self's last "
            "dimension must equal other's second to last (its only one if 1-D)"
        ) from None
    A = a.data if a.ndim > 1 else a.data[None, :]
    B = b.data if b.ndim > 1 else b.data[:, None]

    def backward(g):
        if a.ndim == 1 and b.ndim == 1:
            g = g.reshape(1, 1)
        elif a.ndim == 1:
            g = np.expand_dims(g, -2)
        elif b.ndim == 1:
            g = np.expand_dims(g, -1)
        ga = unbroadcast(g @ B.swapaxes(-1, -2), A.shape).reshape(a.shape) if a._rg else None
        gb = unbroadcast(A.swapaxes(-1, -2) @ g, B.shape).reshape(b.shape) if b._rg else None
        return ga, gb

    return _record(y, (a, b), backward, ("matmul", {}))


# ---- reductions -----------------------------------------------------------------------------


def _dims(x, dim, name="dim"):
    """``dim`` (None, an int or a sequence of ints) as a sorted tuple of axes of ``x``."""
    if dim is None:
        return tuple(range(x.ndim))
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    n = max(x.ndim, 1)
    if not all(is_int(d) and -n <= d < n for d in dims):
        raise ValueError(f"{name} must be an int (or ints) in [-{n}, {n}), got {dim!r}")
    axes = sorted({int(d) % n for d in dims})
    return tuple(axes) if x.ndim else ()


def sum(x, dim=None, keepdim=False):  # noqa: A001 - PyTorch's name
    axes = _dims(x, dim)
    shape = x.shape

    def backward(g):
        return (np.broadcast_to(g if keepdim else np.expand_dims(g, axes), shape),)

    y = x.data.sum(axis=axes, keepdims=keepdim)
    return _record(y, (x,), backward, ("sum", {"dims": axes, "keepdim": keepdim}))


def mean(x, dim=None, keepdim=False):
    axes = _dims(x, dim)
    shape, count = x.shape, math.prod(x.shape[a] for a in axes)

    def backward(g):
        g = g / g.dtype.type(count)
        return (np.broadcast_to(g if keepdim else np.expand_dims(g, axes), shape),)

    y = x.data.mean(axis=axes, keepdims=keepdim)
    return _record(y, (x,), backward, ("mean", {"dims": axes, "keepdim": keepdim}))


# ---- shapes and indexing --------------------------------------------------------------------


def reshape(x, *shape):
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    try:
        y = x.data.reshape(shape)
    except (ValueError, TypeError):
        raise ValueError(f"shape {shape} is invalid for a Tensor of shape {x.shape}") from None
    old = x.shape
    return _record(y, (x,), lambda g: (g.reshape(old),), ("reshape", {"shape": shape}))


def flatten(x, start_dim=0, end_dim=-1):
    if x.ndim == 0:
        return reshape(x, 1)
    start, end = _dims(x, start_dim, "start_dim")[0], _dims(x, end_dim, "end_dim")[0]
    if start > end:
        raise ValueError(f"start_dim ({start_dim}) must not come after end_dim ({end_dim})")
    return reshape(x, *x.shape[:start], -1, *x.shape[end + 1 :])


def transpose(x, dim0, dim1):
    d0, d1 = _dims(x, dim0, "dim0")[0], _dims(x, dim1, "dim1")[0]
    y = x.data.swapaxes(d0, d1)
    return _record(y, (x,), lambda g: (g.swapaxes(d0, d1),), ("transpose", {"dims": (d0, d1)}))


def permute(x, *dims):
    dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
    if sorted(d % max(x.ndim, 1) if is_int(d) else d for d in dims) != list(range(x.ndim)):
        raise ValueError(f"dims must be a permutation of 0..{x.ndim - 1}, got {dims}")
    dims = tuple(int(d) % x.ndim for d in dims)
    inverse = tuple(np.argsort(dims))
    y = x.data.transpose(dims)
    return _record(y, (x,), lambda g: (g.transpose(inverse),), ("permute", {"dims": dims}))


def _is_basic(index):
    """True for an index of ints, slices, None and Ellipsis only: it selects each element at
    most once, so the gradient is an assignment rather than an ``np.add.at``."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(is_int(i) or i is None or i is Ellipsis or isinstance(i, slice) for i in parts)


def getitem(x, index):
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    y = x.data[index]
    shape, dtype, basic = x.shape, x.dtype, _is_basic(index)

    def backward(g):
        grad = np.zeros(shape, dtype)
        if basic:
            grad[index] = g
        else:  # an index array may name an element twice: its gradients add up
            np.add.at(grad, index, g)
        return (grad,)

    return _record(y, (x,), backward, ("getitem", {"index": index}))


# ---- elementwise functions ------------------------------------------------------------------


def exp(x):
    y = np.exp(x.data)
    return _record(y, (x,), lambda g: (g * y,), ("exp", {}))


def log(x):
    d = x.data
    return _record(np.log(d), (x,), lambda g: (g / d,), ("log", {}))


def relu(x):
    d = x.data
    return _record(F.relu(d), (x,), lambda g: (F.relu_backward(g, d),), ("relu", {}))


def sigmoid(x):
    y = F.sigmoid(x.data)
    return _record(y, (x,), lambda g: (F._sigmoid_backward_from_output(g, y),), ("sigmoid", {}))


def tanh(x):
    y = F.tanh(x.data)
    return _record(y, (x,), lambda g: (F._tanh_backward_from_output(g, y),), ("tanh", {}))


def softmax(x, dim):
    axis = _dims(x, dim)[0]
    y = F.softmax(x.data, axis)

    # The vector-Jacobian product of softmax: y * (g - sum(g * y)).
    def backward(g):
        return (y * (g - (g * y).sum(axis=axis, keepdims=True)),)

    return _record(y, (x,), backward, ("softmax", {"dim": axis}))


def log_softmax(x, dim):
    axis = _dims(x, dim)[0]
    y = F.log_softmax(x.data, axis)

    # The vector-Jacobian product of log_softmax: g - softmax(x) * sum(g).
    def backward(g):
        return (g - np.exp(y) * g.sum(axis=axis, keepdims=True),)

    return _record(y, (x,), backward, ("log_softmax", {"dim": axis}))


# ---- joining --------------------------------------------------------------------------------


def _check_join(tensors):
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)) or not tensors:
        raise TypeError("tensors must be a non-empty list or tuple of Tensors")
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"tensors[{i}] must be a Tensor, got {type(t).__name__}")
        if t.dtype != tensors[0].dtype:
            raise TypeError(
                f"tensors[{i}] has dtype {t.dtype}, tensors[0] has {tensors[0].dtype}: fastconv "
                "does not promote"
            )
    return tuple(tensors)


def cat(tensors, dim=0):
    """Concatenate Tensors along ``dim`` (an existing dimension), as ``torch.cat``."""
    tensors = _check_join(tensors)
    axis = _dims(tensors[0], dim)[0]
    try:
        y = np.concatenate([t.data for t in tensors], axis=axis)
    except ValueError:
        shapes = ", ".join(str(t.shape) for t in tensors)
        raise ValueError(f"tensors must match except in dim {dim}, got shapes {shapes}") from None
    ends = np.cumsum([t.shape[axis] for t in tensors])[:-1]
    return _record(y, tensors, lambda g: np.split(g, ends, axis=axis), ("cat", {"dim": axis}))


def stack(tensors, dim=0):
    """Join same-shaped Tensors along a new dimension ``dim``, as ``torch.stack``."""
    tensors = _check_join(tensors)
    n = tensors[0].ndim + 1
    if not is_int(dim) or not -n <= dim < n:
        raise ValueError(f"dim must be an int in [-{n}, {n}), got {dim!r}")
    axis = int(dim) % n
    if any(t.shape != tensors[0].shape for t in tensors):
        shapes = ", ".join(str(t.shape) for t in tensors)
        raise ValueError(f"tensors must all have the same shape, got {shapes}")
    y = np.stack([t.data for t in tensors], axis=axis)

    def backward(g):
        return [g.take(i, axis=axis) for i in range(len(tensors))]

    return _record(y, tensors, backward, ("stack", {"dim": axis}))


# ---- binding to Tensor ----------------------------------------------------------------------


def _binary(op, reverse=False):
    def method(self, other):
        return op(*_operands(self, other, reverse))

    method.__name__ = op.__name__
    return method


Tensor.__add__ = _binary(add)
Tensor.__radd__ = _binary(add, reverse=True)
Tensor.__sub__ = _binary(sub)
Tensor.__rsub__ = _binary(sub, reverse=True)
Tensor.__mul__ = _binary(mul)
Tensor.__rmul__ = _binary(mul, reverse=True)
Tensor.__truediv__ = _binary(div)
Tensor.__rtruediv__ = _binary(div, reverse=True)
Tensor.__matmul__ = lambda self, other: matmul(self, as_tensor(other, self, "other"))
Tensor.__rmatmul__ = lambda self, other: matmul(as_tensor(other, self, "other"), self)
Tensor.__neg__ = neg
Tensor.__pow__ = power
Tensor.__getitem__ = getitem
for _op in (sum, mean, reshape, flatten, transpose, permute, exp, log, relu, sigmoid, tanh,
            softmax, log_softmax):  # fmt: skip
    setattr(Tensor, _op.__name__, _op)
Tensor.view = reshape  # no strides here: a view is a reshape
