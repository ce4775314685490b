"""Linear, activations, batch norm, dropout, softmax and cross-entropy."""

import numpy as np
import pytest
from helpers import assert_close32, assert_close64

import fastconv
import fastconv._config
import fastconv.functional as F
import fastconv.reference as R


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 7), (0, 7)], ids=["2d", "3d", "batch_0"])
def test_linear(rng, shape):
    x = rng.standard_normal(shape)
    w = rng.standard_normal((4, 7))
    b = rng.standard_normal(4)
    y = F.linear(x, w, b)
    assert_close64(y, R.linear(x, w, b))
    go = rng.standard_normal(y.shape)
    for got, want in zip(F.linear_backward(go, x, w), R.linear_backward(go, x, w), strict=True):
        assert_close64(got, want)
    torch = pytest.importorskip("torch")
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    torch.nn.functional.linear(xt, wt, bt).backward(torch.tensor(go))
    gx, gw, gb = F.linear_backward(go, x, w)
    assert_close64(gx, xt.grad)
    assert_close64(gw, wt.grad)
    assert_close64(gb, bt.grad)


@pytest.mark.parametrize(
    "x_shape, out_features",
    [((64, 3136), 128), ((64, 128), 10), ((13, 70), 65), ((5, 3), 1), ((1, 1), 1),
     ((6, 16), 64), ((7, 33), 200), ((2, 4, 9), 17), ((0, 9), 5)],
    ids=["fc1", "fc2", "edges", "few_rows", "one", "one_tile", "tile_plus_one", "3d",
         "batch_0"],
)  # fmt: skip
def test_linear_float32_tiles(rng, x_shape, out_features):
    """float32 runs on register tiles (``kernels/gemm.py``): rows beyond whole tiles, columns
    beyond whole 64-column panels, fewer rows than a tile; x and the weight in any layout."""
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((out_features, x_shape[-1])).astype(np.float32)
    b = rng.standard_normal(out_features).astype(np.float32)
    go = rng.standard_normal((*x_shape[:-1], out_features)).astype(np.float32)
    want = [R.linear(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))]
    want += R.linear_backward(go.astype(np.float64), x.astype(np.float64), w.astype(np.float64))
    x_f = np.asfortranarray(x)  # x in another layout, the weight read-only: the same results
    w_ro = w.copy()
    w_ro.flags.writeable = False
    for xs, ws in ((x, w), (x_f, w_ro)):
        got = [F.linear(xs, ws, b), *F.linear_backward(go, xs, ws)]
        for g, e in zip(got, want, strict=True):
            assert g.dtype == np.float32 and g.shape == e.shape and g.flags.c_contiguous
            assert_close32(g, e)
    torch = pytest.importorskip("torch")
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.linear(xt, wt, bt)
    yt.backward(torch.tensor(go))
    for g, t in zip([F.linear(x, w, b), *F.linear_backward(go, x, w)],
                    [yt.detach(), xt.grad, wt.grad, bt.grad], strict=True):  # fmt: skip
        assert_close32(g, t.numpy())


def test_linear_float32_same_bits_with_any_k_block(rng):
    """The tiles' partial sums over blocks of k wait in memory between blocks: a float32 stored
    and loaded back is unchanged, so the results are those of one pass over k."""
    x = rng.standard_normal((13, 700)).astype(np.float32)
    w = rng.standard_normal((65, 700)).astype(np.float32)
    go = rng.standard_normal((13, 65)).astype(np.float32)
    results = []
    for k_block in (1, 7, 256, 10**6):
        with fastconv._config.tuned(gemm_k_block=k_block):
            results.append([F.linear(x, w), *F.linear_backward(go, x, w)[:2]])
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


def test_linear_float32_propagates_inf_and_nan_like_torch(rng):
    x = rng.standard_normal((8, 70)).astype(np.float32)
    w = rng.standard_normal((66, 70)).astype(np.float32)
    x[0, 3], x[7, 69], w[65, 0] = np.inf, np.nan, -np.inf
    x[2, 5] = 3e38  # the sum overflows to inf as in PyTorch
    w[:, 5] = np.abs(w[:, 5]) + 2
    y = F.linear(x, w)
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(np.isnan(y), torch.nn.functional.linear(
        torch.tensor(x), torch.tensor(w)).isnan().numpy())  # fmt: skip
    assert np.isnan(y[7]).all() and np.isinf(y[2]).all()
    finite = np.isfinite(y)
    with np.errstate(invalid="ignore", over="ignore"):
        want = x.astype(np.float64) @ w.T.astype(np.float64)
    assert_close32(y[finite], want[finite])


ACTIVATIONS = {
    "relu": (F.relu, F.relu_backward, "relu"),
    "leaky_relu": (F.leaky_relu, F.leaky_relu_backward, "leaky_relu"),
    "sigmoid": (F.sigmoid, F.sigmoid_backward, "sigmoid"),
    "tanh": (F.tanh, F.tanh_backward, "tanh"),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activations(rng, name):
    fwd, bwd, _ = ACTIVATIONS[name]
    x = rng.standard_normal((3, 4, 5)) * 5
    x[0, 0, :3] = [-800.0, 800.0, 0.5]  # extreme values must not overflow (sigmoid)
    go = rng.standard_normal(x.shape)
    assert_close64(fwd(x), getattr(R, name)(x))
    assert_close64(bwd(go, x), getattr(R, name + "_backward")(go, x))
    assert fwd(x.astype(np.float32)).dtype == np.float32
    assert fastconv.gradcheck(lambda x: (fwd(x), lambda g: (bwd(g, x),)), [x[1:]])
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, requires_grad=True)
    getattr(torch.nn.functional, name)(xt).backward(torch.tensor(go))
    assert_close64(fwd(x), getattr(torch.nn.functional, name)(torch.tensor(x)))
    assert_close64(bwd(go, x), xt.grad)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_activation_backward_from_output(rng, name, dtype):
    """The layers' private backward from the saved output equals the public one from x."""
    fwd, bwd, _ = ACTIVATIONS[name]
    from_output = getattr(F, f"_{name}_backward_from_output")
    x = (rng.standard_normal((3, 4, 5)) * 5).astype(dtype)
    x[0, 0, :3] = [-800.0, 800.0, 0.5]
    go = rng.standard_normal(x.shape).astype(dtype)
    got = from_output(go, fwd(x))
    assert got.dtype == dtype
    if dtype == np.float64:
        assert_close64(got, bwd(go, x))
    else:
        assert_close32(got, bwd(go, x))
    with pytest.raises(ValueError, match="output's shape"):
        from_output(go[:1], fwd(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(9, 7, 4), (64, 300, 128)], ids=["small", "fc1_like"])
def test_linear_same_at_1_and_2_threads(rng, shape, dtype):
    """float32: each output is one sum over k in one tile, whichever thread runs it; float64
    (BLAS): the row chunks are fixed by numba's pool size, not the thread count in force. So
    the results are bit-identical at 1 and 2 threads."""
    n, k, m = shape
    x = rng.standard_normal((n, k)).astype(dtype)
    w = rng.standard_normal((m, k)).astype(dtype)
    go = rng.standard_normal((n, m)).astype(dtype)
    with fastconv.threads(1):
        one = [F.linear(x, w), *F.linear_backward(go, x, w)]
    with fastconv.threads(2):
        two = [F.linear(x, w), *F.linear_backward(go, x, w)]
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)
    (assert_close32 if dtype == np.float32 else assert_close64)(two[2], go.T @ x)
    assert two[2].flags.c_contiguous and two[2].shape == (m, k)


def test_relu_propagates_nan_like_torch():
    x = np.array([np.nan, -1.0, 0.0, 2.0])
    assert np.isnan(F.relu(x)[0])
    # PyTorch zeroes the gradient where x <= 0, so it passes through at NaN
    np.testing.assert_array_equal(F.relu_backward(np.ones(4), x), [1.0, 0.0, 0.0, 1.0])


@pytest.mark.parametrize(
    "shape",
    [(6, 3), (4, 3, 5), (4, 3, 5, 6), (2, 1, 1, 1)],
    ids=["1d_NC", "1d_NCL", "2d", "single_value_per_sample"],
)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm(rng, shape, training):
    C = shape[1]
    x = rng.standard_normal(shape) * 3 + 1
    w = rng.standard_normal(C)
    b = rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.random(C) + 0.5
    rm_ref, rv_ref = rm.copy(), rv.copy()
    y, cache = F.batch_norm(x, rm, rv, w, b, training, momentum=0.2, eps=1e-4)
    y_ref, cache_ref = R.batch_norm(x, rm_ref, rv_ref, w, b, training, momentum=0.2, eps=1e-4)
    assert_close64(y, y_ref)
    assert_close64(rm, rm_ref)
    assert_close64(rv, rv_ref)
    go = rng.standard_normal(shape)
    for got, want in zip(
        F.batch_norm_backward(go, cache), R.batch_norm_backward(go, cache_ref), strict=True
    ):
        assert_close64(got, want)

    torch = pytest.importorskip("torch")
    rm32 = rng.standard_normal(C).astype(np.float32)
    rv32 = (rng.random(C) + 0.5).astype(np.float32)
    rm_t, rv_t = torch.tensor(rm32), torch.tensor(rv32)  # copies: each side updates its own
    x32 = x.astype(np.float32)
    xt, wt, bt = (torch.tensor(a.astype(np.float32), requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.batch_norm(xt, rm_t, rv_t, wt, bt, training, 0.2, 1e-4)
    yt.backward(torch.tensor(go.astype(np.float32)))
    y32, cache32 = F.batch_norm(
        x32,
        rm32,
        rv32,
        w.astype(np.float32),
        b.astype(np.float32),
        training,
        momentum=0.2,
        eps=1e-4,
    )
    assert y32.dtype == np.float32
    assert_close32(y32, yt)
    assert_close32(rm32, rm_t)
    assert_close32(rv32, rv_t)
    gx, gw, gb = F.batch_norm_backward(go.astype(np.float32), cache32)
    assert_close32(gx, xt.grad)
    assert_close32(gw, wt.grad)
    assert_close32(gb, bt.grad)


def test_batch_norm_without_affine_or_running_stats(rng):
    x = rng.standard_normal((5, 3, 4))
    y, cache = F.batch_norm(x, None, None, None, None, True)
    y_ref, _ = R.batch_norm(x, None, None, None, None, True)
    assert_close64(y, y_ref)
    np.testing.assert_allclose(y.mean(axis=(0, 2)), 0, atol=1e-12)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_gradcheck(rng, training):
    x = rng.standard_normal((3, 2, 2, 3))
    w, b = rng.standard_normal(2), rng.standard_normal(2)
    rm, rv = rng.standard_normal(2), rng.random(2) + 0.5

    def fn(x, w, b):
        y, cache = F.batch_norm(x, rm.copy(), rv.copy(), w, b, training)
        return y, lambda g: F.batch_norm_backward(g, cache)

    assert fastconv.gradcheck(fn, [x, w, b])


def test_dropout(rng):
    x = rng.standard_normal((200, 50))
    y, mask = F.dropout(x, 0.3, True, np.random.default_rng(7))
    y_ref, mask_ref = R.dropout(x, 0.3, True, np.random.default_rng(7))
    assert_close64(mask, mask_ref)
    assert_close64(y, y_ref)
    assert set(np.unique(mask)) == {0.0, 1 / 0.7}
    assert abs((mask == 0).mean() - 0.3) < 0.02
    go = rng.standard_normal(x.shape)
    assert_close64(F.dropout_backward(go, mask), go * mask)
    y_eval, mask_eval = F.dropout(x, 0.3, False, rng)
    assert_close64(y_eval, x)
    assert np.all(mask_eval == 1)
    assert np.all(F.dropout(x, 1.0, True, rng)[0] == 0)
    assert F.dropout(x.astype(np.float32), 0.5, True, rng)[0].dtype == np.float32


def test_softmax_and_log_softmax_are_stable(rng):
    x = rng.standard_normal((4, 6)) * 50
    x[0, 0] = 1e4
    for axis in (-1, 0):
        assert_close64(F.softmax(x, axis), R.softmax(x, axis))
        assert_close64(F.log_softmax(x, axis), R.log_softmax(x, axis))
        assert np.all(np.isfinite(F.log_softmax(x, axis)))
    torch = pytest.importorskip("torch")
    assert_close64(F.log_softmax(x, 1), torch.log_softmax(torch.tensor(x), 1))
    assert_close64(F.softmax(x, 0), torch.softmax(torch.tensor(x), 0))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(rng, reduction):
    logits = rng.standard_normal((7, 5)) * 4
    target = rng.integers(0, 5, 7)
    loss = F.cross_entropy(logits, target, reduction)
    grad = F.cross_entropy_backward(logits, target, reduction)
    if reduction == "none":
        assert_close64(loss, R.cross_entropy(logits, target, reduction))
    else:
        assert isinstance(loss, float)
        np.testing.assert_allclose(loss, R.cross_entropy(logits, target, reduction), rtol=1e-12)
    assert_close64(grad, R.cross_entropy_backward(logits, target, reduction))

    def fn(z):
        out = np.atleast_1d(F.cross_entropy(z, target, reduction))
        scale = lambda g: np.sum(g) if reduction != "none" else g[:, None]  # noqa: E731
        return out, lambda g: (F.cross_entropy_backward(z, target, reduction) * scale(g),)

    assert fastconv.gradcheck(fn, [logits])
    torch = pytest.importorskip("torch")
    zt = torch.tensor(logits, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(target), reduction=reduction)
    lt.backward(torch.ones_like(lt))
    assert_close64(np.asarray(loss), lt)
    assert_close64(grad, zt.grad)


def test_gradcheck_catches_a_wrong_gradient(rng):
    x = rng.standard_normal((3, 4))
    with pytest.raises(fastconv.GradcheckError, match="input 0"):
        fastconv.gradcheck(lambda x: (x**2, lambda g: (g * x,)), [x])  # should be 2*g*x


def test_linear_gradcheck(rng):
    x = rng.standard_normal((4, 3, 5))
    w = rng.standard_normal((2, 5))
    b = rng.standard_normal(2)

    def fn(x, w, b):
        return F.linear(x, w, b), lambda g: F.linear_backward(g, x, w)

    assert fastconv.gradcheck(fn, [x, w, b])
