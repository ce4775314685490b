"""fastconv.nn: each layer against direct calls of fastconv.functional, whole networks against
PyTorch (outputs, loss, every gradient, state_dict keys, repr), and the Module machinery."""

import copy
import math
from collections import OrderedDict

import numpy as np
import pytest

import fastconv.functional as F
from fastconv import gradcheck, nn

# ---------------------------------------------------------------------------------------------
# Parameter
# ---------------------------------------------------------------------------------------------


def test_parameter_holds_data_and_no_grad():
    p = nn.Parameter(np.zeros((3, 2), np.float32))
    assert p.grad is None
    assert p.shape == (3, 2)
    assert p.dtype == np.float32
    assert repr(p) == "Parameter(shape=(3, 2), dtype=float32, grad=None)"


def test_parameter_refuses_non_arrays():
    with pytest.raises(TypeError, match="data"):
        nn.Parameter([1.0, 2.0])


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
        lambda: nn.MaxPool2d(3, 2, 1, 1, True), (2, 3, 9, 8), _maxpool_forward, _maxpool_backward
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


def test_adaptive_avg_pool_none_keeps_input_size(rng):
    x = rng.standard_normal((1, 2, 5, 6))
    y = nn.AdaptiveAvgPool2d((None, 3))(x)
    np.testing.assert_array_equal(y, F.adaptive_avg_pool2d(x, (5, 3)))


# ---------------------------------------------------------------------------------------------
# Gradient accumulation, zero_grad, backward before forward
# ---------------------------------------------------------------------------------------------


def _small_net(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, dtype=dtype, rng=rng),
        nn.BatchNorm2d(4, dtype=dtype),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 5, dtype=dtype, rng=rng),
    )


def test_backward_accumulates_and_zero_grad_clears(rng):
    net = _small_net(np.float64)
    x = rng.standard_normal((3, 2, 6, 6))
    g = rng.standard_normal((3, 5))
    net(x)
    net.backward(g)
    once = {name: p.grad.copy() for name, p in net.named_parameters()}
    net(x)
    net.backward(g)
    for name, p in net.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * once[name], rtol=1e-12, err_msg=name)

    net.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net(x)
    net.backward(g)
    for name, p in net.named_parameters():
        np.testing.assert_allclose(p.grad, once[name], rtol=1e-12, err_msg=name)


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


def test_mixed_dtypes_raise_type_error(rng):
    net = _small_net(np.float32)
    with pytest.raises(TypeError, match="float64"):
        net(rng.standard_normal((1, 2, 6, 6)))


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
# Module machinery: registration, names, modes, state dict, dtype, repr, containers
# ---------------------------------------------------------------------------------------------


class TwoBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(np.ones(3, np.float32))
        self.features = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
        self.register_buffer("step", np.zeros((), np.int64))
        self.head = nn.Linear(3, 2, bias=False)
        self.note = "plain attributes are not registered"


def test_registration_and_dotted_names():
    m = TwoBranch()
    assert [n for n, _ in m.named_parameters()] == [
        "scale",
        "features.0.weight",
        "features.0.bias",
        "features.1.weight",
        "features.1.bias",
        "head.weight",
    ]
    assert list(m.state_dict()) == [
        "scale",
        "step",
        "features.0.weight",
        "features.0.bias",
        "features.1.weight",
        "features.1.bias",
        "features.1.running_mean",
        "features.1.running_var",
        "features.1.num_batches_tracked",
        "head.weight",
    ]
    assert [n for n, _ in m.named_children()] == ["features", "head"]
    assert [n for n, _ in m.named_modules()] == ["", "features", "features.0", "features.1", "head"]
    assert m.head.bias is None and m.note.startswith("plain")
    with pytest.raises(TypeError, match="parameter 'scale'"):
        m.scale = np.ones(3, np.float32)
    m.scale = None
    assert "scale" not in m.state_dict()
    del m.head
    assert not any(k.startswith("head") for k in m.state_dict())
    with pytest.raises(AttributeError, match="head"):
        m.head  # noqa: B018


def test_assigning_before_init_is_explained():
    class Forgetful(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.zeros(1))

    with pytest.raises(AttributeError, match="super"):
        Forgetful()


def test_shared_parameters_listed_once():
    a = nn.Linear(2, 2)
    b = nn.Linear(2, 2)
    b.weight = a.weight
    m = nn.Sequential(a, b)
    assert [n for n, _ in m.named_parameters()] == ["0.weight", "0.bias", "1.bias"]
    assert len(m.state_dict()) == 4


def test_train_eval_recursive():
    net = nn.Sequential(nn.Residual(nn.Sequential(nn.Dropout(), nn.BatchNorm1d(2))), nn.ReLU())
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    with pytest.raises(TypeError, match="mode"):
        net.train("no")


def test_state_dict_is_a_copy():
    net = _small_net()
    sd = net.state_dict()
    net[0].weight.data += 1
    assert not np.array_equal(sd["0.weight"], net[0].weight.data)


def test_load_state_dict_round_trip_keeps_arrays_and_dtype():
    src, dst = _small_net(seed=1), _small_net(seed=2)
    weight = dst[0].weight.data
    sd64 = {
        k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in src.state_dict().items()
    }
    result = dst.load_state_dict(sd64)
    assert result == ([], []) and result.missing_keys == []
    assert dst[0].weight.data is weight  # copied in place: optimisers keep working
    assert weight.dtype == np.float32
    for k, v in src.state_dict().items():
        np.testing.assert_array_equal(dst.state_dict()[k], v, err_msg=k)


def test_load_state_dict_errors_name_the_key():
    net = _small_net()
    sd = net.state_dict()

    missing = dict(sd)
    del missing["5.bias"]
    with pytest.raises(ValueError, match=r"missing key\(s\): '5.bias'"):
        net.load_state_dict(missing)

    unexpected = dict(sd, **{"6.weight": np.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected key\(s\): '6.weight'"):
        net.load_state_dict(unexpected)

    misshaped = dict(sd, **{"1.running_var": np.ones(5, np.float32)})
    with pytest.raises(ValueError, match=r"size mismatch for '1.running_var'.*\(5,\).*\(4,\)"):
        net.load_state_dict(misshaped)
    with pytest.raises(ValueError, match="size mismatch for '1.running_var'"):
        net.load_state_dict(misshaped, strict=False)  # shapes are checked even when not strict

    wrong_kind = dict(sd, **{"0.bias": sd["0.bias"].astype(np.complex64)})
    with pytest.raises(TypeError, match="'0.bias'.*complex64"):
        net.load_state_dict(wrong_kind)
    objects = dict(sd, **{"0.bias": np.array([None] * 4, dtype=object)})
    with pytest.raises(TypeError, match="'0.bias'"):
        net.load_state_dict(objects)
    with pytest.raises(TypeError, match="state_dict"):
        net.load_state_dict([("0.bias", sd["0.bias"])])

    # Every failure above left the module as it was.
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, sd[k], err_msg=k)

    result = net.load_state_dict(dict(missing, extra=np.zeros(1)), strict=False)
    assert result.missing_keys == ["5.bias"] and result.unexpected_keys == ["extra"]


def test_num_batches_tracked_is_optional():
    net = _small_net()
    sd = net.state_dict()
    del sd["1.num_batches_tracked"]
    assert net.load_state_dict(sd) == ([], [])


def test_to_double_converts_floats_only(rng):
    net = _small_net()
    net(rng.standard_normal((2, 2, 6, 6)).astype(np.float32))
    net.backward(np.ones((2, 5), np.float32))
    params = list(net.parameters())
    assert net.double() is net
    assert list(net.parameters()) == params  # the same Parameter objects
    assert all(p.dtype == np.float64 and p.grad.dtype == np.float64 for p in params)
    assert net[1].running_var.dtype == np.float64
    assert net[1].num_batches_tracked.dtype == np.int64
    with pytest.raises(RuntimeError, match="before forward"):
        net.backward(np.ones((2, 5)))  # the float32 cache was dropped
    assert net(rng.standard_normal((2, 2, 6, 6))).dtype == np.float64
    assert net.float()[0].weight.dtype == np.float32
    with pytest.raises(TypeError, match="dtype"):
        net.to(np.int64)


def test_sequential_container_protocol():
    layers = [nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)]
    seq = nn.Sequential(*layers)
    assert len(seq) == 3
    assert list(seq) == layers
    assert seq[0] is layers[0] and seq[-1] is layers[2]
    tail = seq[1:]
    assert isinstance(tail, nn.Sequential) and list(tail) == layers[1:]
    assert list(tail.state_dict()) == ["2.weight", "2.bias"]  # slices keep the names
    with pytest.raises(IndexError):
        seq[3]
    named = nn.Sequential(OrderedDict(fc=nn.Linear(2, 2), act=nn.ReLU()))
    assert list(named.state_dict()) == ["fc.weight", "fc.bias"]
    assert named.fc is named[0]


def test_reused_instance_is_refused():
    relu = nn.ReLU()
    with pytest.raises(ValueError, match="same ReLU instance"):
        nn.Sequential(nn.Linear(2, 2), relu, nn.Linear(2, 2), relu)
    block = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="same Linear instance"):
        nn.Residual(block, block)


def test_residual_shape_mismatch_is_explained(rng):
    res = nn.Residual(nn.Conv2d(2, 3, 1))
    with pytest.raises(ValueError, match="shortcut"):
        res(rng.standard_normal((1, 2, 4, 4)).astype(np.float32))


def test_residual_gradcheck_float64(rng):
    """Finite differences through a whole residual network, input gradient."""
    rng_init = np.random.default_rng(5)
    net = nn.Sequential(
        nn.Residual(
            nn.Sequential(
                nn.Conv2d(2, 2, 3, padding=1, rng=rng_init),
                nn.BatchNorm2d(2),
                nn.Tanh(),
                nn.Conv2d(2, 2, 3, padding=1, rng=rng_init),
            )
        ),
        nn.Residual(
            nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1, rng=rng_init), nn.LeakyReLU(0.1)),
            nn.Conv2d(2, 3, 1, stride=2, rng=rng_init),
        ),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Sigmoid(),
        nn.Linear(3, 2, rng=rng_init),
    ).double()
    x = rng.standard_normal((2, 2, 4, 4))
    assert gradcheck(lambda x: (net(x), net.backward), [x], atol=1e-6, rtol=1e-5)


def test_repr_nested():
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding="same", bias=False),
        nn.Residual(nn.ReLU()),
        nn.CrossEntropyLoss("sum"),
    )
    assert repr(net) == (
        "Sequential(\n"
        "  (0): Conv2d(1, 2, kernel_size=(3, 3), stride=(1, 1), padding=same, bias=False)\n"
        "  (1): Residual(\n"
        "    (block): ReLU()\n"
        "  )\n"
        "  (2): CrossEntropyLoss(reduction='sum')\n"
        ")"
    )


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


# ---------------------------------------------------------------------------------------------
# PyTorch parity of whole networks
# ---------------------------------------------------------------------------------------------


def _lenet(lib, **kw):
    return lib.Sequential(
        lib.Conv2d(1, 32, 3, padding=1, **kw),
        lib.ReLU(),
        lib.MaxPool2d(2),
        lib.Conv2d(32, 64, 3, padding=1, **kw),
        lib.ReLU(),
        lib.MaxPool2d(2),
        lib.Flatten(),
        lib.Linear(3136, 128, **kw),
        lib.ReLU(),
        lib.Linear(128, 10, **kw),
    )


def _bn_net(lib, **kw):
    return lib.Sequential(
        lib.Conv2d(1, 32, 3, padding=1, **kw),
        lib.BatchNorm2d(32, **kw),
        lib.ReLU(),
        lib.MaxPool2d(2),
        lib.Conv2d(32, 64, 3, padding=1, **kw),
        lib.BatchNorm2d(64, **kw),
        lib.ReLU(),
        lib.MaxPool2d(2),
        lib.Flatten(),
        lib.Dropout(0.25),
        lib.Linear(3136, 128, **kw),
        lib.ReLU(),
        lib.Linear(128, 10, **kw),
    )


def _res_net(lib, torch=None, **kw):
    """Two residual stages (identity shortcut, then a strided 1x1 conv shortcut) + head."""
    if torch is None:
        residual = nn.Residual
    else:

        class TorchResidual(torch.nn.Module):
            def __init__(self, block, shortcut=None):
                super().__init__()
                self.block = block
                self.shortcut = shortcut

            def forward(self, x):
                return self.block(x) + (x if self.shortcut is None else self.shortcut(x))

        residual = TorchResidual

    def block(c_in, c_out, stride):
        return lib.Sequential(
            lib.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False, **kw),
            lib.BatchNorm2d(c_out, **kw),
            lib.ReLU(),
            lib.Conv2d(c_out, c_out, 3, padding=1, bias=False, **kw),
            lib.BatchNorm2d(c_out, **kw),
        )

    return lib.Sequential(
        lib.Conv2d(1, 8, 3, padding=1, **kw),
        lib.ReLU(),
        residual(block(8, 8, 1)),
        lib.ReLU(),
        residual(
            block(8, 16, 2),
            lib.Sequential(
                lib.Conv2d(8, 16, 1, stride=2, bias=False, **kw), lib.BatchNorm2d(16, **kw)
            ),
        ),
        lib.ReLU(),
        lib.AdaptiveAvgPool2d(1),
        lib.Flatten(),
        lib.Linear(16, 10, **kw),
    )


NETWORKS = {
    "lenet": lambda lib, torch, **kw: _lenet(lib, **kw),
    "bn": lambda lib, torch, **kw: _bn_net(lib, **kw),
    "residual": lambda lib, torch, **kw: _res_net(lib, torch, **kw),
}


def _torch_and_fastconv(torch, name, dtype):
    torch.manual_seed(0)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    tnet = NETWORKS[name](torch.nn, torch, dtype=tdtype)
    net = NETWORKS[name](nn, None, dtype=dtype)
    # Non-trivial BN statistics and affine parameters, so eval mode tests them.
    with torch.no_grad():
        for m in tnet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2)
    result = net.load_state_dict({k: v.detach().numpy() for k, v in tnet.state_dict().items()})
    assert result == ([], [])
    return tnet, net


def _torch_mask(torch, mask):
    class Mask(torch.nn.Module):
        def forward(self, x):
            return x * torch.from_numpy(mask)

    return Mask()


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", ["lenet", "bn", "residual"])
def test_network_matches_torch(name, mode, dtype):
    torch = pytest.importorskip("torch")
    tnet, net = _torch_and_fastconv(torch, name, dtype)
    if name == "bn" and mode == "train":
        # Dropout(0.25) is random: seed fastconv's layer, replay its mask and apply that mask
        # in PyTorch instead of torch's own dropout.
        net[9].rng = np.random.default_rng(11)
        mask = F.dropout(np.ones((4, 3136), dtype), 0.25, True, np.random.default_rng(11))[1]
        tnet[9] = _torch_mask(torch, mask)
    tnet.train(mode == "train")
    net.train(mode == "train")

    rng = np.random.default_rng(42)
    x = rng.standard_normal((4, 1, 28, 28)).astype(dtype)
    target = rng.integers(0, 10, 4)
    tx = torch.tensor(x, requires_grad=True)
    tlogits = tnet(tx)
    tloss = torch.nn.functional.cross_entropy(tlogits, torch.tensor(target))
    tloss.backward()

    crit = nn.CrossEntropyLoss()
    logits = net(x)
    loss = crit(logits, target)
    grad_x = net.backward(crit.backward())

    rtol, atol = (1e-8, 1e-10) if dtype == np.float64 else (1e-4, 1e-5)

    def close(actual, expected, what):
        expected = expected.detach().numpy() if hasattr(expected, "detach") else expected
        assert actual.dtype == dtype, what
        scale = max(float(np.abs(expected).max()), 1.0)
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=what)

    close(logits, tlogits, "logits")
    assert loss == pytest.approx(tloss.item(), rel=rtol)
    close(grad_x, tx.grad, "grad of the input")
    tparams = dict(tnet.named_parameters())
    assert [n for n, _ in net.named_parameters()] == list(tparams)
    for pname, p in net.named_parameters():
        close(p.grad, tparams[pname].grad, f"grad of {pname}")
    tstate = tnet.state_dict()
    for key, value in net.state_dict().items():  # running statistics after the step
        if value.dtype.kind == "f":
            close(value, tstate[key], key)
        else:
            np.testing.assert_array_equal(value, tstate[key].numpy(), err_msg=key)


@pytest.mark.parametrize("name", ["lenet", "bn", "residual"])
def test_state_dict_keys_shapes_dtypes_match_torch(name):
    torch = pytest.importorskip("torch")
    tnet = NETWORKS[name](torch.nn, torch)
    net = NETWORKS[name](nn, None)
    tstate = tnet.state_dict()
    state = net.state_dict()
    assert list(state) == list(tstate)
    for key, value in state.items():
        assert value.shape == tuple(tstate[key].shape), key
        assert value.dtype == tstate[key].numpy().dtype, key
    # ... so that PyTorch loads a fastconv state dict strictly too.
    tnet.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})


@pytest.mark.parametrize("name", ["lenet", "bn"])
def test_repr_matches_torch(name):
    torch = pytest.importorskip("torch")
    expected = repr(NETWORKS[name](torch.nn, torch))
    # Recent PyTorch lists BatchNorm's ``bias`` switch; fastconv's BatchNorm always has a bias.
    expected = expected.replace("affine=True, bias=True,", "affine=True,")
    assert repr(NETWORKS[name](nn, None)) == expected


def test_default_init_matches_torch_bounds():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tnet, net = _lenet(torch.nn), _lenet(nn, rng=np.random.default_rng(0))
    tweights = {n: p for n, p in tnet.named_parameters() if n.endswith("weight")}
    for key, value in net.state_dict().items():
        expected = tnet.state_dict()[key].numpy()
        # Both U(-b, b) with b = 1/sqrt(fan_in) of the layer's weight.
        layer = key.rsplit(".", 1)[0]
        bound = 1 / math.sqrt(np.prod(tweights[f"{layer}.weight"].shape[1:]))
        assert np.abs(expected).max() <= bound and np.abs(value).max() <= bound, key
        if value.size >= 1000:  # enough samples for the statistics to agree closely
            np.testing.assert_allclose(
                np.abs(value).max(), np.abs(expected).max(), rtol=0.01, err_msg=key
            )
            np.testing.assert_allclose(value.std(), expected.std(), rtol=0.05, err_msg=key)


def test_deepcopy_gives_an_independent_model():
    net = _small_net()
    clone = copy.deepcopy(net)
    net[0].weight.data += 1
    assert clone[0].weight is not net[0].weight
    assert not np.array_equal(clone[0].weight.data, net[0].weight.data)
    assert list(clone.state_dict()) == list(net.state_dict())


@pytest.mark.parametrize(
    "pool_args",
    [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)],
    ids=["k2", "k3_s2_p1_ceil"],
)
def test_sequential_runs_relu_after_maxpool_with_identical_results(pool_args):
    """Sequential swaps ReLU -> MaxPool2d (cheaper); values and gradients must not change."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 9, 8))
    x[0, 0] = -np.abs(x[0, 0])  # windows whose max is negative: ReLU zeroes them
    x[1, 1, :3, :3] = 0.0  # ties at zero
    net = nn.Sequential(nn.ReLU(), nn.MaxPool2d(**pool_args), nn.ReLU(), nn.MaxPool2d(2))
    assert [type(m).__name__ for m in net._run_order()] == [
        "MaxPool2d",
        "ReLU",
        "MaxPool2d",
        "ReLU",
    ]
    y = net(x)
    g = rng.standard_normal(y.shape)
    grad = net.backward(g)

    # the literal order, layer by layer through the functional ops
    h1 = F.relu(x)
    h2, i2 = F.max_pool2d(h1, **pool_args)
    h3 = F.relu(h2)
    want, i4 = F.max_pool2d(h3, 2)
    g3 = F.max_pool2d_backward(g, i4, h3.shape)
    g1 = F.max_pool2d_backward(F.relu_backward(g3, h2), i2, h1.shape)
    want_grad = F.relu_backward(g1, x)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_allclose(grad, want_grad, rtol=0, atol=0)


def test_short_real_training_run_drives_the_loss_down():
    """60 SGD steps of a small CNN on real FashionMNIST images (skipped without the data)."""
    from fastconv import datasets, optim

    try:
        images, labels = datasets.fashion_mnist("train", download=False)
    except (FileNotFoundError, RuntimeError) as err:
        pytest.skip(f"FashionMNIST not installed: {err}")
    x = ((images[:3840] / 255.0 - 0.2860) / 0.3530).astype(np.float32)[:, None]
    y = labels[:3840]
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, rng=0),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 14 * 14, 10, rng=1),
    )
    crit = nn.CrossEntropyLoss()
    opt = optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for xb, yb in datasets.DataLoader(x, y, batch_size=64, seed=0):
        opt.zero_grad()
        losses.append(crit(net(xb), yb))
        net.backward(crit.backward())
        opt.step()
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    net.eval()
    accuracy = np.mean(net(x[:1000]).argmax(axis=1) == y[:1000])
    assert accuracy > 0.7
