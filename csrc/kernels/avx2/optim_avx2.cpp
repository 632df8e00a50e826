// AVX2 optimiser steps (the contracts of kernels/optim_ukernels.h): the
// AVX-512 kernels' loop on 8-float vectors, the tail (fewer than 8
// elements) through the scalar reference, which rounds identically.  Separate
// multiply and add intrinsics, never an FMA: each operation rounds as
// numpy's does.
//
// Compiled with -mavx2 -mfma; no inline helpers shared with other ISA
// files (the reference it calls is compiled for the baseline).
#if !defined(__AVX2__)
#error "optim_avx2.cpp must be compiled with -mavx2"
#endif

#include <immintrin.h>

#include "kernels/optim_ukernels.h"

namespace convcore {

void adam_step_f32__avx2(int64_t n, const AdamConstants& k, float* p, const float* g, float* m,
                         float* v) {
  const __m256 omb1 = _mm256_set1_ps(k.one_minus_beta1), b2 = _mm256_set1_ps(k.beta2);
  const __m256 omb2 = _mm256_set1_ps(k.one_minus_beta2);
  const __m256 bc2 = _mm256_set1_ps(k.bias_correction2_sqrt), eps = _mm256_set1_ps(k.eps);
  const __m256 neg_step = _mm256_set1_ps(k.neg_step_size), wd = _mm256_set1_ps(k.weight_decay);
  const bool decay = k.weight_decay != 0.0f;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 pi = _mm256_loadu_ps(p + i), gi = _mm256_loadu_ps(g + i);
    __m256 mi = _mm256_loadu_ps(m + i), vi = _mm256_loadu_ps(v + i);
    if (decay) gi = _mm256_add_ps(gi, _mm256_mul_ps(pi, wd));
    mi = _mm256_add_ps(mi, _mm256_mul_ps(_mm256_sub_ps(gi, mi), omb1));
    vi = _mm256_add_ps(_mm256_mul_ps(vi, b2), _mm256_mul_ps(_mm256_mul_ps(gi, omb2), gi));
    const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), bc2), eps);
    pi = _mm256_add_ps(pi, _mm256_mul_ps(_mm256_div_ps(mi, denom), neg_step));
    _mm256_storeu_ps(p + i, pi);
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
  }
  adam_step_f32__ref(n - i, k, p + i, g + i, m + i, v + i);
}

void sgd_step_f32__avx2(int64_t n, const SgdConstants& k, float* p, const float* g, float* buf) {
  const __m256 mom = _mm256_set1_ps(k.momentum), omd = _mm256_set1_ps(k.one_minus_dampening);
  const __m256 wd = _mm256_set1_ps(k.weight_decay), neg_lr = _mm256_set1_ps(k.neg_lr);
  const bool decay = k.weight_decay != 0.0f;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 pi = _mm256_loadu_ps(p + i), gi = _mm256_loadu_ps(g + i);
    if (decay) gi = _mm256_add_ps(gi, _mm256_mul_ps(pi, wd));
    if (buf != nullptr) {
      __m256 b = gi;
      if (!k.first)
        b = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(buf + i), mom), _mm256_mul_ps(gi, omd));
      _mm256_storeu_ps(buf + i, b);
      gi = k.nesterov ? _mm256_add_ps(gi, _mm256_mul_ps(b, mom)) : b;
    }
    _mm256_storeu_ps(p + i, _mm256_add_ps(pi, _mm256_mul_ps(gi, neg_lr)));
  }
  sgd_step_f32__ref(n - i, k, p + i, g + i, buf == nullptr ? nullptr : buf + i);
}

}  // namespace convcore
