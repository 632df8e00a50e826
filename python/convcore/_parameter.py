"""Parameters and packed parameter buffers (private; exported by convcore.nn).

A :class:`Parameter` holds a trainable array and its gradient; a
:class:`ParameterPack` makes many parameters views into two contiguous
buffers, so an optimiser or ``zero_grad`` treats a model as one array.  The
arrays live on the host or on a device; every array operation goes to the
backend of the arrays (``convcore._backend``).
"""

from __future__ import annotations

import numpy as np

from ._backend import backend_of, device_backend

__all__ = ["Parameter", "ParameterPack"]

_F32 = np.float32


def host_array(a) -> np.ndarray:
    """A numpy copy of a device array, or the host array itself."""
    return backend_of(a).to_numpy(a)


class Parameter:
    """A trainable array and its gradient (both float32, C-contiguous, same
    shape).  ``grad`` starts at zero; backward passes add into it."""

    __slots__ = ("data", "grad", "requires_grad", "pack")

    def __init__(self, data, requires_grad: bool = True):
        self.data = np.array(data, dtype=_F32, order="C", copy=True)
        self.grad = np.zeros_like(self.data)
        self.requires_grad = bool(requires_grad)
        self.pack: ParameterPack | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape})"


class ParameterPack:
    """Parameters whose ``data`` and ``grad`` are views into two contiguous
    buffers (see :meth:`Module.pack_parameters`), so optimisers and
    ``zero_grad`` can treat them as one array: one numpy call (or one GPU
    kernel) instead of one per parameter.  Each view starts on a 64-byte
    boundary; the gaps hold zeros, which every update rule leaves at zero.
    The buffers live on the host (``device`` None) or on a GPU (``device``
    the CUDA index; they are then DeviceArrays), see :meth:`to`."""

    ALIGN = 16  # floats

    def __init__(self, params: list[Parameter]):
        self.params = list(params)
        self.offsets = []
        total = 0
        for p in self.params:
            self.offsets.append(total)
            total += -(-p.data.size // self.ALIGN) * self.ALIGN
        self.device: int | None = None
        self.shapes = [tuple(p.data.shape) for p in self.params]
        data = np.zeros(total, _F32)
        grad = np.zeros(total, _F32)
        for p, off in zip(self.params, self.offsets):
            n = p.data.size
            data[off : off + n] = host_array(p.data).ravel()
            grad[off : off + n] = host_array(p.grad).ravel()
        devices = [backend_of(p.data).device_index(p.data) for p in self.params]
        devices = [d for d in devices if d is not None]
        self._bind(data, grad)
        if devices:  # packing a model on a device keeps it there
            self.to(devices[0])

    def _bind(self, data, grad) -> None:
        """Make ``data``/``grad`` the buffers and point every parameter at its views."""
        self.data, self.grad = data, grad
        self._views = []
        for i, p in enumerate(self.params):
            p.data, p.grad = self.view(data, i), self.view(grad, i)
            p.pack = self
            self._views.append((p.data, p.grad))

    def view(self, flat, i: int):
        """Parameter ``i``'s part of a buffer laid out like this pack (a numpy
        view, or a DeviceArray view for a buffer on the GPU)."""
        return backend_of(flat).view(flat, self.offsets[i], self.shapes[i])

    def is_view(self, a, flat, i: int) -> bool:
        """Whether ``a`` is parameter ``i``'s view of ``flat``."""
        return backend_of(flat).is_view(a, flat, self.offsets[i], self.shapes[i])

    def zeros_like(self):
        """A zero buffer laid out like this pack, on the pack's device."""
        return backend_of(self.data).zeros(self.data.shape, like=self.data)

    def intact(self, params: list[Parameter]) -> bool:
        """True if ``params`` are exactly this pack's parameters, in order,
        still viewing its buffers (nobody rebound ``.data`` or ``.grad``)."""
        if len(params) != len(self.params):
            return False
        data, grad = self.data, self.grad
        if type(data) is np.ndarray and type(grad) is np.ndarray:
            # is_view's host test, inlined: a few microseconds less per
            # optimiser step and zero_grad.  (Identity alone is not enough:
            # a deep copy keeps the identities but its arrays are no views.)
            for p, q, (d, g), shape in zip(params, self.params, self._views, self.shapes):
                if p is not q or p.data is not d or p.grad is not g:
                    return False
                if type(d) is not np.ndarray or d.base is not data or d.shape != shape:
                    return False
                if type(g) is not np.ndarray or g.base is not grad or g.shape != shape:
                    return False
            return True
        return all(
            p is q
            and p.data is d
            and p.grad is g
            and self.is_view(d, self.data, i)
            and self.is_view(g, self.grad, i)
            for i, (p, q, (d, g)) in enumerate(zip(params, self.params, self._views))
        )

    def to(self, device: int | None) -> None:
        """Move both buffers to CUDA device ``device`` (None: the host),
        keeping the values; the parameters then view the new buffers.
        Optimiser state is not moved: create the optimiser afterwards."""
        if device == self.device:
            return
        target = device_backend(device)
        data = target.from_host(host_array(self.data), device)
        grad = target.from_host(host_array(self.grad), device)
        self.device = device
        self._bind(data, grad)
