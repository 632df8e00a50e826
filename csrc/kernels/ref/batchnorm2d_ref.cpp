// Scalar batch-normalisation kernels: one plane per call, double throughout
// (the oracle of the vector kernels).  See kernels/ref/ref_kernels.h.
#include <cstdint>

#include "kernels/ref/ref_kernels.h"

namespace convcore {
namespace {

// dy[i], or 0 where the fused ReLU's output is not positive.  dy is read
// either way so that the choice is a select, not a branch on random signs.
inline double masked(const float* dy, const float* y, int64_t i) {
  const double d = dy[i];
  return (y == nullptr || y[i] > 0.0f) ? d : 0.0;
}

}  // namespace

void batchnorm2d_stats_f32__ref(int64_t L, const float* x, double* sum, double* m2) {
  double s = 0.0;
  for (int64_t i = 0; i < L; ++i) s += double(x[i]);
  const double mean = L > 0 ? s / double(L) : 0.0;
  double q = 0.0;
  for (int64_t i = 0; i < L; ++i) {
    const double d = double(x[i]) - mean;
    q += d * d;
  }
  *sum = s;
  *m2 = q;
}

void batchnorm2d_fwd_f32__ref(int64_t L, const float* x, float alpha, float beta, bool relu,
                              float* y) {
  for (int64_t i = 0; i < L; ++i) {
    const float v = float(double(x[i]) * double(alpha) + double(beta));
    // NaN stays NaN (as torch.relu), and -0.0 stays -0.0 (as maxps(0, v)).
    y[i] = relu && v < 0.0f ? 0.0f : v;
  }
}

void batchnorm2d_bwd_reduce_f32__ref(int64_t L, const float* dy, const float* x, const float* y,
                                     float mean, double* sum_g, double* sum_gx) {
  double s = 0.0, sx = 0.0;
  for (int64_t i = 0; i < L; ++i) {
    const double g = masked(dy, y, i);
    s += g;
    sx += g * (double(x[i]) - double(mean));
  }
  *sum_g = s;
  *sum_gx = sx;
}

void batchnorm2d_bwd_data_f32__ref(int64_t L, const float* dy, const float* x, const float* y,
                                   float mean, float k1, float k2, float k3, float* dx) {
  for (int64_t i = 0; i < L; ++i) {
    const double g = masked(dy, y, i);
    double v = g * double(k1);
    if (x != nullptr) v += (double(x[i]) - double(mean)) * double(k2) + double(k3);
    dx[i] = float(v);
  }
}

}  // namespace convcore
