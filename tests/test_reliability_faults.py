"""Crashes mid-write: SIGKILL at every file operation of a training run, then a resume.

One subprocess trains a tiny network once without faults, counting the renames that publish
its files (every file fastconv writes goes through one atomic writer, so each rename is a
moment where the run directory changes). Then, for every rename and on either side of it, a
forked child trains the same run and kills itself with SIGKILL there; the run is then resumed
(or started over, if no snapshot was published yet) and must end with the uninterrupted run's
weights, optimizer state and history, bit for bit, with no temporary file left behind.

Forking after numba's parallel kernels have run needs a fork-safe threading layer (tbb, or
workqueue when tbb is missing): the driver asks numba for "forksafe". Each killed run and each
resume is a fork of the warmed-up driver, so the 36 runs take seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastconv
from fastconv import nn, training
from fastconv.datasets import DataLoader

_SETUP = """
import numpy as np

import fastconv
from fastconv import nn, training
from fastconv.datasets import DataLoader


def data(n, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = rng.standard_normal((n, 1, 12, 12)).astype(np.float32)
    x[np.arange(n), 0, 2 * y + 2, :] += 3
    return x, y.astype(np.int64)


def run(out, resume=False, overwrite=False, epochs=2):
    rng = np.random.default_rng(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=rng), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.25, rng=rng), nn.Linear(4 * 6 * 6, 4, rng=rng),
    )
    optimizer = training.make_optimizer("adam", model.parameters(), 0.01)
    scheduler = training.make_scheduler("cosine", optimizer, epochs)
    train_loader = DataLoader(*data(200, 1), 25, seed=0)  # 8 steps an epoch
    test_loader = DataLoader(*data(40, 2), 40, shuffle=False)
    with fastconv.threads(1):
        history = training.train(
            model, optimizer, train_loader, test_loader, epochs, scheduler=scheduler,
            out_dir=out, resume=resume, overwrite=overwrite,
            config={"run": "faults"}, progress=False, log=None, save_every=5,
        )
    return model, optimizer, history
"""

_DRIVER = """
import json, os, signal, sys

import numpy as np

sys.modules["matplotlib"] = None  # no curve.png: the same writer as history.json, 0.1 s a plot

from setup_run import run

import fastconv.serialization as serialization

TIMINGS = ("seconds", "images_per_s")
root = sys.argv[1]
real_replace = os.replace


def strip(history):
    return [{k: v for k, v in h.items() if k not in TIMINGS} for h in history]


def outcome(model, optimizer, history):
    arrays = {"model." + k: v for k, v in model.state_dict().items()}
    arrays.update({"optimizer." + k: np.asarray(v) for k, v in optimizer.state_dict().items()})
    return arrays, strip(history)


count = [0]


def counting(src, dst):
    if os.fspath(dst).startswith(root):  # the run's files, not numba's cache (cold JIT cache)
        count[0] += 1
    return real_replace(src, dst)


serialization.os.replace = counting
reference, ref_history = outcome(*run(os.path.join(root, "reference")))
serialization.os.replace = real_replace
renames = count[0]
report = {"renames": renames, "cases": []}

for k in range(renames):
    for phase in ("before", "after"):
        out = os.path.join(root, f"kill-{k}-{phase}")
        pid = os.fork()
        if pid == 0:  # the run that dies: SIGKILL before or after the k-th rename
            seen = [0]

            def killing(src, dst, k=k, phase=phase, out=out):
                if not os.fspath(dst).startswith(out):  # e.g. numba's cache: not counted
                    return real_replace(src, dst)
                if seen[0] == k and phase == "before":
                    os.kill(os.getpid(), signal.SIGKILL)
                real_replace(src, dst)
                if seen[0] == k:
                    os.kill(os.getpid(), signal.SIGKILL)
                seen[0] += 1

            serialization.os.replace = killing
            run(out)
            os._exit(0)  # not reached: the k-th rename happens in every run
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        pid = os.fork()
        if pid == 0:  # the recovery: --resume if a snapshot was published, else start over
            fresh = not os.path.exists(os.path.join(out, "train_state.npz"))
            arrays, history = outcome(*run(out, resume=not fresh, overwrite=fresh))
            same = sorted(arrays) == sorted(reference) and all(
                np.array_equal(arrays[key], reference[key]) for key in reference
            )
            with open(os.path.join(out, "history.json")) as f:
                written = strip(json.load(f)["epochs"])
            with np.load(os.path.join(out, "checkpoint.npz")) as npz:
                checkpoint = all(
                    np.array_equal(npz[key], arrays["model." + key]) for key in npz.files
                )
            case = {
                "case": f"{k}-{phase}", "fresh": fresh, "same_state": same,
                "same_history": history == ref_history, "history_json": written == ref_history,
                "checkpoint": checkpoint, "files": sorted(os.listdir(out)),
            }
            with open(out + ".json", "w") as f:
                json.dump(case, f)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        with open(out + ".json") as f:
            case = json.load(f)
        case.update(killed=killed, recovered=os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
        report["cases"].append(case)

print(json.dumps(report))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_at_every_file_operation_then_resume(tmp_path):
    (tmp_path / "setup_run.py").write_text(_SETUP)
    (tmp_path / "driver.py").write_text(textwrap.dedent(_DRIVER))
    env = dict(os.environ, NUMBA_THREADING_LAYER="forksafe", PYTHONPATH=str(tmp_path))
    done = subprocess.run(
        [sys.executable, str(tmp_path / "driver.py"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # Per epoch: the snapshot at step 5, the end-of-epoch snapshot, checkpoint and history;
    # plus the write test of the run directory.
    assert report["renames"] == 9
    assert len(report["cases"]) == 2 * report["renames"]
    for case in report["cases"]:
        assert case["killed"] and case["recovered"], case
        assert case["same_state"] and case["same_history"], case
        assert case["history_json"] and case["checkpoint"], case
        assert not [f for f in case["files"] if f.endswith(".tmp") or f == ".write-test"], case
        assert {"train_state.npz", "checkpoint.npz", "history.json"} <= set(case["files"]), case
    # Both recoveries occur: some kills came before the first snapshot, most after.
    assert {case["fresh"] for case in report["cases"]} == {True, False}


# ---------------------------------------------------------------------------------------------
# Ctrl-C: a snapshot of the step reached, one line, an exact resume from within the epoch
# ---------------------------------------------------------------------------------------------


def _tiny(epochs=2):
    rng = np.random.default_rng(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Dropout(0.25, rng=rng), nn.Linear(4 * 6 * 6, 4, rng=rng),
    )  # fmt: skip
    optimizer = training.make_optimizer("momentum", model.parameters(), 0.05)
    scheduler = training.make_scheduler("step", optimizer, epochs)
    data = np.random.default_rng(1).standard_normal((120, 1, 12, 12)).astype(np.float32)
    labels = np.arange(120) % 4
    return model, optimizer, scheduler, DataLoader(data, labels, 20, seed=0)


def _train(out, epochs=2, **kw):
    model, optimizer, scheduler, loader = _tiny(epochs)
    with fastconv.threads(1):
        history = training.train(
            model, optimizer, loader, None, epochs, scheduler=scheduler, out_dir=out,
            progress=False, log=None, **kw,
        )  # fmt: skip
    return model, history


def _strip(history):
    return [{k: v for k, v in h.items() if k not in ("seconds", "images_per_s")} for h in history]


def test_ctrl_c_saves_the_step_and_resume_finishes_the_epoch_exactly(tmp_path, monkeypatch):
    straight, straight_history = _train(tmp_path / "straight")
    calls = [0]
    real_step = training.train_step

    def step_then_ctrl_c(*args):
        calls[0] += 1
        result = real_step(*args)
        if calls[0] == 9:  # the third step of epoch 2 (6 steps an epoch)
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(training, "train_step", step_then_ctrl_c)
    out = tmp_path / "run"
    with pytest.raises(training.TrainingInterrupted) as info:
        _train(out)
    assert str(info.value) == (
        f"interrupted: step 3 of epoch 2 is saved in {out}; continue with resume (--resume)"
    )
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.undo()
    state = training.read_state(out)
    assert (state["epoch"], state["step"]) == (1, 3)
    resumed, history = _train(out, resume=True)
    assert _strip(history) == _strip(straight_history)
    for key, value in straight.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[key], value, err_msg=key)


def test_the_run_directory_is_checked_before_training(tmp_path):
    _train(tmp_path / "run", epochs=1)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(training.RunDirectoryError, match="not empty.*resume=True.*overwrite"):
        _train(tmp_path / "run", epochs=1)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    _, history = _train(tmp_path / "run", epochs=1, overwrite=True)
    assert len(history) == 1
    (tmp_path / "file").write_text("x")
    with pytest.raises(training.RunDirectoryError, match="is a file"):
        _train(tmp_path / "file", epochs=1)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        _train(tmp_path / "none", resume=True)
    assert not (tmp_path / "none").exists()
    for epochs in (0, -1):
        with pytest.raises(ValueError, match="epochs must be a positive int"):
            _train(tmp_path / "zero", epochs=epochs)
    assert not (tmp_path / "zero").exists()
