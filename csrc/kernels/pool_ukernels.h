// Max-pooling micro-kernels with ISA-specific implementations.
#pragma once

#include <cstdint>

namespace convcore {

#if defined(CONVCORE_HAVE_AVX2_KERNELS)
// 2x2 window, stride 2, no padding, no dilation, one plane of H x W, output
// P x Q with P = H/2 and Q = W/2 (every window complete).  Same semantics as
// the reference: scan order, strict '>', NaN takes over; indices h*W + w.
void maxpool2d_fwd_f32_2x2s2__avx2(int64_t H, int64_t W, const float* x, float* y, int64_t* idx);
#endif

}  // namespace convcore
