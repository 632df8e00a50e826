"""batch_norm, batch_norm_backward and nn.BatchNorm2d against PyTorch
(float64 reference): forward, every gradient, the running statistics, the
fused ReLU; batch 1, one channel, odd sizes, planes of one value and planes
longer than a kernel chunk; affine off; eval mode; every ISA path; bitwise
determinism across thread counts; errors that name the argument; the layer's
buffers through state_dict, checkpoints and the GPU backend's refusal."""

from __future__ import annotations

import types

import convcore
import fake_cuda
import numpy as np
import pytest
from convcore import checkpoint, models, nn, problems
from oracle import available_isas, bn_running_stats, check, rand

pytestmark = pytest.mark.torch

torch = pytest.importorskip("torch")

# (N, C, H, W)
SHAPES = [
    (3, 5, 7, 1),
    (1, 1, 2, 1),  # two values per channel
    (2, 3, 1, 1),  # planes of one value
    (1, 3, 4, 5),  # batch 1
    (4, 1, 6, 6),  # one channel
    (2, 13, 9, 11),  # channels not a multiple of 8 or 16, odd plane
    (5, 17, 3, 3),
    (1, 2, 50, 61),  # a plane longer than one 2048-value chunk
    (3, 4, 7, 7),
]
LARGE = [problems.parse(p).input_shape for p in problems.BN_LAYERS]


def _params(C, seed, affine=True):
    if not affine:
        return None, None
    return rand((C,), seed + 1), rand((C,), seed + 2)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_shapes(shape, training, relu, isa):
    x = rand(shape, 1) * np.float32(2) + np.float32(0.5)
    w, b = _params(shape[1], 1)
    check("batch_norm", x, w, b, training=training, relu=relu, isa=isa)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES[:4], ids=lambda s: "x".join(map(str, s)))
def test_affine_off(shape, training, isa):
    check("batch_norm", rand(shape, 2), training=training, relu=training, isa=isa)


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("shape", LARGE, ids=lambda s: "x".join(map(str, s)))
def test_model_layers(shape, relu, isa):
    if isa == "scalar" and shape != LARGE[0]:
        pytest.skip("the scalar reference is slow; one large layer is enough for it")
    x = rand(shape, 3)
    w, b = _params(shape[1], 3)
    check("batch_norm", x, w, b, training=True, relu=relu, isa=isa)


def test_model_layer_eval():
    x = rand(LARGE[1], 4)
    w, b = _params(LARGE[1][1], 4)
    check("batch_norm", x, w, b, training=False, relu=True)


@pytest.mark.parametrize("momentum", [0.0, 0.3, 1.0])
def test_momentum_and_eps(momentum):
    x = rand((4, 6, 5, 5), 5)
    w, b = _params(6, 5)
    check("batch_norm", x, w, b, training=True, momentum=momentum, eps=1e-3)


def test_without_running_statistics():
    x = rand((4, 6, 5, 5), 6)
    check("batch_norm", x, *_params(6, 6), training=True, track=False)


@pytest.mark.parametrize(
    "mask", [(True, False, False), (False, True, True), (False, False, True), (False,) * 3]
)
@pytest.mark.parametrize("training", [True, False])
def test_output_mask(mask, training):
    x = rand((3, 5, 4, 4), 7)
    check("batch_norm", x, *_params(5, 7), training=training, relu=True, output_mask=mask)


def test_unbatched_3d():
    check("batch_norm", rand((5, 4, 6), 8), *_params(5, 8), training=True, relu=True)


def test_offset_data_keeps_its_accuracy():
    # Mean 1000, spread 1: the variance is a millionth of the mean square.
    # A one-pass float sum of squares would lose every digit of it.
    x = (rand((100, 8, 14, 14), 9) + np.float32(1000)).astype(np.float32)
    check("batch_norm", x, *_params(8, 9), training=True, relu=True)


def test_empty_batch():
    x = np.zeros((0, 3, 4, 4), np.float32)
    rm, rv = bn_running_stats(3)
    y = convcore.batch_norm(x, rm.copy(), rv.copy(), training=True)
    assert y.shape == x.shape


# ---------------------------------------------------------------------------
# The oracle catches a float32 running sum
# ---------------------------------------------------------------------------


def _float32_running_sum_bn(x, rm, rv, w, b, training, momentum, eps, relu, return_stats):
    """Batch norm whose statistics are float32 running sums (sequential)."""
    C = x.shape[1]
    flat = np.moveaxis(x, 1, 0).reshape(C, -1)
    mean = (np.cumsum(flat, axis=1, dtype=np.float32)[:, -1] / np.float32(flat.shape[1])).astype(
        np.float32
    )
    d = flat - mean[:, None]
    var = (np.cumsum(d * d, axis=1, dtype=np.float32)[:, -1] / np.float32(flat.shape[1])).astype(
        np.float32
    )
    invstd = (np.float32(1) / np.sqrt(var + np.float32(eps))).astype(np.float32)
    y, _, _ = convcore.batch_norm(
        x, rm, rv, w, b, training, momentum, eps, relu=relu, return_stats=True
    )
    return y, mean, invstd


def test_oracle_catches_a_float32_running_sum():
    x = (rand((100, 4, 28, 28), 10) + np.float32(3)).astype(np.float32)
    wrong = types.SimpleNamespace(
        batch_norm=_float32_running_sum_bn, batch_norm_backward=convcore.batch_norm_backward
    )
    with pytest.raises(AssertionError, match="batch_norm.save_"):
        check("batch_norm", x, *_params(4, 10), training=True, impl=wrong)


# ---------------------------------------------------------------------------
# Bitwise the same for any thread count
# ---------------------------------------------------------------------------


def _all_bn(shape, relu):
    x = rand(shape, 11)
    w, b = _params(shape[1], 11)
    rm, rv = bn_running_stats(shape[1])
    y, m, inv = convcore.batch_norm(x, rm, rv, w, b, True, relu=relu, return_stats=True)
    go = rand(shape, 12)
    grads = convcore.batch_norm_backward(go, x, w, m, inv, True, output=y if relu else None)
    ye = convcore.batch_norm(x, rm, rv, w, b, False, relu=relu)
    return [y, m, inv, rm, rv, ye, *grads]


@pytest.mark.parametrize("shape", [LARGE[0], LARGE[2], (3, 5, 7, 1), (1, 1, 50, 61)])
def test_bitwise_across_thread_counts(shape, isa):
    if isa == "scalar" and shape == LARGE[0]:
        pytest.skip("the scalar reference is slow on the largest layer")
    results = {}
    for n in (1, 2, 3):
        convcore.set_num_threads(n)
        results[n] = _all_bn(shape, relu=True)
    for n in (2, 3):
        for i, (a, b) in enumerate(zip(results[1], results[n])):
            assert a.tobytes() == b.tobytes(), f"result {i} differs between 1 and {n} threads"


# ---------------------------------------------------------------------------
# Errors name the argument
# ---------------------------------------------------------------------------


def _args(shape=(2, 3, 4, 4)):
    x = rand(shape, 13)
    rm, rv = bn_running_stats(shape[1])
    return x, rm, rv, *_params(shape[1], 13)


def test_one_value_per_channel_in_training():
    x, rm, rv, w, b = _args((1, 3, 1, 1))
    with pytest.raises(
        ValueError,
        match=r"input: expected more than 1 value per channel when "
        r"training, got input of shape \(1, 3, 1, 1\)",
    ):
        convcore.batch_norm(x, rm, rv, w, b, training=True)
    # eval mode is fine, as in PyTorch
    convcore.batch_norm(x, rm, rv, w, b, training=False)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm2d(3)(x)


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (dict(input=np.zeros((2, 3, 4), np.float32)[0]), ValueError, "input: expected a 3-D"),
        (dict(input=np.zeros((2, 3), np.float32)), ValueError, "input: expected a 3-D .* got 2-D"),
        (dict(input=np.zeros((2, 3, 4, 4))), TypeError, "input: expected a float32"),
        (
            dict(input=np.zeros((2, 3, 4, 8), np.float32)[..., ::2]),
            ValueError,
            "input: expected a C-contiguous",
        ),
        (
            dict(weight=np.ones(4, np.float32)),
            ValueError,
            r"weight: expected shape \(3,\) to match the input's channels, got \(4,\)",
        ),
        (dict(bias=np.ones(2, np.float32)), ValueError, r"bias: expected shape \(3,\)"),
        (dict(bias=np.ones((3, 1), np.float32)), ValueError, "bias: expected a 1-D"),
        (dict(running_mean=np.zeros(5, np.float32)), ValueError, r"running_mean: expected shape"),
        (dict(running_var=np.ones(2, np.float32)), ValueError, r"running_var: expected shape"),
        (dict(running_var=np.ones(3)), TypeError, "running_var: expected a float32"),
        (dict(running_var=None), ValueError, "running_var: expected an array when running_mean"),
        (dict(weight=np.ones(6, np.float32)[::2]), ValueError, "weight: expected a C-contiguous"),
        (dict(eps=-1.0), ValueError, "eps: expected a finite number >= 0"),
        (dict(eps="1"), TypeError, "eps: expected a real number"),
        (dict(momentum=float("nan")), ValueError, "momentum: expected a finite number"),
    ],
)
def test_bad_arguments(change, exc, match):
    x, rm, rv, w, b = _args()
    kw = dict(input=x, running_mean=rm, running_var=rv, weight=w, bias=b, training=True)
    kw.update(change)
    with pytest.raises(exc, match=match):
        convcore.batch_norm(**kw)


def test_eval_needs_running_statistics_and_training_writes_them():
    x, rm, rv, w, b = _args()
    with pytest.raises(ValueError, match="running_mean: expected running_mean and running_var"):
        convcore.batch_norm(x, None, None, w, b, training=False)
    rm.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean: the array is read-only"):
        convcore.batch_norm(x, rm, rv, w, b, training=True)
    convcore.batch_norm(x, rm, rv, w, b, training=False)  # eval only reads them


def test_bad_backward_arguments():
    x, rm, rv, w, b = _args()
    y, m, inv = convcore.batch_norm(x, rm, rv, w, b, True, relu=True, return_stats=True)
    go = rand(x.shape, 14)
    with pytest.raises(ValueError, match=r"grad_output: expected shape \(2, 3, 4, 4\)"):
        convcore.batch_norm_backward(go[:1], x, w, m, inv)
    with pytest.raises(ValueError, match=r"output: expected shape \(2, 3, 4, 4\)"):
        convcore.batch_norm_backward(go, x, w, m, inv, output=y[:, :2].copy())
    with pytest.raises(ValueError, match=r"save_mean: expected shape \(3,\)"):
        convcore.batch_norm_backward(go, x, w, m[:2].copy(), inv)
    with pytest.raises(TypeError, match="save_invstd: expected a float32"):
        convcore.batch_norm_backward(go, x, w, m, inv.astype(np.float64))
    with pytest.raises(ValueError, match="output_mask: expected 3 bools"):
        convcore.batch_norm_backward(go, x, w, m, inv, output_mask=(True,))


# ---------------------------------------------------------------------------
# nn.BatchNorm2d against torch.nn.BatchNorm2d over several steps
# ---------------------------------------------------------------------------


def _close(got, ref, what, rel=64 * 2.0**-24):
    ref = ref.detach().double().numpy() if hasattr(ref, "detach") else ref
    scale = np.abs(ref).max() if np.size(ref) else 0.0
    err = np.abs(np.asarray(got, np.float64) - ref).max() if np.size(ref) else 0.0
    assert err <= rel * max(scale, 1e-30), f"{what}: error {err:.3e}, scale {scale:.3e}"


@pytest.mark.parametrize("momentum", [0.1, 0.25, None])
@pytest.mark.parametrize("relu", [False, True])
def test_layer_steps_against_torch(momentum, relu):
    C = 6
    layer = nn.BatchNorm2d(C, momentum=momentum, relu=relu)
    ref = torch.nn.BatchNorm2d(C, momentum=momentum).double()
    rng = np.random.default_rng(15)
    w = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    layer.load_state_dict({"weight": w, "bias": b}, strict=False)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(w))
        ref.bias.copy_(torch.from_numpy(b))
    for step in range(4):
        x = (rng.standard_normal((8, C, 5, 7)) * (1 + step) + step).astype(np.float32)
        go = rng.standard_normal(x.shape).astype(np.float32)
        layer.zero_grad()
        y = layer(x)
        xt = torch.from_numpy(x).double().requires_grad_()
        yt = ref(xt)
        if relu:
            yt = torch.relu(yt)
        yt.backward(torch.from_numpy(go * (y > 0) if relu else go).double())
        gi = layer.backward(go)
        _close(y, yt, f"output, step {step}")
        _close(gi, xt.grad, f"grad_input, step {step}")
        _close(layer.weight.grad, ref.weight.grad, f"grad_weight, step {step}", rel=256 * 2.0**-24)
        _close(layer.bias.grad, ref.bias.grad, f"grad_bias, step {step}", rel=256 * 2.0**-24)
        _close(layer.running_mean, ref.running_mean, f"running_mean, step {step}")
        _close(layer.running_var, ref.running_var, f"running_var, step {step}")
        assert layer.num_batches_tracked == int(ref.num_batches_tracked) == step + 1
        ref.weight.grad = ref.bias.grad = None
    layer.eval()
    ref.eval()
    x = rng.standard_normal((3, C, 4, 4)).astype(np.float32)
    yt = ref(torch.from_numpy(x).double())
    _close(layer(x), torch.relu(yt) if relu else yt, "eval output")
    assert layer.num_batches_tracked == 4  # eval does not count


def test_layer_affine_off_and_repr():
    layer = nn.BatchNorm2d(3, affine=False)
    assert layer.parameters() == [] and layer.weight is None
    assert list(layer.state_dict()) == ["running_mean", "running_var", "num_batches_tracked"]
    x = rand((2, 3, 4, 4), 16)
    y = layer(x)
    assert layer.backward(np.ones_like(y)).shape == x.shape
    assert repr(nn.BatchNorm2d(4, relu=True)) == (
        "BatchNorm2d(4, eps=1e-05, momentum=0.1, affine=True, relu=True "
        "(BatchNorm2d followed by ReLU))"
    )
    with pytest.raises(ValueError, match="num_features: expected an int >= 1"):
        nn.BatchNorm2d(0)


# ---------------------------------------------------------------------------
# Buffers: state_dict, load_state_dict, checkpoints, devices
# ---------------------------------------------------------------------------


def _bn_model(seed=0, dropout=None):
    rng = models.seed_stream(seed, 0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False, rng=rng),
        nn.BatchNorm2d(4, relu=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 14 * 14, 10, rng=rng),
    )
    model.input_grad = False
    model.pack_parameters()
    return model


def _train_steps(model, steps=3):
    rng = np.random.default_rng(17)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(steps):
        x = rng.standard_normal((6, 1, 28, 28)).astype(np.float32)
        loss_fn(model(x), rng.integers(0, 10, 6))
        model.zero_grad()
        model.backward(loss_fn.backward())


def test_state_dict_has_torchs_names_order_and_dtypes():
    model = _bn_model()
    _train_steps(model)
    state = model.state_dict()
    ref = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(4),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 14 * 14, 10),
    )
    assert list(state) == list(ref.state_dict())
    assert state["1.num_batches_tracked"].dtype == np.int64
    assert state["1.num_batches_tracked"].shape == () and int(state["1.num_batches_tracked"]) == 3
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    fresh = _bn_model(seed=1)
    fresh.load_state_dict(state)
    for k, v in fresh.state_dict().items():
        assert v.dtype == state[k].dtype and v.tobytes() == state[k].tobytes(), k
    bad = dict(state)
    bad["1.num_batches_tracked"] = np.float32(3)
    with pytest.raises(ValueError, match="num_batches_tracked has dtype float32"):
        fresh.load_state_dict(bad)
    with pytest.raises(KeyError, match="missing.*running_var"):
        fresh.load_state_dict({k: v for k, v in state.items() if "running_var" not in k})


def test_checkpoint_round_trip_is_bitwise(tmp_path):
    # wide-bn: the speedrun's network, rebuilt by name in the checkpoint's
    # dry restore and in build_model.
    model = models.build("wide-bn", seed=0)
    x = rand((6, 1, 28, 28), 17)
    loss_fn = convcore.nn.CrossEntropyLoss()
    for _ in range(2):
        loss_fn(model(x), np.arange(6) % 10)
        model.zero_grad()
        model.backward(loss_fn.backward())
    state = model.state_dict()
    assert state["1.num_batches_tracked"] == 2 and state["1.running_mean"].any()
    ckpt = checkpoint.Checkpoint(config={"model": "wide-bn", "seed": 0}, epoch=1, model_state=state)
    path = tmp_path / "bn.npz"
    checkpoint.save(path, ckpt)
    loaded = checkpoint.load(path)
    assert list(loaded.model_state) == list(state)
    for k, v in state.items():
        got = loaded.model_state[k]
        assert got.dtype == v.dtype and got.shape == v.shape and got.tobytes() == v.tobytes(), k
    restored = loaded.build_model()
    assert not restored.training
    x = rand((5, 1, 28, 28), 18)
    assert restored(x).tobytes() == model.eval()(x).tobytes()
    # Integer entries are for counters only: an int64 weight is refused.
    bad = dict(state)
    bad["14.bias"] = np.zeros(10, np.int64)
    checkpoint.save(path, checkpoint.Checkpoint(ckpt.config, 1, bad))
    with pytest.raises(checkpoint.CheckpointError, match="14.bias has dtype int64"):
        checkpoint.load(path)


def test_gpu_backend_refuses_clearly(monkeypatch):
    fake_cuda.install(monkeypatch)
    model = _bn_model()
    model.to("cuda")
    bn = model[1]
    assert isinstance(bn.running_mean, fake_cuda.FakeDeviceArray)
    assert isinstance(bn.running_var, fake_cuda.FakeDeviceArray)
    assert bn.num_batches_tracked == 0
    x = fake_cuda.FakeDeviceArray(rand((2, 1, 28, 28), 19))
    with pytest.raises(NotImplementedError, match="batch_norm: CPU only in this version"):
        model(x)
    d = fake_cuda.FakeDeviceArray(rand((2, 3, 4, 4), 20))
    with pytest.raises(NotImplementedError, match="batch_norm: CPU only"):
        convcore.batch_norm_backward(d, d, None, d, d)
    # ... and back: the buffers are numpy arrays again, with their values.
    model.to("cpu")
    assert isinstance(bn.running_var, np.ndarray) and (bn.running_var == 1).all()


def test_every_isa_is_listed():
    names = convcore.implementations("batchnorm2d_fwd")
    assert names[-1] == "batchnorm2d_fwd_f32__ref"
    assert convcore.implementations("batchnorm2d_bwd")[-1] == "batchnorm2d_bwd_f32__ref"
    if "avx512" in available_isas():
        assert names[0] == "batchnorm2d_fwd_f32__avx512"
