#include <algorithm>

#include "kernels/ref/ref_kernels.h"

namespace convcore {

int64_t pad_source_index(int64_t o, int64_t size, int64_t before, int64_t after, PadMode mode) {
  const int64_t x = o - before;  // position in input coordinates
  switch (mode) {
    case PadMode::Constant:
      return (x >= 0 && x < size) ? x : -1;
    case PadMode::Reflect:
      if (x < 0) return -x;
      if (x >= size) return 2 * (size - 1) - x;
      return x;
    case PadMode::Replicate:
      return std::min(std::max<int64_t>(x, 0), size - 1);
    case PadMode::Circular: {
      // Negative pads crop first; positive pads wrap around the cropped range.
      const int64_t lo = std::max<int64_t>(0, -before);
      const int64_t width = size - lo - std::max<int64_t>(0, -after);
      const int64_t rel = o - std::max<int64_t>(0, before);
      return lo + ((rel % width) + width) % width;
    }
  }
  return -1;
}

void pad2d_fwd_f32__ref(const Pad2dGeometry& g, const float* x, float* y, float value) {
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const int64_t h = pad_source_index(oh, g.H, g.pad_top, g.pad_bottom, g.mode);
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      const int64_t w = pad_source_index(ow, g.W, g.pad_left, g.pad_right, g.mode);
      y[oh * g.OW + ow] = (h < 0 || w < 0) ? value : x[h * g.W + w];
    }
  }
}

void pad2d_bwd_f32__ref(const Pad2dGeometry& g, const float* dy, float* dx) {
  for (int64_t i = 0; i < g.H * g.W; ++i) dx[i] = 0.0f;
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const int64_t h = pad_source_index(oh, g.H, g.pad_top, g.pad_bottom, g.mode);
    if (h < 0) continue;
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      const int64_t w = pad_source_index(ow, g.W, g.pad_left, g.pad_right, g.mode);
      if (w < 0) continue;
      dx[h * g.W + w] += dy[oh * g.OW + ow];
    }
  }
}

}  // namespace convcore
