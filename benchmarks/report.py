"""Print fastconv's comparison with PyTorch and the NumPy reference as markdown tables.

    python benchmarks/report.py                          # everything, 10 interleaved rounds
    python benchmarks/report.py --only layers lenet      # all layer shapes, lenet's step
    python benchmarks/report.py --only res_56 threads --rounds 20 --markdown-out report.md

Sections (``--only`` takes these, layer shape ids and network names): ``layers`` (conv2d and
max_pool2d per shape of BENCHMARKS.md, forward and forward + backward), ``networks`` (training
step and epoch; ``--full-epoch`` also times a real epoch), ``startup`` (cold and warm start),
``memory`` (peak RSS of a lenet run) and ``threads`` (1 vs 2 threads).

fastconv and PyTorch are timed in the same rounds, alternating which goes first, and each gets
the median of its rounds, so a load change on the shared machine hits both alike. Both run on
2 threads; every function is called once before timing, so JIT compile is excluded.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import fastconv

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(ROOT))

from benchmarks._layers import PASSES, SHAPE_IDS, SHAPES, make_op  # noqa: E402
from benchmarks._nets import BATCH, NETS, STEPS_PER_EPOCH, synthetic_batch, trainer  # noqa: E402

THREADS = 2
SECTIONS = ("layers", "networks", "startup", "memory", "threads")
EPOCH_SAMPLES = 60000


def log(*args):
    print(*args, file=sys.stderr, flush=True)


@contextlib.contextmanager
def num_threads(n):
    """fastconv (numba and BLAS) and PyTorch on ``n`` threads, restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with fastconv.threads(n):
            yield
    finally:
        torch.set_num_threads(before)


def interleaved(fns, rounds, threads=None):
    """Median seconds of each function in ``fns``, all timed once per round (the order reversed
    every other round). ``threads[i]``, if given, is the thread count ``fns[i]`` runs with.

    Each timed call comes right after an untimed call of the same function: a training loop
    runs its operations back to back, but here the other library ran in between, and its
    worker threads are still spinning (OpenMP's wait policy) while ours have gone to sleep; on
    this VM waking them costs milliseconds. Timing the first call after the switch measured
    short operations several times slower than they run in a loop, by chance of order.
    """
    threads = threads or [THREADS] * len(fns)
    times = [[] for _ in fns]
    for r in range(rounds):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            with num_threads(threads[i]):
                fns[i]()
                start = time.perf_counter()
                fns[i]()
                times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def median_time(fn, rounds):
    """Median seconds of ``rounds`` calls, no warm-up (for the NumPy reference)."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def num(x):
    """3 significant digits (``0.0123``, ``4.50``), whole numbers from 100 up."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:#.3g}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Sections: each returns a markdown string
# ---------------------------------------------------------------------------------------------


def machine(args):
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("numpy", "numba", "torch")
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"# fastconv benchmark report\n\n"
        f"- date: {datetime.datetime.now().isoformat(sep=' ', timespec='minutes')}\n"
        f"- machine: {cpu}, {os.cpu_count()} cores; load average at start {load}\n"
        f"- python {platform.python_version()}, fastconv {fastconv.__version__}, {versions}\n"
        f"- float32, NCHW, {THREADS} threads for both libraries, JIT compile excluded; "
        f"fastconv and torch interleaved (each timed call right after an untimed one of the same "
        f"function), median of {args.rounds} rounds; ratios are "
        f"fastconv time / other time (below 1: fastconv is faster)\n"
    )


def layers(shapes, args):
    rows, scaled = [], {}
    for shape in shapes:
        for pass_ in PASSES:
            log(f"layers: {shape.id} {pass_}")
            fns = [make_op(shape, pass_, impl) for impl in ("fastconv", "torch")]
            fc, th = interleaved(fns, args.rounds)
            ref = median_time(make_op(shape, pass_, "reference"), args.ref_rounds)
            ref *= shape.n / shape.ref_n  # per-sample scaling when run on a smaller batch
            mark = ""
            if shape.ref_n < shape.n:
                scaled.setdefault(shape.ref_n, []).append(shape.id)
                mark = " †"
            rows.append([f"{shape.op} {shape.id}", pass_, num(fc * 1e3), num(th * 1e3),
                         num(fc / th), num(ref * 1e3) + mark, num(fc / ref)])  # fmt: skip
    header = ["layer", "pass", "fastconv ms", "torch ms", "fastconv / torch", "reference ms",
              "fastconv / reference"]  # fmt: skip
    notes = "; ".join(f"N={n} for {', '.join(dict.fromkeys(ids))}" for n, ids in scaled.items())
    text = "## Layers (shapes of BENCHMARKS.md)\n\n" + table(header, rows) + "\n"
    text += f"\nreference: `fastconv.reference` (NumPy loops), median of {args.ref_rounds} calls."
    if scaled:
        text += f" † measured on a smaller batch ({notes}) and scaled per sample to the full one."
    return text + "\n"


def networks(nets, args):
    x, y = synthetic_batch()
    rows = []
    for name in nets:
        log(f"networks: {name}")
        steps = [trainer(impl, name)[1] for impl in ("fastconv", "torch")]
        fc, th = interleaved([lambda s=s: s(x, y) for s in steps], args.rounds)
        row = [name, num(fc * 1e3), num(th * 1e3), num(fc / th),
               num(fc * STEPS_PER_EPOCH), num(th * STEPS_PER_EPOCH)]  # fmt: skip
        if args.full_epoch:
            row += [num(measured_epoch(impl, name)) for impl in ("fastconv", "torch")]
        rows.append(row)
    header = ["network", "fastconv ms/step", "torch ms/step", "fastconv / torch",
              "fastconv s/epoch", "torch s/epoch"]  # fmt: skip
    if args.full_epoch:
        header += ["fastconv measured epoch s", "torch measured epoch s"]
    note = f"s/epoch = {STEPS_PER_EPOCH} steps ({EPOCH_SAMPLES} images / {BATCH}) x median step"
    if args.full_epoch:
        note += "; measured epoch: the steps over a shuffled `DataLoader` of 60000 images"
    return (
        f"## Training step (forward, loss, backward, SGD step; batch {BATCH})\n\n"
        + table(header, rows)
        + f"\n\n{note}; synthetic data.\n"
    )


def measured_epoch(impl, name):
    """Seconds of one real epoch of synthetic FashionMNIST-sized data, after one warm-up step."""
    from fastconv.datasets import DataLoader

    log(f"networks: {name} {impl} full epoch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((EPOCH_SAMPLES, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, EPOCH_SAMPLES)
    _, step = trainer(impl, name)
    step(x[:BATCH], y[:BATCH])
    with num_threads(THREADS):
        start = time.perf_counter()
        for xb, yb in DataLoader(x, y, BATCH, shuffle=True, seed=0):
            step(xb, yb)
        return time.perf_counter() - start


# Linux carries ru_maxrss over fork + exec: a child started straight from this (large) process
# would report this process's peak. A small Python process in between starts it instead.
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def child(mode, impl, *extra, env=None):
    """Run ``_child.py`` in a fresh process; return its JSON result and the process wall time
    (for memory runs this includes the launcher's own start)."""
    cmd = [sys.executable, "-m", "benchmarks._child", mode, impl, *map(str, extra)]
    if mode == "memory":
        cmd = [sys.executable, "-c", LAUNCHER, *cmd]
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1]), time.perf_counter() - start


def startup(args):
    rows = []
    with tempfile.TemporaryDirectory(prefix="fastconv-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = [("fastconv, cold (empty JIT cache)", "fastconv", env),
                ("fastconv, warm (same cache, filled)", "fastconv", env),
                ("torch", "torch", None)]  # fmt: skip
        for label, impl, run_env in runs:
            log(f"startup: {label}")
            r, wall = child("startup", impl, env=run_env)
            total = r["import"] + r["build"] + r["first_step"]
            rows.append([label, num(r["import"]), num(r["build"]), num(r["first_step"]),
                         num(total), num(wall)])  # fmt: skip
    header = ["run", "import s", "build lenet s", "first step s", "total s",
              "process wall s"]  # fmt: skip
    return (
        "## Start-up (fresh process: import, build lenet, first training step)\n\n"
        + table(header, rows)
        + "\n\nEach run is a new Python process; cold and warm share a new `NUMBA_CACHE_DIR`. "
        "`import` counts from before NumPy's import; process wall includes interpreter start.\n"
    )


def memory(args):
    rows = []
    log("memory: fastconv warm-up run (fills the JIT cache, so compile memory is not counted)")
    child("memory", "fastconv", 1)
    for impl in ("fastconv", "torch"):
        log(f"memory: {impl}, {args.memory_steps} steps")
        r, _ = child("memory", impl, args.memory_steps)
        rows.append([impl, num(r["after_import"]), num(r["peak"])])
    return (
        f"## Peak resident memory (lenet, batch {BATCH}, {args.memory_steps} training steps)\n\n"
        + table(["library", "peak RSS after import MiB", "peak RSS after the run MiB"], rows)
        + "\n\nEach library in its own process (`ru_maxrss`), only that library imported, warm "
        "JIT cache, cycling over 16 synthetic batches.\n"
    )


def threads(args):
    x, y = synthetic_batch()
    res_56 = next(s for s in SHAPES if s.id == "res_56")
    cases = [("conv2d res_56 fwd+bwd", lambda impl: make_op(res_56, "fwd+bwd", impl)),
             ("lenet training step", lambda impl: _step(impl, "lenet", x, y))]  # fmt: skip
    rows = []
    for label, make in cases:
        log(f"threads: {label}")
        fns = [make(impl) for impl in ("fastconv", "fastconv", "torch", "torch")]
        fc1, fc2, th1, th2 = interleaved(fns, args.rounds, threads=[1, 2, 1, 2])
        rows.append([label, num(fc1 * 1e3), num(fc2 * 1e3), num(fc1 / fc2),
                     num(th1 * 1e3), num(th2 * 1e3), num(th1 / th2)])  # fmt: skip
    header = ["case", "fastconv 1 thread ms", "fastconv 2 threads ms", "fastconv speedup",
              "torch 1 thread ms", "torch 2 threads ms", "torch speedup"]  # fmt: skip
    return "## Threads (speedup = 1-thread time / 2-thread time)\n\n" + table(header, rows) + "\n"


def _step(impl, name, x, y):
    _, step = trainer(impl, name)
    return lambda: step(x, y)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    choices = (*SECTIONS, *SHAPE_IDS, *NETS)
    p.add_argument(
        "--only", nargs="+", default=[], metavar="NAME",
        help=f"run only these (comma or space separated): {', '.join(choices)}",
    )  # fmt: skip
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds per comparison")
    p.add_argument("--ref-rounds", type=int, default=3, help="calls per NumPy reference timing")
    p.add_argument("--memory-steps", type=int, default=200, help="steps of the memory run")
    p.add_argument("--full-epoch", action="store_true", help="also time a real epoch per net")
    p.add_argument("--markdown-out", type=Path, help="also write the report to this file")
    args = p.parse_args(argv)
    args.only = {name for item in args.only for name in item.split(",") if name}
    if unknown := args.only - set(choices):
        p.error(f"--only: unknown {', '.join(sorted(unknown))}; choose from {', '.join(choices)}")
    for name in ("rounds", "ref_rounds", "memory_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if importlib.util.find_spec("torch") is None:
        sys.exit("report.py compares fastconv with PyTorch: install torch first")
    only = args.only or set(SECTIONS)
    shapes = [s for s in SHAPES if "layers" in only or s.id in only]
    nets = [n for n in NETS if "networks" in only or n in only]
    parts = [machine(args)]
    print(parts[0], flush=True)
    todo = [(shapes, lambda: layers(shapes, args)), (nets, lambda: networks(nets, args))]
    todo += [(name in only, lambda f=f: f(args)) for name, f in
             (("startup", startup), ("memory", memory), ("threads", threads))]  # fmt: skip
    for selected, section in todo:
        if selected:
            parts.append(section())
            print(parts[-1], flush=True)
    if args.markdown_out:
        args.markdown_out.write_text("\n".join(parts))
        log(f"written to {args.markdown_out}")


if __name__ == "__main__":
    main()
