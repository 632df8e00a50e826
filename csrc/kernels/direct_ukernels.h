// Direct-convolution micro-kernels (positions in the SIMD lanes) on padded
// input planes: the driver materialises the padding once and, for stride > 1,
// splits each plane into stride phases (ops/conv2d_drivers.h, PaddedPlanes),
// so the kernels have no bounds checks and any stride reads unit-stride runs.
// Output positions are indexed in phase-plane coordinates t = p * Wh + q
// (Wh: the row pitch of a phase plane), so a run of consecutive t is a run of
// consecutive input elements for every kernel tap: the input operand needs
// no packing.
#pragma once

#include <cstdint>

namespace convcore {

// An MR x NR kernel computes MR output channels at NR consecutive positions:
// out[i * NR + j] = sum over p < steps of w[p * MR + i] * x[offsets[p] + j].
// w is a packed weight panel (steps x MR, zero-padded); offsets[p] is the
// distance from x of tap p (its channel's phase plane, row and column offset
// for tap (r * dil_h, s * dil_w), see PaddedPlanes::tap); out is an
// MR x NR tile (overwritten).  The reduction over p runs in increasing order.
// Two shapes with the same register budget (12 accumulators) let the driver
// pick the one that wastes fewest rows: 6x16 for 6 or 12 channels, 4x24 for
// multiples of 4 such as 32 and 64.
using conv_direct_ukernel_fn = void (*)(int64_t steps, const float* w, const float* x,
                                        const int64_t* offsets, float* out);

// Weight gradient as 4 x 3 dot products of length n_vec * 8, over `images`
// images: out[i * 3 + j] += sum_img sum_t a[i][img * a_img + t] * b[j][img * b_img + t].
// Lanes accumulate separately and are summed in a fixed order at the end,
// so the result does not depend on threading.
using conv_dot_ukernel_fn = void (*)(int64_t n_vec, int64_t images, const float* const* a,
                                     int64_t a_img, const float* const* b, int64_t b_img,
                                     float* out);

// Weight gradient as an outer-product tile: c[i * ldc + j] (+)= sum over
// p < steps of rows[i][p] * panel[p * 16 + j], i < 6, j < 16.  rows are six
// arbitrary streams (input taps read in place), panel a packed block of
// 16 dy channels (steps x 16).  Reduction over p in increasing order.
using conv_outer_ukernel_fn = void (*)(int64_t steps, const float* const* rows, const float* panel,
                                       float* c, int64_t ldc, bool accumulate);

constexpr int64_t kDotMR = 4;
constexpr int64_t kDotNR = 3;

// db[k] for one output channel: each plane summed in 16 float lanes (a fixed,
// vectorisable order), the plane sums added in double across the batch.
float conv2d_bwd_bias_f32__portable(int64_t N, int64_t K, int64_t PQ, const float* dy, int64_t k);

void conv2d_direct_ukernel_f32_6x16__portable(int64_t steps, const float* w, const float* x,
                                              const int64_t* offsets, float* out);
void conv2d_direct_ukernel_f32_4x24__portable(int64_t steps, const float* w, const float* x,
                                              const int64_t* offsets, float* out);
void conv2d_dot_ukernel_f32_4x3__portable(int64_t n_vec, int64_t images, const float* const* a,
                                          int64_t a_img, const float* const* b, int64_t b_img,
                                          float* out);
void conv2d_outer_ukernel_f32_6x16__portable(int64_t steps, const float* const* rows,
                                             const float* panel, float* c, int64_t ldc,
                                             bool accumulate);
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
void conv2d_outer_ukernel_f32_6x16__avx2(int64_t steps, const float* const* rows,
                                         const float* panel, float* c, int64_t ldc,
                                         bool accumulate);
void conv2d_direct_ukernel_f32_6x16__avx2(int64_t steps, const float* w, const float* x,
                                          const int64_t* offsets, float* out);
void conv2d_direct_ukernel_f32_4x24__avx2(int64_t steps, const float* w, const float* x,
                                          const int64_t* offsets, float* out);
void conv2d_dot_ukernel_f32_4x3__avx2(int64_t n_vec, int64_t images, const float* const* a,
                                      int64_t a_img, const float* const* b, int64_t b_img,
                                      float* out);
#endif

}  // namespace convcore
