"""``fastconv.dask``: predict and evaluate over dask arrays, on dask's threads and on a cluster
of worker processes (one of which is killed mid-computation), against the same model run in
this process.

Without the extra (``pip install 'fastconv[dask]'``) only the import tests run; the rest skip
with that reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

import fastconv
from fastconv import nn

NO_DASK = "the dask extra is not installed: pip install 'fastconv[dask]'"
TIMEOUT = 50  # seconds; generous for a loaded 2-core machine, within a test's minute


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_fastconv_does_not_import_dask():
    r = _run(
        "import sys, fastconv\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_import_without_dask_names_the_extra():
    # sys.modules[name] = None makes `import name` fail, as if dask were not installed.
    r = _run(
        "import sys; sys.modules['dask'] = None\n"
        "try:\n    import fastconv.dask\n"
        "except ImportError as e:\n    print('ImportError:', e)"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ImportError:") and "fastconv[dask]" in r.stdout


# ---- helpers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fd():
    pytest.importorskip("dask.array", reason=NO_DASK)
    pytest.importorskip("distributed", reason=NO_DASK)
    import fastconv.dask

    return fastconv.dask


@pytest.fixture(scope="module")
def da(fd):
    import dask.array

    return dask.array


def tiny(rng=0, batch_norm=False):
    """(N, 1, 8, 8) -> (N, 5): a conv, (batch norm,) ReLU, max pooling and two linear layers."""
    g = np.random.default_rng(rng)
    norm = [nn.BatchNorm2d(4)] if batch_norm else []
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=g), *norm, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        *([nn.Dropout(0.5, rng=g)] if batch_norm else []),
        nn.Linear(64, 16, rng=g), nn.ReLU(), nn.Linear(16, 5, rng=g),
    )  # fmt: skip
    if batch_norm:  # running statistics that differ from a batch's own
        model[1].running_mean[:] = g.standard_normal(4)
        model[1].running_var[:] = g.uniform(0.5, 2.0, 4)
    return model


def images(n, dtype=np.float32, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(dtype)


def labels(n, seed=2):
    return np.random.default_rng(seed).integers(0, 5, n)


def in_process(model, x):
    """The model's outputs in this process, in eval mode, restoring its mode afterwards."""
    was = model.training
    model.eval()
    try:
        with fastconv.no_grad():
            return model(x)
    finally:
        model.train(was)


def in_process_evaluate(model, x, y):
    loss, accuracy = fastconv.training.evaluate(model, [(x, y)])
    return {"accuracy": accuracy, "loss": loss}


def assert_close32(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture
def sync(fd):
    """dask's single-threaded scheduler, for tests about the graph and the arguments."""
    import dask

    with dask.config.set(scheduler="synchronous"):
        yield


# ---- in this process: results, graph, arguments -----------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_predict_on_threads_equals_in_process(fd, da, dtype):
    # Four dask threads call the kernels at once (numba's tbb layer serves them).
    import dask

    model = tiny(batch_norm=True).to(dtype)  # in training mode: predict runs it in eval mode
    xn = images(203, dtype)
    x = da.from_array(xn, chunks=(40, -1, -1, -1))
    with dask.config.set(scheduler="threads", num_workers=4):
        out = fd.predict(model, x, batch_size=16).compute()
        cls = fd.predict(model, x, batch_size=16, classes=True).compute()
    ref = in_process(model, xn)
    assert out.dtype == dtype and out.shape == (203, 5)
    if dtype == np.float64:
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    else:
        assert_close32(out, ref)
    np.testing.assert_array_equal(cls, ref.argmax(axis=1))
    assert cls.dtype == np.int64
    assert model.training  # the user's model is left as it was


def test_predict_keeps_chunks(fd, da):
    x = da.from_array(images(50), chunks=((10, 0, 25, 15), -1, -1, -1))
    out = fd.predict(tiny(), x)
    assert out.chunks == ((10, 0, 25, 15), (5,))
    assert fd.predict(tiny(), x, classes=True).chunks == ((10, 0, 25, 15),)


def test_predict_casts_and_merges_chunks(fd, da, sync):
    # uint8 images are cast to the model's float32; chunks along H and W are merged.
    xn = np.random.default_rng(3).integers(0, 256, (30, 1, 8, 8), dtype=np.uint8)
    x = da.from_array(xn, chunks=(7, 1, 3, 5))
    out = fd.predict(tiny(), x, batch_size=4)
    assert out.chunks[0] == x.chunks[0]
    assert_close32(out.compute(), in_process(tiny(), xn.astype(np.float32)))


def test_graph_holds_the_weights_once(fd, da):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 1000, rng=0))  # 256 kB of weights
    weights = sum(p.data.nbytes for p in model.parameters())
    x = da.from_array(images(64), chunks=(4, -1, -1, -1))  # 16 blocks
    out = fd.predict(model, x)
    graph = dict(out.__dask_graph__())
    big = [k for k, v in graph.items() if len(pickle.dumps(v)) > weights]
    assert len(big) == 1 and "fastconv-model-" in str(big[0])
    # the same model in another call: the same key, so computing both sends it once
    again = dict(fd.predict(model, x, classes=True).__dask_graph__())
    assert big[0] in again


def test_model_travels_without_caches_and_as_it_was_when_called(fd, da, sync):
    model = tiny()
    xn = images(16)
    big = images(2048)
    model(big)  # a layer-mode forward: the layers keep this batch (8 MB) for a backward
    model.backward(np.ones((2048, 5), np.float32))
    spec = fd._spec(model, np.dtype(np.float32))
    assert len(spec.architecture) < 20_000  # neither the cached batch nor the gradients
    copy = fd._model_for(spec)
    assert copy is not model and copy is fd._model_for(spec)  # rebuilt once per thread
    assert all(m._ctx is None for m in copy.modules())
    assert all(p.grad is None for p in copy.parameters()) and not copy.training
    assert model[0]._ctx is not None and model[0].weight.grad is not None  # untouched

    before = in_process(model, xn)
    out = fd.predict(model, da.from_array(xn, chunks=(8, -1, -1, -1)))
    for p in model.parameters():  # training after predict was called
        p.data += 1.0
    assert_close32(out.compute(), before)


def test_thread_cache_keeps_a_few_models(fd):
    specs = [fd._spec(tiny(seed), np.dtype(np.float32)) for seed in range(3)]
    first = fd._model_for(specs[0])
    assert fd._model_for(specs[0]) is first
    for spec in specs[1:]:
        fd._model_for(spec)
    assert fd._model_for(specs[0]) is not first  # evicted: at most _CACHE_SIZE per thread


def test_evaluate_sums_blocks_exactly(fd, da, sync):
    # Uneven blocks: a mean of block means would differ from the mean over all images.
    model = tiny(batch_norm=True)
    xn, yn = images(100), labels(100)
    x = da.from_array(xn, chunks=((3, 60, 37), -1, -1, -1))
    y = da.from_array(yn, chunks=10)  # other chunks than x: rechunked to x's
    got = fd.evaluate(model, x, y, batch_size=16)
    want = in_process_evaluate(model, xn, yn)
    assert set(got) == {"accuracy", "loss"}
    assert type(got["accuracy"]) is float and type(got["loss"]) is float
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-12)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert fd.evaluate(model, x, yn)["loss"] == pytest.approx(want["loss"], rel=1e-5)  # numpy y


def test_bad_arguments_are_named(fd, da):
    x = da.from_array(images(8), chunks=4)
    cases = [
        (lambda: fd.predict(tiny(), images(8)), TypeError, "x must be a dask.array.Array"),
        (lambda: fd.predict(tiny(), x[:, 0]), ValueError, "x must be 4-D"),
        (lambda: fd.predict(tiny(), x > 0), TypeError, "x must have a real number dtype"),
        (lambda: fd.predict(object(), x), TypeError, "model must be a fastconv.nn.Module"),
        (lambda: fd.predict(tiny(), x, batch_size=0), ValueError, "batch_size"),
        (lambda: fd.predict(tiny(), x, classes=1), TypeError, "classes must be a bool"),
        (lambda: fd.predict(tiny(), x, threads=0), ValueError, "threads"),
        (lambda: fd.predict(tiny(), da.zeros((8, 3, 8, 8))), ValueError, "channels"),
        (lambda: fd.predict(nn.Conv2d(1, 2, 1), x, classes=True), ValueError, "classes=True"),
        (lambda: fd.evaluate(tiny(), x, labels(7)), ValueError, "one label per image"),
        (lambda: fd.evaluate(tiny(), x, labels(8) * 1.0), TypeError, "y must have an integer"),
        (lambda: fd.evaluate(tiny(), x, list(labels(8))), TypeError, "y must be a dask"),
        (lambda: fd.evaluate(tiny(), x[:0], labels(0)), ValueError, "at least one image"),
    ]
    mixed = tiny()
    mixed[0].double()
    cases.append((lambda: fd.predict(mixed, x), ValueError, "several dtypes"))
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


# ---- on a cluster of worker processes ---------------------------------------------------------


@pytest.fixture
def by_value():
    """Models of this file travel by value, as a class written in a user's script does
    (instead of the workers importing this test file)."""
    import cloudpickle

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


@contextlib.contextmanager
def environ_restored():
    """A nanny copies dask's variables for its workers (``MALLOC_TRIM_THRESHOLD_``,
    ``OMP_NUM_THREADS``, ...) into this process's environment each time it starts one: put the
    environment back for the tests that follow (and their subprocesses)."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def local_cluster(level=logging.ERROR):
    """2 worker processes x 1 thread each (each task runs numba on 1 thread: 2 cores)."""
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # no fixed port: other clusters may run
        silence_logs=level,
    )


@pytest.fixture(scope="module")
def client(fd):
    from distributed import Client

    with environ_restored(), local_cluster() as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=TIMEOUT)
        yield client


def _cached_models():
    """This process and ``{token: id(model)}`` of fastconv.dask's cache in this thread (on a
    worker of 1 thread: the thread that runs every task)."""
    import fastconv.dask

    return os.getpid(), {t: id(m) for t, m in getattr(fastconv.dask._CACHE, "models", {}).items()}


def cached_on_workers(client):
    return {
        w: client.submit(_cached_models, workers=[w], pure=False).result(timeout=TIMEOUT)
        for w in client.scheduler_info()["workers"]
    }


def test_cluster_predict_and_evaluate_equal_in_process(fd, da, client, by_value):
    model = tiny(batch_norm=True)
    token = fd._spec(model, np.dtype(np.float32)).token
    xn, yn = images(300), labels(300)
    x = da.from_array(xn, chunks=(32, -1, -1, -1))
    out = client.compute(fd.predict(model, x, batch_size=10)).result(timeout=TIMEOUT)
    assert_close32(out, in_process(model, xn))
    first = cached_on_workers(client)
    cls = client.compute(fd.predict(model, x, classes=True)).result(timeout=TIMEOUT)
    np.testing.assert_array_equal(cls, in_process(model, xn).argmax(axis=1))
    got = fd.evaluate(model, x, yn, batch_size=10)
    want = in_process_evaluate(model, xn, yn)
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-12)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    # The blocks ran in the worker processes, each of which rebuilt the model once: the same
    # object served its blocks of all three computations.
    last = cached_on_workers(client)
    assert len({pid for pid, _ in last.values()} - {os.getpid()}) == 2
    built = [w for w, (_, models) in first.items() if token in models]
    assert built and all(last[w][1][token] == first[w][1][token] for w in built)


class Gated(nn.Module):
    """``inner``, but on a worker each forward first takes a ticket from the distributed Queue
    named ``queue``: the test decides how many blocks may finish. (On the client, where
    ``predict`` runs one image to learn the output shape, it passes.)"""

    def __init__(self, inner, queue):
        super().__init__()
        self.inner = inner
        self.queue = queue

    def forward(self, x):
        from distributed import Queue, get_worker

        try:
            get_worker()
        except ValueError:  # not on a worker
            return self.inner(x)
        Queue(self.queue).get(timeout=TIMEOUT)
        return self.inner(x)


def _executing(dask_worker):
    return dask_worker.state.executing_count


def test_killed_worker_is_replaced_and_the_result_is_complete(fd, da, by_value):
    from distributed import Client, Queue, as_completed, futures_of

    environ = dict(os.environ)
    inner = tiny()
    xn = images(40)
    x = da.from_array(xn, chunks=(4, -1, -1, -1))  # 10 blocks, one forward (ticket) each
    with environ_restored(), local_cluster(logging.CRITICAL) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=TIMEOUT)
        queue = Queue(f"fastconv-test-{uuid.uuid4().hex}", client=client)
        pred = fd.predict(Gated(inner, queue.name), x, batch_size=4)
        pids = client.run(os.getpid)
        for _ in range(3):
            queue.put(1)
        persisted = client.persist(pred)
        futures = futures_of(persisted)
        done = as_completed(futures, timeout=TIMEOUT)
        finished = {next(done).key for _ in range(3)}  # 3 blocks finished ...
        deadline = time.monotonic() + TIMEOUT
        while sum(client.run(_executing).values()) < 2:  # ... and each worker waits in one
            assert time.monotonic() < deadline, "the workers did not start the next blocks"
            time.sleep(0.05)
        holding = client.has_what()
        victim = max(pids, key=lambda w: len(finished & set(holding.get(w, ()))))
        assert finished & set(holding[victim])  # the victim holds results that will be lost
        os.kill(pids[victim], signal.SIGKILL)  # its finished blocks and its running one are lost
        for _ in range(3 * len(futures)):  # enough tickets for every block and every rerun
            queue.put(1)
        out = client.compute(persisted).result(timeout=TIMEOUT)
        rerun = 3 * len(futures) - queue.qsize() - (len(futures) - 3)  # tickets beyond one each
        client.wait_for_workers(2, timeout=TIMEOUT)
        now = client.run(os.getpid)
    assert_close32(out, in_process(inner, xn))
    assert len(now) == 2 and pids[victim] not in now.values()  # the nanny started a new one
    assert rerun >= 1  # the blocks lost with the victim were computed again
    assert dict(os.environ) == environ  # dask's worker variables did not leak into ours
