"""The blocked direct convolution engine (fastconv._conv_blocked) against the reference loops.

The cases cover both kernels: 16-channel blocks (more than 8 output channels) and 16-pixel
vectors (at most 8 output channels at stride 1, and input gradients with at most 8 input
channels), every tile shape, channel chunks, row tiles of large kernels and the phases of
strided input gradients.

float32 inputs; the reference runs in float64 on the same values, so the comparison measures
the engine's float32 rounding only (relative 1e-4, as for every float32 path).
"""

import numpy as np
import pytest
from helpers import assert_close32

import fastconv
import fastconv._conv_blocked as cb
import fastconv.reference as R

# (N, C, H, W, O, (KH, KW), (sh, sw), (ph, pw), (dh, dw)); padding symmetric, as the reference.
CASES = {
    "k3_p1": (2, 3, 9, 10, 20, (3, 3), (1, 1), (1, 1), (1, 1)),
    "k3_s2_p1_odd": (2, 5, 11, 8, 33, (3, 3), (2, 2), (1, 1), (1, 1)),
    "k5_p2": (3, 7, 7, 9, 17, (5, 5), (1, 1), (2, 2), (1, 1)),
    "k1": (1, 2, 6, 13, 40, (1, 1), (1, 1), (0, 0), (1, 1)),
    "k3_p0_dil2": (2, 3, 12, 11, 18, (3, 3), (1, 1), (0, 0), (2, 2)),
    # a column dilation past 2: the weight gradient's tap step is a runtime int, not a constant
    "k3_dil_1x3": (2, 3, 9, 14, 18, (3, 3), (1, 1), (1, 2), (1, 3)),
    "c1_k5_s2": (2, 1, 16, 15, 16, (5, 5), (2, 2), (0, 0), (1, 1)),
    "c1_k3_p1": (4, 1, 12, 12, 32, (3, 3), (1, 1), (1, 1), (1, 1)),
    # rows of 12 and 24 outputs: the 12-pixel tile (one block, then two)
    "seed_k5_s2_tile12": (3, 1, 28, 28, 16, (5, 5), (2, 2), (0, 0), (1, 1)),
    "tile12_two_blocks": (1, 3, 10, 24, 40, (3, 3), (1, 1), (1, 1), (1, 1)),
    "few_out_pad3": (2, 19, 9, 9, 5, (3, 3), (1, 1), (3, 3), (1, 1)),
    "narrow_rows_tile": (5, 4, 7, 7, 24, (3, 3), (1, 1), (0, 0), (1, 1)),
    "channel_chunks": (1, 20, 6, 16, 36, (3, 3), (1, 1), (1, 1), (1, 1)),
    "k7_row_tiles": (2, 2, 9, 10, 8, (7, 7), (1, 1), (3, 3), (1, 1)),
    "nonsquare_s3": (2, 3, 10, 13, 17, (2, 4), (3, 2), (1, 2), (1, 1)),
    "s2_k5_p2": (2, 4, 13, 10, 20, (5, 5), (2, 2), (2, 2), (1, 1)),
    "stride_beyond_kernel": (2, 3, 11, 9, 6, (2, 2), (3, 3), (1, 1), (1, 1)),
    "s2_dil2_no_input_grad": (1, 2, 11, 11, 4, (3, 3), (2, 2), (1, 1), (2, 2)),
    # more than 8 input channels: the input gradient's phases run on 16-channel blocks
    "s2_blocked_input_grad": (2, 18, 11, 10, 20, (3, 3), (2, 2), (1, 1), (1, 1)),
    "s3_blocked_beyond_kernel": (1, 17, 10, 11, 9, (2, 2), (3, 3), (1, 0), (1, 1)),
}


def _inputs(rng, case):
    N, C, H, W, O, k, s, p, d = case
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((O, C, *k)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    return x, w, b


def _out_shape(case):
    N, C, H, W, O, k, s, p, d = case
    size = [(n + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i, n in enumerate((H, W))]
    return (N, O, *size)


def _forward(x, w, b, case):
    N, C, H, W, O, k, s, p, d = case
    out = np.full(_out_shape(case), np.nan, dtype=np.float32)  # every element must be written
    return cb.conv2d_forward(x, w, b, s, p, d, out)


def _backward(go, x, w, case):
    N, C, H, W, O, k, s, p, d = case
    return cb.conv2d_backward(go, x, w, s, p, d, need_input_grad=cb.supports_input_grad(s, d))


def _reference(x, w, b, go, case):
    N, C, H, W, O, k, s, p, d = case
    f64 = [None if a is None else a.astype(np.float64) for a in (x, w, b, go)]
    y = R.conv2d(f64[0], f64[1], f64[2], stride=s, padding=p, dilation=d)
    grads = R.conv2d_backward(f64[3], f64[0], f64[1], stride=s, padding=p, dilation=d)
    return y, grads


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_forward_and_backward_match_reference(rng, case):
    x, w, b = _inputs(rng, case)
    go = rng.standard_normal(_out_shape(case)).astype(np.float32)
    y_ref, (gx_ref, gw_ref, gb_ref) = _reference(x, w, b, go, case)
    assert_close32(_forward(x, w, b, case), y_ref)
    assert_close32(_forward(x, w, None, case), y_ref - b.astype(np.float64)[:, None, None])
    gx, gw, gb = _backward(go, x, w, case)
    assert_close32(gw, gw_ref)
    assert_close32(gb, gb_ref)
    if cb.supports_input_grad(case[6], case[8]):
        assert_close32(gx, gx_ref)
    else:
        assert gx is None


def test_input_grad_can_be_skipped(rng):
    case = CASES["k3_p1"]
    x, w, b = _inputs(rng, case)
    go = rng.standard_normal(_out_shape(case)).astype(np.float32)
    gx, gw, gb = cb.conv2d_backward(go, x, w, (1, 1), (1, 1), (1, 1), need_input_grad=False)
    assert gx is None
    _, (_, gw_ref, gb_ref) = _reference(x, w, b, go, case)
    assert_close32(gw, gw_ref)


@pytest.mark.parametrize("case", [CASES["k3_p1"], CASES["k3_s2_p1_odd"]], ids=["s1", "s2"])
def test_inf_and_nan_propagate_like_the_reference(rng, case):
    x, w, b = _inputs(rng, case)
    x[0, 0, 2, 3] = np.inf
    x[1, 1, 4, 4] = -np.inf
    x[1, 2, 0, 1] = np.nan
    go = rng.standard_normal(_out_shape(case)).astype(np.float32)
    go[0, 3, 1, 1] = np.inf
    with np.errstate(invalid="ignore"):  # inf - inf in the reference's sums: NaN, as expected
        y_ref, (gx_ref, gw_ref, gb_ref) = _reference(x, w, b, go, case)
    y = _forward(x, w, b, case)
    gx, gw, gb = _backward(go, x, w, case)
    pairs = [(y, y_ref), (gw, gw_ref), (gb, gb_ref)] + ([(gx, gx_ref)] if gx is not None else [])
    for actual, expected in pairs:
        np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
        np.testing.assert_array_equal(np.isposinf(actual), np.isposinf(expected))
        np.testing.assert_array_equal(np.isneginf(actual), np.isneginf(expected))
        finite = np.isfinite(expected)
        assert finite.any()
        np.testing.assert_allclose(actual[finite], expected[finite], rtol=1e-4, atol=1e-4)


def test_one_and_two_threads_bit_identical(rng):
    # 9 samples of 32x32 outputs: the weight gradient sums several chunks of samples.
    case = (9, 3, 32, 32, 20, (3, 3), (1, 1), (1, 1), (1, 1))
    x, w, b = _inputs(rng, case)
    go = rng.standard_normal(_out_shape(case)).astype(np.float32)
    results = []
    for n in (1, 2):
        with fastconv.threads(n):
            results.append((_forward(x, w, b, case), *_backward(go, x, w, case)))
    for one, two in zip(*results, strict=True):
        np.testing.assert_array_equal(one, two)


def test_backward_writes_into_given_arrays(rng):
    case = CASES["k3_s2_p1_odd"]
    x, w, b = _inputs(rng, case)
    go = rng.standard_normal(_out_shape(case)).astype(np.float32)
    out = (np.empty_like(x), np.empty_like(w), np.empty_like(b))
    result = cb.conv2d_backward(go, x, w, (2, 2), (1, 1), (1, 1), out=out)
    assert all(r is o for r, o in zip(result, out, strict=True))
    _, (gx_ref, gw_ref, gb_ref) = _reference(x, w, b, go, case)
    for actual, expected in zip(out, (gx_ref, gw_ref, gb_ref), strict=True):
        assert_close32(actual, expected)


def test_empty_batch():
    x = np.zeros((0, 3, 6, 6), np.float32)
    w = np.ones((20, 3, 3, 3), np.float32)
    out = cb.conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1), np.empty((0, 20, 6, 6), np.float32))
    gx, gw, gb = cb.conv2d_backward(out, x, w, (1, 1), (1, 1), (1, 1))
    assert gx.shape == x.shape
    np.testing.assert_array_equal(gw, np.zeros_like(w))
    np.testing.assert_array_equal(gb, np.zeros(20, np.float32))


def test_supports():
    assert cb.supports((2, 3, 8, 8), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1, np.float32)
    assert not cb.supports((2, 3, 8, 8), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1, np.float64)
    assert not cb.supports((2, 4, 8, 8), (4, 2, 3, 3), (1, 1), (1, 1), (1, 1), 2, np.float32)


def test_read_only_and_writable_inputs_share_the_compiled_kernels(rng):
    # The parallel kernels call their items by address, each compiled for its argument types;
    # numba types a read-only array apart, so the memo of addresses keys on the flags too.
    x = rng.standard_normal((2, 18, 9, 9)).astype(np.float32)
    w = rng.standard_normal((20, 18, 3, 3)).astype(np.float32)
    g = rng.standard_normal((2, 20, 9, 9)).astype(np.float32)
    results = []
    for writeable in (True, False, True):
        xs, ws, gs = (a.copy() for a in (x, w, g))
        for a in (xs, ws, gs):
            a.flags.writeable = writeable
        out = np.empty((2, 20, 9, 9), np.float32)
        y = cb.conv2d_forward(xs, ws, None, (1, 1), (1, 1), (1, 1), out)
        grads = cb.conv2d_backward(gs, xs, ws, (1, 1), (1, 1), (1, 1))
        results.append((y.copy(), *grads))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)
