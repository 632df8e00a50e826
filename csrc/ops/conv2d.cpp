// conv2d drivers: im2col + packed GEMM, tiled and threaded here; the
// arithmetic is in the GEMM micro-kernels (kernels/) and the reference
// direct loops (kernels/ref/).
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/cpu.h"
#include "common/runtime.h"
#include "kernels/gemm_ukernels.h"
#include "kernels/ref/ref_kernels.h"
#include "ops/gemm.h"
#include "ops/ops.h"
#include "ops/parallel.h"
#include "ops/workspace.h"

namespace convcore {
namespace {

// Columns of the im2col matrix built at a time: bounds the work buffer and
// keeps it in L2/L3 while the GEMM consumes it.
constexpr int64_t kColumnTile = 1024;
// Images whose weight-gradient contributions are summed into one partial
// result.  Fixed (never derived from the thread count) so the reduction
// order, and so the result, is the same for any number of threads.
constexpr int64_t kMaxWeightChunks = 16;
// Multiply-adds below which a parallel region costs more than it saves.
constexpr double kMinMacsPerThread = 2e5;

bool is_pointwise(const Conv2dGeometry& g) {
  return g.R == 1 && g.S == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_top == 0 &&
         g.pad_bottom == 0 && g.pad_left == 0 && g.pad_right == 0;
}

// cols[(c*R + r)*S + s][j - j0] = x_g[c][h][w] for output columns j0..j1-1
// (flattened p*Q + q), zero where the window reads padding.
void im2col_range(const Conv2dGeometry& g, const float* x_g, int64_t j0, int64_t j1, float* cols) {
  const int64_t nj = j1 - j0;
  for (int64_t c = 0; c < g.Cg(); ++c) {
    const float* xc = x_g + c * g.H * g.W;
    for (int64_t r = 0; r < g.R; ++r) {
      for (int64_t s = 0; s < g.S; ++s) {
        float* row = cols + ((c * g.R + r) * g.S + s) * nj;
        const int64_t w_off = s * g.dil_w - g.pad_left;
        for (int64_t j = j0; j < j1;) {
          const int64_t p = j / g.Q, q0 = j % g.Q;
          const int64_t q1 = std::min(g.Q, q0 + (j1 - j));
          float* dst = row + (j - j0) - q0;  // dst[q] for q in [q0, q1)
          const int64_t h = p * g.stride_h - g.pad_top + r * g.dil_h;
          if (h < 0 || h >= g.H) {
            std::fill(dst + q0, dst + q1, 0.0f);
          } else {
            const float* src = xc + h * g.W;
            if (g.stride_w == 1) {
              // Valid q: 0 <= q + w_off < W.
              const int64_t qa = std::clamp<int64_t>(-w_off, q0, q1);
              const int64_t qb = std::clamp<int64_t>(g.W - w_off, qa, q1);
              std::fill(dst + q0, dst + qa, 0.0f);
              std::memcpy(dst + qa, src + qa + w_off, size_t(qb - qa) * sizeof(float));
              std::fill(dst + qb, dst + q1, 0.0f);
            } else {
              for (int64_t q = q0; q < q1; ++q) {
                const int64_t w = q * g.stride_w + w_off;
                dst[q] = (w >= 0 && w < g.W) ? src[w] : 0.0f;
              }
            }
          }
          j += q1 - q0;
        }
      }
    }
  }
}

// dx_g[c][h][w] += dcols[((c - c0)*R + r)*S + s][p*Q + q] for channels c0..c1-1.
void col2im_channels(const Conv2dGeometry& g, const float* dcols, int64_t c0, int64_t c1,
                     float* dx_g) {
  const int64_t PQ = g.P * g.Q;
  for (int64_t c = c0; c < c1; ++c) {
    float* xc = dx_g + c * g.H * g.W;
    for (int64_t r = 0; r < g.R; ++r) {
      for (int64_t s = 0; s < g.S; ++s) {
        const float* row = dcols + (((c - c0) * g.R + r) * g.S + s) * PQ;
        const int64_t w_off = s * g.dil_w - g.pad_left;
        const int64_t qa = std::clamp<int64_t>((-w_off + g.stride_w - 1) / g.stride_w, 0, g.Q);
        const int64_t qb = std::clamp<int64_t>((g.W - w_off + g.stride_w - 1) / g.stride_w, qa, g.Q);
        for (int64_t p = 0; p < g.P; ++p) {
          const int64_t h = p * g.stride_h - g.pad_top + r * g.dil_h;
          if (h < 0 || h >= g.H) continue;
          float* dst = xc + h * g.W + w_off;
          const float* src = row + p * g.Q;
          if (g.stride_w == 1) {
            for (int64_t q = qa; q < qb; ++q) dst[q] += src[q];
          } else {
            for (int64_t q = qa; q < qb; ++q) dst[q * g.stride_w] += src[q];
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Implementation lists
// ---------------------------------------------------------------------------

struct GemmImpl {
  const char* fwd;
  const char* bwd_data;
  const char* bwd_weight;
  Isa isa;
  gemm_ukernel_fn ukernel;
};

const GemmImpl kGemmImpls[] = {
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
    {"conv2d_fwd_f32_im2col_gemm_6x16__avx2", "conv2d_bwd_data_f32_gemm_col2im_6x16__avx2",
     "conv2d_bwd_weight_f32_im2col_gemm_6x16__avx2", Isa::Avx2, gemm_ukernel_f32_6x16__avx2},
#endif
    {"conv2d_fwd_f32_im2col_gemm_6x16__portable", "conv2d_bwd_data_f32_gemm_col2im_6x16__portable",
     "conv2d_bwd_weight_f32_im2col_gemm_6x16__portable", Isa::Portable,
     gemm_ukernel_f32_6x16__portable},
};
constexpr const char* kRefFwd = "conv2d_fwd_f32_direct__ref";
constexpr const char* kRefBwdData = "conv2d_bwd_data_f32_direct__ref";
constexpr const char* kRefBwdWeight = "conv2d_bwd_weight_f32_direct__ref";

// First GEMM implementation allowed under the active ISA cap, or null for the reference.
const GemmImpl* select_gemm() {
  const Isa isa = active_isa();
  for (const GemmImpl& impl : kGemmImpls)
    if (int(impl.isa) <= int(isa)) return &impl;
  return nullptr;
}

int conv_threads(const Conv2dGeometry& g) { return threads_for(g.macs(), kMinMacsPerThread); }

// ---------------------------------------------------------------------------
// Forward: per (image, group, column tile) task, y = W_g * im2col(x) + b.
// ---------------------------------------------------------------------------
void forward_gemm(const GemmImpl& impl, const Conv2dGeometry& g, const float* x, const float* w,
                  const float* b, float* y) {
  const int64_t PQ = g.P * g.Q, CRS = g.Cg() * g.R * g.S, Kg = g.Kg();
  const bool pointwise = is_pointwise(g);
  const int64_t tile = pointwise ? PQ : std::min(PQ, kColumnTile);
  const int64_t tiles = (PQ + tile - 1) / tile;
  const int64_t tasks = g.N * g.G * tiles;
  const int nt = conv_threads(g);
  TaskErrors errors;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t t = 0; t < tasks; ++t) errors.run([&] {
    const int64_t n = t / (g.G * tiles), grp = (t / tiles) % g.G, j0 = (t % tiles) * tile;
    const int64_t nj = std::min(tile, PQ - j0);
    const float* x_g = x + (n * g.C + grp * g.Cg()) * g.H * g.W;
    float* y_g = y + (n * g.K + grp * Kg) * PQ + j0;
    const float* cols;
    int64_t ldb;
    if (pointwise) {
      cols = x_g + j0;
      ldb = PQ;
    } else {
      float* buf = thread_scratch(1).floats(CRS * nj);
      im2col_range(g, x_g, j0, j0 + nj, buf);
      cols = buf;
      ldb = nj;
    }
    if (b != nullptr)
      for (int64_t k = 0; k < Kg; ++k) std::fill(y_g + k * PQ, y_g + k * PQ + nj, b[grp * Kg + k]);
    float* work = thread_scratch(0).floats(gemm_workspace_floats(Kg, nj, CRS));
    gemm_f32(impl.ukernel, Kg, nj, CRS, w + grp * Kg * CRS, CRS, 1, cols, ldb, 1, y_g, PQ,
             b != nullptr, work);
  });
  errors.rethrow();
}

// ---------------------------------------------------------------------------
// Backward data: per (image, group, channel block), dcols = W_g^T * dy, then
// col2im into the block's channels (which no other task touches).
// ---------------------------------------------------------------------------
void backward_data_gemm(const GemmImpl& impl, const Conv2dGeometry& g, const float* dy,
                        const float* w, float* dx) {
  const int64_t PQ = g.P * g.Q, RS = g.R * g.S, CRS = g.Cg() * RS, Kg = g.Kg(), HW = g.H * g.W;
  const int nt = conv_threads(g);
  // Enough channel blocks to keep every thread busy when the batch is small.
  int64_t blocks = 1;
  while (g.N * g.G * blocks < nt && blocks < g.Cg()) ++blocks;
  const int64_t cb = (g.Cg() + blocks - 1) / blocks;
  blocks = (g.Cg() + cb - 1) / cb;
  const int64_t tasks = g.N * g.G * blocks;
  TaskErrors errors;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t t = 0; t < tasks; ++t) errors.run([&] {
    const int64_t n = t / (g.G * blocks), grp = (t / blocks) % g.G;
    const int64_t c0 = (t % blocks) * cb, c1 = std::min(g.Cg(), c0 + cb);
    float* dx_g = dx + (n * g.C + grp * g.Cg()) * HW;
    const float* dy_g = dy + (n * g.K + grp * Kg) * PQ;
    const float* w_g = w + grp * Kg * CRS;
    const int64_t rows = (c1 - c0) * RS;
    std::fill(dx_g + c0 * HW, dx_g + c1 * HW, 0.0f);
    float* work = thread_scratch(0).floats(gemm_workspace_floats(rows, PQ, Kg));
    if (is_pointwise(g)) {
      // dcols is dx itself: no col2im needed.
      gemm_f32(impl.ukernel, rows, PQ, Kg, w_g + c0, 1, CRS, dy_g, PQ, 1, dx_g + c0 * HW, HW,
               false, work);
      return;
    }
    float* dcols = thread_scratch(1).floats(rows * PQ);
    gemm_f32(impl.ukernel, rows, PQ, Kg, w_g + c0 * RS, 1, CRS, dy_g, PQ, 1, dcols, PQ, false,
             work);
    col2im_channels(g, dcols, c0, c1, dx_g);
  });
  errors.rethrow();
}

// ---------------------------------------------------------------------------
// Backward weight: the batch is cut into at most kMaxWeightChunks chunks
// whose bounds depend only on N; each (chunk, group) task sums its images'
// dy * im2col(x)^T into its own partial, and the partials are added in chunk
// order.  The result is bitwise the same for any thread count.
// ---------------------------------------------------------------------------
void backward_weight_gemm(const GemmImpl& impl, const Conv2dGeometry& g, const float* dy,
                          const float* x, float* dw) {
  const int64_t PQ = g.P * g.Q, CRS = g.Cg() * g.R * g.S, Kg = g.Kg();
  const int64_t wsize = g.weight_numel();
  const int64_t chunks = std::min<int64_t>(g.N, kMaxWeightChunks);
  const int64_t per_chunk = (g.N + chunks - 1) / chunks;
  const bool pointwise = is_pointwise(g);
  std::vector<float> partial_store(chunks > 1 ? size_t(chunks * wsize) : 0);
  float* partials = chunks > 1 ? partial_store.data() : dw;
  const int nt = conv_threads(g);
  TaskErrors errors;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t t = 0; t < chunks * g.G; ++t) errors.run([&] {
    const int64_t chunk = t / g.G, grp = t % g.G;
    const int64_t n0 = chunk * per_chunk, n1 = std::min(g.N, n0 + per_chunk);
    float* dw_g = partials + chunk * wsize + grp * Kg * CRS;
    bool first = true;
    for (int64_t n = n0; n < n1; ++n) {
      const float* x_g = x + (n * g.C + grp * g.Cg()) * g.H * g.W;
      const float* dy_g = dy + (n * g.K + grp * Kg) * PQ;
      for (int64_t j0 = 0; j0 < PQ; j0 += kColumnTile) {
        const int64_t nj = std::min(kColumnTile, PQ - j0);
        const float* cols;
        int64_t ldc_cols;
        if (pointwise) {
          cols = x_g + j0;
          ldc_cols = PQ;
        } else {
          float* buf = thread_scratch(1).floats(CRS * nj);
          im2col_range(g, x_g, j0, j0 + nj, buf);
          cols = buf;
          ldc_cols = nj;
        }
        float* work = thread_scratch(0).floats(gemm_workspace_floats(Kg, CRS, nj));
        // dW_g[Kg x CRS] += dy_g[:, j0:j0+nj] * cols^T
        gemm_f32(impl.ukernel, Kg, CRS, nj, dy_g + j0, PQ, 1, cols, 1, ldc_cols, dw_g, CRS,
                 !first, work);
        first = false;
      }
    }
    if (first)  // empty chunk (cannot happen for N >= 1, kept for safety)
      std::fill(dw_g, dw_g + Kg * CRS, 0.0f);
  });
  errors.rethrow();
  if (chunks > 1) {
    const int rt = threads_for(double(wsize) * chunks, 1e5);
#pragma omp parallel for num_threads(rt) schedule(static) if (rt > 1)
    for (int64_t i = 0; i < wsize; ++i) {
      float acc = partials[i];
      for (int64_t c = 1; c < chunks; ++c) acc += partials[c * wsize + i];
      dw[i] = acc;
    }
  }
}

}  // namespace

void conv2d_forward(const Conv2dGeometry& g, const float* x, const float* w, const float* b,
                    float* y) {
  if (g.N == 0) return;
  if (const GemmImpl* impl = select_gemm()) {
    note_kernel("conv2d_fwd", impl->fwd, g.name());
    forward_gemm(*impl, g, x, w, b, y);
    return;
  }
  note_kernel("conv2d_fwd", kRefFwd, g.name());
  const int nt = conv_threads(g);
  const int64_t img_in = g.C * g.H * g.W, img_out = g.K * g.P * g.Q;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t n = 0; n < g.N; ++n) conv2d_fwd_f32__ref(g, x + n * img_in, w, b, y + n * img_out);
}

void conv2d_backward_data(const Conv2dGeometry& g, const float* dy, const float* w, float* dx) {
  if (g.N == 0) return;
  if (const GemmImpl* impl = select_gemm()) {
    note_kernel("conv2d_bwd_data", impl->bwd_data, g.name());
    backward_data_gemm(*impl, g, dy, w, dx);
    return;
  }
  note_kernel("conv2d_bwd_data", kRefBwdData, g.name());
  const int nt = conv_threads(g);
  const int64_t img_in = g.C * g.H * g.W, img_out = g.K * g.P * g.Q;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t n = 0; n < g.N; ++n) conv2d_bwd_data_f32__ref(g, dy + n * img_out, w, dx + n * img_in);
}

void conv2d_backward_weight(const Conv2dGeometry& g, const float* dy, const float* x, float* dw) {
  if (g.N == 0) {
    std::fill(dw, dw + g.weight_numel(), 0.0f);
    return;
  }
  if (const GemmImpl* impl = select_gemm()) {
    note_kernel("conv2d_bwd_weight", impl->bwd_weight, g.name());
    backward_weight_gemm(*impl, g, dy, x, dw);
    return;
  }
  note_kernel("conv2d_bwd_weight", kRefBwdWeight, g.name());
  // The reference reduces over the whole batch per weight element; threads
  // split the output channels, so the result does not depend on their number.
  const int nt = conv_threads(g);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t k = 0; k < g.K; ++k) conv2d_bwd_weight_f32__ref(g, dy, x, k, k + 1, dw);
}

void conv2d_backward_bias(const Conv2dGeometry& g, const float* dy, float* db) {
  const int64_t PQ = g.P * g.Q;
  const int nt = threads_for(double(g.N) * g.K * PQ, 1e5);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t k = 0; k < g.K; ++k) {
    double acc = 0.0;
    for (int64_t n = 0; n < g.N; ++n) {
      const float* plane = dy + (n * g.K + k) * PQ;
      for (int64_t i = 0; i < PQ; ++i) acc += plane[i];
    }
    db[k] = float(acc);
  }
  note_kernel("conv2d_bwd_bias", "conv2d_bwd_bias_f32__ref", g.name());
}

std::vector<std::string> list_conv2d_implementations(const std::string& op) {
  std::vector<std::string> out;
  for (const GemmImpl& impl : kGemmImpls)
    out.push_back(op == "conv2d_fwd" ? impl.fwd : op == "conv2d_bwd_data" ? impl.bwd_data : impl.bwd_weight);
  out.push_back(op == "conv2d_fwd" ? kRefFwd : op == "conv2d_bwd_data" ? kRefBwdData : kRefBwdWeight);
  return out;
}

}  // namespace convcore
