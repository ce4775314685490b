"""Save and load state dicts (a module's, an optimizer's, or a plain dict of arrays) as ``.npz``.

``save`` writes atomically: the archive goes to a temporary file in the target's directory,
which is flushed, fsynced and then renamed over the target, so a crash or an error mid-save
leaves the previous file intact. The training loop (``fastconv.training``) writes its JSON and
PNG files through the same writer. ``load`` reads with ``allow_pickle=False``, so a file
holding object arrays is refused instead of running arbitrary code.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import zipfile
from collections.abc import Mapping

import numpy as np

__all__ = ["save", "load"]


def _write_atomically(path, write):
    """Call ``write(f)`` on a new binary file, then rename it to ``path`` (str or PathLike).

    The temporary file sits beside ``path`` (same file system, so the rename is atomic), is
    fsynced before the rename and removed if anything fails; the directory is fsynced after.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(
        directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    )
    # os.open with 0o666 lets the umask decide the permissions, as for any newly created file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


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


def save(obj, path):
    """Write a state dict to ``path`` as an ``.npz`` archive, atomically.

    Parameters
    ----------
    obj : fastconv.nn.Module, fastconv.optim.Optimizer or dict of str to array
        A module or optimizer (its ``state_dict()`` is written) or a state dict itself.
        Numbers become 0-d arrays.
    path : str or os.PathLike
        The exact file name written (no ``.npz`` is appended). An existing file is replaced
        only once the new one is completely on disk; if saving fails it is left untouched and
        the temporary file is removed.

    Raises
    ------
    TypeError
        If ``obj`` is neither, a key is not a str, or a value is not numeric (object arrays
        would need pickle); nothing is written then.

    Notes
    -----
    Read it back with :func:`load`, or with ``np.load(path)`` as a mapping of key to array.
    """
    arrays = _state_arrays(obj)
    _write_atomically(path, lambda f: _write_npz(f, arrays))


def load(module=None, path=None, strict=True):
    """Read a state dict saved by :func:`save`; load it into ``module`` if one is given.

    ``load(path)`` returns the state dict; ``load(module, path)`` loads it into ``module`` in
    place, as ``module.load_state_dict`` does.

    Parameters
    ----------
    module : fastconv.nn.Module or fastconv.optim.Optimizer, optional
        Anything with ``load_state_dict``. When it is omitted, the first argument is the path.
    path : str or os.PathLike
    strict : bool
        As in ``Module.load_state_dict``: missing or unexpected keys are errors when True.

    Returns
    -------
    dict of str to numpy.ndarray, or IncompatibleKeys
        ``load(path)``: the state dict, in the order it was saved (numbers as 0-d arrays).
        ``load(module, path)``: what ``module.load_state_dict`` returns; for a module,
        ``(missing_keys, unexpected_keys)``.

    Raises
    ------
    ValueError
        If the file is not an ``.npz`` archive, holds an object (pickled) array, or has a
        missing, unexpected or mis-shaped key; the message names the file and the key.
    TypeError
        If an array cannot be cast to its parameter's dtype.
    """
    if path is None:
        if module is None or callable(getattr(module, "load_state_dict", None)):
            raise TypeError("load() needs a path: load(path) or load(module, path)")
        module, path = None, module
    path = os.fspath(path)
    state = _read_npz(path)
    if module is None:
        return state
    try:
        if strict:
            return module.load_state_dict(state)
        return module.load_state_dict(state, strict=False)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{path!r}: {e}") from e


def _read_npz(path):
    """Every array of the ``.npz`` archive ``path``, read whole, without pickle."""
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path!r} is not a fastconv checkpoint (.npz archive): {e}") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path!r} is not a fastconv checkpoint: it holds a single array, "
            "not an .npz archive of named arrays"
        )
    state = {}
    with archive:
        for key in archive.files:
            try:
                state[key] = archive[key]
            except ValueError as e:  # object arrays need pickle, which is refused
                raise ValueError(f"{path!r}: cannot load entry {key!r}: {e}") from e
    return state
