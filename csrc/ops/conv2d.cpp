// conv2d entry points and their ordered implementation lists.  The drivers
// live beside this file: conv2d_direct.cpp (direct register tiles, forward
// and stride-1 data gradient), conv2d_weight.cpp (weight gradient),
// conv2d_gemm.cpp (data gradient as GEMM + col2im, any stride),
// conv2d_rows.cpp (row-segment tiles for layers with few channels, AVX-512),
// conv2d_clanes.cpp (AVX-512 channels in lanes, >= 16 channels); the scalar
// reference loops (kernels/ref/) end every list.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/cpu.h"
#include "common/runtime.h"
#include "kernels/direct_ukernels.h"
#include "kernels/gemm_ukernels.h"
#include "kernels/ref/ref_kernels.h"
#include "ops/conv2d_drivers.h"
#include "ops/impl_list.h"
#include "ops/ops.h"
#include "ops/workspace.h"

namespace convcore {
namespace {

// ---------------------------------------------------------------------------
// Implementation lists (ops/impl_list.h): tried in order, the first
// applicable one under the active ISA cap runs; the scalar reference ends
// every list.
// ---------------------------------------------------------------------------

struct ConvArgs {
  const float* x;
  const float* w;
  const float* b;
  const float* dy;
  float* y;
  float* dx;
  float* dw;
  float* db;
  // Forward: max(., 0) on y (the fused ReLU epilogue).
  bool relu;
  // Bias gradient: the output of the ReLU after this convolution, or null.
  // Given it, dy_masked (the same buffer as dy) is first multiplied by
  // (relu_y > 0) in place.
  const float* relu_y;
  float* dy_masked;
  // Weight gradient: db is set only for the entry that sums the bias
  // gradient in its own pass over dy (conv2d_weight_gradient_sums_bias).
};
using ConvImpl = Impl<Conv2dGeometry, ConvArgs>;

bool unit_stride(const Conv2dGeometry& g) { return g.stride_h == 1 && g.stride_w == 1; }
// The direct and channels-in-lanes kernels copy each padded input plane split
// by stride phase, rounded up to whole strides: about (Hp + sh) x (Wp + sw)
// floats a channel.  For a stride far beyond the input (32768 on a 12x16
// image: 4 GB per image) that copy, not the convolution, is the work; such
// calls go to the reference.
bool compact_phases(const Conv2dGeometry& g) {
  const double hp = double(g.H + g.pad_top + g.pad_bottom);
  const double wp = double(g.W + g.pad_left + g.pad_right);
  return (hp + g.stride_h) * (wp + g.stride_w) <= 4.0 * hp * wp + 65536.0;
}

template <conv_direct_ukernel_fn UK6x16, conv_direct_ukernel_fn UK4x24>
void run_fwd_direct(const Conv2dGeometry& g, const ConvArgs& a) {
  forward_direct({UK6x16, 6, 16}, {UK4x24, 4, 24}, g, a.x, a.w, a.b, a.y, a.relu);
}
void run_fwd_ref(const Conv2dGeometry& g, const ConvArgs& a) {
  const int nt = conv_threads(g);
  const int64_t img_in = g.C * g.H * g.W, img_out = g.K * g.P * g.Q;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t n = 0; n < g.N; ++n) {
    conv2d_fwd_f32__ref(g, a.x + n * img_in, a.w, a.b, a.y + n * img_out);
    // The fused ReLU on the image just written (still in cache).
    if (a.relu) relu_inplace(a.y + n * img_out, img_out);
  }
}

template <conv_direct_ukernel_fn UK6x16, conv_direct_ukernel_fn UK4x24>
void run_bwd_data_direct(const Conv2dGeometry& g, const ConvArgs& a) {
  backward_data_direct({UK6x16, 6, 16}, {UK4x24, 4, 24}, g, a.dy, a.w, a.dx);
}
template <gemm_ukernel_fn UK>
void run_bwd_data_gemm(const Conv2dGeometry& g, const ConvArgs& a) {
  backward_data_gemm(UK, g, a.dy, a.w, a.dx);
}
void run_bwd_data_ref(const Conv2dGeometry& g, const ConvArgs& a) {
  const int nt = conv_threads(g);
  const int64_t img_in = g.C * g.H * g.W, img_out = g.K * g.P * g.Q;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t n = 0; n < g.N; ++n)
    conv2d_bwd_data_f32__ref(g, a.dy + n * img_out, a.w, a.dx + n * img_in);
}

template <conv_dot_ukernel_fn UK>
void run_bwd_weight_direct(const Conv2dGeometry& g, const ConvArgs& a) {
  backward_weight_direct(UK, g, a.dy, a.x, a.dw);
}
template <conv_outer_ukernel_fn UK>
void run_bwd_weight_outer(const Conv2dGeometry& g, const ConvArgs& a) {
  backward_weight_outer(UK, g, a.dy, a.x, a.dw);
}
// Outer-product tiles pay off when dy is reused over many taps and channels.
bool many_taps_and_channels(const Conv2dGeometry& g) {
  return compact_phases(g) && g.Kg() >= 16 && g.Cg() * g.R * g.S >= 32;
}
void run_bwd_weight_ref(const Conv2dGeometry& g, const ConvArgs& a) {
  // Threads split the output channels; each element reduces over the whole
  // batch in one order, so the result does not depend on their number.
  const int nt = conv_threads(g);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t k = 0; k < g.K; ++k) conv2d_bwd_weight_f32__ref(g, a.dy, a.x, k, k + 1, a.dw);
}

// Bias gradient: each output channel reduces over N, P, Q in one fixed order.
// Through a ReLU (relu_y given), a channel's N planes of dy are first masked
// in place -- dy * (y > 0), numpy's multiply by the bool mask, so NaN and
// signed zeros come out the same -- and then summed by the same kernel while
// they are still in L2 (N * P * Q floats: 310 KB for the wide model's first
// layers), one pass over dy for both.
template <float (*Kernel)(int64_t, int64_t, int64_t, const float*, int64_t)>
void run_bwd_bias(const Conv2dGeometry& g, const ConvArgs& a) {
  const int64_t PQ = g.P * g.Q;
  const int nt = threads_for(double(g.N) * g.K * PQ, 1e5);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t k = 0; k < g.K; ++k) {
    if (a.relu_y)
      for (int64_t n = 0; n < g.N; ++n)
        relu_mask_inplace(a.dy_masked + (n * g.K + k) * PQ, a.relu_y + (n * g.K + k) * PQ, PQ);
    if (a.db) a.db[k] = Kernel(g.N, g.K, PQ, a.dy, k);
  }
}

#if defined(CONVCORE_HAVE_AVX512_KERNELS)
// The bias gradient summed from the dy panels the channels-in-lanes weight
// gradient packs, in the same pass over dy: the separate pass read the
// whole of dy again, 0.17 ms (30 GB/s) of the 7.3 ms 64 -> 64 channel
// 14x14 weight gradient at batch 100.  An entry of the bias list that the
// selection never takes (it exists only inside that weight gradient), so
// that implementations(), last_kernel() and set_disabled_implementations()
// know it; disabled, the weight gradient leaves the bias to the list.
constexpr const char* kBiasInClanesWeight = "conv2d_bwd_bias_f32_clanes_dy_panels__avx512";
bool inside_weight_gradient(const Conv2dGeometry&) { return false; }
// The same inside the row-segment weight gradient: each chunk sums its dy
// planes into its partial after the kernel calls, while they are in cache
// (tutorial layers at batch 100, 2 threads: weight and bias 0.131 / 0.169
// ms against 0.138 / 0.178 with the separate pass).
constexpr const char* kBiasInRowsWeight = "conv2d_bwd_bias_f32_rows_chunks__avx512";
const RowsKernels kRowsAvx512 = {{
    {conv2d_rows_ukernel_f32_24x1__avx512, 24, 1},
    {conv2d_rows_ukernel_f32_12x2__avx512, 12, 2},
    {conv2d_rows_ukernel_f32_8x3__avx512, 8, 3},
    {conv2d_rows_ukernel_f32_6x4__avx512, 6, 4},
    {conv2d_rows_ukernel_f32_4x6__avx512, 4, 6},
    {conv2d_rows_ukernel_f32_3x8__avx512, 3, 8},
    {conv2d_rows_ukernel_f32_2x12__avx512, 2, 12},
}};
const RowsWeightKernels kRowsWeightAvx512 = {
    {
        {conv2d_rows_wgrad_ukernel_f32_2x9__avx512, 2, 9},
        {conv2d_rows_wgrad_ukernel_f32_2x12__avx512, 2, 12},
        {conv2d_rows_wgrad_ukernel_f32_3x8__avx512, 3, 8},
        {conv2d_rows_wgrad_ukernel_f32_4x6__avx512, 4, 6},
        {conv2d_rows_wgrad_ukernel_f32_3x9__avx512, 3, 9},
    },
    conv2d_bwd_bias_planes_f32__avx512};
const TapcolsKernels kTapcolsAvx512 = {
    {conv2d_tapcols_ukernel_f32_30x1__avx512, conv2d_tapcols_ukernel_f32_15x2__avx512,
     conv2d_tapcols_ukernel_f32_10x3__avx512},
    conv2d_tapcols_combine_f32__avx512};
void run_bwd_data_tapcols_avx512(const Conv2dGeometry& g, const ConvArgs& a) {
  backward_data_tapcols(kTapcolsAvx512, g, a.dy, a.w, a.dx);
}
void run_fwd_rows_avx512(const Conv2dGeometry& g, const ConvArgs& a) {
  forward_rows(kRowsAvx512, g, a.x, a.w, a.b, a.y, a.relu);
}
void run_bwd_data_rows_avx512(const Conv2dGeometry& g, const ConvArgs& a) {
  backward_data_rows(kRowsAvx512, g, a.dy, a.w, a.dx);
}
void run_bwd_data_rows_flat_avx512(const Conv2dGeometry& g, const ConvArgs& a) {
  backward_data_rows_flat(kRowsAvx512, g, a.dy, a.w, a.dx);
}
void run_bwd_weight_rows_avx512(const Conv2dGeometry& g, const ConvArgs& a) {
  backward_weight_rows(kRowsWeightAvx512, g, a.dy, a.x, a.dw, a.db);
  if (a.db) note_kernel_for("conv2d_bwd_bias", kBiasInRowsWeight, g);
}
// Channels in lanes: 32-channel panels and row tiles of up to 14 positions.
// Measured against the AVX2 positions-in-lanes tiles (1 thread): 1.15-1.35x
// where the panel's channel count is a multiple of 32 and rows are 7 or more
// wide; 0.91-0.92x at 80 channels (a sixth of the lanes padding), 0.56-0.86x
// at 16 or 24.  So at most a tenth of the lanes may be padding (90 -> 96).
bool fills_panels(int64_t channels) { return (channels + 31) / 32 * 32 * 10 <= channels * 11; }
bool clanes_fwd_fits(const Conv2dGeometry& g) {
  return compact_phases(g) && g.Cg() >= 16 && fills_panels(g.Kg()) && g.Q >= 7;
}
bool clanes_bwd_data_fits(const Conv2dGeometry& g) {
  return unit_stride(g) && g.Kg() >= 16 && fills_panels(g.Cg()) && g.W >= 7;
}
// The weight gradient also takes layers with few input channels, ahead of
// the row-segment kernels: a panel of 12 taps holds 9 of a 1 -> 32 channel
// 3x3 layer, yet (batch 100, 2 threads, one process, alternating) it ran
// 0.45 / 0.49 ms with the inputs in / out of cache against 0.51 / 0.65 ms
// on rows; 1 -> 64, 2 -> 64, 3 -> 32, 8 -> 32 and 1 -> 32 5x5 gained 1.4-1.9x
// and even a 1x1 with one input channel (1 tap of 12) 1.25x.  Its dy
// packing streams and prefetches what the row kernels read as short runs.
bool clanes_bwd_weight_fits(const Conv2dGeometry& g) {
  return compact_phases(g) && fills_panels(g.Kg()) && g.Q >= 7;
}
void run_fwd_clanes(const Conv2dGeometry& g, const ConvArgs& a) {
  forward_clanes(conv2d_fwd_f32_clanes_14x32__avx512, conv2d_pad_planes_f32_s1__avx512, g, a.x, a.w,
                 a.b, a.y, a.relu);
}
void run_bwd_data_clanes(const Conv2dGeometry& g, const ConvArgs& a) {
  backward_data_clanes(conv2d_fwd_f32_clanes_14x32__avx512, conv2d_pad_planes_f32_s1__avx512, g,
                       a.dy, a.w, a.dx);
}
// Winograd F(2x2, 3x3): 16 multiplications per 2x2 tile where the direct
// method spends 36, plus the transforms, whose cost per output grows with
// C + K while the GEMM's grows with C * K.  Measured against the
// channels-in-lanes and row-segment kernels (batch 50-100, 1 and 2 threads):
// 1.3-1.8x from 16 channels on 10x10 to 64x64 outputs; 0.74-0.91x on 7x7
// outputs (a quarter of the tile lanes empty, 16 tiles for 49 outputs) and
// 1.0x at 8 channels.  The weights' transform is paid once per call, so
// the call needs enough tiles (1 thread, 64 -> 64 channels): 0.62x the
// direct kernel with 16 tiles, 0.81x with 49, 1.06x with 98, 1.69x with 196.
bool winograd_fits(const Conv2dGeometry& g) {
  const int64_t tiles = g.N * ((g.P + 1) / 2) * ((g.Q + 1) / 2);
  return winograd_applicable(g) && g.C >= 16 && g.K >= 16 && g.P >= 8 && g.Q >= 8 && tiles >= 80;
}
const WinogradKernels kWinogradAvx512 = {conv2d_wino_f2x3_input__avx512,
                                         conv2d_wino_f2x3_gemm_8x32__avx512,
                                         conv2d_wino_f2x3_output__avx512};
// Defined after the lists: on NaN or inf data they hand the call on.
void run_fwd_winograd(const Conv2dGeometry& g, const ConvArgs& a);
void run_bwd_data_winograd(const Conv2dGeometry& g, const ConvArgs& a);
// 64-channel panels where K allows (one load per 6 FMAs), else 32.
void run_bwd_weight_clanes(const Conv2dGeometry& g, const ConvArgs& a) {
  const ClanesOuterKernel uk =
      g.Kg() % 64 == 0 ? ClanesOuterKernel{conv2d_bwd_weight_f32_clanes_6x64__avx512, 6, 64,
                                           conv2d_bwd_weight_f32_pack_dy_clanes__avx512,
                                           conv2d_pad_planes_f32_s1__avx512}
                       : ClanesOuterKernel{conv2d_bwd_weight_f32_clanes_12x32__avx512, 12, 32,
                                           conv2d_bwd_weight_f32_pack_dy_clanes__avx512,
                                           conv2d_pad_planes_f32_s1__avx512};
  backward_weight_clanes(uk, g, a.dy, a.x, a.dw, a.db);
  if (a.db) note_kernel_for("conv2d_bwd_bias", kBiasInClanesWeight, g);
}
#endif

const ConvImpl kFwdImpls[] = {
#if defined(CONVCORE_HAVE_AVX512_KERNELS)
    {"conv2d_fwd_f32_rows_8w__avx512", Isa::Avx512, rows_applicable, run_fwd_rows_avx512},
    {"conv2d_fwd_f32_winograd_f2x3_8x32__avx512", Isa::Avx512, winograd_fits, run_fwd_winograd},
    {"conv2d_fwd_f32_clanes_14x32__avx512", Isa::Avx512, clanes_fwd_fits, run_fwd_clanes},
#endif
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
    {"conv2d_fwd_f32_direct_6x16_4x24__avx2", Isa::Avx2, compact_phases,
     run_fwd_direct<conv2d_direct_ukernel_f32_6x16__avx2, conv2d_direct_ukernel_f32_4x24__avx2>},
#endif
    {"conv2d_fwd_f32_direct_6x16_4x24__portable", Isa::Portable, compact_phases,
     run_fwd_direct<conv2d_direct_ukernel_f32_6x16__portable,
                    conv2d_direct_ukernel_f32_4x24__portable>},
    {"conv2d_fwd_f32_direct__ref", Isa::Scalar, always, run_fwd_ref},
};

const ConvImpl kBwdDataImpls[] = {
#if defined(CONVCORE_HAVE_AVX512_KERNELS)
    {"conv2d_bwd_data_f32_tapcols_8w__avx512", Isa::Avx512, tapcols_data_applicable,
     run_bwd_data_tapcols_avx512},
    {"conv2d_bwd_data_f32_rows_flat_8w__avx512", Isa::Avx512, rows_flat_data_applicable,
     run_bwd_data_rows_flat_avx512},
    {"conv2d_bwd_data_f32_rows_8w__avx512", Isa::Avx512, rows_applicable, run_bwd_data_rows_avx512},
    {"conv2d_bwd_data_f32_winograd_f2x3_8x32__avx512", Isa::Avx512, winograd_fits,
     run_bwd_data_winograd},
    {"conv2d_bwd_data_f32_clanes_14x32__avx512", Isa::Avx512, clanes_bwd_data_fits,
     run_bwd_data_clanes},
#endif
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
    {"conv2d_bwd_data_f32_direct_6x16_4x24__avx2", Isa::Avx2, unit_stride,
     run_bwd_data_direct<conv2d_direct_ukernel_f32_6x16__avx2,
                         conv2d_direct_ukernel_f32_4x24__avx2>},
    {"conv2d_bwd_data_f32_gemm_col2im_6x16__avx2", Isa::Avx2, always,
     run_bwd_data_gemm<gemm_ukernel_f32_6x16__avx2>},
#endif
    {"conv2d_bwd_data_f32_direct_6x16_4x24__portable", Isa::Portable, unit_stride,
     run_bwd_data_direct<conv2d_direct_ukernel_f32_6x16__portable,
                         conv2d_direct_ukernel_f32_4x24__portable>},
    {"conv2d_bwd_data_f32_gemm_col2im_6x16__portable", Isa::Portable, always,
     run_bwd_data_gemm<gemm_ukernel_f32_6x16__portable>},
    {"conv2d_bwd_data_f32_direct__ref", Isa::Scalar, always, run_bwd_data_ref},
};

const ConvImpl kBwdWeightImpls[] = {
#if defined(CONVCORE_HAVE_AVX512_KERNELS)
    {"conv2d_bwd_weight_f32_clanes_6x64_12x32__avx512", Isa::Avx512, clanes_bwd_weight_fits,
     run_bwd_weight_clanes},
    {"conv2d_bwd_weight_f32_rows_8w__avx512", Isa::Avx512, rows_weight_applicable,
     run_bwd_weight_rows_avx512},
#endif
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
    {"conv2d_bwd_weight_f32_direct_outer_6x16__avx2", Isa::Avx2, many_taps_and_channels,
     run_bwd_weight_outer<conv2d_outer_ukernel_f32_6x16__avx2>},
    {"conv2d_bwd_weight_f32_direct_dot_4x3__avx2", Isa::Avx2, compact_phases,
     run_bwd_weight_direct<conv2d_dot_ukernel_f32_4x3__avx2>},
#endif
    {"conv2d_bwd_weight_f32_direct_outer_6x16__portable", Isa::Portable, many_taps_and_channels,
     run_bwd_weight_outer<conv2d_outer_ukernel_f32_6x16__portable>},
    {"conv2d_bwd_weight_f32_direct_dot_4x3__portable", Isa::Portable, compact_phases,
     run_bwd_weight_direct<conv2d_dot_ukernel_f32_4x3__portable>},
    {"conv2d_bwd_weight_f32_direct__ref", Isa::Scalar, always, run_bwd_weight_ref},
};

const ConvImpl kBwdBiasImpls[] = {
#if defined(CONVCORE_HAVE_AVX512_KERNELS)
    // These two run only inside the weight gradients that sum the bias
    // (kBiasInClanesWeight, kBiasInRowsWeight); were one ever selected
    // alone, the portable kernel would serve.
    {kBiasInClanesWeight, Isa::Avx512, inside_weight_gradient,
     run_bwd_bias<conv2d_bwd_bias_f32__portable>},
    {kBiasInRowsWeight, Isa::Avx512, inside_weight_gradient,
     run_bwd_bias<conv2d_bwd_bias_f32__portable>},
#endif
    {"conv2d_bwd_bias_f32_lanes16__portable", Isa::Portable, always,
     run_bwd_bias<conv2d_bwd_bias_f32__portable>},
    {"conv2d_bwd_bias_f32__ref", Isa::Scalar, always, run_bwd_bias<conv2d_bwd_bias_f32__ref>},
};

#if defined(CONVCORE_HAVE_AVX512_KERNELS)
void run_fwd_winograd(const Conv2dGeometry& g, const ConvArgs& a) {
  if (!forward_winograd(kWinogradAvx512, g, a.x, a.w, a.b, a.y, a.relu))
    run_next_applicable("conv2d_fwd", kFwdImpls, "conv2d_fwd_f32_winograd_f2x3_8x32__avx512", g, a);
}
void run_bwd_data_winograd(const Conv2dGeometry& g, const ConvArgs& a) {
  if (!backward_data_winograd(kWinogradAvx512, g, a.dy, a.w, a.dx))
    run_next_applicable("conv2d_bwd_data", kBwdDataImpls,
                        "conv2d_bwd_data_f32_winograd_f2x3_8x32__avx512", g, a);
}
#endif

// ---------------------------------------------------------------------------
// Conv2d + ReLU + MaxPool2d forward (the training path's fused triple): the
// pool keeps its maxima as window offsets (ops.h).  Where the forward list
// selects the row-segment kernel, each image is pooled from a per-thread
// buffer right after it is computed and the full-size activation is never
// written; else the selected convolution writes it and the pool reads it.
// Either way bitwise the three ops.
// ---------------------------------------------------------------------------

struct ConvPoolProblem {
  Conv2dGeometry conv;
  Pool2dGeometry pool;
  std::string name() const { return conv.name() + " then " + pool.name(); }
};
struct ConvPoolArgs {
  const float* x;
  const float* w;
  const float* b;
  float* y;
  uint8_t* off;
};
using ConvPoolImpl = Impl<ConvPoolProblem, ConvPoolArgs>;

#if defined(CONVCORE_HAVE_AVX512_KERNELS)
bool rows_selected(const ConvPoolProblem& p) {
  return select_impl(kFwdImpls, p.conv).run == run_fwd_rows_avx512;
}
void run_fwd_rows_pool_avx512(const ConvPoolProblem& p, const ConvPoolArgs& a) {
  note_kernel_for("conv2d_fwd", select_impl(kFwdImpls, p.conv).name, p.conv);
  const PoolPlanesFn pool = maxpool2d_forward_offsets_planes(p.pool);
  const int64_t K = p.conv.K, img = K * p.pool.P * p.pool.Q;
  forward_rows_per_image(
      kRowsAvx512, p.conv, a.x, a.w, a.b, true,
      [&](int64_t n, const float* out) { pool(K, out, a.y + n * img, a.off + n * img); });
}
#endif

void run_fwd_pool_unfused(const ConvPoolProblem& p, const ConvPoolArgs& a) {
  const Conv2dGeometry& g = p.conv;
  // Kept for the next call (ops/workspace.h): a fresh allocation each step
  // page-faulted its megabytes in again (0.45 ms a tutorial step under
  // CONVCORE_MAX_ISA=avx2).
  float* out = thread_scratch(4).floats(g.N * g.K * g.P * g.Q);
  conv2d_forward(g, a.x, a.w, a.b, out, true);
  maxpool2d_forward_offsets(p.pool, out, a.y, a.off);
}

const ConvPoolImpl kFwdPoolImpls[] = {
#if defined(CONVCORE_HAVE_AVX512_KERNELS)
    {"conv2d_relu_maxpool2d_fwd_f32_rows_8w__avx512", Isa::Avx512, rows_selected,
     run_fwd_rows_pool_avx512},
#endif
    // The two ops in turn: what every other convolution runs (and the
    // reference that ends the list).
    {"conv2d_relu_maxpool2d_fwd_f32_unfused", Isa::Scalar, always, run_fwd_pool_unfused},
};

// The weight gradient of the fused triple's convolution from the pool's
// gradient (conv2d_backward_weight_through_maxpool2d, ops.h).
struct ConvPoolGradProblem {
  Conv2dGeometry conv;
  Pool2dGeometry pool;
  bool weight, bias;
  std::string name() const { return conv.name() + " through " + pool.name(); }
};
struct ConvPoolGradArgs {
  const float* dy_pool;
  const uint8_t* off;
  const float* y;
  const float* x;
  float* dw;
  float* db;
};
using ConvPoolGradImpl = Impl<ConvPoolGradProblem, ConvPoolGradArgs>;

#if defined(CONVCORE_HAVE_AVX512_KERNELS)
// The row-segment weight gradient would run, summing the bias itself.
bool rows_weight_through_pool(const ConvPoolGradProblem& p) {
  return p.weight && p.conv.N > 0 &&
         select_impl(kBwdWeightImpls, p.conv).run == run_bwd_weight_rows_avx512 &&
         (!p.bias || conv2d_weight_gradient_sums_bias(p.conv));
}
void run_bwd_weight_rows_pool_avx512(const ConvPoolGradProblem& p, const ConvPoolGradArgs& a) {
  note_kernel_for("conv2d_bwd_weight", select_impl(kBwdWeightImpls, p.conv).name, p.conv);
  if (a.db) note_kernel_for("conv2d_bwd_bias", kBiasInRowsWeight, p.conv);
  const PoolBackwardPlanesFn pool = maxpool2d_backward_offsets_planes(p.pool);
  const int64_t K = p.conv.K, pooled = K * p.pool.P * p.pool.Q;
  const ConvDyFn make_dy = [&](int64_t n0, int64_t images, float* dy) {
    pool(n0 * K, images * K, a.dy_pool + n0 * pooled, a.off + n0 * pooled,
         a.y ? a.y + n0 * pooled : nullptr, dy);
  };
  backward_weight_rows(kRowsWeightAvx512, p.conv, nullptr, a.x, a.dw, a.db, &make_dy);
}
#endif

void run_bwd_weight_pool_unfused(const ConvPoolGradProblem& p, const ConvPoolGradArgs& a) {
  const Conv2dGeometry& g = p.conv;
  float* dy = thread_scratch(5).floats(g.N * g.K * g.P * g.Q);  // as above
  maxpool2d_backward_offsets(p.pool, a.dy_pool, a.off, dy, a.y);
  if (a.dw)
    conv2d_backward_weight(g, dy, a.x, a.dw, a.db);
  else if (a.db)
    conv2d_backward_bias(g, dy, a.db);
}

const ConvPoolGradImpl kBwdWeightPoolImpls[] = {
#if defined(CONVCORE_HAVE_AVX512_KERNELS)
    {"conv2d_bwd_weight_maxpool2d_f32_rows_8w__avx512", Isa::Avx512, rows_weight_through_pool,
     run_bwd_weight_rows_pool_avx512},
#endif
    // The pool's backward into a full-size gradient, then the weight
    // gradient the list picks (and the reference that ends the list).
    {"conv2d_bwd_weight_maxpool2d_f32_unfused", Isa::Scalar, always, run_bwd_weight_pool_unfused},
};

}  // namespace

void conv2d_forward(const Conv2dGeometry& g, const float* x, const float* w, const float* b,
                    float* y, bool relu) {
  if (g.N == 0) return;
  ConvArgs a{};
  a.x = x;
  a.w = w;
  a.b = b;
  a.y = y;
  a.relu = relu;
  run_first_applicable("conv2d_fwd", kFwdImpls, g, a);
}

void conv2d_relu_maxpool2d_forward(const Conv2dGeometry& g, const Pool2dGeometry& pool,
                                   const float* x, const float* w, const float* b, float* y,
                                   uint8_t* off) {
  if (g.N == 0) return;
  run_first_applicable("conv2d_relu_maxpool2d_fwd", kFwdPoolImpls, ConvPoolProblem{g, pool},
                       ConvPoolArgs{x, w, b, y, off});
}

void conv2d_backward_weight_through_maxpool2d(const Conv2dGeometry& g, const Pool2dGeometry& pool,
                                              const float* dy_pool, const uint8_t* off,
                                              const float* y, const float* x, float* dw,
                                              float* db) {
  if (!dw && !db) return;
  run_first_applicable("conv2d_bwd_weight_maxpool2d", kBwdWeightPoolImpls,
                       ConvPoolGradProblem{g, pool, dw != nullptr, db != nullptr},
                       ConvPoolGradArgs{dy_pool, off, y, x, dw, db});
}

void conv2d_backward_data(const Conv2dGeometry& g, const float* dy, const float* w, float* dx) {
  if (g.N == 0) return;
  run_first_applicable(
      "conv2d_bwd_data", kBwdDataImpls, g,
      ConvArgs{nullptr, w, nullptr, dy, nullptr, dx, nullptr, nullptr, false, nullptr, nullptr});
}

void conv2d_backward_weight(const Conv2dGeometry& g, const float* dy, const float* x, float* dw,
                            float* db) {
  if (g.N == 0) {
    std::fill(dw, dw + g.weight_numel(), 0.0f);
    if (db) conv2d_backward_bias(g, dy, db);
    return;
  }
  // One decision for both: whether the selected kernel sums the bias.
  const bool in_kernel = db && conv2d_weight_gradient_sums_bias(g);
  run_first_applicable("conv2d_bwd_weight", kBwdWeightImpls, g,
                       ConvArgs{x, nullptr, nullptr, dy, nullptr, nullptr, dw,
                                in_kernel ? db : nullptr, false, nullptr, nullptr});
  if (db && !in_kernel) conv2d_backward_bias(g, dy, db);
}

bool conv2d_weight_gradient_sums_bias(const Conv2dGeometry& g) {
#if defined(CONVCORE_HAVE_AVX512_KERNELS)
  if (g.N == 0) return false;
  const auto run = select_impl(kBwdWeightImpls, g).run;
  return (run == run_bwd_weight_clanes && !kernel_disabled(kBiasInClanesWeight)) ||
         (run == run_bwd_weight_rows_avx512 && !kernel_disabled(kBiasInRowsWeight));
#else
  (void)g;
  return false;
#endif
}

void conv2d_backward_bias(const Conv2dGeometry& g, const float* dy, float* db) {
  run_first_applicable("conv2d_bwd_bias", kBwdBiasImpls, g,
                       ConvArgs{nullptr, nullptr, nullptr, dy, nullptr, nullptr, nullptr, db, false,
                                nullptr, nullptr});
}

void conv2d_relu_backward_bias(const Conv2dGeometry& g, float* dy, const float* y, float* db) {
  run_first_applicable(
      "conv2d_bwd_bias", kBwdBiasImpls, g,
      ConvArgs{nullptr, nullptr, nullptr, dy, nullptr, nullptr, nullptr, db, false, y, dy});
}

std::vector<std::string> conv2d_fwd_impl_names() { return impl_names(kFwdImpls); }
std::vector<std::string> conv2d_bwd_data_impl_names() { return impl_names(kBwdDataImpls); }
std::vector<std::string> conv2d_bwd_weight_impl_names() { return impl_names(kBwdWeightImpls); }
std::vector<std::string> conv2d_bwd_bias_impl_names() { return impl_names(kBwdBiasImpls); }
std::vector<std::string> conv2d_relu_maxpool2d_fwd_impl_names() {
  return impl_names(kFwdPoolImpls);
}
std::vector<std::string> conv2d_bwd_weight_maxpool2d_impl_names() {
  return impl_names(kBwdWeightPoolImpls);
}

}  // namespace convcore
