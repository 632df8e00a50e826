// max_pool2d drivers: threads over contiguous ranges of the N*C planes.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <string>

#include "common/cpu.h"
#include "common/runtime.h"
#include "kernels/pool_ukernels.h"
#include "kernels/ref/ref_kernels.h"
#include "ops/impl_list.h"
#include "ops/ops.h"
#include "ops/parallel.h"
#include "ops/relu.h"

namespace convcore {
namespace {

// Bytes moved below which one thread does the whole call.
constexpr double kMinBytesPerThread = 256 * 1024;

bool is_2x2s2(const Pool2dGeometry& g) {
  return g.kernel_h == 2 && g.kernel_w == 2 && g.stride_h == 2 && g.stride_w == 2 && g.pad_h == 0 &&
         g.pad_w == 0 && g.dil_h == 1 && g.dil_w == 1 && g.P == g.H / 2 && g.Q == g.W / 2 &&
         g.H * g.W < (int64_t(1) << 30);
}

// The backward geometry knows only the shapes (not kernel or stride): the
// 2x2/2 backward kernel applies when the output halves the plane, and checks
// that each index lies in its own 2x2 window (any other plane is scattered).
bool halves_plane(const Pool2dGeometry& g) {
  return g.P == g.H / 2 && g.Q == g.W / 2 && g.H * g.W < (int64_t(1) << 30);
}

int pool_threads(const Pool2dGeometry& g) {
  return threads_for(double(g.planes()) * (g.H * g.W * 4 + g.P * g.Q * 12), kMinBytesPerThread);
}

// Each thread takes one contiguous range of planes and makes one kernel call
// per plane (or one per range, for kernels that take a plane count): one
// parallel region per op, never one task per tiny plane.
template <class F>
void for_plane_ranges(int64_t planes, int nt, F&& f) {
  if (nt <= 1) {
    f(int64_t(0), planes);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t i0 = planes * t / T, i1 = planes * (t + 1) / T;
    if (i1 > i0) f(i0, i1);
  }
}

// Throws ArgumentError naming `indices` for the first index (in flat order
// from `from`) outside [0, H*W).
void check_indices(const Pool2dGeometry& g, const int64_t* idx, int64_t from, int64_t count) {
  const int64_t HW = g.H * g.W;
  for (int64_t i = from; i < from + count; ++i)
    if (idx[i] < 0 || idx[i] >= HW)
      throw ArgumentError("indices: every index must lie in [0, H*W) = [0, " + std::to_string(HW) +
                          ") for input of size (" + std::to_string(g.H) + " x " +
                          std::to_string(g.W) + "), got " + std::to_string(idx[i]) +
                          " at flat position " + std::to_string(i));
}

// ---------------------------------------------------------------------------
// Implementation lists (ops/impl_list.h).  Each entry runs its kernel over
// the N*C planes.  idx is null when the caller wants values only.
// ---------------------------------------------------------------------------

struct PoolArgs {
  const float* x;
  float* y;
  int64_t* idx;
  const float* dy;
  const int64_t* idx_in;
  float* dx;
  // Backward through a ReLU before the pool: its output (the pool's input),
  // or null.  dx is then multiplied by (relu_y > 0) block by block.
  const float* relu_y = nullptr;
};

// Planes per block of the backward: the mask runs on a block's dx while
// it is still in L1/L2.
int64_t mask_block_planes(const Pool2dGeometry& g) {
  return std::max<int64_t>(1, (32 * 1024) / std::max<int64_t>(1, g.H * g.W * 4));
}
using PoolImpl = Impl<Pool2dGeometry, PoolArgs>;

#if defined(CONVCORE_HAVE_AVX512_KERNELS)
void run_fwd_2x2s2_avx512(const Pool2dGeometry& g, const PoolArgs& a) {
  const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
  for_plane_ranges(g.planes(), pool_threads(g), [&](int64_t i0, int64_t i1) {
    maxpool2d_fwd_f32_2x2s2__avx512(i1 - i0, g.H, g.W, a.x + i0 * HW, a.y + i0 * PQ,
                                    a.idx ? a.idx + i0 * PQ : nullptr);
  });
}

// Dense window kernel; a plane with an index outside its own window (not
// from a forward pass of this geometry) falls back to the checked scatter.
void run_bwd_2x2s2_avx512(const Pool2dGeometry& g, const PoolArgs& a) {
  const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
  TaskErrors errors;
  const int64_t block = a.relu_y ? mask_block_planes(g) : g.planes();
  for_plane_ranges(g.planes(), pool_threads(g), [&](int64_t i0, int64_t i1) {
    errors.run([&] {
      for (int64_t b0 = i0; b0 < i1; b0 += block) {
        const int64_t b1 = std::min(i1, b0 + block);
        for (int64_t i = b0; i < b1; ++i) {
          i += maxpool2d_bwd_f32_2x2s2__avx512(b1 - i, g.H, g.W, a.dy + i * PQ, a.idx_in + i * PQ,
                                               a.dx + i * HW);
          if (i >= b1) break;
          check_indices(g, a.idx_in, i * PQ, PQ);
          maxpool2d_bwd_f32__ref(PQ, HW, a.dy + i * PQ, a.idx_in + i * PQ, a.dx + i * HW);
        }
        if (a.relu_y) relu_mask_inplace(a.dx + b0 * HW, a.relu_y + b0 * HW, (b1 - b0) * HW);
      }
    });
  });
  errors.rethrow();
}
#endif

#if defined(CONVCORE_HAVE_AVX2_KERNELS)
void run_fwd_2x2s2_avx2(const Pool2dGeometry& g, const PoolArgs& a) {
  const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
  for_plane_ranges(g.planes(), pool_threads(g), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      maxpool2d_fwd_f32_2x2s2__avx2(g.H, g.W, a.x + i * HW, a.y + i * PQ,
                                    a.idx ? a.idx + i * PQ : nullptr);
  });
}
#endif

void run_fwd_ref(const Pool2dGeometry& g, const PoolArgs& a) {
  const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
  for_plane_ranges(g.planes(), pool_threads(g), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      maxpool2d_fwd_f32__ref(g, a.x + i * HW, a.y + i * PQ, a.idx ? a.idx + i * PQ : nullptr);
  });
}

void run_bwd_ref(const Pool2dGeometry& g, const PoolArgs& a) {
  const int64_t planes = g.planes(), HW = g.H * g.W, PQ = g.P * g.Q;
  const int nt = pool_threads(g);
  // Validate every index before writing anything: a bad index is a user
  // error (indices from another call), never an out-of-bounds write.
  std::atomic<int64_t> bad{-1};
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < planes * PQ; ++i) {
    if (a.idx_in[i] < 0 || a.idx_in[i] >= HW) {
      int64_t expected = -1;
      bad.compare_exchange_strong(expected, i);
    }
  }
  if (bad.load() >= 0) check_indices(g, a.idx_in, bad.load(), 1);
  for_plane_ranges(planes, nt, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      maxpool2d_bwd_f32__ref(PQ, HW, a.dy + i * PQ, a.idx_in + i * PQ, a.dx + i * HW);
      if (a.relu_y) relu_mask_inplace(a.dx + i * HW, a.relu_y + i * HW, HW);
    }
  });
}

const PoolImpl kFwdImpls[] = {
#if defined(CONVCORE_HAVE_AVX512_KERNELS)
    {"maxpool2d_fwd_f32_2x2s2__avx512", Isa::Avx512, is_2x2s2, run_fwd_2x2s2_avx512},
#endif
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
    {"maxpool2d_fwd_f32_2x2s2__avx2", Isa::Avx2, is_2x2s2, run_fwd_2x2s2_avx2},
#endif
    {"maxpool2d_fwd_f32__ref", Isa::Scalar, always, run_fwd_ref},
};

const PoolImpl kBwdImpls[] = {
#if defined(CONVCORE_HAVE_AVX512_KERNELS)
    {"maxpool2d_bwd_f32_2x2s2__avx512", Isa::Avx512, halves_plane, run_bwd_2x2s2_avx512},
#endif
    {"maxpool2d_bwd_f32__ref", Isa::Scalar, always, run_bwd_ref},
};

// ---------------------------------------------------------------------------
// The training path's compact form: each window's maximum kept as one byte,
// its tap (ref_kernels.h), and the backward through the ReLU before the
// pool taken from the pool's own output.
// ---------------------------------------------------------------------------

struct OffsetsArgs {
  const float* x;
  float* y;
  uint8_t* off;
  const float* dy;
  const uint8_t* off_in;
  const float* y_in;  // the forward's output, through a ReLU; else null
  float* dx;
  int threads;         // 0: pool_threads
  int64_t plane0 = 0;  // the first plane's number in the caller's array (errors)
};
using OffsetsImpl = Impl<Pool2dGeometry, OffsetsArgs>;

int offsets_threads(const Pool2dGeometry& g, const OffsetsArgs& a) {
  return a.threads > 0 ? a.threads : pool_threads(g);
}

[[noreturn]] void bad_offset(const Pool2dGeometry& g, int64_t plane) {
  throw ArgumentError("offsets: plane " + std::to_string(plane) +
                      " holds a window tap outside the kernel (" + std::to_string(g.kernel_h) +
                      " x " + std::to_string(g.kernel_w) + ") or the input (" +
                      std::to_string(g.H) + " x " + std::to_string(g.W) +
                      "); pass what max_pool2d_offsets_forward returned for this geometry");
}

void run_bwd_offsets_plane_ref(const Pool2dGeometry& g, const OffsetsArgs& a, int64_t i) {
  const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
  if (!maxpool2d_bwd_f32_offsets__ref(g, a.dy + i * PQ, a.off_in + i * PQ,
                                      a.y_in ? a.y_in + i * PQ : nullptr, a.dx + i * HW))
    bad_offset(g, a.plane0 + i);
}

#if defined(CONVCORE_HAVE_AVX512_KERNELS)
void run_fwd_offsets_2x2s2_avx512(const Pool2dGeometry& g, const OffsetsArgs& a) {
  const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
  for_plane_ranges(g.planes(), offsets_threads(g, a), [&](int64_t i0, int64_t i1) {
    maxpool2d_fwd_f32_offsets_2x2s2__avx512(i1 - i0, g.H, g.W, a.x + i0 * HW, a.y + i0 * PQ,
                                            a.off ? a.off + i0 * PQ : nullptr);
  });
}

#endif

#if defined(CONVCORE_HAVE_AVX2_KERNELS)
void run_fwd_offsets_2x2s2_avx2(const Pool2dGeometry& g, const OffsetsArgs& a) {
  const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
  for_plane_ranges(g.planes(), offsets_threads(g, a), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      maxpool2d_fwd_f32_offsets_2x2s2__avx2(g.H, g.W, a.x + i * HW, a.y + i * PQ,
                                            a.off ? a.off + i * PQ : nullptr);
  });
}
#endif

// The dense 2x2/2 backward kernels (AVX-512, AVX2): each returns the planes
// it did; a plane it stops at (a tap above 3) goes to the reference, which
// names it.
using PoolBwdOffsetsKernel = int64_t (*)(int64_t planes, int64_t H, int64_t W, const float* dy,
                                         const uint8_t* off, const float* y, float* dx);
template <PoolBwdOffsetsKernel K>
void run_bwd_offsets_2x2s2(const Pool2dGeometry& g, const OffsetsArgs& a) {
  const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
  TaskErrors errors;
  for_plane_ranges(g.planes(), offsets_threads(g, a), [&](int64_t i0, int64_t i1) {
    errors.run([&] {
      for (int64_t i = i0; i < i1; ++i) {
        i += K(i1 - i, g.H, g.W, a.dy + i * PQ, a.off_in + i * PQ,
               a.y_in ? a.y_in + i * PQ : nullptr, a.dx + i * HW);
        if (i < i1) run_bwd_offsets_plane_ref(g, a, i);
      }
    });
  });
  errors.rethrow();
}

void run_fwd_offsets_ref(const Pool2dGeometry& g, const OffsetsArgs& a) {
  const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
  for_plane_ranges(g.planes(), offsets_threads(g, a), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      maxpool2d_fwd_f32_offsets__ref(g, a.x + i * HW, a.y + i * PQ,
                                     a.off ? a.off + i * PQ : nullptr);
  });
}

void run_bwd_offsets_ref(const Pool2dGeometry& g, const OffsetsArgs& a) {
  TaskErrors errors;
  for_plane_ranges(g.planes(), offsets_threads(g, a), [&](int64_t i0, int64_t i1) {
    errors.run([&] {
      for (int64_t i = i0; i < i1; ++i) run_bwd_offsets_plane_ref(g, a, i);
    });
  });
  errors.rethrow();
}

const OffsetsImpl kFwdOffsetsImpls[] = {
#if defined(CONVCORE_HAVE_AVX512_KERNELS)
    {"maxpool2d_fwd_f32_offsets_2x2s2__avx512", Isa::Avx512, is_2x2s2,
     run_fwd_offsets_2x2s2_avx512},
#endif
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
    {"maxpool2d_fwd_f32_offsets_2x2s2__avx2", Isa::Avx2, is_2x2s2, run_fwd_offsets_2x2s2_avx2},
#endif
    {"maxpool2d_fwd_f32_offsets__ref", Isa::Scalar, always, run_fwd_offsets_ref},
};

const OffsetsImpl kBwdOffsetsImpls[] = {
#if defined(CONVCORE_HAVE_AVX512_KERNELS)
    {"maxpool2d_bwd_f32_offsets_2x2s2__avx512", Isa::Avx512, is_2x2s2,
     run_bwd_offsets_2x2s2<maxpool2d_bwd_f32_offsets_2x2s2__avx512>},
#endif
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
    {"maxpool2d_bwd_f32_offsets_2x2s2__avx2", Isa::Avx2, is_2x2s2,
     run_bwd_offsets_2x2s2<maxpool2d_bwd_f32_offsets_2x2s2__avx2>},
#endif
    {"maxpool2d_bwd_f32_offsets__ref", Isa::Scalar, always, run_bwd_offsets_ref},
};

}  // namespace

void maxpool2d_forward(const Pool2dGeometry& g, const float* x, float* y, int64_t* idx) {
  if (g.planes() == 0) return;
  run_first_applicable("maxpool2d_fwd", kFwdImpls, g,
                       PoolArgs{x, y, idx, nullptr, nullptr, nullptr});
}

void maxpool2d_backward(const Pool2dGeometry& g, const float* dy, const int64_t* idx, float* dx,
                        const float* relu_y) {
  if (g.planes() == 0) return;
  run_first_applicable("maxpool2d_bwd", kBwdImpls, g,
                       PoolArgs{nullptr, nullptr, nullptr, dy, idx, dx, relu_y});
}

bool maxpool2d_offsets_fit(const Pool2dGeometry& g) {
  return g.dil_h == 1 && g.dil_w == 1 && g.kernel_h * g.kernel_w <= 256;
}

void maxpool2d_forward_offsets(const Pool2dGeometry& g, const float* x, float* y, uint8_t* off) {
  if (g.planes() == 0) return;
  run_first_applicable("maxpool2d_fwd_offsets", kFwdOffsetsImpls, g,
                       OffsetsArgs{x, y, off, nullptr, nullptr, nullptr, nullptr, 0});
}

PoolPlanesFn maxpool2d_forward_offsets_planes(const Pool2dGeometry& g) {
  const OffsetsImpl& impl = select_impl(kFwdOffsetsImpls, g);
  note_kernel_for("maxpool2d_fwd_offsets", impl.name, g);
  return [&impl, g](int64_t planes, const float* x, float* y, uint8_t* off) {
    Pool2dGeometry part = g;
    part.N = 1;
    part.C = planes;
    impl.run(part, OffsetsArgs{x, y, off, nullptr, nullptr, nullptr, nullptr, 1});
  };
}

PoolBackwardPlanesFn maxpool2d_backward_offsets_planes(const Pool2dGeometry& g) {
  const OffsetsImpl& impl = select_impl(kBwdOffsetsImpls, g);
  note_kernel_for("maxpool2d_bwd_offsets", impl.name, g);
  return [&impl, g](int64_t plane0, int64_t planes, const float* dy, const uint8_t* off,
                    const float* y, float* dx) {
    Pool2dGeometry part = g;
    part.N = 1;
    part.C = planes;
    impl.run(part, OffsetsArgs{nullptr, nullptr, nullptr, dy, off, y, dx, 1, plane0});
  };
}

void maxpool2d_backward_offsets(const Pool2dGeometry& g, const float* dy, const uint8_t* off,
                                float* dx, const float* y) {
  if (g.planes() == 0) return;
  run_first_applicable("maxpool2d_bwd_offsets", kBwdOffsetsImpls, g,
                       OffsetsArgs{nullptr, nullptr, nullptr, dy, off, y, dx, 0});
}

std::vector<std::string> maxpool2d_fwd_impl_names() { return impl_names(kFwdImpls); }
std::vector<std::string> maxpool2d_bwd_impl_names() { return impl_names(kBwdImpls); }
std::vector<std::string> maxpool2d_fwd_offsets_impl_names() { return impl_names(kFwdOffsetsImpls); }
std::vector<std::string> maxpool2d_bwd_offsets_impl_names() { return impl_names(kBwdOffsetsImpls); }

}  // namespace convcore
