"""The NumPy oracle ``fastconv.reference`` checked against PyTorch in float64: convolution,
im2col/col2im, dtypes, and the oracle's independence from the fast code.

Every forward is compared with ``torch.nn.functional`` and every backward with torch autograd, at
rtol 1e-10 / atol 1e-12 (``reference_helpers``). Pooling is in ``test_reference_pool.py``, the
other ops in ``test_reference_ops.py``.
"""

import ast
import pathlib

import numpy as np
import pytest
from reference_helpers import ATOL, RTOL, SEED, F, assert_close, to_torch

from fastconv import reference as R


@pytest.fixture
def rng():
    return np.random.default_rng(SEED)


# ---------------------------------------------------------------------------------------------
# conv2d
# ---------------------------------------------------------------------------------------------

CONV_CASES = [
    pytest.param((2, 3, 7, 9), (4, 3, 3, 3), {}, id="3x3-nonsquare-input"),
    pytest.param(
        (2, 3, 8, 11), (4, 3, 3, 2), dict(stride=(2, 3), padding=(1, 2)), id="asym-stride-padding"
    ),
    pytest.param(
        (1, 2, 9, 10),
        (3, 2, 3, 3),
        dict(stride=(1, 2), padding=(2, 1), dilation=(2, 3)),
        id="asym-dilation",
    ),
    pytest.param((2, 4, 6, 7), (6, 2, 3, 3), dict(padding=1, groups=2), id="groups2"),
    pytest.param((2, 3, 6, 5), (3, 1, 3, 3), dict(stride=2, padding=1, groups=3), id="depthwise"),
    pytest.param(
        (1, 3, 5, 6), (6, 1, 2, 3), dict(padding=(1, 0), groups=3), id="depthwise-multiplier2"
    ),
    pytest.param((2, 2, 3, 4), (3, 2, 5, 6), dict(padding=1), id="kernel-equals-padded-input"),
    pytest.param((2, 3, 5, 7), (5, 3, 1, 1), dict(stride=(2, 1)), id="1x1-stride"),
    pytest.param((2, 3, 6, 7), (4, 3, 3, 3), dict(padding="same"), id="same-3x3"),
    pytest.param(
        (1, 3, 6, 7),
        (4, 3, 4, 2),
        dict(padding="same", dilation=(1, 2)),
        id="same-even-kernel-asym-pad",
    ),
    pytest.param(
        (1, 3, 6, 7),
        (2, 3, 3, 2),
        dict(padding="same", dilation=(2, 3)),
        id="same-dilated-asym-pad",
    ),
    pytest.param((2, 3, 6, 7), (4, 3, 3, 3), dict(padding="valid", stride=2), id="valid-stride2"),
    pytest.param((0, 3, 6, 7), (4, 3, 3, 3), dict(padding=1), id="batch0"),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("x_shape, w_shape, kwargs", CONV_CASES)
def test_conv2d_forward_backward(rng, x_shape, w_shape, kwargs, use_bias):
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0]) if use_bias else None
    y = R.conv2d(x, w, b, **kwargs)

    xt, wt = to_torch(x), to_torch(w)
    bt = to_torch(b) if use_bias else None
    yt = F.conv2d(xt, wt, bt, **kwargs)
    assert_close(y, yt)

    g = rng.standard_normal(y.shape)
    yt.backward(to_torch(g, grad=False))
    grad_x, grad_w, grad_b = R.conv2d_backward(g, x, w, **kwargs)
    assert_close(grad_x, xt.grad)
    assert_close(grad_w, wt.grad)
    assert_close(grad_b, g.sum(axis=(0, 2, 3)))
    if use_bias:
        assert_close(grad_b, bt.grad)


def test_conv2d_same_pads_extra_pixel_bottom_right():
    # A 2x2 kernel of ones with "same" sums x[i:i+2, j:j+2]: the extra pad row/col is at the end.
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    y = R.conv2d(x, np.ones((1, 1, 2, 2)), padding="same")
    assert y[0, 0, 0, 0] == 0 + 1 + 3 + 4
    assert y[0, 0, 2, 2] == 8


def test_conv2d_rejects_bad_geometry(rng):
    x = rng.standard_normal((1, 3, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        R.conv2d(x, rng.standard_normal((2, 2, 3, 3)))
    with pytest.raises(ValueError, match="larger"):
        R.conv2d(x, rng.standard_normal((2, 3, 5, 5)))
    with pytest.raises(ValueError, match="divisible"):
        R.conv2d(rng.standard_normal((1, 4, 4, 4)), rng.standard_normal((3, 2, 3, 3)), groups=2)
    with pytest.raises(ValueError, match="same"):
        R.conv2d(x, rng.standard_normal((2, 3, 3, 3)), stride=2, padding="same")


# ---------------------------------------------------------------------------------------------
# im2col / col2im
# ---------------------------------------------------------------------------------------------

UNFOLD_CASES = [
    pytest.param((2, 3, 5, 6), dict(kernel_size=3), id="k3"),
    pytest.param(
        (1, 2, 7, 8),
        dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 2), dilation=(2, 1)),
        id="asym-all",
    ),
    pytest.param((2, 3, 5, 5), dict(kernel_size=1, stride=2), id="1x1-stride2"),
    pytest.param(
        (1, 2, 3, 4), dict(kernel_size=(5, 4), padding=(1, 0)), id="kernel-equals-padded-input"
    ),
    pytest.param(
        (1, 1, 6, 6), dict(kernel_size=3, dilation=2, padding=2), id="overlapping-dilated"
    ),
    pytest.param((0, 2, 4, 4), dict(kernel_size=2), id="batch0"),
]


@pytest.mark.parametrize("x_shape, kwargs", UNFOLD_CASES)
def test_im2col_col2im(rng, x_shape, kwargs):
    x = rng.standard_normal(x_shape)
    cols = R.im2col(x, **kwargs)
    assert_close(cols, F.unfold(to_torch(x, grad=False), **kwargs))

    c = rng.standard_normal(cols.shape)
    folded = R.col2im(c, x_shape, **kwargs)
    assert_close(folded, F.fold(to_torch(c, grad=False), output_size=x_shape[2:], **kwargs))
    # col2im is the adjoint of im2col: <im2col(x), c> == <x, col2im(c)>.
    assert np.vdot(cols, c) == pytest.approx(np.vdot(x, folded), rel=RTOL, abs=ATOL)


def test_conv2d_equals_weight_times_im2col(rng):
    x, w = rng.standard_normal((2, 3, 6, 7)), rng.standard_normal((4, 3, 3, 2))
    kwargs = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    y = R.conv2d(x, w, **kwargs)
    cols = R.im2col(x, w.shape[2:], **kwargs)
    assert_close((w.reshape(4, -1) @ cols).reshape(y.shape), y)


# ---------------------------------------------------------------------------------------------
# dtype and independence
# ---------------------------------------------------------------------------------------------


def _float32_calls(rng):
    f = np.float32
    x4 = rng.standard_normal((2, 4, 6, 5)).astype(f)
    w = rng.standard_normal((4, 2, 3, 3)).astype(f)
    y, idx = R.max_pool2d(x4, 2)
    g = np.ones_like(y)
    x2, wl = rng.standard_normal((5, 4)).astype(f), rng.standard_normal((3, 4)).astype(f)
    _, cache = R.batch_norm(x4, np.zeros(4, f), np.ones(4, f), None, None, True)
    cols = R.im2col(x4, 2)
    return {
        "conv2d": lambda: R.conv2d(x4, w, np.zeros(4, f), padding="same", groups=2),
        "conv2d_backward": lambda: R.conv2d_backward(np.ones((2, 4, 4, 3), f), x4, w, groups=2),
        "max_pool2d": lambda: R.max_pool2d(x4, 3, 2, 1),
        "max_pool2d_backward": lambda: R.max_pool2d_backward(g, idx, x4.shape),
        "avg_pool2d": lambda: R.avg_pool2d(x4, 3, 2, 1, count_include_pad=False),
        "avg_pool2d_backward": lambda: R.avg_pool2d_backward(g, x4.shape, 2),
        "adaptive_avg_pool2d": lambda: R.adaptive_avg_pool2d(x4, 3),
        "adaptive_avg_pool2d_backward": lambda: R.adaptive_avg_pool2d_backward(g, x4.shape),
        "linear": lambda: R.linear(x2, wl, np.zeros(3, f)),
        "linear_backward": lambda: R.linear_backward(np.ones((5, 3), f), x2, wl),
        "relu": lambda: R.relu(x2),
        "relu_backward": lambda: R.relu_backward(x2, x2),
        "leaky_relu": lambda: R.leaky_relu(x2, 0.1),
        "leaky_relu_backward": lambda: R.leaky_relu_backward(x2, x2),
        "sigmoid": lambda: R.sigmoid(x2),
        "sigmoid_backward": lambda: R.sigmoid_backward(x2, x2),
        "tanh": lambda: R.tanh(x2),
        "tanh_backward": lambda: R.tanh_backward(x2, x2),
        "batch_norm": lambda: R.batch_norm(x4, np.zeros(4, f), np.ones(4, f), None, None, True),
        "batch_norm-eval": lambda: R.batch_norm(
            x4, np.zeros(4, f), np.ones(4, f), None, None, False
        ),
        "batch_norm_backward": lambda: R.batch_norm_backward(x4, cache),
        "dropout": lambda: R.dropout(x2, 0.5, True, np.random.default_rng(0)),
        "dropout_backward": lambda: R.dropout_backward(x2, x2),
        "softmax": lambda: R.softmax(x2),
        "log_softmax": lambda: R.log_softmax(x2),
        "cross_entropy-none": lambda: R.cross_entropy(x2, np.arange(5) % 4, "none"),
        "cross_entropy_backward": lambda: R.cross_entropy_backward(x2, np.arange(5) % 4),
        "im2col": lambda: R.im2col(x4, 3, 2, 1, 2),
        "col2im": lambda: R.col2im(cols, x4.shape, 2),
    }


@pytest.mark.parametrize("name", list(_float32_calls(np.random.default_rng(0))))
def test_float32_stays_float32(rng, name):
    out = _float32_calls(rng)[name]()
    arrays = [o for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, np.ndarray)]
    assert arrays
    for a in arrays:
        if a.dtype != np.int64:  # max-pool indices
            assert a.dtype == np.float32, a.dtype


def test_reference_is_independent_of_the_fast_code():
    # Every file of the package, relative imports resolved: the oracle reaches no fast code.
    package = pathlib.Path(R.__file__).parent
    files = sorted(package.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "conv.py", "pooling.py", "_geometry.py"}
    imported = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:  # "from . import x" / "from .conv import y" inside the package
                    module = ".".join(filter(None, [R.__name__, module]))
                imported.add(module)
                imported.update(f"{module}.{alias.name}" for alias in node.names)
    assert not any("functional" in m or "kernels" in m for m in imported), imported
    # Beyond NumPy it may use only the shared argument checks (fastconv._checks) and itself.
    ours = {m for m in imported if m.split(".")[0] == "fastconv"}
    assert all(m.startswith(("fastconv._checks", "fastconv.reference")) for m in ours), ours


def test_every_functional_name_has_a_reference():
    import fastconv.functional as fast  # the public list to mirror, read rather than copied

    names = fast.__all__
    assert sorted(R.__all__) == sorted(names)
    assert all(callable(getattr(R, name)) for name in names)
