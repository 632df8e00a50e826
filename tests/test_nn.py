"""convcore.nn and convcore.models against PyTorch (float64 reference).

One helper, ``compare_with_torch``, runs a convcore network and the same
network in float64 PyTorch on the same weights and batch and reports the
largest relative error of the loss, the logits and every parameter's
gradient; each test is then a line per case.
"""

from __future__ import annotations

import os

import convcore
import numpy as np
import pytest
from convcore import models, nn, optim

try:
    import torch
except ImportError:  # pragma: no cover
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise RuntimeError("torch is required in CI (pip install -e .[test])") from None
    pytest.skip(
        "torch is not installed: the PyTorch comparisons are skipped", allow_module_level=True
    )

torch.set_default_dtype(torch.float64)

# float32 network vs float64 reference: errors relative to the largest
# reference value.  Measured: about 1e-6 (loss, logits) and 3e-6 (gradients).
TOL = 2e-5


class BatchNormReLU(torch.nn.BatchNorm2d):
    def forward(self, x):
        return torch.relu(super().forward(x))


def to_torch(model: nn.Module, dropout_masks: dict | None = None) -> torch.nn.Sequential:
    """The same network in float64 PyTorch with the same weights.  Dropout
    layers become a multiplication by the mask convcore drew (so both
    networks drop the same units)."""

    class Mask(torch.nn.Module):
        def __init__(self, mask):
            super().__init__()
            self.mask = mask

        def forward(self, x):
            return x if self.mask is None else x * torch.from_numpy(self.mask.astype(np.float64))

    layers = []
    for i, m in enumerate(model):
        if isinstance(m, nn.Conv2d):
            pad = m.padding if isinstance(m.padding, str) else tuple(m.padding)
            layers.append(
                torch.nn.Conv2d(
                    m.in_channels,
                    m.out_channels,
                    m.kernel_size,
                    m.stride,
                    pad,
                    m.dilation,
                    m.groups,
                    m.bias is not None,
                    m.padding_mode,
                )
            )
        elif isinstance(m, nn.Linear):
            layers.append(torch.nn.Linear(m.in_features, m.out_features, m.bias is not None))
        elif isinstance(m, nn.ReLU):
            layers.append(torch.nn.ReLU())
        elif isinstance(m, nn.MaxPool2d):
            layers.append(
                torch.nn.MaxPool2d(
                    m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode
                )
            )
        elif isinstance(m, nn.Flatten):
            layers.append(torch.nn.Flatten(m.start_dim, m.end_dim))
        elif isinstance(m, nn.Dropout):
            layers.append(Mask((dropout_masks or {}).get(i)))
        elif isinstance(m, nn.BatchNorm2d):
            # BatchNorm2d(relu=True) is torch's BatchNorm2d then ReLU, kept as
            # one module so the state_dict names stay the same.
            cls = BatchNormReLU if m.relu else torch.nn.BatchNorm2d
            layers.append(cls(m.num_features, m.eps, m.momentum, m.affine))
        else:  # pragma: no cover
            raise TypeError(type(m))
    tm = torch.nn.Sequential(*layers)
    tm.load_state_dict(
        {k: torch.from_numpy(v.astype(np.float64)) for k, v in model.state_dict().items()}
    )
    return tm


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def batch(n: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    # Image-like inputs: [0, 1], a third of the pixels black, as in Fashion-MNIST.
    x = rng.random((n, 1, 28, 28), dtype=np.float32)
    x[x < 0.33] = 0
    return x, rng.integers(0, 10, n)


def compare_with_torch(model: nn.Sequential, x, y) -> dict:
    """Forward, loss and backward in both; the largest relative errors."""
    logits = model(x)
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(logits, y)
    model.zero_grad()
    gx = model.backward(loss_fn.backward())
    masks = {i: m._mask for i, m in enumerate(model) if isinstance(m, nn.Dropout)}
    tm = to_torch(model, masks)
    tx = torch.from_numpy(x.astype(np.float64)).requires_grad_(model.input_grad)
    tlogits = tm(tx)
    tloss = torch.nn.functional.cross_entropy(tlogits, torch.from_numpy(y))
    tloss.backward()
    errs = {
        "loss": abs(loss - tloss.item()) / abs(tloss.item()),
        "logits": rel_err(logits, tlogits.detach().numpy()),
    }
    tgrads = dict(tm.named_parameters())
    for name, p in model.named_parameters():
        errs[name] = rel_err(p.grad, tgrads[name].grad.numpy())
    if model.input_grad:
        errs["input"] = rel_err(gx, tx.grad.numpy())
    return errs


def assert_close(errs: dict, tol: float = TOL) -> None:
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, f"errors above {tol:g}: {bad}"


# --- whole networks ------------------------------------------------------


@pytest.mark.parametrize("name", models.NAMES)
def test_model_matches_torch(name):
    model = models.build(name, seed=1)
    assert_close(compare_with_torch(model, *batch(8 if name == "wide" else 32)))


def test_wide_with_dropout_active_matches_torch():
    model = models.build("wide", seed=2, dropout=0.5)
    errs = compare_with_torch(model, *batch(4, seed=3))
    assert model[13]._mask is not None and (model[13]._mask == 0).any()
    assert_close(errs)


def test_input_gradient_matches_torch():
    model = models.build("tutorial", seed=3)
    model.input_grad = True
    errs = compare_with_torch(model, *batch(8))
    assert "input" in errs
    assert_close(errs)


def test_model_eval_mode_is_deterministic_and_matches_torch():
    model = models.build("wide", seed=4).eval()
    x, _ = batch(4)
    a, b = model(x), model(x)
    np.testing.assert_array_equal(a, b)
    t = to_torch(model).eval()(torch.from_numpy(x.astype(np.float64))).detach().numpy()
    assert rel_err(a, t) < TOL


def _step_both(name: str, make_ours, make_torch, steps: int = 1, min_grad: float = 0.0) -> tuple:
    """Train steps in convcore (float32) and float64 PyTorch from the same
    start.  Returns the largest parameter error relative to (a) the size of
    the parameters' change, over elements whose last reference gradient is at
    least ``min_grad`` in magnitude, and (b) the size of the parameters."""
    model = models.build(name, seed=5, dropout=0.0)
    tm = to_torch(model)
    start = model.state_dict()
    opt = make_ours(model.parameters())
    topt = make_torch(tm.parameters())
    loss_fn = nn.CrossEntropyLoss()
    for s in range(steps):
        x, y = batch(8, seed=10 + s)
        loss_fn(model(x), y)
        model.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
        topt.zero_grad()
        torch.nn.functional.cross_entropy(
            tm(torch.from_numpy(x.astype(np.float64))), torch.from_numpy(y)
        ).backward()
        topt.step()
    vs_change = vs_size = 0.0
    excluded = total = 0
    tparams = dict(tm.named_parameters())
    for k, p in model.named_parameters():
        ref = tparams[k].detach().numpy()
        moved = np.abs(ref - start[k])
        assert moved.max() > 0
        err = np.abs(p.data - ref)
        tg = tparams[k].grad.numpy()
        sel = (np.abs(tg) >= min_grad) | (tg == 0)
        excluded += int(np.count_nonzero(~sel))
        total += sel.size
        vs_change = max(vs_change, float(err[sel].max(initial=0) / moved.max()))
        if np.any(start[k]):  # a parameter that starts at 0 (a batch-norm bias) is
            # as large as its change: vs_change covers it
            vs_size = max(vs_size, float(err.max() / np.abs(ref).max()))
    return vs_change, vs_size, excluded / total


@pytest.mark.parametrize("name", models.NAMES)
def test_one_sgd_step_matches_torch(name):
    vs_change, vs_size, _ = _step_both(
        name,
        lambda p: optim.SGD(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    )
    # vs_change is dominated by rounding the float32 parameters (|p| * 6e-8
    # against changes of ~1e-4); measured up to 9e-5.
    assert vs_change < 5e-4 and vs_size < 1e-6


@pytest.mark.parametrize("name", models.NAMES)
def test_one_adam_step_matches_torch(name):
    # Adam's first step is lr * g / (|g| + eps) per element: where a gradient
    # is within float32 rounding of zero (|g| ~ eps = 1e-8) the two networks
    # legitimately move differently, by a fraction of lr.  So the update is
    # compared where |g| >= 1e-6 or g == 0 (nearly all elements; the others
    # are rounding noise).  tests/test_optim.py checks the update
    # rule itself on equal gradients.  In wide-bn the worst element at 1e-6
    # was a 3136->256 weight with |g| = 1.28e-6 and an absolute error of
    # 1.6e-8 (3e-7 of that layer's largest gradient: float32 rounding of the
    # batch-norm backward's mean subtraction), which Adam's first step turns
    # into 1.01e-4 of the change; its cut-off is 1e-5.
    vs_change, _, excluded = _step_both(
        name,
        lambda p: optim.Adam(p, lr=1e-3),
        lambda p: torch.optim.Adam(p, lr=1e-3),
        min_grad=1e-5 if name == "wide-bn" else 1e-6,
    )
    assert vs_change < 1e-4 and excluded < 0.1


def test_three_adam_steps_match_torch():
    vs_change, _, excluded = _step_both(
        "tutorial",
        lambda p: optim.Adam(p, lr=1e-3, weight_decay=1e-4),
        lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=1e-4),
        steps=3,
        min_grad=1e-6,
    )
    assert vs_change < 1e-4 and excluded < 0.1


# --- layers --------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, padding_mode="reflect"),
        dict(in_channels=3, out_channels=4, kernel_size=3, padding=2, padding_mode="circular"),
        dict(
            in_channels=2,
            out_channels=4,
            kernel_size=(2, 3),
            padding="same",
            padding_mode="replicate",
        ),
        dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, dilation=2, groups=2),
        dict(in_channels=3, out_channels=5, kernel_size=4, padding="same", bias=False),
    ],
)
@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_conv2d_layer_matches_torch(kwargs):
    model = nn.Sequential(nn.Conv2d(**kwargs, rng=0), nn.Flatten())
    model.input_grad = True
    x = np.random.default_rng(1).standard_normal(
        (2, kwargs["in_channels"], 9, 10), dtype=np.float32
    )
    tm = to_torch(model)
    tx = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    ty = tm(tx)
    y = model(x)
    assert rel_err(y, ty.detach().numpy()) < TOL
    g = np.random.default_rng(2).standard_normal(y.shape, dtype=np.float32)
    model.zero_grad()
    gx = model.backward(g)
    ty.backward(torch.from_numpy(g.astype(np.float64)))
    assert rel_err(gx, tx.grad.numpy()) < TOL
    for name, p in model.named_parameters():
        assert rel_err(p.grad, dict(tm.named_parameters())[name].grad.numpy()) < TOL


def test_default_init_follows_pytorch_bounds():
    conv = nn.Conv2d(6, 12, 5, rng=0)
    lin = nn.Linear(192, 120, rng=0)
    for layer, fan_in in ((conv, 150), (lin, 192)):
        bound = 1 / np.sqrt(fan_in)
        for p in (layer.weight.data, layer.bias.data):
            assert p.dtype == np.float32 and p.flags.c_contiguous
            assert np.abs(p).max() <= bound
            assert np.abs(p).max() > 0.8 * bound  # uniform over the whole range
        assert abs(float(layer.weight.data.mean())) < 0.1 * bound
    assert (
        models.build("tutorial", 7).state_dict().keys()
        == models.build("tutorial", 8).state_dict().keys()
    )
    a, b = models.build("tutorial", 7).state_dict(), models.build("tutorial", 7).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = models.build("tutorial", 8).state_dict()
    assert not np.array_equal(a["0.weight"], c["0.weight"])


def test_state_dict_names_match_torch():
    for name, torch_names in (
        (
            "tutorial",
            [
                "0.weight",
                "0.bias",
                "3.weight",
                "3.bias",
                "7.weight",
                "7.bias",
                "9.weight",
                "9.bias",
                "11.weight",
                "11.bias",
            ],
        ),
        (
            "wide",
            [
                "0.weight",
                "0.bias",
                "2.weight",
                "2.bias",
                "5.weight",
                "5.bias",
                "7.weight",
                "7.bias",
                "11.weight",
                "11.bias",
                "14.weight",
                "14.bias",
            ],
        ),
    ):
        model = models.build(name)
        assert list(model.state_dict()) == torch_names
        assert list(model.state_dict()) == list(to_torch(model).state_dict())


def test_cross_entropy_is_stable_and_matches_torch():
    logits = np.array([[1e4, 0, -1e4], [-50.0, 50.0, 0.0], [0.1, 0.2, 0.3]], np.float32)
    y = np.array([0, 2, 1])
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(logits, y)
    g = loss_fn.backward()
    tl = torch.from_numpy(logits.astype(np.float64)).requires_grad_()
    tloss = torch.nn.functional.cross_entropy(tl, torch.from_numpy(y))
    tloss.backward()
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    assert loss == pytest.approx(tloss.item(), rel=1e-6)
    np.testing.assert_allclose(g, tl.grad.numpy(), atol=1e-7)
    assert isinstance(loss, float) and g.dtype == np.float32
    s = nn.CrossEntropyLoss(reduction="sum")
    assert s(logits, y) == pytest.approx(3 * loss, rel=1e-6)
    with pytest.raises(ValueError, match="target"):
        loss_fn(logits, np.array([0, 3, 1]))


@pytest.mark.parametrize("eps", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n, c", [(1, 2), (7, 10), (100, 10)])
def test_cross_entropy_label_smoothing_matches_torch(eps, reduction, n, c):
    rng = np.random.default_rng(n * 31 + c)
    logits = (rng.standard_normal((n, c)) * 4).astype(np.float32)
    y = rng.integers(0, c, n)
    loss_fn = nn.CrossEntropyLoss(reduction, label_smoothing=eps)
    loss = loss_fn(logits, y)
    g = loss_fn.backward()
    tl = torch.from_numpy(logits.astype(np.float64)).requires_grad_()
    tloss = torch.nn.functional.cross_entropy(
        tl, torch.from_numpy(y), reduction=reduction, label_smoothing=eps
    )
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-6)
    # float32 softmax (exp, divide), then the smoothing term added: a few
    # float32 roundings of numbers up to 1 in size (sum reduction).
    np.testing.assert_allclose(g, tl.grad.numpy(), rtol=4 * 2.0**-23, atol=1e-7)
    assert g.dtype == np.float32
    np.testing.assert_array_equal(loss_fn.predictions(), logits.argmax(1))


def test_cross_entropy_predictions_are_numpys_argmax_and_errors_are_named():
    # The compiled loss (kernels/ref/loss_ref.cpp): the first maximum, the
    # first NaN; a NaN row gives a NaN loss, the other rows stay exact.
    logits = np.array(
        [[1.0, 3.0, 3.0], [np.nan, 5.0, np.nan], [2.0, np.nan, 9.0], [-np.inf, -1.0, -1.0]],
        np.float32,
    )
    y = np.array([1, 0, 2, 2])
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    assert np.isnan(loss_fn(logits, y))
    np.testing.assert_array_equal(loss_fn.predictions(), np.argmax(logits, axis=1))
    g = loss_fn.backward()
    assert np.isnan(g[1:3]).all() and np.isfinite(g[[0, 3]]).all()
    with pytest.raises(ValueError, match=r"target: labels must be in \[0, 3\), got 3 at index 1"):
        convcore._core.cross_entropy(logits, np.array([0, 3, 1, 1]), 1.0)
    with pytest.raises(TypeError, match="target: expected an int64 array"):
        convcore._core.cross_entropy(logits, y.astype(np.int32), 1.0)
    # Through the layer: any integer labels, the range checked by the binding.
    for bad, at in (([0, 3, 1, 1], "got 3 at index 1"), ([0, 1, -1, 1], "got -1 at index 2")):
        with pytest.raises(ValueError, match=rf"target: labels must be in \[0, 3\), {at}"):
            loss_fn(logits, np.array(bad, np.int32))
    with pytest.raises(ValueError, match="target: expected 4 integer labels, got float64"):
        loss_fn(logits, y.astype(np.float64))
    with pytest.raises(ValueError, match=r"target: expected shape \(4,\)"):
        convcore._core.cross_entropy(logits, y[:2], 1.0)
    with pytest.raises(ValueError, match="logits: expected at least one class"):
        convcore._core.cross_entropy(np.zeros((2, 0), np.float32), y[:2], 1.0)


@pytest.mark.parametrize("eps", [-0.1, 1.5, float("nan")])
def test_cross_entropy_refuses_bad_label_smoothing(eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        nn.CrossEntropyLoss(label_smoothing=eps)


def test_layers_without_inputs_build_and_linear_names_a_bad_input():
    # fan-in 0 (PyTorch allows it): nothing to scale, no division by zero
    lin = nn.Linear(0, 3, rng=0)
    assert lin.weight.data.shape == (3, 0) and not lin.bias.data.any()
    assert nn.Conv2d(0, 4, 3, rng=0).weight.data.shape == (4, 0, 3, 3)
    with pytest.raises(TypeError, match="Linear: expected a float32 array as input, got list"):
        nn.Linear(2, 3, rng=0)([[1.0, 2.0]])


def test_dropout_scales_and_is_identity_in_eval():
    d = nn.Dropout(0.25, rng=0)
    x = np.ones((200, 500), np.float32)
    y = d(x)
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    g = d.backward(np.ones_like(x))
    np.testing.assert_array_equal(g, y)
    d.eval()
    assert d(x) is x
    assert nn.Dropout(0.0, rng=0)(x) is x


def test_rng_state_round_trip_reproduces_dropout_masks():
    model = models.build("wide", seed=3)
    state = model.rng_state()
    assert list(state) == ["13"]
    first = model[13](np.ones((4, 256), np.float32))
    model.set_rng_state(state)
    again = model[13](np.ones((4, 256), np.float32))
    np.testing.assert_array_equal(first, again)


def test_relu_inplace_and_gradient():
    x = np.array([[-1.0, 0.0, 2.0, np.nan]], np.float32)
    r = nn.ReLU()
    y = r(x.copy())
    np.testing.assert_array_equal(y[0, :3], [0, 0, 2])
    np.testing.assert_array_equal(r.backward(np.ones_like(y))[0, :3], [0, 0, 1])
    ri = nn.ReLU(inplace=True)
    x2 = x.copy()
    assert ri(x2) is x2


def test_backward_skips_input_gradient_of_built_models():
    model = models.build("tutorial")
    assert model.input_grad is False
    loss_fn = nn.CrossEntropyLoss()
    x, y = batch(4)
    loss_fn(model(x), y)
    assert model.backward(loss_fn.backward()) is None
    assert all(np.any(p.grad != 0) for p in model.parameters())


def test_gradients_accumulate_until_zero_grad():
    model = models.build("tutorial", seed=1)
    loss_fn = nn.CrossEntropyLoss()
    x, y = batch(4)
    loss_fn(model(x), y)
    model.zero_grad()
    model.backward(loss_fn.backward())
    once = [p.grad.copy() for p in model.parameters()]
    loss_fn(model(x), y)
    model.backward(loss_fn.backward())
    for g1, p in zip(once, model.parameters()):
        np.testing.assert_allclose(p.grad, 2 * g1, rtol=1e-6, atol=1e-9)
    model.zero_grad()
    assert all(not p.grad.any() for p in model.parameters())


def test_load_state_dict_checks_names_and_shapes():
    model = models.build("tutorial")
    sd = model.state_dict()
    sd["0.weight"] = np.zeros((6, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match="0.weight"):
        model.load_state_dict(sd)
    with pytest.raises(KeyError, match="missing"):
        model.load_state_dict({})
    good = models.build("tutorial", seed=9).state_dict()
    ref = model.parameters()[0].data
    model.load_state_dict(good)
    assert model.parameters()[0].data is ref  # in place: optimisers keep their references
    np.testing.assert_array_equal(ref, good["0.weight"])


def test_build_rejects_unknown_names_and_tutorial_dropout():
    with pytest.raises(ValueError, match="unknown model"):
        models.build("resnet")
    with pytest.raises(ValueError, match="dropout"):
        models.build("tutorial", dropout=0.3)
    assert models.build("wide", dropout=0.2)[13].p == 0.2
