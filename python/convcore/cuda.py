"""convcore's optional GPU path: device arrays and the same ops on NVIDIA GPUs.

The functional API (``convcore.conv2d``, ``max_pool2d``, ``pad`` and their
backward functions) accepts :class:`DeviceArray` arguments and then runs on
the GPU and returns DeviceArrays, so activations stay on the device between
layers.  Arguments, results and errors are those of the CPU functions;
``max_pool2d`` (values and indices), ``pad`` and both backward passes are
bitwise equal to the CPU path, the convolutions agree within float32
rounding.  Results are deterministic run to run (no float atomics).

Quick start::

    import numpy as np, convcore, convcore.cuda as cc
    x = cc.to_device(np.random.rand(8, 1, 28, 28).astype(np.float32))
    w = cc.to_device(np.random.rand(6, 1, 5, 5).astype(np.float32))
    y = convcore.conv2d(x, w, padding=2)         # DeviceArray (8, 6, 28, 28)
    y.numpy()                                    # copy back to the host

Ops are queued on the device's default stream and return at once; a copy
to the host waits for them.  An error inside a kernel therefore surfaces at
the next synchronising call; ``CUDA_LAUNCH_BLOCKING=1`` makes it immediate.
``max_pool2d_backward`` waits, to report a bad index like the CPU path.

Without a CUDA build (``convcore.build_info()['cuda']`` is False) or without
a visible device, :func:`is_available` is False and :func:`to_device`
raises ``RuntimeError`` saying which.
"""

from __future__ import annotations

import numpy as np

from . import _core
from ._args import as_int, shape_tuple
from ._args import output_mask as _output_mask

_ext = getattr(_core, "cuda", None)  # None: the module was built without CUDA

__all__ = [
    "CudaError",
    "DeviceArray",
    "device_count",
    "device_index",
    "device_name",
    "empty",
    "from_dlpack",
    "is_available",
    "is_built",
    "parse_device",
    "synchronize",
    "to_device",
    "unavailable_reason",
    "zeros",
]


if _ext is not None:
    CudaError = _ext.CudaError
    DeviceArray = _ext.DeviceArray
else:

    class CudaError(RuntimeError):
        """A CUDA runtime error (never raised by a build without CUDA)."""

    class DeviceArray:
        """A C-contiguous float32 or int64 array in GPU memory.  This build
        has no CUDA path, so none can be created."""

        def __init__(self, *args, **kwargs):
            raise RuntimeError(f"convcore.cuda.DeviceArray: no CUDA device: {unavailable_reason()}")


_DEVICE_ARRAY_DOC = """A C-contiguous float32 or int64 array in GPU memory.

Created by :func:`to_device`, :func:`from_dlpack`, :func:`empty`,
:func:`zeros`, or returned by an op.  Attributes ``shape``, ``dtype``
(a numpy dtype), ``ndim``, ``size``, ``nbytes``, ``device`` (the CUDA
device index) and ``data_ptr`` (the device address); methods ``numpy()``
(copy to the host), ``copy()``, ``reshape(shape)`` (a view, one size may
be -1), ``subarray(start, shape)`` (a view of elements
``start ...`` of the flattened array), ``copy_from_host(array)`` (in
place, same shape and dtype), ``zero_()``, ``__dlpack__`` and
``__dlpack_device__`` (zero-copy exchange with PyTorch, CuPy, JAX...).
Implicit conversion to numpy (``numpy.asarray``) is refused: call
``.numpy()``.
"""


def _no_implicit_numpy(self, *args, **kwargs):
    raise TypeError(
        "convcore.cuda.DeviceArray cannot be converted to numpy implicitly; "
        "call .numpy() to copy it to the host"
    )


if _ext is not None:
    DeviceArray.__doc__ = _DEVICE_ARRAY_DOC
    DeviceArray.__module__ = __name__
    DeviceArray.__array__ = _no_implicit_numpy


def is_built() -> bool:
    """Whether this convcore was compiled with the CUDA path."""
    return _ext is not None


def device_count() -> int:
    """Number of visible CUDA devices; 0 without a CUDA build, driver or device."""
    return _ext.device_count() if _ext is not None else 0


def unavailable_reason() -> str:
    """Why the GPU path cannot run here, or ``""`` when it can.

    For example ``"convcore built without CUDA"`` or ``"convcore built with
    CUDA 13.0 (80-real,90-real,90-virtual) but no device visible
    (cudaGetDeviceCount: ...)"``.
    """
    if _ext is None:
        return "convcore built without CUDA (rebuild with CONVCORE_CUDA=ON and nvcc on PATH)"
    why = _ext.unavailable_reason()
    if not why:
        return ""
    info = _core.build_info()
    return (
        f"convcore built with CUDA {info['cuda_version']} ({info['cuda_architectures']}) but {why}"
    )


def is_available() -> bool:
    """Whether the GPU path can run: built with CUDA and a device is visible."""
    return device_count() > 0


def _require(what: str) -> None:
    if not is_available():
        raise RuntimeError(f"convcore.cuda.{what}: no CUDA device: {unavailable_reason()}")


def to_device(array, device: int = 0) -> DeviceArray:
    """Copy a numpy array to the GPU.

    Args:
        array: float32 or int64 numpy array (a non-contiguous array is made
            contiguous on the host first; other dtypes are a ``TypeError``).
        device: CUDA device index.

    Returns:
        A :class:`DeviceArray` of the same shape and dtype.

    Raises:
        RuntimeError: no CUDA build or no device (the message says which).
        TypeError: not a numpy array, or a dtype other than float32/int64.
        CudaError: the copy failed (out of memory...).
    """
    _require("to_device")
    if not isinstance(array, np.ndarray):
        raise TypeError(f"to_device: expected a numpy.ndarray, got {type(array).__name__}")
    return _ext.to_device(array, as_int(device, "device"))


def from_dlpack(obj) -> DeviceArray:
    """Wrap a CUDA array from another library (PyTorch, CuPy, JAX...) without
    copying, through the DLPack protocol.

    The array must be C-contiguous float32 or int64 in CUDA memory; the
    memory stays owned by the producer and is released through its deleter
    (after the device is idle) when the DeviceArray goes away.  The reverse
    direction is ``torch.from_dlpack(device_array)``.

    Raises:
        RuntimeError: no CUDA build or no device.
        TypeError: not a DLPack CUDA array, or another dtype.
        ValueError: not C-contiguous.
    """
    _require("from_dlpack")
    return _ext.from_dlpack(obj)


def _new(shape, dtype, device, zero):
    _require("zeros" if zero else "empty")
    dims = shape_tuple((shape,) if isinstance(shape, int) else shape, "shape")
    name = np.dtype(dtype).name
    fn = _ext.zeros if zero else _ext.empty
    return fn(list(dims), name, as_int(device, "device"))


def empty(shape, dtype=np.float32, device: int = 0) -> DeviceArray:
    """An uninitialised float32 or int64 DeviceArray of ``shape``."""
    return _new(shape, dtype, device, False)


def zeros(shape, dtype=np.float32, device: int = 0) -> DeviceArray:
    """A zero-filled float32 or int64 DeviceArray of ``shape``."""
    return _new(shape, dtype, device, True)


def synchronize(device: int = 0) -> None:
    """Wait until every op queued on ``device`` has finished (raises the
    CudaError of a kernel that failed)."""
    _require("synchronize")
    _ext.synchronize(as_int(device, "device"))


# ---------------------------------------------------------------------------
# Dispatch from the functional API (convcore.functional calls these; the
# argument normalisation helpers are shared with the CPU functions there).
# ---------------------------------------------------------------------------


def _foreign_gpu_array(a) -> str | None:
    """A description of `a` if it is some other library's GPU array."""
    if isinstance(a, (np.ndarray, DeviceArray)) or a is None:
        return None
    kind = None
    try:
        if hasattr(a, "__dlpack_device__") and a.__dlpack_device__()[0] in (2, 13):
            kind = "CUDA"
    except Exception:  # a broken __dlpack_device__ is not our concern here
        kind = None
    if kind is None and hasattr(a, "__cuda_array_interface__"):
        kind = "CUDA"
    if kind is None:
        return None
    return f"{type(a).__module__}.{type(a).__name__}"


def _wants_device(*arrays) -> bool:
    """True if any argument is a DeviceArray (run on the GPU); raises a clear
    error for another library's GPU array; False for the CPU path."""
    found = False
    for a in arrays:
        if type(a) is np.ndarray or a is None:
            continue
        if isinstance(a, DeviceArray):
            found = True
            continue
        foreign = _foreign_gpu_array(a)
        if foreign is not None:
            if _ext is None:
                raise TypeError(
                    f"got a GPU array ({foreign}), but convcore was built without CUDA "
                    "(convcore.build_info()['cuda'] is False): copy it to the host as a numpy "
                    "array, or rebuild convcore with CONVCORE_CUDA=ON"
                )
            raise TypeError(
                f"got a GPU array ({foreign}): wrap it without copying with "
                "convcore.cuda.from_dlpack(array) to run on the GPU"
            )
    return found


def _device_array(a, name: str, ref_name: str | None = None) -> DeviceArray:
    if isinstance(a, DeviceArray):
        return a
    where = f" (as {ref_name} is)" if ref_name else ""
    raise TypeError(
        f"{name}: expected a convcore.cuda.DeviceArray on the GPU{where}, got {type(a).__name__}; "
        f"copy it with convcore.cuda.to_device({name}) (all arrays of a call must be on one device)"
    )


def _batched(a: DeviceArray, name: str):
    if a.ndim == 3:
        return a.reshape((1, *a.shape)), True
    if a.ndim != 4:
        raise ValueError(
            f"{name}: expected a 3-D (C, H, W) or 4-D (N, C, H, W) array, got {a.ndim}-D"
        )
    return a, False


def _unbatch(a):
    return None if a is None else a.reshape(a.shape[1:])


def _conv2d(input, weight, bias, stride, padding, dilation, groups):
    from .functional import _conv_args

    input = _device_array(input, "input")
    weight = _device_array(weight, "weight", "input")
    if bias is not None:
        bias = _device_array(bias, "bias", "input")
        if bias.ndim != 1:
            raise ValueError(
                f"bias: expected a 1-D array of shape (out_channels,), got {bias.ndim}-D"
            )
    x, unbatched = _batched(input, "input")
    out = _ext.conv2d_forward(
        x, weight, bias, *_conv_args(x, weight, stride, padding, dilation, groups)
    )
    return _unbatch(out) if unbatched else out


def _conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups, output_mask):
    from .functional import _conv_args

    grad_output = _device_array(grad_output, "grad_output")
    input = _device_array(input, "input", "grad_output")
    weight = _device_array(weight, "weight", "grad_output")
    mask = _output_mask(output_mask)
    x, unbatched = _batched(input, "input")
    if unbatched:
        if grad_output.ndim != 3:
            raise ValueError(
                f"grad_output: expected a 3-D array for a 3-D input, got {grad_output.ndim}-D"
            )
        grad_output = grad_output.reshape((1, *grad_output.shape))
    gi, gw, gb = _ext.conv2d_backward(
        grad_output, x, weight, *_conv_args(x, weight, stride, padding, dilation, groups), *mask
    )
    if unbatched and gi is not None:
        gi = _unbatch(gi)
    return gi, gw, gb


def _max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    from .functional import _pool_args

    input = _device_array(input, "input")
    args = _pool_args(kernel_size, stride, padding, dilation)
    x, unbatched = _batched(input, "input")
    out, idx = _ext.max_pool2d_forward(x, *args, bool(ceil_mode))
    if unbatched:
        out, idx = _unbatch(out), _unbatch(idx)
    return (out, idx) if return_indices else out


def _max_pool2d_backward(grad_output, indices, input_shape):
    grad_output = _device_array(grad_output, "grad_output")
    indices = _device_array(indices, "indices", "grad_output")
    shape = shape_tuple(input_shape, "input_shape")
    if len(shape) == 3:
        if grad_output.ndim != 3 or indices.ndim != 3:
            raise ValueError("grad_output, indices: expected 3-D arrays for a 3-D input_shape")
        out = _ext.max_pool2d_backward(
            grad_output.reshape((1, *grad_output.shape)),
            indices.reshape((1, *indices.shape)),
            [1, *shape],
        )
        return _unbatch(out)
    if len(shape) != 4:
        raise ValueError(f"input_shape: expected 3 or 4 sizes, got {len(shape)}")
    return _ext.max_pool2d_backward(grad_output, indices, list(shape))


def _pad(input, pad, mode, value):
    from .functional import _pad_args, _pad_mode

    input = _device_array(input, "input")
    left, right, top, bottom = _pad_args(pad)
    mode = _pad_mode(mode)
    if mode != "constant" and value not in (None, 0, 0.0):
        raise ValueError(f"value: padding mode '{mode}' does not take a fill value, got {value!r}")
    value = 0.0 if value is None else float(value)
    if input.ndim == 1 and len(tuple(pad)) == 2:
        out = _ext.pad_forward(input.reshape((1, *input.shape)), left, right, 0, 0, mode, value)
        return _unbatch(out)
    return _ext.pad_forward(input, left, right, top, bottom, mode, value)


def _pad_backward(grad_output, input_shape, pad, mode):
    from .functional import _pad_args, _pad_mode

    grad_output = _device_array(grad_output, "grad_output")
    shape = shape_tuple(input_shape, "input_shape")
    left, right, top, bottom = _pad_args(pad)
    mode = _pad_mode(mode)
    if len(shape) == 1:
        out = _ext.pad_backward(
            grad_output.reshape((1, *grad_output.shape)), [1, *shape], left, right, 0, 0, mode
        )
        return _unbatch(out)
    return _ext.pad_backward(grad_output, list(shape), left, right, top, bottom, mode)


# ---------------------------------------------------------------------------
# The rest of a training step on the GPU (convcore.nn and convcore.optim call
# these when their arrays are DeviceArrays).
# ---------------------------------------------------------------------------


def parse_device(device) -> int | None:
    """``'cpu'`` -> None; ``'cuda'`` -> 0; ``'cuda:N'`` or an int N -> N.

    Raises:
        ValueError: any other spelling.
    """
    if isinstance(device, (int, np.integer)) and not isinstance(device, bool):
        index = int(device)
    elif isinstance(device, str) and device == "cpu":
        return None
    elif isinstance(device, str) and (device == "cuda" or device.startswith("cuda:")):
        tail = device[5:] if device != "cuda" else "0"
        if not tail.isdigit():
            raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        index = int(tail)
    else:
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if index < 0:
        raise ValueError(f"device: a CUDA device index must be >= 0, got {index}")
    return index


def device_index(device) -> int | None:
    """:func:`parse_device`, and for a CUDA device, the check that it can be
    used here.

    Raises:
        ValueError: an unknown spelling.
        RuntimeError: no CUDA build, no usable device, or no device of that
            index (the message says which).
    """
    index = parse_device(device)
    if index is not None:
        if not is_available():
            raise RuntimeError(f"no CUDA device: {unavailable_reason()}")
        if index >= device_count():
            raise RuntimeError(f"no CUDA device {index} ({device_count()} visible)")
    return index


def device_name(device: int = 0) -> str:
    """The GPU's name, e.g. ``'NVIDIA H100 80GB HBM3'``."""
    _require("device_name")
    return _ext.device_name(as_int(device, "device"))


def _relu(x: DeviceArray, inplace: bool) -> DeviceArray:
    return _ext.relu_forward(x, bool(inplace))


def _relu_backward(grad_output: DeviceArray, output: DeviceArray, inplace: bool) -> DeviceArray:
    return _ext.relu_backward(grad_output, output, bool(inplace))


def _multiply(a: DeviceArray, b: DeviceArray) -> DeviceArray:
    return _ext.multiply(a, b)


def _add_(dst: DeviceArray, src: DeviceArray) -> None:
    _ext.add_(dst, src)


def _as_1x1(x: DeviceArray, features: int, name: str) -> DeviceArray:
    if x.ndim < 1 or x.shape[-1] != features:
        raise ValueError(f"{name}: expected shape (..., {features}), got {tuple(x.shape)}")
    return x.reshape((-1, features, 1, 1))


# A linear layer is a 1x1 convolution of a 1x1 image: y (N, out) = x (N, in)
# @ w.T + b runs on the GPU's implicit-GEMM convolution kernels, which take
# the batch as the GEMM's N dimension and the features as its reduction.
_LINEAR_ARGS = (1, 1, 0, 0, 0, 0, 1, 1, 1)


def _linear(x: DeviceArray, weight: DeviceArray, bias: DeviceArray | None) -> DeviceArray:
    out_features, in_features = weight.shape
    y = _ext.conv2d_forward(
        _as_1x1(x, in_features, "input"),
        weight.reshape((out_features, in_features, 1, 1)),
        bias,
        *_LINEAR_ARGS,
    )
    return y.reshape((*x.shape[:-1], out_features))


def _linear_backward(grad_output, x, weight, need_input: bool, need_weight: bool, need_bias: bool):
    out_features, in_features = weight.shape
    gi, gw, gb = _ext.conv2d_backward(
        _as_1x1(grad_output, out_features, "grad_output"),
        _as_1x1(x, in_features, "input"),
        weight.reshape((out_features, in_features, 1, 1)),
        *_LINEAR_ARGS,
        bool(need_input),
        bool(need_weight),
        bool(need_bias),
    )
    if gi is not None:
        gi = gi.reshape(tuple(x.shape))
    if gw is not None:
        gw = gw.reshape((out_features, in_features))
    return gi, gw, gb


def _cross_entropy(logits: DeviceArray, target: np.ndarray, scale: float):
    """(grad on the device, sum of the row losses, predictions on the host)."""
    return _ext.cross_entropy(logits, np.ascontiguousarray(target, dtype=np.int64), float(scale))


# The optimiser constants arrive as numpy float32 values (those the host
# update uses); float() widens them exactly and the binding narrows them back.


def _adam_step(p, g, m, v, *, one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt, eps, neg_step, wd):
    k = (one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt, eps, neg_step, wd)
    _ext.adam_step(p, g, m, v, *(float(c) for c in k))


def _sgd_step(p, g, buf, *, momentum, one_minus_dampening, wd, neg_lr, nesterov, first):
    k = (momentum, one_minus_dampening, wd, neg_lr)
    _ext.sgd_step(p, g, buf, *(float(c) for c in k), bool(nesterov), bool(first))
