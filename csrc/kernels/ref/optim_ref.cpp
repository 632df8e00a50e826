// Scalar reference of the optimiser steps (kernels/optim_ukernels.h): one
// element at a time, each operation rounded to float32 as numpy rounds it.
#include <cmath>

#include "kernels/optim_ukernels.h"

namespace convcore {

void adam_step_f32__ref(int64_t n, const AdamConstants& k, float* p, const float* g, float* m,
                        float* v) {
  for (int64_t i = 0; i < n; ++i) {
    float gi = g[i];
    if (k.weight_decay != 0.0f) gi = gi + p[i] * k.weight_decay;
    m[i] = m[i] + (gi - m[i]) * k.one_minus_beta1;
    v[i] = v[i] * k.beta2 + (gi * k.one_minus_beta2) * gi;
    const float denom = std::sqrt(v[i]) / k.bias_correction2_sqrt + k.eps;
    p[i] = p[i] + (m[i] / denom) * k.neg_step_size;
  }
}

void sgd_step_f32__ref(int64_t n, const SgdConstants& k, float* p, const float* g, float* buf) {
  for (int64_t i = 0; i < n; ++i) {
    float gi = g[i];
    if (k.weight_decay != 0.0f) gi = gi + p[i] * k.weight_decay;
    if (buf != nullptr) {
      const float b = k.first ? gi : buf[i] * k.momentum + gi * k.one_minus_dampening;
      buf[i] = b;
      gi = k.nesterov ? gi + b * k.momentum : b;
    }
    p[i] = p[i] + gi * k.neg_lr;
  }
}

}  // namespace convcore
