"""The Winograd F(2x2, 3x3) kernels (ops/conv2d_winograd.cpp): forward and
data gradient of 3x3 stride-1 convolutions with >= 16 channels, against
PyTorch with the oracle's unchanged bounds, on the shapes where tiling is
awkward (odd outputs, tile rows that cross images and blocks, rows wider
than one vector of tiles, every padding, channels that fill no panel); that
they are the kernels that run there; that the result does not depend on the
thread count; and that NaN or inf data is handed to the direct kernels.
Also the switch that disables an implementation by name."""

from __future__ import annotations

import convcore
import numpy as np
import pytest
from oracle import available_isas, check, disabled, isa_cap, rand

WINO_FWD = "conv2d_fwd_f32_winograd_f2x3_8x32__avx512"
WINO_BWD = "conv2d_bwd_data_f32_winograd_f2x3_8x32__avx512"

pytestmark = pytest.mark.skipif(
    "avx512" not in available_isas(), reason="this CPU has no AVX-512 (the Winograd kernels' ISA)"
)

# name: (input shape, weight shape, bias?, conv2d kwargs); each with at least
# the 80 tiles a call needs to be given to Winograd (conv2d.cpp).
CASES = {
    "wide_32x32_28": ((2, 32, 28, 28), (32, 32, 3, 3), True, dict(padding=1)),
    "wide_32x64_14": ((3, 32, 14, 14), (64, 32, 3, 3), True, dict(padding=1)),
    "wide_64x64_14": ((3, 64, 14, 14), (64, 64, 3, 3), True, dict(padding=1)),
    "odd_output": ((3, 16, 9, 13), (24, 16, 3, 3), True, dict(padding=1)),
    "pad0": ((4, 17, 10, 11), (16, 17, 3, 3), True, {}),
    "pad2": ((3, 16, 8, 9), (20, 16, 3, 3), False, dict(padding=2)),
    "pad3_zero_rows": ((3, 16, 6, 7), (16, 16, 3, 3), True, dict(padding=3)),
    "pad_h0_w2": ((4, 16, 10, 8), (16, 16, 3, 3), True, dict(padding=(0, 2))),
    "row_of_20_tiles": ((1, 16, 8, 40), (16, 16, 3, 3), True, dict(padding=1)),
    "row_of_35_tiles_odd": ((1, 16, 9, 69), (16, 16, 3, 3), True, dict(padding=1)),
    "k90_c17": ((4, 17, 9, 9), (90, 17, 3, 3), True, dict(padding=1)),
    "c90_k20": ((1, 90, 8, 30), (20, 90, 3, 3), False, dict(padding=2)),
    "tile_rows_cross_images": ((5, 16, 10, 10), (16, 16, 3, 3), True, dict(padding=1)),
    "batch1_56": ((1, 16, 56, 56), (32, 16, 3, 3), True, dict(padding=1)),
    "tall": ((1, 16, 70, 8), (16, 16, 3, 3), True, dict(padding=1)),
}


def _case(name):
    xs, ws, bias, kw = CASES[name]
    x = rand(xs, 1)
    w = rand(ws, 2) * np.float32(1.0 / np.sqrt(ws[1] * 9))
    return x, w.astype(np.float32), rand((ws[0],), 3) if bias else None, kw


@pytest.mark.parametrize("name", CASES)
def test_against_torch(name):
    x, w, b, kw = _case(name)
    check("conv2d", x, w, b, isa="avx512", **kw)
    # and the data in ReLU-like form: half zeros, many exact cancellations
    xr = rand(x.shape, 5, kind="relu")
    check("conv2d", xr, w, b, isa="avx512", output_mask=(True, False, False), **kw)


@pytest.mark.parametrize("name", CASES)
def test_winograd_runs(name):
    x, w, b, kw = _case(name)
    with isa_cap("avx512"):
        y = convcore.conv2d(x, w, b, **kw)
        assert convcore.last_kernel("conv2d_fwd") == WINO_FWD
        convcore.conv2d_backward(rand(y.shape, 4), x, w, output_mask=(True, False, False), **kw)
        assert convcore.last_kernel("conv2d_bwd_data") == WINO_BWD


@pytest.mark.parametrize(
    "xs,ws,kw",
    [
        ((2, 8, 14, 14), (32, 8, 3, 3), dict(padding=1)),  # 8 input channels
        ((2, 32, 7, 7), (32, 32, 3, 3), dict(padding=1)),  # 7x7 outputs
        ((2, 32, 14, 14), (32, 32, 3, 3), dict(padding=1, stride=2)),
        ((2, 32, 14, 14), (32, 32, 3, 3), dict(padding=2, dilation=2)),
        ((2, 32, 14, 14), (32, 16, 3, 3), dict(padding=1, groups=2)),
        ((2, 32, 14, 14), (32, 32, 5, 5), dict(padding=2)),
        ((1, 64, 14, 14), (64, 64, 3, 3), dict(padding=1)),  # 49 tiles: too few
    ],
)
def test_winograd_leaves_other_shapes(xs, ws, kw):
    with isa_cap("avx512"):
        convcore.conv2d(rand(xs, 1), rand(ws, 2), **kw)
        assert "winograd" not in convcore.last_kernel("conv2d_fwd")


def test_same_for_any_thread_count():
    # 9 images of 28x28: the block size depends on the thread count (at least
    # four blocks a thread), the result must not.
    x, w, b, kw = rand((9, 32, 28, 28), 1), rand((32, 32, 3, 3), 2), rand((32,), 3), dict(padding=1)
    go = rand((9, 32, 28, 28), 4)
    saved = convcore.get_num_threads()
    out = []
    try:
        with isa_cap("avx512"):
            for t in (1, 2, 3):
                convcore.set_num_threads(t)
                y = convcore.conv2d(x, w, b, **kw)
                assert convcore.last_kernel("conv2d_fwd") == WINO_FWD
                gx = convcore.conv2d_backward(go, x, w, output_mask=(True, False, False), **kw)[0]
                out.append((y, gx))
    finally:
        convcore.set_num_threads(saved)
    for y, gx in out[1:]:
        assert np.array_equal(y, out[0][0]) and np.array_equal(gx, out[0][1])


def test_fused_relu_is_relu_of_conv():
    x, w, b, kw = _case("odd_output")
    x = rand(x.shape, 7, kind="ties")  # exact zeros and ties: -0 and +0 outputs
    with isa_cap("avx512"):
        y = convcore.conv2d(x, w, b, **kw)
        yr = convcore.conv2d_relu(x, w, b, **kw)
        assert convcore.last_kernel("conv2d_fwd") == WINO_FWD
    expected = np.maximum(y, np.float32(0))
    assert np.array_equal(yr, expected) and not np.signbit(yr).any()


@pytest.mark.parametrize("where", ["input", "weight", "bias", "grad_output"])
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_data_takes_the_direct_path(where, value):
    """An inf in a Winograd tile turns into inf - inf = NaN where the direct
    sum gives +-inf; such calls run on the next kernel of the list, so the
    result is bitwise that kernel's."""
    x, w, b, kw = _case("wide_32x32_28")
    go = rand((2, 32, 28, 28), 4)
    arrays = dict(input=x, weight=w, bias=b, grad_output=go)
    arrays[where] = arrays[where].copy()
    arrays[where].flat[arrays[where].size // 3] = value
    x, w, b, go = (arrays[k] for k in ("input", "weight", "bias", "grad_output"))

    def run():
        y = convcore.conv2d(x, w, b, **kw)
        kernels = [convcore.last_kernel("conv2d_fwd")]
        gx = convcore.conv2d_backward(go, x, w, output_mask=(True, False, False), **kw)[0]
        return y, gx, kernels + [convcore.last_kernel("conv2d_bwd_data")]

    with isa_cap("avx512"), np.errstate(invalid="ignore", over="ignore"):
        y, gx, kernels = run()
        with disabled(WINO_FWD, WINO_BWD):
            y_direct, gx_direct, kernels_direct = run()
    # Only the calls that read the bad value move; the other stays on Winograd.
    fwd_moves = where in ("input", "weight", "bias")
    bwd_moves = where in ("weight", "grad_output")
    assert kernels[0] == (kernels_direct[0] if fwd_moves else WINO_FWD)
    assert kernels[1] == (kernels_direct[1] if bwd_moves else WINO_BWD)
    if fwd_moves:
        np.testing.assert_array_equal(y, y_direct)
    if bwd_moves:
        np.testing.assert_array_equal(gx, gx_direct)


# ---------------------------------------------------------------------------
# convcore.set_disabled_implementations
# ---------------------------------------------------------------------------


def test_disabling_moves_the_selection_and_restores():
    x, w, b, kw = _case("wide_32x32_28")
    with isa_cap("avx512"):
        with disabled(WINO_FWD):
            assert WINO_FWD in convcore.disabled_implementations()
            convcore.conv2d(x, w, b, **kw)
            assert convcore.last_kernel("conv2d_fwd") == "conv2d_fwd_f32_clanes_14x32__avx512"
        assert convcore.disabled_implementations() == []
        convcore.conv2d(x, w, b, **kw)
        assert convcore.last_kernel("conv2d_fwd") == WINO_FWD


def test_disable_errors():
    with pytest.raises(ValueError, match="unknown implementation 'conv2d_fwd_nonesuch'"):
        convcore.set_disabled_implementations(["conv2d_fwd_nonesuch"])
    with pytest.raises(ValueError, match="scalar reference of conv2d_fwd"):
        convcore.set_disabled_implementations(["conv2d_fwd_f32_direct__ref"])
    with pytest.raises(TypeError, match="names: expected a list"):
        convcore.set_disabled_implementations(WINO_FWD)
    with pytest.raises(TypeError, match="names: expected a list"):
        convcore.set_disabled_implementations([WINO_FWD, 3])
    with pytest.raises(TypeError, match="names: expected a list"):
        convcore.set_disabled_implementations(5)
    assert convcore.disabled_implementations() == []  # a failed call changes nothing
    # any iterable of names, read once
    convcore.set_disabled_implementations(n for n in (WINO_FWD, WINO_BWD))
    assert convcore.disabled_implementations() == sorted([WINO_FWD, WINO_BWD])
    convcore.set_disabled_implementations([])


# ---------------------------------------------------------------------------
# The error model, on data where it differs from the direct method's
# ---------------------------------------------------------------------------

_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)


def _winograd_scale(x, w, pad):
    """Per output, |A^T| (sum_c |G||g||G^T| . |B^T||d||B|) |A| in float64: the
    size of what the F(2x2, 3x3) algorithm adds and cancels, where the direct
    method's scale is sum |x||w| over the window."""
    n, c, h, wd = x.shape
    p, q = h + 2 * pad - 2, wd + 2 * pad - 2
    th, tw = (p + 1) // 2, (q + 1) // 2
    xp = np.zeros((n, c, 2 * th + 2, 2 * tw + 2))
    xp[:, :, pad : pad + h, pad : pad + wd] = np.abs(x)[
        :, :, : 2 * th + 2 - pad, : 2 * tw + 2 - pad
    ]
    tiles = np.lib.stride_tricks.sliding_window_view(xp, (4, 4), axis=(2, 3))[:, :, ::2, ::2]
    v = np.einsum("ij,nctujk,lk->nctuil", np.abs(_BT), tiles, np.abs(_BT))
    u = np.einsum("ij,kcjl,ml->kcim", np.abs(_G), np.abs(w).astype(np.float64), np.abs(_G))
    m = np.einsum("kcij,nctuij->nktuij", u, v)
    y = np.einsum("ai,nktuij,bj->nktuab", np.abs(_AT), m, np.abs(_AT))
    y = y.transpose(0, 1, 2, 4, 3, 5).reshape(n, w.shape[0], 2 * th, 2 * tw)
    return y[:, :, :p, :q]


def test_error_model_on_heavy_tailed_data():
    """With magnitudes spread over six decades, a large input meets a tiny
    weight within one window: F(2x2, 3x3) then adds and cancels terms of the
    large size, and its error, while exact in structure (an output reads only
    its own window), is no longer bounded by the direct method's scale: here
    it is 33x the oracle's bound, where the direct kernel, checked below on
    the same data, stays within it (0.07 of it) (on normal, ReLU and real network data
    Winograd is at 0.01-0.07 of the bound, as the direct kernels are:
    bench/winograd.py).  It is bounded by the algorithm's own scale: every
    value passes at most C + 8 roundings (2 in the input transform, 1 in the
    weights', C in the channel sum, 4 in the output transform and 1 for the
    bias), each relative to a term of that scale."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 16, 10, 10)) * 10 ** rng.uniform(-3, 3, (4, 16, 10, 10))
    x = np.maximum(x, 0).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)) * 10 ** rng.uniform(-3, 3, (16, 16, 3, 3))
    w = w.astype(np.float32)
    go = rng.standard_normal((4, 16, 10, 10)).astype(np.float32)
    with isa_cap("avx512"):
        y = convcore.conv2d(x, w, padding=1)
        assert convcore.last_kernel("conv2d_fwd") == WINO_FWD
        gx = convcore.conv2d_backward(go, x, w, padding=1, output_mask=(True, False, False))[0]
        assert convcore.last_kernel("conv2d_bwd_data") == WINO_BWD
    gamma = (16 + 8) * 2.0**-24
    ref = _conv64(x, w, 1)
    assert (np.abs(y - ref) <= gamma * _winograd_scale(x, w, 1) + 1e-30).all()
    with isa_cap("avx512"), disabled(WINO_FWD):
        y_direct = convcore.conv2d(x, w, padding=1)
    oracle = 10 * np.sqrt(16 * 9) * 2.0**-24 * _conv64(np.abs(x), np.abs(w), 1) + 1e-30
    assert (np.abs(y_direct - ref) <= oracle).all()
    # The data gradient is the same algorithm on dy with the flipped,
    # transposed filters (padding 2 - 1).
    wt = np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    ref = _conv64(go, wt, 1)
    assert (np.abs(gx - ref) <= gamma * _winograd_scale(go, wt, 1) + 1e-30).all()


def _conv64(x, w, pad):
    import torch
    import torch.nn.functional as F

    return F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), padding=pad).numpy()
