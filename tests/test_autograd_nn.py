"""nn modules in autograd mode: gradient checks of every module (float64), the same results as
layer mode, parity with PyTorch on networks Sequential cannot express (Inception, DenseNet, an
auxiliary head, shared modules), containers, and layer mode's refusal of a module run twice."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import Tensor, gradcheck, nn
from tests.helpers import assert_close32


def permuted(rng, *shape):
    """Distinct values (no tied maxima for max pooling), standardised."""
    x = rng.permutation(int(np.prod(shape))).reshape(shape).astype(np.float64)
    return (x - x.mean()) / x.std()


def check_module(module, x, target=None):
    """gradcheck of ``module`` in autograd mode: the input and every parameter."""
    module.double()
    params = list(module.parameters())
    seed = getattr(module, "rng", None)

    def fn(x, *weights):
        for p, w in zip(params, weights, strict=True):
            p.data, p.grad = w, None
        if seed is not None:
            module.rng = np.random.default_rng(0)  # the same dropout mask for every evaluation
        xt = Tensor(x, requires_grad=True)
        out = module(xt) if target is None else module(xt, target)

        def backward(g):
            out.backward(g)
            return [xt.grad, *(p.grad for p in params)]

        return out.data, backward

    assert gradcheck(fn, [x, *(p.data for p in params)], atol=1e-7, rtol=1e-6)


MODULES = {
    "conv": (lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1, rng=0), (2, 2, 5, 5)),
    "conv_groups_nobias": (lambda: nn.Conv2d(4, 2, (1, 3), groups=2, bias=False, rng=0),
                           (2, 4, 3, 4)),
    "linear_3d": (lambda: nn.Linear(3, 2, rng=0), (2, 4, 3)),
    "bn2d": (lambda: nn.BatchNorm2d(3), (4, 3, 2, 2)),
    "bn1d_eval": (lambda: nn.BatchNorm1d(3).eval(), (4, 3)),
    "maxpool": (lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 2, 5, 5)),
    "maxpool_eval": (lambda: nn.MaxPool2d(2).eval(), (1, 2, 4, 4)),
    "avgpool": (lambda: nn.AvgPool2d(3, 2, padding=1, count_include_pad=False), (2, 2, 5, 5)),
    "adaptive": (lambda: nn.AdaptiveAvgPool2d((2, None)), (2, 2, 5, 3)),
    "relu": (lambda: nn.ReLU(), (3, 4)),
    "leaky_relu": (lambda: nn.LeakyReLU(0.2), (3, 4)),
    "sigmoid": (lambda: nn.Sigmoid(), (3, 4)),
    "tanh": (lambda: nn.Tanh(), (3, 4)),
    "flatten": (lambda: nn.Flatten(), (2, 3, 2)),
    "dropout": (lambda: nn.Dropout(0.4, rng=0), (3, 5)),
    "dropout_eval": (lambda: nn.Dropout(0.4, rng=0).eval(), (3, 5)),
    "identity": (lambda: nn.Identity(), (3, 2)),
    "sequential": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3, rng=0), nn.ReLU(),
                                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2, 3, rng=1)),
                   (2, 1, 4, 4)),
    "residual": (lambda: nn.Residual(nn.Conv2d(2, 3, 3, padding=1, rng=0),
                                     nn.Conv2d(2, 3, 1, rng=1)), (2, 2, 3, 3)),
}  # fmt: skip


@pytest.mark.parametrize("make, shape", MODULES.values(), ids=MODULES.keys())
def test_module_gradcheck(make, shape, rng):
    check_module(make(), permuted(rng, *shape))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_losses_gradcheck(reduction, rng):
    target = np.array([0, 2, 1, 2])
    check_module(nn.CrossEntropyLoss(reduction), rng.standard_normal((4, 3)), target)
    check_module(nn.CrossEntropyLoss(reduction), rng.standard_normal((4, 3)), Tensor(target))
    check_module(nn.MSELoss(reduction), rng.standard_normal((4, 3)), rng.standard_normal((4, 3)))


@pytest.mark.parametrize("make, shape", MODULES.values(), ids=MODULES.keys())
def test_autograd_mode_equals_layer_mode(make, shape, rng):
    x = permuted(rng, *shape).astype(np.float32)
    g = rng.standard_normal(make()(x).shape).astype(np.float32)
    layer, graph = make(), make()
    y = layer(x)
    grad_x = layer.backward(g)
    xt = Tensor(x, requires_grad=True)
    out = graph(xt)
    assert isinstance(out, Tensor) and out.requires_grad
    out.backward(g)
    np.testing.assert_array_equal(out.data, y)
    np.testing.assert_array_equal(xt.grad, grad_x)
    for (name, p), q in zip(layer.named_parameters(), graph.parameters(), strict=True):
        np.testing.assert_array_equal(q.grad, p.grad, err_msg=name)
    for (name, b), c in zip(layer.named_buffers(), graph.buffers(), strict=True):
        np.testing.assert_array_equal(c, b, err_msg=name)


def test_loss_values_and_targets(rng):
    torch = pytest.importorskip("torch")
    logits, target = rng.standard_normal((5, 4)), np.array([0, 3, 1, 1, 2])
    x = Tensor(logits, requires_grad=True)
    loss = nn.CrossEntropyLoss()(x, Tensor(target))
    assert loss.shape == () and loss.dtype == np.float64 and loss.requires_grad
    tx = torch.tensor(logits, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tx, torch.from_numpy(target))
    loss.backward()
    tloss.backward()
    np.testing.assert_allclose(loss.item(), tloss.item(), rtol=1e-12)
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-10, atol=1e-14)
    a, b = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    for reduction in ("mean", "sum", "none"):
        expected = torch.nn.functional.mse_loss(
            torch.from_numpy(a), torch.from_numpy(b), reduction=reduction
        )
        crit = nn.MSELoss(reduction)
        np.testing.assert_allclose(crit(Tensor(a), b).data, expected.numpy(), rtol=1e-12)
        np.testing.assert_allclose(crit(a, b), expected.numpy(), rtol=1e-12)  # layer mode
        grad = crit.backward(None if reduction != "none" else np.ones((3, 2)))
        scale = 2 / a.size if reduction == "mean" else 2
        np.testing.assert_allclose(grad, scale * (a - b), rtol=1e-12)
    with pytest.raises(ValueError, match="target must have input's shape"):
        nn.MSELoss()(Tensor(a), b[:2])
    with pytest.raises(TypeError, match="target must be an integer"):
        nn.CrossEntropyLoss()(x, Tensor(logits[:, 0]))  # (N, C) floats are probabilities


# ---- networks that Sequential cannot express, against PyTorch -------------------------------


def _inception(nn, cat):
    class Inception(nn.Module):
        def __init__(self, c_in):
            super().__init__()
            self.b1 = nn.Conv2d(c_in, 4, 1)
            self.b2 = nn.Sequential(nn.Conv2d(c_in, 3, 1), nn.ReLU(), nn.Conv2d(3, 5, 3, padding=1))
            self.b3 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(c_in, 2, 1))

        def forward(self, x):
            return cat([self.b1(x), self.b2(x), self.b3(x)], 1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
            self.block = Inception(6)
            self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                      nn.Linear(11, 5))  # fmt: skip

        def forward(self, x):
            return self.head(self.block(self.stem(x)))

    return Net()


def _densenet(nn, cat):
    class DenseBlock(nn.Module):
        def __init__(self, c_in, growth, n):
            super().__init__()
            self.layers = nn.ModuleList(
                nn.Sequential(nn.BatchNorm2d(c_in + i * growth), nn.ReLU(),
                              nn.Conv2d(c_in + i * growth, growth, 3, padding=1, bias=False))
                for i in range(n)
            )  # fmt: skip

        def forward(self, x):
            features = [x]
            for layer in self.layers:
                features.append(layer(cat(features, 1)))
            return cat(features, 1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = DenseBlock(2, 3, 3)
            self.pool = nn.AvgPool2d(2)
            self.fc = nn.Linear(11 * 3 * 3, 5)

        def forward(self, x):
            return self.fc(self.pool(self.dense(x)).flatten(1))

    return Net()


def _aux_head(nn, cat):
    class Net(nn.Module):
        """A trunk, a main head and an auxiliary head; one ReLU instance used three times and
        one Linear applied twice (weight tying)."""

        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()
            self.trunk = nn.Conv2d(2, 4, 3, padding=1)
            self.body = nn.Conv2d(4, 4, 3, stride=2, padding=1)
            self.aux = nn.ModuleDict({"pool": nn.AdaptiveAvgPool2d(2), "fc": nn.Linear(16, 5)})
            self.tied = nn.Linear(4, 4)
            self.fc = nn.Linear(4, 5)

        def forward(self, x):
            h = self.act(self.trunk(x))
            aux = self.aux["fc"](self.aux["pool"](h).flatten(1))
            z = self.act(self.body(h)).mean(dim=(2, 3))
            z = self.act(self.tied(self.tied(z)))
            return self.fc(z), aux

    return Net()


def _loss(out, target, cross_entropy):
    if isinstance(out, tuple):  # the auxiliary head's loss weighs 0.3, as in GoogLeNet
        return cross_entropy(out[0], target) + 0.3 * cross_entropy(out[1], target)
    return cross_entropy(out, target)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    "build", [_inception, _densenet, _aux_head], ids=["inception", "dense", "aux_head"]
)
def test_networks_match_torch(build, dtype, rng):
    torch = pytest.importorskip("torch")
    fastconv.init.manual_seed(0)
    model = build(nn, fastconv.cat).to(dtype)
    tmodel = build(torch.nn, torch.cat).to(getattr(torch, dtype))
    state = model.state_dict()
    assert list(state) == list(tmodel.state_dict())
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    x = rng.standard_normal((4, 2, 6, 6)).astype(dtype)
    target = np.array([0, 4, 2, 1])

    xt = Tensor(x, requires_grad=True)
    out = model(xt)
    loss = _loss(out, Tensor(target), nn.CrossEntropyLoss())
    loss.backward()
    txt = torch.tensor(x, requires_grad=True)
    tout = tmodel(txt)
    tloss = _loss(tout, torch.from_numpy(target), torch.nn.CrossEntropyLoss())
    tloss.backward()

    outs = out if isinstance(out, tuple) else (out,)
    touts = tout if isinstance(tout, tuple) else (tout,)
    pairs = [(o.data, t) for o, t in zip(outs, touts, strict=True)]
    pairs += [(loss.data, tloss), (xt.grad, txt.grad)]
    tparams = dict(tmodel.named_parameters())
    pairs += [(p.grad, tparams[name].grad) for name, p in model.named_parameters()]
    tstate = tmodel.state_dict()
    pairs += [(v, tstate[k]) for k, v in model.state_dict().items()]  # running statistics
    for actual, expected in pairs:
        if actual.dtype.kind == "f":
            assert actual.dtype == np.dtype(dtype)
        if dtype == "float64":
            expected = expected.detach().numpy()
            np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-10)
        else:
            assert_close32(actual, expected)


def test_forward_only_module_trains_in_layer_mode(rng):
    """A module written with Tensor operations runs in layer mode too (train_step's path):
    ``backward`` runs its recorded graph and returns the input gradient."""
    fastconv.init.manual_seed(0)
    model = _inception(nn, fastconv.cat)
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    g = rng.standard_normal((2, 5)).astype(np.float32)
    y = model(x)
    assert isinstance(y, np.ndarray)
    grad_x = model.backward(g)
    layer_grads = [p.grad for p in model.parameters()]
    model.zero_grad()
    xt = Tensor(x, requires_grad=True)
    model(xt).backward(g)
    np.testing.assert_array_equal(grad_x, xt.grad)
    for a, b in zip(layer_grads, (p.grad for p in model.parameters()), strict=True):
        np.testing.assert_array_equal(a, b)


def test_layer_mode_refuses_a_module_run_twice_before_its_backward(rng):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3, rng=0)

        def forward(self, x):
            return self.fc(self.fc(x))

        def backward(self, grad_out):
            return self.fc.backward(self.fc.backward(grad_out))

    model, x = Twice(), rng.standard_normal((2, 3)).astype(np.float32)
    y = model(x)
    with pytest.raises(RuntimeError, match="Linear.backward.*ran 2 times.*fastconv.Tensor"):
        model.backward(np.ones_like(y))
    # Autograd mode allows it: both uses of the weight get their gradient.
    model.fc.weight.grad = None
    xt = Tensor(x, requires_grad=True)
    model(xt).sum().backward()
    w, b = model.fc.weight.data, model.fc.bias.data
    h = x @ w.T + b
    gh = np.ones((2, 3), np.float32) @ w
    np.testing.assert_allclose(model.fc.weight.grad, np.ones((3, 2)) @ h + gh.T @ x, rtol=1e-5)
    # Separate top-level calls too (issue 11, family 8): forward(x1); forward(x2); backward(g)
    # would silently give x2's gradient, so it raises, and the next forward starts afresh.
    relu = nn.ReLU()
    relu(-x)
    relu(x)
    with pytest.raises(RuntimeError, match="ReLU.backward.*ran 2 times since its last backward"):
        relu.backward(np.ones_like(x))
    relu(x)
    np.testing.assert_array_equal(relu.backward(np.ones_like(x)), (x > 0).astype(np.float32))
    # Forwards under no_grad keep nothing and do not count.
    with fastconv.no_grad():
        relu(-x)
    relu(x)
    np.testing.assert_array_equal(relu.backward(np.ones_like(x)), (x > 0).astype(np.float32))


def test_containers_state_dict_keys_match_torch():
    torch = pytest.importorskip("torch")

    def build(nn):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.blocks = nn.ModuleList([nn.Linear(2, 3), nn.Identity()])
                self.blocks.append(nn.BatchNorm1d(3))
                self.heads = nn.ModuleDict({"a": nn.Linear(3, 1), "b": nn.Linear(3, 2)})
                self.heads["c"] = nn.Sequential(nn.Linear(3, 3), nn.ReLU())

        return Net()

    ours, theirs = build(nn).state_dict(), build(torch.nn).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == tuple(theirs[k].shape) for k in ours)


def test_module_list_and_dict_protocols():
    a, b, c = nn.Linear(1, 1), nn.ReLU(), nn.Identity()
    ml = nn.ModuleList([a, b])
    ml.insert(1, c)
    assert list(ml) == [a, c, b] and len(ml) == 3 and ml[-1] is b
    assert list(ml[1:]) == [c, b]
    ml[1] = b  # one instance twice is allowed, as in PyTorch
    assert list(ml) == [a, b, b]
    del ml[0]
    assert list(ml) == [b, b] and list(ml._modules) == ["0", "1"]
    with pytest.raises(IndexError):
        ml[2]
    with pytest.raises(TypeError, match="must be a Module"):
        ml.append(3)
    md = nn.ModuleDict([("x", a), ("y", b)])
    assert list(md) == ["x", "y"] and "x" in md and md["y"] is b and len(md) == 2
    assert list(md.keys()) == ["x", "y"] and list(md.values()) == [a, b]
    del md["x"]
    assert list(md.items()) == [("y", b)]
    with pytest.raises(KeyError):
        md["x"]
    x = Tensor(np.ones(2))
    assert nn.Identity(3, k=4)(x) is x


def test_no_grad_through_a_model_records_nothing(rng):
    model = _inception(nn, fastconv.cat)
    x = Tensor(rng.standard_normal((2, 2, 5, 5)).astype(np.float32))
    with fastconv.no_grad():
        out = model(x)
    assert not out.requires_grad and out.is_leaf
    np.testing.assert_allclose(out.data, model(x).data, rtol=1e-6)
    assert model(x).requires_grad  # parameters require grad, so a graph is recorded


def test_parameters_in_tensor_expressions_and_tied_weights_match_torch(rng):
    """A Parameter is a Tensor: a tied autoencoder ``decode(encode(x))`` with ``W`` and
    ``W.T``, written with operators, gets the sum of both uses' gradients."""
    torch = pytest.importorskip("torch")
    enc = nn.Linear(5, 3, dtype=np.float64, rng=0)
    x = rng.standard_normal((4, 5))
    xt = Tensor(x)
    h = enc(xt).tanh()
    recon = h @ enc.weight  # the decoder is enc.weight transposed: tied
    loss = nn.MSELoss()(recon, x) + (enc.weight**2).sum() * 1e-2
    loss.backward()
    w = torch.tensor(enc.weight.data, requires_grad=True)
    b = torch.tensor(enc.bias.data, requires_grad=True)
    th = torch.tanh(torch.from_numpy(x) @ w.T + b)
    tloss = torch.nn.functional.mse_loss(th @ w, torch.from_numpy(x)) + (w**2).sum() * 1e-2
    tloss.backward()
    np.testing.assert_allclose(loss.item(), tloss.item(), rtol=1e-12)
    np.testing.assert_allclose(enc.weight.grad, w.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(enc.bias.grad, b.grad.numpy(), rtol=1e-10, atol=1e-12)
