"""Tests for fastconv.datasets: the IDX reader, the data set search/download, and DataLoader.

None of these touch the network: the module-wide ``offline`` fixture replaces the downloader's
``_fetch`` and points every search location at temporary directories.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from fastconv import datasets as ds

DTYPE_CODES = {
    np.uint8: 0x08,
    np.int8: 0x09,
    np.int16: 0x0B,
    np.int32: 0x0C,
    np.float32: 0x0D,
    np.float64: 0x0E,
}
SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` as an IDX file (header, then big-endian data)."""
    code = DTYPE_CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_split(directory: Path, split: str, n: int, gz: bool = True) -> Path:
    """Write a tiny MNIST-like split of ``n`` images to ``directory``; image ``i`` is all ``i``."""
    directory.mkdir(parents=True, exist_ok=True)
    images_stem, labels_stem = ds._SPLIT_FILES[split]
    suffix = ".gz" if gz else ""
    images = np.repeat(np.arange(n, dtype=np.uint8), 28 * 28).reshape(n, 28, 28)
    labels = (np.arange(n) % 10).astype(np.uint8)
    write_idx(directory / f"{images_stem}{suffix}", images, gz)
    write_idx(directory / f"{labels_stem}{suffix}", labels, gz)
    return directory


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network, no real cache, no system directory, no $FASTCONV_DATA unless a test sets one."""
    calls = []

    def fetch(url, timeout):
        calls.append(url)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(ds, "_fetch", fetch)
    monkeypatch.delenv("FASTCONV_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(ds, "_SYSTEM_DIRS", {"fashion-mnist": (), "mnist": ()})
    return calls


# ---------------------------------------------------------------------------------------------
# load_idx
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize(
    "dtype, shape",
    [
        (np.uint8, (5, 28, 28)),
        (np.int8, (7,)),
        (np.int16, (2, 3, 4, 5)),
        (np.int32, (3, 4)),
        (np.float32, (2, 1, 3)),
        (np.float64, (4, 2)),
        (np.uint8, (0, 28, 28)),
    ],
    ids=["uint8-3d", "int8-1d", "int16-4d", "int32-2d", "float32-3d", "float64-2d", "empty"],
)
def test_load_idx_round_trip(tmp_path, dtype, shape, gz):
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        array = rng.standard_normal(shape).astype(dtype)
    path = write_idx(tmp_path / "a.idx", array, gz=gz)
    got = ds.load_idx(path)
    assert got.dtype == dtype and got.dtype.isnative
    assert got.shape == shape
    assert got.flags.writeable and got.flags.c_contiguous
    np.testing.assert_array_equal(got, array)


def test_load_idx_detects_gzip_by_content_not_name(tmp_path):
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    gz_without_suffix = write_idx(tmp_path / "data.idx", array, gz=True)
    plain_with_suffix = write_idx(tmp_path / "data.gz", array, gz=False)
    np.testing.assert_array_equal(ds.load_idx(gz_without_suffix), array)
    np.testing.assert_array_equal(ds.load_idx(str(plain_with_suffix)), array)


def test_load_idx_missing_file(tmp_path):
    path = tmp_path / "nope-idx3-ubyte"
    with pytest.raises(FileNotFoundError, match="nope-idx3-ubyte"):
        ds.load_idx(path)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize(
    "content, message",
    [
        (b"", r"truncated IDX header: expected at least 4 bytes, got 0"),
        (b"\x00\x00\x08", r"truncated IDX header: expected at least 4 bytes, got 3"),
        (b"\x00\x01\x08\x01" + bytes(8), r"bad IDX magic number 0x00010801"),
        (b"PK\x03\x04" + bytes(8), r"bad IDX magic number 0x504B0304"),
        (b"\x00\x00\x0a\x01\x00\x00\x00\x01\x00", r"unknown dtype code 0x0A"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", r"truncated IDX header: expected 16 bytes .* got 8"),
        (
            b"\x00\x00\x08\x02\x00\x00\x00\x03\x00\x00\x00\x04" + bytes(10),
            r"truncated IDX data: expected 12 bytes .*got 10",
        ),
        (
            b"\x00\x00\x0c\x01\x00\x00\x00\x02" + bytes(7),
            r"truncated IDX data: expected 8 bytes .*int32.*got 7",
        ),
        (
            b"\x00\x00\x08\x01\x00\x00\x00\x02" + bytes(5),
            r"trailing data .* expected 2 bytes .*got 5 \(3 extra\)",
        ),
    ],
    ids=[
        "empty",
        "short-magic",
        "nonzero-byte",
        "zip-file",
        "unknown-dtype",
        "short-dims",
        "truncated-uint8",
        "truncated-int32",
        "trailing",
    ],
)
def test_load_idx_rejects_bad_files(tmp_path, content, message, gz):
    path = tmp_path / "bad-file-idx"
    path.write_bytes(gzip.compress(content) if gz else content)
    with pytest.raises(ValueError, match=message) as info:
        ds.load_idx(path)
    assert str(path) in str(info.value)


def test_load_idx_corrupt_gzip(tmp_path):
    path = tmp_path / "broken.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(100, np.uint8)))[:-12])
    with pytest.raises(ValueError, match="broken.gz.*corrupt gzip"):
        ds.load_idx(path)


# ---------------------------------------------------------------------------------------------
# fashion_mnist / mnist: where the files are looked for
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("split, n", [("train", 6), ("test", 4)])
def test_explicit_root(tmp_path, split, n, gz):
    root = write_split(tmp_path / "root", split, n, gz=gz)
    images, labels = ds.fashion_mnist(split, root=root)
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    np.testing.assert_array_equal(images[:, 0, 0], np.arange(n))
    np.testing.assert_array_equal(labels, np.arange(n) % 10)


def test_explicit_root_subfolder(tmp_path):
    write_split(tmp_path / "data" / "fashion-mnist", "train", 3)
    write_split(tmp_path / "data" / "mnist", "train", 5)
    assert len(ds.fashion_mnist(root=tmp_path / "data")[0]) == 3
    assert len(ds.mnist(root=str(tmp_path / "data"))[0]) == 5


def test_explicit_root_is_authoritative(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("FASTCONV_DATA", str(write_split(tmp_path / "env", "train", 3)))
    write_split(tmp_path / "root", "test", 2)  # the test split only
    with pytest.raises(FileNotFoundError) as info:
        ds.fashion_mnist("train", root=tmp_path / "root")
    message = str(info.value)
    assert str(tmp_path / "root") in message
    assert "train-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message
    assert isinstance(info.value, RuntimeError)
    assert offline == []  # nothing downloaded into an explicit root


def test_env_var_then_cache(tmp_path, monkeypatch):
    cache = write_split(tmp_path / "xdg-cache" / "fastconv" / "fashion-mnist", "train", 4)
    env = tmp_path / "env"
    monkeypatch.setenv("FASTCONV_DATA", str(env))
    # $FASTCONV_DATA without the files: fall through to the cache.
    env.mkdir()
    assert len(ds.fashion_mnist()[0]) == 4
    # Files directly in $FASTCONV_DATA win over the cache ...
    write_split(env, "train", 7)
    assert len(ds.fashion_mnist()[0]) == 7
    # ... and so do files in its data set subfolder.
    for f in env.iterdir():
        f.unlink()
    write_split(env / "fashion-mnist", "train", 2)
    write_split(env / "mnist", "train", 9)
    assert len(ds.fashion_mnist()[0]) == 2
    assert len(ds.mnist()[0]) == 9
    assert cache.is_dir()


def test_cache_without_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write_split(tmp_path / "home" / ".cache" / "fastconv" / "mnist", "test", 5)
    assert len(ds.mnist("test")[0]) == 5


def test_system_dir_is_searched_last(tmp_path, monkeypatch):
    system = write_split(tmp_path / "usr-share", "train", 8)
    monkeypatch.setattr(ds, "_SYSTEM_DIRS", {"fashion-mnist": (str(system),), "mnist": ()})
    assert len(ds.fashion_mnist()[0]) == 8
    write_split(tmp_path / "xdg-cache" / "fastconv" / "fashion-mnist", "train", 3)
    assert len(ds.fashion_mnist()[0]) == 3


def test_plain_file_preferred_over_gzip(tmp_path):
    root = write_split(tmp_path / "root", "train", 3, gz=True)
    write_split(root, "train", 5, gz=False)
    assert len(ds.fashion_mnist(root=root)[0]) == 5


def test_bad_split():
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'valid'"):
        ds.fashion_mnist("valid")


def test_wrong_image_shape_or_label_count(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    write_idx(root / "train-images-idx3-ubyte", np.zeros((3, 32, 32), np.uint8))
    write_idx(root / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*\(N, 28, 28\)"):
        ds.fashion_mnist(root=root)
    write_idx(root / "train-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write_idx(root / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte: expected 3 uint8 labels"):
        ds.fashion_mnist(root=root)
    write_idx(root / "train-labels-idx1-ubyte", np.array([0, 3, 10], np.uint8))
    with pytest.raises(ValueError, match=r"labels must be in 0..9, found 10"):
        ds.fashion_mnist(root=root)


# ---------------------------------------------------------------------------------------------
# Downloading (with a fake _fetch) and the offline error
# ---------------------------------------------------------------------------------------------


def test_offline_error_says_how_to_get_the_data(tmp_path, offline):
    with pytest.raises(RuntimeError) as info:
        ds.fashion_mnist("train")
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "root=" in message and "FASTCONV_DATA" in message
    for name in ds._ALL_FILES:
        assert f"{name}.gz" in message
    assert "network disabled in tests" in message
    # Both mirrors were tried, and no partial file was left in the cache.
    assert len(offline) == 2 and all(u.endswith("train-images-idx3-ubyte.gz") for u in offline)
    cache = tmp_path / "xdg-cache" / "fastconv" / "fashion-mnist"
    assert list(cache.iterdir()) == []


def test_offline_error_mnist_has_no_apt_hint(offline):
    with pytest.raises(FileNotFoundError) as info:
        ds.mnist("test")
    message = str(info.value)
    assert "apt-get" not in message and "FASTCONV_DATA" in message
    assert offline == ["https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz"]


def test_download_false_does_not_fetch(offline):
    with pytest.raises(FileNotFoundError, match="download=False"):
        ds.fashion_mnist(download=False)
    assert offline == []


def fake_server(tmp_path, monkeypatch, n=6, fail=()):
    """Serve a tiny split's .gz files through ``_fetch``; URLs containing ``fail`` raise."""
    files = {f.name: f.read_bytes() for f in write_split(tmp_path / "server", "train", n).iterdir()}
    md5 = {name: hashlib.md5(data).hexdigest() for name, data in files.items()}
    calls = []

    def fetch(url, timeout):
        calls.append(url)
        if any(part in url for part in fail):
            raise OSError(f"cannot reach {url}")
        return io.BytesIO(files[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(ds, "_fetch", fetch)
    monkeypatch.setitem(ds._DATASETS["fashion-mnist"], "md5", md5)
    return calls


def test_download_into_cache(tmp_path, monkeypatch):
    calls = fake_server(tmp_path, monkeypatch, n=6)
    images, labels = ds.fashion_mnist()
    assert images.shape == (6, 28, 28) and labels.dtype == np.int64
    cache = tmp_path / "xdg-cache" / "fastconv" / "fashion-mnist"
    assert sorted(os.listdir(cache)) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert len(calls) == 2 and all("raw.githubusercontent.com" in u for u in calls)
    # The second call finds the files in the cache and downloads nothing.
    ds.fashion_mnist()
    assert len(calls) == 2


def test_download_falls_back_to_second_mirror(tmp_path, monkeypatch):
    calls = fake_server(tmp_path, monkeypatch, fail=("githubusercontent",))
    assert len(ds.fashion_mnist()[0]) == 6
    assert [u.split("/")[2] for u in calls].count("raw.githubusercontent.com") == 2
    assert len(calls) == 4


def test_download_checksum_mismatch_leaves_no_file(tmp_path, monkeypatch):
    fake_server(tmp_path, monkeypatch)
    bad = dict(ds._DATASETS["fashion-mnist"]["md5"], **{"train-labels-idx1-ubyte.gz": "0" * 32})
    monkeypatch.setitem(ds._DATASETS["fashion-mnist"], "md5", bad)
    with pytest.raises(RuntimeError, match="checksum mismatch .* expected MD5 0{32}"):
        ds.fashion_mnist()
    cache = tmp_path / "xdg-cache" / "fastconv" / "fashion-mnist"
    assert os.listdir(cache) == ["train-images-idx3-ubyte.gz"]  # only the verified file


def test_published_checksums_are_complete():
    for info in ds._DATASETS.values():
        assert sorted(info["md5"]) == sorted(f"{name}.gz" for name in ds._ALL_FILES)
        assert all(len(h) == 32 and int(h, 16) >= 0 for h in info["md5"].values())


# ---------------------------------------------------------------------------------------------
# The real Fashion-MNIST, if the Debian package is installed
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not SYSTEM_FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
@pytest.mark.parametrize("split, n", [("train", 60000), ("test", 10000)])
def test_real_fashion_mnist(split, n, monkeypatch):
    monkeypatch.setattr(ds, "_SYSTEM_DIRS", {"fashion-mnist": (str(SYSTEM_FASHION),), "mnist": ()})
    images, labels = ds.fashion_mnist(split)
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert labels.min() == 0 and labels.max() == 9
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, n // 10))
    assert 0.27 < images.mean() / 255 < 0.30  # the usual normalisation mean is 0.2860


# ---------------------------------------------------------------------------------------------
# DataLoader
# ---------------------------------------------------------------------------------------------


def make_xy(n=10):
    y = np.arange(n)
    x = (y * 10).astype(np.float32).reshape(n, 1)
    return x, y


@pytest.mark.parametrize(
    "n, batch_size, drop_last, sizes",
    [
        (10, 3, False, [3, 3, 3, 1]),
        (10, 3, True, [3, 3, 3]),
        (9, 3, False, [3, 3, 3]),
        (9, 3, True, [3, 3, 3]),
        (5, 8, False, [5]),
        (5, 8, True, []),
        (0, 4, False, []),
    ],
    ids=[
        "remainder",
        "drop-remainder",
        "exact",
        "exact-drop",
        "one-small",
        "one-small-drop",
        "empty",
    ],
)
@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
def test_batching(n, batch_size, drop_last, sizes, shuffle):
    x, y = make_xy(n)
    loader = ds.DataLoader(x, y, batch_size, shuffle=shuffle, drop_last=drop_last, seed=0)
    assert len(loader) == len(sizes)
    batches = list(loader)
    assert [len(yb) for _, yb in batches] == sizes
    for xb, yb in batches:
        np.testing.assert_array_equal(xb[:, 0], yb * 10)  # pairs stay together
        assert xb.dtype == np.float32 and yb.dtype == y.dtype
    seen = np.concatenate([yb for _, yb in batches]) if batches else np.array([], int)
    assert len(np.unique(seen)) == len(seen)  # no sample twice
    if not drop_last:
        np.testing.assert_array_equal(np.sort(seen), y)
    if not shuffle:
        np.testing.assert_array_equal(seen, y[: len(seen)])


def test_shuffle_is_seeded_and_changes_every_epoch():
    x, y = make_xy(50)

    def epochs(loader, k=3):
        return [np.concatenate([yb for _, yb in loader]) for _ in range(k)]

    a = epochs(ds.DataLoader(x, y, 8, seed=123))
    b = epochs(ds.DataLoader(x, y, 8, seed=123))
    c = epochs(ds.DataLoader(x, y, 8, seed=124))
    for ea, eb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ea, eb)
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[1], a[2])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0], y)


def test_rng_state_round_trips_through_json():
    import json

    x, y = make_xy(30)
    loader = ds.DataLoader(x, y, 4, seed=7)
    list(loader)
    state = json.loads(json.dumps(loader.rng.bit_generator.state))
    expected = np.concatenate([yb for _, yb in loader])
    resumed = ds.DataLoader(x, y, 4, seed=999)
    resumed.rng.bit_generator.state = state
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in resumed]), expected)


def test_unshuffled_batches_are_views():
    x, y = make_xy(6)
    xb, _ = next(iter(ds.DataLoader(x, y, 4, shuffle=False)))
    assert np.shares_memory(xb, x)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "4", None])
def test_bad_batch_size(batch_size):
    x, y = make_xy(4)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        ds.DataLoader(x, y, batch_size)


def test_length_mismatch():
    with pytest.raises(ValueError, match=r"same length, got len\(x\)=5 and len\(y\)=4"):
        ds.DataLoader(np.zeros((5, 2)), np.zeros(4), 2)
    with pytest.raises(ValueError, match="batch axis"):
        ds.DataLoader(np.float32(1.0), np.zeros(1), 2)


def test_seed_follows_the_rng_contract():
    # One contract everywhere: a Generator (used as is), an int seed, or None (fresh entropy).
    x, y = make_xy(20)
    gen = np.random.default_rng(5)
    loader = ds.DataLoader(x, y, 4, seed=gen)
    assert loader.rng is gen
    first = np.concatenate([yb for _, yb in ds.DataLoader(x, y, 4, seed=5)])
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in loader]), first)
    assert isinstance(ds.DataLoader(x, y, 4).rng, np.random.Generator)
    for bad in ("5", 1.5, True, [1, 2]):
        with pytest.raises(TypeError, match="seed"):
            ds.DataLoader(x, y, 4, seed=bad)


@pytest.mark.parametrize("name", ["shuffle", "drop_last"])
def test_flags_must_be_bools(name):
    x, y = make_xy(4)
    with pytest.raises(TypeError, match=name):
        ds.DataLoader(x, y, 2, **{name: 1})
