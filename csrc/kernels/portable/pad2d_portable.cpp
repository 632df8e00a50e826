// Row-wise padding kernels: the index maps of both dimensions are computed
// once per call (pad2d_index_map); each output row is then its mapped source
// row with a contiguous middle (memcpy / vector add) and a few mapped border
// elements.  Elements are visited in the same order as the reference, so the
// backward pass adds in the same order and is bitwise equal to it.
#include <cstring>

#include "kernels/pad_ukernels.h"

namespace convcore {

void pad2d_fwd_f32_rows__portable(const Pad2dGeometry& g, const int64_t* row_map,
                                  const int64_t* col_map, int64_t mid_begin, int64_t mid_end,
                                  const float* x, float* y, float value) {
  const int64_t shift = mid_begin < mid_end ? col_map[mid_begin] - mid_begin : 0;
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    float* yr = y + oh * g.OW;
    const int64_t h = row_map[oh];
    if (h < 0) {
      for (int64_t ow = 0; ow < g.OW; ++ow) yr[ow] = value;
      continue;
    }
    const float* xr = x + h * g.W;
    for (int64_t ow = 0; ow < mid_begin; ++ow) yr[ow] = col_map[ow] < 0 ? value : xr[col_map[ow]];
    if (mid_end > mid_begin)
      std::memcpy(yr + mid_begin, xr + mid_begin + shift,
                  size_t(mid_end - mid_begin) * sizeof(float));
    for (int64_t ow = mid_end; ow < g.OW; ++ow) yr[ow] = col_map[ow] < 0 ? value : xr[col_map[ow]];
  }
}

void pad2d_bwd_f32_rows__portable(const Pad2dGeometry& g, const int64_t* row_map,
                                  const int64_t* col_map, int64_t mid_begin, int64_t mid_end,
                                  const float* dy, float* dx) {
  const int64_t shift = mid_begin < mid_end ? col_map[mid_begin] - mid_begin : 0;
  std::memset(dx, 0, size_t(g.H * g.W) * sizeof(float));
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const int64_t h = row_map[oh];
    if (h < 0) continue;
    const float* dr = dy + oh * g.OW;
    float* xr = dx + h * g.W;
    for (int64_t ow = 0; ow < mid_begin; ++ow)
      if (col_map[ow] >= 0) xr[col_map[ow]] += dr[ow];
    float* xm = xr + shift;
    for (int64_t ow = mid_begin; ow < mid_end; ++ow) xm[ow] += dr[ow];
    for (int64_t ow = mid_end; ow < g.OW; ++ow)
      if (col_map[ow] >= 0) xr[col_map[ow]] += dr[ow];
  }
}

}  // namespace convcore
