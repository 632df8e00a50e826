// Scalar reference of the fully connected layer (kernels/ref/ref_kernels.h).
#include "kernels/ref/ref_kernels.h"

namespace convcore {

void linear_fwd_f32__ref(const LinearGeometry& g, const float* x, const float* w, const float* b,
                         int64_t m0, int64_t m1, float* y) {
  for (int64_t i = m0; i < m1; ++i)
    for (int64_t j = 0; j < g.N; ++j) {
      double acc = b ? double(b[j]) : 0.0;
      for (int64_t p = 0; p < g.K; ++p) acc += double(x[i * g.K + p]) * double(w[j * g.K + p]);
      y[i * g.N + j] = float(acc);
    }
}

void linear_bwd_data_f32__ref(const LinearGeometry& g, const float* dy, const float* w, int64_t m0,
                              int64_t m1, float* dx) {
  for (int64_t i = m0; i < m1; ++i)
    for (int64_t p = 0; p < g.K; ++p) {
      double acc = 0.0;
      for (int64_t j = 0; j < g.N; ++j) acc += double(dy[i * g.N + j]) * double(w[j * g.K + p]);
      dx[i * g.K + p] = float(acc);
    }
}

void linear_bwd_weight_f32__ref(const LinearGeometry& g, const float* dy, const float* x,
                                int64_t j0, int64_t j1, float* dw) {
  for (int64_t j = j0; j < j1; ++j)
    for (int64_t p = 0; p < g.K; ++p) {
      double acc = 0.0;
      for (int64_t i = 0; i < g.M; ++i) acc += double(dy[i * g.N + j]) * double(x[i * g.K + p]);
      dw[j * g.K + p] = float(acc);
    }
}

}  // namespace convcore
