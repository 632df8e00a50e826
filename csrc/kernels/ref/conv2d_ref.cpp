#include "kernels/ref/ref_kernels.h"

namespace convcore {

void conv2d_fwd_f32__ref(const Conv2dGeometry& g, const float* x_n, const float* w, const float* b,
                         float* y_n) {
  const int64_t Cg = g.Cg(), Kg = g.Kg();
  for (int64_t k = 0; k < g.K; ++k) {
    const int64_t grp = k / Kg;
    const float* wk = w + k * Cg * g.R * g.S;
    for (int64_t p = 0; p < g.P; ++p) {
      for (int64_t q = 0; q < g.Q; ++q) {
        double acc = b ? double(b[k]) : 0.0;
        for (int64_t c = 0; c < Cg; ++c) {
          const float* xc = x_n + (grp * Cg + c) * g.H * g.W;
          for (int64_t r = 0; r < g.R; ++r) {
            const int64_t h = p * g.stride_h - g.pad_top + r * g.dil_h;
            if (h < 0 || h >= g.H) continue;
            for (int64_t s = 0; s < g.S; ++s) {
              const int64_t ww = q * g.stride_w - g.pad_left + s * g.dil_w;
              if (ww < 0 || ww >= g.W) continue;
              acc += double(xc[h * g.W + ww]) * double(wk[(c * g.R + r) * g.S + s]);
            }
          }
        }
        y_n[(k * g.P + p) * g.Q + q] = float(acc);
      }
    }
  }
}

void conv2d_bwd_data_f32__ref(const Conv2dGeometry& g, const float* dy_n, const float* w,
                              float* dx_n) {
  const int64_t Cg = g.Cg(), Kg = g.Kg();
  // Gather form: each input element sums the outputs whose windows cover it,
  // so every element is written once and no accumulator is shared.
  for (int64_t c = 0; c < g.C; ++c) {
    const int64_t grp = c / Cg, cl = c % Cg;
    for (int64_t h = 0; h < g.H; ++h) {
      for (int64_t x = 0; x < g.W; ++x) {
        double acc = 0.0;
        for (int64_t kl = 0; kl < Kg; ++kl) {
          const int64_t k = grp * Kg + kl;
          const float* wk = w + (k * Cg + cl) * g.R * g.S;
          const float* dyk = dy_n + k * g.P * g.Q;
          for (int64_t r = 0; r < g.R; ++r) {
            const int64_t ph = h + g.pad_top - r * g.dil_h;
            if (ph < 0 || ph % g.stride_h != 0) continue;
            const int64_t p = ph / g.stride_h;
            if (p >= g.P) continue;
            for (int64_t s = 0; s < g.S; ++s) {
              const int64_t qw = x + g.pad_left - s * g.dil_w;
              if (qw < 0 || qw % g.stride_w != 0) continue;
              const int64_t q = qw / g.stride_w;
              if (q >= g.Q) continue;
              acc += double(dyk[p * g.Q + q]) * double(wk[r * g.S + s]);
            }
          }
        }
        dx_n[(c * g.H + h) * g.W + x] = float(acc);
      }
    }
  }
}

void conv2d_bwd_weight_f32__ref(const Conv2dGeometry& g, const float* dy, const float* x,
                                int64_t k0, int64_t k1, float* dw) {
  const int64_t Cg = g.Cg(), Kg = g.Kg();
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t grp = k / Kg;
    for (int64_t c = 0; c < Cg; ++c) {
      for (int64_t r = 0; r < g.R; ++r) {
        for (int64_t s = 0; s < g.S; ++s) {
          double acc = 0.0;
          for (int64_t n = 0; n < g.N; ++n) {
            const float* dyk = dy + (n * g.K + k) * g.P * g.Q;
            const float* xc = x + (n * g.C + grp * Cg + c) * g.H * g.W;
            for (int64_t p = 0; p < g.P; ++p) {
              const int64_t h = p * g.stride_h - g.pad_top + r * g.dil_h;
              if (h < 0 || h >= g.H) continue;
              for (int64_t q = 0; q < g.Q; ++q) {
                const int64_t ww = q * g.stride_w - g.pad_left + s * g.dil_w;
                if (ww < 0 || ww >= g.W) continue;
                acc += double(dyk[p * g.Q + q]) * double(xc[h * g.W + ww]);
              }
            }
          }
          dw[((k * Cg + c) * g.R + r) * g.S + s] = float(acc);
        }
      }
    }
  }
}

float conv2d_bwd_bias_f32__ref(int64_t N, int64_t K, int64_t PQ, const float* dy, int64_t k) {
  double acc = 0.0;
  for (int64_t n = 0; n < N; ++n) {
    const float* plane = dy + (n * K + k) * PQ;
    for (int64_t i = 0; i < PQ; ++i) acc += plane[i];
  }
  return float(acc);
}

}  // namespace convcore
