"""fastconv.init: torch.nn.init's formulas, filled in place into NumPy arrays."""

import math

import numpy as np
import pytest

from fastconv import init

# A large conv weight (out, in, kH, kW) so sample statistics are within ~1% of the formulas.
BIG = (256, 64, 5, 5)  # fan_in = 64 * 25 = 1600, fan_out = 256 * 25 = 6400; 409,600 values


class Holder:
    """Stand-in for fastconv.nn.Parameter: only .data matters to init."""

    def __init__(self, data):
        self.data = data
        self.grad = None


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize(
    "shape, fans",
    [
        ((10, 20), (20, 10)),  # linear (out_features, in_features)
        ((8, 3, 5, 5), (75, 200)),  # conv OIHW
        ((16, 4, 3, 1), (12, 48)),
        ((6, 2, 3, 3, 3), (54, 162)),
    ],
    ids=["linear", "conv", "conv-3x1", "conv3d"],
)
def test_fans(torch, shape, fans):
    assert init._calculate_fan_in_and_fan_out(np.empty(shape)) == fans
    assert torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape)) == fans
    assert init._calculate_fan_in_and_fan_out(Holder(np.empty(shape))) == fans


def test_fans_need_two_dims():
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init._calculate_fan_in_and_fan_out(np.empty(5))
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init.kaiming_uniform_(np.empty(5))


@pytest.mark.parametrize(
    "nonlinearity, param",
    [
        ("linear", None),
        ("conv2d", None),
        ("conv_transpose2d", None),
        ("sigmoid", None),
        ("tanh", None),
        ("relu", None),
        ("leaky_relu", None),
        ("leaky_relu", 0.2),
        ("leaky_relu", math.sqrt(5)),
        ("leaky_relu", 0),
        ("selu", None),
    ],
)
def test_gain_matches_torch(torch, nonlinearity, param):
    want = torch.nn.init.calculate_gain(nonlinearity, param)
    assert init.calculate_gain(nonlinearity, param) == pytest.approx(want, rel=1e-15)


def test_gain_errors():
    with pytest.raises(ValueError, match="nonlinearity"):
        init.calculate_gain("swish")
    with pytest.raises(ValueError, match="negative_slope"):
        init.calculate_gain("leaky_relu", "0.1")


def _gain(nonlinearity, a):
    return init.calculate_gain(nonlinearity, a)


@pytest.mark.parametrize(
    "name, kwargs, bound, std",
    [
        ("uniform_", dict(a=-0.5, b=1.5), (-0.5, 1.5), 2 / math.sqrt(12)),
        ("normal_", dict(mean=0.3, std=0.2), None, 0.2),
        ("xavier_uniform_", dict(), math.sqrt(6 / 8000), math.sqrt(2 / 8000)),
        ("xavier_uniform_", dict(gain=2.0), 2 * math.sqrt(6 / 8000), 2 * math.sqrt(2 / 8000)),
        ("xavier_normal_", dict(gain=5 / 3), None, 5 / 3 * math.sqrt(2 / 8000)),
        ("kaiming_uniform_", dict(), _gain("leaky_relu", 0) * math.sqrt(3 / 1600), None),
        ("kaiming_uniform_", dict(a=math.sqrt(5)), 1 / math.sqrt(1600), None),
        ("kaiming_uniform_", dict(mode="fan_out", nonlinearity="relu"), math.sqrt(6 / 6400), None),
        ("kaiming_normal_", dict(nonlinearity="relu"), None, math.sqrt(2 / 1600)),
        ("kaiming_normal_", dict(a=0.1, mode="fan_out"), None, _gain("leaky_relu", 0.1) / 80),
    ],
    ids=[
        "uniform",
        "normal",
        "xavier-uniform",
        "xavier-uniform-gain",
        "xavier-normal",
        "kaiming-uniform",
        "kaiming-uniform-sqrt5",
        "kaiming-uniform-fan-out",
        "kaiming-normal",
        "kaiming-normal-fan-out",
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_statistics(name, kwargs, bound, std, dtype):
    array = np.full(BIG, np.nan, dtype=dtype)
    out = getattr(init, name)(array, **kwargs, rng=np.random.default_rng(0))
    assert out is array and array.dtype == dtype
    assert not np.isnan(array).any()
    mean = kwargs.get("mean", 0.0)
    if bound is not None:  # uniform on [lo, hi)
        lo, hi = bound if isinstance(bound, tuple) else (-bound, bound)
        assert lo <= array.min() < lo + 1e-3 * (hi - lo)
        assert hi - 1e-3 * (hi - lo) < array.max() <= hi
        mean = (lo + hi) / 2
        std = (hi - lo) / math.sqrt(12)
    assert abs(array.mean(dtype=np.float64) - mean) < 0.01 * std
    assert array.std(dtype=np.float64) == pytest.approx(std, rel=0.01)


@pytest.mark.parametrize("name", ["kaiming_uniform_", "kaiming_normal_", "xavier_normal_"])
def test_same_seed_same_values_in_both_dtypes(name):
    fill = getattr(init, name)
    a64 = fill(np.empty((6, 3, 3, 3)), rng=np.random.default_rng(7))
    a32 = fill(np.empty((6, 3, 3, 3), dtype=np.float32), rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a32, a64.astype(np.float32))


def test_manual_seed_reproducible():
    init.manual_seed(123)
    first = init.kaiming_uniform_(np.empty((4, 5)))
    init.manual_seed(123)
    second = init.kaiming_uniform_(np.empty((4, 5)))
    third = init.kaiming_uniform_(np.empty((4, 5)))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(second, third)
    generator = init.manual_seed(5)
    assert init.get_rng() is generator


def test_accepts_objects_with_data():
    holder = Holder(np.zeros((3, 4), dtype=np.float32))
    data = holder.data
    assert init.xavier_uniform_(holder, rng=np.random.default_rng(0)) is holder
    assert holder.data is data and data.dtype == np.float32
    assert np.all(data != 0)
    assert init.zeros_(holder) is holder
    np.testing.assert_array_equal(data, 0)


def test_in_place_on_a_view():
    base = np.zeros((4, 6))
    view = base[:, ::2]
    init.ones_(view)
    init.normal_(view[:2], rng=np.random.default_rng(0))
    np.testing.assert_array_equal(base[:, 1::2], 0)
    np.testing.assert_array_equal(base[2:, ::2], 1)
    assert np.all(base[:2, ::2] != 1)


def test_constant_zeros_ones():
    array = np.empty((2, 3), dtype=np.float32)
    assert init.constant_(array, 0.25) is array
    np.testing.assert_array_equal(array, 0.25)
    init.ones_(array)
    np.testing.assert_array_equal(array, 1)
    init.zeros_(array)
    np.testing.assert_array_equal(array, 0)
    assert array.dtype == np.float32


def test_empty_arrays_are_left_alone():
    for fill in (init.kaiming_uniform_, init.kaiming_normal_, init.xavier_uniform_):
        empty = np.empty((0, 3, 3, 3))
        assert fill(empty) is empty


def test_errors():
    with pytest.raises(ValueError, match="mode"):
        init.kaiming_uniform_(np.empty((3, 3)), mode="fan_avg")
    with pytest.raises(ValueError, match="nonlinearity"):
        init.kaiming_normal_(np.empty((3, 3)), nonlinearity="gelu")
    with pytest.raises(TypeError, match="rng"):
        init.uniform_(np.empty(3), rng="0")
    with pytest.raises(TypeError, match="rng"):
        init.uniform_(np.empty(3), rng=True)
    with pytest.raises(TypeError, match="floating dtype"):
        init.normal_(np.zeros(3, dtype=np.int64))
    with pytest.raises(TypeError, match="array"):
        init.zeros_([0.0, 1.0])
    with pytest.raises(ValueError, match="std"):
        init.normal_(np.empty(3), std=-1.0)
    with pytest.raises(ValueError, match="a <= b"):
        init.uniform_(np.empty(3), a=1.0, b=0.0)


def test_int_seed_is_the_shared_rng_contract():
    # One contract everywhere (init, nn layers, dropout): a Generator, an int seed, or None.
    a = init.uniform_(np.empty(5), rng=7)
    b = init.uniform_(np.empty(5), rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_manual_seed_follows_the_rng_contract():
    generator = np.random.default_rng(3)
    assert init.manual_seed(generator) is generator
    assert init.get_rng() is generator
    for bad in ("0", 1.5, None):
        with pytest.raises(TypeError, match="seed"):
            init.manual_seed(bad)
    init.manual_seed(0)
