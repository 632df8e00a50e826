// batch_norm drivers.  The unit of work is a plane (one channel of one
// image, H*W contiguous floats): threads take contiguous ranges of the N*C
// planes, and every per-channel sum is made of per-plane partials that the
// kernels compute independently and the driver adds in plane order.  The
// result is therefore bitwise the same for any thread count.  One parallel
// region per call: the plane pass, a barrier, the per-channel combination
// (O(N*C), on one thread), a barrier, the elementwise pass over the same
// planes (still in the thread's cache when they fit).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "common/runtime.h"
#include "kernels/batchnorm_ukernels.h"
#include "kernels/ref/ref_kernels.h"
#include "ops/impl_list.h"
#include "ops/ops.h"
#include "ops/workspace.h"

namespace convcore {
namespace {

// Bytes moved below which one thread does the whole call.
constexpr double kMinBytesPerThread = 256 * 1024;

struct BnKernels {
  void (*stats)(int64_t, const float*, double*, double*);
  void (*fwd)(int64_t, const float*, float, float, bool, float*);
  void (*bwd_reduce)(int64_t, const float*, const float*, const float*, float, double*, double*);
  void (*bwd_data)(int64_t, const float*, const float*, const float*, float, float, float, float,
                   float*);
};

const BnKernels kRef = {batchnorm2d_stats_f32__ref, batchnorm2d_fwd_f32__ref,
                        batchnorm2d_bwd_reduce_f32__ref, batchnorm2d_bwd_data_f32__ref};
const BnKernels kPortable = {batchnorm2d_stats_f32__portable, batchnorm2d_fwd_f32__portable,
                             batchnorm2d_bwd_reduce_f32__portable,
                             batchnorm2d_bwd_data_f32__portable};
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
const BnKernels kAvx2 = {batchnorm2d_stats_f32__avx2, batchnorm2d_fwd_f32__avx2,
                         batchnorm2d_bwd_reduce_f32__avx2, batchnorm2d_bwd_data_f32__avx2};
#endif
#if defined(CONVCORE_HAVE_AVX512_KERNELS)
const BnKernels kAvx512 = {batchnorm2d_stats_f32__avx512, batchnorm2d_fwd_f32__avx512,
                           batchnorm2d_bwd_reduce_f32__avx512, batchnorm2d_bwd_data_f32__avx512};
#endif

struct BnFwdArgs {
  const float* x;
  const float* weight;  // may be null (affine=False)
  const float* bias;    // may be null
  float* running_mean;  // may be null in training (no tracking); required in eval
  float* running_var;
  bool training;
  double momentum, eps;
  bool relu;
  float* y;
  float* save_mean;
  float* save_invstd;
};

struct BnBwdArgs {
  const float* dy;
  const float* x;
  const float* weight;  // may be null
  const float* save_mean;
  const float* save_invstd;
  const float* y_relu;  // forward output of a fused ReLU, or null
  bool training;
  float* dx;  // each may be null (not wanted)
  float* dweight;
  float* dbias;
};

using FwdImpl = Impl<BatchNorm2dGeometry, BnFwdArgs>;
using BwdImpl = Impl<BatchNorm2dGeometry, BnBwdArgs>;

// Per-plane partials (two doubles per plane) and per-channel coefficients
// (three floats per channel): driver-owned, reused call after call.
struct BnWorkspace {
  double* partial;
  float* coef;
};

BnWorkspace workspace(const BatchNorm2dGeometry& g) {
  thread_local ScratchBuffer partial, coef;
  // 64-byte aligned storage without a declared type: it holds doubles only.
  return {reinterpret_cast<double*>(partial.floats(4 * g.planes())), coef.floats(3 * g.C)};
}

int bn_threads(const BatchNorm2dGeometry& g, int streams) {
  return threads_for(double(g.planes()) * double(g.HW()) * 4.0 * streams, kMinBytesPerThread);
}

// Runs plane_pass(i0, i1) on each thread's range of planes, then combine()
// on one thread, then elementwise(i0, i1) on the same ranges.
template <class A, class B, class E>
void three_phases(int64_t planes, int nt, A&& plane_pass, B&& combine, E&& elementwise) {
  if (nt <= 1) {
    plane_pass(int64_t(0), planes);
    combine();
    elementwise(int64_t(0), planes);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t i0 = planes * t / T, i1 = planes * (t + 1) / T;
    if (i1 > i0) plane_pass(i0, i1);
#pragma omp barrier
#pragma omp single
    combine();  // implicit barrier at the end of single
    if (i1 > i0) elementwise(i0, i1);
  }
}

template <const BnKernels& K>
void run_fwd(const BatchNorm2dGeometry& g, const BnFwdArgs& a) {
  const int64_t C = g.C, HW = g.HW(), planes = g.planes();
  const BnWorkspace ws = workspace(g);
  float* alpha = ws.coef;
  float* beta = ws.coef + C;
  auto stats = [&](int64_t i0, int64_t i1) {
    if (!a.training) return;
    for (int64_t i = i0; i < i1; ++i)
      K.stats(HW, a.x + i * HW, &ws.partial[2 * i], &ws.partial[2 * i + 1]);
  };
  auto combine = [&] {
    const double M = double(g.M());
    for (int64_t c = 0; c < C; ++c) {
      double mean, invstd;
      if (a.training) {
        double s = 0.0;
        for (int64_t n = 0; n < g.N; ++n) s += ws.partial[2 * (n * C + c)];
        mean = M > 0 ? s / M : 0.0;
        // Sum of squares about the channel mean from each plane's own:
        // m2 = sum over planes of (m2_p + HW * (mean_p - mean)^2), exact.
        double m2 = 0.0;
        for (int64_t n = 0; n < g.N; ++n) {
          const double* p = &ws.partial[2 * (n * C + c)];
          const double dm = (HW > 0 ? p[0] / double(HW) : 0.0) - mean;
          m2 += p[1] + double(HW) * dm * dm;
        }
        const double var = M > 0 ? m2 / M : 0.0;
        invstd = M > 0 ? 1.0 / std::sqrt(var + a.eps) : 0.0;
        if (a.running_mean != nullptr && M > 0) {
          const double m = a.momentum;
          a.running_mean[c] = float((1.0 - m) * double(a.running_mean[c]) + m * mean);
          a.running_var[c] = float((1.0 - m) * double(a.running_var[c]) + m * m2 / (M - 1.0));
        }
      } else {
        mean = a.running_mean[c];
        invstd = 1.0 / std::sqrt(double(a.running_var[c]) + a.eps);
      }
      a.save_mean[c] = float(mean);
      a.save_invstd[c] = float(invstd);
      const double w = a.weight ? double(a.weight[c]) : 1.0;
      const double b = a.bias ? double(a.bias[c]) : 0.0;
      alpha[c] = float(w * invstd);
      beta[c] = float(b - mean * w * invstd);
    }
  };
  auto normalise = [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t c = i % C;
      K.fwd(HW, a.x + i * HW, alpha[c], beta[c], a.relu, a.y + i * HW);
    }
  };
  three_phases(planes, bn_threads(g, a.training ? 3 : 2), stats, combine, normalise);
}

template <const BnKernels& K>
void run_bwd(const BatchNorm2dGeometry& g, const BnBwdArgs& a) {
  const int64_t C = g.C, HW = g.HW(), planes = g.planes();
  const BnWorkspace ws = workspace(g);
  float* k1 = ws.coef;
  float* k2 = ws.coef + C;
  float* k3 = ws.coef + 2 * C;
  // The sums are needed for the weight and bias gradients, and for the
  // input gradient in training mode (the batch statistics depend on x).
  const bool reduce = a.dweight || a.dbias || (a.dx && a.training);
  auto sums = [&](int64_t i0, int64_t i1) {
    if (!reduce) return;
    for (int64_t i = i0; i < i1; ++i)
      K.bwd_reduce(HW, a.dy + i * HW, a.x + i * HW, a.y_relu ? a.y_relu + i * HW : nullptr,
                   a.save_mean[i % C], &ws.partial[2 * i], &ws.partial[2 * i + 1]);
  };
  auto combine = [&] {
    const double M = double(g.M());
    for (int64_t c = 0; c < C; ++c) {
      double sg = 0.0, sgx = 0.0;
      if (reduce)
        for (int64_t n = 0; n < g.N; ++n) {
          sg += ws.partial[2 * (n * C + c)];
          sgx += ws.partial[2 * (n * C + c) + 1];
        }
      const double invstd = a.save_invstd[c];
      if (a.dbias) a.dbias[c] = float(sg);
      if (a.dweight) a.dweight[c] = float(sgx * invstd);
      const double w = a.weight ? double(a.weight[c]) : 1.0;
      k1[c] = float(w * invstd);
      // dx = w*invstd/M * (M*g - sum g - xhat * sum g*xhat), xhat = (x - mean)*invstd
      k2[c] = a.training && M > 0 ? float(-w * invstd * invstd * invstd * sgx / M) : 0.0f;
      k3[c] = a.training && M > 0 ? float(-w * invstd * sg / M) : 0.0f;
    }
  };
  auto input_grad = [&](int64_t i0, int64_t i1) {
    if (!a.dx) return;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t c = i % C;
      K.bwd_data(HW, a.dy + i * HW, a.training ? a.x + i * HW : nullptr,
                 a.y_relu ? a.y_relu + i * HW : nullptr, a.save_mean[c], k1[c], k2[c], k3[c],
                 a.dx + i * HW);
    }
  };
  const int streams = (reduce ? 3 : 0) + (a.dx ? 3 : 0) + (a.y_relu ? 2 : 0);
  three_phases(planes, bn_threads(g, streams), sums, combine, input_grad);
}

const FwdImpl kFwdImpls[] = {
#if defined(CONVCORE_HAVE_AVX512_KERNELS)
    {"batchnorm2d_fwd_f32__avx512", Isa::Avx512, always, run_fwd<kAvx512>},
#endif
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
    {"batchnorm2d_fwd_f32__avx2", Isa::Avx2, always, run_fwd<kAvx2>},
#endif
    {"batchnorm2d_fwd_f32__portable", Isa::Portable, always, run_fwd<kPortable>},
    {"batchnorm2d_fwd_f32__ref", Isa::Scalar, always, run_fwd<kRef>},
};

const BwdImpl kBwdImpls[] = {
#if defined(CONVCORE_HAVE_AVX512_KERNELS)
    {"batchnorm2d_bwd_f32__avx512", Isa::Avx512, always, run_bwd<kAvx512>},
#endif
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
    {"batchnorm2d_bwd_f32__avx2", Isa::Avx2, always, run_bwd<kAvx2>},
#endif
    {"batchnorm2d_bwd_f32__portable", Isa::Portable, always, run_bwd<kPortable>},
    {"batchnorm2d_bwd_f32__ref", Isa::Scalar, always, run_bwd<kRef>},
};

}  // namespace

void batchnorm2d_forward(const BatchNorm2dGeometry& g, const float* x, const float* weight,
                         const float* bias, float* running_mean, float* running_var, bool training,
                         double momentum, double eps, bool relu, float* y, float* save_mean,
                         float* save_invstd) {
  if (g.C == 0) return;
  run_first_applicable("batchnorm2d_fwd", kFwdImpls, g,
                       BnFwdArgs{x, weight, bias, running_mean, running_var, training, momentum,
                                 eps, relu, y, save_mean, save_invstd});
}

void batchnorm2d_backward(const BatchNorm2dGeometry& g, const float* dy, const float* x,
                          const float* weight, const float* save_mean, const float* save_invstd,
                          const float* y_relu, bool training, float* dx, float* dweight,
                          float* dbias) {
  if (g.C == 0) return;
  run_first_applicable(
      "batchnorm2d_bwd", kBwdImpls, g,
      BnBwdArgs{dy, x, weight, save_mean, save_invstd, y_relu, training, dx, dweight, dbias});
}

std::vector<std::string> batchnorm2d_fwd_impl_names() { return impl_names(kFwdImpls); }
std::vector<std::string> batchnorm2d_bwd_impl_names() { return impl_names(kBwdImpls); }

}  // namespace convcore
