"""Weight initialisation in place, with the names and formulas of ``torch.nn.init``.

Every function fills a NumPy array in place and returns what it was given. It also accepts an
object with a ``.data`` ndarray (such as :class:`fastconv.nn.Parameter`) and fills its ``.data``.
Random values come from ``rng``, fastconv's one generator contract: a ``numpy.random.Generator``
(its stream advances), an int seed (a fresh generator), or None for this module's generator,
which :func:`manual_seed` reseeds (the counterpart of ``torch.manual_seed`` for layer
initialisation)::

    fastconv.init.manual_seed(0)
    model = build_model()  # same weights on every run

Values are drawn in float64 and rounded to the array's dtype, so the same seed gives the same
weights, up to rounding, in float32 and float64 models.

Fans follow PyTorch: for a weight of shape ``(out, in, *kernel)`` (linear ``(out_features,
in_features)``, conv OIHW ``(out_channels, in_channels // groups, kH, kW)``), ``fan_in = in *
prod(kernel)`` and ``fan_out = out * prod(kernel)``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from fastconv._checks import generator

__all__ = [
    "calculate_gain",
    "constant_",
    "get_rng",
    "kaiming_normal_",
    "kaiming_uniform_",
    "manual_seed",
    "normal_",
    "ones_",
    "uniform_",
    "xavier_normal_",
    "xavier_uniform_",
    "zeros_",
]

_rng = np.random.default_rng()

_LINEAR_FNS = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
)


def manual_seed(seed):
    """Reseed the default generator used when ``rng`` is None; return the new generator.

    ``seed`` is an int, or a ``numpy.random.Generator`` that becomes the default itself.
    """
    global _rng
    _rng = generator(seed, name="seed")
    return _rng


def get_rng():
    """The default generator (the one :func:`manual_seed` last created)."""
    return _rng


def calculate_gain(nonlinearity, param=None):
    """Recommended gain for a nonlinearity, as ``torch.nn.init.calculate_gain``.

    ======================  =================================
    nonlinearity            gain
    ======================  =================================
    linear, conv*, sigmoid  1
    tanh                    5/3
    relu                    sqrt(2)
    leaky_relu              sqrt(2 / (1 + negative_slope**2))
    selu                    3/4
    ======================  =================================

    Parameters
    ----------
    nonlinearity : str
        Name of the function, as in the table.
    param : float, optional
        Negative slope for ``"leaky_relu"`` (default 0.01).
    """
    if nonlinearity in _LINEAR_FNS or nonlinearity == "sigmoid":
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            negative_slope = 0.01
        elif isinstance(param, numbers.Real) and not isinstance(param, (bool, np.bool_)):
            negative_slope = param
        else:
            raise ValueError(f"param (negative_slope) must be a number, got {param!r}")
        return math.sqrt(2.0 / (1 + negative_slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4  # found empirically by PyTorch (pytorch/pytorch#50664)
    supported = [*_LINEAR_FNS, "sigmoid", "tanh", "relu", "leaky_relu", "selu"]
    raise ValueError(f"nonlinearity must be one of {supported}, got {nonlinearity!r}")


def _calculate_fan_in_and_fan_out(array):
    """``(fan_in, fan_out)`` of a weight of shape ``(out, in, *kernel)``; needs >= 2 dims."""
    shape = _array(array).shape
    if len(shape) < 2:
        raise ValueError(
            "fan in and fan out can not be computed for an array with fewer than 2 dimensions, "
            f"got shape {shape}"
        )
    receptive_field_size = math.prod(shape[2:])
    return shape[1] * receptive_field_size, shape[0] * receptive_field_size


def _calculate_correct_fan(array, mode):
    if not isinstance(mode, str) or mode.lower() not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(array)
    return fan_in if mode.lower() == "fan_in" else fan_out


def uniform_(array, a=0.0, b=1.0, rng=None):
    """Fill with values drawn from U(a, b).

    Parameters
    ----------
    array : ndarray or object with a ``.data`` ndarray
        Filled in place; floating dtype.
    a, b : float
        Bounds, ``a <= b``.
    rng : numpy.random.Generator, int seed or None
        Source of randomness; None: the module's generator (see :func:`manual_seed`).

    Returns
    -------
    The ``array`` argument.
    """
    target = _float_array(array)
    if not a <= b:
        raise ValueError(f"uniform_ needs a <= b, got a={a!r}, b={b!r}")
    target[...] = _generator(rng).uniform(a, b, size=target.shape)
    return array


def normal_(array, mean=0.0, std=1.0, rng=None):
    """Fill with values drawn from N(mean, std**2).

    Parameters
    ----------
    array : ndarray or object with a ``.data`` ndarray
        Filled in place; floating dtype.
    mean : float
    std : float
        Standard deviation, >= 0.
    rng : numpy.random.Generator, int seed or None
        Default: the module's generator.

    Returns
    -------
    The ``array`` argument.
    """
    target = _float_array(array)
    if not std >= 0:
        raise ValueError(f"std must be >= 0, got {std!r}")
    target[...] = _generator(rng).normal(mean, std, size=target.shape)
    return array


def constant_(array, val):
    """Fill with ``val`` in place; return the ``array`` argument."""
    _array(array)[...] = val
    return array


def zeros_(array):
    """Fill with zeros in place; return the ``array`` argument."""
    return constant_(array, 0)


def ones_(array):
    """Fill with ones in place; return the ``array`` argument."""
    return constant_(array, 1)


def xavier_uniform_(array, gain=1.0, rng=None):
    """Glorot uniform: U(-bound, bound), ``bound = gain * sqrt(6 / (fan_in + fan_out))``.

    Parameters
    ----------
    array : ndarray or object with a ``.data`` ndarray
        Weight of shape ``(out, in, *kernel)``, filled in place; floating dtype.
    gain : float, default 1.0
        Scaling factor, e.g. ``calculate_gain("tanh")``.
    rng : numpy.random.Generator, int seed or None
        Default: the module's generator.

    Returns
    -------
    The ``array`` argument.
    """
    return _fill_zero_mean(array, "uniform", lambda w: _xavier_std(w, gain), rng)


def xavier_normal_(array, gain=1.0, rng=None):
    """Glorot normal: N(0, std**2), ``std = gain * sqrt(2 / (fan_in + fan_out))``.

    Parameters are as for :func:`xavier_uniform_`.
    """
    return _fill_zero_mean(array, "normal", lambda w: _xavier_std(w, gain), rng)


def kaiming_uniform_(array, a=0, mode="fan_in", nonlinearity="leaky_relu", rng=None):
    """He uniform: U(-bound, bound), ``bound = gain * sqrt(3 / fan)``.

    ``gain = calculate_gain(nonlinearity, a)``. PyTorch's conv and linear layers use ``a=sqrt(5)``
    with the default ``mode`` and ``nonlinearity``, giving ``bound = 1 / sqrt(fan_in)``.

    Parameters
    ----------
    array, rng
        As for :func:`xavier_uniform_`.
    a : float, default 0
        Negative slope of the leaky ReLU that follows (used only with ``"leaky_relu"``).
    mode : {"fan_in", "fan_out"}
        ``"fan_in"`` keeps the variance of the forward activations, ``"fan_out"`` of the
        backward gradients.
    nonlinearity : str, default "leaky_relu"
        See :func:`calculate_gain`; ``"relu"`` or ``"leaky_relu"`` are the usual choices.

    Returns
    -------
    The ``array`` argument.
    """
    return _fill_zero_mean(array, "uniform", lambda w: _kaiming_std(w, a, mode, nonlinearity), rng)


def kaiming_normal_(array, a=0, mode="fan_in", nonlinearity="leaky_relu", rng=None):
    """He normal: N(0, std**2), ``std = calculate_gain(nonlinearity, a) / sqrt(fan)``.

    Parameters are as for :func:`kaiming_uniform_`.
    """
    return _fill_zero_mean(array, "normal", lambda w: _kaiming_std(w, a, mode, nonlinearity), rng)


def _xavier_std(weight, gain):
    fan_in, fan_out = _calculate_fan_in_and_fan_out(weight)
    return gain * math.sqrt(2.0 / (fan_in + fan_out))


def _kaiming_std(weight, a, mode, nonlinearity):
    return calculate_gain(nonlinearity, a) / math.sqrt(_calculate_correct_fan(weight, mode))


def _fill_zero_mean(array, distribution, std_of, rng):
    """Fill with zero-mean values of standard deviation ``std_of(weight)``, in place.

    ``"normal"`` draws from N(0, std**2); ``"uniform"`` from U(-bound, bound) with
    ``bound = sqrt(3) * std``, the uniform distribution of that variance (as PyTorch computes
    its bounds). An empty array is left alone: it has no fans to compute.
    """
    target = _float_array(array)
    if target.size == 0:
        return array
    std = std_of(target)
    if distribution == "uniform":
        bound = math.sqrt(3.0) * std
        uniform_(target, -bound, bound, rng=rng)
    else:
        normal_(target, 0.0, std, rng=rng)
    return array


def _array(array):
    """The ndarray to fill: ``array`` itself or its ``.data``."""
    if isinstance(array, np.ndarray):
        return array
    data = getattr(array, "data", None)
    if isinstance(data, np.ndarray):
        return data
    raise TypeError(
        "array must be a numpy.ndarray or have a .data ndarray (like fastconv.nn.Parameter), "
        f"got {type(array).__name__}"
    )


def _float_array(array):
    target = _array(array)
    if target.dtype.kind != "f":
        raise TypeError(f"array must have a floating dtype, got {target.dtype}")
    return target


def _generator(rng):
    return generator(rng, default=_rng)
