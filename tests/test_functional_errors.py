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
