"""The fully connected layer (ops/linear.cpp) against a float64 reference
(PyTorch), on every ISA path: nn.Linear, its fused ReLU, the raw bindings,
thread-count invariance and argument errors."""

from __future__ import annotations

import convcore
import numpy as np
import pytest
import torch
from convcore import _core, nn
from oracle import _assert_close, assert_bitwise, rand

# (leading dims of the input, in_features, out_features)
SHAPES = {
    "tutorial_fc1": ((100,), 192, 120),
    "tutorial_fc3": ((100,), 60, 10),
    "batch1": ((1,), 7, 3),
    "one_feature": ((5,), 1, 1),
    "odd": ((7,), 33, 17),
    "long_reduction": ((3,), 700, 9),  # K past the GEMM's 256-deep blocks
    "wide_rows": ((2,), 5, 130),  # more columns than rows: column blocks
    "tall": ((300,), 4, 6),  # more rows than columns: row blocks
    "unbatched": ((), 12, 5),
    "3d_input": ((2, 3), 8, 4),
    "empty_batch": ((0,), 4, 3),
    "no_features": ((3,), 0, 4),
}

# Each ISA cap runs the list's entry for it (no AVX-512 entry: AVX2 serves).
_SUFFIX = {"scalar": "__ref", "portable": "__portable", "avx2": "__avx2", "avx512": "__avx2"}


def _reference(x, w, b, gy):
    xt = torch.from_numpy(x).double().requires_grad_()
    wt = torch.from_numpy(w).double().requires_grad_()
    bt = torch.from_numpy(b).double().requires_grad_()
    y = torch.nn.functional.linear(xt, wt, bt)
    y.backward(torch.from_numpy(gy).double())
    ax, aw, ab, agy = (torch.from_numpy(np.abs(a)).double() for a in (x, w, b, gy))
    m, k = int(np.prod(x.shape[:-1])), w.shape[1]
    return {
        "output": (y.detach(), torch.nn.functional.linear(ax, aw, ab), k + 1),
        "grad_input": (xt.grad, agy @ aw, w.shape[0]),
        "grad_weight": (wt.grad, agy.reshape(m, w.shape[0]).T @ ax.reshape(m, k), m),
        "grad_bias": (bt.grad, agy.reshape(m, w.shape[0]).sum(0), m),
    }


@pytest.mark.parametrize("name", SHAPES)
def test_linear_against_torch(name, isa):
    lead, k, n = SHAPES[name]
    x, w, b = rand((*lead, k), 1), rand((n, k), 2), rand((n,), 3)
    gy = rand((*lead, n), 4)
    layer = nn.Linear(k, n)
    layer.weight.data[...] = w
    layer.bias.data[...] = b
    y = layer(x)
    layer.input_grad = True
    gi = layer.backward(gy.copy())
    ref = _reference(x, w, b, gy)
    got = {"output": y, "grad_input": gi, "grad_weight": layer.weight.grad}
    got["grad_bias"] = layer.bias.grad
    for key, (r, scale, terms) in ref.items():
        _assert_close(f"linear.{key}", got[key], r, scale, terms, f"{name} {isa}")
    if int(np.prod(lead)) > 0 and k > 0:
        assert convcore.last_kernel("linear_fwd").endswith(_SUFFIX[isa])
        assert convcore.last_kernel("linear_bwd_data").endswith(_SUFFIX[isa])
        assert convcore.last_kernel("linear_bwd_weight").endswith(_SUFFIX[isa])


@pytest.mark.parametrize("kind", ["normal", "special"])
def test_fused_relu_is_bitwise_the_relu_layer(kind, isa):
    x, w, b = rand((9, 40), 1, kind), rand((21, 40), 2), rand((21,), 3)
    gy = rand((9, 21), 4, kind)
    plain = _core.linear_forward(x, w, b)
    fused = _core.linear_forward(x, w, b, relu=True)
    assert_bitwise("linear relu (fused vs numpy.maximum)", fused, np.maximum(plain, 0), kind)
    with np.errstate(invalid="ignore"):  # inf * 0 is the NaN numpy gives too
        masked = np.multiply(gy, fused > 0)
    want = _core.linear_backward(masked, x, w, True, True, True)
    got = _core.linear_backward(gy.copy(), x, w, True, True, True, relu_output=fused)
    for u, v, what in zip(got, want, ("input", "weight", "bias")):
        assert_bitwise(f"linear relu backward ({what})", u, v, kind, "the masked gradient")


def test_results_do_not_depend_on_the_thread_count():
    x, w, b = rand((100, 192), 1), rand((120, 192), 2), rand((120,), 3)
    gy = rand((100, 120), 4)
    out = []
    for threads in (1, 2, 3):
        convcore.set_num_threads(threads)
        out.append((_core.linear_forward(x, w, b), *_core.linear_backward(gy, x, w, 1, 1, 1)))
    for other in out[1:]:
        for u, v in zip(out[0], other):
            assert_bitwise("linear (threads)", u, v, "", "one thread")


def test_output_mask():
    x, w = rand((4, 6), 1), rand((3, 6), 2)
    gy = rand((4, 3), 3)
    gi, gw, gb = _core.linear_backward(gy, x, w, False, False, True)
    assert gi is None and gw is None
    np.testing.assert_allclose(gb, gy.sum(0), rtol=1e-6)
    gi, gw, gb = _core.linear_backward(gy, x, w, True, False, False)
    assert gw is None and gb is None and gi.shape == x.shape


def test_errors():
    x, w, b = rand((4, 6), 1), rand((3, 6), 2), rand((3,), 3)
    with pytest.raises(ValueError, match=r"weight: expected shape \(out_features, 6\)"):
        _core.linear_forward(x, rand((3, 5), 2), b)
    with pytest.raises(ValueError, match=r"weight: expected a 2-D array"):
        _core.linear_forward(x, rand((3, 6, 1), 2), b)
    with pytest.raises(ValueError, match=r"bias: expected shape \(3,\)"):
        _core.linear_forward(x, w, b[:2])
    with pytest.raises(ValueError, match="input: expected an array of shape"):
        _core.linear_forward(np.zeros((), np.float32), w, b)
    with pytest.raises(TypeError, match="input: expected a float32 array"):
        _core.linear_forward(x.astype(np.float64), w, b)
    with pytest.raises(ValueError, match="input: expected a C-contiguous"):
        _core.linear_forward(np.asfortranarray(rand((6, 6), 1)), rand((3, 6), 2), b)
    with pytest.raises(ValueError, match=r"grad_output: expected shape \(4, 3\)"):
        _core.linear_backward(rand((4, 2), 4), x, w, True, True, True)
    with pytest.raises(ValueError, match="grad_output: the array is read-only"):
        gy = rand((4, 3), 4)
        gy.flags.writeable = False
        _core.linear_backward(gy, x, w, True, True, True, relu_output=rand((4, 3), 5))
    with pytest.raises(ValueError, match=r"relu_output: expected shape \(4, 3\)"):
        _core.linear_backward(rand((4, 3), 4), x, w, True, True, True, relu_output=rand((4, 2), 5))
    with pytest.raises(ValueError, match=r"relu_output: expected a 2-D array, got 1-D"):
        _core.linear_backward(rand((4, 3), 4), x, w, True, True, True, relu_output=rand((4,), 5))
    # nn.Linear takes any layout, as numpy's matmul did: strided inputs and
    # weights are copied.
    layer = nn.Linear(6, 3)
    xs = rand((4, 12), 1)[:, ::2]
    want = layer(np.ascontiguousarray(xs))
    np.testing.assert_array_equal(layer(xs), want)
    layer.weight.data = np.asfortranarray(layer.weight.data)
    np.testing.assert_array_equal(layer(xs), want)
    gi = layer.backward(rand((4, 3), 2))
    assert gi.shape == xs.shape


def test_implementations_are_listed():
    for op in ("linear_fwd", "linear_bwd_data", "linear_bwd_weight"):
        names = convcore.implementations(op)
        assert names[-1] == f"{op}_f32__ref"
        assert any(n.endswith("__portable") for n in names)
