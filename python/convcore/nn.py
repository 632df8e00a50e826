"""Neural-network layers on top of convcore's kernels, with explicit backward.

A deliberately small, PyTorch-shaped layer library: each layer computes its
forward pass on NCHW float32 numpy arrays, keeps what its backward pass needs
(references, not copies), and turns the gradient of its output into the
gradient of its input while *adding* the gradients of its parameters into
``Parameter.grad``.  There is no autograd; a training step is::

    logits = model(x)                       # forward, caches activations
    loss = loss_fn(logits, y)               # Python float (mean over the batch)
    model.zero_grad()
    model.backward(loss_fn.backward())      # fills every Parameter.grad
    optimizer.step()

Convolution and pooling run on convcore's compiled kernels, ``Linear`` on
numpy's BLAS.  ``model.to('cuda')`` moves the parameters to the GPU; the
layers then take and return :class:`convcore.cuda.DeviceArray` activations
and run every step there (``Linear`` as a 1x1 convolution, ReLU, dropout,
the loss and the optimisers on their own kernels).  A layer never asks where
it is: it calls the ops of its arrays' backend (``convcore._backend``), and
it never changes process-wide settings (threads, the allocator): programs
do, see :func:`convcore.tune_process`.  Everything stays
float32; parameter names and default initialisation follow PyTorch
(``'0.weight'``; kaiming-uniform with a = sqrt(5), i.e.
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases), drawn from a
numpy ``Generator`` so a seed fixes the model.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

from ._args import conv_output_shape
from ._backend import HOST, backend_of, device_backend, resolve_device
from ._parameter import Parameter, ParameterPack
from .functional import (
    _conv_args,
    _pool_args,
    batch_norm,
    batch_norm_backward,
    conv2d,
    conv2d_backward,
    conv2d_relu,
    conv2d_relu_backward,
    max_pool2d,
    max_pool2d_backward,
    pad,
    pad_backward,
)

__all__ = [
    "BatchNorm2d",
    "Conv2d",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "Linear",
    "MaxPool2d",
    "Module",
    "Parameter",
    "ParameterPack",
    "ReLU",
    "Sequential",
]

_F32 = np.float32

#: Whether :class:`Sequential` runs a Conv2d or Linear followed by
#: ``ReLU(inplace=True)`` as one fused op (bitwise the same results; a switch
#: for A/B timing).
_FUSE_CONV_RELU = True


def _rng(rng) -> np.random.Generator:
    """None -> a fresh unseeded Generator; an int or SeedSequence -> seeded."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name}: expected an int or a tuple of 2 ints, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


class Module:
    """Base class of the layers.

    Subclasses implement ``forward(x)`` and ``backward(grad_output)``; they
    register parameters with :meth:`_param` and buffers (state that is not
    trained, such as running statistics) with :meth:`_buffer`.
    ``input_grad`` (default True) says whether ``backward`` must compute the
    gradient of the input; when False it returns None and skips that work (a
    network's first layer, whose input is data, needs none).
    """

    def __init__(self):
        self.training = True
        self.input_grad = True
        self._params: OrderedDict[str, Parameter] = OrderedDict()
        self._buffers: OrderedDict[str, np.ndarray] = OrderedDict()

    # -- structure ---------------------------------------------------------
    def _param(self, name: str, data) -> Parameter:
        p = Parameter(data)
        self._params[name] = p
        return p

    def _buffer(self, name: str, data: np.ndarray) -> None:
        """Register a buffer: a float32 array (or an int64 counter) that is
        saved and restored with the parameters and moved by :meth:`to`, but
        not trained.  Read it as ``self._buffers[name]`` (``to`` replaces it)."""
        self._buffers[name] = np.array(data, order="C", copy=True)

    def children(self) -> list[tuple[str, Module]]:
        """Direct sub-modules as (name, module) pairs."""
        return []

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and all below it, with dotted names ('' for self)."""
        yield prefix, self
        for name, child in self.children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name, p in self._params.items():
            yield (f"{prefix}.{name}" if prefix else name), p
        for name, child in self.children():
            yield from child.named_parameters(f"{prefix}.{name}" if prefix else name)

    def parameters(self) -> list[Parameter]:
        """All parameters, in the order of :meth:`state_dict`."""
        # named_parameters' order without building the names: zero_grad
        # calls this every step.
        out = list(self._params.values())
        for _, child in self.children():
            out += child.parameters()
        return out

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for name, b in self._buffers.items():
            yield (f"{prefix}.{name}" if prefix else name), b
        for name, child in self.children():
            yield from child.named_buffers(f"{prefix}.{name}" if prefix else name)

    def _named_state(self, prefix: str = "") -> Iterator[tuple[str, object]]:
        """Parameters and buffers in PyTorch's state_dict order: each
        module's parameters, then its buffers, then its children's."""
        for name, p in self._params.items():
            yield (f"{prefix}.{name}" if prefix else name), p
        for name, b in self._buffers.items():
            yield (f"{prefix}.{name}" if prefix else name), b
        for name, child in self.children():
            yield from child._named_state(f"{prefix}.{name}" if prefix else name)

    # -- modes and gradients -------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for _, m in self.named_modules():
            m.training = bool(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        params = self.parameters()
        pack = params[0].pack if params else None
        if pack is not None and pack.intact(params):
            backend_of(pack.grad).zero_(pack.grad)
            return
        for p in params:
            backend_of(p.grad).zero_(p.grad)

    def to(self, device) -> Module:
        """Move the parameters (and gradients) to ``device``: ``'cpu'``,
        ``'cuda'`` or ``'cuda:N'``.  They are packed first if they are not
        (:meth:`pack_parameters`).  Inputs must then be on the same device
        (:func:`convcore.cuda.to_device`), and an optimiser must be created
        after the move.  Returns ``self``.

        Raises:
            ValueError: an unknown device spelling.
            RuntimeError: no CUDA build or no such device (the reason is given).
        """
        try:
            index = resolve_device(device)[1]
        except RuntimeError as e:
            raise RuntimeError(f"to: {e}") from None
        # Float buffers move with the parameters; an int64 counter
        # (num_batches_tracked) is host bookkeeping and stays a numpy array.
        target = device_backend(index)
        for _, m in self.named_modules():
            for name, b in m._buffers.items():
                if b.dtype == _F32:
                    m._buffers[name] = target.from_host(backend_of(b).to_numpy(b), index)
        params = self.parameters()
        if not params:
            return self
        pack = params[0].pack
        if pack is None or not pack.intact(params):
            pack = self.pack_parameters()
        pack.to(index)
        return self

    @property
    def device(self) -> str:
        """``'cpu'`` or ``'cuda:N'``: where the parameters are."""
        params = self.parameters()
        return backend_of(params[0].data).device_of(params[0].data) if params else "cpu"

    def pack_parameters(self) -> ParameterPack:
        """Move all parameters (data and grad) into two contiguous buffers,
        keeping their values; ``parameters()`` then return views into them.
        Optimisers created afterwards update the whole model with a few numpy
        calls.  Do it before creating the optimiser."""
        return ParameterPack(self.parameters())

    # -- state ---------------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Copies of the parameters and buffers, by PyTorch-style name
        ('0.weight', '1.running_mean'), in PyTorch's order."""
        out = OrderedDict()
        for name, v in self._named_state():
            a = v.data if isinstance(v, Parameter) else v
            out[name] = backend_of(a).host_copy(a)
        return out

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into the parameters and buffers in place (optimisers
        keep working).

        Raises:
            KeyError: with ``strict``, a missing or unexpected name.
            ValueError: a shape that does not match, a non-integer value for
                an integer buffer (num_batches_tracked) or a non-float value for
                anything else.
        """
        own = OrderedDict(self._named_state())
        if strict:
            missing = [k for k in own if k not in state]
            unexpected = [k for k in state if k not in own]
            if missing or unexpected:
                raise KeyError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        for name, p in own.items():
            if name not in state:
                continue
            dst = p.data if isinstance(p, Parameter) else p
            value = np.asarray(state[name])
            if value.shape != dst.shape:
                raise ValueError(
                    f"load_state_dict: {name} has shape {value.shape}, expected {dst.shape}"
                )
            if dst.dtype == np.int64 and value.dtype.kind not in "iu":
                raise ValueError(
                    f"load_state_dict: {name} has dtype {value.dtype}, expected an integer"
                )
            if dst.dtype != np.int64 and value.dtype.kind != "f":
                raise ValueError(
                    f"load_state_dict: {name} has dtype {value.dtype}, expected floating point"
                )
            backend_of(dst).copy_from_host(dst, value)

    def rng_state(self) -> dict[str, dict]:
        """The random-generator state of every layer that draws random
        numbers (Dropout), by module name; JSON-serialisable."""
        return {
            name: m.rng.bit_generator.state
            for name, m in self.named_modules()
            if getattr(m, "rng", None) is not None
        }

    def set_rng_state(self, states: dict[str, dict]) -> None:
        mods = dict(self.named_modules())
        for name, state in states.items():
            if name not in mods or getattr(mods[name], "rng", None) is None:
                raise KeyError(f"set_rng_state: no random layer named {name!r}")
            mods[name].rng.bit_generator.state = state

    # -- computation ---------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad_output: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        kids = self.children()
        if not kids:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, child in kids:
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        lines.append(")")
        return "\n".join(lines)


def _accumulate(p: Parameter, g) -> None:
    d = p.grad
    # A host gradient skips the backend lookup (ten calls a step).
    (HOST if type(d) is np.ndarray else backend_of(d)).add_(d, g)


def _frozen(v):
    """A list argument as a tuple (so a cache key cannot change under it)."""
    return tuple(v) if isinstance(v, list) else v


class Conv2d(Module):
    """2-D convolution layer, as ``torch.nn.Conv2d``.

    Args:
        in_channels, out_channels: C and K.
        kernel_size, stride, padding, dilation, groups: as
            :func:`convcore.conv2d` (padding may be ``'same'`` or ``'valid'``).
        bias: learn a bias of shape (K,).
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or
            ``'circular'`` (the latter three pad with :func:`convcore.pad`).
        rng: numpy Generator (or seed) for the initial weights.

    Shapes: input (N, C, H, W) -> output (N, K, P, Q).  ``weight`` is
    (K, C/groups, kH, kW).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        rng=None,
    ):
        super().__init__()
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups: {groups} must divide in_channels ({in_channels}) "
                f"and out_channels ({out_channels})"
            )
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(
                "padding_mode: expected 'zeros', 'reflect', 'replicate' or 'circular', "
                f"got {padding_mode!r}"
            )
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(
                    f"padding: expected 'same', 'valid', an int or a pair, got {padding!r}"
                )
            if padding == "same" and self.stride != (1, 1):
                raise ValueError("padding: 'same' is only allowed with stride 1")
            self.padding = padding
        else:
            self.padding = _pair(padding, "padding")
        self.padding_mode = padding_mode
        # Non-zero padding modes pad explicitly, then convolve without padding.
        self._explicit_pad = None
        if padding_mode != "zeros":
            self._explicit_pad = self._pads_lrtb()
        rng = _rng(rng)
        kh, kw = self.kernel_size
        fan_in = (in_channels // groups) * kh * kw
        bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0  # no inputs: nothing to scale
        self.weight = self._param(
            "weight", rng.uniform(-bound, bound, (out_channels, in_channels // groups, kh, kw))
        )
        self.bias = self._param("bias", rng.uniform(-bound, bound, out_channels)) if bias else None
        self._x = None
        self._args_key = self._args = None

    def _pads_lrtb(self) -> tuple[int, int, int, int]:
        if self.padding == "valid":
            return 0, 0, 0, 0
        if self.padding == "same":
            out = []
            for k, d in zip(self.kernel_size[::-1], self.dilation[::-1]):
                total = d * (k - 1)
                out += [total // 2, total - total // 2]
            return tuple(out)
        ph, pw = self.padding
        return pw, pw, ph, ph

    def _conv_padding(self):
        return 0 if self._explicit_pad is not None else self.padding

    def _backend_args(self, x, w):
        """(stride, padding, dilation, groups) as the backend's conv ops take
        them, for a 4-D ``x``; parsed once per setting and weight shape
        (parsing was a third of a small layer call's time)."""
        key = (self.stride, self.padding, self.dilation, self.groups, w.shape)
        if key != getattr(self, "_args_key", None):
            pads = self._conv_padding()
            self._args = _conv_args(x, w, self.stride, pads, self.dilation, self.groups)
            self._args_key = key
        return self._args

    def _inputs(self, x):
        """(input, weight, bias) of a forward: x padded first for a non-zero
        padding mode, and kept for backward."""
        if self._explicit_pad is not None:
            self._in_shape = x.shape
            x = pad(x, self._explicit_pad, self.padding_mode)
        self._x = x
        return x, self.weight.data, self.bias.data if self.bias is not None else None

    def forward(self, x, *, relu: bool = False):
        """The convolution of ``x``; with ``relu``, ``max(conv, 0)`` fused
        into the kernels' store (:func:`convcore.conv2d_relu`), which is how
        :class:`Sequential` runs a Conv2d followed by ``ReLU(inplace=True)``."""
        x, w, b = self._inputs(x)
        if type(x) is np.ndarray and x.ndim == 4 and type(w) is np.ndarray:
            # The host's common case straight to the backend (the binding
            # checks the arrays and names them as the functional API does).
            be = HOST
            run = be.conv2d_relu_forward if relu else be.conv2d_forward
            return run(x, w, b, *self._backend_args(x, w))
        op = conv2d_relu if relu else conv2d
        return op(x, w, b, self.stride, self._conv_padding(), self.dilation, self.groups)

    def _forward_relu_pool(self, x, pool: MaxPool2d, pool_args):
        """``pool(relu(self(x)))`` as one op (the backend's
        ``conv2d_relu_max_pool2d_train_forward``) for :class:`Sequential`;
        the full-size activation is not kept, so backward goes through
        ``pool.backward(g, relu=True)`` and then this layer's ``backward(g)``.
        Bitwise the three layers."""
        x, w, b = self._inputs(x)
        be = backend_of(x, w, b)
        x = be.float_input(x, "input")
        w = be.float_input(w, "weight", "input")
        args = self._backend_args(x, w)
        out, ws = be.conv2d_relu_max_pool2d_train_forward(x, w, b, *args, *pool_args)
        pool._in_shape = conv_output_shape(x.shape, w.shape, args)
        pool._keep(pool_args, out, ws)
        return out

    def _backward_weight_through_pool(self, grad_output, pool: MaxPool2d) -> None:
        """The weight and bias gradients after :meth:`_forward_relu_pool`,
        from the pool's gradient, when no input gradient is wanted (the
        first layer): the backend's ``conv2d_relu_max_pool2d_weight_backward``
        never makes the full-size gradient.  Bitwise ``pool.backward(g,
        relu=True)`` then :meth:`backward`."""
        w, b = self.weight, self.bias
        x = self._x
        be = backend_of(grad_output, x, w.data)
        g = be.float_input(grad_output, "grad_output")
        gw, gb = be.conv2d_relu_max_pool2d_weight_backward(
            g,
            pool._ws,
            pool._y,
            x,
            w.data,
            *self._backend_args(x, w.data),
            *pool._args,
            w.requires_grad,
            b is not None and b.requires_grad,
        )
        if gw is not None:
            _accumulate(w, gw)
        if gb is not None:
            _accumulate(b, gb)

    def backward(self, grad_output, *, relu_output=None):
        """Given ``relu_output`` (what ``forward(x, relu=True)`` returned),
        the gradient passes the ReLU first: ``grad_output`` is then masked in
        place (:func:`convcore.conv2d_relu_backward`)."""
        if self._x is None:
            raise RuntimeError("Conv2d.backward: call forward first")
        w, b = self.weight, self.bias
        mask = (self.input_grad, w.requires_grad, b is not None and b.requires_grad)
        x = self._x
        if (
            type(x) is np.ndarray
            and x.ndim == 4
            and type(grad_output) is np.ndarray
            and type(w.data) is np.ndarray
            and (relu_output is None or type(relu_output) is np.ndarray)
        ):
            # As in forward: the host's common case straight to the backend.
            args = (x, w.data, *self._backend_args(x, w.data), *mask)
            if relu_output is None:
                gi, gw, gb = HOST.conv2d_backward(grad_output, *args)
            else:
                gi, gw, gb = HOST.conv2d_relu_backward(grad_output, relu_output, *args)
        else:
            args = (x, w.data, self.stride, self._conv_padding(), self.dilation, self.groups)
            if relu_output is None:
                gi, gw, gb = conv2d_backward(grad_output, *args, output_mask=mask)
            else:
                gi, gw, gb = conv2d_relu_backward(grad_output, relu_output, *args, output_mask=mask)
        if gw is not None:
            _accumulate(w, gw)
        if gb is not None:
            _accumulate(b, gb)
        if gi is not None and self._explicit_pad is not None:
            gi = pad_backward(gi, self._in_shape, self._explicit_pad, self.padding_mode)
        return gi

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        s += f", stride={self.stride}"
        if self.padding not in ((0, 0), "valid"):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s


class MaxPool2d(Module):
    """Max pooling, as ``torch.nn.MaxPool2d``.

    Forward keeps what backward needs: for a window of at most 256 taps
    without dilation (every usual pool) a workspace in the backend's own
    form -- on the host one byte per window, its maximum's tap, an eighth of
    PyTorch's int64 indices -- else the int64 indices of
    :func:`convcore.max_pool2d`.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, *, ceil_mode: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding, self.dilation, self.ceil_mode = padding, dilation, ceil_mode
        self._idx = None  # int64 indices (functional path)
        self._ws = None  # the training path's workspace
        self._y = None

    def _train_args(self, x):
        """(kh, kw, sh, sw, ph, pw, ceil_mode) when the training path's
        workspace holds this pool on ``x`` (4-D, dilation 1, at most 256
        taps a window), else None.  Parsed once per setting."""
        if getattr(x, "ndim", None) != 4:
            return None
        key = (
            _frozen(self.kernel_size),
            _frozen(self.stride),
            _frozen(self.padding),
            _frozen(self.dilation),
            self.ceil_mode,
        )
        if key != getattr(self, "_args_key", None):
            kh, kw, sh, sw, ph, pw, dh, dw = _pool_args(*key[:4])
            ok = (dh, dw) == (1, 1) and kh * kw <= 256
            self._train = (kh, kw, sh, sw, ph, pw, bool(self.ceil_mode)) if ok else None
            self._args_key = key
        return self._train

    def forward(self, x):
        args = self._train_args(x)
        self._in_shape = tuple(x.shape)
        if args is None:
            out, self._idx = max_pool2d(
                x,
                self.kernel_size,
                self.stride,
                self.padding,
                self.dilation,
                self.ceil_mode,
                return_indices=True,
            )
            self._ws = self._y = None
            return out
        be = backend_of(x)
        x = be.float_input(x, "input")
        out, ws = be.max_pool2d_train_forward(x, *args)
        self._keep(args, out, ws)
        return out

    def _keep(self, args, out, ws) -> None:
        """What the training path's backward reads: its arguments, the
        output (the ReLU mask, when the pooled input was a ReLU's output)
        and the workspace."""
        self._args, self._y, self._ws, self._idx = args, out, ws, None

    def backward(self, grad_output, *, relu_input=None, relu: bool = False):
        """The gradient of the pool's input.  Through a ReLU before the pool
        as well (in the same pass) when ``relu_input`` (the pool's input, a
        ReLU's output) is given, or with ``relu=True`` when that input was not
        kept (the fused Conv2d + ReLU + MaxPool2d of :class:`Sequential`):
        the mask at each window's maximum is then this pool's own output > 0,
        which is that ReLU's output there."""
        if self._idx is None and self._ws is None:
            raise RuntimeError("MaxPool2d.backward: call forward first")
        if not self.input_grad:
            return None
        through_relu = relu or relu_input is not None
        if self._ws is not None:
            be = backend_of(grad_output, self._ws)
            g = be.float_input(grad_output, "grad_output")
            out = self._y if through_relu else None
            return be.max_pool2d_train_backward(g, self._ws, self._in_shape, *self._args, out)
        if relu and relu_input is None:
            raise RuntimeError(
                "MaxPool2d.backward: relu=True needs relu_input for a pool kept as int64 indices"
            )
        return max_pool2d_backward(grad_output, self._idx, self._in_shape, relu_input=relu_input)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class BatchNorm2d(Module):
    """Batch normalisation over the channels of (N, C, H, W) input, as
    ``torch.nn.BatchNorm2d``; with ``relu=True`` followed by a ReLU in the
    same kernel passes (``BatchNorm2d`` then ``ReLU`` in PyTorch).

    In training mode (the default) each call normalises with the batch's
    mean and biased variance and updates ``running_mean`` and
    ``running_var`` (with the unbiased variance) by ``momentum``, or by the
    cumulative average ``1 / num_batches_tracked`` when momentum is None; in
    eval mode the running statistics are used.  ``weight`` (ones) and
    ``bias`` (zeros) are learnt when ``affine``.  The buffers
    ``running_mean``, ``running_var`` (float32) and ``num_batches_tracked``
    (int64) are in :meth:`state_dict` under PyTorch's names.  Backward adds
    into ``weight.grad`` and ``bias.grad``.  CPU only in this version:
    forward on the GPU raises NotImplementedError.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        *,
        relu: bool = False,
    ):
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)):
            raise TypeError(f"num_features: expected an int, got {type(num_features).__name__}")
        if num_features < 1:
            raise ValueError(f"num_features: expected an int >= 1, got {num_features}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.relu = bool(relu)
        C = self.num_features
        self.weight = self._param("weight", np.ones(C)) if self.affine else None
        self.bias = self._param("bias", np.zeros(C)) if self.affine else None
        self._buffer("running_mean", np.zeros(C, _F32))
        self._buffer("running_var", np.ones(C, _F32))
        self._buffer("num_batches_tracked", np.array(0, np.int64))
        self._saved = None

    @property
    def running_mean(self):
        return self._buffers["running_mean"]

    @property
    def running_var(self):
        return self._buffers["running_var"]

    @property
    def num_batches_tracked(self) -> int:
        return int(self._buffers["num_batches_tracked"])

    def forward(self, x):
        factor = self.momentum
        if self.training and factor is None:
            factor = 1.0 / (self.num_batches_tracked + 1)
        w = self.weight.data if self.weight is not None else None
        b = self.bias.data if self.bias is not None else None
        y, mean, invstd = batch_norm(
            x,
            self.running_mean,
            self.running_var,
            w,
            b,
            self.training,
            0.0 if factor is None else factor,
            self.eps,
            relu=self.relu,
            return_stats=True,
        )
        if self.training:
            self._buffers["num_batches_tracked"] += 1
        self._saved = (x, mean, invstd, y if self.relu else None, self.training)
        return y

    def backward(self, grad_output):
        if self._saved is None:
            raise RuntimeError("BatchNorm2d.backward: call forward first")
        x, mean, invstd, y, training = self._saved
        w, b = self.weight, self.bias
        mask = (
            self.input_grad,
            w is not None and w.requires_grad,
            b is not None and b.requires_grad,
        )
        gi, gw, gb = batch_norm_backward(
            grad_output,
            x,
            w.data if w is not None else None,
            mean,
            invstd,
            training,
            output=y,
            output_mask=mask,
        )
        if gw is not None:
            _accumulate(w, gw)
        if gb is not None:
            _accumulate(b, gb)
        return gi

    def extra_repr(self) -> str:
        s = f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"
        return s + (", relu=True (BatchNorm2d followed by ReLU)" if self.relu else "")


class ReLU(Module):
    """max(x, 0), as ``torch.nn.ReLU``.

    With ``inplace=True`` the forward pass overwrites its input and the
    backward pass overwrites the gradient it is given (no allocation); use it
    only where nothing else needs those arrays, e.g. right after a
    convolution or a linear layer (they keep their inputs, not their outputs).
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace
        self._y = None

    def forward(self, x):
        y = backend_of(x).relu(x, self.inplace)
        self._y = y
        return y

    def backward(self, grad_output):
        if self._y is None:
            raise RuntimeError("ReLU.backward: call forward first")
        if not self.input_grad:
            return None
        return backend_of(grad_output, self._y).relu_backward(grad_output, self._y, self.inplace)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class Flatten(Module):
    """Merge dimensions ``start_dim..end_dim`` (default: all but the batch)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        self._in_shape = x.shape
        s = self.start_dim % x.ndim
        e = self.end_dim % x.ndim
        return x.reshape((*x.shape[:s], -1, *x.shape[e + 1 :]))

    def backward(self, grad_output):
        if not self.input_grad:
            return None
        return backend_of(grad_output).reshape(grad_output, self._in_shape)


class Linear(Module):
    """y = x @ weight.T + bias, as ``torch.nn.Linear`` (weight is (out, in)).

    Computed on convcore's packed GEMM (float32, each output summed over
    the input features in order; bitwise the same for any thread count).
    On the GPU it runs as a 1x1 convolution on convcore's convolution
    kernels.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rng=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        rng = _rng(rng)
        bound = 1.0 / math.sqrt(in_features) if in_features else 0.0
        self.weight = self._param("weight", rng.uniform(-bound, bound, (out_features, in_features)))
        self.bias = self._param("bias", rng.uniform(-bound, bound, out_features)) if bias else None
        self._x = None

    def forward(self, x, *, relu: bool = False):
        """``x @ weight.T + bias``; with ``relu``, ``max(., 0)`` applied as
        each block of the result is written (what :class:`Sequential` does
        for a Linear followed by ``ReLU(inplace=True)``)."""
        if getattr(x, "dtype", None) != _F32:
            what = getattr(x, "dtype", type(x).__name__)
            raise TypeError(f"Linear: expected a float32 array as input, got {what}")
        self._x = x
        b = self.bias.data if self.bias is not None else None
        return backend_of(x, self.weight.data).linear(x, self.weight.data, b, relu)

    def backward(self, grad_output, *, relu_output=None):
        """Given ``relu_output`` (what ``forward(x, relu=True)`` returned),
        the gradient first passes back through that ReLU, ``grad_output``
        masked in place."""
        x = self._x
        if x is None:
            raise RuntimeError("Linear.backward: call forward first")
        w, b = self.weight, self.bias
        need_b = b is not None and b.requires_grad
        gi, gw, gb = backend_of(grad_output, x).linear_backward(
            grad_output, x, w.data, self.input_grad, w.requires_grad, need_b, relu_output
        )
        if gw is not None:
            _accumulate(w, gw)
        if gb is not None:
            _accumulate(b, gb)
        return gi

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}" + (
            "" if self.bias is not None else ", bias=False"
        )


class Dropout(Module):
    """Zero each element with probability ``p`` in training mode and scale the
    rest by 1/(1-p), as ``torch.nn.Dropout``; the identity in eval mode.

    The mask is drawn from ``rng`` (a numpy Generator or a seed), whose state
    :meth:`Module.rng_state` reports so training can be resumed exactly.
    """

    def __init__(self, p: float = 0.5, *, rng=None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: dropout probability must be in [0, 1], got {p}")
        self.p = float(p)
        self.rng = _rng(rng)
        self._mask = None

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        shape = tuple(x.shape)
        if self.p == 1.0:
            self._mask = np.zeros(shape, _F32)
        else:
            keep = self.rng.random(shape, dtype=_F32) >= _F32(self.p)
            self._mask = keep.astype(_F32)
            self._mask *= _F32(1.0 / (1.0 - self.p))
        # The mask is drawn on the host from the same generator, so a seed
        # gives the same masks on the CPU and on the GPU.
        be = backend_of(x)
        self._mask = be.from_host(self._mask, like=x)
        return be.multiply(x, self._mask)

    def backward(self, grad_output):
        if not self.input_grad:
            return None
        if self._mask is None:
            return grad_output
        return backend_of(grad_output).multiply(grad_output, self._mask)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse.

    Parameters are named ``'<index>.<name>'`` as in PyTorch.  ``input_grad``
    applies to the first layer: when False, ``backward`` returns None and the
    first layer skips the gradient of its input.

    A :class:`Conv2d` followed by ``ReLU(inplace=True)`` runs as one op: the
    ReLU in the convolution's store, and in backward the ReLU's mask applied
    in the pass that sums the bias gradient (:func:`convcore.conv2d_relu`,
    :func:`convcore.conv2d_relu_backward`), or, when a :class:`MaxPool2d`
    follows the pair, in the pool's backward as it writes each block of its
    gradient (``max_pool2d_backward(..., relu_input=)``).  A Conv2d, an
    in-place ReLU and a MaxPool2d (without dilation) run as one op in
    forward: where the convolution runs on the row-segment kernels, each
    image is pooled as soon as it is computed, and the full-size activation
    is never written; the pool's backward then takes the ReLU's mask from its
    own output, which is the ReLU's output at each maximum.  A :class:`Linear`
    followed by ``ReLU(inplace=True)`` runs the same way: the ReLU as the
    GEMM's blocks are written, its mask before the gradients.  The results are
    bitwise those of the layers; the layers, their names and the state_dict
    stay as they are, so a ``torch.nn.Sequential`` of the same layers loads
    it.
    """

    def __init__(self, *layers: Module):
        super().__init__()
        self.layers = list(layers)
        self._fused: set[int] = set()  # indices of the ReLUs the last forward fused
        self._pooled: set[int] = set()  # indices of the pools fused with a Conv2d + ReLU

    def children(self):
        return [(str(i), m) for i, m in enumerate(self.layers)]

    def parameters(self) -> list[Parameter]:
        out = list(self._params.values())
        for m in self.layers:  # children() without the names (zero_grad, every step)
            out += m.parameters()
        return out

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def _fusable(self, i: int) -> bool:
        """Whether layers i and i + 1 are a Conv2d or Linear and an in-place ReLU."""
        layers = self.layers
        return (
            _FUSE_CONV_RELU
            and i + 1 < len(layers)
            and type(layers[i]) in (Conv2d, Linear)
            and type(layers[i + 1]) is ReLU
            and layers[i + 1].inplace
        )

    def _pool_args(self, i: int, x):
        """The pool's training arguments when layers i to i + 2 are a Conv2d,
        an in-place ReLU and a MaxPool2d that keeps a workspace, else None."""
        layers = self.layers
        if (
            i + 2 < len(layers)
            and type(layers[i + 2]) is MaxPool2d
            and self._fusable(i)
            and getattr(x, "ndim", None) == 4
        ):
            # The pool's input is the convolution's output: 4-D like x.
            return layers[i + 2]._train_args(x)
        return None

    def forward(self, x):
        layers, fused = self.layers, set()
        self._pooled = set()
        i = 0
        while i < len(layers):
            pool_args = self._pool_args(i, x) if type(layers[i]) is Conv2d else None
            if pool_args is not None:
                x = layers[i]._forward_relu_pool(x, layers[i + 2], pool_args)
                layers[i + 1]._y = None  # not kept: the pool's mask stands for it
                fused.add(i + 1)
                self._pooled.add(i + 2)
                i += 3
            elif self._fusable(i):
                x = layers[i].forward(x, relu=True)
                layers[i + 1]._y = x
                fused.add(i + 1)
                i += 2
            else:
                x = layers[i](x)
                i += 1
        self._fused = fused
        return x

    def backward(self, grad_output):
        g = grad_output
        layers = self.layers
        i = len(layers) - 1
        while i >= 0:
            layer = layers[i]
            if i in self._pooled:
                # The fused Conv2d + ReLU + MaxPool2d: the pool's backward
                # takes the ReLU's mask from its own output; for a first
                # layer without input gradient, inside the weight gradient.
                conv = layers[i - 2]
                if i == 2 and not self.input_grad and conv._explicit_pad is None:
                    conv._backward_weight_through_pool(g, layer)
                    return None
                layer.input_grad = True
                g = layer.backward(g, relu=True)
                i -= 2
                conv.input_grad = True if i > 0 else self.input_grad
                g = conv.backward(g)
            elif i - 1 in self._fused and type(layer) is MaxPool2d:
                # Pool, fused ReLU, conv (or linear): the pool passes its
                # gradient back through the ReLU (its input is the ReLU's
                # output), so the layer before gets it masked.
                layer.input_grad = True
                g = layer.backward(g, relu_input=layers[i - 1]._y)
                before, i = layers[i - 2], i - 2
                before.input_grad = True if i > 0 else self.input_grad
                g = before.backward(g)
            elif i in self._fused:
                before, i = layers[i - 1], i - 1
                before.input_grad = True if i > 0 else self.input_grad
                g = before.backward(g, relu_output=layer._y)
            else:
                layer.input_grad = True if i > 0 else self.input_grad
                g = layer.backward(g)
            i -= 1
        return g if self.input_grad else None


class CrossEntropyLoss:
    """Softmax cross-entropy on logits, as ``torch.nn.CrossEntropyLoss``.

    ``loss = loss_fn(logits, target)`` takes logits (N, C) float32 and integer
    class labels (N,) in [0, C) and returns the loss as a Python float (the
    mean over the batch, or the sum with ``reduction='sum'``), computed with a
    stable log-softmax (max subtracted before exp).  ``loss_fn.backward()``
    then returns d loss / d logits (float32, (N, C)), and
    ``loss_fn.predictions()`` the predicted classes (int64 (N,), the first
    maximum of each row) on the host.

    ``label_smoothing`` (in [0, 1]) mixes each one-hot target with the
    uniform distribution, as PyTorch's argument of that name: the target of
    class j is ``(1 - eps) * [j == y] + eps / C``, so each row's loss is
    ``(1 - eps) * (-log p_y) + eps * mean_j (-log p_j)``.

    Logits on the GPU (a :class:`convcore.cuda.DeviceArray`) are handled by
    one kernel; the labels stay a host array, the gradient stays on the GPU,
    and the call waits for the device to return the loss.  With label
    smoothing the (N, C) logits are also read back once, and the smoothing
    term of the gradient is added on the device.
    """

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
        eps = float(label_smoothing)
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"label_smoothing: expected a number in [0, 1], got {label_smoothing}")
        self.reduction = reduction
        self.label_smoothing = eps
        self._grad = None
        self._pred = None

    def __call__(self, logits, target) -> float:
        return self.forward(logits, target)

    def forward(self, logits, target) -> float:
        try:
            be = backend_of(logits)
        except TypeError:
            be = None
        is_array = isinstance(logits, np.ndarray) or (be is not None and be is not HOST)
        if not is_array or logits.dtype != _F32 or logits.ndim != 2:
            raise TypeError("logits: expected a float32 array of shape (N, C)")
        if backend_of(target) is not HOST:
            raise TypeError(
                "target: expected the labels as a host array (numpy); "
                "the loss copies them to the GPU itself"
            )
        target = np.asarray(target)
        if target.dtype.kind not in "iu" or target.shape != tuple(logits.shape[:1]):
            raise ValueError(
                f"target: expected {logits.shape[0]} integer labels, "
                f"got {target.dtype} {target.shape}"
            )
        n, c = logits.shape
        # Each backend's binding checks that the labels lie in [0, C) and
        # names the first that does not.
        scale = _F32(1.0 / n) if self.reduction == "mean" and n else _F32(1)
        self._grad, total, self._pred = be.cross_entropy(logits, target, scale)
        eps = self.label_smoothing
        if eps and n:
            # Against the smoothed target the row loss gains
            # eps * (z_y - mean_j z_j) (log-sum-exp cancels), and the gradient
            # eps * scale * (onehot - 1/C).
            z = be.to_numpy(logits).astype(np.float64)
            rows = np.arange(n)
            total += eps * float(np.sum(z[rows, target] - z.mean(axis=1)))
            extra = np.full((n, c), -eps / c, dtype=np.float64)
            extra[rows, target] += eps
            extra *= float(scale)
            be.add_(self._grad, be.from_host(extra.astype(_F32), like=self._grad))
        return total / n if self.reduction == "mean" and n else total

    def predictions(self) -> np.ndarray:
        """The predicted class of each row of the last logits (int64, host)."""
        if self._pred is None:
            raise RuntimeError("CrossEntropyLoss.predictions: call the loss first")
        return self._pred

    def backward(self):
        if self._grad is None:
            raise RuntimeError("CrossEntropyLoss.backward: call the loss first")
        return self._grad.copy()
