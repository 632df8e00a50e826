// The rest of a training step on DeviceArrays: ReLU, the dropout multiply,
// gradient accumulation, the cross-entropy loss and the optimiser updates
// (kernels in csrc/cuda/train_ops.cu).
#include <pybind11/stl.h>

#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "bindings/cuda/device_array.h"

namespace convcore::pycuda {

using bindings::float_input;
using convcore::ArgumentError;

namespace {

void same_shape(const DeviceArray& a, const char* name, const DeviceArray& ref,
                const char* ref_name) {
  same_device(a, name, ref, ref_name);
  if (a.shape != ref.shape)
    throw ArgumentError(std::string(name) + ": expected shape " + shape_str(ref.shape) +
                        " (that of " + ref_name + "), got " + shape_str(a.shape));
}

DeviceArray relu_forward(const DeviceArray& x, bool inplace) {
  float_input(x, "input");
  py::gil_scoped_release release;
  cu::DeviceGuard guard(x.device());
  DeviceArray y = inplace ? x : new_array(x.device(), x.shape, DType::Float32);
  cu::relu_forward(fptr(x), mptr(y), x.numel());
  return y;
}

DeviceArray relu_backward(const DeviceArray& dy, const DeviceArray& y, bool inplace) {
  float_input(dy, "grad_output");
  float_input(y, "output");
  same_shape(y, "output", dy, "grad_output");
  py::gil_scoped_release release;
  cu::DeviceGuard guard(dy.device());
  DeviceArray dx = inplace ? dy : new_array(dy.device(), dy.shape, DType::Float32);
  cu::relu_backward(fptr(dy), fptr(y), mptr(dx), dy.numel());
  return dx;
}

DeviceArray multiply(const DeviceArray& a, const DeviceArray& b) {
  float_input(a, "a");
  float_input(b, "b");
  same_shape(b, "b", a, "a");
  py::gil_scoped_release release;
  cu::DeviceGuard guard(a.device());
  DeviceArray out = new_array(a.device(), a.shape, DType::Float32);
  cu::multiply(fptr(a), fptr(b), mptr(out), a.numel());
  return out;
}

void add_inplace(const DeviceArray& dst, const DeviceArray& src) {
  float_input(dst, "dst");
  float_input(src, "src");
  same_shape(src, "src", dst, "dst");
  py::gil_scoped_release release;
  cu::DeviceGuard guard(dst.device());
  cu::add_inplace(mptr(dst), fptr(src), dst.numel());
}

// (grad (N, C) on the device, the sum of the N row losses as a Python float,
// the N predicted classes as an int64 numpy array).  Waits for the device.
py::tuple cross_entropy(const DeviceArray& logits, const py::array& target, float scale) {
  float_input(logits, "logits", 2);
  const int64_t N = logits.shape[0], C = logits.shape[1];
  if (C < 1)
    throw ArgumentError("logits: expected at least one class, got shape " +
                        shape_str(logits.shape));
  if (!target.dtype().equal(py::dtype::of<int64_t>()) || target.ndim() != 1 || target.shape(0) != N)
    throw ArgumentError(
        "target: expected an int64 array of shape (" + std::to_string(N) + ",), got dtype " +
        py::str(target.dtype()).cast<std::string>() + " and " +
        shape_str(std::vector<int64_t>(target.shape(), target.shape() + target.ndim())));
  auto t = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(target);
  const int64_t* tp = t.data();
  for (int64_t i = 0; i < N; ++i)
    if (tp[i] < 0 || tp[i] >= C)
      throw ArgumentError("target: labels must be in [0, " + std::to_string(C) + "), got " +
                          std::to_string(tp[i]) + " at index " + std::to_string(i));
  py::array_t<int64_t> pred(N);
  int64_t* pp = pred.mutable_data();
  std::vector<double> row_loss(size_t(N), 0.0);
  DeviceArray grad;
  {
    py::gil_scoped_release release;
    const int dev = logits.device();
    cu::DeviceGuard guard(dev);
    grad = new_array(dev, {N, C}, DType::Float32);
    // One scratch block: targets in, then row losses and predictions out.
    auto scratch = cu::DeviceBuffer::allocate(dev, size_t(N) * 24);
    auto* d_target = static_cast<int64_t*>(scratch->data());
    auto* d_loss = reinterpret_cast<double*>(d_target + N);
    auto* d_pred = reinterpret_cast<int64_t*>(d_loss + N);
    if (N > 0) cu::copy_host_to_device(d_target, tp, size_t(N) * 8);
    cu::cross_entropy(N, C, fptr(logits), d_target, scale, mptr(grad), d_loss, d_pred);
    if (N > 0) {
      cu::copy_device_to_host(row_loss.data(), d_loss, size_t(N) * 8);
      cu::copy_device_to_host(pp, d_pred, size_t(N) * 8);
    }
  }
  double total = 0.0;
  for (double l : row_loss) total += l;
  return py::make_tuple(grad, total, pred);
}

// The optimiser kernels read and write through restrict pointers: their
// arrays must be distinct memory.
void require_disjoint(std::initializer_list<std::pair<const DeviceArray*, const char*>> arrays) {
  for (auto a = arrays.begin(); a != arrays.end(); ++a)
    for (auto b = a + 1; b != arrays.end(); ++b) {
      if (a->first == nullptr || b->first == nullptr) continue;
      const char* pa = static_cast<const char*>(a->first->data);
      const char* pb = static_cast<const char*>(b->first->data);
      if (pa < pb + b->first->nbytes() && pb < pa + a->first->nbytes())
        throw ArgumentError(std::string(a->second) + " and " + b->second +
                            ": expected separate arrays, got overlapping memory");
    }
}

void adam_step(const DeviceArray& p, const DeviceArray& g, const DeviceArray& m,
               const DeviceArray& v, float one_minus_beta1, float beta2, float one_minus_beta2,
               float bias_correction2_sqrt, float eps, float neg_step_size, float weight_decay) {
  float_input(p, "param");
  float_input(g, "grad");
  float_input(m, "exp_avg");
  float_input(v, "exp_avg_sq");
  same_shape(g, "grad", p, "param");
  same_shape(m, "exp_avg", p, "param");
  same_shape(v, "exp_avg_sq", p, "param");
  require_disjoint({{&p, "param"}, {&g, "grad"}, {&m, "exp_avg"}, {&v, "exp_avg_sq"}});
  const cu::AdamConstants k{one_minus_beta1,       beta2, one_minus_beta2,
                            bias_correction2_sqrt, eps,   neg_step_size,
                            weight_decay};
  py::gil_scoped_release release;
  cu::DeviceGuard guard(p.device());
  cu::adam_step(k, mptr(p), fptr(g), mptr(m), mptr(v), p.numel());
}

void sgd_step(const DeviceArray& p, const DeviceArray& g, const DeviceArray* buf, float momentum,
              float one_minus_dampening, float weight_decay, float neg_lr, bool nesterov,
              bool first) {
  float_input(p, "param");
  float_input(g, "grad");
  same_shape(g, "grad", p, "param");
  if (buf != nullptr) {
    float_input(*buf, "momentum_buffer");
    same_shape(*buf, "momentum_buffer", p, "param");
  }
  require_disjoint({{&p, "param"}, {&g, "grad"}, {buf, "momentum_buffer"}});
  const cu::SgdConstants k{momentum, one_minus_dampening, weight_decay, neg_lr, nesterov, first};
  py::gil_scoped_release release;
  cu::DeviceGuard guard(p.device());
  cu::sgd_step(k, mptr(p), fptr(g), buf != nullptr ? mptr(*buf) : nullptr, p.numel());
}

}  // namespace

void bind_train_ops(py::module_ m) {
  m.def("relu_forward", &relu_forward, py::arg("input"), py::arg("inplace"));
  m.def("relu_backward", &relu_backward, py::arg("grad_output"), py::arg("output"),
        py::arg("inplace"));
  m.def("multiply", &multiply, py::arg("a"), py::arg("b"));
  m.def("add_", &add_inplace, py::arg("dst"), py::arg("src"));
  m.def("cross_entropy", &cross_entropy, py::arg("logits"), py::arg("target"), py::arg("scale"));
  m.def("adam_step", &adam_step, py::arg("param"), py::arg("grad"), py::arg("exp_avg"),
        py::arg("exp_avg_sq"), py::arg("one_minus_beta1"), py::arg("beta2"),
        py::arg("one_minus_beta2"), py::arg("bias_correction2_sqrt"), py::arg("eps"),
        py::arg("neg_step_size"), py::arg("weight_decay"));
  m.def("sgd_step", &sgd_step, py::arg("param"), py::arg("grad"), py::arg("momentum_buffer"),
        py::arg("momentum"), py::arg("one_minus_dampening"), py::arg("weight_decay"),
        py::arg("neg_lr"), py::arg("nesterov"), py::arg("first"));
}

}  // namespace convcore::pycuda
