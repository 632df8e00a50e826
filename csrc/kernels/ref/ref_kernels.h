// Scalar reference kernels: the plainest correct loops, one image or one
// plane per call, accumulating in double.  They are the last entry of every
// op's implementation list (always applicable) and the oracle the faster
// kernels are tested against.  No allocation, no threads, no exceptions.
#pragma once

#include <cstdint>

#include "common/geometry.h"

namespace convcore {

// y_n (K x P x Q) = conv(x_n (C x H x W), w) + b, one image.  b may be null.
void conv2d_fwd_f32__ref(const Conv2dGeometry& g, const float* x_n, const float* w, const float* b,
                         float* y_n);
// dx_n (C x H x W) = sum over outputs of dy_n * w, one image (overwrites dx_n).
void conv2d_bwd_data_f32__ref(const Conv2dGeometry& g, const float* dy_n, const float* w,
                              float* dx_n);
// dw[k0:k1] (output channels k0..k1-1 of K x C/G x R x S) = dy correlated
// with x over the whole batch.
void conv2d_bwd_weight_f32__ref(const Conv2dGeometry& g, const float* dy, const float* x,
                                int64_t k0, int64_t k1, float* dw);

// db[k] for one output channel k: the sum of dy[n][k][:] over the batch, in double.
float conv2d_bwd_bias_f32__ref(int64_t N, int64_t K, int64_t PQ, const float* dy, int64_t k);

// Fully connected layer (row-major): y rows m0..m1-1 of x w^T + b (b may be
// null); dx rows m0..m1-1 of dy w; dw rows j0..j1-1 of dy^T x.
void linear_fwd_f32__ref(const LinearGeometry& g, const float* x, const float* w, const float* b,
                         int64_t m0, int64_t m1, float* y);
void linear_bwd_data_f32__ref(const LinearGeometry& g, const float* dy, const float* w, int64_t m0,
                              int64_t m1, float* dx);
void linear_bwd_weight_f32__ref(const LinearGeometry& g, const float* dy, const float* x,
                                int64_t j0, int64_t j1, float* dw);

// Softmax cross-entropy of one row z (C >= 1 logits) against class t, as
// nn.CrossEntropyLoss and the CUDA kernel compute it: m = max z, e = exp(z -
// m), s = sum e (float, in order), row_loss = log(s) - (z[t] - m) in double,
// grad = (e / s - onehot(t)) * scale; pred = numpy's argmax (the first
// maximum, the first NaN).  t outside [0, C): NaN loss and gradient.
void cross_entropy_row_f32__ref(int64_t C, const float* z, int64_t t, float scale, float* grad,
                                double* row_loss, int64_t* pred);

// One plane: y (P x Q) and flat indices h*W + w (P x Q) of each window's max
// (idx may be null: values only).
void maxpool2d_fwd_f32__ref(const Pool2dGeometry& g, const float* x, float* y, int64_t* idx);
// One plane: dx (H x W) = scatter-add of dy (P x Q) through idx; dx is zeroed first.
void maxpool2d_bwd_f32__ref(int64_t out_size, int64_t in_size, const float* dy, const int64_t* idx,
                            float* dx);
// The training path's compact form, dilation 1 and kernel_h * kernel_w <=
// 256: each window's maximum as one byte, its tap i * kernel_w + j from the
// window's top-left corner (off may be null: values only).
void maxpool2d_fwd_f32_offsets__ref(const Pool2dGeometry& g, const float* x, float* y,
                                    uint8_t* off);
// One plane: dx (H x W) = scatter-add of dy through the taps off; with y
// (the forward's output; may be null: no ReLU), the pooled input was a
// ReLU's output and the sum at each maximum is multiplied by 0 where y is
// not > 0 -- bitwise the int64 scatter followed by the mask of that ReLU's
// output.  False, with nothing written, if a tap is outside the kernel or
// the input.
bool maxpool2d_bwd_f32_offsets__ref(const Pool2dGeometry& g, const float* dy, const uint8_t* off,
                                    const float* y, float* dx);

// Source index along one dimension for output position o, or -1 (constant fill).
int64_t pad_source_index(int64_t o, int64_t size, int64_t pad_before, int64_t pad_after,
                         PadMode mode);
// One plane: y (OH x OW) from x (H x W).
void pad2d_fwd_f32__ref(const Pad2dGeometry& g, const float* x, float* y, float value);
// One plane: dx (H x W) = adjoint of pad2d_fwd applied to dy (OH x OW); dx is zeroed first.
void pad2d_bwd_f32__ref(const Pad2dGeometry& g, const float* dy, float* dx);

// Batch normalisation, one plane of L values of one channel (the driver
// combines the planes of a channel in a fixed order).  Everything in double.
// Statistics: *sum = sum of x, *m2 = sum of (x - sum/L)^2 (two passes).
void batchnorm2d_stats_f32__ref(int64_t L, const float* x, double* sum, double* m2);
// y = x * alpha + beta, then max(y, 0) when relu.
void batchnorm2d_fwd_f32__ref(int64_t L, const float* x, float alpha, float beta, bool relu,
                              float* y);
// With g = dy (zero where y <= 0 when y is not null, the fused ReLU's mask):
// *sum_g = sum of g, *sum_gx = sum of g * (x - mean).
void batchnorm2d_bwd_reduce_f32__ref(int64_t L, const float* dy, const float* x, const float* y,
                                     float mean, double* sum_g, double* sum_gx);
// dx = g * k1 + (x - mean) * k2 + k3 with g as above; x null: dx = g * k1.
void batchnorm2d_bwd_data_f32__ref(int64_t L, const float* dy, const float* x, const float* y,
                                   float mean, float k1, float k2, float k3, float* dx);

}  // namespace convcore
