"""Settings every kernel shares: the numba flags, the cache policy and the tuning constants.

Kernels (``fastconv.kernels``) are compiled with ``jit``/``pjit`` below and nothing else, so the
fastmath flags and the cache policy live in exactly one place. The tuning constants of the conv
planner (``fastconv._conv_plan``) are the fields of ``Tuning``; code reads them with
``tuning()``, and tests and benchmarks change them for a block with ``tuned(...)``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import warnings
from pathlib import Path

import numba

from fastconv._cache_load import use_quick_load

# Not the blanket fastmath option: its ``nnan``/``ninf`` flags let LLVM assume there is no NaN
# or inf, which silently breaks max pooling's ``-inf`` start value and NaN propagation. These
# three are safe:
# ``reassoc`` lets LLVM vectorise sums, ``contract`` allows fused multiply-add, ``nsz`` ignores the
# sign of zero. Results still match the float64 reference to ~1e-12.
FASTMATH = frozenset({"reassoc", "contract", "nsz"})

# Cache policy: every kernel is compiled lazily, once per dtype, and written to numba's on-disk
# cache (``__pycache__`` beside the source, or ``$NUMBA_CACHE_DIR``, or the user's cache
# directory), so only the first process on a machine pays the compile time. ``cache=True`` works
# with ``parallel=True`` on numba >= 0.59. Where none of those places is writable (a root-owned
# system install used by a user without a home directory), numba refuses ``cache=True`` at
# decoration time; fastconv then warns once and compiles in memory in every process instead.
# Loading from the cache skips numba's compiler set-up (``fastconv._cache_load``).
CACHE = True


class CacheWarning(UserWarning):
    """numba cannot cache fastconv's compiled kernels: they are compiled in every process."""


_cache_warned = False


def _njit(fn, **options):
    """``numba.njit`` with the cache policy above: ``cache=CACHE``, or in memory if numba has
    nowhere to write the cache (its "no locator available" error)."""
    global _cache_warned
    if CACHE:
        try:
            return use_quick_load(numba.njit(cache=True, **options)(fn))
        except RuntimeError as e:
            if "no locator available" not in str(e):
                raise
        if not _cache_warned:
            _cache_warned = True
            warnings.warn(
                "fastconv: numba has nowhere to cache compiled kernels (the package directory is "
                "read-only and there is no usable NUMBA_CACHE_DIR or home directory), so they "
                "are compiled in memory in every process; set NUMBA_CACHE_DIR to a writable "
                "directory to cache them",
                CacheWarning,
                stacklevel=3,
            )
    return numba.njit(cache=False, **options)(fn)


def jit(fn):
    """Serial kernel: ``@jit`` on a function of preallocated arrays."""
    return _njit(fn, fastmath=set(FASTMATH), nogil=True)


def pjit(fn):
    """Parallel kernel: its ``prange`` iterations must each own what they write."""
    return _njit(fn, fastmath=set(FASTMATH), nogil=True, parallel=True)


def _l1_data_cache_bytes():
    """The first CPU's level-1 data cache in bytes, from Linux's sysfs; 24 KB (the tuning of
    the machines measured before this was read) where it cannot be read."""
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "level").read_text().strip() == "1" and (
                index / "type"
            ).read_text().strip() == "Data":
                size = (index / "size").read_text().strip()  # e.g. "48K"
                return int(size[:-1]) * 1024 if size.endswith("K") else int(size)
        except (OSError, ValueError):
            break
    return 24 * 1024


@dataclasses.dataclass(frozen=True)
class Tuning:
    """The conv planner's tuning constants, each with the measurement behind it.

    Measured on the shapes of ``benchmarks/report.py`` (fm_conv1/2, seed, res_*).
    """

    # Winograd F(2x2, 3x3) only when both channel counts reach this: with few channels its
    # transforms cost more than the 2.25x fewer multiplications save.
    winograd_min_channels: int = 16
    # The GEMM path unfolds one sample at a time into a per-thread buffer, in tiles of output
    # rows only when a sample's columns exceed this budget (large images: a 64-channel 224x224
    # layer would need 115 MB per sample). Whole samples were as fast as or faster than tiles of
    # rows (kept in L2) or of several small samples.
    tile_bytes: int = 8 << 20
    # Winograd works on blocks of about this many 2x2 output tiles: the block's transformed
    # patches and products (16 x channels x tiles each) should stay in cache. The weight
    # gradient's GEMMs reduce over the tiles, so they prefer longer blocks (on fm_conv2 and
    # res_56: 128 tiles for the convolution, 256 for the weight gradient; at 112 tiles of 64
    # channels the weight gradient ran at half speed).
    winograd_tiles: int = 128
    winograd_grad_tiles: int = 256
    # The register-tiled direct convolution (``_conv_blocked``) runs over input channels in
    # chunks whose weights (taps x 16-channel blocks x 64 bytes) fit in this many bytes, so
    # they stay in L1 while every tile of the sample reads them; between chunks each tile's
    # partial sums go through memory. Two thirds of the L1 data cache (the rest holds the
    # input rows the tiles broadcast from). AMD EPYC (48 KB L1d), 2 threads, interleaved:
    # 32 KB chunks against 16 KB made res_56 forward 5% faster (10.85 -> 10.34 ms), res_s2 and
    # fm_conv2 2%; 64 KB was no better than 32.
    blocked_weight_chunk_bytes: int = dataclasses.field(
        default_factory=lambda: _l1_data_cache_bytes() * 2 // 3 // 4096 * 4096
    )
    # Up to this many output channels, a stride-1 convolution runs vectorised over 16 output
    # pixels instead (``_conv2d_fwd_pixels``): 16-channel blocks would be mostly zeros. The
    # input gradient of fm_conv1 (C_in = 1), one thread: 3.4 ms in one zero-padded block,
    # 1.0 ms over pixels.
    blocked_pixel_channels: int = 8
    # The weight gradient splits the samples into chunks (fixed by the shape, so the sums are
    # the same at any thread count) when the other dimensions give fewer than this many
    # parallel iterations.
    blocked_grad_items: int = 16
    # The float32 matrix product (``kernels/gemm.py``) splits the rows into chunks when its
    # column panels give fewer than this many parallel iterations (LeNet's fc1 forward has 2).
    gemm_iterations: int = 16
    # ... and goes over the rows of b in blocks of this many, each block staying in cache while
    # every tile of rows of a uses it (256 rows of a 64-column panel: 64 KB).
    gemm_k_block: int = 256


DEFAULT_TUNING = Tuning()
_tuning = contextvars.ContextVar("fastconv_tuning")


def tuning():
    """The tuning constants in force (``DEFAULT_TUNING``, unless inside ``tuned``)."""
    return _tuning.get(DEFAULT_TUNING)


@contextlib.contextmanager
def tuned(**changes):
    """Private, for tests and benchmarks: run the block with some tuning constants changed,
    e.g. ``with fastconv._config.tuned(tile_bytes=1):``; restored on exit, even on error.
    Per thread (a context variable), so other threads keep their settings."""
    token = _tuning.set(dataclasses.replace(tuning(), **changes))
    try:
        yield
    finally:
        _tuning.reset(token)
