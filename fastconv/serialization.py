"""Save and load a module's state dict as an ``.npz`` archive, without pickle.

``save`` writes atomically: the archive goes to a temporary file in the target's directory,
which is flushed, fsynced and then renamed over the target, so a crash or an error mid-save
leaves the previous checkpoint intact. ``load`` reads with ``allow_pickle=False``, so a file
holding object arrays is refused instead of running arbitrary code.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import zipfile

import numpy as np

__all__ = ["save", "load"]


def _write_npz(file, arrays):
    """Write ``arrays`` (str -> ndarray) to the open binary ``file`` in ``np.savez``'s format.

    Done by hand rather than with ``np.savez(file, **arrays)`` so that any key works (savez's
    own keyword arguments ``file`` and ``allow_pickle`` would clash) and pickle is never used.
    """
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, array in arrays.items():
            with zf.open(key + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def save(module, path):
    """Write ``module.state_dict()`` to ``path`` as an ``.npz`` archive, atomically.

    Parameters
    ----------
    module : fastconv.nn.Module
    path : str or os.PathLike
        The exact file name written (no ``.npz`` is appended). An existing file is replaced
        only once the new one is completely on disk; if saving fails it is left untouched and
        the temporary file is removed.

    Notes
    -----
    Read it back with :func:`load`, or with ``np.load(path)`` as a mapping of key to array.
    """
    path = os.fspath(path)
    state = module.state_dict()
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(
        directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    )
    # os.open with 0o666 lets the umask decide the permissions, as for any newly created file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_npz(f, state)
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


def load(module, path, strict=True):
    """Load a state dict saved by :func:`save` into ``module``, in place.

    Parameters
    ----------
    module : fastconv.nn.Module
    path : str or os.PathLike
    strict : bool
        As in ``Module.load_state_dict``: missing or unexpected keys are errors when True.

    Returns
    -------
    IncompatibleKeys
        ``(missing_keys, unexpected_keys)`` as returned by ``Module.load_state_dict``.

    Raises
    ------
    ValueError
        If the file is not an ``.npz`` archive, holds an object (pickled) array, or has a
        missing, unexpected or mis-shaped key; the message names the file and the key.
    TypeError
        If an array cannot be cast to its parameter's dtype.
    """
    path = os.fspath(path)
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
    try:
        return module.load_state_dict(state, strict=strict)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{path!r}: {e}") from e
