"""Train and evaluate a classifier, with a checkpoint after every epoch and an exact resume.

::

    from fastconv import models, training
    from fastconv.datasets import DataLoader

    x_train, y_train, x_test, y_test = training.load_data("fashion-mnist")
    model = models.lenet(rng=0)
    optimizer = training.make_optimizer("momentum", model.parameters())
    train_loader = DataLoader(x_train, y_train, 64, seed=0)
    test_loader = DataLoader(x_test, y_test, 1000, shuffle=False)
    history = training.train(model, optimizer, train_loader, test_loader, epochs=3,
                             out_dir="runs/lenet")
    # later, in a new process with the objects built the same way:
    history = training.train(model, optimizer, train_loader, test_loader, epochs=5,
                             out_dir="runs/lenet", resume=True)

With ``out_dir`` the run directory holds, after every epoch:

- ``checkpoint.npz``: the model's state dict (``fastconv.load(model, path)`` reads it back);
- ``optimizer.npz``: the optimizer's state dict (learning rate, momentum or Adam moments);
- ``train_state.json``, written after those two: the epoch, the history so far, the
  scheduler's base rates and the random streams (data-loader shuffling, dropout masks), so a
  resumed run continues exactly as if it had not stopped;
- ``history.json``: ``{"config": ..., "epochs": [one dict per epoch]}``, for people and plots;
- ``curve.png``: loss and accuracy per epoch (needs matplotlib; skipped without it).

Every file is written atomically (``fastconv.save``'s writer) and nothing is pickled. A NaN or
infinite loss stops training with :class:`NonFiniteLossError` before the optimizer step, so the
files of the last good epoch are left as they were.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from fastconv import nn, optim
from fastconv.datasets import fashion_mnist, mnist
from fastconv.serialization import _write_atomically, load, save

__all__ = [
    "DEFAULT_LR",
    "NORMALISATION",
    "OPTIMIZERS",
    "SCHEDULES",
    "NonFiniteLossError",
    "Progress",
    "evaluate",
    "load_data",
    "make_optimizer",
    "make_scheduler",
    "normalise",
    "plot_history",
    "read_state",
    "restore",
    "train",
    "train_epoch",
    "train_step",
    "write_json",
]

OPTIMIZERS = ("sgd", "momentum", "adam")
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "adam": 1e-3}
SCHEDULES = ("none", "cosine", "step")
# Per-pixel mean and std of the training images after scaling to [0, 1].
NORMALISATION = {"fashion-mnist": (0.2860, 0.3530), "mnist": (0.1307, 0.3081)}

_STATE = "train_state.json"  # written last: it names the epoch the other files hold

# ---------------------------------------------------------------------------------------------
# Optimizers, schedules and data by name
# ---------------------------------------------------------------------------------------------


def make_optimizer(name, params, lr=None):
    """``sgd`` (plain), ``momentum`` (SGD, momentum 0.9) or ``adam``; ``lr`` defaults to
    ``DEFAULT_LR[name]``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    lr = DEFAULT_LR[name] if lr is None else lr
    if name == "adam":
        return optim.Adam(params, lr=lr)
    return optim.SGD(params, lr=lr, momentum=0.9 if name == "momentum" else 0)


def make_scheduler(name, optimizer, epochs):
    """An epoch-level schedule over ``epochs`` epochs, or None for ``"none"`` (constant rate).

    ``cosine`` anneals to 0 over the run; ``step`` divides the rate by 10 after each third.
    """
    if name == "none":
        return None
    if name == "cosine":
        return optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if name == "step":
        return optim.lr_scheduler.StepLR(optimizer, step_size=max(epochs // 3, 1), gamma=0.1)
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {name!r}")


def normalise(images, dataset="fashion-mnist"):
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28), scaled to [0, 1] then standardised with
    the data set's ``NORMALISATION`` mean and std."""
    mean, std = NORMALISATION[dataset]
    # In place, in the same order as ``(x / 255 - mean) / std``: the same values without two
    # temporaries of the whole data set (188 MB each for FashionMNIST's training split).
    x = images.astype(np.float32)[:, None]
    x /= np.float32(255)
    x -= np.float32(mean)
    x /= np.float32(std)
    return x


def load_data(dataset="fashion-mnist", root=None, limit=None, test_limit=None):
    """``(x_train, y_train, x_test, y_test)`` of ``"fashion-mnist"`` or ``"mnist"``, normalised.

    ``root`` is passed to :func:`fastconv.datasets.fashion_mnist`; ``limit`` and ``test_limit``
    keep the first N images of each split (None: all).
    """
    if dataset not in NORMALISATION:
        raise ValueError(f"dataset must be one of {', '.join(NORMALISATION)}, got {dataset!r}")
    loader = fashion_mnist if dataset == "fashion-mnist" else mnist
    train_images, y_train = loader("train", root=root)
    test_images, y_test = loader("test", root=root)
    train_images, y_train = train_images[:limit], y_train[:limit]
    test_images, y_test = test_images[:test_limit], y_test[:test_limit]
    return normalise(train_images, dataset), y_train, normalise(test_images, dataset), y_test


# ---------------------------------------------------------------------------------------------
# One step, one epoch, evaluation
# ---------------------------------------------------------------------------------------------


class NonFiniteLossError(RuntimeError):
    """The training loss (or a weight) became NaN or infinite."""


class Progress:
    """A progress bar: tqdm if installed, else one line rewritten with ``\\r`` on stderr."""

    def __init__(self, total, desc, enabled=True):
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

    def update(self, **stats):
        """Count one step; ``stats`` (name -> text) are shown after the count."""
        self.count += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix(stats, refresh=False)
            self._bar.update(1)
            return
        now = time.perf_counter()
        if now - self._last > 0.25 or self.count == self.total:  # at most 4 redraws a second
            self._last = now
            text = " ".join(f"{k}={v}" for k, v in stats.items())
            print(f"\r{self.desc} {self.count}/{self.total} {text}", end="", file=sys.stderr)

    def close(self):
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            print(file=sys.stderr)


def train_step(model, criterion, optimizer, x, y):
    """Forward, loss, backward and one optimizer step on a batch; returns ``(loss, logits)``.

    Raises :class:`NonFiniteLossError` if the loss is NaN or infinite, before any gradient is
    computed, so the weights are left as they were.
    """
    logits = model(x)
    loss = criterion(logits, y)
    if not math.isfinite(loss):
        raise NonFiniteLossError(f"the training loss became {loss}")
    optimizer.zero_grad()
    model.backward(criterion.backward())
    optimizer.step()
    return loss, logits


def train_epoch(model, loader, criterion, optimizer, desc="train", progress=True, step_hook=None):
    """One pass over ``loader`` in training mode: ``(mean loss, accuracy, seconds, images/s)``.

    ``step_hook(loss)``, if given, is called with each batch's loss; ``progress`` shows a bar
    labelled ``desc``. Raises :class:`NonFiniteLossError` naming the step.
    """
    model.train()
    bar = Progress(len(loader), desc, progress)
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    try:
        for step, (xb, yb) in enumerate(loader, 1):
            try:
                loss, logits = train_step(model, criterion, optimizer, xb, yb)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"{e} at step {step}") from None
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


def evaluate(model, loader):
    """``(mean cross-entropy loss, accuracy)`` of ``model`` in eval mode over ``loader``'s
    ``(x, y)`` batches; the model's training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct, seen = 0.0, 0, 0
    try:
        for xb, yb in loader:
            logits = model(xb)
            total_loss += criterion(logits, yb)
            correct += int((logits.argmax(axis=1) == yb).sum())
            seen += len(yb)
    finally:
        model.train(was_training)
    return total_loss / max(seen, 1), correct / max(seen, 1)


def _is_finite(model):
    """True if every floating-point parameter and buffer is finite."""
    return all(
        np.isfinite(v).all() for v in model.state_dict().values() if np.asarray(v).dtype.kind == "f"
    )


# ---------------------------------------------------------------------------------------------
# Run directory: checkpoint, resume, history, curve
# ---------------------------------------------------------------------------------------------


def _random_streams(model):
    """The generators of the modules that draw random numbers in training (Dropout's masks)."""
    rngs = (getattr(m, "rng", None) for m in model.modules())
    return [rng for rng in rngs if isinstance(rng, np.random.Generator)]


def _lrs(optimizer):
    return [float(group["lr"]) for group in optimizer.param_groups]


def write_json(path, data):
    """Write ``data`` as indented JSON to ``path``, atomically."""
    text = json.dumps(data, indent=2) + "\n"
    _write_atomically(path, lambda f: f.write(text.encode()))


def _save_run(out, model, optimizer, loader, scheduler, history, config):
    """Write the checkpoint files, then ``train_state.json`` naming them (see the module doc)."""
    save(model, out / "checkpoint.npz")
    save(optimizer, out / "optimizer.npz")
    loader_rng = getattr(loader, "rng", None)
    state = {
        "epoch": len(history),
        "config": config,
        "history": history,
        # A constant rate is its own base; a schedule's base rates are what it scales.
        "base_lrs": list(scheduler.base_lrs) if scheduler is not None else _lrs(optimizer),
        "loader_rng": loader_rng.bit_generator.state if loader_rng is not None else None,
        "module_rngs": [rng.bit_generator.state for rng in _random_streams(model)],
    }
    write_json(out / _STATE, state)


def read_state(out_dir):
    """The ``train_state.json`` of the run saved in ``out_dir``, as a dict.

    Its keys: ``epoch`` (epochs done), ``config`` (what ``train`` was given), ``history``
    (one dict per epoch), ``base_lrs``, ``loader_rng`` and ``module_rngs``. Raises
    ``FileNotFoundError`` if there is none (nothing to resume) and ``ValueError`` if it is not
    one that ``train`` wrote.
    """
    path = Path(out_dir) / _STATE
    if not path.is_file():
        raise FileNotFoundError(f"no {path}, so nothing to resume from")
    try:
        state = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a fastconv training state: {e}") from e
    keys = ("epoch", "config", "history", "base_lrs", "loader_rng", "module_rngs")
    if (
        not isinstance(state, dict)
        or any(key not in state for key in keys)
        or not isinstance(state["history"], list)
        or len(state["history"]) != state["epoch"]
    ):
        raise ValueError(
            f"{path} is not a fastconv training state: it needs the keys {', '.join(keys)}, "
            "with one history entry per epoch"
        )
    return state


def restore(out_dir, model, optimizer, train_loader=None, scheduler=None):
    """Load the run saved in ``out_dir`` into these objects; return its history.

    The model, the optimizer (rates, momentum or moments), the loader's shuffling stream and
    the dropout streams continue where the saved epoch ended. A ``scheduler`` built for this
    run keeps its own settings (e.g. a new ``T_max``) and continues from the saved base rates
    and epoch. Pass the history to :func:`train` to continue the run.
    """
    out = Path(out_dir)
    state = read_state(out)
    streams = _random_streams(model)
    if len(streams) != len(state["module_rngs"]):
        raise ValueError(
            f"{out / _STATE} holds {len(state['module_rngs'])} dropout stream(s), the model has "
            f"{len(streams)}: it was saved from another network"
        )
    load(model, out / "checkpoint.npz")
    load(optimizer, out / "optimizer.npz")
    for rng, saved in zip(streams, state["module_rngs"], strict=True):
        rng.bit_generator.state = saved
    loader_rng = getattr(train_loader, "rng", None)
    if loader_rng is not None and state["loader_rng"] is not None:
        loader_rng.bit_generator.state = state["loader_rng"]
    if scheduler is not None:
        scheduler.base_lrs = list(state["base_lrs"])
        scheduler.last_epoch = state["epoch"] - 1
        scheduler.step()  # sets the rate of the next epoch from the closed form
    return state["history"]


def plot_history(history, path, title=""):
    """Save loss and accuracy per epoch to ``path`` (PNG); False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-o"), ("test", "--s")):
        if history and f"{split}_loss" in history[0]:
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
    try:
        _write_atomically(path, lambda f: fig.savefig(f, dpi=100, format="png"))
    finally:
        plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def train(
    model,
    optimizer,
    train_loader,
    test_loader=None,
    epochs=1,
    *,
    criterion=None,
    scheduler=None,
    out_dir=None,
    resume=False,
    history=None,
    config=None,
    title="",
    progress=True,
    log=print,
):
    """Train ``model`` up to epoch ``epochs``, evaluating and checkpointing after each epoch.

    Parameters
    ----------
    model : fastconv.nn.Module
        Maps (N, ...) inputs to (N, classes) logits.
    optimizer : fastconv.optim.Optimizer
    train_loader : iterable of (x, y) batches with ``len()``
        A ``fastconv.datasets.DataLoader``; its ``rng`` (shuffling) is saved and restored.
    test_loader : iterable of (x, y) batches, optional
        Evaluated after every epoch (``test_loss``, ``test_acc`` in the history).
    epochs : int
        The last epoch to train, counting epochs already done on resume.
    criterion : default ``nn.CrossEntropyLoss()``
    scheduler : fastconv.optim.lr_scheduler.LRScheduler, optional
        Stepped once after every epoch.
    out_dir : str or os.PathLike, optional
        Run directory for the checkpoint, history and curve (see the module doc); created if
        needed. None: nothing is written.
    resume : bool
        Continue the run saved in ``out_dir`` (:func:`restore`), printing where it resumed.
    history : list of dict, optional
        The epochs already done, as :func:`restore` returns them (for a caller that restores
        first, e.g. to change the rate); training starts at epoch ``len(history) + 1``.
    config : dict, optional
        JSON-able description of the run, saved in ``history.json`` and ``train_state.json``.
    title : str
        Title of ``curve.png``.
    progress : bool
        Show a progress bar per epoch (tqdm if installed).
    log : callable or None
        Called with each line of news (per-epoch results, resume); None for silence.

    Returns
    -------
    list of dict
        One dict per epoch (all of them, including resumed ones): ``epoch``, ``train_loss``,
        ``train_acc``, ``test_loss``, ``test_acc`` (with a test loader), ``seconds``,
        ``images_per_s`` and ``lr``.

    Raises
    ------
    NonFiniteLossError
        The loss or a weight became NaN or infinite; the message names the step and epoch and
        says which checkpoint was kept. Files of earlier epochs are left untouched.
    """
    say = log if log is not None else (lambda *_: None)
    if resume:
        if out_dir is None or history:
            raise ValueError("resume=True needs out_dir, and no history (it reads it)")
        history = restore(out_dir, model, optimizer, train_loader, scheduler)
        say(f"resumed {out_dir} after epoch {len(history)}")
    history = list(history or [])
    criterion = nn.CrossEntropyLoss() if criterion is None else criterion
    out = None if out_dir is None else Path(out_dir)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    for epoch in range(len(history) + 1, epochs + 1):
        lr = _lrs(optimizer)[0]
        try:
            train_loss, train_acc, seconds, speed = train_epoch(
                model, train_loader, criterion, optimizer, f"epoch {epoch}/{epochs}", progress
            )
            if not _is_finite(model):
                raise NonFiniteLossError("the weights became NaN or infinite")
        except NonFiniteLossError as e:
            done = len(history)
            if out is None:
                kept = f"{done} epoch(s) done, nothing saved (no out_dir)"
            elif done:
                kept = f"the checkpoint of epoch {done} in {out} is kept"
            else:
                kept = "no checkpoint was written"
            raise NonFiniteLossError(
                f"{e} in epoch {epoch} (lr {lr:g}); training stopped, {kept}"
            ) from None
        record = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc}
        line = f"epoch {epoch}: train loss {train_loss:.4f} acc {train_acc:.2%}"
        if test_loader is not None:
            record["test_loss"], record["test_acc"] = evaluate(model, test_loader)
            line += f" | test loss {record['test_loss']:.4f} acc {record['test_acc']:.2%}"
        record.update(seconds=seconds, images_per_s=speed, lr=lr)
        history.append(record)
        say(f"{line} | {seconds:.1f} s, {speed:.0f} img/s")
        if scheduler is not None:
            scheduler.step()
        if out is not None:
            _save_run(out, model, optimizer, train_loader, scheduler, history, config)
            write_json(out / "history.json", {"config": config, "epochs": history})
            if not plot_history(history, out / "curve.png", title) and len(history) == 1:
                say("note: matplotlib is not installed; curve.png is not written")
    return history
