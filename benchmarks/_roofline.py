"""The roofline: this machine's measured float32 peak and the FLOP count of each conv shape.

Two peaks, both on the threads the caller set (``fastconv.threads``):

- ``fma_peak``: a numba loop that does nothing but fused multiply-adds on ``CHAINS``
  independent vector accumulators. Plain numba loops keep accumulators in memory and often emit
  scalar FMAs, so the loop body is written in LLVM IR (``fma_chains``): each accumulator is one
  SIMD register (``<16 x float>`` with AVX-512, ``<8 x float>`` otherwise), and ``fma_asm``
  reads the compiled assembly to show it.
- ``sgemm_peak``: NumPy's float32 matmul of two 2048 x 2048 matrices (OpenBLAS).
"""

from __future__ import annotations

import re
import time

import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

# One zmm register holds 16 floats. Without AVX-512 a <16 x float> would be split into two ymm
# registers and 2 x CHAINS of them would not fit in the 16 ymm registers AVX2 has.
LANES = 16 if llvm.get_host_cpu_features().get("avx512f", False) else 8
# FMA latency (4 cycles) x FMA ports (2) = 8 FMAs in flight per core; 12 leaves some slack and
# still fits in the register file with the two loop-invariant operands.
CHAINS = 12
FMA_REPS = 10_000_000  # loop trips per thread and call: ~4 GFLOP per thread, ~20 ms
SGEMM_SIZE = 2048


@intrinsic
def fma_chains(typingctx, reps, a):
    """``reps`` rounds of ``acc[k] = acc[k] * a + 0.001`` on ``CHAINS`` vector accumulators;
    returns the sum of their lanes (so the loop is not optimised away). ``reps`` >= 1."""
    sig = types.float32(types.int64, types.float32)

    def codegen(context, builder, signature, args):
        n, scalar = args
        i32 = ir.IntType(32)
        vty = ir.VectorType(ir.FloatType(), LANES)
        fnty = ir.FunctionType(vty, [vty, vty, vty])
        fma = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.fma.v{LANES}f32")
        first = builder.insert_element(ir.Constant(vty, ir.Undefined), scalar, i32(0))
        splat = ir.Constant(ir.VectorType(i32, LANES), [0] * LANES)
        mul = builder.shuffle_vector(first, ir.Constant(vty, ir.Undefined), splat)
        add = ir.Constant(vty, [1e-3] * LANES)
        entry = builder.block
        loop = builder.append_basic_block("fma.loop")
        done = builder.append_basic_block("fma.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        i = builder.phi(n.type)
        accs = [builder.phi(vty) for _ in range(CHAINS)]
        new = [builder.call(fma, [acc, mul, add]) for acc in accs]
        i_next = builder.add(i, ir.Constant(n.type, 1))
        builder.cbranch(builder.icmp_signed("<", i_next, n), loop, done)
        i.add_incoming(ir.Constant(n.type, 0), entry)
        i.add_incoming(i_next, loop)
        for k, (acc, nxt) in enumerate(zip(accs, new, strict=True)):
            acc.add_incoming(ir.Constant(vty, [float(k + 1)] * LANES), entry)
            acc.add_incoming(nxt, loop)
        builder.position_at_end(done)
        total = new[0]
        for v in new[1:]:
            total = builder.fadd(total, v)
        out = builder.extract_element(total, i32(0))
        for lane in range(1, LANES):
            out = builder.fadd(out, builder.extract_element(total, i32(lane)))
        return out

    return sig, codegen


@numba.njit(nogil=True)
def _fma_serial(reps, a):
    return fma_chains(reps, a)


@numba.njit(nogil=True, parallel=True)
def _fma_parallel(reps, a, out):
    for t in prange(out.size):  # one chunk of FMAs per thread
        out[t] = fma_chains(reps, a)


def fma_asm():
    """What the compiled FMA loop is made of, from ``inspect_asm``: e.g. "36 vfmadd on zmm
    registers, none with a memory operand"."""
    a = np.float32(0.999)
    _fma_serial(1, a)
    asm = _fma_serial.inspect_asm(_fma_serial.signatures[0])
    fmas = [ln for ln in asm.splitlines() if re.search(r"\bvfmadd\w*ps\b", ln)]
    regs = sorted({m for ln in fmas for m in re.findall(r"%([xyz]mm)\d+", ln)})
    in_memory = sum("(" in ln for ln in fmas)
    return (
        f"{len(fmas)} packed vfmadd instructions on {'/'.join(regs) or 'no vector'} registers, "
        f"{in_memory} with a memory operand"
    )


def fma_peak(threads, rounds=10):
    """GFLOP/s of the FMA loop on ``threads`` threads (one chunk each), best of ``rounds``: a
    peak is what the machine can reach, and a neighbour's load only ever lowers it."""
    a = np.float32(0.999)
    out = np.empty(threads, np.float32)
    _fma_parallel(1, a, out)  # compile
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        _fma_parallel(FMA_REPS, a, out)
        times.append(time.perf_counter() - start)
    return 2 * LANES * CHAINS * FMA_REPS * threads / min(times) / 1e9


def fma_work(chunks=2, reps=FMA_REPS // 10):
    """A fixed amount of compute-bound work in ``chunks`` equal chunks (about 4 ms on 2 cores):
    the threads section's control. Its 2-thread speedup is about 2 on two free cores and
    shows how much of the second core the machine gave during the measurement."""
    a, out = np.float32(0.999), np.empty(chunks, np.float32)
    _fma_parallel(1, a, out)  # compile
    return lambda: _fma_parallel(reps, a, out)


def memory_work(megabytes=64):
    """fastconv's ReLU forward over ``megabytes`` of float32 (far beyond the caches), on the
    threads in force: memory-bound work, the threads section's second control."""
    from fastconv import get_num_threads
    from fastconv.kernels.elementwise import _relu_fwd

    x = np.random.default_rng(0).standard_normal(megabytes << 18, dtype=np.float32)
    y = np.empty_like(x)
    return lambda: _relu_fwd(x, y, get_num_threads())


def sgemm_peak(rounds=5, n=SGEMM_SIZE):
    """GFLOP/s of a float32 ``n x n`` matmul (NumPy's BLAS, on its current threads), best of
    ``rounds``."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    out = np.empty((n, n), np.float32)
    np.matmul(a, b, out=out)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9


def conv_flops(shape, pass_):
    """FLOPs of one conv call: 2 x N x C_out x C_in x kH x kW x OH x OW for the forward (groups
    is 1 for every benchmark shape); forward + backward is 3x that (grad input and grad weight
    each cost as much as the forward)."""
    fwd = 2 * shape.n * shape.c_out * shape.c_in * shape.k * shape.k * shape.out_hw**2
    return fwd if pass_ == "fwd" else 3 * fwd
