// max_pool2d drivers: threads over the N*C planes, one kernel call per plane.
#include <algorithm>
#include <atomic>
#include <string>

#include "common/cpu.h"
#include "common/runtime.h"
#include "kernels/pool_ukernels.h"
#include "kernels/ref/ref_kernels.h"
#include "ops/impl_list.h"
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

int pool_threads(const Pool2dGeometry& g) {
  return threads_for(double(g.planes()) * (g.H * g.W * 4 + g.P * g.Q * 12), kMinBytesPerThread);
}

// ---------------------------------------------------------------------------
// Implementation lists (ops/impl_list.h).  Each entry runs its kernel over
// the N*C planes, one call per plane.
// ---------------------------------------------------------------------------

struct PoolArgs {
  const float* x;
  float* y;
  int64_t* idx;
  const float* dy;
  const int64_t* idx_in;
  float* dx;
};
using PoolImpl = Impl<Pool2dGeometry, PoolArgs>;

#if defined(CONVCORE_HAVE_AVX2_KERNELS)
void run_fwd_2x2s2_avx2(const Pool2dGeometry& g, const PoolArgs& a) {
  const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
  const int nt = pool_threads(g);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < g.planes(); ++i)
    maxpool2d_fwd_f32_2x2s2__avx2(g.H, g.W, a.x + i * HW, a.y + i * PQ, a.idx + i * PQ);
}
#endif

void run_fwd_ref(const Pool2dGeometry& g, const PoolArgs& a) {
  const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
  const int nt = pool_threads(g);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < g.planes(); ++i)
    maxpool2d_fwd_f32__ref(g, a.x + i * HW, a.y + i * PQ, a.idx + i * PQ);
}

void run_bwd_ref(const Pool2dGeometry& g, const PoolArgs& a) {
  const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
  const int nt = pool_threads(g);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < g.planes(); ++i)
    maxpool2d_bwd_f32__ref(PQ, HW, a.dy + i * PQ, a.idx_in + i * PQ, a.dx + i * HW);
}

const PoolImpl kFwdImpls[] = {
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
    {"maxpool2d_fwd_f32_2x2s2__avx2", Isa::Avx2, is_2x2s2, run_fwd_2x2s2_avx2},
#endif
    {"maxpool2d_fwd_f32__ref", Isa::Scalar, always, run_fwd_ref},
};

const PoolImpl kBwdImpls[] = {
    {"maxpool2d_bwd_f32__ref", Isa::Scalar, always, run_bwd_ref},
};

}  // namespace

void maxpool2d_forward(const Pool2dGeometry& g, const float* x, float* y, int64_t* idx) {
  if (g.planes() == 0) return;
  run_first_applicable("maxpool2d_fwd", kFwdImpls, g, g.name(),
                       PoolArgs{x, y, idx, nullptr, nullptr, nullptr});
}

void maxpool2d_backward(const Pool2dGeometry& g, const float* dy, const int64_t* idx, float* dx) {
  const int64_t planes = g.planes(), HW = g.H * g.W, PQ = g.P * g.Q;
  if (planes == 0) return;
  const int nt = pool_threads(g);
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
  run_first_applicable("maxpool2d_bwd", kBwdImpls, g, g.name(),
                       PoolArgs{nullptr, nullptr, nullptr, dy, idx, dx});
}

std::vector<std::string> maxpool2d_fwd_impl_names() { return impl_names(kFwdImpls); }
std::vector<std::string> maxpool2d_bwd_impl_names() { return impl_names(kBwdImpls); }

}  // namespace convcore
