"""PyTorch's remaining layer options, each against PyTorch: BatchNorm ``affine``,
``track_running_stats`` and ``momentum=None`` (with ``num_batches_tracked``), CrossEntropyLoss
``weight``, ``ignore_index`` and ``label_smoothing``, and ``MaxPool2d(return_indices=...)``;
in layer mode and autograd mode, with state dicts, reprs and argument errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import fastconv
import fastconv.functional as F
import fastconv.reference as R
from fastconv import Tensor, nn
from tests.helpers import assert_close32, assert_close64

torch = pytest.importorskip("torch", reason="the options are checked against PyTorch")

DTYPES = {"float64": (np.float64, torch.float64), "float32": (np.float32, torch.float32)}


def assert_close(actual, expected, dtype):
    if dtype == np.float64:
        assert_close64(actual, expected)
    else:
        assert_close32(actual, expected)


# ---- BatchNorm ------------------------------------------------------------------------------

BN_OPTIONS = [
    dict(affine=a, track_running_stats=t, momentum=m)
    for a, t, m in itertools.product([True, False], [True, False], [0.1, None])
]
BN_IDS = [
    f"affine={o['affine']}-track={o['track_running_stats']}-momentum={o['momentum']}"
    for o in BN_OPTIONS
]


def _bn_pair(cls_name, options, dtype, rng):
    """A fastconv and a PyTorch BatchNorm with the same options and (random) parameters."""
    np_dtype, t_dtype = DTYPES[dtype]
    C = int(rng.integers(1, 5))
    ours = getattr(nn, cls_name)(C, eps=1e-4, dtype=np_dtype, **options)
    theirs = getattr(torch.nn, cls_name)(C, eps=1e-4, dtype=t_dtype, **options)
    if options["affine"]:
        w, b = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)
        ours.weight.data[...] = w
        ours.bias.data[...] = b
        with torch.no_grad():
            theirs.weight.copy_(torch.from_numpy(w))
            theirs.bias.copy_(torch.from_numpy(b))
    return ours, theirs, C


def _bn_input(cls_name, C, dtype, rng):
    N = int(rng.integers(2, 5))
    spatial = {"BatchNorm2d": tuple(rng.integers(1, 4, 2))}.get(cls_name, ())
    if cls_name == "BatchNorm1d" and rng.random() < 0.5:
        spatial = (int(rng.integers(1, 4)),)
    shape = (N, C, *spatial)
    return (rng.standard_normal(shape) * 2 + 1).astype(DTYPES[dtype][0])


def _bn_step(ours, theirs, x, g, mode):
    """One forward and backward through both; returns (y, grad_x) of each."""
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    yt.backward(torch.from_numpy(g))
    if mode == "layer":
        y = ours(x)
        grad_x = ours.backward(g)
    else:
        xv = Tensor(x, requires_grad=True)
        out = ours(xv)
        out.backward(g)
        y, grad_x = out.data, xv.grad
    return (y, grad_x), (yt, xt.grad)


def _assert_bn_state(ours, theirs, dtype):
    ts = theirs.state_dict()
    assert list(ours.state_dict()) == list(ts)
    for key, value in ours.state_dict().items():
        assert value.shape == tuple(ts[key].shape), key
        assert value.dtype == ts[key].numpy().dtype, key
        if key == "num_batches_tracked":
            assert value == ts[key].item()
        else:
            assert_close(value, ts[key], dtype)
    for name, p in ours.named_parameters():
        assert_close(p.grad, dict(theirs.named_parameters())[name].grad, dtype)


@pytest.mark.parametrize("mode", ["layer", "autograd"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls_name", ["BatchNorm1d", "BatchNorm2d"])
@pytest.mark.parametrize("options", BN_OPTIONS, ids=BN_IDS)
def test_batchnorm_options_match_torch(options, cls_name, dtype, mode, rng):
    ours, theirs, C = _bn_pair(cls_name, options, dtype, rng)
    for step in range(4):  # three training steps, then eval
        if step == 3:
            ours.eval()
            theirs.eval()
        x = _bn_input(cls_name, C, dtype, rng)
        g = rng.standard_normal(x.shape).astype(x.dtype)
        (y, grad_x), (yt, grad_xt) = _bn_step(ours, theirs, x, g, mode)
        assert y.dtype == grad_x.dtype == x.dtype
        assert_close(y, yt, dtype)
        assert_close(grad_x, grad_xt, dtype)
        _assert_bn_state(ours, theirs, dtype)
    if options["track_running_stats"]:
        assert ours.num_batches_tracked == 3 and ours.num_batches_tracked.dtype == np.int64


def test_batchnorm_attributes_without_affine_or_tracking():
    bn = nn.BatchNorm2d(3, affine=False, track_running_stats=False)
    assert bn.weight is None and bn.bias is None
    assert bn.running_mean is None and bn.running_var is None and bn.num_batches_tracked is None
    assert list(bn.parameters()) == [] and bn.state_dict() == {}
    assert list(nn.BatchNorm1d(2, affine=False).state_dict()) == [
        "running_mean",
        "running_var",
        "num_batches_tracked",
    ]
    bn.double()  # dtype conversion skips the absent members
    y = bn(np.arange(12.0).reshape(2, 3, 2, 1))
    assert y.dtype == np.float64


def test_momentum_none_is_the_plain_mean_of_the_batch_statistics(rng):
    bn = nn.BatchNorm1d(3, momentum=None, dtype=np.float64)
    batches = [rng.standard_normal((5, 3)) * (i + 1) + i for i in range(4)]
    for x in batches:
        bn(x)
        bn.backward(np.ones_like(x))
    np.testing.assert_allclose(bn.running_mean, np.mean([x.mean(0) for x in batches], 0))
    np.testing.assert_allclose(bn.running_var, np.mean([x.var(0, ddof=1) for x in batches], 0))
    assert bn.num_batches_tracked == 4


def test_eval_without_running_stats_uses_the_batch_and_counts_nothing(rng):
    bn = nn.BatchNorm2d(2, track_running_stats=False, dtype=np.float64).eval()
    x = rng.standard_normal((3, 2, 2, 2))
    y = bn(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(x[:1, :, :1, :1])  # batch statistics need two values, in eval too


def test_a_failed_forward_does_not_count_a_batch():
    bn = nn.BatchNorm1d(2, momentum=None)
    with pytest.raises(ValueError, match="more than 1 value"):
        bn(np.ones((1, 2), np.float32))
    assert bn.num_batches_tracked == 0
    np.testing.assert_array_equal(bn.running_mean, 0)


@pytest.mark.parametrize("options", BN_OPTIONS, ids=BN_IDS)
def test_batchnorm_state_dicts_load_both_ways(options, rng):
    theirs = torch.nn.BatchNorm2d(3, dtype=torch.float64, **options)
    with torch.no_grad():
        for value in theirs.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.from_numpy(rng.uniform(0.5, 2, value.shape)))
            else:
                value.fill_(7)
    ours = nn.BatchNorm2d(3, dtype=np.float64, **options)
    result = ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    assert result == ([], [])
    for key, value in ours.state_dict().items():
        np.testing.assert_array_equal(value, theirs.state_dict()[key].numpy(), err_msg=key)
    back = torch.nn.BatchNorm2d(3, dtype=torch.float64, **options)
    back.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    # Both now compute the same thing, training included (momentum=None uses the counter).
    x = rng.standard_normal((4, 3, 2, 2))
    assert_close64(ours(x), back(torch.from_numpy(x)))
    for key, value in ours.state_dict().items():
        assert_close64(value, back.state_dict()[key])


def test_old_state_dict_without_num_batches_tracked_loads_strictly(rng):
    bn = nn.BatchNorm2d(3, momentum=None)
    bn.num_batches_tracked[...] = 5
    old = {k: v for k, v in nn.BatchNorm2d(3).state_dict().items() if k != "num_batches_tracked"}
    old["running_mean"] = rng.standard_normal(3).astype(np.float32)
    assert bn.load_state_dict(old, strict=True) == ([], [])
    np.testing.assert_array_equal(bn.running_mean, old["running_mean"])
    assert bn.num_batches_tracked == 5  # left as it was, as PyTorch's version hook does
    # The same old dict into PyTorch, for comparison.
    tbn = torch.nn.BatchNorm2d(3, momentum=None)
    tbn.load_state_dict({k: torch.from_numpy(v) for k, v in old.items()}, strict=True)
    # A dict from a layer without running statistics has no counter either way.
    plain = nn.BatchNorm2d(3, track_running_stats=False)
    assert "num_batches_tracked" not in plain.state_dict()
    with pytest.raises(ValueError, match="unexpected key.*num_batches_tracked"):
        plain.load_state_dict(nn.BatchNorm2d(3).state_dict())


def test_batchnorm_in_a_network_state_dict_matches_torch():
    def net(lib, **kw):
        return lib.Sequential(
            lib.Conv2d(1, 2, 3, **kw),
            lib.BatchNorm2d(2, affine=False, **kw),
            lib.Flatten(),
            lib.Linear(2, 3, **kw),
            lib.BatchNorm1d(3, track_running_stats=False, momentum=None, **kw),
        )

    ours, theirs = net(nn), net(torch.nn)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in theirs.state_dict().items()
    }
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})


@pytest.mark.parametrize("options", BN_OPTIONS, ids=BN_IDS)
def test_batchnorm_repr_matches_torch(options):
    expected = repr(torch.nn.BatchNorm2d(4, **options))
    # Recent PyTorch also lists a ``bias`` switch, which fastconv does not have.
    expected = expected.replace(", bias=True", "").replace(", bias=False", "")
    assert repr(nn.BatchNorm2d(4, **options)) == expected


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(momentum=None), None, None),
        (dict(momentum=0), None, None),
        (dict(momentum=1.5), ValueError, "momentum"),
        (dict(momentum=-0.1), ValueError, "momentum"),
        (dict(momentum=float("nan")), ValueError, "momentum"),
        (dict(momentum="0.1"), TypeError, "momentum"),
        (dict(momentum=True), TypeError, "momentum"),
        (dict(eps="1e-5"), TypeError, "eps"),
        (dict(eps=-1e-5), ValueError, "eps"),
        (dict(affine=1), TypeError, "affine"),
        (dict(track_running_stats="yes"), TypeError, "track_running_stats"),
    ],
    ids=lambda v: str(v) if not isinstance(v, type) else v.__name__,
)
def test_batchnorm_argument_errors(kwargs, error, match):
    if error is None:
        nn.BatchNorm1d(2, **kwargs)
    else:
        with pytest.raises(error, match=match):
            nn.BatchNorm1d(2, **kwargs)


# ---- CrossEntropyLoss -----------------------------------------------------------------------


def _ce_case(rng, dtype, probabilities=False):
    """Random logits, targets (class indices, some ignored; or class probabilities), and
    options."""
    N, C = int(rng.integers(1, 8)), int(rng.integers(2, 6))
    if probabilities:
        ignore_index = int(rng.choice([-100, -1]))  # PyTorch refuses a class index here
        target = rng.random((N, C)).astype(dtype)
        target /= target.sum(axis=1, keepdims=True)
    else:
        ignore_index = int(rng.choice([-100, 0, C - 1, 99]))
        target = rng.integers(0, C, N)
        target[rng.random(N) < 0.3] = ignore_index
        if (target == ignore_index).all():
            target[0] = (ignore_index + 1) % C  # keep one row (all ignored has its own test)
    weight = rng.uniform(0.2, 2, C).astype(dtype) if rng.random() < 0.7 else None
    options = dict(
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=float(rng.choice([0.0, 0.15, 1.0])),
    )
    return (rng.standard_normal((N, C)) * 3).astype(dtype), target, options


def _torch_ce(logits, target, reduction, options, grad_out=None):
    zt = torch.tensor(logits, requires_grad=True)
    w = options["weight"]
    crit = torch.nn.CrossEntropyLoss(
        weight=None if w is None else torch.from_numpy(w),
        ignore_index=options["ignore_index"],
        reduction=reduction,
        label_smoothing=options["label_smoothing"],
    )
    loss = crit(zt, torch.from_numpy(target))
    loss.backward(torch.ones_like(loss) if grad_out is None else torch.tensor(grad_out))
    return loss.detach(), zt.grad


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("targets", ["indices", "probabilities"])
def test_cross_entropy_options_match_torch(targets, dtype, reduction, seed):
    rng = np.random.default_rng(seed)
    np_dtype = DTYPES[dtype][0]
    logits, target, options = _ce_case(rng, np_dtype, targets == "probabilities")
    grad_out = (
        rng.standard_normal(len(target)).astype(np_dtype) if reduction == "none" else np_dtype(1.7)
    )
    loss_t, grad_t = _torch_ce(logits, target, reduction, options, grad_out)

    # functional, and the reference loops
    for mod in (F, R):
        assert_close(np.asarray(mod.cross_entropy(logits, target, reduction, **options)), loss_t,
                     np_dtype)  # fmt: skip
        grad = mod.cross_entropy_backward(logits, target, reduction, **options)
        assert grad.dtype == np_dtype
        scale = grad_out[:, None] if reduction == "none" else grad_out
        assert_close(grad * scale, grad_t, np_dtype)

    # layer mode, with an upstream gradient
    crit = nn.CrossEntropyLoss(reduction, **options)
    loss = crit(logits, target)
    assert isinstance(loss, float) == (reduction != "none")
    assert_close(np.asarray(loss), loss_t, np_dtype)
    assert_close(crit.backward(grad_out), grad_t, np_dtype)

    # autograd mode
    z = Tensor(logits, requires_grad=True)
    out = crit(z, Tensor(target))
    assert out.dtype == np_dtype and out.shape == tuple(loss_t.shape)
    out.backward(np.asarray(grad_out))
    assert_close(out.data, loss_t, np_dtype)
    assert_close(z.grad, grad_t, np_dtype)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_options_gradcheck(reduction, rng):
    logits, target, options = _ce_case(rng, np.float64)
    options["label_smoothing"] = 0.3
    crit = nn.CrossEntropyLoss(reduction, **options)

    def fn(z):
        zt = Tensor(z, requires_grad=True)
        out = crit(zt, target)

        def backward(g):
            out.backward(g)
            return [zt.grad]

        return out.data, backward

    assert fastconv.gradcheck(fn, [logits])


@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_nothing_to_average(with_weight, smoothing):
    logits = np.random.default_rng(0).standard_normal((3, 4))
    weight = np.array([0.0, 1, 1, 1]) if with_weight else None
    # every row ignored; then (with weight) only rows whose target weighs 0
    cases = [np.array([-100, -100, -100])]
    if with_weight:
        cases.append(np.array([0, 0, -100]))
    for target in cases:
        options = dict(weight=weight, label_smoothing=smoothing)
        loss_t, grad_t = _torch_ce(logits, target, "mean", options | {"ignore_index": -100})
        assert np.isnan(F.cross_entropy(logits, target, **options)) and np.isnan(loss_t.item())
        grad = F.cross_entropy_backward(logits, target, **options)
        np.testing.assert_array_equal(grad, grad_t.numpy())  # NaN on kept rows, 0 on ignored
        np.testing.assert_array_equal(R.cross_entropy_backward(logits, target, **options), grad)


def test_cross_entropy_weight_in_state_dict_and_dtype():
    w = np.array([1.0, 2.0, 0.5])
    crit = nn.CrossEntropyLoss(weight=w)
    tcrit = torch.nn.CrossEntropyLoss(weight=torch.from_numpy(w))
    assert {k: v.shape for k, v in crit.state_dict().items()} == {
        k: tuple(v.shape) for k, v in tcrit.state_dict().items()
    }
    assert (
        nn.CrossEntropyLoss().state_dict() == {} == dict(torch.nn.CrossEntropyLoss().state_dict())
    )
    w[0] = 9  # the layer keeps its own copy
    assert crit.weight[0] == 1
    # A float64 weight serves float32 logits (cast per call); the functional API does not cast.
    logits, target = np.zeros((2, 3), np.float32), np.array([0, 1])
    assert crit(logits, target) == pytest.approx(np.log(3))
    assert crit.backward().dtype == np.float32
    with pytest.raises(TypeError, match="weight"):
        F.cross_entropy(logits, target, weight=w)


def test_cross_entropy_repr():
    assert repr(nn.CrossEntropyLoss()) == "CrossEntropyLoss()"
    crit = nn.CrossEntropyLoss("sum", weight=np.ones(3), ignore_index=1, label_smoothing=0.1)
    assert repr(crit) == (
        "CrossEntropyLoss(reduction='sum', weight=<array of shape (3,)>, ignore_index=1, "
        "label_smoothing=0.1)"
    )


LOGITS = np.zeros((2, 3))
CE_ERRORS = {
    "weight_list": (lambda: nn.CrossEntropyLoss(weight=[1.0, 2.0]), TypeError, "weight"),
    "weight_int": (lambda: nn.CrossEntropyLoss(weight=np.ones(3, int)), TypeError, "weight"),
    "weight_2d": (lambda: nn.CrossEntropyLoss(weight=np.ones((1, 3))), ValueError, "weight"),
    "weight_length": (
        lambda: nn.CrossEntropyLoss(weight=np.ones(4))(LOGITS, np.array([0, 1])),
        ValueError,
        "weight",
    ),
    "smoothing_big": (lambda: nn.CrossEntropyLoss(label_smoothing=1.5), ValueError, "label_"),
    "smoothing_neg": (lambda: nn.CrossEntropyLoss(label_smoothing=-0.1), ValueError, "label_"),
    "smoothing_str": (lambda: nn.CrossEntropyLoss(label_smoothing="0.1"), TypeError, "label_"),
    "ignore_float": (lambda: nn.CrossEntropyLoss(ignore_index=1.0), TypeError, "ignore_index"),
    "ignore_bool": (lambda: nn.CrossEntropyLoss(ignore_index=True), TypeError, "ignore_index"),
    "reduction": (lambda: nn.CrossEntropyLoss(np.ones(3)), TypeError, "reduction.*weight="),
    "reduction_value": (lambda: nn.CrossEntropyLoss("avg"), ValueError, "reduction"),
    "target_range": (
        lambda: F.cross_entropy(LOGITS, np.array([0, 3]), ignore_index=-1),
        ValueError,
        "target",
    ),
    "target_negative": (
        lambda: F.cross_entropy(LOGITS, np.array([-100, -1])),
        ValueError,
        "target",
    ),
    "probabilities_shape": (
        lambda: F.cross_entropy(LOGITS, np.ones((2, 4)) / 4),
        ValueError,
        "target.*shape",
    ),
    "probabilities_dtype": (
        lambda: F.cross_entropy(LOGITS, np.ones((2, 3), np.float32) / 3),
        TypeError,
        "target",
    ),
    "probabilities_ignore_index": (
        lambda: F.cross_entropy(LOGITS, np.ones((2, 3)) / 3, ignore_index=0),
        ValueError,
        "ignore_index",
    ),
    "float_indices": (lambda: F.cross_entropy(LOGITS, np.array([0.0, 1.0])), TypeError, "target"),
    "target_requires_grad": (
        lambda: nn.CrossEntropyLoss()(Tensor(LOGITS), Tensor(np.ones((2, 3)), requires_grad=True)),
        ValueError,
        "target",
    ),
    "functional_smoothing": (
        lambda: F.cross_entropy_backward(LOGITS, np.array([0, 1]), label_smoothing=2),
        ValueError,
        "label_smoothing",
    ),
}


@pytest.mark.parametrize("call, error, match", CE_ERRORS.values(), ids=CE_ERRORS.keys())
def test_cross_entropy_argument_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_ignore_index_may_lie_outside_or_inside_the_classes():
    logits = np.random.default_rng(0).standard_normal((3, 3))
    for ignore_index, target in ((7, np.array([7, 1, 2])), (1, np.array([0, 1, 2]))):
        loss_t, _ = _torch_ce(logits, target, "none", dict(weight=None, ignore_index=ignore_index,
                                                           label_smoothing=0.0))  # fmt: skip
        loss = F.cross_entropy(logits, target, "none", ignore_index=ignore_index)
        assert_close64(loss, loss_t)
        assert loss[list(target).index(ignore_index)] == 0


# ---- MaxPool2d ------------------------------------------------------------------------------


def _permuted(rng, shape, dtype):
    """Distinct values: no tied maxima, so the argmax is unique."""
    return rng.permutation(int(np.prod(shape))).reshape(shape).astype(dtype)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("return_indices", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool_return_indices_matches_torch(dtype, return_indices, training, rng):
    np_dtype = DTYPES[dtype][0]
    x = _permuted(rng, (2, 3, int(rng.integers(4, 9)), int(rng.integers(4, 9))), np_dtype)
    args = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, return_indices=return_indices)
    theirs = torch.nn.MaxPool2d(**args).train(training)
    xt = torch.tensor(x, requires_grad=True)
    out_t = theirs(xt)
    yt, idx_t = out_t if return_indices else (out_t, None)
    g = rng.standard_normal(tuple(yt.shape)).astype(np_dtype)
    yt.backward(torch.from_numpy(g))

    layer = nn.MaxPool2d(**args).train(training)
    out = layer(x)
    assert isinstance(out, tuple) == return_indices
    y, idx = out if return_indices else (out, None)
    assert_close(y, yt, np_dtype)
    if return_indices:
        assert idx.dtype == np.int64
        np.testing.assert_array_equal(idx, idx_t.numpy())
    assert_close(layer.backward(g), xt.grad, np_dtype)

    xv = Tensor(x, requires_grad=True)
    out = nn.MaxPool2d(**args).train(training)(xv)
    assert isinstance(out, tuple) == return_indices
    yv = out[0] if return_indices else out
    if return_indices:
        assert isinstance(out[1], Tensor) and not out[1].requires_grad
        np.testing.assert_array_equal(out[1].data, idx_t.numpy())
    yv.backward(g)
    assert_close(yv.data, yt, np_dtype)
    assert_close(xv.grad, xt.grad, np_dtype)


def test_maxpool_argument_order_and_repr_follow_torch():
    # PyTorch's order: (kernel_size, stride, padding, dilation, return_indices, ceil_mode).
    ours, theirs = nn.MaxPool2d(2, 2, 0, 1, True, True), torch.nn.MaxPool2d(2, 2, 0, 1, True, True)
    assert ours.return_indices and ours.ceil_mode
    assert repr(ours) == repr(theirs)[:-1] + ", return_indices=True)"
    assert repr(nn.MaxPool2d(3)) == repr(torch.nn.MaxPool2d(3))
    with pytest.raises(TypeError, match="return_indices"):
        nn.MaxPool2d(2, return_indices=1)
    # The functional form keeps returning the indices.
    y, idx = F.max_pool2d(np.zeros((1, 1, 4, 4)), 2)
    assert y.shape == idx.shape == (1, 1, 2, 2)
    # With the default, the pool composes in Sequential.
    net = nn.Sequential(nn.MaxPool2d(2), nn.Flatten())
    assert net(np.zeros((1, 1, 4, 4))).shape == (1, 4)


def test_sequential_keeps_relu_before_a_pool_returning_indices(rng):
    # Sequential runs ReLU after MaxPool2d (same values, less work); with the indices returned
    # it must not, since in a window of negatives ReLU's zeros change the argmax.
    x = -_permuted(rng, (1, 2, 4, 4), np.float64) - 1  # every window negative...
    x[0, 0, 0, 1] = 5.0  # ...but one
    ours = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2, return_indices=True))
    theirs = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.MaxPool2d(2, return_indices=True))
    xt = torch.tensor(x, requires_grad=True)
    y_t, idx_t = theirs(xt)
    g = rng.standard_normal(tuple(y_t.shape))
    y_t.backward(torch.from_numpy(g))
    for out in (ours(x), ours(Tensor(x))):
        y, idx = (o.data if isinstance(o, Tensor) else o for o in out)
        assert_close64(y, y_t)
        np.testing.assert_array_equal(idx, idx_t.numpy())
    assert_close64(ours.backward(g), xt.grad)
