// Batch-normalisation kernels in portable C++: fixed 16-lane float arrays
// that the compiler vectorises for the baseline ISA.  Each lane adds at most
// 16 values in float (a block of 256) before the block is carried in double,
// so the error of a plane's sums is that of 16-term float sums, whatever L.
// Statistics go chunk by chunk (2048 values, 8 KB: the second pass reads
// L1): the sum, then the corrected two-pass sums of d = x - chunk mean
// (m2 = sum d^2 - (sum d)^2 / n), chunks merged with Chan's formula.
#include <algorithm>
#include <cstdint>

#include "kernels/batchnorm_chunks.h"
#include "kernels/batchnorm_ukernels.h"

namespace convcore {
namespace {

constexpr int64_t kLanes = 16;
constexpr int64_t kBlock = 256;

// sum of x[0:n], float lanes per block, double across blocks.
double block_sum(int64_t n, const float* x) {
  double s = 0.0;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t nb = std::min(kBlock, n - b0);
    float acc[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= nb; i += kLanes)
      for (int64_t j = 0; j < kLanes; ++j) acc[j] += x[b0 + i + j];
    for (; i < nb; ++i) s += double(x[b0 + i]);
    for (int64_t j = 0; j < kLanes; ++j) s += double(acc[j]);
  }
  return s;
}

// sum d and sum d^2 of d = x - c over x[0:n].
void centred_sums(int64_t n, const float* x, float c, double* sd, double* sq) {
  double s = 0.0, q = 0.0;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t nb = std::min(kBlock, n - b0);
    float as[kLanes] = {}, aq[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= nb; i += kLanes)
      for (int64_t j = 0; j < kLanes; ++j) {
        const float d = x[b0 + i + j] - c;
        as[j] += d;
        aq[j] += d * d;
      }
    for (; i < nb; ++i) {
      const double d = double(x[b0 + i] - c);
      s += d;
      q += d * d;
    }
    for (int64_t j = 0; j < kLanes; ++j) {
      s += double(as[j]);
      q += double(aq[j]);
    }
  }
  *sd = s;
  *sq = q;
}

}  // namespace

void batchnorm2d_stats_f32__portable(int64_t L, const float* x, double* sum, double* m2) {
  batchnorm2d_plane_stats(L, x, block_sum, centred_sums, sum, m2);
}

void batchnorm2d_fwd_f32__portable(int64_t L, const float* x, float alpha, float beta, bool relu,
                                   float* y) {
  if (relu) {
    for (int64_t i = 0; i < L; ++i) {
      const float v = x[i] * alpha + beta;
      y[i] = v < 0.0f ? 0.0f : v;
    }
  } else {
    for (int64_t i = 0; i < L; ++i) y[i] = x[i] * alpha + beta;
  }
}

namespace {

// g = dy, or 0 where the fused ReLU's output y is not positive.  dy is
// loaded whatever the mask says, so the choice compiles to a blend: a
// branch on the sign of y mispredicts half the time (about 15x slower).
template <bool kMask>
inline float grad_at(const float* dy, const float* y, int64_t k) {
  const float d = dy[k];
  if (!kMask) return d;
  return y[k] > 0.0f ? d : 0.0f;
}

template <bool kMask>
void bwd_reduce(int64_t L, const float* dy, const float* x, const float* y, float mean,
                double* sum_g, double* sum_gx) {
  double s = 0.0, sx = 0.0;
  for (int64_t b0 = 0; b0 < L; b0 += kBlock) {
    const int64_t nb = std::min(kBlock, L - b0);
    float as[kLanes] = {}, ax[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= nb; i += kLanes)
      for (int64_t j = 0; j < kLanes; ++j) {
        const int64_t k = b0 + i + j;
        const float g = grad_at<kMask>(dy, y, k);
        as[j] += g;
        ax[j] += g * (x[k] - mean);
      }
    for (; i < nb; ++i) {
      const int64_t k = b0 + i;
      const float g = grad_at<kMask>(dy, y, k);
      s += double(g);
      sx += double(g) * double(x[k] - mean);
    }
    for (int64_t j = 0; j < kLanes; ++j) {
      s += double(as[j]);
      sx += double(ax[j]);
    }
  }
  *sum_g = s;
  *sum_gx = sx;
}

template <bool kMask>
void bwd_data(int64_t L, const float* dy, const float* x, const float* y, float mean, float k1,
              float k2, float k3, float* dx) {
  if (x == nullptr) {
    for (int64_t i = 0; i < L; ++i) dx[i] = grad_at<kMask>(dy, y, i) * k1;
    return;
  }
  for (int64_t i = 0; i < L; ++i) dx[i] = grad_at<kMask>(dy, y, i) * k1 + ((x[i] - mean) * k2 + k3);
}

}  // namespace

void batchnorm2d_bwd_reduce_f32__portable(int64_t L, const float* dy, const float* x,
                                          const float* y, float mean, double* sum_g,
                                          double* sum_gx) {
  if (y != nullptr)
    bwd_reduce<true>(L, dy, x, y, mean, sum_g, sum_gx);
  else
    bwd_reduce<false>(L, dy, x, y, mean, sum_g, sum_gx);
}

void batchnorm2d_bwd_data_f32__portable(int64_t L, const float* dy, const float* x, const float* y,
                                        float mean, float k1, float k2, float k3, float* dx) {
  if (y != nullptr)
    bwd_data<true>(L, dy, x, y, mean, k1, k2, k3, dx);
  else
    bwd_data<false>(L, dy, x, y, mean, k1, k2, k3, dx);
}

}  // namespace convcore
