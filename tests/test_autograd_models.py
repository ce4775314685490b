"""fastconv.models.inception, the autograd example network: the training loop's layer-mode step
and an autograd step agree, and its gradients match its PyTorch twin."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from fastconv import Tensor, models, nn, optim, training
from tests.helpers import assert_close32

NETS_PY = Path(__file__).resolve().parent.parent / "benchmarks" / "_nets.py"


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n)


def test_inception_parameter_count_and_block_shapes():
    model = models.inception(rng=0)
    assert sum(p.data.size for p in model.parameters()) == 468_394
    block = models.Inception(6, 2, 3, 4, 5)
    assert block(Tensor(np.zeros((2, 6, 5, 5), np.float32))).shape == (2, 11, 5, 5)


def test_train_step_and_autograd_step_agree():
    """``training.train_step`` (layer mode: the Inception blocks run their recorded graphs)
    and a step through ``loss.backward()`` move the weights identically."""
    layer_model, graph_model = models.inception(rng=1), models.inception(rng=1)
    layer_opt = optim.SGD(layer_model.parameters(), lr=0.05, momentum=0.9)
    graph_opt = optim.SGD(graph_model.parameters(), lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    for seed in range(2):
        x, y = _batch(seed=seed)
        loss, _ = training.train_step(layer_model, criterion, layer_opt, x, y)
        graph_loss = criterion(graph_model(Tensor(x)), y)
        graph_opt.zero_grad()
        graph_loss.backward()
        graph_opt.step()
        np.testing.assert_allclose(graph_loss.item(), loss, rtol=1e-6)
    for (name, a), b in zip(layer_model.state_dict().items(), graph_model.state_dict().values(),
                            strict=True):  # fmt: skip
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=name)


def test_inception_gradients_match_torch_twin():
    torch = pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("_nets", NETS_PY)
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    model, tmodel = models.inception(rng=0), nets.torch_model("inception")
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    x, y = _batch()
    loss = nn.CrossEntropyLoss()(model(Tensor(x)), y)
    loss.backward()
    tloss = torch.nn.functional.cross_entropy(tmodel(torch.from_numpy(x)), torch.from_numpy(y))
    tloss.backward()
    assert_close32(loss.data, tloss)
    tparams = dict(tmodel.named_parameters())
    for name, p in model.named_parameters():
        assert_close32(p.grad, tparams[name].grad)


def test_inception_checkpoint_round_trip(tmp_path):
    import fastconv

    model = models.inception(rng=2)
    x, _ = _batch(4)
    expected = model.eval()(Tensor(x)).data
    fastconv.save(model, tmp_path / "inception.npz")
    again = models.inception(rng=3)
    fastconv.load(again, tmp_path / "inception.npz")
    np.testing.assert_array_equal(again.eval()(x), expected)  # layer mode, same values
