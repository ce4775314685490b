"""Data for the examples and tests: an IDX reader, FashionMNIST/MNIST, and a ``DataLoader``.

``fashion_mnist()`` and ``mnist()`` look for the four standard IDX files (plain or ``.gz``) in
this order, and use the first directory that holds both files of the requested split:

1. ``root`` if given (or its ``fashion-mnist``/``mnist`` subfolder). An explicit ``root`` is
   authoritative: if the files are not there, nothing else is searched.
2. ``$FASTCONV_DATA`` (or its ``fashion-mnist``/``mnist`` subfolder).
3. The user cache: ``$XDG_CACHE_HOME/fastconv/<name>``, else ``~/.cache/fastconv/<name>``.
4. System directories: ``/usr/share/datasets/fashion-mnist`` (Debian package
   ``dataset-fashion-mnist``) for Fashion-MNIST.
5. Otherwise the files are downloaded into the user cache, checked against the published MD5
   checksums and written atomically. Without network access this fails with a
   ``DatasetNotFoundError`` that says how to get the data.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import secrets
import zlib
from pathlib import Path

import numpy as np

from fastconv._checks import check_bool, generator, is_int, positive_int
from fastconv.serialization import open_regular_file

__all__ = ["DataLoader", "DatasetNotFoundError", "fashion_mnist", "load_idx", "mnist"]

# ---------------------------------------------------------------------------------------------
# IDX files: http://yann.lecun.com/exdb/mnist/ ("THE IDX FILE FORMAT").
# Header: two zero bytes, a dtype code, the number of dimensions, then one big-endian uint32
# per dimension; the data follow, big-endian, C order.
# ---------------------------------------------------------------------------------------------

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


_CHUNK = 1 << 22  # bytes inflated and copied at a time
_MAX_RATIO = 1100  # above deflate's best compression ratio (about 1032:1)
_TRAILING_COUNTED = 1 << 20  # trailing bytes counted for the error message, at most


def _read_up_to(stream, n, path):
    """At most ``n`` bytes of ``stream`` (fewer only at its end); gzip errors as ValueError."""
    try:
        return stream.read(n)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt gzip data ({e})") from e


def _read_header(stream, path):
    """``(dtype, shape)`` from an IDX header, with the messages of :func:`load_idx`."""
    head = _read_up_to(stream, 4, path)
    if len(head) < 4:
        raise ValueError(
            f"{path}: truncated IDX header: expected at least 4 bytes, got {len(head)}"
        )
    magic = f"0x{head.hex().upper()}"
    if head[0] != 0 or head[1] != 0:
        raise ValueError(
            f"{path}: bad IDX magic number {magic}: expected two zero bytes, a dtype code and "
            f"the number of dimensions (is this an IDX file?)"
        )
    if head[2] not in _IDX_DTYPES:
        codes = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise ValueError(
            f"{path}: bad IDX magic number {magic}: unknown dtype code 0x{head[2]:02X}, "
            f"expected one of {codes}"
        )
    dtype, ndim = _IDX_DTYPES[head[2]], head[3]
    dims = _read_up_to(stream, 4 * ndim, path)
    if len(dims) < 4 * ndim:
        raise ValueError(
            f"{path}: truncated IDX header: expected {4 + 4 * ndim} bytes for {ndim} "
            f"dimensions, got {4 + len(dims)}"
        )
    return dtype, tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))


def _load_idx(path, check=None):
    """:func:`load_idx`; ``check(dtype, shape)`` may raise before any data are read."""
    path = os.fspath(path)
    with open_regular_file(path, "expected an IDX file") as raw:
        gzipped = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        dtype, shape = _read_header(stream, path)
        expected = math.prod(shape) * dtype.itemsize
        # Checked before allocating anything: the plain file's size, or what a gzip file of
        # this size can inflate to at most (deflate shrinks data at most about 1032 times).
        file_size = os.fstat(raw.fileno()).st_size
        if not gzipped and file_size - raw.tell() < expected:
            raise ValueError(
                f"{path}: truncated IDX data: expected {expected} bytes after the header "
                f"(shape {shape} of {dtype.name}), got {file_size - raw.tell()}"
            )
        if gzipped and expected > _MAX_RATIO * file_size:
            raise ValueError(
                f"{path}: truncated IDX data: the header promises {expected} bytes (shape "
                f"{shape} of {dtype.name}), more than a {file_size}-byte gzip file can hold"
            )
        if check is not None:
            check(dtype, shape)
        # Read into an array of the header's size: a gzip member never inflates further than
        # the header promises (plus the few bytes that show there is trailing data).
        array = np.empty(shape, dtype=dtype)
        flat = array.reshape(-1).view(np.uint8)
        done = 0
        while done < expected:
            chunk = _read_up_to(stream, min(_CHUNK, expected - done), path)
            if not chunk:
                raise ValueError(
                    f"{path}: truncated IDX data: expected {expected} bytes after the header "
                    f"(shape {shape} of {dtype.name}), got {done}"
                )
            flat[done : done + len(chunk)] = np.frombuffer(chunk, np.uint8)
            done += len(chunk)
        extra = len(_read_up_to(stream, _TRAILING_COUNTED, path))
        if extra:
            more = "" if extra < _TRAILING_COUNTED else " at least"
            raise ValueError(
                f"{path}: trailing data after the IDX array: expected {expected} bytes after "
                f"the header (shape {shape} of {dtype.name}), got{more} {expected + extra} "
                f"({extra} extra)"
            )
    # The file is big-endian; the result is in native byte order, writable, owning its memory.
    return array.astype(dtype.newbyteorder("="), copy=False)


def load_idx(path) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed) into a NumPy array.

    Compression is detected from the content (gzip magic bytes ``1f 8b``), not the file name.
    The header is read first; the data are read into an array of the size it declares, so a
    compressed file never inflates to more than that.

    Parameters
    ----------
    path : str or os.PathLike
        The file to read (a regular file: FIFOs and devices are refused).

    Returns
    -------
    numpy.ndarray
        An array of the file's shape and dtype (uint8, int8, int16, int32, float32 or float64),
        in native byte order, writable and owning its memory.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a valid IDX file: not a regular file, bad magic number, unknown
        dtype code, truncated header or data, corrupt gzip data, or trailing bytes after the
        data. The message names the file.
    """
    return _load_idx(path)


# ---------------------------------------------------------------------------------------------
# FashionMNIST / MNIST
# ---------------------------------------------------------------------------------------------

_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_ALL_FILES = [name for pair in _SPLIT_FILES.values() for name in pair]

# Published MD5 checksums of the official .gz files: Fashion-MNIST's from the zalando-research
# README, MNIST's from torchvision's ``MNIST.resources`` (the same files on the ossci mirror).
# The Debian package recompresses its files, so these do not match the copies it installs; they
# are checked only for files this module downloads.
_DATASETS = {
    "fashion-mnist": {
        "title": "Fashion-MNIST",
        "mirrors": (
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ),
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        # Debian package and the directory it installs the files into.
        "apt": ("dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist"),
    },
    "mnist": {
        "title": "MNIST",
        "mirrors": ("https://ossci-datasets.s3.amazonaws.com/mnist/",),
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        "apt": None,
    },
}

# Directories installed by system packages, searched after the user's own locations.
_SYSTEM_DIRS = {
    "fashion-mnist": (_DATASETS["fashion-mnist"]["apt"][1],),
    "mnist": (),
}

_DOWNLOAD_TIMEOUT = 30.0  # seconds per connection attempt


class DatasetNotFoundError(FileNotFoundError, RuntimeError):
    """The data set is not on disk and could not be downloaded; the message says how to get it.

    It is both a ``FileNotFoundError`` and a ``RuntimeError``, so either ``except`` catches it.
    """


def _cache_dir(name: str) -> Path:
    """The user cache directory for data set ``name`` (it may not exist yet)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastconv" / name


def _find_file(directory: Path, stem: str) -> Path | None:
    """``directory/stem`` or ``directory/stem.gz``, whichever exists (plain first), else None."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _find_split(directories, stems) -> tuple[Path, ...] | None:
    """The files ``stems`` from the first directory that holds all of them, else None."""
    for directory in directories:
        found = tuple(_find_file(Path(directory), stem) for stem in stems)
        if all(found):
            return found
    return None


def _with_subfolder(directory, name: str) -> list[Path]:
    return [Path(directory), Path(directory) / name]


def _fetch(url: str, timeout: float):
    """Open ``url`` for reading (a file-like object). Tests replace this to stay offline."""
    import urllib.request  # here: only a download needs it (10 ms of import fastconv)

    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (fixed https/http URLs)


def _download(url: str, dest: Path, md5: str | None) -> None:
    """Download ``url`` to ``dest`` atomically, checking the MD5 checksum if one is given.

    The data go to a temporary file in ``dest``'s directory, which is renamed to ``dest`` only
    once complete and verified, so an interrupted download never leaves a partial file behind.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with open(tmp, "xb") as out, _fetch(url, _DOWNLOAD_TIMEOUT) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if md5 is not None and digest.hexdigest() != md5:
            raise ValueError(
                f"checksum mismatch for {url}: expected MD5 {md5}, got {digest.hexdigest()}"
            )
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _download_split(name: str, stems, directory: Path) -> tuple[Path, ...]:
    """Download the ``.gz`` files for ``stems`` into ``directory``, trying each mirror in turn."""
    info = _DATASETS[name]
    paths = []
    for stem in stems:
        filename = f"{stem}.gz"
        dest = directory / filename
        if not dest.is_file():
            errors = []
            for mirror in info["mirrors"]:
                try:
                    _download(mirror + filename, dest, info["md5"].get(filename))
                    break
                except Exception as e:  # network errors come in many types; try the next mirror
                    errors.append(f"{mirror + filename}: {e}")
            else:
                raise OSError("; ".join(errors))
        paths.append(dest)
    return tuple(paths)


def _how_to_get(name: str) -> str:
    info = _DATASETS[name]
    lines = ["To get the data, either"]
    if info["apt"]:
        package, system = info["apt"]
        lines.append(f"  - install the Debian package: sudo apt-get install {package}")
        lines.append(f"    (it puts the files in {system}, which fastconv searches), or")
    lines.append(f"  - download these four files from {info['mirrors'][0]}")
    lines.append("    " + ", ".join(f"{f}.gz" for f in _ALL_FILES))
    lines.append("    into a directory DIR and pass root=DIR, or set FASTCONV_DATA=DIR.")
    return "\n".join(lines)


def _load_mnist_like(name: str, split: str, root, download: bool):
    """Find (or download) and read one split of an MNIST-format data set; see the module doc."""
    if split not in _SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    stems = _SPLIT_FILES[split]
    title = _DATASETS[name]["title"]

    if root is not None:
        found = _find_split(_with_subfolder(root, name), stems)
        if found is None:
            raise DatasetNotFoundError(
                f"{title} {split} files not found in root={os.fspath(root)!r} "
                f"(nor its {name!r} subfolder): need "
                + " and ".join(f"{s}[.gz]" for s in stems)
                + ". An explicit root is the only place searched; with root=None, "
                "$FASTCONV_DATA, the user cache and system directories are searched.\n"
                + _how_to_get(name)
            )
    else:
        searched = []
        env = os.environ.get("FASTCONV_DATA")
        if env:
            searched += _with_subfolder(env, name)
        cache = _cache_dir(name)
        searched.append(cache)
        searched += [Path(d) for d in _SYSTEM_DIRS[name]]
        found = _find_split(searched, stems)
        if found is None and download:
            try:
                found = _download_split(name, stems, cache)
            except Exception as e:
                raise DatasetNotFoundError(
                    f"{title} {split} files not found and the download failed.\n"
                    f"Searched: {', '.join(str(p) for p in searched)}\n"
                    f"Download error: {e}\n" + _how_to_get(name),
                ) from e
        if found is None:
            raise DatasetNotFoundError(
                f"{title} {split} files not found (download=False).\n"
                f"Searched: {', '.join(str(p) for p in searched)}\n" + _how_to_get(name),
            )

    images_path, labels_path = found

    # Both headers are checked before any data are read (a forged header costs nothing).
    def check_images(dtype, shape):
        if dtype != np.uint8 or len(shape) != 3 or shape[1:] != (28, 28):
            raise ValueError(
                f"{images_path}: expected uint8 images of shape (N, 28, 28), got {dtype} {shape}"
            )
        with open_regular_file(labels_path, "expected an IDX file") as raw:
            gzipped = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
            check_labels(*_read_header(stream, labels_path), count=shape[0])

    def check_labels(dtype, shape, count):
        if dtype != np.uint8 or shape != (count,):
            raise ValueError(
                f"{labels_path}: expected {count} uint8 labels (one per image in "
                f"{images_path.name}), got {dtype} {shape}"
            )

    images = _load_idx(images_path, check_images)
    labels = _load_idx(labels_path, lambda dtype, shape: check_labels(dtype, shape, len(images)))
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path}: labels must be in 0..9, found {int(labels.max())}")
    return images, labels.astype(np.int64)


def fashion_mnist(split: str = "train", root=None, download: bool = True):
    """Load Fashion-MNIST (Zalando article images, 10 classes).

    Parameters
    ----------
    split : {"train", "test"}
        60,000 training or 10,000 test images.
    root : str or os.PathLike, optional
        Directory holding the IDX files (plain or ``.gz``), or a parent with a
        ``fashion-mnist`` subfolder. If given, no other place is searched.
    download : bool
        Download the files into the user cache if they are found nowhere.

    Returns
    -------
    images : numpy.ndarray, uint8, shape (N, 28, 28)
    labels : numpy.ndarray, int64, shape (N,), values 0..9
    """
    return _load_mnist_like("fashion-mnist", split, root, download)


def mnist(split: str = "train", root=None, download: bool = True):
    """Load MNIST handwritten digits; same parameters and returns as :func:`fashion_mnist`.

    The subfolder searched under ``root`` and ``$FASTCONV_DATA`` is ``mnist``.
    """
    return _load_mnist_like("mnist", split, root, download)


# ---------------------------------------------------------------------------------------------
# DataLoader
# ---------------------------------------------------------------------------------------------


class DataLoader:
    """Iterate over ``(xb, yb)`` mini-batches of two arrays.

    Parameters
    ----------
    x, y : numpy.ndarray
        Inputs and targets with the same length along axis 0, e.g. images ``(N, 1, 28, 28)``
        and labels ``(N,)``.
    batch_size : int
        Samples per batch (positive).
    shuffle : bool
        Draw a new permutation of the samples at the start of every epoch (every ``iter()``).
    drop_last : bool
        Drop the last batch if it is smaller than ``batch_size``.
    seed : numpy.random.Generator, int or None
        fastconv's one generator contract: ``self.rng`` is the given generator (its stream
        advances), a new one seeded with the int, or with None a fresh unseeded one. The same
        seed gives the same sequence of epochs. ``rng.bit_generator.state`` is a JSON-able dict,
        so a training script can save and restore it to resume the exact sequence.
    rank, world_size : int, optional
        Data-parallel sharding (both or neither; see ``fastconv.distributed``). ``batch_size``
        stays the **global** batch: every rank draws the same permutation (give every rank the
        same ``seed``) and takes its slice of each global batch, the ``rank``-th of
        ``world_size`` contiguous slices whose sizes differ by one at most (as
        ``numpy.array_split``). Every rank has ``len(loader)`` batches, the global batches of
        one process, and the slices of a batch are disjoint and cover it; a short last batch
        may leave a rank an empty slice. Needs ``batch_size >= world_size``.

    Notes
    -----
    Shuffled batches are copies (fancy indexing); unshuffled ones are views of ``x`` and ``y``.
    """

    def __init__(
        self, x, y, batch_size, shuffle=True, drop_last=False, seed=None, rank=None, world_size=None
    ):
        # ValueError for every bad batch_size, not positive_int's TypeError, as PyTorch does.
        if not is_int(batch_size) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim == 0 or y.ndim == 0:
            raise ValueError(
                f"x and y must have a batch axis, got shapes x {x.shape} and y {y.shape}"
            )
        if len(x) != len(y):
            raise ValueError(
                f"x and y must have the same length, got len(x)={len(x)} and len(y)={len(y)}"
            )
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle = check_bool("shuffle", shuffle)
        self.drop_last = check_bool("drop_last", drop_last)
        # None means fresh entropy, not fastconv.init's generator: shuffling should not shift
        # the stream that initialises the weights.
        fresh = np.random.default_rng() if seed is None else None
        self.rng = generator(seed, default=fresh, name="seed")
        self.rank, self.world_size = _shard(rank, world_size, self.batch_size)

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n, b = len(self.x), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _slice(self, start, stop):
        """This rank's part ``[lo, hi)`` of the global batch ``[start, stop)``."""
        if self.world_size == 1:
            return start, stop
        size, parts = stop - start, self.world_size
        # numpy.array_split's rule: the first size % parts slices get one more element.
        small, extra = divmod(size, parts)
        lo = start + self.rank * small + min(self.rank, extra)
        return lo, lo + small + (self.rank < extra)

    def __iter__(self):
        b, n = self.batch_size, len(self.x)
        if self.shuffle:
            order = self.rng.permutation(n)
            for i in range(len(self)):
                lo, hi = self._slice(i * b, min((i + 1) * b, n))
                idx = order[lo:hi]
                yield self.x[idx], self.y[idx]
        else:
            for i in range(len(self)):
                lo, hi = self._slice(i * b, min((i + 1) * b, n))
                yield self.x[lo:hi], self.y[lo:hi]


def _shard(rank, world_size, batch_size):
    """``(rank, world_size)`` checked; ``(0, 1)`` when both are None (no sharding)."""
    if rank is None and world_size is None:
        return 0, 1
    if rank is None or world_size is None:
        raise ValueError(
            f"rank and world_size go together: got rank={rank!r}, world_size={world_size!r}"
        )
    world_size = positive_int("world_size", world_size)
    if not is_int(rank):
        raise TypeError(f"rank must be an int, got {rank!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    if batch_size < world_size:
        raise ValueError(
            f"batch_size (the global batch) must be at least world_size={world_size}, so that "
            f"every rank gets samples, got {batch_size}"
        )
    return int(rank), world_size
