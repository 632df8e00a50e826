#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/ref/ref_kernels.h"

namespace convcore {

namespace {

// The scan of every window of one plane; store(p, q, value, h, w) gets
// output (p, q)'s maximum and its position.
template <class Store>
void scan_windows(const Pool2dGeometry& g, const float* x, Store store) {
  for (int64_t p = 0; p < g.P; ++p) {
    const int64_t h0 = p * g.stride_h - g.pad_h;
    for (int64_t q = 0; q < g.Q; ++q) {
      const int64_t w0 = q * g.stride_w - g.pad_w;
      float best = -std::numeric_limits<float>::infinity();
      int64_t best_h = -1, best_w = -1;
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
          if (best_h < 0 || v > best || std::isnan(v)) {
            best = v;
            best_h = h;
            best_w = w;
          }
        }
      }
      if (best_h < 0) {
        // No element of the window lies in the input (possible only with
        // dilation): PyTorch reports -inf at the window's first in-range step.
        best_h = h0 + i0 * g.dil_h;
        best_w = w0 + j0 * g.dil_w;
      }
      store(p, q, best, best_h, best_w);
    }
  }
}

}  // namespace

void maxpool2d_fwd_f32__ref(const Pool2dGeometry& g, const float* x, float* y, int64_t* idx) {
  scan_windows(g, x, [&](int64_t p, int64_t q, float v, int64_t h, int64_t w) {
    y[p * g.Q + q] = v;
    if (idx) idx[p * g.Q + q] = h * g.W + w;
  });
}

void maxpool2d_fwd_f32_offsets__ref(const Pool2dGeometry& g, const float* x, float* y,
                                    uint8_t* off) {
  scan_windows(g, x, [&](int64_t p, int64_t q, float v, int64_t h, int64_t w) {
    y[p * g.Q + q] = v;
    if (off)
      off[p * g.Q + q] =
          uint8_t((h - (p * g.stride_h - g.pad_h)) * g.kernel_w + (w - (q * g.stride_w - g.pad_w)));
  });
}

void maxpool2d_bwd_f32__ref(int64_t out_size, int64_t in_size, const float* dy, const int64_t* idx,
                            float* dx) {
  for (int64_t i = 0; i < in_size; ++i) dx[i] = 0.0f;
  for (int64_t o = 0; o < out_size; ++o) dx[idx[o]] += dy[o];
}

bool maxpool2d_bwd_f32_offsets__ref(const Pool2dGeometry& g, const float* dy, const uint8_t* off,
                                    const float* y, float* dx) {
  const int64_t taps = g.kernel_h * g.kernel_w;
  // A tap's row and column in its window (taps <= 256): no division per window.
  int32_t row_of[256], col_of[256];
  for (int64_t t = 0; t < std::min<int64_t>(taps, 256); ++t) {
    row_of[t] = int32_t(t / g.kernel_w);
    col_of[t] = int32_t(t % g.kernel_w);
  }
  // Each window's tap as a position in the plane (h, w), visited row by
  // row; false at once for a tap outside the kernel.
  auto each = [&](auto f) {
    for (int64_t p = 0, o = 0; p < g.P; ++p) {
      const int64_t h0 = p * g.stride_h - g.pad_h;
      for (int64_t q = 0; q < g.Q; ++q, ++o) {
        const int64_t t = off[o];
        if (t >= taps || !f(o, h0 + row_of[t], q * g.stride_w - g.pad_w + col_of[t])) return false;
      }
    }
    return true;
  };
  // Positions first: a tap outside the kernel or the input is reported
  // before anything is written.
  if (!each([&](int64_t, int64_t h, int64_t w) { return h >= 0 && h < g.H && w >= 0 && w < g.W; }))
    return false;
  for (int64_t i = 0; i < g.H * g.W; ++i) dx[i] = 0.0f;
  each([&](int64_t o, int64_t h, int64_t w) {
    dx[h * g.W + w] += dy[o];
    return true;
  });
  // Through the ReLU: the sum at each maximum times 0 where its value (y)
  // is not > 0.  Windows that share a maximum share its value, and v * 0 *
  // 0 is v * 0, so this is the mask applied once per position.
  if (y)
    each([&](int64_t o, int64_t h, int64_t w) {
      if (!(y[o] > 0.0f)) dx[h * g.W + w] *= 0.0f;
      return true;
    });
  return true;
}

}  // namespace convcore
