"""A compiled serial kernel handed to a parallel kernel as the address of its machine code.

Why: compile time. The conv engine's serial kernels (``kernels/conv_blocked.py``, ``_item``
suffix) unroll register tiles into thousands of instructions. When a ``prange`` loop calls such
a kernel directly, numba links the callee's code into the parallel kernel's module and, through
parfor's outlined loop body, optimizes and generates machine code for it twice more: the
forward took 4.1 s to compile on a new machine, 1.3 s of it the kernel itself. Called through
its address, the kernel is compiled once and the parallel kernel stays small: 2.2 s. Nothing
changes at run time: the loop still runs on numba's thread pool, and one indirect call per
iteration is nothing next to an iteration's work.

``pointer(kernel, key, sample)`` compiles ``kernel`` for the types of ``sample()``'s arguments
once per ``key`` (the caller's cheap summary of those types: typing 16 arguments on every call
would cost more than the call) and returns the address of its C-ABI wrapper, a plain int. A parallel
kernel calls it with ``call(address, (arg, ...))``, the arguments of exactly those types.

Why a plain int and not numba's first-class function type: numba unboxes a function argument
by unpickling its signature on every call (7.5 us for a conv kernel's 16 arguments, against
0.1 us for an int), and a type of fastconv's own in a cached signature would break loading the
cache in any other version of fastconv that lacks the type (an unpickling error, not a miss).
"""

from __future__ import annotations

import threading

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def call(typingctx, address, args):
    """Call the kernel at ``address`` (from ``pointer``) with the tuple ``args``. The caller
    guarantees that ``pointer`` compiled it for exactly these argument types: nothing can check
    it here, and other types would read the arguments wrongly."""
    if not (isinstance(address, types.Integer) and isinstance(args, types.BaseTuple)):
        return None
    argtypes = tuple(args)

    def codegen(context, builder, sig, llargs):
        values = cgutils.unpack_tuple(builder, llargs[1], len(argtypes))
        # numba's C-ABI wrapper: each argument by value, as numba's first-class functions call it
        fnty = ir.FunctionType(
            context.get_value_type(types.none), [context.get_value_type(t) for t in argtypes]
        )
        builder.call(builder.inttoptr(llargs[0], fnty.as_pointer()), values)
        return context.get_dummy_value()

    return types.none(address, args), codegen


def _compile(kernel, sample_args):
    """The address of ``kernel``'s C-ABI wrapper for the types of ``sample_args``."""
    argtypes = tuple(numba.typeof(a) for a in sample_args)
    kernel.compile(argtypes)
    result = kernel.overloads[argtypes]  # kept alive by the dispatcher, and its code with it
    return result.library.get_pointer_to_function(result.fndesc.llvm_cfunc_wrapper_name)


_addresses = {}
_lock = threading.Lock()

# The array flags numba's array types carry: the layout (C, F or any) and whether the array is
# aligned and writeable (a user's read-only input is typed apart). NumPy's flag bits.
TYPED_FLAGS = 0x0001 | 0x0002 | 0x0100 | 0x0400  # C_CONTIGUOUS F_CONTIGUOUS ALIGNED WRITEABLE


def typed_flags(*arrays):
    """The flags of ``arrays`` that numba's array types carry, for a ``pointer`` key."""
    return tuple([a.flags.num & TYPED_FLAGS for a in arrays])


def pointer(kernel, key, sample):
    """The address of ``kernel`` compiled for the types of ``sample()``'s arguments, memoized
    by ``kernel`` and ``key``. ``key`` must determine every argument type: dtypes, dimensions,
    tuple lengths, and the ``typed_flags`` of the arrays the caller does not allocate itself
    (its own temporaries always have the same flags). ``sample`` runs on a key's first use
    only: building the arguments costs more than the lookup."""
    full_key = kernel, key
    try:
        return _addresses[full_key]
    except KeyError:
        pass
    with _lock:
        if full_key not in _addresses:
            _addresses[full_key] = _compile(kernel, sample())
        return _addresses[full_key]
