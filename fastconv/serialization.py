"""Save and load state dicts (a module's, an optimizer's, or a plain dict of arrays).

The format follows the file name: ``.safetensors`` (any case) is the format PyTorch users
export to (``safetensors.torch.save_file``), read and written by ``fastconv._safetensors``
without any extra package; every other name is an ``.npz`` archive.

``save`` writes atomically: the archive goes to a temporary file in the target's directory,
which is flushed, fsynced and then renamed over the target, so a crash or an error mid-save
leaves the previous file intact. The training loop (``fastconv.training``) writes its JSON and
PNG files through the same writer. ``load`` reads ``.npz`` with ``allow_pickle=False``, so a
file holding object arrays is refused instead of running arbitrary code; ``.safetensors`` holds
no code at all.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import stat
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

from fastconv import _safetensors

__all__ = ["save", "load"]


def _write_atomically(path, write):
    """Call ``write(f)`` on a new binary file, then rename it to ``path`` (str or PathLike).

    The temporary file sits beside the file written (same file system, so the rename is atomic),
    is fsynced before the rename and removed if anything fails; the directory is fsynced after.
    A symlink at ``path`` is written through (its target is replaced, the link stays, as
    ``open(path, "w")`` and ``torch.save`` do), and an existing file keeps its permission bits.
    Temporary files that a killed save of the same file left behind (their process is gone)
    are removed first, so they cannot pile up.
    """
    path = os.path.realpath(os.fspath(path))
    directory, name = os.path.split(path)
    _remove_stale_temporaries(directory, name)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = None
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 lets the umask decide the permissions, as for any newly created file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _remove_stale_temporaries(directory, name):
    """Remove ``.{name}.{pid}.{hex}.tmp`` files whose writing process no longer exists.

    A live process's temporary (a concurrent save) is left alone; a pid reused by an unrelated
    process only delays the clean-up to a later save.
    """
    prefix = f".{name}."
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        parts = entry[len(prefix) :].split(".")
        if not (entry.startswith(prefix) and len(parts) == 3 and parts[2] == "tmp"):
            continue
        if not parts[0].isdigit() or _process_exists(int(parts[0])):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, entry))


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process, or not ours to judge: keep its file
    return True


def _fsync_directory(directory):
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_npz(file, arrays):
    """Write ``arrays`` (str -> ndarray) to the open binary ``file`` in ``np.savez``'s format.

    Done by hand rather than with ``np.savez(file, **arrays)`` so that any key works (savez's
    own keyword arguments ``file`` and ``allow_pickle`` would clash) and pickle is never used.
    """
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, array in arrays.items():
            with zf.open(key + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def _state_arrays(obj):
    """The state dict of ``obj`` (anything with ``state_dict()``, or a mapping) as arrays.

    Checked before anything is written, so a bad entry never leaves a half-written file.
    """
    if callable(getattr(obj, "state_dict", None)):
        state = obj.state_dict()
    elif isinstance(obj, Mapping):
        state = obj
    else:
        raise TypeError(
            "obj must be a module (or anything with state_dict()) or a dict of arrays, "
            f"got {type(obj).__name__}"
        )
    arrays = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"state dict keys must be str, got {key!r}")
        array = np.asanyarray(value)
        if array.dtype.hasobject:  # would need pickle to store
            raise TypeError(
                f"state dict entry {key!r} must be an array of numbers, got {type(value).__name__}"
            )
        arrays[key] = array
    return arrays


def _is_safetensors(path):
    """True if ``path`` (str, bytes or PathLike) names a ``.safetensors`` file (any case)."""
    return os.fsdecode(path).lower().endswith(".safetensors")


def save(obj, path):
    """Write a state dict to ``path`` atomically: ``.safetensors`` by suffix, else ``.npz``.

    Parameters
    ----------
    obj : fastconv.nn.Module, fastconv.optim.Optimizer or dict of str to array
        A module or optimizer (its ``state_dict()`` is written) or a state dict itself.
        Numbers become 0-d arrays (a 0-d tensor, shape ``[]``, in ``.safetensors``).
    path : str or os.PathLike
        The exact file name written (no suffix is appended). A name ending in
        ``.safetensors`` (any case) gets the safetensors format, which
        ``safetensors.torch.load_file`` reads; any other name an ``.npz`` archive. An existing
        file is replaced only once the new one is completely on disk; if saving fails it is
        left untouched and the temporary file is removed.

    Raises
    ------
    TypeError
        If ``obj`` is neither, a key is not a str, or a value is not numeric (object arrays
        would need pickle); for ``.safetensors`` also a dtype that format has no code for
        (complex, float128, strings). Nothing is written then.
    ValueError
        For ``.safetensors``, a key ``"__metadata__"`` (the format reserves it).

    Notes
    -----
    Read it back with :func:`load`; an ``.npz`` also with ``np.load(path)``, a
    ``.safetensors`` with ``safetensors.numpy.load_file`` or ``safetensors.torch.load_file``.
    The ``.safetensors`` header carries ``{"format": "pt"}`` as metadata, which Hugging Face
    ``transformers`` asks of PyTorch weights (``safetensors`` itself asks nothing); its data
    are laid out largest item size first, so every tensor is aligned.
    """
    arrays = _state_arrays(obj)
    if _is_safetensors(path):
        header, data = _safetensors.encode(arrays, metadata={"format": "pt"})
        _write_atomically(path, lambda f: _safetensors.write(f, header, data))
    else:
        _write_atomically(path, lambda f: _write_npz(f, arrays))


def load(module=None, path=None, strict=True):
    """Read a state dict saved by :func:`save`; load it into ``module`` if one is given.

    ``load(path)`` returns the state dict; ``load(module, path)`` loads it into ``module`` in
    place, as ``module.load_state_dict`` does. A name ending in ``.safetensors`` (any case) is
    read as safetensors (e.g. ``safetensors.torch.save_file(torch_model.state_dict(), path)``),
    any other as ``.npz``; neither needs PyTorch or the ``safetensors`` package.

    Parameters
    ----------
    module : fastconv.nn.Module or fastconv.optim.Optimizer, optional
        Anything with ``load_state_dict``. When it is omitted, the first argument is the path.
    path : str or os.PathLike
        An ``.npz`` archive or a ``.safetensors`` file (by suffix).
    strict : bool
        As in ``Module.load_state_dict``: missing or unexpected keys are errors when True.

    Returns
    -------
    dict of str to numpy.ndarray, or IncompatibleKeys
        ``load(path)``: the state dict, in the order it was saved (numbers as 0-d arrays).
        From ``.safetensors``, ``BF16`` tensors are widened to float32 (exactly: NumPy has no
        bfloat16) and the other dtypes kept; the order is the header's.
        ``load(module, path)``: what ``module.load_state_dict`` returns; for a module,
        ``(missing_keys, unexpected_keys)``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file cannot be a checkpoint: not a regular file (a directory, FIFO or device,
        refused without blocking), empty, not an ``.npz`` archive, truncated or corrupt, a
        member whose header is not a numeric ``.npy`` header (object arrays need pickle) or
        promises more data than the archive holds, data beyond the header's promise, or a
        missing, unexpected or mis-shaped key. For ``.safetensors``: a header longer than
        100 MB or than the file, a header that is not a JSON object of valid entries (a known
        dtype, a shape of ints >= 0, offsets matching the shape's size) or repeats a key, or
        tensors that do not cover the data exactly (gaps, overlaps, truncation, trailing
        bytes). The message names the file (and the key).
    TypeError
        If an array cannot be cast to its parameter's dtype.

    Notes
    -----
    Each ``.npz`` member's header is read first and, with a ``module``, its shape compared with
    the module's before any data are read; data are read in bounded chunks into an array of the
    header's size, so a compressed member never inflates beyond what its header promises. A
    ``.safetensors`` header is validated whole, against the file's size and the module's
    shapes, before any tensor is read, so no file costs more memory than its own size (a
    ``BF16`` tensor becomes float32, twice its size in the file). Nothing is loaded into
    ``module`` unless the whole file reads and fits.
    """
    if path is None:
        if module is None or callable(getattr(module, "load_state_dict", None)):
            raise TypeError("load() needs a path: load(path) or load(module, path)")
        module, path = None, module
    path = os.fspath(path)
    # A module's own shapes are checked against each member's header before its data are read.
    expected = None
    if module is not None:
        expected = {key: np.shape(value) for key, value in module.state_dict().items()}
    if _is_safetensors(path):
        state = _read_safetensors(path, expected)
    else:
        state = _read_npz(path, expected)
    if module is None:
        return state
    try:
        if strict:
            return module.load_state_dict(state)
        return module.load_state_dict(state, strict=False)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{path!r}: {e}") from e


def open_regular_file(path, what):
    """Open ``path`` for binary reading, refusing anything but a regular file.

    Opened without blocking (a FIFO with no writer would otherwise hang ``open``) and checked
    with ``fstat`` on the open descriptor, so the file checked is the file read. Raises
    ``FileNotFoundError`` if it does not exist and ``ValueError`` naming the path and ``what``
    was expected (e.g. "expected a checkpoint") for a directory, FIFO, socket or device.
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except IsADirectoryError:
        raise ValueError(f"{path!r} is a directory: {what}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ValueError(f"{path!r} is a directory: {what}")
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path!r} is not a regular file (a FIFO, socket or device): {what}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# A .npy header is a short dict literal; numpy's own default cap.
_MAX_NPY_HEADER = 10_000
_NPY_MAGIC = b"\x93NUMPY"
_CHUNK = 1 << 22  # bytes inflated and copied at a time


def _read_npz(path, expected=None):
    """Every array of the ``.npz`` archive ``path``, without pickle, checked before reading.

    ``expected`` maps keys to the shapes they must have (a module's state dict); a member's
    ``.npy`` header (shape and dtype) is checked against it, and against the size the archive
    declares, before its data are read. Data are read into an array of the header's size, so
    no member inflates to more than its header promises. Any unreadable file is a
    ``ValueError`` naming ``path`` and what is wrong.
    """
    name = repr(path)
    with open_regular_file(path, "expected a fastconv checkpoint (.npz archive)") as f:
        head = f.read(9)
        if not head:
            raise ValueError(f"{name} is empty, not a fastconv checkpoint (.npz archive)")
        if head.startswith(_NPY_MAGIC):
            raise ValueError(
                f"{name} is not a fastconv checkpoint: it holds a single array, "
                "not an .npz archive of named arrays"
            )
        f.seek(0)
        file_size = os.fstat(f.fileno()).st_size
        if _safetensors.looks_like(head, file_size):  # the format is chosen by name only
            raise ValueError(
                f"{name} is a .safetensors file, not an .npz archive: load it under a name "
                "ending in .safetensors"
            )
        try:
            with zipfile.ZipFile(f) as archive:
                return _read_members(archive, name, expected, file_size)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, RuntimeError) as e:
            # RuntimeError: an encrypted member; OSError/EOFError: truncated or corrupt data.
            raise ValueError(
                f"{name} is not a readable fastconv checkpoint (.npz archive): "
                f"{type(e).__name__}: {e}"
            ) from e
        except (NotImplementedError, zlib.error) as e:  # unknown compression, bad deflate data
            raise ValueError(f"{name} is not a readable .npz archive: {e}") from e


def _read_safetensors(path, expected=None):
    """Every tensor of the ``.safetensors`` file ``path``; see ``fastconv._safetensors.read``."""
    with open_regular_file(path, "expected a .safetensors file") as f:
        return _safetensors.read(f, os.fstat(f.fileno()).st_size, repr(path), expected)


def _read_members(archive, name, expected, file_size):
    state = {}
    for info in archive.infolist():
        if not info.filename.endswith(".npy") or info.is_dir():
            raise ValueError(f"{name}: member {info.filename!r} is not an .npy array")
        key = info.filename[: -len(".npy")]
        # What numpy writes; the size bound below holds for these (bzip2 and lzma can shrink
        # data further than any bound worth checking).
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ValueError(
                f"{name}: entry {key!r} uses zip compression method {info.compress_type}; "
                "only stored and deflated members (what numpy writes) are read"
            )
        if key in state:
            raise ValueError(f"{name}: entry {key!r} appears twice")
        # The sizes the archive declares bound what is read: no member is larger than the
        # file, and deflate cannot shrink data more than ~1032 times.
        if info.compress_size > file_size or info.file_size > _MAX_RATIO * info.compress_size + (
            1 << 16
        ):
            raise ValueError(
                f"{name}: entry {key!r} declares {info.file_size} bytes from "
                f"{info.compress_size} compressed in a {file_size}-byte file: forged sizes"
            )
        shape = None if expected is None else expected.get(key)
        with archive.open(info) as member:
            state[key] = _read_member(member, info.file_size, name, key, shape)
    return state


_MAX_RATIO = 1100  # above deflate's best ratio (about 1032:1)


def _read_member(member, size, name, key, shape_expected):
    """One ``.npy`` member: header checks, then exactly the promised bytes, then nothing."""
    try:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(member, max_header_size=_MAX_NPY_HEADER)
        elif version in ((2, 0), (3, 0)):
            header = np.lib.format.read_array_header_2_0(member, max_header_size=_MAX_NPY_HEADER)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except ValueError as e:  # bad magic, a header too large, a header that is not a dict
        where = f"{name}: entry {key!r}"
        raise ValueError(f"{where}: not a valid .npy header: {e}") from e
    shape, fortran, dtype = header
    where = f"{name}: entry {key!r}"
    if any(d < 0 for d in shape):
        raise ValueError(f"{where}: not a valid .npy header: negative shape {tuple(shape)}")
    if dtype.hasobject:
        raise ValueError(
            f"{where}: cannot load an object array (it needs pickle, and allow_pickle=False)"
        )
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"{where}: dtype {dtype} is not a number type (bool, int or float)")
    if shape_expected is not None and tuple(shape) != tuple(shape_expected):
        raise ValueError(
            f"{name}: size mismatch for {key!r}: the file has shape {tuple(shape)}, "
            f"expected {tuple(shape_expected)}"
        )
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > size:  # the archive's own size of the member, header included
        raise ValueError(
            f"{where}: the header promises shape {tuple(shape)} of {dtype} ({nbytes} bytes), "
            f"the archive holds {size} bytes: truncated or forged"
        )
    array = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    flat = array.ravel(order="K").view(np.uint8)  # a view: the array is contiguous
    done = 0
    while done < nbytes:
        chunk = member.read(min(_CHUNK, nbytes - done))
        if not chunk:
            raise ValueError(
                f"{where}: truncated data: {done} of the {nbytes} bytes its header promises"
            )
        flat[done : done + len(chunk)] = np.frombuffer(chunk, np.uint8)
        done += len(chunk)
    if member.read(1):
        raise ValueError(f"{where}: data after the {nbytes} bytes its header promises")
    return array
