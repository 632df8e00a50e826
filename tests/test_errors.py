"""Every kind of bad argument gets a clean TypeError or ValueError whose
message names the argument; nothing crashes, nothing is written out of
bounds, and the arguments are left untouched."""

from __future__ import annotations

import convcore as cc
import numpy as np
import pytest

f32 = np.float32


def z(*shape, dtype=f32):
    return np.zeros(shape, dtype)


X = z(2, 3, 8, 8)
W = z(4, 3, 3, 3)
B = z(4)
GO = z(2, 4, 6, 6)  # conv2d(X, W) output
P_OUT = z(2, 3, 4, 4)  # max_pool2d(X, 2) output
IDX = np.zeros((2, 3, 4, 4), np.int64)
PAD_GO = z(2, 3, 10, 10)  # pad(X, (1, 1, 1, 1)) output


def conv(**kw):
    args = dict(input=X, weight=W, bias=None)
    args.update(kw)
    return lambda: cc.conv2d(**args)


def conv_bwd(**kw):
    args = dict(grad_output=GO, input=X, weight=W)
    args.update(kw)
    return lambda: cc.conv2d_backward(**args)


def pool(x=X, **kw):
    kw.setdefault("kernel_size", 2)
    return lambda: cc.max_pool2d(x, **kw)


def pool_bwd(grad_output=P_OUT, indices=IDX, input_shape=X.shape):
    return lambda: cc.max_pool2d_backward(grad_output, indices, input_shape)


def pad(x=X, p=(1, 1, 1, 1), **kw):
    return lambda: cc.pad(x, p, **kw)


def pad_bwd(grad_output=PAD_GO, input_shape=X.shape, p=(1, 1, 1, 1), **kw):
    return lambda: cc.pad_backward(grad_output, input_shape, p, **kw)


# (id, call, exception type, regex the message must match: it names the argument)
CASES = [
    # --- wrong number of dimensions
    ("conv_input_2d", conv(input=z(8, 8)), ValueError, "input.*3-D.*4-D.*got 2-D"),
    ("conv_input_5d", conv(input=z(1, 2, 3, 8, 8)), ValueError, "input.*got 5-D"),
    ("conv_weight_3d", conv(weight=z(4, 3, 3)), ValueError, "weight.*4-D"),
    ("conv_weight_5d", conv(weight=z(4, 3, 3, 3, 1)), ValueError, "weight.*4-D"),
    ("conv_bias_2d", conv(bias=z(4, 1)), ValueError, "bias.*1-D"),
    ("conv_bias_0d", conv(bias=np.array(0, f32)), ValueError, "bias.*1-D"),
    ("conv_bwd_grad_output_3d", conv_bwd(grad_output=z(4, 6, 6)), ValueError, "grad_output"),
    (
        "conv_bwd_unbatched_grad_4d",
        conv_bwd(input=z(3, 8, 8), grad_output=z(1, 4, 6, 6)),
        ValueError,
        "grad_output.*3-D",
    ),
    ("pool_input_2d", pool(z(8, 8)), ValueError, "input.*got 2-D"),
    ("pool_input_5d", pool(z(1, 1, 1, 8, 8)), ValueError, "input.*got 5-D"),
    ("pool_bwd_grad_3d", pool_bwd(grad_output=z(3, 4, 4)), ValueError, "grad_output"),
    ("pool_bwd_indices_3d", pool_bwd(indices=np.zeros((3, 4, 4), np.int64)), ValueError, "indices"),
    ("pool_bwd_shape_5", pool_bwd(input_shape=(1, 2, 3, 8, 8)), ValueError, "input_shape"),
    ("pool_bwd_shape_2", pool_bwd(input_shape=(8, 8)), ValueError, "input_shape"),
    ("pad_input_0d", pad(np.array(1, f32)), ValueError, "input"),
    ("pad_input_1d_4tuple", pad(z(5)), ValueError, "input"),
    ("pad_bwd_shape_0", pad_bwd(input_shape=()), ValueError, "input_shape"),
    ("pad_bwd_grad_ndim", pad_bwd(grad_output=z(3, 10, 10)), ValueError, "grad_output"),
    # --- dtype: refused, never converted (TypeError)
    ("conv_input_float64", conv(input=X.astype(np.float64)), TypeError, "input.*float32.*float64"),
    ("conv_input_float16", conv(input=X.astype(np.float16)), TypeError, "input.*float32"),
    ("conv_input_int32", conv(input=X.astype(np.int32)), TypeError, "input.*float32"),
    ("conv_weight_float64", conv(weight=W.astype(np.float64)), TypeError, "weight.*float32"),
    ("conv_bias_float64", conv(bias=B.astype(np.float64)), TypeError, "bias.*float32"),
    ("conv_bias_int", conv(bias=np.zeros(4, np.int64)), TypeError, "bias.*float32"),
    (
        "conv_bwd_grad_float64",
        conv_bwd(grad_output=GO.astype(np.float64)),
        TypeError,
        "grad_output.*float32",
    ),
    ("conv_bwd_input_int8", conv_bwd(input=X.astype(np.int8)), TypeError, "input.*float32"),
    ("conv_input_complex", conv(input=X.astype(np.complex64)), TypeError, "input.*float32"),
    ("conv_input_bigendian", conv(input=X.astype(">f4")), TypeError, "input"),
    ("pool_input_float64", pool(X.astype(np.float64)), TypeError, "input.*float32"),
    (
        "pool_bwd_grad_float64",
        pool_bwd(grad_output=P_OUT.astype(np.float64)),
        TypeError,
        "grad_output.*float32",
    ),
    ("pool_bwd_indices_int32", pool_bwd(indices=IDX.astype(np.int32)), TypeError, "indices.*int64"),
    ("pool_bwd_indices_float", pool_bwd(indices=IDX.astype(f32)), TypeError, "indices.*int64"),
    (
        "pool_bwd_indices_uint64",
        pool_bwd(indices=IDX.astype(np.uint64)),
        TypeError,
        "indices.*int64",
    ),
    ("pad_input_float64", pad(X.astype(np.float64)), TypeError, "input.*float32"),
    ("pad_input_bool", pad(X.astype(bool)), TypeError, "input.*float32"),
    (
        "pad_bwd_grad_float64",
        pad_bwd(grad_output=z(2, 3, 10, 10, dtype=np.float64)),
        TypeError,
        "grad_output.*float32",
    ),
    # --- not an ndarray
    ("conv_input_list", conv(input=X.tolist()), TypeError, "input.*ndarray"),
    ("conv_weight_scalar", conv(weight=1.0), TypeError, "weight.*ndarray"),
    ("conv_bias_list", conv(bias=[0.0] * 4), TypeError, "bias.*ndarray"),
    ("conv_input_none", conv(input=None), TypeError, "input"),
    ("conv_bwd_grad_list", conv_bwd(grad_output=GO.tolist()), TypeError, "grad_output.*ndarray"),
    ("pool_input_list", pool(X.tolist()), TypeError, "input.*ndarray"),
    ("pool_bwd_indices_list", pool_bwd(indices=IDX.tolist()), TypeError, "indices.*ndarray"),
    ("pool_bwd_shape_int", pool_bwd(input_shape=5), TypeError, "input_shape"),
    ("pool_bwd_shape_float", pool_bwd(input_shape=(2, 3, 8.0, 8)), TypeError, "input_shape"),
    ("pad_input_list", pad(X.tolist()), TypeError, "input.*ndarray"),
    ("pad_bwd_grad_list", pad_bwd(grad_output=[1.0]), TypeError, "grad_output.*ndarray"),
    ("pad_bwd_shape_none", pad_bwd(input_shape=None), TypeError, "input_shape"),
    # --- not C-contiguous (ValueError; never a silent copy)
    ("conv_input_strided", conv(input=z(2, 3, 8, 16)[..., ::2]), ValueError, "input.*contiguous"),
    ("conv_input_fortran", conv(input=np.asfortranarray(X)), ValueError, "input.*contiguous"),
    (
        "conv_input_transposed",
        conv(input=z(2, 3, 8, 8).transpose(0, 1, 3, 2)),
        ValueError,
        "input.*contiguous",
    ),
    ("conv_weight_strided", conv(weight=z(8, 3, 3, 3)[::2]), ValueError, "weight.*contiguous"),
    ("conv_bias_strided", conv(bias=z(8)[::2]), ValueError, "bias.*contiguous"),
    (
        "conv_bwd_grad_strided",
        conv_bwd(grad_output=z(2, 4, 6, 12)[..., ::2]),
        ValueError,
        "grad_output.*contiguous",
    ),
    (
        "conv_input_unaligned",
        conv(
            input=np.frombuffer(bytearray(2 * 3 * 64 * 4 + 1), f32, 2 * 3 * 64, 1).reshape(
                2, 3, 8, 8
            )
        ),
        ValueError,
        "input",
    ),
    ("pool_input_strided", pool(z(2, 3, 16, 8)[:, :, ::2]), ValueError, "input.*contiguous"),
    (
        "pool_bwd_grad_strided",
        pool_bwd(grad_output=z(2, 3, 4, 8)[..., ::2]),
        ValueError,
        "grad_output.*contiguous",
    ),
    (
        "pool_bwd_indices_strided",
        pool_bwd(indices=np.zeros((2, 3, 4, 8), np.int64)[..., ::2]),
        ValueError,
        "indices.*contiguous",
    ),
    ("pad_input_strided", pad(z(2, 3, 8, 16)[..., ::2]), ValueError, "input.*contiguous"),
    (
        "pad_bwd_grad_strided",
        pad_bwd(grad_output=z(2, 3, 10, 20)[..., ::2]),
        ValueError,
        "grad_output.*contiguous",
    ),
    # --- mismatched shapes
    ("conv_channels", conv(weight=z(4, 2, 3, 3)), ValueError, "weight.*in_channels"),
    (
        "conv_groups_not_dividing_c",
        conv(weight=z(4, 1, 3, 3), groups=2),
        ValueError,
        "groups.*divide",
    ),
    (
        "conv_groups_not_dividing_k",
        conv(input=z(2, 4, 8, 8), weight=z(3, 2, 3, 3), groups=2),
        ValueError,
        "groups.*out_channels",
    ),
    (
        "conv_groups_weight_channels",
        conv(input=z(2, 4, 8, 8), weight=z(4, 4, 3, 3), groups=2),
        ValueError,
        "weight.*in_channels/groups",
    ),
    ("conv_groups_zero", conv(groups=0), ValueError, "groups"),
    ("conv_groups_negative", conv(groups=-3), ValueError, "groups"),
    ("conv_groups_float", conv(groups=1.0), TypeError, "groups"),
    ("conv_bias_length", conv(bias=z(5)), ValueError, "bias.*\\(4,\\)"),
    ("conv_bias_empty", conv(bias=z(0)), ValueError, "bias"),
    ("conv_input_no_channels", conv(input=z(2, 0, 8, 8)), ValueError, "input"),
    ("conv_input_empty_plane", conv(input=z(2, 3, 0, 8)), ValueError, "input"),
    ("conv_weight_zero_k", conv(weight=z(0, 3, 3, 3)), ValueError, "weight"),
    ("conv_weight_zero_kernel", conv(weight=z(4, 3, 0, 3)), ValueError, "weight"),
    (
        "conv_bwd_grad_shape",
        conv_bwd(grad_output=z(2, 4, 6, 5)),
        ValueError,
        "grad_output.*\\(2, 4, 6, 6\\)",
    ),
    (
        "conv_bwd_grad_channels",
        conv_bwd(grad_output=z(2, 5, 6, 6)),
        ValueError,
        "grad_output.*expected shape",
    ),
    (
        "conv_bwd_grad_batch",
        conv_bwd(grad_output=z(3, 4, 6, 6)),
        ValueError,
        "grad_output.*expected shape",
    ),
    ("conv_bwd_weight_channels", conv_bwd(weight=z(4, 2, 3, 3)), ValueError, "weight"),
    (
        "pool_bwd_indices_shape",
        pool_bwd(indices=np.zeros((2, 3, 4, 5), np.int64)),
        ValueError,
        "indices.*expected shape",
    ),
    (
        "pool_bwd_grad_batch",
        pool_bwd(grad_output=z(3, 3, 4, 4), indices=np.zeros((3, 3, 4, 4), np.int64)),
        ValueError,
        "grad_output.*input_shape",
    ),
    (
        "pool_bwd_grad_channels",
        pool_bwd(grad_output=z(2, 2, 4, 4), indices=np.zeros((2, 2, 4, 4), np.int64)),
        ValueError,
        "grad_output",
    ),
    (
        "pool_bwd_grad_empty_plane",
        pool_bwd(grad_output=z(2, 3, 0, 4), indices=np.zeros((2, 3, 0, 4), np.int64)),
        ValueError,
        "grad_output",
    ),
    ("pool_bwd_shape_negative", pool_bwd(input_shape=(2, 3, -8, 8)), ValueError, "input_shape"),
    ("pool_bwd_shape_zero_plane", pool_bwd(input_shape=(2, 3, 0, 8)), ValueError, "input_shape"),
    (
        "pad_bwd_grad_shape",
        pad_bwd(grad_output=z(2, 3, 10, 9)),
        ValueError,
        "grad_output.*expected shape",
    ),
    ("pad_bwd_shape_negative", pad_bwd(input_shape=(2, 3, -8, 8)), ValueError, "input_shape"),
    # --- stride, dilation, kernel_size: zero or negative
    ("conv_stride_0", conv(stride=0), ValueError, "stride.*positive"),
    ("conv_stride_negative", conv(stride=(1, -2)), ValueError, "stride.*positive.*width"),
    ("conv_dilation_0", conv(dilation=0), ValueError, "dilation.*positive"),
    ("conv_dilation_negative", conv(dilation=(-1, 1)), ValueError, "dilation.*positive.*height"),
    ("conv_stride_3_values", conv(stride=(1, 1, 1)), ValueError, "stride.*2"),
    ("conv_stride_float", conv(stride=1.5), TypeError, "stride"),
    ("conv_stride_bool", conv(stride=True), TypeError, "stride"),
    ("conv_stride_str", conv(stride="1"), TypeError, "stride"),
    ("conv_dilation_none", conv(dilation=None), TypeError, "dilation"),
    ("pool_kernel_0", pool(kernel_size=0), ValueError, "kernel_size.*positive"),
    ("pool_kernel_negative", pool(kernel_size=(2, -1)), ValueError, "kernel_size.*positive"),
    ("pool_kernel_float", pool(kernel_size=2.0), TypeError, "kernel_size"),
    ("pool_kernel_none", pool(kernel_size=None), TypeError, "kernel_size"),
    ("pool_kernel_3_values", pool(kernel_size=(2, 2, 2)), ValueError, "kernel_size"),
    ("pool_stride_0", pool(stride=0), ValueError, "stride.*positive"),
    ("pool_stride_negative", pool(stride=(-1, 2)), ValueError, "stride.*positive"),
    ("pool_dilation_0", pool(dilation=0), ValueError, "dilation.*positive"),
    ("pool_dilation_negative", pool(dilation=(1, -2)), ValueError, "dilation.*positive"),
    # --- padding
    ("conv_padding_negative", conv(padding=-1), ValueError, "padding.*non-negative"),
    ("conv_padding_negative_w", conv(padding=(0, -2)), ValueError, "padding.*non-negative"),
    ("conv_padding_unknown_str", conv(padding="full"), ValueError, "padding.*'full'"),
    ("conv_padding_SAME", conv(padding="SAME"), ValueError, "padding"),
    ("conv_padding_float", conv(padding=0.5), TypeError, "padding"),
    ("conv_padding_4_values", conv(padding=(1, 1, 1, 1)), ValueError, "padding"),
    ("conv_same_stride2", conv(padding="same", stride=2), ValueError, "padding='same'.*stride"),
    (
        "conv_same_stride_w",
        conv(padding="same", stride=(1, 3)),
        ValueError,
        "padding='same'.*width",
    ),
    (
        "conv_bwd_same_stride2",
        conv_bwd(grad_output=z(2, 4, 4, 4), padding="same", stride=2),
        ValueError,
        "padding='same'",
    ),
    ("pool_padding_negative", pool(padding=-1), ValueError, "padding.*non-negative"),
    (
        "pool_padding_over_half",
        pool(kernel_size=3, padding=2),
        ValueError,
        "padding.*half.*kernel_size",
    ),
    (
        "pool_padding_over_half_w",
        pool(kernel_size=(4, 2), padding=(2, 2)),
        ValueError,
        "padding.*half",
    ),
    ("pool_padding_str", pool(padding="same"), TypeError, "padding"),
    # --- kernel larger than the (padded) input; output size below 1
    (
        "conv_kernel_too_large",
        conv(weight=z(4, 3, 9, 3)),
        ValueError,
        "weight.*larger than the padded input",
    ),
    (
        "conv_kernel_too_large_dilated",
        conv(dilation=(1, 4)),
        ValueError,
        "kernel size.*larger than the padded input",
    ),
    (
        "conv_kernel_too_large_padded",
        conv(input=z(2, 3, 2, 2), weight=z(4, 3, 5, 5), padding=1),
        ValueError,
        "larger than the padded input",
    ),
    ("pool_kernel_too_large", pool(z(1, 1, 3, 3), kernel_size=4), ValueError, "output size"),
    (
        "pool_output_below_1_dilation",
        pool(z(1, 1, 5, 5), kernel_size=3, dilation=3),
        ValueError,
        "output size",
    ),
    (
        "pool_output_below_1_width",
        pool(z(1, 1, 8, 1), kernel_size=(1, 2)),
        ValueError,
        "output size.*>= 1",
    ),
    # --- pad modes
    ("pad_unknown_mode", pad(mode="wrap"), ValueError, "mode.*'wrap'"),
    ("pad_mode_none", pad(mode=None), TypeError, "mode"),
    ("pad_mode_case", pad(mode="Reflect"), ValueError, "mode"),
    ("pad_bwd_unknown_mode", pad_bwd(mode="symmetric"), ValueError, "mode"),
    ("pad_value_for_reflect", pad(mode="reflect", value=1.0), ValueError, "value"),
    ("pad_value_str", pad(value="x"), (TypeError, ValueError), "value|could not convert"),
    ("pad_length_3", pad(p=(1, 1, 1)), ValueError, "pad.*2 ints.*4 ints"),
    ("pad_length_6", pad(p=(1,) * 6), ValueError, "pad"),
    ("pad_not_sequence", pad(p=1), TypeError, "pad"),
    ("pad_float", pad(p=(1.0, 1, 1, 1)), TypeError, "pad"),
    ("pad_negative_output", pad(p=(-5, -5, 0, 0)), ValueError, "pad.*negative output size"),
    (
        "pad_reflect_eq_width",
        pad(p=(8, 0, 0, 0), mode="reflect"),
        ValueError,
        "reflect padding must be smaller",
    ),
    (
        "pad_reflect_gt_height",
        pad(p=(0, 0, 0, 9), mode="reflect"),
        ValueError,
        "reflect padding must be smaller",
    ),
    ("pad_reflect_1d_eq", pad(z(4), p=(0, 4), mode="reflect"), ValueError, "reflect"),
    ("pad_circular_gt_width", pad(p=(9, 0, 0, 0), mode="circular"), ValueError, "circular padding"),
    (
        "pad_circular_gt_cropped",
        pad(p=(8, -1, 0, 0), mode="circular"),
        ValueError,
        "circular padding",
    ),
    (
        "pad_replicate_empty",
        pad(z(2, 0, 4), p=(0, 0, 1, 1), mode="replicate"),
        ValueError,
        "non-empty input",
    ),
    (
        "pad_bwd_reflect_too_big",
        pad_bwd(z(2, 3, 24, 10), p=(1, 1, 8, 8), mode="reflect"),
        ValueError,
        "reflect",
    ),
    # --- sizes that would overflow
    ("conv_padding_2_40", conv(padding=2**40), ValueError, "output: size overflow"),
    ("conv_padding_2_62", conv(padding=(2**62, 0)), ValueError, "padding: size overflow"),
    ("conv_padding_2_70", conv(padding=2**70), ValueError, "padding.*too large"),
    ("conv_stride_2_70", conv(stride=2**70), ValueError, "stride.*too large"),
    ("conv_dilation_2_40", conv(dilation=2**40), ValueError, "dilation included.*larger than"),
    ("conv_dilation_2_62", conv(dilation=2**62), ValueError, "dilation: size overflow"),
    ("conv_groups_2_70", conv(groups=2**70), ValueError, "groups.*too large"),
    (
        "conv_same_dilation_2_62",
        conv(padding="same", dilation=2**62),
        ValueError,
        "dilation: size overflow",
    ),
    ("pool_kernel_2_40", pool(kernel_size=2**40), ValueError, "output size.*kernel_size"),
    ("pool_kernel_2_62", pool(kernel_size=2**62, padding=2**61), ValueError, "overflow"),
    ("pool_kernel_2_70", pool(kernel_size=2**70), ValueError, "kernel_size.*too large"),
    (
        "pool_dilation_2_40",
        pool(dilation=2**40, kernel_size=2**30),
        ValueError,
        "dilation.*overflow",
    ),
    ("pool_stride_2_62", pool(stride=2**62), ValueError, "overflow"),
    ("pool_padding_2_62", pool(kernel_size=2**62, padding=2**61, stride=1), ValueError, "overflow"),
    (
        "pool_bwd_shape_overflow",
        pool_bwd(input_shape=(2, 3, 2**40, 2**40)),
        ValueError,
        "input_shape.*overflow",
    ),
    (
        "pool_bwd_shape_2_70",
        pool_bwd(input_shape=(2, 3, 2**70, 1)),
        ValueError,
        "input_shape.*too large",
    ),
    ("pad_2_62", pad(p=(2**62, 0, 0, 0)), ValueError, "pad.*overflow"),
    ("pad_2_40_both", pad(p=(2**40, 0, 2**40, 0)), ValueError, "output: size overflow"),
    ("pad_2_70", pad(p=(2**70, 0, 0, 0)), ValueError, "pad.*too large"),
    ("pad_bwd_2_62", pad_bwd(p=(2**62, 2**62, 0, 0)), ValueError, "overflow"),
    (
        "pad_bwd_shape_overflow",
        pad_bwd(input_shape=(2**31, 2**31, 2**31, 8)),
        ValueError,
        "overflow",
    ),
    # --- output_mask
    ("mask_length_2", conv_bwd(output_mask=(True, True)), ValueError, "output_mask.*3"),
    ("mask_length_4", conv_bwd(output_mask=(True,) * 4), ValueError, "output_mask"),
    ("mask_not_sequence", conv_bwd(output_mask=True), TypeError, "output_mask"),
    ("mask_none", conv_bwd(output_mask=None), TypeError, "output_mask"),
]


@pytest.mark.parametrize("call,exc,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# Rejected cleanly, but the message does not say which argument is wrong.
# Huge sizes and non-numeric fill values: the message must still name the argument.
MESSAGE_CASES = [
    ("pool_kernel_2_62", pool(kernel_size=2**62), ValueError, "kernel_size"),
    ("pool_stride_2_62", pool(stride=(1, 2**62)), ValueError, "stride"),
    ("pool_dilation_2_62", pool(dilation=2**62), ValueError, "dilation"),
    ("pad_value_str", pad(value="x"), TypeError, "value"),
]


@pytest.mark.parametrize(
    "call,exc,match", [c[1:] for c in MESSAGE_CASES], ids=[c[0] for c in MESSAGE_CASES]
)
def test_bad_input_message_names_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_ids_are_unique():
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    "bad", [-1, 16, 2**40, -(2**62), np.iinfo(np.int64).min, np.iinfo(np.int64).max]
)
def test_pool_backward_index_out_of_range(bad):
    # The whole array is validated before anything is written: a clean
    # ValueError naming indices, the arguments untouched, no crash.
    x = np.arange(2 * 3 * 4 * 4, dtype=f32).reshape(2, 3, 4, 4)
    _, idx = cc.max_pool2d(x, 2, return_indices=True)
    go = np.ones((2, 3, 2, 2), f32)
    for pos in [(0, 0, 0, 0), (1, 2, 1, 1), (1, 0, 0, 1)]:
        bad_idx = idx.copy()
        bad_idx[pos] = bad
        saved_idx, saved_go = bad_idx.copy(), go.copy()
        with pytest.raises(ValueError, match=r"indices.*\[0, 16\)"):
            cc.max_pool2d_backward(go, bad_idx, x.shape)
        assert np.array_equal(bad_idx, saved_idx) and np.array_equal(go, saved_go)
    # and the valid call still works afterwards
    gi = cc.max_pool2d_backward(go, idx, x.shape)
    assert gi.sum() == go.sum()


def test_pool_backward_index_of_another_plane_size():
    # Indices from a larger input are out of range for a smaller one.
    x = np.random.default_rng(0).standard_normal((1, 2, 8, 8), dtype=f32)
    y, idx = cc.max_pool2d(x, 2, return_indices=True)
    with pytest.raises(ValueError, match="indices"):
        cc.max_pool2d_backward(np.ones_like(y), idx, (1, 2, 4, 8))


def test_errors_leave_inputs_untouched():
    rng = np.random.default_rng(0)
    x, w = (
        rng.standard_normal((2, 3, 8, 8), dtype=f32),
        rng.standard_normal((4, 3, 3, 3), dtype=f32),
    )
    x0, w0 = x.copy(), w.copy()
    for bad in (dict(stride=0), dict(padding=-1), dict(groups=2), dict(padding="same", stride=2)):
        with pytest.raises(ValueError):
            cc.conv2d(x, w, **bad)
        with pytest.raises(ValueError):
            cc.conv2d_backward(z(2, 4, 6, 6), x, w, **bad)
    assert np.array_equal(x, x0) and np.array_equal(w, w0)


def test_read_only_inputs_are_fine():
    # Read-only arrays are valid inputs (convcore never writes to them).
    x, w = z(1, 2, 5, 5), z(3, 2, 3, 3)
    x.flags.writeable = False
    w.flags.writeable = False
    assert cc.conv2d(x, w).shape == (1, 3, 3, 3)
    assert cc.max_pool2d(x, 2).shape == (1, 2, 2, 2)
    assert cc.pad(x, (1, 1)).shape == (1, 2, 5, 7)


def test_no_silent_conversion_of_subclasses_or_views():
    # A contiguous view and a 0-stride broadcast: the view is fine, the
    # broadcast is not contiguous.
    base = z(4, 3, 8, 8)
    assert cc.conv2d(base[1:3], W).shape == (2, 4, 6, 6)
    with pytest.raises(ValueError, match="input.*contiguous"):
        cc.conv2d(np.broadcast_to(z(1, 3, 8, 8), (2, 3, 8, 8)), W)
