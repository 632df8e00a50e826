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

// kWhole: every one of the NS segments is a whole 8 lanes and all KB
// channels are there, so the results go out with plain stores (masked
// stores cost 5 % of the tutorial's first layer on Zen 4).
// Whether every segment is a whole 8 lanes.
inline bool all_whole(const RowSegment* seg, int64_t nseg) {
  for (int64_t j = 0; j < nseg; ++j)
    if (seg[j].lanes != 8) return false;
  return true;
}

template <int NS, int KB, bool kWhole>
void rows_tile_impl(int64_t p0, int64_t p1, const float* w, const int64_t* offsets, const float* x,
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
    for (int k = 0; k < KB; ++k) {
      if (kWhole)
        _mm256_storeu_ps(yj + k * ldk, acc[j][k]);
      else
        _mm256_mask_storeu_ps(yj + (k < kn ? k : 0) * ldk, k < kn ? m : __mmask8(0), acc[j][k]);
    }
  }
}

template <int NS, int KB>
void rows_tile(int64_t p0, int64_t p1, const float* w, const int64_t* offsets, const float* x,
               const RowSegment* seg, int64_t nseg, float* y, int64_t ldk, int64_t kn,
               const float* bias, bool relu) {
  if (nseg == NS && kn == KB && all_whole(seg, nseg))
    rows_tile_impl<NS, KB, true>(p0, p1, w, offsets, x, seg, nseg, y, ldk, kn, bias, relu);
  else
    rows_tile_impl<NS, KB, false>(p0, p1, w, offsets, x, seg, nseg, y, ldk, kn, bias, relu);
}

// A segment's 8 lanes: a masked load where the row ends inside it, a plain
// one where it is whole (kFull).  Masked loads ran 12 % slower on Zen 4 even
// with every lane set (the tutorial's 1 -> 6 weight gradient, 1 thread).
template <bool kFull>
inline __m256 segment_load(__mmask8 m, const float* p) {
  return kFull ? _mm256_loadu_ps(p) : _mm256_maskz_loadu_ps(m, p);
}

template <int KB, int TB, bool kFull>
void rows_wgrad_tile(int64_t images, const float* dy, int64_t dy_img, int64_t ldk, const float* x,
                     int64_t x_img, const int64_t* taps, const RowSegment* seg, int64_t nseg,
                     int64_t kn, float* out, int64_t ldo) {
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
    for (int k = 0; k < KB; ++k) g[k] = segment_load<kFull>(m, d + dk[k]);
#pragma GCC unroll 12
    for (int t = 0; t < TB; ++t) {
      const __m256 xv = segment_load<kFull>(m, xs + taps[t]);
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

// Whole segments (every row a multiple of 8 wide, as in both tutorial
// layers) run the tile with plain loads.
template <int KB, int TB>
void rows_wgrad(int64_t images, const float* dy, int64_t dy_img, int64_t ldk, const float* x,
                int64_t x_img, const int64_t* taps, const RowSegment* seg, int64_t nseg, int64_t kn,
                float* out, int64_t ldo) {
  if (all_whole(seg, nseg))
    rows_wgrad_tile<KB, TB, true>(images, dy, dy_img, ldk, x, x_img, taps, seg, nseg, kn, out, ldo);
  else
    rows_wgrad_tile<KB, TB, false>(images, dy, dy_img, ldk, x, x_img, taps, seg, nseg, kn, out,
                                   ldo);
}

template <int NA, int NS, bool kFull>
void tapcols_tile_impl(int64_t nr, int64_t K, const float* dy, int64_t r_step, int64_t k_step,
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
    for (int j = 0; j < NS; ++j) dv[j] = segment_load<kFull>(m[j], d + 8 * j);
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

template <int NA, int NS>
void tapcols_tile(int64_t nr, int64_t K, const float* dy, int64_t r_step, int64_t k_step,
                  const float* w, int64_t lanes, float* out, int64_t ldo, int64_t na) {
  if (lanes == 8 * NS)
    tapcols_tile_impl<NA, NS, true>(nr, K, dy, r_step, k_step, w, lanes, out, ldo, na);
  else
    tapcols_tile_impl<NA, NS, false>(nr, K, dy, r_step, k_step, w, lanes, out, ldo, na);
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

namespace {

// lanes[l] of one plane as the portable kernel sums them: element i + l of
// each whole 16 in order, then the tail into lanes 0, 1, ...
template <int NP>
void bias_lanes(int64_t PQ, const float* const* p, __m512* acc) {
  for (int q = 0; q < NP; ++q) acc[q] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= PQ; i += 16)
    for (int q = 0; q < NP; ++q) acc[q] = _mm512_add_ps(acc[q], _mm512_loadu_ps(p[q] + i));
  if (i < PQ) {
    const __mmask16 m = __mmask16((1u << (PQ - i)) - 1u);
    // A merging add: the lanes past the tail keep their sums (+0 + -0 would not).
    for (int q = 0; q < NP; ++q)
      acc[q] = _mm512_mask_add_ps(acc[q], m, acc[q], _mm512_maskz_loadu_ps(m, p[q] + i));
  }
}

// lanes[l] += lanes[l + w] for w = 8, 4, 2, 1: the result is lane 0.
inline float bias_fold(__m512 v) {
  const __m256 h8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  const __m128 h4 = _mm_add_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
  const __m128 h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
  return _mm_cvtss_f32(_mm_add_ss(h2, _mm_movehdup_ps(h2)));
}

}  // namespace

void conv2d_bwd_bias_planes_f32__avx512(int64_t planes, int64_t PQ, const float* dy, float* sums) {
  // Four planes at a time: four independent chains of adds instead of one
  // (a plane's 16 lanes are one chain, latency-bound alone).
  int64_t i = 0;
  for (; i + 4 <= planes; i += 4) {
    const float* p[4] = {dy + i * PQ, dy + (i + 1) * PQ, dy + (i + 2) * PQ, dy + (i + 3) * PQ};
    __m512 acc[4];
    bias_lanes<4>(PQ, p, acc);
    for (int q = 0; q < 4; ++q) sums[i + q] = bias_fold(acc[q]);
  }
  for (; i < planes; ++i) {
    const float* p[1] = {dy + i * PQ};
    __m512 acc[1];
    bias_lanes<1>(PQ, p, acc);
    sums[i] = bias_fold(acc[0]);
  }
}

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
