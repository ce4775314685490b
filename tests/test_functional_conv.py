"""conv2d, conv2d_backward, im2col and col2im against the reference loops and PyTorch."""

import numpy as np
import pytest
from helpers import assert_close32, assert_close64

import fastconv
import fastconv._config
import fastconv._conv_plan as plan
import fastconv.functional as F
import fastconv.reference as R

# (N, C_in, H, W, C_out, kernel, stride, padding, dilation, groups)
CONV_CASES = {
    "1ch_k3_p1": (2, 1, 7, 9, 3, 3, 1, 1, 1, 1),
    "seed_k5_s2": (3, 1, 12, 12, 4, 5, 2, 0, 1, 1),
    "many_ch_k3": (2, 12, 6, 5, 5, 3, 1, 1, 1, 1),
    "asym_stride_pad_dil": (2, 4, 9, 8, 6, 3, (2, 1), (1, 0), (2, 1), 2),
    "nonsquare_kernel": (2, 6, 7, 10, 4, (2, 4), (1, 3), (0, 2), 1, 1),
    "depthwise_same": (2, 8, 6, 7, 8, 3, 1, "same", 1, 8),
    "even_kernel_same_dil": (2, 6, 8, 8, 4, (2, 4), 1, "same", (1, 2), 2),
    "valid": (2, 3, 6, 6, 2, 3, 1, "valid", 1, 1),
    "kernel_equals_input": (3, 5, 5, 5, 4, 5, 1, 0, 1, 1),
    "kernel_equals_padded_input": (2, 3, 3, 4, 2, (5, 6), 1, 1, 1, 1),
    "k3_pad3_beyond_winograd": (2, 3, 4, 5, 2, 3, 1, 3, 1, 1),
    "1x1": (2, 16, 5, 6, 7, 1, 1, 0, 1, 1),
    "1x1_stride2": (2, 6, 7, 6, 5, 1, 2, 0, 1, 1),
    "stride_gt_kernel": (2, 3, 11, 9, 2, 2, 3, 1, 1, 1),
    "groups_channel_multiplier": (2, 4, 6, 6, 8, 3, 1, 1, 1, 4),
    "batch_0": (0, 3, 6, 6, 4, 3, 1, 1, 1, 1),
}

# Each case runs through every algorithm that can compute it, forced with the planner's private
# ``use_algorithm``: direct loops and im2col + GEMM take any case; Winograd only 3x3 stride-1
# single-group ones; the register-tiled "blocked" engine float32 single-group ones (elsewhere
# the usual choice runs).
PATHS = ["direct", "gemm", "winograd", "blocked"]


@pytest.fixture(params=PATHS)
def conv_path(request):
    with plan.use_algorithm(request.param):
        yield request.param


def _skip_unless_winograd_applies(path, case):
    N, C, H, W, O, k, s, p, d, g = case
    if path == "winograd" and not (k == 3 and s == 1 and d == 1 and g == 1):
        pytest.skip("Winograd handles 3x3 stride-1 single-group convolutions only")


def _conv_inputs(rng, case, dtype):
    N, C, H, W, O, k, s, p, d, g = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((O, C // g, kh, kw)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    return x, w, b, dict(stride=s, padding=p, dilation=d, groups=g)


@pytest.mark.parametrize("case", list(CONV_CASES.values()), ids=list(CONV_CASES))
def test_conv2d_matches_reference_float64(rng, case, conv_path):
    _skip_unless_winograd_applies(conv_path, case)
    x, w, b, kw = _conv_inputs(rng, case, np.float64)
    y = F.conv2d(x, w, b, **kw)
    assert y.dtype == np.float64
    assert_close64(y, R.conv2d(x, w, b, **kw))
    go = rng.standard_normal(y.shape)
    for got, want in zip(
        F.conv2d_backward(go, x, w, **kw), R.conv2d_backward(go, x, w, **kw), strict=True
    ):
        assert got.shape == want.shape
        assert_close64(got, want)


@pytest.mark.parametrize("case", list(CONV_CASES.values()), ids=list(CONV_CASES))
def test_conv2d_matches_torch_float32(rng, case, conv_path):
    _skip_unless_winograd_applies(conv_path, case)
    torch = pytest.importorskip("torch")
    x, w, b, kw = _conv_inputs(rng, case, np.float32)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.conv2d(xt, wt, bt, **kw)
    y = F.conv2d(x, w, b, **kw)
    assert y.dtype == np.float32
    assert_close32(y, yt)
    go = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.tensor(go))
    gx, gw, gb = F.conv2d_backward(go, x, w, **kw)
    assert gx.dtype == gw.dtype == gb.dtype == np.float32
    assert_close32(gx, xt.grad)
    assert_close32(gw, wt.grad)
    assert_close32(gb, bt.grad)


def test_conv2d_without_bias_and_noncontiguous_input(rng, conv_path):
    x = rng.standard_normal((2, 9, 8, 3)).transpose(0, 3, 1, 2)  # (2, 3, 9, 8), not contiguous
    w = rng.standard_normal((4, 3, 3, 3))
    x_before = x.copy()
    assert_close64(F.conv2d(x, w, padding=1), R.conv2d(np.ascontiguousarray(x), w, padding=1))
    np.testing.assert_array_equal(x, x_before)


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_conv2d_backward_same_at_1_and_2_threads(rng, dtype, rtol):
    """Every algorithm gives bit-identical gradients at 1 and 2 threads."""
    x = rng.standard_normal((8, 16, 12, 12)).astype(dtype)
    go = rng.standard_normal((8, 24, 12, 12)).astype(dtype)
    cases = {  # input, weight, groups, stride: one case per algorithm
        "winograd": (x, rng.standard_normal((24, 16, 3, 3)).astype(dtype), 1, 1),
        "gemm": (x, rng.standard_normal((24, 16, 3, 3)).astype(dtype), 1, 2),
        "direct": (x[:, :8], rng.standard_normal((24, 1, 3, 3)).astype(dtype), 8, 1),
    }
    if dtype == np.float32:
        cases["blocked"] = (x, rng.standard_normal((24, 16, 3, 3)).astype(dtype), 1, 1)
    for path, (xx, ww, groups, stride) in cases.items():
        conv = F.conv._conv_problem(xx, ww, stride, 1, 1, groups)[2]
        with plan.use_algorithm(path):
            assert plan.choose(conv).name == path
            g = go if stride == 1 else go[:, :, ::2, ::2]
            with fastconv.threads(1):
                one = F.conv2d_backward(g, xx, ww, stride=stride, padding=1, groups=groups)
            with fastconv.threads(2):
                two = F.conv2d_backward(g, xx, ww, stride=stride, padding=1, groups=groups)
        for a, b in zip(one, two, strict=True):
            # Partial sums over chunks fixed by the shape and numba's pool size, added in a
            # fixed order: the same bits at any thread count.
            np.testing.assert_array_equal(a, b, err_msg=path)
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max(), err_msg=path)


def test_conv2d_gradcheck(rng, conv_path):
    x = rng.standard_normal((2, 4, 5, 6))
    w = rng.standard_normal((6, 2, 3, 2))
    b = rng.standard_normal(6)
    kw = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)

    def fn(x, w, b):
        return F.conv2d(x, w, b, **kw), lambda g: F.conv2d_backward(g, x, w, **kw)

    assert fastconv.gradcheck(fn, [x, w, b])


# (N, C, H, W, kernel, stride, padding, dilation)
UNFOLD_CASES = {
    "k3_p1": (2, 3, 6, 7, 3, 1, 1, 1),
    "k2x3_s2_dil": (1, 2, 9, 8, (2, 3), 2, (1, 0), (2, 1)),
    "k1": (2, 4, 3, 5, 1, 1, 0, 1),
    "kernel_equals_input": (2, 2, 4, 4, 4, 1, 0, 1),
    "batch_0": (0, 2, 5, 5, 3, 1, 1, 1),
}


@pytest.mark.parametrize("case", list(UNFOLD_CASES.values()), ids=list(UNFOLD_CASES))
def test_im2col_col2im(rng, case):
    N, C, H, W, k, s, p, d = case
    x = rng.standard_normal((N, C, H, W))
    cols = F.im2col(x, k, s, p, d)
    assert_close64(cols, R.im2col(x, k, s, p, d))
    back = F.col2im(cols, x.shape, k, s, p, d)
    assert_close64(back, R.col2im(cols, x.shape, k, s, p, d))
    torch = pytest.importorskip("torch")
    nn_f = torch.nn.functional
    x32 = x.astype(np.float32)
    want = nn_f.unfold(torch.tensor(x32), k, dilation=d, padding=p, stride=s)
    assert_close32(F.im2col(x32, k, s, p, d), want)
    want = nn_f.fold(want, (H, W), k, dilation=d, padding=p, stride=s)
    assert_close32(F.col2im(F.im2col(x32, k, s, p, d), x.shape, k, s, p, d), want)


def test_col2im_is_adjoint_of_im2col(rng):
    """<im2col(x), c> == <x, col2im(c)> for any x, c: the backward of one is the other."""
    x = rng.standard_normal((2, 3, 7, 6))
    cols = F.im2col(x, 3, 2, 1, 1)
    c = rng.standard_normal(cols.shape)
    np.testing.assert_allclose(np.sum(cols * c), np.sum(x * F.col2im(c, x.shape, 3, 2, 1, 1)))


@pytest.mark.parametrize(
    "tile_bytes,rows",
    [(1, 1), (27 * 6 * 8 * 4, 4), (10**9, 6)],
    ids=["one_row_per_tile", "ragged_tiles_of_4_rows", "whole_sample"],
)
def test_gemm_path_row_tiles(rng, tile_bytes, rows):
    """Tiles of output rows (the last one shorter) give the same result as whole samples."""
    x = rng.standard_normal((5, 3, 6, 6))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    with fastconv._config.tuned(tile_bytes=tile_bytes), plan.use_algorithm("gemm"):
        conv = F.conv._conv_problem(x, w, 1, 1, 1, 1)[2]
        assert plan.choose(conv).name == "gemm"
        assert plan.gemm_tile_rows(conv) == rows
        y = F.conv2d(x, w, b, padding=1)
        assert_close64(y, R.conv2d(x, w, b, padding=1))
        for got, want in zip(
            F.conv2d_backward(y, x, w, padding=1),
            R.conv2d_backward(y, x, w, padding=1),
            strict=True,
        ):
            assert_close64(got, want)


def test_planner_controls_are_scoped_and_checked(rng):
    """use_algorithm forces an algorithm where it can run and falls back elsewhere; both it and
    tuned restore the previous setting on exit, even on error."""
    x = rng.standard_normal((2, 16, 6, 6))
    conv3 = F.conv._conv_problem(x, rng.standard_normal((16, 16, 3, 3)), 1, 1, 1, 1)[2]
    conv5 = F.conv._conv_problem(x, rng.standard_normal((16, 16, 5, 5)), 1, 2, 1, 1)[2]
    assert plan.choose(conv3).name == "winograd" and plan.choose(conv5).name == "gemm"
    with plan.use_algorithm("direct"):
        assert plan.choose(conv3).name == plan.choose(conv5).name == "direct"
        with plan.use_algorithm("winograd"):
            assert plan.choose(conv3).name == "winograd"
            assert plan.choose(conv5).name == "gemm"  # Winograd cannot run a 5x5 kernel
        assert plan.choose(conv3).name == "direct"
    with pytest.raises(KeyError), plan.use_algorithm("gemm"):
        raise KeyError
    assert plan.choose(conv3).name == "winograd"
    with pytest.raises(ValueError, match="name must be one of"), plan.use_algorithm("fft"):
        pass
    with fastconv._config.tuned(winograd_min_channels=17):
        assert plan.choose(conv3).name == "gemm"
    assert fastconv._config.tuning() == fastconv._config.DEFAULT_TUNING
    with pytest.raises(TypeError):
        with fastconv._config.tuned(no_such_constant=1):
            pass


def test_workspace_arrays_are_aligned_and_disjoint_and_reused():
    a, b, c = plan.workspace(((3, 5), np.float32), ((7,), np.float64), ((2, 2), np.float32))
    assert [arr.shape for arr in (a, b, c)] == [(3, 5), (7,), (2, 2)]
    assert all(arr.ctypes.data % 64 == 0 and arr.flags.c_contiguous for arr in (a, b, c))
    a[...], b[...], c[...] = 1, 2, 3
    assert a.sum() == 15 and b.sum() == 14 and c.sum() == 12  # no overlap
    (d,) = plan.workspace(((4,), np.float32))
    assert d.ctypes.data == a.ctypes.data  # the next call reuses the same buffer
    (big,) = plan.workspace(((1 << 22,), np.float32))  # grows the buffer: a new one
    (e,) = plan.workspace(((4,), np.float32))
    assert e.base is big.base  # a view of the new buffer, not the one remembered before


@pytest.mark.parametrize("case", ["many_ch_k3", "asym_stride_pad_dil", "depthwise_same"])
def test_conv2d_backward_without_input_grad(rng, case, conv_path):
    """input_grad=False (a first layer's backward) gives None and the same weight and bias
    gradients."""
    x, w, _, kw = _conv_inputs(rng, CONV_CASES[case], np.float64)
    go = rng.standard_normal(F.conv2d(x, w, **kw).shape)
    gx, gw, gb = F._conv2d_backward(go, x, w, **kw, input_grad=False)
    assert gx is None
    _, gw_all, gb_all = F.conv2d_backward(go, x, w, **kw)
    np.testing.assert_array_equal(gw, gw_all)
    np.testing.assert_array_equal(gb, gb_all)


@pytest.mark.parametrize("special", ["inf", "-inf", "nan", "huge"])
def test_conv2d_non_finite_and_extreme_inputs_like_direct_sums(rng, conv_path, special):
    """Every algorithm gives what the direct sum of products gives (PyTorch's result): inf
    stays inf (Winograd's transforms would make inf - inf = NaN), NaN propagates, and values
    near the top of the float64 range do not overflow in a transform (such inputs are routed
    to an exact algorithm)."""
    x = rng.standard_normal((2, 16, 6, 6))
    w = np.abs(rng.standard_normal((16, 16, 3, 3))) + 0.1  # positive: no inf - inf in the sum
    value = {"inf": np.inf, "-inf": -np.inf, "nan": np.nan, "huge": 1e305}[special]
    x[0, 3, 2, 2] = value
    if special == "huge":
        x = np.abs(x)
        w = w / 16  # each product stays finite, and so does the direct sum
    y = F.conv2d(x, w, padding=1)
    y_ref = R.conv2d(x, w, padding=1)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(y_ref))
    finite = np.isfinite(y_ref)
    assert_close64(y[finite], y_ref[finite])
    g = np.ones_like(y)
    grads = F.conv2d_backward(g, x, w, padding=1)
    grads_ref = R.conv2d_backward(g, x, w, padding=1)
    for got, want in zip(grads, grads_ref, strict=True):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
