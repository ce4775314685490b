"""fastconv.models: every network builds, runs forward and backward, is reproducible from its
seed, and has the same state dict keys and shapes as its PyTorch twin (the benchmarks' one)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from fastconv import models, nn

NETS_PY = Path(__file__).resolve().parent.parent / "benchmarks" / "_nets.py"


@pytest.mark.parametrize("name", ["seed", "lenet", "bn", "resnet"])
def test_models_forward_backward(name):
    model = models.build(name, rng=1)
    again = models.build(name, rng=1).state_dict()
    for key, value in model.state_dict().items():  # same seed, same weights
        np.testing.assert_array_equal(value, again[key], err_msg=key)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    logits = model(x)
    assert logits.shape == (2, 10) and logits.dtype == np.float32
    criterion = nn.CrossEntropyLoss()
    assert np.isfinite(criterion(logits, np.array([3, 7])))
    model.backward(criterion.backward())
    assert all(p.grad is not None and p.grad.shape == p.data.shape for p in model.parameters())


@pytest.mark.parametrize("name", models.NAMES)
def test_builders_by_name_and_by_function(name):
    model = getattr(models, name)(rng=np.random.default_rng(3))
    assert isinstance(model, nn.Sequential)
    by_name = models.build(name, rng=3)  # an int seed is one stream for the whole network
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, by_name.state_dict()[key], err_msg=key)
    other = models.build(name, rng=4).state_dict()
    assert not np.array_equal(other["0.weight"], model.state_dict()["0.weight"])


def test_activation_and_errors():
    model = models.lenet(activation=nn.Sigmoid, rng=0)
    assert sum(isinstance(m, nn.Sigmoid) for m in model.modules()) == 3
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    names = "seed, lenet, bn, resnet, inception"
    with pytest.raises(ValueError, match=f"name must be one of {names}, got 'vgg'"):
        models.build("vgg")


@pytest.mark.parametrize(
    "name, n_params", [("seed", 12_166), ("lenet", 421_642), ("bn", 421_834), ("resnet", 77_290)]
)
def test_parameter_counts(name, n_params):  # the numbers the docstrings and README give
    assert sum(p.data.size for p in models.build(name).parameters()) == n_params


@pytest.mark.parametrize("name", models.NAMES)
def test_state_dict_matches_torch_twin(name):
    torch = pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("_nets", NETS_PY)
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    tnet = nets.torch_model(name)
    tstate, state = tnet.state_dict(), models.build(name, rng=0).state_dict()
    assert list(state) == list(tstate)
    for key, value in state.items():
        assert value.shape == tuple(tstate[key].shape), key
        assert value.dtype == tstate[key].numpy().dtype, key
    # Both ways: PyTorch loads fastconv's weights strictly, and the outputs agree in eval mode.
    tnet.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    model = models.build(name, rng=0).eval()
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    expected = tnet.eval()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(model(x), expected, rtol=1e-4, atol=1e-5)
