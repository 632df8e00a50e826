// Fully connected layer (y = x w^T + b) and its gradients on the packed GEMM
// (ops/gemm.h).  Threads take fixed blocks
// of the result's columns (or rows, for a narrow result) and each block runs the whole reduction in
// one order, so the result is bitwise the same for any thread count.  The bias and the fused ReLU
// are applied to each block right after its GEMM, in cache.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "common/runtime.h"
#include "kernels/gemm_ukernels.h"
#include "kernels/ref/ref_kernels.h"
#include "ops/gemm.h"
#include "ops/impl_list.h"
#include "ops/ops.h"
#include "ops/parallel.h"
#include "ops/relu.h"
#include "ops/workspace.h"

namespace convcore {
namespace {

// Multiply-adds below which a second thread costs more than it saves (the
// tutorial's 120 -> 60 layer, 0.7 M, still gains from two).
constexpr double kMinLinearMacsPerThread = 2e5;

struct LinearArgs {
  const float* x;
  const float* w;
  const float* b;
  const float* dy;
  float* y;
  float* dx;
  float* dw;
  bool relu;
};
using LinearImpl = Impl<LinearGeometry, LinearArgs>;

int linear_threads(const LinearGeometry& g) {
  return threads_for(g.macs(), kMinLinearMacsPerThread);
}

// C (M x N, row stride ldc) = A B with A(i, p) = A[i * a_rs + p * a_cs] and
// B(p, j) = B[p * b_rs + j * b_cs], on nt threads: blocks of whole NR-wide
// columns when N is at least as large as M, else of whole MR-high rows.
// epilogue(i0, i1, j0, j1) runs on each block after its GEMM.
template <class Epilogue>
void gemm_blocks(gemm_ukernel_fn uk, int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs,
                 int64_t a_cs, const float* B, int64_t b_rs, int64_t b_cs, float* C, int64_t ldc,
                 int nt, Epilogue epilogue) {
  const bool by_columns = N >= M;
  const int64_t extent = by_columns ? N : M, unit = by_columns ? kGemmNR : kGemmMR;
  const int64_t units = (extent + unit - 1) / unit;
  const int64_t per = (units + nt - 1) / nt * unit, blocks = (extent + per - 1) / per;
  TaskErrors errors;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t t = 0; t < blocks; ++t)
    errors.run([&] {
      const int64_t lo = t * per, hi = std::min(extent, lo + per);
      const int64_t i0 = by_columns ? 0 : lo, i1 = by_columns ? M : hi;
      const int64_t j0 = by_columns ? lo : 0, j1 = by_columns ? hi : N;
      float* work = thread_scratch(0).floats(gemm_workspace_floats(i1 - i0, j1 - j0, K));
      gemm_f32(uk, i1 - i0, j1 - j0, K, A + i0 * a_rs, a_rs, a_cs, B + j0 * b_cs, b_rs, b_cs,
               C + i0 * ldc + j0, ldc, false, work, /*copy_a=*/false);
      epilogue(i0, i1, j0, j1);
    });
  errors.rethrow();
}

template <gemm_ukernel_fn UK>
void run_fwd_gemm(const LinearGeometry& g, const LinearArgs& a) {
  // y (M x N) = x (M x K) w^T: B(p, j) = w[j * K + p].
  gemm_blocks(UK, g.M, g.N, g.K, a.x, g.K, 1, a.w, 1, g.K, a.y, g.N, linear_threads(g),
              [&](int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
                for (int64_t i = i0; i < i1; ++i) {
                  float* row = a.y + i * g.N;
                  if (a.b)
                    for (int64_t j = j0; j < j1; ++j) row[j] += a.b[j];
                  if (a.relu) relu_inplace(row + j0, j1 - j0);
                }
              });
}
void run_fwd_ref(const LinearGeometry& g, const LinearArgs& a) {
  const int nt = linear_threads(g);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < g.M; ++i) {
    linear_fwd_f32__ref(g, a.x, a.w, a.b, i, i + 1, a.y);
    if (a.relu) relu_inplace(a.y + i * g.N, g.N);
  }
}

template <gemm_ukernel_fn UK>
void run_bwd_data_gemm(const LinearGeometry& g, const LinearArgs& a) {
  // dx (M x K) = dy (M x N) w (N x K).
  gemm_blocks(UK, g.M, g.K, g.N, a.dy, g.N, 1, a.w, g.K, 1, a.dx, g.K, linear_threads(g),
              [](int64_t, int64_t, int64_t, int64_t) {});
}
void run_bwd_data_ref(const LinearGeometry& g, const LinearArgs& a) {
  const int nt = linear_threads(g);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < g.M; ++i) linear_bwd_data_f32__ref(g, a.dy, a.w, i, i + 1, a.dx);
}

template <gemm_ukernel_fn UK>
void run_bwd_weight_gemm(const LinearGeometry& g, const LinearArgs& a) {
  // dw (N x K) = dy^T (N x M) x (M x K): A(j, i) = dy[i * N + j].
  gemm_blocks(UK, g.N, g.K, g.M, a.dy, 1, g.N, a.x, g.K, 1, a.dw, g.K, linear_threads(g),
              [](int64_t, int64_t, int64_t, int64_t) {});
}
void run_bwd_weight_ref(const LinearGeometry& g, const LinearArgs& a) {
  const int nt = linear_threads(g);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t j = 0; j < g.N; ++j) linear_bwd_weight_f32__ref(g, a.dy, a.x, j, j + 1, a.dw);
}

const LinearImpl kFwdImpls[] = {
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
    {"linear_fwd_f32_gemm_6x16__avx2", Isa::Avx2, always,
     run_fwd_gemm<gemm_ukernel_f32_6x16__avx2>},
#endif
    {"linear_fwd_f32_gemm_6x16__portable", Isa::Portable, always,
     run_fwd_gemm<gemm_ukernel_f32_6x16__portable>},
    {"linear_fwd_f32__ref", Isa::Scalar, always, run_fwd_ref},
};
const LinearImpl kBwdDataImpls[] = {
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
    {"linear_bwd_data_f32_gemm_6x16__avx2", Isa::Avx2, always,
     run_bwd_data_gemm<gemm_ukernel_f32_6x16__avx2>},
#endif
    {"linear_bwd_data_f32_gemm_6x16__portable", Isa::Portable, always,
     run_bwd_data_gemm<gemm_ukernel_f32_6x16__portable>},
    {"linear_bwd_data_f32__ref", Isa::Scalar, always, run_bwd_data_ref},
};
const LinearImpl kBwdWeightImpls[] = {
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
    {"linear_bwd_weight_f32_gemm_6x16__avx2", Isa::Avx2, always,
     run_bwd_weight_gemm<gemm_ukernel_f32_6x16__avx2>},
#endif
    {"linear_bwd_weight_f32_gemm_6x16__portable", Isa::Portable, always,
     run_bwd_weight_gemm<gemm_ukernel_f32_6x16__portable>},
    {"linear_bwd_weight_f32__ref", Isa::Scalar, always, run_bwd_weight_ref},
};

}  // namespace

void linear_forward(const LinearGeometry& g, const float* x, const float* w, const float* b,
                    float* y, bool relu) {
  if (g.M == 0 || g.N == 0) return;
  run_first_applicable("linear_fwd", kFwdImpls, g,
                       LinearArgs{x, w, b, nullptr, y, nullptr, nullptr, relu});
}

void linear_backward_data(const LinearGeometry& g, const float* dy, const float* w, float* dx) {
  if (g.M == 0 || g.K == 0) return;
  run_first_applicable("linear_bwd_data", kBwdDataImpls, g,
                       LinearArgs{nullptr, w, nullptr, dy, nullptr, dx, nullptr, false});
}

void linear_backward_weight(const LinearGeometry& g, const float* dy, const float* x, float* dw) {
  if (g.N == 0) return;
  run_first_applicable("linear_bwd_weight", kBwdWeightImpls, g,
                       LinearArgs{x, nullptr, nullptr, dy, nullptr, nullptr, dw, false});
}

void linear_backward_bias(const LinearGeometry& g, const float* dy, float* db) {
  // Rows added in order into the N sums (vectorised across the row).
  std::fill(db, db + g.N, 0.0f);
  for (int64_t i = 0; i < g.M; ++i)
    for (int64_t j = 0; j < g.N; ++j) db[j] += dy[i * g.N + j];
}

std::vector<std::string> linear_fwd_impl_names() { return impl_names(kFwdImpls); }
std::vector<std::string> linear_bwd_data_impl_names() { return impl_names(kBwdDataImpls); }
std::vector<std::string> linear_bwd_weight_impl_names() { return impl_names(kBwdWeightImpls); }

}  // namespace convcore
