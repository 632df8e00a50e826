"""The compiled core's runtime settings and build facts (private; exported
by the convcore package)."""

from __future__ import annotations

from . import _core
from ._args import as_int

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "build_info",
    "disabled_implementations",
    "get_num_threads",
    "implementations",
    "last_kernel",
    "set_disabled_implementations",
    "set_max_isa",
    "set_num_threads",
]


def set_num_threads(n: int) -> None:
    """Set the number of threads convcore's kernels use (n >= 1).

    Until called, convcore follows OpenMP's default (``OMP_NUM_THREADS`` or
    the number of cores).  Results do not depend on the thread count.
    """
    _core.set_num_threads(as_int(n, "n"))


def get_num_threads() -> int:
    """Number of threads convcore's kernels use."""
    return _core.get_num_threads()


def set_max_isa(name: str) -> None:
    """Cap the instruction set of the kernels: 'scalar' (reference loops),
    'portable' (blocked C++), 'avx2' or 'avx512'.  The highest level the CPU supports
    is used by default; ``CONVCORE_MAX_ISA`` sets the cap at import."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    _core.set_max_isa(name)


def last_kernel(op: str) -> str:
    """Name of the implementation that ran last for ``op`` (e.g.
    ``'conv2d_fwd'``, ``'conv2d_bwd_data'``, ``'conv2d_bwd_weight'``,
    ``'maxpool2d_fwd'``); ``''`` if the op has not run."""
    return _core.last_kernel(op)


def implementations(op: str) -> list[str]:
    """The implementations of ``op`` in the order they are tried; the last
    is the scalar reference."""
    return _core.implementations(op)


def set_disabled_implementations(names) -> None:
    """Make the kernel selection pass over these implementations, by name
    (as ``implementations(op)`` lists them); an empty list restores the
    default.  Each op then runs the next entry of its list that applies, so
    a benchmark or a test can compare, say, the Winograd convolution with
    the direct one on the same shape.  The scalar references, which end
    every list, cannot be disabled.  Replaces the previous set."""
    bad = TypeError("names: expected a list of implementation names (str)")
    if isinstance(names, (str, bytes)):
        raise bad
    try:
        names = list(names)
    except TypeError:
        raise bad from None
    if not all(isinstance(n, str) for n in names):
        raise bad
    _core.set_disabled_implementations(names)


def disabled_implementations() -> list[str]:
    """The implementations the kernel selection passes over (sorted)."""
    return _core.disabled_implementations()


def build_info() -> dict:
    """What was compiled in and what is in use: version, compiler, the
    instruction sets compiled in, detected and active, the OpenMP version,
    the thread count, and whether the CUDA path was built (and for which
    architectures)."""
    info = dict(_core.build_info())
    info["num_threads"] = _core.get_num_threads()
    info["isa_active"] = _core.active_isa()
    return info
