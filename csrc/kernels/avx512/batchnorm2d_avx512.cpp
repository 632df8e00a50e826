// AVX-512 batch-normalisation kernels, one plane of L floats per call (the
// contracts of kernels/batchnorm_ukernels.h).  Memory-bound: every pass is
// one streaming read of its inputs (plus one write), 16 floats per vector,
// the tail of a plane masked (a 7x7 or 14x14 plane needs no scalar loop).
//
// Accuracy: two float accumulators of 16 lanes each take a block of 256
// values (8 per lane) and are then carried in double (zmm of 8 doubles), so
// a plane's sums have the error of 8-term float sums whatever L is.  The
// statistics go chunk by chunk (2048 values, 8 KB, so the second pass reads
// L1): the sum, then the corrected two-pass sums of d = x - chunk mean
// (m2 = sum d^2 - (sum d)^2 / n), chunks merged with Chan's formula.
//
// Compiled with -mavx512f -mavx512dq -mavx512vl -mfma; self-contained (no
// inline helpers shared with other ISA files).
#if !defined(__AVX512F__) || !defined(__AVX512DQ__) || !defined(__AVX512VL__)
#error "batchnorm2d_avx512.cpp must be compiled with -mavx512f -mavx512dq -mavx512vl"
#endif

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "kernels/batchnorm_chunks.h"
#include "kernels/batchnorm_ukernels.h"

namespace convcore {
namespace {

constexpr int64_t kBlock = 256;

inline __mmask16 tail_mask(int64_t n) { return __mmask16((1u << n) - 1u); }

// Adds the 16 float lanes of v to the 8 double lanes of acc.
inline __m512d widen_add(__m512d acc, __m512 v) {
  acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
  return _mm512_add_pd(
      acc, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
}

// sum of x[0:n] (n <= kBatchNormChunk).
double chunk_sum(int64_t n, const float* x) {
  __m512d acc = _mm512_setzero_pd();
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t nb = std::min(kBlock, n - b0);
    const float* p = x + b0;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= nb; i += 32) {
      a0 = _mm512_add_ps(a0, _mm512_loadu_ps(p + i));
      a1 = _mm512_add_ps(a1, _mm512_loadu_ps(p + i + 16));
    }
    for (; i < nb; i += 16) {
      const __mmask16 m = nb - i >= 16 ? __mmask16(0xFFFF) : tail_mask(nb - i);
      a0 = _mm512_add_ps(a0, _mm512_maskz_loadu_ps(m, p + i));
    }
    acc = widen_add(widen_add(acc, a0), a1);
  }
  return _mm512_reduce_add_pd(acc);
}

// sum d and sum d^2 of d = x - c over x[0:n] (masked lanes add nothing).
void chunk_centred(int64_t n, const float* x, float c, double* sd, double* sq) {
  const __m512 vc = _mm512_set1_ps(c);
  __m512d accs = _mm512_setzero_pd(), accq = _mm512_setzero_pd();
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t nb = std::min(kBlock, n - b0);
    const float* p = x + b0;
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 q0 = _mm512_setzero_ps(), q1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= nb; i += 32) {
      const __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(p + i), vc);
      const __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(p + i + 16), vc);
      s0 = _mm512_add_ps(s0, d0);
      s1 = _mm512_add_ps(s1, d1);
      q0 = _mm512_fmadd_ps(d0, d0, q0);
      q1 = _mm512_fmadd_ps(d1, d1, q1);
    }
    for (; i < nb; i += 16) {
      const __mmask16 m = nb - i >= 16 ? __mmask16(0xFFFF) : tail_mask(nb - i);
      const __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, p + i), vc);
      s0 = _mm512_add_ps(s0, d);
      q0 = _mm512_fmadd_ps(d, d, q0);
    }
    accs = widen_add(widen_add(accs, s0), s1);
    accq = widen_add(widen_add(accq, q0), q1);
  }
  *sd = _mm512_reduce_add_pd(accs);
  *sq = _mm512_reduce_add_pd(accq);
}

// g = dy, zeroed where y <= 0 (or NaN) when y is not null.
inline __m512 masked_grad(const float* dy, const float* y, int64_t i, __mmask16 m) {
  const __m512 g = _mm512_maskz_loadu_ps(m, dy + i);
  if (y == nullptr) return g;
  const __m512 v = _mm512_maskz_loadu_ps(m, y + i);
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ), g);
}

}  // namespace

void batchnorm2d_stats_f32__avx512(int64_t L, const float* x, double* sum, double* m2) {
  batchnorm2d_plane_stats(L, x, chunk_sum, chunk_centred, sum, m2);
}

void batchnorm2d_fwd_f32__avx512(int64_t L, const float* x, float alpha, float beta, bool relu,
                                 float* y) {
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta), zero = _mm512_setzero_ps();
  int64_t i = 0;
  if (relu) {
    // maxps(0, v) returns v when v is NaN: NaN propagates, as in torch.relu.
    for (; i + 16 <= L; i += 16)
      _mm512_storeu_ps(y + i, _mm512_max_ps(zero, _mm512_fmadd_ps(_mm512_loadu_ps(x + i), va, vb)));
    if (i < L) {
      const __mmask16 m = tail_mask(L - i);
      _mm512_mask_storeu_ps(
          y + i, m, _mm512_max_ps(zero, _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), va, vb)));
    }
    return;
  }
  for (; i + 16 <= L; i += 16)
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(_mm512_loadu_ps(x + i), va, vb));
  if (i < L) {
    const __mmask16 m = tail_mask(L - i);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), va, vb));
  }
}

void batchnorm2d_bwd_reduce_f32__avx512(int64_t L, const float* dy, const float* x, const float* y,
                                        float mean, double* sum_g, double* sum_gx) {
  const __m512 vm = _mm512_set1_ps(mean);
  __m512d accs = _mm512_setzero_pd(), accx = _mm512_setzero_pd();
  for (int64_t b0 = 0; b0 < L; b0 += kBlock) {
    const int64_t nb = std::min(kBlock, L - b0);
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 x0 = _mm512_setzero_ps(), x1 = _mm512_setzero_ps();
    int64_t i = b0;
    for (; i + 32 <= b0 + nb; i += 32) {
      const __m512 g0 = masked_grad(dy, y, i, 0xFFFF);
      const __m512 g1 = masked_grad(dy, y, i + 16, 0xFFFF);
      s0 = _mm512_add_ps(s0, g0);
      s1 = _mm512_add_ps(s1, g1);
      x0 = _mm512_fmadd_ps(g0, _mm512_sub_ps(_mm512_loadu_ps(x + i), vm), x0);
      x1 = _mm512_fmadd_ps(g1, _mm512_sub_ps(_mm512_loadu_ps(x + i + 16), vm), x1);
    }
    for (; i < b0 + nb; i += 16) {
      const int64_t left = b0 + nb - i;
      const __mmask16 m = left >= 16 ? __mmask16(0xFFFF) : tail_mask(left);
      const __m512 g = masked_grad(dy, y, i, m);  // zero in masked lanes
      s0 = _mm512_add_ps(s0, g);
      x0 = _mm512_fmadd_ps(g, _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm), x0);
    }
    accs = widen_add(widen_add(accs, s0), s1);
    accx = widen_add(widen_add(accx, x0), x1);
  }
  *sum_g = _mm512_reduce_add_pd(accs);
  *sum_gx = _mm512_reduce_add_pd(accx);
}

void batchnorm2d_bwd_data_f32__avx512(int64_t L, const float* dy, const float* x, const float* y,
                                      float mean, float k1, float k2, float k3, float* dx) {
  const __m512 v1 = _mm512_set1_ps(k1), v2 = _mm512_set1_ps(k2), v3 = _mm512_set1_ps(k3);
  const __m512 vm = _mm512_set1_ps(mean);
  for (int64_t i = 0; i < L; i += 16) {
    const __mmask16 m = L - i >= 16 ? __mmask16(0xFFFF) : tail_mask(L - i);
    const __m512 g = masked_grad(dy, y, i, m);
    __m512 v;
    if (x == nullptr) {
      v = _mm512_mul_ps(g, v1);
    } else {
      const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm);
      v = _mm512_fmadd_ps(g, v1, _mm512_fmadd_ps(d, v2, v3));
    }
    _mm512_mask_storeu_ps(dx + i, m, v);
  }
}

}  // namespace convcore
