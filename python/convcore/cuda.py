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

from . import _backend
from ._args import as_int, shape_tuple
from ._backend import CudaError, DeviceArray, parse_device

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


def _gpu():
    """The GPU backend (tests may register a stand-in for it)."""
    return _backend.DEVICES["cuda"]


def is_built() -> bool:
    """Whether this convcore was compiled with the CUDA path."""
    return _gpu().is_built()


def device_count() -> int:
    """Number of visible CUDA devices; 0 without a CUDA build, driver or device."""
    return _gpu().device_count()


def unavailable_reason() -> str:
    """Why the GPU path cannot run here, or ``""`` when it can.

    For example ``"convcore built without CUDA"`` or ``"convcore built with
    CUDA 13.0 (80-real,90-real,90-virtual) but no device visible
    (cudaGetDeviceCount: ...)"``.
    """
    return _gpu().unavailable_reason()


def is_available() -> bool:
    """Whether the GPU path can run: built with CUDA and a device is visible."""
    return device_count() > 0


def _require(what: str):
    if not is_available():
        raise RuntimeError(f"convcore.cuda.{what}: no CUDA device: {unavailable_reason()}")
    return _gpu().ext


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
    ext = _require("to_device")
    if not isinstance(array, np.ndarray):
        raise TypeError(f"to_device: expected a numpy.ndarray, got {type(array).__name__}")
    return ext.to_device(array, as_int(device, "device"))


def from_dlpack(obj) -> DeviceArray:
    """Wrap a CUDA array from another library (PyTorch, CuPy, JAX...) without
    copying, through the DLPack protocol.

    The array must be C-contiguous float32 or int64 in CUDA memory; the
    memory stays owned by the producer and is released through its deleter
    (after the device is idle) when the DeviceArray goes away.  The reverse
    direction is ``torch.from_dlpack(device_array)``.  (CPU arrays need no
    wrapping: the functional API reads them through DLPack itself.)

    Raises:
        RuntimeError: no CUDA build or no device.
        TypeError: not a DLPack CUDA array, or another dtype.
        ValueError: not C-contiguous.
    """
    return _require("from_dlpack").from_dlpack(obj)


def _new(shape, dtype, device, zero):
    ext = _require("zeros" if zero else "empty")
    dims = shape_tuple((shape,) if isinstance(shape, int) else shape, "shape")
    name = np.dtype(dtype).name
    fn = ext.zeros if zero else ext.empty
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
    _require("synchronize").synchronize(as_int(device, "device"))


def device_index(device) -> int | None:
    """:func:`parse_device`, and for a CUDA device, the check that it can be
    used here.

    Raises:
        ValueError: an unknown spelling.
        RuntimeError: no CUDA build, no usable device, or no device of that
            index (the message says which).
    """
    return _backend.resolve_device(device)[1]


def device_name(device: int = 0) -> str:
    """The GPU's name, e.g. ``'NVIDIA H100 80GB HBM3'``."""
    return _require("device_name").device_name(as_int(device, "device"))
