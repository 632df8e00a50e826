// Max-pooling micro-kernels with ISA-specific implementations.
#pragma once

#include <cstdint>

namespace convcore {

#if defined(CONVCORE_HAVE_AVX2_KERNELS)
// 2x2 window, stride 2, no padding, no dilation, one plane of H x W, output
// P x Q with P = H/2 and Q = W/2 (every window complete).  Same semantics as
// the reference: scan order, strict '>', NaN takes over; indices h*W + w
// (idx may be null: values only).
void maxpool2d_fwd_f32_2x2s2__avx2(int64_t H, int64_t W, const float* x, float* y, int64_t* idx);
// The same with each window's maximum as one byte, its tap 0..3 (off may be
// null), as maxpool2d_fwd_f32_offsets_2x2s2__avx512.
void maxpool2d_fwd_f32_offsets_2x2s2__avx2(int64_t H, int64_t W, const float* x, float* y,
                                           uint8_t* off);
// Its backward, as maxpool2d_bwd_f32_offsets_2x2s2__avx512 (the planes done
// returned; a tap above 3 stops it).
int64_t maxpool2d_bwd_f32_offsets_2x2s2__avx2(int64_t planes, int64_t H, int64_t W, const float* dy,
                                              const uint8_t* off, const float* y, float* dx);
#endif

#if defined(CONVCORE_HAVE_AVX512_KERNELS)
// 2x2 window, stride 2, no padding or dilation, over `planes` consecutive
// H x W planes, P = H/2, Q = W/2, any width (masked tails); H*W < 2^30.
// idx may be null (values only).
void maxpool2d_fwd_f32_2x2s2__avx512(int64_t planes, int64_t H, int64_t W, const float* x, float* y,
                                     int64_t* idx);
// Backward of the same geometry when every index lies in its own window
// (as every forward pass produces): dx is written densely, with no zero
// pass and no scatter.  Returns the number of planes done; a plane with an
// index outside its window stops the kernel (that plane partly written) and
// the caller handles it with the general scatter.
int64_t maxpool2d_bwd_f32_2x2s2__avx512(int64_t planes, int64_t H, int64_t W, const float* dy,
                                        const int64_t* idx, float* dx);
// The same pair with each window's maximum kept as one byte, its tap 0..3
// (top-left, top-right, bottom-left, bottom-right): the training path's
// compact workspace, an eighth of the int64 stream.  off may be null in the
// forward.  The backward takes y, the forward's output, or null: when the
// pooled input was a ReLU's output, the gradient also passes back through
// that ReLU, each window's value times 0 where y is not > 0 (y is the
// ReLU's output at the maximum).  A tap above 3 stops it as an index outside
// its window stops the int64 kernel.
void maxpool2d_fwd_f32_offsets_2x2s2__avx512(int64_t planes, int64_t H, int64_t W, const float* x,
                                             float* y, uint8_t* off);
int64_t maxpool2d_bwd_f32_offsets_2x2s2__avx512(int64_t planes, int64_t H, int64_t W,
                                                const float* dy, const uint8_t* off, const float* y,
                                                float* dx);
#endif

}  // namespace convcore
