// conv2d data gradient for any stride: a packed GEMM into columns, then
// col2im into the input gradient.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/conv2d_drivers.h"
#include "ops/gemm.h"
#include "ops/parallel.h"
#include "ops/workspace.h"

namespace convcore {

namespace {

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
        const int64_t qb =
            std::clamp<int64_t>((g.W - w_off + g.stride_w - 1) / g.stride_w, qa, g.Q);
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

}  // namespace

// ---------------------------------------------------------------------------
// Backward data: per (image, group, channel block), dcols = W_g^T * dy, then
// col2im into the block's channels (which no other task touches).
// ---------------------------------------------------------------------------
void backward_data_gemm(gemm_ukernel_fn ukernel, const Conv2dGeometry& g, const float* dy,
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
  for (int64_t t = 0; t < tasks; ++t)
    errors.run([&] {
      const int64_t n = t / (g.G * blocks), grp = (t / blocks) % g.G;
      const int64_t c0 = (t % blocks) * cb, c1 = std::min(g.Cg(), c0 + cb);
      float* dx_g = dx + (n * g.C + grp * g.Cg()) * HW;
      const float* dy_g = dy + (n * g.K + grp * Kg) * PQ;
      const float* w_g = w + grp * Kg * CRS;
      const int64_t rows = (c1 - c0) * RS;
      std::fill(dx_g + c0 * HW, dx_g + c1 * HW, 0.0f);
      float* work = thread_scratch(0).floats(gemm_workspace_floats(rows, PQ, Kg));
      float* dcols = thread_scratch(1).floats(rows * PQ);
      gemm_f32(ukernel, rows, PQ, Kg, w_g + c0 * RS, 1, CRS, dy_g, PQ, 1, dcols, PQ, false, work);
      col2im_channels(g, dcols, c0, c1, dx_g);
    });
  errors.rethrow();
}

}  // namespace convcore
