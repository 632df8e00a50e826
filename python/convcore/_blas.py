"""Keep numpy's BLAS from fighting convcore's OpenMP threads (private).

numpy's OpenBLAS runs its own worker threads, which spin for a while after
each call; convcore's OpenMP team spins too.  On a two-core machine the two
pools then take turns on the cores: one training step of the tutorial model
measured 117 ms with both at two threads, 4.9 ms with OpenBLAS at one thread
(its matrices here were small: the Linear layers of a 100-image batch, which
now run on convcore's own GEMM).  So the training programs set OpenBLAS to
one thread at their start, for whatever numpy matmuls the process still does
(``convcore.tune_process``), through threadpoolctl when it is installed,
otherwise through OpenBLAS's own C function found with ctypes.  Other BLAS
libraries (Accelerate, MKL) are left alone.
"""

from __future__ import annotations

import ctypes
import os

_SYMBOLS = (
    "scipy_openblas_set_num_threads64_",  # numpy >= 2 wheels (scipy-openblas, ILP64)
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",  # numpy 1.x wheels
    "openblas_set_num_threads",  # system OpenBLAS
)


def _openblas_paths() -> list[str]:
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.exists(p))


def set_blas_threads(n: int) -> bool:
    """Limit numpy's OpenBLAS to ``n`` threads; True if a library was found."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        threadpool_limits(limits=n, user_api="blas")
        return True
    done = False
    for path in _openblas_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in _SYMBOLS:
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                fn.restype = None
                fn(int(n))
                done = True
                break
    return done
