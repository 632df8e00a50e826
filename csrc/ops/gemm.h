// Single-threaded packed GEMM driver (BLIS-style loop nest around a 6x16
// micro-kernel).  Callers parallelise over independent GEMMs or tiles, so
// the result never depends on the thread count.
#pragma once

#include <cstdint>

#include "kernels/gemm_ukernels.h"

namespace convcore {

// Floats of packing workspace gemm_f32 needs for these sizes.
int64_t gemm_workspace_floats(int64_t M, int64_t N, int64_t K);

// C[M x N] (+)= A[M x K] * B[K x N].  Element (i, p) of A is at
// A[i * a_rs + p * a_cs] and (p, j) of B at B[p * b_rs + j * b_cs], so any
// transposition is expressed through strides.  C is row-major with row
// stride ldc.  `work` holds gemm_workspace_floats(M, N, K) floats.  With
// copy_a false and A contiguous along a row or a column (a_cs or a_rs 1),
// the micro-kernel reads A where it lies instead of a packed copy: for the
// small A of a fully connected layer the copy costs more than it saves.  The
// results are the same bits either way.
void gemm_f32(gemm_ukernel_fn ukernel, int64_t M, int64_t N, int64_t K, const float* A,
              int64_t a_rs, int64_t a_cs, const float* B, int64_t b_rs, int64_t b_cs, float* C,
              int64_t ldc, bool accumulate, float* work, bool copy_a = true);

}  // namespace convcore
