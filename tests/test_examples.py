"""Smoke tests of the example scripts on a tiny synthetic data set (no real data, no network).

They run the scripts' ``main`` in process: a short training run, ``--resume``, a run that a
huge learning rate drives to NaN, the command line's help and errors, and the optimizer
comparison. The networks and the loop themselves are tested in test_models.py and
test_training.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import struct
from pathlib import Path

import numpy as np
import pytest

import fastconv
import fastconv.models

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
N_TRAIN, N_TEST = 96, 48


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_script():
    return _load_script("train_fashion_mnist")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Four tiny IDX files: class ``k`` images are noise plus a bright row ``2k + 4``."""
    root = tmp_path_factory.mktemp("tiny-fashion")
    rng = np.random.default_rng(0)

    def write(name, array):
        header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        (root / name).write_bytes(header + array.tobytes())

    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 80, size=(n, 28, 28), dtype=np.uint8)
        images[np.arange(n), 2 * labels + 4, :] = 255
        write(f"{prefix}-images-idx3-ubyte", images)
        write(f"{prefix}-labels-idx1-ubyte", labels)
    return root


def _args(data_dir, out, *extra):
    return [
        "--model", "seed", "--data-dir", str(data_dir), "--out", str(out),
        "--batch-size", "16", "--threads", "1", "--no-progress", *extra,
    ]  # fmt: skip


def _history(out):
    return json.loads((out / "history.json").read_text())["epochs"]


@pytest.mark.filterwarnings("error::RuntimeWarning")  # the NaN stop is its own message, no warning
def test_train_resume_and_nan_stop(train_script, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_script.main(_args(data_dir, out, "--epochs", "1", "--limit", "64")) == 0
    printed = capsys.readouterr().out
    assert "done: 1 epochs" in printed and "best test accuracy" in printed

    history = _history(out)
    assert [h["epoch"] for h in history] == [1]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "seconds", "images_per_s"):
        assert np.isfinite(history[0][key]), key
    assert 0 <= history[0]["test_acc"] <= 1
    model = fastconv.models.seed()
    fastconv.load(model, out / "checkpoint.npz")  # a complete state dict for the same net
    with np.load(out / "train_state.npz", allow_pickle=False) as npz:
        assert "optimizer.param_groups.0.lr" in npz.files
    assert fastconv.training.read_state(out)["epoch"] == 1
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --resume continues to epoch 2 and ends where an uninterrupted 2-epoch run ends.
    assert (
        train_script.main(_args(data_dir, out, "--epochs", "2", "--limit", "64", "--resume")) == 0
    )
    assert "resumed" in capsys.readouterr().out
    resumed = _history(out)
    assert [h["epoch"] for h in resumed] == [1, 2]
    assert resumed[0] == history[0]
    straight = tmp_path / "straight"
    assert train_script.main(_args(data_dir, straight, "--epochs", "2", "--limit", "64")) == 0
    with np.load(out / "checkpoint.npz") as a, np.load(straight / "checkpoint.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)

    # A huge learning rate makes the loss NaN: exit code 3, a clear message, and the
    # checkpoint of epoch 2 is left as it was.
    capsys.readouterr()
    before = {f: (out / f).read_bytes() for f in ("checkpoint.npz", "train_state.npz")}
    code = train_script.main(
        _args(data_dir, out, "--epochs", "4", "--limit", "64", "--resume", "--lr", "1e30")
    )
    assert code == train_script.EXIT_NONFINITE
    err = capsys.readouterr().err
    assert "training loss became" in err and "training stopped" in err
    assert "checkpoint of epoch 2" in err and "smaller --lr" in err
    assert {f: (out / f).read_bytes() for f in before} == before
    assert [h["epoch"] for h in _history(out)] == [1, 2]


def test_resume_without_state_and_missing_data(train_script, data_dir, tmp_path, capsys):
    code = train_script.main(_args(data_dir, tmp_path / "empty", "--epochs", "1", "--resume"))
    assert code == train_script.EXIT_USAGE
    assert "nothing to resume" in capsys.readouterr().err
    code = train_script.main(_args(tmp_path / "no-data", tmp_path / "o", "--epochs", "1"))
    assert code == train_script.EXIT_USAGE
    err = capsys.readouterr().err
    assert "not found in root=" in err and "FASTCONV_DATA" in err


def test_ctrl_c_exits_130_and_says_what_is_saved(
    train_script, data_dir, tmp_path, capsys, monkeypatch
):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setattr(train_script.training, "train", interrupted)
    assert train_script.main(_args(data_dir, out, "--epochs", "1")) == 130
    assert "interrupted: no epoch was finished" in capsys.readouterr().err
    monkeypatch.undo()
    assert train_script.main(_args(data_dir, out, "--epochs", "1", "--limit", "32")) == 0
    monkeypatch.setattr(train_script.training, "train", interrupted)
    code = train_script.main(_args(data_dir, out, "--epochs", "2", "--resume"))
    assert code == train_script.EXIT_INTERRUPTED == 130
    assert f"interrupted: epoch 1 is saved in {out}; continue with --resume" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("script", ["train_fashion_mnist", "compare_optimizers"])
def test_help_shows_every_default(script, capsys):
    with pytest.raises(SystemExit) as info:
        _load_script(script).main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    options = re.findall(r"^  (--[a-z-]+)", text, flags=re.MULTILINE)
    assert len(options) >= 12
    # Each option's help, up to the next option: every one but the flags states its default.
    for option, body in zip(
        options, re.split(r"^  --[a-z-]+", text, flags=re.MULTILINE)[1:], strict=True
    ):
        if option not in ("--resume", "--overwrite", "--no-progress"):
            assert "(default:" in body, option
    assert "None" not in text and "[]" not in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lr", "-1"], "--lr must be positive, got -1.0"),
        (["--batch-size", "0"], "--batch-size must be positive, got 0"),
        (["--epochs", "0"], "--epochs must be positive, got 0"),
        (["--threads", "100000"], "--threads must be at most"),
        (["--model", "vgg"], "argument --model: invalid choice: 'vgg'"),
    ],
    ids=["lr", "batch-size", "epochs", "threads", "model"],
)
def test_usage_errors_name_the_option(train_script, argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        train_script.main(argv)
    assert info.value.code == train_script.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_compare_optimizers(data_dir, tmp_path, capsys):
    compare = _load_script("compare_optimizers")
    out = tmp_path / "compare.png"
    code = compare.main(
        [
            "--data-dir", str(data_dir), "--out", str(out), "--train-size", "48",
            "--test-size", "24", "--epochs", "1", "--batch-size", "16", "--threads", "1",
            "--optimizers", "sgd", "adam", "--activations", "relu", "sigmoid",
            "--lr", "adam=3e-3", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    assert [(r["activation"], r["optimizer"]) for r in results] == [
        ("relu", "sgd"), ("relu", "adam"), ("sigmoid", "sgd"), ("sigmoid", "adam"),
    ]  # fmt: skip
    assert results[1]["lr"] == 3e-3
    assert all(len(r["step_loss"]) == 3 and len(r["test_acc"]) == 1 for r in results)
    if importlib.util.find_spec("matplotlib") is not None:
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "done: 4 runs" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# The run directory and interrupts, from the command line
# ---------------------------------------------------------------------------------------------


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_unusable_run_directories_exit_2_before_training(train_script, data_dir, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert train_script.main(_args(data_dir, a_file, "--epochs", "1")) == train_script.EXIT_USAGE
    assert "is a file" in _one_error_line(capsys)

    out = tmp_path / "run"
    assert train_script.main(_args(data_dir, out, "--epochs", "1", "--limit", "32")) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    code = train_script.main(_args(data_dir, out, "--epochs", "1", "--limit", "32"))
    assert code == train_script.EXIT_USAGE
    err = _one_error_line(capsys)
    assert "not empty" in err and "--resume" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    code = train_script.main(_args(data_dir, out, "--epochs", "1", "--limit", "32", "--overwrite"))
    assert code == 0

    code = train_script.main(_args(data_dir, tmp_path / "none", "--epochs", "1", "--resume"))
    assert code == train_script.EXIT_USAGE
    assert "start a new run without --resume" in _one_error_line(capsys)
    assert not (tmp_path / "none").exists()
    with pytest.raises(SystemExit):
        train_script.main(_args(data_dir, out, "--resume", "--overwrite"))
    assert "exclude each other" in capsys.readouterr().err


def test_resume_against_another_model_or_a_truncated_run(train_script, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_script.main(_args(data_dir, out, "--epochs", "1", "--limit", "32")) == 0
    capsys.readouterr()
    argv = _args(data_dir, out, "--epochs", "2", "--limit", "32", "--resume")
    argv[argv.index("seed")] = "lenet"
    assert train_script.main(argv) == train_script.EXIT_USAGE
    assert "--model seed, not lenet" in _one_error_line(capsys)
    snapshot = out / "train_state.npz"
    snapshot.write_bytes(snapshot.read_bytes()[: snapshot.stat().st_size // 2])
    code = train_script.main(_args(data_dir, out, "--epochs", "2", "--limit", "32", "--resume"))
    assert code == train_script.EXIT_USAGE
    err = _one_error_line(capsys)
    assert "train_state.npz" in err and "not a readable" in err


def test_ctrl_c_in_the_first_epoch_saves_the_step_and_resume_matches(
    train_script, data_dir, tmp_path, capsys, monkeypatch
):
    straight = tmp_path / "straight"
    assert train_script.main(_args(data_dir, straight, "--epochs", "2", "--limit", "64")) == 0
    real_step = train_script.training.train_step
    calls = [0]

    def step_then_ctrl_c(*args):
        calls[0] += 1
        result = real_step(*args)
        if calls[0] == 2:  # the second of four steps of epoch 1
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(train_script.training, "train_step", step_then_ctrl_c)
    out = tmp_path / "run"
    capsys.readouterr()
    code = train_script.main(_args(data_dir, out, "--epochs", "2", "--limit", "64"))
    assert code == train_script.EXIT_INTERRUPTED
    err = _one_error_line(capsys)
    assert err == (f"interrupted: step 2 of epoch 1 is saved in {out}; continue with --resume")
    monkeypatch.undo()
    code = train_script.main(_args(data_dir, out, "--epochs", "2", "--limit", "64", "--resume"))
    assert code == 0
    assert "resumed" in capsys.readouterr().out
    strip = ("seconds", "images_per_s")
    resumed, full = (
        [{k: v for k, v in h.items() if k not in strip} for h in _history(d)]
        for d in (out, straight)
    )
    assert resumed == full
    with np.load(out / "checkpoint.npz") as a, np.load(straight / "checkpoint.npz") as b:
        for key in b.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
