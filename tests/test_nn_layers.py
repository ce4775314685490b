"""fastconv.nn layers: each against direct calls of fastconv.functional, constructor checks,
default initialisation, and what a layer keeps between forward and backward."""

import math
import tracemalloc

import numpy as np
import pytest

import fastconv.functional as F
from fastconv import nn

# ---------------------------------------------------------------------------------------------
# Each layer against the functional ops it wraps (float64, so any difference is a wiring bug)
# ---------------------------------------------------------------------------------------------


def _conv_case(**kw):
    def run(rng):
        layer = nn.Conv2d(4, 6, 3, dtype=np.float64, rng=rng, **kw)
        x = rng.standard_normal((2, 4, 9, 8))
        w = layer.weight.data
        b = None if layer.bias is None else layer.bias.data
        args = (
            kw.get("stride", 1),
            kw.get("padding", 0),
            kw.get("dilation", 1),
            kw.get("groups", 1),
        )
        y = F.conv2d(x, w, b, *args)

        def backward(g):
            gx, gw, gb = F.conv2d_backward(g, x, w, *args)
            return gx, {"weight": gw, "bias": gb} if b is not None else {"weight": gw}

        return layer, x, y, backward

    return run


def _linear_case(bias):
    def run(rng):
        layer = nn.Linear(5, 3, bias=bias, dtype=np.float64, rng=rng)
        x = rng.standard_normal((4, 5))
        w = layer.weight.data
        y = F.linear(x, w, layer.bias.data if bias else None)

        def backward(g):
            gx, gw, gb = F.linear_backward(g, x, w)
            return gx, {"weight": gw, "bias": gb} if bias else {"weight": gw}

        return layer, x, y, backward

    return run


def _stateless_case(layer_fn, shape, forward, backward):
    def run(rng):
        x = rng.standard_normal(shape)
        y = forward(x)
        return layer_fn(), x, y, lambda g: (backward(g, x, y), {})

    return run


def _maxpool_forward(x):
    return F.max_pool2d(x, 3, 2, 1, 1, True)[0]


def _maxpool_backward(g, x, y):
    _, indices = F.max_pool2d(x, 3, 2, 1, 1, True)
    return F.max_pool2d_backward(g, indices, x.shape)


def _batchnorm_case(cls, shape, training):
    def run(rng):
        layer = cls(shape[1], eps=1e-3, momentum=0.2, dtype=np.float64)
        layer.weight.data[:] = rng.uniform(0.5, 1.5, shape[1])
        layer.bias.data[:] = rng.standard_normal(shape[1])
        layer.running_mean[:] = rng.standard_normal(shape[1])
        layer.running_var[:] = rng.uniform(0.5, 2, shape[1])
        layer.train(training)
        mean, var = layer.running_mean.copy(), layer.running_var.copy()
        x = rng.standard_normal(shape) * 2 + 1
        y, cache = F.batch_norm(
            x, mean, var, layer.weight.data.copy(), layer.bias.data.copy(), training, 0.2, 1e-3
        )
        layer.expected_stats = (mean, var)  # what the layer's buffers must hold afterwards

        def backward(g):
            gx, gw, gb = F.batch_norm_backward(g, cache)
            return gx, {"weight": gw, "bias": gb}

        return layer, x, y, backward

    return run


def _dropout_case(training):
    def run(rng):
        layer = nn.Dropout(0.3, rng=7)
        layer.train(training)
        x = rng.standard_normal((3, 4, 5))
        y, mask = F.dropout(x, 0.3, training, np.random.default_rng(7))
        return layer, x, y, lambda g: (F.dropout_backward(g, mask), {})

    return run


LAYER_CASES = {
    "conv": _conv_case(),
    "conv_s2_p1_nobias": _conv_case(stride=2, padding=1, bias=False),
    "conv_dil2_groups2": _conv_case(dilation=2, groups=2, padding=(2, 1)),
    "conv_same": _conv_case(padding="same"),
    "linear": _linear_case(True),
    "linear_nobias": _linear_case(False),
    "maxpool": _stateless_case(
        lambda: nn.MaxPool2d(3, 2, 1, 1, ceil_mode=True),
        (2, 3, 9, 8),
        _maxpool_forward,
        _maxpool_backward,
    ),
    # In eval the layer computes values only; a backward still gives the same gradient.
    "maxpool_eval": _stateless_case(
        lambda: nn.MaxPool2d(3, 2, 1, 1, ceil_mode=True).eval(),
        (2, 3, 9, 8),
        _maxpool_forward,
        _maxpool_backward,
    ),
    "avgpool": _stateless_case(
        lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
        (2, 3, 9, 8),
        lambda x: F.avg_pool2d(x, 3, 2, 1, True, False),
        lambda g, x, y: F.avg_pool2d_backward(g, x.shape, 3, 2, 1, True, False),
    ),
    "adaptive_avgpool": _stateless_case(
        lambda: nn.AdaptiveAvgPool2d((3, 2)),
        (2, 3, 7, 8),
        lambda x: F.adaptive_avg_pool2d(x, (3, 2)),
        lambda g, x, y: F.adaptive_avg_pool2d_backward(g, x.shape),
    ),
    "relu": _stateless_case(nn.ReLU, (3, 4, 5), F.relu, lambda g, x, y: F.relu_backward(g, x)),
    "leaky_relu": _stateless_case(
        lambda: nn.LeakyReLU(0.2),
        (3, 4, 5),
        lambda x: F.leaky_relu(x, 0.2),
        lambda g, x, y: F.leaky_relu_backward(g, x, 0.2),
    ),
    "sigmoid": _stateless_case(
        nn.Sigmoid, (3, 4), F.sigmoid, lambda g, x, y: F.sigmoid_backward(g, x)
    ),
    "tanh": _stateless_case(nn.Tanh, (3, 4), F.tanh, lambda g, x, y: F.tanh_backward(g, x)),
    "flatten": _stateless_case(
        nn.Flatten, (2, 3, 4, 5), lambda x: x.reshape(2, -1), lambda g, x, y: g.reshape(x.shape)
    ),
    "flatten_1_2": _stateless_case(
        lambda: nn.Flatten(1, 2),
        (2, 3, 4, 5),
        lambda x: x.reshape(2, 12, 5),
        lambda g, x, y: g.reshape(x.shape),
    ),
    "dropout_train": _dropout_case(True),
    "dropout_eval": _dropout_case(False),
    "bn2d_train": _batchnorm_case(nn.BatchNorm2d, (4, 3, 5, 6), True),
    "bn2d_eval": _batchnorm_case(nn.BatchNorm2d, (4, 3, 5, 6), False),
    "bn1d_train": _batchnorm_case(nn.BatchNorm1d, (8, 5), True),
    "bn1d_3d_eval": _batchnorm_case(nn.BatchNorm1d, (4, 5, 6), False),
}


@pytest.mark.parametrize("case", LAYER_CASES.values(), ids=LAYER_CASES.keys())
def test_layer_matches_functional(case, rng):
    layer, x, y_expected, backward = case(rng)
    x_before = x.copy()
    y = layer(x)
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(y, y_expected)
    if hasattr(layer, "expected_stats"):
        np.testing.assert_array_equal(layer.running_mean, layer.expected_stats[0])
        np.testing.assert_array_equal(layer.running_var, layer.expected_stats[1])

    g = rng.standard_normal(y.shape)
    grad_x_expected, param_grads = backward(g)
    grad_x = layer.backward(g)
    np.testing.assert_array_equal(grad_x, grad_x_expected)
    np.testing.assert_array_equal(x, x_before)  # the input is never modified
    params = dict(layer.named_parameters())
    assert params.keys() == param_grads.keys()
    for name, expected in param_grads.items():
        assert params[name].grad.dtype == params[name].dtype
        np.testing.assert_array_equal(params[name].grad, expected, err_msg=name)


def test_cross_entropy_loss_matches_functional(rng):
    logits = rng.standard_normal((6, 4))
    target = rng.integers(0, 4, 6)
    for reduction in ("mean", "sum", "none"):
        crit = nn.CrossEntropyLoss(reduction)
        loss = crit(logits, target)
        np.testing.assert_array_equal(loss, F.cross_entropy(logits, target, reduction))
        grad = F.cross_entropy_backward(logits, target, reduction)
        np.testing.assert_array_equal(crit.backward(), grad)
    crit = nn.CrossEntropyLoss("mean")
    crit(logits, target)
    np.testing.assert_allclose(crit.backward(2.5), 2.5 * F.cross_entropy_backward(logits, target))
    crit = nn.CrossEntropyLoss("none")
    crit(logits, target)
    weights = rng.standard_normal(6)
    np.testing.assert_allclose(
        crit.backward(weights), weights[:, None] * F.cross_entropy_backward(logits, target, "none")
    )
    with pytest.raises(ValueError, match="grad_out"):
        crit.backward(np.ones(5))


def test_batchnorm_counts_training_batches(rng):
    bn = nn.BatchNorm2d(3)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    bn(x)
    bn(x)
    bn.eval()(x)
    assert bn.num_batches_tracked == 2
    assert bn.num_batches_tracked.dtype == np.int64


@pytest.mark.parametrize(
    "cls, shape",
    [(nn.BatchNorm2d, (2, 3, 4)), (nn.BatchNorm1d, (2, 3, 4, 4)), (nn.BatchNorm1d, (3,))],
    ids=["bn2d_3d", "bn1d_4d", "bn1d_1d"],
)
def test_batchnorm_wrong_ndim(cls, shape):
    with pytest.raises(ValueError, match=cls.__name__):
        cls(3)(np.zeros(shape, np.float32))


def test_dropout_eval_is_identity_and_seed_reproducible(rng):
    x = rng.standard_normal((4, 50)).astype(np.float32)
    a, b = nn.Dropout(0.5, rng=3), nn.Dropout(0.5, rng=3)
    np.testing.assert_array_equal(a(x), b(x))
    zeroed = (a(x) == 0).mean()
    assert 0.35 < zeroed < 0.65
    np.testing.assert_array_equal(a.eval()(x), x)


def _peak_bytes(fn, *args):
    """The result of ``fn(*args)`` and the most memory allocated while it ran (numpy reports
    its array buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        return fn(*args), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("p, training", [(0.5, False), (0.0, True)], ids=["eval", "p0"])
def test_dropout_identity_allocates_no_mask(p, training, rng):
    layer = nn.Dropout(p, rng=3).train(training)
    x = rng.standard_normal((64, 512)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    state = layer.rng.bit_generator.state
    y, peak = _peak_bytes(layer, x)
    assert y is x  # passed through, as torch.nn.Dropout does in eval
    assert peak < x.nbytes // 8  # no mask and no product were allocated
    grad, peak = _peak_bytes(layer.backward, g)
    np.testing.assert_array_equal(grad, g)
    assert peak < x.nbytes // 8
    assert layer.rng.bit_generator.state == state  # no random numbers drawn


def test_maxpool_eval_builds_no_indices(rng):
    # A permutation: no tied maxima, so the argmax is unambiguous.
    x = rng.permutation(8 * 16 * 32 * 32).reshape(8, 16, 32, 32).astype(np.float32)
    layer = nn.MaxPool2d(2)
    layer(x)  # compile the kernels outside the measurement
    layer.eval()(x)
    y, peak = _peak_bytes(layer, x)
    np.testing.assert_array_equal(y, F.max_pool2d(x, 2)[0])
    # int64 indices would take twice the float32 output's bytes on top of it.
    assert peak < 1.5 * y.nbytes
    y_train, peak_train = _peak_bytes(layer.train(), x)
    assert peak_train >= 3 * y.nbytes  # the measurement sees the indices when they are built


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_sigmoid_tanh_backward_from_saved_output(name, dtype, rng):
    """The layers keep their output and take the gradient from it; the result is the old
    formula's, computed from the input."""
    x = (3 * rng.standard_normal((6, 7))).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    x0 = x.astype(np.float64)
    if name == "sigmoid":
        layer, old = nn.Sigmoid(), F.sigmoid_backward
        s = 1 / (1 + np.exp(-x0))
        formula = g * s * (1 - s)
    else:
        layer, old = nn.Tanh(), F.tanh_backward
        formula = g * (1 - np.tanh(x0) ** 2)
    expected = old(g, x.copy())
    layer(x)
    x[...] = 0  # the layer kept its output, not its input: this changes nothing
    grad = layer.backward(g)
    assert grad.dtype == dtype
    rtol = 1e-14 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(grad, expected, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(grad, formula, rtol=rtol * 10, atol=rtol * 10)


def test_adaptive_avg_pool_none_keeps_input_size(rng):
    x = rng.standard_normal((1, 2, 5, 6))
    y = nn.AdaptiveAvgPool2d((None, 3))(x)
    np.testing.assert_array_equal(y, F.adaptive_avg_pool2d(x, (5, 3)))


BACKWARD_FIRST = {
    "Conv2d": lambda: nn.Conv2d(1, 1, 1),
    "Linear": lambda: nn.Linear(1, 1),
    "MaxPool2d": lambda: nn.MaxPool2d(2),
    "AvgPool2d": lambda: nn.AvgPool2d(2),
    "AdaptiveAvgPool2d": lambda: nn.AdaptiveAvgPool2d(1),
    "ReLU": nn.ReLU,
    "LeakyReLU": nn.LeakyReLU,
    "Sigmoid": nn.Sigmoid,
    "Tanh": nn.Tanh,
    "Flatten": nn.Flatten,
    "Dropout": nn.Dropout,
    "BatchNorm2d": lambda: nn.BatchNorm2d(1),
    "BatchNorm1d": lambda: nn.BatchNorm1d(1),
    "Sequential": lambda: nn.Sequential(nn.ReLU()),
    "Residual": lambda: nn.Residual(nn.ReLU()),
    "CrossEntropyLoss": nn.CrossEntropyLoss,
}


@pytest.mark.parametrize("name", BACKWARD_FIRST)
def test_backward_before_forward_raises(name):
    with pytest.raises(RuntimeError, match=f"{name}.backward.*before forward"):
        BACKWARD_FIRST[name]().backward(np.zeros((1, 1), np.float32))


# ---------------------------------------------------------------------------------------------
# Constructor validation
# ---------------------------------------------------------------------------------------------

BAD_ARGS = [
    ("conv_in0", lambda: nn.Conv2d(0, 4, 3), ValueError, "in_channels"),
    ("conv_out_float", lambda: nn.Conv2d(1, 4.0, 3), TypeError, "out_channels"),
    ("conv_groups_in", lambda: nn.Conv2d(3, 4, 3, groups=2), ValueError, "in_channels.*groups"),
    ("conv_groups_out", lambda: nn.Conv2d(4, 6, 3, groups=4), ValueError, "out_channels.*groups"),
    ("conv_groups0", lambda: nn.Conv2d(4, 4, 3, groups=0), ValueError, "groups"),
    ("conv_kernel0", lambda: nn.Conv2d(1, 1, 0), ValueError, "kernel_size"),
    ("conv_kernel_triple", lambda: nn.Conv2d(1, 1, (3, 3, 3)), TypeError, "kernel_size"),
    ("conv_stride0", lambda: nn.Conv2d(1, 1, 3, stride=0), ValueError, "stride"),
    ("conv_pad_neg", lambda: nn.Conv2d(1, 1, 3, padding=-1), ValueError, "padding"),
    ("conv_pad_str", lambda: nn.Conv2d(1, 1, 3, padding="full"), ValueError, "padding"),
    ("conv_same_s2", lambda: nn.Conv2d(1, 1, 3, 2, "same"), ValueError, "same.*stride"),
    ("conv_dilation0", lambda: nn.Conv2d(1, 1, 3, dilation=0), ValueError, "dilation"),
    ("conv_bias_str", lambda: nn.Conv2d(1, 1, 3, bias="yes"), TypeError, "bias"),
    ("conv_dtype_int", lambda: nn.Conv2d(1, 1, 3, dtype=np.int32), TypeError, "dtype"),
    ("conv_rng_str", lambda: nn.Conv2d(1, 1, 3, rng="seed"), TypeError, "rng"),
    ("linear_in0", lambda: nn.Linear(0, 2), ValueError, "in_features"),
    ("linear_out_neg", lambda: nn.Linear(2, -1), ValueError, "out_features"),
    ("maxpool_k0", lambda: nn.MaxPool2d(0), ValueError, "kernel_size"),
    ("maxpool_s0", lambda: nn.MaxPool2d(2, 0), ValueError, "stride"),
    ("maxpool_pad_big", lambda: nn.MaxPool2d(2, padding=2), ValueError, "padding"),
    ("maxpool_ceil_int", lambda: nn.MaxPool2d(2, ceil_mode=1), TypeError, "ceil_mode"),
    ("avgpool_pad_big", lambda: nn.AvgPool2d(3, padding=2), ValueError, "padding"),
    (
        "avgpool_cip",
        lambda: nn.AvgPool2d(3, count_include_pad=None),
        TypeError,
        "count_include_pad",
    ),
    ("adaptive_0", lambda: nn.AdaptiveAvgPool2d(0), ValueError, "output_size"),
    ("leaky_slope_str", lambda: nn.LeakyReLU("0.1"), TypeError, "negative_slope"),
    ("flatten_dim_float", lambda: nn.Flatten(1.0), TypeError, "start_dim"),
    ("dropout_p_neg", lambda: nn.Dropout(-0.1), ValueError, "p"),
    ("dropout_p_big", lambda: nn.Dropout(1.5), ValueError, "p"),
    ("bn_features0", lambda: nn.BatchNorm2d(0), ValueError, "num_features"),
    ("bn_eps0", lambda: nn.BatchNorm2d(3, eps=0), ValueError, "eps"),
    ("bn_momentum", lambda: nn.BatchNorm1d(3, momentum=2), ValueError, "momentum"),
    ("seq_not_module", lambda: nn.Sequential(nn.ReLU(), np.maximum), TypeError, "module 1"),
    ("residual_block", lambda: nn.Residual(None), TypeError, "block"),
    ("residual_shortcut", lambda: nn.Residual(nn.ReLU(), 3), TypeError, "shortcut"),
    ("ce_reduction", lambda: nn.CrossEntropyLoss("avg"), ValueError, "reduction"),
]


@pytest.mark.parametrize(
    "make, error, match", [c[1:] for c in BAD_ARGS], ids=[c[0] for c in BAD_ARGS]
)
def test_constructor_validation(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_flatten_dims_checked_at_forward():
    with pytest.raises(ValueError, match="start_dim"):
        nn.Flatten(3)(np.zeros((2, 3), np.float32))


# ---------------------------------------------------------------------------------------------
# Default initialisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, fan_in",
    [
        (lambda rng: nn.Conv2d(32, 64, 3, rng=rng), 32 * 9),
        (lambda rng: nn.Conv2d(8, 16, (3, 5), groups=4, rng=rng), 2 * 15),
        (lambda rng: nn.Linear(3136, 128, rng=rng), 3136),
    ],
    ids=["conv", "conv_groups", "linear"],
)
def test_default_init_bounds(make, fan_in):
    layer = make(np.random.default_rng(0))
    bound = 1 / math.sqrt(fan_in)
    w, b = layer.weight.data, layer.bias.data
    assert w.dtype == np.float32 and b.dtype == np.float32
    # U(-bound, bound): inside the bound, reaching close to it, with the uniform's std.
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.98 * bound
    assert abs(w.mean()) < 4 * bound / math.sqrt(3 * w.size)  # 4 standard errors
    np.testing.assert_allclose(w.std(), bound / math.sqrt(3), rtol=0.05)
    assert np.abs(b).max() <= bound
    again = make(np.random.default_rng(0))
    np.testing.assert_array_equal(again.weight.data, w)  # a seed reproduces the init


def test_batchnorm_init():
    bn = nn.BatchNorm2d(3)
    sd = bn.state_dict()
    np.testing.assert_array_equal(sd["weight"], 1)
    np.testing.assert_array_equal(sd["bias"], 0)
    np.testing.assert_array_equal(sd["running_mean"], 0)
    np.testing.assert_array_equal(sd["running_var"], 1)
    assert sd["num_batches_tracked"] == 0
