// Row-wise padding kernels (see kernels/portable/pad2d_portable.cpp).
//
// row_map[oh] / col_map[ow] give the source row / column of each output row
// / column (-1: the constant fill), as pad_source_index does; columns
// [mid_begin, mid_end) map to consecutive source columns.  One plane per call.
#pragma once

#include <cstdint>

#include "common/geometry.h"

namespace convcore {

void pad2d_fwd_f32_rows__portable(const Pad2dGeometry& g, const int64_t* row_map,
                                  const int64_t* col_map, int64_t mid_begin, int64_t mid_end,
                                  const float* x, float* y, float value);
void pad2d_bwd_f32_rows__portable(const Pad2dGeometry& g, const int64_t* row_map,
                                  const int64_t* col_map, int64_t mid_begin, int64_t mid_end,
                                  const float* dy, float* dx);

}  // namespace convcore
