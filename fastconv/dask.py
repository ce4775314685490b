"""Batch inference over Dask arrays: ``predict`` and ``evaluate`` (extra ``fastconv[dask]``).

``x`` is a dask array of images ``(N, C, H, W)`` chunked along N; each block is computed by
``map_blocks`` on whatever scheduler is active (a ``distributed.Client``'s cluster, or dask's
local threads), in eval mode, under ``no_grad``, in sub-batches of ``batch_size``::

    import dask.array as da
    from distributed import Client, LocalCluster
    import fastconv.dask

    client = Client(LocalCluster(n_workers=2, threads_per_worker=1))
    x = da.from_array(images, chunks=(2048, -1, -1, -1))  # (N, 1, 28, 28) float32
    logits = fastconv.dask.predict(model, x)              # lazy (N, 10) dask array
    labels = fastconv.dask.predict(model, x, classes=True).compute()
    fastconv.dask.evaluate(model, x, y)                   # {"accuracy": ..., "loss": ...}

How the model reaches the workers, and why:

- **As its architecture and its state dict, not as the live object.** The module tree is
  pickled (with cloudpickle, so a model class written in a script travels too) with three
  changes: every parameter and buffer array is replaced by a reference to its state-dict key,
  the layer-mode caches (``_ctx``: the last input kept for ``backward``, which may be a whole
  training batch) and the run counters are dropped, and gradients are not sent. The state dict
  travels beside it as NumPy arrays (copies taken when ``predict`` is called: training the model
  afterwards does not change a prediction already built). The alternative, a zero-argument
  factory that builds the model, would have to be written for every model; this needs none.
- **Once per graph.** The two are one ``dask.delayed`` value under a single key named by a hash
  of the weights (``fastconv-model-<token>``); every block depends on that key, so a cluster
  sends the weights to each worker once, not once per block, and two calls with the same model
  share it.
- **Rebuilt once per worker thread.** A worker keeps the rebuilt model in a small cache keyed
  by the token. The cache is per Python thread because a module instance is not shared between
  threads in fastconv (layer mode keeps its last input in the instance); with one thread per
  worker, as recommended below, that is once per worker process.

Threads: dask already runs one task per core by default (and sets ``OMP_NUM_THREADS=1`` in its
workers for the same reason), so each task runs fastconv's numba kernels on ``threads=1``
thread by default. With fewer dask threads than cores, raise it: ``threads = cores //
(workers * threads_per_worker)``. numba's tbb threading layer (a fastconv dependency) serves
kernels called from several threads of one worker at once.

Memory: dask starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``, so that glibc returns
freed memory to the system at once; being set, it also turns off fastconv's own heap setting
(``fastconv/autograd/_heap.py``). fastconv frees and reallocates each layer's activations on
every batch, and in one process at 1 thread lenet's inference then ran 27% slower (about 70,000
page faults per 5,000 images, against none). To give the workers fastconv's thresholds, set
them before the first cluster of the process is made (a nanny copies its variables into the
process that runs it, where they take precedence over the configuration)::

    dask.config.set({
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 64 * 2**20,
        "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 32 * 2**20,
    })
"""

from __future__ import annotations

import io
import pickle
import threading
from collections import OrderedDict

import numpy as np

try:
    import cloudpickle
    import dask
    import dask.array as da
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "fastconv.dask needs dask: install the extra with pip install 'fastconv[dask]' "
        f"(importing it failed: {error})"
    ) from error

from fastconv._checks import check_bool, float_dtype, positive_int
from fastconv._threads import threads as _threads
from fastconv.autograd.tensor import no_grad
from fastconv.functional import cross_entropy
from fastconv.nn.module import Module, Parameter

__all__ = ["predict", "evaluate"]


# ---- the model as architecture + state dict -------------------------------------------------


class _ModelSpec:
    """What travels to the workers: ``architecture`` (bytes: the pickled module tree whose arrays
    are references to ``state``'s keys), ``state`` (key -> ndarray), ``dtype`` (the model's
    float dtype), ``token`` (a hash of both, the cache key)."""

    __slots__ = ("architecture", "state", "dtype", "token")

    def __init__(self, architecture, state, dtype, token):
        self.architecture, self.state, self.dtype, self.token = architecture, state, dtype, token


def _new_module(cls):
    return cls.__new__(cls)  # the state (its __dict__) follows: pickle fills it in


class _ArchitecturePickler(cloudpickle.Pickler):
    """cloudpickle, with each state array written as a reference to its key (``keys``: id of the
    live array -> key), each ``Parameter`` as its data alone (no gradient) and each ``Module``
    without its layer-mode cache and run counter."""

    def __init__(self, file, keys):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._keys = keys

    def persistent_id(self, obj):
        return self._keys.get(id(obj)) if isinstance(obj, np.ndarray) else None

    def reducer_override(self, obj):
        if isinstance(obj, Parameter):
            return Parameter, (obj.data,)
        if isinstance(obj, Module):
            state = {k: v for k, v in obj.__dict__.items() if k != "_runs"}
            state["_ctx"] = None
            return _new_module, (type(obj),), state
        return super().reducer_override(obj)


class _ArchitectureUnpickler(pickle.Unpickler):
    def __init__(self, data, state):
        super().__init__(io.BytesIO(data))
        self._state = state

    def persistent_load(self, key):
        # A copy: arrays received from the network may be read-only views of its buffer.
        return np.array(self._state[key])


def _model_dtype(model, x_dtype):
    """The one float dtype of the model's parameters and float buffers (``x``'s, or float32,
    for a model without any)."""
    dtypes = {a.dtype for _, a in model._state_arrays() if a.dtype.kind == "f"}
    if len(dtypes) > 1:
        names = ", ".join(sorted(map(str, dtypes)))
        raise ValueError(
            f"model has parameters of several dtypes ({names}): call model.float() or "
            "model.double() first"
        )
    if dtypes:
        return dtypes.pop()
    return x_dtype if x_dtype.kind == "f" else np.dtype(np.float32)


def _spec(model, x_dtype):
    """``model`` as a ``_ModelSpec``; the model itself is not modified."""
    if not isinstance(model, Module):
        raise TypeError(f"model must be a fastconv.nn.Module, got {type(model).__name__}")
    dtype = float_dtype(_model_dtype(model, x_dtype), name="model dtype")
    keys, state = {}, {}
    for key, array in model._state_arrays():
        if id(array) not in keys:  # a shared array travels once, under its first key
            keys[id(array)] = key
            state[key] = np.array(array)  # a copy: later training leaves this call alone
    buffer = io.BytesIO()
    _ArchitecturePickler(buffer, keys).dump(model)
    architecture = buffer.getvalue()
    token = dask.base.tokenize(architecture, state)
    return _ModelSpec(architecture, state, dtype, token)


_CACHE = threading.local()  # per Python thread: token -> rebuilt model
_CACHE_SIZE = 2  # models kept per thread (e.g. predict and evaluate of two models in turn)


def _model_for(spec):
    """The model ``spec`` describes, in eval mode: rebuilt on the first call in this thread,
    then taken from the thread's cache."""
    cache = getattr(_CACHE, "models", None)
    if cache is None:
        cache = _CACHE.models = OrderedDict()
    model = cache.get(spec.token)
    if model is None:
        model = _ArchitectureUnpickler(spec.architecture, spec.state).load().eval()
        cache[spec.token] = model
        while len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    cache.move_to_end(spec.token)
    return model


# ---- what runs on each block ------------------------------------------------------------------


def _forward(model, x, batch_size, threads):
    """``model(x)`` in sub-batches of ``batch_size`` under ``no_grad``; ``x`` (n, C, H, W).
    Returns the list of sub-batch outputs."""
    x = np.ascontiguousarray(x)
    with _threads(threads), no_grad():
        return [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def _predict_block(x, spec, batch_size, classes, tail, threads):
    """One block: (n, C, H, W) images -> (n, *tail) outputs, or (n,) int64 classes."""
    outs = _forward(_model_for(spec), x.astype(spec.dtype, copy=False), batch_size, threads)
    out = np.concatenate(outs) if outs else np.empty((0, *tail), dtype=spec.dtype)
    return out.argmax(axis=1) if classes else out


def _evaluate_block(x, y, spec, batch_size, threads):
    """One block: ``[sum of the cross-entropy losses, correct predictions, samples]`` as float64
    (sums, so the total over blocks is exact, not a mean of block means)."""
    outs = _forward(_model_for(spec), x.astype(spec.dtype, copy=False), batch_size, threads)
    loss, correct, start = 0.0, 0, 0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for logits in outs:
            yb = y[start : start + len(logits)]
            loss += cross_entropy(logits, yb, reduction="sum")
            correct += int((logits.argmax(axis=1) == yb).sum())
            start += len(logits)
    return np.array([loss, correct, start], dtype=np.float64)


# ---- argument checks --------------------------------------------------------------------------


def _check_images(x):
    """``x`` as a 4-D real dask array with one chunk along C, H and W (rechunked if needed)."""
    if not isinstance(x, da.Array):
        raise TypeError(
            f"x must be a dask.array.Array, got {type(x).__name__} (wrap a NumPy array with "
            "dask.array.from_array(x, chunks=(n, -1, -1, -1)))"
        )
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got {x.ndim}-D of shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise TypeError(f"x must have a real number dtype (float or integer), got {x.dtype}")
    if any(len(c) > 1 for c in x.chunks[1:]):
        x = x.rechunk({1: -1, 2: -1, 3: -1})  # blocks are whole images: split along N only
    return x


def _check_labels(y, x):
    """``y`` as a 1-D integer dask array chunked as ``x`` along N."""
    if isinstance(y, np.ndarray):
        y = da.from_array(y, chunks=-1)
    if not isinstance(y, da.Array):
        raise TypeError(f"y must be a dask.array.Array or a numpy.ndarray, got {type(y).__name__}")
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (N,), got {y.ndim}-D of shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"y must have an integer dtype (class indices), got {y.dtype}")
    if np.isnan(x.shape[0]) or np.isnan(y.shape[0]):
        raise ValueError("x and y need known chunk sizes: call .compute_chunk_sizes() first")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have one label per image of x ({x.shape[0]}), got {y.shape[0]}")
    if y.chunks[0] != x.chunks[0]:
        y = y.rechunk((x.chunks[0],))
    return y


def _prepare(model, x, batch_size, threads):
    """The checked arguments, the model's spec as one delayed value, and the shape of one
    sample's output (from the rebuilt model run on one zero image, which also checks here,
    not on a worker, that the model accepts ``x``'s images)."""
    x = _check_images(x)
    batch_size = positive_int("batch_size", batch_size)
    threads = positive_int("threads", threads)
    spec = _spec(model, x.dtype)
    probe = np.zeros((1, *x.shape[1:]), dtype=spec.dtype)
    tail = _forward(_model_for(spec), probe, 1, threads)[0].shape[1:]
    spec_key = dask.delayed(spec, name=f"fastconv-model-{spec.token}", pure=True)
    return x, batch_size, threads, spec, spec_key, tail


# ---- public functions ---------------------------------------------------------------------------


def predict(model, x, batch_size=256, classes=False, *, threads=1):
    """The model's outputs for every image of a dask array, as a lazy dask array.

    Parameters
    ----------
    model : fastconv.nn.Module
        Not modified: a copy rebuilt from its architecture and state dict runs on the workers,
        in eval mode (Dropout off, BatchNorm on its running statistics), under ``no_grad``.
    x : dask.array.Array, (N, C, H, W)
        Real numbers (e.g. normalised float32 images), cast to the model's dtype. Chunked along
        N; chunks along C, H or W are merged (each block must hold whole images).
    batch_size : int
        Images per forward call inside a block (bounds the activations' memory).
    classes : bool
        Return the predicted class indices (argmax over axis 1) instead of the outputs.
    threads : int, keyword-only
        numba threads per task (default 1: dask runs one task per dask thread; see the module
        docstring).

    Returns
    -------
    dask.array.Array
        (N, K) outputs of the model's dtype (any ``(N, *tail)`` the model returns), or (N,)
        int64 classes; chunked along N as ``x``. Nothing is computed until ``.compute()``.
    """
    classes = check_bool("classes", classes)
    x, batch_size, threads, spec, spec_key, tail = _prepare(model, x, batch_size, threads)
    if classes and len(tail) != 1:
        raise ValueError(
            f"classes=True needs (N, K) outputs, the model returns (N, *{tail}) for x's images"
        )
    out_chunks = (x.chunks[0],) if classes else (x.chunks[0], *((d,) for d in tail))
    dtype = np.dtype(np.int64) if classes else spec.dtype
    return da.map_blocks(
        _predict_block,
        x,
        spec_key,
        batch_size,
        classes,
        tail,
        threads,
        chunks=out_chunks,
        drop_axis=[1, 2, 3],
        new_axis=None if classes else list(range(1, 1 + len(tail))),
        dtype=dtype,
        meta=np.empty((0,) * len(out_chunks), dtype=dtype),
    )


def evaluate(model, x, y, batch_size=256, *, threads=1):
    """Accuracy and mean cross-entropy loss of ``model`` over dask arrays, computed now.

    Parameters
    ----------
    model, x, batch_size, threads
        As for :func:`predict`; the model must return (N, K) logits.
    y : dask.array.Array or numpy.ndarray, (N,)
        Integer class labels in [0, K); rechunked to ``x``'s chunks along N if they differ.

    Returns
    -------
    dict
        ``{"accuracy": float, "loss": float}``: correct predictions / N and the sum of the
        per-image losses / N (``nn.CrossEntropyLoss()``'s "mean"), as Python floats. Each block
        returns its sums, added up on the client, so the result does not depend on the chunks
        (up to float rounding).
    """
    x, batch_size, threads, spec, spec_key, tail = _prepare(model, x, batch_size, threads)
    y = _check_labels(y, x)
    if len(tail) != 1:
        raise ValueError(f"model must return (N, K) logits, it returns (N, *{tail}) for x")
    if x.shape[0] == 0:
        raise ValueError("x must hold at least one image, got N = 0")
    parts = [
        dask.delayed(_evaluate_block, pure=True)(xb, yb, spec_key, batch_size, threads)
        for xb, yb in zip(x.to_delayed().ravel(), y.to_delayed().ravel(), strict=True)
    ]
    loss, correct, n = np.sum(dask.compute(*parts), axis=0)
    return {"accuracy": float(correct / n), "loss": float(loss / n)}
