"""``Module`` and ``Parameter``: registration of parameters, buffers and children by attribute
assignment, traversal with PyTorch's dotted names, the state dict, modes, dtype conversion, repr.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Mapping

import numpy as np

from fastconv._checks import FLOAT_DTYPES, check_bool, float_dtype
from fastconv.autograd.tensor import _TRACING, Tensor, is_grad_enabled
from fastconv.autograd.tensor import _accumulate as _accumulate  # its home before autograd


class Parameter(Tensor):
    """A trainable array and its accumulated gradient: a leaf ``Tensor`` that requires grad.

    Parameters
    ----------
    data : ndarray
        The values; float32 or float64. Optimisers update it in place.

    Attributes
    ----------
    data : ndarray
    grad : ndarray or None
        Same shape and dtype as ``data``; ``None`` until the first backward, which creates it.
        Each backward (a layer's in layer mode, ``loss.backward()`` in autograd mode) adds to
        it, as in PyTorch; ``Module.zero_grad()`` resets it to ``None``.
    requires_grad : bool
        True for float data. (An integer array is kept, without gradient, so that the
        optimisers can name it in their own error.)
    """

    __slots__ = ()

    def __init__(self, data):
        if not isinstance(data, np.ndarray):
            raise TypeError(f"data must be a numpy.ndarray, got {type(data).__name__}")
        super().__init__(data, requires_grad=data.dtype.kind == "f")

    size = property(lambda self: self.data.size)

    def __repr__(self):
        grad = "None" if self.grad is None else "set"
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype}, grad={grad})"


class IncompatibleKeys(namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])):
    """What ``Module.load_state_dict`` returns: the keys it did not find / did not expect."""

    __slots__ = ()


# PyTorch's BatchNorm counts its training batches in this buffer. A state dict may lack it (an
# old checkpoint); it is then left as it is instead of being reported missing.
_OPTIONAL_KEYS = ("num_batches_tracked",)


class Module:
    """Base class of every layer, container and loss.

    Assigning a ``Parameter``, a ``Module`` or (through ``register_buffer``) an array to an
    attribute registers it, as in PyTorch, so ``named_parameters()`` and ``state_dict()`` find it
    under a dotted name such as ``"0.weight"`` or ``"block.1.running_mean"``.

    Two modes, chosen per call by the argument:

    - **autograd** (``module(tensor)``, any argument a ``fastconv.Tensor``): the result is a
      Tensor, and ``loss.backward()`` adds to every ``Parameter.grad``. Write ``forward`` with
      child modules and Tensor operations (``fastconv.cat``, ``+``, ...) and nothing else is
      needed; an instance may be called several times in one forward. Built-in layers record
      one node each, calling their functional backward (``_forward_tensor``).
    - **layer** (``module(array)``): ``forward(x)`` caches what ``backward`` needs in
      ``self._ctx``, and ``backward(grad_out)`` returns the gradient with respect to the input
      and **adds** the parameter gradients to each ``Parameter.grad``. A module that defines
      only ``forward`` (written for Tensors) runs it through autograd and its ``backward`` runs
      the recorded graph, so it works inside layer-mode code such as ``training.train_step``.
      A module run twice in one forward pass refuses ``backward`` (its cache holds one call).
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_ctx", None)

    # ---- registration -----------------------------------------------------------------------

    def __setattr__(self, name, value):
        d = self.__dict__
        if isinstance(value, (Parameter, Module)):
            if "_parameters" not in d:
                raise AttributeError(
                    f"cannot assign {type(value).__name__} {name!r} before Module.__init__() "
                    "is called (call super().__init__() first)"
                )
            self._unregister(name)
            table = self._parameters if isinstance(value, Parameter) else self._modules
            table[name] = value
            return
        for table, what, kind, want in self._TABLES:
            if table in d and name in d[table]:
                # A registered name keeps its kind: None clears it, anything else is an error.
                if value is not None and not isinstance(value, kind):
                    raise TypeError(
                        f"cannot assign {type(value).__name__} to {what} {name!r} "
                        f"(expected {want} or None)"
                    )
                d[table][name] = value
                return
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Called only when normal lookup fails, i.e. for registered names.
        d = self.__dict__
        for table, *_ in self._TABLES:
            if table in d and name in d[table]:
                return d[table][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for table, *_ in self._TABLES:
            if name in self.__dict__.get(table, ()):
                del self.__dict__[table][name]
                return
        object.__delattr__(self, name)

    def _unregister(self, name):
        self.__dict__.pop(name, None)
        for table, *_ in self._TABLES:
            self.__dict__[table].pop(name, None)

    def _register(self, table, argname, name, value):
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if not name or "." in name:
            raise ValueError(f"name must be non-empty and contain no '.', got {name!r}")
        if name in self.__dict__ and not any(name in self.__dict__[t] for t, *_ in self._TABLES):
            raise KeyError(f"attribute {name!r} already exists")
        _, _, kind, want = next(t for t in self._TABLES if t[0] == table)
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"{argname} must be {want} or None, got {type(value).__name__}")
        self._unregister(name)
        self.__dict__[table][name] = value

    def register_parameter(self, name, param):
        """Register ``param`` (a ``Parameter``, or None for an absent one such as ``bias``)."""
        self._register("_parameters", "param", name, param)

    def register_buffer(self, name, array):
        """Register ``array``: state (saved in ``state_dict``) that is not trained."""
        self._register("_buffers", "array", name, array)

    def add_module(self, name, module):
        """Register ``module`` as a child named ``name``."""
        self._register("_modules", "module", name, module)

    # ---- traversal --------------------------------------------------------------------------

    def named_children(self):
        """Yield ``(name, module)`` for each direct child."""
        for name, module in self._modules.items():
            if module is not None:
                yield name, module

    def children(self):
        return (module for _, module in self.named_children())

    def named_modules(self, prefix=""):
        """Yield ``(dotted_name, module)`` for this module (name ``prefix``) and every
        descendant, each module once."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [(f"{name}.{n}" if name else n, m) for n, m in module.named_children()]
            stack.extend(reversed(children))

    def modules(self):
        return (module for _, module in self.named_modules())

    def _named_members(self, table, prefix, recurse):
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        seen = set()
        for module_name, module in modules:
            for name, member in getattr(module, table).items():
                if member is None or id(member) in seen:
                    continue
                seen.add(id(member))
                yield (f"{module_name}.{name}" if module_name else name), member

    def named_parameters(self, prefix="", recurse=True):
        """Yield ``(dotted_name, Parameter)``, each parameter once, named as in PyTorch."""
        yield from self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse=True):
        return (param for _, param in self.named_parameters(recurse=recurse))

    def named_buffers(self, prefix="", recurse=True):
        yield from self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse=True):
        return (buf for _, buf in self.named_buffers(recurse=recurse))

    # ---- state ------------------------------------------------------------------------------

    def _state_arrays(self, prefix=""):
        """Yield ``(key, array)`` in PyTorch's state_dict order: a module's parameters, then its
        buffers, then each child's, depth first. The arrays are the live ones, not copies."""
        for name, param in self._parameters.items():
            if param is not None:
                yield prefix + name, param.data
        for name, buf in self._buffers.items():
            if buf is not None:
                yield prefix + name, buf
        for name, module in self._modules.items():
            if module is not None:
                yield from module._state_arrays(f"{prefix}{name}.")

    def state_dict(self):
        """Parameters and buffers by dotted name, as **copies** (later training does not change
        a state dict taken earlier). Keys, order and shapes are PyTorch's."""
        return {key: array.copy() for key, array in self._state_arrays()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy ``state_dict``'s arrays into this module's parameters and buffers, in place.

        Parameters
        ----------
        state_dict : mapping of str to array-like
            E.g. ``model.state_dict()``, an ``np.load``-ed ``.npz`` or
            ``{k: v.numpy() for k, v in torch_model.state_dict().items()}``. Values are cast
            to each parameter's dtype (float64 into float32 is fine; float into an integer
            buffer is not). PyTorch's ``num_batches_tracked`` entries are loaded if present and
            not required.
        strict : bool
            If True, a missing or an unexpected key is an error; if False they are only
            returned. A shape mismatch is always an error.

        Returns
        -------
        IncompatibleKeys
            ``(missing_keys, unexpected_keys)``, two lists of str.

        Raises
        ------
        ValueError
            Naming every missing/unexpected key (strict) and every mis-shaped one.
        TypeError
            If a value cannot be cast to its parameter's dtype.

        Nothing is copied unless every check passes, so a failed load leaves the module as it
        was.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"state_dict must be a mapping of str to arrays, got {type(state_dict).__name__}"
            )
        check_bool("strict", strict)
        own = dict(self._state_arrays())
        missing = [
            k for k in own if k not in state_dict and k.rsplit(".", 1)[-1] not in _OPTIONAL_KEYS
        ]
        unexpected = [k for k in state_dict if k not in own]
        errors, sources = [], {}
        if strict and missing:
            errors.append("missing key(s): " + ", ".join(map(repr, missing)))
        if strict and unexpected:
            errors.append("unexpected key(s): " + ", ".join(map(repr, unexpected)))
        for key, dst in own.items():
            if key not in state_dict:
                continue
            src = np.asarray(state_dict[key])
            if src.shape != dst.shape:
                errors.append(
                    f"size mismatch for {key!r}: the state_dict has shape {src.shape}, "
                    f"the model has {dst.shape}"
                )
            if not dst.flags.writeable:  # found now, so no other array is written first
                errors.append(f"the model's {key!r} is a read-only array")
            sources[key] = src
        if errors:
            raise ValueError(
                f"Error(s) in loading state_dict for {type(self).__name__}:\n  "
                + "\n  ".join(errors)
            )
        for key, src in sources.items():
            if not np.can_cast(src.dtype, own[key].dtype, casting="same_kind"):
                raise TypeError(
                    f"cannot load {key!r}: dtype {src.dtype} cannot be cast to the "
                    f"model's {own[key].dtype}"
                )
        for key, src in sources.items():
            np.copyto(own[key], src, casting="same_kind")
        return IncompatibleKeys(missing, unexpected)

    # ---- modes, gradients, dtype ------------------------------------------------------------

    def train(self, mode=True):
        """Set training mode (``mode=True``) or evaluation mode on this module and every
        descendant. Returns self."""
        mode = check_bool("mode", mode)
        for module in self.modules():
            module.training = mode
        return self

    def eval(self):
        """Evaluation mode: Dropout is the identity, BatchNorm uses its running statistics."""
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        """Clear every parameter's gradient: set it to None (default) or fill it with zeros."""
        for param in self.parameters():
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.fill(0)

    def to(self, dtype):
        """Convert floating parameters, gradients and buffers to ``dtype`` (float32 or float64),
        in place, keeping the ``Parameter`` objects. Returns self.

        Create optimisers after converting: their state keeps the old dtype.
        """
        dtype = float_dtype(dtype)
        for module in self.modules():
            for param in module._parameters.values():
                if param is not None:
                    param.data = param.data.astype(dtype, copy=False)
                    if param.grad is not None:
                        param.grad = param.grad.astype(dtype, copy=False)
            for name, buf in module._buffers.items():
                if buf is not None and buf.dtype.kind == "f":
                    module._buffers[name] = buf.astype(dtype, copy=False)
            module._ctx = None  # a cache of the old dtype must not meet new-dtype weights
        return self

    def double(self):
        """``self.to(np.float64)``."""
        return self.to(np.float64)

    def float(self):
        """``self.to(np.float32)``."""
        return self.to(np.float32)

    # ---- computation ------------------------------------------------------------------------

    def forward(self, *args):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def backward(self, grad_out=None):
        """Layer-mode backward of a module that defines only ``forward``, written with Tensor
        operations: the graph its last layer-mode call recorded is run backward and the
        gradient with respect to its array input (a tuple of them for several) is returned."""
        ctx = self._saved()
        if not isinstance(ctx, _Graph):
            raise NotImplementedError(f"{type(self).__name__} does not implement backward()")
        ctx.output.backward(grad_out)
        grads = tuple(t.grad if isinstance(t, Tensor) else None for t in ctx.inputs)
        return grads[0] if len(grads) == 1 else grads

    def _backward_params(self, grad_out):
        """Layer-mode backward for the parameter gradients alone, when the caller needs no
        gradient of this module's input (the module takes the data: PyTorch skips that work
        for inputs that do not require grad). Returns None. A module that can skip work
        (``Conv2d``, ``Sequential``) overrides it; others run their ``backward``."""
        self.backward(grad_out)

    def __call__(self, *args, **kwargs):
        """Autograd mode if an argument is a ``Tensor`` (the result is a Tensor recorded for
        ``backward()``), layer mode otherwise (arrays in and out, ``module.backward``)."""
        for a in args:
            if isinstance(a, Tensor):
                if _TRACING.tracer is not None:  # fastconv.onnx is exporting the model
                    return _TRACING.tracer.call(self, args, kwargs)
                return self._forward_tensor(*args, **kwargs)
        if is_grad_enabled():  # a forward a backward may follow: counted until that backward
            object.__setattr__(self, "_runs", self._runs + 1)
        if type(self).backward is Module.backward:
            return self._forward_through_graph(*args, **kwargs)
        out = self.forward(*args, **kwargs)
        if not is_grad_enabled():  # under no_grad nothing calls backward: keep no input
            self._ctx = None
        return out

    def _forward_tensor(self, *args, **kwargs):
        """Autograd mode. A module that composes others (or Tensor operations) in ``forward``
        needs nothing more; each layer overrides this to record one node calling its
        functional backward, with what that call needs saved in the node, not in ``self``, so
        one instance may be called several times in a forward."""
        return self.forward(*args, **kwargs)

    def _forward_through_graph(self, *args, **kwargs):
        """Layer mode of a module whose ``forward`` is written with Tensors: float arrays become
        Tensors requiring grad, the graph is kept for ``backward`` and the data returned."""
        self._ctx = None  # the last call's graph goes first, not after this one is built
        record = is_grad_enabled()  # under no_grad nothing calls backward: record nothing
        inputs = tuple(
            Tensor(a, requires_grad=record)
            if isinstance(a, np.ndarray) and a.dtype in FLOAT_DTYPES
            else a
            for a in args
        )
        out = self.forward(*inputs, **kwargs)
        if not isinstance(out, Tensor):
            raise TypeError(
                f"{type(self).__name__}.forward() must return a Tensor when it defines no "
                f"backward(), got {type(out).__name__}"
            )
        self._ctx = _Graph(inputs, out) if out.requires_grad else None
        return out.data

    def _saved(self):
        """What the last ``forward`` cached for ``backward``; raises if there was none, or if
        the module ran more than once since its last backward (in one forward pass, or in
        several: its cache holds the last call only, so the gradient would be wrong)."""
        if self._runs > 1:
            runs = self._runs
            object.__setattr__(self, "_runs", 0)  # the next forward starts a new count
            raise RuntimeError(
                f"{type(self).__name__}.backward(): this instance ran {runs} times since its "
                "last backward, and layer mode keeps only the last call's input, so the "
                "gradient would be wrong; call backward after each forward, use a separate "
                "instance for each use, run forwards that need no backward under "
                "fastconv.no_grad(), or call the model on a fastconv.Tensor (autograd mode), "
                "which allows reuse"
            )
        if self._ctx is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward() called before forward(): "
                "run a forward pass through this layer first"
            )
        object.__setattr__(self, "_runs", 0)
        return self._ctx

    # ---- repr -------------------------------------------------------------------------------

    def extra_repr(self):
        """The layer's configuration, shown inside the parentheses of its repr."""
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        lines = extra.split("\n") if extra else []
        children = [f"({n}): " + repr(m).replace("\n", "\n  ") for n, m in self.named_children()]
        if len(lines) == 1 and not children:
            return f"{type(self).__name__}({lines[0]})"
        lines += children
        body = "\n  " + "\n  ".join(lines) + "\n" if lines else ""
        return f"{type(self).__name__}({body})"


_Graph = namedtuple("_Graph", ["inputs", "output"])  # a layer-mode call through autograd

# Per instance: layer-mode forwards (with grad enabled) since its last backward.
Module._runs = 0

# The three registries: the table, how messages name a member, the type it takes and its name.
Module._TABLES = (
    ("_parameters", "parameter", Parameter, "a Parameter"),
    ("_buffers", "buffer", np.ndarray, "a numpy.ndarray"),
    ("_modules", "submodule", Module, "a Module"),
)
