// AVX2+FMA 6x16 GEMM micro-kernel.
//
// Register budget: 12 ymm accumulators (6 rows x 2 vectors of 8), 2 for the
// B row, 1 for the broadcast A element: 15 of 16.  Each step streams 64 bytes
// of B from the packed panel and 6 A elements (six row pointers and one
// offset: packed or in place) for 12 FMAs, which keeps both FMA pipes busy.
//
// This file is compiled with -mavx2 -mfma and must stay self-contained
// (intrinsics and raw pointers only, no shared inline helpers or templates),
// so the linker can never pick an AVX2 copy of a function for the portable path.
#ifndef __AVX2__
#error "gemm_avx2.cpp must be compiled with -mavx2 -mfma"
#endif

#include <immintrin.h>

#include "kernels/gemm_ukernels.h"

namespace convcore {

void gemm_ukernel_f32_6x16__avx2(int64_t kc, const float* __restrict a, int64_t a_rs, int64_t a_cs,
                                 const float* __restrict b, float* c, int64_t ldc, int64_t mr,
                                 int64_t nr, bool accumulate) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  // Rows past mr read row 0 again (their sums are never stored), so an A
  // read in place is never read past its last row.
  const float* a0 = a;
  const float* a1 = a + (mr > 1 ? a_rs : 0);
  const float* a2 = a + (mr > 2 ? 2 * a_rs : 0);
  const float* a3 = a + (mr > 3 ? 3 * a_rs : 0);
  const float* a4 = a + (mr > 4 ? 4 * a_rs : 0);
  const float* a5 = a + (mr > 5 ? 5 * a_rs : 0);
  for (int64_t p = 0, o = 0; p < kc; ++p, o += a_cs) {
    const __m256 b0 = _mm256_loadu_ps(b);
    const __m256 b1 = _mm256_loadu_ps(b + 8);
    __m256 ai = _mm256_broadcast_ss(a0 + o);
    c00 = _mm256_fmadd_ps(ai, b0, c00);
    c01 = _mm256_fmadd_ps(ai, b1, c01);
    ai = _mm256_broadcast_ss(a1 + o);
    c10 = _mm256_fmadd_ps(ai, b0, c10);
    c11 = _mm256_fmadd_ps(ai, b1, c11);
    ai = _mm256_broadcast_ss(a2 + o);
    c20 = _mm256_fmadd_ps(ai, b0, c20);
    c21 = _mm256_fmadd_ps(ai, b1, c21);
    ai = _mm256_broadcast_ss(a3 + o);
    c30 = _mm256_fmadd_ps(ai, b0, c30);
    c31 = _mm256_fmadd_ps(ai, b1, c31);
    ai = _mm256_broadcast_ss(a4 + o);
    c40 = _mm256_fmadd_ps(ai, b0, c40);
    c41 = _mm256_fmadd_ps(ai, b1, c41);
    ai = _mm256_broadcast_ss(a5 + o);
    c50 = _mm256_fmadd_ps(ai, b0, c50);
    c51 = _mm256_fmadd_ps(ai, b1, c51);
    b += 16;
  }
  if (mr == 6 && nr == 16) {
    float* r0 = c;
    float* r1 = c + ldc;
    float* r2 = c + 2 * ldc;
    float* r3 = c + 3 * ldc;
    float* r4 = c + 4 * ldc;
    float* r5 = c + 5 * ldc;
    if (accumulate) {
      c00 = _mm256_add_ps(c00, _mm256_loadu_ps(r0));
      c01 = _mm256_add_ps(c01, _mm256_loadu_ps(r0 + 8));
      c10 = _mm256_add_ps(c10, _mm256_loadu_ps(r1));
      c11 = _mm256_add_ps(c11, _mm256_loadu_ps(r1 + 8));
      c20 = _mm256_add_ps(c20, _mm256_loadu_ps(r2));
      c21 = _mm256_add_ps(c21, _mm256_loadu_ps(r2 + 8));
      c30 = _mm256_add_ps(c30, _mm256_loadu_ps(r3));
      c31 = _mm256_add_ps(c31, _mm256_loadu_ps(r3 + 8));
      c40 = _mm256_add_ps(c40, _mm256_loadu_ps(r4));
      c41 = _mm256_add_ps(c41, _mm256_loadu_ps(r4 + 8));
      c50 = _mm256_add_ps(c50, _mm256_loadu_ps(r5));
      c51 = _mm256_add_ps(c51, _mm256_loadu_ps(r5 + 8));
    }
    _mm256_storeu_ps(r0, c00);
    _mm256_storeu_ps(r0 + 8, c01);
    _mm256_storeu_ps(r1, c10);
    _mm256_storeu_ps(r1 + 8, c11);
    _mm256_storeu_ps(r2, c20);
    _mm256_storeu_ps(r2 + 8, c21);
    _mm256_storeu_ps(r3, c30);
    _mm256_storeu_ps(r3 + 8, c31);
    _mm256_storeu_ps(r4, c40);
    _mm256_storeu_ps(r4 + 8, c41);
    _mm256_storeu_ps(r5, c50);
    _mm256_storeu_ps(r5 + 8, c51);
    return;
  }
  // Edge tile: spill the accumulators and store only the mr x nr corner.
  alignas(32) float tile[6][16];
  _mm256_store_ps(tile[0], c00);
  _mm256_store_ps(tile[0] + 8, c01);
  _mm256_store_ps(tile[1], c10);
  _mm256_store_ps(tile[1] + 8, c11);
  _mm256_store_ps(tile[2], c20);
  _mm256_store_ps(tile[2] + 8, c21);
  _mm256_store_ps(tile[3], c30);
  _mm256_store_ps(tile[3] + 8, c31);
  _mm256_store_ps(tile[4], c40);
  _mm256_store_ps(tile[4] + 8, c41);
  _mm256_store_ps(tile[5], c50);
  _mm256_store_ps(tile[5] + 8, c51);
  for (int64_t i = 0; i < mr; ++i) {
    float* ci = c + i * ldc;
    if (accumulate) {
      for (int64_t j = 0; j < nr; ++j) ci[j] += tile[i][j];
    } else {
      for (int64_t j = 0; j < nr; ++j) ci[j] = tile[i][j];
    }
  }
}

}  // namespace convcore
