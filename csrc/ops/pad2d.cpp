// pad2d drivers: threads over planes (all leading dimensions flattened).  The
// row-wise kernel needs the index maps of both dimensions, computed once.
#include <algorithm>
#include <vector>

#include "common/cpu.h"
#include "common/runtime.h"
#include "kernels/pad_ukernels.h"
#include "kernels/ref/ref_kernels.h"
#include "ops/impl_list.h"
#include "ops/ops.h"

namespace convcore {
namespace {

constexpr double kMinBytesPerThread = 256 * 1024;

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

int pad_threads(const Pad2dGeometry& g) {
  return threads_for(double(g.planes) * (g.H * g.W + g.OH * g.OW) * 4, kMinBytesPerThread);
}

// ---------------------------------------------------------------------------
// Implementation lists (ops/impl_list.h), threads over planes.
// ---------------------------------------------------------------------------

struct PadArgs {
  const float* x;
  float* y;
  float value;
  const float* dy;
  float* dx;
};
using PadImpl = Impl<Pad2dGeometry, PadArgs>;

void run_fwd_rows(const Pad2dGeometry& g, const PadArgs& a) {
  const int64_t in = g.H * g.W, out = g.OH * g.OW;
  const int nt = pad_threads(g);
  const PadMaps m = pad_maps(g);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < g.planes; ++i)
    pad2d_fwd_f32_rows__portable(g, m.rows.data(), m.cols.data(), m.mid_begin, m.mid_end,
                                 a.x + i * in, a.y + i * out, a.value);
}

void run_fwd_ref(const Pad2dGeometry& g, const PadArgs& a) {
  const int64_t in = g.H * g.W, out = g.OH * g.OW;
  const int nt = pad_threads(g);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < g.planes; ++i)
    pad2d_fwd_f32__ref(g, a.x + i * in, a.y + i * out, a.value);
}

void run_bwd_rows(const Pad2dGeometry& g, const PadArgs& a) {
  const int64_t in = g.H * g.W, out = g.OH * g.OW;
  const int nt = pad_threads(g);
  const PadMaps m = pad_maps(g);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < g.planes; ++i)
    pad2d_bwd_f32_rows__portable(g, m.rows.data(), m.cols.data(), m.mid_begin, m.mid_end,
                                 a.dy + i * out, a.dx + i * in);
}

void run_bwd_ref(const Pad2dGeometry& g, const PadArgs& a) {
  const int64_t in = g.H * g.W, out = g.OH * g.OW;
  const int nt = pad_threads(g);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < g.planes; ++i) pad2d_bwd_f32__ref(g, a.dy + i * out, a.dx + i * in);
}

const PadImpl kFwdImpls[] = {
    {"pad2d_fwd_f32_rows__portable", Isa::Portable, always, run_fwd_rows},
    {"pad2d_fwd_f32__ref", Isa::Scalar, always, run_fwd_ref},
};

const PadImpl kBwdImpls[] = {
    {"pad2d_bwd_f32_rows__portable", Isa::Portable, always, run_bwd_rows},
    {"pad2d_bwd_f32__ref", Isa::Scalar, always, run_bwd_ref},
};

}  // namespace

void pad2d_forward(const Pad2dGeometry& g, const float* x, float* y, float value) {
  if (g.planes == 0 || g.OH * g.OW == 0) return;
  run_first_applicable("pad2d_fwd", kFwdImpls, g, PadArgs{x, y, value, nullptr, nullptr});
}

void pad2d_backward(const Pad2dGeometry& g, const float* dy, float* dx) {
  if (g.planes == 0 || g.H * g.W == 0) return;
  run_first_applicable("pad2d_bwd", kBwdImpls, g, PadArgs{nullptr, nullptr, 0.0f, dy, dx});
}

std::vector<std::string> pad2d_fwd_impl_names() { return impl_names(kFwdImpls); }
std::vector<std::string> pad2d_bwd_impl_names() { return impl_names(kBwdImpls); }

}  // namespace convcore
