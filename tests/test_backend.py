"""The backend seam: one op vocabulary per backend, dispatch by array type,
one argument rule for every backend, layers that leave the process alone,
and an import graph without cycles or upward imports.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import convcore
import fake_cuda
import numpy as np
import pytest
from convcore import _backend, _process, models, nn, optim
from convcore._backend import HOST, backend_of

PACKAGE = Path(convcore.__file__).parent


# ---------------------------------------------------------------------------
# every backend offers the same ops, with the same arguments
# ---------------------------------------------------------------------------


def _backends():
    return [HOST, _backend.GpuBackend(fake_cuda.FakeExt(), fake_cuda.FakeDeviceArray)]


@pytest.mark.parametrize("op", _backend.OPS)
def test_every_backend_offers_the_op_with_one_signature(op):
    sigs = {type(b).__name__: inspect.signature(getattr(b, op)) for b in _backends()}
    params = {name: list(s.parameters) for name, s in sigs.items()}
    assert len({tuple(p) for p in params.values()}) == 1, params


def test_dispatch_follows_the_array_types(monkeypatch):
    ext = fake_cuda.install(monkeypatch)
    x = np.zeros((1, 1, 4, 4), np.float32)
    d = fake_cuda.FakeDeviceArray(x.copy())
    assert backend_of(x) is HOST and backend_of(None, x) is HOST and backend_of() is HOST
    gpu = backend_of(x, None, d)
    assert gpu is _backend.DEVICES["cuda"] and gpu.ext is ext
    # a device array among host arrays: the device decides, and the op then
    # names the host array
    with pytest.raises(TypeError, match=r"weight: expected a convcore.cuda.DeviceArray"):
        convcore.conv2d(d, np.zeros((1, 1, 3, 3), np.float32))


def test_the_stricter_rule_wins_pad_value_on_every_backend(monkeypatch):
    # pad(value=True) was a TypeError on the host and accepted on the GPU.
    fake_cuda.install(monkeypatch)
    x = np.ones((1, 1, 2, 2), np.float32)
    for arr in (x, fake_cuda.FakeDeviceArray(x.copy())):
        for bad in (True, np.bool_(False), "1", 1j):
            with pytest.raises(TypeError, match="value: expected a real number"):
                convcore.pad(arr, (1, 1), value=bad)
        with pytest.raises(ValueError, match="value: padding mode 'reflect'"):
            convcore.pad(arr, (1, 1), mode="reflect", value=2.0)


def test_the_stricter_rule_wins_in_the_training_ops():
    # The GPU bindings take float32 arrays of one shape; numpy would have
    # computed in another dtype or broadcast.  The host now refuses too.
    a = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match="input: expected a float32 array, got dtype int64"):
        HOST.relu(np.ones((2, 3), np.int64), False)
    with pytest.raises(
        ValueError, match=r"src: expected shape \(2, 3\) \(that of dst\), got \(3,\)"
    ):
        HOST.add_(a, np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"b: expected shape \(2, 3\) \(that of a\), got \(1, 3\)"):
        HOST.multiply(a, np.ones((1, 3), np.float32))
    with pytest.raises(TypeError, match="output: expected a float32 array, got dtype float64"):
        HOST.relu_backward(a, np.ones((2, 3)), False)
    with pytest.raises(
        ValueError, match=r"output: expected shape \(2, 3\) \(that of grad_output\)"
    ):
        HOST.relu_backward(a, a[:1], False)
    with pytest.raises(TypeError, match="float32"):
        nn.ReLU()(np.ones((2, 3)))


def test_the_device_is_parsed_in_one_place(monkeypatch):
    assert _backend.parse_device("cpu") is None and _backend.parse_device("cuda:3") == 3
    assert convcore.cuda.parse_device is _backend.parse_device
    with pytest.raises(ValueError, match="device: expected 'cpu', 'cuda' or 'cuda:N'"):
        _backend.resolve_device("gpu")
    assert _backend.resolve_device("cpu") == (HOST, None)
    fake_cuda.install(monkeypatch)
    backend, index = _backend.resolve_device("cuda")
    assert index == 0 and backend is _backend.DEVICES["cuda"]
    with pytest.raises(RuntimeError, match=r"no CUDA device 1 \(1 visible\)"):
        _backend.resolve_device("cuda:1")


# ---------------------------------------------------------------------------
# layers never change process-wide state; the programs do
# ---------------------------------------------------------------------------


def test_layers_leave_blas_and_malloc_alone(monkeypatch):
    import convcore._blas
    import convcore._memory

    def refuse(*_):
        raise AssertionError("a layer changed process-wide state")

    monkeypatch.setattr(convcore._blas, "set_blas_threads", refuse)
    monkeypatch.setattr(convcore._memory, "keep_freed_memory", refuse)
    monkeypatch.setattr(_process, "set_blas_threads", refuse)
    monkeypatch.setattr(_process, "keep_freed_memory", refuse)
    for name in models.NAMES:
        model = models.build(name, seed=0)
        opt = optim.Adam(model.parameters())
        loss_fn = nn.CrossEntropyLoss()
        x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
        loss_fn(model(x), np.array([1, 2, 3]))
        model.backward(loss_fn.backward())
        opt.step()


def test_the_training_program_tunes_the_process(monkeypatch, fmnist, tmp_path):
    from convcore import train

    calls = []
    monkeypatch.setattr(_process, "set_blas_threads", lambda n: calls.append(("blas", n)))
    monkeypatch.setattr(_process, "keep_freed_memory", lambda: calls.append(("malloc",)))
    config = dict(model="tutorial", epochs=1, batch_size=50, limit_train=100)
    kw = dict(data=fmnist, progress="none", plots=False, limit_test=100, log=lambda *_: None)
    train.run(config, tmp_path / "run", **kw)
    assert calls == [("blas", 1), ("malloc",)]


# ---------------------------------------------------------------------------
# the import graph of python/convcore: no cycle, no upward import
# ---------------------------------------------------------------------------

# Lower layers first; a module may import only from lower layers (a package
# from its own submodules).  A new module must be placed here.
LAYERS = [
    ["_core", "_args", "_blas", "_cli", "_files", "_memory", "_progress", "problems", "__main__"],
    ["_backend.host", "_backend.gpu"],
    ["_backend"],
    ["_runtime", "_process", "_parameter", "functional", "cuda", "data"],
    ["nn"],
    ["augment", "optim", "models", "plots"],
    ["checkpoint"],
    ["evaluate", "predict"],
    ["train"],
    [""],  # the package itself
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, anywhere in the file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("convcore"):
                target = node.module.removeprefix("convcore").lstrip(".")
            else:
                continue
            for alias in node.names:  # `from . import nn` names a module
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if sub in RANK else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "convcore" or alias.name.startswith("convcore."):
                    found.add(alias.name.removeprefix("convcore").lstrip("."))
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer():
    missing = sorted(set(_graph()) - set(RANK))
    assert not missing, f"place these modules in LAYERS: {missing}"


def test_imports_point_down_only():
    upward = [
        f"{m or 'convcore'} -> {d or 'convcore'}"
        for m, deps in _graph().items()
        for d in deps
        if RANK.get(d, len(LAYERS)) >= RANK[m]
    ]
    assert not upward, upward


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in graph.get(m, ()):
            if state.get(d) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*path, m, d])}")
            if d not in state:
                visit(d, [*path, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
