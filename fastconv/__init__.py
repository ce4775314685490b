"""fastconv: a fast, readable CNN core for Python (numba kernels, PyTorch names)."""

from fastconv import datasets, functional, init, models, nn, optim, reference, training
from fastconv._gradcheck import GradcheckError, gradcheck
from fastconv._threads import get_num_threads, set_num_threads, threads
from fastconv.autograd import Tensor, cat, enable_grad, is_grad_enabled, no_grad, stack
from fastconv.serialization import load, save

__version__ = "0.1.0"

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
