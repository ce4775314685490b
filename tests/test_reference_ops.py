"""``fastconv.reference`` linear, activations, batch norm, dropout, softmax and cross-entropy
against PyTorch in float64.
"""

import numpy as np
import pytest
from reference_helpers import ATOL, RTOL, SEED, F, assert_close, to_numpy, to_torch, torch

from fastconv import reference as R


@pytest.fixture
def rng():
    return np.random.default_rng(SEED)


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
