"""max_pool2d and max_pool2d_backward against PyTorch: forward bitwise with
identical indices, backward exact up to float summation; ties, NaN, -inf,
padding, ceil_mode, dilation; every ISA path; generated cases."""

from __future__ import annotations

import convcore
import numpy as np
import pytest
from convcore import problems
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import (
    assert_bitwise,
    available_isas,
    check,
    check_max_pool2d_backward_indices,
    counted,
    examples,
    pool_case,
    rand,
)

KINDS = ["normal", "relu", "ties", "special"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", problems.ALL_POOL)
def test_model_layers(name, kind, isa):
    x, kw = pool_case(name, n=4, kind=kind)
    check("max_pool2d", x, isa=isa, **kw)


@pytest.mark.parametrize("name", problems.ALL_POOL[:2])
def test_model_layers_full_batch(name, isa):
    x, kw = pool_case(name, kind="relu")
    check("max_pool2d", x, isa=isa, **kw)


# (input shape, kwargs)
CASES = {
    "2x2_even": ((2, 3, 8, 8), dict(kernel_size=2)),
    "2x2_odd_h_w": ((2, 3, 7, 9), dict(kernel_size=2)),
    "2x2_width2": ((2, 3, 6, 2), dict(kernel_size=2)),
    "2x2_width5": ((1, 2, 4, 5), dict(kernel_size=2, stride=2)),
    "2x2_width17": ((1, 2, 4, 17), dict(kernel_size=2, stride=2)),
    "2x2_width33": ((2, 2, 6, 33), dict(kernel_size=(2, 2), stride=(2, 2))),
    "2x2_width64": ((2, 3, 4, 64), dict(kernel_size=2)),
    "2x2_width8": ((3, 2, 8, 8), dict(kernel_size=2)),  # two row pairs per vector
    "2x2_width8_odd_height": ((2, 3, 9, 8), dict(kernel_size=2)),
    "2x2_width8_odd_rows_out": ((2, 3, 6, 8), dict(kernel_size=2)),  # P = 3: row by row
    "2x2_one_pixel_out": ((1, 1, 2, 2), dict(kernel_size=2)),
    "2x2_ceil_odd": ((2, 2, 5, 7), dict(kernel_size=2, ceil_mode=True)),
    "2x2_ceil_even": ((2, 2, 6, 8), dict(kernel_size=2, ceil_mode=True)),
    "2x2_stride1": ((2, 2, 5, 6), dict(kernel_size=2, stride=1)),
    "2x2_padding1": ((2, 2, 5, 6), dict(kernel_size=2, padding=1)),
    "3x3_s2_p1": ((2, 3, 9, 10), dict(kernel_size=3, stride=2, padding=1)),
    "3x3_s2_p1_ceil": ((2, 3, 8, 10), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    "3x3_s2_p1_ceil_last_window_in_padding": (
        (1, 1, 6, 6),
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    ),
    "ceil_last_window_dropped": (
        (1, 2, 5, 5),
        dict(kernel_size=2, stride=2, padding=1, ceil_mode=True),
    ),
    "ceil_big_stride": ((1, 2, 10, 11), dict(kernel_size=3, stride=4, ceil_mode=True)),
    "1x1": ((2, 3, 4, 5), dict(kernel_size=1)),
    "1x1_stride2": ((2, 3, 5, 5), dict(kernel_size=1, stride=2)),
    "stride_gt_kernel": ((2, 3, 11, 12), dict(kernel_size=2, stride=5)),
    "kernel_eq_input": ((2, 3, 5, 6), dict(kernel_size=(5, 6))),
    "kernel_eq_padded_input": ((2, 3, 3, 4), dict(kernel_size=(5, 6), padding=(1, 2), stride=1)),
    "rect_kernel": ((2, 2, 9, 8), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1))),
    "dilation2": ((2, 2, 9, 9), dict(kernel_size=3, stride=1, dilation=2)),
    "dilation_rect_padding": (
        (2, 2, 10, 11),
        dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 1), dilation=(2, 3)),
    ),
    "dilation_ceil": (
        (1, 2, 9, 10),
        dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True),
    ),
    "stride_list": ((1, 2, 7, 7), dict(kernel_size=[3, 2], stride=[2, 2], padding=[1, 0])),
    "stride_empty_tuple": ((1, 2, 6, 6), dict(kernel_size=3, stride=())),
    "height1": ((2, 3, 1, 9), dict(kernel_size=(1, 3), stride=(1, 2))),
    "width1": ((2, 3, 9, 1), dict(kernel_size=(3, 1))),
    "big_plane": ((1, 1, 64, 80), dict(kernel_size=3, stride=2, padding=1)),
    "unbatched_3d": ((3, 8, 9), dict(kernel_size=2)),
    "unbatched_3d_padding": ((3, 7, 5), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    "batch_0": ((0, 3, 8, 8), dict(kernel_size=2)),
    "batch_0_padding": ((0, 2, 5, 5), dict(kernel_size=3, stride=2, padding=1)),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", CASES)
def test_awkward(name, kind, isa):
    shape, kw = CASES[name]
    check("max_pool2d", rand(shape, 5, kind), isa=isa, **kw)


# ---------------------------------------------------------------------------
# Ties, NaN and infinities: PyTorch's index, exactly
# ---------------------------------------------------------------------------


def _one_window(values, **kw):
    x = np.array(values, np.float32).reshape(1, 1, 1, -1)
    return convcore.max_pool2d(x, (1, x.shape[-1]), return_indices=True, **kw)


@pytest.mark.parametrize(
    "values",
    [
        [1, 3, 3, 2],  # tie: first wins
        [0, 0, 0, 0],  # all tied (after ReLU)
        [-0.0, 0.0, 0.0],  # -0 == 0: first wins
        [0.0, -0.0],
        [1, np.nan, 5],  # NaN propagates
        [np.nan, 1, np.nan],  # several NaN: PyTorch's choice of index
        [np.nan, np.nan],
        [-np.inf, -np.inf, -np.inf],  # all -inf: the first position
        [-np.inf, 1, np.inf, np.inf],
        [np.inf, np.nan],
    ],
)
def test_window_semantics(values, isa):
    x = np.array(values, np.float32).reshape(1, 1, 1, -1)
    check("max_pool2d", x, isa=isa, kernel_size=(1, x.shape[-1]))
    # The same values in a 2x2 window read by every path (incl. the AVX2 2x2s2 kernel).
    if len(values) == 4:
        check("max_pool2d", x.reshape(1, 1, 2, 2), isa=isa, kernel_size=2)


def test_ties_first_in_scan_order():
    y, idx = _one_window([1, 3, 3, 2])
    assert y.item() == 3 and idx.item() == 1
    # Row-major scan: in a 2x2 window of equal values the top-left wins.
    x = np.ones((1, 1, 4, 4), np.float32)
    _, idx = convcore.max_pool2d(x, 2, return_indices=True)
    assert idx.ravel().tolist() == [0, 2, 8, 10]


def test_all_minus_inf_window_in_padding():
    x = np.full((1, 1, 3, 3), -np.inf, np.float32)
    check("max_pool2d", x, kernel_size=2, stride=1, padding=1)
    check("max_pool2d", x, kernel_size=3, stride=2, padding=1, ceil_mode=True)


def test_nan_in_2x2_fast_path_every_position(isa):
    # NaN at each of the four window positions, in a plane wide enough for SIMD.
    for pos in range(4):
        x = rand((1, 2, 4, 40), pos, "ties")
        x[..., pos // 2 :: 2, pos % 2 :: 2] = np.nan
        check("max_pool2d", x, isa=isa, kernel_size=2)


def test_backward_overlapping_windows_sum():
    x = np.zeros((1, 1, 5, 5), np.float32)
    x[0, 0, 2, 2] = 1  # the max of every 3x3 window that contains it
    go = np.ones((1, 1, 3, 3), np.float32)
    _, idx = convcore.max_pool2d(x, 3, stride=1, return_indices=True)
    gi = convcore.max_pool2d_backward(go, idx, x.shape)
    assert gi[0, 0, 2, 2] == 9 and gi.sum() == 9
    check("max_pool2d", x, kernel_size=3, stride=1, grad_output=rand((1, 1, 3, 3), 1))


@pytest.mark.parametrize(
    "shape,out",
    [((2, 3, 6, 7), (2, 3, 4, 4)), ((3, 5, 5), (3, 2, 6)), ((0, 2, 3, 3), (0, 2, 2, 2))],
)
def test_backward_arbitrary_indices(shape, out):
    # Indices need not come from a forward pass: duplicates accumulate.
    rng = np.random.default_rng(0)
    idx = rng.integers(0, shape[-1] * shape[-2], size=out).astype(np.int64)
    check_max_pool2d_backward_indices(rand(out, 1), idx, shape)


def test_backward_2x2_indices_outside_their_window():
    # The 2x2/2 backward kernel writes whole windows; a plane whose indices
    # are not each in their own window (here: every other plane) is scattered.
    for W in (11, 8):  # row by row; two row pairs per vector
        shape, out = (3, 4, 8, W), (3, 4, 4, W // 2)
        _, idx = convcore.max_pool2d(rand(shape, 2, "ties"), 2, return_indices=True)
        rng = np.random.default_rng(1)
        idx[:, 1::2] = rng.integers(0, 8 * W, size=idx[:, 1::2].shape)
        idx[2, 2, 3, 3] = 0  # one stray index in an otherwise window-shaped plane
        idx[0, 0, 2, 1] += 2**32  # aliases a window position in 32 bits only
        with pytest.raises(ValueError, match="indices"):
            convcore.max_pool2d_backward(rand(out, 3), idx, shape)
        idx[0, 0, 2, 1] -= 2**32
        check_max_pool2d_backward_indices(rand(out, 3), idx, shape)
    idx[1, 3, 0, 0] = 8 * W  # out of range, in a plane the kernel rejects
    with pytest.raises(ValueError, match="indices"):
        convcore.max_pool2d_backward(rand(out, 3), idx, shape)
    idx[1, 3, 0, 0] = -1
    with pytest.raises(ValueError, match="indices"):
        convcore.max_pool2d_backward(rand(out, 3), idx, shape)


@pytest.mark.parametrize("name", problems.ALL_POOL)
def test_model_layers_run_the_fast_kernels(name):
    """The model's pooling layers run the 2x2/2 kernels of the active ISA
    (the best this CPU has, unless capped), with and without indices, so the
    fast path cannot silently stop being used."""
    active = convcore.build_info()["isa_active"]
    expected = {"avx512": "__avx512", "avx2": "__avx2"}.get(active, "__ref")
    x, kw = pool_case(name, kind="relu")
    y, idx = convcore.max_pool2d(x, return_indices=True, **kw)
    assert convcore.last_kernel("maxpool2d_fwd").endswith(expected)
    assert np.array_equal(convcore.max_pool2d(x, **kw), y)
    assert convcore.last_kernel("maxpool2d_fwd").endswith(expected)
    convcore.max_pool2d_backward(y, idx, x.shape)
    bwd = "__avx512" if active == "avx512" else "__ref"
    assert convcore.last_kernel("maxpool2d_bwd").endswith(bwd)


def test_backward_does_not_touch_its_arguments():
    x = rand((2, 3, 6, 6), 3)
    y, idx = convcore.max_pool2d(x, 2, return_indices=True)
    go = rand(y.shape, 4)
    go0, idx0 = go.copy(), idx.copy()
    convcore.max_pool2d_backward(go, idx, x.shape)
    assert np.array_equal(go, go0) and np.array_equal(idx, idx0)


# ---------------------------------------------------------------------------
# Generated cases
# ---------------------------------------------------------------------------


@st.composite
def pool_problems(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    if draw(st.integers(0, 3)) == 0:
        kh = kw = 2  # the shape of every model layer (and the AVX2 kernel)
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    ceil_mode = draw(st.booleans())
    H = max(1, dh * (kh - 1) + 1 - 2 * ph) + draw(st.integers(0, 9))
    W = max(1, dw * (kw - 1) + 1 - 2 * pw) + draw(st.integers(0, 40))
    N = draw(st.sampled_from([1, 1, 2, 3, 0]))
    shape = (N, draw(st.integers(1, 4)), H, W)
    if N == 1 and draw(st.booleans()):
        shape = shape[1:]
    kwargs = dict(kernel_size=(kh, kw) if kh != kw or draw(st.booleans()) else kh)
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    if stride is not None or draw(st.booleans()):
        kwargs["stride"] = stride
    if (ph, pw) != (0, 0) or draw(st.booleans()):
        kwargs["padding"] = (ph, pw) if ph != pw or draw(st.booleans()) else ph
    if (dh, dw) != (1, 1) or draw(st.booleans()):
        kwargs["dilation"] = (dh, dw)
    if ceil_mode or draw(st.booleans()):
        kwargs["ceil_mode"] = ceil_mode
    return dict(
        shape=shape,
        kwargs=kwargs,
        kind=draw(st.sampled_from(KINDS)),
        isa=draw(st.sampled_from(available_isas())),
        seed=draw(st.integers(0, 2**31)),
    )


def _pair(v, default):
    v = default if v is None or v == () else v
    return (v, v) if isinstance(v, int) else tuple(v)


def _ceil_overhang(shape, kw) -> bool:
    """ceil_mode with a (dilated) kernel longer than the padded input: PyTorch
    still makes one window there (see test_ceil_mode_kernel_overhangs_input)."""
    if not kw.get("ceil_mode"):
        return False
    k = _pair(kw["kernel_size"], None)
    p, d = _pair(kw.get("padding"), 0), _pair(kw.get("dilation"), 1)
    return any(shape[-2 + i] + 2 * p[i] < d[i] * (k[i] - 1) + 1 for i in range(2))


def _torch_pool_shape(x, kw):
    import torch
    import torch.nn.functional as F

    try:
        return tuple(F.max_pool2d(torch.from_numpy(x), **kw).shape)
    except (RuntimeError, ValueError):
        return None


@settings(max_examples=examples(3500))
@given(pool_problems())
@counted
def test_generated(p):
    x = rand(p["shape"], p["seed"], p["kind"])
    if _torch_pool_shape(x, p["kwargs"]) is None:
        # e.g. dilation makes the output empty; validity is checked below
        with pytest.raises(ValueError):
            convcore.max_pool2d(x, **p["kwargs"])
        return
    check("max_pool2d", x, isa=p["isa"], seed=p["seed"], **p["kwargs"])


@settings(max_examples=examples(1000))
@given(
    H=st.integers(1, 6),
    W=st.integers(1, 6),
    kh=st.integers(-1, 5),
    kw=st.integers(-1, 5),
    sh=st.integers(-1, 4),
    sw=st.integers(-1, 4),
    ph=st.integers(-1, 3),
    pw=st.integers(-1, 3),
    dh=st.integers(-1, 3),
    dw=st.integers(-1, 3),
    ceil_mode=st.booleans(),
)
@counted
def test_generated_validity_agrees_with_torch(H, W, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode):
    """convcore raises ValueError exactly when PyTorch rejects the call, and
    otherwise gives PyTorch's output shape (ceil_mode's rules included)."""
    x = rand((1, 2, H, W), 0)
    kw_ = dict(
        kernel_size=(kh, kw),
        stride=(sh, sw),
        padding=(ph, pw),
        dilation=(dh, dw),
        ceil_mode=ceil_mode,
    )
    expected = _torch_pool_shape(x, kw_)
    if expected is None:
        with pytest.raises(ValueError):
            convcore.max_pool2d(x, **kw_)
    else:
        assert convcore.max_pool2d(x, **kw_).shape == expected


@settings(max_examples=examples(500))
@given(
    shape=st.tuples(st.integers(0, 3), st.integers(1, 3), st.integers(1, 7), st.integers(1, 7)),
    P=st.integers(1, 5),
    Q=st.integers(1, 5),
    seed=st.integers(0, 2**31),
)
@counted
def test_generated_backward_any_indices(shape, P, Q, seed):
    rng = np.random.default_rng(seed)
    out = (shape[0], shape[1], P, Q)
    idx = rng.integers(0, shape[2] * shape[3], size=out).astype(np.int64)
    check_max_pool2d_backward_indices(rand(out, seed), idx, shape)


@pytest.mark.parametrize(
    "shape,kw",
    [
        ((1, 1, 1, 1), dict(kernel_size=(1, 2), stride=(1, 2), ceil_mode=True)),
        ((1, 2, 3, 4), dict(kernel_size=5, stride=3, padding=0, ceil_mode=True)),
        (
            (1, 1, 2, 5),
            dict(kernel_size=(2, 3), stride=2, padding=(0, 0), dilation=(2, 1), ceil_mode=True),
        ),
    ],
)
def test_ceil_mode_kernel_overhangs_input(shape, kw):
    assert _ceil_overhang(shape, kw)
    check("max_pool2d", rand(shape, 1), **kw)


def test_window_wholly_in_padding():
    # Dilation 2 over one row of padding on each side: the window reads only
    # padding.  PyTorch gives -inf and index H*W (its backward then writes
    # into the next plane); convcore gives the same forward and its backward
    # refuses the out-of-range index instead of writing out of bounds.
    x = rand((2, 1, 1, 1), 1)
    kw = dict(kernel_size=(2, 1), padding=(1, 0), dilation=(2, 1), ceil_mode=True)
    y, idx = check("max_pool2d", x, **kw)[:2]
    assert np.all(y == -np.inf) and np.all(idx == 1)
    with pytest.raises(ValueError, match="indices"):
        convcore.max_pool2d_backward(np.ones_like(y), idx, x.shape)


# ---------------------------------------------------------------------------
# The training path's workspace: each window's maximum as one byte, its tap
# (max_pool2d_offsets_forward / _backward, what nn.MaxPool2d keeps), bitwise
# the int64 path, with the ReLU's mask taken from the pool's output
# ---------------------------------------------------------------------------

_OFFSET_CASES = [
    n
    for n, (shape, kw) in CASES.items()
    if len(shape) == 4 and kw.get("dilation", 1) == 1 and shape[0] > 0
] + ["batch_0"]


def _pool_args(kw):
    k = kw["kernel_size"]
    kh, kw_ = (k, k) if isinstance(k, int) else tuple(k)
    s = kw.get("stride", (kh, kw_))
    sh, sw = (s, s) if isinstance(s, int) else (tuple(s) if len(s) else (kh, kw_))
    p = kw.get("padding", 0)
    ph, pw = (p, p) if isinstance(p, int) else tuple(p)
    return kh, kw_, sh, sw, ph, pw, bool(kw.get("ceil_mode", False))


def _taps_to_indices(off, args, W):
    kh, kw, sh, sw, ph, pw, _ = args
    P, Q = off.shape[2:]
    h = (np.arange(P) * sh - ph)[:, None] + off.astype(np.int64) // kw
    w = (np.arange(Q) * sw - pw)[None, :] + off.astype(np.int64) % kw
    return h * W + w


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", _OFFSET_CASES)
def test_offsets_are_the_int64_path(name, kind, isa):
    shape, kw = CASES[name]
    args = _pool_args(kw)
    pre = rand(shape, 5, kind)
    y = np.maximum(pre, np.float32(0)) if kind != "special" else pre
    want, idx = convcore.max_pool2d(y, **kw, return_indices=True)
    got, off = convcore._core.max_pool2d_offsets_forward(y, *args)
    assert off.dtype == np.uint8 and off.shape == want.shape
    assert_bitwise("max_pool2d offsets.output", got, want, name, "int64 path")
    assert np.array_equal(_taps_to_indices(off, args, shape[3]), idx), name
    go = rand(want.shape, 6, "special" if kind == "special" else "normal")
    plain = convcore.max_pool2d_backward(go, idx, shape)
    assert_bitwise(
        "max_pool2d offsets.grad_input",
        convcore._core.max_pool2d_offsets_backward(go, off, list(shape), *args),
        plain,
        name,
        "int64 path",
    )
    # Through the ReLU before the pool: the mask from the pool's output is
    # bitwise the mask from the full-size ReLU output.
    r = np.maximum(pre, np.float32(0))
    rout, ridx = convcore.max_pool2d(r, **kw, return_indices=True)
    _, roff = convcore._core.max_pool2d_offsets_forward(r, *args)
    assert_bitwise(
        "max_pool2d offsets.grad_input through ReLU",
        convcore._core.max_pool2d_offsets_backward(go, roff, list(shape), *args, rout),
        convcore.max_pool2d_backward(go, ridx, shape, relu_input=r),
        name,
        "int64 path with relu_input",
    )


def test_offsets_model_layers_run_the_fast_kernels():
    active = convcore.build_info()["isa_active"]
    fwd = bwd = {"avx512": "__avx512", "avx2": "__avx2"}.get(active, "__ref")
    for name in problems.ALL_POOL:
        x, kw = pool_case(name, kind="relu")
        args = _pool_args(kw)
        y, off = convcore._core.max_pool2d_offsets_forward(x, *args)
        assert convcore.last_kernel("maxpool2d_fwd_offsets").endswith(fwd), name
        convcore._core.max_pool2d_offsets_backward(y, off, list(x.shape), *args, y)
        assert convcore.last_kernel("maxpool2d_bwd_offsets").endswith(bwd), name


@pytest.mark.parametrize(
    "shape,args,bad",
    [
        ((2, 3, 8, 8), (2, 2, 2, 2, 0, 0, False), 4),  # tap past a 2x2 window (fast kernel)
        ((2, 3, 8, 8), (2, 2, 2, 2, 0, 0, False), 255),
        ((2, 3, 7, 9), (3, 3, 2, 2, 1, 1, True), 9),  # past a 3x3 window (reference)
        ((2, 3, 7, 9), (3, 3, 2, 2, 1, 1, True), 0),  # tap 0 of window (0, 0): the padding
    ],
)
def test_offsets_bad_tap_is_an_error_naming_offsets(shape, args, bad, isa):
    x = rand(shape, 1)
    y, off = convcore._core.max_pool2d_offsets_forward(x, *args)
    off = off.copy()
    off[1, 2, 0, 0] = bad
    with pytest.raises(ValueError, match="offsets: plane 5 holds a window tap outside"):
        convcore._core.max_pool2d_offsets_backward(y, off, list(shape), *args)


def test_offsets_argument_errors():
    x = rand((2, 3, 8, 8), 1)
    args = (2, 2, 2, 2, 0, 0, False)
    y, off = convcore._core.max_pool2d_offsets_forward(x, *args)
    back = convcore._core.max_pool2d_offsets_backward
    with pytest.raises(ValueError, match=r"kernel_size: window offsets hold at most 256 taps"):
        convcore._core.max_pool2d_offsets_forward(
            rand((1, 1, 20, 20), 1), 17, 16, 1, 1, 0, 0, False
        )
    with pytest.raises(TypeError, match="offsets: expected a uint8 array"):
        back(y, off.astype(np.int64), [2, 3, 8, 8], *args)
    with pytest.raises(ValueError, match=r"offsets: expected shape \(2, 3, 4, 4\)"):
        back(y, off[:, :2].copy(), [2, 3, 8, 8], *args)
    with pytest.raises(ValueError, match="offsets: expected a C-contiguous"):
        back(y, np.asfortranarray(off), [2, 3, 8, 8], *args)
    with pytest.raises(ValueError, match=r"grad_output: expected shape \(2, 3, 4, 4\)"):
        back(y[:, :, :3].copy(), off, [2, 3, 8, 8], *args)
    with pytest.raises(ValueError, match=r"output: expected shape \(2, 3, 4, 4\)"):
        back(y, off, [2, 3, 8, 8], *args, y[:1].copy())
    with pytest.raises(ValueError, match="input_shape: expected"):
        back(y, off, [3, 8, 8], *args)
