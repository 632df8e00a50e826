// AVX2 2x2/stride-2 max pooling: 8 outputs per step from two 16-float row
// segments, de-interleaved into the four window positions.  Compares follow
// the reference's scan order (top-left, top-right, bottom-left,
// bottom-right) with "greater, or unordered (NaN)" so ties and NaN resolve
// exactly as in PyTorch.  Memory-bound: reads 2 rows, writes y and int64 idx
// (a null idx skips the index stream).
//
// Compiled with -mavx2 -mfma; self-contained (no shared inline helpers).
#ifndef __AVX2__
#error "maxpool2d_avx2.cpp must be compiled with -mavx2 -mfma"
#endif

#include <immintrin.h>

#include "kernels/pool_ukernels.h"

namespace convcore {

void maxpool2d_fwd_f32_2x2s2__avx2(int64_t H, int64_t W, const float* x, float* y, int64_t* idx) {
  const int64_t P = H / 2, Q = W / 2;
  const __m256i off_tr = _mm256_set1_epi32(1);
  const __m256i off_bl = _mm256_set1_epi32(int(W));
  const __m256i off_br = _mm256_set1_epi32(int(W + 1));
  const __m256i lane2 = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  for (int64_t p = 0; p < P; ++p) {
    const float* r0 = x + 2 * p * W;
    const float* r1 = r0 + W;
    float* yp = y + p * Q;
    int64_t* ip = idx ? idx + p * Q : nullptr;
    const int64_t row_base = 2 * p * W;
    int64_t q = 0;
    for (; q + 8 <= Q; q += 8) {
      const __m256 a0 = _mm256_loadu_ps(r0 + 2 * q), a1 = _mm256_loadu_ps(r0 + 2 * q + 8);
      const __m256 b0 = _mm256_loadu_ps(r1 + 2 * q), b1 = _mm256_loadu_ps(r1 + 2 * q + 8);
      // shuffle keeps 128-bit lanes; permute4x64 (0, 2, 1, 3) restores order.
      const __m256 tl = _mm256_castpd_ps(
          _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a0, a1, 0x88)), 0xD8));
      const __m256 tr = _mm256_castpd_ps(
          _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a0, a1, 0xDD)), 0xD8));
      const __m256 bl = _mm256_castpd_ps(
          _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(b0, b1, 0x88)), 0xD8));
      const __m256 br = _mm256_castpd_ps(
          _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(b0, b1, 0xDD)), 0xD8));
      __m256 best = tl;
      __m256i off = _mm256_setzero_si256();
      __m256 m =
          _mm256_or_ps(_mm256_cmp_ps(tr, best, _CMP_GT_OQ), _mm256_cmp_ps(tr, tr, _CMP_UNORD_Q));
      best = _mm256_blendv_ps(best, tr, m);
      off = _mm256_blendv_epi8(off, off_tr, _mm256_castps_si256(m));
      m = _mm256_or_ps(_mm256_cmp_ps(bl, best, _CMP_GT_OQ), _mm256_cmp_ps(bl, bl, _CMP_UNORD_Q));
      best = _mm256_blendv_ps(best, bl, m);
      off = _mm256_blendv_epi8(off, off_bl, _mm256_castps_si256(m));
      m = _mm256_or_ps(_mm256_cmp_ps(br, best, _CMP_GT_OQ), _mm256_cmp_ps(br, br, _CMP_UNORD_Q));
      best = _mm256_blendv_ps(best, br, m);
      off = _mm256_blendv_epi8(off, off_br, _mm256_castps_si256(m));
      _mm256_storeu_ps(yp + q, best);
      if (!ip) continue;
      // index = row_base + 2q + 2*lane + off, widened to int64 in two halves.
      const __m256i rel =
          _mm256_add_epi32(_mm256_add_epi32(lane2, off), _mm256_set1_epi32(int(2 * q)));
      const __m256i base = _mm256_set1_epi64x(row_base);
      _mm256_storeu_si256(
          reinterpret_cast<__m256i*>(ip + q),
          _mm256_add_epi64(base, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(rel))));
      _mm256_storeu_si256(
          reinterpret_cast<__m256i*>(ip + q + 4),
          _mm256_add_epi64(base, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(rel, 1))));
    }
    for (; q < Q; ++q) {
      const float v[4] = {r0[2 * q], r0[2 * q + 1], r1[2 * q], r1[2 * q + 1]};
      const int64_t at[4] = {row_base + 2 * q, row_base + 2 * q + 1, row_base + W + 2 * q,
                             row_base + W + 2 * q + 1};
      float best = v[0];
      int64_t bi = at[0];
      for (int i = 1; i < 4; ++i) {
        if (v[i] > best || v[i] != v[i]) {  // v != v: NaN, without a shared inline helper
          best = v[i];
          bi = at[i];
        }
      }
      yp[q] = best;
      if (ip) ip[q] = bi;
    }
  }
}

}  // namespace convcore
