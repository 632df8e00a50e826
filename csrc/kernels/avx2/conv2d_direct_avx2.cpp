// AVX2+FMA direct-convolution micro-kernels (see kernels/direct_ukernels.h).
//
// 6x16 and 4x24 direct kernels (forward, and the stride-1 data gradient):
// 12 ymm accumulators either way, unaligned loads of the input run straight
// from the padded phase plane (no packing) and one weight broadcast per
// output channel per tap: the register budget and FMA density of a GEMM
// tile.  Two shapes so the driver can pick the one that pads fewest channels
// (6 or 12 channels: 6x16; multiples of 4 such as 32 and 64: 4x24).
//
// 6x16 outer-product kernel (weight gradient, >= 16 output channels): six
// input taps broadcast against 16-channel dy panels, 12 accumulators, no
// horizontal sums.
//
// 4x3 dot kernel (weight gradient, few channels): 12 accumulators of 8
// lanes, 7 loads per 12 FMAs; the long reduction over output positions stays
// in the lanes and is summed once per tile.
//
// Compiled with -mavx2 -mfma; self-contained (intrinsics and raw pointers).
#ifndef __AVX2__
#error "conv2d_direct_avx2.cpp must be compiled with -mavx2 -mfma"
#endif

#include <immintrin.h>

#include "kernels/direct_ukernels.h"

namespace convcore {

void conv2d_direct_ukernel_f32_6x16__avx2(int64_t steps, const float* __restrict w, const float* x,
                                          const int64_t* offsets, float* __restrict out) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  for (int64_t p = 0; p < steps; ++p) {
    const float* xp = x + offsets[p];
    const __m256 b0 = _mm256_loadu_ps(xp);
    const __m256 b1 = _mm256_loadu_ps(xp + 8);
    __m256 a = _mm256_broadcast_ss(w + 0);
    c00 = _mm256_fmadd_ps(a, b0, c00);
    c01 = _mm256_fmadd_ps(a, b1, c01);
    a = _mm256_broadcast_ss(w + 1);
    c10 = _mm256_fmadd_ps(a, b0, c10);
    c11 = _mm256_fmadd_ps(a, b1, c11);
    a = _mm256_broadcast_ss(w + 2);
    c20 = _mm256_fmadd_ps(a, b0, c20);
    c21 = _mm256_fmadd_ps(a, b1, c21);
    a = _mm256_broadcast_ss(w + 3);
    c30 = _mm256_fmadd_ps(a, b0, c30);
    c31 = _mm256_fmadd_ps(a, b1, c31);
    a = _mm256_broadcast_ss(w + 4);
    c40 = _mm256_fmadd_ps(a, b0, c40);
    c41 = _mm256_fmadd_ps(a, b1, c41);
    a = _mm256_broadcast_ss(w + 5);
    c50 = _mm256_fmadd_ps(a, b0, c50);
    c51 = _mm256_fmadd_ps(a, b1, c51);
    w += 6;
  }
  _mm256_storeu_ps(out + 0, c00);
  _mm256_storeu_ps(out + 8, c01);
  _mm256_storeu_ps(out + 16, c10);
  _mm256_storeu_ps(out + 24, c11);
  _mm256_storeu_ps(out + 32, c20);
  _mm256_storeu_ps(out + 40, c21);
  _mm256_storeu_ps(out + 48, c30);
  _mm256_storeu_ps(out + 56, c31);
  _mm256_storeu_ps(out + 64, c40);
  _mm256_storeu_ps(out + 72, c41);
  _mm256_storeu_ps(out + 80, c50);
  _mm256_storeu_ps(out + 88, c51);
}

void conv2d_direct_ukernel_f32_4x24__avx2(int64_t steps, const float* __restrict w, const float* x,
                                          const int64_t* offsets, float* __restrict out) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c02 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps(), c12 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(), c22 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps(), c32 = _mm256_setzero_ps();
  for (int64_t p = 0; p < steps; ++p) {
    const float* xp = x + offsets[p];
    const __m256 b0 = _mm256_loadu_ps(xp);
    const __m256 b1 = _mm256_loadu_ps(xp + 8);
    const __m256 b2 = _mm256_loadu_ps(xp + 16);
    __m256 a = _mm256_broadcast_ss(w + 0);
    c00 = _mm256_fmadd_ps(a, b0, c00);
    c01 = _mm256_fmadd_ps(a, b1, c01);
    c02 = _mm256_fmadd_ps(a, b2, c02);
    a = _mm256_broadcast_ss(w + 1);
    c10 = _mm256_fmadd_ps(a, b0, c10);
    c11 = _mm256_fmadd_ps(a, b1, c11);
    c12 = _mm256_fmadd_ps(a, b2, c12);
    a = _mm256_broadcast_ss(w + 2);
    c20 = _mm256_fmadd_ps(a, b0, c20);
    c21 = _mm256_fmadd_ps(a, b1, c21);
    c22 = _mm256_fmadd_ps(a, b2, c22);
    a = _mm256_broadcast_ss(w + 3);
    c30 = _mm256_fmadd_ps(a, b0, c30);
    c31 = _mm256_fmadd_ps(a, b1, c31);
    c32 = _mm256_fmadd_ps(a, b2, c32);
    w += 4;
  }
  _mm256_storeu_ps(out + 0, c00);
  _mm256_storeu_ps(out + 8, c01);
  _mm256_storeu_ps(out + 16, c02);
  _mm256_storeu_ps(out + 24, c10);
  _mm256_storeu_ps(out + 32, c11);
  _mm256_storeu_ps(out + 40, c12);
  _mm256_storeu_ps(out + 48, c20);
  _mm256_storeu_ps(out + 56, c21);
  _mm256_storeu_ps(out + 64, c22);
  _mm256_storeu_ps(out + 72, c30);
  _mm256_storeu_ps(out + 80, c31);
  _mm256_storeu_ps(out + 88, c32);
}

void conv2d_outer_ukernel_f32_6x16__avx2(int64_t steps, const float* const* rows,
                                         const float* __restrict panel, float* c, int64_t ldc,
                                         bool accumulate) {
  const float* r0 = rows[0];
  const float* r1 = rows[1];
  const float* r2 = rows[2];
  const float* r3 = rows[3];
  const float* r4 = rows[4];
  const float* r5 = rows[5];
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  for (int64_t p = 0; p < steps; ++p) {
    const __m256 b0 = _mm256_loadu_ps(panel);
    const __m256 b1 = _mm256_loadu_ps(panel + 8);
    __m256 a = _mm256_broadcast_ss(r0 + p);
    c00 = _mm256_fmadd_ps(a, b0, c00);
    c01 = _mm256_fmadd_ps(a, b1, c01);
    a = _mm256_broadcast_ss(r1 + p);
    c10 = _mm256_fmadd_ps(a, b0, c10);
    c11 = _mm256_fmadd_ps(a, b1, c11);
    a = _mm256_broadcast_ss(r2 + p);
    c20 = _mm256_fmadd_ps(a, b0, c20);
    c21 = _mm256_fmadd_ps(a, b1, c21);
    a = _mm256_broadcast_ss(r3 + p);
    c30 = _mm256_fmadd_ps(a, b0, c30);
    c31 = _mm256_fmadd_ps(a, b1, c31);
    a = _mm256_broadcast_ss(r4 + p);
    c40 = _mm256_fmadd_ps(a, b0, c40);
    c41 = _mm256_fmadd_ps(a, b1, c41);
    a = _mm256_broadcast_ss(r5 + p);
    c50 = _mm256_fmadd_ps(a, b0, c50);
    c51 = _mm256_fmadd_ps(a, b1, c51);
    panel += 16;
  }
  float* o0 = c;
  float* o1 = c + ldc;
  float* o2 = c + 2 * ldc;
  float* o3 = c + 3 * ldc;
  float* o4 = c + 4 * ldc;
  float* o5 = c + 5 * ldc;
  if (accumulate) {
    c00 = _mm256_add_ps(_mm256_loadu_ps(o0), c00);
    c01 = _mm256_add_ps(_mm256_loadu_ps(o0 + 8), c01);
    c10 = _mm256_add_ps(_mm256_loadu_ps(o1), c10);
    c11 = _mm256_add_ps(_mm256_loadu_ps(o1 + 8), c11);
    c20 = _mm256_add_ps(_mm256_loadu_ps(o2), c20);
    c21 = _mm256_add_ps(_mm256_loadu_ps(o2 + 8), c21);
    c30 = _mm256_add_ps(_mm256_loadu_ps(o3), c30);
    c31 = _mm256_add_ps(_mm256_loadu_ps(o3 + 8), c31);
    c40 = _mm256_add_ps(_mm256_loadu_ps(o4), c40);
    c41 = _mm256_add_ps(_mm256_loadu_ps(o4 + 8), c41);
    c50 = _mm256_add_ps(_mm256_loadu_ps(o5), c50);
    c51 = _mm256_add_ps(_mm256_loadu_ps(o5 + 8), c51);
  }
  _mm256_storeu_ps(o0, c00);
  _mm256_storeu_ps(o0 + 8, c01);
  _mm256_storeu_ps(o1, c10);
  _mm256_storeu_ps(o1 + 8, c11);
  _mm256_storeu_ps(o2, c20);
  _mm256_storeu_ps(o2 + 8, c21);
  _mm256_storeu_ps(o3, c30);
  _mm256_storeu_ps(o3 + 8, c31);
  _mm256_storeu_ps(o4, c40);
  _mm256_storeu_ps(o4 + 8, c41);
  _mm256_storeu_ps(o5, c50);
  _mm256_storeu_ps(o5 + 8, c51);
}

void conv2d_dot_ukernel_f32_4x3__avx2(int64_t n_vec, int64_t images, const float* const* a,
                                      int64_t a_img, const float* const* b, int64_t b_img,
                                      float* out) {
  __m256 s00 = _mm256_setzero_ps(), s01 = _mm256_setzero_ps(), s02 = _mm256_setzero_ps();
  __m256 s10 = _mm256_setzero_ps(), s11 = _mm256_setzero_ps(), s12 = _mm256_setzero_ps();
  __m256 s20 = _mm256_setzero_ps(), s21 = _mm256_setzero_ps(), s22 = _mm256_setzero_ps();
  __m256 s30 = _mm256_setzero_ps(), s31 = _mm256_setzero_ps(), s32 = _mm256_setzero_ps();
  for (int64_t img = 0; img < images; ++img) {
    const float* a0 = a[0] + img * a_img;
    const float* a1 = a[1] + img * a_img;
    const float* a2 = a[2] + img * a_img;
    const float* a3 = a[3] + img * a_img;
    const float* b0 = b[0] + img * b_img;
    const float* b1 = b[1] + img * b_img;
    const float* b2 = b[2] + img * b_img;
    for (int64_t v = 0; v < n_vec * 8; v += 8) {
      const __m256 x0 = _mm256_loadu_ps(b0 + v);
      const __m256 x1 = _mm256_loadu_ps(b1 + v);
      const __m256 x2 = _mm256_loadu_ps(b2 + v);
      __m256 d = _mm256_loadu_ps(a0 + v);
      s00 = _mm256_fmadd_ps(d, x0, s00);
      s01 = _mm256_fmadd_ps(d, x1, s01);
      s02 = _mm256_fmadd_ps(d, x2, s02);
      d = _mm256_loadu_ps(a1 + v);
      s10 = _mm256_fmadd_ps(d, x0, s10);
      s11 = _mm256_fmadd_ps(d, x1, s11);
      s12 = _mm256_fmadd_ps(d, x2, s12);
      d = _mm256_loadu_ps(a2 + v);
      s20 = _mm256_fmadd_ps(d, x0, s20);
      s21 = _mm256_fmadd_ps(d, x1, s21);
      s22 = _mm256_fmadd_ps(d, x2, s22);
      d = _mm256_loadu_ps(a3 + v);
      s30 = _mm256_fmadd_ps(d, x0, s30);
      s31 = _mm256_fmadd_ps(d, x1, s31);
      s32 = _mm256_fmadd_ps(d, x2, s32);
    }
  }
  // Horizontal sums in the fixed order ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
  alignas(32) float lanes[12][8];
  _mm256_store_ps(lanes[0], s00);
  _mm256_store_ps(lanes[1], s01);
  _mm256_store_ps(lanes[2], s02);
  _mm256_store_ps(lanes[3], s10);
  _mm256_store_ps(lanes[4], s11);
  _mm256_store_ps(lanes[5], s12);
  _mm256_store_ps(lanes[6], s20);
  _mm256_store_ps(lanes[7], s21);
  _mm256_store_ps(lanes[8], s22);
  _mm256_store_ps(lanes[9], s30);
  _mm256_store_ps(lanes[10], s31);
  _mm256_store_ps(lanes[11], s32);
  for (int i = 0; i < 12; ++i) {
    const float* l = lanes[i];
    out[i] += ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
  }
}

}  // namespace convcore
