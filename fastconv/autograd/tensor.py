"""``Tensor``: an ndarray that records the operations applied to it, and the engine that runs
them backward.

Each differentiable operation makes its result with :func:`_record`, giving the result's data,
the operand Tensors (its *parents*) and a ``backward(grad)`` closure that holds what the
gradient needs (the saved arrays) and returns one gradient per parent (None for a parent that
needs none). There is no separate node class: a non-leaf Tensor is its own graph node. The
closures call :mod:`fastconv.functional`'s backward functions where one exists; the few lines
of gradient here are for NumPy one-liners (``exp``, ``sum``, ``@``, indexing) that have none.

``backward()`` visits the graph once in reverse topological order and then, unless
``retain_graph=True``, drops each node's closure and parents: the saved arrays are freed as
soon as they are used, the loss no longer keeps the activations alive, and a second backward
through the same nodes raises ``RuntimeError`` as PyTorch's does.
"""

from __future__ import annotations

import numbers
import threading

import numpy as np

from fastconv._checks import FLOAT_DTYPES, check_bool


class _GradMode(threading.local):
    enabled = True  # per thread, as PyTorch's grad mode


_MODE = _GradMode()


def is_grad_enabled():
    """False inside ``no_grad()``: operations then record nothing."""
    return _MODE.enabled


class no_grad:
    """Context manager (or decorator) inside which no operation is recorded, as
    ``torch.no_grad``: results have ``requires_grad=False`` and save nothing for backward."""

    def __enter__(self):
        self._prev, _MODE.enabled = _MODE.enabled, False

    def __exit__(self, *exc):
        _MODE.enabled = self._prev

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)

        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        return wrapper


class enable_grad(no_grad):
    """The opposite of ``no_grad`` (used where a graph must be recorded whatever the caller's
    mode, e.g. a module's layer-mode backward)."""

    def __enter__(self):
        self._prev, _MODE.enabled = _MODE.enabled, True


def _freed(grad):
    raise AssertionError("unreachable: the engine checks for _freed before calling")


class Tensor:
    """A float32/float64 (or, without gradients, integer) NumPy array with autograd.

    Parameters
    ----------
    data : ndarray or array-like
        Wrapped, not copied, if it is an ndarray (as ``torch.from_numpy``).
    requires_grad : bool
        Record operations on this Tensor so that ``backward()`` fills its ``grad``. Only
        float32/float64 Tensors can require gradients.

    Attributes
    ----------
    data : ndarray
    grad : ndarray or None
        Accumulated by each ``backward()`` (on leaves: Tensors made by the user, and
        Parameters), as in PyTorch.
    requires_grad, shape, dtype, ndim, is_leaf
    """

    __slots__ = ("data", "grad", "_rg", "_parents", "_backward", "__weakref__")
    __array_ufunc__ = None  # ``ndarray + Tensor`` calls ``Tensor.__radd__``, not a NumPy loop

    def __init__(self, data, requires_grad=False):
        if isinstance(data, Tensor):
            data = data.data
        elif not isinstance(data, np.ndarray):
            data = np.asarray(data)
        kind = data.dtype.kind
        if kind not in "fiub" or (kind == "f" and data.dtype not in FLOAT_DTYPES):
            raise TypeError(f"data must be float32, float64 or integer, got {data.dtype}")
        self.data = data
        self.grad = None
        self._parents = ()
        self._backward = None
        self._rg = False
        self.requires_grad = requires_grad

    # ---- attributes -------------------------------------------------------------------------

    @property
    def requires_grad(self):
        return self._rg

    @requires_grad.setter
    def requires_grad(self, value):
        value = check_bool("requires_grad", value)
        if self._backward is not None:
            raise RuntimeError("requires_grad can only be changed on leaf Tensors")
        if value and self.data.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"requires_grad=True needs a float32 or float64 Tensor, got dtype {self.dtype}"
            )
        self._rg = value

    def requires_grad_(self, requires_grad=True):
        self.requires_grad = requires_grad
        return self

    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    is_leaf = property(lambda self: self._backward is None)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        body = np.array2string(self.data, separator=", ", prefix="tensor(")
        return f"tensor({body}, dtype={self.dtype}" + (", requires_grad=True)" if self._rg else ")")

    def numpy(self):
        """The data array itself (shared, as PyTorch's ``numpy()``)."""
        return self.data

    def detach(self):
        """A new leaf sharing the data, outside the graph."""
        return Tensor(self.data)

    def item(self):
        """The value of a one-element Tensor as a Python number."""
        if self.data.size != 1:
            raise ValueError(f"item() needs a Tensor with one element, got shape {self.shape}")
        return self.data.item()

    def __float__(self):
        return float(self.item())

    def __bool__(self):  # NumPy's rule: one element, else ValueError (never ``len() != 0``)
        return bool(self.data)

    # ---- the engine -------------------------------------------------------------------------

    def backward(self, gradient=None, retain_graph=False):
        """Accumulate d(self)/d(leaf), times ``gradient``, into the ``grad`` of every leaf that
        requires grad (the Parameters among them).

        ``gradient`` (ndarray or Tensor of this Tensor's shape and dtype) may be omitted for a
        one-element Tensor (a loss). The graph's saved arrays are freed as they are used unless
        ``retain_graph=True``.
        """
        if not self._rg:
            raise RuntimeError(
                "backward(): this Tensor does not require grad and has no graph (no input "
                "required grad, or it was computed under no_grad())"
            )
        if gradient is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward(): gradient can be implied only for a one-element Tensor, this one "
                    f"has shape {self.shape}; pass gradient= of that shape"
                )
            grad = np.ones_like(self.data)
        else:
            grad = gradient.data if isinstance(gradient, Tensor) else gradient
            if not isinstance(grad, np.ndarray):
                raise TypeError(
                    f"gradient must be a numpy.ndarray or a Tensor, got {type(gradient).__name__}"
                )
            if grad.dtype != self.dtype:
                raise TypeError(f"gradient must have dtype {self.dtype}, got {grad.dtype}")
            if grad.shape != self.shape:
                raise ValueError(f"gradient must have shape {self.shape}, got {grad.shape}")
            grad = grad.copy()  # leaves may keep it as their grad; the caller's stays theirs
        check_bool("retain_graph", retain_graph)
        grads = {id(self): grad}
        kept = set()  # ids of arrays handed to a leaf's .grad during this backward
        for t in _reverse_topological(self):
            g = grads.pop(id(t), None)
            if g is None:
                continue
            fn = t._backward
            if fn is None:
                _accumulate(t, g, kept)
                continue
            if fn is _freed:
                raise RuntimeError(
                    "backward() through a graph that was already backpropagated: its saved "
                    "arrays are freed; pass retain_graph=True to the first backward to keep them"
                )
            parents = t._parents
            if not retain_graph:
                t._backward, t._parents = _freed, ()
            # strict=False: a layer's backward may return a bias gradient for a layer without bias.
            for parent, pg in zip(parents, fn(g), strict=False):
                if pg is None or not parent._rg:
                    continue
                key = id(parent)
                # A new array, never ``+=``: an operation may hand one array to several parents.
                grads[key] = pg if key not in grads else grads[key] + pg


def _reverse_topological(root):
    """The Tensors that ``root`` depends on through recorded operations, each after every
    Tensor that consumes it (so its gradient is complete when it is visited)."""
    # Depth-first, each Tensor appended after its parents. A Tensor is marked when it is
    # expanded, not when it is pushed: marked on push, one reached again through a longer path
    # would be appended before the parents still waiting below it on the stack.
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        for p in t._parents:
            if p._rg and id(p) not in seen:
                stack.append((p, False))
    order.reverse()
    return order


def _accumulate(param, grad, kept=None):
    """``param.grad += grad``; the first backward keeps ``grad`` itself as ``param.grad``.

    Backwards return a new array each time, so keeping it saves a copy per parameter per step.
    An array that does not own its memory (a view of a workspace, of another gradient or of the
    caller's data), or that was already given to another leaf in this backward (``kept``: an
    addition hands one array to both operands), is copied instead: the optimiser and ``+=``
    write into ``param.grad`` and must not write into anything else.
    """
    if param.grad is not None:
        param.grad += grad
    elif (
        grad.base is None
        and grad.dtype == param.data.dtype
        and grad.shape == param.data.shape
        and (kept is None or id(grad) not in kept)
    ):
        param.grad = grad
    else:
        param.grad = np.array(grad, dtype=param.data.dtype, copy=True).reshape(param.data.shape)
    if kept is not None:
        kept.add(id(param.grad))


def _record(data, parents, backward, op=None):
    """The result of an operation: a Tensor holding ``data`` that, if grad mode is on and a
    parent requires grad, is a graph node whose ``backward(grad)`` returns one gradient per
    parent. Otherwise ``backward`` (and what it saved) is dropped here.

    ``op``: ``(name, attributes)`` of the operation (``("cat", {"dim": 1})``), for a tracer
    (``fastconv.onnx``), which is told of every result while it runs a model, in any grad mode.
    """
    out = Tensor.__new__(Tensor)
    out.data = data if type(data) is np.ndarray else np.asarray(data)
    out.grad = None
    if _MODE.enabled and any(p._rg for p in parents):
        out._rg, out._parents, out._backward = True, parents, backward
    else:
        out._rg, out._parents, out._backward = False, (), None
    if _TRACING.tracer is not None:
        _TRACING.tracer.record(out, parents, op, backward)
    return out


class _Tracing(threading.local):
    # The tracer of ``fastconv.onnx.export`` while it runs a model in this thread, else None.
    # It sees each ``_record`` and each module called on a Tensor (``Module.__call__``).
    tracer = None


_TRACING = _Tracing()


def needs_grad(*tensors):
    """True if an operation on ``tensors`` (Tensors or None) would be recorded."""
    return _MODE.enabled and any(t is not None and t._rg for t in tensors)


def as_tensor(value, like, name):
    """``value`` (a Tensor, an ndarray or a Python/NumPy number) as a Tensor of ``like``'s
    dtype; mixing float32 and float64 is an error, as in the functional API."""
    if isinstance(value, Tensor):
        t = value
    elif isinstance(value, np.ndarray):
        t = Tensor(value)
    elif isinstance(value, numbers.Number):
        return Tensor(np.asarray(value, dtype=like.dtype if like.dtype.kind == "f" else None))
    else:
        raise TypeError(
            f"{name} must be a Tensor, a numpy.ndarray or a number, got {type(value).__name__}"
        )
    if t.dtype != like.dtype and (t.dtype.kind == "f" or like.dtype.kind == "f"):
        raise TypeError(
            f"{name} has dtype {t.dtype} but the other operand has {like.dtype}: fastconv does "
            "not promote; convert one of them"
        )
    return t


def unbroadcast(grad, shape):
    """Sum ``grad`` over the axes along which an operand of ``shape`` was broadcast."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1
    )
    return grad.sum(axis=axes, keepdims=True).reshape(shape)
