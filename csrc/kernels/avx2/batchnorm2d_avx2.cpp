// AVX2 batch-normalisation kernels, one plane of L floats per call (the
// contracts of kernels/batchnorm_ukernels.h): the AVX-512 kernels' scheme
// on 8-float vectors, tails through maskload/maskstore.  Two float
// accumulators of 8 lanes take a block of 128 values (8 per lane) before it
// is carried in double; statistics go chunk by chunk (2048 values, so the
// second pass reads L1) with the corrected two-pass sums, chunks merged with
// Chan's formula.
//
// Compiled with -mavx2 -mfma; self-contained (no inline helpers shared
// with other ISA files).
#if !defined(__AVX2__) || !defined(__FMA__)
#error "batchnorm2d_avx2.cpp must be compiled with -mavx2 -mfma"
#endif

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "kernels/batchnorm_chunks.h"
#include "kernels/batchnorm_ukernels.h"

namespace convcore {
namespace {

constexpr int64_t kBlock = 128;

// Lane mask of the first n (0..8) lanes.
inline __m256i first_lanes(int64_t n) {
  alignas(32) static const int32_t table[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                0,  0,  0,  0,  0,  0,  0,  0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + 8 - n));
}

inline __m256d widen_add(__m256d acc, __m256 v) {
  acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
  return _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

inline double hsum(__m256d v) {
  const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

double chunk_sum(int64_t n, const float* x) {
  __m256d acc = _mm256_setzero_pd();
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t nb = std::min(kBlock, n - b0);
    const float* p = x + b0;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= nb; i += 16) {
      a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
      a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
    }
    for (; i < nb; i += 8)
      a0 = _mm256_add_ps(a0, _mm256_maskload_ps(p + i, first_lanes(std::min<int64_t>(8, nb - i))));
    acc = widen_add(widen_add(acc, a0), a1);
  }
  return hsum(acc);
}

void chunk_centred(int64_t n, const float* x, float c, double* sd, double* sq) {
  const __m256 vc = _mm256_set1_ps(c);
  __m256d accs = _mm256_setzero_pd(), accq = _mm256_setzero_pd();
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t nb = std::min(kBlock, n - b0);
    const float* p = x + b0;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 q0 = _mm256_setzero_ps(), q1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= nb; i += 16) {
      const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(p + i), vc);
      const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(p + i + 8), vc);
      s0 = _mm256_add_ps(s0, d0);
      s1 = _mm256_add_ps(s1, d1);
      q0 = _mm256_fmadd_ps(d0, d0, q0);
      q1 = _mm256_fmadd_ps(d1, d1, q1);
    }
    for (; i < nb; i += 8) {
      const __m256i m = first_lanes(std::min<int64_t>(8, nb - i));
      // Masked-off lanes must add nothing: zero d there, not 0 - c.
      const __m256 d =
          _mm256_and_ps(_mm256_sub_ps(_mm256_maskload_ps(p + i, m), vc), _mm256_castsi256_ps(m));
      s0 = _mm256_add_ps(s0, d);
      q0 = _mm256_fmadd_ps(d, d, q0);
    }
    accs = widen_add(widen_add(accs, s0), s1);
    accq = widen_add(widen_add(accq, q0), q1);
  }
  *sd = hsum(accs);
  *sq = hsum(accq);
}

// g = dy (masked lanes: 0), zeroed where y <= 0 (or NaN) when y is not null.
inline __m256 masked_grad(const float* dy, const float* y, int64_t i, __m256i m) {
  const __m256 g = _mm256_maskload_ps(dy + i, m);
  if (y == nullptr) return g;
  const __m256 v = _mm256_maskload_ps(y + i, m);
  return _mm256_and_ps(g, _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ));
}

// The same for a whole vector (plain loads).
inline __m256 full_grad(const float* dy, const float* y, int64_t i) {
  const __m256 g = _mm256_loadu_ps(dy + i);
  if (y == nullptr) return g;
  return _mm256_and_ps(g, _mm256_cmp_ps(_mm256_loadu_ps(y + i), _mm256_setzero_ps(), _CMP_GT_OQ));
}

}  // namespace

void batchnorm2d_stats_f32__avx2(int64_t L, const float* x, double* sum, double* m2) {
  batchnorm2d_plane_stats(L, x, chunk_sum, chunk_centred, sum, m2);
}

void batchnorm2d_fwd_f32__avx2(int64_t L, const float* x, float alpha, float beta, bool relu,
                               float* y) {
  const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta), zero = _mm256_setzero_ps();
  int64_t i = 0;
  // maxps(0, v) returns v when v is NaN: NaN propagates, as in torch.relu.
  if (relu) {
    for (; i + 8 <= L; i += 8)
      _mm256_storeu_ps(y + i, _mm256_max_ps(zero, _mm256_fmadd_ps(_mm256_loadu_ps(x + i), va, vb)));
  } else {
    for (; i + 8 <= L; i += 8)
      _mm256_storeu_ps(y + i, _mm256_fmadd_ps(_mm256_loadu_ps(x + i), va, vb));
  }
  if (i < L) {
    const __m256i m = first_lanes(L - i);
    __m256 v = _mm256_fmadd_ps(_mm256_maskload_ps(x + i, m), va, vb);
    if (relu) v = _mm256_max_ps(zero, v);
    _mm256_maskstore_ps(y + i, m, v);
  }
}

void batchnorm2d_bwd_reduce_f32__avx2(int64_t L, const float* dy, const float* x, const float* y,
                                      float mean, double* sum_g, double* sum_gx) {
  const __m256 vm = _mm256_set1_ps(mean);
  __m256d accs = _mm256_setzero_pd(), accx = _mm256_setzero_pd();
  for (int64_t b0 = 0; b0 < L; b0 += kBlock) {
    const int64_t end = b0 + std::min(kBlock, L - b0);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 x0 = _mm256_setzero_ps(), x1 = _mm256_setzero_ps();
    int64_t i = b0;
    for (; i + 16 <= end; i += 16) {
      const __m256 g0 = full_grad(dy, y, i);
      const __m256 g1 = full_grad(dy, y, i + 8);
      s0 = _mm256_add_ps(s0, g0);
      s1 = _mm256_add_ps(s1, g1);
      x0 = _mm256_fmadd_ps(g0, _mm256_sub_ps(_mm256_loadu_ps(x + i), vm), x0);
      x1 = _mm256_fmadd_ps(g1, _mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm), x1);
    }
    for (; i < end; i += 8) {
      const __m256i m = first_lanes(std::min<int64_t>(8, end - i));
      const __m256 g = masked_grad(dy, y, i, m);  // zero in masked lanes
      s0 = _mm256_add_ps(s0, g);
      x0 = _mm256_fmadd_ps(g, _mm256_sub_ps(_mm256_maskload_ps(x + i, m), vm), x0);
    }
    accs = widen_add(widen_add(accs, s0), s1);
    accx = widen_add(widen_add(accx, x0), x1);
  }
  *sum_g = hsum(accs);
  *sum_gx = hsum(accx);
}

void batchnorm2d_bwd_data_f32__avx2(int64_t L, const float* dy, const float* x, const float* y,
                                    float mean, float k1, float k2, float k3, float* dx) {
  const __m256 v1 = _mm256_set1_ps(k1), v2 = _mm256_set1_ps(k2), v3 = _mm256_set1_ps(k3);
  const __m256 vm = _mm256_set1_ps(mean);
  auto value = [&](__m256 g, __m256 xv) {
    if (x == nullptr) return _mm256_mul_ps(g, v1);
    return _mm256_fmadd_ps(g, v1, _mm256_fmadd_ps(_mm256_sub_ps(xv, vm), v2, v3));
  };
  // Plain stores for whole vectors: a masked store (vmaskmovps) is
  // microcoded and many times slower on AMD cores.
  int64_t i = 0;
  for (; i + 8 <= L; i += 8)
    _mm256_storeu_ps(dx + i,
                     value(full_grad(dy, y, i), x ? _mm256_loadu_ps(x + i) : _mm256_setzero_ps()));
  if (i < L) {
    const __m256i m = first_lanes(L - i);
    const __m256 xv = x ? _mm256_maskload_ps(x + i, m) : _mm256_setzero_ps();
    _mm256_maskstore_ps(dx + i, m, value(masked_grad(dy, y, i, m), xv));
  }
}

}  // namespace convcore
