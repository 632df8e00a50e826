// pad2d on the GPU: one thread per output element (forward) or per input
// element (backward, gather form), grid-stride over all planes.
//
// Both directions are bitwise equal to csrc/kernels/ref/pad2d_ref.cpp: the
// forward copies, and the backward adds each input element's sources in the
// reference's order (output rows ascending, then columns ascending, starting
// from 0.0f), without atomics.
#include <cuda_runtime.h>

#include <cstdint>

#include "common/runtime.h"
#include "cuda/cuda_api.h"
#include "cuda/cuda_common.h"

namespace convcore {
namespace cuda {
namespace {

constexpr int kConstant = 0, kReflect = 1, kReplicate = 2, kCircular = 3;

int mode_code(PadMode m) {
  switch (m) {
    case PadMode::Constant:
      return kConstant;
    case PadMode::Reflect:
      return kReflect;
    case PadMode::Replicate:
      return kReplicate;
    case PadMode::Circular:
      return kCircular;
  }
  return kConstant;
}

struct PadArgs {
  int64_t planes, H, W, OH, OW;
  int64_t top, bottom, left, right;
  int mode;
};

PadArgs pad_args(const Pad2dGeometry& g) {
  return PadArgs{g.planes,  g.H,          g.W,        g.OH,        g.OW,
                 g.pad_top, g.pad_bottom, g.pad_left, g.pad_right, mode_code(g.mode)};
}

__host__ __device__ inline int64_t max0(int64_t v) { return v > 0 ? v : 0; }

// Source index along one dimension for output position o, or -1 (constant
// fill).  Must stay identical to pad_source_index in kernels/ref/pad2d_ref.cpp.
__host__ __device__ int64_t pad_source_index(int64_t o, int64_t size, int64_t before, int64_t after,
                                             int mode) {
  const int64_t x = o - before;
  switch (mode) {
    case kConstant:
      return (x >= 0 && x < size) ? x : -1;
    case kReflect:
      if (x < 0) return -x;
      if (x >= size) return 2 * (size - 1) - x;
      return x;
    case kReplicate:
      return x < 0 ? 0 : (x > size - 1 ? size - 1 : x);
    default: {  // circular: negative pads crop first, positive pads wrap the cropped range
      const int64_t lo = max0(-before);
      const int64_t width = size - lo - max0(-after);
      const int64_t rel = o - max0(before);
      return lo + ((rel % width) + width) % width;
    }
  }
}

// The output positions along one dimension whose source is x: the exact
// preimage of pad_source_index, as at most 3 ascending disjoint ranges
// [begin, end) clipped to [0, out).  Geometry guarantees reflect pads are
// below the size and circular pads wrap at most once, which bounds the count.
struct Preimage {
  int n = 0;
  int64_t begin[3], end[3];
  __host__ __device__ void add(int64_t b, int64_t e, int64_t out) {
    b = b < 0 ? 0 : b;
    e = e > out ? out : e;
    if (b < e) {
      begin[n] = b;
      end[n] = e;
      ++n;
    }
  }
};

__host__ __device__ Preimage pad_preimage(int64_t x, int64_t size, int64_t before, int64_t after,
                                          int64_t out, int mode) {
  Preimage r;
  switch (mode) {
    case kConstant:
      r.add(x + before, x + before + 1, out);
      break;
    case kReflect:  // t = o - before maps to -t (t < 0), t, or 2(size-1) - t (t >= size)
      if (x > 0) r.add(before - x, before - x + 1, out);
      r.add(before + x, before + x + 1, out);
      if (x < size - 1) r.add(before + 2 * (size - 1) - x, before + 2 * (size - 1) - x + 1, out);
      break;
    case kReplicate:  // t <= 0 maps to 0 and t >= size - 1 to size - 1
      if (size == 1)
        r.add(0, out, out);
      else if (x == 0)
        r.add(0, before + 1, out);
      else if (x == size - 1)
        r.add(before + size - 1, out, out);
      else
        r.add(before + x, before + x + 1, out);
      break;
    default: {  // circular
      const int64_t lo = max0(-before);
      const int64_t width = size - lo - max0(-after);
      if (x < lo || x >= lo + width) break;  // cropped away
      const int64_t base = max0(before) + (x - lo);
      for (int m = -1; m <= 1; ++m) r.add(base + m * width, base + m * width + 1, out);
      break;
    }
  }
  return r;
}

// Output element i (flat over planes x OH x OW).
__host__ __device__ inline float pad2d_fwd_one(const PadArgs& a, const float* x, float value,
                                               int64_t i) {
  const int64_t ow = i % a.OW, t = i / a.OW, oh = t % a.OH, plane = t / a.OH;
  const int64_t h = pad_source_index(oh, a.H, a.top, a.bottom, a.mode);
  const int64_t w = pad_source_index(ow, a.W, a.left, a.right, a.mode);
  return (h < 0 || w < 0) ? value : x[(plane * a.H + h) * a.W + w];
}

// Input element i (flat over planes x H x W): its sources summed in the
// reference's order (output rows ascending, then columns, from 0.0f).
__host__ __device__ inline float pad2d_bwd_one(const PadArgs& a, const float* dy, int64_t i) {
  const int64_t w = i % a.W, t = i / a.W, h = t % a.H, plane = t / a.H;
  const Preimage rows = pad_preimage(h, a.H, a.top, a.bottom, a.OH, a.mode);
  const Preimage cols = pad_preimage(w, a.W, a.left, a.right, a.OW, a.mode);
  const float* dyp = dy + plane * a.OH * a.OW;
  float acc = 0.0f;
  // Fixed trip counts keep the ranges in registers.
  CONVCORE_UNROLL
  for (int ri = 0; ri < 3; ++ri) {
    if (ri >= rows.n) break;
    for (int64_t oh = rows.begin[ri]; oh < rows.end[ri]; ++oh) {
      CONVCORE_UNROLL
      for (int ci = 0; ci < 3; ++ci) {
        if (ci >= cols.n) break;
        for (int64_t ow = cols.begin[ci]; ow < cols.end[ci]; ++ow) acc += dyp[oh * a.OW + ow];
      }
    }
  }
  return acc;
}

__global__ void pad2d_fwd_f32__cuda(PadArgs a, const float* __restrict__ x, float* __restrict__ y,
                                    float value) {
  const int64_t total = a.planes * a.OH * a.OW;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = pad2d_fwd_one(a, x, value, i);
}

__global__ void pad2d_bwd_f32__cuda(PadArgs a, const float* __restrict__ dy,
                                    float* __restrict__ dx) {
  const int64_t total = a.planes * a.H * a.W;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = pad2d_bwd_one(a, dy, i);
}

}  // namespace

void pad2d_forward(const Pad2dGeometry& g, const float* x, float* y, float value) {
  const int64_t out = g.planes * g.OH * g.OW;
  if (out == 0) return;
  note_kernel("pad2d_fwd", "pad2d_fwd_f32__cuda", pad_mode_name(g.mode));
  pad2d_fwd_f32__cuda<<<detail::blocks_for(out), detail::kThreads, 0, cudaStreamLegacy>>>(
      pad_args(g), x, y, value);
  detail::check_launch("pad2d_fwd_f32__cuda");
}

void pad2d_backward(const Pad2dGeometry& g, const float* dy, float* dx) {
  const int64_t in = g.planes * g.H * g.W;
  if (in == 0) return;
  note_kernel("pad2d_bwd", "pad2d_bwd_f32__cuda", pad_mode_name(g.mode));
  pad2d_bwd_f32__cuda<<<detail::blocks_for(in), detail::kThreads, 0, cudaStreamLegacy>>>(
      pad_args(g), dy, dx);
  detail::check_launch("pad2d_bwd_f32__cuda");
}

}  // namespace cuda
}  // namespace convcore
