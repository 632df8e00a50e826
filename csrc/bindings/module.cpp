// pybind11 layer: type and layout checks on the numpy arrays (bindings/
// checks.h, shared with the GPU bindings), output allocation, and the GIL
// released around every kernel.  All argument
// semantics (int-or-tuple, 'same', defaults) live in python/convcore; all
// shape validity rules live in common/geometry.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <omp.h>

#include <cmath>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "bindings/checks.h"
#include "common/cpu.h"
#include "common/geometry.h"
#include "common/runtime.h"
#include "ops/ops.h"
#include "ops/relu.h"

#if defined(CONVCORE_WITH_CUDA)
#include "bindings/cuda_bindings.h"
#endif

namespace py = pybind11;
using convcore::ArgumentError;

namespace {

using convcore::bindings::bias_input;
using convcore::bindings::conv_geometry;
using convcore::bindings::float_input;
using convcore::bindings::index_input;
using convcore::bindings::require_shape;

py::array_t<float> new_float(std::vector<py::ssize_t> shape) { return py::array_t<float>(shape); }

// A new float32 array of `shape` when `wanted` (*data points at its
// elements), else None (*data null): the optional outputs of a backward.
py::object optional_float(bool wanted, std::vector<py::ssize_t> shape, float** data) {
  *data = nullptr;
  if (!wanted) return py::none();
  auto a = new_float(std::move(shape));
  *data = a.mutable_data();
  return std::move(a);
}

py::array_t<float> conv2d_forward(const py::array& input, const py::array& weight,
                                  const std::optional<py::array>& bias, int64_t sh, int64_t sw,
                                  int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t dil_h,
                                  int64_t dil_w, int64_t groups, bool relu) {
  const auto g = conv_geometry(input, weight, sh, sw, pt, pb, pl, pr, dil_h, dil_w, groups);
  const float* b = bias ? bias_input(*bias, g.K) : nullptr;
  auto out = new_float({g.N, g.K, g.P, g.Q});
  const float* x = static_cast<const float*>(input.data());
  const float* w = static_cast<const float*>(weight.data());
  float* y = out.mutable_data();
  {
    py::gil_scoped_release release;
    convcore::conv2d_forward(g, x, w, b, y, relu);
  }
  return out;
}

// The output of the ReLU that followed a layer (None: no ReLU): float32 of
// grad_output's shape (`shape`, nd dimensions), and grad_output, which the
// mask (relu_output > 0) is applied to in place, writable.  Null for None.
const float* relu_output_input(const py::array& grad_output,
                               const std::optional<py::array>& relu_output, const int64_t* shape,
                               int nd) {
  if (!relu_output) return nullptr;
  const float* y = float_input(*relu_output, "relu_output", nd);
  require_shape(*relu_output, "relu_output", shape, nd);
  if (!grad_output.writeable())
    throw ArgumentError(
        "grad_output: the array is read-only, but the ReLU mask is applied to it in place");
  return y;
}

// relu_output: see relu_output_input; the mask is fused with the bias
// gradient.
py::tuple conv2d_backward(const py::array& grad_output, const py::array& input,
                          const py::array& weight, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                          int64_t pl, int64_t pr, int64_t dil_h, int64_t dil_w, int64_t groups,
                          bool need_input, bool need_weight, bool need_bias,
                          const std::optional<py::array>& relu_output) {
  const auto g = conv_geometry(input, weight, sh, sw, pt, pb, pl, pr, dil_h, dil_w, groups);
  const float* dy = float_input(grad_output, "grad_output", 4);
  const int64_t out_shape[4] = {g.N, g.K, g.P, g.Q};
  require_shape(grad_output, "grad_output", out_shape, 4);
  const float* relu_y = relu_output_input(grad_output, relu_output, out_shape, 4);
  const float* x = static_cast<const float*>(input.data());
  const float* w = static_cast<const float*>(weight.data());
  float *dx, *dwp, *db;
  py::object gi = optional_float(need_input, {g.N, g.C, g.H, g.W}, &dx);
  py::object gw = optional_float(need_weight, {g.K, g.Cg(), g.R, g.S}, &dwp);
  py::object gb = optional_float(need_bias, {g.K}, &db);
  {
    py::gil_scoped_release release;
    // The mask first; the data and weight gradients then read the masked
    // dy.  The bias gradient is summed by the weight-gradient kernel where
    // it does so in its own pass over dy, else with the mask pass (one pass
    // for both), else alone: the same sums with or without the fused ReLU.
    const bool bias_in_weight = dwp && db && convcore::conv2d_weight_gradient_sums_bias(g);
    float* db_apart = bias_in_weight ? nullptr : db;
    if (relu_y) convcore::conv2d_relu_backward_bias(g, const_cast<float*>(dy), relu_y, db_apart);
    if (dx) convcore::conv2d_backward_data(g, dy, w, dx);
    if (dwp) convcore::conv2d_backward_weight(g, dy, x, dwp, bias_in_weight ? db : nullptr);
    if (db_apart && !relu_y) convcore::conv2d_backward_bias(g, dy, db_apart);
  }
  return py::make_tuple(gi, gw, gb);
}

// linear: input (..., in_features) with at least one dimension, weight
// (out_features, in_features); the result has input's leading dimensions.
convcore::LinearGeometry linear_geometry(const py::array& input, const py::array& weight) {
  float_input(input, "input");
  float_input(weight, "weight", 2);
  return convcore::make_linear_geometry(convcore::bindings::shape_of(input),
                                        convcore::bindings::shape_of(weight));
}

// input's shape with its last dimension replaced by n.
std::vector<py::ssize_t> linear_shape(const py::array& input, int64_t n) {
  std::vector<py::ssize_t> shape(input.shape(), input.shape() + input.ndim());
  shape.back() = n;
  return shape;
}

py::array_t<float> linear_forward(const py::array& input, const py::array& weight,
                                  const std::optional<py::array>& bias, bool relu) {
  const auto g = linear_geometry(input, weight);
  const float* b = nullptr;
  if (bias) {
    b = float_input(*bias, "bias", 1);
    const int64_t n[1] = {g.N};
    require_shape(*bias, "bias", n, 1);
  }
  auto out = new_float(linear_shape(input, g.N));
  const float* x = static_cast<const float*>(input.data());
  const float* w = static_cast<const float*>(weight.data());
  float* y = out.mutable_data();
  {
    py::gil_scoped_release release;
    convcore::linear_forward(g, x, w, b, y, relu);
  }
  return out;
}

py::tuple linear_backward(const py::array& grad_output, const py::array& input,
                          const py::array& weight, bool need_input, bool need_weight,
                          bool need_bias, const std::optional<py::array>& relu_output) {
  const auto g = linear_geometry(input, weight);
  const float* dy = float_input(grad_output, "grad_output");
  const std::vector<py::ssize_t> out_dims = linear_shape(input, g.N);
  const std::vector<int64_t> out_shape(out_dims.begin(), out_dims.end());
  const int nd = int(out_shape.size());
  require_shape(grad_output, "grad_output", out_shape.data(), nd);
  const float* relu_y = relu_output_input(grad_output, relu_output, out_shape.data(), nd);
  const float* x = static_cast<const float*>(input.data());
  const float* w = static_cast<const float*>(weight.data());
  float *dx, *dwp, *db;
  py::object gi = optional_float(
      need_input, std::vector<py::ssize_t>(input.shape(), input.shape() + input.ndim()), &dx);
  py::object gw = optional_float(need_weight, {g.N, g.K}, &dwp);
  py::object gb = optional_float(need_bias, {g.N}, &db);
  {
    py::gil_scoped_release release;
    if (relu_y) convcore::relu_mask_inplace(const_cast<float*>(dy), relu_y, g.M * g.N);
    if (dx) convcore::linear_backward_data(g, dy, w, dx);
    if (dwp) convcore::linear_backward_weight(g, dy, x, dwp);
    if (db) convcore::linear_backward_bias(g, dy, db);
  }
  return py::make_tuple(gi, gw, gb);
}

// (grad (N, C), the sum of the N row losses in row order as a Python float,
// the N predicted classes as int64): the CUDA binding's contract, on the host.
py::tuple cross_entropy(const py::array& logits, const py::array& target, float scale) {
  const float* z = float_input(logits, "logits", 2);
  const int64_t N = logits.shape(0), C = logits.shape(1);
  if (C < 1)
    throw ArgumentError("logits: expected at least one class, got shape " +
                        convcore::shape_string(convcore::bindings::shape_of(logits)));
  const int64_t* t = index_input(target, "target", 1);
  const int64_t n[1] = {N};
  require_shape(target, "target", n, 1);
  for (int64_t i = 0; i < N; ++i)
    if (t[i] < 0 || t[i] >= C)
      throw ArgumentError("target: labels must be in [0, " + std::to_string(C) + "), got " +
                          std::to_string(t[i]) + " at index " + std::to_string(i));
  auto grad = new_float({N, C});
  py::array_t<int64_t> pred(N);
  std::vector<double> row_loss(size_t(N), 0.0);
  float* g = grad.mutable_data();
  int64_t* p = pred.mutable_data();
  {
    py::gil_scoped_release release;
    convcore::cross_entropy(N, C, z, t, scale, g, row_loss.data(), p);
  }
  double total = 0.0;
  for (double l : row_loss) total += l;
  return py::make_tuple(grad, total, pred);
}

// An optional float32 array of exactly `shape` (4-D); null for None.
const float* optional_input(const std::optional<py::array>& a, const char* name,
                            const int64_t shape[4]) {
  if (!a) return nullptr;
  const float* p = float_input(*a, name, 4);
  require_shape(*a, name, shape, 4);
  return p;
}

py::tuple max_pool2d_forward(const py::array& input, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                             int64_t ph, int64_t pw, int64_t dil_h, int64_t dil_w, bool ceil_mode,
                             bool return_indices) {
  const float* x = float_input(input, "input", 4);
  const auto in = convcore::bindings::shape_of(input);
  const auto g =
      convcore::make_pool2d_geometry(in.data(), kh, kw, sh, sw, ph, pw, dil_h, dil_w, ceil_mode);
  auto out = new_float({g.N, g.C, g.P, g.Q});
  float* y = out.mutable_data();
  // Without return_indices the kernels skip the int64 stream (a third of the bytes).
  py::object idx = py::none();
  int64_t* ip = nullptr;
  if (return_indices) {
    py::array_t<int64_t> a(std::vector<py::ssize_t>{g.N, g.C, g.P, g.Q});
    ip = a.mutable_data();
    idx = a;
  }
  {
    py::gil_scoped_release release;
    convcore::maxpool2d_forward(g, x, y, ip);
  }
  return py::make_tuple(out, idx);
}

// relu_input: the pooled input when it is a ReLU's output (None: no ReLU);
// the gradient then also passes back through that ReLU.
py::array_t<float> max_pool2d_backward(const py::array& grad_output, const py::array& indices,
                                       const std::vector<int64_t>& input_shape,
                                       const std::optional<py::array>& relu_input) {
  const float* dy = float_input(grad_output, "grad_output", 4);
  const int64_t* ip = index_input(indices, "indices", 4);
  const std::vector<int64_t> go(grad_output.shape(), grad_output.shape() + 4);
  const auto g = convcore::make_pool2d_backward_geometry(input_shape, go);
  require_shape(indices, "indices", go.data(), 4);
  const int64_t in_shape[4] = {g.N, g.C, g.H, g.W};
  const float* relu_y = optional_input(relu_input, "relu_input", in_shape);
  auto out = new_float({g.N, g.C, g.H, g.W});
  float* dx = out.mutable_data();
  {
    py::gil_scoped_release release;
    convcore::maxpool2d_backward(g, dy, ip, dx, relu_y);
  }
  return out;
}

// ---------------------------------------------------------------------------
// The training path's pool: each window's maximum kept as one byte, its tap
// (ops.h, maxpool2d_forward_offsets), dilation 1.
// ---------------------------------------------------------------------------

convcore::Pool2dGeometry offsets_pool_geometry(const int64_t in[4], int64_t kh, int64_t kw,
                                               int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                                               bool ceil_mode) {
  const auto g = convcore::make_pool2d_geometry(in, kh, kw, sh, sw, ph, pw, 1, 1, ceil_mode);
  if (!convcore::maxpool2d_offsets_fit(g))
    throw ArgumentError("kernel_size: window offsets hold at most 256 taps a window, got (" +
                        std::to_string(kh) + " x " + std::to_string(kw) +
                        "); use max_pool2d_forward's int64 indices");
  return g;
}

py::array_t<uint8_t> new_offsets(const convcore::Pool2dGeometry& g) {
  return py::array_t<uint8_t>(std::vector<py::ssize_t>{g.N, g.C, g.P, g.Q});
}

// The training pool's window offsets: a uint8 array of `shape`, C-contiguous.
const uint8_t* offsets_input(const py::array& offsets, const int64_t shape[4]) {
  if (!offsets.dtype().equal(py::dtype::of<uint8_t>()))
    throw py::type_error(
        "offsets: expected a uint8 array (max_pool2d_offsets_forward's), got dtype " +
        py::str(offsets.dtype()).cast<std::string>());
  convcore::bindings::check_ndim(offsets, "offsets", 4);
  require_shape(offsets, "offsets", shape, 4);
  return static_cast<const uint8_t*>(offsets.data());
}

py::tuple max_pool2d_offsets_forward(const py::array& input, int64_t kh, int64_t kw, int64_t sh,
                                     int64_t sw, int64_t ph, int64_t pw, bool ceil_mode) {
  const float* x = float_input(input, "input", 4);
  const auto in = convcore::bindings::shape_of(input);
  const auto g = offsets_pool_geometry(in.data(), kh, kw, sh, sw, ph, pw, ceil_mode);
  auto out = new_float({g.N, g.C, g.P, g.Q});
  auto off = new_offsets(g);
  float* y = out.mutable_data();
  uint8_t* o = off.mutable_data();
  {
    py::gil_scoped_release release;
    convcore::maxpool2d_forward_offsets(g, x, y, o);
  }
  return py::make_tuple(out, off);
}

// output: the forward's output when the pooled input was a ReLU's output
// (None: no ReLU); the gradient then also passes back through that ReLU.
py::array_t<float> max_pool2d_offsets_backward(const py::array& grad_output,
                                               const py::array& offsets,
                                               const std::vector<int64_t>& input_shape, int64_t kh,
                                               int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                                               int64_t pw, bool ceil_mode,
                                               const std::optional<py::array>& output) {
  const float* dy = float_input(grad_output, "grad_output", 4);
  if (input_shape.size() != 4)
    throw ArgumentError("input_shape: expected (N, C, H, W), got " +
                        std::to_string(input_shape.size()) + " sizes");
  const auto g = offsets_pool_geometry(input_shape.data(), kh, kw, sh, sw, ph, pw, ceil_mode);
  const int64_t out_shape[4] = {g.N, g.C, g.P, g.Q};
  require_shape(grad_output, "grad_output", out_shape, 4);
  const uint8_t* o = offsets_input(offsets, out_shape);
  const float* y = optional_input(output, "output", out_shape);
  auto out = new_float({g.N, g.C, g.H, g.W});
  float* dx = out.mutable_data();
  {
    py::gil_scoped_release release;
    convcore::maxpool2d_backward_offsets(g, dy, o, dx, y);
  }
  return out;
}

// max_pool2d_offsets_forward(max(conv2d_forward(...) , 0), ...) in one call.
py::tuple conv2d_relu_max_pool2d_forward(const py::array& input, const py::array& weight,
                                         const std::optional<py::array>& bias, int64_t sh,
                                         int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                                         int64_t dil_h, int64_t dil_w, int64_t groups, int64_t kh,
                                         int64_t kw, int64_t psh, int64_t psw, int64_t pph,
                                         int64_t ppw, bool ceil_mode) {
  const auto g = conv_geometry(input, weight, sh, sw, pt, pb, pl, pr, dil_h, dil_w, groups);
  const float* b = bias ? bias_input(*bias, g.K) : nullptr;
  const int64_t conv_out[4] = {g.N, g.K, g.P, g.Q};
  const auto pg = offsets_pool_geometry(conv_out, kh, kw, psh, psw, pph, ppw, ceil_mode);
  auto out = new_float({pg.N, pg.C, pg.P, pg.Q});
  auto off = new_offsets(pg);
  const float* x = static_cast<const float*>(input.data());
  const float* w = static_cast<const float*>(weight.data());
  float* y = out.mutable_data();
  uint8_t* o = off.mutable_data();
  {
    py::gil_scoped_release release;
    convcore::conv2d_relu_maxpool2d_forward(g, pg, x, w, b, y, o);
  }
  return py::make_tuple(out, off);
}

// The weight and bias gradients of conv2d_relu_max_pool2d_forward's
// convolution from the pool's gradient (grad_output, offsets and output, the
// pool's output: the ReLU's mask), without its input gradient.
py::tuple conv2d_max_pool2d_weight_backward(const py::array& grad_output, const py::array& offsets,
                                            const std::optional<py::array>& output,
                                            const py::array& input, const py::array& weight,
                                            int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                                            int64_t pl, int64_t pr, int64_t dil_h, int64_t dil_w,
                                            int64_t groups, int64_t kh, int64_t kw, int64_t psh,
                                            int64_t psw, int64_t pph, int64_t ppw, bool ceil_mode,
                                            bool need_weight, bool need_bias) {
  const auto g = conv_geometry(input, weight, sh, sw, pt, pb, pl, pr, dil_h, dil_w, groups);
  const int64_t conv_out[4] = {g.N, g.K, g.P, g.Q};
  const auto pg = offsets_pool_geometry(conv_out, kh, kw, psh, psw, pph, ppw, ceil_mode);
  const int64_t pooled[4] = {pg.N, pg.C, pg.P, pg.Q};
  const float* dy = float_input(grad_output, "grad_output", 4);
  require_shape(grad_output, "grad_output", pooled, 4);
  const uint8_t* o = offsets_input(offsets, pooled);
  const float* y = optional_input(output, "output", pooled);
  const float* x = static_cast<const float*>(input.data());
  float *dwp, *db;
  py::object gw = optional_float(need_weight, {g.K, g.Cg(), g.R, g.S}, &dwp);
  py::object gb = optional_float(need_bias, {g.K}, &db);
  {
    py::gil_scoped_release release;
    convcore::conv2d_backward_weight_through_maxpool2d(g, pg, dy, o, y, x, dwp, db);
  }
  return py::make_tuple(gw, gb);
}

py::array_t<float> pad_forward(const py::array& input, int64_t l, int64_t r, int64_t t, int64_t b,
                               const std::string& mode, float value) {
  const float* x = float_input(input, "input");
  std::vector<int64_t> shape(input.shape(), input.shape() + input.ndim());
  const auto g = convcore::make_pad2d_geometry(shape, l, r, t, b, mode);
  std::vector<py::ssize_t> out_shape(shape.begin(), shape.end());
  out_shape[out_shape.size() - 2] = g.OH;
  out_shape.back() = g.OW;
  auto out = new_float(out_shape);
  float* y = out.mutable_data();
  {
    py::gil_scoped_release release;
    convcore::pad2d_forward(g, x, y, value);
  }
  return out;
}

py::array_t<float> pad_backward(const py::array& grad_output,
                                const std::vector<int64_t>& input_shape, int64_t l, int64_t r,
                                int64_t t, int64_t b, const std::string& mode) {
  if (input_shape.size() < 2)
    throw ArgumentError("input_shape: expected at least 2 sizes (..., H, W), got " +
                        std::to_string(input_shape.size()));
  const auto shape = convcore::checked_shape(input_shape, "input_shape", 0);
  const auto g = convcore::make_pad2d_geometry(shape, l, r, t, b, mode);
  const float* dy = float_input(grad_output, "grad_output", int(shape.size()));
  std::vector<int64_t> expected(shape);
  expected[expected.size() - 2] = g.OH;
  expected.back() = g.OW;
  require_shape(grad_output, "grad_output", expected.data(), int(expected.size()));
  auto out = new_float(std::vector<py::ssize_t>(shape.begin(), shape.end()));
  float* dx = out.mutable_data();
  {
    py::gil_scoped_release release;
    convcore::pad2d_backward(g, dy, dx);
  }
  return out;
}

// A float32 vector of the C channels (weight, bias, running and saved statistics).
const float* channel_vector(const py::array& a, const char* name, int64_t C) {
  const float* p = float_input(a, name, 1);
  if (a.shape(0) != C)
    throw ArgumentError(std::string(name) + ": expected shape (" + std::to_string(C) +
                        ",) to match the input's channels, got (" + std::to_string(a.shape(0)) +
                        ",)");
  return p;
}

float* writable_channel_vector(const py::array& a, const char* name, int64_t C) {
  const float* p = channel_vector(a, name, C);
  if (!a.writeable())
    throw ArgumentError(std::string(name) +
                        ": the array is read-only, but training updates it in place");
  return const_cast<float*>(p);
}

convcore::BatchNorm2dGeometry bn_geometry(const py::array& input, bool training) {
  float_input(input, "input", 4);
  const auto in = convcore::bindings::shape_of(input);
  return convcore::make_batchnorm2d_geometry(in.data(), training);
}

py::tuple batch_norm_forward(const py::array& input, const std::optional<py::array>& running_mean,
                             const std::optional<py::array>& running_var,
                             const std::optional<py::array>& weight,
                             const std::optional<py::array>& bias, bool training, double momentum,
                             double eps, bool relu) {
  const auto g = bn_geometry(input, training);
  if (running_mean.has_value() != running_var.has_value())
    throw ArgumentError(
        std::string(running_mean ? "running_var" : "running_mean") + ": expected an array when " +
        (running_mean ? "running_mean" : "running_var") + " is given (both or neither)");
  if (!training && !running_mean)
    throw ArgumentError(
        "running_mean: expected running_mean and running_var in evaluation mode "
        "(training=False)");
  if (!std::isfinite(eps) || eps < 0)
    throw ArgumentError("eps: expected a finite number >= 0, got " + std::to_string(eps));
  if (!std::isfinite(momentum))
    throw ArgumentError("momentum: expected a finite number, got " + std::to_string(momentum));
  const float* w = weight ? channel_vector(*weight, "weight", g.C) : nullptr;
  const float* b = bias ? channel_vector(*bias, "bias", g.C) : nullptr;
  float *rm = nullptr, *rv = nullptr;
  if (running_mean) {
    if (training) {
      rm = writable_channel_vector(*running_mean, "running_mean", g.C);
      rv = writable_channel_vector(*running_var, "running_var", g.C);
    } else {
      rm = const_cast<float*>(channel_vector(*running_mean, "running_mean", g.C));
      rv = const_cast<float*>(channel_vector(*running_var, "running_var", g.C));
    }
  }
  auto out = new_float({g.N, g.C, g.H, g.W});
  auto mean = new_float({g.C});
  auto invstd = new_float({g.C});
  const float* x = static_cast<const float*>(input.data());
  float* y = out.mutable_data();
  float* sm = mean.mutable_data();
  float* si = invstd.mutable_data();
  {
    py::gil_scoped_release release;
    convcore::batchnorm2d_forward(g, x, w, b, rm, rv, training, momentum, eps, relu, y, sm, si);
  }
  return py::make_tuple(out, mean, invstd);
}

py::tuple batch_norm_backward(const py::array& grad_output, const py::array& input,
                              const std::optional<py::array>& weight, const py::array& save_mean,
                              const py::array& save_invstd, const std::optional<py::array>& output,
                              bool training, bool need_input, bool need_weight, bool need_bias) {
  const auto g = bn_geometry(input, training);
  const int64_t shape[4] = {g.N, g.C, g.H, g.W};
  const float* dy = float_input(grad_output, "grad_output", 4);
  require_shape(grad_output, "grad_output", shape, 4);
  const float* yr = nullptr;
  if (output) {
    yr = float_input(*output, "output", 4);
    require_shape(*output, "output", shape, 4);
  }
  const float* w = weight ? channel_vector(*weight, "weight", g.C) : nullptr;
  const float* sm = channel_vector(save_mean, "save_mean", g.C);
  const float* si = channel_vector(save_invstd, "save_invstd", g.C);
  const float* x = static_cast<const float*>(input.data());
  float *dx, *dwp, *db;
  py::object gi = optional_float(need_input, {g.N, g.C, g.H, g.W}, &dx);
  py::object gw = optional_float(need_weight, {g.C}, &dwp);
  py::object gb = optional_float(need_bias, {g.C}, &db);
  {
    py::gil_scoped_release release;
    convcore::batchnorm2d_backward(g, dy, x, w, sm, si, yr, training, dx, dwp, db);
  }
  return py::make_tuple(gi, gw, gb);
}

// The optimiser steps' arrays: float32, C-contiguous, `ref`'s size,
// writable where the step writes, and no two overlapping (the kernels read
// and write each element once, in place).
struct StepArray {
  const py::array* a;
  const char* name;
  bool written;
};

float* step_array(const StepArray& s, const py::array& ref) {
  float_input(*s.a, s.name);
  if (s.a != &ref && s.a->size() != ref.size())
    throw ArgumentError(std::string(s.name) + ": expected " + std::to_string(ref.size()) +
                        " elements (those of param), got " + std::to_string(s.a->size()));
  if (s.written && !s.a->writeable())
    throw ArgumentError(std::string(s.name) +
                        ": the array is read-only, but this op writes into it");
  return static_cast<float*>(const_cast<void*>(s.a->data()));
}

void require_disjoint(std::initializer_list<StepArray> arrays) {
  for (auto a = arrays.begin(); a != arrays.end(); ++a)
    for (auto b = a + 1; b != arrays.end(); ++b) {
      const auto* pa = static_cast<const char*>(a->a->data());
      const auto* pb = static_cast<const char*>(b->a->data());
      const auto na = a->a->nbytes(), nb = b->a->nbytes();
      if (na > 0 && nb > 0 && pa < pb + nb && pb < pa + na)
        throw ArgumentError(std::string(a->name) + " and " + b->name +
                            ": expected separate arrays, got overlapping memory");
    }
}

void adam_step(const py::array& p, const py::array& g, const py::array& m, const py::array& v,
               float one_minus_beta1, float beta2, float one_minus_beta2,
               float bias_correction2_sqrt, float eps, float neg_step_size, float weight_decay) {
  const StepArray ap{&p, "param", true}, ag{&g, "grad", false}, am{&m, "exp_avg", true},
      av{&v, "exp_avg_sq", true};
  float* pp = step_array(ap, p);
  float* gp = step_array(ag, p);
  float* mp = step_array(am, p);
  float* vp = step_array(av, p);
  require_disjoint({ap, ag, am, av});
  const convcore::AdamConstants k{one_minus_beta1,       beta2, one_minus_beta2,
                                  bias_correction2_sqrt, eps,   neg_step_size,
                                  weight_decay};
  py::gil_scoped_release release;
  convcore::adam_step(p.size(), k, pp, gp, mp, vp);
}

void sgd_step(const py::array& p, const py::array& g, const std::optional<py::array>& buf,
              float momentum, float one_minus_dampening, float weight_decay, float neg_lr,
              bool nesterov, bool first) {
  const StepArray ap{&p, "param", true}, ag{&g, "grad", false};
  float* pp = step_array(ap, p);
  float* gp = step_array(ag, p);
  float* bp = nullptr;
  if (buf) {
    const StepArray ab{&*buf, "momentum_buffer", true};
    bp = step_array(ab, p);
    require_disjoint({ap, ag, ab});
  } else {
    require_disjoint({ap, ag});
  }
  const convcore::SgdConstants k{momentum, one_minus_dampening, weight_decay, neg_lr, nesterov,
                                 first};
  py::gil_scoped_release release;
  convcore::sgd_step(p.size(), k, pp, gp, bp);
}

py::dict build_info() {
  py::dict d;
  d["version"] = CONVCORE_VERSION;
  d["compiler"] = CONVCORE_COMPILER;
  std::vector<std::string> isas = {"scalar", "portable"};
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
  isas.push_back("avx2");
#endif
#if defined(CONVCORE_HAVE_AVX512_KERNELS)
  isas.push_back("avx512");
#endif
  d["isa_compiled"] = isas;
  d["isa_detected"] = convcore::isa_name(convcore::detected_isa());
  d["isa_active"] = convcore::isa_name(convcore::active_isa());
  d["openmp"] = std::to_string(_OPENMP);
  d["num_threads"] = convcore::get_num_threads();
#if defined(CONVCORE_WITH_CUDA)
  d["cuda"] = true;
  d["cuda_architectures"] = std::string(CONVCORE_CUDA_ARCHS);
  d["cuda_version"] = std::string(CONVCORE_CUDA_VERSION);
#else
  d["cuda"] = false;
  d["cuda_architectures"] = std::string();
  d["cuda_version"] = std::string();
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() =
      "convcore compiled core: NCHW float32 convolution, padding, max-pooling and batch-norm "
      "kernels";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ArgumentError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  m.def("conv2d_forward", &conv2d_forward, py::arg("input"), py::arg("weight"), py::arg("bias"),
        py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_top"), py::arg("pad_bottom"),
        py::arg("pad_left"), py::arg("pad_right"), py::arg("dilation_h"), py::arg("dilation_w"),
        py::arg("groups"), py::arg("relu") = false);
  m.def("conv2d_backward", &conv2d_backward, py::arg("grad_output"), py::arg("input"),
        py::arg("weight"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_top"),
        py::arg("pad_bottom"), py::arg("pad_left"), py::arg("pad_right"), py::arg("dilation_h"),
        py::arg("dilation_w"), py::arg("groups"), py::arg("need_input"), py::arg("need_weight"),
        py::arg("need_bias"), py::arg("relu_output") = py::none());
  m.def("linear_forward", &linear_forward, py::arg("input"), py::arg("weight"), py::arg("bias"),
        py::arg("relu") = false);
  m.def("linear_backward", &linear_backward, py::arg("grad_output"), py::arg("input"),
        py::arg("weight"), py::arg("need_input"), py::arg("need_weight"), py::arg("need_bias"),
        py::arg("relu_output") = py::none());
  m.def("cross_entropy", &cross_entropy, py::arg("logits"), py::arg("target"), py::arg("scale"));
  m.def("max_pool2d_forward", &max_pool2d_forward, py::arg("input"), py::arg("kernel_h"),
        py::arg("kernel_w"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"),
        py::arg("pad_w"), py::arg("dilation_h"), py::arg("dilation_w"), py::arg("ceil_mode"),
        py::arg("return_indices") = true);
  m.def("max_pool2d_backward", &max_pool2d_backward, py::arg("grad_output"), py::arg("indices"),
        py::arg("input_shape"), py::arg("relu_input") = py::none());
  m.def("max_pool2d_offsets_forward", &max_pool2d_offsets_forward, py::arg("input"),
        py::arg("kernel_h"), py::arg("kernel_w"), py::arg("stride_h"), py::arg("stride_w"),
        py::arg("pad_h"), py::arg("pad_w"), py::arg("ceil_mode"));
  m.def("max_pool2d_offsets_backward", &max_pool2d_offsets_backward, py::arg("grad_output"),
        py::arg("offsets"), py::arg("input_shape"), py::arg("kernel_h"), py::arg("kernel_w"),
        py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"),
        py::arg("ceil_mode"), py::arg("output") = py::none());
  m.def("conv2d_relu_max_pool2d_forward", &conv2d_relu_max_pool2d_forward, py::arg("input"),
        py::arg("weight"), py::arg("bias"), py::arg("stride_h"), py::arg("stride_w"),
        py::arg("pad_top"), py::arg("pad_bottom"), py::arg("pad_left"), py::arg("pad_right"),
        py::arg("dilation_h"), py::arg("dilation_w"), py::arg("groups"), py::arg("kernel_h"),
        py::arg("kernel_w"), py::arg("pool_stride_h"), py::arg("pool_stride_w"),
        py::arg("pool_pad_h"), py::arg("pool_pad_w"), py::arg("ceil_mode"));
  m.def("conv2d_max_pool2d_weight_backward", &conv2d_max_pool2d_weight_backward,
        py::arg("grad_output"), py::arg("offsets"), py::arg("output"), py::arg("input"),
        py::arg("weight"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_top"),
        py::arg("pad_bottom"), py::arg("pad_left"), py::arg("pad_right"), py::arg("dilation_h"),
        py::arg("dilation_w"), py::arg("groups"), py::arg("kernel_h"), py::arg("kernel_w"),
        py::arg("pool_stride_h"), py::arg("pool_stride_w"), py::arg("pool_pad_h"),
        py::arg("pool_pad_w"), py::arg("ceil_mode"), py::arg("need_weight"), py::arg("need_bias"));
  m.def("pad_forward", &pad_forward, py::arg("input"), py::arg("left"), py::arg("right"),
        py::arg("top"), py::arg("bottom"), py::arg("mode"), py::arg("value"));
  m.def("pad_backward", &pad_backward, py::arg("grad_output"), py::arg("input_shape"),
        py::arg("left"), py::arg("right"), py::arg("top"), py::arg("bottom"), py::arg("mode"));

  m.def("batch_norm_forward", &batch_norm_forward, py::arg("input"), py::arg("running_mean"),
        py::arg("running_var"), py::arg("weight"), py::arg("bias"), py::arg("training"),
        py::arg("momentum"), py::arg("eps"), py::arg("relu"));
  m.def("batch_norm_backward", &batch_norm_backward, py::arg("grad_output"), py::arg("input"),
        py::arg("weight"), py::arg("save_mean"), py::arg("save_invstd"), py::arg("output"),
        py::arg("training"), py::arg("need_input"), py::arg("need_weight"), py::arg("need_bias"));

  m.def("adam_step", &adam_step, py::arg("param"), py::arg("grad"), py::arg("exp_avg"),
        py::arg("exp_avg_sq"), py::arg("one_minus_beta1"), py::arg("beta2"),
        py::arg("one_minus_beta2"), py::arg("bias_correction2_sqrt"), py::arg("eps"),
        py::arg("neg_step_size"), py::arg("weight_decay"));
  m.def("sgd_step", &sgd_step, py::arg("param"), py::arg("grad"), py::arg("momentum_buffer"),
        py::arg("momentum"), py::arg("one_minus_dampening"), py::arg("weight_decay"),
        py::arg("neg_lr"), py::arg("nesterov"), py::arg("first"));

  m.def(
      "same_padding",
      [](int64_t kernel, int64_t dilation, int64_t stride, const std::string& dim) {
        int64_t before = 0, after = 0;
        convcore::same_padding(kernel, dilation, stride, dim.c_str(), &before, &after);
        return py::make_tuple(before, after);
      },
      py::arg("kernel"), py::arg("dilation"), py::arg("stride"), py::arg("dim"));
  m.def("set_num_threads", &convcore::set_num_threads, py::arg("n"));
  m.def("get_num_threads", &convcore::get_num_threads);
  m.def(
      "set_max_isa", [](const std::string& name) { convcore::set_max_isa(name.c_str()); },
      py::arg("name"));
  m.def("active_isa", [] { return std::string(convcore::isa_name(convcore::active_isa())); });
  m.def("detected_isa", [] { return std::string(convcore::isa_name(convcore::detected_isa())); });
  m.def("last_kernel", &convcore::last_kernel, py::arg("op"));
  m.def("implementations", &convcore::list_implementations, py::arg("op"));
  m.def("set_disabled_implementations", &convcore::set_disabled_implementations, py::arg("names"));
  m.def("disabled_implementations", &convcore::disabled_kernels);
  m.def("build_info", &build_info);

#if defined(CONVCORE_WITH_CUDA)
  convcore::bind_cuda(m.def_submodule("cuda", "CUDA kernels"));
#endif
}
