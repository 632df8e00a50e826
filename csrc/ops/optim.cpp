// Optimiser-step drivers: threads over contiguous ranges of the packed
// elements (a multiple of 64 floats each, so every range but the last is
// whole cache lines), one kernel call per range.  Elementwise, so the result
// does not depend on the thread count.
#include <omp.h>

#include <algorithm>
#include <string>

#include "common/runtime.h"
#include "kernels/optim_ukernels.h"
#include "ops/impl_list.h"
#include "ops/ops.h"

namespace convcore {
namespace {

// Bytes moved below which one thread does the whole call.  The tutorial's
// 33 thousand parameters (0.9 MB of Adam traffic, bound by the square roots
// and divisions) take 13.5 us on one core and 10.3 us on two.
constexpr double kMinBytesPerThread = 1 << 18;

struct OptimProblem {
  int64_t n;
  std::string name() const { return "n" + std::to_string(n); }
};

template <class F>
void for_element_ranges(int64_t n, double bytes_per_element, F&& f) {
  const int nt = threads_for(double(n) * bytes_per_element, kMinBytesPerThread);
  if (nt <= 1) {
    f(int64_t(0), n);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t blocks = (n + 63) / 64;
    const int64_t i0 = std::min(n, blocks * t / T * 64),
                  i1 = std::min(n, blocks * (t + 1) / T * 64);
    if (i1 > i0) f(i0, i1);
  }
}

struct AdamArgs {
  const AdamConstants* k;
  float* p;
  const float* g;
  float* m;
  float* v;
};
using AdamImpl = Impl<OptimProblem, AdamArgs>;
using AdamKernel = void (*)(int64_t, const AdamConstants&, float*, const float*, float*, float*);

template <AdamKernel kernel>
void run_adam(const OptimProblem& pr, const AdamArgs& a) {
  // Adam reads p, g, m, v and writes p, m, v.
  for_element_ranges(pr.n, 28.0, [&](int64_t i0, int64_t i1) {
    kernel(i1 - i0, *a.k, a.p + i0, a.g + i0, a.m + i0, a.v + i0);
  });
}

const AdamImpl kAdamImpls[] = {
#if defined(CONVCORE_HAVE_AVX512_KERNELS)
    {"adam_step_f32__avx512", Isa::Avx512, always, run_adam<adam_step_f32__avx512>},
#endif
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
    {"adam_step_f32__avx2", Isa::Avx2, always, run_adam<adam_step_f32__avx2>},
#endif
    {"adam_step_f32__ref", Isa::Scalar, always, run_adam<adam_step_f32__ref>},
};

struct SgdArgs {
  const SgdConstants* k;
  float* p;
  const float* g;
  float* buf;
};
using SgdImpl = Impl<OptimProblem, SgdArgs>;
using SgdKernel = void (*)(int64_t, const SgdConstants&, float*, const float*, float*);

template <SgdKernel kernel>
void run_sgd(const OptimProblem& pr, const SgdArgs& a) {
  for_element_ranges(pr.n, a.buf ? 20.0 : 12.0, [&](int64_t i0, int64_t i1) {
    kernel(i1 - i0, *a.k, a.p + i0, a.g + i0, a.buf ? a.buf + i0 : nullptr);
  });
}

const SgdImpl kSgdImpls[] = {
#if defined(CONVCORE_HAVE_AVX512_KERNELS)
    {"sgd_step_f32__avx512", Isa::Avx512, always, run_sgd<sgd_step_f32__avx512>},
#endif
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
    {"sgd_step_f32__avx2", Isa::Avx2, always, run_sgd<sgd_step_f32__avx2>},
#endif
    {"sgd_step_f32__ref", Isa::Scalar, always, run_sgd<sgd_step_f32__ref>},
};

}  // namespace

void adam_step(int64_t n, const AdamConstants& k, float* p, const float* g, float* m, float* v) {
  if (n <= 0) return;
  const OptimProblem pr{n};
  run_first_applicable("adam_step", kAdamImpls, pr, AdamArgs{&k, p, g, m, v});
}

void sgd_step(int64_t n, const SgdConstants& k, float* p, const float* g, float* buf) {
  if (n <= 0) return;
  const OptimProblem pr{n};
  run_first_applicable("sgd_step", kSgdImpls, pr, SgdArgs{&k, p, g, buf});
}

std::vector<std::string> adam_step_impl_names() { return impl_names(kAdamImpls); }
std::vector<std::string> sgd_step_impl_names() { return impl_names(kSgdImpls); }

}  // namespace convcore
