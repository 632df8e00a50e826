// AVX-512 channels-in-lanes conv micro-kernels (see kernels/clanes_ukernels.h).
//
// Forward 14x32: 14 positions x 32 output channels = 28 zmm accumulators,
// held over the whole C x R x S reduction.  Per step: 2 weight loads (one
// 128-byte panel row, streamed from L1/L2) and 14 broadcasts of consecutive
// input elements of one padded plane, for 28 FMAs -- one load per two FMAs
// and 31 of the 32 registers.  A 14-wide output row (the 14x14 layers, and
// half a 28-wide row) fills the tile with no wasted lane, where the
// positions-in-lanes kernels round 14 up to 16.  The tile is written back
// through an in-register 16x16 transpose and masked stores (channel rows of
// NCHW, never past the tile's nt positions) once per 28 x steps FMAs.
//
// Weight gradient MTxKP: MT input taps (broadcast from the padded planes) x
// KP dy channels (one position-major panel row of KP/16 zmm), MT*KP/16 = 24
// accumulators; per position KP/16 loads + MT broadcasts for MT*KP/16 FMAs.
// A call may run over several images, loading and storing its accumulators
// once for all of them.
//
// Compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma;
// self-contained (intrinsics, raw pointers, anonymous namespace).
#ifndef __AVX512F__
#error "conv2d_clanes_avx512.cpp must be compiled with -mavx512f"
#endif

// GCC 12's AVX-512 intrinsics initialise their "undefined" pass-through
// operand from itself (GCC bug 105593), which -Wmaybe-uninitialized reports
// at every unpack; the operand is never read (all-ones mask).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "kernels/avx512/simd_avx512.h"
#include "kernels/clanes_ukernels.h"

namespace convcore {
namespace {

template <int NT>
__attribute__((always_inline)) inline void fwd_tile(int64_t steps, const float* __restrict w,
                                                    const float* x, const int64_t* offsets,
                                                    int64_t kn, const float* bias,
                                                    float* __restrict y, int64_t ldy) {
  __m512 a0[NT], a1[NT];
#pragma GCC unroll 14
  for (int j = 0; j < NT; ++j) {
    a0[j] = _mm512_setzero_ps();
    a1[j] = _mm512_setzero_ps();
  }
  for (int64_t p = 0; p < steps; ++p) {
    const float* xp = x + offsets[p];
    const __m512 w0 = _mm512_loadu_ps(w);
    const __m512 w1 = _mm512_loadu_ps(w + 16);
#pragma GCC unroll 14
    for (int j = 0; j < NT; ++j) {
      const __m512 b = _mm512_set1_ps(xp[j]);
      a0[j] = _mm512_fmadd_ps(b, w0, a0[j]);
      a1[j] = _mm512_fmadd_ps(b, w1, a1[j]);
    }
    w += 32;
  }
  alignas(64) float tile[NT * 32];
#pragma GCC unroll 14
  for (int j = 0; j < NT; ++j) {
    _mm512_store_ps(tile + j * 32, a0[j]);
    _mm512_store_ps(tile + j * 32 + 16, a1[j]);
  }
  const __mmask16 lanes = __mmask16((1u << NT) - 1);
  for (int64_t h = 0; h < 2 && h * 16 < kn; ++h) {
    __m512 r[16], col[16];
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j)
      r[j] = j < NT ? _mm512_load_ps(tile + j * 32 + h * 16) : _mm512_setzero_ps();
    transpose_16x16(r, col);
    const int64_t kh = kn - h * 16 < 16 ? kn - h * 16 : 16;
    for (int64_t k = 0; k < kh; ++k) {
      const __m512 v = bias ? _mm512_add_ps(col[k], _mm512_set1_ps(bias[h * 16 + k])) : col[k];
      _mm512_mask_storeu_ps(y + (h * 16 + k) * ldy, lanes, v);
    }
  }
}

template <int MT, int NV>
__attribute__((always_inline)) inline void outer_tile(int64_t q_len, int64_t nrows, int64_t images,
                                                      const float* const* rows, int64_t x_pitch,
                                                      int64_t x_image_stride,
                                                      const float* __restrict panel, float* c,
                                                      int64_t ldc) {
  __m512 acc[MT][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MT; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_loadu_ps(c + i * ldc + v * 16);
  for (int64_t img = 0; img < images; ++img)
    for (int64_t row = 0; row < nrows; ++row) {
      // One base pointer and per-tap distances: MT separate pointers would
      // not fit the general registers beside the loop state.
      const float* x0 = rows[0] + img * x_image_stride + row * x_pitch;
      int64_t dist[MT];
#pragma GCC unroll 16
      for (int i = 0; i < MT; ++i) dist[i] = rows[i] - rows[0];
      for (int64_t q = 0; q < q_len; ++q) {
        __m512 d[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) d[v] = _mm512_loadu_ps(panel + v * 16);
#pragma GCC unroll 16
        for (int i = 0; i < MT; ++i) {
          const __m512 b = _mm512_set1_ps(x0[dist[i] + q]);
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(b, d[v], acc[i][v]);
        }
        panel += NV * 16;
      }
    }
#pragma GCC unroll 16
  for (int i = 0; i < MT; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(c + i * ldc + v * 16, acc[i][v]);
}

}  // namespace

void conv2d_fwd_f32_clanes_14x32__avx512(int64_t steps, const float* w, const float* x,
                                         const int64_t* offsets, int64_t nt, int64_t kn,
                                         const float* bias, float* y, int64_t ldy) {
  switch (nt) {
#define CONVCORE_CLANES_CASE(n) \
  case n:                       \
    return fwd_tile<n>(steps, w, x, offsets, kn, bias, y, ldy);
    CONVCORE_CLANES_CASE(1)
    CONVCORE_CLANES_CASE(2)
    CONVCORE_CLANES_CASE(3)
    CONVCORE_CLANES_CASE(4)
    CONVCORE_CLANES_CASE(5)
    CONVCORE_CLANES_CASE(6)
    CONVCORE_CLANES_CASE(7)
    CONVCORE_CLANES_CASE(8)
    CONVCORE_CLANES_CASE(9)
    CONVCORE_CLANES_CASE(10)
    CONVCORE_CLANES_CASE(11)
    CONVCORE_CLANES_CASE(12)
    CONVCORE_CLANES_CASE(13)
    CONVCORE_CLANES_CASE(14)
#undef CONVCORE_CLANES_CASE
    default:
      return;
  }
}

void conv2d_bwd_weight_f32_clanes_6x64__avx512(int64_t q_len, int64_t nrows, int64_t images,
                                               const float* const* rows, int64_t x_pitch,
                                               int64_t x_image_stride, const float* panel, float* c,
                                               int64_t ldc) {
  outer_tile<6, 4>(q_len, nrows, images, rows, x_pitch, x_image_stride, panel, c, ldc);
}

void conv2d_bwd_weight_f32_clanes_12x32__avx512(int64_t q_len, int64_t nrows, int64_t images,
                                                const float* const* rows, int64_t x_pitch,
                                                int64_t x_image_stride, const float* panel,
                                                float* c, int64_t ldc) {
  outer_tile<12, 2>(q_len, nrows, images, rows, x_pitch, x_image_stride, panel, c, ldc);
}

void conv2d_bwd_weight_f32_pack_dy_clanes__avx512(const float* dy, int64_t ld, int64_t positions,
                                                  int64_t channels, float* panel, int64_t kp,
                                                  float* sums) {
  for (int64_t j0 = 0; j0 < kp; j0 += 16) {
    __m512 sum = _mm512_setzero_ps();
    for (int64_t t0 = 0; t0 < positions; t0 += 16) {
      const int64_t tn = positions - t0 < 16 ? positions - t0 : 16;
      const __mmask16 lanes = __mmask16((1u << tn) - 1);
      __m512 r[16], col[16];
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j)
        r[j] = j0 + j < channels ? _mm512_maskz_loadu_ps(lanes, dy + (j0 + j) * ld + t0)
                                 : _mm512_setzero_ps();
      transpose_16x16(r, col);
      for (int64_t t = 0; t < tn; ++t) {
        _mm512_storeu_ps(panel + (t0 + t) * kp + j0, col[t]);
        if (sums) sum = _mm512_add_ps(sum, col[t]);
      }
    }
    if (sums) _mm512_storeu_ps(sums + j0, sum);
  }
}

// Rows of 14-30 floats: memcpy + fill calls per row cost more than the
// copy; here a row is one or two zero stores and masked load/store pairs
// that never touch memory outside the source row or the padded row.
void conv2d_pad_planes_f32_s1__avx512(const float* src, int64_t channels, int64_t H, int64_t W,
                                      int64_t pad_top, int64_t pad_left, int64_t Hp, int64_t Wp,
                                      float* dst) {
  const int64_t j_lo = pad_left > 0 ? pad_left : 0;
  const int64_t j_hi = pad_left + W < Wp ? pad_left + W : Wp;
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t c = 0; c < channels; ++c) {
    const float* sc = src + c * H * W;
    float* dc = dst + c * Hp * Wp;
    for (int64_t i = 0; i < Hp; ++i) {
      float* row = dc + i * Wp;
      for (int64_t j = 0; j < Wp; j += 16) {
        const int64_t n = Wp - j < 16 ? Wp - j : 16;
        _mm512_mask_storeu_ps(row + j, __mmask16((1u << n) - 1), zero);
      }
      const int64_t h = i - pad_top;
      if (h < 0 || h >= H) continue;
      const float* srow = sc + h * W - pad_left;  // srow[j] = source column j - pad_left
      for (int64_t j = j_lo; j < j_hi; j += 16) {
        const int64_t n = j_hi - j < 16 ? j_hi - j : 16;
        const __mmask16 m = __mmask16((1u << n) - 1);
        _mm512_mask_storeu_ps(row + j, m, _mm512_maskz_loadu_ps(m, srow + j));
      }
    }
  }
}

}  // namespace convcore
