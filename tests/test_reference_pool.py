"""``fastconv.reference`` pooling (max, average, adaptive) against PyTorch in float64."""

import numpy as np
import pytest
from reference_helpers import SEED, F, assert_close, permuted, to_torch

from fastconv import reference as R


@pytest.fixture
def rng():
    return np.random.default_rng(SEED)


# Shapes and arguments both max and average pooling are checked on; each adds its own below.
POOL_CASES = [
    pytest.param((2, 3, 6, 8), dict(kernel_size=2), id="k2"),
    pytest.param(
        (2, 2, 7, 6), dict(kernel_size=(3, 2), stride=(2, 1), padding=1), id="k3x2-s2x1-p1"
    ),
    pytest.param((1, 2, 5, 6), dict(kernel_size=3, stride=1, padding=1), id="overlapping-k3-s1"),
    pytest.param((2, 3, 5, 7), dict(kernel_size=(2, 3)), id="stride-none-nonsquare-kernel"),
    pytest.param(
        (1, 2, 5, 7), dict(kernel_size=2, stride=2, ceil_mode=True), id="ceil-partial-last-window"
    ),
    pytest.param(
        (1, 2, 6, 6),
        dict(kernel_size=3, stride=3, padding=1, ceil_mode=True),
        id="ceil-window-into-right-padding",
    ),
    pytest.param(
        (1, 2, 5, 5),
        dict(kernel_size=2, stride=2, padding=1, ceil_mode=True),
        id="ceil-window-in-padding-dropped",
    ),
    pytest.param(
        (2, 2, 3, 4), dict(kernel_size=(5, 4), padding=(1, 0)), id="kernel-equals-padded-input"
    ),
    pytest.param((2, 3, 5, 4), dict(kernel_size=1, stride=2), id="1x1-stride2"),
]

# ---------------------------------------------------------------------------------------------
# Max pooling
# ---------------------------------------------------------------------------------------------

MAX_POOL_CASES = [
    *POOL_CASES,
    pytest.param(
        (1, 2, 9, 8),
        dict(kernel_size=3, stride=(1, 2), padding=(1, 0), dilation=(2, 3)),
        id="asym-dilation",
    ),
    pytest.param(
        (1, 2, 8, 7),
        dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True),
        id="ceil-dilated",
    ),
    pytest.param((0, 2, 4, 4), dict(kernel_size=2), id="batch0"),
]


@pytest.mark.parametrize("x_shape, kwargs", MAX_POOL_CASES)
def test_max_pool2d_forward_backward(rng, x_shape, kwargs):
    x = permuted(rng, x_shape)
    y, idx = R.max_pool2d(x, **kwargs)
    xt = to_torch(x)
    yt, idxt = F.max_pool2d(xt, **kwargs, return_indices=True)
    assert_close(y, yt)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, idxt.numpy())

    g = rng.standard_normal(y.shape)
    yt.backward(to_torch(g, grad=False))
    assert_close(R.max_pool2d_backward(g, idx, x.shape), xt.grad)


def test_max_pool2d_ceil_drops_window_starting_in_right_padding():
    # floor((5 + 2 - 1 - 1 + 1) / 2) + 1 = 4, but window 3 would start at 3*2 - 1 = 5 = H.
    y, _ = R.max_pool2d(np.zeros((1, 1, 5, 5)), 2, stride=2, padding=1, ceil_mode=True)
    assert y.shape == (1, 1, 3, 3)


def test_max_pool2d_nan_wins_last_nan_index(rng):
    # Overlapping 3x3 windows, several with two NaNs: PyTorch returns the index of the last NaN.
    x = permuted(rng, (2, 2, 6, 7))
    x[0, 0, 1, 1] = x[0, 0, 1, 3] = x[0, 0, 2, 2] = np.nan
    x[1, 1, 5, 6] = x[1, 1, 0, 0] = np.nan
    kwargs = dict(kernel_size=3, stride=1, padding=1)
    y, idx = R.max_pool2d(x, **kwargs)
    yt, idxt = F.max_pool2d(to_torch(x, grad=False), **kwargs, return_indices=True)
    np.testing.assert_array_equal(y, yt.numpy())  # NaN == NaN in assert_array_equal
    np.testing.assert_array_equal(idx, idxt.numpy())
    assert idx[0, 0, 1, 2] == 2 * 7 + 2  # window rows 0-2, cols 1-3: the last NaN is (2, 2)


def test_max_pool2d_all_neg_inf_takes_first_valid_element(rng):
    x = permuted(rng, (1, 2, 5, 6))
    x[:, :, :3, :] = -np.inf
    kwargs = dict(kernel_size=(3, 2), stride=(1, 2), padding=1)
    y, idx = R.max_pool2d(x, **kwargs)
    yt, idxt = F.max_pool2d(to_torch(x, grad=False), **kwargs, return_indices=True)
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(idx, idxt.numpy())
    assert idx[0, 0, 0, 0] == 0  # window starts in the padding: first valid element is (0, 0)


def test_max_pool2d_rejects_bad_geometry():
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(ValueError, match="half"):
        R.max_pool2d(x, 3, padding=2)
    # Dilation 2 with padding 1 over a 1-pixel-high input: the window's taps are rows -1 and 1,
    # both outside. PyTorch returns -inf with out-of-plane indices; the reference refuses.
    with pytest.raises(ValueError, match="only padding"):
        R.max_pool2d(np.zeros((1, 1, 1, 4)), (2, 1), stride=1, padding=(1, 0), dilation=(2, 1))


# ---------------------------------------------------------------------------------------------
# Average pooling
# ---------------------------------------------------------------------------------------------

AVG_POOL_CASES = [
    *POOL_CASES,
    pytest.param(
        (1, 2, 7, 9),
        dict(kernel_size=(4, 3), stride=(3, 2), padding=(2, 1), ceil_mode=True),
        id="ceil-asym",
    ),
    pytest.param((0, 2, 4, 4), dict(kernel_size=2, padding=1), id="batch0"),
]


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["incl-pad", "excl-pad"])
@pytest.mark.parametrize("x_shape, kwargs", AVG_POOL_CASES)
def test_avg_pool2d_forward_backward(rng, x_shape, kwargs, count_include_pad):
    kwargs = dict(kwargs, count_include_pad=count_include_pad)
    x = rng.standard_normal(x_shape)
    y = R.avg_pool2d(x, **kwargs)
    xt = to_torch(x)
    yt = F.avg_pool2d(xt, **kwargs)
    assert_close(y, yt)

    g = rng.standard_normal(y.shape)
    yt.backward(to_torch(g, grad=False))
    assert_close(R.avg_pool2d_backward(g, x.shape, **kwargs), xt.grad)


def test_avg_pool2d_ceil_divisor_stops_at_right_padding():
    # H = W = 6, k = 3, s = 3, p = 1, ceil: the last window covers input 5, padding 6 and 7
    # beyond the padding. Its divisor counts 5 and 6 only: 2 (x2 for the other axis).
    x = np.ones((1, 1, 6, 6))
    kwargs = dict(kernel_size=3, stride=3, padding=1, ceil_mode=True)
    assert R.avg_pool2d(x, **kwargs)[0, 0, 2, 2] == 1 / 4
    assert R.avg_pool2d(x, **kwargs, count_include_pad=False)[0, 0, 2, 2] == 1


ADAPTIVE_CASES = [
    pytest.param((2, 3, 7, 9), (3, 4), id="7x9-to-3x4"),
    pytest.param((1, 2, 5, 6), (5, 6), id="identity"),
    pytest.param((2, 3, 5, 7), 1, id="global-int"),
    pytest.param((2, 2, 10, 10), 3, id="overlapping-windows"),
    pytest.param((1, 2, 3, 4), (5, 7), id="upsample"),
    pytest.param((1, 2, 6, 5), (2, None), id="none-keeps-width"),
    pytest.param((0, 2, 6, 6), (2, 3), id="batch0"),
]


@pytest.mark.parametrize("x_shape, output_size", ADAPTIVE_CASES)
def test_adaptive_avg_pool2d_forward_backward(rng, x_shape, output_size):
    x = rng.standard_normal(x_shape)
    y = R.adaptive_avg_pool2d(x, output_size)
    xt = to_torch(x)
    yt = F.adaptive_avg_pool2d(xt, output_size)
    assert_close(y, yt)

    g = rng.standard_normal(y.shape)
    yt.backward(to_torch(g, grad=False))
    assert_close(R.adaptive_avg_pool2d_backward(g, x.shape), xt.grad)
