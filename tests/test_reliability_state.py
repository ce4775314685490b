"""An operation that raises leaves everything as it was: modules, optimizers, schedulers,
running statistics and a restored training run are checked whole before anything is written."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
import fastconv.functional as F
from fastconv import nn, optim, training
from fastconv.datasets import DataLoader


def _net(seed=0):
    return nn.Sequential(
        nn.Linear(4, 3, rng=seed), nn.ReLU(), nn.Linear(3, 2, rng=seed), nn.BatchNorm1d(2)
    )


def _snapshot(obj):
    """Deep copy of a state dict (a module's, an optimizer's or a scheduler's)."""
    return {k: np.array(v, copy=True) for k, v in obj.state_dict().items()}


def _assert_same(obj, before):
    after = obj.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        np.testing.assert_array_equal(np.asarray(after[key]), value, err_msg=key)


def test_load_state_dict_with_a_read_only_array_writes_nothing():
    net = _net(0)
    source = _net(1).state_dict()
    net[2].weight.data.flags.writeable = False  # the third of six arrays
    before = _snapshot(net)
    with pytest.raises(ValueError, match=r"'2\.weight' is a read-only array"):
        net.load_state_dict(source)
    _assert_same(net, before)


def test_load_state_dict_with_an_uncastable_array_writes_nothing():
    net = _net(0)
    source = _net(1).state_dict()
    source["3.running_var"] = source["3.running_var"].astype(np.complex128)
    before = _snapshot(net)
    with pytest.raises(TypeError, match="3.running_var"):
        net.load_state_dict(source)
    _assert_same(net, before)


def _stepped(make):
    """A network and its optimizer after two steps (so there is state to keep)."""
    net = _net(0)
    opt = make(net.parameters())
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    for _ in range(2):
        opt.zero_grad()
        net.backward(np.ones_like(net(x)))
        opt.step()
    opt.zero_grad()
    net.backward(np.ones_like(net(x)))  # gradients for the failing step
    return net, opt


OPTIMIZERS = {
    "sgd-momentum": lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "adam": lambda p: optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    "adamw": lambda p: optim.AdamW(p, lr=1e-2),
}


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
@pytest.mark.parametrize("spoil", ["read-only-param", "bad-grad-shape", "read-only-state"])
def test_a_failing_step_changes_no_parameter_and_no_state(make, spoil):
    net, opt = _stepped(make)
    params = list(net.parameters())
    if spoil == "read-only-param":
        params[2].data.flags.writeable = False
    elif spoil == "bad-grad-shape":
        params[2].grad = np.zeros(params[2].data.shape[::-1], params[2].data.dtype)
    else:  # the momentum buffer, or Adam's first moment
        arrays = [v for v in opt.state[2].values() if isinstance(v, np.ndarray)]
        arrays[0].flags.writeable = False
    weights = [p.data.copy() for p in params]
    state = _snapshot(opt)
    with pytest.raises(ValueError, match=r"params\[2\]"):
        opt.step()
    for p, w in zip(params, weights, strict=True):
        np.testing.assert_array_equal(p.data, w)
    _assert_same(opt, state)


@pytest.mark.parametrize("step", [-1, np.inf, np.nan, 1.5, 2**70 * 1.0])
def test_adam_load_state_dict_refuses_impossible_steps(step):
    net, opt = _stepped(OPTIMIZERS["adam"])
    source = opt.state_dict()
    source["state.1.step"] = np.array(step)
    before = _snapshot(opt)
    if step == 2**70 * 1.0:  # a whole number: accepted, loaded exactly
        opt.load_state_dict(source)
        assert opt.state[1]["step"] == 2**70
        return
    with pytest.raises(ValueError, match=r"'state\.1\.step' must be a whole number >= 0"):
        opt.load_state_dict(source)
    _assert_same(opt, before)


@pytest.mark.parametrize(
    "key, value",
    [("last_epoch", np.inf), ("last_epoch", -2), ("last_epoch", 0.5), ("base_lrs", [np.nan])],
)
def test_scheduler_load_state_dict_checks_before_setting(key, value):
    opt = optim.SGD(_net().parameters(), lr=0.1)
    scheduler = optim.lr_scheduler.StepLR(opt, step_size=2)
    scheduler.step()
    source = scheduler.state_dict()
    source[key] = np.array(value)
    before = dict(vars(scheduler))
    with pytest.raises(ValueError, match=key):
        scheduler.load_state_dict(source)
    assert vars(scheduler) == before


def test_batch_norm_with_a_bad_argument_leaves_the_running_statistics():
    x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    mean, var = np.zeros(3, np.float32), np.ones(3, np.float32)
    for kwargs in ({"momentum": None}, {"eps": -1.0}, {"momentum": 2.0}):
        with pytest.raises((TypeError, ValueError)):
            F.batch_norm(x, mean, var, None, None, True, **kwargs)
        np.testing.assert_array_equal(mean, 0)
        np.testing.assert_array_equal(var, 1)


def test_a_failed_restore_leaves_the_model_as_it_was(tmp_path):
    x = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
    y = np.arange(32) % 2
    net = _net(0)
    opt = optim.Adam(net.parameters(), lr=1e-2)
    training.train(
        net, opt, DataLoader(x, y, 8, seed=0), None, 1, out_dir=tmp_path / "run",
        progress=False, log=None,
    )  # fmt: skip
    # Same network, but an optimizer of another kind: the model's arrays fit, the optimizer's
    # do not. The model must not keep the loaded weights.
    other = _net(5)
    before = _snapshot(other)
    with pytest.raises(ValueError, match="train_state.npz"):
        training.restore(tmp_path / "run", other, optim.SGD(other.parameters(), lr=0.1))
    _assert_same(other, before)
    # A truncated snapshot: a ValueError naming the file, and nothing loaded either.
    path = tmp_path / "run" / "train_state.npz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="train_state.npz"):
        training.restore(tmp_path / "run", other, optim.Adam(other.parameters()))
    _assert_same(other, before)


def test_save_of_a_bad_state_writes_nothing(tmp_path):
    fastconv.save(_net(), tmp_path / "m.npz")
    before = (tmp_path / "m.npz").read_bytes()
    with pytest.raises(TypeError):
        fastconv.save({"a": np.zeros(2), "b": np.array([object()])}, tmp_path / "m.npz")
    assert (tmp_path / "m.npz").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]
