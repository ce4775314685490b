"""A 16-float32 vector value for numba kernels: LLVM's ``<16 x float>``, one zmm register.

Why: numba compiles a loop over a small accumulator array (``acc[p, j] += x * w[j]``) with the
accumulators in memory, often with scalar FMAs: 4-13% of the FMA peak in the calibration of
the performance issue. Written with explicit vector values, each accumulator one SSA value that
LLVM keeps in a register, the same convolution's inner loop runs at ~90% of the peak measured
on this machine (~220 GFLOP/s per core), the whole kernel at 70-80%.

The vector type never reaches Python: kernels create, combine and store vectors through the
intrinsics below. A register tile is a numba ``UniTuple`` of vectors (immutable, so LLVM keeps
every element in a register as long as the tile fits); its length is a compile-time constant
taken from the type of a dummy tuple argument (``tile``: ``(0,) * length``), so one kernel source
serves every tile shape and each shape is one specialisation in numba's on-disk cache.

Vector width: numba sets no ``min-legal-vector-width`` on its functions, so LLVM keeps explicit
512-bit vectors in zmm registers even for Intel CPUs whose auto-vectoriser prefers 256 bits
(checked with ``inspect_asm``: ``vfmadd231ps %zmm`` on a host LLVM calls 'rocketlake'). Without
AVX-512, LLVM splits each vector into two ymm (AVX2) or four xmm registers: the code stays
correct (the tests pass with ``NUMBA_CPU_NAME=haswell``), only slower.

Every index below is a flat element index into a C-contiguous float32 array; loads and stores
are unaligned and unchecked (kernels never validate: the caller guarantees the bounds).
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

LANES = 16
_FLOAT = ir.FloatType()
_VEC = ir.VectorType(_FLOAT, LANES)


class Float32x16(types.Type):
    """The numba type of one ``<16 x float>`` value."""

    def __init__(self):
        super().__init__(name="float32x16")


float32x16 = Float32x16()


@register_model(Float32x16)
class _Float32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC)


def _pointer(context, builder, arrty, arr, index):
    """Address of element ``index`` (flat) of a C-contiguous array, as a vector pointer."""
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [index]), _VEC.as_pointer())


def _load(context, builder, arrty, arr, index):
    return builder.load(_pointer(context, builder, arrty, arr, index), align=4)


def _broadcast(builder, scalar):
    one = builder.insert_element(
        ir.Constant(_VEC, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0)
    )
    return builder.shuffle_vector(
        one, one, ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
    )


def _fma(builder, a, b, c):
    """a * b + c, rounded once (``llvm.fma``: exact like the hardware instruction)."""
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_VEC, [_VEC] * 3), "llvm.fma.v16f32"
    )
    return builder.call(fn, [a, b, c])


def _is_f32_array(a):
    return isinstance(a, types.Array) and a.dtype == types.float32


@intrinsic
def vload(typingctx, arr, index):
    """The 16 floats ``arr.flat[index : index + 16]``."""
    if not (_is_f32_array(arr) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        return _load(context, builder, sig.args[0], args[0], idx)

    return float32x16(arr, index), codegen


@intrinsic
def vstore(typingctx, arr, index, vec):
    """``arr.flat[index : index + 16] = vec``."""
    if not (_is_f32_array(arr) and isinstance(index, types.Integer) and vec == float32x16):
        return None

    def codegen(context, builder, sig, args):
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        builder.store(args[2], _pointer(context, builder, sig.args[0], args[0], idx), align=4)
        return context.get_dummy_value()

    return types.none(arr, index, vec), codegen


def _lane_mask(builder, count):
    """<16 x i1>: lane l is on when l < count."""
    lanes = ir.Constant(ir.VectorType(ir.IntType(64), LANES), list(range(LANES)))
    c = _broadcast_int(
        builder, builder.sext(count, ir.IntType(64)) if count.type.width < 64 else count
    )
    return builder.icmp_signed("<", lanes, c)


def _broadcast_int(builder, scalar):
    vt = ir.VectorType(scalar.type, LANES)
    one = builder.insert_element(
        ir.Constant(vt, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0)
    )
    return builder.shuffle_vector(
        one, one, ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
    )


def _masked_load(builder):
    """LLVM's masked load of 16 floats: (pointer, alignment, <16 x i1> mask, passthrough)."""
    mask = ir.VectorType(ir.IntType(1), LANES)
    fnty = ir.FunctionType(_VEC, [_VEC.as_pointer(), ir.IntType(32), mask, _VEC])
    return cgutils.get_or_insert_function(builder.module, fnty, "llvm.masked.load.v16f32.p0v16f32")


def _masked_store(builder):
    """LLVM's masked store of 16 floats: (value, pointer, alignment, <16 x i1> mask)."""
    mask = ir.VectorType(ir.IntType(1), LANES)
    fnty = ir.FunctionType(ir.VoidType(), [_VEC, _VEC.as_pointer(), ir.IntType(32), mask])
    return cgutils.get_or_insert_function(builder.module, fnty, "llvm.masked.store.v16f32.p0v16f32")


@intrinsic
def vload_part(typingctx, arr, index, count):
    """The first ``count`` (< 16 allowed) floats of ``arr.flat[index:]``, zeros in the other
    lanes; memory past them is not touched (a masked load)."""
    if not (
        _is_f32_array(arr) and isinstance(index, types.Integer) and isinstance(count, types.Integer)
    ):
        return None

    def codegen(context, builder, sig, args):
        idx, cnt = (context.cast(builder, args[i], sig.args[i], types.intp) for i in (1, 2))
        ptr = _pointer(context, builder, sig.args[0], args[0], idx)
        fn = _masked_load(builder)
        zero = ir.Constant(_VEC, [0.0] * LANES)
        return builder.call(
            fn, [ptr, ir.Constant(ir.IntType(32), 4), _lane_mask(builder, cnt), zero]
        )

    return float32x16(arr, index, count), codegen


@intrinsic
def vstore_part(typingctx, arr, index, vec, count):
    """``arr.flat[index : index + count] = vec[:count]`` (a masked store, count <= 16)."""
    if not (_is_f32_array(arr) and isinstance(index, types.Integer) and vec == float32x16):
        return None
    if not isinstance(count, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        idx, cnt = (context.cast(builder, args[i], sig.args[i], types.intp) for i in (1, 3))
        ptr = _pointer(context, builder, sig.args[0], args[0], idx)
        fn = _masked_store(builder)
        builder.call(fn, [args[2], ptr, ir.Constant(ir.IntType(32), 4), _lane_mask(builder, cnt)])
        return context.get_dummy_value()

    return types.none(arr, index, vec, count), codegen


@intrinsic
def vadd(typingctx, a, b):
    """Lane-wise a + b."""
    if not (a == float32x16 and b == float32x16):
        return None

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])

    return float32x16(a, b), codegen


# ---------------------------------------------------------------------------------------------
# Register tiles: UniTuple(float32x16, n). Shapes come from dummy int tuples (``(0,) * k``).
# ---------------------------------------------------------------------------------------------


def _length(t):
    return len(t) if isinstance(t, types.UniTuple) else -1


def _is_vec_tuple(t):
    return isinstance(t, types.UniTuple) and t.dtype == float32x16


def _ints(*ts):
    return all(isinstance(t, types.Integer) for t in ts)


def _intp(context, builder, sig, args, *positions):
    return [context.cast(builder, args[i], sig.args[i], types.intp) for i in positions]


@intrinsic
def vload_tuple(typingctx, arr, index, step, shape):
    """``(vload(arr, index), vload(arr, index + step), ...)``: ``len(shape)`` vectors."""
    if not (_is_f32_array(arr) and _ints(index, step) and _length(shape) > 0):
        return None
    n = len(shape)
    rtype = types.UniTuple(float32x16, n)

    def codegen(context, builder, sig, args):
        idx, stp = _intp(context, builder, sig, args, 1, 2)
        vecs = []
        for k in range(n):
            at = builder.add(idx, builder.mul(stp, ir.Constant(idx.type, k)))
            vecs.append(_load(context, builder, sig.args[0], args[0], at))
        return context.make_tuple(builder, rtype, vecs)

    return rtype(arr, index, step, shape), codegen


@intrinsic
def tile_repeat(typingctx, vecs, pixels):
    """The tile ``(v0,) * len(pixels) + (v1,) * len(pixels) + ...``: block b, pixel p at
    ``b * len(pixels) + p``. Starts a tile from zeros or from the bias."""
    if not (_is_vec_tuple(vecs) and _length(pixels) > 0):
        return None
    nb, npx = len(vecs), len(pixels)
    rtype = types.UniTuple(float32x16, nb * npx)

    def codegen(context, builder, sig, args):
        v = cgutils.unpack_tuple(builder, args[0], nb)
        return context.make_tuple(builder, rtype, [v[b] for b in range(nb) for _ in range(npx)])

    return rtype(vecs, pixels), codegen


@intrinsic
def vzero(typingctx):
    """A zero vector."""

    def codegen(context, builder, sig, args):
        return ir.Constant(_VEC, [0.0] * LANES)

    return float32x16(), codegen


@intrinsic
def vzeros(typingctx, shape):
    """``len(shape)`` zero vectors."""
    if _length(shape) <= 0:
        return None
    rtype = types.UniTuple(float32x16, len(shape))

    def codegen(context, builder, sig, args):
        zero = ir.Constant(_VEC, [0.0] * LANES)
        return context.make_tuple(builder, rtype, [zero] * len(shape))

    return rtype(shape), codegen


@intrinsic
def tile_fma(typingctx, acc, arr, index, step, row_step, w, cols):
    """One broadcast-FMA step of a register tile of blocks x pixels.

    ``acc[b*P + p] += arr.flat[index + r*row_step + q*step] * w[b]`` for each weight vector
    ``w[b]`` (16 output channels) and each pixel ``p = r*len(cols) + q`` of the tile's
    ``P = len(acc) // len(w)`` pixels: ``len(cols)`` per row. Every product is rounded once
    (fused multiply-add).

    ``step`` may be a dummy tuple whose length is the step: the pixel offsets are then
    constants that fold into the load instructions (a runtime step costs one integer add per
    pixel, which measured slower).
    """
    if not (_is_vec_tuple(acc) and _is_vec_tuple(w) and _is_f32_array(arr)):
        return None
    const_step = _length(step)
    if not (_ints(index, row_step) and (const_step > 0 or _ints(step)) and _length(cols) > 0):
        return None
    nb, tw = len(w), len(cols)
    npx = len(acc) // nb
    if npx * nb != len(acc) or npx % tw:
        return None

    def codegen(context, builder, sig, args):
        a = cgutils.unpack_tuple(builder, args[0], nb * npx)
        wv = cgutils.unpack_tuple(builder, args[5], nb)
        idx, rstp = _intp(context, builder, sig, args, 2, 4)
        if const_step > 0:
            stp = ir.Constant(idx.type, const_step)
        else:
            stp = context.cast(builder, args[3], sig.args[3], types.intp)
        data = context.make_array(sig.args[1])(context, builder, args[1]).data
        out = list(a)
        for p in range(npx):
            r, q = divmod(p, tw)
            off = builder.add(
                builder.mul(rstp, ir.Constant(idx.type, r)),
                builder.mul(stp, ir.Constant(idx.type, q)),
            )
            x = _broadcast(builder, builder.load(builder.gep(data, [builder.add(idx, off)])))
            for b in range(nb):
                out[b * npx + p] = _fma(builder, x, wv[b], a[b * npx + p])
        return context.make_tuple(builder, sig.return_type, out)

    return acc(acc, arr, index, step, row_step, w, cols), codegen


def _tile_addresses(builder, idx, stp, rstp, bstp, nb, npx, tw):
    """Flat index of block b, pixel p = r*tw + q: idx + b*bstp + r*rstp + q*stp."""
    const = ir.Constant
    return [
        builder.add(
            idx,
            builder.add(
                builder.mul(bstp, const(idx.type, b)),
                builder.add(
                    builder.mul(rstp, const(idx.type, p // tw)),
                    builder.mul(stp, const(idx.type, p % tw)),
                ),
            ),
        )
        for b in range(nb)
        for p in range(npx)
    ]


@intrinsic
def tile_store(typingctx, arr, index, step, row_step, block_step, acc, blocks, cols):
    """Store a tile (layout as in ``tile_fma``, ``len(cols)`` pixels a row): vector
    ``acc[b*P + r*len(cols) + q]`` to ``arr.flat[index + b*block_step + r*row_step + q*step:]``.

    Every pixel is stored, so the destination holds whole tiles even at the output's edges
    (branches per pixel made the kernels several times slower to compile)."""
    if not (_is_f32_array(arr) and _is_vec_tuple(acc) and _ints(index, step, row_step)):
        return None
    if not (_ints(block_step) and _length(blocks) > 0 and _length(cols) > 0):
        return None
    nb, tw = len(blocks), len(cols)
    npx = len(acc) // nb

    def codegen(context, builder, sig, args):
        vecs = cgutils.unpack_tuple(builder, args[5], nb * npx)
        idx, stp, rstp, bstp = _intp(context, builder, sig, args, 1, 2, 3, 4)
        addresses = _tile_addresses(builder, idx, stp, rstp, bstp, nb, npx, tw)
        for v, at in zip(vecs, addresses, strict=True):
            builder.store(v, _pointer(context, builder, sig.args[0], args[0], at), align=4)
        return context.get_dummy_value()

    return types.none(arr, index, step, row_step, block_step, acc, blocks, cols), codegen


@intrinsic
def tile_load(typingctx, arr, index, step, row_step, block_step, blocks, pixels, cols):
    """The tile ``tile_store`` stored with the same arguments (``len(pixels)`` pixels)."""
    if not (_is_f32_array(arr) and _ints(index, step, row_step, block_step)):
        return None
    if not (_length(blocks) > 0 and _length(pixels) > 0 and _length(cols) > 0):
        return None
    nb, npx, tw = len(blocks), len(pixels), len(cols)
    rtype = types.UniTuple(float32x16, nb * npx)

    def codegen(context, builder, sig, args):
        idx, stp, rstp, bstp = _intp(context, builder, sig, args, 1, 2, 3, 4)
        addresses = _tile_addresses(builder, idx, stp, rstp, bstp, nb, npx, tw)
        vecs = [_load(context, builder, sig.args[0], args[0], at) for at in addresses]
        return context.make_tuple(builder, rtype, vecs)

    return rtype(arr, index, step, row_step, block_step, blocks, pixels, cols), codegen


@intrinsic
def tile_store_rows(typingctx, arr, index, row_step, acc, count, nrows):
    """``arr.flat[index + r*row_step : + count] = acc[r][:count]`` for the vectors r < nrows
    (masked stores: a row of output pixels that ends inside the vector)."""
    if not (_is_f32_array(arr) and _is_vec_tuple(acc) and _ints(index, row_step, count, nrows)):
        return None
    n = len(acc)

    def codegen(context, builder, sig, args):
        vecs = cgutils.unpack_tuple(builder, args[3], n)
        idx, rstp, cnt, nr = _intp(context, builder, sig, args, 1, 2, 4, 5)
        mask = _lane_mask(builder, cnt)
        fn = _masked_store(builder)
        for r in range(n):
            with builder.if_then(builder.icmp_signed("<", ir.Constant(idx.type, r), nr)):
                at = builder.add(idx, builder.mul(rstp, ir.Constant(idx.type, r)))
                ptr = _pointer(context, builder, sig.args[0], args[0], at)
                builder.call(fn, [vecs[r], ptr, ir.Constant(ir.IntType(32), 4), mask])
        return context.get_dummy_value()

    return types.none(arr, index, row_step, acc, count, nrows), codegen


@intrinsic
def vsplat(typingctx, value):
    """A vector of 16 copies of a float32 scalar."""
    if value != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return _broadcast(builder, args[0])

    return float32x16(value), codegen


def _transpose(builder, rows):
    """16 vectors -> their transpose: four stages swapping the off-diagonal 8x8, 4x4, 2x2 and
    1x1 sub-blocks, 64 two-source shuffles."""
    rows = list(rows)
    mask_type = ir.VectorType(ir.IntType(32), LANES)
    half = LANES // 2
    while half >= 1:
        # rows i and i + half (bit ``half`` of i clear) exchange their off-diagonal halves:
        # lane l of the pair's first row takes the second row's lane l - half where bit
        # ``half`` of l is set, and symmetrically.
        lo = [lane if not lane & half else LANES + lane - half for lane in range(LANES)]
        hi = [lane + half if not lane & half else LANES + lane for lane in range(LANES)]
        for i in range(LANES):
            if i & half:
                continue
            a, b = rows[i], rows[i + half]
            rows[i] = builder.shuffle_vector(a, b, ir.Constant(mask_type, lo))
            rows[i + half] = builder.shuffle_vector(a, b, ir.Constant(mask_type, hi))
        half //= 2
    return rows


@intrinsic
def tile_store_nchw(
    typingctx, arr, index, chan_step, row_step, acc, blocks, cols, nchan, nrows, ncols
):
    """Store a tile (layout as in ``tile_fma``, at most 16 pixels a block) transposed, as
    NCHW rows: channel ``16*b + j`` (``j`` a lane) of pixel ``(r, q)`` goes to
    ``arr.flat[index + (16*b + j)*chan_step + r*row_step + q]``, for channels < nchan, rows <
    nrows and columns < ncols. Per block: a 16x16 transpose in registers, then one masked
    store per channel and row. Saves the pass through a blocked buffer and its transpose."""
    if not (_is_f32_array(arr) and _is_vec_tuple(acc) and _ints(index, chan_step, row_step)):
        return None
    if not (_ints(nchan, nrows, ncols) and _length(blocks) > 0 and _length(cols) > 0):
        return None
    nb, tw = len(blocks), len(cols)
    npx = len(acc) // nb
    if npx > LANES or npx % tw:
        return None

    def codegen(context, builder, sig, args):
        vecs = cgutils.unpack_tuple(builder, args[4], nb * npx)
        idx, cstp, rstp, nch, nr, nc = _intp(context, builder, sig, args, 1, 2, 3, 7, 8, 9)
        i64 = idx.type
        lanes = ir.Constant(ir.VectorType(i64, LANES), list(range(LANES)))
        fn = _masked_store(builder)
        undef = ir.Constant(_VEC, ir.Undefined)
        row_masks = []
        for r in range(npx // tw):
            # lanes r*tw <= l < r*tw + ncols of row r, if r < nrows
            lo = ir.Constant(i64, r * tw)
            inside = builder.and_(
                builder.icmp_signed(">=", lanes, _broadcast_int(builder, lo)),
                builder.icmp_signed("<", lanes, _broadcast_int(builder, builder.add(lo, nc))),
            )
            row_ok = builder.icmp_signed("<", ir.Constant(i64, r), nr)
            row_masks.append(builder.and_(inside, _broadcast_int(builder, row_ok)))
        for b in range(nb):
            channels = _transpose(builder, vecs[b * npx : (b + 1) * npx] + [undef] * (LANES - npx))
            for j in range(LANES):
                ch = b * LANES + j
                ok = _broadcast_int(builder, builder.icmp_signed("<", ir.Constant(i64, ch), nch))
                base = builder.add(idx, builder.mul(cstp, ir.Constant(i64, ch)))
                for r, row_mask in enumerate(row_masks):
                    # the store starts r*tw lanes before the row, so lane r*tw + q lands on q
                    at = builder.sub(
                        builder.add(base, builder.mul(rstp, ir.Constant(i64, r))),
                        ir.Constant(i64, r * tw),
                    )
                    ptr = _pointer(context, builder, sig.args[0], args[0], at)
                    mask = builder.and_(row_mask, ok)
                    builder.call(fn, [channels[j], ptr, ir.Constant(ir.IntType(32), 4), mask])
        return context.get_dummy_value()

    sig = types.none(arr, index, chan_step, row_step, acc, blocks, cols, nchan, nrows, ncols)
    return sig, codegen


@intrinsic
def transpose16(typingctx, src, src_index, src_step, dst, dst_index, dst_step):
    """Transpose a 16x16 block: ``dst.flat[dst_index + j*dst_step + i] =
    src.flat[src_index + i*src_step + j]`` for i, j < 16: 16 vector loads, 64 two-source
    shuffles (four stages swapping the off-diagonal 8x8, 4x4, 2x2, 1x1 sub-blocks), 16 stores.
    Converts between the 16-channel blocked layout and NCHW."""
    if not (_is_f32_array(src) and _is_f32_array(dst)):
        return None
    if not _ints(src_index, src_step, dst_index, dst_step):
        return None

    def codegen(context, builder, sig, args):
        si, ss, di, ds = _intp(context, builder, sig, args, 1, 2, 4, 5)
        rows = []
        for i in range(LANES):
            at = builder.add(si, builder.mul(ss, ir.Constant(si.type, i)))
            rows.append(_load(context, builder, sig.args[0], args[0], at))
        rows = _transpose(builder, rows)
        for j in range(LANES):
            at = builder.add(di, builder.mul(ds, ir.Constant(di.type, j)))
            builder.store(rows[j], _pointer(context, builder, sig.args[3], args[3], at), align=4)
        return context.get_dummy_value()

    return types.none(src, src_index, src_step, dst, dst_index, dst_step), codegen
