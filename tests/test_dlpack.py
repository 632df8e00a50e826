"""CPU arrays that export DLPack (PyTorch CPU tensors) in the functional API:
read without a copy, under the numpy rules, results as numpy arrays."""

from __future__ import annotations

import convcore
import numpy as np
import pytest
from convcore import nn, optim
from convcore._backend import HOST

torch = pytest.importorskip("torch")


def _t(shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random(shape, dtype=np.float32))


def test_torch_cpu_tensors_are_read_without_a_copy():
    t = _t((2, 3, 5, 5))
    a = HOST.float_input(t, "input")
    assert isinstance(a, np.ndarray) and a.ctypes.data == t.data_ptr()
    idx = torch.zeros((2, 2), dtype=torch.int64)
    assert HOST.index_input(idx, "indices").ctypes.data == idx.data_ptr()


def test_every_op_takes_torch_tensors_and_returns_numpy():
    x, w, b = _t((2, 3, 6, 6)), _t((4, 3, 3, 3), 1), _t((4,), 2)
    xn, wn, bn = x.numpy(), w.numpy(), b.numpy()
    y = convcore.conv2d(x, w, b, padding=1)
    assert type(y) is np.ndarray
    np.testing.assert_array_equal(y, convcore.conv2d(xn, wn, bn, padding=1))
    g = torch.from_numpy(np.ones_like(y))
    for got, want in zip(
        convcore.conv2d_backward(g, x, w, padding=1),
        convcore.conv2d_backward(g.numpy(), xn, wn, padding=1),
    ):
        assert type(got) is np.ndarray
        np.testing.assert_array_equal(got, want)
    out, idx = convcore.max_pool2d(x, 2, return_indices=True)
    np.testing.assert_array_equal(out, convcore.max_pool2d(xn, 2))
    gi = convcore.max_pool2d_backward(torch.from_numpy(out), torch.from_numpy(idx), x.shape)
    assert type(gi) is np.ndarray and gi.shape == tuple(x.shape)
    p = convcore.pad(x, (1, 2, 3, 4), mode="reflect")
    np.testing.assert_array_equal(p, convcore.pad(xn, (1, 2, 3, 4), mode="reflect"))
    back = convcore.pad_backward(torch.from_numpy(p), x.shape, (1, 2, 3, 4), mode="reflect")
    assert type(back) is np.ndarray and back.shape == tuple(x.shape)


def test_the_numpy_rules_hold_for_tensors():
    w = _t((4, 3, 3, 3))
    with pytest.raises(TypeError, match=r"input: expected a float32 array, got dtype float64"):
        convcore.conv2d(_t((1, 3, 5, 5)).double(), w)
    with pytest.raises(ValueError, match=r"input: expected a C-contiguous array"):
        convcore.conv2d(_t((1, 3, 5, 5)).transpose(2, 3), w)
    with pytest.raises(
        ValueError, match=r"weight: the tensor requires grad; pass tensor.detach\(\)"
    ):
        convcore.conv2d(_t((1, 3, 5, 5)), w.clone().requires_grad_())
    with pytest.raises(TypeError, match="indices: expected an int64 array"):
        convcore.max_pool2d_backward(
            _t((1, 1, 2, 2)), torch.zeros((1, 1, 2, 2), dtype=torch.int32), (1, 1, 4, 4)
        )


class _OtherDevice:
    """A DLPack producer on a device the host cannot read (Metal)."""

    def __dlpack__(self, **kwargs):
        raise AssertionError("must not be exported")

    def __dlpack_device__(self):
        return (8, 0)


class _CudaTensor(_OtherDevice):
    def __dlpack_device__(self):
        return (2, 0)


def test_device_memory_is_refused_on_the_cpu_path():
    with pytest.raises(TypeError, match="input: expected a CPU array"):
        convcore.max_pool2d(_OtherDevice(), 2)
    with pytest.raises(TypeError, match=r"got a GPU array .*_CudaTensor"):
        convcore.max_pool2d(_CudaTensor(), 2)


def test_read_only_memory_is_refused_where_an_op_writes():
    ro = np.ones((2, 3), np.float32)
    ro.setflags(write=False)
    ro_dl = np.from_dlpack(ro)  # read-only through DLPack too
    for a in (ro, ro_dl):
        assert nn.ReLU()(a) is not a  # out of place: fine
        with pytest.raises(ValueError, match="input: the array is read-only"):
            nn.ReLU(inplace=True)(a)
        with pytest.raises(ValueError, match="grad_output: the array is read-only"):
            relu = nn.ReLU(inplace=True)
            relu(np.ones((2, 3), np.float32))
            relu.backward(a)
    p = nn.Parameter(np.ones(3))
    p.data.setflags(write=False)
    opt = optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="param: the array is read-only"):
        opt.step()
