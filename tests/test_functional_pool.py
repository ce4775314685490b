"""Max, average and adaptive pooling against the reference loops and PyTorch."""

import numpy as np
import pytest
from helpers import assert_close32, assert_close64

import fastconv
import fastconv.functional as F
import fastconv.reference as R

# (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)
POOL_CASES = {
    "k2_s2": (2, 3, 8, 8, 2, None, 0, 1, False),
    "odd_input_k2": (2, 2, 7, 9, 2, 2, 0, 1, False),
    "odd_input_k2_ceil": (2, 2, 7, 9, 2, 2, 0, 1, True),
    "overlap_k3_s2_p1": (2, 3, 9, 10, 3, 2, 1, 1, False),
    "ceil_window_starts_in_padding": (1, 2, 6, 6, 3, 2, 1, 1, True),
    "ceil_last_window_dropped": (1, 2, 5, 5, 2, 2, 1, 1, True),
    "asym": (2, 2, 9, 11, (3, 2), (2, 1), (1, 0), 1, True),
    "dilation": (2, 2, 11, 10, 3, (2, 3), 1, (2, 1), True),
    "kernel_equals_input": (2, 3, 5, 5, 5, 1, 0, 1, False),
    "stride_gt_kernel": (2, 2, 11, 11, 2, 3, 1, 1, True),
    "batch_0": (0, 3, 6, 6, 2, 2, 0, 1, False),
}


def _perm_input(rng, shape, dtype):
    """Distinct values (a permutation), so the argmax is unique and indices are comparable."""
    size = int(np.prod(shape))
    return (rng.permutation(size).reshape(shape) - size / 2).astype(dtype)


@pytest.mark.parametrize("case", list(POOL_CASES.values()), ids=list(POOL_CASES))
def test_max_pool2d(rng, case):
    N, C, H, W, k, s, p, d, ceil = case
    x = _perm_input(rng, (N, C, H, W), np.float64)
    y, idx = F.max_pool2d(x, k, s, p, d, ceil)
    y_ref, idx_ref = R.max_pool2d(x, k, s, p, d, ceil)
    assert idx.dtype == np.int64
    assert_close64(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    go = rng.standard_normal(y.shape)
    assert_close64(F.max_pool2d_backward(go, idx, x.shape), R.max_pool2d_backward(go, idx, x.shape))

    torch = pytest.importorskip("torch")
    x32 = x.astype(np.float32)
    xt = torch.tensor(x32, requires_grad=True)
    yt, it = torch.nn.functional.max_pool2d(
        xt, k, s if s is not None else k, p, d, ceil, return_indices=True
    )
    y32, idx32 = F.max_pool2d(x32, k, s, p, d, ceil)
    assert_close32(y32, yt)
    np.testing.assert_array_equal(idx32, it.numpy())
    yt.backward(torch.tensor(go.astype(np.float32)))
    assert_close32(F.max_pool2d_backward(go.astype(np.float32), idx32, x.shape), xt.grad)


def test_max_pool2d_nan_and_inf_propagate_like_torch():
    torch = pytest.importorskip("torch")
    x = np.arange(2 * 6 * 6, dtype=np.float32).reshape(1, 2, 6, 6)
    x[0, 0, 1, 1] = np.nan
    x[0, 0, 4, 4] = np.nan
    x[0, 0, 4, 5] = np.nan  # two NaNs in one window: PyTorch keeps the last
    x[0, 1, :3, :3] = -np.inf  # a window of only -inf
    y, idx = F.max_pool2d(x, 3, 3, 0, 1, False)
    yt, it = torch.nn.functional.max_pool2d(torch.tensor(x), 3, return_indices=True)
    np.testing.assert_array_equal(y, yt.numpy())  # assert_array_equal treats NaN == NaN
    np.testing.assert_array_equal(idx, it.numpy())
    assert np.isnan(y[0, 0, 0, 0]) and np.isnan(y[0, 0, 1, 1]) and y[0, 1, 0, 0] == -np.inf


# (N, C, H, W, kernel, stride, padding, ceil_mode)
AVG_CASES = {
    "k2_s2": (2, 3, 8, 8, 2, None, 0, False),
    "k3_s2_p1": (2, 2, 9, 10, 3, 2, 1, False),
    "ceil_window_in_padding": (1, 2, 6, 6, 3, 2, 1, True),
    "ceil_window_past_padding": (1, 2, 5, 7, 3, 2, 1, True),
    "asym": (2, 2, 9, 11, (3, 2), (2, 1), (1, 0), True),
    "kernel_equals_input": (2, 3, 5, 4, (5, 4), 1, 0, False),
    "batch_0": (0, 3, 6, 6, 2, 2, 0, False),
}


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["include_pad", "exclude_pad"])
@pytest.mark.parametrize("case", list(AVG_CASES.values()), ids=list(AVG_CASES))
def test_avg_pool2d(rng, case, count_include_pad):
    N, C, H, W, k, s, p, ceil = case
    x = rng.standard_normal((N, C, H, W))
    args = (k, s, p, ceil, count_include_pad)
    y = F.avg_pool2d(x, *args)
    assert_close64(y, R.avg_pool2d(x, *args))
    go = rng.standard_normal(y.shape)
    assert_close64(
        F.avg_pool2d_backward(go, x.shape, *args), R.avg_pool2d_backward(go, x.shape, *args)
    )

    torch = pytest.importorskip("torch")
    xt = torch.tensor(x.astype(np.float32), requires_grad=True)
    yt = torch.nn.functional.avg_pool2d(
        xt, k, s if s is not None else k, p, ceil, count_include_pad
    )
    assert_close32(F.avg_pool2d(x.astype(np.float32), *args), yt)
    yt.backward(torch.tensor(go.astype(np.float32)))
    assert_close32(F.avg_pool2d_backward(go.astype(np.float32), x.shape, *args), xt.grad)


@pytest.mark.parametrize(
    "shape,out",
    [
        ((2, 3, 7, 9), (3, 4)),
        ((1, 2, 6, 6), 1),
        ((2, 2, 5, 5), 5),
        ((1, 1, 3, 4), 7),
        ((0, 2, 4, 4), 2),
    ],
    ids=["uneven", "global", "identity", "upsample", "batch_0"],
)
def test_adaptive_avg_pool2d(rng, shape, out):
    x = rng.standard_normal(shape)
    y = F.adaptive_avg_pool2d(x, out)
    assert_close64(y, R.adaptive_avg_pool2d(x, out))
    go = rng.standard_normal(y.shape)
    assert_close64(
        F.adaptive_avg_pool2d_backward(go, shape), R.adaptive_avg_pool2d_backward(go, shape)
    )
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.adaptive_avg_pool2d(xt, out)
    yt.backward(torch.tensor(go))
    assert_close64(y, yt)
    assert_close64(F.adaptive_avg_pool2d_backward(go, shape), xt.grad)


def test_pooling_gradcheck(rng):
    x = rng.permutation(2 * 2 * 7 * 6).reshape(2, 2, 7, 6) / 10.0  # well separated maxima

    def maxpool(x):
        y, idx = F.max_pool2d(x, 3, 2, 1, 1, True)
        return y, lambda g: (F.max_pool2d_backward(g, idx, x.shape),)

    def avgpool(x):
        args = ((3, 2), (2, 1), (1, 0), True, False)
        return F.avg_pool2d(x, *args), lambda g: (F.avg_pool2d_backward(g, x.shape, *args),)

    def adaptive(x):
        return (
            F.adaptive_avg_pool2d(x, (3, 4)),
            lambda g: (F.adaptive_avg_pool2d_backward(g, x.shape),),
        )

    for fn in (maxpool, avgpool, adaptive):
        assert fastconv.gradcheck(fn, [x], eps=1e-4)


def test_max_pool2d_backward_same_at_1_and_2_threads(rng):
    x = _perm_input(rng, (4, 6, 12, 12), np.float32)
    y, idx = F.max_pool2d(x, 3, 2, 1)
    go = rng.standard_normal(y.shape).astype(np.float32)
    with fastconv.threads(1):
        one = F.max_pool2d_backward(go, idx, x.shape)
    with fastconv.threads(2):
        two = F.max_pool2d_backward(go, idx, x.shape)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("case", list(POOL_CASES.values()), ids=list(POOL_CASES))
def test_max_pool2d_values_and_trusted_backward(rng, case):
    """The layers' private entry points give exactly what the public functions give."""
    N, C, H, W, k, s, p, d, ceil = case
    x = _perm_input(rng, (N, C, H, W), np.float32)
    y, idx = F.max_pool2d(x, k, s, p, d, ceil)
    np.testing.assert_array_equal(F._max_pool2d_values(x, k, s, p, d, ceil), y)
    go = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_array_equal(
        F._max_pool2d_backward_trusted(go, idx, x.shape), F.max_pool2d_backward(go, idx, x.shape)
    )


@pytest.mark.parametrize("kw", [dict(), dict(padding=1)], ids=["inside", "padded"])
def test_max_pool2d_values_nan_and_inf_like_indexed(kw):
    """NaN propagates (the last NaN of a window is returned), an all -inf window gives -inf."""
    x = np.arange(2 * 6 * 6, dtype=np.float32).reshape(1, 2, 6, 6)
    x[0, 0, 1, 1] = np.nan
    x[0, 0, 4, 4] = np.nan
    x[0, 0, 4, 5] = -np.nan  # a NaN of another sign: the last one is kept
    x[0, 1, :3, :3] = -np.inf
    y = F.max_pool2d(x, 3, 3, **kw)[0]
    got = F._max_pool2d_values(x, 3, 3, **kw)
    np.testing.assert_array_equal(got.view(np.uint32), y.view(np.uint32))  # NaN bits too
    assert np.isnan(got[0, 0, 0, 0]) and np.isnan(got[0, 0, 1, 1])


def test_max_pool2d_values_checks_like_max_pool2d():
    x = np.zeros((1, 1, 4, 4))
    for kw, error in [
        (dict(kernel_size=2, padding=2), ValueError),
        (dict(kernel_size=2, ceil_mode="yes"), TypeError),
        (dict(kernel_size=0), ValueError),
    ]:
        with pytest.raises(error) as public:
            F.max_pool2d(x, **kw)
        with pytest.raises(error) as private:
            F._max_pool2d_values(x, **kw)
        assert str(private.value) == str(public.value)


def test_max_pool2d_backward_trusted_checks_grad_out_shape(rng):
    x = _perm_input(rng, (1, 2, 4, 4), np.float64)
    y, idx = F.max_pool2d(x, 2)
    with pytest.raises(ValueError, match="indices must have grad_out's shape"):
        F._max_pool2d_backward_trusted(np.zeros((1, 2, 3, 2)), idx, x.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool2d_2x2_kernel_nan_inf_ties_like_reference(dtype):
    """The 2x2 stride-2 kernel (its own code path): NaN propagates with the last NaN's index,
    an all -inf window gives its first tap, ties give the first tap; values-only agrees."""
    x = np.arange(2 * 6 * 7, dtype=dtype).reshape(1, 2, 6, 7)  # odd width: last column unused
    x[0, 0, 0, 1] = np.nan
    x[0, 0, 1, 0] = -np.nan  # two NaNs in one window: the later one (in visiting order) wins
    x[0, 0, 2:4, 2:4] = -np.inf
    x[0, 1, 4:6, 0:2] = 5.0  # a four-way tie
    y, idx = F.max_pool2d(x, 2)
    y_ref, idx_ref = R.max_pool2d(x, 2)
    np.testing.assert_array_equal(idx, idx_ref)
    bits = np.uint32 if dtype == np.float32 else np.uint64
    np.testing.assert_array_equal(y.view(bits), y_ref.view(bits))
    np.testing.assert_array_equal(F._max_pool2d_values(x, 2).view(bits), y.view(bits))
    assert idx[0, 0, 0, 0] == 7 and idx[0, 0, 1, 1] == 2 * 7 + 2 and idx[0, 1, 2, 0] == 4 * 7


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (1, 2, 7, 70), (3, 1, 2, 2), (2, 2, 9, 35)])
def test_max_pool2d_2x2_float32_vector_kernel_is_the_scalar_one(rng, shape):
    """float32 2x2 windows run 16 per vector step (``simd_pool``); float64 keeps the scalar
    loop. Same values bit for bit and same indices, on data full of ties, signed zeros, NaN
    and inf; rows of 1 to 35 windows (one vector step, several, a partial last one)."""
    from fastconv.kernels import pool as kpool

    x = rng.integers(-2, 2, shape).astype(np.float32)
    x[x == 0] = np.where(rng.random(int((x == 0).sum())) < 0.5, -0.0, 0.0)
    x[rng.random(shape) < 0.02] = np.nan
    x[rng.random(shape) < 0.02] = -np.inf
    planes = x.reshape(-1, *shape[2:])
    out = (planes.shape[0], shape[2] // 2, shape[3] // 2)
    results = []
    for kernel in (kpool._maxpool2d_2x2, kpool._maxpool2d_2x2_f32):
        y, idx = np.full(out, 7.0, np.float32), np.full(out, -1, np.int64)
        kernel(planes, y, idx, True)
        results.append((y.view(np.uint32), idx))
    np.testing.assert_array_equal(results[1][0], results[0][0])
    np.testing.assert_array_equal(results[1][1], results[0][1])
    y_only = np.full(out, 7.0, np.float32)
    untouched = np.full((1, 1, 1), -1, np.int64)
    kpool._maxpool2d_2x2_f32(planes, y_only, untouched, False)  # values only
    np.testing.assert_array_equal(y_only.view(np.uint32), results[0][0])
    assert untouched[0, 0, 0] == -1
