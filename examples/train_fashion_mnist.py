"""Train a small CNN on Fashion-MNIST (or MNIST) with fastconv.

Needs fastconv installed (``pip install -e ".[examples]"`` in the repository; tqdm and
matplotlib are optional). Examples::

    python examples/train_fashion_mnist.py --model seed --epochs 1
    python examples/train_fashion_mnist.py --model lenet --epochs 5 --threads 2
    python examples/train_fashion_mnist.py --model bn --optimizer adam --schedule cosine
    python examples/train_fashion_mnist.py --model lenet --epochs 8 --resume   # continue a run
    python examples/train_fashion_mnist.py --model seed --limit 5000 --epochs 2  # quick check

After every epoch the output directory (``--out``, default ``runs/<model>``) holds
``history.json`` (per epoch train/test loss and accuracy, seconds, images per second, lr),
``curve.png`` (with matplotlib), ``checkpoint.npz`` (the model's state dict: load it with
``fastconv.load(fastconv.models.lenet(), path)``), and ``train_state.npz``, the snapshot
``--resume`` continues from (also written every ``--save-every`` steps and on Ctrl-C). A
non-empty ``--out`` is refused unless ``--resume`` or ``--overwrite`` says what to do with it.
The loop, the networks and the file formats are ``fastconv.training`` and ``fastconv.models``;
this script only reads the command line.

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
        help=f"kernel threads, at most {MAX_THREADS} (default: {MAX_THREADS}, numba's default)",
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
    thread_context = fastconv.threads(args.threads) if args.threads else contextlib.nullcontext()
    try:
        with thread_context:
            return run(args)
    except KeyboardInterrupt:
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


def run(args) -> int:
    wall_start = time.perf_counter()
    try:
        x_train, y_train, x_test, y_test = training.load_data(
            args.dataset, args.data_dir, args.limit, args.test_limit
        )
    except (FileNotFoundError, ValueError) as e:  # no data, or unreadable: no traceback
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE

    model = models.build(args.model, rng=args.seed)
    optimizer = training.make_optimizer(args.optimizer, model.parameters(), args.lr)
    scheduler = training.make_scheduler(args.schedule, optimizer, args.epochs)
    loader = DataLoader(x_train, y_train, args.batch_size, shuffle=True, seed=args.seed)
    history = []
    if args.resume:
        try:
            _check_resumable(args)
            history = training.restore(args.out, model, optimizer, loader, scheduler)
        except FileNotFoundError as e:
            print(f"error: --resume: {e}; start a new run without --resume", file=sys.stderr)
            return EXIT_USAGE
        except ValueError as e:
            print(f"error: --resume: {e}", file=sys.stderr)
            return EXIT_USAGE
        print(f"resumed {args.out} after epoch {len(history)}")
        if args.lr is not None:  # an explicit --lr wins over the saved rate
            for group in optimizer.param_groups:
                group["lr"] = args.lr
            print(f"learning rate set to --lr {args.lr:g}")

    n_params = sum(p.data.size for p in model.parameters())
    print(
        f"{args.model}: {n_params:,} parameters, {args.optimizer} lr "
        f"{optimizer.param_groups[0]['lr']:g}, {len(y_train):,} train / {len(y_test):,} test "
        f"images, batch {args.batch_size}, {fastconv.get_num_threads()} threads"
    )
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    try:
        history = training.train(
            model, optimizer, loader, DataLoader(x_test, y_test, 1000, shuffle=False),
            args.epochs, scheduler=scheduler, out_dir=args.out, history=history, config=config,
            title=f"{args.model} on {args.dataset}, {args.optimizer}, batch {args.batch_size}",
            progress=not args.no_progress, overwrite=args.overwrite, save_every=args.save_every,
        )  # fmt: skip
    except training.RunDirectoryError as e:  # an unusable --out, found before any training
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except training.NonFiniteLossError as e:
        print(f"error: {e}. Try a smaller --lr.", file=sys.stderr)
        return EXIT_NONFINITE

    wall = time.perf_counter() - wall_start
    best = max(history, key=lambda h: h["test_acc"])  # --epochs >= 1, so one epoch at least
    print(
        f"done: {len(history)} epochs, wall time {wall:.1f} s, "
        f"best test accuracy {best['test_acc']:.2%} (epoch {best['epoch']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
