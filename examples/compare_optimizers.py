"""Compare SGD, SGD with momentum and Adam, with ReLU and with Sigmoid, on Fashion-MNIST.

Every run trains the same small network (the benchmarks' ``seed`` net by default) from the same
initial weights on the same subset and batch order, so only the optimiser and the activation
differ. The figure (``--out``, default ``runs/compare_optimizers.png``) shows the training loss
per step on the left and the test accuracy per epoch on the right; the numbers go to a JSON
file beside it.

Example::

    python examples/compare_optimizers.py --train-size 10000 --epochs 3 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np

import fastconv
from fastconv import models, nn
from fastconv.datasets import DataLoader
from fastconv.training import (
    DEFAULT_LR,
    NORMALISATION,
    OPTIMIZERS,
    NonFiniteLossError,
    evaluate,
    load_data,
    make_optimizer,
    train_epoch,
    write_json,
)

EXIT_USAGE = 2  # bad option or no data
ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}
LABELS = {"sgd": "SGD", "momentum": "SGD + momentum 0.9", "adam": "Adam"}


def run(model_name, activation, optimizer_name, lr, data, args):
    """Train one configuration; return its per-step losses and per-epoch test accuracies."""
    x_train, y_train, x_test, y_test = data
    model = models.build(model_name, ACTIVATIONS[activation], rng=args.seed)
    optimizer = make_optimizer(optimizer_name, model.parameters(), lr)
    criterion = nn.CrossEntropyLoss()
    loader = DataLoader(x_train, y_train, args.batch_size, shuffle=True, seed=args.seed)
    test_loader = DataLoader(x_test, y_test, 1000, shuffle=False)
    losses, test_acc, seconds = [], [], 0.0
    status = "ok"
    for epoch in range(1, args.epochs + 1):
        desc = f"{activation}/{optimizer_name} epoch {epoch}/{args.epochs}"
        try:
            _, _, secs, _ = train_epoch(
                model, loader, criterion, optimizer, desc=desc,
                progress=not args.no_progress, step_hook=losses.append,
            )  # fmt: skip
        except NonFiniteLossError as e:
            status = f"stopped: {e}"
            print(f"{desc}: {status}", file=sys.stderr)
            break
        seconds += secs
        test_acc.append(evaluate(model, test_loader)[1])
    return {
        "activation": activation,
        "optimizer": optimizer_name,
        "lr": lr,
        "step_loss": losses,
        "test_acc": test_acc,
        "train_seconds": seconds,
        "status": status,
    }


def smooth(values, window):
    """Moving average over ``window`` steps (shorter at the start)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return values
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (cumsum[idx] - cumsum[lo]) / (idx - lo)


def plot(results, path: Path, steps_per_epoch: int, title: str) -> bool:
    """Loss per step (left) and test accuracy per epoch (right); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 5.5))
    colours = dict(zip(OPTIMIZERS, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    styles = {"relu": "-", "sigmoid": "--"}
    window = max(steps_per_epoch // 10, 1)
    for r in results:
        label = f"{LABELS[r['optimizer']]} (lr {r['lr']:g}), {r['activation']}"
        kw = {"color": colours[r["optimizer"]], "linestyle": styles[r["activation"]]}
        steps = np.arange(1, len(r["step_loss"]) + 1) / steps_per_epoch
        ax_loss.plot(steps, smooth(r["step_loss"], window), label=label, **kw)
        epochs = np.arange(1, len(r["test_acc"]) + 1)
        ax_acc.plot(epochs, 100 * np.asarray(r["test_acc"]), marker="o", label=label, **kw)
    ax_loss.set(
        xlabel="epoch", ylabel=f"training loss (mean of {window} steps)", yscale="log",
        title="training loss",
    )  # fmt: skip
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    ax_acc.xaxis.get_major_locator().set_params(integer=True)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    handles, labels = ax_acc.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle(title)
    rows = -(-len(labels) // 3)
    fig.tight_layout(rect=(0, 0.06 * rows + 0.02, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


DEFAULT = " (default: %(default)s)"  # argparse fills in the option's default


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", choices=models.NAMES, default="seed", help="fastconv.models" + DEFAULT
    )
    p.add_argument(
        "--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS),
        help="(default: all)",
    )  # fmt: skip
    p.add_argument(
        "--activations", nargs="+", choices=tuple(ACTIVATIONS), default=list(ACTIVATIONS),
        help="(default: all)",
    )  # fmt: skip
    p.add_argument("--epochs", type=int, default=3, help="epochs per run" + DEFAULT)
    p.add_argument("--batch-size", type=int, default=64, help="training batch size" + DEFAULT)
    p.add_argument(
        "--train-size", type=int, default=10000, help="first N training images" + DEFAULT
    )
    p.add_argument("--test-size", type=int, default=10000, help="first N test images" + DEFAULT)
    p.add_argument(
        "--lr", nargs="+", default=[], metavar="OPT=LR",
        help="override a learning rate, e.g. adam=3e-3 (default: "
        + ", ".join(f"{name}={lr:g}" for name, lr in DEFAULT_LR.items()) + ")",
    )  # fmt: skip
    p.add_argument("--dataset", choices=(*NORMALISATION,), default="fashion-mnist", help=DEFAULT)
    p.add_argument("--data-dir", help="IDX files (default: the search of fastconv.datasets)")
    p.add_argument("--threads", type=int, help="kernel threads (default: numba's, all cores)")
    p.add_argument("--seed", type=int, default=0, help="weights, shuffling and dropout" + DEFAULT)
    p.add_argument(
        "--out", type=Path, default=Path("runs/compare_optimizers.png"),
        help="figure; the numbers go to the same name with .json" + DEFAULT,
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    args.lrs = dict(DEFAULT_LR)
    for item in args.lr:
        name, _, value = item.partition("=")
        if name not in OPTIMIZERS or not value:
            p.error(f"--lr takes OPT=LR with OPT in {OPTIMIZERS}, got {item!r}")
        args.lrs[name] = float(value)
    for name in ("epochs", "batch_size", "train_size", "test_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        data = load_data(args.dataset, args.data_dir, args.train_size, args.test_size)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    threads = fastconv.threads(args.threads) if args.threads else contextlib.nullcontext()
    results = []
    start = time.perf_counter()
    with threads:
        for activation in args.activations:
            for optimizer_name in args.optimizers:
                lr = args.lrs[optimizer_name]
                r = run(args.model, activation, optimizer_name, lr, data, args)
                results.append(r)
                accs = ", ".join(f"{a:.2%}" for a in r["test_acc"])
                print(
                    f"{activation:8s} {LABELS[optimizer_name]:20s} lr {lr:<6g} "
                    f"test acc per epoch: {accs}  ({r['train_seconds']:.1f} s)"
                )
    steps_per_epoch = -(-len(data[1]) // args.batch_size)
    title = (
        f"{args.model} net on {len(data[1]):,} {args.dataset} images, "
        f"batch {args.batch_size}, {args.epochs} epochs"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path = args.out.with_suffix(".json")
    write_json(json_path, {"title": title, "results": results})
    if plot(results, args.out, steps_per_epoch, title):
        print(f"wrote {args.out} and {json_path}")
    else:
        print(f"matplotlib is not installed: wrote {json_path} only")
    print(f"done: {len(results)} runs in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
