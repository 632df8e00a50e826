// AVX-512 row-segment convolution micro-kernels (see kernels/rows_ukernels.h).
//
// Forward tile NS x KB (NS * KB = 24 accumulators of 8 lanes): per reduction
// step, NS unaligned loads of input row segments and KB weight broadcasts
// feed NS * KB FMAs, so 2 x 12 does 14 loads per 24 FMAs and 24 x 1 does 25.
// The 32 registers of AVX-512VL hold the 24 accumulators plus the loaded
// segments; the result rows go straight to NCHW memory with masked stores,
// so an 8- or 12-wide output row wastes no padding column.
//
// Weight-gradient tile KB x TB: per output segment, KB dy loads and TB
// input-tap loads feed KB * TB FMAs; the reduction over positions stays in
// the lanes and is summed across lanes once per call, in a fixed order.
//
// Compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma;
// self-contained (templates in an anonymous namespace, intrinsics only).
#if !defined(__AVX512F__) || !defined(__AVX512VL__)
#error "conv2d_rows_avx512.cpp must be compiled with -mavx512f -mavx512vl"
#endif

#include <immintrin.h>

#include <algorithm>

#include "kernels/rows_ukernels.h"

namespace convcore {
namespace {

template <int NS, int KB>
void rows_tile(int64_t p0, int64_t p1, const float* w, const int64_t* offsets, const float* x,
               const RowSegment* seg, int64_t nseg, float* y, int64_t ldk, int64_t kn,
               const float* bias, bool relu) {
  __m256 acc[NS][KB];
  for (int k = 0; k < KB; ++k) {
    const __m256 b = _mm256_set1_ps(bias && k < kn ? bias[k] : 0.0f);
    for (int j = 0; j < NS; ++j) acc[j][k] = b;
  }
  const float* xs[NS];
  for (int j = 0; j < NS; ++j) xs[j] = x + seg[j < nseg ? j : 0].x_at;
  w += p0 * KB;
  for (int64_t p = p0; p < p1; ++p, w += KB) {
    const int64_t off = offsets[p];
    __m256 xv[NS];
#pragma GCC unroll 24
    for (int j = 0; j < NS; ++j) xv[j] = _mm256_loadu_ps(xs[j] + off);
#pragma GCC unroll 12
    for (int k = 0; k < KB; ++k) {
      const __m256 wk = _mm256_broadcast_ss(w + k);
#pragma GCC unroll 24
      for (int j = 0; j < NS; ++j) acc[j][k] = _mm256_fmadd_ps(wk, xv[j], acc[j][k]);
    }
  }
  // The fused ReLU in registers, bitwise relu_f32: an ordered v <= 0 (false
  // for NaN, true for -0) selects +0.
  if (relu) {
    const __m256 zero = _mm256_setzero_ps();
#pragma GCC unroll 24
    for (int j = 0; j < NS; ++j)
#pragma GCC unroll 12
      for (int k = 0; k < KB; ++k)
        acc[j][k] =
            _mm256_mask_blend_ps(_mm256_cmp_ps_mask(acc[j][k], zero, _CMP_LE_OQ), acc[j][k], zero);
  }
  // Constant trip counts and no early exit, so acc stays in registers (a
  // loop bound of nseg or kn made GCC keep the array in memory, written back
  // every step): absent segments and channels store under an empty mask.
#pragma GCC unroll 24
  for (int j = 0; j < NS; ++j) {
    const bool there = j < nseg;
    const __mmask8 m = there ? __mmask8((1u << seg[j].lanes) - 1u) : __mmask8(0);
    float* yj = y + (there ? seg[j].y_at : 0);
#pragma GCC unroll 12
    for (int k = 0; k < KB; ++k)
      _mm256_mask_storeu_ps(yj + (k < kn ? k : 0) * ldk, k < kn ? m : __mmask8(0), acc[j][k]);
  }
}

template <int KB, int TB>
void rows_wgrad(int64_t images, const float* dy, int64_t dy_img, int64_t ldk, const float* x,
                int64_t x_img, const int64_t* taps, const RowSegment* seg, int64_t nseg, int64_t kn,
                float* out, int64_t ldo) {
  __m256 acc[KB][TB];
#pragma GCC unroll 32
  for (int i = 0; i < KB * TB; ++i) acc[i / TB][i % TB] = _mm256_setzero_ps();
  int64_t dk[KB];  // channels past kn read channel 0 again; their sums are discarded
  for (int k = 0; k < KB; ++k) dk[k] = (k < kn ? k : 0) * ldk;
  // One flat loop over (image, segment): with the two loops nested GCC kept
  // acc in memory, written back every segment.
  const float* dyi = dy;
  const float* xi = x;
  for (int64_t u = 0, j = 0; u < images * nseg; ++u) {
    // Masked loads: lanes past a row's end are zero in both operands
    // (never 0 * inf); a whole segment has an all-ones mask.
    const __mmask8 m = __mmask8((1u << seg[j].lanes) - 1u);
    const float* d = dyi + seg[j].y_at;
    const float* xs = xi + seg[j].x_at;
    __m256 g[KB];
#pragma GCC unroll 4
    for (int k = 0; k < KB; ++k) g[k] = _mm256_maskz_loadu_ps(m, d + dk[k]);
#pragma GCC unroll 12
    for (int t = 0; t < TB; ++t) {
      const __m256 xv = _mm256_maskz_loadu_ps(m, xs + taps[t]);
#pragma GCC unroll 4
      for (int k = 0; k < KB; ++k) acc[k][t] = _mm256_fmadd_ps(g[k], xv, acc[k][t]);
    }
    if (++j == nseg) {
      j = 0;
      dyi += dy_img;
      xi += x_img;
    }
  }
  // One constant-trip loop (see rows_tile), fully unrolled, so acc is only
  // ever indexed by constants and stays in registers.
#pragma GCC unroll 32
  for (int i = 0; i < KB * TB; ++i) {
    const int k = i / TB, t = i % TB;
    // Fixed pairwise order across the 8 lanes.
    const __m128 h =
        _mm_add_ps(_mm256_castps256_ps128(acc[k][t]), _mm256_extractf128_ps(acc[k][t], 1));
    const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
    const float v = _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
    if (k < kn) out[k * ldo + t] += v;
  }
}

template <int NA, int NS>
void tapcols_tile(int64_t nr, int64_t K, const float* dy, int64_t r_step, int64_t k_step,
                  const float* w, int64_t lanes, float* out, int64_t ldo, int64_t na) {
  __m256 acc[NS][NA];
#pragma GCC unroll 32
  for (int i = 0; i < NS * NA; ++i) acc[i / NA][i % NA] = _mm256_setzero_ps();
  __mmask8 m[NS];
  for (int j = 0; j < NS; ++j) {
    const int64_t l = std::clamp<int64_t>(lanes - 8 * j, 0, 8);
    m[j] = __mmask8((1u << l) - 1u);
  }
  // One flat loop over the (r, k) steps (see rows_wgrad: nested loops kept
  // acc in memory).
  const float* d = dy;
  for (int64_t u = 0, k = 0; u < nr * K; ++u) {
    __m256 dv[NS];
#pragma GCC unroll 4
    for (int j = 0; j < NS; ++j) dv[j] = _mm256_maskz_loadu_ps(m[j], d + 8 * j);
#pragma GCC unroll 32
    for (int a = 0; a < NA; ++a) {
      const __m256 wa = _mm256_set1_ps(w[a]);
#pragma GCC unroll 4
      for (int j = 0; j < NS; ++j) acc[j][a] = _mm256_fmadd_ps(wa, dv[j], acc[j][a]);
    }
    w += NA;
    d += k_step;
    if (++k == K) {
      k = 0;
      d += r_step - K * k_step;
    }
  }
  // Constant trip counts (see rows_tile); absent accumulators store nothing.
#pragma GCC unroll 32
  for (int i = 0; i < NS * NA; ++i) {
    const int j = i / NA, a = i % NA;
    _mm256_mask_storeu_ps(out + (a < na ? a : 0) * ldo + 8 * j, a < na ? m[j] : __mmask8(0),
                          acc[j][a]);
  }
}

}  // namespace

#define CONVCORE_ROWS(NS, KB)                                                                    \
  void conv2d_rows_ukernel_f32_##NS##x##KB##__avx512(                                            \
      int64_t p0, int64_t p1, const float* w, const int64_t* offsets, const float* x,            \
      const RowSegment* seg, int64_t nseg, float* y, int64_t ldk, int64_t kn, const float* bias, \
      bool relu) {                                                                               \
    rows_tile<NS, KB>(p0, p1, w, offsets, x, seg, nseg, y, ldk, kn, bias, relu);                 \
  }
CONVCORE_ROWS(24, 1)
CONVCORE_ROWS(12, 2)
CONVCORE_ROWS(8, 3)
CONVCORE_ROWS(6, 4)
CONVCORE_ROWS(4, 6)
CONVCORE_ROWS(3, 8)
CONVCORE_ROWS(2, 12)
#undef CONVCORE_ROWS

#define CONVCORE_ROWS_WGRAD(KB, TB)                                                                \
  void conv2d_rows_wgrad_ukernel_f32_##KB##x##TB##__avx512(                                        \
      int64_t images, const float* dy, int64_t dy_img, int64_t ldk, const float* x, int64_t x_img, \
      const int64_t* taps, const RowSegment* seg, int64_t nseg, int64_t kn, float* out,            \
      int64_t ldo) {                                                                               \
    rows_wgrad<KB, TB>(images, dy, dy_img, ldk, x, x_img, taps, seg, nseg, kn, out, ldo);          \
  }
CONVCORE_ROWS_WGRAD(2, 9)
CONVCORE_ROWS_WGRAD(2, 12)
CONVCORE_ROWS_WGRAD(3, 8)
CONVCORE_ROWS_WGRAD(4, 6)
CONVCORE_ROWS_WGRAD(3, 9)
#undef CONVCORE_ROWS_WGRAD

#define CONVCORE_TAPCOLS(NA, NS)                                                              \
  void conv2d_tapcols_ukernel_f32_##NA##x##NS##__avx512(                                      \
      int64_t nr, int64_t K, const float* dy, int64_t r_step, int64_t k_step, const float* w, \
      int64_t lanes, float* out, int64_t ldo, int64_t na) {                                   \
    tapcols_tile<NA, NS>(nr, K, dy, r_step, k_step, w, lanes, out, ldo, na);                  \
  }
CONVCORE_TAPCOLS(30, 1)
CONVCORE_TAPCOLS(15, 2)
CONVCORE_TAPCOLS(10, 3)
#undef CONVCORE_TAPCOLS

void conv2d_tapcols_combine_f32__avx512(const float* a, int64_t plane, int64_t pitch, int64_t S,
                                        int64_t dil, int64_t H, int64_t W, float* dx) {
  for (int64_t h = 0; h < H; ++h, a += pitch, dx += W)
    for (int64_t w0 = 0; w0 < W; w0 += 16) {
      __m512 v = _mm512_loadu_ps(a + w0);
      for (int64_t s = 1; s < S; ++s)
        v = _mm512_add_ps(v, _mm512_loadu_ps(a + s * (plane - dil) + w0));
      const int64_t l = std::min<int64_t>(16, W - w0);
      _mm512_mask_storeu_ps(dx + w0, __mmask16((1u << l) - 1u), v);
    }
}

}  // namespace convcore
