// Row-segment convolution micro-kernels for layers with few channels (first
// layers with one input channel, the tutorial model's 5x5 layers): output
// columns in the lanes, one 8-lane vector per output row segment, so a row
// of 8, 12, 24 or 28 outputs wastes at most the lanes of one masked tail
// (never the padding columns a padded-width position space computes), and
// each result is stored straight into its NCHW row: no tile buffer, no
// scatter pass.
#pragma once

#include <cstdint>

namespace convcore {

// One output row segment: up to 8 consecutive outputs of one row.
struct RowSegment {
  int64_t x_at;   // offset of the segment's first output in the padded input plane (h * Wp + q0)
  int64_t y_at;   // offset of the segment's first output in an output plane (h * Q + q0)
  int32_t lanes;  // valid outputs, 1..8
};

// Forward-style tile: NS segments x KB output channels, all accumulators in
// registers for the whole reduction:
//   y[k * ldk + seg[j].y_at + l] = bias[k] + sum over p in [p0, p1) of
//       w[p * KB + k] * x[offsets[p] + seg[j].x_at + l]
// for k < kn, l < seg[j].lanes.  w is a packed panel (steps x KB, zero
// columns past the last channel); bias may be null.  x may be read up to 7
// floats past the last valid lane of a segment (the caller leaves slack).
// Reduction in increasing p.  relu: each stored value is relu_f32 of it
// (ops/conv2d_drivers.h), applied in registers.
using conv_rows_ukernel_fn = void (*)(int64_t p0, int64_t p1, const float* w,
                                      const int64_t* offsets, const float* x, const RowSegment* seg,
                                      int64_t nseg, float* y, int64_t ldk, int64_t kn,
                                      const float* bias, bool relu);

// Weight-gradient tile: KB output channels x TB taps, reduced over `nseg`
// segments of `images` images in lanes, then across lanes in a fixed order:
//   out[k * ldo + t] += sum_img sum_j sum_l dy[img * dy_img + k * ldk + seg[j].y_at + l]
//                                      * x[img * x_img + taps[t] + seg[j].x_at + l]
// for k < kn.  Lanes past seg[j].lanes are masked off (never read).
using conv_rows_wgrad_ukernel_fn = void (*)(int64_t images, const float* dy, int64_t dy_img,
                                            int64_t ldk, const float* x, int64_t x_img,
                                            const int64_t* taps, const RowSegment* seg,
                                            int64_t nseg, int64_t kn, float* out, int64_t ldo);

// The bias gradient's per-plane sums beside the weight gradient: sums[i] =
// the sum of plane i (`planes` consecutive planes of PQ floats), in 16 lanes
// then pairwise across them -- bitwise conv2d_bwd_bias_f32__portable of one
// plane (kernels/direct_ukernels.h), several planes at a time.
using conv_bias_planes_fn = void (*)(int64_t planes, int64_t PQ, const float* dy, float* sums);

// Data-gradient tile on tap columns (stride 1): the dx of one row is the sum
// over the kernel's columns s of dy rows shifted by s, so the kernel keeps one
// unshifted accumulator per (channel, s) and adds the shifts afterwards
// (conv_tapcols_combine_fn).  Every FMA is on dy data: no padding lanes, no
// zero-padded dy rows.  For one dx row, NA accumulators (a = channel * S + s
// of a channel block) x NS segments of 8 dy columns:
//   out[a * ldo + 8 j + l] = sum over r < nr, k < K of
//       w[(r * K + k) * NA + a] * dy[r * r_step + k * k_step + 8 j + l]
// for a < na, 8 j + l < lanes; reduction r-major, then k.  dy lanes past
// `lanes` are never read.
using conv_tapcols_ukernel_fn = void (*)(int64_t nr, int64_t K, const float* dy, int64_t r_step,
                                         int64_t k_step, const float* w, int64_t lanes, float* out,
                                         int64_t ldo, int64_t na);
// One dx plane (H x W) from its S partial planes of pitch `pitch`:
//   dx[h * W + w] = sum over s < S, in increasing s, of
//                   a[s * plane + h * pitch + w - s * dil]
// Reads up to 15 floats past each row's last w and dil * (S - 1) before its
// first (zeros wherever no dy column lands).
using conv_tapcols_combine_fn = void (*)(const float* a, int64_t plane, int64_t pitch, int64_t S,
                                         int64_t dil, int64_t H, int64_t W, float* dx);

#if defined(CONVCORE_HAVE_AVX512_KERNELS)
// Tiles of 24 accumulators (ymm, AVX-512VL for 32 registers and masked
// tails): NS segments x KB channels.
void conv2d_rows_ukernel_f32_24x1__avx512(int64_t, int64_t, const float*, const int64_t*,
                                          const float*, const RowSegment*, int64_t, float*, int64_t,
                                          int64_t, const float*, bool);
void conv2d_rows_ukernel_f32_12x2__avx512(int64_t, int64_t, const float*, const int64_t*,
                                          const float*, const RowSegment*, int64_t, float*, int64_t,
                                          int64_t, const float*, bool);
void conv2d_rows_ukernel_f32_8x3__avx512(int64_t, int64_t, const float*, const int64_t*,
                                         const float*, const RowSegment*, int64_t, float*, int64_t,
                                         int64_t, const float*, bool);
void conv2d_rows_ukernel_f32_6x4__avx512(int64_t, int64_t, const float*, const int64_t*,
                                         const float*, const RowSegment*, int64_t, float*, int64_t,
                                         int64_t, const float*, bool);
void conv2d_rows_ukernel_f32_4x6__avx512(int64_t, int64_t, const float*, const int64_t*,
                                         const float*, const RowSegment*, int64_t, float*, int64_t,
                                         int64_t, const float*, bool);
void conv2d_rows_ukernel_f32_3x8__avx512(int64_t, int64_t, const float*, const int64_t*,
                                         const float*, const RowSegment*, int64_t, float*, int64_t,
                                         int64_t, const float*, bool);
void conv2d_rows_ukernel_f32_2x12__avx512(int64_t, int64_t, const float*, const int64_t*,
                                          const float*, const RowSegment*, int64_t, float*, int64_t,
                                          int64_t, const float*, bool);
// Tap-column data gradient: NA accumulators per segment x NS segments.
void conv2d_tapcols_ukernel_f32_30x1__avx512(int64_t, int64_t, const float*, int64_t, int64_t,
                                             const float*, int64_t, float*, int64_t, int64_t);
void conv2d_tapcols_ukernel_f32_15x2__avx512(int64_t, int64_t, const float*, int64_t, int64_t,
                                             const float*, int64_t, float*, int64_t, int64_t);
void conv2d_tapcols_ukernel_f32_10x3__avx512(int64_t, int64_t, const float*, int64_t, int64_t,
                                             const float*, int64_t, float*, int64_t, int64_t);
void conv2d_tapcols_combine_f32__avx512(const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                        int64_t, float*);
void conv2d_bwd_bias_planes_f32__avx512(int64_t planes, int64_t PQ, const float* dy, float* sums);
// Weight gradient: KB channels x TB taps (at most 27 accumulators).
void conv2d_rows_wgrad_ukernel_f32_2x9__avx512(int64_t, const float*, int64_t, int64_t,
                                               const float*, int64_t, const int64_t*,
                                               const RowSegment*, int64_t, int64_t, float*,
                                               int64_t);
void conv2d_rows_wgrad_ukernel_f32_2x12__avx512(int64_t, const float*, int64_t, int64_t,
                                                const float*, int64_t, const int64_t*,
                                                const RowSegment*, int64_t, int64_t, float*,
                                                int64_t);
void conv2d_rows_wgrad_ukernel_f32_3x8__avx512(int64_t, const float*, int64_t, int64_t,
                                               const float*, int64_t, const int64_t*,
                                               const RowSegment*, int64_t, int64_t, float*,
                                               int64_t);
void conv2d_rows_wgrad_ukernel_f32_3x9__avx512(int64_t, const float*, int64_t, int64_t,
                                               const float*, int64_t, const int64_t*,
                                               const RowSegment*, int64_t, int64_t, float*,
                                               int64_t);
void conv2d_rows_wgrad_ukernel_f32_4x6__avx512(int64_t, const float*, int64_t, int64_t,
                                               const float*, int64_t, const int64_t*,
                                               const RowSegment*, int64_t, int64_t, float*,
                                               int64_t);
#endif

}  // namespace convcore
