"""Process-wide settings a training program makes once (private; exported
as :func:`convcore.tune_process`).

Layers never change them: the programs (``convcore-train``,
``convcore.evaluate``, ``convcore.predict``, the benchmarks) call
:func:`tune_process` at their start.
"""

from __future__ import annotations

from ._blas import set_blas_threads
from ._memory import keep_freed_memory

__all__ = ["tune_process"]


def tune_process(blas_threads: int | None = 1, keep_freed: bool = True) -> None:
    """Tune the process for convcore training and inference.

    Args:
        blas_threads: threads for numpy's OpenBLAS (convcore's layers no
            longer call it; a program's own matmuls may); None leaves BLAS
            alone.  OpenBLAS's spinning threads and convcore's OpenMP
            threads fight over the cores: one training step was 20x slower
            on two cores with both at two threads, when the ``Linear``
            layers ran on numpy's matmul.
        keep_freed: ask glibc to keep freed blocks for reuse instead of
            returning them to the OS, so each step does not page-fault its
            activations in again (11 % of a wide-model step).

    Both are process-wide and outlive the call; calling again is harmless.
    """
    if blas_threads is not None:
        set_blas_threads(blas_threads)
    if keep_freed:
        keep_freed_memory()
