"""Train a small CNN on Fashion-MNIST (or MNIST) with fastconv.

Needs fastconv installed (``pip install -e ".[examples]"`` in the repository; tqdm and
matplotlib are optional). Examples::

    python examples/train_fashion_mnist.py --model seed --epochs 1
    python examples/train_fashion_mnist.py --model lenet --epochs 5 --threads 2
    python examples/train_fashion_mnist.py --model bn --optimizer adam --schedule cosine
    python examples/train_fashion_mnist.py --model lenet --epochs 8 --resume   # continue a run
    python examples/train_fashion_mnist.py --model seed --limit 5000 --epochs 2  # quick check
    mpiexec -n 2 python examples/train_fashion_mnist.py --distributed --model lenet --epochs 1

After every epoch the output directory (``--out``, default ``runs/<model>``) holds
``history.json`` (per epoch train/test loss and accuracy, seconds, images per second, lr),
``curve.png`` (with matplotlib), ``checkpoint.npz`` (the model's state dict: load it with
``fastconv.load(fastconv.models.lenet(), path)``), and ``train_state.npz``, the snapshot
``--resume`` continues from (also written every ``--save-every`` steps and on Ctrl-C). A
non-empty ``--out`` is refused unless ``--resume`` or ``--overwrite`` says what to do with it.
The loop, the networks and the file formats are ``fastconv.training`` and ``fastconv.models``;
this script only reads the command line.

``--distributed`` (under ``mpiexec -n N``; needs ``pip install 'fastconv[mpi]'``) trains
data-parallel with ``fastconv.distributed``: ``--batch-size`` is the global batch, split over
the ranks; each rank uses its share of the machine's cores unless ``--threads`` says otherwise;
rank 0 alone prints and writes ``--out``, and ``--resume`` has rank 0 read the run and send it
to the others. A rank that fails ends the whole job (MPI_Abort) rather than leave the others
waiting.

Exit codes: 0 done, 2 bad option, missing data, an unusable --out or nothing to resume, 3 the
loss became NaN or infinite (the checkpoint of the last good epoch is kept), 130 interrupted
(Ctrl-C: the step reached is saved; continue with --resume).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numba

import fastconv
from fastconv import models, training
from fastconv.datasets import DataLoader

EXIT_USAGE = 2  # bad option, no data, an unusable --out, or nothing to resume
EXIT_NONFINITE = 3  # the loss became NaN or infinite
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT

DEFAULT_OPTIMIZER = {name: "momentum" for name in models.NAMES} | {"seed": "sgd"}
# A resumed run must be the same kind of run; the other options may change between sessions.
SAME_ON_RESUME = ("model", "dataset", "optimizer", "schedule")
MAX_THREADS = numba.config.NUMBA_NUM_THREADS  # numba's pool size, fixed at start-up


DEFAULT = " (default: %(default)s)"  # argparse fills in the option's default


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a CNN on Fashion-MNIST with fastconv.")
    p.add_argument(
        "--model", choices=models.NAMES, default="lenet", help="fastconv.models" + DEFAULT
    )
    p.add_argument("--epochs", type=int, default=2, help="total, with resumed ones" + DEFAULT)
    p.add_argument("--batch-size", type=int, default=64, help="training batch size" + DEFAULT)
    p.add_argument(
        "--optimizer", choices=training.OPTIMIZERS,
        help="momentum is SGD with momentum 0.9 (default: sgd for --model seed, momentum for "
        "the others)",
    )  # fmt: skip
    p.add_argument(
        "--lr", type=float,
        help="learning rate (default: "
        + ", ".join(f"{lr:g} for {name}" for name, lr in training.DEFAULT_LR.items())
        + "; on --resume, the run's own rate)",
    )  # fmt: skip
    p.add_argument(
        "--schedule", choices=training.SCHEDULES, default="none", help="lr per epoch" + DEFAULT
    )
    p.add_argument(
        "--threads", type=int,
        help=f"kernel threads, at most {MAX_THREADS} (default: {MAX_THREADS}, numba's default; "
        "with --distributed, each rank's share of the cores)",
    )  # fmt: skip
    p.add_argument(
        "--dataset",
        choices=tuple(training.NORMALISATION),
        default="fashion-mnist",
        help="data set" + DEFAULT,
    )
    p.add_argument(
        "--data-dir",
        help="directory with the IDX files (default: $FASTCONV_DATA, the user cache, "
        "/usr/share/datasets, then a download)",
    )
    p.add_argument("--out", type=Path, help="run directory (default: runs/<model>)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument(
        "--overwrite", action="store_true", help="start over in a non-empty --out (deletes its run)"
    )
    p.add_argument(
        "--save-every", type=int, help="also save every N steps within an epoch (default: never)"
    )
    p.add_argument("--seed", type=int, default=0, help="weights, shuffling and dropout" + DEFAULT)
    p.add_argument("--limit", type=int, help="train on the first N images (default: all)")
    p.add_argument("--test-limit", type=int, help="test on the first N images (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--distributed", action="store_true",
        help="data-parallel over MPI, under mpiexec -n N; --batch-size is the global batch "
        "(default: one process)",
    )  # fmt: skip
    args = p.parse_args(argv)

    if args.resume and args.overwrite:
        p.error("--resume and --overwrite exclude each other: continue the run or start over")
    for name in ("epochs", "batch_size", "threads", "limit", "test_limit", "save_every"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.lr is not None and not args.lr > 0:
        p.error(f"--lr must be positive, got {args.lr}")
    if args.threads is not None and args.threads > MAX_THREADS:
        p.error(f"--threads must be at most {MAX_THREADS}, got {args.threads}")
    args.optimizer = args.optimizer or DEFAULT_OPTIMIZER[args.model]
    args.out = args.out or Path("runs") / args.model
    return args


def main(argv=None) -> int:
    """Run the training; return the exit code (see the module doc)."""
    args = parse_args(argv)
    group = None
    if args.distributed:
        try:
            import fastconv.distributed as dist
        except ImportError as e:
            print(f"error: --distributed: {e}", file=sys.stderr)
            return EXIT_USAGE
        # Threads: --threads, else NUMBA_NUM_THREADS, else this rank's share of the cores.
        group = dist.init_process_group(threads=args.threads)
    threaded = args.threads and group is None
    thread_context = fastconv.threads(args.threads) if threaded else contextlib.nullcontext()
    try:
        with thread_context:
            return run(args, group)
    except KeyboardInterrupt as e:
        if (
            group is not None
            and group.world_size > 1
            and not isinstance(e, training.TrainingInterrupted)
        ):
            # Not a stop the ranks agreed on (a second Ctrl-C, or one outside the training
            # steps): the others may be waiting in a collective, so end them all.
            group.abort(EXIT_INTERRUPTED)
        if group is not None and group.rank != 0:
            return EXIT_INTERRUPTED
        # The loop saved the step it reached (TrainingInterrupted); a second Ctrl-C, or one
        # outside the loop, leaves the last snapshot: say which, in one line.
        try:
            state = training.read_state(args.out)
            epoch, step = state["epoch"], state["step"]
            point = f"step {step} of epoch {epoch + 1}" if step else f"epoch {epoch}"
            saved = f"{point} is saved in {args.out}; continue with --resume"
        except (OSError, ValueError):
            saved = "no epoch was finished, so nothing was saved"
        print(f"\ninterrupted: {saved}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _check_resumable(args) -> None:
    """Raise ``ValueError`` unless the run saved in ``--out`` is the same kind of run."""
    saved = training.read_state(args.out)["config"] or {}
    for key in SAME_ON_RESUME:
        if saved.get(key) != getattr(args, key):
            raise ValueError(
                f"{args.out} was trained with --{key} {saved.get(key)}, not {getattr(args, key)}"
            )
    if args.schedule != "none" and saved.get("epochs") != args.epochs:
        print(
            f"note: --epochs is {args.epochs}, the run was started with {saved.get('epochs')}: "
            f"the {args.schedule} schedule follows {args.epochs}"
        )


def _agree(group, error):
    """The first rank's error message (or None) on every rank, so that all of them stop or none
    does (one rank stopping alone would leave the others waiting in a collective)."""
    if group is None:
        return error
    return next((e for e in group.comm.allgather(error) if e is not None), None)


def _resume(args, model, optimizer, loader, scheduler, say):
    """``(history, error message)`` of --resume; rank 0 alone calls it (train sends the state
    it restores to the other ranks)."""
    try:
        _check_resumable(args)
        history = training.restore(args.out, model, optimizer, loader, scheduler)
    except FileNotFoundError as e:
        return [], f"error: --resume: {e}; start a new run without --resume"
    except ValueError as e:
        return [], f"error: --resume: {e}"
    say(f"resumed {args.out} after epoch {len(history)}")
    if args.lr is not None:  # an explicit --lr wins over the saved rate
        for param_group in optimizer.param_groups:
            param_group["lr"] = args.lr
        say(f"learning rate set to --lr {args.lr:g}")
    return history, None


def run(args, group=None) -> int:
    wall_start = time.perf_counter()
    root = group is None or group.rank == 0
    say = print if root else (lambda *a, **k: None)  # rank 0 alone speaks
    shard = {} if group is None else {"rank": group.rank, "world_size": group.world_size}
    try:
        x_train, y_train, x_test, y_test = training.load_data(
            args.dataset, args.data_dir, args.limit, args.test_limit
        )
        error = None
    except (FileNotFoundError, ValueError) as e:  # no data, or unreadable: no traceback
        error = f"error: {e}"
    error = _agree(group, error)
    if error is None and group is not None and args.batch_size < group.world_size:
        error = f"error: --batch-size {args.batch_size} is less than the {group.world_size} ranks"
    if error is not None:
        say(error, file=sys.stderr)
        return EXIT_USAGE

    model = models.build(args.model, rng=args.seed)
    optimizer = training.make_optimizer(args.optimizer, model.parameters(), args.lr)
    scheduler = training.make_scheduler(args.schedule, optimizer, args.epochs)
    loader = DataLoader(x_train, y_train, args.batch_size, shuffle=True, seed=args.seed, **shard)
    history = []
    if args.resume:
        error = None
        if root:
            history, error = _resume(args, model, optimizer, loader, scheduler, say)
        if group is not None:
            error = group.broadcast_object(error)
        if error is not None:
            say(error, file=sys.stderr)
            return EXIT_USAGE

    n_params = sum(p.data.size for p in model.parameters())
    threads = f"{fastconv.get_num_threads()} threads"
    if group is not None:
        threads = f"{group.world_size} ranks x {threads} each"
    say(
        f"{args.model}: {n_params:,} parameters, {args.optimizer} lr "
        f"{optimizer.param_groups[0]['lr']:g}, {len(y_train):,} train / {len(y_test):,} test "
        f"images, batch {args.batch_size}, {threads}"
    )
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    try:
        history = training.train(
            model, optimizer, loader, DataLoader(x_test, y_test, 1000, shuffle=False, **shard),
            args.epochs, scheduler=scheduler, out_dir=args.out, history=history, config=config,
            title=f"{args.model} on {args.dataset}, {args.optimizer}, batch {args.batch_size}",
            progress=not args.no_progress, overwrite=args.overwrite, save_every=args.save_every,
            distributed=group,
        )  # fmt: skip
    except training.RunDirectoryError as e:  # an unusable --out, found before any training
        say(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except training.NonFiniteLossError as e:
        say(f"error: {e}. Try a smaller --lr.", file=sys.stderr)
        return EXIT_NONFINITE

    wall = time.perf_counter() - wall_start
    best = max(history, key=lambda h: h["test_acc"])  # --epochs >= 1, so one epoch at least
    say(
        f"done: {len(history)} epochs, wall time {wall:.1f} s, "
        f"best test accuracy {best['test_acc']:.2%} (epoch {best['epoch']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
