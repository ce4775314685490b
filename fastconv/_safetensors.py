"""The ``.safetensors`` format, read and written with the standard library and NumPy.

The format (https://github.com/huggingface/safetensors) is an 8-byte little-endian unsigned
header length ``N``, ``N`` bytes of UTF-8 JSON, then one byte buffer::

    {"__metadata__": {"format": "pt"},
     "0.weight": {"dtype": "F32", "shape": [16, 1, 5, 5], "data_offsets": [0, 1600]}, ...}

Offsets are relative to the buffer's start; each tensor is contiguous, row-major and
little-endian, and the tensors cover the buffer exactly (no gaps, no overlaps). It is this
small, so it is read and written here directly: loading PyTorch weights needs no extra package,
and every check below happens before a byte of tensor data is read.

This module only encodes and decodes; ``fastconv.serialization`` opens files, picks the format
by suffix and writes atomically.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np

# The Rust crate's limit on the header; a larger header is refused before it is read.
MAX_HEADER_SIZE = 100_000_000
_MAX_NDIM = 64  # NumPy's

# The format's dtype codes that have a NumPy dtype (little-endian, as the format stores them).
_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in _DTYPES.items()}
# bfloat16 has no NumPy dtype. It is float32's upper half, so it is read as uint16 and widened
# to float32 exactly; it is never written (no NumPy array has that dtype).
_BF16 = "BF16"
_ITEMSIZE = {**{code: dtype.itemsize for code, dtype in _DTYPES.items()}, _BF16: 2}
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


# ---- writing ----------------------------------------------------------------------------------


def encode(arrays, metadata=None):
    """The header bytes and the data, in file order, for ``arrays`` (str -> ndarray).

    The header lists the entries in ``arrays``' order; the data are laid out by item size,
    largest first (stable), so every tensor starts at a multiple of its item size (the header
    is padded with spaces to a multiple of 8, as the Rust writer does) and a reader that maps
    the file gets aligned arrays. Raises ``TypeError`` for a dtype the format cannot hold and
    ``ValueError`` for the reserved key ``"__metadata__"``, before anything is written.

    Returns ``(header, data)``: ``header`` the bytes up to the buffer (length prefix included),
    ``data`` a list of C-contiguous little-endian arrays to write one after the other.
    """
    codes = {}
    for key, array in arrays.items():
        if key == "__metadata__":
            raise ValueError(
                "state dict key '__metadata__' is reserved by the .safetensors format "
                "(it holds the file's metadata); rename the entry or save as .npz"
            )
        code = _CODES.get(array.dtype.newbyteorder("="))
        if code is None:
            raise TypeError(
                f"state dict entry {key!r} has dtype {array.dtype}, which .safetensors cannot "
                f"hold from NumPy (it takes {', '.join(_DTYPES).lower()})"
            )
        codes[key] = code
    order = sorted(arrays, key=lambda key: -arrays[key].dtype.itemsize)
    offsets, data, start = {}, [], 0
    for key in order:
        array = np.ascontiguousarray(arrays[key], dtype=_DTYPES[codes[key]])
        offsets[key] = (start, start + array.nbytes)
        start += array.nbytes
        data.append(array)
    header = {"__metadata__": dict(metadata or {})}
    for key, array in arrays.items():
        header[key] = {
            "dtype": codes[key],
            "shape": list(array.shape),
            "data_offsets": list(offsets[key]),
        }
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    if len(text) > MAX_HEADER_SIZE:
        raise ValueError(
            f"the .safetensors header would be {len(text)} bytes, over the format's limit of "
            f"{MAX_HEADER_SIZE}: too many or too long keys"
        )
    return struct.pack("<Q", len(text)) + text, data


def write(file, header, data):
    """Write what :func:`encode` returned to the open binary ``file``."""
    file.write(header)
    for array in data:
        if array.nbytes:
            file.write(array.reshape(-1).view(np.uint8))


# ---- reading ----------------------------------------------------------------------------------


def read(file, file_size, name, expected=None):
    """Every tensor of the open ``.safetensors`` ``file``, in the header's order.

    ``file_size`` is the file's size from ``fstat``; ``name`` names the file in error messages;
    ``expected`` maps keys to the shapes a module needs, compared with the header's before any
    data are read. The whole header is validated first (see :func:`read_header`), so a forged
    file costs no more memory than the file's own size. ``BF16`` tensors come back as float32
    (exact); ``BOOL`` bytes other than 0 are True.
    """
    entries, data_start = read_header(file, file_size, name)
    if expected is not None:
        for key, (_, shape, _, _) in entries.items():
            if key in expected and shape != tuple(expected[key]):
                raise ValueError(
                    f"{name}: size mismatch for {key!r}: the file has shape {shape}, "
                    f"expected {tuple(expected[key])}"
                )
    state = {}
    for key, (code, shape, begin, end) in sorted(entries.items(), key=lambda e: e[1][2:]):
        file.seek(data_start + begin)
        state[key] = _read_tensor(file, code, shape, end - begin, f"{name}: tensor {key!r}")
    return {key: state[key] for key in entries}


def _read_tensor(file, code, shape, nbytes, where):
    raw = np.empty(shape, dtype=np.dtype("<u2") if code == _BF16 else _DTYPES[code])
    view = raw.reshape(-1).view(np.uint8)  # a view: the new array is contiguous
    done = 0
    while done < nbytes:
        got = file.readinto(view[done:])
        if not got:  # the file shrank after its size was checked
            raise ValueError(f"{where}: truncated data: {done} of its {nbytes} bytes")
        done += got
    if code == _BF16:
        wide = raw.astype(np.uint32)
        wide <<= 16  # in place: one float32-sized array beside the raw one
        return wide.view(np.float32)
    if code == "BOOL":
        return raw.view(np.uint8).astype(bool)  # any byte but 0 is True, as in C and PyTorch
    return raw.astype(raw.dtype.newbyteorder("="), copy=False)  # native order


def looks_like(head, file_size):
    """True if ``head``, a file's first 9 bytes, starts a ``.safetensors`` file of
    ``file_size`` bytes (a header length that fits, then ``{``); for a clearer error message."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (size,) = struct.unpack("<Q", head[:8])
    return size <= min(MAX_HEADER_SIZE, file_size - 8)


def read_header(file, file_size, name):
    """Read and validate the header of the open ``file`` (positioned at its start).

    Returns ``({key: (dtype code, shape, begin, end)}, data_start)`` in the header's order, the
    ``__metadata__`` entry checked and dropped. Raises ``ValueError`` naming ``name`` if the
    file is shorter than 8 bytes; the header length is over :data:`MAX_HEADER_SIZE` or past the
    end of the file (checked before the header is read); the header is not UTF-8, not JSON
    (``NaN`` and nesting deep enough to exhaust the parser included), not an object, or repeats
    a key; ``__metadata__`` is not an object of strings; an entry has keys other than
    ``dtype``, ``shape`` and ``data_offsets``, an unknown dtype, a shape that is not a list of
    at most 64 ints >= 0, or offsets that are not two ints with ``end - begin`` equal to the
    shape's byte size; or the tensors do not cover the data exactly (a gap, an overlap, bytes
    beyond the last tensor, or fewer than the offsets need).
    """
    if file_size < 8:
        raise ValueError(
            f"{name} is not a .safetensors file: {file_size} bytes, fewer than the 8 of the "
            "header length"
        )
    prefix = file.read(8)
    (size,) = struct.unpack("<Q", prefix)
    if size > min(MAX_HEADER_SIZE, file_size - 8) and prefix.startswith(b"PK\x03\x04"):
        raise ValueError(
            f"{name} is an .npz archive (a zip file), not a .safetensors file: load it under "
            "a name that does not end in .safetensors"
        )
    if size > MAX_HEADER_SIZE:
        raise ValueError(
            f"{name}: the .safetensors header claims {size} bytes, over the limit of "
            f"{MAX_HEADER_SIZE}: forged or not a .safetensors file"
        )
    if size > file_size - 8:
        raise ValueError(
            f"{name}: the .safetensors header claims {size} bytes, the file has "
            f"{file_size - 8} after the length: truncated or not a .safetensors file"
        )
    text = file.read(size)
    if len(text) != size:
        raise ValueError(f"{name}: truncated .safetensors header")
    header = _parse_json(text, name)
    data_size = file_size - 8 - size
    entries = _check_entries(header, name)
    _check_coverage(entries, data_size, name)
    return entries, 8 + size


class _DuplicateKey(ValueError):
    pass


def _object_without_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:  # json.loads keeps the last silently; two readers could then disagree
            raise _DuplicateKey(f"the key {key!r} appears twice")
        seen[key] = value
    return seen


def _refuse_constant(constant):
    raise ValueError(f"{constant} is not JSON")


def _parse_json(text, name):
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: the .safetensors header is not UTF-8: {e}") from None
    if not decoded.startswith("{"):
        raise ValueError(f"{name}: the .safetensors header is not a JSON object")
    try:
        header = json.loads(
            decoded,
            object_pairs_hook=_object_without_duplicates,
            parse_constant=_refuse_constant,
        )
    except _DuplicateKey as e:
        raise ValueError(f"{name}: .safetensors header: {e}") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{name}: the .safetensors header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{name}: the .safetensors header is not a JSON object")
    return header


def _check_entries(header, name):
    """``{key: (code, shape, begin, end)}``, each entry's fields checked on their own."""
    entries = {}
    for key, entry in header.items():
        where = f"{name}: .safetensors entry {key!r}"
        if key == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise ValueError(f"{where} must map str to str, got {entry!r:.200}")
            continue
        if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
            got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise ValueError(f"{where} must have exactly the keys {sorted(_ENTRY_KEYS)}, got {got}")
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(code, str) or code not in _ITEMSIZE:
            known = ", ".join(sorted(_ITEMSIZE))
            raise ValueError(f"{where}: dtype {code!r:.40} is not one fastconv reads ({known})")
        if not (
            isinstance(shape, list) and len(shape) <= _MAX_NDIM and all(_is_size(d) for d in shape)
        ):
            raise ValueError(
                f"{where}: shape must be a list of at most {_MAX_NDIM} ints >= 0, "
                f"got {shape!r:.200}"
            )
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_size, offsets))):
            raise ValueError(f"{where}: data_offsets must be two ints >= 0, got {offsets!r:.200}")
        begin, end = offsets
        nbytes = math.prod(shape) * _ITEMSIZE[code]
        if end - begin != nbytes:
            raise ValueError(
                f"{where}: data_offsets [{begin}, {end}] hold {end - begin} bytes, "
                f"its shape {shape} of {code} needs {nbytes}"
            )
        if nbytes == 0:  # free to allocate, but NumPy refuses e.g. (0, 2**62) of float64
            try:
                np.empty(shape, dtype=np.float64 if code == _BF16 else _DTYPES[code])
            except ValueError as e:
                raise ValueError(f"{where}: shape {shape} is too large for NumPy: {e}") from None
        entries[key] = (code, tuple(shape), begin, end)
    return entries


def _is_size(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _check_coverage(entries, data_size, name):
    """The tensors, sorted by offset, must tile ``[0, data_size)`` exactly, as the spec asks."""
    position = 0
    for key, (_, _, begin, end) in sorted(entries.items(), key=lambda e: e[1][2:]):
        if begin != position:
            what = "overlaps the tensor before it" if begin < position else "leaves a gap"
            raise ValueError(
                f"{name}: .safetensors entry {key!r} starts at byte {begin} of the data and "
                f"{what} (which ends at {position})"
            )
        position = end
    if position != data_size:
        problem = "bytes after the last tensor" if position < data_size else "truncated data"
        raise ValueError(
            f"{name}: the .safetensors tensors need {position} bytes of data, the file has "
            f"{data_size}: {problem}"
        )
