// Softmax cross-entropy of one row (kernels/ref/ref_kernels.h).
#include <cmath>
#include <limits>

#include "kernels/ref/ref_kernels.h"

namespace convcore {

void cross_entropy_row_f32__ref(int64_t C, const float* z, int64_t t, float scale, float* grad,
                                double* row_loss, int64_t* pred) {
  // numpy's argmax: the first maximum, or the first NaN.
  int64_t best = 0;
  float mx = z[0];
  for (int64_t j = 1; j < C && mx == mx; ++j)
    if (z[j] != z[j] || z[j] > mx) best = j, mx = z[j];
  *pred = best;
  float s = 0.0f;
  for (int64_t j = 0; j < C; ++j) {
    grad[j] = std::exp(z[j] - mx);
    s += grad[j];
  }
  if (t < 0 || t >= C) {  // the callers check targets; never a wild read
    *row_loss = std::numeric_limits<double>::quiet_NaN();
    for (int64_t j = 0; j < C; ++j) grad[j] = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  *row_loss = std::log(double(s)) - double(z[t] - mx);
  for (int64_t j = 0; j < C; ++j) {
    float p = grad[j] / s;
    if (j == t) p -= 1.0f;
    grad[j] = p * scale;
  }
}

}  // namespace convcore
