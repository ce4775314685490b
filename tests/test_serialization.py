"""fastconv.serialization: .npz round trips, atomic writes, no pickle, errors naming keys."""

import os
import pathlib

import numpy as np
import pytest

import fastconv
from fastconv import nn
from fastconv.serialization import load, save


def _net(seed):
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=rng),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.25, rng=rng),
        nn.Linear(4 * 4 * 4, 3, rng=rng),
    )


def _trained(seed):
    """A net whose BatchNorm running statistics and batch counter have moved."""
    net = _net(seed)
    with fastconv.no_grad():  # a forward no backward follows (training mode: the stats move)
        net(np.random.default_rng(seed).standard_normal((5, 1, 8, 8)).astype(np.float32))
    return net


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)


def _leftovers(directory):
    return sorted(p.name for p in pathlib.Path(directory).iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("as_str", [True, False], ids=["str", "pathlike"])
def test_round_trip(tmp_path, as_str):
    src, dst = _trained(1), _net(2)
    path = tmp_path / "model.npz"
    save(src, str(path) if as_str else path)
    result = load(dst, str(path) if as_str else path)
    assert result == ([], [])
    _assert_same_state(src, dst)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(src.eval()(x), dst.eval()(x))
    assert _leftovers(tmp_path) == []


def test_file_name_is_exactly_the_given_one(tmp_path):
    save(_net(0), tmp_path / "checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    save(_net(0), tmp_path / "weights.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "weights.bin"]


def test_file_is_a_plain_npz_of_the_state_dict(tmp_path):
    net = _trained(3)
    save(net, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as archive:
        assert archive.files == list(net.state_dict())
        assert archive["1.num_batches_tracked"] == 1
        np.testing.assert_array_equal(archive["1.running_mean"], net[1].running_mean)


def test_permissions_follow_the_umask(tmp_path):
    save(_net(0), tmp_path / "m.npz")
    (tmp_path / "plain").write_bytes(b"")
    assert os.stat(tmp_path / "m.npz").st_mode == os.stat(tmp_path / "plain").st_mode


def test_overwrites_an_existing_checkpoint(tmp_path):
    path = tmp_path / "m.npz"
    save(_net(1), path)
    newer = _trained(2)
    save(newer, path)
    restored = _net(3)
    load(restored, path)
    _assert_same_state(newer, restored)


def test_failure_mid_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    old = _trained(1)
    save(old, path)
    before = path.read_bytes()

    real_write = np.lib.format.write_array
    calls = []

    def failing_write(*args, **kwargs):  # writes two arrays, then the disk "fills up"
        calls.append(1)
        if len(calls) > 2:
            raise OSError(28, "No space left on device")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", failing_write)
    with pytest.raises(OSError, match="No space left"):
        save(_trained(2), path)
    monkeypatch.undo()

    assert len(calls) == 3
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []
    restored = _net(3)
    load(restored, path)
    _assert_same_state(old, restored)


def test_failed_rename_removes_the_temporary_file(tmp_path, monkeypatch):
    def failing_replace(src, dst):
        raise PermissionError(13, "Permission denied", dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(PermissionError):
        save(_net(0), tmp_path / "m.npz")
    assert list(tmp_path.iterdir()) == []


def test_object_arrays_are_refused(tmp_path):
    net = _net(0)
    state = net.state_dict()
    state["0.bias"] = np.array([None, 1, "x", 2.0], dtype=object)
    path = tmp_path / "evil.npz"
    np.savez(path, **state)  # np.savez pickles object arrays; load must not unpickle them
    before = net.state_dict()
    with pytest.raises(ValueError, match="'0.bias'.*allow_pickle"):
        load(net, path)
    _assert_same_state_dict(net, before)


def _assert_same_state_dict(net, state):
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda s: s.pop("6.bias"), r"missing key\(s\): '6.bias'"),
        (lambda s: s.update(extra=np.zeros(2, np.float32)), r"unexpected key\(s\): 'extra'"),
        (
            lambda s: s.update({"0.weight": np.zeros((4, 1, 5, 5), np.float32)}),
            r"size mismatch for '0.weight'.*\(4, 1, 5, 5\).*\(4, 1, 3, 3\)",
        ),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_load_errors_name_the_file_and_key(tmp_path, change, match):
    state = _net(1).state_dict()
    change(state)
    path = tmp_path / "bad.npz"
    np.savez(path, **state)
    net = _net(2)
    before = net.state_dict()
    with pytest.raises(ValueError, match=match) as info:
        load(net, path)
    assert "bad.npz" in str(info.value)
    _assert_same_state_dict(net, before)


def test_load_not_strict_reports_keys(tmp_path):
    state = _net(1).state_dict()
    del state["6.bias"]
    state["extra"] = np.zeros(1)
    np.savez(tmp_path / "partial.npz", **state)
    result = load(_net(2), tmp_path / "partial.npz", strict=False)
    assert result.missing_keys == ["6.bias"] and result.unexpected_keys == ["extra"]


def test_load_refuses_other_files(tmp_path):
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        load(_net(0), tmp_path / "single.npy")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match="text.npz"):
        load(_net(0), tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError):
        load(_net(0), tmp_path / "absent.npz")


def test_keys_that_clash_with_savez_arguments(tmp_path):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.file = nn.Parameter(np.arange(3.0))
            self.allow_pickle = nn.Parameter(np.ones(2))

    src, dst = Odd(), Odd()
    dst.file.data[:] = 0
    save(src, tmp_path / "odd.npz")
    load(dst, tmp_path / "odd.npz")
    np.testing.assert_array_equal(dst.file.data, [0, 1, 2])


def test_torch_loads_a_fastconv_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    tnet = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Dropout(0.25),
        torch.nn.Linear(4 * 4 * 4, 3),
    )
    net = _trained(4)
    save(net, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as archive:
        tnet.load_state_dict({k: torch.from_numpy(archive[k]) for k in archive.files})
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    expected = tnet.eval()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(net.eval()(x), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# State dicts without a module: save(dict, path), load(path)
# ---------------------------------------------------------------------------------------------


def test_state_dict_round_trip(tmp_path):
    net = _trained(5)
    state = {**net.state_dict(), "step": 7, "lr": 0.05, "flag": True}
    path = tmp_path / "state.npz"
    save(state, path)
    loaded = load(path)
    assert isinstance(loaded, dict) and list(loaded) == list(state)
    for key, value in state.items():
        assert loaded[key].dtype == np.asarray(value).dtype, key
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)
    assert load(path=str(path)).keys() == loaded.keys()
    # A module's file read as a dict, and a dict's file loaded into a module, are the same.
    save(net, tmp_path / "net.npz")
    for key, value in load(tmp_path / "net.npz").items():
        np.testing.assert_array_equal(value, net.state_dict()[key], err_msg=key)
    save(net.state_dict(), tmp_path / "dict.npz")
    assert (tmp_path / "dict.npz").read_bytes() == (tmp_path / "net.npz").read_bytes()
    restored = _net(6)
    load(restored, tmp_path / "dict.npz")
    _assert_same_state(net, restored)
    assert _leftovers(tmp_path) == []


def test_optimizer_state_round_trip(tmp_path):
    from fastconv import optim

    net = _trained(1)
    adam = optim.Adam(net.parameters(), lr=3e-3)
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    net.backward(np.ones_like(net(x)))
    adam.step()
    save(adam, tmp_path / "adam.npz")
    fresh = optim.Adam(_net(2).parameters())
    load(fresh, tmp_path / "adam.npz")
    expected, actual = adam.state_dict(), fresh.state_dict()
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(actual[key], value, err_msg=key)


def test_state_dict_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "state.npz"
    save({"a": np.arange(3), "b": np.ones(2)}, path)
    before = path.read_bytes()
    real_write = np.lib.format.write_array

    def failing_write(member, array, *args, **kwargs):
        if array.shape == (4,):  # the second entry: the disk "fills up" mid-archive
            raise OSError(28, "No space left on device")
        return real_write(member, array, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", failing_write)
    with pytest.raises(OSError, match="No space left"):
        save({"a": np.zeros(3), "b": np.zeros(4)}, path)
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "obj, match",
    [
        ({"a": np.array([None, 1], dtype=object)}, "entry 'a' must be an array of numbers"),
        ({"a": {"nested": 1}}, "entry 'a' must be an array of numbers"),
        ({3: np.zeros(2)}, "keys must be str, got 3"),
        ([np.zeros(2)], "obj must be a module .* or a dict of arrays, got list"),
    ],
    ids=["object-array", "nested", "int-key", "list"],
)
def test_save_refuses_what_needs_pickle_before_writing(tmp_path, obj, match):
    with pytest.raises(TypeError, match=match):
        save(obj, tmp_path / "x.npz")
    assert list(tmp_path.iterdir()) == []


def test_load_needs_a_path(tmp_path):
    with pytest.raises(TypeError, match=r"load\(path\) or load\(module, path\)"):
        load(_net(0))
    with pytest.raises(TypeError, match="needs a path"):
        load()
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "absent.npz")
