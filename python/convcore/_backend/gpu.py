"""The GPU backend: :class:`DeviceArray` arguments, the kernels of the
compiled CUDA module (``convcore._core.cuda``).

The same op names and arguments as the host backend (see
:data:`convcore._backend.OPS`).  A backend wraps one "extension" (the
compiled module, or a stand-in with the same functions such as
tests/fake_cuda.py) and one array type.
"""

from __future__ import annotations

import numpy as np

from .. import _core
from .._args import conv_output_shape

#: The compiled GPU module; None when convcore was built without CUDA.
EXT = getattr(_core, "cuda", None)

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

if EXT is not None:
    CudaError = EXT.CudaError
    DeviceArray = EXT.DeviceArray

    def _no_implicit_numpy(self, *args, **kwargs):
        raise TypeError(
            "convcore.cuda.DeviceArray cannot be converted to numpy implicitly; "
            "call .numpy() to copy it to the host"
        )

    DeviceArray.__doc__ = _DEVICE_ARRAY_DOC
    DeviceArray.__module__ = "convcore.cuda"
    DeviceArray.__array__ = _no_implicit_numpy
else:

    class CudaError(RuntimeError):
        """A CUDA runtime error (never raised by a build without CUDA)."""

    class DeviceArray:
        """A C-contiguous float32 or int64 array in GPU memory.  This build
        has no CUDA path, so none can be created."""

        def __init__(self, *args, **kwargs):
            raise RuntimeError(
                "convcore.cuda.DeviceArray: no CUDA device: convcore built without CUDA "
                "(rebuild with CONVCORE_CUDA=ON and nvcc on PATH)"
            )

    CudaError.__module__ = DeviceArray.__module__ = "convcore.cuda"

_BATCH_NORM_CPU_ONLY = (
    "batch_norm: CPU only in this version; there is no CUDA kernel for batch normalisation "
    "(keep the model on the CPU: model.to('cpu'), or train with --device cpu)"
)

# A linear layer is a 1x1 convolution of a 1x1 image: y (N, out) = x (N, in)
# @ w.T + b runs on the GPU's implicit-GEMM convolution kernels, which take
# the batch as the GEMM's N dimension and the features as its reduction.
_LINEAR_ARGS = (1, 1, 0, 0, 0, 0, 1, 1, 1)


def _as_1x1(x, features: int, name: str):
    if x.ndim < 1 or x.shape[-1] != features:
        raise ValueError(f"{name}: expected shape (..., {features}), got {tuple(x.shape)}")
    return x.reshape((-1, features, 1, 1))


class GpuBackend:
    """Arrays of ``array_type`` in GPU memory, ops of ``ext``."""

    name = "cuda"
    #: an optimiser step is one kernel that needs no scratch array
    needs_scratch = False

    def __init__(self, ext, array_type):
        self.ext = ext
        self.array_type = array_type

    # -- devices -------------------------------------------------------------
    def is_built(self) -> bool:
        return self.ext is not None

    def device_count(self) -> int:
        return self.ext.device_count() if self.ext is not None else 0

    def unavailable_reason(self) -> str:
        if self.ext is None:
            return "convcore built without CUDA (rebuild with CONVCORE_CUDA=ON and nvcc on PATH)"
        why = self.ext.unavailable_reason()
        if not why:
            return ""
        info = _core.build_info()
        return (
            f"convcore built with CUDA {info['cuda_version']} ({info['cuda_architectures']}) "
            f"but {why}"
        )

    def describe(self, device: int) -> str:
        return f"cuda:{device} ({self.ext.device_name(device)})"

    # -- arrays --------------------------------------------------------------
    def float_input(self, a, name: str, ref: str | None = None):
        if isinstance(a, self.array_type):
            return a
        where = f" (as {ref} is)" if ref else ""
        raise TypeError(
            f"{name}: expected a convcore.cuda.DeviceArray on the GPU{where}, got "
            f"{type(a).__name__}; copy it with convcore.cuda.to_device({name}) "
            "(all arrays of a call must be on one device)"
        )

    index_input = float_input

    def add_batch(self, a):
        return a.reshape((1, *a.shape))

    def unbatch(self, a):
        return None if a is None else a.reshape(a.shape[1:])

    def reshape(self, a, shape):
        return a.reshape(shape)

    def device_index(self, a) -> int:
        return a.device

    def device_of(self, a) -> str:
        return f"cuda:{a.device}"

    def from_host(self, a: np.ndarray, device: int | None = None, like=None):
        return self.ext.to_device(a, like.device if like is not None else device)

    def to_numpy(self, a) -> np.ndarray:
        return a.numpy()

    def host_copy(self, a) -> np.ndarray:
        return a.numpy()

    def zeros(self, shape, like=None, device: int | None = None):
        return self.ext.zeros(list(shape), "float32", like.device if like is not None else device)

    def zero_(self, a) -> None:
        a.zero_()

    def copy_from_host(self, dst, src: np.ndarray) -> None:
        dst.copy_from_host(np.asarray(src).astype(np.float32, casting="same_kind", copy=False))

    def view(self, flat, start: int, shape):
        return flat.subarray(start, shape)

    def is_view(self, a, flat, start: int, shape) -> bool:
        return (
            isinstance(a, self.array_type)
            and a.data_ptr == flat.data_ptr + 4 * start
            and tuple(a.shape) == tuple(shape)
        )

    # -- the kernels of the functional API -----------------------------------
    def conv2d_forward(self, *args):
        return self.ext.conv2d_forward(*args)

    def conv2d_backward(self, *args):
        return self.ext.conv2d_backward(*args)

    # The GPU runs the fused pairs as the two ops they stand for (ReLU in place).
    def conv2d_relu_forward(self, *args):
        return self.ext.relu_forward(self.ext.conv2d_forward(*args), True)

    def conv2d_relu_backward(self, grad_output, output, *args):
        grad_output = self.ext.relu_backward(grad_output, output, True)
        return self.ext.conv2d_backward(grad_output, *args)

    def max_pool2d_forward(self, *args):
        # The GPU kernel always writes the indices; return_indices (the
        # last argument) only tells the caller whether to keep them.
        return self.ext.max_pool2d_forward(*args[:-1])

    def max_pool2d_backward(self, grad_output, indices, shape, relu_input=None):
        dx = self.ext.max_pool2d_backward(grad_output, indices, list(shape))
        # Through a ReLU: the two ops it stands for (the mask in place).
        return dx if relu_input is None else self.ext.relu_backward(dx, relu_input, True)

    # -- the layers' training path: the ops it stands for, with int64 indices
    def max_pool2d_train_forward(self, x, kh, kw, sh, sw, ph, pw, ceil_mode):
        return self.ext.max_pool2d_forward(x, kh, kw, sh, sw, ph, pw, 1, 1, ceil_mode)

    def max_pool2d_train_backward(
        self, grad_output, workspace, shape, kh, kw, sh, sw, ph, pw, ceil_mode, output=None
    ):
        # Through the ReLU: grad_output masked by output > 0 (a copy), then
        # scattered.  Where windows overlap, a masked sum can differ from the
        # host's in the sign of a zero.
        if output is not None:
            grad_output = self.ext.relu_backward(grad_output, output, False)
        return self.ext.max_pool2d_backward(grad_output, workspace, list(shape))

    def conv2d_relu_max_pool2d_train_forward(self, *args):
        # The conv2d_forward arguments (input to groups), then the pool's.
        y = self.conv2d_relu_forward(*args[:12])
        return self.max_pool2d_train_forward(y, *args[12:])

    def conv2d_relu_max_pool2d_weight_backward(self, *args):
        # grad_output, workspace, output, input, weight, the nine conv2d
        # arguments, the seven pool arguments, need_weight, need_bias.
        g, ws, out, x, w = args[:5]
        conv, pool, (need_w, need_b) = args[5:14], args[14:21], args[21:]
        shape = conv_output_shape(x.shape, w.shape, conv)
        dy = self.max_pool2d_train_backward(g, ws, shape, *pool, out)
        return self.conv2d_backward(dy, x, w, *conv, False, need_w, need_b)[1:]

    def pad_forward(self, *args):
        return self.ext.pad_forward(*args)

    def pad_backward(self, grad_output, shape, *args):
        return self.ext.pad_backward(grad_output, list(shape), *args)

    # Batch normalisation has no CUDA kernel yet: a clear refusal, never a
    # silent copy to the host and back.
    def batch_norm_forward(self, *args):
        raise NotImplementedError(_BATCH_NORM_CPU_ONLY)

    def batch_norm_backward(self, *args):
        raise NotImplementedError(_BATCH_NORM_CPU_ONLY)

    # -- the rest of a training step -----------------------------------------
    def relu(self, x, inplace: bool):
        return self.ext.relu_forward(x, bool(inplace))

    def relu_backward(self, grad_output, output, inplace: bool):
        return self.ext.relu_backward(grad_output, output, bool(inplace))

    def multiply(self, a, b):
        return self.ext.multiply(a, b)

    def add_(self, dst, src) -> None:
        self.ext.add_(dst, src)

    def linear(self, x, weight, bias, relu: bool = False):
        out_features, in_features = weight.shape
        y = self.ext.conv2d_forward(
            _as_1x1(x, in_features, "input"),
            weight.reshape((out_features, in_features, 1, 1)),
            bias,
            *_LINEAR_ARGS,
        )
        if relu:
            y = self.ext.relu_forward(y, True)
        return y.reshape((*x.shape[:-1], out_features))

    def linear_backward(
        self,
        grad_output,
        x,
        weight,
        need_input: bool,
        need_weight: bool,
        need_bias: bool,
        relu_output=None,
    ):
        out_features, in_features = weight.shape
        if relu_output is not None:
            grad_output = self.ext.relu_backward(grad_output, relu_output, True)
        gi, gw, gb = self.ext.conv2d_backward(
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

    def cross_entropy(self, logits, target: np.ndarray, scale):
        """(grad on the device, sum of the row losses, predictions on the host);
        waits for the device."""
        target = np.ascontiguousarray(target, dtype=np.int64)
        return self.ext.cross_entropy(logits, target, float(scale))

    # The optimiser constants arrive as numpy float32 values (those the host
    # update uses); float() widens them exactly and the binding narrows them back.

    def adam_step(
        self,
        p,
        g,
        m,
        v,
        *,
        one_minus_beta1,
        beta2,
        one_minus_beta2,
        bc2_sqrt,
        eps,
        neg_step,
        wd,
        tmp=None,
    ) -> None:
        k = (one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt, eps, neg_step, wd)
        self.ext.adam_step(p, g, m, v, *(float(c) for c in k))

    def sgd_step(
        self, p, g, buf, *, momentum, one_minus_dampening, wd, neg_lr, nesterov, first, tmp=None
    ) -> None:
        k = (momentum, one_minus_dampening, wd, neg_lr)
        self.ext.sgd_step(p, g, buf, *(float(c) for c in k), bool(nesterov), bool(first))
