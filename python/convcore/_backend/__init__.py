"""The backend seam (private): which implementation runs an op.

``backend_of(*arrays)`` answers from the types of an op's arrays: numpy
arrays (and CPU arrays that export DLPack) run on the host backend,
:class:`convcore.cuda.DeviceArray` on the GPU backend.  Each backend offers
the op names of :data:`OPS` with the same arguments, so ``functional``, the
layers and the optimisers call ``backend_of(x).relu(x, inplace)`` and never
ask where they are.  A new backend (host arrays in a blocked layout, a
test double) is a class with those names and one :func:`register` call.

``resolve_device`` turns a device spelling (``'cpu'``, ``'cuda'``,
``'cuda:N'``, an index) into its backend and index: the one place that
parses ``--device``.
"""

from __future__ import annotations

import numpy as np

from .gpu import EXT, CudaError, DeviceArray, GpuBackend
from .host import HostBackend

__all__ = [
    "HOST",
    "OPS",
    "CudaError",
    "DeviceArray",
    "GpuBackend",
    "HostBackend",
    "backend_of",
    "device_backend",
    "parse_device",
    "register",
    "resolve_device",
]

#: The op names every backend offers, with the same arguments.
OPS = (
    # arrays
    "float_input",
    "index_input",
    "add_batch",
    "unbatch",
    "reshape",
    "device_index",
    "device_of",
    "from_host",
    "to_numpy",
    "host_copy",
    "zeros",
    "zero_",
    "copy_from_host",
    "view",
    "is_view",
    # the functional API's kernels
    "conv2d_forward",
    "conv2d_backward",
    "conv2d_relu_forward",
    "conv2d_relu_backward",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "pad_forward",
    "pad_backward",
    "batch_norm_forward",
    "batch_norm_backward",
    # the layers' training path (workspaces in the backend's own form)
    "max_pool2d_train_forward",
    "max_pool2d_train_backward",
    "conv2d_relu_max_pool2d_train_forward",
    "conv2d_relu_max_pool2d_weight_backward",
    # the rest of a training step
    "relu",
    "relu_backward",
    "multiply",
    "add_",
    "linear",
    "linear_backward",
    "cross_entropy",
    "adam_step",
    "sgd_step",
)

HOST = HostBackend()

#: backend by array type (exact type; subclasses are found by isinstance)
ARRAY_TYPES: dict[type, object] = {np.ndarray: HOST}
#: backend by device kind ('cpu', 'cuda')
DEVICES: dict[str, object] = {"cpu": HOST}


def register(kind: str, backend, array_type: type | None = None) -> None:
    """Make ``backend`` the one for device ``kind`` and for ``array_type``."""
    DEVICES[kind] = backend
    if array_type is not None:
        ARRAY_TYPES[array_type] = backend


register("cuda", GpuBackend(EXT, DeviceArray), DeviceArray if EXT is not None else None)


def _foreign_gpu_array(a) -> str | None:
    """A description of ``a`` if it is some other library's GPU array."""
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


def _classify(a):
    """The backend of an object whose type is not registered: a registered
    type's subclass, the host (anything else: DLPack CPU arrays, lists, which
    the host backend accepts or rejects), or a TypeError for another
    library's GPU array."""
    for t, backend in ARRAY_TYPES.items():
        if isinstance(a, t):
            return backend
    foreign = _foreign_gpu_array(a)
    if foreign is not None:
        if not DEVICES["cuda"].is_built():
            raise TypeError(
                f"got a GPU array ({foreign}), but convcore was built without CUDA "
                "(convcore.build_info()['cuda'] is False): copy it to the host as a numpy "
                "array, or rebuild convcore with CONVCORE_CUDA=ON"
            )
        raise TypeError(
            f"got a GPU array ({foreign}): wrap it without copying with "
            "convcore.cuda.from_dlpack(array) to run on the GPU"
        )
    return HOST


def backend_of(*arrays):
    """The backend that runs an op on ``arrays`` (None entries are skipped):
    the first array that is not a host array decides; all host arrays (or
    none) give the host backend.  Raises TypeError for another library's GPU
    array, saying how to pass it."""
    found = HOST
    for a in arrays:
        if a is None or type(a) is np.ndarray:
            continue
        backend = ARRAY_TYPES.get(type(a))
        if backend is None:
            backend = _classify(a)
        if found is HOST:
            found = backend
    return found


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


def device_backend(index: int | None):
    """The backend of a parsed device: the host for None, else the GPU's."""
    return HOST if index is None else DEVICES["cuda"]


def resolve_device(device):
    """``(backend, index)`` of a device spelling, checked usable here.

    Raises:
        ValueError: an unknown spelling.
        RuntimeError: no CUDA build, no usable device, or no device of that
            index (the message says which).
    """
    index = parse_device(device)
    backend = device_backend(index)
    if index is not None:
        count = backend.device_count()
        if count == 0:
            raise RuntimeError(f"no CUDA device: {backend.unavailable_reason()}")
        if index >= count:
            raise RuntimeError(f"no CUDA device {index} ({count} visible)")
    return backend, index
