#include "ops/gemm.h"

#include <algorithm>
#include <cstring>

namespace convcore {
namespace {

// Cache blocking: a KC x NR sliver of B (16 KiB) stays in L1 while an
// MC x KC block of A (96 KiB) stays in L2, and a KC x NC panel of B
// (up to 4 MiB) in the shared L3.
constexpr int64_t KC = 256;
constexpr int64_t MC = 96;    // multiple of MR
constexpr int64_t NC = 4096;  // multiple of NR

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

void pack_a(const float* A, int64_t a_rs, int64_t a_cs, int64_t mc, int64_t kc, float* dst) {
  for (int64_t i0 = 0; i0 < mc; i0 += kGemmMR) {
    const int64_t mr = std::min(kGemmMR, mc - i0);
    const float* src = A + i0 * a_rs;
    if (a_rs == 1 && mr == kGemmMR) {
      // Column-major A (a transposed operand): each panel column is contiguous.
      for (int64_t p = 0; p < kc; ++p)
        std::memcpy(dst + p * kGemmMR, src + p * a_cs, kGemmMR * sizeof(float));
    } else {
      for (int64_t p = 0; p < kc; ++p) {
        float* d = dst + p * kGemmMR;
        for (int64_t i = 0; i < mr; ++i) d[i] = src[i * a_rs + p * a_cs];
        for (int64_t i = mr; i < kGemmMR; ++i) d[i] = 0.0f;
      }
    }
    dst += kc * kGemmMR;
  }
}

void pack_b(const float* B, int64_t b_rs, int64_t b_cs, int64_t kc, int64_t nc, float* dst) {
  for (int64_t j0 = 0; j0 < nc; j0 += kGemmNR) {
    const int64_t nr = std::min(kGemmNR, nc - j0);
    const float* src = B + j0 * b_cs;
    if (b_cs == 1 && nr == kGemmNR) {
      for (int64_t p = 0; p < kc; ++p)
        std::memcpy(dst + p * kGemmNR, src + p * b_rs, kGemmNR * sizeof(float));
    } else if (b_rs == 1) {
      // Transposed B: walk each source column contiguously.
      for (int64_t j = 0; j < nr; ++j) {
        const float* col = src + j * b_cs;
        for (int64_t p = 0; p < kc; ++p) dst[p * kGemmNR + j] = col[p];
      }
      for (int64_t j = nr; j < kGemmNR; ++j)
        for (int64_t p = 0; p < kc; ++p) dst[p * kGemmNR + j] = 0.0f;
    } else {
      for (int64_t p = 0; p < kc; ++p) {
        float* d = dst + p * kGemmNR;
        for (int64_t j = 0; j < nr; ++j) d[j] = src[p * b_rs + j * b_cs];
        for (int64_t j = nr; j < kGemmNR; ++j) d[j] = 0.0f;
      }
    }
    dst += kc * kGemmNR;
  }
}

}  // namespace

int64_t gemm_workspace_floats(int64_t M, int64_t N, int64_t K) {
  const int64_t kc = std::min(KC, std::max<int64_t>(K, 1));
  const int64_t mc = std::min(MC, round_up(std::max<int64_t>(M, 1), kGemmMR));
  const int64_t nc = std::min(NC, round_up(std::max<int64_t>(N, 1), kGemmNR));
  return kc * (mc + nc);
}

void gemm_f32(gemm_ukernel_fn ukernel, int64_t M, int64_t N, int64_t K, const float* A,
              int64_t a_rs, int64_t a_cs, const float* B, int64_t b_rs, int64_t b_cs, float* C,
              int64_t ldc, bool accumulate, float* work, bool copy_a) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; ++i) std::memset(C + i * ldc, 0, size_t(N) * sizeof(float));
    return;
  }
  const int64_t kc_max = std::min(KC, K);
  const int64_t mc_max = std::min(MC, round_up(M, kGemmMR));
  // In place, A must be read with unit stride along one of its dimensions.
  const bool pack = copy_a || (a_rs != 1 && a_cs != 1);
  float* a_pack = work;
  float* b_pack = work + kc_max * mc_max;
  for (int64_t jc = 0; jc < N; jc += NC) {
    const int64_t nc = std::min(NC, N - jc);
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = std::min(KC, K - pc);
      const bool acc = accumulate || pc > 0;
      pack_b(B + pc * b_rs + jc * b_cs, b_rs, b_cs, kc, nc, b_pack);
      for (int64_t ic = 0; ic < M; ic += MC) {
        const int64_t mc = std::min(MC, M - ic);
        const float* a_block = A + ic * a_rs + pc * a_cs;
        if (pack) pack_a(a_block, a_rs, a_cs, mc, kc, a_pack);
        for (int64_t jr = 0; jr < nc; jr += kGemmNR) {
          const int64_t nr = std::min(kGemmNR, nc - jr);
          const float* bp = b_pack + (jr / kGemmNR) * kc * kGemmNR;
          for (int64_t ir = 0; ir < mc; ir += kGemmMR) {
            const int64_t mr = std::min(kGemmMR, mc - ir);
            float* c = C + (ic + ir) * ldc + jc + jr;
            if (pack)
              ukernel(kc, a_pack + (ir / kGemmMR) * kc * kGemmMR, 1, kGemmMR, bp, c, ldc, mr, nr,
                      acc);
            else
              ukernel(kc, a_block + ir * a_rs, a_rs, a_cs, bp, c, ldc, mr, nr, acc);
          }
        }
      }
    }
  }
}

}  // namespace convcore
