"""Files that lie: checkpoints and IDX files built to exhaust memory, hang or crash the reader.

Each must give a ``ValueError`` naming the file and what is wrong, after reading no more than
the header promises (peak memory measured with tracemalloc, which sees NumPy's allocations and
the decompressor's buffers), and a saved file must be written through symlinks, keep its mode
and leave no temporary file behind, even after a save that was killed.
"""

from __future__ import annotations

import gzip
import os
import re
import stat
import struct
import threading
import tracemalloc
import zipfile

import numpy as np
import pytest

import fastconv
from fastconv import nn
from fastconv.datasets import fashion_mnist, load_idx
from fastconv.serialization import save

MB = 1 << 20


def _net():
    return nn.Sequential(nn.Conv2d(1, 2, 3, rng=0), nn.Flatten(), nn.Linear(8, 3, rng=0))


def _npy_header(shape, dtype="<f4", version=1):
    """The bytes of a ``.npy`` header claiming ``shape`` of ``dtype`` (no data)."""
    text = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    if version == 1:
        pad = -(10 + len(text) + 1) % 64
        return (
            b"\x93NUMPY\x01\x00"
            + struct.pack("<H", len(text) + pad + 1)
            + (text + " " * pad + "\n").encode()
        )
    pad = -(12 + len(text) + 1) % 64
    return (
        b"\x93NUMPY\x02\x00"
        + struct.pack("<I", len(text) + pad + 1)
        + (text + " " * pad + "\n").encode()
    )


def _archive(path, members, compression=zipfile.ZIP_DEFLATED):
    """Write ``{name: (header bytes, number of zero bytes after it)}`` as a zip archive,
    streaming the zeros so that building a bomb needs no memory."""
    with zipfile.ZipFile(path, "w", compression=compression, allowZip64=True) as zf:
        for name, (header, zeros) in members.items():
            with zf.open(name, "w", force_zip64=True) as f:
                f.write(header)
                block = bytes(MB)
                for start in range(0, zeros, MB):
                    f.write(block[: min(MB, zeros - start)])


def _peak_bytes(fn):
    """Run ``fn`` (which must raise ValueError); return the error and the peak traced memory."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            fn()
        return info.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------------------------------
# Checkpoints (.npz)
# ---------------------------------------------------------------------------------------------


def test_a_zip_bomb_member_is_refused_by_its_header_before_inflating(tmp_path):
    path = tmp_path / "bomb.npz"
    state = {k: (_npy_header(v.shape), v.nbytes) for k, v in _net().state_dict().items()}
    # 64 MB of zeros behind a header that says so; the model's 0.weight is (2, 1, 3, 3).
    state["0.weight"] = (_npy_header((16 * MB,)), 64 * MB)
    _archive(path, {k + ".npy": v for k, v in state.items()})
    assert path.stat().st_size < MB
    error, peak = _peak_bytes(lambda: fastconv.load(_net(), path))
    assert "bomb.npz" in str(error) and "size mismatch for '0.weight'" in str(error)
    assert peak < 4 * MB


def test_a_member_that_inflates_past_its_header_is_refused_early(tmp_path):
    path = tmp_path / "long.npz"
    _archive(path, {"a.npy": (_npy_header((4,)), 64 * MB)})  # 16 bytes promised, 64 MB there
    error, peak = _peak_bytes(lambda: fastconv.load(path))
    assert "long.npz" in str(error) and "data after the 16 bytes" in str(error)
    assert peak < 16 * MB


@pytest.mark.parametrize(
    "members, message",
    [
        ({"a.npy": (_npy_header((1 << 40,)), 64)}, "promises shape .* the archive holds"),
        ({"a.npy": (_npy_header((4,), "|O"), 0)}, "object array"),
        ({"a.npy": (_npy_header((4,), "<U3"), 48)}, "not a number type"),
        ({"a.npy": (b"\x93NUMPY\x02\x00" + struct.pack("<I", 1 << 30) + b"{", 0)}, "header"),
        ({"a.npy": (b"not an npy file at all", 0)}, "not a valid .npy header"),
        ({"a.txt": (b"hello", 0)}, "not an .npy array"),
    ],
    ids=["huge-shape", "object", "strings", "huge-header", "not-npy", "not-npy-name"],
)
def test_forged_members_are_value_errors_naming_the_file(tmp_path, members, message):
    path = tmp_path / "forged.npz"
    _archive(path, members, compression=zipfile.ZIP_STORED)
    error, peak = _peak_bytes(lambda: fastconv.load(path))
    assert "forged.npz" in str(error)
    assert re.search(message, str(error)), str(error)
    assert peak < 4 * MB


@pytest.mark.parametrize(
    "shape, message", [((-4,), "negative shape"), (("a",), "shape is not valid")], ids=str
)
def test_forged_header_shapes(tmp_path, shape, message):
    text = repr({"descr": "<f4", "fortran_order": False, "shape": shape})
    header = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text) + 1) + (text + "\n").encode()
    path = tmp_path / "shape.npz"
    _archive(path, {"a.npy": (header, 16)}, compression=zipfile.ZIP_STORED)
    with pytest.raises(ValueError, match=f"shape.npz.*{message}"):
        fastconv.load(path)


def test_members_compressed_past_the_bound_are_refused(tmp_path):
    path = tmp_path / "bz2.npz"
    _archive(path, {"a.npy": (_npy_header((4,)), 16)}, compression=zipfile.ZIP_BZIP2)
    with pytest.raises(ValueError, match="bz2.npz.*compression method 12"):
        fastconv.load(path)


def test_forged_archive_sizes_are_refused(tmp_path):
    path = tmp_path / "sizes.npz"
    _archive(path, {"a.npy": (_npy_header((4,)), 16)})
    data = bytearray(path.read_bytes())
    # The central directory's uncompressed size of the member (offset 24 of its entry):
    # claim 4 GB for the few bytes it compresses to.
    at = data.rfind(b"PK\x01\x02")
    data[at + 24 : at + 28] = struct.pack("<I", 0xFFFFFFF0)
    path.write_bytes(bytes(data))
    error, peak = _peak_bytes(lambda: fastconv.load(path))
    assert "sizes.npz" in str(error) and "forged sizes" in str(error)
    assert peak < 4 * MB


def _saved(tmp_path):
    path = tmp_path / "good.npz"
    save(_net(), path)
    return path


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a readable"),
        (lambda p: p.write_bytes(p.read_bytes()[:-30]), "not a readable"),
        (lambda p: p.write_bytes(b"PK\x03\x04" + bytes(100)), "not a readable"),
        (lambda p: _flip_data_byte(p), "not a readable"),
    ],
    ids=["empty", "half", "no-end-record", "zip-magic-only", "bad-crc"],
)
def test_damaged_checkpoints_are_value_errors(tmp_path, spoil, message):
    path = _saved(tmp_path)
    spoil(path)
    net = _net()
    before = {k: v.copy() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=message) as info:
        fastconv.load(net, path)
    assert "good.npz" in str(info.value)
    for key, value in net.state_dict().items():  # nothing loaded
        np.testing.assert_array_equal(value, before[key])


def _flip_data_byte(path):
    data = bytearray(path.read_bytes())
    at = data.find(b"\x93NUMPY") + 200  # inside the first member's data (stored, so the CRC)
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _does_not_hang(fn, seconds=10):
    result = {}

    def target():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 (handed to the test thread)
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the reader hangs"
    return result.get("error")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("reader", ["checkpoint", "idx"])
def test_fifos_and_directories_are_refused_without_hanging(tmp_path, reader):
    read = fastconv.load if reader == "checkpoint" else load_idx
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    error = _does_not_hang(lambda: read(fifo))
    assert isinstance(error, ValueError) and "not a regular file" in str(error)
    assert "pipe" in str(error)
    with pytest.raises(ValueError, match="is a directory"):
        read(tmp_path)


# ---------------------------------------------------------------------------------------------
# IDX files (.gz)
# ---------------------------------------------------------------------------------------------


def _idx_header(shape, code=0x08):
    return bytes([0, 0, code, len(shape)]) + b"".join(struct.pack(">I", d) for d in shape)


def _gzip_stream(path, header, zeros):
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header)
        block = bytes(MB)
        for start in range(0, zeros, MB):
            f.write(block[: min(MB, zeros - start)])


def test_a_gzip_bomb_idx_inflates_no_further_than_its_header(tmp_path):
    path = tmp_path / "bomb-idx1-ubyte.gz"
    _gzip_stream(path, _idx_header((1000,)), 256 * MB)
    assert path.stat().st_size < 2 * MB
    error, peak = _peak_bytes(lambda: load_idx(path))
    assert "bomb-idx1-ubyte.gz" in str(error) and "trailing data" in str(error)
    assert peak < 16 * MB


def test_a_huge_idx_header_is_refused_before_allocating(tmp_path):
    plain, packed = tmp_path / "huge-idx3-ubyte", tmp_path / "huge-idx3-ubyte.gz"
    plain.write_bytes(_idx_header((60000, 28, 28 * 1000)) + bytes(100))
    packed.write_bytes(gzip.compress(_idx_header((4_000_000_000, 4_000_000_000, 8))))
    for path in (plain, packed):
        error, peak = _peak_bytes(lambda path=path: load_idx(path))
        assert path.name in str(error) and "truncated IDX data" in str(error)
        assert peak < MB


def test_fashion_mnist_checks_both_headers_before_reading_data(tmp_path):
    # An images file that is a gzip bomb of the right kind, (N, 28, 28) uint8 with N = 50,000,
    # and a labels file for 10 images: refused from the headers alone.
    images = tmp_path / "train-images-idx3-ubyte.gz"
    _gzip_stream(images, _idx_header((50_000, 28, 28)), 50_000 * 28 * 28)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_header((10,)) + bytes(10))
    error, peak = _peak_bytes(lambda: fashion_mnist("train", root=tmp_path))
    assert "train-labels-idx1-ubyte" in str(error) and "expected 50000 uint8 labels" in str(error)
    assert peak < MB
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_header((10,)) + bytes(10))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(_idx_header((10, 32, 32)) + bytes(10 * 32 * 32))
    )
    with pytest.raises(ValueError, match=r"expected uint8 images of shape \(N, 28, 28\)"):
        fashion_mnist("train", root=tmp_path)


def test_truncated_gzip_idx_is_a_value_error(tmp_path):
    path = tmp_path / "cut-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_header((5000,)) + bytes(range(256)) * 20)[:200])
    with pytest.raises(ValueError, match="cut-idx1-ubyte.gz: (corrupt gzip|truncated)"):
        load_idx(path)


# ---------------------------------------------------------------------------------------------
# Writing: symlinks, modes, temporaries of killed saves
# ---------------------------------------------------------------------------------------------


def test_save_writes_through_a_symlink_and_keeps_the_mode(tmp_path):
    target = tmp_path / "real" / "model.npz"
    target.parent.mkdir()
    save({"a": np.zeros(2)}, target)
    os.chmod(target, 0o600)
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    save({"a": np.ones(2)}, link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    np.testing.assert_array_equal(fastconv.load(target)["a"], np.ones(2))
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.npz"]


def test_a_killed_saves_temporary_is_removed_by_the_next_save(tmp_path):
    path = tmp_path / "m.npz"
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)  # a pid that is gone
    stale = tmp_path / f".m.npz.{dead}.0a1b2c3d.tmp"
    stale.write_bytes(bytes(1000))
    live = tmp_path / f".m.npz.{os.getppid()}.0a1b2c3d.tmp"  # a live process's save
    live.write_bytes(b"")
    other = tmp_path / f".other.npz.{dead}.0a1b2c3d.tmp"  # another file's: not this save's
    other.write_bytes(b"")
    save({"a": np.zeros(2)}, path)
    assert not stale.exists() and live.exists() and other.exists()
