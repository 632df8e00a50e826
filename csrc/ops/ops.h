// The C++ API of convcore's CPU ops: validated geometry in, raw contiguous
// float32 NCHW buffers in and out.  Each op walks an ordered list of
// implementations and runs the first applicable one under the active ISA
// cap; the scalar reference ends every list.  These functions may run many
// threads (OpenMP) but never touch Python.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/geometry.h"
#include "kernels/optim_ukernels.h"

namespace convcore {

// y (N x K x P x Q) = conv2d(x, w) + b; b may be null.  With relu, y =
// max(conv2d(x, w) + b, 0), applied by each implementation to the block it
// has just written: bitwise conv2d then ReLU (NaN stays NaN, -0 becomes +0).
void conv2d_forward(const Conv2dGeometry& g, const float* x, const float* w, const float* b,
                    float* y, bool relu = false);
// y and off (N x K x P' x Q') = maxpool2d_forward_offsets(pool,
// max(conv2d(x, w) + b, 0)), pool's input being the convolution's output
// (N x K x P x Q): the Conv2d + ReLU + MaxPool2d of a training step, bitwise
// the three ops.  Where the row-segment kernel runs the convolution, each
// image is pooled as soon as it is computed, from a per-thread buffer, and
// the full-size activation is never written.
void conv2d_relu_maxpool2d_forward(const Conv2dGeometry& g, const Pool2dGeometry& pool,
                                   const float* x, const float* w, const float* b, float* y,
                                   uint8_t* off);
// dw and db (either may be null) of a convolution whose output went through
// a ReLU and a max pool, from the pool's gradient dy_pool, its offsets and
// its output y (the ReLU's mask; may be null: no ReLU): the first layer of a
// training step, which needs no input gradient.  Bitwise
// maxpool2d_backward_offsets then conv2d_backward_weight; where the
// row-segment kernel runs the weight gradient, the convolution's gradient is
// made a few images at a time where the kernel reads it, never full size.
void conv2d_backward_weight_through_maxpool2d(const Conv2dGeometry& g, const Pool2dGeometry& pool,
                                              const float* dy_pool, const uint8_t* off,
                                              const float* y, const float* x, float* dw, float* db);
// dx (N x C x H x W) from dy (N x K x P x Q) and w.
void conv2d_backward_data(const Conv2dGeometry& g, const float* dy, const float* w, float* dx);
// dw (K x C/G x R x S) from dy and x.  Bitwise identical for any thread
// count.  db (may be null): the bias gradient too, summed from dy in the same
// pass where conv2d_weight_gradient_sums_bias(g), else by
// conv2d_backward_bias after.
void conv2d_backward_weight(const Conv2dGeometry& g, const float* dy, const float* x, float* dw,
                            float* db = nullptr);
// Whether the weight-gradient kernel selected for g sums the bias gradient
// itself (the channels-in-lanes one, unless its bias entry is disabled).
bool conv2d_weight_gradient_sums_bias(const Conv2dGeometry& g);
// db (K) = sum of dy over N, P, Q.
void conv2d_backward_bias(const Conv2dGeometry& g, const float* dy, float* db);
// The gradient through a ReLU whose output is y (N x K x P x Q): dy *= (y >
// 0) in place, and db (may be null) = the bias gradient of the masked dy, in
// one pass (each channel summed right after it is masked).  Bitwise the
// unfused multiply by the bool mask followed by conv2d_backward_bias.
void conv2d_relu_backward_bias(const Conv2dGeometry& g, float* dy, const float* y, float* db);

// Fully connected layer, row-major: y (M x N) = x (M x K) w^T + b, w (N x K),
// b (N) may be null; with relu, max(., 0) on each stored value (relu_f32).
void linear_forward(const LinearGeometry& g, const float* x, const float* w, const float* b,
                    float* y, bool relu = false);
// dx (M x K) = dy (M x N) w.
void linear_backward_data(const LinearGeometry& g, const float* dy, const float* w, float* dx);
// dw (N x K) = dy^T x.
void linear_backward_weight(const LinearGeometry& g, const float* dy, const float* x, float* dw);
// db (N) = the column sums of dy (M x N), each over the rows in order.  Every
// linear op is bitwise the same for any thread count.
void linear_backward_bias(const LinearGeometry& g, const float* dy, float* db);

// Softmax cross-entropy of N rows of C >= 1 logits against labels in [0, C)
// (kernels/ref/ref_kernels.h): grad (N x C), row_loss (N, double), pred (N).
void cross_entropy(int64_t N, int64_t C, const float* logits, const int64_t* target, float scale,
                   float* grad, double* row_loss, int64_t* pred);

// y and idx (N x C x P x Q) from x; idx may be null (values only, less traffic).
void maxpool2d_forward(const Pool2dGeometry& g, const float* x, float* y, int64_t* idx);
// dx (N x C x H x W) from dy and idx (both N x C x P x Q).  Throws
// ArgumentError naming `indices` if an index lies outside [0, H*W).
// relu_y (may be null; N x C x H x W): the pool's input when it is a ReLU's
// output; dx is then also passed back through that ReLU, dx *= (relu_y > 0)
// block by block while it is in cache: bitwise the unfused multiply by the
// bool mask.
void maxpool2d_backward(const Pool2dGeometry& g, const float* dy, const int64_t* idx, float* dx,
                        const float* relu_y = nullptr);

// The training path's compact form of the pool (dilation 1, at most 256
// taps a window: maxpool2d_offsets_fit): each window's maximum kept as one
// byte, its tap i * kernel_w + j from the window's top-left corner, instead
// of an int64 index -- the same maxima, scan order and NaN rule.
bool maxpool2d_offsets_fit(const Pool2dGeometry& g);
void maxpool2d_forward_offsets(const Pool2dGeometry& g, const float* x, float* y, uint8_t* off);
// The entry maxpool2d_forward_offsets would run on g, recorded once, as a
// function that runs it on the calling thread over `planes` planes of g's
// size (a fused caller's per-image epilogue).
using PoolPlanesFn = std::function<void(int64_t planes, const float* x, float* y, uint8_t* off)>;
PoolPlanesFn maxpool2d_forward_offsets_planes(const Pool2dGeometry& g);
// dx (N x C x H x W) from dy and off (N x C x P x Q), g the forward's full
// geometry.  y (may be null): the forward's output, when the pooled input
// was a ReLU's output; dx then also passes back through that ReLU -- the
// mask at each maximum is y > 0 there -- bitwise maxpool2d_backward with
// relu_y.  Throws ArgumentError naming `offsets` for a tap outside the
// kernel or the input.
void maxpool2d_backward_offsets(const Pool2dGeometry& g, const float* dy, const uint8_t* off,
                                float* dx, const float* y = nullptr);
// The entry maxpool2d_backward_offsets would run on g, recorded once, as a
// function that runs it on the calling thread over `planes` planes, the first
// of them plane number plane0 of g's (the one an error names).
using PoolBackwardPlanesFn = std::function<void(int64_t plane0, int64_t planes, const float* dy,
                                                const uint8_t* off, const float* y, float* dx)>;
PoolBackwardPlanesFn maxpool2d_backward_offsets_planes(const Pool2dGeometry& g);

void pad2d_forward(const Pad2dGeometry& g, const float* x, float* y, float value);
void pad2d_backward(const Pad2dGeometry& g, const float* dy, float* dx);

// Batch normalisation of x (N x C x H x W) per channel, y the same shape;
// weight and bias (C) may be null.  Training: the batch mean and biased
// variance over N, H, W; save_mean and save_invstd (C) get the mean and
// 1/sqrt(var + eps), and running_mean/running_var (C, may be null) are
// updated in place with the unbiased variance.  Eval: running_mean and
// running_var are used (and written to save_mean/save_invstd).  relu: y =
// max(normalised, 0).  Bitwise identical for any thread count.
void batchnorm2d_forward(const BatchNorm2dGeometry& g, const float* x, const float* weight,
                         const float* bias, float* running_mean, float* running_var, bool training,
                         double momentum, double eps, bool relu, float* y, float* save_mean,
                         float* save_invstd);
// Gradients of batchnorm2d_forward from dy (N x C x H x W) and the saved
// mean/invstd; y_relu (the forward output of a relu=True call, else null)
// masks dy where it is not positive.  dx, dweight, dbias may each be null
// (not wanted); dweight and dbias need weight's presence only in the caller.
void batchnorm2d_backward(const BatchNorm2dGeometry& g, const float* dy, const float* x,
                          const float* weight, const float* save_mean, const float* save_invstd,
                          const float* y_relu, bool training, float* dx, float* dweight,
                          float* dbias);

// torch.optim.Adam's step on n packed float32 elements (p, m, v in place
// from g) and torch.optim.SGD's (buf may be null: no momentum); the
// constants and the exact operation order are in kernels/optim_ukernels.h.
// Bitwise the numpy reference and the CUDA kernels for any thread count.
// The arrays must not overlap.
void adam_step(int64_t n, const AdamConstants& k, float* p, const float* g, float* m, float* v);
void sgd_step(int64_t n, const SgdConstants& k, float* p, const float* g, float* buf);

// Names of the implementations of an op, in the order they are tried.
std::vector<std::string> list_implementations(const std::string& op);
// Makes the kernel selection pass over these implementations (by name; an
// empty list restores the default).  Each name must be in some op's list and
// must not be a scalar reference (the entry that ends every list), else
// ArgumentError naming it.
void set_disabled_implementations(const std::vector<std::string>& names);

}  // namespace convcore
