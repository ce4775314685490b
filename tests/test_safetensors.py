"""fastconv.save / fastconv.load with ``.safetensors`` files: round trips, the ``safetensors``
package and PyTorch as oracles, forged headers, atomic writes.

fastconv reads and writes the format itself (fastconv/_safetensors.py); the ``safetensors``
package and PyTorch are only used here, to check that their files and ours are the same thing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close32

import fastconv
from fastconv import models, nn, optim
from fastconv._safetensors import MAX_HEADER_SIZE

ROOT = Path(__file__).resolve().parent.parent
NETS_PY = ROOT / "benchmarks" / "_nets.py"
MODELS = ["seed", "lenet", "bn", "resnet"]
MB = 1 << 20


def _randomised(model, seed):
    """``model`` with every state entry (running statistics and batch counters too) drawn at
    random, so a round trip that dropped or swapped an entry would show."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, value in model.state_dict().items():
        if value.dtype.kind == "f":
            state[key] = rng.uniform(0.5, 1.5, value.shape).astype(value.dtype)
        else:
            state[key] = rng.integers(1, 100, value.shape).astype(value.dtype)
    model.load_state_dict(state)
    return model


def _assert_same_state(actual, expected):
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert actual[key].dtype == np.asarray(value).dtype, key
        assert actual[key].shape == np.shape(value), key
        np.testing.assert_array_equal(actual[key], value, err_msg=key)


def _dtype_zoo():
    """One entry per dtype the format shares with NumPy, with 0-d and empty shapes among them."""
    rng = np.random.default_rng(0)
    zoo = {
        "f64": rng.standard_normal((3, 2)),
        "f32": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "f16": rng.standard_normal(5).astype(np.float16),
        "bool": np.array([True, False, True]),
        "scalar_i64": np.array(7),
        "scalar_f64": np.array(0.05),
        "empty_f32": np.zeros((0, 3), np.float32),
    }
    for t in ("i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8"):
        info = np.iinfo(t)
        zoo[t] = np.array([info.min, 0, 1, info.max], dtype=t)  # odd lengths: misaligned if packed
    return zoo


def _leftovers(directory):
    return sorted(p.name for p in Path(directory).iterdir() if p.name.endswith(".tmp"))


def _torch_nets():
    spec = importlib.util.spec_from_file_location("_nets", NETS_PY)
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    return nets


# ---------------------------------------------------------------------------------------------
# Round trips inside fastconv
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", MODELS)
def test_example_models_round_trip(tmp_path, name, dtype):
    src = _randomised(models.build(name, rng=1).to(dtype), seed=2)
    dst = models.build(name, rng=3).to(dtype)
    path = tmp_path / f"{name}.safetensors"
    fastconv.save(src, path)
    assert fastconv.load(dst, path) == ([], [])
    _assert_same_state(dst.state_dict(), src.state_dict())
    _assert_same_state(fastconv.load(path), src.state_dict())  # the dict, in the saved order
    assert _leftovers(tmp_path) == []


def test_every_dtype_and_plain_numbers_round_trip(tmp_path):
    state = {**_dtype_zoo(), "step": 7, "lr": 0.05, "flag": True}
    fastconv.save(state, tmp_path / "zoo.safetensors")
    _assert_same_state(fastconv.load(tmp_path / "zoo.safetensors"), state)
    fastconv.save({}, tmp_path / "none.safetensors")  # an empty state dict is a valid file
    assert fastconv.load(tmp_path / "none.safetensors") == {}


def test_optimizer_state_round_trip(tmp_path):
    net = nn.Sequential(nn.Linear(4, 3, rng=0), nn.ReLU(), nn.Linear(3, 2, rng=1))
    adam = optim.Adam(net.parameters(), lr=3e-3)
    for p in net.parameters():
        p.grad = np.ones_like(p.data)
    adam.step()
    fastconv.save(adam, tmp_path / "adam.safetensors")
    fresh = optim.Adam(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).parameters())
    fastconv.load(fresh, tmp_path / "adam.safetensors")
    expected, actual = adam.state_dict(), fresh.state_dict()
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(actual[key], value, err_msg=key)


def test_format_follows_the_suffix_in_any_case(tmp_path):
    state = {"a": np.arange(3.0)}
    fastconv.save(state, tmp_path / "upper.SafeTensors")
    fastconv.save(state, tmp_path / "plain.npz")
    assert (tmp_path / "upper.SafeTensors").read_bytes()[8:9] == b"{"
    assert (tmp_path / "plain.npz").read_bytes()[:4] == b"PK\x03\x04"
    for name in ("upper.SafeTensors", "plain.npz"):
        _assert_same_state(fastconv.load(tmp_path / name), state)


def test_a_file_under_the_other_formats_name_is_refused_with_the_reason(tmp_path):
    fastconv.save({"a": np.ones(2)}, tmp_path / "m.safetensors")
    os.replace(tmp_path / "m.safetensors", tmp_path / "m.npz")
    with pytest.raises(ValueError, match="m.npz' is a .safetensors file, not an .npz archive"):
        fastconv.load(tmp_path / "m.npz")
    fastconv.save({"a": np.ones(2)}, tmp_path / "n.npz")
    os.replace(tmp_path / "n.npz", tmp_path / "n.safetensors")
    with pytest.raises(ValueError, match="n.safetensors' is an .npz archive"):
        fastconv.load(tmp_path / "n.safetensors")


def test_header_layout_aligns_every_tensor(tmp_path):
    fastconv.save(_dtype_zoo(), tmp_path / "zoo.safetensors")
    data = (tmp_path / "zoo.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    assert size % 8 == 0  # the buffer starts on an 8-byte boundary
    header = json.loads(data[8 : 8 + size])
    assert header.pop("__metadata__") == {"format": "pt"}
    assert list(header) == list(_dtype_zoo())  # the header keeps the state dict's order
    for key, entry in header.items():
        itemsize = _dtype_zoo()[key].dtype.itemsize
        assert entry["data_offsets"][0] % itemsize == 0, key


def test_bool_bytes_other_than_0_and_1_are_true(tmp_path):
    header = {"b": {"dtype": "BOOL", "shape": [4], "data_offsets": [0, 4]}}
    loaded = fastconv.load(_write(tmp_path / "b.safetensors", header, b"\x02\x01\x00\xff"))["b"]
    assert loaded.dtype == bool
    np.testing.assert_array_equal(loaded.view(np.uint8), [1, 1, 0, 1])  # NumPy's own bools


def test_bf16_is_widened_to_float32_exactly(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 2.0**-100, np.inf, 0.0], np.float32)
    bits = (values.view(np.uint32) >> 16).astype("<u2")  # each value is a bfloat16 exactly
    assert np.array_equal((bits.astype(np.uint32) << 16).view(np.float32), values)
    header = {"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]}}
    path = _write(tmp_path / "bf16.safetensors", header, bits.tobytes())
    loaded = fastconv.load(path)["w"]
    assert loaded.dtype == np.float32 and loaded.shape == (2, 3)
    np.testing.assert_array_equal(loaded.ravel(), values)


# ---------------------------------------------------------------------------------------------
# The safetensors package as the oracle
# ---------------------------------------------------------------------------------------------


def test_the_safetensors_package_reads_our_files_and_we_read_its(tmp_path):
    st = pytest.importorskip("safetensors.numpy", reason="the safetensors package is the oracle")
    from safetensors import safe_open

    zoo = {**_dtype_zoo(), "blöck.wéight ☃": np.arange(3.0)}  # keys are UTF-8 in the header
    fastconv.save(zoo, tmp_path / "ours.safetensors")
    theirs = st.load_file(tmp_path / "ours.safetensors")
    assert sorted(theirs) == sorted(zoo)
    _assert_same_state({k: theirs[k] for k in zoo}, zoo)
    with safe_open(tmp_path / "ours.safetensors", framework="np") as f:
        assert f.metadata() == {"format": "pt"}

    st.save_file(zoo, tmp_path / "theirs.safetensors", metadata={"note": "by safetensors"})
    ours = fastconv.load(tmp_path / "theirs.safetensors")
    assert sorted(ours) == sorted(zoo)
    _assert_same_state({k: ours[k] for k in zoo}, zoo)


def test_a_model_saved_by_the_safetensors_package_loads(tmp_path):
    st = pytest.importorskip("safetensors.numpy", reason="the safetensors package is the oracle")
    src = _randomised(models.build("bn", rng=1), seed=4)
    st.save_file(src.state_dict(), tmp_path / "bn.safetensors")
    dst = models.build("bn", rng=2)
    assert fastconv.load(dst, tmp_path / "bn.safetensors") == ([], [])
    _assert_same_state(dst.state_dict(), src.state_dict())


# ---------------------------------------------------------------------------------------------
# PyTorch: safetensors.torch files in, fastconv files out
# ---------------------------------------------------------------------------------------------


def _torch_with_moved_statistics(torch, name, seed):
    """The torch twin of ``name`` after one training-mode forward (running stats moved)."""
    tnet = _torch_nets().torch_model(name, seed=seed)
    with torch.no_grad():
        tnet.train()(torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(seed)))
    return tnet.eval()


@pytest.mark.parametrize("name", MODELS)
def test_pytorch_round_trip(tmp_path, name):
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle")
    st_torch = pytest.importorskip("safetensors.torch", reason="writes PyTorch's files")
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)

    # PyTorch -> fastconv
    tnet = _torch_with_moved_statistics(torch, name, seed=1)
    st_torch.save_file(tnet.state_dict(), tmp_path / "torch.safetensors")
    model = models.build(name, rng=5)
    assert fastconv.load(model, tmp_path / "torch.safetensors") == ([], [])
    with torch.no_grad():
        assert_close32(model.eval()(x), tnet(torch.from_numpy(x)))

    # fastconv -> PyTorch
    model = _randomised(models.build(name, rng=6), seed=7)
    fastconv.save(model, tmp_path / "fastconv.safetensors")
    tnet = _torch_nets().torch_model(name, seed=8)
    tnet.load_state_dict(st_torch.load_file(tmp_path / "fastconv.safetensors"))  # strict
    with torch.no_grad():
        assert_close32(model.eval()(x), tnet.eval()(torch.from_numpy(x)))


_BLOCKED = """
import sys
sys.modules["torch"] = None  # `import torch` now raises ImportError, wherever it is tried
sys.modules["safetensors"] = None
import fastconv
from fastconv import models

model = models.build("bn", rng=0)
print(fastconv.load(model, sys.argv[1]))
fastconv.save(model, sys.argv[2])
for name in ("torch", "safetensors"):
    assert sys.modules[name] is None, name
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise AssertionError(name + " was importable")
print("ok")
"""


def test_the_fastconv_side_needs_neither_torch_nor_safetensors(tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch writes the file and reads ours")
    st_torch = pytest.importorskip("safetensors.torch", reason="writes PyTorch's files")
    tnet = _torch_with_moved_statistics(torch, "bn", seed=2)
    st_torch.save_file(tnet.state_dict(), tmp_path / "in.safetensors")
    script = tmp_path / "blocked.py"
    script.write_text(_BLOCKED)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "in.safetensors"),
         str(tmp_path / "out.safetensors")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.split()[-1] == "ok", done.stderr[-2000:]
    assert "IncompatibleKeys(missing_keys=[], unexpected_keys=[])" in done.stdout
    # PyTorch -> fastconv (no torch) -> PyTorch gives back PyTorch's state dict, bit for bit.
    back = st_torch.load_file(tmp_path / "out.safetensors")
    expected = tnet.state_dict()
    assert sorted(back) == sorted(expected)
    for key, value in expected.items():
        assert back[key].dtype == value.dtype, key
        assert torch.equal(back[key], value), key


def test_pytorch_bf16_weights_load_as_float32(tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch writes the bfloat16 file")
    st_torch = pytest.importorskip("safetensors.torch", reason="writes PyTorch's files")
    weights = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    st_torch.save_file({"w": weights, "n": torch.tensor(3)}, tmp_path / "bf16.safetensors")
    net = nn.Sequential(nn.Linear(3, 5))
    state = fastconv.load(tmp_path / "bf16.safetensors")
    assert state["w"].dtype == np.float32
    np.testing.assert_array_equal(state["w"], weights.float().numpy())
    net.load_state_dict({"0.weight": state["w"], "0.bias": np.zeros(5, np.float32)})
    np.testing.assert_array_equal(net[0].weight.data, weights.float().numpy())


# ---------------------------------------------------------------------------------------------
# Forged and damaged files
# ---------------------------------------------------------------------------------------------


def _write(path, header, data=b"", length=None):
    """A file of ``header`` (a dict, or the raw bytes) and ``data``; ``length`` overrides the
    8-byte header length."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    size = len(text) if length is None else length
    path.write_bytes(struct.pack("<Q", size) + text + data)
    return path


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


_F32x2 = bytes(8)

HOSTILE = {
    "huge-header-length": (lambda p: _write(p, b"{}", length=2**63), "over the limit"),
    "header-just-over-the-cap": (
        lambda p: _write(p, b"{}", length=MAX_HEADER_SIZE + 1),
        "over the limit",
    ),
    "header-past-the-end": (lambda p: _write(p, b"{}", length=5000), "the file has 2 after"),
    "shorter-than-8": (lambda p: p.write_bytes(b"\x02\x00\x00"), "fewer than the 8"),
    "empty": (lambda p: p.write_bytes(b""), "fewer than the 8"),
    "not-utf8": (lambda p: _write(p, b'{"\xff": 1}'), "not UTF-8"),
    "not-json": (lambda p: _write(p, b'{"a": {"dtype": '), "not valid JSON"),
    "json-list": (lambda p: _write(p, b"[1, 2]"), "not a JSON object"),
    "json-string": (lambda p: _write(p, b'"{}"'), "not a JSON object"),
    "nan": (lambda p: _write(p, b'{"a": NaN}'), "not valid JSON"),
    "deep-nesting": (lambda p: _write(p, b'{"a":' + b"[" * 200_000 + b"}"), "not valid JSON"),
    "duplicate-key": (
        lambda p: _write(
            p,
            b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},'
            b' "a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}',
            bytes(16),
        ),
        "'a' appears twice",
    ),
    "unknown-dtype": (lambda p: _write(p, {"a": _entry("F7")}, _F32x2), "dtype 'F7' is not"),
    "float8-dtype": (
        lambda p: _write(p, {"a": _entry("F8_E4M3", (8,))}, _F32x2),
        "dtype 'F8_E4M3' is not",
    ),
    "list-dtype": (lambda p: _write(p, {"a": _entry(["F32"])}, _F32x2), "dtype \\['F32'\\]"),
    "negative-shape": (
        lambda p: _write(p, {"a": _entry(shape=(-2,), offsets=(0, 0))}),
        "shape must be a list",
    ),
    "float-shape": (lambda p: _write(p, {"a": _entry(shape=(2.0,))}, _F32x2), "shape must be"),
    "bool-shape": (lambda p: _write(p, {"a": _entry(shape=(True, 2))}, _F32x2), "shape must be"),
    "65-dims": (
        lambda p: _write(p, {"a": _entry(shape=(1,) * 65, offsets=(0, 4))}, bytes(4)),
        "at most 64",
    ),  # fmt: skip
    "zero-size-too-big": (
        lambda p: _write(p, {"a": _entry("F64", (0, 2**62), (0, 0))}),
        "too large for NumPy",
    ),
    "huge-shape": (
        lambda p: _write(p, {"a": _entry(shape=(1 << 40, 1 << 40))}, _F32x2),
        "hold 8 bytes, its shape .* needs",
    ),
    "offsets-wrong-length": (
        lambda p: _write(p, {"a": _entry(offsets=(0, 12))}, bytes(12)),
        "hold 12 bytes, its shape \\[2\\] of F32 needs 8",
    ),
    "offsets-not-two-ints": (
        lambda p: _write(p, {"a": _entry(offsets=(0,))}, _F32x2),
        "data_offsets must be two ints",
    ),
    "offsets-negative": (
        lambda p: _write(p, {"a": _entry(offsets=(-8, 0))}, _F32x2),
        "data_offsets must be two ints",
    ),
    "offsets-out-of-range": (
        lambda p: _write(p, {"a": _entry(shape=(100,), offsets=(0, 400))}, _F32x2),
        "need 400 bytes of data, the file has 8: truncated",
    ),
    "offsets-overlap": (
        lambda p: _write(p, {"a": _entry(), "b": _entry(offsets=(4, 12))}, bytes(12)),
        "'b' starts at byte 4 .* overlaps",
    ),
    "offsets-same": (
        lambda p: _write(p, {"a": _entry(), "b": _entry()}, _F32x2),
        "'b' starts at byte 0 .* overlaps",
    ),
    "offsets-gap": (
        lambda p: _write(p, {"a": _entry(), "b": _entry(offsets=(12, 20))}, bytes(20)),
        "'b' starts at byte 12 .* leaves a gap",
    ),
    "trailing-bytes": (
        lambda p: _write(p, {"a": _entry()}, bytes(9)),
        "bytes after the last tensor",
    ),
    "extra-entry-key": (
        lambda p: _write(p, {"a": {**_entry(), "strides": [1]}}, _F32x2),
        "must have exactly the keys",
    ),
    "entry-not-object": (lambda p: _write(p, {"a": 3}), "must have exactly the keys"),
    "metadata-not-str": (
        lambda p: _write(p, {"__metadata__": {"format": 1}, "a": _entry()}, _F32x2),
        "'__metadata__' must map str to str",
    ),
    "truncated-file": (
        lambda p: (fastconv.save(models.build("seed", rng=0), p), _cut(p, 0.5)),
        "the file has .*: truncated data",
    ),
    "npz-named-safetensors": (
        lambda p: (
            fastconv.save(models.build("seed", rng=0), p.with_suffix(".npz"))
            or os.replace(p.with_suffix(".npz"), p)
        ),
        "is an .npz archive",
    ),
}


def _cut(path, fraction):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


@pytest.mark.parametrize("case", list(HOSTILE))
def test_forged_files_are_value_errors_that_change_nothing(tmp_path, case):
    build, message = HOSTILE[case]
    path = tmp_path / "forged.safetensors"
    build(path)
    model = _randomised(models.build("seed", rng=0), seed=1)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=message) as info:
            fastconv.load(model, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "forged.safetensors" in str(info.value)
    assert peak < 4 * MB  # what the header declares is never allocated (the deep JSON: ~2 MB)
    _assert_same_state(model.state_dict(), before)
    with pytest.raises(ValueError, match=message):
        fastconv.load(path)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda s: s.pop("4.bias"), ValueError, r"missing key\(s\): '4.bias'"),
        (lambda s: s.update(extra=np.zeros(2, np.float32)), ValueError, r"unexpected.*'extra'"),
        (
            lambda s: s.update({"0.weight": np.zeros((32, 1, 5, 5), np.float32)}),
            ValueError,
            r"size mismatch for '0.weight'.*\(32, 1, 5, 5\).*\(32, 1, 3, 3\)",
        ),
        (
            lambda s: s.update({"1.num_batches_tracked": np.array(2.5, np.float32)}),
            TypeError,
            "'1.num_batches_tracked': dtype float32 cannot be cast",
        ),
    ],
    ids=["missing", "unexpected", "shape", "dtype"],
)
def test_load_errors_name_the_file_and_key(tmp_path, change, error, match):
    state = models.build("bn", rng=1).state_dict()
    change(state)
    path = tmp_path / "bad.safetensors"
    fastconv.save(state, path)
    model = models.build("bn", rng=2)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match) as info:
        fastconv.load(model, path)
    assert "bad.safetensors" in str(info.value)
    _assert_same_state(model.state_dict(), before)


def test_load_not_strict_reports_keys(tmp_path):
    state = models.build("seed", rng=1).state_dict()
    del state["4.bias"]
    state["extra"] = np.zeros(1)
    fastconv.save(state, tmp_path / "partial.safetensors")
    result = fastconv.load(models.build("seed"), tmp_path / "partial.safetensors", strict=False)
    assert result.missing_keys == ["4.bias"] and result.unexpected_keys == ["extra"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_and_directories_are_refused(tmp_path):
    os.mkfifo(tmp_path / "pipe.safetensors")
    with pytest.raises(ValueError, match="not a regular file"):
        fastconv.load(tmp_path / "pipe.safetensors")  # opened without blocking: no writer
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        fastconv.load(tmp_path / "dir.safetensors")


# ---------------------------------------------------------------------------------------------
# Saving: refusals before writing, atomic replacement
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state, error, match",
    [
        ({"a": np.zeros(2, np.complex64)}, TypeError, "'a' has dtype complex64"),
        ({"a": np.array(["x"])}, TypeError, "'a' has dtype <U1"),
        ({"a": np.zeros(2, np.longdouble)}, TypeError, "'a' has dtype float128"),
        ({"__metadata__": np.zeros(2)}, ValueError, "'__metadata__' is reserved"),
        ({"a": np.array([None])}, TypeError, "'a' must be an array of numbers"),
    ],
    ids=["complex", "str", "longdouble", "metadata-key", "object"],
)
def test_save_refuses_what_the_format_cannot_hold_before_writing(tmp_path, state, error, match):
    if np.dtype(np.longdouble).itemsize == 8 and "longdouble" in match:
        pytest.skip("long double is float64 on this platform")
    path = tmp_path / "x.safetensors"
    fastconv.save({"kept": np.ones(2)}, path)
    before = path.read_bytes()
    with pytest.raises(error, match=match):
        fastconv.save({"b": np.ones(3), **state}, path)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["x.safetensors"]


_FULL_DISK = """
import os, resource, signal, sys
import numpy as np
import fastconv

path = sys.argv[1]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    fastconv.save({"big": np.ones(100_000, np.float32)}, path)  # 400 kB: fails mid-data
except OSError as e:
    print("refused", e.errno)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_FSIZE")
def test_a_save_that_fails_mid_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.safetensors"
    old = _randomised(models.build("seed", rng=0), seed=1)
    fastconv.save(old, path)
    before = path.read_bytes()
    assert len(before) > 4096  # the old file itself is over the limit the writer gets
    script = tmp_path / "full_disk.py"
    script.write_text(textwrap.dedent(_FULL_DISK))
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(
        [sys.executable, str(script), str(path)], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.split() == ["refused", "27"], done.stderr[-2000:]
    assert path.read_bytes() == before and _leftovers(tmp_path) == []
    restored = models.build("seed", rng=2)
    fastconv.load(restored, path)
    _assert_same_state(restored.state_dict(), old.state_dict())
