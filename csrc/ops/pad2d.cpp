// pad2d drivers: threads over planes (all leading dimensions flattened).
#include "common/runtime.h"
#include "kernels/ref/ref_kernels.h"
#include "ops/ops.h"

namespace convcore {
namespace {
constexpr double kMinBytesPerThread = 256 * 1024;
}

void pad2d_forward(const Pad2dGeometry& g, const float* x, float* y, float value) {
  const int64_t in = g.H * g.W, out = g.OH * g.OW;
  if (g.planes == 0 || out == 0) return;
  note_kernel("pad2d_fwd", "pad2d_fwd_f32__ref", pad_mode_name(g.mode));
  const int nt = threads_for(double(g.planes) * (in + out) * 4, kMinBytesPerThread);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < g.planes; ++i) pad2d_fwd_f32__ref(g, x + i * in, y + i * out, value);
}

void pad2d_backward(const Pad2dGeometry& g, const float* dy, float* dx) {
  const int64_t in = g.H * g.W, out = g.OH * g.OW;
  if (g.planes == 0 || in == 0) return;
  note_kernel("pad2d_bwd", "pad2d_bwd_f32__ref", pad_mode_name(g.mode));
  const int nt = threads_for(double(g.planes) * (in + out) * 4, kMinBytesPerThread);
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
  if (op == "pad2d_fwd") return {"pad2d_fwd_f32__ref"};
  if (op == "pad2d_bwd") return {"pad2d_bwd_f32__ref"};
  throw ArgumentError("unknown op '" + op + "'; expected one of conv2d_fwd, conv2d_bwd_data, "
                      "conv2d_bwd_weight, conv2d_bwd_bias, maxpool2d_fwd, maxpool2d_bwd, pad2d_fwd, pad2d_bwd");
}

}  // namespace convcore
