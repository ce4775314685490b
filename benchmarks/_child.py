"""One measurement in a fresh process, run by report.py; prints one JSON line.

    python -m benchmarks._child startup fastconv|torch       # seconds: import, build, first step
    python -m benchmarks._child memory fastconv|torch STEPS  # peak RSS (MiB) of a lenet run

The clock starts before any import, so "import" includes NumPy (and numba, or torch's own
libraries). Only the library measured is imported.
"""

import time

START = time.perf_counter()

import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

THREADS = 2
DATA_BATCHES = 16  # the memory run cycles over 16 synthetic batches (1024 images, 3 MiB)


def peak_rss_mib():
    """``ru_maxrss`` of this process: KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def import_library(impl):
    if impl == "fastconv":
        import fastconv
        import fastconv.nn
        import fastconv.optim  # noqa: F401

        fastconv.set_num_threads(THREADS)
    elif impl == "torch":
        import torch

        torch.set_num_threads(THREADS)
    else:
        raise ValueError(f"impl must be fastconv or torch, got {impl!r}")


def main(mode, impl, steps="200"):
    import_library(impl)
    imported = time.perf_counter()
    rss_imported = peak_rss_mib()
    from benchmarks._nets import synthetic_batch, trainer

    _, train_step = trainer(impl, "lenet")
    built = time.perf_counter()
    if mode == "startup":
        train_step(*synthetic_batch())
        done = time.perf_counter()
        return {"import": imported - START, "build": built - imported, "first_step": done - built}
    if mode == "memory":
        batches = [synthetic_batch(seed=i) for i in range(DATA_BATCHES)]
        for i in range(int(steps)):
            train_step(*batches[i % DATA_BATCHES])
        return {"after_import": rss_imported, "peak": peak_rss_mib()}
    raise ValueError(f"mode must be startup or memory, got {mode!r}")


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
