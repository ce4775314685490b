"""Data-parallel training over MPI: lenet on 2 ranks x 1 thread against 1 process x 2 threads.

``python -m benchmarks.bench_distributed [--steps 60] [--rounds 3]`` prints a markdown table;
``report(...)`` returns that table. Needs the mpi extra
(``pip install -e ".[mpi]"``: mpi4py and the mpich wheel's ``mpiexec``); nothing here is a
pytest benchmark, so ``pytest --benchmark-only`` does not start MPI jobs.

What runs, on the 2 cores, global batch 64 of random FashionMNIST-shaped images, SGD with
momentum (the example's lenet settings):

- **1 process x 2 threads**: ``training.train_step`` on the whole batch (what
  ``python examples/train_fashion_mnist.py --threads 2`` runs);
- **2 ranks x 1 thread**: ``mpiexec -n 2``, each rank ``training``'s data-parallel step on its
  32 images: forward and backward, then one ``Allreduce`` of every gradient (float32, one flat
  buffer) with the loss and accuracy sums, then the SGD step (what ``--distributed`` runs).

Each run is a fresh process (or MPI job) that takes ``warmup`` untimed steps (kernels loaded
from numba's cache) and then ``steps`` timed ones; the two variants alternate for ``rounds``
rounds, the order reversed every other round, and each figure is the median over the rounds.
In the MPI job the time inside the step's ``Allreduce`` is measured on every rank; it includes
waiting for the slower rank to get there. The same buffer is also reduced alone, ``steps``
times back to back, which gives the cost of moving the bytes without the waiting.

The scaling estimate divides the measured bytes per step by a network's bandwidth: a ring
allreduce over ``W`` machines sends and receives ``2 (W - 1) / W`` times the buffer per
machine per step, so its time hardly grows with ``W``. Each machine's compute is the measured
1-process step scaled by ``1 / W`` at a fixed global batch, or unchanged at a fixed batch per
machine. The reduction starts after the whole backward (PyTorch's DDP overlaps it with the
backward in buckets), so its time adds to the step's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._load import load_average

MODEL = "lenet"
BATCH = 64  # global batch
CORES = 2  # the benchmark machine's
ROOT = Path(__file__).resolve().parents[1]
LINKS = (("1 Gb/s Ethernet", 125e6), ("10 Gb/s Ethernet", 1.25e9), ("100 Gb/s InfiniBand", 12.5e9))


def _data(steps, seed=0):
    rng = np.random.default_rng(seed)
    n = steps * BATCH
    return rng.standard_normal((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n)


def _worker(steps, warmup, distributed):
    """One run: ``{"seconds", "images", "threads", ...}`` of ``steps`` timed training steps."""
    import fastconv
    from fastconv import models, nn, optim, training
    from fastconv._data_parallel import _parallel_step
    from fastconv.datasets import DataLoader

    group = None
    shard = {}
    if distributed:
        import fastconv.distributed as dist

        group = _TimedGroup(dist.init_process_group())
        shard = {"rank": group.rank, "world_size": group.world_size}
    else:
        fastconv.set_num_threads(CORES)
    model = models.build(MODEL, rng=0)
    optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    loader = DataLoader(*_data(warmup + steps), BATCH, shuffle=False, **shard)
    batches = iter(loader)

    def step():
        xb, yb = next(batches)
        if group is None:
            training.train_step(model, criterion, optimizer, xb, yb)
        else:
            _parallel_step(model, criterion, optimizer, xb, yb, group)

    for _ in range(warmup):
        step()
    if group is not None:
        group.comm.Barrier()
        group.reduce_seconds.clear()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "images": steps * BATCH, "threads": fastconv.get_num_threads()}
    if group is not None:
        result.update(group.alone(model, steps))
        result["ranks"] = group.world_size
        result["reduce_in_step_s"] = statistics.median(group.reduce_seconds)
        result["seconds"] = max(group.comm.allgather(seconds))  # the slowest rank's is the job's
        if group.rank != 0:
            return None
    return result


class _TimedGroup:
    """A ``ProcessGroup`` whose step collective is timed; ``alone`` times the collective by
    itself on a buffer of the same size."""

    def __init__(self, group):
        self.group = group
        self.comm, self.rank, self.world_size = group.comm, group.rank, group.world_size
        self.reduce_seconds = []

    def allreduce_step(self, model, count, stats):
        start = time.perf_counter()
        out = self.group.allreduce_step(model, count, stats)
        self.reduce_seconds.append(time.perf_counter() - start)
        return out

    def alone(self, model, steps):
        from mpi4py import MPI

        # The step's buffer: every float32 gradient, a flag per parameter, the count, 3 sums.
        params = list(model.parameters())
        flat = np.zeros(sum(p.data.size for p in params) + len(params) + 1 + 3, np.float32)
        times = []
        for _ in range(steps):
            self.comm.Barrier()
            start = time.perf_counter()
            self.comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
            times.append(time.perf_counter() - start)
        return {"bytes": flat.nbytes, "reduce_alone_s": statistics.median(times)}


def _mpiexec():
    beside = Path(sys.executable).with_name("mpiexec")
    found = str(beside) if beside.is_file() else shutil.which("mpiexec")
    if found is None:
        raise SystemExit("no mpiexec: pip install -e '.[mpi]' (mpi4py and the mpich wheel)")
    return found


def _run(steps, warmup, distributed):
    """One fresh process or MPI job; its result dict."""
    command = [sys.executable, "-m", "benchmarks.bench_distributed", "--worker"]
    command += ["--steps", str(steps), "--warmup", str(warmup)]
    if distributed:
        command = [_mpiexec(), "-n", str(CORES), *command, "--distributed"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(steps=60, rounds=3, warmup=5):
    """``{"single": [result, ...], "mpi": [result, ...]}``, one result per round."""
    runs = {"single": [], "mpi": []}
    for r in range(rounds):
        order = ["single", "mpi"] if r % 2 == 0 else ["mpi", "single"]
        for name in order:
            runs[name].append(_run(steps, warmup, name == "mpi"))
    return runs


def report(steps=60, rounds=3, warmup=5):
    """The markdown tables of ``measure``, with the machine's load and the scaling estimate."""
    load = load_average()
    runs = measure(steps, rounds, warmup)

    def med(name, key):
        return statistics.median(r[key] for r in runs[name])

    speed = {
        name: statistics.median(r["images"] / r["seconds"] for r in runs[name]) for name in runs
    }
    step_ms = {name: 1e3 * med(name, "seconds") / steps for name in runs}
    in_step, alone = 1e3 * med("mpi", "reduce_in_step_s"), 1e3 * med("mpi", "reduce_alone_s")
    nbytes = runs["mpi"][0]["bytes"]
    compute = step_ms["mpi"] - in_step  # rank 0's, on its 32 images
    lines = [
        f"{MODEL} training, global batch {BATCH}, {steps} timed steps after {warmup}, median of "
        f"{rounds} rounds; load average at start {load}",
        "",
        "| variant | images/s | ms/step | / 1 process |",
        "|---|---|---|---|",
        f"| 1 process x {runs['single'][0]['threads']} threads | {speed['single']:,.0f} | "
        f"{step_ms['single']:.1f} | 1.00 |",
        f"| {runs['mpi'][0]['ranks']} ranks x {runs['mpi'][0]['threads']} thread (MPI) | "
        f"{speed['mpi']:,.0f} | {step_ms['mpi']:.1f} | {speed['mpi'] / speed['single']:.2f} |",
        "",
        f"Allreduce per step: {nbytes / 1e6:.2f} MB (float32 gradients + flags + sums), "
        f"{in_step:.2f} ms inside the step (waiting for the other rank included), "
        f"{alone:.2f} ms alone ({nbytes / max(alone, 1e-9) / 1e6:.2f} GB/s through shared "
        f"memory); the rest of the step, {compute:.1f} ms, is rank 0's compute on its "
        f"{BATCH // 2} images.",
        "",
        f"Estimate for W machines like this one, each running one rank x {CORES} threads (the "
        f"1-process step, {step_ms['single']:.1f} ms for {BATCH} images), from the bytes alone: "
        f"a ring allreduce moves 2(W-1)/W x {nbytes / 1e6:.2f} MB in and out of each machine "
        "per step, whatever W and the batch; add 2(W-1) link latencies per step (e.g. "
        "14 x 50 us = 0.7 ms on Ethernet at W=8). Compute per machine is the 1-process step "
        f"x 1/W at a global batch of {BATCH} (strong scaling, optimistic: small batches run "
        f"less efficiently), and stays {step_ms['single']:.1f} ms at {BATCH} images per machine "
        "(weak scaling, global batch 64W):",
        "",
        "| link | allreduce ms, W=2 / 8 | comm share, global 64, W=2 / 8 | comm share, 64 per "
        "machine, W=8 |",
        "|---|---|---|---|",
    ]
    single = step_ms["single"]
    for link, bandwidth in LINKS:
        ms = {w: 1e3 * 2 * (w - 1) / w * nbytes / bandwidth for w in (2, 8)}
        strong = {w: ms[w] / (ms[w] + single / w) for w in (2, 8)}
        lines.append(
            f"| {link} | {ms[2]:.1f} / {ms[8]:.1f} | {strong[2]:.0%} / {strong[8]:.0%} | "
            f"{ms[8] / (ms[8] + single):.0%} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps (default 60)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (default 5)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--distributed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = _worker(args.steps, args.warmup, args.distributed)
        if result is not None:
            print(json.dumps(result))
        return
    print(report(args.steps, args.rounds, args.warmup))


if __name__ == "__main__":
    main()
