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
// offsets are formed in int32 lanes and widened on the store.  The
// training path's variant keeps one byte per window instead, its tap 0..3,
// and its backward may pass the gradient through the ReLU before the pool.
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

namespace {

// The window maxima of four (tl, tr, bl, br) vectors: value and offset in
// the window (0, 1, W, W + 1), in the reference's scan order.
inline __m256 window_max(__m256 tl, __m256 tr, __m256 bl, __m256 br, __m256i off_w, __m256i* off) {
  const __m256i one = _mm256_set1_epi32(1);
  __m256 best = tl;
  __m256i o = _mm256_setzero_si256();
  __mmask8 m = takes_over(tr, best);
  best = _mm256_mask_mov_ps(best, m, tr);
  o = _mm256_mask_mov_epi32(o, m, one);
  m = takes_over(bl, best);
  best = _mm256_mask_mov_ps(best, m, bl);
  o = _mm256_mask_mov_epi32(o, m, off_w);
  m = takes_over(br, best);
  best = _mm256_mask_mov_ps(best, m, br);
  o = _mm256_mask_mov_epi32(o, m, _mm256_add_epi32(off_w, one));
  *off = o;
  return best;
}

// The window position of each lane's maximum, stored as the caller asks:
// int64 flat indices h*W + w (PyTorch's; `at` is the window's top-left
// index) or one byte per window, its tap 0..3 (tl, tr, bl, br).
inline void store_index(int64_t* ip, __mmask8 sm, bool full, __m256i off, __m256i at) {
  const __m512i v = _mm512_cvtepi32_epi64(_mm256_add_epi32(off, at));
  if (full)
    _mm512_storeu_si512(ip, v);
  else
    _mm512_mask_storeu_epi64(ip, sm, v);
}
inline void store_index(uint8_t* op, __mmask8 sm, bool, __m256i off, __m256i) {
  _mm256_mask_cvtepi32_storeu_epi8(op, sm, off);
}

// The offset of the window's lower row in window_max's code: W for flat
// indices, 2 for taps.
template <class Index>
inline int lower_row(int64_t W) {
  return sizeof(Index) == 1 ? 2 : int(W);
}

// One output row p of a plane: chunks of 8 outputs, the last one masked.
template <class Index>
inline void fwd_row(int64_t p, int64_t W, int64_t Q, const float* xp, float* yp, Index* ip) {
  // Even columns to lanes 0-7, odd columns to lanes 8-15.
  const __m512i split = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const __m256i lane2 = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  const __m256i off_w = _mm256_set1_epi32(lower_row<Index>(W));
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
    __m256i off;
    const __m256 best =
        window_max(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1),
                   _mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1), off_w, &off);
    if (full)
      _mm256_storeu_ps(yp + p * Q + q0, best);
    else
      _mm256_mask_storeu_ps(yp + p * Q + q0, sm, best);
    if (ip)
      store_index(ip + p * Q + q0, sm, full, off,
                  _mm256_add_epi32(lane2, _mm256_set1_epi32(int(2 * p * W + 2 * q0))));
  }
}

// Both forward kernels: `planes` planes, maxima and (unless null) their
// positions as Index.
template <class Index>
void fwd_planes(int64_t planes, int64_t H, int64_t W, const float* x, float* y, Index* idx) {
  const int64_t P = H / 2, Q = W / 2;
  if (W == 8 && P % 2 == 0) {
    // 8-wide planes (the tutorial's second pool): rows of 4 outputs would
    // fill half a vector, so each chunk takes two row pairs -- 32
    // consecutive input floats and 8 consecutive outputs, lanes 0-3 from
    // row pair p and lanes 4-7 from pair p + 1.
    const __m512i even =
        _mm512_setr_epi32(0, 2, 4, 6, 16, 18, 20, 22, 8, 10, 12, 14, 24, 26, 28, 30);
    const __m512i odd =
        _mm512_setr_epi32(1, 3, 5, 7, 17, 19, 21, 23, 9, 11, 13, 15, 25, 27, 29, 31);
    const __m256i col2 = _mm256_setr_epi32(0, 2, 4, 6, 16, 18, 20, 22);
    const __m256i off_w = _mm256_set1_epi32(lower_row<Index>(8));
    for (int64_t pl = 0; pl < planes; ++pl) {
      const float* xp = x + pl * H * 8;
      float* yp = y + pl * P * 4;
      Index* ip = idx ? idx + pl * P * 4 : nullptr;
      for (int64_t p = 0; p < P; p += 2) {
        const __m512 a = _mm512_loadu_ps(xp + p * 16), b = _mm512_loadu_ps(xp + p * 16 + 16);
        const __m512 tlbl = _mm512_permutex2var_ps(a, even, b);
        const __m512 trbr = _mm512_permutex2var_ps(a, odd, b);
        __m256i off;
        const __m256 best = window_max(_mm512_castps512_ps256(tlbl), _mm512_castps512_ps256(trbr),
                                       _mm512_extractf32x8_ps(tlbl, 1),
                                       _mm512_extractf32x8_ps(trbr, 1), off_w, &off);
        _mm256_storeu_ps(yp + p * 4, best);
        if (ip)
          store_index(ip + p * 4, 0xFF, true, off,
                      _mm256_add_epi32(col2, _mm256_set1_epi32(int(p * 16))));
      }
    }
    return;
  }
  for (int64_t pl = 0; pl < planes; ++pl) {
    const float* xp = x + pl * H * W;
    float* yp = y + pl * P * Q;
    Index* ip = idx ? idx + pl * P * Q : nullptr;
    for (int64_t p = 0; p < P; ++p) fwd_row(p, W, Q, xp, yp, ip);
  }
}

}  // namespace

void maxpool2d_fwd_f32_2x2s2__avx512(int64_t planes, int64_t H, int64_t W, const float* x, float* y,
                                     int64_t* idx) {
  fwd_planes(planes, H, W, x, y, idx);
}

void maxpool2d_fwd_f32_offsets_2x2s2__avx512(int64_t planes, int64_t H, int64_t W, const float* x,
                                             float* y, uint8_t* off) {
  fwd_planes(planes, H, W, x, y, off);
}

namespace {

// Masks of the window position (tl, tr, bl, br) of 8 lanes of `sm`, false
// if a lane of `sm` is in none.  From int64 flat indices: relative to the
// window's top-left `at`, compared in 64 bits so no out-of-range index can
// alias a window position.
inline bool window_masks(const int64_t* ip, __mmask8 sm, __m512i at, int64_t W, __mmask8 m[4]) {
  const __m512i rel = _mm512_sub_epi64(_mm512_maskz_loadu_epi64(sm, ip), at);
  m[0] = _mm512_cmpeq_epi64_mask(rel, _mm512_setzero_si512());
  m[1] = _mm512_cmpeq_epi64_mask(rel, _mm512_set1_epi64(1));
  m[2] = _mm512_cmpeq_epi64_mask(rel, _mm512_set1_epi64(W));
  m[3] = _mm512_cmpeq_epi64_mask(rel, _mm512_set1_epi64(W + 1));
  return __mmask8((m[0] | m[1] | m[2] | m[3]) & sm) == sm;
}
// From one byte per window, its tap 0..3.
inline bool window_masks(const uint8_t* op, __mmask8 sm, __m512i, int64_t, __mmask8 m[4]) {
  const __m128i bytes = sm == 0xFF ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(op))
                                   : _mm_maskz_loadu_epi8(sm, op);
  const __m256i tap = _mm256_cvtepu8_epi32(bytes);
  for (int k = 0; k < 4; ++k) m[k] = _mm256_cmpeq_epi32_mask(tap, _mm256_set1_epi32(k));
  return __mmask8((m[0] | m[1] | m[2] | m[3]) & sm) == sm;
}

// What each window routes to its maximum: 0 + g, as the reference's zero
// fill then add (-0 becomes +0); through a ReLU (y, the pool's output, not
// null) then times 0 where y is not > 0 -- numpy's multiply by the mask
// (y > 0) of the ReLU's output at the maximum, which is y.
inline __m256 window_grad(__m256 g, const float* y, __mmask8 sm) {
  const __m256 zero = _mm256_setzero_ps();
  g = _mm256_add_ps(g, zero);
  if (y) {
    const __m256 yv = sm == 0xFF ? _mm256_loadu_ps(y) : _mm256_maskz_loadu_ps(sm, y);
    const __mmask8 pos = _mm256_cmp_ps_mask(yv, zero, _CMP_GT_OQ);
    g = _mm256_mask_mov_ps(_mm256_mul_ps(g, zero), pos, g);
  }
  return g;
}

inline __m512 routed(__mmask8 m, __m256 g) {
  return _mm512_castps256_ps512(_mm256_maskz_mov_ps(m, g));
}

// Both backward kernels: dx written densely from dy and the positions
// (Index as in fwd_planes); y may be null (no ReLU).  Returns the planes
// done (see pool_ukernels.h).
template <class Index>
int64_t bwd_planes(int64_t planes, int64_t H, int64_t W, const float* dy, const Index* idx,
                   const float* y, float* dx) {
  const int64_t P = H / 2, Q = W / 2;
  if (W == 8 && P % 2 == 0) {
    // 8-wide planes: two row pairs per chunk, as in the forward kernel.
    // (tl | bl) and (tr | br) are zipped back into the 32 input floats.
    const __m512i at2 = _mm512_setr_epi64(0, 2, 4, 6, 16, 18, 20, 22);
    const __m512i zip_a =
        _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 8, 24, 9, 25, 10, 26, 11, 27);
    const __m512i zip_b =
        _mm512_setr_epi32(4, 20, 5, 21, 6, 22, 7, 23, 12, 28, 13, 29, 14, 30, 15, 31);
    for (int64_t pl = 0; pl < planes; ++pl) {
      const float* gp = dy + pl * P * 4;
      const float* yp = y ? y + pl * P * 4 : nullptr;
      const Index* ip = idx + pl * P * 4;
      float* xp = dx + pl * H * 8;
      for (int64_t p = 0; p < P; p += 2) {
        __mmask8 m[4];
        if (!window_masks(ip + p * 4, 0xFF, _mm512_add_epi64(at2, _mm512_set1_epi64(p * 16)), 8, m))
          return pl;
        const __m256 g = window_grad(_mm256_loadu_ps(gp + p * 4), yp ? yp + p * 4 : nullptr, 0xFF);
        const __m512 tlbl =
            _mm512_insertf32x8(routed(m[0], g), _mm512_castps512_ps256(routed(m[2], g)), 1);
        const __m512 trbr =
            _mm512_insertf32x8(routed(m[1], g), _mm512_castps512_ps256(routed(m[3], g)), 1);
        _mm512_storeu_ps(xp + p * 16, _mm512_permutex2var_ps(tlbl, zip_a, trbr));
        _mm512_storeu_ps(xp + p * 16 + 16, _mm512_permutex2var_ps(tlbl, zip_b, trbr));
      }
      if (H & 1) std::memset(xp + (H - 1) * 8, 0, 8 * sizeof(float));
    }
    return planes;
  }
  // (tl, tr) or (bl, br) interleaved back into an input row segment.
  const __m512i zip = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i lane2 = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
  for (int64_t pl = 0; pl < planes; ++pl) {
    const float* gp = dy + pl * P * Q;
    const float* yp = y ? y + pl * P * Q : nullptr;
    const Index* ip = idx + pl * P * Q;
    float* xp = dx + pl * H * W;
    for (int64_t p = 0; p < P; ++p) {
      float* d0 = xp + 2 * p * W;
      float* d1 = d0 + W;
      for (int64_t q0 = 0; q0 < Q; q0 += 8) {
        const int n = int(Q - q0 < 8 ? Q - q0 : 8);
        const __mmask8 sm = __mmask8((1u << n) - 1u);
        const __mmask16 wm = __mmask16((1u << (2 * n)) - 1u);
        __mmask8 m[4];
        if (!window_masks(ip + p * Q + q0, sm,
                          _mm512_add_epi64(lane2, _mm512_set1_epi64(2 * p * W + 2 * q0)), W, m))
          return pl;
        const bool full = n == 8;  // plain loads and stores where no mask is needed
        const __m256 g = window_grad(
            full ? _mm256_loadu_ps(gp + p * Q + q0) : _mm256_maskz_loadu_ps(sm, gp + p * Q + q0),
            yp ? yp + p * Q + q0 : nullptr, sm);
        const __m512 top = _mm512_permutex2var_ps(routed(m[0], g), zip, routed(m[1], g));
        const __m512 bottom = _mm512_permutex2var_ps(routed(m[2], g), zip, routed(m[3], g));
        if (full) {
          _mm512_storeu_ps(d0 + 2 * q0, top);
          _mm512_storeu_ps(d1 + 2 * q0, bottom);
        } else {
          _mm512_mask_storeu_ps(d0 + 2 * q0, wm, top);
          _mm512_mask_storeu_ps(d1 + 2 * q0, wm, bottom);
        }
      }
      if (W & 1) d0[W - 1] = d1[W - 1] = 0.0f;
    }
    if (H & 1) std::memset(xp + (H - 1) * W, 0, size_t(W) * sizeof(float));
  }
  return planes;
}

}  // namespace

int64_t maxpool2d_bwd_f32_2x2s2__avx512(int64_t planes, int64_t H, int64_t W, const float* dy,
                                        const int64_t* idx, float* dx) {
  return bwd_planes(planes, H, W, dy, idx, nullptr, dx);
}

int64_t maxpool2d_bwd_f32_offsets_2x2s2__avx512(int64_t planes, int64_t H, int64_t W,
                                                const float* dy, const uint8_t* off, const float* y,
                                                float* dx) {
  return bwd_planes(planes, H, W, dy, off, y, dx);
}

}  // namespace convcore
