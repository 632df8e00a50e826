"""conv2d_relu and conv2d_relu_backward (the ReLU fused into the convolution):
against PyTorch's relu(conv2d) on every ISA path, bitwise the unfused
conv2d then ReLU (shared problem list, special values, generated shapes,
thread counts), the fusion in nn.Sequential, and errors."""

from __future__ import annotations

import math

import convcore
import fake_cuda
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from convcore import models, nn, optim, problems
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import _assert_close, _t, assert_bitwise, check, conv_case, examples, isa_cap, rand

_ZERO = np.float32(0)


def _unfused(x, w, b, go, mask=(True, True, True), **kw):
    """conv2d, ReLU, ReLU's backward, conv2d_backward: what the layers did."""
    y = np.maximum(convcore.conv2d(x, w, b, **kw), _ZERO)
    g = np.multiply(go, y > 0)
    return y, g, convcore.conv2d_backward(g, x, w, output_mask=mask, **kw)


def _fused(x, w, b, go, mask=(True, True, True), **kw):
    y = convcore.conv2d_relu(x, w, b, **kw)
    g = go.copy()
    grads = convcore.conv2d_relu_backward(g, y, x, w, output_mask=mask, **kw)
    return y, g, grads


def assert_fused_is_unfused(x, w, b, go=None, mask=(True, True, True), **kw):
    if go is None:
        go = rand(convcore.conv2d(x, w, b, **kw).shape, seed=11)
    y0, g0, grads0 = _unfused(x, w, b, go, mask, **kw)
    y1, g1, grads1 = _fused(x, w, b, go, mask, **kw)
    case = f"x{x.shape} w{w.shape} {kw}"
    assert_bitwise("conv2d_relu.output (fused vs unfused)", y1, y0, case, "conv2d then ReLU")
    assert_bitwise(
        "conv2d_relu.grad_output (fused vs unfused)", g1, g0, case, "the masked gradient"
    )
    for name, a, r in zip(("grad_input", "grad_weight", "grad_bias"), grads1, grads0):
        if r is None:
            assert a is None, name
        else:
            assert_bitwise(f"conv2d_relu.{name} (fused vs unfused)", a, r, case, "unfused")
    return y1, g0


def _check_against_torch(x, w, b, isa, **kw):
    """relu(conv2d) against PyTorch in float64 (|relu(a) - relu(b)| <= |a - b|,
    so conv2d's bound holds), and the gradient through the mask of convcore's
    own output against PyTorch's conv2d backward."""
    with isa_cap(isa):
        y = convcore.conv2d_relu(x, w, b, **kw)
    tkw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    x64, w64 = _t(x, torch.float64), _t(w, torch.float64)
    b64 = _t(b, torch.float64) if b is not None else None
    y64 = F.relu(F.conv2d(x64, w64, b64, **tkw))
    scale = F.conv2d(x64.abs(), w64.abs(), b64.abs() if b is not None else None, **tkw)
    n = w.shape[1] * w.shape[2] * w.shape[3] + (b is not None)
    _assert_close("conv2d_relu.output", y, y64, scale, n, f"x{x.shape} w{w.shape} {kw}")
    go = rand(y.shape, seed=5) * (y > 0)
    check("conv2d", x, w, b, isa=isa, grad_output=go.astype(np.float32), **kw)
    with isa_cap(isa):
        assert_fused_is_unfused(x, w, b, **kw)


# ---------------------------------------------------------------------------
# the shared problem list, every ISA path
# ---------------------------------------------------------------------------

_MODEL = [p for p in problems.TUTORIAL_LAYERS + problems.WIDE_LAYERS if not p.startswith("pool")]


@pytest.mark.parametrize("name", _MODEL + problems.EDGE_CASES)
def test_model_layers_and_edge_cases(name, isa):
    x, w, b, kw = conv_case(name, n=None if name in problems.EDGE_CASES else 3)
    _check_against_torch(x, w, b, isa, **kw)


@pytest.mark.parametrize("name", _MODEL)
def test_without_bias_and_masks(name, isa):
    x, w, _, kw = conv_case(name, n=2, bias=False)
    with isa_cap(isa):
        for mask in ((True, True, False), (False, True, False), (True, False, False)):
            assert_fused_is_unfused(x, w, None, mask=mask, **kw)


@pytest.mark.parametrize("kind", ["special", "ties", "relu"])
def test_special_values(kind, isa):
    """NaN, +-inf and -0.0 in the input, weights and gradient: the fused ReLU
    keeps NaN and turns -0 into +0 exactly as numpy.maximum; the mask gives
    -0 and NaN where the multiply by the bool mask does."""
    x = rand((2, 20, 9, 9), seed=1, kind=kind)
    w = rand((32, 20, 3, 3), seed=2, kind=kind)
    b = rand((32,), seed=3, kind=kind)
    go = rand((2, 32, 9, 9), seed=4, kind="special")
    with isa_cap(isa), np.errstate(invalid="ignore", over="ignore"):
        for bias in (b, None, np.zeros(32, np.float32)):
            assert_fused_is_unfused(x, w, bias, go, padding=1)
            # few channels: the row-segment kernels
            small = [np.ascontiguousarray(a) for a in (x[:, :6], w[:6, :6], go[:, :6])]
            b6 = None if bias is None else np.ascontiguousarray(bias[:6])
            assert_fused_is_unfused(small[0], small[1], b6, small[2], padding=1)


def test_signed_zero_becomes_positive(isa):
    # All-zero input, negative weights, no bias: the convolution gives -0.
    x = np.zeros((1, 3, 5, 5), np.float32)
    w = -np.ones((4, 3, 3, 3), np.float32)
    with isa_cap(isa):
        y = convcore.conv2d_relu(x, w)
    assert not np.signbit(y).any()


# ---------------------------------------------------------------------------
# generated shapes
# ---------------------------------------------------------------------------


@st.composite
def conv_problems(draw):
    groups = draw(st.sampled_from([1, 1, 1, 2, 3]))
    cg = draw(st.integers(1, 24))
    kg = draw(st.sampled_from([1, 5, 8, 16, 32, 33]))
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, dh * (r - 1) + 1 - 2 * ph), 17))
    wd = draw(st.integers(max(1, dw * (s - 1) + 1 - 2 * pw), 17))
    n = draw(st.integers(1, 3))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return n, groups, cg, kg, (r, s), (sh, sw), (dh, dw), (ph, pw), (h, wd), bias, seed


@settings(max_examples=examples(25), deadline=None)
@given(p=conv_problems(), isa=st.sampled_from(["scalar", "portable", "avx2", "avx512"]))
def test_generated_problems_fused_is_unfused(p, isa):
    n, groups, cg, kg, ks, stride, dil, pad, hw, bias, seed = p
    from oracle import available_isas

    if isa not in available_isas():
        isa = available_isas()[-1]
    x = rand((n, groups * cg, *hw), seed)
    w = rand((groups * kg, cg, *ks), seed + 1) * np.float32(1 / math.sqrt(cg * ks[0] * ks[1]))
    b = rand((groups * kg,), seed + 2) if bias else None
    kw = dict(stride=stride, padding=pad, dilation=dil, groups=groups)
    with isa_cap(isa):
        assert_fused_is_unfused(x, w, b, **kw)


# ---------------------------------------------------------------------------
# thread counts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", problems.TUTORIAL_LAYERS[0:3:2] + problems.WIDE_LAYERS[0:2])
def test_bitwise_for_any_thread_count(name):
    x, w, b, kw = conv_case(name, n=24)
    saved = convcore.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            convcore.set_num_threads(t)
            go = rand(convcore.conv2d(x, w, b, **kw).shape, seed=3)
            y, g, grads = _fused(x, w, b, go, **kw)
            results.append((y, g, *grads))
            assert_fused_is_unfused(x, w, b, go, **kw)
    finally:
        convcore.set_num_threads(saved)
    for other in results[1:]:
        for a, r in zip(other, results[0]):
            assert_bitwise("conv2d_relu (threads)", a, r, name, "1 thread")


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


def test_bad_arguments():
    x = rand((2, 3, 6, 6))
    w = rand((4, 3, 3, 3))
    y = convcore.conv2d_relu(x, w)
    go = rand(y.shape)
    with pytest.raises(ValueError, match="bias: expected a 1-D"):
        convcore.conv2d_relu(x, w, np.zeros((4, 1), np.float32))
    with pytest.raises(TypeError, match="input: expected a float32"):
        convcore.conv2d_relu(x.astype(np.float64), w)
    with pytest.raises(ValueError, match="output: expected shape"):
        convcore.conv2d_relu_backward(go, y[:1], x, w)
    with pytest.raises(TypeError, match="output: expected a float32"):
        convcore.conv2d_relu_backward(go, y.astype(np.float64), x, w)
    with pytest.raises(ValueError, match="grad_output: expected shape"):
        convcore.conv2d_relu_backward(go[:1].copy(), y[:1].copy(), x, w)
    ro = go.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="grad_output: the array is read-only"):
        convcore.conv2d_relu_backward(ro, y, x, w)
    with pytest.raises(ValueError, match="relu_output: expected a C-contiguous"):
        convcore._core.conv2d_backward(
            go, x, w, 1, 1, 0, 0, 0, 0, 1, 1, 1, True, True, True, relu_output=y[:, :, ::-1]
        )
    with pytest.raises(ValueError, match="grad_output: expected a 3-D array"):
        convcore.conv2d_relu_backward(go, y, x[0], w)


def test_unbatched_input():
    x, w, b = rand((3, 7, 7)), rand((5, 3, 3, 3), 1), rand((5,), 2)
    y = convcore.conv2d_relu(x, w, b, padding=1)
    assert y.shape == (5, 7, 7)
    assert_bitwise(
        "conv2d_relu.output (unbatched)",
        y,
        convcore.conv2d_relu(x[None], w, b, padding=1)[0],
        "",
        "batched",
    )
    go = rand(y.shape, 3)
    gi, gw, gb = convcore.conv2d_relu_backward(go.copy(), y, x, w, padding=1)
    ref = convcore.conv2d_relu_backward(go[None].copy(), y[None], x[None], w, padding=1)
    assert_bitwise("conv2d_relu.grad_input (unbatched)", gi, ref[0][0], "", "batched")
    assert_bitwise("conv2d_relu.grad_weight (unbatched)", gw, ref[1], "", "batched")


# ---------------------------------------------------------------------------
# max_pool2d_backward(..., relu_input=): the pool's gradient through the ReLU
# before it, bitwise the unfused multiply by the mask
# ---------------------------------------------------------------------------

_POOLS = [
    ((3, 6, 24, 24), dict(kernel_size=2)),  # the 2x2/2 kernel, the tutorial's layer (2 blocks)
    ((2, 32, 14, 14), dict(kernel_size=2)),
    ((2, 5, 9, 11), dict(kernel_size=2)),  # odd sizes: last row and column in no window
    ((2, 4, 13, 12), dict(kernel_size=3, stride=2, padding=1)),  # overlapping windows
    ((1, 3, 10, 10), dict(kernel_size=3, stride=1, dilation=2, ceil_mode=True)),
    ((4, 70, 5, 5), dict(kernel_size=2, ceil_mode=True)),  # many small planes, the reference
]


def _relu_then_pool_cases():
    for shape, kw in _POOLS:
        for kind in ("normal", "special"):
            yield shape, kw, kind


@pytest.mark.parametrize("shape,kw,kind", list(_relu_then_pool_cases()))
def test_pool_backward_through_relu_is_the_unfused_mask(shape, kw, kind, isa):
    pre = rand(shape, 1)
    go_shape = convcore.max_pool2d(pre, **kw).shape
    go = rand(go_shape, 2)
    if kind == "special":
        # Zeros of both signs, NaN and inf in the activations (ties and
        # windows whose max is cut to 0), inf and NaN and -0 in the gradient.
        flat = pre.reshape(-1)
        flat[::7] = 0.0
        flat[1::11] = -0.0
        flat[2::13] = np.nan
        flat[3::17] = -np.inf
        flat[4::19] = np.inf
        g = go.reshape(-1)
        g[::5] = np.inf
        g[1::9] = -np.inf
        g[2::7] = np.nan
        g[3::6] = -0.0
    y = np.maximum(pre, np.float32(0))  # the ReLU's output, the pool's input
    _, idx = convcore.max_pool2d(y, **kw, return_indices=True)
    with isa_cap(isa):
        plain = convcore.max_pool2d_backward(go, idx, y.shape)
        fused = convcore.max_pool2d_backward(go, idx, y.shape, relu_input=y)
    with np.errstate(invalid="ignore"):  # inf * 0 is the NaN numpy gives too
        want = np.multiply(plain, y > 0)
    case = f"{shape} {kw} {kind}"
    assert_bitwise("max_pool2d_backward (relu_input vs unfused)", fused, want, case, "unfused")


def test_pool_backward_through_relu_unbatched_and_errors():
    y = np.maximum(rand((3, 8, 8), 1), np.float32(0))
    out, idx = convcore.max_pool2d(y, 2, return_indices=True)
    go = rand(out.shape, 2)
    got = convcore.max_pool2d_backward(go, idx, y.shape, relu_input=y)
    want = np.multiply(convcore.max_pool2d_backward(go, idx, y.shape), y > 0)
    assert_bitwise("max_pool2d_backward (unbatched relu_input)", got, want, "", "unfused")
    with pytest.raises(ValueError, match="relu_input: expected shape"):
        convcore.max_pool2d_backward(go, idx, y.shape, relu_input=y[:, :4])
    with pytest.raises(TypeError, match="relu_input: expected a float32"):
        convcore.max_pool2d_backward(go, idx, y.shape, relu_input=y.astype(np.float64))
    with pytest.raises(ValueError, match="relu_input: expected a C-contiguous"):
        convcore._core.max_pool2d_backward(
            go[None], idx[None], (1, 3, 8, 8), relu_input=y[None][:, :, ::-1]
        )


# ---------------------------------------------------------------------------
# the layers: nn.Sequential fuses Conv2d or Linear + ReLU(inplace=True)
# ---------------------------------------------------------------------------


def _train(name, fuse, steps=3, monkeypatch=None):
    monkeypatch.setattr(nn, "_FUSE_CONV_RELU", fuse)
    model = models.build(name, seed=1)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x = rand((8, 1, 28, 28), 7)
    y = np.arange(8) % 10
    out = []
    for _ in range(steps):
        logits = model(x)
        out.append(loss_fn(logits, y))
        model.zero_grad()
        model.backward(loss_fn.backward())
        out.extend(p.grad.copy() for p in model.parameters())
        opt.step()
    model.eval()
    out.append(model(x).copy())
    return model, out


@pytest.mark.parametrize("name", models.NAMES)
def test_sequential_fusion_is_bitwise_the_layers(name, monkeypatch):
    fused_model, a = _train(name, True, monkeypatch=monkeypatch)
    # Every ReLU follows a Conv2d or a Linear (wide-bn's convolutions fuse
    # theirs into the batch norms; its Linear + ReLU is fused here).
    expect = {"tutorial": {1, 4, 8, 10}, "wide": {1, 3, 6, 8, 12}, "wide-bn": {12}}[name]
    assert fused_model._fused == expect
    plain_model, b = _train(name, False, monkeypatch=monkeypatch)
    assert plain_model._fused == set()
    assert len(a) == len(b)
    for u, v in zip(a, b):
        if isinstance(u, float):
            assert u == v
        else:
            assert_bitwise("model (fused vs unfused)", u, v, name, "the unfused layers")


def test_fusion_keeps_names_and_torch_loads_the_state(monkeypatch):
    model, _ = _train("tutorial", True, steps=1, monkeypatch=monkeypatch)
    state = model.state_dict()
    assert list(state) == [
        "0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias",
        "9.weight", "9.bias", "11.weight", "11.bias",
    ]  # fmt: skip
    tm = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5), torch.nn.ReLU(inplace=True), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 12, 5), torch.nn.ReLU(inplace=True), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(192, 120), torch.nn.ReLU(inplace=True),
        torch.nn.Linear(120, 60), torch.nn.ReLU(inplace=True), torch.nn.Linear(60, 10),
    )  # fmt: skip
    tm = tm.float()  # whatever default dtype another test left behind
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    x = rand((4, 1, 28, 28), 9)
    model.eval()
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(x), ref, rtol=1e-4, atol=1e-5)


def _assert_is_layer_by_layer(seq, x, y, g, gi):
    """seq's fused output y and input gradient gi (for gradient g) against
    its layers run one at a time."""
    for layer in seq.layers:
        layer.input_grad = True
    h = x
    for layer in seq.layers:
        h = layer(h)
    assert_bitwise("Sequential.output (fused vs layers)", y, h, "", "layer by layer")
    gg = g.copy()
    for layer in reversed(seq.layers):
        gg = layer.backward(gg)
    assert_bitwise("Sequential.grad_input (fused vs layers)", gi, gg, "", "layer by layer")


# Conv2d, ReLU(inplace), MaxPool2d run as one op in Sequential: (input shape,
# Conv2d arguments, MaxPool2d arguments, whether the row kernels run the
# convolution so each image is pooled from a per-thread buffer).
_TRIPLES = {
    "tutorial_1": ((3, 1, 28, 28), dict(in_channels=1, out_channels=6, kernel_size=5), {}, True),
    "tutorial_2": ((3, 6, 12, 12), dict(in_channels=6, out_channels=12, kernel_size=5), {}, True),
    "wide_1": ((2, 1, 28, 28), dict(in_channels=1, out_channels=32, kernel_size=3, padding=1),
               {}, True),
    "wide_2_winograd": ((2, 32, 14, 14),
                        dict(in_channels=32, out_channels=32, kernel_size=3, padding=1), {}, False),
    "odd_pool_3x3_s2_p1_ceil": ((2, 3, 11, 13),
                                dict(in_channels=3, out_channels=5, kernel_size=3, padding=1),
                                dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), True),
    "overlapping_2x2_s1": ((2, 2, 9, 8), dict(in_channels=2, out_channels=4, kernel_size=3),
                           dict(kernel_size=2, stride=1), True),
    "odd_output_rows": ((1, 2, 11, 12), dict(in_channels=2, out_channels=3, kernel_size=2), {},
                        True),
    "strided_conv": ((2, 4, 13, 13),
                     dict(in_channels=4, out_channels=16, kernel_size=3, stride=2), {}, False),
    "no_bias": ((2, 3, 10, 10), dict(in_channels=3, out_channels=7, kernel_size=3, bias=False),
                {}, True),
    "reflect_padding": ((2, 2, 9, 9), dict(in_channels=2, out_channels=4, kernel_size=3,
                                           padding=1, padding_mode="reflect"), {}, True),
    "batch_1_pool_as_large_as_output": ((1, 1, 6, 6),
                                        dict(in_channels=1, out_channels=2, kernel_size=3),
                                        dict(kernel_size=4), True),
}  # fmt: skip


def _triple_reference(conv, pool_kw, x, g):
    """The three ops on the functional API: int64 indices, the full-size
    ReLU output as the mask, conv2d_backward of the masked gradient."""
    w, b = conv.weight.data, None if conv.bias is None else conv.bias.data
    xin = x if conv._explicit_pad is None else convcore.pad(x, conv._explicit_pad, "reflect")
    kw = dict(stride=conv.stride, padding=conv._conv_padding())
    c = convcore.conv2d_relu(xin, w, b, **kw)
    out, idx = convcore.max_pool2d(c, **pool_kw, return_indices=True)
    gc = convcore.max_pool2d_backward(g, idx, c.shape, relu_input=c)
    gi, gw, gb = convcore.conv2d_backward(gc, xin, w, **kw)
    if conv._explicit_pad is not None:
        gi = convcore.pad_backward(gi, x.shape, conv._explicit_pad, "reflect")
    return out, gi, gw, gb


@pytest.mark.parametrize("kind", ["normal", "special"])
@pytest.mark.parametrize("name", _TRIPLES)
def test_conv_relu_pool_is_one_op_bitwise_the_three(name, kind, isa):
    shape, conv_kw, pool_kw, rows = _TRIPLES[name]
    pool_kw = pool_kw or dict(kernel_size=2)
    conv = nn.Conv2d(**conv_kw, rng=0)
    seq = nn.Sequential(conv, nn.ReLU(inplace=True), nn.MaxPool2d(**pool_kw))
    seq.input_grad = True
    x = rand(shape, 1, "special" if kind == "special" else "normal")
    if kind == "special":
        conv.weight.data[0, 0, 0, 0] = np.inf  # inf * 0 and inf - inf in the sums
    y = seq(x)
    assert seq._pooled == {2} and seq._fused == {1}
    fused = convcore.last_kernel("conv2d_relu_maxpool2d_fwd")
    expect_rows = rows and isa == "avx512"
    assert fused.endswith("_rows_8w__avx512" if expect_rows else "_unfused"), fused
    g = rand(y.shape, 2, "special" if kind == "special" else "normal")
    gi = seq.backward(g.copy())
    out, rgi, rgw, rgb = _triple_reference(conv, pool_kw, x, g)
    case = f"{name} {kind}"
    assert_bitwise("conv+relu+pool.output (Sequential vs ops)", y, out, case, "three ops")
    assert_bitwise("conv+relu+pool.grad_input (Sequential vs ops)", gi, rgi, case, "three ops")
    assert_bitwise("conv+relu+pool.grad_weight", conv.weight.grad, rgw, case, "three ops")
    if conv.bias is not None:
        assert_bitwise("conv+relu+pool.grad_bias", conv.bias.grad, rgb, case, "three ops")
    # As a first layer (no input gradient) the weight gradient is computed
    # from the pool's gradient directly, the full-size one never made.
    seq.zero_grad()
    seq.input_grad = False
    assert seq.backward(g.copy()) is None
    through = convcore.last_kernel("conv2d_bwd_weight_maxpool2d")
    if conv._explicit_pad is None:
        rows_wgrad = convcore.last_kernel("conv2d_bwd_weight").startswith(
            "conv2d_bwd_weight_f32_rows"
        )
        assert through.endswith("_rows_8w__avx512" if rows_wgrad else "_unfused"), through
    assert_bitwise("conv+relu+pool.grad_weight (first layer)", conv.weight.grad, rgw, case, "ops")
    if conv.bias is not None:
        assert_bitwise("conv+relu+pool.grad_bias (first layer)", conv.bias.grad, rgb, case, "ops")


def test_conv_pool_weight_backward_errors():
    x, w, b = rand((2, 1, 10, 10), 1), rand((3, 1, 3, 3), 2), rand((3,), 3)
    args = (1, 1, 0, 0, 0, 0, 1, 1, 1)
    pool = (2, 2, 2, 2, 0, 0, False)
    y, off = convcore._core.conv2d_relu_max_pool2d_forward(x, w, b, *args, *pool)
    back = convcore._core.conv2d_max_pool2d_weight_backward
    g = rand(y.shape, 4)
    gw, gb = back(g, off, y, x, w, *args, *pool, True, False)
    assert gw.shape == w.shape and gb is None
    with pytest.raises(ValueError, match=r"grad_output: expected shape \(2, 3, 4, 4\)"):
        back(g[:, :2].copy(), off, y, x, w, *args, *pool, True, True)
    with pytest.raises(TypeError, match="offsets: expected a uint8 array"):
        back(g, off.astype(np.int64), y, x, w, *args, *pool, True, True)
    with pytest.raises(ValueError, match=r"output: expected shape \(2, 3, 4, 4\)"):
        back(g, off, y[:1].copy(), x, w, *args, *pool, True, True)
    bad = off.copy()
    bad[1, 1, 0, 0] = 7
    with pytest.raises(ValueError, match="offsets: plane 4 holds a window tap outside"):
        back(g, bad, y, x, w, *args, *pool, True, True)


def test_conv_relu_pool_unfused_when_the_row_kernel_is_disabled():
    """Disabling the row-segment forward makes the fused op run the
    convolution the forward list picks instead, then the pool: the same bits."""
    x = rand((2, 1, 28, 28), 1)
    conv = nn.Conv2d(1, 6, 5, rng=0)
    seq = nn.Sequential(conv, nn.ReLU(inplace=True), nn.MaxPool2d(2))
    y = seq(x)
    saved = convcore.disabled_implementations()
    try:
        convcore.set_disabled_implementations(["conv2d_fwd_f32_rows_8w__avx512"])
        y2 = seq(x)
        assert convcore.last_kernel("conv2d_relu_maxpool2d_fwd").endswith("_unfused")
        assert not convcore.last_kernel("conv2d_fwd").startswith("conv2d_fwd_f32_rows")
    finally:
        convcore.set_disabled_implementations(saved)
    # Another convolution kernel: within the oracle's bounds, not the same bits.
    np.testing.assert_allclose(y2, y, rtol=1e-5, atol=1e-5)


def test_pool_after_fused_pair_masks_and_is_bitwise_the_layers():
    # Conv2d, ReLU(inplace), MaxPool2d run as one op; layer by layer (each
    # layer's own forward and backward) gives the same bits.
    seq = nn.Sequential(
        nn.Conv2d(1, 6, 5, rng=0), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(6, 12, 3, rng=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
    )  # fmt: skip
    x = rand((3, 1, 16, 16))
    y = seq(x)
    assert seq._fused == {1, 4} and seq._pooled == {2, 5}
    seq.input_grad = True
    g = rand(y.shape, 2)
    gi = seq.backward(g.copy())
    grads = [p.grad.copy() for p in seq.parameters()]
    seq.zero_grad()
    _assert_is_layer_by_layer(seq, x, y, g, gi)
    for a, p in zip(grads, seq.parameters()):
        assert_bitwise("Sequential.param grads (fused vs layers)", a, p.grad, "", "layer by layer")


def test_only_inplace_relu_after_conv2d_is_fused():
    seq = nn.Sequential(
        nn.Conv2d(1, 4, 3, rng=0), nn.ReLU(), nn.Conv2d(4, 4, 3, rng=1), nn.ReLU(inplace=True)
    )
    x = rand((2, 1, 9, 9))
    y = seq(x)
    assert seq._fused == {3}
    g = rand(y.shape, 2)
    seq.input_grad = True
    gi = seq.backward(g.copy())
    _assert_is_layer_by_layer(seq, x, y, g, gi)


def test_pool_through_relu_on_the_gpu_backend_is_the_two_ops(monkeypatch):
    ext = fake_cuda.install(monkeypatch)
    y = np.maximum(rand((2, 4, 8, 8), 1), np.float32(0))
    out, idx = convcore.max_pool2d(y, 2, return_indices=True)
    go = rand(out.shape, 2)
    want = convcore.max_pool2d_backward(go, idx, y.shape, relu_input=y)
    dy, dgo = fake_cuda.FakeDeviceArray(y.copy()), fake_cuda.FakeDeviceArray(go.copy())
    _, didx = convcore.max_pool2d(dy, 2, return_indices=True)
    got = convcore.max_pool2d_backward(dgo, didx, y.shape, relu_input=dy)
    assert ext.calls["relu_backward"] >= 1
    assert_bitwise("max_pool2d_backward relu_input (gpu vs host)", got.numpy(), want, "", "host")


def test_fused_ops_on_the_gpu_backend_are_the_two_ops(monkeypatch):
    """The GPU backend runs conv2d_relu as conv2d and an in-place ReLU (the
    fake GPU runs the host kernels, so the results are the host's bits)."""
    ext = fake_cuda.install(monkeypatch)
    x, w, b, kw = conv_case(problems.WIDE_LAYERS[1], n=2)
    go = rand(convcore.conv2d(x, w, b, **kw).shape, 4)
    y0, g0, grads0 = _unfused(x, w, b, go, **kw)
    dx, dw, db = (fake_cuda.FakeDeviceArray(a.copy()) for a in (x, w, b))
    y = convcore.conv2d_relu(dx, dw, db, **kw)
    dgo = fake_cuda.FakeDeviceArray(go.copy())
    grads = convcore.conv2d_relu_backward(dgo, y, dx, dw, **kw)
    assert ext.calls["relu_forward"] >= 1 and ext.calls["relu_backward"] >= 1
    assert_bitwise("conv2d_relu.output (gpu vs host)", y.numpy(), y0, "", "host")
    for a, r in zip(grads, grads0):
        assert_bitwise("conv2d_relu.grads (gpu vs host)", a.numpy(), r, "", "host")
