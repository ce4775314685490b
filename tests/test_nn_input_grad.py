"""Layer mode's opt-out of the input gradient (a first layer, whose input is the data)."""

import numpy as np
import pytest

from fastconv import models, nn


def _grads(model):
    return [p.grad.copy() for p in model.parameters()]


@pytest.mark.parametrize("name", ["seed", "lenet", "bn"])
def test_sequential_without_input_grad_gives_the_same_parameter_gradients(name, rng):
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    g = rng.standard_normal((4, 10)).astype(np.float32)
    full, skipping = models.build(name, rng=0), models.build(name, rng=0)  # same dropout masks
    full(x)
    assert full.backward(g).shape == x.shape
    skipping(x)
    assert skipping.backward(g, input_grad=False) is None
    for got, want in zip(_grads(skipping), _grads(full), strict=True):
        np.testing.assert_array_equal(got, want)


def test_conv2d_without_input_grad(rng):
    conv = nn.Conv2d(3, 5, 3, padding=1, rng=0)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    g = rng.standard_normal((2, 5, 7, 6)).astype(np.float32)
    conv(x)
    conv.backward(g)
    want = (conv.weight.grad.copy(), conv.bias.grad.copy())
    conv.zero_grad()
    conv(x)
    assert conv.backward(g, input_grad=False) is None
    np.testing.assert_array_equal(conv.weight.grad, want[0])
    np.testing.assert_array_equal(conv.bias.grad, want[1])


def test_first_module_without_the_option_still_runs_its_backward(rng):
    # A first module that cannot skip anything (here Flatten) runs its backward; the
    # parameters after it get their gradients as usual.
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3, rng=0))
    x = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    model(x)
    assert model.backward(np.ones((2, 3), np.float32), input_grad=False) is None
    expected = np.broadcast_to(x.reshape(2, -1).sum(axis=0), (3, 12))  # ones @ x for each row
    np.testing.assert_allclose(model[1].weight.grad, expected, rtol=1e-6)
