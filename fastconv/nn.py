"""Layers with PyTorch's names: a ``Module`` owns parameters and configuration, and each
``forward``/``backward`` is one call into :mod:`fastconv.functional`."""

from __future__ import annotations

import math
import numbers
from collections import namedtuple
from collections.abc import Mapping

import numpy as np

import fastconv.functional as F
from fastconv import init
from fastconv._checks import (
    check_bool,
    check_probability,
    float_dtype,
    generator,
    pair,
    pool_padding,
    positive_int,
)

__all__ = [
    "Parameter",
    "Module",
    "IncompatibleKeys",
    "Conv2d",
    "Linear",
    "BatchNorm2d",
    "BatchNorm1d",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "ReLU",
    "LeakyReLU",
    "Sigmoid",
    "Tanh",
    "Flatten",
    "Dropout",
    "Sequential",
    "Residual",
    "CrossEntropyLoss",
]


class Parameter:
    """A trainable array and its accumulated gradient.

    Parameters
    ----------
    data : ndarray
        The values; float32 or float64. Optimisers update it in place.

    Attributes
    ----------
    data : ndarray
    grad : ndarray or None
        Same shape and dtype as ``data``; ``None`` until the first backward, which creates it.
        Each backward adds to it, as in PyTorch; ``Module.zero_grad()`` resets it to ``None``.
    """

    __slots__ = ("data", "grad")

    def __init__(self, data):
        if not isinstance(data, np.ndarray):
            raise TypeError(f"data must be a numpy.ndarray, got {type(data).__name__}")
        self.data = data
        self.grad = None

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    @property
    def ndim(self):
        return self.data.ndim

    def __repr__(self):
        grad = "None" if self.grad is None else "set"
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype}, grad={grad})"


# =============================================================================================
# Module
# =============================================================================================


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

    A subclass implements ``forward(x)``, which caches what ``backward`` needs, and
    ``backward(grad_out)``, which returns the gradient with respect to the input and **adds**
    the parameter gradients to each ``Parameter.grad``.
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
        elif "_parameters" in d and name in self._parameters:
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} to parameter {name!r} "
                    "(expected a Parameter or None)"
                )
            self._parameters[name] = None
        elif "_modules" in d and name in self._modules:
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} to submodule {name!r} "
                    "(expected a Module or None)"
                )
            self._modules[name] = None
        elif "_buffers" in d and name in self._buffers:
            if value is not None and not isinstance(value, np.ndarray):
                raise TypeError(
                    f"cannot assign {type(value).__name__} to buffer {name!r} "
                    "(expected a numpy.ndarray or None)"
                )
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Called only when normal lookup fails, i.e. for registered names.
        d = self.__dict__
        for table in ("_parameters", "_buffers", "_modules"):
            if table in d and name in d[table]:
                return d[table][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                return
        object.__delattr__(self, name)

    def _unregister(self, name):
        self.__dict__.pop(name, None)
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)

    def _check_new_name(self, name):
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if not name or "." in name:
            raise ValueError(f"name must be non-empty and contain no '.', got {name!r}")
        if name in self.__dict__ and not any(
            name in t for t in (self._parameters, self._buffers, self._modules)
        ):
            raise KeyError(f"attribute {name!r} already exists")

    def register_parameter(self, name, param):
        """Register ``param`` (a ``Parameter``, or None for an absent one such as ``bias``)."""
        self._check_new_name(name)
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"param must be a Parameter or None, got {type(param).__name__}")
        self._unregister(name)
        self._parameters[name] = param

    def register_buffer(self, name, array):
        """Register ``array``: state (saved in ``state_dict``) that is not trained."""
        self._check_new_name(name)
        if array is not None and not isinstance(array, np.ndarray):
            raise TypeError(f"array must be a numpy.ndarray or None, got {type(array).__name__}")
        self._unregister(name)
        self._buffers[name] = array

    def add_module(self, name, module):
        """Register ``module`` as a child named ``name``."""
        self._check_new_name(name)
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"module must be a Module or None, got {type(module).__name__}")
        self._unregister(name)
        self._modules[name] = module

    # ---- traversal --------------------------------------------------------------------------

    def named_children(self):
        """Yield ``(name, module)`` for each direct child."""
        for name, module in self._modules.items():
            if module is not None:
                yield name, module

    def children(self):
        for _, module in self.named_children():
            yield module

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
        for _, module in self.named_modules():
            yield module

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
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_buffers(self, prefix="", recurse=True):
        yield from self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse=True):
        for _, buf in self.named_buffers(recurse=recurse):
            yield buf

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
        if not isinstance(strict, (bool, np.bool_)):
            raise TypeError(f"strict must be a bool, got {strict!r}")
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
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"mode must be a bool, got {mode!r}")
        for module in self.modules():
            module.training = bool(mode)
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

    def backward(self, grad_out):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def _saved(self):
        """What the last ``forward`` cached for ``backward``; raises if there was none."""
        if self._ctx is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward() called before forward(): "
                "run a forward pass through this layer first"
            )
        return self._ctx

    # ---- repr -------------------------------------------------------------------------------

    def extra_repr(self):
        """The layer's configuration, shown inside the parentheses of its repr."""
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = []
        for name, module in self.named_children():
            text = repr(module).replace("\n", "\n  ")
            child_lines.append(f"({name}): {text}")
        lines = extra_lines + child_lines
        body = ""
        if len(extra_lines) == 1 and not child_lines:
            body = extra_lines[0]
        elif lines:
            body = "\n  " + "\n  ".join(lines) + "\n"
        return f"{type(self).__name__}({body})"


def _accumulate(param, grad):
    """``param.grad += grad``, creating ``param.grad`` (a copy) on the first backward."""
    if param.grad is None:
        param.grad = np.array(grad, dtype=param.data.dtype, copy=True)
    else:
        param.grad += grad


def _reset_weight_and_bias(weight, bias, fan_in, rng):
    """PyTorch's default for Conv2d and Linear: ``kaiming_uniform_(weight, a=sqrt(5))``, i.e.
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the bias uniform with the same bound."""
    init.kaiming_uniform_(weight.data, a=math.sqrt(5), rng=rng)
    if bias is not None:
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        init.uniform_(bias.data, -bound, bound, rng=rng)


# =============================================================================================
# Layers with parameters
# =============================================================================================


class Conv2d(Module):
    """2-D convolution (cross-correlation), as ``torch.nn.Conv2d``.

    Parameters
    ----------
    in_channels, out_channels : int
        Both divisible by ``groups``.
    kernel_size, stride, dilation : int or (int, int)
    padding : int, (int, int), "same" (stride 1 only) or "valid"
    groups : int
    bias : bool
    dtype : float32 (default) or float64
    rng : numpy.random.Generator, int seed or None
        Source of the default initialisation; None means ``fastconv.init``'s default generator
        (see ``fastconv.init.manual_seed``).

    Shapes: input (N, C_in, H, W) -> output (N, C_out, OH, OW), with PyTorch's
    ``OH = (H + 2*pH - dH*(kH - 1) - 1) // sH + 1``. ``weight`` is
    (C_out, C_in // groups, kH, kW), ``bias`` (C_out,).
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        dtype=np.float32,
        *,
        rng=None,
    ):
        super().__init__()
        self.in_channels = positive_int("in_channels", in_channels)
        self.out_channels = positive_int("out_channels", out_channels)
        self.groups = positive_int("groups", groups)
        for name, channels in (
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
        ):
            if channels % self.groups:
                raise ValueError(
                    f"{name} must be divisible by groups, got {name}={channels}, "
                    f"groups={self.groups}"
                )
        self.kernel_size = pair("kernel_size", kernel_size, minimum=1)
        self.stride = pair("stride", stride, minimum=1)
        self.dilation = pair("dilation", dilation, minimum=1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(
                    f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}"
                )
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f"padding='same' needs stride=1, got stride={stride!r}")
            self.padding = padding
        else:
            self.padding = pair("padding", padding, minimum=0)
        check_bool("bias", bias)
        dtype = float_dtype(dtype)

        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        self.weight = Parameter(np.empty(shape, dtype))
        self.register_parameter(
            "bias", Parameter(np.empty(self.out_channels, dtype)) if bias else None
        )
        fan_in = shape[1] * shape[2] * shape[3]
        _reset_weight_and_bias(
            self.weight, self.bias, fan_in, generator(rng, default=init.get_rng())
        )

    def _args(self):
        return self.stride, self.padding, self.dilation, self.groups

    def forward(self, x):
        """(N, C_in, H, W) -> (N, C_out, OH, OW)."""
        bias = None if self.bias is None else self.bias.data
        y = F.conv2d(x, self.weight.data, bias, *self._args())
        self._ctx = (x,)
        return y

    def backward(self, grad_out):
        """(N, C_out, OH, OW) -> (N, C_in, H, W); adds to ``weight.grad`` and ``bias.grad``."""
        (x,) = self._saved()
        grad_x, grad_w, grad_b = F.conv2d_backward(grad_out, x, self.weight.data, *self._args())
        _accumulate(self.weight, grad_w)
        if self.bias is not None:
            _accumulate(self.bias, grad_b)
        return grad_x

    def extra_repr(self):
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class Linear(Module):
    """Fully connected layer ``y = x @ weight.T + bias``, as ``torch.nn.Linear``.

    Shapes: input (*, in_features) -> output (*, out_features); ``weight`` is
    (out_features, in_features), ``bias`` (out_features,). ``dtype`` and ``rng`` as in
    ``Conv2d``.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, *, rng=None):
        super().__init__()
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        check_bool("bias", bias)
        dtype = float_dtype(dtype)
        self.weight = Parameter(np.empty((self.out_features, self.in_features), dtype))
        self.register_parameter(
            "bias", Parameter(np.empty(self.out_features, dtype)) if bias else None
        )
        _reset_weight_and_bias(
            self.weight, self.bias, self.in_features, generator(rng, default=init.get_rng())
        )

    def forward(self, x):
        """(*, in_features) -> (*, out_features)."""
        y = F.linear(x, self.weight.data, None if self.bias is None else self.bias.data)
        self._ctx = (x,)
        return y

    def backward(self, grad_out):
        """(*, out_features) -> (*, in_features); adds to ``weight.grad`` and ``bias.grad``."""
        (x,) = self._saved()
        grad_x, grad_w, grad_b = F.linear_backward(grad_out, x, self.weight.data)
        _accumulate(self.weight, grad_w)
        if self.bias is not None:
            _accumulate(self.bias, grad_b)
        return grad_x

    def extra_repr(self):
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


class _BatchNorm(Module):
    _ndims = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=np.float32):
        super().__init__()
        self.num_features = positive_int("num_features", num_features)
        if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not eps > 0:
            raise ValueError(f"eps must be a positive float, got {eps!r}")
        self.eps = float(eps)
        self.momentum = check_probability("momentum", momentum)
        dtype = float_dtype(dtype)
        C = self.num_features
        self.weight = Parameter(np.ones(C, dtype))
        self.bias = Parameter(np.zeros(C, dtype))
        self.register_buffer("running_mean", np.zeros(C, dtype))
        self.register_buffer("running_var", np.ones(C, dtype))
        self.register_buffer("num_batches_tracked", np.zeros((), np.int64))

    def forward(self, x):
        """Normalise with the batch statistics (training; updates the running ones in place)
        or with the running statistics (eval). Output shaped like ``x``."""
        if isinstance(x, np.ndarray) and x.ndim not in self._ndims:
            want = " or ".join(f"{d}-D" for d in self._ndims)
            raise ValueError(
                f"{type(self).__name__} expects {want} input, got {x.ndim}-D input "
                f"of shape {x.shape}"
            )
        y, cache = F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight.data,
            self.bias.data,
            self.training,
            self.momentum,
            self.eps,
        )
        if self.training:
            self.num_batches_tracked += 1
        self._ctx = (cache,)
        return y

    def backward(self, grad_out):
        """Gradient with respect to the input; adds to ``weight.grad`` and ``bias.grad``."""
        (cache,) = self._saved()
        grad_x, grad_w, grad_b = F.batch_norm_backward(grad_out, cache)
        _accumulate(self.weight, grad_w)
        _accumulate(self.bias, grad_b)
        return grad_x

    def extra_repr(self):
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine=True, "
            "track_running_stats=True"
        )


class BatchNorm2d(_BatchNorm):
    """Batch normalisation per channel of (N, C, H, W) inputs, as ``torch.nn.BatchNorm2d``.

    ``weight`` (C,) starts at 1, ``bias`` (C,) at 0; buffers ``running_mean`` (C,) start at 0,
    ``running_var`` (C,) at 1, ``num_batches_tracked`` (int64 scalar) at 0. Training updates
    ``running = (1 - momentum) * running + momentum * batch`` (unbiased batch variance).
    """

    _ndims = (4,)


class BatchNorm1d(_BatchNorm):
    """Batch normalisation per feature of (N, C) or (N, C, L) inputs, as
    ``torch.nn.BatchNorm1d``; otherwise as ``BatchNorm2d``."""

    _ndims = (2, 3)


# =============================================================================================
# Layers without parameters
# =============================================================================================


class MaxPool2d(Module):
    """Max pooling, as ``torch.nn.MaxPool2d``: (N, C, H, W) -> (N, C, OH, OW).

    ``stride=None`` means ``stride=kernel_size``; ``padding`` (implicit -inf) is at most half
    the kernel size. The argmax indices are cached for backward.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        pair("kernel_size", kernel_size, minimum=1)
        if stride is not None:
            pair("stride", stride, minimum=1)
        pool_padding(padding, kernel_size)
        pair("dilation", dilation, minimum=1)
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        self.dilation = dilation
        self.ceil_mode = check_bool("ceil_mode", ceil_mode)

    def forward(self, x):
        y, indices = F.max_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode
        )
        self._ctx = (indices, x.shape)
        return y

    def backward(self, grad_out):
        indices, input_shape = self._saved()
        return F.max_pool2d_backward(grad_out, indices, input_shape)

    def extra_repr(self):
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )


class AvgPool2d(Module):
    """Average pooling, as ``torch.nn.AvgPool2d``: (N, C, H, W) -> (N, C, OH, OW).

    ``count_include_pad`` decides whether zero padding counts in each window's divisor.
    """

    def __init__(
        self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True
    ):
        super().__init__()
        pair("kernel_size", kernel_size, minimum=1)
        if stride is not None:
            pair("stride", stride, minimum=1)
        pool_padding(padding, kernel_size)
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        self.ceil_mode = check_bool("ceil_mode", ceil_mode)
        self.count_include_pad = check_bool("count_include_pad", count_include_pad)

    def _args(self):
        return self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad

    def forward(self, x):
        y = F.avg_pool2d(x, *self._args())
        self._ctx = (x.shape,)
        return y

    def backward(self, grad_out):
        (input_shape,) = self._saved()
        return F.avg_pool2d_backward(grad_out, input_shape, *self._args())

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Adaptive average pooling, as ``torch.nn.AdaptiveAvgPool2d``: (N, C, H, W) ->
    (N, C, OH, OW) for ``output_size`` OH (= OW) or (OH, OW); None in the pair keeps that input
    dimension."""

    def __init__(self, output_size):
        super().__init__()
        sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size,)
        if len(sizes) not in (1, 2) or not all(
            s is None
            or (
                isinstance(s, (numbers.Integral, np.integer)) and not isinstance(s, bool) and s >= 1
            )
            for s in sizes
        ):
            raise ValueError(
                f"output_size must be a positive int or a pair of positive ints "
                f"(or None), got {output_size!r}"
            )
        self.output_size = output_size

    def forward(self, x):
        size = self.output_size
        if isinstance(size, (tuple, list)) and None in size and getattr(x, "ndim", 0) == 4:
            size = tuple(x.shape[2 + i] if s is None else s for i, s in enumerate(size))
        y = F.adaptive_avg_pool2d(x, size)
        self._ctx = (x.shape,)
        return y

    def backward(self, grad_out):
        (input_shape,) = self._saved()
        return F.adaptive_avg_pool2d_backward(grad_out, input_shape)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class ReLU(Module):
    """``max(x, 0)`` elementwise, any shape. ``inplace`` is accepted for PyTorch compatibility;
    the result is always a new array."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = check_bool("inplace", inplace)

    def forward(self, x):
        y = F.relu(x)
        self._ctx = (x,)
        return y

    def backward(self, grad_out):
        (x,) = self._saved()
        return F.relu_backward(grad_out, x)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class LeakyReLU(Module):
    """``x if x > 0 else negative_slope * x`` elementwise, any shape."""

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        if not isinstance(negative_slope, numbers.Real) or isinstance(negative_slope, bool):
            raise TypeError(f"negative_slope must be a float, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)
        self.inplace = check_bool("inplace", inplace)

    def forward(self, x):
        y = F.leaky_relu(x, self.negative_slope)
        self._ctx = (x,)
        return y

    def backward(self, grad_out):
        (x,) = self._saved()
        return F.leaky_relu_backward(grad_out, x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class Sigmoid(Module):
    """``1 / (1 + exp(-x))`` elementwise, any shape."""

    def forward(self, x):
        y = F.sigmoid(x)
        self._ctx = (x,)
        return y

    def backward(self, grad_out):
        (x,) = self._saved()
        return F.sigmoid_backward(grad_out, x)


class Tanh(Module):
    """``tanh(x)`` elementwise, any shape."""

    def forward(self, x):
        y = F.tanh(x)
        self._ctx = (x,)
        return y

    def backward(self, grad_out):
        (x,) = self._saved()
        return F.tanh_backward(grad_out, x)


class Flatten(Module):
    """Merge dimensions ``start_dim..end_dim`` into one, as ``torch.nn.Flatten``:
    (N, C, H, W) -> (N, C*H*W) with the defaults."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        for name, dim in (("start_dim", start_dim), ("end_dim", end_dim)):
            if not isinstance(dim, (numbers.Integral, np.integer)) or isinstance(dim, bool):
                raise TypeError(f"{name} must be an int, got {dim!r}")
        self.start_dim = int(start_dim)
        self.end_dim = int(end_dim)

    def forward(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"input must be a numpy.ndarray, got {type(x).__name__}")
        start = self.start_dim + x.ndim if self.start_dim < 0 else self.start_dim
        end = self.end_dim + x.ndim if self.end_dim < 0 else self.end_dim
        if not 0 <= start <= end < max(x.ndim, 1):
            raise ValueError(
                f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}) does "
                f"not fit an input of shape {x.shape}"
            )
        y = x.reshape(*x.shape[:start], -1, *x.shape[end + 1 :])
        self._ctx = (x.shape,)
        return y

    def backward(self, grad_out):
        (input_shape,) = self._saved()
        return np.reshape(grad_out, input_shape)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Dropout(Module):
    """Inverted dropout, as ``torch.nn.Dropout``: in training each element is zeroed with
    probability ``p`` and the rest scaled by ``1/(1-p)``; in eval it is the identity.

    The layer draws its masks from its own generator ``self.rng``: ``rng`` if that is a
    ``numpy.random.Generator``, else one seeded with the int ``rng``, or (None) with a seed drawn
    from ``fastconv.init``'s default generator, so ``fastconv.init.manual_seed`` makes it
    reproducible too. ``inplace`` is accepted for PyTorch compatibility and ignored.
    """

    def __init__(self, p=0.5, inplace=False, *, rng=None):
        super().__init__()
        self.p = check_probability("p", p)
        self.inplace = check_bool("inplace", inplace)
        if rng is None:
            rng = int(init.get_rng().integers(2**63))
        self.rng = generator(rng, default=init.get_rng())

    def forward(self, x):
        y, mask = F.dropout(x, self.p, self.training, self.rng)
        self._ctx = (mask,)
        return y

    def backward(self, grad_out):
        (mask,) = self._saved()
        return F.dropout_backward(grad_out, mask)

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"


# =============================================================================================
# Containers
# =============================================================================================


def _check_no_shared_modules(container):
    """Layers cache their last input for backward, so one instance used twice in a network
    would backpropagate through the wrong input. Refuse that when a container is built."""
    first_seen = {}
    stack = [(type(container).__name__, container)]
    while stack:
        path, module = stack.pop()
        if id(module) in first_seen:
            raise ValueError(
                f"the same {type(module).__name__} instance appears twice ({first_seen[id(module)]}"
                f" and {path}); fastconv layers cache their input for backward, so use a separate "
                "instance for each position"
            )
        first_seen[id(module)] = path
        stack.extend((f"{path}.{name}", child) for name, child in module.named_children())


class Sequential(Module):
    """Run modules in order; backward runs their backwards in reverse order.

    ``Sequential(m0, m1, ...)`` names the children "0", "1", ... (so state_dict keys are
    "0.weight", ...); ``Sequential(OrderedDict(name=module, ...))`` uses the given names. Supports
    ``len``, iteration, ``seq[i]`` and slicing (a new Sequential sharing the modules).
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], Mapping):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, module in items:
            if not isinstance(module, Module):
                raise TypeError(
                    f"Sequential: module {name} must be a Module, got {type(module).__name__}"
                )
            self.add_module(name, module)
        _check_no_shared_modules(self)

    def _run_order(self):
        """The modules in the order they run: as given, except that a ReLU followed by a
        MaxPool2d runs after it.

        ReLU is monotone, so ``max_pool(relu(x)) == relu(max_pool(x))``, and the gradients agree
        too (where a window's max is positive both pick the same argmax; elsewhere both give 0).
        Swapped, the ReLU and its backward touch a pooled tensor (4x smaller for 2x2 pooling)
        instead of the conv output: the largest activation of a typical CNN.
        """
        order = list(self._modules.values())
        for i in range(len(order) - 1):
            if type(order[i]) is ReLU and type(order[i + 1]) is MaxPool2d:
                order[i], order[i + 1] = order[i + 1], order[i]
        return order

    def forward(self, x):
        order = self._run_order()
        for module in order:
            x = module(x)
        self._ctx = (order,)
        return x

    def backward(self, grad_out):
        (order,) = self._saved()
        for module in reversed(order):
            grad_out = module.backward(grad_out)
        return grad_out

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        items = list(self._modules.items())
        if isinstance(index, slice):
            return Sequential(dict(items[index]))
        if not isinstance(index, (numbers.Integral, np.integer)) or isinstance(index, bool):
            raise TypeError(f"Sequential indices must be ints or slices, got {index!r}")
        if not -len(items) <= index < len(items):
            raise IndexError(f"index {index} is out of range for a Sequential of {len(items)}")
        return items[index][1]


class Residual(Module):
    """``y = block(x) + shortcut(x)``; the shortcut is the identity when None.

    The shortcut must map x to the block's output shape (e.g. a 1x1 strided ``Conv2d`` when the
    block changes channels or resolution). Backward sums the gradients of both paths.
    state_dict keys are ``block.*`` and ``shortcut.*``.
    """

    def __init__(self, block, shortcut=None):
        super().__init__()
        if not isinstance(block, Module):
            raise TypeError(f"block must be a Module, got {type(block).__name__}")
        if shortcut is not None and not isinstance(shortcut, Module):
            raise TypeError(f"shortcut must be a Module or None, got {type(shortcut).__name__}")
        self.block = block
        self.add_module("shortcut", shortcut)
        _check_no_shared_modules(self)

    def forward(self, x):
        out = self.block(x)
        skip = x if self.shortcut is None else self.shortcut(x)
        if np.shape(out) != np.shape(skip):
            raise ValueError(
                f"Residual: the block's output shape {np.shape(out)} differs from "
                f"the shortcut's {np.shape(skip)}; give a shortcut that maps the "
                "input to the block's output shape"
            )
        self._ctx = ()
        return out + skip

    def backward(self, grad_out):
        self._saved()
        grad_x = self.block.backward(grad_out)
        if self.shortcut is None:
            return grad_x + grad_out
        return grad_x + self.shortcut.backward(grad_out)


# =============================================================================================
# Losses
# =============================================================================================


class CrossEntropyLoss(Module):
    """Softmax cross-entropy of (N, C) logits against (N,) integer class targets.

    ``loss = crit(logits, target)`` is a float for reduction "mean" or "sum", an (N,) array for
    "none"; ``crit.backward()`` then returns the (N, C) gradient with respect to the logits.
    """

    def __init__(self, reduction="mean"):
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction

    def forward(self, logits, target):
        loss = F.cross_entropy(logits, target, self.reduction)
        self._ctx = (logits, target)
        return loss

    def backward(self, grad_out=None):
        """Gradient with respect to the logits, (N, C).

        ``grad_out`` is the upstream gradient of the loss: None means 1; a scalar for "mean"
        and "sum", an (N,) array for "none".
        """
        logits, target = self._saved()
        grad = F.cross_entropy_backward(logits, target, self.reduction)
        if grad_out is None:
            return grad
        grad_out = np.asarray(grad_out, dtype=grad.dtype)
        want = grad.shape[:1] if self.reduction == "none" else ()
        if grad_out.shape != want:
            raise ValueError(
                f"grad_out must have shape {want} for reduction="
                f"{self.reduction!r}, got {grad_out.shape}"
            )
        return grad * grad_out.reshape(grad_out.shape + (1,) * (grad.ndim - grad_out.ndim))

    def extra_repr(self):
        return "" if self.reduction == "mean" else f"reduction={self.reduction!r}"
