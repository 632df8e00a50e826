"""convcore: fast, exact building blocks of convolutional networks.

NCHW float32 convolution (forward and all gradients), padding and max
pooling, computed by C++17 kernels (AVX2/FMA chosen at runtime, OpenMP
threads) with the semantics of ``torch.nn.functional``.  Arrays are numpy
arrays; PyTorch is never needed at run time.

Quick start::

    import numpy as np, convcore
    x = np.random.rand(8, 1, 28, 28).astype(np.float32)
    w = np.random.rand(6, 1, 5, 5).astype(np.float32)
    y = convcore.conv2d(x, w, padding=2)                  # (8, 6, 28, 28)
    p, idx = convcore.max_pool2d(y, 2, return_indices=True)

Environment:
    CONVCORE_MAX_ISA=scalar|portable|avx2|avx512  cap the kernels used (testing).
    CONVCORE_VERBOSE=1                     log which kernel ran, per call.
    OMP_NUM_THREADS                        default thread count.

Training: ``convcore.nn`` (layers), ``convcore.optim`` (SGD, Adam),
``convcore.models`` (the Fashion-MNIST CNNs), ``convcore.data`` (the data set),
and the ``convcore-train`` program (``python -m convcore.train``).

GPU: ``convcore.cuda`` (built when nvcc is found; see ``convcore.cuda.is_available()``).
"""

from __future__ import annotations

from . import cuda, data, models, nn, optim
from ._process import tune_process
from ._runtime import (
    __version__,
    build_info,
    disabled_implementations,
    get_num_threads,
    implementations,
    last_kernel,
    set_disabled_implementations,
    set_max_isa,
    set_num_threads,
)
from .functional import (
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
    "__version__",
    "batch_norm",
    "batch_norm_backward",
    "build_info",
    "conv2d",
    "conv2d_backward",
    "conv2d_relu",
    "conv2d_relu_backward",
    "cuda",
    "data",
    "get_num_threads",
    "disabled_implementations",
    "implementations",
    "last_kernel",
    "max_pool2d",
    "max_pool2d_backward",
    "models",
    "nn",
    "optim",
    "pad",
    "pad_backward",
    "set_disabled_implementations",
    "set_max_isa",
    "set_num_threads",
    "tune_process",
]
