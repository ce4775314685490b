"""Max pooling over 2x2 windows with stride 2, 16 outputs per step (``pool._maxpool2d_2x2_f32``).

Why: written as a scalar loop (``pool._maxpool2d_2x2``) each output costs about 11 cycles:
LeNet's first pooling took 10% of fastconv's training step. Here one step loads the 32 inputs
of 16 adjacent windows from each of the two rows, splits them into even and odd columns
(a shuffle), and applies PyTorch's update rule to whole vectors: compares and selects, for the
values and for their flat indices alike.

The rule is ``pool._take``'s, in the same order of taps (top-left, top-right, bottom-left,
bottom-right): a later tap wins if it is greater or NaN. So the values and indices are the
scalar kernel's, bit for bit, NaN and ties included.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from fastconv.kernels.simd import (
    _VEC,
    LANES,
    _broadcast_int,
    _lane_mask,
    _masked_load,
    _masked_store,
    _pointer,
)

_I64 = ir.IntType(64)


def _intp(value):
    return ir.Constant(_I64, value)


_IVEC = ir.VectorType(_I64, LANES)
_MASK = ir.VectorType(ir.IntType(1), LANES)


def _masked_store_i64(builder):
    """LLVM's masked store of 16 int64: (value, pointer, alignment, <16 x i1> mask)."""
    fnty = ir.FunctionType(ir.VoidType(), [_IVEC, _IVEC.as_pointer(), ir.IntType(32), _MASK])
    return cgutils.get_or_insert_function(builder.module, fnty, "llvm.masked.store.v16i64.p0v16i64")


def _lanes(values):
    """A constant <16 x i32> (shuffle masks)."""
    return ir.Constant(ir.VectorType(ir.IntType(32), LANES), list(values))


@intrinsic
def maxpool2x2_row(typingctx, x, top, width, count, y, at_y, idx, at, with_indices):
    """``count`` (1 to 16) adjacent 2x2 windows of a row pair, stride 2.

    Window l covers x.flat[top + 2l + {0, 1}] and, one row below, x.flat[top + width + 2l +
    {0, 1}]; its max goes to y.flat[at_y + l] and, ``with_indices``, the flat index in the
    plane of the tap it came from, ``at + 2l + {0, 1, width, width + 1}``, to idx.flat[at_y + l].
    """
    arrays_ok = (
        isinstance(x, types.Array) and x.dtype == types.float32
        and isinstance(y, types.Array) and y.dtype == types.float32
        and isinstance(idx, types.Array) and idx.dtype == types.int64
    )  # fmt: skip
    ints = (top, width, count, at_y, at)
    if not (arrays_ok and all(isinstance(t, types.Integer) for t in ints)):
        return None
    if not isinstance(with_indices, types.Boolean):
        return None

    def codegen(context, builder, sig, args):
        xa, ya, ia, with_ = args[0], args[4], args[6], args[8]
        top_, width_, count_, at_y_, at_ = (
            context.cast(builder, args[i], sig.args[i], types.intp) for i in (1, 2, 3, 5, 7)
        )
        four = ir.Constant(ir.IntType(32), 4)  # alignment of a float
        # The 2*count inputs of a row: two vectors, the second one's lanes past 16.
        n_in = builder.mul(count_, ir.Constant(count_.type, 2))
        masks = _lane_mask(builder, n_in), _lane_mask(builder, builder.sub(n_in, _intp(16)))

        def row(start):
            """(even, odd) columns of the row from x.flat[start]."""
            halves = [
                builder.call(
                    _masked_load(builder),
                    [
                        _pointer(context, builder, sig.args[0], xa, builder.add(start, _intp(k))),
                        four,
                        mask,
                        ir.Constant(_VEC, [0.0] * LANES),
                    ],
                )  # fmt: skip
                for k, mask in zip((0, LANES), masks, strict=True)
            ]
            return (
                builder.shuffle_vector(*halves, _lanes(range(0, 2 * LANES, 2))),
                builder.shuffle_vector(*halves, _lanes(range(1, 2 * LANES, 2))),
            )

        top_even, top_odd = row(top_)
        bottom_even, bottom_odd = row(builder.add(top_, width_))
        # Flat indices in the plane: at + 2l for the top-left tap, then + 1, + width, + 1.
        base = builder.add(_broadcast_int(builder, at_), ir.Constant(_IVEC, list(range(0, 32, 2))))
        one = ir.Constant(_IVEC, [1] * LANES)
        below = builder.add(base, _broadcast_int(builder, width_))
        best, best_at = top_even, base
        for value, where in (
            (top_odd, builder.add(base, one)),
            (bottom_even, below),
            (bottom_odd, builder.add(below, one)),
        ):
            greater = builder.fcmp_ordered(">", value, best)
            take = builder.or_(greater, builder.fcmp_unordered("uno", value, value))
            best = builder.select(take, value, best)
            best_at = builder.select(take, where, best_at)
        out = _lane_mask(builder, count_)
        y_ptr = _pointer(context, builder, sig.args[4], ya, at_y_)
        builder.call(_masked_store(builder), [best, y_ptr, four, out])
        with builder.if_then(with_):
            data = context.make_array(sig.args[6])(context, builder, ia).data
            i_ptr = builder.bitcast(builder.gep(data, [at_y_]), _IVEC.as_pointer())
            eight = ir.Constant(ir.IntType(32), 8)  # alignment of an int64
            builder.call(_masked_store_i64(builder), [best_at, i_ptr, eight, out])
        return context.get_dummy_value()

    return types.none(x, top, width, count, y, at_y, idx, at, with_indices), codegen
