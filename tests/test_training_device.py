"""Training on the GPU: layers, loss, optimisers and convcore-train --device cuda.

Each test runs twice, through the ``gpu`` fixture:

* ``fake``: the GPU backend registered on tests/fake_cuda.py, whose "device"
  arrays live in host memory and refuse implicit numpy conversion.  It runs
  everywhere and tests the Python side of the GPU path: that every array of
  a step stays on the device, that parameters, gradients and optimiser
  state are views of packed device buffers, and that checkpoints and resume
  move state correctly between host and device.
* ``cuda``: the real GPU.  Without one it skips with the reason ("no CUDA
  device: ..."); on a GPU it checks the kernels of csrc/cuda/train_ops.cu
  end to end, including that the optimiser steps are bitwise the host's.
"""

from __future__ import annotations

import json

import convcore.cuda as cc
import fake_cuda
import numpy as np
import pytest
from convcore import evaluate, models, nn, optim, train
from convcore._backend import backend_of

REASON = f"no CUDA device: {cc.unavailable_reason()}"


@pytest.fixture(params=["fake", "cuda"])
def gpu(request, monkeypatch):
    """None on the real GPU, the FakeExt (with its call counts) otherwise."""
    if request.param == "fake":
        return fake_cuda.install(monkeypatch)
    if not cc.is_available():
        pytest.skip(REASON)
    return None


pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(*_):
    pass


def _on_device(a) -> bool:
    return isinstance(a, (cc.DeviceArray, fake_cuda.FakeDeviceArray))


def _pair(name: str, seed: int = 3):
    """The same freshly built model twice: on the host and on the device."""
    host = models.build(name, seed=seed)
    dev = models.build(name, seed=seed).to("cuda")
    return host, dev


# ---------------------------------------------------------------------------
# forward and backward
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in models.NAMES if n not in models.CPU_ONLY])
def test_a_step_on_the_device_matches_the_host(gpu, name):
    host, dev = _pair(name)
    assert host.device == "cpu" and dev.device == "cuda:0"
    rng = np.random.default_rng(0)
    x = rng.random((7, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 7)
    lh, ld = nn.CrossEntropyLoss(), nn.CrossEntropyLoss()

    logits_h = host(x)
    logits_d = dev(cc.to_device(x))
    assert _on_device(logits_d) and logits_d.shape == (7, 10)
    np.testing.assert_allclose(logits_d.numpy(), logits_h, rtol=1e-5, atol=1e-5)

    loss_h, loss_d = lh(logits_h, y), ld(logits_d, y)
    assert isinstance(loss_d, float)
    assert loss_d == pytest.approx(loss_h, rel=1e-5)
    np.testing.assert_array_equal(ld.predictions(), logits_h.argmax(axis=1))

    host.zero_grad()
    dev.zero_grad()
    host.backward(lh.backward())
    g = ld.backward()
    assert _on_device(g)
    assert dev.backward(g) is None  # the first layer skips the input gradient
    for (pname, ph), pd in zip(host.named_parameters(), dev.parameters()):
        assert _on_device(pd.data) and _on_device(pd.grad), pname
        scale = float(np.abs(ph.grad).max())
        np.testing.assert_allclose(
            pd.grad.numpy(), ph.grad, rtol=1e-4, atol=1e-5 * scale, err_msg=pname
        )
    if gpu is not None:  # the fake counts the ops: everything ran "on the device"
        for op in (
            "conv2d_forward",
            "conv2d_backward",
            "relu_forward",
            "relu_backward",
            "add_",
            "cross_entropy",
        ):
            assert gpu.calls.get(op, 0) > 0, op
        if name == "wide":  # dropout (p = 0.5, training mode) masks on the device
            assert gpu.calls.get("multiply", 0) == 2


def test_dropout_masks_are_the_same_on_host_and_device(gpu):
    host, dev = nn.Dropout(0.5, rng=1), nn.Dropout(0.5, rng=1)
    x = np.random.default_rng(2).standard_normal((5, 33)).astype(np.float32)
    out_h, out_d = host(x), dev(cc.to_device(x))
    np.testing.assert_array_equal(out_d.numpy(), out_h)
    g = np.ones_like(x)
    np.testing.assert_array_equal(dev.backward(cc.to_device(g)).numpy(), host.backward(g))
    dev.eval()
    xd = cc.to_device(x)
    assert dev(xd) is xd


def test_relu_and_linear_layers_on_the_device(gpu):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 9)).astype(np.float32)
    x[0, :3] = [np.nan, -0.0, 0.0]
    relu = nn.ReLU()
    y = relu(cc.to_device(x))
    expected = np.maximum(x, np.float32(0))
    np.testing.assert_array_equal(y.numpy(), expected)  # NaN kept, -0.0 -> +0.0
    assert not np.signbit(y.numpy()[0, 1])
    gy = rng.standard_normal((6, 9)).astype(np.float32)
    np.testing.assert_array_equal(relu.backward(cc.to_device(gy)).numpy(), gy * (expected > 0))

    lin_h = nn.Linear(9, 4, rng=1)
    lin_d = nn.Linear(9, 4, rng=1).to("cuda")
    xs = np.nan_to_num(x)
    out = lin_d(cc.to_device(xs))
    np.testing.assert_allclose(out.numpy(), lin_h(xs), rtol=1e-5, atol=1e-6)
    gi = lin_d.backward(cc.to_device(gy[:, :4]))
    np.testing.assert_allclose(gi.numpy(), lin_h.backward(gy[:, :4]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lin_d.weight.grad.numpy(), lin_h.weight.grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lin_d.bias.grad.numpy(), lin_h.bias.grad, rtol=1e-5, atol=1e-6)


def test_loss_on_the_device_checks_its_labels(gpu):
    logits = cc.to_device(np.zeros((3, 4), np.float32))
    loss = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"target: labels must be in \[0, 4\)"):
        loss(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="target: expected 3 integer labels"):
        loss(logits, np.array([0, 1]))
    with pytest.raises(TypeError, match="host array"):
        loss(logits, cc.to_device(np.array([0, 1, 2])))
    assert loss(logits, np.array([0, 1, 3])) == pytest.approx(np.log(4), rel=1e-6)
    np.testing.assert_array_equal(loss.predictions(), [0, 0, 0])
    s = nn.CrossEntropyLoss(reduction="sum")
    assert s(logits, np.array([0, 1, 3])) == pytest.approx(3 * np.log(4), rel=1e-6)
    np.testing.assert_allclose(s.backward().numpy(), np.full((3, 4), 0.25) - np.eye(4)[[0, 1, 3]])


# ---------------------------------------------------------------------------
# optimisers: the device step is bitwise the host step
# ---------------------------------------------------------------------------

OPTIMIZERS = {
    "adam": lambda ps: optim.Adam(ps, lr=1e-3),
    "adam-wd": lambda ps: optim.Adam(ps, lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2),
    "sgd": lambda ps: optim.SGD(ps, lr=0.1),
    "sgd-momentum": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.1),
    "sgd-nesterov-wd": lambda ps: optim.SGD(
        ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3
    ),
}


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_optimizer_steps_on_the_device_are_bitwise_the_host_steps(gpu, kind):
    host, dev = _pair("tutorial")
    opt_h, opt_d = OPTIMIZERS[kind](host.parameters()), OPTIMIZERS[kind](dev.parameters())
    pack_h, pack_d = host.parameters()[0].pack, dev.parameters()[0].pack
    rng = np.random.default_rng(11)
    for _ in range(3):
        g = rng.standard_normal(pack_h.grad.shape).astype(np.float32)
        g[::7] *= 1e-6  # tiny gradients too, where Adam's eps matters
        gaps = np.ones(g.shape, bool)
        for i, p in enumerate(pack_h.params):
            gaps[pack_h.offsets[i] : pack_h.offsets[i] + p.data.size] = False
        g[gaps] = 0  # the packing gaps hold zeros, as zero_grad leaves them
        pack_h.grad[...] = g
        pack_d.grad.copy_from_host(g)
        opt_h.step()
        opt_d.step()
    for (name, ph), pd in zip(host.named_parameters(), dev.parameters()):
        np.testing.assert_array_equal(pd.data.numpy(), ph.data, err_msg=name)
    sd_h, sd_d = opt_h.state_dict(), opt_d.state_dict()
    assert sd_d["param_groups"] == sd_h["param_groups"]
    for i, entry in sd_h["state"].items():
        for key, value in entry.items():
            got = sd_d["state"][i][key]
            if isinstance(value, np.ndarray):
                assert isinstance(got, np.ndarray)  # state_dict is on the host
                np.testing.assert_array_equal(got, value, err_msg=f"{i}.{key}")
            else:
                assert got == value
    # Optimiser state lives on the device, as views of packed buffers.
    for s in opt_d.state.values():
        for key, value in s.items():
            if key != "step" and value is not None:
                assert _on_device(value), key
    if gpu is not None:
        assert gpu.calls.get("adam_step" if kind.startswith("adam") else "sgd_step") == 3


def test_label_smoothing_on_the_device_matches_the_host(gpu):
    rng = np.random.default_rng(8)
    logits = (rng.standard_normal((9, 10)) * 3).astype(np.float32)
    y = rng.integers(0, 10, 9)
    lh, ld = nn.CrossEntropyLoss(label_smoothing=0.1), nn.CrossEntropyLoss(label_smoothing=0.1)
    loss_h, loss_d = lh(logits, y), ld(cc.to_device(logits), y)
    assert loss_d == pytest.approx(loss_h, rel=1e-6)
    g = ld.backward()
    assert _on_device(g)
    np.testing.assert_allclose(g.numpy(), lh.backward(), rtol=1e-6, atol=1e-8)


def test_flip_averaged_evaluation_on_the_device_matches_the_host(gpu, fmnist):
    host, dev = _pair("tutorial", seed=4)
    x, y = fmnist[2][:300], fmnist[3][:300]
    rh = evaluate.evaluate_model(host, x, y, batch_size=128, tta=True)
    rd = evaluate.evaluate_model(dev, x, y, batch_size=128, tta=True)
    assert rd["loss"] == pytest.approx(rh["loss"], rel=1e-5)
    assert np.mean(rd["predictions"] == rh["predictions"]) >= 0.99


@pytest.mark.gpu
@pytest.mark.skipif(not cc.is_available(), reason=REASON)
@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_optimizer_kernels_are_bitwise_the_host_steps_on_extreme_values(kind):
    # The real adam/sgd kernels (train_ops.cu) against the host's numpy
    # steps, bitwise, where float32 rounding is most fragile: gradients of
    # 0, -0, subnormals, tiny and huge magnitudes, ties of sign; parameters
    # of the same kinds; five steps, so the moments and buffers carry them.
    host, dev = _pair("tutorial")
    opt_h, opt_d = OPTIMIZERS[kind](host.parameters()), OPTIMIZERS[kind](dev.parameters())
    pack_h, pack_d = host.parameters()[0].pack, dev.parameters()[0].pack
    n = pack_h.grad.size
    special = np.array([0.0, -0.0, 1e-45, -1e-40, 1e-30, 3e-8, 1.0, -1.0, 1e18, -3e30], np.float32)
    rng = np.random.default_rng(5)
    live = np.zeros(n, bool)
    for i, p in enumerate(pack_h.params):
        live[pack_h.offsets[i] : pack_h.offsets[i] + p.data.size] = True
    for (_, ph), pd in zip(host.named_parameters(), dev.parameters()):
        w = ph.data.reshape(-1)
        w[::3] = special[rng.integers(0, special.size, w[::3].size)]
        pd.data.copy_from_host(ph.data)
    for _ in range(5):
        g = rng.standard_normal(n).astype(np.float32)
        g[::2] = special[rng.integers(0, special.size, g[::2].size)]
        g[~live] = 0
        pack_h.grad[...] = g.reshape(pack_h.grad.shape)
        pack_d.grad.copy_from_host(pack_h.grad)
        opt_h.step()
        opt_d.step()
        for (name, ph), pd in zip(host.named_parameters(), dev.parameters()):
            got, want = pd.data.numpy(), ph.data
            same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
            assert same.all(), (
                f"{kind} {name}: {int((~same).sum())} elements differ from the host, "
                f"first at {int(np.flatnonzero(~same.reshape(-1))[0])}"
            )


def test_optimizer_state_moves_between_host_and_device(gpu):
    host, dev = _pair("tutorial")
    opt_h = optim.Adam(host.parameters())
    for p in host.parameters():
        p.grad[...] = 0.5
    opt_h.step()
    opt_d = optim.Adam(dev.parameters())
    opt_d.load_state_dict(opt_h.state_dict())  # host state onto the device
    dev.load_state_dict(host.state_dict())
    for p in host.parameters():
        p.grad[...] = -0.25
    dev.parameters()[0].pack.grad.copy_from_host(host.parameters()[0].pack.grad)
    opt_h.step()
    opt_d.step()
    for ph, pd in zip(host.parameters(), dev.parameters()):
        np.testing.assert_array_equal(pd.data.numpy(), ph.data)
    assert all(s["step"] == 2 for s in opt_d.state.values())


def test_model_to_device_and_back_keeps_the_values(gpu):
    model = models.build("wide", seed=1)
    before = model.state_dict()
    assert model.to("cuda") is model
    assert model.device == "cuda:0"
    pack = model.parameters()[0].pack
    assert pack.device == 0 and pack.intact(model.parameters())
    for p in model.parameters():
        assert _on_device(p.data) and _on_device(p.grad)
    sd = model.state_dict()
    for k, v in before.items():
        assert isinstance(sd[k], np.ndarray)
        np.testing.assert_array_equal(sd[k], v)
    changed = {k: v + 1 for k, v in before.items()}
    model.load_state_dict(changed)
    model.to("cpu")
    assert model.device == "cpu"
    assert all(isinstance(p.data, np.ndarray) for p in model.parameters())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, changed[k])
    # An unpacked model is packed on the way.
    lin = nn.Linear(3, 2, rng=0)
    assert lin.weight.pack is None
    lin.to("cuda")
    assert lin.weight.pack is not None and _on_device(lin.weight.data)


def test_an_optimizer_must_be_created_after_the_move(gpu):
    model = models.build("tutorial")
    opt = optim.Adam(model.parameters())
    model.to("cuda")
    with pytest.raises(RuntimeError, match="moved from cpu to cuda:0 after this Adam was created"):
        opt.step()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.step()  # created after the move: fine
    model.to("cpu")
    with pytest.raises(RuntimeError, match="create the optimiser after model.to"):
        opt.step()


def test_packing_a_model_on_the_device_keeps_it_there(gpu):
    model = models.build("tutorial").to("cuda")
    before = model.state_dict()
    pack = model.pack_parameters()
    assert pack.device == 0 and model.device == "cuda:0"
    assert pack.intact(model.parameters())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_optimizer_arrays_must_not_overlap(gpu):
    p = cc.to_device(np.ones(8, np.float32))
    g = cc.to_device(np.ones(8, np.float32))
    m = cc.to_device(np.zeros(8, np.float32))
    k = dict(one_minus_beta1=0.1, beta2=0.999, one_minus_beta2=1e-3, bc2_sqrt=1.0, eps=1e-8)
    with pytest.raises(ValueError, match="separate arrays"):
        backend_of(p).adam_step(p, g, m, m, neg_step=-1e-3, wd=0.0, **k)
    with pytest.raises(ValueError, match="separate arrays"):
        backend_of(p).sgd_step(
            p,
            p,
            None,
            momentum=0,
            one_minus_dampening=1,
            wd=0,
            neg_lr=-1,
            nesterov=False,
            first=False,
        )


def test_a_copied_model_is_not_taken_for_the_packed_original():
    import copy

    model = models.build("tutorial")
    twin = copy.deepcopy(model)
    # The copy's parameters are independent arrays, no longer views of its
    # pack's buffers: optimisers must update them one by one.
    assert not twin.parameters()[0].pack.intact(twin.parameters())
    opt = optim.SGD(twin.parameters(), lr=1.0)
    for p in twin.parameters():
        p.grad[...] = 1.0
    before = twin.state_dict()
    opt.step()
    for k, v in twin.state_dict().items():
        np.testing.assert_array_equal(v, before[k] - 1.0)
    twin.zero_grad()
    assert all(not p.grad.any() for p in twin.parameters())


# ---------------------------------------------------------------------------
# convcore-train --device cuda
# ---------------------------------------------------------------------------

SMALL = dict(model="tutorial", epochs=2, batch_size=50, lr=3e-3, normalize=True, limit_train=2000)


def test_training_on_the_device_matches_the_host_and_resumes(gpu, fmnist, tmp_path):
    kw = dict(data=fmnist, progress="none", plots=False, limit_test=500, log=quiet)
    m_cpu = train.run(dict(SMALL), tmp_path / "cpu", **kw)
    m_dev = train.run(dict(SMALL), tmp_path / "dev", device="cuda", **kw)
    assert m_cpu["device"] == "cpu" and m_dev["device"].startswith("cuda:0 (")
    for e_cpu, e_dev in zip(m_cpu["epochs"], m_dev["epochs"]):
        assert e_dev["train_loss"] == pytest.approx(e_cpu["train_loss"], rel=1e-3)
        assert e_dev["test_loss"] == pytest.approx(e_cpu["test_loss"], rel=1e-2)
    # Within one point: at most 5 of the 500 test images, counted as whole
    # images (0.758 - 0.748 is 0.010000000000000009 in floating point).  The
    # layers agree bitwise except Linear (BLAS on the host, a 1x1 convolution
    # on the device), whose last-bit differences two epochs of training amplify.
    n_test = 500
    correct_cpu = round(m_cpu["test_accuracy"] * n_test)
    correct_dev = round(m_dev["test_accuracy"] * n_test)
    assert abs(correct_dev - correct_cpu) <= n_test // 100
    assert m_dev["test_accuracy"] > 0.6

    # Resume the device run after epoch 1 (on the device): bitwise the same end.
    train.run(dict(SMALL, epochs=1), tmp_path / "part", device="cuda", **kw)
    ck = tmp_path / "part" / "checkpoint-epoch001.npz"
    m_res = train.run({"epochs": 2}, tmp_path / "part", resume=ck, device="cuda", **kw)
    assert m_res["test_accuracy"] == m_dev["test_accuracy"]
    a = np.load(tmp_path / "dev" / "checkpoint-epoch002.npz")
    b = np.load(tmp_path / "part" / "checkpoint-epoch002.npz")
    compared = [k for k in a.files if k.startswith(("model/", "optimizer/"))]
    assert len(compared) >= 20, a.files  # weights, Adam's moments
    for key in compared:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.skipif(not cc.is_available(), reason=REASON)
def test_gpu_training_reaches_the_host_accuracy(fmnist, tmp_path):
    # test_train.py's accuracy bar (4 epochs over 10,000 images, whole test
    # set: 82.4-83.5 % on the host for seeds 0-2), on the real GPU, against
    # the same run on the host.
    config = dict(
        model="tutorial", epochs=4, batch_size=50, lr=3e-3, normalize=True, limit_train=10000
    )
    kw = dict(data=fmnist, progress="none", plots=False, log=quiet)
    m_cpu = train.run(dict(config), tmp_path / "cpu", **kw)
    m_gpu = train.run(dict(config), tmp_path / "gpu", device="cuda", **kw)
    assert m_gpu["test_accuracy"] >= 0.80, m_gpu["epochs"]
    assert abs(m_gpu["test_accuracy"] - m_cpu["test_accuracy"]) <= 0.01
    # The runs start identical and drift apart only by rounding (the GPU's
    # convolutions sum in another order), so the first epoch agrees closely;
    # later epochs are as different as two seeds would be.
    first_cpu, first_gpu = m_cpu["epochs"][0], m_gpu["epochs"][0]
    assert first_gpu["train_loss"] == pytest.approx(first_cpu["train_loss"], rel=2e-2)


def test_convcore_train_device_cuda_cli(gpu, fmnist, tmp_path, capsys):
    rc = train.main(
        [
            "--device",
            "cuda",
            "--epochs",
            "1",
            "--limit-train",
            "300",
            "--limit-test",
            "200",
            "--progress",
            "none",
            "--no-plots",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "(cuda:0 (" in out and "final test accuracy" in out
    ckpt = tmp_path / "run" / "checkpoint-epoch001.npz"
    assert ckpt.exists()

    # python -m convcore.evaluate --device cuda agrees with the host.
    results = {}
    for device in ("cpu", "cuda"):
        assert evaluate.main([str(ckpt), "--json", "--device", device]) == 0
        results[device] = json.loads(capsys.readouterr().out)
    assert results["cuda"]["test_accuracy"] == pytest.approx(
        results["cpu"]["test_accuracy"], abs=2e-4
    )
    assert results["cuda"]["test_loss"] == pytest.approx(results["cpu"]["test_loss"], rel=1e-4)


# ---------------------------------------------------------------------------
# without a GPU
# ---------------------------------------------------------------------------


@pytest.mark.skipif(cc.is_available(), reason="a CUDA device is visible")
def test_device_cuda_without_a_gpu_is_a_clear_error(fmnist, tmp_path, capsys):
    rc = train.main(["--device", "cuda", "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--device cuda: no CUDA device:" in err
    with pytest.raises(RuntimeError, match="no CUDA device"):
        models.build("tutorial").to("cuda")
    small = dict(SMALL, epochs=1, limit_train=100)
    train.run(small, tmp_path / "cpu", data=fmnist, progress="none", plots=False, log=quiet)
    ckpt = tmp_path / "cpu" / "checkpoint-epoch001.npz"
    assert evaluate.main([str(ckpt), "--device", "cuda"]) == 2
    assert "--device cuda: to: no CUDA device" in capsys.readouterr().err


def test_cpu_only_models_say_so_on_the_device(gpu, fmnist, tmp_path, capsys):
    assert models.CPU_ONLY == ("wide-bn",)
    dev = models.build("wide-bn").to("cuda")  # parameters and buffers move...
    with pytest.raises(NotImplementedError, match="batch_norm: CPU only"):
        dev(cc.to_device(np.zeros((2, 1, 28, 28), np.float32)))  # ...the op says why
    with pytest.raises(train.UsageError, match="wide-bn.*CPU only.*--device cpu"):
        train.run(
            dict(recipe="fast", limit_train=100), tmp_path, data=fmnist, device="cuda", log=quiet
        )
    assert not list(tmp_path.glob("checkpoint-*"))


def test_device_names_are_checked(tmp_path, capsys):
    with pytest.raises(ValueError, match="expected 'cpu', 'cuda' or 'cuda:N'"):
        models.build("tutorial").to("gpu")
    with pytest.raises(ValueError, match="expected 'cpu', 'cuda' or 'cuda:N'"):
        cc.parse_device("cuda:x")
    assert cc.parse_device("cpu") is None and cc.parse_device("cuda") == 0
    assert cc.parse_device("cuda:1") == 1 and cc.parse_device(2) == 2
    rc = train.main(["--device", "tpu", "--epochs", "1", "--out", str(tmp_path / "run")])
    assert rc == 2
    assert "--device: device: expected 'cpu'" in capsys.readouterr().err
