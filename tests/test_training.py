"""fastconv.training: the loop learns, checkpoints every epoch, resumes exactly, stops on NaN.

A tiny network on 240 synthetic 12x12 images keeps every test to a fraction of a second once
the kernels are compiled.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import fastconv
from fastconv import models, nn, training
from fastconv.datasets import DataLoader

TIMINGS = ("seconds", "images_per_s")  # the only history fields that differ between runs


def _data(n, seed):
    """Class ``k`` of 4: noise plus a bright row ``2k + 2``."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = rng.standard_normal((n, 1, 12, 12)).astype(np.float32)
    x[np.arange(n), 0, 2 * y + 2, :] += 3
    return x, y.astype(np.int64)


def _setup(schedule="cosine", epochs=3, lr=0.05):
    """Model (with BatchNorm and Dropout), optimizer, scheduler and loaders, all seeded."""
    rng = np.random.default_rng(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=rng), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.25, rng=rng), nn.Linear(4 * 6 * 6, 4, rng=rng),
    )  # fmt: skip
    optimizer = training.make_optimizer("momentum", model.parameters(), lr)
    scheduler = training.make_scheduler(schedule, optimizer, epochs)
    train_loader = DataLoader(*_data(240, 1), 32, seed=0)
    test_loader = DataLoader(*_data(80, 2), 40, shuffle=False)
    return model, optimizer, scheduler, train_loader, test_loader


def _run(out, until, resume=False, **kw):
    """Train to epoch ``until`` in ``out``; ``kw`` go to ``_setup`` (the schedule spans 3)."""
    model, optimizer, scheduler, train_loader, test_loader = _setup(**kw)
    with fastconv.threads(1):  # the loop's exactness, not the kernels' thread count, is tested
        history = training.train(
            model, optimizer, train_loader, test_loader, until, scheduler=scheduler,
            out_dir=out, resume=resume, config={"run": "tiny"}, progress=False, log=None,
        )  # fmt: skip
    return model, history


def _without_timings(history):
    return [{k: v for k, v in h.items() if k not in TIMINGS} for h in history]


def test_loss_goes_down_and_files_are_written(tmp_path):
    model, history = _run(tmp_path / "run", 3)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["test_acc"] > 0.9
    assert [h["lr"] for h in history] == pytest.approx([0.05, 0.0375, 0.0125])  # cosine, T=3
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert saved == {"config": {"run": "tiny"}, "epochs": history}
    state = training.read_state(tmp_path / "run")
    assert state["epoch"] == 3 and state["history"] == history
    loaded = fastconv.load(tmp_path / "run" / "checkpoint.npz")
    assert list(loaded) == list(model.state_dict())
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"checkpoint.npz", "train_state.npz", "history.json"} <= names
    assert not any(name.endswith(".tmp") for name in names)


@pytest.mark.parametrize("schedule", ["cosine", "step", "none"])
def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path, schedule):
    straight, straight_history = _run(tmp_path / "straight", 3, schedule=schedule)
    _run(tmp_path / "split", 1, schedule=schedule)
    _run(tmp_path / "split", 2, resume=True, schedule=schedule)
    resumed, resumed_history = _run(tmp_path / "split", 3, resume=True, schedule=schedule)
    assert _without_timings(resumed_history) == _without_timings(straight_history)
    for key, value in straight.state_dict().items():  # bit for bit, buffers included
        np.testing.assert_array_equal(resumed.state_dict()[key], value, err_msg=key)
    a = training.read_checkpoint(tmp_path / "straight")[1]  # the optimizer's state dicts
    b = training.read_checkpoint(tmp_path / "split")[1]
    assert list(a) == list(b) and "state.0.momentum_buffer" in a
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    a, b = (training.read_state(tmp_path / d) for d in ("straight", "split"))
    assert a["loader_rng"] == b["loader_rng"] and a["module_rngs"] == b["module_rngs"]


def test_resume_without_a_run_and_with_another_network(tmp_path):
    model, optimizer, scheduler, train_loader, _ = _setup()
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        training.restore(tmp_path / "empty", model, optimizer, train_loader, scheduler)
    assert not (tmp_path / "empty").exists()
    _run(tmp_path / "run", 1)
    other = models.seed()
    with pytest.raises(ValueError, match="dropout stream"):
        training.restore(
            tmp_path / "run", other, training.make_optimizer("sgd", other.parameters())
        )
    fastconv.save({"state": np.frombuffer(b"{}", np.uint8)}, tmp_path / "run" / "train_state.npz")
    with pytest.raises(ValueError, match="not a fastconv training state"):
        training.read_state(tmp_path / "run")


@pytest.mark.filterwarnings("error::RuntimeWarning")  # the NaN stop is its own message, no warning
def test_nan_stop_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    _run(out, 1, schedule="none")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    model, optimizer, scheduler, train_loader, test_loader = _setup(schedule="none")
    history = training.restore(out, model, optimizer, train_loader, scheduler)
    optimizer.param_groups[0]["lr"] = 1e30
    with pytest.raises(training.NonFiniteLossError) as info:
        training.train(
            model, optimizer, train_loader, test_loader, 3, out_dir=out, history=history,
            progress=False, log=None,
        )  # fmt: skip
    message = str(info.value)
    assert "training loss became" in message or "weights became" in message
    assert "in epoch 2 (lr 1e+30)" in message and "checkpoint of epoch 1" in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_without_out_dir_nothing_is_written_and_log_is_called(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, optimizer, _, train_loader, test_loader = _setup()
    lines = []
    history = training.train(
        model, optimizer, train_loader, None, 2, progress=False, log=lines.append
    )
    assert list(tmp_path.iterdir()) == []
    assert [h["epoch"] for h in history] == [1, 2] and "test_acc" not in history[0]
    assert len(lines) == 2 and lines[0].startswith("epoch 1: train loss ")
    with pytest.raises(ValueError, match="resume=True needs out_dir"):
        training.train(model, optimizer, train_loader, test_loader, 2, resume=True)


def test_evaluate_counts_and_restores_the_mode():
    model, _, _, _, test_loader = _setup()
    model.train()
    loss, acc = training.evaluate(model, test_loader)
    assert model.training
    model.eval()
    logits = model(test_loader.x)
    expected = nn.CrossEntropyLoss()(logits, test_loader.y)
    assert loss == pytest.approx(expected, rel=1e-6)
    assert acc == np.mean(logits.argmax(axis=1) == test_loader.y)


def test_train_step_refuses_a_nan_loss_before_changing_weights():
    model, optimizer, _, train_loader, _ = _setup()
    x, y = next(iter(train_loader))
    before = {k: v.copy() for k, v in model.state_dict().items() if k.endswith("weight")}
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(training.NonFiniteLossError, match="the training loss became nan"):
        training.train_step(model, nn.CrossEntropyLoss(), optimizer, x, y)
    for key, value in before.items():
        np.testing.assert_array_equal(model.state_dict()[key], value, err_msg=key)


def test_optimizers_and_schedules_by_name():
    params = models.seed(rng=0).parameters()
    assert training.make_optimizer("adam", params).param_groups[0]["lr"] == 1e-3
    sgd = training.make_optimizer("momentum", models.seed(rng=0).parameters(), 0.2)
    assert sgd.param_groups[0]["lr"] == 0.2 and sgd.param_groups[0]["momentum"] == 0.9
    assert training.make_scheduler("none", sgd, 5) is None
    with pytest.raises(ValueError, match="optimizer must be one of sgd, momentum, adam"):
        training.make_optimizer("rmsprop", params)
    with pytest.raises(ValueError, match="schedule must be one of none, cosine, step"):
        training.make_scheduler("linear", sgd, 5)
    for epochs in (0, -1):
        with pytest.raises(ValueError, match="epochs must be a positive int"):
            training.make_scheduler("cosine", sgd, epochs)
    with pytest.raises(TypeError, match="epochs must be an int"):
        training.make_scheduler("step", sgd, 1.5)
    for limit in ("limit", "test_limit"):
        with pytest.raises(ValueError, match=f"{limit} must be a positive int"):
            training.load_data("mnist", root="/nonexistent", **{limit: -5})


def test_plain_progress_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    bar = training.Progress(total=2, desc="epoch 1/1")
    bar.update(loss="1.0000")
    bar.update(loss="0.5000")
    bar.close()
    err = capsys.readouterr().err
    assert "\repoch 1/1 1/2 loss=1.0000" in err and err.endswith("\n")
