"""The optimizer base class: parameter groups, per-parameter state, saving and loading.

Subclasses (:mod:`fastconv.optim.sgd`, :mod:`fastconv.optim.adam`) define ``_update``, the rule
that changes one parameter in place, and ``_check_options`` for their own options.
"""

from __future__ import annotations

import numpy as np

from fastconv._checks import float_dtype, real

__all__ = ["Optimizer"]


class Optimizer:
    """Base class: holds parameter groups and per-parameter state; subclasses define the update.

    Parameters
    ----------
    params : iterable
        Parameters (objects with ``.data`` and ``.grad``), e.g. ``model.parameters()``, or
        dicts ``{"params": iterable, option: value, ...}`` defining parameter groups.
    defaults : dict
        Option values used by groups that do not set them.

    Attributes
    ----------
    param_groups : list of dict
        One dict per group: ``"params"`` (list of parameters) and the options, e.g. ``"lr"``.
    state : dict
        Per-parameter state (e.g. ``"momentum_buffer"``), keyed by the parameter's position in
        the optimizer (counting through the groups in order), as in PyTorch's ``state_dict``.
    """

    #: Names of the per-parameter state entries a subclass creates (for ``load_state_dict``).
    _state_keys: tuple[str, ...] = ()

    def __init__(self, params, defaults):
        if isinstance(params, np.ndarray) or hasattr(params, "data"):
            raise TypeError(
                "params must be an iterable of parameters or of dicts, got a single "
                f"{type(params).__name__}; wrap it in a list"
            )
        self.defaults = self._check_options(dict(defaults))
        self.param_groups = []
        self.state = {}
        self._workspace = {}  # dtype -> flat scratch array, grown to the largest parameter
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list (params)")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # -- options -----------------------------------------------------------------------------

    def _check_options(self, options):
        """Validate and normalise one group's options (Python floats); subclasses extend it."""
        options["lr"] = real("lr", options["lr"], minimum=0.0)
        return options

    @property
    def lr(self):
        """Learning rate of the first parameter group; assigning sets it in every group."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value):
        value = real("lr", value, minimum=0.0)
        for group in self.param_groups:
            group["lr"] = value

    def add_param_group(self, param_group):
        """Add a group ``{"params": iterable, option: value, ...}``; unset options use defaults."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("param_group must have a 'params' entry")
        unknown = set(param_group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(
                f"param_group has unknown option(s) {sorted(unknown)}; "
                f"{type(self).__name__} accepts {sorted(self.defaults)}"
            )
        params = param_group["params"]
        params = [params] if hasattr(params, "data") else list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list (params)")
        seen = {id(p) for p in self._parameters()}
        for p in params:
            where = f"params[{len(seen)}]"
            data = getattr(p, "data", None)
            if not isinstance(data, np.ndarray) or not hasattr(p, "grad"):
                raise TypeError(
                    f"{where} must have a .data ndarray and a .grad attribute (like "
                    f"fastconv.nn.Parameter), got {type(p).__name__}"
                )
            float_dtype(data.dtype, name=f"{where}.data")
            if id(p) in seen:
                raise ValueError(f"{where} appears more than once in the optimizer's parameters")
            seen.add(id(p))
        options = {key: param_group.get(key, value) for key, value in self.defaults.items()}
        group = self._check_options(options)
        group["params"] = params
        self.param_groups.append(group)

    # -- stepping ----------------------------------------------------------------------------

    def _parameters(self):
        for group in self.param_groups:
            yield from group["params"]

    def zero_grad(self, set_to_none=True):
        """Clear every parameter's gradient.

        Parameters
        ----------
        set_to_none : bool, default True
            As in PyTorch: set ``p.grad = None`` (the next backward allocates a fresh array and
            ``step()`` skips parameters that get no gradient). With False, fill existing
            gradient arrays with zeros in place instead.
        """
        for p in self._parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.fill(0)

    def step(self, closure=None):
        """Update every parameter that has a gradient, in place.

        Parameters
        ----------
        closure : callable, optional
            Called first (it typically recomputes the loss and gradients); its value is returned.
        """
        loss = None if closure is None else closure()
        # Every parameter is checked before the first one is updated, so a bad one (a
        # mis-shaped gradient, a read-only array) raises with every parameter and every
        # moment as it was.
        todo, index = [], 0
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    _check_grad(index, p, self.state.get(index, {}))
                    todo.append((index, p, group))
                index += 1
        for index, p, group in todo:
            self._update(p, self.state.setdefault(index, {}), group)
        return loss

    def _update(self, p, state, group):
        """Update ``p.data`` in place from ``p.grad``, the parameter's ``state`` and options."""
        raise NotImplementedError

    def _scratch(self, data, count):
        """``count`` preallocated arrays shaped like ``data``, to be overwritten at once.

        They are views of one buffer per dtype, reused across parameters and steps.
        """
        size = data.size
        buffer = self._workspace.get(data.dtype)
        if buffer is None or buffer.size < count * size:
            buffer = self._workspace[data.dtype] = np.empty(count * size, dtype=data.dtype)
        return [buffer[k * size : (k + 1) * size].reshape(data.shape) for k in range(count)]

    # -- saving ------------------------------------------------------------------------------

    def state_dict(self):
        """The options and per-parameter state as a flat dict of arrays and numbers.

        Keys are ``"param_groups.{g}.params"`` (int64 positions of the group's parameters),
        ``"param_groups.{g}.{option}"`` (tuples such as ``betas`` become float64 arrays) and
        ``"state.{i}.{name}"`` (copies of the state arrays; ``step`` is an int). The dict can go
        straight to ``np.savez``.
        """
        out = {}
        start = 0
        for g, group in enumerate(self.param_groups):
            count = len(group["params"])
            out[f"param_groups.{g}.params"] = np.arange(start, start + count, dtype=np.int64)
            start += count
            for key, value in group.items():
                if key != "params":
                    out[f"param_groups.{g}.{key}"] = (
                        np.array(value, dtype=np.float64) if isinstance(value, tuple) else value
                    )
        for index in sorted(self.state):
            for key, value in self.state[index].items():
                out[f"state.{index}.{key}"] = (
                    value.copy() if isinstance(value, np.ndarray) else value
                )
        return out

    def load_state_dict(self, state_dict):
        """Load options and state saved by :meth:`state_dict` (also from ``np.load``).

        The optimizer must hold the same number of groups and of parameters per group, with the
        same shapes. State arrays are copied and cast to each parameter's dtype. A missing or
        unexpected key, or a shape mismatch, raises ``ValueError`` naming the key; nothing is
        changed unless the whole dict loads.
        """
        source = dict(state_dict)
        unused = set(source)

        def take(key):
            if key not in source:
                raise ValueError(f"state_dict is missing key {key!r}")
            unused.discard(key)
            return source[key]

        params = list(self._parameters())
        new_groups = []
        start = 0
        for g, group in enumerate(self.param_groups):
            count = len(group["params"])
            key = f"param_groups.{g}.params"
            positions = np.asarray(take(key))
            if not np.array_equal(positions, np.arange(start, start + count)):
                raise ValueError(
                    f"state_dict key {key!r} lists {positions.size} parameter(s) "
                    f"{positions.tolist()}; group {g} of this optimizer has {count}, "
                    f"at positions {start}..{start + count - 1}"
                )
            start += count
            options = {}
            for name, current in group.items():
                if name != "params":
                    key = f"param_groups.{g}.{name}"
                    options[name] = _like(key, take(key), current)
            new_groups.append(self._check_options(options))

        new_state = {}
        for key in sorted(unused):
            parts = key.split(".")
            if not (
                len(parts) == 3
                and parts[0] == "state"
                and parts[1].isdigit()
                and int(parts[1]) < len(params)
                and parts[2] in self._state_keys
            ):
                raise ValueError(f"unexpected key {key!r} in state_dict")
            index, name = int(parts[1]), parts[2]
            value = np.asarray(source[key])
            if name == "step":
                # A count of steps taken: a non-negative whole number (-1 or inf would give a
                # wrong or NaN bias correction on the next step).
                if (
                    value.shape != ()
                    or value.dtype.kind not in "iuf"
                    or not np.isfinite(value)
                    or value < 0
                    or value != np.floor(value)
                ):
                    raise ValueError(
                        f"state_dict key {key!r} must be a whole number >= 0, got {value!r}"
                    )
                value = int(value)
            else:
                data = params[index].data
                if value.shape != data.shape:
                    raise ValueError(
                        f"state_dict key {key!r} has shape {value.shape}, "
                        f"but parameter {index} has shape {data.shape}"
                    )
                value = value.astype(data.dtype, copy=True)
            new_state.setdefault(index, {})[name] = value
        for index, entries in new_state.items():  # a parameter's state is all or nothing
            for name in self._state_keys:
                if name not in entries:
                    raise ValueError(f"state_dict is missing key 'state.{index}.{name}'")

        for group, options in zip(self.param_groups, new_groups, strict=True):
            group.update(options)
        self.state = new_state

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for g, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {g}")
            lines += [f"    {key}: {value}" for key, value in group.items() if key != "params"]
        return "\n".join(lines) + "\n)"


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _like(key, value, current):
    """Convert a loaded option ``value`` (maybe a 0-d array) to the type of ``current``."""
    array = np.asarray(value)
    if isinstance(current, tuple):
        if array.shape != (len(current),):
            raise ValueError(
                f"state_dict key {key!r} must hold {len(current)} numbers, got shape {array.shape}"
            )
        return tuple(float(v) for v in array)
    if array.shape != ():
        raise ValueError(f"state_dict key {key!r} must be a single number, got shape {array.shape}")
    if isinstance(current, bool):
        return bool(array)
    return float(array)


def _check_grad(index, p, state):
    """Raise unless ``p`` (at ``index``) and its ``state`` arrays can be updated in place."""
    data, grad = p.data, p.grad
    if not isinstance(data, np.ndarray) or not data.flags.writeable:
        raise ValueError(f"params[{index}].data must be a writable ndarray (updated in place)")
    for name, value in state.items():
        if isinstance(value, np.ndarray) and not value.flags.writeable:
            raise ValueError(f"the optimizer state {name!r} of params[{index}] is read-only")
    if not isinstance(grad, np.ndarray):
        raise TypeError(
            f"params[{index}].grad must be an ndarray or None, got {type(grad).__name__}"
        )
    if grad.dtype != data.dtype:
        raise TypeError(
            f"params[{index}].grad has dtype {grad.dtype}, but its .data has dtype {data.dtype}"
        )
    if grad.shape != data.shape:
        raise ValueError(
            f"params[{index}].grad has shape {grad.shape}, but its .data has shape {data.shape}"
        )
