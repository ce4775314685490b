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

With ``out_dir`` the run directory holds:

- ``train_state.npz``: the snapshot a resume reads, one file written atomically: the model's
  and the optimizer's state dicts and the loop's state (epochs done, steps done in the next
  epoch, the history, the scheduler's base rates, the random streams of data-loader shuffling
  and dropout masks). It is written after every epoch, every ``save_every`` steps and on
  Ctrl-C, so a resumed run continues exactly as if it had not stopped, from any of those
  points; a crash at any moment leaves either the previous snapshot or the new one;
- ``checkpoint.npz``: the model's state dict after the last finished epoch
  (``fastconv.load(model, path)`` reads it back);
- ``history.json``: ``{"config": ..., "epochs": [one dict per epoch]}``, for people and plots;
- ``curve.png``: loss and accuracy per epoch (needs matplotlib; skipped without it).

The last three are written after the snapshot and rewritten from it on resume. Every file is
written atomically (``fastconv.save``'s writer) and nothing is pickled. A non-empty run
directory is refused unless the run resumes or is told to overwrite it. A NaN or infinite loss
stops training with :class:`NonFiniteLossError` before the optimizer step, so the files of the
last good snapshot are left as they were.

Data-parallel training over MPI is the same call with ``distributed=`` a
``fastconv.distributed.ProcessGroup`` and loaders sharded by ``rank``/``world_size``, on every
rank (see ``fastconv.distributed``): rank 0 alone writes the run directory and logs.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from fastconv import nn, optim
from fastconv._checks import positive_int
from fastconv._data_parallel import (
    _AgreedInterrupts,
    _check_averages,
    _open_on_root,
    _parallel_step,
)
from fastconv._jit_notice import announce_compilation
from fastconv._run_dir import (
    _STATE,
    History,
    NonFiniteLossError,
    RunDirectoryError,
    TrainingInterrupted,
    _Interrupts,
    _lrs,
    _prepare,
    _repair_outputs,
    _snapshot,
    _write_outputs,
    plot_history,
    read_checkpoint,
    read_state,
    restore,
    write_json,
)
from fastconv.autograd import no_grad
from fastconv.datasets import fashion_mnist, mnist

__all__ = [
    "DEFAULT_LR",
    "NORMALISATION",
    "OPTIMIZERS",
    "SCHEDULES",
    "History",
    "NonFiniteLossError",
    "Progress",
    "RunDirectoryError",
    "TrainingInterrupted",
    "evaluate",
    "load_data",
    "make_optimizer",
    "make_scheduler",
    "normalise",
    "plot_history",
    "read_checkpoint",
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
    epochs = positive_int("epochs", epochs)
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
    # A negative limit would silently drop images from the end (a slice), not keep N.
    limit = None if limit is None else positive_int("limit", limit)
    test_limit = None if test_limit is None else positive_int("test_limit", test_limit)
    loader = fashion_mnist if dataset == "fashion-mnist" else mnist
    train_images, y_train = loader("train", root=root)
    test_images, y_test = loader("test", root=root)
    train_images, y_train = train_images[:limit], y_train[:limit]
    test_images, y_test = test_images[:test_limit], y_test[:test_limit]
    return normalise(train_images, dataset), y_train, normalise(test_images, dataset), y_test


# ---------------------------------------------------------------------------------------------
# One step, one epoch, evaluation
# ---------------------------------------------------------------------------------------------


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
    computed, so the weights are left as they were. NumPy's overflow warnings on the way to a
    non-finite loss are silenced: the loss and the weights are checked explicitly, and the
    error says what happened once, clearly.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        logits = model(x)
        loss = criterion(logits, y)
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"the training loss became {loss}")
        optimizer.zero_grad()
        # Gradients of the parameters only: nothing needs the images' gradient (a first Conv2d
        # skips that pass, as PyTorch does for inputs that do not require grad).
        model._backward_params(criterion.backward())
        optimizer.step()
    return loss, logits


def train_epoch(
    model,
    loader,
    criterion,
    optimizer,
    desc="train",
    progress=True,
    step_hook=None,
    *,
    start=0,
    totals=(0.0, 0, 0),
    after_step=None,
    distributed=None,
    interrupts=None,
):
    """One pass over ``loader`` in training mode: ``(mean loss, accuracy, seconds, images/s)``.

    ``step_hook(loss)``, if given, is called with each batch's loss; ``progress`` shows a bar
    labelled ``desc``. Raises :class:`NonFiniteLossError` naming the step.

    To finish an epoch begun earlier: ``start`` batches are skipped (the loader must yield the
    same batches again, e.g. its generator restored to the epoch's start) and ``totals`` are
    the ``(sum of losses, correct, seen)`` of those batches. ``after_step(step, totals)`` is
    called after every step with the same numbers (it may save or raise).

    ``distributed`` (a ``fastconv.distributed.ProcessGroup``): data-parallel training, each
    rank on its slice of every batch; the numbers returned and given to ``after_step`` are the
    global ones (all ranks' samples), the same on every rank. ``interrupts`` (train's): each
    step's collective also tells every rank whether any rank was asked to stop.
    """
    if distributed is not None:
        _check_averages(criterion)
    model.train()
    bar = Progress(len(loader), desc, progress)
    total_loss, correct, seen = totals
    start_time = time.perf_counter()
    timed = 0  # images of this session, for the speed
    batches = iter(loader)
    try:
        for _ in range(start):
            next(batches)
            bar.count += 1
        for step, (xb, yb) in enumerate(batches, start + 1):
            try:
                if distributed is None:
                    loss, logits = train_step(model, criterion, optimizer, xb, yb)
                    n, right = len(yb), int((logits.argmax(axis=1) == yb).sum())
                else:
                    loss, n, right = _parallel_step(
                        model, criterion, optimizer, xb, yb, distributed, interrupts
                    )
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"{e} at step {step}") from None
            total_loss += loss * n
            correct += right
            seen += n
            timed += n
            if step_hook is not None:
                step_hook(loss)
            elapsed = time.perf_counter() - start_time
            bar.update(
                loss=f"{total_loss / seen:.4f}",
                acc=f"{correct / seen:.3f}",
                **{"img/s": f"{timed / max(elapsed, 1e-9):.0f}"},
            )
            if after_step is not None:
                after_step(step, (total_loss, correct, seen))
    finally:
        bar.close()
    seconds = time.perf_counter() - start_time
    return total_loss / max(seen, 1), correct / max(seen, 1), seconds, timed / max(seconds, 1e-9)


def evaluate(model, loader, distributed=None):
    """``(mean cross-entropy loss, accuracy)`` of ``model`` in eval mode over ``loader``'s
    ``(x, y)`` batches; the model's training flag is restored afterwards.

    With ``distributed`` (a ``fastconv.distributed.ProcessGroup``) the sums are added over the
    ranks, each evaluating its shard (a ``DataLoader`` with ``rank``/``world_size``), and every
    rank returns the result over all of them."""
    was_training = model.training
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct, seen = 0.0, 0, 0
    try:
        # no_grad: the layers keep no inputs for a backward, so each activation is freed as soon
        # as the next layer has read it (a batch of 1000 held ~280 MB more without it).
        for xb, yb in loader:
            if not len(yb):  # a rank's empty slice of a short last batch
                continue
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"), no_grad():
                logits = model(xb)
                total_loss += criterion(logits, yb)
            correct += int((logits.argmax(axis=1) == yb).sum())
            seen += len(yb)
    finally:
        model.train(was_training)
    if distributed is not None:
        total_loss, correct, seen = distributed.allreduce_sum([total_loss, correct, seen])
    return float(total_loss / max(seen, 1)), float(correct / max(seen, 1))


def _is_finite(model):
    """True if every floating-point parameter and buffer is finite."""
    return all(
        np.isfinite(v).all() for v in model.state_dict().values() if np.asarray(v).dtype.kind == "f"
    )


# ---------------------------------------------------------------------------------------------
# Run directory: checkpoint, resume, history, curve
# ---------------------------------------------------------------------------------------------


def _open_run(
    out, resume, overwrite, history, model, optimizer, loader, scheduler, config, title, say
):
    """Check (and create) the run directory, resume from it if asked; return the History to
    continue from. In data-parallel training rank 0 alone calls it."""
    if resume:
        if not (out / _STATE).is_file():  # checked first: no directory is created for nothing
            raise FileNotFoundError(f"no {out / _STATE}, so nothing to resume from")
        # The directory is checked before the snapshot is loaded into the objects, so a
        # refused run leaves them as they were.
        _prepare(out, True, overwrite)
        history = restore(out, model, optimizer, loader, scheduler)
        at = f", step {history.step}" if history.step else ""
        say(f"resumed {out} after epoch {len(history)}{at}")
    restored = history if isinstance(history, History) else History(history or [])
    if out is not None:
        # A history from ``restore`` (even of no finished epoch) continues the run in ``out``.
        _prepare(out, resume or bool(restored) or restored.step > 0, overwrite)
        if restored and not restored.step:
            # The files derived from the snapshot, if a crash came before they were written.
            saved_config = restored.config if config is None else config
            _repair_outputs(out, model, list(restored), saved_config, title)
    return restored


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
    overwrite=False,
    save_every=None,
    history=None,
    config=None,
    title="",
    progress=True,
    log=print,
    distributed=None,
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
        The last epoch to train (>= 1), counting epochs already done on resume.
    criterion : default ``nn.CrossEntropyLoss()``
    scheduler : fastconv.optim.lr_scheduler.LRScheduler, optional
        Stepped once after every epoch.
    out_dir : str or os.PathLike, optional
        Run directory for the snapshot, checkpoint, history and curve (see the module doc);
        created if needed. None: nothing is written.
    resume : bool
        Continue the run saved in ``out_dir`` (:func:`restore`), printing where it resumed.
    overwrite : bool
        Start a new run in an ``out_dir`` that holds files (the earlier run's are deleted).
        Without it, or ``resume``, a non-empty ``out_dir`` is refused before any training.
    save_every : int, optional
        Also snapshot every this many steps within an epoch (a resume finishes the epoch).
    history : list of dict, optional
        The epochs already done, as :func:`restore` returns them (for a caller that restores
        first, e.g. to change the rate); training continues where that snapshot was taken.
    config : dict, optional
        JSON-able description of the run, saved in ``history.json`` and the snapshot.
    title : str
        Title of ``curve.png``.
    progress : bool
        Show a progress bar per epoch (tqdm if installed).
    log : callable or None
        Called with each line of news (per-epoch results, resume); None for silence.
    distributed : fastconv.distributed.ProcessGroup, optional
        Data-parallel training over MPI (``fastconv.distributed.init_process_group()``), every
        rank calling ``train`` with the same arguments and loaders sharded by ``rank`` and
        ``world_size`` (``batch_size`` is the global batch). Rank 0 alone reads and writes
        ``out_dir``, logs and shows progress; before training it sends its model, optimizer,
        scheduler, loader and dropout streams and history (after ``resume``) to every rank.
        Each step averages the gradients over the ranks (weighted by their slices, so a network
        without BatchNorm trains as one process on the global batch, to rounding); after each
        epoch BatchNorm's running statistics are rank 0's on every rank. The history holds the
        global figures. The criterion must average (``reduction="mean"``). An error found on
        rank 0 before training (run directory, resume) is raised on every rank.

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
    TrainingInterrupted
        Ctrl-C (SIGINT, in the main thread): training stopped after the step in progress;
        with ``out_dir`` a snapshot of that step was saved first, and the message says so.
    RunDirectoryError
        (a ``ValueError``) Before any training: a run directory that is a file, read-only, or
        not empty (without ``resume``/``overwrite``).
    ValueError, TypeError, FileNotFoundError
        Before any training: a bad ``epochs`` or ``save_every``; with ``resume``, nothing to
        resume (``FileNotFoundError``) or a snapshot that does not fit (see :func:`restore`).
    """
    epochs = positive_int("epochs", epochs)
    save_every = None if save_every is None else positive_int("save_every", save_every)
    criterion = nn.CrossEntropyLoss() if criterion is None else criterion
    if distributed is not None:
        _check_averages(criterion)
    root = distributed is None or distributed.rank == 0
    if not root:  # rank 0 alone speaks
        log, progress = None, False
    say = log if log is not None else (lambda *_: None)
    out = None if out_dir is None else Path(out_dir)
    if resume and (out is None or history):
        raise ValueError("resume=True needs out_dir, and no history (it reads it)")

    def open_run():
        return _open_run(
            out, resume, overwrite, history, model, optimizer, train_loader, scheduler, config,
            title, say,
        )  # fmt: skip

    if distributed is None:
        restored = open_run()
    else:  # rank 0 opens the run; its verdict, then its state, on every rank
        restored = _open_on_root(distributed, open_run, model, optimizer, scheduler, train_loader)
    position = (restored.step, restored.totals, restored.loader_state)
    history = list(restored)
    write = out if root else None  # the directory this rank writes in
    loader_rng = getattr(train_loader, "rng", None)

    # On a new machine the first steps compile the kernels (seconds): say so rather than sit
    # silently at 0%.
    with _Interrupts() as interrupts, announce_compilation(say):
        # In data-parallel training the ranks stop at the step they agree on.
        stop = interrupts if distributed is None else _AgreedInterrupts(interrupts)
        for epoch in range(len(history) + 1, epochs + 1):
            step, totals, loader_state = position
            position = (0, (0.0, 0, 0), None)
            if loader_state is not None and loader_rng is not None:
                loader_rng.bit_generator.state = loader_state  # the epoch's batches again
            epoch_start = loader_rng.bit_generator.state if loader_rng is not None else None
            lr = _lrs(optimizer)[0]

            def after_step(step, totals, epoch=epoch, epoch_start=epoch_start):
                due = save_every is not None and step % save_every == 0
                if write is not None and (due or stop.requested):
                    done = (step, totals, epoch_start)
                    _snapshot(out, model, optimizer, scheduler, history, config, done)
                if stop.requested:
                    point = f"step {step} of epoch {epoch}"
                    saved = (
                        f"{point} is saved in {out}; continue with resume (--resume)"
                        if out is not None
                        else f"stopped after {point}, nothing was saved (no out_dir)"
                    )
                    raise TrainingInterrupted(f"interrupted: {saved}")

            try:
                train_loss, train_acc, seconds, speed = train_epoch(
                    model, train_loader, criterion, optimizer, f"epoch {epoch}/{epochs}",
                    progress, start=step, totals=totals, after_step=after_step,
                    distributed=distributed, interrupts=stop if distributed else None,
                )  # fmt: skip
                if distributed is not None:
                    distributed.broadcast_buffers(model)  # rank 0's BatchNorm statistics
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
                record["test_loss"], record["test_acc"] = evaluate(model, test_loader, distributed)
                line += f" | test loss {record['test_loss']:.4f} acc {record['test_acc']:.2%}"
            record.update(seconds=seconds, images_per_s=speed, lr=lr)
            history.append(record)
            say(f"{line} | {seconds:.1f} s, {speed:.0f} img/s")
            if scheduler is not None:
                scheduler.step()
            if write is not None:
                # The snapshot first: once it is on disk the epoch is saved; the other files
                # are derived from it (and rewritten from it on resume if a crash came first).
                next_start = loader_rng.bit_generator.state if loader_rng is not None else None
                _snapshot(
                    out, model, optimizer, scheduler, history, config, (0, (0.0, 0, 0), next_start)
                )
                if not _write_outputs(out, model, history, config, title) and len(history) == 1:
                    say("note: matplotlib is not installed; curve.png is not written")
            if stop.requested:
                where = f"epoch {epoch} is saved in {out}" if out is not None else "nothing saved"
                raise TrainingInterrupted(f"interrupted after epoch {epoch}: {where}")
    return history
