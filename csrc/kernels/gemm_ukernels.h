// GEMM micro-kernels: C[mr x nr] (+)= A_panel * B_panel over kc steps.
//
// Packed layout (made by ops/gemm.cpp): the A panel holds kc columns of MR=6
// rows, a[p * 6 + i]; the B panel kc rows of NR=16 columns, b[p * 16 + j].
// Panels are zero-padded to full width, so the kernel always runs a full
// 6x16 tile and only the store is clipped to mr x nr.  C is row-major with
// row stride ldc.  With accumulate=false C is overwritten.  Each C element
// is reduced over p in increasing order, so results do not depend on how the
// caller tiles or threads the other two dimensions.
#pragma once

#include <cstdint>

namespace convcore {

constexpr int64_t kGemmMR = 6;
constexpr int64_t kGemmNR = 16;

using gemm_ukernel_fn = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                                 int64_t mr, int64_t nr, bool accumulate);

void gemm_ukernel_f32_6x16__portable(int64_t kc, const float* a, const float* b, float* c,
                                     int64_t ldc, int64_t mr, int64_t nr, bool accumulate);
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
void gemm_ukernel_f32_6x16__avx2(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                                 int64_t mr, int64_t nr, bool accumulate);
#endif

}  // namespace convcore
