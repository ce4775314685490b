"""A compiled serial kernel handed to a parallel kernel as a function pointer.

Why: compile time. The conv engine's serial kernels (``kernels/conv_blocked.py``, ``_item``
suffix) unroll register tiles into thousands of instructions. When a ``prange`` loop calls such
a kernel directly, numba links the callee's code into the parallel kernel's module and, through
parfor's outlined loop body, optimizes and generates machine code for it twice more: the
forward took 4.1 s to compile on a new machine, 1.3 s of it the kernel itself. Called through
a pointer (numba's first-class function type), the kernel is compiled once and the parallel
kernel stays small: 2.2 s. Nothing changes at run time: the loop still runs on numba's thread
pool, and one indirect call per iteration is nothing next to an iteration's work.

``pointer(kernel, key, sample_args)`` compiles ``kernel`` for the types of ``sample_args`` once
per ``key`` (the caller's cheap summary of those types: typing 16 arguments on every call would
cost more than the call) and returns an object that numba passes as that function pointer.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from numba import types
from numba.extending import typeof_impl


class KernelPointer:
    """A jit kernel compiled for one signature, passed to jit code as a function pointer."""

    __slots__ = ("numba_type", "_address")

    def __init__(self, kernel, sample_args):
        argtypes = tuple(numba.typeof(a) for a in sample_args)
        kernel.compile(argtypes)
        result = kernel.overloads[argtypes]
        self.numba_type = types.FunctionType(result.signature)
        # numba's C-ABI wrapper of the kernel: what first-class function values call.
        self._address = result.library.get_pointer_to_function(
            result.fndesc.llvm_cfunc_wrapper_name
        )

    def __wrapper_address__(self):
        return self._address


@typeof_impl.register(KernelPointer)
def _typeof_kernel_pointer(val, c):
    return val.numba_type


_pointers = {}
_lock = threading.Lock()


def pointer(kernel, key, sample_args):
    """``kernel`` compiled for ``sample_args``' types, memoized by ``kernel``, ``key`` and the
    arrays' writeable and aligned flags (which numba's array types carry: a user's read-only
    input is typed apart). ``key`` must determine the rest of the types: dtypes, dimensions,
    tuple lengths."""
    flags = tuple(
        (a.flags.writeable, a.flags.aligned) for a in sample_args if isinstance(a, np.ndarray)
    )
    full_key = kernel, key, flags
    try:
        return _pointers[full_key]
    except KeyError:
        pass
    with _lock:
        if full_key not in _pointers:
            _pointers[full_key] = KernelPointer(kernel, sample_args)
        return _pointers[full_key]
