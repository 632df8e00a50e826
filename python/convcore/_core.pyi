"""Type stub of convcore's compiled module (csrc/bindings).

The public API is convcore.functional (argument normalisation, docs); these
are its low-level entry points with every size resolved to ints.  Arrays are
C-contiguous numpy arrays: float32 data, int64 indices (uint8 window
offsets in the training path's pool).  Invalid arguments
raise ValueError (or TypeError for a wrong dtype) naming the argument.
"""

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

def conv2d_forward(
    input: F32,
    weight: F32,
    bias: F32 | None,
    stride_h: int,
    stride_w: int,
    pad_top: int,
    pad_bottom: int,
    pad_left: int,
    pad_right: int,
    dilation_h: int,
    dilation_w: int,
    groups: int,
    relu: bool = False,
) -> F32: ...
def conv2d_backward(
    grad_output: F32,
    input: F32,
    weight: F32,
    stride_h: int,
    stride_w: int,
    pad_top: int,
    pad_bottom: int,
    pad_left: int,
    pad_right: int,
    dilation_h: int,
    dilation_w: int,
    groups: int,
    need_input: bool,
    need_weight: bool,
    need_bias: bool,
    relu_output: F32 | None = None,
) -> tuple[F32 | None, F32 | None, F32 | None]: ...
def linear_forward(input: F32, weight: F32, bias: F32 | None, relu: bool = False) -> F32: ...
def linear_backward(
    grad_output: F32,
    input: F32,
    weight: F32,
    need_input: bool,
    need_weight: bool,
    need_bias: bool,
    relu_output: F32 | None = None,
) -> tuple[F32 | None, F32 | None, F32 | None]: ...
def cross_entropy(logits: F32, target: I64, scale: float) -> tuple[F32, float, I64]: ...
def max_pool2d_forward(
    input: F32,
    kernel_h: int,
    kernel_w: int,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dilation_h: int,
    dilation_w: int,
    ceil_mode: bool,
    return_indices: bool = True,
) -> tuple[F32, I64 | None]: ...
def max_pool2d_backward(
    grad_output: F32, indices: I64, input_shape: Sequence[int], relu_input: F32 | None = None
) -> F32: ...
def max_pool2d_offsets_forward(
    input: F32,
    kernel_h: int,
    kernel_w: int,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    ceil_mode: bool,
) -> tuple[F32, U8]: ...
def max_pool2d_offsets_backward(
    grad_output: F32,
    offsets: U8,
    input_shape: Sequence[int],
    kernel_h: int,
    kernel_w: int,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    ceil_mode: bool,
    output: F32 | None = None,
) -> F32: ...
def conv2d_relu_max_pool2d_forward(
    input: F32,
    weight: F32,
    bias: F32 | None,
    stride_h: int,
    stride_w: int,
    pad_top: int,
    pad_bottom: int,
    pad_left: int,
    pad_right: int,
    dilation_h: int,
    dilation_w: int,
    groups: int,
    kernel_h: int,
    kernel_w: int,
    pool_stride_h: int,
    pool_stride_w: int,
    pool_pad_h: int,
    pool_pad_w: int,
    ceil_mode: bool,
) -> tuple[F32, U8]: ...
def conv2d_max_pool2d_weight_backward(
    grad_output: F32,
    offsets: U8,
    output: F32 | None,
    input: F32,
    weight: F32,
    stride_h: int,
    stride_w: int,
    pad_top: int,
    pad_bottom: int,
    pad_left: int,
    pad_right: int,
    dilation_h: int,
    dilation_w: int,
    groups: int,
    kernel_h: int,
    kernel_w: int,
    pool_stride_h: int,
    pool_stride_w: int,
    pool_pad_h: int,
    pool_pad_w: int,
    ceil_mode: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[F32 | None, F32 | None]: ...
def pad_forward(
    input: F32, left: int, right: int, top: int, bottom: int, mode: str, value: float
) -> F32: ...
def pad_backward(
    grad_output: F32,
    input_shape: Sequence[int],
    left: int,
    right: int,
    top: int,
    bottom: int,
    mode: str,
) -> F32: ...
def batch_norm_forward(
    input: F32,
    running_mean: F32 | None,
    running_var: F32 | None,
    weight: F32 | None,
    bias: F32 | None,
    training: bool,
    momentum: float,
    eps: float,
    relu: bool,
) -> tuple[F32, F32, F32]: ...
def batch_norm_backward(
    grad_output: F32,
    input: F32,
    weight: F32 | None,
    save_mean: F32,
    save_invstd: F32,
    output: F32 | None,
    training: bool,
    need_input: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[F32 | None, F32 | None, F32 | None]: ...
def adam_step(
    param: F32,
    grad: F32,
    exp_avg: F32,
    exp_avg_sq: F32,
    one_minus_beta1: float,
    beta2: float,
    one_minus_beta2: float,
    bias_correction2_sqrt: float,
    eps: float,
    neg_step_size: float,
    weight_decay: float,
) -> None: ...
def sgd_step(
    param: F32,
    grad: F32,
    momentum_buffer: F32 | None,
    momentum: float,
    one_minus_dampening: float,
    weight_decay: float,
    neg_lr: float,
    nesterov: bool,
    first: bool,
) -> None: ...
def same_padding(kernel: int, dilation: int, stride: int, dim: str) -> tuple[int, int]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def set_max_isa(name: str) -> None: ...
def active_isa() -> str: ...
def detected_isa() -> str: ...
def last_kernel(op: str) -> str: ...
def implementations(op: str) -> list[str]: ...
def set_disabled_implementations(names: list[str]) -> None: ...
def disabled_implementations() -> list[str]: ...
def build_info() -> dict[str, Any]: ...

class _DeviceArray:
    """A float32 or int64 array in GPU memory (built with CUDA only)."""

    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def ndim(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def device(self) -> int: ...
    @property
    def data_ptr(self) -> int: ...
    def numpy(self) -> npt.NDArray[Any]: ...
    def copy(self) -> _DeviceArray: ...
    def reshape(self, shape: Sequence[int]) -> _DeviceArray: ...
    def subarray(self, start: int, shape: Sequence[int]) -> _DeviceArray: ...
    def copy_from_host(self, array: npt.NDArray[Any]) -> None: ...
    def zero_(self) -> None: ...
    def __dlpack__(
        self,
        *,
        stream: Any = None,
        max_version: Any = None,
        dl_device: Any = None,
        copy: Any = None,
    ) -> Any: ...
    def __dlpack_device__(self) -> tuple[int, int]: ...
    def __len__(self) -> int: ...

class _CudaModule(ModuleType):
    """convcore._core.cuda: present only when the CUDA path was compiled in.
    Its ops mirror the CPU entry points above on DeviceArray arguments."""

    DeviceArray: type[_DeviceArray]
    def device_count(self) -> int: ...
    def unavailable_reason(self) -> str: ...
    def device_name(self, device: int) -> str: ...
    def runtime_version(self) -> int: ...
    def driver_version(self) -> int: ...
    def synchronize(self, device: int) -> None: ...
    def to_device(self, array: npt.NDArray[Any], device: int) -> _DeviceArray: ...
    def from_dlpack(self, obj: Any) -> _DeviceArray: ...
    def empty(self, shape: Sequence[int], dtype: str, device: int) -> _DeviceArray: ...
    def zeros(self, shape: Sequence[int], dtype: str, device: int) -> _DeviceArray: ...
    def relu_forward(self, input: _DeviceArray, inplace: bool) -> _DeviceArray: ...
    def relu_backward(
        self, grad_output: _DeviceArray, output: _DeviceArray, inplace: bool
    ) -> _DeviceArray: ...
    def multiply(self, a: _DeviceArray, b: _DeviceArray) -> _DeviceArray: ...
    def add_(self, dst: _DeviceArray, src: _DeviceArray) -> None: ...
    def cross_entropy(
        self, logits: _DeviceArray, target: I64, scale: float
    ) -> tuple[_DeviceArray, float, I64]: ...
    def adam_step(
        self,
        param: _DeviceArray,
        grad: _DeviceArray,
        exp_avg: _DeviceArray,
        exp_avg_sq: _DeviceArray,
        one_minus_beta1: float,
        beta2: float,
        one_minus_beta2: float,
        bias_correction2_sqrt: float,
        eps: float,
        neg_step_size: float,
        weight_decay: float,
    ) -> None: ...
    def sgd_step(
        self,
        param: _DeviceArray,
        grad: _DeviceArray,
        momentum_buffer: _DeviceArray | None,
        momentum: float,
        one_minus_dampening: float,
        weight_decay: float,
        neg_lr: float,
        nesterov: bool,
        first: bool,
    ) -> None: ...
    def __getattr__(self, name: str) -> Any: ...

cuda: _CudaModule
