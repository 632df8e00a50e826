// Channels-in-lanes ("clanes") conv micro-kernels: output or weight-gradient
// channels live in the SIMD lanes (16 per zmm), output positions or kernel
// taps in the broadcast dimension.  The input stays in the padded NCHW
// planes of the direct path (ops/conv2d_drivers.h), read as scalar
// broadcasts, so no blocked copy of the activations is made; only the
// weights (forward, data gradient) or dy (weight gradient) are re-laid.
#pragma once

#include <cstdint>

namespace convcore {

// Forward / stride-1 data-gradient tile of nt <= 14 consecutive positions x
// 32 output channels:
//   y[k * ldy + j] = (bias ? bias[k] : 0) + sum_{p < steps} w[p * 32 + k] * x[offsets[p] + j]
// for j < nt, k < kn <= 32.  w is a packed panel (steps x 32, zero past the
// valid channels); the reduction over p runs in increasing order.
using conv_clanes_fwd_ukernel_fn = void (*)(int64_t steps, const float* w, const float* x,
                                            const int64_t* offsets, int64_t nt, int64_t kn,
                                            const float* bias, float* y, int64_t ldy);
constexpr int64_t kClanesTileN = 14;
constexpr int64_t kClanesTileK = 32;
// The widest dy panel of the weight-gradient tiles (6 x 64).
constexpr int64_t kClanesMaxPanelK = 64;

// Weight-gradient outer-product tile of MT taps x KP channels over `nrows`
// output rows of q_len positions each, in each of `images` images:
//   c[i * ldc + j] += sum_{m < images} sum_{r < nrows} sum_{q < q_len}
//                     rows[i][m * x_image_stride + r * x_pitch + q]
//                     * panel[((m * nrows + r) * q_len + q) * KP + j]
// rows are MT input-tap streams read in place from the padded planes (row
// pitch x_pitch, image pitch x_image_stride), panel a packed block of KP dy
// channels, position-major with no padding columns (the images' blocks one
// after the other), so no FMA is spent on positions past the row end.  The
// reduction runs image by image, row by row, q increasing: the same sums as
// one call per image.
using conv_clanes_outer_ukernel_fn = void (*)(int64_t q_len, int64_t nrows, int64_t images,
                                              const float* const* rows, int64_t x_pitch,
                                              int64_t x_image_stride, const float* panel, float* c,
                                              int64_t ldc);

// Packs a kp-channel dy panel position-major: panel[t * kp + j] = dy[j * ld + t]
// for t < positions, j < channels (zero for channels <= j < kp; kp a
// multiple of 16).  Reads past `positions` or `channels` never happen.
// sums (may be null; kp floats): sums[j] = sum over t < positions of
// panel[t * kp + j], added in increasing t -- the bias gradient's share of
// this panel, summed while its values are in registers.
using conv_clanes_pack_fn = void (*)(const float* dy, int64_t ld, int64_t positions,
                                     int64_t channels, float* panel, int64_t kp, float* sums);

// Stride-1 padded planes (the layout of ops/conv2d_drivers.h PaddedPlanes
// with one phase): dst[c][i][j] = src[c][i - pad_top][j - pad_left] inside
// the source, else 0, for i < Hp, j < Wp; pads may be negative (crop).
using conv_clanes_pad_fn = void (*)(const float* src, int64_t channels, int64_t H, int64_t W,
                                    int64_t pad_top, int64_t pad_left, int64_t Hp, int64_t Wp,
                                    float* dst);

#if defined(CONVCORE_HAVE_AVX512_KERNELS)
void conv2d_pad_planes_f32_s1__avx512(const float* src, int64_t channels, int64_t H, int64_t W,
                                      int64_t pad_top, int64_t pad_left, int64_t Hp, int64_t Wp,
                                      float* dst);
void conv2d_bwd_weight_f32_pack_dy_clanes__avx512(const float* dy, int64_t ld, int64_t positions,
                                                  int64_t channels, float* panel, int64_t kp,
                                                  float* sums);
void conv2d_fwd_f32_clanes_14x32__avx512(int64_t steps, const float* w, const float* x,
                                         const int64_t* offsets, int64_t nt, int64_t kn,
                                         const float* bias, float* y, int64_t ldy);
void conv2d_bwd_weight_f32_clanes_6x64__avx512(int64_t q_len, int64_t nrows, int64_t images,
                                               const float* const* rows, int64_t x_pitch,
                                               int64_t x_image_stride, const float* panel, float* c,
                                               int64_t ldc);
void conv2d_bwd_weight_f32_clanes_12x32__avx512(int64_t q_len, int64_t nrows, int64_t images,
                                                const float* const* rows, int64_t x_pitch,
                                                int64_t x_image_stride, const float* panel,
                                                float* c, int64_t ldc);
#endif

}  // namespace convcore
