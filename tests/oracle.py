"""The one comparison helper: run an op and all its gradients in convcore and
in PyTorch, and assert the largest error against a principled bound.

``check(op, ...)`` with op one of ``'conv2d'``, ``'max_pool2d'``, ``'pad'``,
``'batch_norm'``
runs the forward pass and every gradient in convcore (float32) and builds
the reference with PyTorch in float64 from the *same* float32 inputs, so
the reference error is negligible and what is measured is convcore's
algorithm plus its float32 rounding.

Error bounds (u = 2**-24, the unit roundoff of float32):

* conv2d (forward, grad_input, grad_weight): every output is a dot product
  of n terms.  The scale of its rounding error is the same dot product of
  absolute values, computed in float64 by PyTorch on |x|, |w|, |grad_output|.
  Any summation order (blocked GEMM, split batch, FMA) has error
  ``<= gamma(n) * scale``; the probabilistic form of that bound (Higham &
  Mary, SIAM J. Sci. Comput. 2019) is ``lambda * sqrt(n) * u * scale``,
  which holds with probability ``>= 1 - 2n exp(-lambda**2 / 2)`` per output.
  lambda = 10 makes a false alarm ~1e-17 per output, while a wrong kernel
  (an off-by-one tap, padding on the wrong side, a dropped term) gives an
  error of order ``scale / n`` or ``scale / sqrt(n)``, far above the bound
  for every reduction length the tests use: ``test_oracle_catches_*`` checks
  that.  grad_bias is checked the same way over its N*P*Q terms.
* max_pool2d and pad forward: bitwise equal to PyTorch in float32 (they only
  move values), pooling indices identical.
* max_pool2d and pad backward: each input gradient is a sum of the ``c``
  grad_output elements that were routed to it; any summation order is
  within ``(c - 1) * u * sum|terms|`` (the deterministic worst case), so an
  element with ``c <= 1`` must be exact.

* batch_norm: the statistics are sums over the M = N*H*W values of a
  channel, but formed in double (float32 only within short blocks, see
  BN_TERMS), so the bound does not grow with M; every output is within
  ``LAMBDA * sqrt(BN_TERMS + 1) * u`` times a scale that carries the size
  of xhat's own rounding, ``(|x| + |mean|) * invstd`` (see
  ``_check_batch_norm``).

Every check records its largest errors in ``STATS`` (per op and output), and
how many checks ran and how many of them hypothesis generated; conftest
prints the summary at the end of the session.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import warnings
from dataclasses import dataclass

import convcore
import numpy as np
import pytest

try:  # conftest decides whether a missing torch is a skip or a failure
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = None
    F = None

try:
    from hypothesis import currently_in_test_context
except ImportError:  # pragma: no cover

    def currently_in_test_context() -> bool:
        return False


U32 = 2.0**-24  # unit roundoff of float32
LAMBDA = 10.0  # confidence factor of the probabilistic dot-product bound
TINY = 1e-30  # absolute floor: zero-scale outputs must be (almost) exactly zero

ISAS = ("scalar", "portable", "avx2", "avx512")
# Kernels a cap may run, best first: an op without a kernel of the capped
# level for a shape runs the best lower level that applies.
_ISA_SUFFIX = {
    "scalar": ("__ref",),
    "portable": ("__portable",),
    "avx2": ("__avx2",),
    "avx512": ("__avx512", "__avx2"),
}


# ---------------------------------------------------------------------------
# Statistics (printed by conftest at session end)
# ---------------------------------------------------------------------------


@dataclass
class Stat:
    checks: int = 0
    generated: int = 0  # checks run inside a hypothesis test
    max_abs: float = 0.0  # largest |convcore - float64 reference|
    max_rel_scale: float = 0.0  # largest |error| / scale, in units of u
    max_bound_ratio: float = 0.0  # largest |error| / bound (must stay < 1)
    worst_case: str = ""


STATS: dict[str, Stat] = {}
GENERATED_BY_TEST: dict[str, int] = {}


_RECORDING = [True]  # off while the tests feed the oracle deliberately wrong kernels


def _record(key: str, err, bound, scale, case: str) -> None:
    if not _RECORDING[0]:
        return
    s = STATS.setdefault(key, Stat())
    s.checks += 1
    if currently_in_test_context():
        s.generated += 1
    if err.size == 0:
        return
    a = float(err.max())
    ratio = float((err / bound).max())
    rel = float((err / np.maximum(scale, TINY)).max()) / U32
    if a > s.max_abs:
        s.max_abs = a
    if rel > s.max_rel_scale:
        s.max_rel_scale = rel
    if ratio > s.max_bound_ratio:
        s.max_bound_ratio = ratio
        s.worst_case = case


def counted(fn):
    """Count the hypothesis examples a test runs (put it under @given)."""

    name = f"{fn.__module__}.py::{fn.__name__}"

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        GENERATED_BY_TEST[name] = GENERATED_BY_TEST.get(name, 0) + 1
        return fn(*args, **kwargs)

    return wrapper


# Multiplies every hypothesis test's budget (0.1 under the sanitizers).
EXAMPLE_SCALE = float(os.environ.get("CONVCORE_HYPOTHESIS_SCALE", "1"))


def examples(n: int) -> int:
    """max_examples for a hypothesis test, scaled by CONVCORE_HYPOTHESIS_SCALE."""
    return max(1, round(n * EXAMPLE_SCALE))


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


def rand(shape, seed: int = 0, kind: str = "normal") -> np.ndarray:
    """Deterministic float32 test data.

    kind: 'normal' (N(0, 1)), 'relu' (half zeros, like activations after
    ReLU: many ties), 'ties' (small integers, many ties), 'special' (ties
    plus NaN, +-inf and -0.0).
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    if kind == "normal":
        return rng.standard_normal(shape, dtype=np.float32)
    if kind == "relu":
        return np.maximum(rng.standard_normal(shape, dtype=np.float32), np.float32(0))
    if kind == "ties":
        return rng.integers(-2, 3, size=shape).astype(np.float32)
    if kind == "special":
        pool = np.array([0.0, -0.0, 1.0, -1.0, 2.0, np.nan, np.inf, -np.inf], dtype=np.float32)
        p = np.array([0.25, 0.1, 0.2, 0.1, 0.15, 0.07, 0.05, 0.08])
        return rng.choice(pool, size=shape, p=p).astype(np.float32)
    raise ValueError(kind)


def _t(a: np.ndarray, dtype=None):
    t = torch.from_numpy(np.array(a, copy=True))
    return t if dtype is None else t.to(dtype)


# ---------------------------------------------------------------------------
# ISA cap and kernel names
# ---------------------------------------------------------------------------


def available_isas() -> list[str]:
    detected = convcore.build_info()["isa_detected"]
    return [i for i in ISAS if ISAS.index(i) <= ISAS.index(detected)]


@contextlib.contextmanager
def isa_cap(isa: str | None):
    """Run with the ISA capped at ``isa`` (None: leave as is); restore after."""
    if isa is None:
        yield
        return
    saved = convcore._core.active_isa()
    convcore.set_max_isa(isa)
    try:
        yield
    finally:
        convcore.set_max_isa(saved)


@contextlib.contextmanager
def disabled(*names: str):
    """Run with these implementations passed over by the kernel selection
    (``convcore.set_disabled_implementations``); restore after."""
    saved = convcore.disabled_implementations()
    convcore.set_disabled_implementations(sorted(set(saved) | set(names)))
    try:
        yield
    finally:
        convcore.set_disabled_implementations(saved)


def _expect_kernel(op: str, isa: str, suffix) -> None:
    got = convcore.last_kernel(op)
    assert got.endswith(suffix), (
        f"under max ISA {isa!r}, {op} ran {got!r}; expected a {suffix} kernel"
    )


# ---------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------


def _assert_meta(got, shape, name: str, dtype=np.float32) -> None:
    assert isinstance(got, np.ndarray), f"{name}: expected an ndarray, got {type(got).__name__}"
    assert got.dtype == dtype, f"{name}: dtype {got.dtype}, expected {np.dtype(dtype)}"
    assert got.shape == tuple(shape), f"{name}: shape {got.shape}, expected {tuple(shape)}"
    assert got.flags.c_contiguous, f"{name}: not C-contiguous"


def _assert_close(key, got, ref64, scale64, n_terms, case) -> None:
    """|got - ref| <= LAMBDA*sqrt(n)*u*scale elementwise (dot products)."""
    ref = ref64.detach().numpy() if hasattr(ref64, "detach") else ref64
    scale = scale64.detach().numpy() if hasattr(scale64, "detach") else scale64
    _assert_meta(got, ref.shape, key)
    err = np.abs(got.astype(np.float64) - ref)
    bound = LAMBDA * math.sqrt(max(n_terms, 1) + 1) * U32 * scale + TINY
    _record(key, err, bound, scale, case)
    bad = ~(err <= bound)  # NaN counts as bad
    if bad.any():
        i = np.unravel_index(
            int(np.argmax(np.where(bad, np.nan_to_num(err / bound, nan=np.inf), -1))), err.shape
        )
        raise AssertionError(
            f"{key} [{case}]: {int(bad.sum())} of {err.size} elements exceed the bound; "
            f"worst at {i}: got {got[i]!r}, float64 reference {ref[i]!r}, "
            f"error {err[i]:.3e} > bound {bound[i]:.3e} (scale {scale[i]:.3e}, {n_terms} terms)"
        )


def _assert_sum_close(key, got, ref, count, scale, case) -> None:
    """Routing ops' backward: within (count - 1) * u * sum|terms|; exact when count <= 1."""
    _assert_meta(got, ref.shape, key)
    err = np.abs(got.astype(np.float64) - ref)
    bound = np.maximum(count - 1, 0) * U32 * 1.0001 * scale
    _record(key, err, np.maximum(bound, TINY), scale, case)
    bad = ~(err <= bound)
    if bad.any():
        i = np.unravel_index(int(np.argmax(bad)), err.shape)
        raise AssertionError(
            f"{key} [{case}]: {int(bad.sum())} of {err.size} elements differ from the float64 "
            f"reference; first at {i}: got {got[i]!r}, expected {ref[i]!r} ({int(count[i])} terms)"
        )


def assert_bitwise(key, got, ref, case, what="PyTorch") -> None:
    """Bitwise equal float32 arrays (NaN matches NaN whatever its payload)."""
    _assert_meta(got, ref.shape, key, ref.dtype)
    if ref.dtype == np.float32:
        gb, rb = got.view(np.uint32), ref.view(np.uint32)
        same = (gb == rb) | (np.isnan(got) & np.isnan(ref))
    else:
        same = got == ref
    if "(" not in key:  # comparisons between paths are not errors against PyTorch
        _record(key, np.where(same, 0.0, 1.0), np.ones(same.shape), np.ones(same.shape), case)
    if not same.all():
        i = np.unravel_index(int(np.argmin(same)), same.shape)
        raise AssertionError(
            f"{key} [{case}]: {int((~same).sum())} of {same.size} elements differ from {what}; "
            f"first at {i}: got {got[i]!r}, expected {ref[i]!r}"
        )


def _fmt_case(op, shapes, kwargs) -> str:
    kw = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"{op}({', '.join(str(tuple(s)) for s in shapes)}, {kw})"


# ---------------------------------------------------------------------------
# conv2d
# ---------------------------------------------------------------------------


def _conv_in_convcore(impl, x, w, b, go, kwargs, output_mask):
    y = impl.conv2d(x, w, b, **kwargs)
    grads = impl.conv2d_backward(go, x, w, output_mask=output_mask, **kwargs)
    return y, grads


def _check_conv2d(
    x,
    w,
    bias=None,
    *,
    isa=None,
    impl=convcore,
    output_mask=(True, True, True),
    grad_output=None,
    seed=0,
    **kwargs,
):
    case = _fmt_case(
        "conv2d",
        [x.shape, w.shape] + ([bias.shape] if bias is not None else []),
        dict(kwargs, output_mask=output_mask),
    )
    torch_kwargs = dict(kwargs)
    for k in ("stride", "dilation", "padding"):
        if isinstance(torch_kwargs.get(k), list):
            torch_kwargs[k] = tuple(torch_kwargs[k])

    # float64 reference and the |.| problem that scales its rounding error.
    x64, w64 = _t(x, torch.float64).requires_grad_(), _t(w, torch.float64).requires_grad_()
    b64 = _t(bias, torch.float64).requires_grad_() if bias is not None else None
    y64 = F.conv2d(x64, w64, b64, **torch_kwargs)
    if grad_output is None:
        grad_output = rand(tuple(y64.shape), seed + 7919)
    go64 = _t(grad_output, torch.float64)
    y64.backward(go64)
    xa, wa = x64.detach().abs().requires_grad_(), w64.detach().abs().requires_grad_()
    ba = b64.detach().abs() if b64 is not None else None
    ya = F.conv2d(xa, wa, ba, **torch_kwargs)
    ya.backward(go64.abs())

    batched = x.ndim == 4
    N = x.shape[0] if batched else 1
    K, Cg, R, S = w.shape
    groups = kwargs.get("groups", 1)
    Kg = K // groups
    P, Q = y64.shape[-2:]
    n_fwd = Cg * R * S + (bias is not None)
    n_gi = Kg * R * S
    n_gw = N * P * Q

    with isa_cap(isa):
        y, (gi, gw, gb) = _conv_in_convcore(impl, x, w, bias, grad_output, kwargs, output_mask)
        if isa is not None and impl is convcore and N > 0:
            _expect_kernel("conv2d_fwd", isa, _ISA_SUFFIX[isa])
            if output_mask[0]:
                _expect_kernel("conv2d_bwd_data", isa, _ISA_SUFFIX[isa])
            if output_mask[1]:
                _expect_kernel("conv2d_bwd_weight", isa, _ISA_SUFFIX[isa])

    _assert_close("conv2d.output", y, y64, ya, n_fwd, case)
    outs = {"grad_input": gi, "grad_weight": gw, "grad_bias": gb}
    for want, (name, got) in zip(output_mask, outs.items()):
        if not want:
            assert got is None, (
                f"conv2d_backward: {name} is not None although output_mask={output_mask}"
            )
    if output_mask[0]:
        _assert_close("conv2d.grad_input", gi, x64.grad, xa.grad, n_gi, case)
    if output_mask[1]:
        _assert_close("conv2d.grad_weight", gw, w64.grad, wa.grad, n_gw, case)
    dims = (0, 2, 3) if batched else (1, 2)
    gb_scale = go64.abs().sum(dim=dims)
    if output_mask[2]:
        gb_ref = go64.sum(dim=dims)
        _assert_close("conv2d.grad_bias", gb, gb_ref, gb_scale, n_gw, case)

    if isa is not None and isa != "scalar" and impl is convcore:
        # Every path also against the scalar reference: both within the bound
        # of the float64 result, so within twice that of each other.
        with isa_cap("scalar"):
            ys, gs = _conv_in_convcore(impl, x, w, bias, grad_output, kwargs, output_mask)
        pairs = [("output", y, ys, ya, n_fwd)]
        if output_mask[0]:
            pairs.append(("grad_input", gi, gs[0], xa.grad, n_gi))
        if output_mask[1]:
            pairs.append(("grad_weight", gw, gs[1], wa.grad, n_gw))
        if output_mask[2]:
            pairs.append(("grad_bias", gb, gs[2], gb_scale, n_gw))
        for name, a, s, scale, n in pairs:
            scale = scale.detach().numpy() if hasattr(scale, "detach") else scale
            err = np.abs(a.astype(np.float64) - s)
            bound = 2 * (LAMBDA * math.sqrt(n + 1) * U32 * scale + TINY)
            assert (err <= bound).all(), (
                f"conv2d.{name} [{case}]: the {isa} path and the scalar path differ by "
                f"{float(err.max()):.3e} (> bound)"
            )
    return y, (gi, gw, gb)


# ---------------------------------------------------------------------------
# max_pool2d
# ---------------------------------------------------------------------------


def _pool_kwargs_torch(kwargs):
    out = {}
    for k, v in kwargs.items():
        out[k] = tuple(v) if isinstance(v, list) else v
    return out


def _check_max_pool2d(x, *, isa=None, impl=convcore, grad_output=None, seed=0, **kwargs):
    case = _fmt_case("max_pool2d", [x.shape], kwargs)
    tk = _pool_kwargs_torch(kwargs)
    y_ref, idx_ref = F.max_pool2d(_t(x), return_indices=True, **tk)
    y_ref, idx_ref = y_ref.numpy(), idx_ref.numpy()
    if grad_output is None:
        grad_output = rand(y_ref.shape, seed + 104729)

    HW = x.shape[-2] * x.shape[-1]
    # A window that lies wholly in the padding (possible with dilation and
    # ceil_mode) gets -inf and PyTorch's index of its first in-bounds start,
    # which can be H*W or more: PyTorch's backward then writes into the next
    # plane.  convcore returns the same index; its backward must refuse it.
    stray = bool(((idx_ref < 0) | (idx_ref >= HW)).any())

    def run():
        y, idx = impl.max_pool2d(x, return_indices=True, **kwargs)
        y_only = impl.max_pool2d(x, **kwargs)
        if stray:
            with pytest.raises(ValueError, match="indices"):
                impl.max_pool2d_backward(grad_output, idx, x.shape)
            return y, idx, y_only, None
        gi = impl.max_pool2d_backward(grad_output, idx, x.shape)
        return y, idx, y_only, gi

    with isa_cap(isa):
        y, idx, y_only, gi = run()
        if isa is not None and impl is convcore and y.size:
            k = kwargs.get("kernel_size")
            s = kwargs.get("stride", None)
            # The 2x2/2 kernels (ops/maxpool2d.cpp): AVX-512 forward and
            # backward; AVX2 forward only.  Everything else runs the reference.
            fast = (
                isa in ("avx2", "avx512")
                and k in (2, (2, 2), [2, 2])
                and s in (None, 2, (2, 2), [2, 2])
                and kwargs.get("padding", 0) in (0, (0, 0), [0, 0])
                and kwargs.get("dilation", 1) in (1, (1, 1), [1, 1])
                and y.shape[-2] == x.shape[-2] // 2
                and y.shape[-1] == x.shape[-1] // 2
            )
            fast_isa = "__avx512" if isa == "avx512" else "__avx2"
            _expect_kernel("maxpool2d_fwd", isa, fast_isa if fast else "__ref")
            # The backward sees only shapes: its kernel takes every plane
            # halved in both dimensions (indices outside their own 2x2 window
            # fall back to the scatter inside it).
            halves = y.shape[-2:] == (x.shape[-2] // 2, x.shape[-1] // 2)
            if gi is not None:
                _expect_kernel(
                    "maxpool2d_bwd", isa, "__avx512" if halves and isa == "avx512" else "__ref"
                )

    assert_bitwise("max_pool2d.output", y, y_ref, case)
    assert_bitwise("max_pool2d.indices", idx, idx_ref, case)
    assert_bitwise("max_pool2d.output(no indices)", y_only, y_ref, case)

    # Backward: float64 scatter-add of grad_output at PyTorch's indices.
    planes = int(np.prod(x.shape[:-2]))
    idx_t = torch.from_numpy(idx_ref.reshape(planes, int(np.prod(idx_ref.shape[-2:]))))
    go64 = _t(grad_output, torch.float64).reshape(planes, int(np.prod(grad_output.shape[-2:])))

    def scatter(v):
        return (
            torch.zeros(planes, HW, dtype=torch.float64)
            .scatter_add_(1, idx_t, v)
            .reshape(x.shape)
            .numpy()
        )

    if gi is not None:
        ref, count, scale = scatter(go64), scatter(torch.ones_like(go64)), scatter(go64.abs())
        _assert_sum_close("max_pool2d.grad_input", gi, ref, count, scale, case)

    if isa is not None and isa != "scalar" and impl is convcore:
        with isa_cap("scalar"):
            ys, idxs, _, gis = run()
        assert_bitwise("max_pool2d.output(vs scalar)", y, ys, case, "the scalar path")
        assert_bitwise("max_pool2d.indices(vs scalar)", idx, idxs, case, "the scalar path")
        if gi is not None:
            assert_bitwise("max_pool2d.grad_input(vs scalar)", gi, gis, case, "the scalar path")
    return y, idx, gi


def check_max_pool2d_backward_indices(grad_output, indices, input_shape):
    """max_pool2d_backward for arbitrary in-range indices (not necessarily
    from a forward pass) against a float64 scatter-add."""
    case = _fmt_case("max_pool2d_backward", [grad_output.shape, input_shape], {})
    gi = convcore.max_pool2d_backward(grad_output, indices, input_shape)
    planes = int(np.prod(input_shape[:-2]))
    HW = input_shape[-2] * input_shape[-1]
    idx_t = torch.from_numpy(np.array(indices).reshape(planes, int(np.prod(indices.shape[-2:]))))
    go64 = _t(grad_output, torch.float64).reshape(planes, int(np.prod(grad_output.shape[-2:])))

    def scatter(v):
        return (
            torch.zeros(planes, HW, dtype=torch.float64)
            .scatter_add_(1, idx_t, v)
            .reshape(input_shape)
            .numpy()
        )

    _assert_sum_close(
        "max_pool2d.grad_input",
        gi,
        scatter(go64),
        scatter(torch.ones_like(go64)),
        scatter(go64.abs()),
        case,
    )
    return gi


# ---------------------------------------------------------------------------
# pad
# ---------------------------------------------------------------------------


def torch_pad(t, pad, mode="constant", value=0.0):
    """F.pad on the last two dims for any ndim >= 1 (flattening leading dims
    where PyTorch's non-constant modes want 2-D..4-D input)."""
    pad = tuple(pad)
    if mode == "constant":
        return F.pad(t, pad, mode="constant", value=value)
    if len(pad) == 2:
        lead, H, W = t.shape[:-1], 1, t.shape[-1]
        flat = t.reshape(-1, 1, W)  # (planes, 1, W): batched 1-D
        out = F.pad(flat, pad, mode=mode)
        return out.reshape(*lead, out.shape[-1])
    lead, H, W = t.shape[:-2], t.shape[-2], t.shape[-1]
    flat = t.reshape(-1, H, W)  # (planes, H, W): unbatched 2-D
    out = F.pad(flat, pad, mode=mode)
    return out.reshape(*lead, *out.shape[-2:])


def _check_pad(
    x, pad, mode="constant", value=None, *, isa=None, impl=convcore, grad_output=None, seed=0
):
    kw = {"mode": mode} if value is None else {"mode": mode, "value": value}
    case = _fmt_case("pad", [x.shape], dict(pad=tuple(pad), **kw))
    ref = torch_pad(_t(x), pad, mode, 0.0 if value is None else value).numpy()
    if grad_output is None:
        grad_output = rand(ref.shape, seed + 15485863)

    def run():
        return impl.pad(x, pad, **kw), impl.pad_backward(grad_output, x.shape, pad, mode=mode)

    with isa_cap(isa):
        y, gi = run()
        if isa is not None and impl is convcore and y.size and x.size:
            # Row-wise kernels from 'portable' up (no AVX2 variant: memory-bound copies).
            suffix = "__ref" if isa == "scalar" else "__portable"
            _expect_kernel("pad2d_fwd", isa, suffix)
            _expect_kernel("pad2d_bwd", isa, suffix)
    assert_bitwise("pad.output", y, ref, case)

    x64 = _t(x, torch.float64).requires_grad_()
    out = torch_pad(x64, pad, mode)
    go64 = _t(grad_output, torch.float64)

    def vjp(v):
        (g,) = torch.autograd.grad(out, x64, v, retain_graph=True, allow_unused=True)
        return np.zeros(x.shape) if g is None else g.numpy()

    if out.numel() == 0:
        ref_gi, count, scale = np.zeros(x.shape), np.zeros(x.shape), np.zeros(x.shape)
    else:
        ref_gi, count, scale = vjp(go64), vjp(torch.ones_like(go64)), vjp(go64.abs())
    _assert_sum_close("pad.grad_input", gi, ref_gi, count, scale, case)

    if isa is not None and isa != "scalar" and impl is convcore:
        with isa_cap("scalar"):
            ys, gis = run()
        assert_bitwise("pad.output(vs scalar)", y, ys, case, "the scalar path")
        assert_bitwise("pad.grad_input(vs scalar)", gi, gis, case, "the scalar path")
    return y, gi


# ---------------------------------------------------------------------------
# batch_norm
# ---------------------------------------------------------------------------

# Longest float32 partial sum any batch-norm kernel forms per lane before
# carrying it in double (the portable kernels: 16; AVX-512: 8).  The error
# of every statistic is then that of a short sum whatever M = N*H*W is, and
# the bound below does not grow with M: a float32 running sum over a channel
# (error ~ sqrt(M) u or worse) fails it on the large layers
# (test_batchnorm.py::test_oracle_catches_a_float32_running_sum).
BN_TERMS = 16
_BN_KERNEL = {
    "scalar": "__ref",
    "portable": "__portable",
    "avx2": "__avx2",
    "avx512": "__avx512",
}


def _bn_bound(scale):
    return LAMBDA * math.sqrt(BN_TERMS + 1) * U32 * scale + TINY


def _assert_bn_close(key, got, ref, scale, case) -> None:
    _assert_meta(got, ref.shape, key)
    err = np.abs(got.astype(np.float64) - ref)
    bound = _bn_bound(scale)
    _record(key, err, bound, scale, case)
    bad = ~(err <= bound)
    if bad.any():
        i = np.unravel_index(
            int(np.argmax(np.where(bad, np.nan_to_num(err / bound, nan=np.inf), -1))), err.shape
        )
        raise AssertionError(
            f"{key} [{case}]: {int(bad.sum())} of {err.size} elements exceed the bound; "
            f"worst at {i}: got {got[i]!r}, float64 reference {ref[i]!r}, "
            f"error {err[i]:.3e} > bound {bound[i]:.3e} (scale {scale[i]:.3e})"
        )


def bn_running_stats(C: int, seed: int = 0):
    """Plausible float32 running statistics (mean, positive var) of C channels."""
    rm = rand((C,), seed + 3) * np.float32(0.5)
    rv = np.abs(rand((C,), seed + 4)) + np.float32(0.5)
    return rm.astype(np.float32), rv.astype(np.float32)


def _check_batch_norm(
    x,
    weight=None,
    bias=None,
    *,
    training=True,
    relu=False,
    momentum=0.1,
    eps=1e-5,
    track=True,
    isa=None,
    impl=convcore,
    grad_output=None,
    output_mask=(True, True, True),
    seed=0,
):
    """Error model (u = 2**-24; a = (|x| + |mean|) * invstd, the size of xhat
    and of its rounding; sums over the M = N*H*W values of a channel):
    output ~ a |w| + |b|; grad_bias ~ sum |g|; grad_weight ~ sum |g| a;
    grad_input ~ |w| invstd (|g| + sum|g| / M + a sum(|g| a) / M) in training
    mode, |w| invstd |g| in eval mode; each within LAMBDA sqrt(BN_TERMS + 1)
    u times its scale.  With relu, the backward pass's mask is convcore's own
    forward output (as the layer passes it), so the reference gradient is
    the batch-norm gradient of grad_output masked by it; that mask must
    agree with PyTorch's wherever the pre-activation is outside its bound."""
    batched = x.ndim == 4
    x4 = x if batched else x[None]
    N, C, H, W = x4.shape
    M = N * H * W
    case = _fmt_case(
        "batch_norm",
        [x.shape],
        dict(
            affine=weight is not None,
            training=training,
            relu=relu,
            momentum=momentum,
            track=track,
            output_mask=output_mask,
        ),
    )
    rm0, rv0 = bn_running_stats(C, seed)
    if grad_output is None:
        grad_output = rand(x.shape, seed + 7)

    def run():
        rm, rv = (rm0.copy(), rv0.copy()) if track else (None, None)
        y, mean, invstd = impl.batch_norm(
            x, rm, rv, weight, bias, training, momentum, eps, relu=relu, return_stats=True
        )
        grads = impl.batch_norm_backward(
            grad_output,
            x,
            weight,
            mean,
            invstd,
            training,
            output=y if relu else None,
            output_mask=output_mask,
        )
        return y, mean, invstd, rm, rv, grads

    with isa_cap(isa):
        y, mean, invstd, rm, rv, (gi, gw, gb) = run()
        if isa is not None and impl is convcore:
            _expect_kernel("batchnorm2d_fwd", isa, _BN_KERNEL[isa])
            _expect_kernel("batchnorm2d_bwd", isa, _BN_KERNEL[isa])

    # float64 reference (PyTorch), from the same float32 inputs.
    x64 = _t(x4, torch.float64).requires_grad_()
    w64 = _t(weight, torch.float64).requires_grad_() if weight is not None else None
    b64 = _t(bias, torch.float64).requires_grad_() if bias is not None else None
    rm64 = _t(rm0, torch.float64) if track else None
    rv64 = _t(rv0, torch.float64) if track else None
    z64 = F.batch_norm(x64, rm64, rv64, w64, b64, training, momentum, eps)
    y64 = F.relu(z64) if relu else z64
    y_nchw = y if batched else y[None]
    go = (grad_output if batched else grad_output[None]).astype(np.float64)
    if relu:
        go = go * (y_nchw > 0)
    z64.backward(torch.from_numpy(go))

    # Scales, in float64 numpy.
    xd = x4.astype(np.float64)
    if training:
        mu = xd.mean(axis=(0, 2, 3))
        var = xd.var(axis=(0, 2, 3))
    else:
        mu, var = rm0.astype(np.float64), rv0.astype(np.float64)
    inv = 1.0 / np.sqrt(var + eps)
    ch = (None, slice(None), None, None)
    a = (np.abs(xd) + np.abs(mu)[ch]) * inv[ch]
    wa = np.abs(weight.astype(np.float64)) if weight is not None else np.ones(C)
    ba = np.abs(bias.astype(np.float64)) if bias is not None else np.zeros(C)
    scale_y = a * wa[ch] + ba[ch]
    ga = np.abs(go)
    sum_g = ga.sum(axis=(0, 2, 3))
    sum_ga = (ga * a).sum(axis=(0, 2, 3))
    if training:
        scale_gi = (wa * inv)[ch] * (ga + (sum_g / M)[ch] + a * (sum_ga / max(M, 1))[ch])
    else:
        scale_gi = (wa * inv)[ch] * ga

    def unb(v):
        return v if batched else v[0]

    _assert_bn_close("batch_norm.output", y, unb(y64.detach().numpy()), unb(scale_y), case)
    if relu:
        # The mask convcore used agrees with PyTorch's outside the rounding band.
        z = z64.detach().numpy()
        sure = np.abs(z) > _bn_bound(scale_y)
        mism = sure & ((y_nchw > 0) != (z > 0))
        assert not mism.any(), f"batch_norm.relu_mask [{case}]: {int(mism.sum())} elements differ"
    if M > 0:
        sq = ((np.abs(xd) + np.abs(mu)[ch]) ** 2).sum(axis=(0, 2, 3)) / M
        _assert_bn_close("batch_norm.save_mean", mean, mu, np.abs(xd).mean(axis=(0, 2, 3)), case)
        _assert_bn_close("batch_norm.save_invstd", invstd, inv, inv * (1 + sq / (var + eps)), case)
    if track and training and M > 0:
        m = momentum
        _assert_bn_close(
            "batch_norm.running_mean",
            rm,
            rm64.numpy(),
            (1 - m) * np.abs(rm0) + m * np.abs(xd).mean(axis=(0, 2, 3)),
            case,
        )
        _assert_bn_close(
            "batch_norm.running_var",
            rv,
            rv64.numpy(),
            (1 - m) * np.abs(rv0) + m * sq * M / max(M - 1, 1),
            case,
        )
    elif track:
        assert_bitwise("batch_norm.running_mean(unchanged)", rm, rm0, case, "the input")
        assert_bitwise("batch_norm.running_var(unchanged)", rv, rv0, case, "the input")
    for want, name, got in zip(
        output_mask, ("grad_input", "grad_weight", "grad_bias"), (gi, gw, gb)
    ):
        if not want:
            assert got is None, f"batch_norm_backward: {name} is not None ({output_mask})"
    if output_mask[0]:
        _assert_bn_close("batch_norm.grad_input", gi, unb(x64.grad.numpy()), unb(scale_gi), case)
    if output_mask[1]:
        ref = (go * (xd - mu[ch]) * inv[ch]).sum(axis=(0, 2, 3))
        _assert_bn_close("batch_norm.grad_weight", gw, ref, sum_ga, case)
    if output_mask[2]:
        _assert_bn_close("batch_norm.grad_bias", gb, go.sum(axis=(0, 2, 3)), sum_g, case)
    return y, (gi, gw, gb)


# ---------------------------------------------------------------------------
# The helper
# ---------------------------------------------------------------------------

_CHECKS = {
    "conv2d": _check_conv2d,
    "max_pool2d": _check_max_pool2d,
    "pad": _check_pad,
    "batch_norm": _check_batch_norm,
}


def check(op: str, *args, **kwargs):
    """Compare ``op`` and all its gradients with PyTorch (float64 reference).

    check('conv2d', x, w, bias=None, stride=.., padding=.., dilation=.., groups=..,
          output_mask=(True, True, True), isa=None, grad_output=None, seed=0)
    check('max_pool2d', x, kernel_size=.., stride=.., padding=.., dilation=..,
          ceil_mode=.., isa=None)
    check('pad', x, pad, mode='constant', value=None, isa=None)
    check('batch_norm', x, weight=None, bias=None, training=True, relu=False,
          momentum=0.1, eps=1e-5, track=True, output_mask=.., isa=None)

    ``isa`` caps the instruction set for the convcore run (and then also
    compares that path with the scalar reference); ``impl`` replaces the
    convcore module (used to show that the bounds catch wrong kernels).
    Returns convcore's results; raises AssertionError with the worst element.
    """
    if torch is None:  # pragma: no cover
        raise RuntimeError("the oracle needs PyTorch")
    # Deliberately wrong kernels (impl=...) and record_stats=False (inputs far
    # from unit scale, whose absolute errors would swamp the summary) are
    # checked but not recorded.
    _RECORDING[0] = kwargs.get("impl", convcore) is convcore and kwargs.pop("record_stats", True)
    try:
        with warnings.catch_warnings():
            # padding='same' with an even kernel: PyTorch warns that it copies.
            warnings.filterwarnings("ignore", message="Using padding='same'", category=UserWarning)
            return _CHECKS[op](*args, **kwargs)
    finally:
        _RECORDING[0] = True


def conv_case(name: str, n: int | None = None, seed: int = 0, bias: bool = True):
    """(x, w, b, kwargs) for a problem string from convcore.problems, with
    its batch replaced by ``n`` when given."""
    from convcore import problems

    p = problems.parse(name)
    N = p.N if n is None else n
    x = rand((N, p.C, p.H, p.W), seed)
    w = rand(p.weight_shape, seed + 1) * np.float32(
        1.0 / math.sqrt(p.weight_shape[1] * p.kernel[0] * p.kernel[1])
    )
    b = rand((p.K,), seed + 2) if bias else None
    return x, w.astype(np.float32), b, p.kwargs()


def pool_case(name: str, n: int | None = None, seed: int = 0, kind: str = "normal"):
    from convcore import problems

    p = problems.parse(name)
    N = p.N if n is None else n
    return rand((N, p.C, p.H, p.W), seed, kind), p.kwargs()
