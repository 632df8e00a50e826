#include <cmath>
#include <limits>

#include "kernels/ref/ref_kernels.h"

namespace convcore {

void maxpool2d_fwd_f32__ref(const Pool2dGeometry& g, const float* x, float* y, int64_t* idx) {
  for (int64_t p = 0; p < g.P; ++p) {
    const int64_t h0 = p * g.stride_h - g.pad_h;
    for (int64_t q = 0; q < g.Q; ++q) {
      const int64_t w0 = q * g.stride_w - g.pad_w;
      float best = -std::numeric_limits<float>::infinity();
      int64_t best_i = -1;
      for (int64_t i = 0; i < g.kernel_h; ++i) {
        const int64_t h = h0 + i * g.dil_h;
        if (h < 0 || h >= g.H) continue;
        for (int64_t j = 0; j < g.kernel_w; ++j) {
          const int64_t w = w0 + j * g.dil_w;
          if (w < 0 || w >= g.W) continue;
          const float v = x[h * g.W + w];
          // Scan order, strict '>': the first maximum wins a tie, and a NaN
          // always takes over, so NaN propagates (with the last NaN's index).
          // The first valid element seeds both value and index.
          if (best_i < 0 || v > best || std::isnan(v)) {
            best = v;
            best_i = h * g.W + w;
          }
        }
      }
      if (best_i < 0) {
        // No element of the window lies in the input (possible only with
        // dilation): PyTorch reports -inf at the window's first in-range step.
        int64_t h = h0, w = w0;
        while (h < 0) h += g.dil_h;
        while (w < 0) w += g.dil_w;
        best_i = h * g.W + w;
      }
      y[p * g.Q + q] = best;
      if (idx) idx[p * g.Q + q] = best_i;
    }
  }
}

void maxpool2d_bwd_f32__ref(int64_t out_size, int64_t in_size, const float* dy, const int64_t* idx,
                            float* dx) {
  for (int64_t i = 0; i < in_size; ++i) dx[i] = 0.0f;
  for (int64_t o = 0; o < out_size; ++o) dx[idx[o]] += dy[o];
}

}  // namespace convcore
