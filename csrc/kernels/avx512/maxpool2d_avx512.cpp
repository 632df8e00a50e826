// AVX-512 2x2/stride-2 max pooling, forward and backward, for any plane
// width: outputs go in chunks of 8 (one ymm of values, one zmm of int64
// indices) and the last chunk of a row is masked, so a 14-wide plane (7
// outputs per row) or an 8-wide one (4) runs vector code instead of the
// scalar tail that AVX2's 8-output loop leaves there.
//
// Layout: `planes` consecutive planes of H x W floats (NCHW with N*C planes),
// output P x Q per plane with P = H/2, Q = W/2 (floor: an odd last row or
// column is never read by the forward pass and gets zero gradient).
// Indices are flat h*W + w per plane, int64 (PyTorch's); H*W < 2^30 so the
// offsets are formed in int32 lanes and widened on the store.
//
// Why it is fast: memory-bound.  Each chunk is two masked loads of 16 floats
// (two input rows), one in-register permute per row that puts the even
// columns in the low half and the odd ones in the high half, three
// compare/blend steps in mask registers, and two stores; nothing is read or
// written twice, and a null `idx` skips the index stream (a third of the
// bytes).  Semantics as the reference: scan order tl, tr, bl, br, strict
// '>', a NaN always takes over (so NaN propagates, last NaN's index).
//
// Compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma;
// self-contained (no inline helpers shared with other ISA files).
#if !defined(__AVX512F__) || !defined(__AVX512DQ__) || !defined(__AVX512VL__)
#error "maxpool2d_avx512.cpp must be compiled with -mavx512f -mavx512dq -mavx512vl"
#endif

#include <immintrin.h>

#include <cstring>

#include "kernels/pool_ukernels.h"

namespace convcore {
namespace {

// "v replaces best": v > best, or v is NaN.
inline __mmask8 takes_over(__m256 v, __m256 best) {
  return __mmask8(_mm256_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm256_cmp_ps_mask(v, v, _CMP_UNORD_Q));
}

}  // namespace

void maxpool2d_fwd_f32_2x2s2__avx512(int64_t planes, int64_t H, int64_t W, const float* x,
                                     float* y, int64_t* idx) {
  const int64_t P = H / 2, Q = W / 2;
  // Even columns to lanes 0-7, odd columns to lanes 8-15.
  const __m512i split = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const __m256i lane2 = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  const __m256i off_tr = _mm256_set1_epi32(1), off_bl = _mm256_set1_epi32(int(W)),
                off_br = _mm256_set1_epi32(int(W + 1));
  for (int64_t pl = 0; pl < planes; ++pl) {
    const float* xp = x + pl * H * W;
    float* yp = y + pl * P * Q;
    int64_t* ip = idx ? idx + pl * P * Q : nullptr;
    for (int64_t p = 0; p < P; ++p) {
      const float* r0 = xp + 2 * p * W;
      const float* r1 = r0 + W;
      for (int64_t q0 = 0; q0 < Q; q0 += 8) {
        const int n = int(Q - q0 < 8 ? Q - q0 : 8);
        const __mmask16 lm = __mmask16((1u << (2 * n)) - 1u);
        const __mmask8 sm = __mmask8((1u << n) - 1u);
        const bool full = n == 8;  // plain loads and stores where no mask is needed
        const __m512 a = _mm512_permutexvar_ps(
            split, full ? _mm512_loadu_ps(r0 + 2 * q0) : _mm512_maskz_loadu_ps(lm, r0 + 2 * q0));
        const __m512 b = _mm512_permutexvar_ps(
            split, full ? _mm512_loadu_ps(r1 + 2 * q0) : _mm512_maskz_loadu_ps(lm, r1 + 2 * q0));
        const __m256 tl = _mm512_castps512_ps256(a), tr = _mm512_extractf32x8_ps(a, 1);
        const __m256 bl = _mm512_castps512_ps256(b), br = _mm512_extractf32x8_ps(b, 1);
        __m256 best = tl;
        __m256i off = _mm256_setzero_si256();
        __mmask8 m = takes_over(tr, best);
        best = _mm256_mask_mov_ps(best, m, tr);
        off = _mm256_mask_mov_epi32(off, m, off_tr);
        m = takes_over(bl, best);
        best = _mm256_mask_mov_ps(best, m, bl);
        off = _mm256_mask_mov_epi32(off, m, off_bl);
        m = takes_over(br, best);
        best = _mm256_mask_mov_ps(best, m, br);
        off = _mm256_mask_mov_epi32(off, m, off_br);
        if (full)
          _mm256_storeu_ps(yp + p * Q + q0, best);
        else
          _mm256_mask_storeu_ps(yp + p * Q + q0, sm, best);
        if (ip) {
          const __m256i at = _mm256_add_epi32(
              _mm256_add_epi32(off, lane2), _mm256_set1_epi32(int(2 * p * W + 2 * q0)));
          if (full)
            _mm512_storeu_si512(ip + p * Q + q0, _mm512_cvtepi32_epi64(at));
          else
            _mm512_mask_storeu_epi64(ip + p * Q + q0, sm, _mm512_cvtepi32_epi64(at));
        }
      }
    }
  }
}

int64_t maxpool2d_bwd_f32_2x2s2__avx512(int64_t planes, int64_t H, int64_t W, const float* dy,
                                        const int64_t* idx, float* dx) {
  const int64_t P = H / 2, Q = W / 2;
  // (tl, tr) or (bl, br) interleaved back into an input row segment.
  const __m512i zip = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i lane2 = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
  const __m512i one = _mm512_set1_epi64(1), w0 = _mm512_set1_epi64(W), w1 = _mm512_set1_epi64(W + 1);
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t pl = 0; pl < planes; ++pl) {
    const float* gp = dy + pl * P * Q;
    const int64_t* ip = idx + pl * P * Q;
    float* xp = dx + pl * H * W;
    for (int64_t p = 0; p < P; ++p) {
      float* d0 = xp + 2 * p * W;
      float* d1 = d0 + W;
      for (int64_t q0 = 0; q0 < Q; q0 += 8) {
        const int n = int(Q - q0 < 8 ? Q - q0 : 8);
        const __mmask8 sm = __mmask8((1u << n) - 1u);
        const __mmask16 wm = __mmask16((1u << (2 * n)) - 1u);
        const __m256 g = _mm256_maskz_loadu_ps(sm, gp + p * Q + q0);
        // Offset of each index within its own window, compared in 64 bits so
        // no out-of-range index can alias a window position.
        const __m512i rel = _mm512_sub_epi64(
            _mm512_maskz_loadu_epi64(sm, ip + p * Q + q0),
            _mm512_add_epi64(lane2, _mm512_set1_epi64(2 * p * W + 2 * q0)));
        const __mmask8 m_tl = _mm512_cmpeq_epi64_mask(rel, _mm512_setzero_si512());
        const __mmask8 m_tr = _mm512_cmpeq_epi64_mask(rel, one);
        const __mmask8 m_bl = _mm512_cmpeq_epi64_mask(rel, w0);
        const __mmask8 m_br = _mm512_cmpeq_epi64_mask(rel, w1);
        if (__mmask8((m_tl | m_tr | m_bl | m_br) & sm) != sm) return pl;
        // 0 + g, as the reference's zero-fill-then-add gives (-0 becomes +0).
        const __m512 tl = _mm512_castps256_ps512(_mm256_maskz_add_ps(m_tl, g, zero));
        const __m512 tr = _mm512_castps256_ps512(_mm256_maskz_add_ps(m_tr, g, zero));
        const __m512 bl = _mm512_castps256_ps512(_mm256_maskz_add_ps(m_bl, g, zero));
        const __m512 br = _mm512_castps256_ps512(_mm256_maskz_add_ps(m_br, g, zero));
        _mm512_mask_storeu_ps(d0 + 2 * q0, wm, _mm512_permutex2var_ps(tl, zip, tr));
        _mm512_mask_storeu_ps(d1 + 2 * q0, wm, _mm512_permutex2var_ps(bl, zip, br));
      }
      if (W & 1) d0[W - 1] = d1[W - 1] = 0.0f;
    }
    if (H & 1) std::memset(xp + (H - 1) * W, 0, size_t(W) * sizeof(float));
  }
  return planes;
}

}  // namespace convcore
