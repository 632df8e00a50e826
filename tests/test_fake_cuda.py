"""tests/fake_cuda.py against the binding it stands in for (``_core.cuda``).

The fake is only worth its tests if it takes the same calls as the compiled
module: the same functions, the same parameter names in the same order, and
the same refusals of shapes and labels.  The signatures are read from the
compiled module (pybind11 writes them as the first docstring line), so this
needs a build with CUDA -- no GPU; CI builds one wherever nvcc exists.
"""

from __future__ import annotations

import inspect

import convcore
import fake_cuda
import numpy as np
import pytest
from convcore import _core

BINDING = getattr(_core, "cuda", None)
needs_binding = pytest.mark.skipif(
    BINDING is None,
    reason="convcore was built without CUDA (build_info()['cuda'] is False): "
    "no _core.cuda to compare the fake with",
)


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def binding_params(fn) -> list[str]:
    """Parameter names of a pybind11 function, from its signature line
    ``name(a: T, b: T = ...) -> R`` (``self`` and a bare ``*`` dropped)."""
    line = (fn.__doc__ or "").splitlines()[0]
    name = getattr(fn, "__name__", "?")
    assert line.startswith(f"{name}("), f"{name}: no signature line in its docstring: {line!r}"
    depth = 0
    for i, ch in enumerate(line):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                inner = line[len(name) + 1 : i]
                break
    names = [p.split(":")[0].split("=")[0].strip() for p in _split_top_level(inner)]
    return [n for n in names if n not in ("self", "*")]


def fake_params(fn) -> list[str]:
    return [n for n in inspect.signature(fn).parameters if n != "self"]


def _public(obj) -> dict:
    return {
        n: getattr(obj, n)
        for n in dir(obj)
        if not n.startswith("_")
        and callable(getattr(obj, n))
        and not inspect.isclass(getattr(obj, n))
    }


@needs_binding
def test_fake_has_the_binding_functions_with_the_same_parameters():
    ours, theirs = _public(fake_cuda.FakeExt), _public(BINDING)
    assert sorted(ours) == sorted(theirs), (
        f"only in the binding: {sorted(set(theirs) - set(ours))}; "
        f"only in the fake: {sorted(set(ours) - set(theirs))}"
    )
    for name in sorted(theirs):
        assert fake_params(ours[name]) == binding_params(theirs[name]), name


@needs_binding
def test_fake_device_array_methods_are_the_binding_ones():
    fake, real = fake_cuda.FakeDeviceArray, BINDING.DeviceArray
    methods = [n for n, v in vars(fake).items() if not n.startswith("_") and callable(v)]
    assert methods, "the fake DeviceArray has no methods?"
    for name in methods:
        assert hasattr(real, name), f"DeviceArray.{name} is only in the fake"
        assert fake_params(getattr(fake, name)) == binding_params(getattr(real, name)), name
    props = [n for n, v in vars(fake).items() if isinstance(v, property)]
    for name in props:
        assert isinstance(inspect.getattr_static(real, name), property), name


def test_signature_parser():
    def f():
        pass

    f.__doc__ = "f(a: typing.Sequence[int, float], *, b: dict[str, int] = {}) -> None\n\nText."
    assert binding_params(f) == ["a", "b"]


# ---------------------------------------------------------------------------
# the binding's rules, in the fake (they run everywhere)
# ---------------------------------------------------------------------------


@pytest.fixture
def ext():
    return fake_cuda.FakeExt()


def _d(a):
    return fake_cuda.FakeDeviceArray(np.ascontiguousarray(a))


def test_multiply_and_add_need_equal_shapes(ext):
    a, row = _d(np.ones((2, 3), np.float32)), _d(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"b: expected shape \(2, 3\) \(that of a\), got \(1, 3\)"):
        ext.multiply(a, row)
    with pytest.raises(ValueError, match=r"src: expected shape \(2, 3\) \(that of dst\)"):
        ext.add_(a, row)
    with pytest.raises(ValueError, match="expected shape"):
        ext.multiply(a, _d(np.ones(6, np.float32)))  # same size, other shape
    out = ext.multiply(a, _d(np.full((2, 3), 2, np.float32)))
    np.testing.assert_array_equal(out.numpy(), np.full((2, 3), 2, np.float32))


@pytest.mark.parametrize(
    "target,match",
    [
        (np.array([0, 3], np.int64), r"labels must be in \[0, 3\), got 3 at index 1"),
        (np.array([-1, 0], np.int64), r"labels must be in \[0, 3\), got -1 at index 0"),
        (np.array([0, 1], np.int32), "expected an int64 array of shape"),
        (np.array([0], np.int64), r"shape \(2,\)"),
    ],
    ids=["too-large", "negative", "int32", "length"],
)
def test_cross_entropy_checks_labels(ext, target, match):
    with pytest.raises(ValueError, match=match):
        ext.cross_entropy(_d(np.zeros((2, 3), np.float32)), target, 0.5)


@needs_binding
@pytest.mark.skipif(
    not convcore.cuda.is_available(), reason=f"no CUDA device: {convcore.cuda.unavailable_reason()}"
)
@pytest.mark.gpu
def test_fake_and_binding_refuse_the_same_calls(ext):
    """On a GPU: the same bad calls fail in both, with the same messages."""
    cases = [
        ("multiply", lambda m, d: m.multiply(d(np.ones((2, 3))), d(np.ones((1, 3))))),
        ("add_", lambda m, d: m.add_(d(np.ones((2, 3))), d(np.ones(6)))),
        (
            "cross_entropy",
            lambda m, d: m.cross_entropy(d(np.zeros((2, 3))), np.array([0, 3], np.int64), 1.0),
        ),
    ]
    for name, call in cases:
        with pytest.raises(ValueError) as fake_err:
            call(ext, lambda a: _d(np.asarray(a, np.float32)))
        with pytest.raises(ValueError) as real_err:
            call(BINDING, lambda a: BINDING.to_device(np.asarray(a, np.float32), 0))
        assert str(fake_err.value).split(":")[0] == str(real_err.value).split(":")[0], name
