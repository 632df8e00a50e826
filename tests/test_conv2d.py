"""conv2d and conv2d_backward against PyTorch (float64 reference), on every
ISA path: the shared problem list, explicit awkward cases, and generated
cases over every argument."""

from __future__ import annotations

import itertools
import math
import types

import convcore
import numpy as np
import pytest
from convcore import problems
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import (
    U32,
    assert_bitwise,
    available_isas,
    check,
    conv_case,
    counted,
    disabled,
    examples,
    isa_cap,
    rand,
)

# ---------------------------------------------------------------------------
# The shared problem list (convcore.problems)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", problems.EDGE_CASES)
def test_edge_cases(name, isa):
    x, w, b, kw = conv_case(name)
    check("conv2d", x, w, b, isa=isa, **kw)


# The model layers with a small batch (the full batch runs in the
# determinism tests); the generic 56x56 layers with N=1.
_MODEL = [p for p in problems.ALL_CONV if p not in problems.EDGE_CASES]


@pytest.mark.parametrize("name", _MODEL)
def test_model_layers(name, isa):
    n = 1 if name in problems.GENERIC_LAYERS else 3
    x, w, b, kw = conv_case(name, n=n)
    check("conv2d", x, w, b, isa=isa, **kw)


@pytest.mark.parametrize("name", problems.TUTORIAL_LAYERS[0:3:2])
def test_tutorial_layers_full_batch(name):
    # N=100 as in training: the weight gradient reduces over 100 images in chunks.
    x, w, b, kw = conv_case(name)
    check("conv2d", x, w, b, **kw)


# ---------------------------------------------------------------------------
# Row-segment kernels (ops/conv2d_rows.cpp): the small-channel layers
# ---------------------------------------------------------------------------

_SMALL_LAYERS = [
    "n100_c1_h28_w28_k6_r5_s1_p0",
    "n100_c6_h12_w12_k12_r5_s1_p0",
    "n100_c1_h28_w28_k32_r3_s1_p1",
]


@pytest.mark.parametrize("batch", [100, 128])
@pytest.mark.parametrize("name", _SMALL_LAYERS)
def test_small_layers_run_the_rows_kernels(name, batch):
    """Under the default cap the small-channel model layers run the AVX-512
    row-segment kernels (the 32-channel first layer's weight gradient the
    channels-in-lanes one) where the CPU has AVX-512, so the fast path
    cannot silently stop being used, and match PyTorch."""
    x, w, b, kw = conv_case(name, n=batch)
    check("conv2d", x, w, b, **kw)
    if convcore.build_info()["isa_active"] != "avx512":
        pytest.skip("AVX-512 not active (CPU or CONVCORE_MAX_ISA): the rows kernels do not apply")
    assert convcore.last_kernel("conv2d_fwd") == "conv2d_fwd_f32_rows_8w__avx512"
    # The unpadded 5x5 layers, whose full convolution pads dy by 4 columns
    # and rows, take the tap-column kernel for their data gradient.
    unpadded = tuple(kw["padding"]) == (0, 0)
    assert convcore.last_kernel("conv2d_bwd_data") == (
        TAPCOLS if unpadded else "conv2d_bwd_data_f32_rows_8w__avx512"
    )
    # The weight gradient of the 32-channel first layer runs channels in lanes.
    assert convcore.last_kernel("conv2d_bwd_weight") == (
        "conv2d_bwd_weight_f32_clanes_6x64_12x32__avx512"
        if w.shape[0] == 32
        else "conv2d_bwd_weight_f32_rows_8w__avx512"
    )


# Shapes at the edges of the rows kernels' applicable(): min(C, K) 8 and 9,
# max(C, K) 64 and 65; every channel and tap tile (K = 1..8, 12, 13, 32;
# C*R*S from 1 to 150), rows of 1, 7, 8, 9 and 17 outputs, padding
# wider than the kernel, dilation, kernels as large as the padded input.
ROWS_CASES = {
    "k1_w17": ((2, 1, 5, 19), (1, 1, 3, 3), True, {}),
    "k2_w9": ((2, 3, 6, 11), (2, 3, 3, 3), True, {}),
    "k3_w8_pad2": ((1, 2, 7, 8), (3, 2, 5, 5), False, dict(padding=2)),
    "k4_w7": ((3, 1, 9, 7), (4, 1, 1, 1), True, {}),
    "k5_w1": ((2, 4, 6, 3), (5, 4, 3, 3), True, {}),
    "k7_c1_pad4": ((2, 1, 4, 5), (7, 1, 3, 3), True, dict(padding=4)),
    "k8_c8": ((2, 8, 10, 10), (8, 8, 3, 3), True, dict(padding=1)),
    "k13_c2_dil2": ((2, 2, 11, 13), (13, 2, 3, 3), True, dict(padding=2, dilation=2)),
    "k32_c1_crs12": ((3, 1, 9, 10), (32, 1, 3, 4), True, dict(padding=(1, 2))),
    "k32_c1_crs13": ((2, 1, 9, 10), (32, 1, 1, 13), True, dict(padding=(0, 6))),
    "k12_c6_5x5_w8": ((5, 6, 12, 12), (12, 6, 5, 5), True, {}),
    "k64_c8": ((2, 8, 6, 6), (64, 8, 3, 3), True, dict(padding=1)),
    "k65_c1_outside": ((1, 1, 5, 5), (65, 1, 3, 3), True, dict(padding=1)),
    "c9_k9_outside": ((1, 9, 5, 5), (9, 9, 3, 3), True, dict(padding=1)),
    "c64_k1": ((2, 64, 5, 6), (1, 64, 3, 3), True, dict(padding=1)),
    "kernel_eq_padded_input": ((2, 1, 3, 4), (6, 1, 5, 6), True, dict(padding=(1, 1))),
    "rect_padding": ((2, 2, 7, 9), (6, 2, 3, 2), True, dict(padding=(2, 0))),
}


@pytest.mark.parametrize("kind", ["normal", "ties"])
@pytest.mark.parametrize("name", ROWS_CASES)
def test_rows_kernel_edges(name, kind, isa):
    xs, ws, bias, kw = ROWS_CASES[name]
    x, w = rand(xs, 11, kind), rand(ws, 12) * np.float32(0.3)
    b = rand((ws[0],), 13) if bias else None
    check("conv2d", x, w, b, isa=isa, **kw)


# ---------------------------------------------------------------------------
# Explicit awkward cases: (x shape, w shape, bias, kwargs)
# ---------------------------------------------------------------------------

CASES = {
    "batch1_one_channel": ((1, 1, 7, 7), (1, 1, 3, 3), True, {}),
    "one_pixel": ((1, 1, 1, 1), (1, 1, 1, 1), True, {}),
    "odd_sizes": ((3, 3, 13, 11), (5, 3, 3, 3), True, dict(padding=1)),
    "width3": ((2, 2, 9, 3), (3, 2, 3, 3), True, dict(padding=1)),
    "width7_below_tile8": ((2, 3, 5, 7), (4, 3, 3, 3), False, dict(padding=1)),
    "width15_below_tile16": ((1, 3, 4, 15), (6, 3, 1, 3), True, {}),
    "width17_tile_plus_1": ((2, 2, 3, 17), (7, 2, 2, 1), True, {}),
    "width1": ((2, 3, 9, 1), (4, 3, 3, 1), True, dict(padding=(1, 0))),
    "height1": ((2, 3, 1, 9), (4, 3, 1, 3), True, {}),
    "channels7_out9": ((2, 7, 6, 6), (9, 7, 3, 3), True, dict(padding=1)),
    "channels13_out11": ((1, 13, 5, 5), (11, 13, 2, 2), True, {}),
    "out_channels_17": ((1, 9, 4, 3), (17, 9, 1, 1), True, {}),
    "out_channels_6x16_plus_1": ((1, 4, 6, 6), (97, 4, 3, 3), True, {}),
    "kernel_eq_input": ((2, 3, 5, 6), (4, 3, 5, 6), True, {}),
    "kernel_eq_padded_input": ((2, 3, 4, 5), (2, 3, 6, 7), True, dict(padding=1)),
    "kernel_eq_padded_dilated": ((1, 2, 5, 5), (3, 2, 3, 3), True, dict(padding=1, dilation=3)),
    "stride_gt_kernel": ((2, 3, 11, 10), (4, 3, 1, 1), True, dict(stride=3)),
    "stride_gt_kernel_2": ((2, 2, 9, 13), (3, 2, 2, 2), True, dict(stride=(5, 3))),
    "stride_gt_input": ((1, 2, 4, 4), (2, 2, 2, 2), True, dict(stride=7)),
    "big_padding": ((1, 2, 4, 4), (3, 2, 3, 3), True, dict(padding=5)),
    "big_padding_1x1": ((2, 2, 3, 3), (2, 2, 1, 1), True, dict(padding=(4, 2))),
    "asymmetric_all": (
        (2, 3, 10, 12),
        (4, 3, 3, 5),
        True,
        dict(stride=(1, 3), padding=(2, 0), dilation=(1, 2)),
    ),
    "asymmetric_stride_dilation": (
        (2, 2, 12, 9),
        (3, 2, 2, 3),
        True,
        dict(stride=(2, 1), padding=(0, 3), dilation=(3, 1)),
    ),
    "groups2": ((2, 4, 7, 7), (6, 2, 3, 3), True, dict(padding=1, groups=2)),
    "groups4_strided": ((2, 8, 9, 9), (4, 2, 3, 3), True, dict(stride=2, groups=4)),
    "depthwise": ((2, 5, 8, 8), (5, 1, 3, 3), True, dict(padding=1, groups=5)),
    "depthwise_multiplier2": ((2, 3, 7, 6), (6, 1, 3, 3), True, dict(groups=3)),
    "depthwise_32_dilated": (
        (1, 32, 9, 9),
        (32, 1, 3, 3),
        False,
        dict(padding=2, dilation=2, groups=32),
    ),
    "same_k3": ((2, 3, 7, 8), (4, 3, 3, 3), True, dict(padding="same")),
    "same_k4_even": ((2, 3, 7, 8), (4, 3, 4, 4), True, dict(padding="same")),
    "same_k2x5_dilated": ((2, 2, 9, 9), (3, 2, 2, 5), True, dict(padding="same", dilation=(2, 3))),
    "same_k4_dilation2": ((1, 2, 6, 6), (2, 2, 4, 4), True, dict(padding="same", dilation=2)),
    "same_k1": ((2, 3, 5, 5), (4, 3, 1, 1), True, dict(padding="same")),
    "same_groups": ((2, 4, 6, 5), (4, 2, 2, 3), True, dict(padding="same", groups=2)),
    "valid": ((2, 3, 7, 8), (4, 3, 3, 2), True, dict(padding="valid", stride=2)),
    "padding_list": (
        (1, 2, 5, 6),
        (2, 2, 3, 3),
        True,
        dict(padding=[2, 1], stride=[1, 2], dilation=[1, 1]),
    ),
    "no_bias": ((2, 3, 6, 6), (4, 3, 3, 3), False, dict(padding=1)),
    "large_reduction": ((2, 64, 8, 8), (8, 64, 5, 5), True, dict(padding=2)),
    "batch_17_chunks": ((17, 3, 6, 6), (5, 3, 3, 3), True, dict(padding=1)),
    "batch_0": ((0, 3, 5, 5), (4, 3, 3, 3), True, dict(padding=1)),
    # Channels in lanes (the AVX-512 family, >= 16 channels) near its edges:
    # partial 32-channel panels, row tiles of 7..14 and their splits, stride,
    # dilation, groups, 1x1 and 5x5 kernels, and shapes it leaves alone.
    "clanes_c16_k32_w7": ((1, 16, 5, 7), (32, 16, 3, 3), True, dict(padding=1)),
    "clanes_c17_k90": ((2, 17, 9, 9), (90, 17, 3, 3), True, dict(padding=1)),
    "clanes_c90_k20_w30_p2": ((1, 90, 6, 30), (20, 90, 3, 3), False, dict(padding=2)),
    "clanes_k64_w17_p0": ((2, 32, 6, 17), (64, 32, 3, 3), True, {}),
    "clanes_k80_sixth_padding": ((1, 32, 4, 14), (80, 32, 3, 3), True, dict(padding=1)),
    "clanes_k128_w14": ((1, 32, 4, 14), (128, 32, 3, 3), True, dict(padding=1)),
    "clanes_k96_w29": ((2, 32, 5, 29), (96, 32, 3, 3), True, dict(padding=1)),
    "clanes_stride2": ((2, 32, 15, 29), (32, 32, 3, 3), True, dict(stride=2, padding=1)),
    "clanes_dilated": ((1, 32, 12, 20), (32, 32, 3, 3), True, dict(padding=2, dilation=2)),
    "clanes_groups2": ((2, 64, 8, 16), (64, 32, 3, 3), True, dict(padding=1, groups=2)),
    "clanes_1x1": ((2, 32, 7, 14), (64, 32, 1, 1), True, {}),
    "clanes_1x1_padded": ((1, 32, 6, 14), (32, 32, 1, 1), True, dict(padding=1)),  # dy cropped
    "clanes_k5": ((1, 32, 10, 14), (32, 32, 5, 5), True, dict(padding=2)),
    "clanes_batch17": ((17, 32, 4, 9), (32, 32, 3, 3), True, dict(padding=1)),
    "clanes_k16_half_panel": ((1, 16, 5, 14), (16, 16, 3, 3), True, dict(padding=1)),
    "clanes_w6_too_narrow": ((1, 32, 6, 6), (32, 32, 3, 3), True, {}),
    "clanes_w1": ((2, 32, 5, 1), (32, 32, 3, 1), True, dict(padding=(1, 0))),
}


@pytest.mark.parametrize("name", CASES)
def test_awkward(name, isa):
    xs, ws, bias, kw = CASES[name]
    x, w = rand(xs, 1), rand(ws, 2)
    b = rand((ws[0],), 3) if bias else None
    check("conv2d", x, w, b, isa=isa, **kw)


# Under the avx512 cap the oracle accepts an AVX2 kernel wherever no AVX-512
# one applies; these must really run the channels-in-lanes family, so it
# cannot silently stop being chosen.  The Winograd kernels, ahead of it in the
# lists, take the 3x3 stride-1 forward and data gradient of most of these
# shapes; they are disabled here, so the family keeps its own coverage (and
# is checked against the oracle on the same shapes).
_CLANES_LAYERS = [
    p for p in problems.WIDE_LAYERS if not p.startswith("pool") and problems.parse(p).C >= 16
]
# The ops each case must run on the family (the rest fall back by design:
# a half-empty 32-channel panel, stride 2 for the data gradient, narrow rows).
_ALL3 = ("conv2d_fwd", "conv2d_bwd_data", "conv2d_bwd_weight")
WINOGRAD = tuple(
    name
    for op in ("conv2d_fwd", "conv2d_bwd_data")
    for name in convcore.implementations(op)
    if "_winograd_" in name
)
_CLANES_OPS = {c: _ALL3 for c in CASES if c.startswith("clanes_")}
_CLANES_OPS.update(
    clanes_c16_k32_w7=("conv2d_fwd", "conv2d_bwd_weight"),
    clanes_c17_k90=("conv2d_fwd", "conv2d_bwd_weight"),
    clanes_c90_k20_w30_p2=("conv2d_bwd_data",),
    clanes_stride2=("conv2d_fwd", "conv2d_bwd_weight"),
    clanes_k16_half_panel=(),
    clanes_k80_sixth_padding=("conv2d_bwd_data",),
    clanes_w6_too_narrow=(),
    clanes_w1=(),
)


@pytest.mark.parametrize("name", _CLANES_LAYERS + list(_CLANES_OPS))
def test_channels_in_lanes_runs_under_avx512(name):
    if "avx512" not in available_isas():
        pytest.skip("this CPU has no AVX-512")
    if name in CASES:
        xs, ws, bias, kw = CASES[name]
        x, w, b = rand(xs, 1), rand(ws, 2), rand((ws[0],), 3) if bias else None
    else:
        x, w, b, kw = conv_case(name, n=2)
    with isa_cap("avx512"), disabled(*WINOGRAD):
        y = convcore.conv2d(x, w, b, **kw)
        convcore.conv2d_backward(rand(y.shape, 4), x, w, **kw)
        for op in _ALL3:
            kernel = convcore.last_kernel(op)
            on_family = "_clanes_" in kernel and kernel.endswith("__avx512")
            assert on_family == (op in _CLANES_OPS.get(name, _ALL3)), (op, kernel)
        check("conv2d", x, w, b, **kw)


FLAT = "conv2d_bwd_data_f32_rows_flat_8w__avx512"


@pytest.mark.parametrize(
    "xs,ws,kw",
    [
        ((3, 6, 12, 12), (12, 6, 5, 5), {}),  # the tutorial's second layer: 12-wide rows
        ((2, 1, 9, 13), (5, 1, 3, 3), {}),  # odd width, one output channel block
        ((2, 3, 11, 10), (4, 3, 3, 2), dict(padding=(1, 0))),  # vertical padding only
        ((1, 2, 8, 15), (3, 2, 2, 3), dict(dilation=(2, 2))),
        ((1, 4, 6, 5), (8, 4, 6, 5), {}),  # kernel as large as the input
    ],
)
def test_flat_rows_data_gradient_is_the_row_segments(xs, ws, kw):
    # The flat layout changes which lanes compute which outputs, not the
    # FMAs of any output: bitwise the row-segment kernel, and within the
    # oracle's bounds.
    if "avx512" not in available_isas():
        pytest.skip("this CPU has no AVX-512")
    x, w = rand(xs, 1), rand(ws, 2)
    go = rand(convcore.conv2d(x, w, **kw).shape, 3)
    with isa_cap("avx512"), disabled(TAPCOLS):
        flat = convcore.conv2d_backward(go, x, w, output_mask=(True, False, False), **kw)[0]
        assert convcore.last_kernel("conv2d_bwd_data") == FLAT
        with disabled(FLAT):
            rows = convcore.conv2d_backward(go, x, w, output_mask=(True, False, False), **kw)[0]
            assert convcore.last_kernel("conv2d_bwd_data") == "conv2d_bwd_data_f32_rows_8w__avx512"
        check("conv2d", x, w, None, grad_output=go, output_mask=(True, False, False), **kw)
    assert flat.tobytes() == rows.tobytes()


def test_flat_rows_need_no_horizontal_padding():
    if "avx512" not in available_isas():
        pytest.skip("this CPU has no AVX-512")
    x, w = rand((2, 6, 12, 12), 1), rand((12, 6, 5, 5), 2)
    go = rand((2, 12, 8, 10), 3)
    with isa_cap("avx512"), disabled(TAPCOLS):
        convcore.conv2d_backward(go, x, w, padding=(0, 1), output_mask=(True, False, False))
        assert convcore.last_kernel("conv2d_bwd_data") == "conv2d_bwd_data_f32_rows_8w__avx512"


# The data gradient on tap columns (ops/conv2d_rows.cpp): per dx row, one
# unshifted accumulator per (channel, kernel column) over the dy rows that
# exist, the shifts added after.
TAPCOLS = "conv2d_bwd_data_f32_tapcols_8w__avx512"
TAPCOLS_CASES = {
    "tutorial_2nd": ((3, 6, 12, 12), (12, 6, 5, 5), {}),  # 30x1 tile, 8-wide dy rows
    "tutorial_1st": ((2, 1, 28, 28), (6, 1, 5, 5), {}),  # one dx channel, 24-wide: 10x3
    "pad2_same": ((2, 3, 16, 16), (16, 3, 5, 5), dict(padding=2)),  # 15x2, margins cut
    "unpadded_3x3": ((2, 6, 14, 26), (16, 6, 3, 3), {}),  # 3 segments
    "rect_pad": ((1, 8, 7, 20), (4, 8, 3, 5), dict(padding=(1, 2))),
    "dilated": ((2, 5, 11, 17), (7, 5, 2, 3), dict(dilation=(2, 3))),
    "kernel_is_input": ((1, 1, 5, 5), (1, 1, 5, 5), {}),  # 1x1 dy
    "batch1_odd": ((1, 6, 13, 9), (3, 6, 5, 5), dict(padding=(0, 1))),  # 7-wide dy rows
    "wide_pad": ((2, 6, 12, 12), (12, 6, 5, 5), dict(padding=2)),
    "many_k": ((2, 2, 9, 30), (64, 2, 5, 7), {}),  # 64 dy channels, 24-wide rows
}


@pytest.mark.parametrize("kind", ["normal", "ties"])
@pytest.mark.parametrize("name", TAPCOLS_CASES)
def test_tap_columns_data_gradient(name, kind):
    if "avx512" not in available_isas():
        pytest.skip("this CPU has no AVX-512")
    xs, ws, kw = TAPCOLS_CASES[name]
    x, w = rand(xs, 1, kind), rand(ws, 2, kind)
    go = rand(convcore.conv2d(x, w, **kw).shape, 3, kind)
    with isa_cap("avx512"):
        convcore.conv2d_backward(go, x, w, output_mask=(True, False, False), **kw)
        assert convcore.last_kernel("conv2d_bwd_data") == TAPCOLS
        check("conv2d", x, w, None, grad_output=go, output_mask=(True, False, False), **kw)


def test_tap_columns_multiply_no_padding():
    # Every FMA reads dy data (the lanes past a row's end are masked to zero
    # and never stored), so inf and NaN land where PyTorch puts them: the
    # row kernels multiply padding zeros by the weights, 0 * inf = NaN.
    if "avx512" not in available_isas():
        pytest.skip("this CPU has no AVX-512")
    import torch

    x, w, go = rand((2, 6, 12, 12), 1), rand((12, 6, 5, 5), 2), rand((2, 12, 8, 8), 3)
    w[0, 0, 4, 4] = np.inf  # reaches the last 8 rows and columns of dx channel 0
    w[3, 2, 0, 1] = -np.inf
    go[0, 3, 0, 0] = np.nan
    go[1, 5, 7, 7] = np.inf
    with isa_cap("avx512"):
        dx = convcore.conv2d_backward(go, x, w, output_mask=(True, False, False))[0]
        assert convcore.last_kernel("conv2d_bwd_data") == TAPCOLS
    ref = torch.nn.grad.conv2d_input(
        x.shape, torch.from_numpy(w).double(), torch.from_numpy(go).double()
    ).numpy()
    assert np.isnan(ref).any() and np.isinf(ref).any()
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(ref))
    np.testing.assert_array_equal(np.isposinf(dx), np.isposinf(ref))
    np.testing.assert_array_equal(np.isneginf(dx), np.isneginf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(dx[fin], ref[fin], rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "xs,ws,kw",
    [
        ((2, 8, 28, 28), (16, 8, 3, 3), dict(padding=1)),  # "same" 3x3: little padding to skip
        ((2, 8, 12, 12), (8, 8, 3, 3), {}),  # half the tile empty against 0.69 on the rows
        ((2, 1, 28, 28), (32, 1, 3, 3), dict(padding=1)),  # one dx channel, 3 columns
        ((2, 16, 12, 12), (12, 16, 5, 5), {}),  # 16 dx channels: not a few-channel layer
        ((2, 6, 12, 12), (12, 6, 5, 5), dict(stride=2)),
        ((1, 3, 130, 130), (8, 3, 5, 5), {}),  # partial rows past 256 KiB a thread
    ],
)
def test_tap_columns_not_taken(xs, ws, kw):
    if "avx512" not in available_isas():
        pytest.skip("this CPU has no AVX-512")
    x, w = rand(xs, 1), rand(ws, 2)
    go = rand(convcore.conv2d(x, w, **kw).shape, 3)
    with isa_cap("avx512"):
        convcore.conv2d_backward(go, x, w, output_mask=(True, False, False), **kw)
        assert convcore.last_kernel("conv2d_bwd_data") != TAPCOLS


BIAS_IN_WEIGHT = "conv2d_bwd_bias_f32_clanes_dy_panels__avx512"
BIAS_IN_ROWS = "conv2d_bwd_bias_f32_rows_chunks__avx512"
# (x shape, w shape, kwargs, the bias entry inside the weight gradient)
BIAS_CASES = {
    name: (CASES[name][0], CASES[name][1], CASES[name][3], BIAS_IN_WEIGHT)
    for name in ("clanes_k96_w29", "clanes_groups2", "clanes_batch17", "clanes_c17_k90")
}
BIAS_CASES.update(
    rows_tutorial_2nd=((5, 6, 12, 12), (12, 6, 5, 5), {}, BIAS_IN_ROWS),
    rows_batch19_one_channel=((19, 1, 28, 28), (6, 1, 5, 5), {}, BIAS_IN_ROWS),  # 8 chunks
    rows_k7_pad4=((2, 1, 4, 5), (7, 1, 3, 3), dict(padding=4), BIAS_IN_ROWS),
    rows_k13_dil2=((2, 2, 11, 13), (13, 2, 3, 3), dict(padding=2, dilation=2), BIAS_IN_ROWS),
)


def _lanes16_sum(plane: np.ndarray) -> np.float32:
    """One plane's sum as the bias kernels add it: float32, element i + l of
    each whole 16 into lane l, the tail into lanes 0, 1, ..., then pairwise
    lanes[l] += lanes[l + w] for w = 8, 4, 2, 1."""
    lanes = np.zeros(16, np.float32)
    n16 = plane.size // 16 * 16
    with np.errstate(invalid="ignore", over="ignore"):
        for i in range(0, n16, 16):
            lanes += plane[i : i + 16]
        lanes[: plane.size - n16] += plane[n16:]
        for w in (8, 4, 2, 1):
            lanes[:w] += lanes[w : 2 * w]
    return lanes[0]


@pytest.mark.parametrize("kind", ["normal", "special"])
@pytest.mark.parametrize(
    "xs,ws",
    [
        ((1, 1, 28, 28), (6, 1, 5, 5)),  # the tutorial's first layer: 576 = 36 x 16
        ((1, 6, 12, 12), (12, 6, 5, 5)),  # the second: 64
        ((1, 1, 5, 19), (13, 1, 3, 3)),  # 3 x 17: a tail of 3; 13 planes = 3 fours and 1
        ((1, 2, 3, 17), (5, 2, 3, 3)),  # 1 x 15: no whole 16
        ((1, 1, 4, 18), (7, 1, 3, 3)),  # 2 x 16
        ((1, 3, 3, 3), (3, 3, 3, 3)),  # 1 x 1
    ],
)
def test_rows_bias_sums_each_plane_in_16_lanes(xs, ws, kind):
    # The row-segment weight gradient sums the bias of each image's planes
    # several at a time with AVX-512 (conv2d_bwd_bias_planes_f32__avx512):
    # bitwise the 16-lane order of the portable kernel, plane by plane.  One
    # image is one chunk, so db[k] is +0 + that plane's sum.
    if "avx512" not in available_isas():
        pytest.skip("this CPU has no AVX-512")
    x, w = rand(xs, 1), rand(ws, 2)
    go = rand((1, ws[0], xs[2] - ws[2] + 1, xs[3] - ws[3] + 1), 3, kind)
    with isa_cap("avx512"):
        _, _, gb = convcore.conv2d_backward(go, x, w, output_mask=(False, True, True))
        assert convcore.last_kernel("conv2d_bwd_bias") == BIAS_IN_ROWS
    want = np.array([np.float32(0) + _lanes16_sum(go[0, k].ravel()) for k in range(ws[0])])
    assert_bitwise("conv2d.grad_bias (rows planes vs 16 lanes)", gb, want, f"{xs} {ws}", "lanes")


@pytest.mark.parametrize("name", BIAS_CASES)
@pytest.mark.parametrize(
    "mask", [(False, True, True), (True, True, True), (False, False, True), (False, True, False)]
)
def test_bias_gradient_summed_with_the_weight_gradient(name, mask):
    # The channels-in-lanes weight gradient sums the bias from the dy panels
    # it packs, the row-segment one from each chunk's dy after its kernel
    # calls.  Each must do so exactly when both are asked for, stay within
    # the oracle's bound, and agree with the separate pass (disabled by name).
    if "avx512" not in available_isas():
        pytest.skip("this CPU has no AVX-512")
    xs, ws, kw, entry = BIAS_CASES[name]
    assert entry in convcore.implementations("conv2d_bwd_bias")
    x, w, b = rand(xs, 1), rand(ws, 2), rand((ws[0],), 3)
    with isa_cap("avx512"):
        check("conv2d", x, w, b, output_mask=mask, **kw)
        fused = convcore.last_kernel("conv2d_bwd_bias") == entry
        assert fused == (mask[1] and mask[2]), convcore.last_kernel("conv2d_bwd_bias")
        with disabled(entry):
            check("conv2d", x, w, b, output_mask=mask, **kw)
            assert convcore.last_kernel("conv2d_bwd_bias") != entry
        go = rand((xs[0], ws[0], *convcore.conv2d(x, w, **kw).shape[2:]), 4)
        _, gw, gb = convcore.conv2d_backward(go, x, w, output_mask=(False, True, True), **kw)
        with disabled(entry):
            _, gw2, gb2 = convcore.conv2d_backward(go, x, w, output_mask=(False, True, True), **kw)
    # The weight gradient is untouched by the fusion; the two bias sums only
    # differ in order: within the bound of N*P*Q terms of each other.
    assert gw.tobytes() == gw2.tobytes()
    scale = np.abs(go.astype(np.float64)).sum(axis=(0, 2, 3))
    n = go.shape[0] * go.shape[2] * go.shape[3]
    assert (np.abs(gb.astype(np.float64) - gb2) <= 2 * 10 * math.sqrt(n + 1) * U32 * scale).all()


@pytest.mark.parametrize("mask", [(True, True, True), (True, False, True)])
def test_bias_gradient_through_relu_follows_the_same_path(mask):
    # Through the fused ReLU the bias is summed by the weight gradient when
    # both are asked for, else by the mask pass: the same sums as the
    # unfused multiply by the mask then conv2d_backward (test_fused holds
    # them bitwise equal), and within the oracle's bound.
    if "avx512" not in available_isas():
        pytest.skip("this CPU has no AVX-512")
    xs, ws, _, kw = CASES["clanes_k96_w29"]
    x, w, b = rand(xs, 1), rand(ws, 2), rand((ws[0],), 3)
    with isa_cap("avx512"):
        y = convcore.conv2d_relu(x, w, b, **kw)
        go = rand(y.shape, 4)
        masked = go * (y > 0)
        _, _, gb = convcore.conv2d_relu_backward(go.copy(), y, x, w, output_mask=mask, **kw)
        fused = convcore.last_kernel("conv2d_bwd_bias") == BIAS_IN_WEIGHT
        assert fused == mask[1], convcore.last_kernel("conv2d_bwd_bias")
    n = go.shape[0] * go.shape[2] * go.shape[3]
    scale = np.abs(masked.astype(np.float64)).sum(axis=(0, 2, 3))
    want = masked.astype(np.float64).sum(axis=(0, 2, 3))
    assert (np.abs(gb - want) <= 10 * math.sqrt(n + 1) * U32 * scale).all()


@pytest.mark.parametrize(
    "xs,ws,kw",
    [
        ((3, 8, 8), (4, 3, 3, 3), dict(padding="same")),
        ((1, 5, 5), (2, 1, 5, 5), {}),
        ((4, 7, 9), (6, 2, 3, 2), dict(stride=2, padding=1, groups=2)),
    ],
)
def test_unbatched_3d(xs, ws, kw, isa):
    x, w = rand(xs, 4), rand(ws, 5)
    y, (gi, gw, gb) = check("conv2d", x, w, rand((ws[0],), 6), isa=isa, **kw)
    assert y.ndim == 3 and gi.shape == xs


def test_batch_0_result_shapes():
    x, w = np.zeros((0, 3, 5, 5), np.float32), rand((4, 3, 3, 3))
    y = convcore.conv2d(x, w, padding=1)
    assert y.shape == (0, 4, 5, 5) and y.dtype == np.float32
    gi, gw, gb = convcore.conv2d_backward(y, x, w, padding=1)
    assert gi.shape == (0, 3, 5, 5)
    assert np.array_equal(gw, np.zeros((4, 3, 3, 3), np.float32)) and np.array_equal(
        gb, np.zeros(4, np.float32)
    )


@pytest.mark.parametrize("mask", list(itertools.product([False, True], repeat=3)))
def test_output_mask(mask, isa):
    x, w = rand((2, 3, 6, 7), 7), rand((4, 3, 3, 3), 8)
    check("conv2d", x, w, rand((4,), 9), isa=isa, padding=1, stride=(1, 2), output_mask=mask)


def test_output_mask_list_and_unbatched():
    x, w = rand((3, 6, 7), 7), rand((4, 3, 3, 3), 8)
    check("conv2d", x, w, None, padding=1, output_mask=[True, False, True])


def test_special_grad_output_zero():
    x, w = rand((2, 3, 6, 6), 1), rand((4, 3, 3, 3), 2)
    check("conv2d", x, w, None, padding=1, grad_output=np.zeros((2, 4, 6, 6), np.float32))


@pytest.mark.parametrize("kind", ["relu", "ties"])
def test_relu_like_inputs(kind, isa):
    x, w = rand((3, 4, 9, 10), 11, kind), rand((5, 4, 3, 3), 12)
    check("conv2d", x, w, rand((5,), 13), isa=isa, padding=1)


def test_scaled_inputs():
    # The bound is relative to the |x| * |w| scale: huge and tiny values too.
    x, w = rand((2, 3, 7, 7), 14) * np.float32(1e15), rand((4, 3, 3, 3), 15) * np.float32(1e-20)
    check("conv2d", x.astype(np.float32), w.astype(np.float32), None, padding=1, record_stats=False)


# ---------------------------------------------------------------------------
# Generated cases over every argument
# ---------------------------------------------------------------------------


def _as_form(draw, v: tuple[int, int]):
    """An (h, w) pair as an int (when equal), a tuple or a list."""
    forms = ["tuple", "list"] + (["int"] if v[0] == v[1] else [])
    f = draw(st.sampled_from(forms))
    return v[0] if f == "int" else (tuple(v) if f == "tuple" else list(v))


@st.composite
def conv_problems(draw):
    if draw(st.integers(0, 5)) == 0:  # depthwise (with a channel multiplier)
        groups, Cg, Kg = draw(st.integers(1, 9)), 1, draw(st.integers(1, 2))
    else:
        groups = draw(st.sampled_from([1, 1, 1, 2, 3]))
        Cg, Kg = draw(st.integers(1, 6)), draw(st.integers(1, 7))
    C, K = Cg * groups, Kg * groups
    R, S = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dil = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pad_kind = draw(st.sampled_from(["int", "pair", "pair", "same", "valid"]))
    if pad_kind == "same":
        padding, stride, pads = "same", (1, 1), (dil[0] * (R - 1), dil[1] * (S - 1))
    else:
        stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        if pad_kind == "valid":
            padding, pads = "valid", (0, 0)
        elif pad_kind == "int":
            p = draw(st.integers(0, 4))
            padding, pads = p, (2 * p, 2 * p)
        else:
            p = (draw(st.integers(0, 4)), draw(st.integers(0, 4)))
            padding, pads = _as_form(draw, p), (2 * p[0], 2 * p[1])
    eff = (dil[0] * (R - 1) + 1, dil[1] * (S - 1) + 1)
    H = max(1, eff[0] - pads[0]) + draw(st.integers(0, 9))
    W = max(1, eff[1] - pads[1]) + draw(st.integers(0, 20))
    N = draw(st.sampled_from([1, 1, 2, 3, 4, 0]))
    shape = (N, C, H, W)
    if N == 1 and draw(st.booleans()):
        shape = (C, H, W)
    kwargs = dict(
        stride=_as_form(draw, stride) if stride != (1, 1) or draw(st.booleans()) else 1,
        padding=padding,
        dilation=_as_form(draw, dil),
        groups=groups,
    )
    if stride == (1, 1) and isinstance(kwargs["stride"], int):
        kwargs.pop("stride")  # the default
    return dict(
        x_shape=shape,
        w_shape=(K, Cg, R, S),
        bias=draw(st.booleans()),
        kwargs=kwargs,
        output_mask=draw(st.tuples(st.booleans(), st.booleans(), st.booleans())),
        isa=draw(st.sampled_from(available_isas())),
        kind=draw(st.sampled_from(["normal", "normal", "relu"])),
        seed=draw(st.integers(0, 2**31)),
    )


@settings(max_examples=examples(5000))
@given(conv_problems())
@counted
def test_generated(p):
    s = p["seed"]
    x = rand(p["x_shape"], s, p["kind"])
    w = rand(p["w_shape"], s + 1)
    b = rand((p["w_shape"][0],), s + 2) if p["bias"] else None
    check("conv2d", x, w, b, isa=p["isa"], output_mask=p["output_mask"], seed=s, **p["kwargs"])


@st.composite
def conv_any_geometry(draw):
    """Arguments that may or may not be valid."""
    groups = draw(st.integers(1, 3))
    C, K = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    Cw = draw(st.sampled_from([max(1, C // groups), max(1, C // groups) + 1, C]))
    R, S = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    H, W = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    stride = (draw(st.integers(-1, 3)), draw(st.integers(-1, 3)))
    dil = (draw(st.integers(-1, 3)), draw(st.integers(-1, 3)))
    padding = draw(
        st.one_of(
            st.sampled_from(["same", "valid"]), st.tuples(st.integers(-2, 3), st.integers(-2, 3))
        )
    )
    bias_len = draw(st.sampled_from([K, K, K + 1, None]))
    return (
        (2, C, H, W),
        (K, Cw, R, S),
        bias_len,
        dict(stride=stride, padding=padding, dilation=dil, groups=groups),
    )


def _torch_accepts_conv(x, w, b, kw):
    import torch
    import torch.nn.functional as F

    try:
        y = F.conv2d(
            torch.from_numpy(x),
            torch.from_numpy(w),
            None if b is None else torch.from_numpy(b),
            **kw,
        )
    except (RuntimeError, ValueError):
        return None
    return tuple(y.shape)


@settings(max_examples=examples(1000))
@given(conv_any_geometry())
@counted
def test_generated_validity_agrees_with_torch(g):
    """convcore raises ValueError exactly when PyTorch rejects the call."""
    xs, ws, bias_len, kw = g
    x, w = rand(xs, 1), rand(ws, 2)
    b = None if bias_len is None else rand((bias_len,), 3)
    expected = _torch_accepts_conv(x, w, b, kw)
    if expected is None:
        with pytest.raises(ValueError):
            convcore.conv2d(x, w, b, **kw)
        return
    y = convcore.conv2d(x, w, b, **kw)
    assert y.shape == expected
    gi, gw, gb = convcore.conv2d_backward(y, x, w, **kw)
    assert gi.shape == xs and gw.shape == ws and gb.shape == (ws[0],)


# ---------------------------------------------------------------------------
# The oracle itself: its bound accepts float32 rounding and catches wrong kernels
# ---------------------------------------------------------------------------


def _impl(conv2d=None, conv2d_backward=None):
    return types.SimpleNamespace(
        conv2d=conv2d or convcore.conv2d,
        conv2d_backward=conv2d_backward or convcore.conv2d_backward,
    )


def _shift_w(x):
    """x read one column to the right: an off-by-one tap."""
    out = np.zeros_like(x)
    out[..., :-1] = x[..., 1:]
    return out


_ORACLE_CASES = [
    "n2_c6_h12_w12_k12_r5_s1_p0",  # tutorial conv2 (forward reduction 150)
    "n2_c64_h14_w14_k64_r3_s1_p1",  # forward reduction 576
    "n100_c6_h12_w12_k12_r5_s1_p0",  # weight-gradient reduction 6400
]


@pytest.mark.parametrize("name", _ORACLE_CASES)
def test_oracle_catches_off_by_one_tap(name):
    x, w, b, kw = conv_case(name)
    wrong = _impl(conv2d=lambda x, w, b=None, **k: convcore.conv2d(_shift_w(x), w, b, **k))
    with pytest.raises(AssertionError, match="conv2d.output"):
        check("conv2d", x, w, b, impl=wrong, **kw)

    def bwd(go, x, w, **k):
        gi, gw, gb = convcore.conv2d_backward(go, x, w, **k)
        _, gw_wrong, _ = convcore.conv2d_backward(go, _shift_w(x), w, **k)
        return gi, gw_wrong, gb

    with pytest.raises(AssertionError, match="conv2d.grad_weight"):
        check("conv2d", x, w, b, impl=_impl(conv2d_backward=bwd), **kw)

    def bwd_data(go, x, w, **k):
        gi, gw, gb = convcore.conv2d_backward(go, x, w, **k)
        return _shift_w(gi), gw, gb

    with pytest.raises(AssertionError, match="conv2d.grad_input"):
        check("conv2d", x, w, b, impl=_impl(conv2d_backward=bwd_data), **kw)


def test_oracle_catches_padding_on_the_wrong_side():
    # 'same' with an even kernel: the extra row/column belongs right/bottom.
    x, w = rand((2, 3, 9, 9), 1), rand((4, 3, 4, 4), 2)

    def swapped(x, w, b=None, padding=None, **k):
        return convcore.conv2d(convcore.pad(x, (2, 1, 2, 1)), w, b, padding=0, **k)

    assert swapped(x, w).shape == convcore.conv2d(x, w, padding="same").shape
    with pytest.raises(AssertionError, match="conv2d.output"):
        check("conv2d", x, w, None, impl=_impl(conv2d=swapped), padding="same")


@pytest.mark.parametrize("name", _ORACLE_CASES[:2])
def test_oracle_catches_one_dropped_term(name):
    x, w, b, kw = conv_case(name, n=1)
    p = problems.parse(name)
    ph, pw = p.padding

    def dropped(x, w, b=None, **k):
        y = convcore.conv2d(x, w, b, **k)
        # Output (0, 0, ph, pw) reads x[0, c, r, s] with tap (c, r, s):
        # drop its largest term.
        terms = x[0, :, : p.kernel[0], : p.kernel[1]] * w[0]
        y[0, 0, ph, pw] -= terms.flat[np.argmax(np.abs(terms))]
        return y

    with pytest.raises(AssertionError, match="conv2d.output"):
        check("conv2d", x, w, b, impl=_impl(conv2d=dropped), **kw)


def test_oracle_catches_low_precision():
    # A weight gradient accumulated in bfloat16-like precision (8 bits) fails.
    x, w, b, kw = conv_case("n8_c6_h12_w12_k12_r5_s1_p0")

    def bf16(go, x, w, **k):
        gi, gw, gb = convcore.conv2d_backward(go, x, w, **k)
        gw = (gw.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
        return gi, gw, gb

    with pytest.raises(AssertionError, match="conv2d.grad_weight"):
        check("conv2d", x, w, b, impl=_impl(conv2d_backward=bf16), **kw)


def test_oracle_accepts_float32_rounding():
    # A few units of roundoff on top of convcore's own error still pass.
    x, w, b, kw = conv_case("n4_c32_h14_w14_k64_r3_s1_p1")

    def nudged(x, w, b=None, **k):
        y = convcore.conv2d(x, w, b, **k)
        return (y * np.float32(1 + 4 * U32)).astype(np.float32)

    check("conv2d", x, w, b, impl=_impl(conv2d=nudged), **kw)
    assert math.isfinite(float(nudged(x, w, b, **kw).sum()))
