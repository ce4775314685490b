"""fastconv: a fast, readable CNN core for Python (numba kernels, PyTorch names)."""

from fastconv import _precompile, datasets, functional, init, models, nn, optim, reference, training
from fastconv._gradcheck import GradcheckError, gradcheck
from fastconv._threads import get_num_threads, set_num_threads, threads
from fastconv.autograd import Tensor, cat, enable_grad, is_grad_enabled, no_grad, stack
from fastconv.serialization import load, save

__version__ = "0.1.0"

_precompile.install()  # on a new machine, a second process compiles kernels alongside this one

__all__ = [
    "datasets",
    "functional",
    "init",
    "models",
    "nn",
    "optim",
    "reference",
    "training",
    "Tensor",
    "cat",
    "stack",
    "no_grad",
    "enable_grad",
    "is_grad_enabled",
    "gradcheck",
    "GradcheckError",
    "get_num_threads",
    "set_num_threads",
    "threads",
    "save",
    "load",
]
