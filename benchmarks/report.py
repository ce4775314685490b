"""Print fastconv's comparison with PyTorch and the NumPy reference as markdown tables.

Run from the repository root (``benchmarks`` is a package there, not an installed one):

    python -m benchmarks.report                           # everything, 20 interleaved rounds
    python -m benchmarks.report --only layers lenet       # all layer shapes, lenet's step
    python -m benchmarks.report --only breakdown roofline --rounds 20 --markdown-out report.md
    python -m benchmarks.report --only memory --memory-limit 6400   # a shorter real run
    python -m benchmarks.report --unset-blas-env          # also with the OPENBLAS_* variables unset

Sections (``--only`` takes these, layer shape ids and network names):

- ``layers``: conv2d and max_pool2d per benchmark shape, forward and forward + backward;
- ``roofline``: the measured float32 peak (an FMA-bound numba loop, a 2048^3 sgemm) and each
  conv shape's GFLOP/s and fraction of that peak, for both libraries;
- ``networks``: training step and epoch per network (``--full-epoch`` also times a real epoch);
- ``breakdown``: the lenet step cut into its operations, for both libraries;
- ``startup``: cold (empty JIT cache) and warm start of a fresh process;
- ``memory``: peak RSS of the README's real training run and of PyTorch's twin;
- ``threads``: 1 vs 2 threads.

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
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a file: the `benchmarks` package cannot be imported from here
    sys.exit("run the report from the repository root as a module: python -m benchmarks.report")

import numpy as np  # noqa: E402

import fastconv  # noqa: E402
from benchmarks import _roofline  # noqa: E402
from benchmarks._breakdown import step_ops  # noqa: E402
from benchmarks._format import log, num, table  # noqa: E402
from benchmarks._layers import PASSES, SHAPE_IDS, SHAPES, make_op  # noqa: E402
from benchmarks._load import load_average  # noqa: E402
from benchmarks._nets import BATCH, NETS, STEPS_PER_EPOCH, synthetic_batch, trainer  # noqa: E402
from benchmarks._processes import memory, startup  # noqa: E402
from benchmarks._threading import use_openmp_unless_set  # noqa: E402

use_openmp_unless_set()  # before any kernel runs: see benchmarks/_threading.py
ROOT = Path(__file__).resolve().parents[1]
THREADS = 2
SECTIONS = ("layers", "roofline", "networks", "breakdown", "startup", "memory", "threads")
EPOCH_SAMPLES = 60000
BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


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


def interleaved_ops(op_lists, rounds):
    """Like ``interleaved`` for lists of ``_breakdown.Op``: per round, each list runs its ops in
    order (the lists alternate which goes first); each op is timed right after an untimed call
    of itself, each call after its ``prepare``. Returns the median seconds per op, per list."""
    times = [[[] for _ in ops] for ops in op_lists]
    for r in range(rounds):
        order = range(len(op_lists)) if r % 2 == 0 else reversed(range(len(op_lists)))
        for i in order:
            with num_threads(THREADS):
                for k, op in enumerate(op_lists[i]):
                    op.prepare()
                    op.run()
                    op.prepare()
                    start = time.perf_counter()
                    op.run()
                    times[i][k].append(time.perf_counter() - start)
    return [[statistics.median(t) for t in per_op] for per_op in times]


def median_time(fn, rounds):
    """Median seconds of ``rounds`` calls, no warm-up (for the NumPy reference)."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------
# Sections: each returns a markdown string and records its key figures in ``args.figures``
# (``--json-out``; the side-by-side table of ``--unset-blas-env``)
# ---------------------------------------------------------------------------------------------


def cpu_model():
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    return platform.processor() or "unknown CPU"


def blas_libraries():
    """``numpy: openblas 0.3.31 SkylakeX`` for each BLAS threadpoolctl finds (NumPy's, and
    SciPy's, which numba's compiled ``np.dot`` calls)."""
    import scipy.linalg.cython_blas  # noqa: F401  (load SciPy's BLAS so it is listed)
    from threadpoolctl import threadpool_info

    found = []
    for lib in threadpool_info():
        if lib["user_api"] != "blas":
            continue
        owner = Path(lib["filepath"]).parent.name.removesuffix(".libs")  # numpy.libs -> numpy
        kernel = lib.get("architecture") or "kernel unknown"
        found.append(f"{owner}: {lib['internal_api']} {lib['version']}, kernel {kernel}")
    return "; ".join(found) or "none found"


def numba_layer():
    """The layer numba's parallel kernels run on here (started by a tiny kernel if need be)."""
    import numba

    fastconv.functional.relu(np.zeros(1, np.float32))
    return numba.threading_layer()


def blas_environment():
    """How OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set, in words."""
    set_vars = [f"{name}={os.environ[name]}" for name in BLAS_VARS if name in os.environ]
    if not set_vars:
        return (
            f"{' and '.join(BLAS_VARS)} are not set: OpenBLAS picks its kernel from the CPU "
            "(this run is the 'both unset' configuration)"
        )
    unset = [name for name in BLAS_VARS if name not in os.environ]
    return ", ".join(set_vars) + (f"; {', '.join(unset)} not set" if unset else "")


def machine(args):
    from llvmlite import binding as llvm

    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("numpy", "numba", "torch")
    )
    load = load_average()
    target = os.environ.get("NUMBA_CPU_NAME") or llvm.get_host_cpu_name()
    title = args.title or "fastconv benchmark report"
    return (
        f"# {title}\n\n"
        f"- date: {datetime.datetime.now().isoformat(sep=' ', timespec='minutes')}\n"
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores (LLVM target `{target}`); "
        f"load average at start {load}\n"
        f"- BLAS: {blas_libraries()}\n"
        f"- BLAS environment: {blas_environment()}\n"
        f"- numba threading layer in this process: {numba_layer()} (see "
        "`benchmarks/_threading.py`; the start-up and memory runs use the default, tbb)\n"
        f"- python {platform.python_version()}, fastconv {fastconv.__version__} (from "
        f"`{Path(fastconv.__file__).parent}`), {versions}\n"
        f"- float32, NCHW, {THREADS} threads for both libraries, JIT compile excluded; "
        f"fastconv and torch interleaved (each timed call right after an untimed one of the same "
        f"function), median of {args.rounds} rounds; ratios are "
        f"fastconv time / other time (below 1: fastconv is faster)\n"
    )


def layer_times(shape, pass_, args):
    """``(fastconv s, torch s)`` of one layer, interleaved; measured once per report."""
    key = (shape.id, pass_)
    if key not in args.layer_times:
        log(f"layers: {shape.id} {pass_}")
        fns = [make_op(shape, pass_, impl) for impl in ("fastconv", "torch")]
        args.layer_times[key] = tuple(interleaved(fns, args.rounds))
    return args.layer_times[key]


def layers(shapes, args):
    rows, scaled = [], {}
    for shape in shapes:
        for pass_ in PASSES:
            fc, th = layer_times(shape, pass_, args)
            ref = median_time(make_op(shape, pass_, "reference"), args.ref_rounds)
            ref *= shape.n / shape.ref_n  # per-sample scaling when run on a smaller batch
            mark = ""
            if shape.ref_n < shape.n:
                scaled.setdefault(shape.ref_n, []).append(shape.id)
                mark = " †"
            rows.append([f"{shape.op} {shape.id}", pass_, num(fc * 1e3), num(th * 1e3),
                         num(fc / th), num(ref * 1e3) + mark, num(fc / ref)])  # fmt: skip
            args.figures[f"{shape.id} {pass_}: fastconv / torch"] = num(fc / th)
    header = ["layer", "pass", "fastconv ms", "torch ms", "fastconv / torch", "reference ms",
              "fastconv / reference"]  # fmt: skip
    notes = "; ".join(f"N={n} for {', '.join(dict.fromkeys(ids))}" for n, ids in scaled.items())
    text = "## Layers (the shapes of benchmarks/README.md)\n\n" + table(header, rows) + "\n"
    text += f"\nreference: `fastconv.reference` (NumPy loops), median of {args.ref_rounds} calls."
    if scaled:
        text += f" † measured on a smaller batch ({notes}) and scaled per sample to the full one."
    return text + "\n"


def roofline(shapes, args):
    log("roofline: FMA loop and sgemm peaks")
    from threadpoolctl import threadpool_limits

    with num_threads(THREADS):
        fma = _roofline.fma_peak(THREADS)
    with threadpool_limits(THREADS, user_api="blas"):
        sgemm = _roofline.sgemm_peak()
    n = _roofline.SGEMM_SIZE
    peaks = [
        [f"FMA loop (numba, {_roofline.CHAINS} independent <{_roofline.LANES} x float> "
         f"accumulators per thread)", num(fma), "100%"],
        [f"sgemm {n} x {n} x {n} (NumPy's BLAS)", num(sgemm), f"{sgemm / fma:.0%}"],
    ]  # fmt: skip
    args.figures["FMA peak GFLOP/s"] = num(fma)
    args.figures["sgemm GFLOP/s"] = num(sgemm)
    rows = []
    for shape in shapes:
        for pass_ in PASSES:
            flops = _roofline.conv_flops(shape, pass_)
            fc, th = layer_times(shape, pass_, args)
            rows.append([shape.id, pass_, num(flops / 1e9), num(flops / fc / 1e9),
                         num(flops / th / 1e9), f"{flops / fc / 1e9 / fma:.0%}",
                         f"{flops / th / 1e9 / fma:.0%}"])  # fmt: skip
            args.figures[f"{shape.id} {pass_}: fastconv GFLOP/s"] = num(flops / fc / 1e9)
    header = ["conv", "pass", "GFLOP", "fastconv GFLOP/s", "torch GFLOP/s",
              "fastconv % of FMA peak", "torch % of FMA peak"]  # fmt: skip
    return (
        f"## Roofline ({THREADS} threads)\n\n"
        + table(["peak", "GFLOP/s", "% of FMA peak"], peaks)
        + f"\n\nFMA loop as compiled: {_roofline.fma_asm()}.\n\n"
        + table(header, rows)
        + "\n\nFLOP per forward: 2 x N x C_out x C_in x kH x kW x OH x OW; forward + backward "
        "(grad input, grad weight, grad bias) counts 3x that. Times are the layers' above.\n"
    )


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
        args.figures[f"{name} step: fastconv / torch"] = num(fc / th)
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


def breakdown(args):
    name = args.breakdown_net
    log(f"breakdown: {name} step, per operation")
    x, y = synthetic_batch()
    built = [step_ops(impl, name, x, y) for impl in ("fastconv", "torch")]
    names = [op.name for op in built[0][0]]
    if names != [op.name for op in built[1][0]]:
        raise RuntimeError(f"the two {name} networks differ: {names} vs {built[1][0]}")
    fc_ops, th_ops = interleaved_ops([ops for ops, _ in built], args.rounds)
    fc_step, th_step = interleaved([whole for _, whole in built], args.rounds)
    fc_sum, th_sum = sum(fc_ops), sum(th_ops)
    rows = [[op, num(fc * 1e3), num(th * 1e3), num(fc / th), f"{fc / fc_sum:.0%}",
             f"{th / th_sum:.0%}"]
            for op, fc, th in zip(names, fc_ops, th_ops, strict=True)]  # fmt: skip
    rows += [
        ["**sum of the operations**", num(fc_sum * 1e3), num(th_sum * 1e3), num(fc_sum / th_sum),
         "100%", "100%"],
        ["**whole step, measured**", num(fc_step * 1e3), num(th_step * 1e3),
         num(fc_step / th_step), f"{fc_step / fc_sum:.0%}", f"{th_step / th_sum:.0%}"],
    ]  # fmt: skip
    args.figures[f"{name} breakdown: fastconv sum / whole step"] = num(fc_sum / fc_step)
    header = ["operation", "fastconv ms", "torch ms", "fastconv / torch",
              "fastconv % of sum", "torch % of sum"]  # fmt: skip
    return (
        f"## Where the time goes: the {name} training step per operation (batch {BATCH})\n\n"
        + table(header, rows)
        + "\n\nEach layer is called on its own with the input (and output gradient) it gets in "
        "the step, median of the rounds; a backward row is that layer's backward alone (its "
        "forward runs untimed just before). Neither library computes the first conv's input "
        "gradient (the images need none), as in their training steps. "
        "The whole step is timed in separate rounds; where it is shorter than the sum, the "
        "network does better than its layers one by one (fastconv's `Sequential` runs a ReLU "
        "after the max pooling that follows it, on 4x less data).\n"
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
        args.figures[f"{label}: fastconv 2-thread speedup"] = num(fc1 / fc2)
    log("threads: controls (compute-bound, memory-bound)")
    for label, work in (("control: FMA loop, no memory", _roofline.fma_work()),
                        ("control: ReLU over 64 MB", _roofline.memory_work())):  # fmt: skip
        c1, c2 = interleaved([work, work], args.rounds, threads=[1, 2])
        rows.append([label, num(c1 * 1e3), num(c2 * 1e3), num(c1 / c2), "", "", ""])
        args.figures[f"{label}: 2-thread speedup"] = num(c1 / c2)
    header = ["case", "fastconv 1 thread ms", "fastconv 2 threads ms", "fastconv speedup",
              "torch 1 thread ms", "torch 2 threads ms", "torch speedup"]  # fmt: skip
    return (
        "## Threads (speedup = 1-thread time / 2-thread time)\n\n"
        + table(header, rows)
        + "\n\nThe controls show what the machine allowed at the time, in their own rounds: "
        "fixed compute-bound work in two chunks (about 2 when the second core is free), and "
        "fastconv's ReLU over 64 MB, bound by memory bandwidth, which the two cores share. The "
        "training step's memory-bound layers (ReLU, pooling, the first conv's output) scale "
        "like the second.\n"
    )


def _step(impl, name, x, y):
    _, step = trainer(impl, name)
    return lambda: step(x, y)


def unset_blas_env_run(args):
    """The same report in a child process with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset:
    its key figures beside this run's, then its full text."""
    if not any(name in os.environ for name in BLAS_VARS):
        return (
            f"## BLAS environment\n\n{' and '.join(BLAS_VARS)} are not set here, so this run "
            "already is the 'both unset' one; --unset-blas-env ran nothing more.\n"
        )
    env = {k: v for k, v in os.environ.items() if k not in BLAS_VARS}
    with tempfile.TemporaryDirectory(prefix="fastconv-report-") as tmp:
        figures_path = Path(tmp) / "figures.json"
        title = f"Run with {' and '.join(BLAS_VARS)} unset"
        cmd = [sys.executable, "-m", "benchmarks.report", *child_argv(args),
               "--json-out", str(figures_path), "--title", title]  # fmt: skip
        log(f"unset-blas-env: {' '.join(cmd[1:])}")
        out = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, check=True)
        unset = json.loads(figures_path.read_text())
    here = ", ".join(f"{name}={os.environ.get(name, '(not set)')}" for name in BLAS_VARS)
    rows = [[key, value, unset.get(key, "-")] for key, value in args.figures.items()]
    return (
        "## Default environment vs OPENBLAS variables unset\n\n"
        + table(["figure", f"default ({here})", "both unset"], rows)
        + "\n\nThe second column is the same report run in a child process with both variables "
        "removed from its environment (in that command only); its full text follows.\n\n"
        + re.sub(r"^(#+) ", r"#\1 ", out.stdout, flags=re.MULTILINE)  # its headings one level down
    )


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    choices = (*SECTIONS, *SHAPE_IDS, *NETS)
    p.add_argument(
        "--only", nargs="+", default=[], metavar="NAME",
        help=f"run only these (comma or space separated): {', '.join(choices)}",
    )  # fmt: skip
    p.add_argument(
        "--rounds", type=int, default=20, help="interleaved rounds per comparison (default: 20)"
    )
    p.add_argument(
        "--ref-rounds", type=int, default=3, help="calls per NumPy reference timing (default: 3)"
    )
    p.add_argument("--full-epoch", action="store_true", help="also time a real epoch per net")
    p.add_argument("--breakdown-net", choices=NETS, default="lenet",
                   help="network of the breakdown section (default: lenet)")  # fmt: skip
    p.add_argument("--memory-limit", type=int, default=EPOCH_SAMPLES,
                   help="training images of the memory section's real training run; 0 skips "
                        "it (default: all 60000)")  # fmt: skip
    p.add_argument("--memory-epochs", type=int, default=1,
                   help="epochs of that run (default: 1)")  # fmt: skip
    p.add_argument("--memory-steps", type=int, default=200,
                   help="synthetic lenet steps of the memory section; 0 skips them "
                        "(default: 200)")  # fmt: skip
    p.add_argument("--unset-blas-env", action="store_true",
                   help=f"also run the report with {' and '.join(BLAS_VARS)} unset, in a child "
                        "process, and show both side by side (if either is set)")  # fmt: skip
    p.add_argument("--markdown-out", type=Path, help="also write the report to this file")
    p.add_argument("--json-out", type=Path, help="also write the key figures as JSON")
    p.add_argument("--title", help=argparse.SUPPRESS)  # the child run of --unset-blas-env
    args = p.parse_args(argv)
    args.only = {name for item in args.only for name in item.split(",") if name}
    if unknown := args.only - set(choices):
        p.error(f"--only: unknown {', '.join(sorted(unknown))}; choose from {', '.join(choices)}")
    for name in ("rounds", "ref_rounds", "memory_epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("memory_limit", "memory_steps"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be 0 or more")
    args.layer_times, args.figures = {}, {}
    return args


def child_argv(args):
    """The command-line options of this run that a child report repeats (not its outputs)."""
    argv = ["--rounds", args.rounds, "--ref-rounds", args.ref_rounds,
            "--breakdown-net", args.breakdown_net, "--memory-limit", args.memory_limit,
            "--memory-epochs", args.memory_epochs, "--memory-steps", args.memory_steps]  # fmt: skip
    argv += ["--only", *sorted(args.only)] if args.only else []
    argv += ["--full-epoch"] if args.full_epoch else []
    return [str(a) for a in argv]


def main(argv=None):
    args = parse_args(argv)
    if importlib.util.find_spec("torch") is None:
        sys.exit("report.py compares fastconv with PyTorch: install torch first")
    only = args.only or set(SECTIONS)
    shapes = [s for s in SHAPES if "layers" in only or s.id in only]
    conv_shapes = [s for s in SHAPES if s.c_out is not None and {"roofline", s.id} & only]
    nets = [n for n in NETS if "networks" in only or n in only]
    parts = [machine(args)]
    print(parts[0], flush=True)
    todo = [(shapes, lambda: layers(shapes, args)),
            (conv_shapes, lambda: roofline(conv_shapes, args)),
            (nets, lambda: networks(nets, args))]  # fmt: skip
    todo += [(name in only, lambda f=f: f(args)) for name, f in
             (("breakdown", breakdown), ("startup", startup), ("memory", memory),
              ("threads", threads))]  # fmt: skip
    todo += [(args.unset_blas_env, lambda: unset_blas_env_run(args))]
    for selected, section in todo:
        if selected:
            parts.append(section())
            print(parts[-1], flush=True)
    if args.markdown_out:
        args.markdown_out.write_text("\n".join(parts))
        log(f"written to {args.markdown_out}")
    if args.json_out:
        args.json_out.write_text(json.dumps(args.figures, indent=1))


if __name__ == "__main__":
    main()
