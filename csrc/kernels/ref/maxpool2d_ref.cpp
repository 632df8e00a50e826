#include <algorithm>
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
      // Only the taps that land in the input: a window may be far larger
      // than the input (a kernel of 2^40 with ceil_mode is valid), and
      // visiting every tap would never end.  Same taps, same scan order.
      const int64_t i0 = h0 < 0 ? (-h0 + g.dil_h - 1) / g.dil_h : 0;
      const int64_t i1 = std::min(g.kernel_h, h0 < g.H ? (g.H - h0 + g.dil_h - 1) / g.dil_h : 0);
      const int64_t j0 = w0 < 0 ? (-w0 + g.dil_w - 1) / g.dil_w : 0;
      const int64_t j1 = std::min(g.kernel_w, w0 < g.W ? (g.W - w0 + g.dil_w - 1) / g.dil_w : 0);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t h = h0 + i * g.dil_h;
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t w = w0 + j * g.dil_w;
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
        best_i = (h0 + i0 * g.dil_h) * g.W + (w0 + j0 * g.dil_w);
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
