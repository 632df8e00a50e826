// Portable 6x16 GEMM micro-kernel: the accumulator tile lives in a local
// array the compiler keeps in vector registers for whatever baseline ISA it
// targets (SSE2 on x86-64, NEON on AArch64).
#include "kernels/gemm_ukernels.h"

namespace convcore {

void gemm_ukernel_f32_6x16__portable(int64_t kc, const float* __restrict a, int64_t a_rs,
                                     int64_t a_cs, const float* __restrict b, float* c, int64_t ldc,
                                     int64_t mr, int64_t nr, bool accumulate) {
  float acc[kGemmMR][kGemmNR] = {};
  for (int64_t p = 0; p < kc; ++p) {
    const float* bp = b + p * kGemmNR;
    for (int64_t i = 0; i < mr; ++i) {
      const float ai = a[i * a_rs + p * a_cs];
      for (int64_t j = 0; j < kGemmNR; ++j) acc[i][j] += ai * bp[j];
    }
  }
  for (int64_t i = 0; i < mr; ++i) {
    float* ci = c + i * ldc;
    if (accumulate) {
      for (int64_t j = 0; j < nr; ++j) ci[j] += acc[i][j];
    } else {
      for (int64_t j = 0; j < nr; ++j) ci[j] = acc[i][j];
    }
  }
}

}  // namespace convcore
