"""The compiled optimiser steps (``_core.adam_step``, ``_core.sgd_step``)
against their numpy reference (``HostBackend.adam_step_numpy`` /
``sgd_step_numpy``, torch's single-tensor update operation by operation):
bitwise equal on every ISA path, for any thread count, at every tail
length; and their argument checks.  tests/test_optim.py compares the
optimisers with torch.optim.
"""

from __future__ import annotations

import convcore
import numpy as np
import pytest
from convcore import _core
from convcore._backend import HOST

F32 = np.float32
# Tails of every length around the 8- and 16-lane vectors, and one size
# large enough for two threads (over a megabyte of traffic).
SIZES = [1, 7, 8, 9, 15, 16, 17, 33, 1000, 100_003]


def _arrays(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n, dtype=F32)
    # Gradients of mixed scales, with exact zeros (dead units).
    g = (rng.standard_normal(n) * 10.0 ** rng.integers(-9, 2, n)).astype(F32)
    g[rng.random(n) < 0.2] = 0
    m = (rng.standard_normal(n) * 1e-2).astype(F32)
    v = (rng.random(n) * 1e-4).astype(F32)
    v[rng.random(n) < 0.1] = 0
    return p, g, m, v


def _adam_constants(t: int = 3, wd: float = 0.0, lr: float = 1e-3):
    b1, b2, eps = 0.9, 0.999, 1e-8
    return dict(
        one_minus_beta1=F32(1 - b1),
        beta2=F32(b2),
        one_minus_beta2=F32(1 - b2),
        bc2_sqrt=F32((1 - b2**t) ** 0.5),
        eps=F32(eps),
        neg_step=F32(-lr / (1 - b1**t)),
        wd=F32(wd),
    )


def _same_bits(a: np.ndarray, b: np.ndarray) -> None:
    assert a.tobytes() == b.tobytes(), np.flatnonzero(a.view(np.int32) != b.view(np.int32))[:5]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("wd", [0.0, 1e-2])
def test_adam_step_is_bitwise_the_numpy_reference(isa, n, wd):
    k = _adam_constants(t=5, wd=wd)
    ours = _arrays(n)
    ref = [a.copy() for a in ours]
    for threads in (1, 2):
        convcore.set_num_threads(threads)
        HOST.adam_step(*ours, **k)
        HOST.adam_step_numpy(*ref, **k)
        for a, b in zip(ours, ref):
            _same_bits(a, b)
    expected = {"scalar": "__ref", "portable": "__ref"}.get(isa, f"__{isa}")
    assert _core.last_kernel("adam_step").endswith(expected)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize(
    "momentum, dampening, wd, nesterov",
    [
        (0.0, 0.0, 0.0, False),
        (0.9, 0.0, 0.0, False),
        (0.9, 0.1, 1e-2, False),
        (0.9, 0.0, 0.0, True),
    ],
)
def test_sgd_step_is_bitwise_the_numpy_reference(isa, n, momentum, dampening, wd, nesterov):
    p, g, buf, _ = _arrays(n, seed=1)
    ours, ref = [p, g, buf], [p.copy(), g.copy(), buf.copy()]
    for first in (True, False, False):
        k = dict(
            momentum=F32(momentum),
            one_minus_dampening=F32(1 - dampening),
            wd=F32(wd),
            neg_lr=F32(-0.05),
            nesterov=nesterov,
            first=first,
        )
        a_buf = ours[2] if momentum else None
        b_buf = ref[2] if momentum else None
        HOST.sgd_step(ours[0], ours[1], a_buf, **k)
        HOST.sgd_step_numpy(ref[0], ref[1], b_buf, **k)
        for a, b in zip(ours, ref):
            _same_bits(a, b)


def test_adam_step_special_values():
    p, g, m, v = _arrays(40)
    g[:4] = [np.inf, -np.inf, np.nan, 1e38]
    v[4] = np.inf
    ref = [a.copy() for a in (p, g, m, v)]
    k = _adam_constants()
    with np.errstate(all="ignore"):
        HOST.adam_step(p, g, m, v, **k)
        HOST.adam_step_numpy(*ref, **k)
    for a, b in zip((p, g, m, v), ref):
        np.testing.assert_array_equal(a, b)


def test_strided_arrays_take_the_numpy_path():
    p, g, m, v = (np.repeat(a, 2)[::2] for a in _arrays(50))
    assert not p.flags.c_contiguous
    ref = [np.ascontiguousarray(a) for a in (p, g, m, v)]
    k = _adam_constants()
    HOST.adam_step(p, g, m, v, **k)
    HOST.adam_step_numpy(*ref, **k)
    for a, b in zip((p, g, m, v), ref):
        _same_bits(np.ascontiguousarray(a), b)


def _adam(p, g, m, v):
    k = _adam_constants()
    _core.adam_step(p, g, m, v, *(k[name] for name in k))


def test_adam_step_argument_checks():
    p, g, m, v = _arrays(32)
    with pytest.raises(ValueError, match="exp_avg: expected 32 elements"):
        _adam(p, g, m[:16], v)
    with pytest.raises(TypeError, match="grad: expected a float32 array"):
        _adam(p, g.astype(np.float64), m, v)
    with pytest.raises(ValueError, match="exp_avg_sq: expected a C-contiguous"):
        _adam(p[:16], g[:16], m[:16], v.reshape(2, 16)[:, ::2])
    ro = p.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="param: the array is read-only"):
        _adam(ro, g, m, v)
    g.flags.writeable = False
    _adam(p, g, m, v)  # the gradient is only read
    with pytest.raises(ValueError, match="param and exp_avg: expected separate arrays"):
        _adam(p, g, p, v)
    both = np.zeros(64, F32)
    with pytest.raises(ValueError, match="exp_avg and exp_avg_sq: expected separate arrays"):
        _adam(p, g, both[:32], both[16:48])
    _adam(p, g, both[:32], both[32:])  # adjacent is fine
    with pytest.raises(ValueError, match="param and momentum_buffer: expected separate"):
        _core.sgd_step(p, g, p, F32(0.9), F32(1), F32(0), F32(-0.1), False, False)
    _core.sgd_step(p, g, None, F32(0), F32(1), F32(0), F32(-0.1), False, False)
    _adam(np.zeros(0, F32), np.zeros(0, F32), np.zeros(0, F32), np.zeros(0, F32))
