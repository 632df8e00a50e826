// AVX2 2x2/stride-2 max pooling: 8 outputs per step from two 16-float row
// segments, de-interleaved into the four window positions.  Compares follow
// the reference's scan order (top-left, top-right, bottom-left,
// bottom-right) with "greater, or unordered (NaN)" so ties and NaN resolve
// exactly as in PyTorch.  Memory-bound: reads 2 rows, writes y and int64 idx
// (a null idx skips the index stream), or, for the training path, one byte
// per window, its tap.
//
// Compiled with -mavx2 -mfma; self-contained (its inline helpers are in an
// anonymous namespace, never shared with another ISA's file).
#ifndef __AVX2__
#error "maxpool2d_avx2.cpp must be compiled with -mavx2 -mfma"
#endif

#include <immintrin.h>

#include "kernels/pool_ukernels.h"

namespace convcore {

namespace {

// The maxima of the 8 windows of columns 2q .. 2q + 15 of rows r0, r1, in
// the reference's scan order, and each one's position code: 0 (top left) or
// c_tr, c_bl, c_br (the int64 path's 1, W, W + 1, or taps 1, 2, 3).
inline __m256 window_max8(const float* r0, const float* r1, __m256i c_tr, __m256i c_bl,
                          __m256i c_br, __m256i* code) {
  const __m256 a0 = _mm256_loadu_ps(r0), a1 = _mm256_loadu_ps(r0 + 8);
  const __m256 b0 = _mm256_loadu_ps(r1), b1 = _mm256_loadu_ps(r1 + 8);
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
  __m256i c = _mm256_setzero_si256();
  __m256 m = _mm256_or_ps(_mm256_cmp_ps(tr, best, _CMP_GT_OQ), _mm256_cmp_ps(tr, tr, _CMP_UNORD_Q));
  best = _mm256_blendv_ps(best, tr, m);
  c = _mm256_blendv_epi8(c, c_tr, _mm256_castps_si256(m));
  m = _mm256_or_ps(_mm256_cmp_ps(bl, best, _CMP_GT_OQ), _mm256_cmp_ps(bl, bl, _CMP_UNORD_Q));
  best = _mm256_blendv_ps(best, bl, m);
  c = _mm256_blendv_epi8(c, c_bl, _mm256_castps_si256(m));
  m = _mm256_or_ps(_mm256_cmp_ps(br, best, _CMP_GT_OQ), _mm256_cmp_ps(br, br, _CMP_UNORD_Q));
  best = _mm256_blendv_ps(best, br, m);
  *code = _mm256_blendv_epi8(c, c_br, _mm256_castps_si256(m));
  return best;
}

// Where each window's maximum is kept: an int64 flat index h*W + w
// (PyTorch's), or one byte, its tap 0..3 (the training path's).  `lower`
// is the bottom-left window position's code; `at` the flat index of the
// first window's top-left element.
inline int lower_row(const int64_t*, int64_t W) { return int(W); }
inline int lower_row(const uint8_t*, int64_t) { return 2; }
inline void store8(int64_t* ip, __m256i code, int64_t at) {
  // index = at + 2*lane + code, widened to int64 in two halves.
  const __m256i rel = _mm256_add_epi32(_mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14), code);
  const __m256i base = _mm256_set1_epi64x(at);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(ip),
                      _mm256_add_epi64(base, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(rel))));
  _mm256_storeu_si256(
      reinterpret_cast<__m256i*>(ip + 4),
      _mm256_add_epi64(base, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(rel, 1))));
}
inline void store8(uint8_t* op, __m256i code, int64_t) {
  // Byte 0 of each 32-bit lane to the low 4 bytes of its 128-bit half.
  const __m256i low_bytes =
      _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1,
                       -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i b = _mm256_shuffle_epi8(code, low_bytes);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(op),
                   _mm_unpacklo_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)));
}
inline void store1(int64_t* ip, int code, int64_t at) { *ip = at + code; }
inline void store1(uint8_t* op, int code, int64_t) { *op = uint8_t(code); }

// Both forward kernels: maxima of one plane and (unless idx is null) their
// positions as Index.
template <class Index>
void fwd_plane(int64_t H, int64_t W, const float* x, float* y, Index* idx) {
  const int64_t P = H / 2, Q = W / 2;
  const int lower = lower_row(idx, W);
  const __m256i c_tr = _mm256_set1_epi32(1);
  const __m256i c_bl = _mm256_set1_epi32(lower);
  const __m256i c_br = _mm256_set1_epi32(lower + 1);
  for (int64_t p = 0; p < P; ++p) {
    const float* r0 = x + 2 * p * W;
    const float* r1 = r0 + W;
    float* yp = y + p * Q;
    Index* ip = idx ? idx + p * Q : nullptr;
    int64_t q = 0;
    for (; q + 8 <= Q; q += 8) {
      __m256i code;
      const __m256 best = window_max8(r0 + 2 * q, r1 + 2 * q, c_tr, c_bl, c_br, &code);
      _mm256_storeu_ps(yp + q, best);
      if (ip) store8(ip + q, code, 2 * p * W + 2 * q);
    }
    for (; q < Q; ++q) {
      const float v[4] = {r0[2 * q], r0[2 * q + 1], r1[2 * q], r1[2 * q + 1]};
      float best = v[0];
      int at = 0;
      for (int i = 1; i < 4; ++i) {
        if (v[i] > best || v[i] != v[i]) {  // v != v: NaN
          best = v[i];
          at = i;
        }
      }
      yp[q] = best;
      if (ip) store1(ip + q, (at >> 1) * lower + (at & 1), 2 * p * W + 2 * q);
    }
  }
}

}  // namespace

void maxpool2d_fwd_f32_2x2s2__avx2(int64_t H, int64_t W, const float* x, float* y, int64_t* idx) {
  fwd_plane(H, W, x, y, idx);
}

void maxpool2d_fwd_f32_offsets_2x2s2__avx2(int64_t H, int64_t W, const float* x, float* y,
                                           uint8_t* off) {
  fwd_plane(H, W, x, y, off);
}

int64_t maxpool2d_bwd_f32_offsets_2x2s2__avx2(int64_t planes, int64_t H, int64_t W, const float* dy,
                                              const uint8_t* off, const float* y, float* dx) {
  // dx written densely, 8 windows (16 columns of two rows) per step: each
  // window's value 0 + dy (times 0 where y is not > 0) at its tap, +0 at
  // the other three -- what the reference's zero fill, scatter and mask give.
  const int64_t P = H / 2, Q = W / 2;
  const __m256 zero = _mm256_setzero_ps();
  const __m256i t0 = _mm256_setzero_si256(), t1 = _mm256_set1_epi32(1);
  const __m256i t2 = _mm256_set1_epi32(2), t3 = _mm256_set1_epi32(3);
  for (int64_t pl = 0; pl < planes; ++pl) {
    const float* gp = dy + pl * P * Q;
    const float* yp = y ? y + pl * P * Q : nullptr;
    const uint8_t* op = off + pl * P * Q;
    float* xp = dx + pl * H * W;
    for (int64_t p = 0; p < P; ++p) {
      float* d0 = xp + 2 * p * W;
      float* d1 = d0 + W;
      int64_t q = 0;
      for (; q + 8 <= Q; q += 8) {
        const __m256i tap =
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(op + p * Q + q)));
        if (_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(tap, t3))) != 0) return pl;
        __m256 g = _mm256_add_ps(_mm256_loadu_ps(gp + p * Q + q), zero);
        if (yp) {
          const __m256 pos = _mm256_cmp_ps(_mm256_loadu_ps(yp + p * Q + q), zero, _CMP_GT_OQ);
          g = _mm256_blendv_ps(_mm256_mul_ps(g, zero), g, pos);
        }
        const auto at = [&](__m256i t) {
          return _mm256_blendv_ps(zero, g, _mm256_castsi256_ps(_mm256_cmpeq_epi32(tap, t)));
        };
        const __m256 tl = at(t0), tr = at(t1), bl = at(t2), br = at(t3);
        // (a0 b0 a1 b1 ...) from a and b: unpack within halves, then order the halves.
        const __m256 tlo = _mm256_unpacklo_ps(tl, tr), thi = _mm256_unpackhi_ps(tl, tr);
        const __m256 blo = _mm256_unpacklo_ps(bl, br), bhi = _mm256_unpackhi_ps(bl, br);
        _mm256_storeu_ps(d0 + 2 * q, _mm256_permute2f128_ps(tlo, thi, 0x20));
        _mm256_storeu_ps(d0 + 2 * q + 8, _mm256_permute2f128_ps(tlo, thi, 0x31));
        _mm256_storeu_ps(d1 + 2 * q, _mm256_permute2f128_ps(blo, bhi, 0x20));
        _mm256_storeu_ps(d1 + 2 * q + 8, _mm256_permute2f128_ps(blo, bhi, 0x31));
      }
      for (; q < Q; ++q) {
        const uint8_t t = op[p * Q + q];
        if (t > 3) return pl;
        float g = 0.0f + gp[p * Q + q];
        if (yp && !(yp[p * Q + q] > 0.0f)) g *= 0.0f;
        d0[2 * q] = t == 0 ? g : 0.0f;
        d0[2 * q + 1] = t == 1 ? g : 0.0f;
        d1[2 * q] = t == 2 ? g : 0.0f;
        d1[2 * q + 1] = t == 3 ? g : 0.0f;
      }
      if (W & 1) d0[W - 1] = d1[W - 1] = 0.0f;
    }
    if (H & 1)
      for (int64_t w = 0; w < W; ++w) xp[(H - 1) * W + w] = 0.0f;
  }
  return planes;
}

}  // namespace convcore
