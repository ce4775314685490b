"""Inference throughput of lenet: in-process against ``fastconv.dask.predict`` on 2 worker
processes (and on dask's threads in this process), in images/s.

``python -m benchmarks.bench_dask [--images 20000] [--rounds 3]`` prints a markdown table;
``report(...)`` returns that table. Needs the dask extra
(``pip install -e ".[dask]"``); nothing here is a pytest benchmark, so ``pytest
--benchmark-only`` does not start a cluster.

What runs, on the 2 cores (one numba thread per dask thread, so every variant uses 2 threads):

- **in-process**: ``model(x)`` under ``no_grad`` in eval mode, batch by batch, on 2 numba threads
  (what each dask block runs, without dask);
- **dask, 2 worker processes**: a ``LocalCluster`` of 2 workers x 1 thread, each task on 1
  numba thread; the images are made and persisted in the workers' memory first (as if they had
  loaded them), so the time is inference plus returning the (N, 10) logits. Twice: with dask's
  worker environment, whose ``MALLOC_TRIM_THRESHOLD_=65536`` makes glibc return freed memory to
  the system at once (and, being set, turns fastconv's own heap setting off: see
  ``fastconv/autograd/_heap.py``), and with fastconv's thresholds in its place
  (``HEAP_ENVIRON``);
- **dask, 2 threads here**: dask's threaded scheduler with 2 threads in this process, 1 numba
  thread each.

Each variant is run once untimed (JIT cache loads, the model reaching the workers), then the
variants are timed in turn for ``rounds`` rounds (the order reversed every other round, so a
load change hits them alike); the figure is the median. numba runs on its default threading
layer here (tbb, as in the workers): PyTorch is not in this process (see ``_threading.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import time

import numpy as np

from benchmarks._load import load_average
from fastconv.autograd._heap import MMAP_THRESHOLD, TRIM_THRESHOLD

MODEL = "lenet"
THREADS = 2  # cores of the benchmark machine: 2 numba threads, or 2 workers x 1


# What the workers' environment needs for fastconv's heap thresholds (dask sets the first to 64 kB).
HEAP_ENVIRON = {"MALLOC_TRIM_THRESHOLD_": TRIM_THRESHOLD, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}


def _cluster(environ):
    """2 worker processes x 1 thread, their environment updated with ``environ``."""
    import dask
    from distributed import LocalCluster

    keys = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in environ.items()}
    # A nanny copies these variables into this process's environment too, where they would
    # override the next cluster's configuration: restore it.
    saved = dict(os.environ)
    try:
        with dask.config.set(keys):  # read when the nannies are made, here
            return LocalCluster(
                n_workers=THREADS,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            )
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _variants(n, chunk, batch_size, clients):
    """``{name: run}``: each ``run()`` predicts the logits of the same ``n`` images once;
    ``clients`` maps a name to a ``distributed.Client``."""
    import dask
    import dask.array as da

    import fastconv
    import fastconv.dask as fd
    from fastconv import models

    model = models.build(MODEL, rng=0).eval()  # in-process as on the workers
    # FashionMNIST-shaped random images, made on each cluster's workers and kept there (the
    # same values: dask's generator is seeded per block); gathered here once.
    shape = (n, 1, 28, 28)
    x = da.random.default_rng(0).standard_normal(shape, dtype=np.float32, chunks=chunk)
    x = x.rechunk((chunk, -1, -1, -1))
    on_workers = {name: client.persist(x) for name, client in clients.items()}
    first = next(iter(clients))
    images = clients[first].compute(on_workers[first]).result()
    x_local = da.from_array(images, chunks=(chunk, -1, -1, -1))

    def in_process():
        with fastconv.threads(THREADS), fastconv.no_grad():
            return [model(images[i : i + batch_size]) for i in range(0, n, batch_size)]

    def workers(name):
        return lambda: (
            clients[name].compute(fd.predict(model, on_workers[name], batch_size)).result()
        )

    def on_threads():
        with dask.config.set(scheduler="threads", num_workers=THREADS):
            return fd.predict(model, x_local, batch_size).compute()

    runs = {"in-process (2 numba threads)": in_process}
    runs.update(
        {f"fastconv.dask, 2 worker processes x 1 thread, {name}": workers(name) for name in clients}
    )
    runs["fastconv.dask, dask threads here (2 x 1 numba thread)"] = on_threads
    return runs


def measure(n=20000, rounds=3, chunk=1000, batch_size=256):
    """``{variant: images/s}`` (medians of ``rounds`` interleaved rounds)."""
    from distributed import Client

    environs = {"dask's environment": {}, "fastconv's heap thresholds": HEAP_ENVIRON}
    with contextlib.ExitStack() as stack:
        clients = {}
        for name, environ in environs.items():
            cluster = stack.enter_context(_cluster(environ))
            clients[name] = stack.enter_context(Client(cluster, set_as_default=False))
            clients[name].wait_for_workers(THREADS)
        runs = _variants(n, chunk, batch_size, clients)
        for run in runs.values():  # JIT cache loads, model shipped: not timed
            run()
        times = {name: [] for name in runs}
        for r in range(rounds):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for name in order:
                start = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - start)
    return {name: n / statistics.median(t) for name, t in times.items()}


def report(n=20000, rounds=3, chunk=1000, batch_size=256):
    """The markdown table of ``measure``, with the command and the machine's load."""
    load = load_average()
    speeds = measure(n, rounds, chunk, batch_size)
    base = next(iter(speeds.values()))
    lines = [
        f"lenet inference, {n} random (N, 1, 28, 28) float32 images, blocks of {chunk}, "
        f"batch {batch_size}, median of {rounds} rounds; load average at start {load}",
        "",
        "| variant | images/s | / in-process |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {v:,.0f} | {v / base:.2f} |" for name, v in speeds.items()]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000, help="images (default 20000)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--chunk", type=int, default=1000, help="images per block (default 1000)")
    parser.add_argument("--batch-size", type=int, default=256, help="per forward (default 256)")
    args = parser.parse_args()
    print(report(args.images, args.rounds, args.chunk, args.batch_size))


if __name__ == "__main__":
    main()
