"""The report's sections that time or measure whole processes: start-up (cold and warm JIT
cache) and peak resident memory (the README's real training run, and synthetic steps).

Each program runs in a fresh process, so only the library measured is imported and each
process's own peak is read.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import fastconv
from benchmarks._format import log, num, table
from benchmarks._nets import BATCH
from benchmarks.train_torch import DATA_DIR, load_split
from fastconv._precompile import helper_running

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2


# Linux carries ru_maxrss over fork + exec: a child started straight from this (large) process
# would report this process's peak. A small Python process in between starts it instead, and
# reports its child's peak (RUSAGE_CHILDREN) on its last line.
LAUNCHER = (
    "import json, resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
    "print(json.dumps({'rc': rc, 'peak_kib': resource.getrusage(resource.RUSAGE_CHILDREN)"
    ".ru_maxrss})); sys.exit(rc)"
)


def child(mode, impl, *extra, env=None):
    """Run ``_child.py`` in a fresh process; return its JSON result and the process wall time
    (for memory runs this includes the launcher's own start)."""
    cmd = [sys.executable, "-m", "benchmarks._child", mode, impl, *map(str, extra)]
    if mode == "memory":
        cmd = [sys.executable, "-c", LAUNCHER, *cmd]
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    return json.loads(lines[-2 if mode == "memory" else -1]), time.perf_counter() - start


def _wait_for_helper(cache, timeout=300):
    """Until the cold run's compiling helper (``fastconv._precompile``) has finished: it may
    outlive the run, and the next run should not share the CPU with it."""
    deadline = time.monotonic() + timeout
    while helper_running(cache) and time.monotonic() < deadline:
        time.sleep(0.2)


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
            if run_env is env:
                _wait_for_helper(Path(cache))
            total = r["import"] + r["build"] + r["first_step"]
            rows.append([label, num(r["import"]), num(r["build"]), num(r["first_step"]),
                         num(total), num(wall)])  # fmt: skip
            args.figures[f"start-up {label}: process wall s"] = num(wall)
    header = ["run", "import s", "build lenet s", "first step s", "total s",
              "process wall s"]  # fmt: skip
    return (
        "## Start-up (fresh process: import, build lenet, first training step)\n\n"
        + table(header, rows)
        + "\n\nEach run is a new Python process; cold and warm share a new `NUMBA_CACHE_DIR`. "
        "`import` counts from before NumPy's import; process wall includes interpreter start. "
        "The cold run includes fastconv's compiling helper process (`fastconv._precompile`), "
        "as a user's first run does; the next run starts when the helper has finished.\n"
    )


def training_run(cmd):
    """Run a training program through the launcher; ``(peak RSS MiB, wall s, last test
    accuracy)``, or None if it failed (its error output is logged)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], cwd=ROOT, capture_output=True,
                         text=True)  # fmt: skip
    wall = time.perf_counter() - start
    if out.returncode != 0:
        log(f"{' '.join(cmd)} failed with exit code {out.returncode}:\n{out.stderr[-3000:]}")
        return None
    peak_kib = json.loads(out.stdout.splitlines()[-1])["peak_kib"]
    accuracies = re.findall(r"test loss \S+ acc ([\d.]+)%", out.stdout)
    return peak_kib / 1024, wall, f"{accuracies[-1]}%" if accuracies else "-"


def memory(args):
    text = "## Peak resident memory\n\n"
    if args.memory_limit:
        text += real_run_memory(args)
    if args.memory_steps:
        text += synthetic_memory(args)
    return text


def real_run_memory(args):
    """The README's training command on the real data, and the PyTorch twin with the same
    network, data, batch size and epochs; whole-process peak RSS."""
    if not DATA_DIR.is_dir():
        return f"Training run: skipped, no FashionMNIST in {DATA_DIR}.\n\n"
    for split in ("train", "test"):  # both programs must train and test on the same arrays
        for a, b in zip(
            load_split(split, DATA_DIR),
            fastconv.datasets.fashion_mnist(split, DATA_DIR),
            strict=True,
        ):
            if not np.array_equal(a, b):
                raise RuntimeError(f"train_torch.py reads a different {split} split than fastconv")
    limit, epochs = args.memory_limit, args.memory_epochs
    rows = []
    with tempfile.TemporaryDirectory(prefix="fastconv-run-") as tmp:

        def command(program, images, out):
            cmd = [sys.executable, *program, "--model", "lenet", "--epochs", str(epochs),
                   "--limit", str(images), "--threads", str(THREADS),
                   "--data-dir", str(DATA_DIR)]  # fmt: skip
            return cmd + (["--no-progress", "--out", str(Path(tmp) / out)] if out else [])

        example = ["examples/train_fashion_mnist.py"]
        log("memory: fastconv warm-up run (fills the JIT cache, so compile memory is not counted)")
        training_run(command(example, BATCH, "warm-up"))
        runs = [("fastconv", command(example, limit, "run")),
                ("torch", command(["-m", "benchmarks.train_torch"], limit, None))]  # fmt: skip
        for impl, cmd in runs:
            log(f"memory: {impl} training run, {limit} images, {epochs} epoch(s)")
            result = training_run(cmd)
            shown = " ".join(["python", *cmd[1:]]).replace(tmp, "$TMP")
            if result is None:
                rows.append([impl, f"`{shown}`", "failed (see the log)", "-", "-"])
                continue
            peak, wall, acc = result
            rows.append([impl, f"`{shown}`", num(peak), num(wall), acc])
            args.figures[f"training run peak RSS {impl} MiB"] = num(peak)
    header = ["library", "command", "peak RSS MiB", "wall s", "test accuracy"]
    return (
        f"### Training run (lenet, FashionMNIST, {limit} training images, all 10000 test images, "
        f"batch {BATCH}, {epochs} epoch(s))\n\n"
        + table(header, rows)
        + "\n\nWhole-process `ru_maxrss` of each program (through a small launcher), warm JIT "
        "cache; `--memory-epochs` sets the epochs (the README's command runs 3; the peak is "
        "set in the first unless memory leaks). The example also writes a checkpoint and its "
        "history (and `curve.png` with matplotlib, if installed); PyTorch's twin "
        "(`benchmarks/train_torch.py`) only trains and tests, and reads the same files with "
        "NumPy, checked equal to `fastconv.datasets`.\n\n"
    )


def synthetic_memory(args):
    rows = []
    log("memory: fastconv warm-up run (fills the JIT cache, so compile memory is not counted)")
    child("memory", "fastconv", 1)
    for impl in ("fastconv", "torch"):
        log(f"memory: {impl}, {args.memory_steps} synthetic steps")
        r, _ = child("memory", impl, args.memory_steps)
        rows.append([impl, num(r["after_import"]), num(r["peak"])])
        args.figures[f"{args.memory_steps} synthetic steps peak RSS {impl} MiB"] = num(r["peak"])
    return (
        f"### Training steps alone (lenet, batch {BATCH}, {args.memory_steps} steps)\n\n"
        + table(["library", "peak RSS after import MiB", "peak RSS after the steps MiB"], rows)
        + "\n\nEach library in its own process (`ru_maxrss`), only that library imported, warm "
        "JIT cache, cycling over 16 synthetic batches: no data set, no test pass.\n"
    )
