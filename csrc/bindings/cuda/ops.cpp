// The ops of the functional API on DeviceArrays: the argument checks of the
// CPU bindings (bindings/checks.h), geometry from common/geometry before
// anything is allocated or launched, the GIL released around every launch.
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "bindings/cuda/device_array.h"

namespace convcore::pycuda {

using bindings::float_input;
using bindings::index_input;
using bindings::require_shape;
using convcore::ArgumentError;

namespace {

Conv2dGeometry conv_geometry(const DeviceArray& input, const DeviceArray& weight, int64_t sh,
                             int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                             int64_t dil_h, int64_t dil_w, int64_t groups) {
  float_input(input, "input", 4);
  float_input(weight, "weight", 4);
  same_device(weight, "weight", input, "input");
  return bindings::conv_geometry(input, weight, sh, sw, pt, pb, pl, pr, dil_h, dil_w, groups);
}

DeviceArray conv2d_forward(const DeviceArray& input, const DeviceArray& weight,
                           const DeviceArray* bias, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                           int64_t pl, int64_t pr, int64_t dil_h, int64_t dil_w, int64_t groups) {
  const auto g = conv_geometry(input, weight, sh, sw, pt, pb, pl, pr, dil_h, dil_w, groups);
  const float* b = nullptr;
  if (bias != nullptr) {
    float_input(*bias, "bias", 1);
    same_device(*bias, "bias", input, "input");
    b = bindings::bias_input(*bias, g.K);
  }
  py::gil_scoped_release release;
  cu::DeviceGuard guard(input.device());
  DeviceArray out = new_array(input.device(), {g.N, g.K, g.P, g.Q}, DType::Float32);
  cu::conv2d_forward(g, fptr(input), fptr(weight), b, static_cast<float*>(out.data));
  return out;
}

py::tuple conv2d_backward(const DeviceArray& grad_output, const DeviceArray& input,
                          const DeviceArray& weight, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                          int64_t pl, int64_t pr, int64_t dil_h, int64_t dil_w, int64_t groups,
                          bool need_input, bool need_weight, bool need_bias) {
  const auto g = conv_geometry(input, weight, sh, sw, pt, pb, pl, pr, dil_h, dil_w, groups);
  float_input(grad_output, "grad_output", 4);
  same_device(grad_output, "grad_output", input, "input");
  const int64_t out_shape[4] = {g.N, g.K, g.P, g.Q};
  require_shape(grad_output, "grad_output", out_shape, 4);
  std::unique_ptr<DeviceArray> gi, gw, gb;
  {
    py::gil_scoped_release release;
    const int dev = input.device();
    cu::DeviceGuard guard(dev);
    if (need_input) gi.reset(new DeviceArray(new_array(dev, {g.N, g.C, g.H, g.W}, DType::Float32)));
    if (need_weight)
      gw.reset(new DeviceArray(new_array(dev, {g.K, g.Cg(), g.R, g.S}, DType::Float32)));
    if (need_bias) gb.reset(new DeviceArray(new_array(dev, {g.K}, DType::Float32)));
    const float* dy = fptr(grad_output);
    if (gi) cu::conv2d_backward_data(g, dy, fptr(weight), static_cast<float*>(gi->data));
    if (gw) cu::conv2d_backward_weight(g, dy, fptr(input), static_cast<float*>(gw->data));
    if (gb) cu::conv2d_backward_bias(g, dy, static_cast<float*>(gb->data));
  }
  auto wrap = [](std::unique_ptr<DeviceArray>& a) -> py::object {
    return a ? py::cast(*a) : py::none();
  };
  return py::make_tuple(wrap(gi), wrap(gw), wrap(gb));
}

py::tuple max_pool2d_forward(const DeviceArray& input, int64_t kh, int64_t kw, int64_t sh,
                             int64_t sw, int64_t ph, int64_t pw, int64_t dil_h, int64_t dil_w,
                             bool ceil_mode) {
  float_input(input, "input", 4);
  const auto g = convcore::make_pool2d_geometry(input.shape.data(), kh, kw, sh, sw, ph, pw, dil_h,
                                                dil_w, ceil_mode);
  DeviceArray out, idx;
  {
    py::gil_scoped_release release;
    cu::DeviceGuard guard(input.device());
    out = new_array(input.device(), {g.N, g.C, g.P, g.Q}, DType::Float32);
    idx = new_array(input.device(), {g.N, g.C, g.P, g.Q}, DType::Int64);
    cu::maxpool2d_forward(g, fptr(input), static_cast<float*>(out.data),
                          static_cast<int64_t*>(idx.data));
  }
  return py::make_tuple(out, idx);
}

DeviceArray max_pool2d_backward(const DeviceArray& grad_output, const DeviceArray& indices,
                                const std::vector<int64_t>& input_shape) {
  float_input(grad_output, "grad_output", 4);
  index_input(indices, "indices", 4);
  same_device(indices, "indices", grad_output, "grad_output");
  const std::vector<int64_t>& go = grad_output.shape;
  const auto g = convcore::make_pool2d_backward_geometry(input_shape, go);
  require_shape(indices, "indices", go.data(), 4);
  const std::vector<int64_t> in = {g.N, g.C, g.H, g.W};
  py::gil_scoped_release release;
  cu::DeviceGuard guard(grad_output.device());
  DeviceArray out = new_array(grad_output.device(), in, DType::Float32);
  cu::maxpool2d_backward(g, fptr(grad_output), static_cast<const int64_t*>(indices.data),
                         static_cast<float*>(out.data));
  return out;
}

DeviceArray pad_forward(const DeviceArray& input, int64_t l, int64_t r, int64_t t, int64_t b,
                        const std::string& mode, float value) {
  float_input(input, "input");
  const auto g = convcore::make_pad2d_geometry(input.shape, l, r, t, b, mode);
  std::vector<int64_t> out_shape = input.shape;
  out_shape[out_shape.size() - 2] = g.OH;
  out_shape.back() = g.OW;
  py::gil_scoped_release release;
  cu::DeviceGuard guard(input.device());
  DeviceArray out = new_array(input.device(), out_shape, DType::Float32);
  cu::pad2d_forward(g, fptr(input), static_cast<float*>(out.data), value);
  return out;
}

DeviceArray pad_backward(const DeviceArray& grad_output, const std::vector<int64_t>& input_shape,
                         int64_t l, int64_t r, int64_t t, int64_t b, const std::string& mode) {
  if (input_shape.size() < 2)
    throw ArgumentError("input_shape: expected at least 2 sizes (..., H, W), got " +
                        std::to_string(input_shape.size()));
  const auto shape = convcore::checked_shape(input_shape, "input_shape", 0);
  float_input(grad_output, "grad_output", int(shape.size()));
  const auto g = convcore::make_pad2d_geometry(shape, l, r, t, b, mode);
  std::vector<int64_t> expected(shape);
  expected[expected.size() - 2] = g.OH;
  expected.back() = g.OW;
  require_shape(grad_output, "grad_output", expected.data(), int(expected.size()));
  py::gil_scoped_release release;
  cu::DeviceGuard guard(grad_output.device());
  DeviceArray out = new_array(grad_output.device(), shape, DType::Float32);
  cu::pad2d_backward(g, fptr(grad_output), static_cast<float*>(out.data));
  return out;
}

}  // namespace

void bind_ops(py::module_ m) {
  m.def("conv2d_forward", &conv2d_forward, py::arg("input"), py::arg("weight"), py::arg("bias"),
        py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_top"), py::arg("pad_bottom"),
        py::arg("pad_left"), py::arg("pad_right"), py::arg("dilation_h"), py::arg("dilation_w"),
        py::arg("groups"));
  m.def("conv2d_backward", &conv2d_backward, py::arg("grad_output"), py::arg("input"),
        py::arg("weight"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_top"),
        py::arg("pad_bottom"), py::arg("pad_left"), py::arg("pad_right"), py::arg("dilation_h"),
        py::arg("dilation_w"), py::arg("groups"), py::arg("need_input"), py::arg("need_weight"),
        py::arg("need_bias"));
  m.def("max_pool2d_forward", &max_pool2d_forward, py::arg("input"), py::arg("kernel_h"),
        py::arg("kernel_w"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"),
        py::arg("pad_w"), py::arg("dilation_h"), py::arg("dilation_w"), py::arg("ceil_mode"));
  m.def("max_pool2d_backward", &max_pool2d_backward, py::arg("grad_output"), py::arg("indices"),
        py::arg("input_shape"));
  m.def("pad_forward", &pad_forward, py::arg("input"), py::arg("left"), py::arg("right"),
        py::arg("top"), py::arg("bottom"), py::arg("mode"), py::arg("value"));
  m.def("pad_backward", &pad_backward, py::arg("grad_output"), py::arg("input_shape"),
        py::arg("left"), py::arg("right"), py::arg("top"), py::arg("bottom"), py::arg("mode"));
}

}  // namespace convcore::pycuda
