"""fastconv.nn machinery: Parameter, gradient accumulation, registration and dotted names,
modes, state dict, dtype conversion, repr and the containers."""

import copy
from collections import OrderedDict

import numpy as np
import pytest

import fastconv
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


def test_accumulate_keeps_a_fresh_gradient_and_copies_a_view():
    from fastconv.nn.module import _accumulate

    p = nn.Parameter(np.zeros((2, 3)))
    fresh = np.ones((2, 3))
    _accumulate(p, fresh)
    assert p.grad is fresh  # no copy: a functional backward returns a new array each time
    _accumulate(p, np.ones((2, 3)))
    np.testing.assert_array_equal(p.grad, 2)

    q = nn.Parameter(np.zeros(3))
    owner = np.arange(6.0).reshape(2, 3)
    _accumulate(q, owner[1])  # a view of something else: copied
    assert not np.shares_memory(q.grad, owner)
    owner[:] = -1
    np.testing.assert_array_equal(q.grad, [3, 4, 5])

    r = nn.Parameter(np.zeros(3, np.float32))
    _accumulate(r, np.ones(3))  # another dtype: converted
    assert r.grad.dtype == np.float32


# Every layer with parameters, on each convolution path (direct for depthwise, Winograd for 3x3
# stride 1 with >= 16 channels, GEMM otherwise) and with a batch of one (where a bias gradient
# is a sum over a single row).
PARAM_LAYERS = {
    "conv_gemm": (lambda: nn.Conv2d(3, 5, 3, stride=2, dtype=np.float64, rng=0), (2, 3, 7, 7)),
    "conv_direct": (
        lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4, dtype=np.float64, rng=0),
        (2, 4, 5, 5),
    ),
    "conv_winograd": (
        lambda: nn.Conv2d(16, 16, 3, padding=1, dtype=np.float64, rng=0),
        (2, 16, 6, 6),
    ),
    "conv_n1_1x1": (lambda: nn.Conv2d(3, 2, 3, dtype=np.float64, rng=0), (1, 3, 3, 3)),
    "linear": (lambda: nn.Linear(5, 3, dtype=np.float64, rng=0), (4, 2, 5)),
    "linear_n1": (lambda: nn.Linear(5, 3, dtype=np.float64, rng=0), (1, 5)),
    "bn2d": (lambda: nn.BatchNorm2d(3, dtype=np.float64), (4, 3, 2, 2)),
    "bn1d": (lambda: nn.BatchNorm1d(3, dtype=np.float64), (4, 3)),
}


@pytest.mark.parametrize("name", PARAM_LAYERS)
def test_kept_gradients_alias_nothing(name, rng):
    """_accumulate keeps the functional backward's arrays: over two backwards (different
    inputs), and with other calls of the same ops in between, each parameter's gradient is
    the sum of both, and writing to it or to the arrays a backward returned changes only that
    array."""
    make, shape = PARAM_LAYERS[name]
    layer = make()
    initial = copy.deepcopy(layer)

    def grads_of_one_step(x, g):
        clone = copy.deepcopy(initial)  # runs the same functional ops again
        clone(x)
        clone.backward(g)
        return {n: p.grad.copy() for n, p in clone.named_parameters()}

    xs = [rng.standard_normal(shape) for _ in range(2)]
    with fastconv.no_grad():  # only the output's shape: a forward no backward follows
        out_shape = layer(xs[0]).shape
    gs = [rng.standard_normal(out_shape) for _ in range(2)]
    layer(xs[0])
    gx0 = layer.backward(gs[0])
    expected = grads_of_one_step(xs[0], gs[0])
    for n, p in layer.named_parameters():
        np.testing.assert_array_equal(p.grad, expected[n], err_msg=n)
    layer(xs[1])
    gx1 = layer.backward(gs[1])
    second = grads_of_one_step(xs[1], gs[1])
    for n, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, expected[n] + second[n], rtol=1e-13, err_msg=n)
        expected[n] += second[n]
    returned = [gx0, gx1, *xs, *gs]
    snapshot = [a.copy() for a in returned]

    layer.zero_grad(set_to_none=False)  # writes into every kept gradient
    for a, b in zip(returned, snapshot, strict=True):
        np.testing.assert_array_equal(a, b)
    for n, p in layer.named_parameters():
        p.grad += expected[n]
    for a in returned:
        a[...] = np.nan
    for n, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, expected[n], rtol=1e-13, err_msg=n)


def test_mixed_dtypes_raise_type_error(rng):
    net = _small_net(np.float32)
    with pytest.raises(TypeError, match="float64"):
        net(rng.standard_normal((1, 2, 6, 6)))


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
