// Optimiser-step micro-kernels: torch.optim.Adam's and torch.optim.SGD's
// update of n packed float32 elements, in place.  Every float operation is
// one IEEE round-to-nearest operation in the order of the numpy reference
// (HostBackend.adam_step_numpy / sgd_step_numpy in python/convcore/_backend/
// host.py) and of the CUDA kernels (csrc/cuda/train_ops.cu), so all of them
// are bitwise equal.  That rules out FMA contraction: these files are built
// in ISO C++ mode (CMAKE_CXX_EXTENSIONS OFF), where GCC's default is
// -ffp-contract=off, and the SIMD kernels use separate multiply and add
// intrinsics.  Square root and division are correctly rounded in every
// ISA, so vector and scalar code agree.  Arrays must not overlap.
#pragma once

#include <cstdint>

namespace convcore {

// The float32 constants of one Adam step (t = the step count):
//   g = grad + weight_decay * p                      (when weight_decay != 0)
//   m = m + (g - m) * one_minus_beta1                (torch's lerp)
//   v = v * beta2 + (g * one_minus_beta2) * g
//   p = p + (m / (sqrt(v) / bias_correction2_sqrt + eps)) * neg_step_size
// with bias_correction2_sqrt = sqrt(1 - beta2^t) and neg_step_size =
// -lr / (1 - beta1^t).
struct AdamConstants {
  float one_minus_beta1, beta2, one_minus_beta2, bias_correction2_sqrt, eps, neg_step_size,
      weight_decay;
};

// The float32 constants of one SGD step:
//   g = grad + weight_decay * p                      (when weight_decay != 0)
//   buf = g (first step), else buf * momentum + g * one_minus_dampening
//   g = g + buf * momentum (nesterov), else buf      (only with a buffer)
//   p = p + g * neg_lr
struct SgdConstants {
  float momentum, one_minus_dampening, weight_decay, neg_lr;
  bool nesterov, first;
};

// p, m, v updated in place from g; n elements each.
void adam_step_f32__ref(int64_t n, const AdamConstants& k, float* p, const float* g, float* m,
                        float* v);
// buf may be null (no momentum).
void sgd_step_f32__ref(int64_t n, const SgdConstants& k, float* p, const float* g, float* buf);

#if defined(CONVCORE_HAVE_AVX2_KERNELS)
void adam_step_f32__avx2(int64_t n, const AdamConstants& k, float* p, const float* g, float* m,
                         float* v);
void sgd_step_f32__avx2(int64_t n, const SgdConstants& k, float* p, const float* g, float* buf);
#endif

#if defined(CONVCORE_HAVE_AVX512_KERNELS)
void adam_step_f32__avx512(int64_t n, const AdamConstants& k, float* p, const float* g, float* m,
                           float* v);
void sgd_step_f32__avx512(int64_t n, const SgdConstants& k, float* p, const float* g, float* buf);
#endif

}  // namespace convcore
