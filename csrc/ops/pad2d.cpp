// pad2d drivers: threads over planes (all leading dimensions flattened).  The
// row-wise kernel needs the index maps of both dimensions, computed once.
#include <algorithm>
#include <vector>

#include "common/cpu.h"
#include "common/runtime.h"
#include "kernels/pad_ukernels.h"
#include "kernels/ref/ref_kernels.h"
#include "ops/ops.h"

namespace convcore {
namespace {

constexpr double kMinBytesPerThread = 256 * 1024;
constexpr const char* kFwdRows = "pad2d_fwd_f32_rows__portable";
constexpr const char* kFwdRef = "pad2d_fwd_f32__ref";
constexpr const char* kBwdRows = "pad2d_bwd_f32_rows__portable";
constexpr const char* kBwdRef = "pad2d_bwd_f32__ref";

struct PadMaps {
  std::vector<int64_t> rows, cols;
  int64_t mid_begin = 0, mid_end = 0;  // columns copied from consecutive source columns
};

PadMaps pad_maps(const Pad2dGeometry& g) {
  PadMaps m;
  m.rows.resize(size_t(g.OH));
  m.cols.resize(size_t(g.OW));
  for (int64_t oh = 0; oh < g.OH; ++oh)
    m.rows[size_t(oh)] = pad_source_index(oh, g.H, g.pad_top, g.pad_bottom, g.mode);
  for (int64_t ow = 0; ow < g.OW; ++ow)
    m.cols[size_t(ow)] = pad_source_index(ow, g.W, g.pad_left, g.pad_right, g.mode);
  // The interior: output columns whose source is ow - pad_left, inside the input.
  m.mid_begin = std::min<int64_t>(std::max<int64_t>(g.pad_left, 0), g.OW);
  m.mid_end = std::max<int64_t>(m.mid_begin, std::min<int64_t>(g.OW, g.W + g.pad_left));
  for (int64_t ow = m.mid_begin; ow < m.mid_end; ++ow)
    if (m.cols[size_t(ow)] != ow - g.pad_left) {  // not the plain interior (cannot happen; be safe)
      m.mid_end = m.mid_begin;
      break;
    }
  return m;
}

bool use_rows() { return int(active_isa()) >= int(Isa::Portable); }

}  // namespace

void pad2d_forward(const Pad2dGeometry& g, const float* x, float* y, float value) {
  const int64_t in = g.H * g.W, out = g.OH * g.OW;
  if (g.planes == 0 || out == 0) return;
  const int nt = threads_for(double(g.planes) * (in + out) * 4, kMinBytesPerThread);
  if (use_rows()) {
    note_kernel("pad2d_fwd", kFwdRows, pad_mode_name(g.mode));
    const PadMaps m = pad_maps(g);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t i = 0; i < g.planes; ++i)
      pad2d_fwd_f32_rows__portable(g, m.rows.data(), m.cols.data(), m.mid_begin, m.mid_end,
                                   x + i * in, y + i * out, value);
    return;
  }
  note_kernel("pad2d_fwd", kFwdRef, pad_mode_name(g.mode));
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < g.planes; ++i) pad2d_fwd_f32__ref(g, x + i * in, y + i * out, value);
}

void pad2d_backward(const Pad2dGeometry& g, const float* dy, float* dx) {
  const int64_t in = g.H * g.W, out = g.OH * g.OW;
  if (g.planes == 0 || in == 0) return;
  const int nt = threads_for(double(g.planes) * (in + out) * 4, kMinBytesPerThread);
  if (use_rows()) {
    note_kernel("pad2d_bwd", kBwdRows, pad_mode_name(g.mode));
    const PadMaps m = pad_maps(g);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t i = 0; i < g.planes; ++i)
      pad2d_bwd_f32_rows__portable(g, m.rows.data(), m.cols.data(), m.mid_begin, m.mid_end,
                                   dy + i * out, dx + i * in);
    return;
  }
  note_kernel("pad2d_bwd", kBwdRef, pad_mode_name(g.mode));
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < g.planes; ++i) pad2d_bwd_f32__ref(g, dy + i * out, dx + i * in);
}

std::vector<std::string> list_conv2d_implementations(const std::string& op);
std::vector<std::string> list_maxpool2d_implementations(const std::string& op);

std::vector<std::string> list_implementations(const std::string& op) {
  if (op == "conv2d_fwd" || op == "conv2d_bwd_data" || op == "conv2d_bwd_weight" ||
      op == "conv2d_bwd_bias")
    return list_conv2d_implementations(op);
  if (op == "maxpool2d_fwd" || op == "maxpool2d_bwd") return list_maxpool2d_implementations(op);
  if (op == "pad2d_fwd") return {kFwdRows, kFwdRef};
  if (op == "pad2d_bwd") return {kBwdRows, kBwdRef};
  throw ArgumentError("unknown op '" + op + "'; expected one of conv2d_fwd, conv2d_bwd_data, "
                      "conv2d_bwd_weight, conv2d_bwd_bias, maxpool2d_fwd, maxpool2d_bwd, pad2d_fwd, pad2d_bwd");
}

}  // namespace convcore
