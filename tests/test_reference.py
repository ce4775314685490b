"""The NumPy oracle ``fastconv.reference`` checked against PyTorch in float64.

Every forward is compared with ``torch.nn.functional`` and every backward with torch autograd, at
rtol 1e-10 / atol 1e-12, so the fast kernels' tests can trust the oracle.
"""

import ast
import pathlib

import numpy as np
import pytest

from fastconv import reference as R

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL, ATOL = 1e-10, 1e-12


@pytest.fixture
def rng():
    return np.random.default_rng(20240607)


def to_torch(a, grad=True):
    """float64 tensor with its own copy of ``a``; a leaf that records gradients by default."""
    return torch.tensor(np.array(a, dtype=np.float64), requires_grad=grad)


def to_numpy(t):
    return t.detach().numpy()


def assert_close(actual, expected):
    expected = to_numpy(expected) if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert actual.shape == expected.shape
    assert actual.dtype == np.float64
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


def permuted(rng, shape):
    """Distinct float64 values (a shuffled range, centred on 0): pooling has no tied maxima."""
    size = int(np.prod(shape))
    return rng.permutation(size).reshape(shape).astype(np.float64) - size / 2


# ---------------------------------------------------------------------------------------------
# conv2d
# ---------------------------------------------------------------------------------------------

CONV_CASES = [
    pytest.param((2, 3, 7, 9), (4, 3, 3, 3), {}, id="3x3-nonsquare-input"),
    pytest.param(
        (2, 3, 8, 11), (4, 3, 3, 2), dict(stride=(2, 3), padding=(1, 2)), id="asym-stride-padding"
    ),
    pytest.param(
        (1, 2, 9, 10),
        (3, 2, 3, 3),
        dict(stride=(1, 2), padding=(2, 1), dilation=(2, 3)),
        id="asym-dilation",
    ),
    pytest.param((2, 4, 6, 7), (6, 2, 3, 3), dict(padding=1, groups=2), id="groups2"),
    pytest.param((2, 3, 6, 5), (3, 1, 3, 3), dict(stride=2, padding=1, groups=3), id="depthwise"),
    pytest.param(
        (1, 3, 5, 6), (6, 1, 2, 3), dict(padding=(1, 0), groups=3), id="depthwise-multiplier2"
    ),
    pytest.param((2, 2, 3, 4), (3, 2, 5, 6), dict(padding=1), id="kernel-equals-padded-input"),
    pytest.param((2, 3, 5, 7), (5, 3, 1, 1), dict(stride=(2, 1)), id="1x1-stride"),
    pytest.param((2, 3, 6, 7), (4, 3, 3, 3), dict(padding="same"), id="same-3x3"),
    pytest.param(
        (1, 3, 6, 7),
        (4, 3, 4, 2),
        dict(padding="same", dilation=(1, 2)),
        id="same-even-kernel-asym-pad",
    ),
    pytest.param(
        (1, 3, 6, 7),
        (2, 3, 3, 2),
        dict(padding="same", dilation=(2, 3)),
        id="same-dilated-asym-pad",
    ),
    pytest.param((2, 3, 6, 7), (4, 3, 3, 3), dict(padding="valid", stride=2), id="valid-stride2"),
    pytest.param((0, 3, 6, 7), (4, 3, 3, 3), dict(padding=1), id="batch0"),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("x_shape, w_shape, kwargs", CONV_CASES)
def test_conv2d_forward_backward(rng, x_shape, w_shape, kwargs, use_bias):
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0]) if use_bias else None
    y = R.conv2d(x, w, b, **kwargs)

    xt, wt = to_torch(x), to_torch(w)
    bt = to_torch(b) if use_bias else None
    yt = F.conv2d(xt, wt, bt, **kwargs)
    assert_close(y, yt)

    g = rng.standard_normal(y.shape)
    yt.backward(to_torch(g, grad=False))
    grad_x, grad_w, grad_b = R.conv2d_backward(g, x, w, **kwargs)
    assert_close(grad_x, xt.grad)
    assert_close(grad_w, wt.grad)
    assert_close(grad_b, g.sum(axis=(0, 2, 3)))
    if use_bias:
        assert_close(grad_b, bt.grad)


def test_conv2d_same_pads_extra_pixel_bottom_right():
    # A 2x2 kernel of ones with "same" sums x[i:i+2, j:j+2]: the extra pad row/col is at the end.
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    y = R.conv2d(x, np.ones((1, 1, 2, 2)), padding="same")
    assert y[0, 0, 0, 0] == 0 + 1 + 3 + 4
    assert y[0, 0, 2, 2] == 8


def test_conv2d_rejects_bad_geometry(rng):
    x = rng.standard_normal((1, 3, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        R.conv2d(x, rng.standard_normal((2, 2, 3, 3)))
    with pytest.raises(ValueError, match="larger"):
        R.conv2d(x, rng.standard_normal((2, 3, 5, 5)))
    with pytest.raises(ValueError, match="divisible"):
        R.conv2d(rng.standard_normal((1, 4, 4, 4)), rng.standard_normal((3, 2, 3, 3)), groups=2)
    with pytest.raises(ValueError, match="same"):
        R.conv2d(x, rng.standard_normal((2, 3, 3, 3)), stride=2, padding="same")


# ---------------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------------

MAX_POOL_CASES = [
    pytest.param((2, 3, 6, 8), dict(kernel_size=2), id="k2"),
    pytest.param(
        (2, 2, 7, 6), dict(kernel_size=(3, 2), stride=(2, 1), padding=1), id="k3x2-s2x1-p1"
    ),
    pytest.param((1, 2, 5, 6), dict(kernel_size=3, stride=1, padding=1), id="overlapping-k3-s1"),
    pytest.param(
        (1, 2, 9, 8),
        dict(kernel_size=3, stride=(1, 2), padding=(1, 0), dilation=(2, 3)),
        id="asym-dilation",
    ),
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
        (1, 2, 8, 7),
        dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True),
        id="ceil-dilated",
    ),
    pytest.param(
        (2, 2, 3, 4), dict(kernel_size=(5, 4), padding=(1, 0)), id="kernel-equals-padded-input"
    ),
    pytest.param((2, 3, 5, 4), dict(kernel_size=1, stride=2), id="1x1-stride2"),
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


AVG_POOL_CASES = [
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
        (1, 2, 7, 9),
        dict(kernel_size=(4, 3), stride=(3, 2), padding=(2, 1), ceil_mode=True),
        id="ceil-asym",
    ),
    pytest.param(
        (2, 2, 3, 4), dict(kernel_size=(5, 4), padding=(1, 0)), id="kernel-equals-padded-input"
    ),
    pytest.param((2, 3, 5, 4), dict(kernel_size=1, stride=2), id="1x1-stride2"),
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


# ---------------------------------------------------------------------------------------------
# Linear and activations
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("x_shape", [(5, 4), (2, 3, 4), (0, 4)], ids=["2d", "3d", "batch0"])
def test_linear_forward_backward(rng, x_shape, use_bias):
    x, w = rng.standard_normal(x_shape), rng.standard_normal((3, 4))
    b = rng.standard_normal(3) if use_bias else None
    y = R.linear(x, w, b)
    xt, wt = to_torch(x), to_torch(w)
    bt = to_torch(b) if use_bias else None
    yt = F.linear(xt, wt, bt)
    assert_close(y, yt)

    g = rng.standard_normal(y.shape)
    yt.backward(to_torch(g, grad=False))
    grad_x, grad_w, grad_b = R.linear_backward(g, x, w)
    assert_close(grad_x, xt.grad)
    assert_close(grad_w, wt.grad)
    assert_close(grad_b, g.reshape(-1, 3).sum(axis=0))
    if use_bias:
        assert_close(grad_b, bt.grad)


ACTIVATIONS = [
    pytest.param(R.relu, R.relu_backward, F.relu, id="relu"),
    pytest.param(R.leaky_relu, R.leaky_relu_backward, F.leaky_relu, id="leaky_relu-default"),
    pytest.param(
        lambda x: R.leaky_relu(x, 0.2),
        lambda g, x: R.leaky_relu_backward(g, x, negative_slope=0.2),
        lambda x: F.leaky_relu(x, 0.2),
        id="leaky_relu-0.2",
    ),
    pytest.param(R.sigmoid, R.sigmoid_backward, torch.sigmoid, id="sigmoid"),
    pytest.param(R.tanh, R.tanh_backward, torch.tanh, id="tanh"),
]


@pytest.mark.parametrize("fn, fn_backward, torch_fn", ACTIVATIONS)
def test_activation_forward_backward(rng, fn, fn_backward, torch_fn):
    x = rng.standard_normal((3, 4, 5)) * 3
    x.flat[:4] = [0.0, -0.0, 50.0, -50.0]  # the kink at 0, and saturation
    x.flat[4:6] = [800.0, -800.0]  # exp would overflow in a naive sigmoid
    y = fn(x)
    xt = to_torch(x)
    yt = torch_fn(xt)
    assert_close(y, yt)

    g = rng.standard_normal(x.shape)
    yt.backward(to_torch(g, grad=False))
    assert_close(fn_backward(g, x), xt.grad)


@pytest.mark.parametrize("fn, fn_backward, torch_fn", ACTIVATIONS)
def test_activation_nan(fn, fn_backward, torch_fn):
    # relu passes the gradient through at NaN (PyTorch masks with x <= 0, and NaN <= 0 is
    # False); leaky_relu scales it by the slope (it tests x > 0).
    x = np.array([np.nan, 1.0, -1.0])
    xt = to_torch(x)
    yt = torch_fn(xt)
    np.testing.assert_array_equal(fn(x), to_numpy(yt))
    yt.backward(torch.ones(3, dtype=torch.float64))
    np.testing.assert_array_equal(fn_backward(np.ones(3), x), xt.grad.numpy())


# ---------------------------------------------------------------------------------------------
# Batch norm and dropout
# ---------------------------------------------------------------------------------------------

BN_SHAPES = [
    pytest.param((6, 3), dict(), id="NC"),
    pytest.param((4, 3, 5), dict(momentum=0.3), id="NCL-momentum0.3"),
    pytest.param((3, 2, 4, 5), dict(eps=1e-3), id="NCHW-eps1e-3"),
    pytest.param((2, 4, 1, 1), dict(), id="NCHW-1x1-spatial"),
]


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape, kwargs", BN_SHAPES)
def test_batch_norm_forward_backward(rng, shape, kwargs, training, affine):
    channels = shape[1]
    x = rng.standard_normal(shape) * 2 + 1
    mean, var = rng.standard_normal(channels), rng.uniform(0.5, 2, channels)
    w = rng.standard_normal(channels) if affine else None
    b = rng.standard_normal(channels) if affine else None

    running_mean, running_var = mean.copy(), var.copy()
    y, cache = R.batch_norm(x, running_mean, running_var, w, b, training, **kwargs)

    # Without affine, torch gets explicit ones/zeros so it still reports their gradients.
    xt = to_torch(x)
    wt = to_torch(w if affine else np.ones(channels))
    bt = to_torch(b if affine else np.zeros(channels))
    rmt, rvt = to_torch(mean, grad=False), to_torch(var, grad=False)
    yt = F.batch_norm(xt, rmt, rvt, wt, bt, training, **kwargs)
    assert_close(y, yt)
    assert_close(running_mean, rmt)  # updated in place with the unbiased variance
    assert_close(running_var, rvt)
    if not training:
        np.testing.assert_array_equal(running_mean, mean)

    g = rng.standard_normal(shape)
    yt.backward(to_torch(g, grad=False))
    grad_x, grad_w, grad_b = R.batch_norm_backward(g, cache)
    assert_close(grad_x, xt.grad)
    assert_close(grad_w, wt.grad)
    assert_close(grad_b, bt.grad)


def test_batch_norm_training_needs_two_values_per_channel():
    with pytest.raises(ValueError, match="more than 1 value"):
        R.batch_norm(np.zeros((1, 3)), np.zeros(3), np.ones(3), None, None, True)


def test_dropout_training_mask(rng):
    x = rng.standard_normal((50, 40))
    p = 0.3
    y, mask = R.dropout(x, p, True, np.random.default_rng(7))
    expected = (np.random.default_rng(7).random(x.shape) >= p) / (1 - p)  # the documented draw
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(y, x * mask)
    assert set(np.unique(mask)) == {0.0, 1 / (1 - p)}
    assert abs((mask > 0).mean() - (1 - p)) < 0.05
    g = rng.standard_normal(x.shape)
    np.testing.assert_array_equal(R.dropout_backward(g, mask), g * mask)
    # PyTorch's dropout backward with the same mask is the same product.
    xt = to_torch(x)
    (xt * torch.from_numpy(mask)).backward(to_torch(g, grad=False))
    assert_close(R.dropout_backward(g, mask), xt.grad)


@pytest.mark.parametrize(
    "p, training", [(0.5, False), (0.0, True), (1.0, True)], ids=["eval", "p0", "p1"]
)
def test_dropout_no_random_draw(rng, p, training):
    x = rng.standard_normal((3, 4))
    gen = np.random.default_rng(3)
    state = gen.bit_generator.state
    y, mask = R.dropout(x, p, training, gen)
    assert gen.bit_generator.state == state  # the generator is only drawn from when 0 < p < 1
    expected = np.zeros_like(x) if p == 1 else np.ones_like(x)
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(y, x * expected)
    if p == 1:
        np.testing.assert_array_equal(y, F.dropout(torch.from_numpy(x), p, training).numpy())


# ---------------------------------------------------------------------------------------------
# Softmax and cross-entropy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, axis, scale",
    [((4, 7), -1, 1), ((4, 7), 0, 1), ((2, 3, 5), 1, 1), ((3, 6), -1, 1000)],
    ids=["last-axis", "axis0", "3d-axis1", "large-values"],
)
def test_softmax_log_softmax(rng, shape, axis, scale):
    x = rng.standard_normal(shape) * scale
    xt = to_torch(x, grad=False)
    assert_close(R.softmax(x, axis=axis), torch.softmax(xt, dim=axis))
    assert_close(R.log_softmax(x, axis=axis), torch.log_softmax(xt, dim=axis))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "n, c, scale", [(5, 4, 1), (1, 10, 1), (6, 3, 500)], ids=["5x4", "1x10", "large-logits"]
)
def test_cross_entropy_forward_backward(rng, n, c, scale, reduction):
    logits = rng.standard_normal((n, c)) * scale
    target = rng.integers(0, c, n)
    loss = R.cross_entropy(logits, target, reduction)
    lt = to_torch(logits)
    losst = F.cross_entropy(lt, torch.from_numpy(target), reduction=reduction)
    if reduction == "none":
        assert_close(loss, losst)
        losst.sum().backward()  # "none": each row is the gradient of its own loss
    else:
        assert type(loss) is float
        assert loss == pytest.approx(losst.item(), rel=RTOL, abs=ATOL)
        losst.backward()
    assert_close(R.cross_entropy_backward(logits, target, reduction), lt.grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_batch0(reduction):
    logits, target = np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    loss = R.cross_entropy(logits, target, reduction)
    losst = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(target), reduction=reduction)
    np.testing.assert_array_equal(loss, losst.numpy())  # mean of nothing is NaN in PyTorch
    assert R.cross_entropy_backward(logits, target, reduction).shape == (0, 3)


# ---------------------------------------------------------------------------------------------
# im2col / col2im
# ---------------------------------------------------------------------------------------------

UNFOLD_CASES = [
    pytest.param((2, 3, 5, 6), dict(kernel_size=3), id="k3"),
    pytest.param(
        (1, 2, 7, 8),
        dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 2), dilation=(2, 1)),
        id="asym-all",
    ),
    pytest.param((2, 3, 5, 5), dict(kernel_size=1, stride=2), id="1x1-stride2"),
    pytest.param(
        (1, 2, 3, 4), dict(kernel_size=(5, 4), padding=(1, 0)), id="kernel-equals-padded-input"
    ),
    pytest.param(
        (1, 1, 6, 6), dict(kernel_size=3, dilation=2, padding=2), id="overlapping-dilated"
    ),
    pytest.param((0, 2, 4, 4), dict(kernel_size=2), id="batch0"),
]


@pytest.mark.parametrize("x_shape, kwargs", UNFOLD_CASES)
def test_im2col_col2im(rng, x_shape, kwargs):
    x = rng.standard_normal(x_shape)
    cols = R.im2col(x, **kwargs)
    assert_close(cols, F.unfold(to_torch(x, grad=False), **kwargs))

    c = rng.standard_normal(cols.shape)
    folded = R.col2im(c, x_shape, **kwargs)
    assert_close(folded, F.fold(to_torch(c, grad=False), output_size=x_shape[2:], **kwargs))
    # col2im is the adjoint of im2col: <im2col(x), c> == <x, col2im(c)>.
    assert np.vdot(cols, c) == pytest.approx(np.vdot(x, folded), rel=RTOL, abs=ATOL)


def test_conv2d_equals_weight_times_im2col(rng):
    x, w = rng.standard_normal((2, 3, 6, 7)), rng.standard_normal((4, 3, 3, 2))
    kwargs = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    y = R.conv2d(x, w, **kwargs)
    cols = R.im2col(x, w.shape[2:], **kwargs)
    assert_close((w.reshape(4, -1) @ cols).reshape(y.shape), y)


# ---------------------------------------------------------------------------------------------
# dtype and independence
# ---------------------------------------------------------------------------------------------


def _float32_calls(rng):
    f = np.float32
    x4 = rng.standard_normal((2, 4, 6, 5)).astype(f)
    w = rng.standard_normal((4, 2, 3, 3)).astype(f)
    y, idx = R.max_pool2d(x4, 2)
    g = np.ones_like(y)
    x2, wl = rng.standard_normal((5, 4)).astype(f), rng.standard_normal((3, 4)).astype(f)
    _, cache = R.batch_norm(x4, np.zeros(4, f), np.ones(4, f), None, None, True)
    cols = R.im2col(x4, 2)
    return {
        "conv2d": lambda: R.conv2d(x4, w, np.zeros(4, f), padding="same", groups=2),
        "conv2d_backward": lambda: R.conv2d_backward(np.ones((2, 4, 4, 3), f), x4, w, groups=2),
        "max_pool2d": lambda: R.max_pool2d(x4, 3, 2, 1),
        "max_pool2d_backward": lambda: R.max_pool2d_backward(g, idx, x4.shape),
        "avg_pool2d": lambda: R.avg_pool2d(x4, 3, 2, 1, count_include_pad=False),
        "avg_pool2d_backward": lambda: R.avg_pool2d_backward(g, x4.shape, 2),
        "adaptive_avg_pool2d": lambda: R.adaptive_avg_pool2d(x4, 3),
        "adaptive_avg_pool2d_backward": lambda: R.adaptive_avg_pool2d_backward(g, x4.shape),
        "linear": lambda: R.linear(x2, wl, np.zeros(3, f)),
        "linear_backward": lambda: R.linear_backward(np.ones((5, 3), f), x2, wl),
        "relu": lambda: R.relu(x2),
        "relu_backward": lambda: R.relu_backward(x2, x2),
        "leaky_relu": lambda: R.leaky_relu(x2, 0.1),
        "leaky_relu_backward": lambda: R.leaky_relu_backward(x2, x2),
        "sigmoid": lambda: R.sigmoid(x2),
        "sigmoid_backward": lambda: R.sigmoid_backward(x2, x2),
        "tanh": lambda: R.tanh(x2),
        "tanh_backward": lambda: R.tanh_backward(x2, x2),
        "batch_norm": lambda: R.batch_norm(x4, np.zeros(4, f), np.ones(4, f), None, None, True),
        "batch_norm-eval": lambda: R.batch_norm(
            x4, np.zeros(4, f), np.ones(4, f), None, None, False
        ),
        "batch_norm_backward": lambda: R.batch_norm_backward(x4, cache),
        "dropout": lambda: R.dropout(x2, 0.5, True, np.random.default_rng(0)),
        "dropout_backward": lambda: R.dropout_backward(x2, x2),
        "softmax": lambda: R.softmax(x2),
        "log_softmax": lambda: R.log_softmax(x2),
        "cross_entropy-none": lambda: R.cross_entropy(x2, np.arange(5) % 4, "none"),
        "cross_entropy_backward": lambda: R.cross_entropy_backward(x2, np.arange(5) % 4),
        "im2col": lambda: R.im2col(x4, 3, 2, 1, 2),
        "col2im": lambda: R.col2im(cols, x4.shape, 2),
    }


@pytest.mark.parametrize("name", list(_float32_calls(np.random.default_rng(0))))
def test_float32_stays_float32(rng, name):
    out = _float32_calls(rng)[name]()
    arrays = [o for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, np.ndarray)]
    assert arrays
    for a in arrays:
        if a.dtype != np.int64:  # max-pool indices
            assert a.dtype == np.float32, a.dtype


def test_reference_is_independent_of_the_fast_code():
    path = pathlib.Path(R.__file__)
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    assert not any("functional" in m or "kernels" in m for m in imported), imported


def test_every_functional_name_has_a_reference():
    import fastconv.functional as fast  # the public list to mirror, read rather than copied

    names = fast.__all__
    assert sorted(R.__all__) == sorted(names)
    assert all(callable(getattr(R, name)) for name in names)
