"""fastconv.nn against PyTorch: whole networks (outputs, loss, every gradient, state_dict
keys, repr, default initialisation), and a short training run on real data."""

import math

import numpy as np
import pytest

import fastconv.functional as F
from fastconv import nn

# ---------------------------------------------------------------------------------------------
# PyTorch parity of whole networks
# ---------------------------------------------------------------------------------------------


def _lenet(lib, **kw):
    return lib.Sequential(
        lib.Conv2d(1, 32, 3, padding=1, **kw),
        lib.ReLU(),
        lib.MaxPool2d(2),
        lib.Conv2d(32, 64, 3, padding=1, **kw),
        lib.ReLU(),
        lib.MaxPool2d(2),
        lib.Flatten(),
        lib.Linear(3136, 128, **kw),
        lib.ReLU(),
        lib.Linear(128, 10, **kw),
    )


def _bn_net(lib, **kw):
    return lib.Sequential(
        lib.Conv2d(1, 32, 3, padding=1, **kw),
        lib.BatchNorm2d(32, **kw),
        lib.ReLU(),
        lib.MaxPool2d(2),
        lib.Conv2d(32, 64, 3, padding=1, **kw),
        lib.BatchNorm2d(64, **kw),
        lib.ReLU(),
        lib.MaxPool2d(2),
        lib.Flatten(),
        lib.Dropout(0.25),
        lib.Linear(3136, 128, **kw),
        lib.ReLU(),
        lib.Linear(128, 10, **kw),
    )


def _res_net(lib, torch=None, **kw):
    """Two residual stages (identity shortcut, then a strided 1x1 conv shortcut) + head."""
    if torch is None:
        residual = nn.Residual
    else:

        class TorchResidual(torch.nn.Module):
            def __init__(self, block, shortcut=None):
                super().__init__()
                self.block = block
                self.shortcut = shortcut

            def forward(self, x):
                return self.block(x) + (x if self.shortcut is None else self.shortcut(x))

        residual = TorchResidual

    def block(c_in, c_out, stride):
        return lib.Sequential(
            lib.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False, **kw),
            lib.BatchNorm2d(c_out, **kw),
            lib.ReLU(),
            lib.Conv2d(c_out, c_out, 3, padding=1, bias=False, **kw),
            lib.BatchNorm2d(c_out, **kw),
        )

    return lib.Sequential(
        lib.Conv2d(1, 8, 3, padding=1, **kw),
        lib.ReLU(),
        residual(block(8, 8, 1)),
        lib.ReLU(),
        residual(
            block(8, 16, 2),
            lib.Sequential(
                lib.Conv2d(8, 16, 1, stride=2, bias=False, **kw), lib.BatchNorm2d(16, **kw)
            ),
        ),
        lib.ReLU(),
        lib.AdaptiveAvgPool2d(1),
        lib.Flatten(),
        lib.Linear(16, 10, **kw),
    )


NETWORKS = {
    "lenet": lambda lib, torch, **kw: _lenet(lib, **kw),
    "bn": lambda lib, torch, **kw: _bn_net(lib, **kw),
    "residual": lambda lib, torch, **kw: _res_net(lib, torch, **kw),
}


def _torch_and_fastconv(torch, name, dtype):
    torch.manual_seed(0)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    tnet = NETWORKS[name](torch.nn, torch, dtype=tdtype)
    net = NETWORKS[name](nn, None, dtype=dtype)
    # Non-trivial BN statistics and affine parameters, so eval mode tests them.
    with torch.no_grad():
        for m in tnet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2)
    result = net.load_state_dict({k: v.detach().numpy() for k, v in tnet.state_dict().items()})
    assert result == ([], [])
    return tnet, net


def _torch_mask(torch, mask):
    class Mask(torch.nn.Module):
        def forward(self, x):
            return x * torch.from_numpy(mask)

    return Mask()


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", ["lenet", "bn", "residual"])
def test_network_matches_torch(name, mode, dtype):
    torch = pytest.importorskip("torch")
    tnet, net = _torch_and_fastconv(torch, name, dtype)
    if name == "bn" and mode == "train":
        # Dropout(0.25) is random: seed fastconv's layer, replay its mask and apply that mask
        # in PyTorch instead of torch's own dropout.
        net[9].rng = np.random.default_rng(11)
        mask = F.dropout(np.ones((4, 3136), dtype), 0.25, True, np.random.default_rng(11))[1]
        tnet[9] = _torch_mask(torch, mask)
    tnet.train(mode == "train")
    net.train(mode == "train")

    rng = np.random.default_rng(42)
    x = rng.standard_normal((4, 1, 28, 28)).astype(dtype)
    target = rng.integers(0, 10, 4)
    tx = torch.tensor(x, requires_grad=True)
    tlogits = tnet(tx)
    tloss = torch.nn.functional.cross_entropy(tlogits, torch.tensor(target))
    tloss.backward()

    crit = nn.CrossEntropyLoss()
    logits = net(x)
    loss = crit(logits, target)
    grad_x = net.backward(crit.backward())

    rtol, atol = (1e-8, 1e-10) if dtype == np.float64 else (1e-4, 1e-5)

    def close(actual, expected, what):
        expected = expected.detach().numpy() if hasattr(expected, "detach") else expected
        assert actual.dtype == dtype, what
        scale = max(float(np.abs(expected).max()), 1.0)
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=what)

    close(logits, tlogits, "logits")
    assert loss == pytest.approx(tloss.item(), rel=rtol)
    close(grad_x, tx.grad, "grad of the input")
    tparams = dict(tnet.named_parameters())
    assert [n for n, _ in net.named_parameters()] == list(tparams)
    for pname, p in net.named_parameters():
        close(p.grad, tparams[pname].grad, f"grad of {pname}")
    tstate = tnet.state_dict()
    for key, value in net.state_dict().items():  # running statistics after the step
        if value.dtype.kind == "f":
            close(value, tstate[key], key)
        else:
            np.testing.assert_array_equal(value, tstate[key].numpy(), err_msg=key)


@pytest.mark.parametrize("name", ["lenet", "bn", "residual"])
def test_state_dict_keys_shapes_dtypes_match_torch(name):
    torch = pytest.importorskip("torch")
    tnet = NETWORKS[name](torch.nn, torch)
    net = NETWORKS[name](nn, None)
    tstate = tnet.state_dict()
    state = net.state_dict()
    assert list(state) == list(tstate)
    for key, value in state.items():
        assert value.shape == tuple(tstate[key].shape), key
        assert value.dtype == tstate[key].numpy().dtype, key
    # ... so that PyTorch loads a fastconv state dict strictly too.
    tnet.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})


@pytest.mark.parametrize("name", ["lenet", "bn"])
def test_repr_matches_torch(name):
    torch = pytest.importorskip("torch")
    expected = repr(NETWORKS[name](torch.nn, torch))
    # Recent PyTorch lists BatchNorm's ``bias`` switch; fastconv's BatchNorm always has a bias.
    expected = expected.replace("affine=True, bias=True,", "affine=True,")
    assert repr(NETWORKS[name](nn, None)) == expected


def test_default_init_matches_torch_bounds():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tnet, net = _lenet(torch.nn), _lenet(nn, rng=np.random.default_rng(0))
    tweights = {n: p for n, p in tnet.named_parameters() if n.endswith("weight")}
    for key, value in net.state_dict().items():
        expected = tnet.state_dict()[key].numpy()
        # Both U(-b, b) with b = 1/sqrt(fan_in) of the layer's weight.
        layer = key.rsplit(".", 1)[0]
        bound = 1 / math.sqrt(np.prod(tweights[f"{layer}.weight"].shape[1:]))
        assert np.abs(expected).max() <= bound and np.abs(value).max() <= bound, key
        if value.size >= 1000:  # enough samples for the statistics to agree closely
            np.testing.assert_allclose(
                np.abs(value).max(), np.abs(expected).max(), rtol=0.01, err_msg=key
            )
            np.testing.assert_allclose(value.std(), expected.std(), rtol=0.05, err_msg=key)


def test_short_real_training_run_drives_the_loss_down():
    """60 SGD steps of a small CNN on real FashionMNIST images (skipped without the data)."""
    from fastconv import datasets, optim

    try:
        images, labels = datasets.fashion_mnist("train", download=False)
    except (FileNotFoundError, RuntimeError) as err:
        pytest.skip(f"FashionMNIST not installed: {err}")
    x = ((images[:3840] / 255.0 - 0.2860) / 0.3530).astype(np.float32)[:, None]
    y = labels[:3840]
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, rng=0),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 14 * 14, 10, rng=1),
    )
    crit = nn.CrossEntropyLoss()
    opt = optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for xb, yb in datasets.DataLoader(x, y, batch_size=64, seed=0):
        opt.zero_grad()
        losses.append(crit(net(xb), yb))
        net.backward(crit.backward())
        opt.step()
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    net.eval()
    accuracy = np.mean(net(x[:1000]).argmax(axis=1) == y[:1000])
    assert accuracy > 0.7
