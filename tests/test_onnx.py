"""fastconv.onnx.export: every example network and every layer option, run in onnxruntime,
matches fastconv's eval-mode output; unsupported modules and options, and bad arguments, are
refused by name; the model is left as it was."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import Tensor, models, nn, optim

onnx = pytest.importorskip("onnx", reason="fastconv.onnx needs onnx (pip install fastconv[onnx])")
ort = pytest.importorskip("onnxruntime", reason="exported files are checked with onnxruntime")
fconnx = pytest.importorskip("fastconv.onnx")


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _expected(model, x):
    """fastconv's eval-mode output, the model's modes restored."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with fastconv.no_grad():
            out = model(Tensor(x))
    finally:
        for m, training in modes:
            m.training = training
    return out.data


def _assert_matches(got, want, tol=1e-5):
    scale = max(float(np.max(np.abs(want))), 1.0) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


def _check_export(model, shape, tmp_path, batches=(1, 3), dtype=np.float32, opset=None, seed=0):
    """Export on a batch of ``shape``; the file's output matches fastconv's at the example's
    batch and at each of ``batches`` (the batch axis is symbolic)."""
    rng = np.random.default_rng(seed)
    path = tmp_path / "model.onnx"
    example = rng.standard_normal(shape).astype(dtype)
    proto = fconnx.export(model, example, path, opset=opset)
    assert path.exists() and onnx.load(str(path)) == proto
    for n in (shape[0], *batches):
        x = rng.standard_normal((n, *shape[1:])).astype(dtype)
        _assert_matches(_run(path, x), _expected(model, x))
    return proto


def _op_types(proto):
    return {node.op_type for node in proto.graph.node}


# ---- the example networks -------------------------------------------------------------------


def _trained(name, steps=2):
    """``models.build(name)`` after a few SGD steps: BatchNorm's running statistics and the
    weights are no longer their initial values."""
    model = models.build(name, rng=1)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(1)
    for _ in range(steps):
        x = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, 8)
        loss = nn.CrossEntropyLoss()(model(Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.mark.parametrize("name", models.NAMES)
def test_example_network_matches_in_onnxruntime(name, tmp_path):
    model = _trained(name)
    if name in ("bn", "resnet", "inception"):
        assert any(
            np.any(m.running_mean != 0) for m in model.modules() if isinstance(m, nn.BatchNorm2d)
        )
    proto = _check_export(model, (2, 1, 28, 28), tmp_path)
    assert proto.opset_import[0].version == fconnx.default_opset()
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    # Each parameter is one initializer, named as in the state dict.
    initializers = {t.name for t in proto.graph.initializer}
    assert {name for name, _ in model.named_parameters()} <= initializers
    if name == "inception":
        assert "Concat" in _op_types(proto)


def test_export_leaves_the_model_as_it_was(tmp_path):
    model = _trained("bn", steps=1)
    model[2].eval()  # mixed modes survive
    state = model.state_dict()
    modes = [m.training for m in model.modules()]
    dropout = next(m for m in model.modules() if isinstance(m, nn.Dropout))
    rng_state = dropout.rng.bit_generator.state
    fconnx.export(model, np.zeros((2, 1, 28, 28), np.float32), tmp_path / "m.onnx")
    assert [m.training for m in model.modules()] == modes
    assert dropout.rng.bit_generator.state == rng_state
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    assert all(m._ctx is None for m in model.modules())
    # Training still works (nothing traced is kept): a layer-mode step runs.
    x = np.zeros((2, 1, 28, 28), np.float32)
    model(x)
    model.backward(np.ones((2, 10), np.float32))


# ---- each layer and option ------------------------------------------------------------------


def _bn(cls, channels, seed=0):
    """A batch norm with random parameters and running statistics."""
    bn = cls(channels)
    rng = np.random.default_rng(seed)
    bn.weight.data[:] = rng.uniform(0.5, 2, channels)
    bn.bias.data[:] = rng.standard_normal(channels)
    bn.running_mean[:] = rng.standard_normal(channels)
    bn.running_var[:] = rng.uniform(0.5, 2, channels)
    return bn


LAYERS = {
    "conv": (lambda: nn.Conv2d(3, 4, 3), (2, 3, 7, 7)),
    "conv_stride_pad": (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 8, 8)),
    "conv_rect": (lambda: nn.Conv2d(3, 4, (3, 2), stride=(1, 2), padding=(2, 1)), (2, 3, 7, 8)),
    "conv_same_even": (lambda: nn.Conv2d(3, 4, 4, padding="same", dilation=2), (2, 3, 9, 9)),
    "conv_valid": (lambda: nn.Conv2d(3, 4, 2, padding="valid", bias=False), (2, 3, 5, 5)),
    "conv_dilation": (lambda: nn.Conv2d(3, 4, 3, dilation=(2, 1), padding=1), (2, 3, 9, 9)),
    "conv_groups": (lambda: nn.Conv2d(4, 6, 3, groups=2, padding=1), (2, 4, 6, 6)),
    "conv_depthwise": (lambda: nn.Conv2d(4, 4, 3, groups=4), (2, 4, 6, 6)),
    "linear": (lambda: nn.Linear(5, 3), (2, 5)),
    "linear_no_bias_3d": (lambda: nn.Linear(5, 3, bias=False), (2, 4, 5)),
    "linear_3d": (lambda: nn.Linear(5, 3), (2, 4, 5)),
    "bn2d": (lambda: _bn(nn.BatchNorm2d, 3), (2, 3, 4, 4)),
    "bn1d": (lambda: _bn(nn.BatchNorm1d, 3), (4, 3)),
    "bn1d_3d": (lambda: _bn(nn.BatchNorm1d, 3), (4, 3, 5)),
    "maxpool": (lambda: nn.MaxPool2d(2), (2, 3, 6, 6)),
    "maxpool_s_p": (lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 3, 7, 7)),
    "maxpool_ceil": (lambda: nn.MaxPool2d(3, stride=2, ceil_mode=True), (2, 3, 8, 8)),
    # The last ceil window would start in the right padding: PyTorch drops it.
    "maxpool_ceil_dropped": (lambda: nn.MaxPool2d(3, 3, padding=1, ceil_mode=True), (2, 3, 5, 5)),
    "maxpool_dilation": (lambda: nn.MaxPool2d(2, stride=1, dilation=2), (2, 3, 6, 6)),
    "maxpool_dilation_ceil": (lambda: nn.MaxPool2d(2, 2, dilation=2, ceil_mode=True), (2, 3, 7, 7)),
    # ceil_mode's end padding (2) as wide as the kernel: onnxruntime's MaxPool refuses that.
    "maxpool_dilation_ceil_wide": (
        lambda: nn.MaxPool2d(2, 3, padding=1, dilation=3, ceil_mode=True),
        (2, 3, 7, 7),
    ),
    "maxpool_rect": (lambda: nn.MaxPool2d((3, 2), stride=(2, 1), padding=(1, 0)), (2, 3, 7, 6)),
    "avgpool": (lambda: nn.AvgPool2d(2), (2, 3, 6, 6)),
    "avgpool_pad": (lambda: nn.AvgPool2d(3, 2, padding=1), (2, 3, 7, 7)),
    "avgpool_pad_exclude": (
        lambda: nn.AvgPool2d(3, 2, padding=1, count_include_pad=False),
        (2, 3, 7, 7),
    ),
    "avgpool_ceil": (lambda: nn.AvgPool2d(3, 2, padding=1, ceil_mode=True), (2, 3, 6, 6)),
    "avgpool_ceil_nopad": (lambda: nn.AvgPool2d(2, 2, ceil_mode=True), (2, 3, 5, 5)),
    "avgpool_ceil_exclude": (
        lambda: nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False),
        (2, 3, 6, 6),
    ),
    "avgpool_ceil_dropped": (lambda: nn.AvgPool2d(3, 3, padding=1, ceil_mode=True), (2, 3, 5, 5)),
    "adaptive_1": (lambda: nn.AdaptiveAvgPool2d(1), (2, 3, 5, 5)),
    "adaptive_divides": (lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 3, 4, 6)),
    "adaptive_none": (lambda: nn.AdaptiveAvgPool2d((None, 2)), (2, 3, 3, 4)),
    "relu": (lambda: nn.ReLU(), (2, 3, 4)),
    "leaky_relu": (lambda: nn.LeakyReLU(0.3), (2, 3, 4)),
    "sigmoid": (lambda: nn.Sigmoid(), (2, 5)),
    "tanh": (lambda: nn.Tanh(), (2, 5)),
    "flatten": (lambda: nn.Flatten(), (2, 3, 4, 4)),
    "flatten_2_3": (lambda: nn.Sequential(nn.Flatten(2, 3), nn.Linear(16, 2)), (2, 3, 4, 4)),
    "dropout_identity": (lambda: nn.Sequential(nn.Dropout(0.5), nn.Identity(), nn.ReLU()), (2, 4)),
    "residual_identity": (lambda: nn.Residual(nn.Conv2d(3, 3, 3, padding=1)), (2, 3, 5, 5)),
    "residual_shortcut": (
        lambda: nn.Residual(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(3, 4, 1, stride=2)),
        (2, 3, 6, 6),
    ),
}


@pytest.mark.parametrize("name", LAYERS)
def test_layer_option_matches_in_onnxruntime(name, tmp_path):
    build, shape = LAYERS[name]
    _check_export(build(), shape, tmp_path)


def test_batch_norm_without_affine(tmp_path):
    bn = nn.BatchNorm2d(3, affine=False)
    bn.running_mean[:], bn.running_var[:] = [0.5, -1, 2], [0.5, 1, 3]
    _check_export(bn, (2, 3, 4, 4), tmp_path)


def test_batch_norm_without_running_stats_uses_the_batch(tmp_path):
    """track_running_stats=False: eval normalises with each batch's own statistics, which the
    file computes (ReduceMean over N, H, W) for whatever batch it is given."""
    bn = nn.BatchNorm2d(3, track_running_stats=False)
    bn.weight.data[:], bn.bias.data[:] = [0.5, 1, 2], [1, 0, -1]
    proto = _check_export(bn, (2, 3, 4, 4), tmp_path, batches=(1, 5))
    assert "ReduceMean" in _op_types(proto)


def test_avgpool_divisor_override(tmp_path):
    """``divisor_override`` (PyTorch's option, read if the layer has it) against PyTorch."""
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle for divisor_override")
    pool = _with(nn.AvgPool2d(3, 2, padding=1, ceil_mode=True), divisor_override=5)
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    fconnx.export(pool, x, tmp_path / "p.onnx")
    want = torch.nn.functional.avg_pool2d(
        torch.from_numpy(x), 3, 2, 1, ceil_mode=True, divisor_override=5
    )
    _assert_matches(_run(tmp_path / "p.onnx", x), want.numpy())


def test_shared_module_called_twice(tmp_path):
    """One instance called twice (autograd mode allows it): two nodes, one set of weights."""

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(self.conv(x).relu())

    proto = _check_export(Twice(), (2, 2, 5, 5), tmp_path)
    assert [n.op_type for n in proto.graph.node].count("Conv") == 2
    assert len(proto.graph.initializer) == 2


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_older_opsets(opset, tmp_path):
    """Reductions take their axes as an attribute before opset 18 and as an input from it."""
    proto = _check_export(_TensorOps(), (2, 3, 4, 4), tmp_path, opset=opset)
    assert proto.opset_import[0].version == opset


# ---- modules traced through: Tensor operations ----------------------------------------------


class _TensorOps(nn.Module):
    """A forward using the Tensor operations the exporter converts."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.scale = nn.Parameter(np.linspace(0.5, 1.5, 4).astype(np.float32))

    def forward(self, x):
        y = self.conv(x)  # (N, 4, H, W)
        z = (y * 2 - 1) / 3 + (-y) ** 2 + y.exp().log() - y.sigmoid() * y.tanh() + y.relu()
        z = z.permute(0, 2, 3, 1) * self.scale  # (N, H, W, 4): a parameter in an expression
        z = z.transpose(1, 2).mean(dim=(1, 2))  # (N, 4)
        w = fastconv.stack([z, z.softmax(dim=1), z.log_softmax(dim=-1)], dim=1)  # (N, 3, 4)
        s = w.sum(dim=2, keepdim=True) @ self.scale.reshape(1, 4)  # (N, 3, 4)
        return fastconv.cat([w, s], dim=2).reshape(x.shape[0], -1)  # (N, 24)


def test_tensor_operations_match_in_onnxruntime(tmp_path):
    proto = _check_export(_TensorOps(), (2, 3, 4, 4), tmp_path)
    assert {"Concat", "Unsqueeze", "Softmax", "LogSoftmax", "Reshape", "MatMul"} <= _op_types(proto)


@pytest.mark.parametrize(
    "index",
    [(slice(None), slice(1, 3)), (Ellipsis, slice(None, None, -1)), (slice(None), -1),
     (slice(None), None, 0, slice(1, None)), (slice(None), slice(-3, None, 2), Ellipsis, 1),
     (Ellipsis, None), ()],
    ids=["slice", "reversed", "int_last", "none_int_slice", "steps_ellipsis_int", "new_axis",
         "empty"],
)  # fmt: skip
def test_basic_indexing_matches_in_onnxruntime(index, tmp_path):
    class Index(nn.Module):
        def forward(self, x):
            return x.relu()[index]

    _check_export(Index(), (2, 4, 3, 5), tmp_path)


def test_float64(tmp_path):
    """float64 exports; onnxruntime's CPU provider has no float64 Conv, so a conv model is
    checked with onnx's reference evaluator and a conv-free one in onnxruntime."""
    # Seeded weights: with rtol alone, some random draws of the weights differ by ~3.5e-12.
    fastconv.init.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 5, dtype=np.float64), _bn(nn.BatchNorm1d, 5), nn.Tanh(),
                        nn.Linear(5, 2, dtype=np.float64)).double()  # fmt: skip
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 6))
    fconnx.export(mlp, x, tmp_path / "mlp.onnx")
    np.testing.assert_allclose(_run(tmp_path / "mlp.onnx", x), _expected(mlp, x), rtol=1e-12)

    reference = pytest.importorskip("onnx.reference", reason="onnx's reference evaluator")
    conv = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)).double()
    x = rng.standard_normal((2, 2, 4, 4))
    proto = fconnx.export(conv, x, tmp_path / "conv.onnx")
    got = reference.ReferenceEvaluator(proto).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, _expected(conv, x), rtol=1e-12, atol=1e-12)


# ---- what is refused ------------------------------------------------------------------------


class _LayerModeSquare(nn.Module):
    """A layer-mode module: forward and backward over arrays, nothing a trace can see."""

    def forward(self, x):
        self._ctx = x
        return x * x

    def backward(self, grad_out):
        return 2 * self._saved() * grad_out


class _Indexing(nn.Module):
    def forward(self, x):
        return x[:, [0, 2]]  # an index list: not basic indexing


def _refused(model, shape, tmp_path, error, match):
    path = tmp_path / "refused.onnx"
    with pytest.raises(error, match=match):
        fconnx.export(model, np.ones(shape, np.float32), path)
    assert not path.exists()


def test_module_without_converter_is_named(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.ReLU(), _LayerModeSquare()))
    _refused(model, (1, 1, 5, 5), tmp_path, TypeError, r"'1\.1' \(_LayerModeSquare\)")


def test_subclass_of_a_layer_is_named(tmp_path):
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(MyConv(1, 2, 3))
    _refused(model, (1, 1, 5, 5), tmp_path, TypeError, r"'0' \(MyConv\) subclasses Conv2d")


def test_operation_without_converter_is_named(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), _Indexing())
    _refused(model, (2, 4), tmp_path, ValueError, r"'getitem' in module '1': indexing with arr")


def test_unused_branch_is_not_exported(tmp_path):
    """Only what the output needs is converted: an unconvertible result that is dropped is
    no error."""

    class Dropped(nn.Module):
        def forward(self, x):
            x[:, [0]]  # computed and dropped
            return x.relu()

    _check_export(Dropped(), (2, 3), tmp_path)


@pytest.mark.parametrize(
    "option, build, shape",
    [
        ("padding_mode='reflect'", lambda: _with(nn.Conv2d(1, 1, 3), padding_mode="reflect"),
         (1, 1, 5, 5)),
        ("returned a tuple, not one Tensor.*return_indices=True",
         lambda: nn.MaxPool2d(2, return_indices=True), (1, 1, 4, 4)),
        (r"output_size \(2, 2\) for a 5x5 input", lambda: nn.AdaptiveAvgPool2d(2),
         (1, 1, 5, 5)),
    ],
    ids=["conv_padding_mode", "maxpool_return_indices", "adaptive_unequal_windows"],
)  # fmt: skip
def test_unsupported_option_is_named(option, build, shape, tmp_path):
    _refused(build(), shape, tmp_path, ValueError, option)


def _with(module, **attributes):
    """``module`` with attributes a newer version may take as arguments (set directly here, so
    the refusal is tested whether or not the constructor knows them)."""
    for name, value in attributes.items():
        object.__setattr__(module, name, value)
    return module


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"model": "seed"}, TypeError, "model must be a fastconv.nn.Module"),
        ({"example_input": [[0.0] * 4]}, TypeError, "example_input must be a numpy.ndarray"),
        ({"example_input": np.ones((2, 4), np.int64)}, TypeError, "example_input must have dtype"),
        ({"example_input": np.ones((), np.float32)}, ValueError, "batch axis"),
        ({"example_input": np.ones((2, 5), np.float32)}, ValueError, "5"),  # the wrong width
        ({"path": 3}, TypeError, "path must be a str"),
        ({"path": "."}, ValueError, "directory"),
        ({"path": "no/such/dir/m.onnx"}, ValueError, "does not exist"),
        ({"opset": 12}, ValueError, "opset must be in"),
        ({"opset": 10_000}, ValueError, "opset must be in"),
        ({"opset": "17"}, TypeError, "opset must be an int"),
        ({"opset": True}, TypeError, "opset must be an int"),
    ],
    ids=["model", "input_list", "input_int", "input_0d", "input_shape", "path_int", "path_dir",
         "path_missing_dir", "opset_old", "opset_new", "opset_str", "opset_bool"],
)  # fmt: skip
def test_bad_arguments_are_refused(kwargs, error, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = {"model": nn.Linear(4, 2), "example_input": np.ones((2, 4), np.float32),
            "path": "m.onnx"} | kwargs  # fmt: skip
    with pytest.raises(error, match=match):
        fconnx.export(**args)
    assert not (tmp_path / "m.onnx").exists()


def test_tensor_example_and_pathlike(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    fconnx.export(model, Tensor(x), tmp_path / "t.onnx", opset=17)
    _assert_matches(_run(tmp_path / "t.onnx", x), _expected(model, x))


def test_default_opset_loads_in_onnxruntime():
    opset = fconnx.default_opset()
    assert 13 <= opset <= min(onnx.defs.onnx_opset_version(), 21)
