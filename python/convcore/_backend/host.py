"""The host backend: numpy arrays (and any CPU array that exports DLPack),
the compiled CPU kernels for conv, pooling, padding and batch norm, numpy for the rest.

Every backend offers the op names of :data:`convcore._backend.OPS` with the
same arguments; this one is the reference the others are checked against.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from .. import _core

_F32 = np.float32

# DLPack device types (dlpack.h): the host path takes kDLCPU memory only.
_DL_CPU = 1


def _from_dlpack(a, name: str) -> np.ndarray:
    """A zero-copy numpy view of a CPU array that exports ``__dlpack__``."""
    try:
        kind = a.__dlpack_device__()[0]
    except Exception:  # no (or a broken) __dlpack_device__: let numpy decide
        kind = _DL_CPU
    if kind != _DL_CPU:
        raise TypeError(
            f"{name}: expected a CPU array, got {type(a).__module__}.{type(a).__name__} "
            f"on DLPack device type {kind}"
        )
    if getattr(a, "requires_grad", False):
        raise ValueError(
            f"{name}: the tensor requires grad; pass tensor.detach() (convcore computes "
            "gradients with the explicit backward functions, not autograd)"
        )
    try:
        return np.from_dlpack(a)
    except (BufferError, TypeError, RuntimeError) as e:
        raise TypeError(f"{name}: cannot be read through DLPack: {e}") from None


def _host_array(a, name: str, kind: str) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "__dlpack__") and not isinstance(a, type):
        return _from_dlpack(a, name)
    raise TypeError(f"{name}: expected a numpy.ndarray of {kind}, got {type(a).__name__}")


def _f32(a, name: str) -> np.ndarray:
    """The training ops' rule, as the GPU bindings apply it: float32 arrays."""
    if not isinstance(a, np.ndarray) or a.dtype != _F32:
        got = f"dtype {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__
        raise TypeError(f"{name}: expected a float32 array, got {got}")
    return a


def _same_shape(a: np.ndarray, name: str, ref: np.ndarray, ref_name: str) -> None:
    """No broadcasting in the elementwise training ops (as on the GPU)."""
    if a.shape != ref.shape:
        raise ValueError(
            f"{name}: expected shape {tuple(ref.shape)} (that of {ref_name}), got {tuple(a.shape)}"
        )


def _same_f32(a, b) -> bool:
    """Both float32 numpy arrays of one shape (the common case, checked fast)."""
    return (
        type(a) is np.ndarray
        and type(b) is np.ndarray
        and a.dtype == _F32
        and b.dtype == _F32
        and a.shape == b.shape
    )


_ZERO = _F32(0)


def _writable(a: np.ndarray, name: str) -> np.ndarray:
    if not a.flags.writeable:
        raise ValueError(f"{name}: the array is read-only, but this op writes into it")
    return a


def _contiguous_f32(a) -> bool:
    return type(a) is np.ndarray and a.dtype == _F32 and a.flags.c_contiguous


class HostBackend:
    """numpy arrays on the host."""

    name = "cpu"
    #: the optimiser steps run in one compiled pass and take no scratch array
    needs_scratch = False

    # -- arrays --------------------------------------------------------------
    def float_input(self, a, name: str, ref: str | None = None) -> np.ndarray:
        """``a`` as a float32 numpy array (zero-copy from a DLPack CPU array);
        TypeError for another dtype.  Layout is checked by the kernels."""
        a = _host_array(a, name, "float32")
        if a.dtype != _F32:
            raise TypeError(
                f"{name}: expected a float32 array, got dtype {a.dtype} "
                "(convert with .astype(numpy.float32))"
            )
        return a

    def index_input(self, a, name: str, ref: str | None = None) -> np.ndarray:
        a = _host_array(a, name, "int64")
        if a.dtype != np.int64:
            raise TypeError(f"{name}: expected an int64 array, got dtype {a.dtype}")
        return a

    def add_batch(self, a: np.ndarray) -> np.ndarray:
        return a[None]

    def unbatch(self, a):
        return None if a is None else a[0]

    def reshape(self, a: np.ndarray, shape) -> np.ndarray:
        """A C-contiguous array of ``shape`` with ``a``'s elements."""
        return np.ascontiguousarray(a.reshape(shape))

    def device_index(self, a) -> int | None:
        return None

    def device_of(self, a) -> str:
        return "cpu"

    def from_host(self, a: np.ndarray, device: int | None = None, like=None) -> np.ndarray:
        return a

    def to_numpy(self, a) -> np.ndarray:
        """``a`` itself (no copy)."""
        return a

    def host_copy(self, a):
        return a.copy() if isinstance(a, np.ndarray) else copy.deepcopy(a)

    def zeros(self, shape, like=None, device: int | None = None) -> np.ndarray:
        return np.zeros(tuple(shape), _F32)

    def zero_(self, a: np.ndarray) -> None:
        _writable(a, "array").fill(0)

    def copy_from_host(self, dst: np.ndarray, src: np.ndarray) -> None:
        np.copyto(dst, src, casting="same_kind")

    def view(self, flat: np.ndarray, start: int, shape) -> np.ndarray:
        return flat[start : start + math.prod(shape)].reshape(shape)

    def is_view(self, a, flat: np.ndarray, start: int, shape) -> bool:
        return isinstance(a, np.ndarray) and a.base is flat and a.shape == tuple(shape)

    # -- the kernels of the functional API -----------------------------------
    def conv2d_forward(self, *args):
        return _core.conv2d_forward(*args)

    def conv2d_backward(self, *args):
        return _core.conv2d_backward(*args)

    def conv2d_relu_forward(self, *args):
        """max(conv2d_forward(*args), 0), the ReLU in the kernels' store."""
        return _core.conv2d_forward(*args, relu=True)

    def conv2d_relu_backward(self, grad_output, output, *args):
        """conv2d_backward of ``grad_output * (output > 0)``; the mask is
        applied to ``grad_output`` in place, in the pass that sums the bias
        gradient."""
        return _core.conv2d_backward(grad_output, *args, relu_output=output)

    def max_pool2d_forward(self, *args):
        return _core.max_pool2d_forward(*args)

    def max_pool2d_backward(self, grad_output, indices, shape, relu_input=None):
        """The pool's input gradient; given ``relu_input`` (the pooled input,
        a ReLU's output), also through that ReLU, block by block in cache."""
        return _core.max_pool2d_backward(grad_output, indices, tuple(shape), relu_input)

    # -- the layers' training path -------------------------------------------
    def max_pool2d_train_forward(self, x, kh, kw, sh, sw, ph, pw, ceil_mode):
        """(output, workspace) of a max pool with dilation 1 and at most 256
        taps a window: the workspace holds each window's maximum as one
        byte, its tap (uint8, an eighth of PyTorch's int64 indices)."""
        return _core.max_pool2d_offsets_forward(x, kh, kw, sh, sw, ph, pw, ceil_mode)

    def max_pool2d_train_backward(
        self, grad_output, workspace, shape, kh, kw, sh, sw, ph, pw, ceil_mode, output=None
    ):
        """The pool's input gradient from its workspace; given ``output``
        (what the forward returned), the pooled input was a ReLU's output
        and the gradient also passes back through that ReLU, the mask at
        each maximum being ``output > 0``: bitwise ``max_pool2d_backward``
        with ``relu_input``, without reading the full-size input."""
        return _core.max_pool2d_offsets_backward(
            grad_output, workspace, list(shape), kh, kw, sh, sw, ph, pw, ceil_mode, output
        )

    def conv2d_relu_max_pool2d_train_forward(self, *args):
        """``max_pool2d_train_forward(conv2d_relu_forward(conv args), pool
        args)`` in one call: where the row-segment kernel runs the
        convolution, each image is pooled as soon as it is computed and the
        full-size activation is never written (ops/conv2d.cpp)."""
        return _core.conv2d_relu_max_pool2d_forward(*args)

    def conv2d_relu_max_pool2d_weight_backward(self, *args):
        """(grad weight, grad bias) of that convolution from the pool's
        gradient, workspace and output, with no input gradient (a first
        layer): where the row-segment kernel runs the weight gradient, the
        convolution's gradient is made a few images at a time where the
        kernel reads it, never full size (ops/conv2d.cpp)."""
        return _core.conv2d_max_pool2d_weight_backward(*args)

    def pad_forward(self, *args):
        return _core.pad_forward(*args)

    def pad_backward(self, grad_output, shape, *args):
        return _core.pad_backward(grad_output, tuple(shape), *args)

    def batch_norm_forward(self, *args):
        return _core.batch_norm_forward(*args)

    def batch_norm_backward(self, *args):
        return _core.batch_norm_backward(*args)

    # -- the rest of a training step -----------------------------------------
    def relu(self, x: np.ndarray, inplace: bool) -> np.ndarray:
        _f32(x, "input")
        return np.maximum(x, _ZERO, out=_writable(x, "input") if inplace else None)

    def relu_backward(self, grad_output: np.ndarray, output: np.ndarray, inplace: bool):
        # Pass the gradient where the output is positive.  Multiplying by the
        # bool mask runs at memory speed; boolean indexing and np.where were
        # 5-10x slower here.
        if not _same_f32(grad_output, output):
            _f32(grad_output, "grad_output")
            _same_shape(_f32(output, "output"), "output", grad_output, "grad_output")
        alive = np.greater(output, _ZERO)
        out = _writable(grad_output, "grad_output") if inplace else None
        return np.multiply(grad_output, alive, out=out)

    def multiply(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        _same_shape(_f32(b, "b"), "b", _f32(a, "a"), "a")
        return a * b

    def add_(self, dst: np.ndarray, src: np.ndarray) -> None:
        # Called for every parameter gradient of every step: the checks
        # that pass in one expression, their messages only on failure.
        if not (_same_f32(dst, src) and dst.flags.writeable):
            _same_shape(_f32(src, "src"), "src", _f32(dst, "dst"), "dst")
            _writable(dst, "dst")
        np.add(dst, src, out=dst)

    def linear(self, x: np.ndarray, weight: np.ndarray, bias, relu: bool = False) -> np.ndarray:
        """x (..., in) @ weight.T + bias on convcore's GEMM (ops/linear.cpp);
        with ``relu``, max(., 0) in the same pass."""
        # Any layout, as numpy's matmul took before: strided arrays are copied.
        return _core.linear_forward(
            np.ascontiguousarray(x), np.ascontiguousarray(weight), bias, relu
        )

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
        """(grad input, grad weight, grad bias), each None unless asked for.
        Given ``relu_output`` (what ``linear(..., relu=True)`` returned),
        ``grad_output`` is first multiplied by ``relu_output > 0`` in place."""
        return _core.linear_backward(
            np.ascontiguousarray(grad_output),
            np.ascontiguousarray(x),
            np.ascontiguousarray(weight),
            bool(need_input),
            bool(need_weight),
            bool(need_bias),
            relu_output,
        )

    def cross_entropy(self, logits: np.ndarray, target: np.ndarray, scale):
        """(d loss / d logits scaled by ``scale``, the sum of the row losses,
        the predicted classes): a stable log-softmax, max subtracted first
        (kernels/ref/loss_ref.cpp, the CUDA kernel's row function)."""
        target = np.ascontiguousarray(target, dtype=np.int64)
        return _core.cross_entropy(logits, target, float(scale))

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
        """torch.optim.Adam's single-tensor update in one compiled pass
        (``_core.adam_step``), bitwise :meth:`adam_step_numpy`, which runs
        instead for arrays that are not C-contiguous float32."""
        if _contiguous_f32(p) and _contiguous_f32(g) and _contiguous_f32(m) and _contiguous_f32(v):
            _core.adam_step(
                p, g, m, v, one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt, eps, neg_step, wd
            )
            return
        self.adam_step_numpy(
            p,
            g,
            m,
            v,
            one_minus_beta1=one_minus_beta1,
            beta2=beta2,
            one_minus_beta2=one_minus_beta2,
            bc2_sqrt=bc2_sqrt,
            eps=eps,
            neg_step=neg_step,
            wd=wd,
            tmp=tmp,
        )

    def adam_step_numpy(
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
        """torch.optim.Adam's single-tensor update, operation by operation;
        the constants are numpy float32 values.  The reference of the
        compiled step (tests compare them bitwise)."""
        for a, name in ((p, "param"), (m, "exp_avg"), (v, "exp_avg_sq")):
            _writable(a, name)
        if tmp is None:
            tmp = np.empty_like(p)
        if wd != 0:
            g = g + p * wd
        # m.lerp_(g, 1 - beta1)
        np.subtract(g, m, out=tmp)
        tmp *= one_minus_beta1
        m += tmp
        # v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        v *= beta2
        np.multiply(g, one_minus_beta2, out=tmp)
        tmp *= g
        v += tmp
        # denom = v.sqrt() / bias_correction2_sqrt + eps
        np.sqrt(v, out=tmp)
        tmp /= bc2_sqrt
        tmp += eps
        # p.addcdiv_(m, denom, value=-step_size)
        np.divide(m, tmp, out=tmp)
        tmp *= neg_step
        p += tmp

    def sgd_step(
        self, p, g, buf, *, momentum, one_minus_dampening, wd, neg_lr, nesterov, first, tmp=None
    ) -> None:
        """torch.optim.SGD's update in one compiled pass (``_core.sgd_step``),
        bitwise :meth:`sgd_step_numpy`, which runs instead for arrays that
        are not C-contiguous float32; ``buf`` is None without momentum."""
        if _contiguous_f32(p) and _contiguous_f32(g) and (buf is None or _contiguous_f32(buf)):
            _core.sgd_step(p, g, buf, momentum, one_minus_dampening, wd, neg_lr, nesterov, first)
            return
        self.sgd_step_numpy(
            p,
            g,
            buf,
            momentum=momentum,
            one_minus_dampening=one_minus_dampening,
            wd=wd,
            neg_lr=neg_lr,
            nesterov=nesterov,
            first=first,
            tmp=tmp,
        )

    def sgd_step_numpy(
        self, p, g, buf, *, momentum, one_minus_dampening, wd, neg_lr, nesterov, first, tmp=None
    ) -> None:
        """torch.optim.SGD's update, operation by operation; ``buf`` is None
        without momentum.  The reference of the compiled step."""
        _writable(p, "param")
        if tmp is None:
            tmp = np.empty_like(p)
        if wd != 0:
            g = g + p * wd
        if buf is not None:
            if first:
                np.copyto(buf, g)
            else:
                buf *= momentum
                np.multiply(g, one_minus_dampening, out=tmp)
                buf += tmp
            g = g + buf * momentum if nesterov else buf
        np.multiply(g, neg_lr, out=tmp)
        p += tmp
