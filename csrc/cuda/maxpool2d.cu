// max_pool2d on the GPU.
//
// Forward: one thread per output element, the reference's loop unchanged
// (scan order, strict '>', NaN takes over, -inf padding, indices h*W + w),
// so values and indices are bitwise equal to kernels/ref/maxpool2d_ref.cpp.
//
// Backward: one warp per (n, c) plane walks its outputs in order, 32 at a
// time.  Lanes that hit the same input element are grouped with
// __match_any_sync and the lowest of them adds the group's values in lane
// order, so every input element receives its gradients in exactly the
// reference's order (dx[idx[o]] += dy[o], o ascending): deterministic, bitwise
// equal to the CPU path, and no float atomics.  The backward pass only gets
// indices (not the window), so a gather form is not possible.
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

#include "common/runtime.h"
#include "cuda/cuda_api.h"
#include "cuda/cuda_common.h"

namespace convcore {
namespace cuda {
namespace {

struct PoolArgs {
  int64_t planes, H, W, P, Q;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// One output (p, q) of plane xp: the body of maxpool2d_fwd_f32__ref's loop.
__host__ __device__ void maxpool2d_window(const PoolArgs& a, const float* xp, int64_t p, int64_t q,
                                          float* y, int64_t* idx) {
  const int64_t h0 = p * a.sh - a.ph, w0 = q * a.sw - a.pw;
  float best = -INFINITY;
  int64_t best_i = -1;
  // Only the taps that land in the input, as the reference: a window may be
  // far larger than the input (a kernel of 2^40 with ceil_mode is valid).
  const int64_t i0 = h0 < 0 ? (-h0 + a.dh - 1) / a.dh : 0;
  const int64_t i1 = h0 < a.H ? (a.H - h0 + a.dh - 1) / a.dh : 0;
  const int64_t j0 = w0 < 0 ? (-w0 + a.dw - 1) / a.dw : 0;
  const int64_t j1 = w0 < a.W ? (a.W - w0 + a.dw - 1) / a.dw : 0;
  for (int64_t i = i0; i < (i1 < a.kh ? i1 : a.kh); ++i) {
    const int64_t h = h0 + i * a.dh;
    for (int64_t j = j0; j < (j1 < a.kw ? j1 : a.kw); ++j) {
      const int64_t w = w0 + j * a.dw;
      const float v = xp[h * a.W + w];
      if (best_i < 0 || v > best || isnan(v)) {
        best = v;
        best_i = h * a.W + w;
      }
    }
  }
  if (best_i < 0)  // no element in range (dilation): -inf at the first in-range step
    best_i = (h0 + i0 * a.dh) * a.W + (w0 + j0 * a.dw);
  *y = best;
  *idx = best_i;
}

__global__ void maxpool2d_fwd_f32__cuda(PoolArgs a, const float* __restrict__ x,
                                        float* __restrict__ y, int64_t* __restrict__ idx) {
  const int64_t total = a.planes * a.P * a.Q;
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < total;
       o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t q = o % a.Q, t = o / a.Q, p = t % a.P, plane = t / a.P;
    maxpool2d_window(a, x + plane * a.H * a.W, p, q, y + o, idx + o);
  }
}

constexpr int kWarpsPerBlock = 4;

// The backward pass's flag for "no bad index": the first bad flat position
// is an atomicMin over this initial value, which maxpool2d_backward sets with
// a memset of kNoBadIndexByte bytes.
constexpr unsigned long long kNoBadIndex = ~0ull;
constexpr int kNoBadIndexByte = 0xff;

__host__ __device__ __forceinline__ int lowest_lane(unsigned mask) {
#if defined(__CUDA_ARCH__)
  return __ffs(mask) - 1;
#else
  return __builtin_ffs(int(mask)) - 1;
#endif
}

// Lane `lane` of the chunk of outputs starting at `base`: its output's target
// element in the plane (-1: past the plane's end, or a bad index) and value.
// Returns the output's position in the plane when its index is bad, else -1.
__host__ __device__ __forceinline__ int64_t pool_bwd_lane(int64_t PQ, int64_t HW, const float* dyp,
                                                          const int64_t* ip, int64_t base, int lane,
                                                          long long* target, float* v) {
  const int64_t o = base + lane;
  *target = -1;
  *v = 0.0f;
  if (o >= PQ) return -1;
  const int64_t i = ip[o];
  *v = dyp[o];
  if (i >= 0 && i < HW) {
    *target = i;
    return -1;
  }
  return o;
}

// After the lanes with the same target were grouped (peers, from
// __match_any_sync): the lowest lane of a group adds the group's values, in
// lane order, to its target.
__host__ __device__ __forceinline__ void pool_bwd_group_add(float* dxp, long long target,
                                                            unsigned peers, int lane,
                                                            const float* vals) {
  if (target < 0 || lane != lowest_lane(peers)) return;
  float acc = dxp[target];
  for (unsigned m = peers; m != 0; m &= m - 1) acc += vals[lowest_lane(m)];
  dxp[target] = acc;
}

__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    maxpool2d_bwd_f32__cuda(int64_t planes, int64_t PQ, int64_t HW, const float* __restrict__ dy,
                            const int64_t* __restrict__ idx, float* __restrict__ dx,
                            unsigned long long* first_bad) {
  __shared__ float vals[kWarpsPerBlock][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // Every loop bound below is uniform across the warp, as __match_any_sync needs.
  for (int64_t plane = int64_t(blockIdx.x) * kWarpsPerBlock + warp; plane < planes;
       plane += int64_t(gridDim.x) * kWarpsPerBlock) {
    const float* dyp = dy + plane * PQ;
    const int64_t* ip = idx + plane * PQ;
    float* dxp = dx + plane * HW;
    for (int64_t base = 0; base < PQ; base += 32) {
      long long target;
      float v;
      const int64_t bad = pool_bwd_lane(PQ, HW, dyp, ip, base, lane, &target, &v);
      if (bad >= 0) atomicMin(first_bad, (unsigned long long)(plane * PQ + bad));
      vals[warp][lane] = v;
      __syncwarp();
      const unsigned peers = __match_any_sync(0xffffffffu, target);
      pool_bwd_group_add(dxp, target, peers, lane, vals[warp]);
      // Orders this chunk's writes (dx and vals) before the next chunk's reads.
      __syncwarp();
    }
  }
}

// The launch plan of the backward pass: one warp per plane, kWarpsPerBlock
// warps a block, the blocks striding over the planes.
unsigned pool_bwd_blocks(int64_t planes) { return detail::blocks_for(planes, kWarpsPerBlock); }

}  // namespace

void maxpool2d_forward(const Pool2dGeometry& g, const float* x, float* y, int64_t* idx) {
  const int64_t total = g.N * g.C * g.P * g.Q;
  if (total == 0) return;
  note_kernel_for("maxpool2d_fwd", "maxpool2d_fwd_f32__cuda", g);
  const PoolArgs a{g.N * g.C,  g.H,        g.W,     g.P,     g.Q,     g.kernel_h, g.kernel_w,
                   g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dil_h, g.dil_w};
  maxpool2d_fwd_f32__cuda<<<detail::blocks_for(total), detail::kThreads, 0, cudaStreamLegacy>>>(
      a, x, y, idx);
  detail::check_launch("maxpool2d_fwd_f32__cuda");
}

void maxpool2d_backward(const Pool2dGeometry& g, const float* dy, const int64_t* idx, float* dx) {
  const int64_t planes = g.N * g.C, HW = g.H * g.W, PQ = g.P * g.Q;
  if (planes == 0) return;
  fill_zero(dx, size_t(planes * HW) * sizeof(float));
  note_kernel_for("maxpool2d_bwd", "maxpool2d_bwd_f32_warp__cuda", g);
  detail::Scratch flag(sizeof(unsigned long long));
  detail::check(
      cudaMemsetAsync(flag.data(), kNoBadIndexByte, sizeof(unsigned long long), cudaStreamLegacy),
      "cudaMemsetAsync");
  auto* first_bad = static_cast<unsigned long long*>(flag.data());
  maxpool2d_bwd_f32__cuda<<<pool_bwd_blocks(planes), kWarpsPerBlock * 32, 0, cudaStreamLegacy>>>(
      planes, PQ, HW, dy, idx, dx, first_bad);
  detail::check_launch("maxpool2d_bwd_f32_warp__cuda");
  // Waits for the kernel: a bad index is the caller's error and is reported
  // like the CPU path reports it (first bad flat position).
  unsigned long long bad = kNoBadIndex;
  copy_device_to_host(&bad, first_bad, sizeof bad);
  if (bad != kNoBadIndex) {
    int64_t value = 0;
    copy_device_to_host(&value, idx + bad, sizeof value);
    throw ArgumentError("indices: every index must lie in [0, H*W) = [0, " + std::to_string(HW) +
                        ") for input of size (" + std::to_string(g.H) + " x " +
                        std::to_string(g.W) + "), got " + std::to_string(value) +
                        " at flat position " + std::to_string(bad));
  }
}

}  // namespace cuda
}  // namespace convcore
