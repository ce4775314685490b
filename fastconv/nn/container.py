"""Containers: ``Sequential``, ``Residual``, ``Identity``, ``ModuleList`` and ``ModuleDict``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fastconv._checks import is_int
from fastconv.nn.activation import ReLU
from fastconv.nn.module import Module
from fastconv.nn.pooling import MaxPool2d


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
            pool = order[i + 1]
            # Not a pool returning indices: its (y, indices) pair cannot go into the ReLU, and
            # indices must be the argmax of ReLU's output (a window of zeros has another one).
            if type(order[i]) is ReLU and type(pool) is MaxPool2d and not pool.return_indices:
                order[i], order[i + 1] = order[i + 1], order[i]
        return order

    def forward(self, x):
        order = self._run_order()
        for module in order:
            x = module(x)
        self._ctx = order
        return x

    def _forward_tensor(self, x):  # the graph keeps what backward needs: no _ctx
        for module in self._run_order():
            x = module(x)
        return x

    def backward(self, grad_out, input_grad=True):
        """The gradient through every module, last to first. ``input_grad=False``: the first
        module computes only its parameters' gradients (a first ``Conv2d`` skips its input
        gradient, which PyTorch skips for data too) and None is returned."""
        modules = self._saved()
        for module in reversed(modules[1:] if not input_grad else modules):
            grad_out = module.backward(grad_out)
        if input_grad:
            return grad_out
        if modules:
            modules[0]._backward_params(grad_out)
        return None

    def _backward_params(self, grad_out):
        self.backward(grad_out, input_grad=False)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        items = list(self._modules.items())
        if isinstance(index, slice):
            return Sequential(dict(items[index]))
        if not is_int(index):
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
        y = self._forward_tensor(x)
        self._ctx = ()
        return y

    def _forward_tensor(self, x):
        """Both modes: for Tensors the sum records its node."""
        out = self.block(x)
        skip = x if self.shortcut is None else self.shortcut(x)
        if out.shape != skip.shape:
            raise ValueError(
                f"Residual: the block's output shape {out.shape} differs from "
                f"the shortcut's {skip.shape}; give a shortcut that maps the "
                "input to the block's output shape"
            )
        return out + skip

    def backward(self, grad_out):
        self._saved()
        grad_x = self.block.backward(grad_out)
        if self.shortcut is None:
            return grad_x + grad_out
        return grad_x + self.shortcut.backward(grad_out)


class Identity(Module):
    """Returns its input (array or Tensor) itself, as ``torch.nn.Identity``; arguments are
    accepted and ignored. A placeholder where a branch or a layer is optional."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        self._ctx = ()
        return x

    def _forward_tensor(self, x):
        return x

    def backward(self, grad_out):
        self._saved()
        return grad_out


class ModuleList(Module):
    """A list of modules, registered as children "0", "1", ... (PyTorch's state-dict keys
    "0.weight", ...). It has no forward: the parent's forward calls its members.

    Unlike ``Sequential`` it may hold one instance more than once (a shared layer), as
    PyTorch's does; that trains in autograd mode (layer mode refuses it at backward time).
    """

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    @staticmethod
    def _check(index, module):
        if not isinstance(module, Module):
            raise TypeError(
                f"ModuleList: module {index} must be a Module, got {type(module).__name__}"
            )
        return module

    def _index(self, index):
        if not is_int(index):
            raise TypeError(f"ModuleList indices must be ints or slices, got {index!r}")
        n = len(self._modules)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for a ModuleList of {n}")
        return str(int(index) % n)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ModuleList(list(self._modules.values())[index])
        return self._modules[self._index(index)]

    def __setitem__(self, index, module):
        self._modules[self._index(index)] = self._check(index, module)

    def __delitem__(self, index):
        modules = list(self._modules.values())
        del modules[index if isinstance(index, slice) else int(self._index(index))]
        self._modules.clear()
        self.extend(modules)  # renumbered "0", "1", ... as PyTorch does

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self._modules)), self._check(len(self._modules), module))
        return self

    def extend(self, modules):
        if isinstance(modules, Module) or not isinstance(modules, Iterable):
            raise TypeError(f"modules must be an iterable of Modules, got {type(modules).__name__}")
        for module in modules:
            self.append(module)
        return self

    def insert(self, index, module):
        modules = list(self._modules.values())
        modules.insert(index, self._check(index, module))
        self._modules.clear()
        self.extend(modules)


class ModuleDict(Module):
    """An ordered mapping of names to modules, registered as children under those names
    (state-dict keys "<name>.weight", ...), as ``torch.nn.ModuleDict``. It has no forward."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key):
        if key not in self._modules:
            raise KeyError(key)
        return self._modules[key]

    def __setitem__(self, key, module):
        if not isinstance(module, Module):
            raise TypeError(
                f"ModuleDict: module {key!r} must be a Module, got {type(module).__name__}"
            )
        self.add_module(key, module)

    def __delitem__(self, key):
        del self._modules[key]

    def __contains__(self, key):
        return key in self._modules

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()

    def update(self, modules):
        """Add ``modules``: a mapping or an iterable of ``(name, module)`` pairs."""
        items = modules.items() if isinstance(modules, Mapping) else modules
        for key, module in items:
            self[key] = module
