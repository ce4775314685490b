"""Every bad argument raises TypeError/ValueError naming the argument, before any kernel runs."""

import numpy as np
import pytest

import fastconv
import fastconv.functional as F

x4 = np.zeros((2, 3, 8, 8), np.float32)
w4 = np.zeros((4, 3, 3, 3), np.float32)
x64 = np.zeros((2, 3, 8, 8), np.float64)
idx = np.zeros((2, 3, 4, 4), np.int64)
g4 = np.zeros((2, 3, 4, 4), np.float32)
logits = np.zeros((4, 3), np.float32)

# (id, call, exception type, text the message must contain)
BAD_CALLS = [
    ("conv_int_dtype", lambda: F.conv2d(x4.astype(np.int32), w4), TypeError, "input"),
    ("conv_float16", lambda: F.conv2d(x4.astype(np.float16), w4), TypeError, "float16"),
    ("conv_list_input", lambda: F.conv2d(x4.tolist(), w4), TypeError, "input"),
    ("conv_mixed_dtype", lambda: F.conv2d(x4, w4.astype(np.float64)), TypeError, "weight"),
    ("conv_bias_dtype", lambda: F.conv2d(x4, w4, np.zeros(4)), TypeError, "bias"),
    ("conv_bias_shape", lambda: F.conv2d(x4, w4, np.zeros(3, np.float32)), ValueError, "bias"),
    ("conv_3d_input", lambda: F.conv2d(x4[0], w4), ValueError, "input"),
    ("conv_weight_ndim", lambda: F.conv2d(x4, w4[0]), ValueError, "weight"),
    ("conv_channel_mismatch", lambda: F.conv2d(x4, w4[:, :2]), ValueError, "channels"),
    ("conv_groups_divide", lambda: F.conv2d(x4, w4[:, :1], groups=2), ValueError, "groups"),
    ("conv_groups_zero", lambda: F.conv2d(x4, w4, groups=0), ValueError, "groups"),
    ("conv_stride_zero", lambda: F.conv2d(x4, w4, stride=0), ValueError, "stride"),
    ("conv_stride_neg", lambda: F.conv2d(x4, w4, stride=(1, -1)), ValueError, "stride"),
    ("conv_stride_float", lambda: F.conv2d(x4, w4, stride=1.5), TypeError, "stride"),
    ("conv_stride_triple", lambda: F.conv2d(x4, w4, stride=(1, 1, 1)), TypeError, "stride"),
    ("conv_padding_neg", lambda: F.conv2d(x4, w4, padding=-1), ValueError, "padding"),
    ("conv_padding_word", lambda: F.conv2d(x4, w4, padding="full"), ValueError, "padding"),
    ("conv_same_stride2", lambda: F.conv2d(x4, w4, stride=2, padding="same"), ValueError, "same"),
    ("conv_dilation_zero", lambda: F.conv2d(x4, w4, dilation=0), ValueError, "dilation"),
    (
        "conv_kernel_too_big",
        lambda: F.conv2d(x4, np.zeros((4, 3, 9, 9), np.float32)),
        ValueError,
        "kernel size",
    ),
    ("conv_dilated_too_big", lambda: F.conv2d(x4, w4, dilation=4), ValueError, "kernel size"),
    (
        "conv_bwd_grad_shape",
        lambda: F.conv2d_backward(np.zeros((2, 4, 5, 5), np.float32), x4, w4),
        ValueError,
        "grad_out",
    ),
    (
        "conv_bwd_grad_dtype",
        lambda: F.conv2d_backward(np.zeros((2, 4, 6, 6)), x4, w4),
        TypeError,
        "grad_out",
    ),
    ("maxpool_kernel_zero", lambda: F.max_pool2d(x4, 0), ValueError, "kernel_size"),
    ("maxpool_pad_gt_half", lambda: F.max_pool2d(x4, 2, padding=2), ValueError, "padding"),
    ("maxpool_too_big", lambda: F.max_pool2d(x4, 9), ValueError, "kernel_size"),
    (
        "maxpool_window_in_padding",
        lambda: F.max_pool2d(
            np.zeros((1, 1, 1, 4), np.float32), (2, 1), padding=(1, 0), dilation=(2, 1)
        ),
        ValueError,
        "padding",
    ),
    (
        "maxpool_ceil_mode_type",
        lambda: F.max_pool2d(x4, 2, ceil_mode="yes"),
        TypeError,
        "ceil_mode",
    ),
    ("maxpool_2d_input", lambda: F.max_pool2d(x4[0, 0], 2), ValueError, "input"),
    (
        "maxpool_bwd_idx_dtype",
        lambda: F.max_pool2d_backward(g4, idx.astype(np.int32), x4.shape),
        TypeError,
        "indices",
    ),
    (
        "maxpool_bwd_idx_range",
        lambda: F.max_pool2d_backward(g4, idx + 64, x4.shape),
        ValueError,
        "indices",
    ),
    (
        "maxpool_bwd_idx_shape",
        lambda: F.max_pool2d_backward(g4, idx[:1], x4.shape),
        ValueError,
        "indices",
    ),
    (
        "maxpool_bwd_shape",
        lambda: F.max_pool2d_backward(g4, idx, (2, 3, 8)),
        ValueError,
        "input_shape",
    ),
    ("avgpool_stride_zero", lambda: F.avg_pool2d(x4, 2, stride=0), ValueError, "stride"),
    (
        "avgpool_bwd_grad_shape",
        lambda: F.avg_pool2d_backward(g4, x4.shape, 3),
        ValueError,
        "grad_out",
    ),
    ("adaptive_zero", lambda: F.adaptive_avg_pool2d(x4, 0), ValueError, "output_size"),
    (
        "linear_features",
        lambda: F.linear(np.zeros((2, 5)), np.zeros((3, 4))),
        ValueError,
        "in_features",
    ),
    (
        "linear_mixed_dtype",
        lambda: F.linear(np.zeros((2, 4)), np.zeros((3, 4), np.float32)),
        TypeError,
        "weight",
    ),
    ("relu_bwd_shape", lambda: F.relu_backward(g4, x4), ValueError, "grad_out"),
    (
        "bn_param_shape",
        lambda: F.batch_norm(x4, None, None, np.ones(4, np.float32), None, True),
        ValueError,
        "weight",
    ),
    (
        "bn_eval_no_stats",
        lambda: F.batch_norm(x4, None, None, None, None, False),
        ValueError,
        "running_mean",
    ),
    (
        "bn_one_value",
        lambda: F.batch_norm(x4[:1, :, :1, :1], None, None, None, None, True),
        ValueError,
        "more than 1 value",
    ),
    (
        "bn_dtype",
        lambda: F.batch_norm(x4, np.zeros(3), np.ones(3), None, None, True),
        TypeError,
        "running_mean",
    ),
    ("dropout_p", lambda: F.dropout(x4, 1.5, True, np.random.default_rng()), ValueError, "p"),
    ("dropout_rng", lambda: F.dropout(x4, 0.5, True, "3"), TypeError, "rng"),
    ("dropout_rng_none", lambda: F.dropout(x4, 0.5, True, None), TypeError, "rng"),
    ("softmax_axis", lambda: F.softmax(logits, axis=2), ValueError, "axis"),
    ("ce_target_float", lambda: F.cross_entropy(logits, np.zeros(4)), TypeError, "target"),
    (
        "ce_target_range",
        lambda: F.cross_entropy(logits, np.array([0, 1, 2, 3])),
        ValueError,
        "target",
    ),
    (
        "ce_target_shape",
        lambda: F.cross_entropy(logits, np.zeros(3, np.int64)),
        ValueError,
        "target",
    ),
    (
        "ce_reduction",
        lambda: F.cross_entropy(logits, np.zeros(4, np.int64), "avg"),
        ValueError,
        "reduction",
    ),
    ("im2col_kernel", lambda: F.im2col(x4, (3, 0)), ValueError, "kernel_size"),
    (
        "col2im_shape",
        lambda: F.col2im(np.zeros((2, 27, 10), np.float32), x4.shape, 3),
        ValueError,
        "cols",
    ),
    ("threads_zero", lambda: fastconv.set_num_threads(0), ValueError, "n must be"),
    ("threads_type", lambda: fastconv.set_num_threads("2"), TypeError, "n must be"),
]


@pytest.mark.parametrize("call,exc,text", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_raise_clear_errors(call, exc, text):
    with pytest.raises(exc) as info:
        call()
    assert text in str(info.value)


def test_threads_context_restores_even_on_error():
    before = fastconv.get_num_threads()
    with pytest.raises(RuntimeError):
        with fastconv.threads(1):
            assert fastconv.get_num_threads() == 1
            raise RuntimeError("boom")
    assert fastconv.get_num_threads() == before
    assert not np.shares_memory(x64, F.relu(x64))  # inputs are never modified or aliased


# ---------------------------------------------------------------------------------------------
# Hostile arguments, as families: every geometry argument of every public function against
# every hostile value, every shape argument against every hostile shape. Each must be a
# TypeError or ValueError (never numba's, an OverflowError, a MemoryError or a result) whose
# message names the argument.
# ---------------------------------------------------------------------------------------------

g_conv = np.zeros((2, 4, 6, 6), np.float32)
cols = np.zeros((2, 12, 49), np.float32)

GEOMETRY = {
    "conv2d": (lambda **kw: F.conv2d(x4, w4, **kw), ("stride", "padding", "dilation", "groups")),
    "conv2d_backward": (
        lambda **kw: F.conv2d_backward(g_conv, x4, w4, **kw),
        ("stride", "padding", "dilation", "groups"),
    ),
    "max_pool2d": (
        lambda **kw: F.max_pool2d(x4, **{"kernel_size": 2, **kw}),
        ("kernel_size", "stride", "padding", "dilation"),
    ),
    "avg_pool2d": (
        lambda **kw: F.avg_pool2d(x4, **{"kernel_size": 2, **kw}),
        ("kernel_size", "stride", "padding"),
    ),
    "avg_pool2d_backward": (
        lambda **kw: F.avg_pool2d_backward(g4, x4.shape, **{"kernel_size": 2, **kw}),
        ("kernel_size", "stride", "padding"),
    ),
    "adaptive_avg_pool2d": (
        lambda **kw: F.adaptive_avg_pool2d(x4, **{"output_size": 2, **kw}),
        ("output_size",),
    ),
    "im2col": (
        lambda **kw: F.im2col(x4, **{"kernel_size": 2, **kw}),
        ("kernel_size", "stride", "padding", "dilation"),
    ),
    "col2im": (
        lambda **kw: F.col2im(cols, x4.shape, **{"kernel_size": 2, **kw}),
        ("kernel_size", "stride", "padding", "dilation"),
    ),
}
HOSTILE_INTS = {
    "2**64": 2**64,
    "2**63": 2**63,
    "2**31": 2**31,
    "-2**63": -(2**63),
    "-1": -1,
    "uint64_max": np.uint64(2**64 - 1),
    "int64_2**62": np.int64(2**62),
    "pair_2**64": (1, 2**64),
    "float": 1.5,
    "bool": True,
    "str": "2",
    "None": None,
    "triple": (1, 1, 1),
    "nested": ((1, 1), 1),
}
GEOMETRY_CASES = [
    pytest.param(fn, arg, value, id=f"{name}-{arg}-{vid}")
    for name, (fn, args) in GEOMETRY.items()
    for arg in args
    for vid, value in HOSTILE_INTS.items()
    # stride=None is pooling's documented default (stride = kernel_size)
    if not (value is None and arg == "stride" and name not in ("conv2d", "conv2d_backward"))
    # padding=0 forms are valid; "2" is not a padding word, checked like any other string
]


def _raises_naming(call, name):
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    assert not type(info.value).__module__.startswith("numba"), repr(info.value)
    assert name in str(info.value), str(info.value)


@pytest.mark.parametrize("call, arg, value", GEOMETRY_CASES)
def test_hostile_geometry_arguments_are_named(call, arg, value):
    _raises_naming(lambda: call(**{arg: value}), arg)


def test_memoized_geometry_still_refuses_bools():
    """The window geometry is memoized for plain ints and tuples; True hashes and compares
    equal to 1, and must still be refused after stride=1 has been memoized."""
    x, w = np.ones((1, 1, 6, 6), np.float32), np.ones((2, 1, 3, 3), np.float32)
    for _ in range(2):
        F.conv2d(x, w, stride=1, padding=1, dilation=1)
    for arg, value in (("stride", True), ("padding", True), ("dilation", True)):
        _raises_naming(lambda arg=arg, value=value: F.conv2d(x, w, **{arg: value}), arg)


SHAPED = {
    "max_pool2d_backward": lambda shape: F.max_pool2d_backward(g4, idx, shape),
    "avg_pool2d_backward": lambda shape: F.avg_pool2d_backward(g4, shape, 2),
    "adaptive_avg_pool2d_backward": lambda shape: F.adaptive_avg_pool2d_backward(g4, shape),
    "col2im": lambda shape: F.col2im(cols, shape, 2),
}
HOSTILE_SHAPES = {
    "2**64": (2, 3, 2**64, 8),
    "2**31": (2, 3, 2**31, 8),
    "negative": (2, 3, -8, 8),
    "bool": (2, 3, True, 8),
    "float": (2, 3, 8.0, 8),
    "three": (2, 3, 8),
    "None": None,
    "array-like str": "2388",
}


@pytest.mark.parametrize(
    "call, shape",
    [
        pytest.param(fn, shape, id=f"{name}-{sid}")
        for name, fn in SHAPED.items()
        for sid, shape in HOSTILE_SHAPES.items()
    ],
)
def test_hostile_shapes_are_named(call, shape):
    _raises_naming(lambda: call(shape), "input_shape")


rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
rng = np.random.default_rng(0)

# (id, call, the name the message must contain)
HOSTILE_VALUES = [
    ("bn_momentum_none", lambda: F.batch_norm(x4, rm, rv, None, None, True, None), "momentum"),
    ("bn_momentum_str", lambda: F.batch_norm(x4, rm, rv, None, None, True, "0.1"), "momentum"),
    ("bn_momentum_nan", lambda: F.batch_norm(x4, rm, rv, None, None, True, np.nan), "momentum"),
    ("bn_eps_none", lambda: F.batch_norm(x4, rm, rv, None, None, True, eps=None), "eps"),
    ("bn_eps_negative", lambda: F.batch_norm(x4, rm, rv, None, None, True, eps=-1.0), "eps"),
    ("bn_training_str", lambda: F.batch_norm(x4, rm, rv, None, None, "yes"), "training"),
    ("dropout_training_str", lambda: F.dropout(x4, 0.5, "yes", rng), "training"),
    ("dropout_p_none", lambda: F.dropout(x4, None, True, rng), "p"),
    ("leaky_slope_none", lambda: F.leaky_relu(x4, None), "negative_slope"),
    ("leaky_bwd_slope_str", lambda: F.leaky_relu_backward(x4, x4, "a"), "negative_slope"),
    ("avg_pool_cip_str", lambda: F.avg_pool2d(x4, 2, count_include_pad="no"), "count_include_pad"),
    ("conv_zero_kernel_rows", lambda: F.conv2d(x4, np.zeros((4, 3, 0, 3), np.float32)), "weight"),
    ("conv_zero_out_channels", lambda: F.conv2d(x4, np.zeros((0, 3, 3, 3), np.float32)), "weight"),
    (
        "conv_zero_in_channels",
        lambda: F.conv2d(np.zeros((2, 0, 8, 8), np.float32), np.zeros((4, 0, 3, 3), np.float32)),
        "weight",
    ),
    (
        "conv_bwd_zero_out_channels",
        lambda: F.conv2d_backward(
            np.zeros((2, 0, 6, 6), np.float32), x4, np.zeros((0, 3, 3, 3), np.float32)
        ),
        "weight",
    ),
    ("linear_zero_out", lambda: F.linear(logits, np.zeros((0, 3), np.float32)), "weight"),
    (
        "linear_zero_in",
        lambda: F.linear(np.zeros((4, 0), np.float32), np.zeros((2, 0), np.float32)),
        "weight",
    ),
    (
        "linear_bwd_zero_out",
        lambda: F.linear_backward(
            np.zeros((4, 0), np.float32), logits, np.zeros((0, 3), np.float32)
        ),
        "weight",
    ),
    ("softmax_0d", lambda: F.softmax(np.ones((), np.float32)), "input"),
    ("log_softmax_0d", lambda: F.log_softmax(np.ones((), np.float32)), "input"),
    ("softmax_axis_2**64", lambda: F.softmax(x4, axis=2**64), "axis"),
    ("maxpool_0d", lambda: F.max_pool2d(np.ones((), np.float32), 1), "input"),
    ("conv_0d", lambda: F.conv2d(np.ones((), np.float32), w4), "input"),
    ("threads_2**64", lambda: fastconv.set_num_threads(2**64), "n must be"),
    ("Conv2d_kernel_2**64", lambda: fastconv.nn.Conv2d(3, 4, 2**64), "kernel_size"),
    ("Linear_2**64", lambda: fastconv.nn.Linear(2**64, 3), "in_features"),
]


@pytest.mark.parametrize(
    "call, name", [c[1:] for c in HOSTILE_VALUES], ids=[c[0] for c in HOSTILE_VALUES]
)
def test_hostile_values_are_named(call, name):
    _raises_naming(call, name)


@pytest.mark.parametrize(
    "fn",
    [F.relu, F.sigmoid, F.tanh, F.leaky_relu],
    ids=["relu", "sigmoid", "tanh", "leaky_relu"],
)
def test_0d_inputs_keep_their_shape(fn):
    x = np.array(-2.0, np.float32)
    y = fn(x)
    assert y.shape == () and y.dtype == np.float32
    backward = getattr(F, fn.__name__ + "_backward")
    assert backward(np.array(1.0, np.float32), x).shape == ()


def test_a_huge_stride_is_one_along_a_single_output():
    # Stride along an axis with one output does not move the window: the result is the
    # stride-1 result there (and the blocked engine never sees 2**31 - 1).
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)
    big = 2**31 - 1
    np.testing.assert_array_equal(F.conv2d(x, w, stride=(big, 1)), F.conv2d(x, w)[:, :, :1])
    g = np.ones((2, 4, 1, 6), np.float32)
    for a, b in zip(
        F.conv2d_backward(g, x, w, stride=(big, 1)),
        F.conv2d_backward(np.pad(g, ((0, 0), (0, 0), (0, 5), (0, 0))), x, w),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
