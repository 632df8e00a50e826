"""Argument normalisation shared by the functional API (private).

Turns PyTorch-style arguments (int or pair, strings, None) into plain Python
ints, with errors that name the argument (the backends check the arrays).  Shape
validity itself is decided once, by the compiled geometry.
"""

from __future__ import annotations

import numbers

import numpy as np

# Bounds every size the compiled core can represent; larger ints would not
# fit an int64 and are rejected here with a clear message.
_INT_LIMIT = 1 << 62


def as_int(value, name: str) -> int:
    if type(value) is int and abs(value) <= _INT_LIMIT:
        return value  # the common case, without the slow abstract-class check
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    v = int(value)
    if abs(v) > _INT_LIMIT:
        raise ValueError(f"{name}: {v} is too large (size overflow)")
    return v


def pair(value, name: str) -> tuple[int, int]:
    """int or a sequence of two ints -> (h, w)."""
    if type(value) is tuple and len(value) == 2:
        h, w = value
        if type(h) is int and type(w) is int and abs(h) <= _INT_LIMIT and abs(w) <= _INT_LIMIT:
            return value  # a layer's own (h, w), every call: no further checks
    elif type(value) is int and abs(value) <= _INT_LIMIT:
        return value, value
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(
                f"{name}: expected an int or a tuple of 2 ints (h, w), got {len(value)} values"
            )
        return as_int(value[0], name), as_int(value[1], name)
    try:
        v = as_int(value, name)
    except TypeError:
        raise TypeError(
            f"{name}: expected an int or a tuple of 2 ints (h, w), "
            f"got {type(value).__name__} {value!r}"
        ) from None
    return v, v


def shape_tuple(shape, name: str, ndim: int | None = None) -> tuple[int, ...]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"{name}: expected a tuple of ints, got {type(shape).__name__}") from None
    if ndim is not None and len(dims) != ndim:
        raise ValueError(f"{name}: expected {ndim} sizes, got {len(dims)}")
    return tuple(as_int(d, name) for d in dims)


def output_mask(mask) -> tuple[bool, bool, bool]:
    """conv2d_backward's output_mask: three bools (input, weight, bias)."""
    if (
        type(mask) is tuple
        and len(mask) == 3
        and type(mask[0]) is bool
        and type(mask[1]) is bool
        and type(mask[2]) is bool
    ):
        return mask  # what the layers pass, every step
    try:
        bits = tuple(bool(m) for m in mask)
    except TypeError:
        raise TypeError("output_mask: expected a sequence of 3 bools") from None
    if len(bits) != 3:
        raise ValueError(f"output_mask: expected 3 bools (input, weight, bias), got {len(bits)}")
    return bits


def conv_output_shape(x_shape, w_shape, args) -> tuple[int, int, int, int]:
    """(N, K, P, Q) of a convolution of a 4-D input, from the backend's
    arguments (stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right,
    dilation_h, dilation_w, ...) once the geometry has accepted them."""
    sh, sw, pt, pb, pl, pr, dh, dw = args[:8]
    return (
        x_shape[0],
        w_shape[0],
        (x_shape[2] + pt + pb - dh * (w_shape[2] - 1) - 1) // sh + 1,
        (x_shape[3] + pl + pr - dw * (w_shape[3] - 1) - 1) // sw + 1,
    )
