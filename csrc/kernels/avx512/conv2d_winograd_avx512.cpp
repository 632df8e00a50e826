// AVX-512 Winograd F(2x2, 3x3) micro-kernels (see kernels/winograd_ukernels.h).
//
// Tiles are in the lanes: one zmm holds one transformed position of 16
// consecutive tiles of a tile row.
//
// Input: the four input rows of a tile row are read with masked loads (the
// mask is the zero padding, so no padded copy of the plane is made), combined
// vertically (B^T d), then split into even and odd columns with two-source
// permutes to form the horizontal combinations (. B) of 16 tiles at once.
//
// GEMM 8x32: 8 output channels (broadcast from the packed U panel) x 32 tiles
// (two zmm of V) = 16 accumulators held over the whole channel reduction; per
// channel 2 loads and 8 broadcasts for 16 FMAs.
//
// Output: A^T M A on 16 tiles, bias, the fused ReLU, then the two output
// columns of each tile are interleaved into whole output rows and written
// with masked stores (never past Q or the tile row's end).
//
// Compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma;
// self-contained (intrinsics, raw pointers, anonymous namespace).
#ifndef __AVX512F__
#error "conv2d_winograd_avx512.cpp must be compiled with -mavx512f"
#endif

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC bug 105593, see clanes
#include <immintrin.h>

#include "kernels/winograd_ukernels.h"

namespace convcore {
namespace {

// Lanes [0, n) of a 16-lane mask, n clamped to [0, 16].
inline __mmask16 first_lanes(int64_t n) {
  return n <= 0 ? __mmask16(0) : n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u);
}

// Lanes l with lo <= base + l < hi.
inline __mmask16 lanes_in(int64_t base, int64_t lo, int64_t hi) {
  const int64_t first = lo - base > 0 ? lo - base : 0;
  const int64_t end = hi - base;
  if (end <= first) return 0;
  return __mmask16(first_lanes(end) & ~first_lanes(first));
}

// Horizontal input transform of one row of B^T d, given as columns
// a[0 .. 47] in three vectors: out[j] lane t = (row . B)[j] of tile t.
inline void input_columns(const __m512 a[3], __m512 out[4]) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512i next_e = _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16);
  const __m512i next_o = _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17);
  const __m512 e0 = _mm512_permutex2var_ps(a[0], even, a[1]);  // column 2t
  const __m512 o0 = _mm512_permutex2var_ps(a[0], odd, a[1]);   // 2t + 1
  const __m512 e1 = _mm512_permutex2var_ps(e0, next_e, a[2]);  // 2t + 2
  const __m512 o1 = _mm512_permutex2var_ps(o0, next_o, a[2]);  // 2t + 3
  out[0] = _mm512_sub_ps(e0, e1);
  out[1] = _mm512_add_ps(o0, e1);
  out[2] = _mm512_sub_ps(e1, o0);
  out[3] = _mm512_sub_ps(o0, o1);
}

template <int NV>
inline void gemm_tile(int64_t C, const float* __restrict u, const float* __restrict v, int64_t ldv,
                      float* __restrict m, int64_t ldm) {
  __m512 acc[8][NV];
#pragma GCC unroll 8
  for (int r = 0; r < 8; ++r)
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t c = 0; c < C; ++c) {
    __m512 vv[NV];
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) vv[j] = _mm512_loadu_ps(v + c * ldv + 16 * j);
#pragma GCC unroll 8
    for (int r = 0; r < 8; ++r) {
      const __m512 b = _mm512_set1_ps(u[c * 8 + r]);
#pragma GCC unroll 2
      for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_fmadd_ps(b, vv[j], acc[r][j]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < 8; ++r)
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(m + r * ldm + 16 * j, acc[r][j]);
}

// relu_f32 on 16 lanes: v where v > 0 or v is NaN, else +0.
inline __m512 relu16(__m512 v) {
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NLE_UQ), v);
}

}  // namespace

bool conv2d_wino_f2x3_input__avx512(const float* plane, int64_t H, int64_t W, int64_t iy0,
                                    int64_t ix0, int64_t nt, int64_t rows, float* v, int64_t ldt,
                                    int64_t ldxi) {
  const int64_t cols = 2 * nt + 2;  // input columns of nt tiles
  __mmask16 mask[3];
#pragma GCC unroll 3
  for (int b = 0; b < 3; ++b)
    mask[b] = __mmask16(lanes_in(ix0 + 16 * b, 0, W) & first_lanes(cols - 16 * b));
  const __mmask16 store = first_lanes(nt);
  // Lanes holding NaN or +-inf (fpclass: QNaN 0x01, +inf 0x08, -inf 0x10,
  // SNaN 0x80), over every value read.
  __mmask16 nonfinite = 0;
  // Input row iy as three column vectors (zero outside the plane).
  auto load_row = [&](int64_t iy, __m512 out[3]) {
    const bool inside = iy >= 0 && iy < H;
    const float* row = plane + (inside ? iy * W : 0) + ix0;
#pragma GCC unroll 3
    for (int b = 0; b < 3; ++b) {
      out[b] = inside ? _mm512_maskz_loadu_ps(mask[b], row + 16 * b) : _mm512_setzero_ps();
      nonfinite = __mmask16(nonfinite | _mm512_fpclass_ps_mask(out[b], 0x99));
    }
  };
  // Tile row j reads input rows iy0 + 2j .. iy0 + 2j + 3: the last two are
  // the next tile row's first two, so each input row is loaded once.
  __m512 d0[3], d1[3];
  load_row(iy0, d0);
  load_row(iy0 + 1, d1);
  for (int64_t j = 0; j < rows; ++j) {
    __m512 d2[3], d3[3], a[4][3];
    load_row(iy0 + 2 * j + 2, d2);
    load_row(iy0 + 2 * j + 3, d3);
#pragma GCC unroll 3
    for (int b = 0; b < 3; ++b) {  // B^T d: rows d0 - d2, d1 + d2, d2 - d1, d1 - d3
      a[0][b] = _mm512_sub_ps(d0[b], d2[b]);
      a[1][b] = _mm512_add_ps(d1[b], d2[b]);
      a[2][b] = _mm512_sub_ps(d2[b], d1[b]);
      a[3][b] = _mm512_sub_ps(d1[b], d3[b]);
      d0[b] = d2[b];
      d1[b] = d3[b];
    }
    float* vj = v + j * ldt;
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      __m512 out[4];
      input_columns(a[i], out);
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) _mm512_mask_storeu_ps(vj + (4 * i + k) * ldxi, store, out[k]);
    }
  }
  return nonfinite == 0;
}

void conv2d_wino_f2x3_gemm_8x32__avx512(int64_t C, const float* u, const float* v, int64_t ldv,
                                        int nv, float* m, int64_t ldm) {
  if (nv == 2)
    gemm_tile<2>(C, u, v, ldv, m, ldm);
  else
    gemm_tile<1>(C, u, v, ldv, m, ldm);
}

void conv2d_wino_f2x3_output__avx512(const float* m, int64_t ldxi, int64_t nt, int64_t rows,
                                     int64_t ldt, float bias, bool relu, float* out, int64_t P,
                                     int64_t Q, int64_t oy0, int64_t ox0) {
  const __mmask16 lanes = first_lanes(nt);
  const __m512 b = _mm512_set1_ps(bias);
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi =
      _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __mmask16 store0 = __mmask16(lanes_in(ox0, 0, Q) & first_lanes(2 * nt));
  const __mmask16 store1 = __mmask16(lanes_in(ox0 + 16, 0, Q) & first_lanes(2 * nt - 16));
  for (int64_t j = 0; j < rows; ++j) {
    const float* mj = m + j * ldt;
    __m512 x[16];
#pragma GCC unroll 16
    for (int xi = 0; xi < 16; ++xi) x[xi] = _mm512_maskz_loadu_ps(lanes, mj + xi * ldxi);
    // A^T M: row 0 = M0 + M1 + M2, row 1 = M1 - M2 - M3 (per column k).
    __m512 z[2][4];
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      z[0][k] = _mm512_add_ps(_mm512_add_ps(x[k], x[4 + k]), x[8 + k]);
      z[1][k] = _mm512_sub_ps(_mm512_sub_ps(x[4 + k], x[8 + k]), x[12 + k]);
    }
    const int64_t oy = oy0 + 2 * j;
#pragma GCC unroll 2
    for (int a = 0; a < 2; ++a) {
      if (oy + a >= P) break;
      // . A: column 0 = z0 + z1 + z2, column 1 = z1 - z2 - z3.
      __m512 c0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(z[a][0], z[a][1]), z[a][2]), b);
      __m512 c1 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(z[a][1], z[a][2]), z[a][3]), b);
      if (relu) {
        c0 = relu16(c0);
        c1 = relu16(c1);
      }
      float* row = out + (oy + a) * Q + ox0;
      _mm512_mask_storeu_ps(row, store0, _mm512_permutex2var_ps(c0, lo, c1));
      if (store1) _mm512_mask_storeu_ps(row + 16, store1, _mm512_permutex2var_ps(c0, hi, c1));
    }
  }
}

}  // namespace convcore
