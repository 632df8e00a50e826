"""convcore.optim against torch.optim, given the same gradients.

Both sides run in float32 on identical gradients, so the update formulas
are compared directly (not the networks' gradients; tests/test_nn.py does
that).  Also: state_dict round trips continue bitwise, and argument checks.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from convcore import nn, optim

try:
    import torch
except ImportError:  # pragma: no cover
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise RuntimeError("torch is required in CI (pip install -e .[test])") from None
    pytest.skip(
        "torch is not installed: the PyTorch comparisons are skipped", allow_module_level=True
    )

SHAPES = [(6, 1, 5, 5), (6,), (120, 192), (10,)]


def params(seed=0):
    rng = np.random.default_rng(seed)
    return [nn.Parameter(rng.standard_normal(s, dtype=np.float32) * 0.1) for s in SHAPES]


def grads(step: int):
    rng = np.random.default_rng(100 + step)
    # Mixed scales, exact zeros (dead units) and tiny values around eps.
    out = []
    for s in SHAPES:
        g = rng.standard_normal(s, dtype=np.float32) * 10.0 ** rng.integers(-9, 1, s)
        g[rng.random(s) < 0.2] = 0
        out.append(g.astype(np.float32))
    return out


def run_both(make_ours, make_torch, steps=5) -> float:
    """Steps on both sides; the largest error in units of the float32
    spacing of each element's scale (its magnitudes plus the sum of its
    updates: the size of the numbers the update rounds)."""
    ours = params()
    theirs = [torch.from_numpy(p.data.copy()).requires_grad_() for p in ours]
    scale = [np.abs(p.data).astype(np.float64) for p in ours]
    opt, topt = make_ours(ours), make_torch(theirs)
    for s in range(steps):
        before = [t.detach().numpy().copy() for t in theirs]
        for p, t, g in zip(ours, theirs, grads(s)):
            p.grad[...] = g
            t.grad = torch.from_numpy(g.copy())
        opt.step()
        topt.step()
        for sc, b, t in zip(scale, before, theirs):
            sc += np.abs(t.detach().numpy() - b) + np.abs(b)
    worst = 0.0
    for p, t, sc in zip(ours, theirs, scale):
        assert p.data.dtype == np.float32
        err = np.abs(p.data.astype(np.float64) - t.detach().numpy())
        worst = max(worst, float(np.max(err / np.spacing(sc.astype(np.float32)))))
    return worst


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.5),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.01, momentum=0.8, weight_decay=1e-2),
    dict(lr=0.01, weight_decay=5e-4, momentum=0.9, nesterov=True),
]


@pytest.mark.parametrize(
    "kw", SGD_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items())
)
def test_sgd_matches_torch(kw):
    assert run_both(lambda p: optim.SGD(p, **kw), lambda p: torch.optim.SGD(p, **kw)) <= 2


ADAM_CASES = [
    dict(),
    dict(lr=3e-3, betas=(0.8, 0.99)),
    dict(lr=1e-3, eps=1e-6, weight_decay=1e-2),
]


@pytest.mark.parametrize(
    "kw", ADAM_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults"
)
def test_adam_matches_torch(kw):
    assert run_both(lambda p: optim.Adam(p, **kw), lambda p: torch.optim.Adam(p, **kw)) <= 2


def test_defaults_are_pytorchs():
    p = params()
    assert optim.Adam(p).defaults == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    assert optim.SGD(p).defaults == dict(
        lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda p: optim.Adam(p, lr=1e-3, weight_decay=1e-3),
        lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    ],
)
def test_state_dict_round_trip_continues_bitwise(make):
    a = params()
    opt_a = make(a)
    for s in range(2):
        for p, g in zip(a, grads(s)):
            p.grad[...] = g
        opt_a.step()
    sd = opt_a.state_dict()
    b = [nn.Parameter(p.data) for p in a]
    opt_b = make(b)
    opt_b.load_state_dict(sd)
    sd["state"][0].clear()  # a deep copy: the optimiser's state is untouched
    for s in range(2, 5):
        for pa, pb, g in zip(a, b, grads(s)):
            pa.grad[...] = g
            pb.grad[...] = g
        opt_a.step()
        opt_b.step()
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa.data, pb.data)


def test_state_dict_layout_is_pytorchs():
    p = params()
    opt = optim.Adam(p)
    for q, g in zip(p, grads(0)):
        q.grad[...] = g
    opt.step()
    sd = opt.state_dict()
    assert sorted(sd["state"][0]) == ["exp_avg", "exp_avg_sq", "step"]
    assert sd["state"][0]["step"] == 1
    assert sd["param_groups"][0]["params"] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="parameters"):
        optim.Adam(p[:2]).load_state_dict(sd)


def test_zero_grad_lr_and_frozen_parameters():
    p = params()
    p[1].requires_grad = False
    before = p[1].data.copy()
    opt = optim.SGD(p, lr=0.1)
    for q, g in zip(p, grads(0)):
        q.grad[...] = g
    opt.lr = 0.2
    assert opt.defaults["lr"] == 0.2
    opt.step()
    np.testing.assert_array_equal(p[1].data, before)
    opt.zero_grad()
    assert all(not q.grad.any() for q in p)


@pytest.mark.parametrize(
    "bad",
    [
        lambda p: optim.SGD(p, lr=-1),
        lambda p: optim.SGD(p, lr=0.1, nesterov=True),
        lambda p: optim.Adam(p, betas=(1.0, 0.9)),
        lambda p: optim.Adam(p, eps=-1),
        lambda p: optim.Adam([]),
        lambda p: optim.Adam([np.zeros(3, np.float32)]),
    ],
)
def test_bad_arguments_are_refused(bad):
    with pytest.raises((ValueError, TypeError)):
        bad(params())


@pytest.mark.parametrize(
    "make",
    [
        lambda p: optim.Adam(p, lr=1e-3, weight_decay=1e-3),
        lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda p: optim.SGD(p, lr=0.05),
    ],
)
def test_packed_parameters_give_identical_steps(make):
    from convcore import models

    packed = models.build("tutorial", seed=2)
    loose = models.build("tutorial", seed=2)
    plain = [nn.Parameter(p.data) for p in loose.parameters()]  # not packed
    assert packed.parameters()[0].pack is not None and plain[0].pack is None
    a, b = make(packed.parameters()), make(plain)
    assert a._pack is not None and b._pack is None
    for s in range(3):
        for p, q, g in zip(packed.parameters(), plain, _model_grads(packed, s)):
            p.grad[...] = g
            q.grad[...] = g
        a.step()
        b.step()
    for p, q in zip(packed.parameters(), plain):
        np.testing.assert_array_equal(p.data, q.data)
    # State moves between the layouts, and stepping on continues identically.
    c = make(plain)
    c.load_state_dict(a.state_dict())
    d = make(packed.parameters())
    d.load_state_dict(b.state_dict())
    assert d._packed(tuple({k for s in d.state.values() for k in s} - {"step"}))
    for p, q, g in zip(packed.parameters(), plain, _model_grads(packed, 9)):
        p.grad[...] = g
        q.grad[...] = g
    c.step()
    d.step()
    for p, q in zip(packed.parameters(), plain):
        np.testing.assert_array_equal(p.data, q.data)


def _model_grads(model, step: int):
    rng = np.random.default_rng(step)
    return [rng.standard_normal(p.data.shape, dtype=np.float32) for p in model.parameters()]


def test_pack_layout_and_fallback_when_rebound():
    from convcore import models

    model = models.build("tutorial", seed=1)
    params = model.parameters()
    pack = params[0].pack
    assert pack.intact(params)
    for p, off in zip(params, pack.offsets):
        assert off % 16 == 0 and p.data.flags.c_contiguous and p.grad.base is pack.grad
    model.zero_grad()
    opt = optim.Adam(params)
    params[3].data = params[3].data.copy()  # rebinding breaks the pack: per-parameter path
    assert not pack.intact(params)
    for p in params:
        p.grad[...] = 1
    before = params[3].data.copy()
    opt.step()
    assert np.all(params[3].data < before)
    assert np.all(pack.data[pack.offsets[1] + 6 : pack.offsets[2]] == 0)  # gaps stay zero


@pytest.mark.parametrize(
    "total, pct, strategy, div, final",
    [
        (600, 0.25, "cos", 25.0, 1e4),
        (3300, 0.2, "cos", 25.0, 1e4),
        (7, 0.3, "linear", 10.0, 100.0),
        (1, 0.3, "cos", 25.0, 1e4),
        (2, 0.0, "cos", 25.0, 1e4),
        (100, 1.0, "linear", 4.0, 1.0),
    ],
)
def test_one_cycle_rates_equal_torch(total, pct, strategy, div, final):
    p = params()[:1]
    opt = optim.Adam(p, lr=1.0)
    sched = optim.OneCycleLR(
        opt, 4e-3, total, pct_start=pct, anneal_strategy=strategy, div_factor=div,
        final_div_factor=final,
    )  # fmt: skip
    t = torch.nn.Parameter(torch.zeros(1))
    topt = torch.optim.SGD([t], lr=1.0)
    tsched = torch.optim.lr_scheduler.OneCycleLR(
        topt, 4e-3, total_steps=total, pct_start=pct, anneal_strategy=strategy,
        div_factor=div, final_div_factor=final, cycle_momentum=False,
    )  # fmt: skip
    ours, theirs = [], []
    for k in range(total):
        ours.append(opt.lr)
        theirs.append(topt.param_groups[0]["lr"])
        assert sched.get_last_lr() == [opt.lr]
        sched.step()
        if k < total - 1:  # torch raises past the last step
            topt.step()
            tsched.step()
    assert ours == theirs  # the same float64 formulas: equal, not close
    if pct < 1 and total > 1:
        assert ours[-1] == pytest.approx(4e-3 / div / final)


def test_one_cycle_resumes_from_its_state_and_from_last_step():
    opt = optim.Adam(params(), lr=1.0)
    sched = optim.OneCycleLR(opt, 1e-2, 50)
    rates = []
    for _ in range(50):
        rates.append(opt.lr)
        sched.step()
    opt2 = optim.Adam(params(), lr=1.0)
    s2 = optim.OneCycleLR(opt2, 1e-2, 50)
    for _ in range(20):
        s2.step()
    state = s2.state_dict()
    opt3 = optim.Adam(params(), lr=1.0)
    s3 = optim.OneCycleLR(opt3, 1e-2, 50)
    s3.load_state_dict(state)
    assert opt3.lr == rates[20]
    opt4 = optim.Adam(params(), lr=1.0)
    optim.OneCycleLR(opt4, 1e-2, 50, last_step=29)
    assert opt4.lr == rates[30]
    with pytest.raises(ValueError, match="total_steps.*50.*40|had 50 steps, this one has 40"):
        optim.OneCycleLR(optim.Adam(params(), lr=1.0), 1e-2, 40).load_state_dict(state)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(total_steps=0), "total_steps"),
        (dict(pct_start=1.5), "pct_start"),
        (dict(anneal_strategy="exp"), "anneal_strategy"),
        (dict(max_lr=0.0), "max_lr"),
        (dict(div_factor=float("nan")), "div_factor"),
        (dict(final_div_factor=-1.0), "final_div_factor"),
    ],
)
def test_one_cycle_bad_arguments(kw, match):
    args = dict(max_lr=1e-3, total_steps=10) | kw
    with pytest.raises(ValueError, match=match):
        optim.OneCycleLR(optim.Adam(params(), lr=1.0), **args)
