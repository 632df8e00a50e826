"""A stand-in for the compiled GPU module (``convcore._core.cuda``) that keeps
"device" arrays in host memory, for testing the Python side of the GPU path
on machines without a GPU.

It is not a GPU emulator: conv, pooling and padding call the CPU kernels,
and the training ops below are numpy transcriptions of the kernels in
csrc/cuda/train_ops.cu.  What it tests is the plumbing above the kernels --
that ``model.to('cuda')``, the layers, the loss, the optimisers, the
checkpoints and ``convcore-train --device cuda`` keep every array of a step
on the device, hand the right arrays to the right ops, and move state
between host and device correctly.  Like the real DeviceArray, a
:class:`FakeDeviceArray` refuses to become a numpy array implicitly and
refuses numpy arithmetic, and every op refuses host arrays, so a code path
that silently falls back to numpy fails here.  The kernels themselves are
checked by the host emulation (csrc/cuda/emulation) and, on a GPU, by
tests/test_cuda.py.
"""

from __future__ import annotations

import numpy as np
from convcore import _core

_F32 = np.float32


class CudaError(RuntimeError):
    pass


class FakeDeviceArray:
    """A C-contiguous float32 or int64 array "on device 0" (host memory)."""

    __array_ufunc__ = None  # numpy arithmetic on it raises TypeError

    def __init__(self, host: np.ndarray):
        assert host.flags.c_contiguous and host.dtype in (np.float32, np.int64)
        self._a = host

    def __array__(self, *args, **kwargs):
        raise TypeError("FakeDeviceArray cannot be converted to numpy implicitly")

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    device = property(lambda self: 0)
    data_ptr = property(lambda self: self._a.ctypes.data)

    def __len__(self):
        return len(self._a)

    def numpy(self) -> np.ndarray:
        return self._a.copy()

    def copy(self) -> FakeDeviceArray:
        return FakeDeviceArray(self._a.copy())

    def reshape(self, shape) -> FakeDeviceArray:
        view = self._a.reshape(tuple(shape))
        assert np.shares_memory(view, self._a) or self._a.size == 0
        return FakeDeviceArray(view)

    def subarray(self, start: int, shape) -> FakeDeviceArray:
        n = int(np.prod(shape))
        if start < 0 or start + n > self._a.size:
            raise ValueError("subarray: out of range")
        return FakeDeviceArray(self._a.reshape(-1)[start : start + n].reshape(tuple(shape)))

    def copy_from_host(self, array) -> None:
        if not isinstance(array, np.ndarray) or array.dtype != self.dtype:
            raise TypeError("copy_from_host: dtype mismatch")
        if array.shape != self.shape:
            raise ValueError("copy_from_host: shape mismatch")
        self._a[...] = array

    def zero_(self) -> None:
        self._a[...] = 0

    def __repr__(self) -> str:
        return f"FakeDeviceArray(shape={self.shape}, dtype={self.dtype})"


def _dev(a, name="array") -> np.ndarray:
    """The host storage of a device argument; a host array is an error."""
    if not isinstance(a, FakeDeviceArray):
        raise TypeError(f"{name}: expected a DeviceArray, got {type(a).__name__}")
    return a._a


def _same_shape(a, name, ref, ref_name) -> None:
    """The binding's rule for elementwise ops: equal shapes, no broadcasting."""
    if a.shape != ref.shape:
        raise ValueError(f"{name}: expected shape {ref.shape} (that of {ref_name}), got {a.shape}")


def _wrap(a) -> FakeDeviceArray | None:
    return None if a is None else FakeDeviceArray(np.ascontiguousarray(a))


class FakeExt:
    """The functions of ``convcore._core.cuda``, on FakeDeviceArrays."""

    CudaError = CudaError
    DeviceArray = FakeDeviceArray

    def __init__(self):
        self.calls: dict[str, int] = {}

    def _count(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1

    # -- devices and memory
    def device_count(self):
        return 1

    def unavailable_reason(self):
        return ""

    def device_name(self, device):
        return "fake GPU (host memory, tests/fake_cuda.py)"

    def synchronize(self, device):
        pass

    def driver_version(self):
        return 0

    def runtime_version(self):
        return 0

    def from_dlpack(self, obj):
        raise TypeError("from_dlpack: the fake device (tests/fake_cuda.py) has no DLPack")

    def to_device(self, array, device):
        assert device == 0
        if array.dtype not in (np.float32, np.int64):
            raise TypeError("to_device: expected float32 or int64")
        return FakeDeviceArray(np.array(array, order="C", copy=True))

    def zeros(self, shape, dtype, device):
        return FakeDeviceArray(np.zeros(tuple(shape), dtype))

    def empty(self, shape, dtype, device):
        return FakeDeviceArray(np.full(tuple(shape), 7, dtype))

    # -- the kernels of the functional API: the CPU ones (the binding's
    # parameter names, pinned by tests/test_fake_cuda.py)
    def conv2d_forward(
        self,
        input,
        weight,
        bias,
        stride_h,
        stride_w,
        pad_top,
        pad_bottom,
        pad_left,
        pad_right,
        dilation_h,
        dilation_w,
        groups,
    ):
        self._count("conv2d_forward")
        b = None if bias is None else _dev(bias, "bias")
        geometry = (stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right)
        return _wrap(
            _core.conv2d_forward(
                _dev(input, "input"),
                _dev(weight, "weight"),
                b,
                *geometry,
                dilation_h,
                dilation_w,
                groups,
            )
        )

    def conv2d_backward(
        self,
        grad_output,
        input,
        weight,
        stride_h,
        stride_w,
        pad_top,
        pad_bottom,
        pad_left,
        pad_right,
        dilation_h,
        dilation_w,
        groups,
        need_input,
        need_weight,
        need_bias,
    ):
        self._count("conv2d_backward")
        geometry = (stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right)
        out = _core.conv2d_backward(
            _dev(grad_output, "grad_output"),
            _dev(input, "input"),
            _dev(weight, "weight"),
            *geometry,
            dilation_h,
            dilation_w,
            groups,
            need_input,
            need_weight,
            need_bias,
        )
        return tuple(_wrap(a) for a in out)

    def max_pool2d_forward(
        self,
        input,
        kernel_h,
        kernel_w,
        stride_h,
        stride_w,
        pad_h,
        pad_w,
        dilation_h,
        dilation_w,
        ceil_mode,
    ):
        out, idx = _core.max_pool2d_forward(
            _dev(input, "input"),
            kernel_h,
            kernel_w,
            stride_h,
            stride_w,
            pad_h,
            pad_w,
            dilation_h,
            dilation_w,
            ceil_mode,
        )
        return _wrap(out), _wrap(idx)

    def max_pool2d_backward(self, grad_output, indices, input_shape):
        return _wrap(_core.max_pool2d_backward(_dev(grad_output), _dev(indices), input_shape))

    def pad_forward(self, input, left, right, top, bottom, mode, value):
        return _wrap(_core.pad_forward(_dev(input), left, right, top, bottom, mode, value))

    def pad_backward(self, grad_output, input_shape, left, right, top, bottom, mode):
        return _wrap(
            _core.pad_backward(_dev(grad_output), input_shape, left, right, top, bottom, mode)
        )

    # -- train_ops.cu, transcribed
    def relu_forward(self, input, inplace):
        self._count("relu_forward")
        a = _dev(input)
        y = np.maximum(a, _F32(0), out=a if inplace else None)
        return input if inplace else FakeDeviceArray(y)

    def relu_backward(self, grad_output, output, inplace):
        self._count("relu_backward")
        g = _dev(grad_output)
        out = np.multiply(g, _dev(output) > 0, out=g if inplace else None)
        return grad_output if inplace else FakeDeviceArray(out)

    def multiply(self, a, b):
        self._count("multiply")
        _same_shape(_dev(b, "b"), "b", _dev(a, "a"), "a")
        return FakeDeviceArray(_dev(a) * _dev(b))

    def add_(self, dst, src):
        self._count("add_")
        d = _dev(dst, "dst")
        _same_shape(_dev(src, "src"), "src", d, "dst")
        np.add(d, _dev(src), out=d)

    def cross_entropy(self, logits, target, scale):
        self._count("cross_entropy")
        z = _dev(logits, "logits")
        if z.ndim != 2 or z.dtype != np.float32:
            raise ValueError(f"logits: expected a 2-D float32 array, got shape {z.shape}")
        N, C = z.shape
        if C < 1:
            raise ValueError(f"logits: expected at least one class, got shape {z.shape}")
        target = np.asarray(target)
        if target.dtype != np.int64 or target.shape != (N,):
            raise ValueError(
                f"target: expected an int64 array of shape ({N},), got dtype {target.dtype} "
                f"and {target.shape}"
            )
        bad = np.flatnonzero((target < 0) | (target >= C))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"target: labels must be in [0, {C}), got {target[i]} at index {i}")
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        rows = np.arange(len(target))
        total = float(np.sum(np.log(s[:, 0], dtype=np.float64) - z[rows, target]))
        g = e / s
        g[rows, target] -= _F32(1)
        g *= _F32(scale)
        return FakeDeviceArray(g), total, _dev(logits).argmax(axis=1)

    @staticmethod
    def _disjoint(*arrays):
        arrays = [a for a in arrays if a is not None]
        for i, a in enumerate(arrays):
            for b in arrays[i + 1 :]:
                if np.shares_memory(a, b):
                    raise ValueError("optimiser arrays: expected separate arrays")

    def adam_step(
        self,
        param,
        grad,
        exp_avg,
        exp_avg_sq,
        one_minus_beta1,
        beta2,
        one_minus_beta2,
        bias_correction2_sqrt,
        eps,
        neg_step_size,
        weight_decay,
    ):
        self._count("adam_step")
        p, g, m, v = (_dev(a) for a in (param, grad, exp_avg, exp_avg_sq))
        omb1, b2, omb2, bc2 = one_minus_beta1, beta2, one_minus_beta2, bias_correction2_sqrt
        neg_step, wd = neg_step_size, weight_decay
        self._disjoint(p, g, m, v)
        if _F32(wd) != 0:
            g = g + p * _F32(wd)
        m += (g - m) * _F32(omb1)
        v *= _F32(b2)
        v += (g * _F32(omb2)) * g
        p += (m / (np.sqrt(v) / _F32(bc2) + _F32(eps))) * _F32(neg_step)

    def sgd_step(
        self,
        param,
        grad,
        momentum_buffer,
        momentum,
        one_minus_dampening,
        weight_decay,
        neg_lr,
        nesterov,
        first,
    ):
        self._count("sgd_step")
        p, g, buf = _dev(param), _dev(grad), momentum_buffer
        omd, wd = one_minus_dampening, weight_decay
        self._disjoint(p, g, None if buf is None else _dev(buf))
        if _F32(wd) != 0:
            g = g + p * _F32(wd)
        if buf is not None:
            b = _dev(buf)
            if first:
                b[...] = g
            else:
                b *= _F32(momentum)
                b += g * _F32(omd)
            g = g + b * _F32(momentum) if nesterov else b
        p += g * _F32(neg_lr)


def install(monkeypatch) -> FakeExt:
    """Register a GPU backend on a FakeExt (for FakeDeviceArrays, and as the
    "cuda" device) for the rest of the test; returns the FakeExt."""
    from convcore import _backend

    ext = FakeExt()
    backend = _backend.GpuBackend(ext, FakeDeviceArray)
    monkeypatch.setitem(_backend.DEVICES, "cuda", backend)
    monkeypatch.setitem(_backend.ARRAY_TYPES, FakeDeviceArray, backend)
    return ext
