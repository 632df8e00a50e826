// AVX-512 helpers shared by the kernel files of this folder (each compiled
// with -mavx512f ...).  They live in an unnamed namespace so that every file
// keeps its own copy: nothing compiled for AVX-512 can be merged, by the
// linker, into a path that runs on a CPU without it.
#pragma once

#ifndef __AVX512F__
#error "simd_avx512.h is for files compiled with -mavx512f"
#endif

#include <immintrin.h>

namespace convcore {
namespace {

// In-register 16x16 transpose: r[j] lane k becomes col[k] lane j.  Four
// rounds of in-lane unpacks and 128-bit lane shuffles, 64 shuffles for 256
// elements, where a scalar transpose costs a load and a store per element.
// r is overwritten.
__attribute__((always_inline)) inline void transpose_16x16(__m512* r, __m512* col) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int j = 0; j < 16; j += 2) {
    t[j] = _mm512_unpacklo_ps(r[j], r[j + 1]);
    t[j + 1] = _mm512_unpackhi_ps(r[j], r[j + 1]);
  }
  // u[4b + m] holds, in 128-bit lane L, column 4L + m of rows 4b .. 4b+3.
#pragma GCC unroll 4
  for (int b = 0; b < 4; ++b) {
    const __m512d t0 = _mm512_castps_pd(t[4 * b]), t1 = _mm512_castps_pd(t[4 * b + 1]);
    const __m512d t2 = _mm512_castps_pd(t[4 * b + 2]), t3 = _mm512_castps_pd(t[4 * b + 3]);
    r[4 * b + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
    r[4 * b + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
    r[4 * b + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
    r[4 * b + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
  }
#pragma GCC unroll 4
  for (int m = 0; m < 4; ++m) {
    const __m512 v0 = _mm512_shuffle_f32x4(r[m], r[m + 4], 0x88);
    const __m512 v4 = _mm512_shuffle_f32x4(r[m], r[m + 4], 0xdd);
    const __m512 v8 = _mm512_shuffle_f32x4(r[m + 8], r[m + 12], 0x88);
    const __m512 v12 = _mm512_shuffle_f32x4(r[m + 8], r[m + 12], 0xdd);
    col[m] = _mm512_shuffle_f32x4(v0, v8, 0x88);
    col[m + 8] = _mm512_shuffle_f32x4(v0, v8, 0xdd);
    col[m + 4] = _mm512_shuffle_f32x4(v4, v12, 0x88);
    col[m + 12] = _mm512_shuffle_f32x4(v4, v12, 0xdd);
  }
}

}  // namespace
}  // namespace convcore
