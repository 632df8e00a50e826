// convcore geometry: the one place that decides whether a call is valid and
// what shape its result has.  The CPU drivers, the CUDA path and the Python
// layer all go through these functions, so an error message is written once
// and always names the argument it is about.
//
// Vocabulary (used everywhere in convcore):
//   N batch, C input channels, H x W input size, K output channels,
//   R x S kernel size, G groups, P x Q output size.  Layout is NCHW, float32,
//   C-contiguous; weights are K x (C/G) x R x S.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace convcore {

// Raised for every invalid argument; the bindings turn it into ValueError.
class ArgumentError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Multiplies sizes, raising ArgumentError naming `what` on int64 overflow or
// when the product exceeds the largest array convcore will index.
int64_t checked_mul(int64_t a, int64_t b, const char* what);
int64_t checked_add(int64_t a, int64_t b, const char* what);
int64_t checked_numel(const int64_t* dims, int ndim, const char* what);

// "(2, 3, 4)": how shapes are written in every error message.
std::string shape_string(const int64_t* dims, size_t n);
inline std::string shape_string(const std::vector<int64_t>& dims) {
  return shape_string(dims.data(), dims.size());
}
// A shape given as a list of sizes (e.g. input_shape): `count` sizes (0: any
// number), each >= 0, with an element count that fits; else ArgumentError
// naming `name`.
std::vector<int64_t> checked_shape(const std::vector<int64_t>& sizes, const char* name,
                                   size_t count);

struct Conv2dGeometry {
  int64_t N = 0, C = 0, H = 0, W = 0;  // input
  int64_t K = 0, R = 0, S = 0;         // weight: K x C/G x R x S
  int64_t G = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
  int64_t dil_h = 1, dil_w = 1;
  int64_t P = 0, Q = 0;  // output size

  int64_t Cg() const { return C / G; }  // input channels per group
  int64_t Kg() const { return K / G; }  // output channels per group
  int64_t input_numel() const { return N * C * H * W; }
  int64_t output_numel() const { return N * K * P * Q; }
  int64_t weight_numel() const { return K * Cg() * R * S; }
  // Multiply-adds of the forward pass (each backward pass has as many).
  double macs() const { return double(N) * K * P * Q * Cg() * R * S; }
  // Compact problem name, as python/convcore/problems.py writes it, e.g.
  // n128_c32_h28_w28_k64_r3_s1_p1 (_d<dilation> and _g<groups> only when not 1).
  std::string name() const;
};

// Validates a convolution and computes its output size.  Shapes are those of
// the arrays: input (N, C, H, W) and weight (K, C/G, R, S).  Padding is given
// per side; 'same' is resolved by `same_padding` before this is called.
Conv2dGeometry make_conv2d_geometry(const int64_t input_shape[4], const int64_t weight_shape[4],
                                    int64_t stride_h, int64_t stride_w, int64_t pad_top,
                                    int64_t pad_bottom, int64_t pad_left, int64_t pad_right,
                                    int64_t dil_h, int64_t dil_w, int64_t groups);

// PyTorch's padding='same': total = dilation * (kernel - 1), the smaller half
// before and the extra element after.  Only valid with stride 1.
void same_padding(int64_t kernel, int64_t dilation, int64_t stride, const char* dim_name,
                  int64_t* before, int64_t* after);

struct Pool2dGeometry {
  int64_t N = 0, C = 0, H = 0, W = 0;
  int64_t kernel_h = 1, kernel_w = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dil_h = 1, dil_w = 1;
  bool ceil_mode = false;
  int64_t P = 0, Q = 0;

  int64_t planes() const { return N * C; }
  std::string name() const;
};

// Validates max pooling on an (N, C, H, W) input and computes its output
// size with PyTorch's rules (padding at most half the kernel; with ceil_mode
// the last window must start inside the input or the left padding).
Pool2dGeometry make_pool2d_geometry(const int64_t input_shape[4], int64_t kernel_h,
                                    int64_t kernel_w, int64_t stride_h, int64_t stride_w,
                                    int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w,
                                    bool ceil_mode);

// Validates max_pool2d_backward's shapes: input_shape (N, C, H, W) with C, H,
// W >= 1, and grad_output (N, C, P, Q) with P, Q >= 1.  Only the sizes are
// set: the backward pass scatters through the indices whatever the kernel was.
Pool2dGeometry make_pool2d_backward_geometry(const std::vector<int64_t>& input_shape,
                                             const std::vector<int64_t>& grad_output_shape);

// Batch normalisation over the channels of an (N, C, H, W) input: statistics
// per channel over the M = N*H*W values of its N planes of H x W.
struct BatchNorm2dGeometry {
  int64_t N = 0, C = 0, H = 0, W = 0;

  int64_t HW() const { return H * W; }
  int64_t M() const { return N * H * W; }  // values per channel
  int64_t planes() const { return N * C; }
  // Compact problem name, as python/convcore/problems.py writes it: bn_n100_c32_h28_w28.
  std::string name() const;
};

// Validates batch normalisation of an (N, C, H, W) input.  In training mode
// each channel needs more than one value (N*H*W > 1), as in PyTorch: the
// message names `input` and its shape.
BatchNorm2dGeometry make_batchnorm2d_geometry(const int64_t input_shape[4], bool training);

// A fully connected layer, y = x w^T + b: x (M x K) with M the product of
// the input's leading dimensions, w (N x K), y (M x N).
struct LinearGeometry {
  int64_t M = 0, K = 0, N = 0;

  double macs() const { return double(M) * double(K) * double(N); }
  // Compact problem name: linear_m100_k192_n120.
  std::string name() const;
};

// Validates linear(input, weight): input (..., in_features) with at least one
// dimension, weight (out_features, in_features).  Messages name the argument.
LinearGeometry make_linear_geometry(const std::vector<int64_t>& input_shape,
                                    const std::vector<int64_t>& weight_shape);

enum class PadMode { Constant, Reflect, Replicate, Circular };

// Parses 'constant' | 'reflect' | 'replicate' | 'circular'.
PadMode parse_pad_mode(const std::string& mode);
const char* pad_mode_name(PadMode mode);

struct Pad2dGeometry {
  int64_t planes = 0;  // product of all leading dimensions
  int64_t H = 0, W = 0;
  int64_t pad_left = 0, pad_right = 0, pad_top = 0, pad_bottom = 0;  // may be negative (crop)
  PadMode mode = PadMode::Constant;
  int64_t OH = 0, OW = 0;

  std::string name() const;  // the mode's name
};

// Validates padding of the last two dimensions (H, W) of an array whose
// leading dimensions multiply to `planes`.
Pad2dGeometry make_pad2d_geometry(int64_t planes, int64_t H, int64_t W, int64_t pad_left,
                                  int64_t pad_right, int64_t pad_top, int64_t pad_bottom,
                                  PadMode mode);
// The same for an array of shape `shape` (at least 2 dimensions; the leading
// ones are flattened into planes) and a mode given by name.
Pad2dGeometry make_pad2d_geometry(const std::vector<int64_t>& shape, int64_t pad_left,
                                  int64_t pad_right, int64_t pad_top, int64_t pad_bottom,
                                  const std::string& mode);

}  // namespace convcore
