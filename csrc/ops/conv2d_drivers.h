// Internal to the conv2d drivers (ops/conv2d*.cpp): the padded phase-plane
// layout the direct kernels read, the fixed batch split of the weight
// gradient, and the drivers each implementation list entry runs.  Nothing
// here is API; ops/ops.h is.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "common/geometry.h"
#include "common/runtime.h"
#include "kernels/clanes_ukernels.h"
#include "kernels/direct_ukernels.h"
#include "kernels/gemm_ukernels.h"
#include "kernels/rows_ukernels.h"
#include "kernels/winograd_ukernels.h"
#include "ops/parallel.h"
#include "ops/relu.h"

namespace convcore {

// Images whose weight-gradient contributions are summed into one partial
// result.  Fixed (never derived from the thread count) so the reduction
// order, and so the result, is the same for any number of threads.
constexpr int64_t kMaxWeightChunks = 16;
// Multiply-adds below which a parallel region costs more than it saves.
constexpr double kMinMacsPerThread = 2e5;
// Bytes of padded input and re-laid dy the weight-gradient kernel streams
// per call: about half of a 1 MiB L2, so both stay resident.
constexpr int64_t kDotWorkingSetBytes = 512 * 1024;
// Input floats per channel-phase the direct kernels sweep before moving to
// the next weight panel (about 256 KiB of input rows in L2).
constexpr int64_t kDirectInputBlockFloats = 64 * 1024;

inline int conv_threads(const Conv2dGeometry& g) {
  return threads_for(g.macs(), kMinMacsPerThread);
}

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// ---------------------------------------------------------------------------
// Direct path: the input is copied once into padded planes (negative padding
// crops), split into stride_h x stride_w phase planes of Hh x Wh (phase
// (a, b) holds padded rows a, a + stride_h, ... and columns b, b + stride_w,
// ...).  Every kernel tap (r, s) then reads, for the outputs of one row, a
// run of consecutive elements of one phase plane, so the micro-kernels read
// runs of positions t = p * Wh + q straight from the planes for any stride.
// With stride 1 there is one phase and the planes are the padded input.
// ---------------------------------------------------------------------------

inline int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

struct PaddedPlanes {
  int64_t H, W;               // source plane
  int64_t pad_top, pad_left;  // may be negative (crop)
  int64_t Hp, Wp;             // padded plane
  int64_t sh = 1, sw = 1;     // stride: number of phases per dimension
  int64_t Hh() const { return ceil_div(Hp, sh); }
  int64_t Wh() const { return ceil_div(Wp, sw); }          // row pitch of a phase plane, and of t
  int64_t plane() const { return sh * sw * Hh() * Wh(); }  // floats per channel
  // Distance from a channel's first element to tap (row r_off, column s_off)
  // of output position t = 0.
  int64_t tap(int64_t r_off, int64_t s_off) const {
    return ((r_off % sh) * sw + s_off % sw) * Hh() * Wh() + (r_off / sh) * Wh() + s_off / sw;
  }
  // No padding, crop or stride: the padded planes are the source's, which
  // a driver may then read in place instead of copying.
  bool identity() const {
    return pad_top == 0 && pad_left == 0 && Hp == H && Wp == W && sh == 1 && sw == 1;
  }
};

// dst[c][a][b][i][j] = src[c][i*sh + a - pad_top][j*sw + b - pad_left], zero
// outside the source or past the padded size.
void pad_planes(const PaddedPlanes& pp, int64_t channels, const float* src, float* dst);

// offsets[(c*R + r)*S + s] = distance from a group's first channel to tap
// (c, r, s) of output position t = 0, in padded phase planes.
std::vector<int64_t> tap_offsets(const PaddedPlanes& pp, int64_t channels, int64_t R, int64_t S,
                                 int64_t dil_h, int64_t dil_w);

// The batch split of the weight gradient: at most kMaxWeightChunks chunks
// whose bounds depend on N alone (never on the thread count), each summed
// into its own partial, the partials then added in chunk order -- what makes
// the result bitwise the same for any number of threads.  Within a chunk,
// images are fed to the kernel in groups whose input and dy fit the L2
// budget (again a function of the shape only).  A driver may ask for fewer
// chunks (a constant of its own, never the thread count).
struct BatchChunks {
  int64_t count, per_chunk, N;
  explicit BatchChunks(int64_t n, int64_t max_chunks = kMaxWeightChunks)
      : count(std::min<int64_t>(n, max_chunks)),
        per_chunk(count > 0 ? (n + count - 1) / count : 0),
        N(n) {}
  int64_t begin(int64_t chunk) const { return chunk * per_chunk; }
  int64_t end(int64_t chunk) const { return std::min(N, begin(chunk) + per_chunk); }
  int64_t images_per_call(int64_t chunk, int64_t floats_per_image) const {
    const int64_t bytes = floats_per_image * int64_t(sizeof(float));
    return std::clamp<int64_t>(kDotWorkingSetBytes / bytes, 1, end(chunk) - begin(chunk));
  }
};

// A convolution as the direct kernels see it.  The forward pass is one; the
// data gradient of a stride-1 convolution is another (a full convolution of
// dy with the flipped, transposed weights).
struct DirectConv {
  int64_t N, G;
  int64_t Cin, Kout;           // per group
  int64_t R, S, dil_h, dil_w;  // kernel size and dilation
  PaddedPlanes pp;
  int64_t P, Q;       // output size
  const float* in;    // N x (G*Cin) x H x W
  float* out;         // N x (G*Kout) x P x Q
  const float* bias;  // G*Kout or null
  bool relu = false;  // max(., 0) on the stored outputs (forward only)
};

// Runs body(chunk, part) for every chunk of `split` on nt threads, each into
// its own zeroed partial (part = partials + chunk * part_size), then rethrows
// the first error.  What a chunk sums depends on the chunking alone, never
// on which thread runs it.
template <class Body>
void for_each_chunk_partial(const BatchChunks& split, float* partials, int64_t part_size, int nt,
                            Body body) {
  TaskErrors errors;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t chunk = 0; chunk < split.count; ++chunk)
    errors.run([&] {
      float* part = partials + chunk * part_size;
      std::fill(part, part + part_size, 0.0f);
      body(chunk, part);
    });
  errors.rethrow();
}

// Element `at` of the weight gradient: the chunks' partial sums (chunk c at
// partials + c * part_size) added in chunk order, the fixed order that keeps
// the result bitwise the same for any thread count.
inline float sum_chunk_partials(const float* partials, int64_t chunks, int64_t part_size,
                                int64_t at) {
  float acc = partials[at];
  for (int64_t c = 1; c < chunks; ++c) acc += partials[c * part_size + at];
  return acc;
}

// Each image's G * panels weight panels, split into blocks when the batch
// alone cannot keep every thread busy (tasks = N * count).  Blocking changes
// no result: every output element is still computed by one task, in one order.
struct PanelBlocks {
  int64_t total, count, per_block;
  PanelBlocks(int64_t images, int64_t panels, int threads) : total(panels) {
    int64_t b = 1;
    while (images * b < threads && b < panels) ++b;
    per_block = (panels + b - 1) / b;
    count = (panels + per_block - 1) / per_block;
  }
  int64_t begin(int64_t block) const { return block * per_block; }
  int64_t end(int64_t block) const { return std::min(total, (block + 1) * per_block); }
};

struct DirectKernel {
  conv_direct_ukernel_fn fn;
  int64_t mr, nr;
};

DirectConv direct_forward_problem(const Conv2dGeometry& g, const float* x, const float* b, float* y,
                                  bool relu = false);
// The stride-1 data gradient as a direct convolution: dy (padded by
// dil*(R-1) - pad, negative = crop) convolved with the flipped, transposed weights.
DirectConv direct_backward_data_problem(const Conv2dGeometry& g, const float* dy, float* dx);

// Forward pass and stride-1 data gradient on direct tiles (ops/conv2d_direct.cpp).
// relu: the fused epilogue (relu_f32) on each stored output.
void forward_direct(const DirectKernel& k6x16, const DirectKernel& k4x24, const Conv2dGeometry& g,
                    const float* x, const float* w, const float* b, float* y, bool relu);
// dx = full convolution of dy (padded by dil*(R-1) - pad, negative = crop)
// with the flipped, transposed weights.
void backward_data_direct(const DirectKernel& k6x16, const DirectKernel& k4x24,
                          const Conv2dGeometry& g, const float* dy, const float* w, float* dx);

// Weight gradient, dot tiles and outer-product tiles (ops/conv2d_weight.cpp).
// dW[k][c,r,s] = sum_n sum_t dyp[n][k][t] * xpad[n][c][tap(r, s) + t], with
// dy re-laid at row stride Wh (zeros at q >= Q).  Chunks of images as
// (at most kMaxWeightChunks, bounds set by N alone) keep the result
// independent of the thread count.
void backward_weight_direct(conv_dot_ukernel_fn ukernel, const Conv2dGeometry& g, const float* dy,
                            const float* x, float* dw);
// Weight gradient as outer products (for 16 or more output channels per
// group): dW^T[crs][k] = sum_t xpad[tap crs][t] * dyT[t][k].  Six input taps
// are read in place as broadcast streams; dy is packed once per image into
// 16-channel panels (t x 16, zeros at q >= Q), so the kernel has the FMA
// density of a 6x16 GEMM tile and no horizontal sums.
void backward_weight_outer(conv_outer_ukernel_fn ukernel, const Conv2dGeometry& g, const float* dy,
                           const float* x, float* dw);

// Channels-in-lanes family (ops/conv2d_clanes.cpp, kernels/clanes_ukernels.h):
// 32 output channels in two vector registers, up to 14 positions of one
// output row broadcast from the padded planes; forward and stride-1 data
// gradient.  The weight gradient packs dy into position-major panels of kp
// channels and sweeps mt-tap outer-product tiles, with the BatchChunks split.
// pad: copies stride-1 padded planes (pad_planes handles stride > 1).
void forward_clanes(conv_clanes_fwd_ukernel_fn ukernel, conv_clanes_pad_fn pad,
                    const Conv2dGeometry& g, const float* x, const float* w, const float* b,
                    float* y, bool relu);
void backward_data_clanes(conv_clanes_fwd_ukernel_fn ukernel, conv_clanes_pad_fn pad,
                          const Conv2dGeometry& g, const float* dy, const float* w, float* dx);
struct ClanesOuterKernel {
  conv_clanes_outer_ukernel_fn fn;
  int64_t mt, kp;
  conv_clanes_pack_fn pack;
  conv_clanes_pad_fn pad;
};
// db (may be null): the bias gradient too, summed as dy is packed.
void backward_weight_clanes(const ClanesOuterKernel& uk, const Conv2dGeometry& g, const float* dy,
                            const float* x, float* dw, float* db);

// Data gradient as a packed GEMM and col2im, any stride (ops/conv2d_gemm.cpp).
void backward_data_gemm(gemm_ukernel_fn ukernel, const Conv2dGeometry& g, const float* dy,
                        const float* w, float* dx);

// Row-segment tiles for layers with few channels (ops/conv2d_rows.cpp):
// output rows cut into segments of 8 columns, NS segments x KB channels per
// tile (the driver picks KB from the channel count).  Stride 1, one group.
struct RowsKernel {
  conv_rows_ukernel_fn fn;
  int64_t ns, kb;
};
struct RowsKernels {
  RowsKernel tiles[7];
};
struct RowsWeightKernel {
  conv_rows_wgrad_ukernel_fn fn;
  int64_t kb, tb;
};
struct RowsWeightKernels {
  RowsWeightKernel tiles[5];
  conv_bias_planes_fn bias_planes;  // the bias gradient's per-plane sums
};
// Forward and data gradient: one group, stride 1, at most 8 channels on one
// side and 64 on the other.
bool rows_applicable(const Conv2dGeometry& g);
// Weight gradient: one group, stride 1, few channels (as rows_applicable).
bool rows_weight_applicable(const Conv2dGeometry& g);
void forward_rows(const RowsKernels& ks, const Conv2dGeometry& g, const float* x, const float* w,
                  const float* b, float* y, bool relu);
// The forward with each image's output (K x P x Q, bias and ReLU applied)
// in a per-thread buffer instead of y: image(n, buffer) runs on it while it
// is in L1/L2 (the fused Conv2d + ReLU + MaxPool2d).  Bitwise forward_rows.
using ConvImageFn = std::function<void(int64_t n, const float* out)>;
void forward_rows_per_image(const RowsKernels& ks, const Conv2dGeometry& g, const float* x,
                            const float* w, const float* b, bool relu, const ConvImageFn& image);
void backward_data_rows(const RowsKernels& ks, const Conv2dGeometry& g, const float* dy,
                        const float* w, float* dx);
// The data gradient on flat rows (ops/conv2d_rows.cpp): rows_applicable, no
// horizontal padding (so the full convolution's paddings both reach the
// kernel's width) and outputs rows that are not whole segments.
bool rows_flat_data_applicable(const Conv2dGeometry& g);
void backward_data_rows_flat(const RowsKernels& ks, const Conv2dGeometry& g, const float* dy,
                             const float* w, float* dx);
// The data gradient on tap columns (ops/conv2d_rows.cpp): rows_applicable,
// S <= 30, a per-thread buffer of partial rows of at most 256 KiB, and a
// share of useful FMAs at least 0.9 of the row kernels' (which also spend
// FMAs on the full convolution's padding).  tiles: the 30x1, 15x2 and 10x3
// kernels.
struct TapcolsKernels {
  conv_tapcols_ukernel_fn tiles[3];
  conv_tapcols_combine_fn combine;
};
bool tapcols_data_applicable(const Conv2dGeometry& g);
void backward_data_tapcols(const TapcolsKernels& ks, const Conv2dGeometry& g, const float* dy,
                           const float* w, float* dx);
// db (may be null): the bias gradient too, summed per chunk from the same dy.
// make_dy (may be null; dy is then unused): writes the dy of `images` images
// from image n0 (images x K x P x Q) where the kernels read it, in a
// per-thread buffer, so a full-size dy never exists (the fused backward of a
// first Conv2d + ReLU + MaxPool2d).  Bitwise the same as reading dy.
using ConvDyFn = std::function<void(int64_t n0, int64_t images, float* dy)>;
void backward_weight_rows(const RowsWeightKernels& ks, const Conv2dGeometry& g, const float* dy,
                          const float* x, float* dw, float* db, const ConvDyFn* make_dy = nullptr);

// Winograd F(2x2, 3x3) family (ops/conv2d_winograd.cpp,
// kernels/winograd_ukernels.h): forward and data gradient of 3x3, stride-1,
// undilated, one-group convolutions; tiles in the lanes, NCHW in and out.
struct WinogradKernels {
  conv_wino_input_fn input;
  conv_wino_gemm_fn gemm;
  conv_wino_output_fn output;
};
bool winograd_applicable(const Conv2dGeometry& g);
// Both return false, having written an unspecified output, when the input,
// the weights or the bias hold NaN or +-inf: the caller then runs the direct
// path (kernels/winograd_ukernels.h says why).
bool forward_winograd(const WinogradKernels& ks, const Conv2dGeometry& g, const float* x,
                      const float* w, const float* b, float* y, bool relu);
bool backward_data_winograd(const WinogradKernels& ks, const Conv2dGeometry& g, const float* dy,
                            const float* w, float* dx);

}  // namespace convcore
