"""The run directory of :func:`fastconv.training.train`: one snapshot, files derived from it.

``train_state.npz`` is the snapshot: the model's and the optimizer's state dicts and the loop's
state (epoch, step within the epoch, history, random streams) in one file, written atomically,
so a resume always sees one consistent point of the run, whatever moment a crash came at.
``checkpoint.npz``, ``history.json`` and ``curve.png`` are written after it, for people; a
resume rewrites them from the snapshot.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path

import numpy as np

from fastconv.serialization import _write_atomically, load, save

_STATE = "train_state.npz"  # the snapshot: model, optimizer and loop state in one file
_WRITE_TEST = ".write-test"  # written and removed before training: can the directory be used?
# Every file a run writes (``overwrite`` removes them; the last two are the layout before 0.2).
_RUN_FILES = (
    _STATE,
    "checkpoint.npz",
    "history.json",
    "curve.png",
    "optimizer.npz",
    "train_state.json",
)


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


class History(list):
    """The epochs done (one dict each), as :func:`restore` returns them.

    ``step`` is the number of steps already done in the next epoch (0: the run was saved at
    the end of an epoch); ``totals`` and ``loader_state`` (the data loader's generator at that
    epoch's start) let :func:`train` finish that epoch exactly.
    """

    step = 0
    totals = (0.0, 0, 0)
    loader_state = None
    config = None


def _snapshot(out, model, optimizer, scheduler, history, config, position):
    """Write the run's one snapshot file ``train_state.npz``, atomically (see the module doc).

    ``position`` is ``(step, totals, loader_state)`` within the next epoch.
    """
    step, totals, loader_state = position
    state = {
        "format": 2,
        "epoch": len(history),
        "step": step,
        "totals": list(totals),
        "config": config,
        "history": history,
        # A constant rate is its own base; a schedule's base rates are what it scales.
        "base_lrs": list(scheduler.base_lrs) if scheduler is not None else _lrs(optimizer),
        "loader_rng": loader_state,
        "module_rngs": [rng.bit_generator.state for rng in _random_streams(model)],
    }
    arrays = {f"model.{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optimizer.{k}": v for k, v in optimizer.state_dict().items()})
    arrays["state"] = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
    save(arrays, out / _STATE)


def _write_outputs(out, model, history, config, title):
    """The files for people, derived from the snapshot: weights, curve, then the history
    (last, so a complete ``history.json`` shows the other two are up to date)."""
    save(model, out / "checkpoint.npz")
    plotted = plot_history(history, out / "curve.png", title)
    write_json(out / "history.json", {"config": config, "epochs": history})
    return plotted


def _repair_outputs(out, model, history, config, title):
    """Rewrite the derived files if a crash came between the snapshot and them."""
    try:
        written = json.loads((out / "history.json").read_text())["epochs"]
    except (OSError, ValueError, KeyError, TypeError):
        written = None
    if written != history:
        _write_outputs(out, model, history, config, title)


def read_checkpoint(out_dir):
    """``(model_state, optimizer_state, state)`` of the run saved in ``out_dir``.

    The two state dicts are what ``load_state_dict`` takes; ``state`` is :func:`read_state`'s
    dict. Raises ``FileNotFoundError`` if there is none (nothing to resume) and ``ValueError``
    if the file is not one that ``train`` wrote (truncated, forged, another format).
    """
    path = Path(out_dir) / _STATE
    if not path.exists():
        raise FileNotFoundError(f"no {path}, so nothing to resume from")
    arrays = load(path)
    parts = {"model": {}, "optimizer": {}}
    for key, value in arrays.items():
        kind, _, name = key.partition(".")
        if kind in parts and name:
            parts[kind][name] = value
    try:
        state = json.loads(arrays["state"].tobytes().decode())
    except (KeyError, ValueError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"{path} is not a fastconv training state: {e}") from e
    keys = ("epoch", "step", "totals", "config", "history", "base_lrs", "loader_rng")
    if (
        not isinstance(state, dict)
        or any(key not in state for key in keys + ("module_rngs",))
        or not isinstance(state["history"], list)
        or len(state["history"]) != state["epoch"]
        or not parts["model"]
    ):
        raise ValueError(
            f"{path} is not a fastconv training state: it needs the model, the optimizer and "
            f"the keys {', '.join(keys)}, with one history entry per epoch"
        )
    return parts["model"], parts["optimizer"], state


def read_state(out_dir):
    """The state of the run saved in ``out_dir``, as a dict.

    Its keys: ``epoch`` (epochs done), ``step`` (steps done in the next epoch), ``totals``,
    ``config`` (what ``train`` was given), ``history`` (one dict per epoch), ``base_lrs``,
    ``loader_rng`` and ``module_rngs``. Raises ``FileNotFoundError`` if there is none (nothing
    to resume) and ``ValueError`` if it is not one that ``train`` wrote.
    """
    return read_checkpoint(out_dir)[2]


def restore(out_dir, model, optimizer, train_loader=None, scheduler=None):
    """Load the run saved in ``out_dir`` into these objects; return its :class:`History`.

    The model, the optimizer (rates, momentum or moments), the loader's shuffling stream and
    the dropout streams continue where the snapshot was taken (the end of an epoch, or a step
    within one). A ``scheduler`` built for this run keeps its own settings (e.g. a new
    ``T_max``) and continues from the saved base rates and epoch. Pass the history to
    :func:`train` to continue the run. If anything does not fit (another network, a truncated
    file) it raises before any of the objects is changed.
    """
    out = Path(out_dir)
    model_state, optimizer_state, state = read_checkpoint(out)
    streams = _random_streams(model)
    if len(streams) != len(state["module_rngs"]):
        raise ValueError(
            f"{out / _STATE} holds {len(state['module_rngs'])} dropout stream(s), the model has "
            f"{len(streams)}: it was saved from another network"
        )
    backup = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
    try:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
    except (ValueError, TypeError) as e:
        model.load_state_dict(backup)  # the optimizer did not fit: leave the model as it was
        raise type(e)(f"{out / _STATE}: {e}") from e
    for rng, saved in zip(streams, state["module_rngs"], strict=True):
        rng.bit_generator.state = saved
    loader_rng = getattr(train_loader, "rng", None)
    if loader_rng is not None and state["loader_rng"] is not None:
        loader_rng.bit_generator.state = state["loader_rng"]
    if scheduler is not None:
        scheduler.base_lrs = list(state["base_lrs"])
        scheduler.last_epoch = state["epoch"] - 1
        scheduler.step()  # sets the rate of the next epoch from the closed form
    history = History(state["history"])
    history.step, history.totals = int(state["step"]), tuple(state["totals"])
    history.loader_state, history.config = state["loader_rng"], state["config"]
    return history


def _prepare(out, resume, overwrite):
    """Create the run directory, or check that it may be used; raise before any training.

    Refuses a non-empty directory unless ``resume`` or ``overwrite``; with ``overwrite`` the
    earlier run's files are removed first, so a crash cannot resume the old run. Checks that
    a file can be written there (a read-only directory, or ``out`` being a file, fails now).
    """
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"the run directory {out} is a file, not a directory")
    if out.is_dir() and not resume:
        # Not counted: what a killed save or write test of this module left behind.
        taken = sorted(
            p.name
            for p in out.iterdir()
            if not (p.name == _WRITE_TEST or (p.name.startswith(".") and p.name.endswith(".tmp")))
        )
        if taken and not overwrite:
            shown = ", ".join(taken[:4]) + (", ..." if len(taken) > 4 else "")
            raise RunDirectoryError(
                f"the run directory {out} is not empty ({shown}): resume the run in it "
                "(resume=True, --resume) or start over (overwrite=True, --overwrite)"
            )
        for name in _RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_atomically(out / _WRITE_TEST, lambda f: f.write(b""))
        (out / _WRITE_TEST).unlink()
    except OSError as e:
        raise RunDirectoryError(f"cannot write in the run directory {out}: {e}") from e


class RunDirectoryError(ValueError):
    """The run directory cannot be used: a file, read-only, or holding another run."""


class _Interrupts:
    """Ctrl-C while training: the first one is noted and the loop stops at the next step
    boundary (after saving); a second one interrupts at once. Only in the main thread."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and (
            signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._note)
        return self

    def _note(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)  # a second Ctrl-C is immediate

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C at a step boundary; the message says what was saved."""


class NonFiniteLossError(RuntimeError):
    """The training loss (or a weight) became NaN or infinite."""


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
