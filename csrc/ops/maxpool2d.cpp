// max_pool2d drivers: threads over the N*C planes, one kernel call per plane.
#include <algorithm>
#include <atomic>
#include <string>

#include "common/cpu.h"
#include "common/runtime.h"
#include "kernels/pool_ukernels.h"
#include "kernels/ref/ref_kernels.h"
#include "ops/ops.h"

namespace convcore {
namespace {

// Bytes moved below which one thread does the whole call.
constexpr double kMinBytesPerThread = 256 * 1024;

bool is_2x2s2(const Pool2dGeometry& g) {
  return g.kernel_h == 2 && g.kernel_w == 2 && g.stride_h == 2 && g.stride_w == 2 &&
         g.pad_h == 0 && g.pad_w == 0 && g.dil_h == 1 && g.dil_w == 1 && g.P == g.H / 2 &&
         g.Q == g.W / 2 && g.H * g.W < (int64_t(1) << 30);
}

constexpr const char* kFwd2x2Avx2 = "maxpool2d_fwd_f32_2x2s2__avx2";
constexpr const char* kFwdRef = "maxpool2d_fwd_f32__ref";
constexpr const char* kBwdRef = "maxpool2d_bwd_f32__ref";

}  // namespace

void maxpool2d_forward(const Pool2dGeometry& g, const float* x, float* y, int64_t* idx) {
  const int64_t planes = g.planes(), HW = g.H * g.W, PQ = g.P * g.Q;
  if (planes == 0) return;
  const int nt = threads_for(double(planes) * (HW * 4 + PQ * 12), kMinBytesPerThread);
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
  if (int(active_isa()) >= int(Isa::Avx2) && is_2x2s2(g)) {
    note_kernel("maxpool2d_fwd", kFwd2x2Avx2, g.name());
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t i = 0; i < planes; ++i)
      maxpool2d_fwd_f32_2x2s2__avx2(g.H, g.W, x + i * HW, y + i * PQ, idx + i * PQ);
    return;
  }
#endif
  note_kernel("maxpool2d_fwd", kFwdRef, g.name());
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < planes; ++i) maxpool2d_fwd_f32__ref(g, x + i * HW, y + i * PQ, idx + i * PQ);
}

void maxpool2d_backward(const Pool2dGeometry& g, const float* dy, const int64_t* idx, float* dx) {
  const int64_t planes = g.planes(), HW = g.H * g.W, PQ = g.P * g.Q;
  if (planes == 0) return;
  const int nt = threads_for(double(planes) * (HW * 4 + PQ * 12), kMinBytesPerThread);
  // Validate every index before writing anything: a bad index is a user
  // error (indices from another call), never an out-of-bounds write.
  std::atomic<int64_t> bad{-1};
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < planes * PQ; ++i) {
    if (idx[i] < 0 || idx[i] >= HW) {
      int64_t expected = -1;
      bad.compare_exchange_strong(expected, i);
    }
  }
  const int64_t b = bad.load();
  if (b >= 0)
    throw ArgumentError("indices: every index must lie in [0, H*W) = [0, " + std::to_string(HW) +
                        ") for input of size (" + std::to_string(g.H) + " x " + std::to_string(g.W) +
                        "), got " + std::to_string(idx[b]) + " at flat position " + std::to_string(b));
  note_kernel("maxpool2d_bwd", kBwdRef, g.name());
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < planes; ++i) maxpool2d_bwd_f32__ref(PQ, HW, dy + i * PQ, idx + i * PQ, dx + i * HW);
}

std::vector<std::string> list_maxpool2d_implementations(const std::string& op) {
  if (op == "maxpool2d_fwd") {
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
    return {kFwd2x2Avx2, kFwdRef};
#else
    return {kFwdRef};
#endif
  }
  return {kBwdRef};
}

}  // namespace convcore
