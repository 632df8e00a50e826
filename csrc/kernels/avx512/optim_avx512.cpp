// AVX-512 optimiser steps (the contracts of kernels/optim_ukernels.h): 16
// elements per vector, the tail masked.  Memory-bound on large models (Adam
// reads four arrays and writes three); on a small one it replaces a dozen
// numpy passes over the parameters with one.  Separate multiply and add
// intrinsics, never an FMA: each operation rounds as numpy's does.
//
// Compiled with -mavx512f -mavx512dq -mavx512vl; self-contained (no inline
// helpers shared with other ISA files).
#if !defined(__AVX512F__)
#error "optim_avx512.cpp must be compiled with -mavx512f"
#endif

#include <immintrin.h>

#include "kernels/optim_ukernels.h"

namespace convcore {

void adam_step_f32__avx512(int64_t n, const AdamConstants& k, float* p, const float* g, float* m,
                           float* v) {
  const __m512 omb1 = _mm512_set1_ps(k.one_minus_beta1), b2 = _mm512_set1_ps(k.beta2);
  const __m512 omb2 = _mm512_set1_ps(k.one_minus_beta2);
  const __m512 bc2 = _mm512_set1_ps(k.bias_correction2_sqrt), eps = _mm512_set1_ps(k.eps);
  const __m512 neg_step = _mm512_set1_ps(k.neg_step_size), wd = _mm512_set1_ps(k.weight_decay);
  const bool decay = k.weight_decay != 0.0f;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 lm = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1u);
    __m512 pi = _mm512_maskz_loadu_ps(lm, p + i), gi = _mm512_maskz_loadu_ps(lm, g + i);
    __m512 mi = _mm512_maskz_loadu_ps(lm, m + i), vi = _mm512_maskz_loadu_ps(lm, v + i);
    if (decay) gi = _mm512_add_ps(gi, _mm512_mul_ps(pi, wd));
    mi = _mm512_add_ps(mi, _mm512_mul_ps(_mm512_sub_ps(gi, mi), omb1));
    vi = _mm512_add_ps(_mm512_mul_ps(vi, b2), _mm512_mul_ps(_mm512_mul_ps(gi, omb2), gi));
    const __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), bc2), eps);
    pi = _mm512_add_ps(pi, _mm512_mul_ps(_mm512_div_ps(mi, denom), neg_step));
    _mm512_mask_storeu_ps(p + i, lm, pi);
    _mm512_mask_storeu_ps(m + i, lm, mi);
    _mm512_mask_storeu_ps(v + i, lm, vi);
  }
}

void sgd_step_f32__avx512(int64_t n, const SgdConstants& k, float* p, const float* g, float* buf) {
  const __m512 mom = _mm512_set1_ps(k.momentum), omd = _mm512_set1_ps(k.one_minus_dampening);
  const __m512 wd = _mm512_set1_ps(k.weight_decay), neg_lr = _mm512_set1_ps(k.neg_lr);
  const bool decay = k.weight_decay != 0.0f;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 lm = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1u);
    __m512 pi = _mm512_maskz_loadu_ps(lm, p + i), gi = _mm512_maskz_loadu_ps(lm, g + i);
    if (decay) gi = _mm512_add_ps(gi, _mm512_mul_ps(pi, wd));
    if (buf != nullptr) {
      __m512 b = gi;
      if (!k.first)
        b = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(lm, buf + i), mom),
                          _mm512_mul_ps(gi, omd));
      _mm512_mask_storeu_ps(buf + i, lm, b);
      gi = k.nesterov ? _mm512_add_ps(gi, _mm512_mul_ps(b, mom)) : b;
    }
    pi = _mm512_add_ps(pi, _mm512_mul_ps(gi, neg_lr));
    _mm512_mask_storeu_ps(p + i, lm, pi);
  }
}

}  // namespace convcore
