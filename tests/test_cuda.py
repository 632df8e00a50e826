"""The GPU path (convcore.cuda) against PyTorch and against the CPU path.

The GPU runs the CPU tests' grid through the shared oracle (float64 PyTorch
reference, same bounds), with an ``impl`` that moves the numpy inputs to the
device, calls convcore's functional API on DeviceArrays (checking that the
results stay on the device) and copies the results back.  On top of that:
GPU == CPU bitwise where the CPU path is exact (pooling and padding, both
directions), GPU and CPU convolutions within float32 rounding, bitwise
repeatability, the same errors as the CPU path, DeviceArray and DLPack.

Without a GPU every GPU test skips, with the reason: "no CUDA device:
convcore built without CUDA ..." or "no CUDA device: convcore built with
CUDA ... but no device visible (...)"; with ``CONVCORE_REQUIRE_GPU=1``
(bench/gpu_check.sh) such a skip is a failure (conftest.py).

PyTorch is only the CPU oracle here (float64 F.conv2d, F.max_pool2d, F.pad
and autograd, all in PyTorch 2.11, the version on the GPU machines) and a
DLPack partner; no test here depends on behaviour new in 2.13 (the one
2.13-specific note, in test_pad.py, is on a CPU test that does not call
PyTorch).  bench/gpu_check.sh records the version it ran with.  The module itself imports without a
GPU, so CI (which compiles the CUDA path but has no GPU) still collects it;
the tests of the no-GPU behaviour run everywhere.
"""

from __future__ import annotations

import math

import convcore
import convcore.cuda as cc
import numpy as np
import pytest
from convcore import problems
from oracle import U32, assert_bitwise, check, conv_case, pool_case, rand
from test_conv2d import CASES as CONV_CASES
from test_pad import MODES as PAD_MODES
from test_pad import PADS
from test_pool import CASES as POOL_CASES
from test_pool import KINDS as POOL_KINDS

AVAILABLE = cc.is_available()
REASON = f"no CUDA device: {cc.unavailable_reason()}"


def gpu(fn):
    """A test that needs a CUDA device: without one it skips with the reason
    (a failure under CONVCORE_REQUIRE_GPU=1)."""
    return pytest.mark.gpu(pytest.mark.skipif(not AVAILABLE, reason=REASON)(fn))


def gpu_oracle(fn):
    """A GPU test that needs the PyTorch oracle (conftest: a failure in CI
    when PyTorch is missing, a skip elsewhere)."""
    return pytest.mark.torch(gpu(fn))


# ---------------------------------------------------------------------------
# convcore's functional API on the GPU, numpy at the edges (an oracle impl)
# ---------------------------------------------------------------------------


def _dev(a):
    return cc.to_device(np.asarray(a)) if a is not None else None


def _host(a, name):
    if a is None:
        return None
    assert isinstance(a, cc.DeviceArray), f"{name}: the GPU path returned {type(a).__name__}"
    return a.numpy()


class OnGpu:
    """Stands in for the convcore module in oracle.check(..., impl=OnGpu)."""

    @staticmethod
    def conv2d(x, w, b=None, **kw):
        return _host(convcore.conv2d(_dev(x), _dev(w), _dev(b), **kw), "conv2d")

    @staticmethod
    def conv2d_backward(go, x, w, **kw):
        grads = convcore.conv2d_backward(_dev(go), _dev(x), _dev(w), **kw)
        return tuple(_host(g, "conv2d_backward") for g in grads)

    @staticmethod
    def max_pool2d(x, **kw):
        out = convcore.max_pool2d(_dev(x), **kw)
        if isinstance(out, tuple):
            return tuple(_host(o, "max_pool2d") for o in out)
        return _host(out, "max_pool2d")

    @staticmethod
    def max_pool2d_backward(go, idx, shape):
        return _host(
            convcore.max_pool2d_backward(_dev(go), _dev(idx), shape), "max_pool2d_backward"
        )

    @staticmethod
    def pad(x, pad, **kw):
        return _host(convcore.pad(_dev(x), pad, **kw), "pad")

    @staticmethod
    def pad_backward(go, shape, pad, **kw):
        return _host(convcore.pad_backward(_dev(go), shape, pad, **kw), "pad_backward")


def _close_to_cpu(name, gpu_out, cpu_out, n_terms, case):
    """GPU and CPU convolutions: both within the oracle's bound of the float64
    result; here a normwise check that they agree to float32 rounding."""
    if cpu_out is None:
        assert gpu_out is None
        return
    scale = max(1.0, float(np.abs(cpu_out).max(initial=0.0)))
    err = float(np.abs(gpu_out.astype(np.float64) - cpu_out).max(initial=0.0))
    bound = 20 * math.sqrt(n_terms + 1) * U32 * scale
    assert err <= bound, f"{name} [{case}]: GPU and CPU differ by {err:.3e} > {bound:.3e}"


def check_conv(x, w, b, **kw):
    mask = kw.pop("output_mask", (True, True, True))
    y, grads = check("conv2d", x, w, b, impl=OnGpu, output_mask=mask, **kw)
    go = rand(y.shape, 7919)  # the oracle's default grad_output (seed 0 + 7919)
    y_cpu = convcore.conv2d(x, w, b, **kw)
    g_cpu = convcore.conv2d_backward(go, x, w, output_mask=mask, **kw)
    n = x.shape[0] if x.ndim == 4 else 1
    K, Cg, R, S = w.shape
    P, Q = y.shape[-2:]
    case = f"conv2d{x.shape}{w.shape}{kw}"
    _close_to_cpu("conv2d.output", y, y_cpu, Cg * R * S, case)
    for name, g, c, terms in zip(
        ("grad_input", "grad_weight", "grad_bias"),
        grads,
        g_cpu,
        (K * R * S, n * P * Q, n * P * Q),
    ):
        _close_to_cpu(f"conv2d.{name}", g, c, terms, case)
    return y, grads


def check_pool(x, **kw):
    y, idx, gi = check("max_pool2d", x, impl=OnGpu, **kw)
    case = f"max_pool2d{x.shape}{kw}"
    y_cpu, idx_cpu = convcore.max_pool2d(x, return_indices=True, **kw)
    assert_bitwise("max_pool2d.output(GPU vs CPU)", y, y_cpu, case, "the CPU path")
    assert_bitwise("max_pool2d.indices(GPU vs CPU)", idx, idx_cpu, case, "the CPU path")
    if gi is not None:
        go = rand(y.shape, 104729)  # the oracle's default grad_output
        gi_cpu = convcore.max_pool2d_backward(go, idx_cpu, x.shape)
        assert_bitwise("max_pool2d.grad_input(GPU vs CPU)", gi, gi_cpu, case, "the CPU path")


def check_pad(x, pad, mode="constant", value=None):
    y, gi = check("pad", x, pad, mode, value, impl=OnGpu)
    case = f"pad{x.shape}{pad}{mode}"
    kw = {"mode": mode} if value is None else {"mode": mode, "value": value}
    assert_bitwise("pad.output(GPU vs CPU)", y, convcore.pad(x, pad, **kw), case, "the CPU path")
    go = rand(y.shape, 15485863)  # the oracle's default grad_output
    gi_cpu = convcore.pad_backward(go, x.shape, pad, mode=mode)
    assert_bitwise("pad.grad_input(GPU vs CPU)", gi, gi_cpu, case, "the CPU path")


# ---------------------------------------------------------------------------
# Without a GPU (these run everywhere)
# ---------------------------------------------------------------------------


def test_build_info_agrees():
    info = convcore.build_info()
    assert info["cuda"] == cc.is_built()
    if cc.is_built():
        archs = info["cuda_architectures"].split(",")
        assert any(a.startswith("80") for a in archs), archs
        assert any(a.startswith("90") for a in archs), archs
        assert info["cuda_version"]
    else:
        assert info["cuda_architectures"] == ""


def test_available_is_consistent():
    assert cc.is_available() == (cc.device_count() > 0)
    assert (cc.unavailable_reason() == "") == cc.is_available()
    if not cc.is_built():
        assert cc.device_count() == 0
        assert "built without CUDA" in cc.unavailable_reason()


@pytest.mark.skipif(AVAILABLE, reason="a CUDA device is visible: this tests the no-device path")
@pytest.mark.parametrize(
    "call",
    [
        lambda: cc.to_device(np.zeros(3, np.float32)),
        lambda: cc.from_dlpack(np.zeros(3, np.float32)),
        lambda: cc.empty((2, 3)),
        lambda: cc.zeros((2, 3)),
        lambda: cc.synchronize(),
    ],
    ids=["to_device", "from_dlpack", "empty", "zeros", "synchronize"],
)
def test_without_device_raises_clear_error(call):
    with pytest.raises(RuntimeError, match="no CUDA device: convcore built with"):
        call()


class _ForeignCudaArray:
    """Looks like a CUDA array from another library (torch, CuPy) to DLPack."""

    shape = (1, 1, 4, 4)
    dtype = np.float32

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, **kwargs):  # pragma: no cover - must not be called
        raise AssertionError("convcore must not import a GPU array implicitly")


@pytest.mark.parametrize(
    "call",
    [
        lambda a: convcore.conv2d(a, np.zeros((1, 1, 1, 1), np.float32)),
        lambda a: convcore.conv2d(np.zeros((1, 1, 4, 4), np.float32), a),
        lambda a: convcore.max_pool2d(a, 2),
        lambda a: convcore.pad(a, (1, 1)),
        lambda a: convcore.pad_backward(a, (1, 1, 2, 2), (1, 1)),
    ],
    ids=["conv2d_input", "conv2d_weight", "max_pool2d", "pad", "pad_backward"],
)
def test_foreign_gpu_array_gives_clear_error(call):
    match = "built without CUDA" if not cc.is_built() else "convcore.cuda.from_dlpack"
    with pytest.raises(TypeError, match=match):
        call(_ForeignCudaArray())


def test_cpu_path_still_returns_numpy():
    y = convcore.conv2d(rand((1, 2, 5, 5)), rand((3, 2, 3, 3)))
    assert type(y) is np.ndarray


# ---------------------------------------------------------------------------
# The comparison grid on the GPU
# ---------------------------------------------------------------------------


@gpu_oracle
@pytest.mark.parametrize("name", problems.EDGE_CASES)
def test_conv_edge_cases(name):
    x, w, b, kw = conv_case(name)
    check_conv(x, w, b, **kw)


_MODEL = [p for p in problems.ALL_CONV if p not in problems.EDGE_CASES]


@gpu_oracle
@pytest.mark.parametrize("name", _MODEL)
def test_conv_model_layers(name):
    n = 1 if name in problems.GENERIC_LAYERS else 3
    x, w, b, kw = conv_case(name, n=n)
    check_conv(x, w, b, **kw)


@gpu_oracle
@pytest.mark.parametrize("name", [p for p in problems.ALL_CONV if p.startswith("n100_")])
def test_conv_model_layers_full_batch(name):
    # N=100 as in training: the weight gradient's split reduction over N*P*Q.
    x, w, b, kw = conv_case(name)
    check_conv(x, w, b, **kw)


@gpu_oracle
@pytest.mark.parametrize("name", CONV_CASES)
def test_conv_awkward(name):
    xs, ws, bias, kw = CONV_CASES[name]
    x, w = rand(xs, 3), rand(ws, 4)
    check_conv(x, w, rand((ws[0],), 5) if bias else None, **kw)


@gpu_oracle
@pytest.mark.parametrize(
    "xs,ws,kw",
    [
        ((2, 3, 7, 8), (4, 3, 4, 2), dict(padding="same")),  # even kernels: extra pad right/bottom
        ((1, 4, 9, 6), (4, 2, 4, 3), dict(padding="same", dilation=(1, 3), groups=2)),
        ((2, 6, 11, 9), (9, 2, 3, 3), dict(stride=2, padding=1, dilation=2, groups=3)),
        ((1, 4, 6, 6), (8, 1, 3, 3), dict(padding="valid", groups=4)),
        ((3, 8, 8), (6, 8, 3, 3), dict(padding=1)),  # unbatched
        ((0, 3, 5, 5), (4, 3, 3, 3), dict(padding=1)),  # batch 0
        ((1, 70, 5, 5), (130, 70, 1, 1), {}),  # several 64-row and 64-column tiles
        ((2, 3, 40, 45), (5, 3, 3, 3), dict(stride=(2, 3), padding=(0, 2))),
    ],
)
def test_conv_more_cases(xs, ws, kw):
    check_conv(rand(xs, 1), rand(ws, 2), rand((ws[0],), 3), **kw)


@gpu_oracle
@pytest.mark.parametrize("mask", [(True, False, False), (False, True, False), (False, False, True)])
def test_conv_output_mask(mask):
    check_conv(rand((2, 3, 6, 7), 1), rand((4, 3, 3, 3), 2), None, padding=1, output_mask=mask)


@gpu_oracle
@pytest.mark.parametrize("kind", POOL_KINDS)
@pytest.mark.parametrize("name", problems.ALL_POOL)
def test_pool_model_layers(name, kind):
    x, kw = pool_case(name, n=4, kind=kind)
    check_pool(x, **kw)


@gpu_oracle
@pytest.mark.parametrize("name", problems.ALL_POOL)
def test_pool_model_layers_full_batch(name):
    x, kw = pool_case(name, kind="relu")
    check_pool(x, **kw)


@gpu_oracle
@pytest.mark.parametrize("kind", POOL_KINDS)
@pytest.mark.parametrize("name", POOL_CASES)
def test_pool_awkward(name, kind):
    shape, kw = POOL_CASES[name]
    check_pool(rand(shape, 5, kind), **kw)


@gpu_oracle
@pytest.mark.parametrize(
    "values",
    [
        [1, 3, 3, 2],
        [0, 0, 0, 0],
        [-0.0, 0.0, 0.0],
        [1, np.nan, 5],
        [np.nan, 1, np.nan],
        [-np.inf, -np.inf, -np.inf],
        [np.inf, np.nan],
    ],
)
def test_pool_window_semantics(values):
    x = np.array(values, np.float32).reshape(1, 1, 1, -1)
    check_pool(x, kernel_size=(1, x.shape[-1]))


@gpu_oracle
def test_pool_windows_in_padding():
    # all -inf windows, and a window wholly in the padding (index H*W, which
    # the backward pass must refuse: the oracle checks the ValueError).
    check_pool(np.full((1, 1, 3, 3), -np.inf, np.float32), kernel_size=2, stride=1, padding=1)
    check_pool(
        np.full((1, 1, 3, 3), -np.inf, np.float32),
        kernel_size=3,
        stride=2,
        padding=1,
        ceil_mode=True,
    )
    check_pool(
        rand((2, 1, 1, 1), 1), kernel_size=(2, 1), padding=(1, 0), dilation=(2, 1), ceil_mode=True
    )


@gpu
@pytest.mark.parametrize(
    "shape,out",
    [((2, 3, 6, 7), (2, 3, 4, 4)), ((1, 2, 3, 3), (1, 2, 9, 11)), ((0, 2, 3, 3), (0, 2, 2, 2))],
)
def test_pool_backward_arbitrary_indices_equal_cpu(shape, out):
    # Indices need not come from a forward pass: duplicates accumulate, in the CPU's order.
    idx = np.random.default_rng(0).integers(0, shape[-1] * shape[-2], size=out).astype(np.int64)
    go = rand(out, 1)
    gi = convcore.max_pool2d_backward(cc.to_device(go), cc.to_device(idx), shape)
    cpu = convcore.max_pool2d_backward(go, idx, shape)
    assert_bitwise("max_pool2d.grad_input(GPU vs CPU)", gi.numpy(), cpu, str(shape), "the CPU path")


@gpu_oracle
def test_pool_backward_many_hits_on_one_element():
    # 3x3 stride-1 windows over a plane with one large value: up to 9 outputs
    # (and more with ties) route to one element, summed in the CPU's order.
    x = rand((2, 3, 17, 40), 11, "relu")
    x[:, :, 8, 20] = 100.0
    check_pool(x, kernel_size=3, stride=1, padding=1)
    check_pool(np.zeros((1, 2, 9, 70), np.float32), kernel_size=5, stride=1, padding=2)


@gpu_oracle
@pytest.mark.parametrize("pad", PADS)
@pytest.mark.parametrize("mode", PAD_MODES)
def test_pad_modes(mode, pad):
    check_pad(rand((2, 3, 5, 6), 1), pad, mode)


@gpu_oracle
@pytest.mark.parametrize(
    "shape,pad,mode",
    [
        ((7,), (2, 3), "constant"),
        ((7,), (2, 3), "reflect"),
        ((4, 5), (1, 2, 3, 0), "replicate"),
        ((2, 2, 3, 4, 5), (1, 2, 2, 1), "circular"),
        ((1, 1, 1, 17), (-16, 3, 0, 0), "circular"),
        ((2, 3, 4, 5), (-2, -1, 3, -1), "circular"),  # crop, then wrap the cropped range
        ((1, 1, 1, 1), (5, 4, 3, 6), "replicate"),  # one element feeds every output
        ((3, 2, 6, 7), (5, 5, 5, 5), "reflect"),
        ((2, 1, 3, 3), (3, 3, 3, 3), "circular"),  # wrap exactly once
        ((2, 3, 0, 4), (1, 1, 0, 0), "constant"),
    ],
)
def test_pad_shapes(shape, pad, mode):
    check_pad(rand(shape, 2), pad, mode)


@gpu_oracle
@pytest.mark.parametrize("value", [1.5, -np.inf, np.nan, -0.0])
def test_pad_constant_value(value):
    check_pad(rand((2, 3, 4, 5), 3), (1, 2, 2, 1), "constant", value)


# ---------------------------------------------------------------------------
# Determinism, device residency, errors
# ---------------------------------------------------------------------------


def _bits(a):
    return a.numpy().view(np.uint32 if a.dtype == np.float32 else np.uint64)


@gpu
def test_repeatable_bitwise():
    x, w, b, kw = conv_case("n100_c32_h28_w28_k32_r3_s1_p1", n=20)
    dx, dw, db = cc.to_device(x), cc.to_device(w), cc.to_device(b)
    y = convcore.conv2d(dx, dw, db, **kw)
    go = cc.to_device(rand(y.shape, 1))
    first = [_bits(g) for g in convcore.conv2d_backward(go, dx, dw, **kw)]
    for _ in range(3):
        again = [_bits(g) for g in convcore.conv2d_backward(go, dx, dw, **kw)]
        for a, b_ in zip(first, again):
            np.testing.assert_array_equal(a, b_)
    xp = cc.to_device(rand((4, 8, 30, 30), 2, "relu"))
    out, idx = convcore.max_pool2d(xp, 3, stride=1, return_indices=True)
    gp = cc.to_device(rand(out.shape, 3))
    ref = _bits(convcore.max_pool2d_backward(gp, idx, xp.shape))
    np.testing.assert_array_equal(ref, _bits(convcore.max_pool2d_backward(gp, idx, xp.shape)))


@gpu
def test_activations_stay_on_the_device():
    x = cc.to_device(rand((2, 1, 28, 28)))
    w1, w2 = cc.to_device(rand((6, 1, 5, 5))), cc.to_device(rand((12, 6, 5, 5)))
    h = convcore.conv2d(x, w1)
    h, idx = convcore.max_pool2d(h, 2, return_indices=True)
    h = convcore.conv2d(convcore.pad(h, (1, 1, 1, 1), mode="replicate"), w2)
    for a in (h, idx):
        assert isinstance(a, cc.DeviceArray)
    assert h.shape == (2, 12, 10, 10) and idx.dtype == np.int64
    for op in ("conv2d_fwd", "maxpool2d_fwd", "pad2d_fwd"):
        assert convcore.last_kernel(op).endswith("__cuda"), convcore.last_kernel(op)


def _same_error(call_cpu, call_gpu):
    with pytest.raises((TypeError, ValueError)) as cpu:
        call_cpu()
    with pytest.raises(cpu.type) as dev:
        call_gpu()
    assert str(dev.value) == str(cpu.value)


_X = rand((2, 4, 8, 8))
_W = rand((6, 4, 3, 3))
ERRORS = {
    "conv_channels": lambda m: convcore.conv2d(m(_X), m(rand((6, 3, 3, 3)))),
    "conv_groups": lambda m: convcore.conv2d(m(_X), m(rand((6, 2, 3, 3))), groups=3),
    "conv_stride0": lambda m: convcore.conv2d(m(_X), m(_W), stride=0),
    "conv_negative_padding": lambda m: convcore.conv2d(m(_X), m(_W), padding=-1),
    "conv_kernel_too_large": lambda m: convcore.conv2d(m(_X), m(rand((6, 4, 9, 3)))),
    "conv_same_strided": lambda m: convcore.conv2d(m(_X), m(_W), stride=2, padding="same"),
    "conv_bias_shape": lambda m: convcore.conv2d(m(_X), m(_W), m(rand((5,)))),
    "conv_bias_2d": lambda m: convcore.conv2d(m(_X), m(_W), m(rand((6, 1)))),
    "conv_input_2d": lambda m: convcore.conv2d(m(rand((8, 8))), m(_W)),
    "conv_int_input": lambda m: convcore.conv2d(m(np.zeros((2, 4, 8, 8), np.int64)), m(_W)),
    "conv_bwd_grad_shape": lambda m: convcore.conv2d_backward(m(rand((2, 6, 5, 6))), m(_X), m(_W)),
    "pool_padding": lambda m: convcore.max_pool2d(m(_X), 2, padding=2),
    "pool_too_small": lambda m: convcore.max_pool2d(m(_X), 9),
    "pool_dilation0": lambda m: convcore.max_pool2d(m(_X), 2, dilation=0),
    "pool_bwd_bad_index": lambda m: convcore.max_pool2d_backward(
        m(rand((1, 1, 2, 2))),
        m(np.array([0, 1, 16, 2], np.int64).reshape(1, 1, 2, 2)),
        (1, 1, 4, 4),
    ),
    "pool_bwd_negative_index": lambda m: convcore.max_pool2d_backward(
        m(rand((1, 2, 1, 2))),
        m(np.array([0, 1, 3, -1], np.int64).reshape(1, 2, 1, 2)),
        (1, 2, 2, 2),
    ),
    "pool_bwd_shape": lambda m: convcore.max_pool2d_backward(
        m(rand((1, 2, 2, 2))), m(np.zeros((1, 2, 2, 3), np.int64)), (1, 2, 4, 4)
    ),
    "pool_bwd_float_indices": lambda m: convcore.max_pool2d_backward(
        m(rand((1, 2, 2, 2))), m(rand((1, 2, 2, 2))), (1, 2, 4, 4)
    ),
    "pad_reflect_too_large": lambda m: convcore.pad(m(_X), (8, 0, 0, 0), mode="reflect"),
    "pad_circular_too_large": lambda m: convcore.pad(m(_X), (0, 0, 9, 0), mode="circular"),
    "pad_unknown_mode": lambda m: convcore.pad(m(_X), (1, 1), mode="wrap"),
    "pad_negative_output": lambda m: convcore.pad(m(_X), (-5, -5, 0, 0)),
    "pad_value_non_constant": lambda m: convcore.pad(m(_X), (1, 1), mode="reflect", value=1.0),
    "pad_bwd_shape": lambda m: convcore.pad_backward(m(rand((2, 4, 9, 9))), _X.shape, (1, 1, 1, 1)),
}


@gpu
@pytest.mark.parametrize("name", ERRORS)
def test_same_errors_as_cpu(name):
    _same_error(lambda: ERRORS[name](lambda a: a), lambda: ERRORS[name](cc.to_device))


@gpu
def test_mixing_host_and_device_arrays_is_refused():
    with pytest.raises(TypeError, match="to_device"):
        convcore.conv2d(cc.to_device(_X), _W)
    with pytest.raises(TypeError, match="to_device"):
        convcore.conv2d(_X, cc.to_device(_W))
    with pytest.raises(TypeError, match="to_device"):
        convcore.conv2d(cc.to_device(_X), cc.to_device(_W), rand((6,)))
    y, idx = convcore.max_pool2d(cc.to_device(_X), 2, return_indices=True)
    with pytest.raises(TypeError, match="to_device"):
        convcore.max_pool2d_backward(y, idx.numpy(), _X.shape)


# ---------------------------------------------------------------------------
# DeviceArray and DLPack
# ---------------------------------------------------------------------------


@gpu
@pytest.mark.parametrize(
    "a",
    [
        rand((2, 3, 4, 5)),
        np.arange(-5, 7, dtype=np.int64).reshape(3, 4),
        np.zeros((0, 3), np.float32),
        np.float32(2.5) * np.ones((), np.float32),
        rand((6, 8))[::2, 1::3],  # strided: made contiguous on the host
    ],
    ids=["float32", "int64", "empty", "0d", "strided"],
)
def test_round_trip(a):
    d = cc.to_device(a)
    assert d.shape == a.shape and d.dtype == a.dtype and d.ndim == a.ndim
    assert d.size == a.size and d.nbytes == a.nbytes and d.device == 0
    assert "DeviceArray(shape=" in repr(d)
    back = d.numpy()
    assert back.flags.c_contiguous
    np.testing.assert_array_equal(back, a)
    c = d.copy()
    np.testing.assert_array_equal(c.numpy(), a)


@gpu
def test_device_array_api():
    a = rand((2, 3, 4))
    d = cc.to_device(a)
    np.testing.assert_array_equal(d.reshape((6, -1)).numpy(), a.reshape(6, 4))
    with pytest.raises(ValueError, match="reshape"):
        d.reshape((5, 5))
    with pytest.raises(TypeError, match="numpy"):
        np.asarray(d)
    with pytest.raises(TypeError, match="float32 or int64"):
        cc.to_device(a.astype(np.float64))
    with pytest.raises(TypeError):
        cc.DeviceArray()
    with pytest.raises(ValueError, match="device"):
        cc.to_device(a, device=cc.device_count())
    z = cc.zeros((3, 2), np.int64)
    assert z.dtype == np.int64
    np.testing.assert_array_equal(z.numpy(), np.zeros((3, 2), np.int64))
    assert cc.empty(4).shape == (4,)
    assert len(d) == 2


@gpu
def test_out_of_memory_is_a_cuda_error():
    with pytest.raises(cc.CudaError, match="out of memory"):
        cc.empty((1 << 48,))  # 1 PiB
    # The device is still usable afterwards.
    np.testing.assert_array_equal(cc.to_device(_X).numpy(), _X)


class _Exporter:
    """Re-exports a DeviceArray through the protocol only (as another library would)."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, **kwargs):
        return self.a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


@gpu
def test_dlpack_self_round_trip_shares_memory():
    host = rand((2, 3, 4))
    a = cc.to_device(host)
    assert a.__dlpack_device__() == (2, 0)
    assert cc.from_dlpack(a).data_ptr == a.data_ptr
    b = cc.from_dlpack(_Exporter(a))  # through a capsule, as another library would
    assert b.data_ptr == a.data_ptr and b.shape == a.shape and b.dtype == a.dtype
    del a  # the capsule's context keeps the memory alive
    np.testing.assert_array_equal(b.numpy(), host)
    with pytest.raises(TypeError, match="CUDA device memory"):
        cc.from_dlpack(np.zeros(3, np.float32))
    capsule = cc.to_device(rand((3,))).__dlpack__(stream=None)
    del capsule  # an unconsumed capsule frees its memory


@gpu
def test_dlpack_with_torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip(f"this PyTorch ({torch.__version__}) has no CUDA: DLPack with torch untested")
    a = rand((2, 3, 5, 5))
    t = torch.from_dlpack(cc.to_device(a))
    assert t.is_cuda and t.dtype == torch.float32
    np.testing.assert_array_equal(t.cpu().numpy(), a)
    t2 = (t * 2).contiguous()
    d = cc.from_dlpack(t2)
    np.testing.assert_array_equal(d.numpy(), a * 2)
    y = convcore.conv2d(d, cc.to_device(rand((4, 3, 3, 3))))
    assert torch.from_dlpack(y).shape == (2, 4, 3, 3)
    with pytest.raises(ValueError, match="C-contiguous"):
        cc.from_dlpack(t.transpose(2, 3))
    with pytest.raises(TypeError, match="float32 or int64"):
        cc.from_dlpack(t.double())
