"""The functional API: NCHW float32 numpy arrays in, numpy arrays out.

Names, arguments and semantics follow ``torch.nn.functional``.  Arrays must
be C-contiguous float32 (indices int64); convcore never converts or copies an
argument silently, so a wrong dtype is a ``TypeError`` and a non-contiguous
array a ``ValueError``.  Every invalid argument raises ``ValueError`` or
``TypeError`` with a message that names it.  A 3-D ``(C, H, W)`` input is
treated as a batch of one and returns 3-D results, as in PyTorch.

Any CPU array that exports ``__dlpack__`` (a PyTorch CPU tensor, for
example) is read without a copy, under the same rules (a tensor that
requires grad is a ``ValueError``: pass ``tensor.detach()``); results are
numpy arrays.  Every function also accepts ``convcore.cuda.DeviceArray``
arguments: it then runs on the GPU and returns DeviceArrays (see
:mod:`convcore.cuda`).

Each function normalises its arguments once, here, and hands them to the
backend of its arrays (``convcore._backend``), which checks the array types
and runs the kernel.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import _core
from ._args import as_int, pair, shape_tuple
from ._args import output_mask as parse_output_mask
from ._backend import backend_of

__all__ = [
    "batch_norm",
    "batch_norm_backward",
    "conv2d",
    "conv2d_backward",
    "conv2d_relu",
    "conv2d_relu_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "pad",
    "pad_backward",
]


def _conv_padding(padding, weight_shape, stride, dilation) -> tuple[int, int, int, int]:
    """-> (top, bottom, left, right)."""
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding == "same":
            top, bottom = _core.same_padding(weight_shape[2], dilation[0], stride[0], "height")
            left, right = _core.same_padding(weight_shape[3], dilation[1], stride[1], "width")
            return top, bottom, left, right
        raise ValueError(
            f"padding: expected 'valid', 'same', an int or a tuple of 2 ints, got {padding!r}"
        )
    ph, pw = pair(padding, "padding")
    return ph, ph, pw, pw


def _conv_args(input, weight, stride, padding, dilation, groups):
    stride = pair(stride, "stride")
    dilation = pair(dilation, "dilation")
    groups = as_int(groups, "groups")
    if weight.ndim != 4:
        raise ValueError(
            "weight: expected a 4-D array (out_channels, in_channels/groups, kH, kW), "
            f"got {weight.ndim}-D"
        )
    pads = _conv_padding(padding, weight.shape, stride, dilation)
    return (*stride, *pads, *dilation, groups)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution (cross-correlation), as ``torch.nn.functional.conv2d``.

    Args:
        input: float32 array of shape (N, C, H, W) or (C, H, W).
        weight: float32 array of shape (K, C/groups, kH, kW).
        bias: optional float32 array of shape (K,).
        stride: int or (sH, sW), each >= 1.
        padding: int or (pH, pW) (zeros on both sides), ``'valid'`` (none) or
            ``'same'`` (output size = input size; stride must be 1; for even
            kernels the extra element goes right/bottom, as in PyTorch).
        dilation: int or (dH, dW), each >= 1.
        groups: number of groups; must divide C and K.

    Returns:
        float32 array of shape (N, K, P, Q) with
        ``P = (H + pad_top + pad_bottom - dH*(kH-1) - 1) // sH + 1`` (likewise Q).

    Raises:
        TypeError: an array is not a float32 numpy array, or an argument has the wrong type.
        ValueError: wrong number of dimensions, mismatched channels or groups,
            non-positive stride/dilation, negative padding, a kernel larger than
            the padded input, a non-contiguous array, or a size overflow.
    """
    return _conv2d(input, weight, bias, stride, padding, dilation, groups, relu=False)


def conv2d_relu(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``relu(conv2d(input, weight, bias, ...))`` in one pass: the ReLU runs in
    the convolution's store (its epilogue), so the output is written once.

    Arguments, shapes and errors as :func:`conv2d`.  Bitwise identical to
    :func:`conv2d` followed by ``numpy.maximum(y, 0)`` for any thread count
    (NaN stays NaN, -0 becomes +0).  On the GPU it runs as the two ops.
    """
    return _conv2d(input, weight, bias, stride, padding, dilation, groups, relu=True)


def _conv2d(input, weight, bias, stride, padding, dilation, groups, *, relu: bool):
    be = backend_of(input, weight, bias)
    input = be.float_input(input, "input")
    weight = be.float_input(weight, "weight", "input")
    if bias is not None:
        bias = be.float_input(bias, "bias", "input")
        if bias.ndim != 1:
            raise ValueError(
                f"bias: expected a 1-D array of shape (out_channels,), got {bias.ndim}-D"
            )
    x, unbatched = _batched(be, input, "input")
    op = be.conv2d_relu_forward if relu else be.conv2d_forward
    out = op(x, weight, bias, *_conv_args(x, weight, stride, padding, dilation, groups))
    return be.unbatch(out) if unbatched else out


def conv2d_backward(
    grad_output,
    input,
    weight,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    output_mask=(True, True, True),
):
    """Gradients of :func:`conv2d` with respect to input, weight and bias.

    Args:
        grad_output: float32 array of shape (N, K, P, Q), the gradient of the
            loss with respect to ``conv2d(input, weight, ...)``.
        input, weight, stride, padding, dilation, groups: as given to :func:`conv2d`.
        output_mask: three bools: which of (grad_input, grad_weight, grad_bias)
            to compute.

    Returns:
        ``(grad_input, grad_weight, grad_bias)`` with the shapes of input,
        weight and (K,); an entry is ``None`` where ``output_mask`` is False.
        grad_weight is bitwise identical for any thread count.

    Raises:
        TypeError, ValueError: as :func:`conv2d`; also when grad_output's shape
            is not the convolution's output shape.
    """
    return _conv2d_backward(
        grad_output, None, input, weight, stride, padding, dilation, groups, output_mask
    )


def conv2d_relu_backward(
    grad_output,
    output,
    input,
    weight,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    output_mask=(True, True, True),
):
    """Gradients of :func:`conv2d_relu`: :func:`conv2d_backward` of
    ``grad_output * (output > 0)``.

    Args:
        grad_output: float32 array of shape (N, K, P, Q), the gradient of the
            loss with respect to ``output``.  **Overwritten** with the masked
            gradient ``grad_output * (output > 0)`` (as ``ReLU(inplace=True)``
            does): the mask is applied in place in the same pass that sums
            the bias gradient, so nothing is allocated for it.
        output: what :func:`conv2d_relu` returned (float32, grad_output's shape).
        input, weight, stride, padding, dilation, groups, output_mask: as
            :func:`conv2d_backward`.

    Returns:
        ``(grad_input, grad_weight, grad_bias)`` as :func:`conv2d_backward`,
        bitwise identical to masking with ``numpy.multiply(grad_output,
        output > 0)`` and calling :func:`conv2d_backward`.

    Raises:
        TypeError, ValueError: as :func:`conv2d_backward`; also when output's
            shape is not grad_output's, or grad_output is read-only.
    """
    return _conv2d_backward(
        grad_output, output, input, weight, stride, padding, dilation, groups, output_mask
    )


def _conv2d_backward(
    grad_output, output, input, weight, stride, padding, dilation, groups, output_mask
):
    relu = output is not None
    be = backend_of(grad_output, output, input, weight)
    grad_output = be.float_input(grad_output, "grad_output")
    if relu:
        output = be.float_input(output, "output", "grad_output")
        if tuple(output.shape) != tuple(grad_output.shape):
            raise ValueError(
                f"output: expected shape {tuple(grad_output.shape)} (that of grad_output), "
                f"got {tuple(output.shape)}"
            )
    input = be.float_input(input, "input", "grad_output")
    weight = be.float_input(weight, "weight", "grad_output")
    mask = parse_output_mask(output_mask)
    x, unbatched = _batched(be, input, "input")
    if unbatched:
        if grad_output.ndim != 3:
            raise ValueError(
                f"grad_output: expected a 3-D array for a 3-D input, got {grad_output.ndim}-D"
            )
        grad_output = be.add_batch(grad_output)
        if relu:
            output = be.add_batch(output)
    args = (*_conv_args(x, weight, stride, padding, dilation, groups), *mask)
    if relu:
        gi, gw, gb = be.conv2d_relu_backward(grad_output, output, x, weight, *args)
    else:
        gi, gw, gb = be.conv2d_backward(grad_output, x, weight, *args)
    if unbatched and gi is not None:
        gi = be.unbatch(gi)
    return gi, gw, gb


def max_pool2d(
    input,
    kernel_size,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode=False,
    return_indices=False,
):
    """2-D max pooling, as ``torch.nn.functional.max_pool2d``.

    Padding counts as -inf and may be at most half the kernel size; with
    ``ceil_mode`` the output rounds up but no window starts in the right or
    bottom padding.  Within a window the first maximum in scan order wins a
    tie and NaN propagates.

    Args:
        input: float32 array of shape (N, C, H, W) or (C, H, W).
        kernel_size: int or (kH, kW), each >= 1.
        stride: int or (sH, sW); defaults to kernel_size.
        padding: int or (pH, pW), 0 <= p <= k // 2.
        dilation: int or (dH, dW), each >= 1.
        ceil_mode: round the output size up instead of down.
        return_indices: also return the int64 indices of the maxima.

    Returns:
        float32 array (N, C, P, Q); with return_indices, a tuple
        ``(output, indices)`` where indices are flat ``h * W + w`` positions
        within each (H, W) plane, identical to PyTorch's.

    Raises:
        TypeError, ValueError: bad types, ndim, non-contiguous input, sizes
            below 1, padding above half the kernel, or an output size below 1.
    """
    be = backend_of(input)
    input = be.float_input(input, "input")
    args = _pool_args(kernel_size, stride, padding, dilation)
    x, unbatched = _batched(be, input, "input")
    # Without return_indices the host kernels skip the index stream.
    out, idx = be.max_pool2d_forward(x, *args, bool(ceil_mode), bool(return_indices))
    if unbatched:
        out = be.unbatch(out)
    if not return_indices:
        return out
    return out, (be.unbatch(idx) if unbatched else idx)


def _pool_args(kernel_size, stride, padding, dilation) -> tuple[int, ...]:
    """(kh, kw, sh, sw, ph, pw, dil_h, dil_w) as the kernels take them; the
    stride defaults to the kernel size (None or an empty sequence), as in
    PyTorch."""
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = (
        (kh, kw)
        if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0)
        else pair(stride, "stride")
    )
    return (kh, kw, sh, sw, *pair(padding, "padding"), *pair(dilation, "dilation"))


def max_pool2d_backward(grad_output, indices, input_shape, *, relu_input=None):
    """Gradient of :func:`max_pool2d` with respect to its input.

    Args:
        grad_output: float32 array (N, C, P, Q) (or (C, P, Q)).
        indices: int64 array of the same shape, as returned by
            ``max_pool2d(..., return_indices=True)``.
        input_shape: shape of the pooled input, (N, C, H, W) (or (C, H, W)).
        relu_input: the pooled input, when it is the output of a ReLU (a
            :func:`conv2d_relu` or ``ReLU`` before the pool), or None.  The
            gradient then also passes back through that ReLU: the result is
            multiplied by ``relu_input > 0`` as each block of planes is
            written, bitwise ``numpy.multiply(max_pool2d_backward(...),
            relu_input > 0)`` without the second pass over memory.

    Returns:
        float32 array of ``input_shape``: each grad_output element added at its
        index (overlapping windows accumulate).

    Raises:
        TypeError, ValueError: bad types or shapes (relu_input's must be
            input_shape), or an index outside [0, H*W).
    """
    be = backend_of(grad_output, indices, relu_input)
    grad_output = be.float_input(grad_output, "grad_output")
    indices = be.index_input(indices, "indices", "grad_output")
    shape = shape_tuple(input_shape, "input_shape")
    if relu_input is not None:
        relu_input = be.float_input(relu_input, "relu_input", "grad_output")
        if tuple(relu_input.shape) != shape:
            raise ValueError(
                f"relu_input: expected shape {shape} (input_shape), got {tuple(relu_input.shape)}"
            )
    if len(shape) == 3:
        if grad_output.ndim != 3 or indices.ndim != 3:
            raise ValueError("grad_output, indices: expected 3-D arrays for a 3-D input_shape")
        if relu_input is not None:
            relu_input = be.add_batch(relu_input)
        out = be.max_pool2d_backward(
            be.add_batch(grad_output), be.add_batch(indices), (1, *shape), relu_input
        )
        return be.unbatch(out)
    if len(shape) != 4:
        raise ValueError(f"input_shape: expected 3 or 4 sizes, got {len(shape)}")
    return be.max_pool2d_backward(grad_output, indices, shape, relu_input)


def _pad_args(pad):
    try:
        pads = tuple(pad)
    except TypeError:
        raise TypeError(f"pad: expected a tuple of 2 or 4 ints, got {type(pad).__name__}") from None
    if len(pads) not in (2, 4):
        raise ValueError(
            "pad: expected 2 ints (left, right) or 4 ints (left, right, top, bottom), "
            f"got {len(pads)}"
        )
    pads = tuple(as_int(p, "pad") for p in pads)
    return pads if len(pads) == 4 else (*pads, 0, 0)


def _pad_mode(mode) -> str:
    if not isinstance(mode, str):
        raise TypeError(f"mode: expected a str, got {type(mode).__name__}")
    return mode


def _pad_value(mode: str, value) -> float:
    if mode != "constant" and value not in (None, 0, 0.0):
        raise ValueError(f"value: padding mode '{mode}' does not take a fill value, got {value!r}")
    if value is None:
        return 0.0
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"value: expected a real number, got {type(value).__name__} {value!r}")
    return float(value)


def _batched(be, a, name: str):
    """Accept (C, H, W) as an unbatched (1, C, H, W), as PyTorch does."""
    if a.ndim == 3:
        return be.add_batch(a), True
    if a.ndim != 4:
        raise ValueError(
            f"{name}: expected a 3-D (C, H, W) or 4-D (N, C, H, W) array, got {a.ndim}-D"
        )
    return a, False


def pad(input, pad, mode="constant", value=0.0):
    """Pad the last two dimensions, as ``torch.nn.functional.pad``.

    Args:
        input: float32 array with at least 2 dimensions (..., H, W)
            (at least 1 when only the width is padded).
        pad: ``(left, right)`` or ``(left, right, top, bottom)``.  Negative
            values crop.
        mode: ``'constant'``, ``'reflect'`` (pads < the size padded),
            ``'replicate'`` or ``'circular'`` (pads <= the size padded).
        value: fill value for ``'constant'``; must be 0 for other modes.

    Returns:
        float32 array of shape (..., H + top + bottom, W + left + right).

    Raises:
        TypeError, ValueError: bad types, an unknown mode, pads too large for
            the mode, or a negative output size.
    """
    be = backend_of(input)
    input = be.float_input(input, "input")
    left, right, top, bottom = _pad_args(pad)
    mode = _pad_mode(mode)
    value = _pad_value(mode, value)
    if input.ndim == 1 and len(tuple(pad)) == 2:
        out = be.pad_forward(be.add_batch(input), left, right, 0, 0, mode, value)
        return be.unbatch(out)
    return be.pad_forward(input, left, right, top, bottom, mode, value)


def pad_backward(grad_output, input_shape, pad, mode="constant"):
    """Gradient of :func:`pad` with respect to its input.

    Args:
        grad_output: float32 array of the padded shape.
        input_shape: shape of the input that was padded.
        pad, mode: as given to :func:`pad`.

    Returns:
        float32 array of ``input_shape``: the adjoint of the padding (border
        values accumulate into the input elements they were copied from).
    """
    be = backend_of(grad_output)
    grad_output = be.float_input(grad_output, "grad_output")
    shape = shape_tuple(input_shape, "input_shape")
    left, right, top, bottom = _pad_args(pad)
    mode = _pad_mode(mode)
    if len(shape) == 1:
        out = be.pad_backward(be.add_batch(grad_output), (1, *shape), left, right, 0, 0, mode)
        return be.unbatch(out)
    return be.pad_backward(grad_output, shape, left, right, top, bottom, mode)


def _real(v, name: str) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__} {v!r}")
    return float(v)


def _channel_arrays(be, **arrays):
    return {k: None if a is None else be.float_input(a, k, "input") for k, a in arrays.items()}


def batch_norm(
    input,
    running_mean,
    running_var,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
    *,
    relu=False,
    return_stats=False,
):
    """Batch normalisation over the channels, as ``torch.nn.functional.batch_norm``.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel.  In
    training mode mean and var are the batch's (over N, H, W; var biased)
    and the running statistics, when given, are updated in place:
    ``running = (1 - momentum) * running + momentum * batch`` (running_var
    takes the unbiased variance, times M / (M - 1) with M = N*H*W).  In
    evaluation mode the running statistics are used.  Statistics are summed
    in double (float32 only within blocks of a few values), and the result
    is bitwise identical for any thread count.

    Args:
        input: float32 array of shape (N, C, H, W) or (C, H, W).
        running_mean, running_var: float32 arrays of shape (C,), or None (both:
            training without running statistics).  Written in training mode.
        weight, bias: optional float32 arrays of shape (C,) (affine=False: None).
        training: use (and update) the batch statistics.
        momentum: the running statistics' update factor.
        eps: added to the variance, a finite number >= 0.
        relu: also apply ``max(y, 0)`` in the same pass (convcore's fusion;
            the result equals ``F.relu(F.batch_norm(...))``).
        return_stats: also return ``save_mean`` and ``save_invstd`` (C,), the
            mean and ``1/sqrt(var + eps)`` used, as :func:`batch_norm_backward`
            takes them.

    Returns:
        float32 array of the input's shape; with return_stats, a tuple
        ``(output, save_mean, save_invstd)``.

    Raises:
        TypeError: an array is not float32, or momentum/eps is not a number.
        ValueError: wrong number of dimensions, a (C,) array of another size,
            a non-contiguous array, read-only running statistics in training,
            running statistics missing in evaluation mode, or one value per
            channel in training (N*H*W == 1), as in PyTorch.
    """
    be = backend_of(input, running_mean, running_var, weight, bias)
    input = be.float_input(input, "input")
    vec = _channel_arrays(
        be, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias
    )
    momentum = _real(momentum, "momentum")
    eps = _real(eps, "eps")
    x, unbatched = _batched(be, input, "input")
    out, mean, invstd = be.batch_norm_forward(
        x,
        vec["running_mean"],
        vec["running_var"],
        vec["weight"],
        vec["bias"],
        bool(training),
        momentum,
        eps,
        bool(relu),
    )
    if unbatched:
        out = be.unbatch(out)
    return (out, mean, invstd) if return_stats else out


def batch_norm_backward(
    grad_output,
    input,
    weight,
    save_mean,
    save_invstd,
    training=True,
    *,
    output=None,
    output_mask=(True, True, True),
):
    """Gradients of :func:`batch_norm` with respect to input, weight and bias.

    In training mode the batch statistics depend on the input:
    ``grad_input = weight * invstd / M * (M * g - sum(g) - xhat * sum(g * xhat))``
    with ``xhat = (x - mean) * invstd`` and sums over N, H, W; in evaluation
    mode ``grad_input = g * weight * invstd``.  ``grad_weight = sum(g * xhat)``,
    ``grad_bias = sum(g)``.  ``g`` is grad_output, or with ``output`` given
    (a ``relu=True`` forward pass) grad_output where output > 0 and 0
    elsewhere: the ReLU's backward in the same pass.

    Args:
        grad_output: float32 array of the input's shape.
        input, weight, training: as given to :func:`batch_norm` (weight may be None).
        save_mean, save_invstd: (C,) from ``batch_norm(..., return_stats=True)``.
        output: the forward output of a ``relu=True`` call, or None.
        output_mask: three bools: which of (grad_input, grad_weight, grad_bias)
            to compute.

    Returns:
        ``(grad_input, grad_weight, grad_bias)`` with the shapes of input, (C,)
        and (C,); an entry is None where ``output_mask`` is False.  Bitwise
        identical for any thread count.

    Raises:
        TypeError, ValueError: as :func:`batch_norm`; also when grad_output or
            output has another shape than input.
    """
    be = backend_of(grad_output, input, weight, save_mean, save_invstd, output)
    grad_output = be.float_input(grad_output, "grad_output")
    input = be.float_input(input, "input", "grad_output")
    vec = _channel_arrays(be, weight=weight, save_mean=save_mean, save_invstd=save_invstd)
    if output is not None:
        output = be.float_input(output, "output", "grad_output")
    mask = parse_output_mask(output_mask)
    x, unbatched = _batched(be, input, "input")
    if unbatched:
        for name, a in (("grad_output", grad_output), ("output", output)):
            if a is not None and a.ndim != 3:
                raise ValueError(f"{name}: expected a 3-D array for a 3-D input, got {a.ndim}-D")
        grad_output = be.add_batch(grad_output)
        output = None if output is None else be.add_batch(output)
    gi, gw, gb = be.batch_norm_backward(
        grad_output,
        x,
        vec["weight"],
        vec["save_mean"],
        vec["save_invstd"],
        output,
        bool(training),
        *mask,
    )
    if unbatched and gi is not None:
        gi = be.unbatch(gi)
    return gi, gw, gb
