// The ReLU pieces the fused ops share: the forward epilogue and the mask
// its backward applies to a gradient.
#pragma once

#include <cstdint>
#include <cstring>

namespace convcore {

// The fused ReLU epilogue, bitwise numpy.maximum(v, 0) and torch.relu: NaN
// stays NaN (with its sign), -0 becomes +0.  Drivers apply it to the block a
// task has just written, while it is still in L1/L2, never as a separate
// pass over the whole output.  Written as one ordered compare (false for
// NaN) so that the loop below vectorises: with `v > 0 || v != v` gcc kept it
// scalar, and the fused ReLU cost 35 us of the 152 us tutorial first-layer
// forward at batch 100.
inline float relu_f32(float v) { return v <= 0.0f ? 0.0f : v; }
inline void relu_inplace(float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = relu_f32(y[i]);
}

// The ReLU's backward: dy *= (y > 0), numpy's multiply by the bool mask: dy
// where y > 0, else dy * 0 (so -0 for a negative dy, NaN for inf or NaN, as
// numpy gives).  Written as a bit select of the two, which vectorises; gcc
// compiles the plain multiply by 0/1 to a branch (x * 1 == x), mispredicted
// half the time on real gradients: 5x slower than numpy.  noinline keeps
// __restrict.
__attribute__((noinline)) inline void relu_mask_inplace(float* __restrict dy,
                                                        const float* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float d = dy[i], z = d * 0.0f;
    uint32_t bd, bz;
    std::memcpy(&bd, &d, sizeof bd);
    std::memcpy(&bz, &z, sizeof bz);
    const uint32_t keep = 0u - uint32_t(y[i] > 0.0f);
    const uint32_t r = (bd & keep) | (bz & ~keep);
    std::memcpy(dy + i, &r, sizeof r);
  }
}

}  // namespace convcore
