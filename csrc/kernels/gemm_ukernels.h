// GEMM micro-kernels: C[mr x nr] (+)= A_panel * B_panel over kc steps.
//
// A is read in place through strides: element (i, p) of the panel is
// a[i * a_rs + p * a_cs], i < mr (rows past mr are never read).  The packed
// layout made by ops/gemm.cpp is a_rs = 1, a_cs = MR = 6, zero-padded to 6
// rows; a small row-major A (a_cs = 1) or column-major one (a_rs = 1) is read
// as it lies, with no copy.  The B panel is always packed: kc rows of NR=16
// columns, b[p * 16 + j], zero-padded to full width.  The kernel always runs
// a full 6x16 tile and only the store is clipped to mr x nr.  C is row-major
// with row stride ldc.  With accumulate=false C is overwritten.  Each C
// element is reduced over p in increasing order, so results do not depend on
// how the caller tiles or threads the other two dimensions, nor on whether A
// was packed.
#pragma once

#include <cstdint>

namespace convcore {

constexpr int64_t kGemmMR = 6;
constexpr int64_t kGemmNR = 16;

using gemm_ukernel_fn = void (*)(int64_t kc, const float* a, int64_t a_rs, int64_t a_cs,
                                 const float* b, float* c, int64_t ldc, int64_t mr, int64_t nr,
                                 bool accumulate);

void gemm_ukernel_f32_6x16__portable(int64_t kc, const float* a, int64_t a_rs, int64_t a_cs,
                                     const float* b, float* c, int64_t ldc, int64_t mr, int64_t nr,
                                     bool accumulate);
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
void gemm_ukernel_f32_6x16__avx2(int64_t kc, const float* a, int64_t a_rs, int64_t a_cs,
                                 const float* b, float* c, int64_t ldc, int64_t mr, int64_t nr,
                                 bool accumulate);
#endif

}  // namespace convcore
