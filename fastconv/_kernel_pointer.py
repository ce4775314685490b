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
from numba.core import cgutils
from numba.experimental.function_type import FunctionModel
from numba.extending import NativeValue, register_model, unbox


class _PointerType(types.FunctionType):
    """numba's first-class function type, unboxed from a ``KernelPointer``.

    Why a type of our own: numba's unboxing of a function argument unpickles the signature and
    calls back into Python twice on every call, about 7 µs for a conv kernel's 16 arguments;
    this one reads the address the pointer holds (about 1 µs with the typing below). Called,
    cast and stored as numba's type is: the same data model, and ``isinstance`` holds.
    """


register_model(_PointerType)(FunctionModel)


@unbox(_PointerType)
def _unbox_pointer(typ, obj, c):
    value = cgutils.create_struct_proxy(typ)(c.context, c.builder)
    address = c.pyapi.object_getattr_string(obj, "_address")
    with c.builder.if_then(cgutils.is_null(c.builder, address), likely=False):
        c.builder.ret(c.pyapi.get_null_object())  # propagate the AttributeError
    value.c_addr = c.pyapi.long_as_voidptr(address)
    c.pyapi.decref(address)
    value.py_addr = c.builder.ptrtoint(obj, c.context.get_value_type(types.voidptr))
    value.jit_addr = c.context.get_constant_null(types.voidptr)  # what numba stores for a cfunc
    return NativeValue(value._getvalue())


class KernelPointer:
    """A jit kernel compiled for one signature, passed to jit code as a function pointer.

    ``_numba_type_`` is numba's protocol for an object that states its own type: the
    dispatcher reads it without going through ``numba.typeof`` in Python."""

    __slots__ = ("_numba_type_", "_address")

    def __init__(self, kernel, sample_args):
        argtypes = tuple(numba.typeof(a) for a in sample_args)
        kernel.compile(argtypes)
        result = kernel.overloads[argtypes]
        self._numba_type_ = _PointerType(result.signature)
        # numba's C-ABI wrapper of the kernel: what first-class function values call.
        self._address = result.library.get_pointer_to_function(
            result.fndesc.llvm_cfunc_wrapper_name
        )


_pointers = {}
_lock = threading.Lock()


# The array flags numba's array types carry: the layout (C, F or any) and whether the array is
# aligned and writeable (a user's read-only input is typed apart). NumPy's flag bits.
TYPED_FLAGS = 0x0001 | 0x0002 | 0x0100 | 0x0400  # C_CONTIGUOUS F_CONTIGUOUS ALIGNED WRITEABLE


def pointer(kernel, key, sample_args):
    """``kernel`` compiled for ``sample_args``' types, memoized by ``kernel``, ``key`` and the
    arrays' typed flags. ``key`` must determine the rest of the types: dtypes, dimensions,
    tuple lengths."""
    flags = tuple([a.flags.num & TYPED_FLAGS for a in sample_args if isinstance(a, np.ndarray)])
    full_key = kernel, key, flags
    try:
        return _pointers[full_key]
    except KeyError:
        pass
    with _lock:
        if full_key not in _pointers:
            _pointers[full_key] = KernelPointer(kernel, sample_args)
        return _pointers[full_key]
