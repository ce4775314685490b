"""Train a small CNN on Fashion-MNIST (or MNIST) with fastconv.

Needs fastconv installed (``pip install -e ".[examples]"`` in the repository; tqdm and
matplotlib are optional). Examples::

    python examples/train_fashion_mnist.py --model seed --epochs 1
    python examples/train_fashion_mnist.py --model lenet --epochs 5 --threads 2
    python examples/train_fashion_mnist.py --model bn --optimizer adam --schedule cosine
    python examples/train_fashion_mnist.py --model lenet --epochs 8 --resume   # continue a run
    python examples/train_fashion_mnist.py --model seed --limit 5000 --epochs 2  # quick check

After every epoch the output directory (``--out``, default ``runs/<model>``) holds:

- ``history.json``: per epoch train/test loss and accuracy, seconds, images per second, lr;
- ``curve.png``: loss and accuracy per epoch (needs matplotlib);
- ``checkpoint.npz``: the model's state dict (``fastconv.save``);
- ``train_state.json`` + ``optimizer.npz``: epoch, optimizer, scheduler and shuffling state,
  so that ``--resume`` continues where the run stopped. Nothing is pickled.

A NaN or infinite loss stops training with exit code 3; the checkpoint of the last good epoch
is left untouched.

The networks are the ones in the benchmarks (``seed``, ``lenet``, ``bn``) plus a small residual
network (``resnet``). Images are scaled to [0, 1] and normalised with the data set's mean/std.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import sys
import time
from pathlib import Path

import numpy as np

import fastconv
from fastconv import nn, optim
from fastconv.datasets import DataLoader, fashion_mnist, mnist

MODELS = ("seed", "lenet", "bn", "resnet")
OPTIMIZERS = ("sgd", "momentum", "adam")
SCHEDULES = ("none", "cosine", "step")
DEFAULT_OPTIMIZER = {"seed": "sgd", "lenet": "momentum", "bn": "momentum", "resnet": "momentum"}
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "adam": 1e-3}
# Per-pixel mean and std of the training images after scaling to [0, 1].
NORMALISATION = {"fashion-mnist": (0.2860, 0.3530), "mnist": (0.1307, 0.3081)}

EXIT_USAGE = 2  # no data, or nothing to resume
EXIT_NONFINITE = 3  # the loss became NaN or infinite


# ---------------------------------------------------------------------------------------------
# Models, optimisers, data
# ---------------------------------------------------------------------------------------------


def build_model(name: str, activation=nn.ReLU, seed: int | None = 0) -> nn.Module:
    """The network ``name`` for (N, 1, 28, 28) inputs and 10 classes.

    ``activation`` is the nonlinearity's class (``nn.ReLU``, ``nn.Sigmoid``, ...); ``seed``
    seeds the weight initialisation (and the dropout masks) so runs are reproducible.
    """
    rng = np.random.default_rng(seed)
    act = activation

    def conv(c_in, c_out, k=3, **kw):
        return nn.Conv2d(c_in, c_out, k, rng=rng, **kw)

    def linear(n_in, n_out):
        return nn.Linear(n_in, n_out, rng=rng)

    if name == "seed":  # (N,1,28,28) -> conv k5 s2 (N,16,12,12) -> pool (N,16,6,6) -> 576
        return nn.Sequential(
            conv(1, 16, 5, stride=2), act(), nn.MaxPool2d(2), nn.Flatten(),
            linear(576, 20), act(), linear(20, 10),
        )  # fmt: skip
    if name in ("lenet", "bn"):  # 28x28 -> pool 14x14 -> pool 7x7: 64 * 7 * 7 = 3136
        bn = name == "bn"
        return nn.Sequential(
            conv(1, 32, padding=1), *([nn.BatchNorm2d(32)] if bn else []), act(), nn.MaxPool2d(2),
            conv(32, 64, padding=1), *([nn.BatchNorm2d(64)] if bn else []), act(), nn.MaxPool2d(2),
            nn.Flatten(), *([nn.Dropout(0.25, rng=rng)] if bn else []),
            linear(3136, 128), act(), linear(128, 10),
        )  # fmt: skip
    if name == "resnet":
        # Stem at 28x28, pool to 14x14, one identity block (32 ch), one downsampling block
        # (32 -> 64 ch, 7x7) with a 1x1 stride-2 shortcut, global average pool, linear head.
        def block(c_in, c_out, stride):
            body = nn.Sequential(
                conv(c_in, c_out, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                act(), conv(c_out, c_out, padding=1, bias=False), nn.BatchNorm2d(c_out),
            )  # fmt: skip
            shortcut = None
            if stride != 1 or c_in != c_out:
                shortcut = nn.Sequential(
                    conv(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
                )
            return nn.Sequential(nn.Residual(body, shortcut), act())

        return nn.Sequential(
            conv(1, 32, padding=1, bias=False), nn.BatchNorm2d(32), act(), nn.MaxPool2d(2),
            block(32, 32, 1), block(32, 64, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear(64, 10),
        )  # fmt: skip
    raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")


def make_optimizer(name: str, params, lr: float):
    """``sgd`` (plain), ``momentum`` (SGD, momentum 0.9) or ``adam``."""
    params = list(params)
    if name == "sgd":
        return optim.SGD(params, lr=lr)
    if name == "momentum":
        return optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return optim.Adam(params, lr=lr)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def make_scheduler(name: str, optimizer, epochs: int):
    """An epoch-level learning-rate schedule, or None for a constant rate."""
    if name == "none":
        return None
    if name == "cosine":
        return optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if name == "step":  # divide by 10 after each third of the run
        return optim.lr_scheduler.StepLR(optimizer, step_size=max(epochs // 3, 1), gamma=0.1)
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {name!r}")


def normalise(images: np.ndarray, dataset: str = "fashion-mnist") -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28), scaled to [0, 1] then standardised."""
    mean, std = NORMALISATION[dataset]
    x = images.astype(np.float32)[:, None] / np.float32(255)
    return (x - np.float32(mean)) / np.float32(std)


def load_data(data_dir=None, dataset="fashion-mnist", limit=None, test_limit=None):
    """``(x_train, y_train, x_test, y_test)``, normalised; ``limit`` keeps the first N images."""
    loader = fashion_mnist if dataset == "fashion-mnist" else mnist
    train_images, y_train = loader("train", root=data_dir)
    test_images, y_test = loader("test", root=data_dir)
    train_images, y_train = train_images[:limit], y_train[:limit]
    test_images, y_test = test_images[:test_limit], y_test[:test_limit]
    return normalise(train_images, dataset), y_train, normalise(test_images, dataset), y_test


def get_lr(optimizer) -> float:
    """The learning rate of the optimiser's first parameter group."""
    return float(optimizer.param_groups[0]["lr"])


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class Progress:
    """A progress bar: tqdm if installed, else one line rewritten with ``\\r`` on stderr."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.count, self._last = 0, 0.0
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self._bar = tqdm(total=total, desc=desc, unit="batch", leave=True, file=sys.stderr)

    def update(self, **stats) -> None:
        self.count += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix(stats, refresh=False)
            self._bar.update(1)
            return
        now = time.perf_counter()
        if now - self._last > 0.25 or self.count == self.total:
            self._last = now
            text = " ".join(f"{k}={v}" for k, v in stats.items())
            print(f"\r{self.desc} {self.count}/{self.total} {text}", end="", file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            print(file=sys.stderr)


def train_epoch(model, loader, criterion, optimizer, desc="train", progress=True, step_hook=None):
    """One pass over ``loader``; returns ``(mean loss, accuracy, seconds, images/s)``.

    Raises ``NonFiniteLossError`` as soon as a batch's loss is NaN or infinite, before the
    optimiser step. ``step_hook(loss)``, if given, is called with each batch's loss.
    """
    model.train()
    bar = Progress(len(loader), desc, progress)
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    try:
        for step, (xb, yb) in enumerate(loader, 1):
            logits = model(xb)
            loss = criterion(logits, yb)
            if not math.isfinite(loss):
                raise NonFiniteLossError(f"the training loss became {loss} at step {step}")
            optimizer.zero_grad()
            model.backward(criterion.backward())
            optimizer.step()

            n = len(yb)
            total_loss += loss * n
            correct += int((logits.argmax(axis=1) == yb).sum())
            seen += n
            if step_hook is not None:
                step_hook(loss)
            elapsed = time.perf_counter() - start
            bar.update(
                loss=f"{total_loss / seen:.4f}",
                acc=f"{correct / seen:.3f}",
                **{"img/s": f"{seen / max(elapsed, 1e-9):.0f}"},
            )
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    return total_loss / max(seen, 1), correct / max(seen, 1), seconds, seen / max(seconds, 1e-9)


def evaluate(model, x, y, batch_size=1000):
    """``(mean loss, accuracy)`` of ``model`` in eval mode on ``(x, y)``, in batches."""
    was_training = model.training
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct = 0.0, 0
    for xb, yb in DataLoader(x, y, batch_size, shuffle=False):
        logits = model(xb)
        total_loss += criterion(logits, yb)
        correct += int((logits.argmax(axis=1) == yb).sum())
    model.train(was_training)
    return total_loss / max(len(y), 1), correct / max(len(y), 1)


def is_finite_model(model) -> bool:
    """True if every parameter and buffer in the state dict is finite."""
    return all(
        np.isfinite(v).all()
        for v in model.state_dict().values()
        if np.issubdtype(np.asarray(v).dtype, np.floating)
    )


# ---------------------------------------------------------------------------------------------
# Saving and resuming (JSON and .npz only, written atomically)
# ---------------------------------------------------------------------------------------------


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, data) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")

    _atomic_write(path, write)


def save_training_state(out: Path, model, optimizer, loader, epoch: int, args, base_lr) -> None:
    """Write ``checkpoint.npz``, ``optimizer.npz`` and (last) ``train_state.json``.

    ``train_state.json`` is written last and names the epoch, so it only ever describes a
    checkpoint that is already complete on disk.
    """
    fastconv.save(model, out / "checkpoint.npz")
    state = {
        "epoch": epoch,
        "model": args.model,
        "dataset": args.dataset,
        "optimizer": args.optimizer,
        "schedule": args.schedule,
        "epochs": args.epochs,
        "base_lr": base_lr,
        "lr": get_lr(optimizer),
        "loader_rng": loader.rng.bit_generator.state,
        "dropout_rngs": [m.rng.bit_generator.state for m in _dropouts(model)],
    }
    # Optimizer.state_dict() is flat: {"param_groups.0.lr": 0.05, "state.3.momentum_buffer":
    # array, ...}, numbers and arrays only, so it goes straight into an .npz.
    _atomic_write(out / "optimizer.npz", lambda tmp: _savez(tmp, optimizer.state_dict()))
    write_json(out / "train_state.json", state)


def _savez(path, arrays) -> None:
    """``np.savez`` to ``path`` exactly (no ``.npz`` appended); arrays of numbers only."""
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _dropouts(model):
    return [m for m in model.modules() if isinstance(m, nn.Dropout)]


def read_training_state(out: Path, args) -> dict:
    """Read ``train_state.json`` and check it belongs to the same kind of run as ``args``."""
    state_path = out / "train_state.json"
    if not state_path.is_file():
        raise FileNotFoundError(f"--resume: no {state_path}, so nothing to resume from")
    state = json.loads(state_path.read_text())
    for key in ("model", "dataset", "optimizer", "schedule"):
        if state[key] != getattr(args, key):
            raise ValueError(
                f"--resume: {out} was trained with --{key} {state[key]}, not {getattr(args, key)}"
            )
    return state


def load_training_state(out: Path, state: dict, model, optimizer, loader) -> None:
    """Restore the model, optimiser and shuffling state that ``save_training_state`` wrote."""
    fastconv.load(model, out / "checkpoint.npz")
    with np.load(out / "optimizer.npz", allow_pickle=False) as npz:
        optimizer.load_state_dict({k: npz[k] for k in npz.files})
    loader.rng.bit_generator.state = state["loader_rng"]
    for m, rng_state in zip(_dropouts(model), state["dropout_rngs"], strict=True):
        m.rng.bit_generator.state = rng_state


def plot_history(history, path: Path, title: str = "") -> bool:
    """Save loss and accuracy curves per epoch; return False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-o"), ("test", "--s")):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], style, label=split)
        ax_acc.plot(epochs, [100 * h[f"{split}_acc"] for h in history], style, label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train a CNN on Fashion-MNIST with fastconv.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", choices=MODELS, default="lenet")
    p.add_argument("--epochs", type=int, default=2, help="total epochs (including resumed ones)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--optimizer", choices=OPTIMIZERS, default=None,
        help="default: sgd for seed, momentum (SGD, 0.9) for the others",
    )  # fmt: skip
    p.add_argument(
        "--lr", type=float, default=None,
        help=f"learning rate; default per optimizer: {DEFAULT_LR}",
    )  # fmt: skip
    p.add_argument("--schedule", choices=SCHEDULES, default="none", help="lr schedule per epoch")
    p.add_argument("--threads", type=int, default=None, help="default: numba's default")
    p.add_argument("--dataset", choices=tuple(NORMALISATION), default="fashion-mnist")
    p.add_argument("--data-dir", default=None, help="directory with the IDX files")
    p.add_argument("--out", type=Path, default=None, help="default: runs/<model>")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    p.add_argument("--test-limit", type=int, default=None, help="test on the first N only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.optimizer is None:
        args.optimizer = DEFAULT_OPTIMIZER[args.model]
    args.lr_given = args.lr is not None
    if args.lr is None:
        args.lr = DEFAULT_LR[args.optimizer]
    if args.out is None:
        args.out = Path("runs") / args.model
    for name in ("epochs", "batch_size", "threads", "limit", "test_limit"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "epochs" else 1):
            p.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if not args.lr > 0:
        p.error(f"--lr must be positive, got {args.lr}")
    return args


def main(argv=None) -> int:
    """Run the training; return the exit code: 0, 2 (no data / nothing to resume), 3 (NaN)."""
    args = parse_args(argv)
    thread_context = fastconv.threads(args.threads) if args.threads else contextlib.nullcontext()
    with thread_context:
        return _train(args)


def _train(args) -> int:
    wall_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    try:
        x_train, y_train, x_test, y_test = load_data(
            args.data_dir, args.dataset, args.limit, args.test_limit
        )
        saved = read_training_state(out, args) if args.resume else None
    except (FileNotFoundError, ValueError) as e:  # no data, or nothing to resume: no traceback
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    model = build_model(args.model, seed=args.seed)
    criterion = nn.CrossEntropyLoss()
    loader = DataLoader(x_train, y_train, args.batch_size, shuffle=True, seed=args.seed)

    # On resume the optimiser and schedule are rebuilt from the run's original learning rate
    # and the schedule is replayed up to the last finished epoch; only then is the saved state
    # loaded (its lr is the replayed one). An explicit --lr then overrides the current rate.
    base_lr = saved["base_lr"] if saved else args.lr
    optimizer = make_optimizer(args.optimizer, model.parameters(), base_lr)
    scheduler = make_scheduler(args.schedule, optimizer, args.epochs)
    history, done = [], 0
    if saved:
        done = saved["epoch"]
        for _ in range(done if scheduler is not None else 0):
            scheduler.step()
        load_training_state(out, saved, model, optimizer, loader)
        if scheduler is not None:  # the replayed schedule wins over the saved rate
            set_lr(optimizer, scheduler.get_last_lr()[0])
            if saved["epochs"] != args.epochs:
                print(
                    f"note: --epochs is {args.epochs}, the run was started with "
                    f"{saved['epochs']}: the {args.schedule} schedule follows {args.epochs}"
                )
        history_path = out / "history.json"
        if history_path.is_file():
            history = json.loads(history_path.read_text())["epochs"][:done]
        print(f"resumed {out} after epoch {done}")
        if args.lr_given:
            set_lr(optimizer, args.lr)
            print(f"learning rate set to --lr {args.lr:g}")

    n_params = sum(p.data.size for p in model.parameters())
    print(
        f"{args.model}: {n_params:,} parameters, {args.optimizer} lr {get_lr(optimizer):g}, "
        f"{len(y_train):,} train / {len(y_test):,} test images, batch {args.batch_size}, "
        f"{fastconv.get_num_threads()} threads"
    )

    title = f"{args.model} on {args.dataset}, {args.optimizer}, batch {args.batch_size}"
    for epoch in range(done + 1, args.epochs + 1):
        lr = get_lr(optimizer)
        try:
            train_loss, train_acc, seconds, speed = train_epoch(
                model, loader, criterion, optimizer,
                desc=f"epoch {epoch}/{args.epochs}", progress=not args.no_progress,
            )  # fmt: skip
            if not is_finite_model(model):
                raise NonFiniteLossError("the weights became NaN or infinite")
        except NonFiniteLossError as e:
            kept = (
                f"the checkpoint of epoch {done} in {out} is kept"
                if done
                else "no checkpoint was written"
            )
            print(
                f"error: {e} in epoch {epoch} (lr {lr:g}); training stopped, {kept}. "
                f"Try a smaller --lr.",
                file=sys.stderr,
            )
            return EXIT_NONFINITE
        test_loss, test_acc = evaluate(model, x_test, y_test)
        if scheduler is not None:
            scheduler.step()
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "seconds": seconds,
                "images_per_s": speed,
                "lr": lr,
            }
        )
        print(
            f"epoch {epoch}: train loss {train_loss:.4f} acc {train_acc:.2%} | "
            f"test loss {test_loss:.4f} acc {test_acc:.2%} | {seconds:.1f} s, {speed:.0f} img/s"
        )
        save_training_state(out, model, optimizer, loader, epoch, args, base_lr)
        done = epoch
        run = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        write_json(out / "history.json", {"args": run, "epochs": history})
        if not plot_history(history, out / "curve.png", title) and epoch == 1:
            print("note: matplotlib is not installed; curve.png is not written")

    wall = time.perf_counter() - wall_start
    if history:
        best = max(history, key=lambda h: h["test_acc"])
        print(
            f"done: {len(history)} epochs, wall time {wall:.1f} s, "
            f"best test accuracy {best['test_acc']:.2%} (epoch {best['epoch']})"
        )
    else:
        print(f"done: 0 epochs, wall time {wall:.1f} s, no epoch to run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
