// The small ops a training step needs besides convolution and pooling, on the
// GPU: ReLU forward and backward, element-wise product and in-place sum,
// softmax cross-entropy with its gradient, and the Adam and SGD updates.
//
// ReLU, the product, the sum and the optimiser steps are bitwise equal to
// the numpy code they replace in python/convcore/nn.py and optim.py: every
// float operation is one IEEE round-to-nearest operation in the numpy
// code's order.  The cross-entropy agrees within rounding only: expf and
// log differ from numpy's by an ulp or so, and it sums each row (and the
// batch's losses) left to right where numpy sums pairwise.  Optimiser
// arguments must not overlap (the bindings check).  The explicit
// __fmul_rn / __fadd_rn intrinsics keep nvcc from contracting a*b+c into
// an FMA (one rounding instead of two), which would break that equality.
//
// The per-element arithmetic lives in __host__ __device__ functions so the
// host emulation (emulation/emulate_kernels.cu) replays it on the CPU.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "common/runtime.h"
#include "cuda/cuda_api.h"
#include "cuda/cuda_common.h"

namespace convcore {
namespace cuda {
namespace {

// One IEEE float32 operation each, never fused.  On the host (emulation) the
// C++ compiler targets baseline x86-64 without FMA and with
// -ffp-contract=off in ISO C++ mode, so plain operators round the same way.
__host__ __device__ inline float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
__host__ __device__ inline float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
__host__ __device__ inline float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
__host__ __device__ inline float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
__host__ __device__ inline float sqrt_rn(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

// numpy.maximum(x, 0): NaN propagates, -0.0 becomes +0.0.
__host__ __device__ inline float relu_value(float x) { return (x > 0.0f || x != x) ? x : 0.0f; }

// numpy.multiply(dy, y > 0): a multiplication, so NaN * 0 stays NaN and
// -3 * 0 is -0.0, as on the CPU.
__host__ __device__ inline float relu_grad_value(float dy, float y) {
  return mul_rn(dy, y > 0.0f ? 1.0f : 0.0f);
}

// ---- optimisers: the float32 operation sequence of optim.py's numpy code ----

__host__ __device__ inline void adam_element(const AdamConstants& k, float& p, float g, float& m,
                                             float& v) {
  if (k.weight_decay != 0.0f) g = add_rn(g, mul_rn(p, k.weight_decay));     // g = g + p * wd
  m = add_rn(m, mul_rn(sub_rn(g, m), k.one_minus_beta1));                   // m.lerp_(g, 1 - beta1)
  v = add_rn(mul_rn(v, k.beta2), mul_rn(mul_rn(g, k.one_minus_beta2), g));  // v*b2 + (g*(1-b2))*g
  const float denom = add_rn(div_rn(sqrt_rn(v), k.bias_correction2_sqrt), k.eps);
  p = add_rn(p, mul_rn(div_rn(m, denom), k.neg_step_size));  // p += (m / denom) * -step_size
}

__host__ __device__ inline void sgd_element(const SgdConstants& k, float& p, float g, float* buf) {
  if (k.weight_decay != 0.0f) g = add_rn(g, mul_rn(p, k.weight_decay));
  if (buf != nullptr) {
    float b;
    if (k.first)
      b = g;
    else
      b = add_rn(mul_rn(*buf, k.momentum), mul_rn(g, k.one_minus_dampening));
    *buf = b;
    g = k.nesterov ? add_rn(g, mul_rn(b, k.momentum)) : b;
  }
  p = add_rn(p, mul_rn(g, k.neg_lr));
}

// ---- cross-entropy: one row per thread ------------------------------------

// Softmax cross-entropy of row `row` as nn.CrossEntropyLoss computes it:
// z = logits - max, e = exp(z), s = sum e, loss = log(s) - z[t] (double),
// grad = (e / s - onehot(t)) * scale.  The prediction is numpy's argmax
// (the first maximum; the first NaN wins).  A target outside [0, C) gives a
// NaN loss and a NaN gradient row instead of a wild read (the bindings
// check targets before launching).
__host__ __device__ inline void cross_entropy_row(int64_t row, int64_t C,
                                                  const float* __restrict__ logits,
                                                  const int64_t* __restrict__ target, float scale,
                                                  float* __restrict__ grad,
                                                  double* __restrict__ row_loss,
                                                  int64_t* __restrict__ pred) {
  const float* z = logits + row * C;
  float* gr = grad + row * C;
  int64_t best = 0;
  float mx = z[0];
  bool nan_seen = z[0] != z[0];
  for (int64_t j = 1; j < C; ++j) {
    const float v = z[j];
    if (nan_seen) break;
    if (v != v) {
      best = j;
      mx = v;
      nan_seen = true;
    } else if (v > mx) {
      best = j;
      mx = v;
    }
  }
  pred[row] = best;
  float s = 0.0f;
  for (int64_t j = 0; j < C; ++j) {
    const float e = expf(sub_rn(z[j], mx));
    gr[j] = e;
    s = add_rn(s, e);
  }
  const int64_t t = target[row];
  if (t < 0 || t >= C) {
    row_loss[row] = NAN;
    for (int64_t j = 0; j < C; ++j) gr[j] = NAN;
    return;
  }
  row_loss[row] = log(double(s)) - double(sub_rn(z[t], mx));
  for (int64_t j = 0; j < C; ++j) {
    float p = div_rn(gr[j], s);
    if (j == t) p = sub_rn(p, 1.0f);
    gr[j] = mul_rn(p, scale);
  }
}

// ---- kernels ------------------------------------------------------------------

__global__ void relu_fwd_f32__cuda(int64_t n, const float* x, float* y) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = relu_value(x[i]);
}

__global__ void relu_bwd_f32__cuda(int64_t n, const float* dy, const float* y, float* dx) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = relu_grad_value(dy[i], y[i]);
}

__global__ void mul_f32__cuda(int64_t n, const float* a, const float* b, float* out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = mul_rn(a[i], b[i]);
}

__global__ void add_inplace_f32__cuda(int64_t n, float* dst, const float* src) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = add_rn(dst[i], src[i]);
}

__global__ void cross_entropy_f32__cuda(int64_t N, int64_t C, const float* __restrict__ logits,
                                        const int64_t* __restrict__ target, float scale,
                                        float* __restrict__ grad, double* __restrict__ row_loss,
                                        int64_t* __restrict__ pred) {
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < N;
       r += int64_t(gridDim.x) * blockDim.x)
    cross_entropy_row(r, C, logits, target, scale, grad, row_loss, pred);
}

__global__ void adam_f32__cuda(int64_t n, AdamConstants k, float* __restrict__ p,
                               const float* __restrict__ g, float* __restrict__ m,
                               float* __restrict__ v) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    adam_element(k, p[i], g[i], m[i], v[i]);
}

__global__ void sgd_f32__cuda(int64_t n, SgdConstants k, float* __restrict__ p,
                              const float* __restrict__ g, float* __restrict__ buf) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    sgd_element(k, p[i], g[i], buf != nullptr ? buf + i : nullptr);
}

}  // namespace

void relu_forward(const float* x, float* y, int64_t n) {
  if (n == 0) return;
  note_kernel("relu_fwd", "relu_fwd_f32__cuda", "");
  relu_fwd_f32__cuda<<<detail::blocks_for(n), detail::kThreads, 0, cudaStreamLegacy>>>(n, x, y);
  detail::check_launch("relu_fwd_f32__cuda");
}

void relu_backward(const float* dy, const float* y, float* dx, int64_t n) {
  if (n == 0) return;
  note_kernel("relu_bwd", "relu_bwd_f32__cuda", "");
  relu_bwd_f32__cuda<<<detail::blocks_for(n), detail::kThreads, 0, cudaStreamLegacy>>>(n, dy, y,
                                                                                       dx);
  detail::check_launch("relu_bwd_f32__cuda");
}

void multiply(const float* a, const float* b, float* out, int64_t n) {
  if (n == 0) return;
  note_kernel("mul", "mul_f32__cuda", "");
  mul_f32__cuda<<<detail::blocks_for(n), detail::kThreads, 0, cudaStreamLegacy>>>(n, a, b, out);
  detail::check_launch("mul_f32__cuda");
}

void add_inplace(float* dst, const float* src, int64_t n) {
  if (n == 0) return;
  note_kernel("add_", "add_inplace_f32__cuda", "");
  add_inplace_f32__cuda<<<detail::blocks_for(n), detail::kThreads, 0, cudaStreamLegacy>>>(n, dst,
                                                                                          src);
  detail::check_launch("add_inplace_f32__cuda");
}

void cross_entropy(int64_t N, int64_t C, const float* logits, const int64_t* target, float scale,
                   float* grad, double* row_loss, int64_t* pred) {
  if (N == 0) return;
  note_kernel("cross_entropy", "cross_entropy_f32__cuda", "");
  // One row per thread: rows are short (10 classes here) and there are few
  // of them, so a block of 128 keeps more SMs busy than 256.
  cross_entropy_f32__cuda<<<detail::blocks_for(N, 128), 128, 0, cudaStreamLegacy>>>(
      N, C, logits, target, scale, grad, row_loss, pred);
  detail::check_launch("cross_entropy_f32__cuda");
}

void adam_step(const AdamConstants& k, float* p, const float* g, float* m, float* v, int64_t n) {
  if (n == 0) return;
  note_kernel("adam", "adam_f32__cuda", "");
  adam_f32__cuda<<<detail::blocks_for(n), detail::kThreads, 0, cudaStreamLegacy>>>(n, k, p, g, m,
                                                                                   v);
  detail::check_launch("adam_f32__cuda");
}

void sgd_step(const SgdConstants& k, float* p, const float* g, float* buf, int64_t n) {
  if (n == 0) return;
  note_kernel("sgd", "sgd_f32__cuda", "");
  sgd_f32__cuda<<<detail::blocks_for(n), detail::kThreads, 0, cudaStreamLegacy>>>(n, k, p, g, buf);
  detail::check_launch("sgd_f32__cuda");
}

}  // namespace cuda
}  // namespace convcore
