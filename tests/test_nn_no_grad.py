"""Layer mode under ``fastconv.no_grad()``: modules keep nothing for a backward."""

import gc
import weakref

import numpy as np
import pytest

import fastconv
from fastconv import models


def test_layer_mode_keeps_no_input_under_no_grad(rng):
    model = models.lenet(rng=0).eval()
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    with fastconv.no_grad():
        y = model(x)
    assert all(m._ctx is None for m in model.modules())
    with pytest.raises(RuntimeError):
        model.backward(np.ones_like(y))
    model.train()
    y2 = model(x)  # outside no_grad the usual layer mode is back
    assert model.backward(np.ones_like(y2)).shape == x.shape


def test_activations_are_freed_as_the_forward_goes(rng):
    # The first conv's output must not outlive the next layer's call under no_grad.
    model = models.lenet(rng=0).eval()
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    seen = []
    conv1 = model[0]
    forward = conv1.forward

    def spy(inp):
        out = forward(inp)
        seen.append(weakref.ref(out))
        return out

    conv1.forward = spy
    with fastconv.no_grad():
        model(x)
    gc.collect()
    assert seen and seen[0]() is None


def test_forward_only_module_records_no_graph_under_no_grad(rng):
    # models.inception's blocks define only forward (Tensor operations): in layer mode they
    # record a graph for backward, except under no_grad (evaluation).
    model = models.inception(rng=0).eval()
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    with fastconv.no_grad():
        y = model(x)
    assert all(m._ctx is None for m in model.modules())
    model.train()
    np.testing.assert_allclose(model.eval()(x), y, rtol=1e-6)
    assert model[4]._ctx is not None  # outside no_grad the block keeps its graph
