// pybind11 layer of the GPU path: the DeviceArray type, host/device copies,
// DLPack interchange, and the ops on device arrays with the same argument
// checks and messages as the CPU bindings in module.cpp.  Shape validity is
// decided by common/geometry before anything is allocated or launched.  The
// GIL is released around every copy, allocation of outputs, and launch.
#include "bindings/cuda_bindings.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/geometry.h"
#include "cuda/cuda_api.h"

namespace py = pybind11;
namespace cu = convcore::cuda;
using convcore::ArgumentError;

namespace {

// ---- DeviceArray ------------------------------------------------------------

enum class DType { Float32, Int64 };

const char* dtype_name(DType t) { return t == DType::Float32 ? "float32" : "int64"; }
size_t item_bytes(DType t) { return t == DType::Float32 ? 4 : 8; }

// A C-contiguous array in device memory.  Views (reshape) share the buffer.
struct DeviceArray {
  std::shared_ptr<cu::DeviceBuffer> buffer;
  void* data = nullptr;
  std::vector<int64_t> shape;
  DType dtype = DType::Float32;

  int device() const { return buffer->device(); }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  size_t nbytes() const { return size_t(numel()) * item_bytes(dtype); }
  int ndim() const { return int(shape.size()); }
};

// Shapes in messages are written as the CPU path writes them.
std::string shape_str(const int64_t* s, int n) { return convcore::shape_string(s, size_t(n)); }
std::string shape_str(const std::vector<int64_t>& s) { return convcore::shape_string(s); }

// Allocates an uninitialised array; the GIL is released by the caller.
DeviceArray new_array(int device, std::vector<int64_t> shape, DType dtype) {
  DeviceArray a;
  a.shape = std::move(shape);
  a.dtype = dtype;
  const int64_t numel = convcore::checked_numel(a.shape.data(), int(a.shape.size()), "shape");
  a.buffer = cu::DeviceBuffer::allocate(device, size_t(numel) * item_bytes(dtype));
  a.data = a.buffer->data();
  return a;
}


// The DType of a host array; false for any other dtype.
bool host_dtype(const py::array& host, DType* t) {
  if (host.dtype().equal(py::dtype::of<float>()))
    *t = DType::Float32;
  else if (host.dtype().equal(py::dtype::of<int64_t>()))
    *t = DType::Int64;
  else
    return false;
  return true;
}

// `host` as a C-contiguous, aligned array to copy from (itself when it is
// one; an explicit copy anyway, so a strided array is gathered first).
py::array copyable(const py::array& host) {
  if ((host.flags() & py::array::c_style) && (host.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_)) return host;
  return py::module_::import("numpy").attr("ascontiguousarray")(host);
}

DeviceArray to_device(const py::array& host, int device) {
  DType dtype;
  if (!host_dtype(host, &dtype))
    throw py::type_error("to_device: expected a float32 or int64 numpy array, got dtype " +
                         py::str(host.dtype()).cast<std::string>() +
                         " (convert with .astype(numpy.float32))");
  py::array src = copyable(host);
  std::vector<int64_t> shape(src.shape(), src.shape() + src.ndim());
  const void* p = src.data();
  DeviceArray a;
  {
    py::gil_scoped_release release;
    cu::DeviceGuard guard(device);
    a = new_array(device, shape, dtype);
    cu::copy_host_to_device(a.data, p, a.nbytes());
  }
  return a;
}

py::array to_numpy(const DeviceArray& a) {
  py::array out = a.dtype == DType::Float32
                      ? py::array(py::dtype::of<float>(), std::vector<py::ssize_t>(a.shape.begin(), a.shape.end()))
                      : py::array(py::dtype::of<int64_t>(), std::vector<py::ssize_t>(a.shape.begin(), a.shape.end()));
  void* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    cu::DeviceGuard guard(a.device());
    cu::copy_device_to_host(dst, a.data, a.nbytes());
  }
  return out;
}

DeviceArray copy_array(const DeviceArray& a) {
  py::gil_scoped_release release;
  cu::DeviceGuard guard(a.device());
  DeviceArray b = new_array(a.device(), a.shape, a.dtype);
  cu::copy_device_to_device(b.data, a.data, a.nbytes());
  return b;
}

DeviceArray empty_array(const std::vector<int64_t>& shape, const std::string& dtype, int device,
                        bool zero) {
  DType t;
  if (dtype == "float32")
    t = DType::Float32;
  else if (dtype == "int64")
    t = DType::Int64;
  else
    throw py::type_error("dtype: expected 'float32' or 'int64', got '" + dtype + "'");
  const auto s = convcore::checked_shape(shape, "shape", 0);
  py::gil_scoped_release release;
  cu::DeviceGuard guard(device);
  DeviceArray a = new_array(device, s, t);
  if (zero) cu::fill_zero(a.data, a.nbytes());
  return a;
}

DeviceArray reshape(const DeviceArray& a, const std::vector<int64_t>& shape) {
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1 && infer < 0) {
      infer = int(i);
    } else if (shape[i] < 0) {
      throw ArgumentError("reshape: sizes must be non-negative (one may be -1), got " + shape_str(shape));
    } else {
      known = convcore::checked_mul(known, shape[i], "reshape");
    }
  }
  std::vector<int64_t> s = shape;
  const int64_t n = a.numel();
  if (infer >= 0) {
    if (known == 0 || n % known != 0)
      throw ArgumentError("reshape: cannot reshape an array of " + std::to_string(n) +
                          " elements into shape " + shape_str(shape));
    s[infer] = n / known;
  } else if (known != n) {
    throw ArgumentError("reshape: cannot reshape an array of " + std::to_string(n) +
                        " elements into shape " + shape_str(shape));
  }
  DeviceArray b = a;
  b.shape = s;
  return b;
}

// Elements [start, start + prod(shape)) of `a` (flattened) as a view with
// `shape`: how a packed parameter buffer hands out one parameter.
DeviceArray subarray(const DeviceArray& a, int64_t start, const std::vector<int64_t>& shape) {
  const auto s = convcore::checked_shape(shape, "shape", 0);
  const int64_t n = convcore::checked_numel(s.data(), int(s.size()), "shape");
  if (start < 0 || start > a.numel() || n > a.numel() - start)
    throw ArgumentError("subarray: elements [" + std::to_string(start) + ", " + std::to_string(start) + " + " +
                        std::to_string(n) + ") lie outside an array of " + std::to_string(a.numel()) + " elements");
  DeviceArray b = a;
  b.shape = s;
  b.data = static_cast<char*>(a.data) + size_t(start) * item_bytes(a.dtype);
  return b;
}

// Copies a host array of the same shape and dtype into `a` (in place).
void copy_from_host(const DeviceArray& a, const py::array& host) {
  DType dtype;
  if (!host_dtype(host, &dtype) || dtype != a.dtype)
    throw py::type_error(std::string("copy_from_host: expected a ") + dtype_name(a.dtype) +
                         " numpy array, got dtype " + py::str(host.dtype()).cast<std::string>());
  std::vector<int64_t> shape(host.shape(), host.shape() + host.ndim());
  if (shape != a.shape)
    throw ArgumentError("copy_from_host: expected shape " + shape_str(a.shape) + ", got " + shape_str(shape));
  py::array src = copyable(host);
  const void* p = src.data();
  py::gil_scoped_release release;
  cu::DeviceGuard guard(a.device());
  cu::copy_host_to_device(a.data, p, a.nbytes());
}

void zero_inplace(const DeviceArray& a) {
  py::gil_scoped_release release;
  cu::DeviceGuard guard(a.device());
  cu::fill_zero(a.data, a.nbytes());
}

std::string repr(const DeviceArray& a) {
  return "DeviceArray(shape=" + shape_str(a.shape) + ", dtype=" + dtype_name(a.dtype) +
         ", device=cuda:" + std::to_string(a.device()) + ")";
}

// ---- DLPack (the stable v0.8 ABI, "dltensor" capsules) --------------------

enum : int32_t { kDLCPU = 1, kDLCUDA = 2, kDLCUDAManaged = 13 };
enum : uint8_t { kDLInt = 0, kDLFloat = 2 };

struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

struct ExportContext {
  std::shared_ptr<cu::DeviceBuffer> buffer;  // keeps the memory alive
  std::vector<int64_t> shape, strides;
  DLManagedTensor tensor;
};

void export_deleter(DLManagedTensor* t) { delete static_cast<ExportContext*>(t->manager_ctx); }

// Frees a capsule nobody consumed; a consumer renames it "used_dltensor".
void capsule_destructor(PyObject* capsule) {
  if (PyCapsule_IsValid(capsule, "dltensor")) {
    auto* t = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
    if (t != nullptr && t->deleter != nullptr) t->deleter(t);
  }
}

py::object export_dlpack(const DeviceArray& a, py::object stream, py::object max_version,
                         py::object dl_device, py::object copy) {
  (void)max_version;  // only the unversioned capsule is produced, which every consumer accepts
  if (!dl_device.is_none()) {
    const auto dev = dl_device.cast<std::pair<int, int>>();
    if (dev.first != kDLCUDA || dev.second != a.device())
      throw py::buffer_error("__dlpack__: the array is on CUDA device " + std::to_string(a.device()) +
                             " and cannot be exported to DLPack device (" + std::to_string(dev.first) +
                             ", " + std::to_string(dev.second) + ") without a copy");
  }
  DeviceArray src = (!copy.is_none() && copy.cast<bool>()) ? copy_array(a) : a;
  // The consumer will use the data on `stream`.  Ours is the legacy default
  // stream: None or 1 (legacy default) is ordered after our work already;
  // -1 asks for no synchronisation; any other stream waits for the device.
  int64_t s = stream.is_none() ? 1 : stream.cast<int64_t>();
  if (s != 1 && s != -1) {
    py::gil_scoped_release release;
    cu::DeviceGuard guard(src.device());
    cu::synchronize();
  }
  auto* ctx = new ExportContext();
  ctx->buffer = src.buffer;
  ctx->buffer->mark_shared();
  ctx->shape = src.shape;
  ctx->strides.assign(src.shape.size(), 1);
  for (int i = int(src.shape.size()) - 2; i >= 0; --i) ctx->strides[i] = ctx->strides[i + 1] * src.shape[i + 1];
  DLTensor& t = ctx->tensor.dl_tensor;
  t.data = src.data;
  t.device = DLDevice{kDLCUDA, src.device()};
  t.ndim = int32_t(src.shape.size());
  t.dtype = src.dtype == DType::Float32 ? DLDataType{kDLFloat, 32, 1} : DLDataType{kDLInt, 64, 1};
  t.shape = ctx->shape.data();
  t.strides = ctx->strides.data();
  t.byte_offset = 0;
  ctx->tensor.manager_ctx = ctx;
  ctx->tensor.deleter = export_deleter;
  PyObject* capsule = PyCapsule_New(&ctx->tensor, "dltensor", capsule_destructor);
  if (capsule == nullptr) {
    delete ctx;
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::object>(capsule);
}

DeviceArray import_dlpack(py::object obj) {
  if (py::isinstance<DeviceArray>(obj)) return obj.cast<DeviceArray>();
  if (!py::hasattr(obj, "__dlpack__") || !py::hasattr(obj, "__dlpack_device__"))
    throw py::type_error("from_dlpack: expected an object with __dlpack__ and __dlpack_device__ "
                         "(a CUDA torch.Tensor, CuPy array...), got " +
                         py::str(py::type::handle_of(obj).attr("__name__")).cast<std::string>());
  const auto dev = obj.attr("__dlpack_device__")().cast<std::pair<int, int>>();
  if (dev.first != kDLCUDA && dev.first != kDLCUDAManaged)
    throw py::type_error("from_dlpack: expected an array in CUDA device memory, got DLPack device type " +
                         std::to_string(dev.first) + (dev.first == kDLCPU ? " (CPU)" : "") +
                         "; copy host arrays with convcore.cuda.to_device");
  py::object capsule;
  bool ordered = true;  // the producer ordered its work before our stream
  try {
    capsule = obj.attr("__dlpack__")(py::arg("stream") = 1);  // 1: the legacy default stream, ours
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_TypeError)) throw;
    capsule = obj.attr("__dlpack__")();  // an old producer: no stream handshake
    ordered = false;
  }
  if (!PyCapsule_IsValid(capsule.ptr(), "dltensor"))
    throw py::type_error("from_dlpack: __dlpack__ did not return an unused 'dltensor' capsule");
  auto* mt = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
  const DLTensor& t = mt->dl_tensor;
  DType dtype;
  if (t.dtype.code == kDLFloat && t.dtype.bits == 32 && t.dtype.lanes == 1)
    dtype = DType::Float32;
  else if (t.dtype.code == kDLInt && t.dtype.bits == 64 && t.dtype.lanes == 1)
    dtype = DType::Int64;
  else
    throw py::type_error("from_dlpack: expected float32 or int64 elements, got DLPack dtype (code " +
                         std::to_string(t.dtype.code) + ", bits " + std::to_string(t.dtype.bits) +
                         ", lanes " + std::to_string(t.dtype.lanes) + ")");
  std::vector<int64_t> shape(t.shape, t.shape + t.ndim);
  int64_t numel = 1;
  for (int64_t s : shape) numel *= s;
  if (t.strides != nullptr && numel != 0) {  // an empty array's strides say nothing
    int64_t expected = 1;
    for (int i = t.ndim - 1; i >= 0; --i) {
      if (shape[i] != 1 && t.strides[i] != expected)
        throw ArgumentError("from_dlpack: expected a C-contiguous array (call .contiguous() first), got strides " +
                            shape_str(t.strides, t.ndim) + " for shape " + shape_str(shape));
      expected *= shape[i];
    }
  }
  if (t.device.device_type != dev.first || t.device.device_id != dev.second)
    throw ArgumentError("from_dlpack: the capsule's device (" + std::to_string(t.device.device_type) + ", " +
                        std::to_string(t.device.device_id) + ") differs from __dlpack_device__() (" +
                        std::to_string(dev.first) + ", " + std::to_string(dev.second) + ")");
  const int device = t.device.device_id;
  cu::require_device(device);
  if (!ordered) {
    // The producer may still be writing the data on a stream of its own.
    py::gil_scoped_release release;
    cu::DeviceGuard guard(device);
    cu::synchronize_device();
  }
  DeviceArray a;
  a.shape = shape;
  a.dtype = dtype;
  a.data = static_cast<char*>(t.data) + t.byte_offset;
  a.buffer = cu::DeviceBuffer::wrap(device, a.data, a.nbytes(), [mt] {
    if (mt->deleter != nullptr) mt->deleter(mt);
  });
  // From here on the memory is ours to release (through the producer's deleter).
  PyCapsule_SetName(capsule.ptr(), "used_dltensor");
  return a;
}

// ---- argument checks (as module.cpp words them) ----------------------------

const DeviceArray& float_input(const DeviceArray& a, const char* name, int ndim) {
  if (a.dtype != DType::Float32)
    throw py::type_error(std::string(name) + ": expected a float32 array, got dtype " + dtype_name(a.dtype) +
                         " (convert with .astype(numpy.float32))");
  if (a.ndim() != ndim)
    throw ArgumentError(std::string(name) + ": expected a " + std::to_string(ndim) + "-D array, got " +
                        std::to_string(a.ndim()) + "-D");
  return a;
}

const DeviceArray& index_input(const DeviceArray& a, const char* name, int ndim) {
  if (a.dtype != DType::Int64)
    throw py::type_error(std::string(name) + ": expected an int64 array, got dtype " + dtype_name(a.dtype));
  if (a.ndim() != ndim)
    throw ArgumentError(std::string(name) + ": expected a " + std::to_string(ndim) + "-D array, got " +
                        std::to_string(a.ndim()) + "-D");
  return a;
}

void same_device(const DeviceArray& a, const char* name, const DeviceArray& ref, const char* ref_name) {
  if (a.device() != ref.device())
    throw ArgumentError(std::string(name) + ": is on cuda:" + std::to_string(a.device()) + " but " + ref_name +
                        " is on cuda:" + std::to_string(ref.device()) + "; all arrays of a call must be on one device");
}

void require_shape(const DeviceArray& a, const char* name, const int64_t* expected, int n) {
  bool same = a.ndim() == n;
  for (int i = 0; same && i < n; ++i) same = a.shape[i] == expected[i];
  if (!same)
    throw ArgumentError(std::string(name) + ": expected shape " + shape_str(expected, n) + ", got " +
                        shape_str(a.shape));
}

const float* fptr(const DeviceArray& a) { return static_cast<const float*>(a.data); }

convcore::Conv2dGeometry conv_geometry(const DeviceArray& input, const DeviceArray& weight, int64_t sh,
                                       int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                                       int64_t dh, int64_t dw, int64_t groups) {
  float_input(input, "input", 4);
  float_input(weight, "weight", 4);
  same_device(weight, "weight", input, "input");
  return convcore::make_conv2d_geometry(input.shape.data(), weight.shape.data(), sh, sw, pt, pb, pl, pr,
                                        dh, dw, groups);
}

// ---- ops ------------------------------------------------------------------------

DeviceArray conv2d_forward(const DeviceArray& input, const DeviceArray& weight, const DeviceArray* bias,
                           int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                           int64_t dh, int64_t dw, int64_t groups) {
  const auto g = conv_geometry(input, weight, sh, sw, pt, pb, pl, pr, dh, dw, groups);
  const float* b = nullptr;
  if (bias != nullptr) {
    float_input(*bias, "bias", 1);
    same_device(*bias, "bias", input, "input");
    if (bias->shape[0] != g.K)
      throw ArgumentError("bias: expected shape (" + std::to_string(g.K) + ",) to match out_channels, got (" +
                          std::to_string(bias->shape[0]) + ",)");
    b = fptr(*bias);
  }
  py::gil_scoped_release release;
  cu::DeviceGuard guard(input.device());
  DeviceArray out = new_array(input.device(), {g.N, g.K, g.P, g.Q}, DType::Float32);
  cu::conv2d_forward(g, fptr(input), fptr(weight), b, static_cast<float*>(out.data));
  return out;
}

py::tuple conv2d_backward(const DeviceArray& grad_output, const DeviceArray& input, const DeviceArray& weight,
                          int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t dh,
                          int64_t dw, int64_t groups, bool need_input, bool need_weight, bool need_bias) {
  const auto g = conv_geometry(input, weight, sh, sw, pt, pb, pl, pr, dh, dw, groups);
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
    if (need_weight) gw.reset(new DeviceArray(new_array(dev, {g.K, g.Cg(), g.R, g.S}, DType::Float32)));
    if (need_bias) gb.reset(new DeviceArray(new_array(dev, {g.K}, DType::Float32)));
    const float* dy = fptr(grad_output);
    if (gi) cu::conv2d_backward_data(g, dy, fptr(weight), static_cast<float*>(gi->data));
    if (gw) cu::conv2d_backward_weight(g, dy, fptr(input), static_cast<float*>(gw->data));
    if (gb) cu::conv2d_backward_bias(g, dy, static_cast<float*>(gb->data));
  }
  auto wrap = [](std::unique_ptr<DeviceArray>& a) -> py::object { return a ? py::cast(*a) : py::none(); };
  return py::make_tuple(wrap(gi), wrap(gw), wrap(gb));
}

py::tuple max_pool2d_forward(const DeviceArray& input, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                             int64_t ph, int64_t pw, int64_t dh, int64_t dw, bool ceil_mode) {
  float_input(input, "input", 4);
  const auto g = convcore::make_pool2d_geometry(input.shape.data(), kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode);
  DeviceArray out, idx;
  {
    py::gil_scoped_release release;
    cu::DeviceGuard guard(input.device());
    out = new_array(input.device(), {g.N, g.C, g.P, g.Q}, DType::Float32);
    idx = new_array(input.device(), {g.N, g.C, g.P, g.Q}, DType::Int64);
    cu::maxpool2d_forward(g, fptr(input), static_cast<float*>(out.data), static_cast<int64_t*>(idx.data));
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
  float_input(input, "input", input.ndim());
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

DeviceArray pad_backward(const DeviceArray& grad_output, const std::vector<int64_t>& input_shape, int64_t l,
                         int64_t r, int64_t t, int64_t b, const std::string& mode) {
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

// ---- the rest of a training step ------------------------------------------------

float* mptr(const DeviceArray& a) { return static_cast<float*>(a.data); }

const DeviceArray& float_any(const DeviceArray& a, const char* name) {
  if (a.dtype != DType::Float32)
    throw py::type_error(std::string(name) + ": expected a float32 array, got dtype " + dtype_name(a.dtype) +
                         " (convert with .astype(numpy.float32))");
  return a;
}

void same_shape(const DeviceArray& a, const char* name, const DeviceArray& ref, const char* ref_name) {
  same_device(a, name, ref, ref_name);
  if (a.shape != ref.shape)
    throw ArgumentError(std::string(name) + ": expected shape " + shape_str(ref.shape) + " (that of " + ref_name +
                        "), got " + shape_str(a.shape));
}

DeviceArray relu_forward(const DeviceArray& x, bool inplace) {
  float_any(x, "input");
  py::gil_scoped_release release;
  cu::DeviceGuard guard(x.device());
  DeviceArray y = inplace ? x : new_array(x.device(), x.shape, DType::Float32);
  cu::relu_forward(fptr(x), mptr(y), x.numel());
  return y;
}

DeviceArray relu_backward(const DeviceArray& dy, const DeviceArray& y, bool inplace) {
  float_any(dy, "grad_output");
  float_any(y, "output");
  same_shape(y, "output", dy, "grad_output");
  py::gil_scoped_release release;
  cu::DeviceGuard guard(dy.device());
  DeviceArray dx = inplace ? dy : new_array(dy.device(), dy.shape, DType::Float32);
  cu::relu_backward(fptr(dy), fptr(y), mptr(dx), dy.numel());
  return dx;
}

DeviceArray multiply(const DeviceArray& a, const DeviceArray& b) {
  float_any(a, "a");
  float_any(b, "b");
  same_shape(b, "b", a, "a");
  py::gil_scoped_release release;
  cu::DeviceGuard guard(a.device());
  DeviceArray out = new_array(a.device(), a.shape, DType::Float32);
  cu::multiply(fptr(a), fptr(b), mptr(out), a.numel());
  return out;
}

void add_inplace(const DeviceArray& dst, const DeviceArray& src) {
  float_any(dst, "dst");
  float_any(src, "src");
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
  if (C < 1) throw ArgumentError("logits: expected at least one class, got shape " + shape_str(logits.shape));
  if (!target.dtype().equal(py::dtype::of<int64_t>()) || target.ndim() != 1 || target.shape(0) != N)
    throw ArgumentError("target: expected an int64 array of shape (" + std::to_string(N) + ",), got dtype " +
                        py::str(target.dtype()).cast<std::string>() + " and " +
                        shape_str(std::vector<int64_t>(target.shape(), target.shape() + target.ndim())));
  auto t = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(target);
  const int64_t* tp = t.data();
  for (int64_t i = 0; i < N; ++i)
    if (tp[i] < 0 || tp[i] >= C)
      throw ArgumentError("target: labels must be in [0, " + std::to_string(C) + "), got " + std::to_string(tp[i]) +
                          " at index " + std::to_string(i));
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

void adam_step(const DeviceArray& p, const DeviceArray& g, const DeviceArray& m, const DeviceArray& v,
               float one_minus_beta1, float beta2, float one_minus_beta2, float bias_correction2_sqrt, float eps,
               float neg_step_size, float weight_decay) {
  float_any(p, "param");
  float_any(g, "grad");
  float_any(m, "exp_avg");
  float_any(v, "exp_avg_sq");
  same_shape(g, "grad", p, "param");
  same_shape(m, "exp_avg", p, "param");
  same_shape(v, "exp_avg_sq", p, "param");
  require_disjoint({{&p, "param"}, {&g, "grad"}, {&m, "exp_avg"}, {&v, "exp_avg_sq"}});
  const cu::AdamConstants k{one_minus_beta1, beta2, one_minus_beta2, bias_correction2_sqrt,
                            eps, neg_step_size, weight_decay};
  py::gil_scoped_release release;
  cu::DeviceGuard guard(p.device());
  cu::adam_step(k, mptr(p), fptr(g), mptr(m), mptr(v), p.numel());
}

void sgd_step(const DeviceArray& p, const DeviceArray& g, const DeviceArray* buf, float momentum,
              float one_minus_dampening, float weight_decay, float neg_lr, bool nesterov, bool first) {
  float_any(p, "param");
  float_any(g, "grad");
  same_shape(g, "grad", p, "param");
  if (buf != nullptr) {
    float_any(*buf, "momentum_buffer");
    same_shape(*buf, "momentum_buffer", p, "param");
  }
  require_disjoint({{&p, "param"}, {&g, "grad"}, {buf, "momentum_buffer"}});
  const cu::SgdConstants k{momentum, one_minus_dampening, weight_decay, neg_lr, nesterov, first};
  py::gil_scoped_release release;
  cu::DeviceGuard guard(p.device());
  cu::sgd_step(k, mptr(p), fptr(g), buf != nullptr ? mptr(*buf) : nullptr, p.numel());
}

}  // namespace

namespace convcore {

void bind_cuda(py::module_ m) {
  py::register_exception<cu::CudaError>(m, "CudaError", PyExc_RuntimeError);

  m.def("device_count", &cu::device_count);
  m.def("unavailable_reason", &cu::unavailable_reason);
  m.def("device_name", &cu::device_name, py::arg("device"));
  m.def("runtime_version", &cu::runtime_version);
  m.def("driver_version", &cu::driver_version);
  m.def(
      "synchronize",
      [](int device) {
        py::gil_scoped_release release;
        cu::DeviceGuard guard(device);
        cu::synchronize();
      },
      py::arg("device"));

  py::class_<DeviceArray>(m, "DeviceArray")
      .def_property_readonly("shape",
                             [](const DeviceArray& a) {
                               py::tuple t(a.shape.size());
                               for (size_t i = 0; i < a.shape.size(); ++i) t[i] = a.shape[i];
                               return t;
                             })
      .def_property_readonly("dtype",
                             [](const DeviceArray& a) {
                               return a.dtype == DType::Float32 ? py::dtype::of<float>() : py::dtype::of<int64_t>();
                             })
      .def_property_readonly("ndim", &DeviceArray::ndim)
      .def_property_readonly("size", &DeviceArray::numel)
      .def_property_readonly("nbytes", &DeviceArray::nbytes)
      .def_property_readonly("device", &DeviceArray::device)
      .def_property_readonly("data_ptr", [](const DeviceArray& a) { return reinterpret_cast<uintptr_t>(a.data); })
      .def("numpy", &to_numpy)
      .def("copy", &copy_array)
      .def("reshape", &reshape, py::arg("shape"))
      .def("subarray", &subarray, py::arg("start"), py::arg("shape"))
      .def("copy_from_host", &copy_from_host, py::arg("array"))
      .def("zero_", &zero_inplace)
      .def("__dlpack__", &export_dlpack, py::kw_only(), py::arg("stream") = py::none(),
           py::arg("max_version") = py::none(), py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
      .def("__dlpack_device__", [](const DeviceArray& a) { return py::make_tuple(int(kDLCUDA), a.device()); })
      .def("__repr__", &repr)
      .def("__len__", [](const DeviceArray& a) {
        if (a.shape.empty()) throw py::type_error("len() of a 0-d DeviceArray");
        return a.shape[0];
      });

  m.def("to_device", &to_device, py::arg("array"), py::arg("device"));
  m.def("from_dlpack", &import_dlpack, py::arg("obj"));
  m.def(
      "empty", [](const std::vector<int64_t>& s, const std::string& t, int d) { return empty_array(s, t, d, false); },
      py::arg("shape"), py::arg("dtype"), py::arg("device"));
  m.def(
      "zeros", [](const std::vector<int64_t>& s, const std::string& t, int d) { return empty_array(s, t, d, true); },
      py::arg("shape"), py::arg("dtype"), py::arg("device"));

  m.def("conv2d_forward", &conv2d_forward, py::arg("input"), py::arg("weight"), py::arg("bias"),
        py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_top"), py::arg("pad_bottom"), py::arg("pad_left"),
        py::arg("pad_right"), py::arg("dilation_h"), py::arg("dilation_w"), py::arg("groups"));
  m.def("conv2d_backward", &conv2d_backward, py::arg("grad_output"), py::arg("input"), py::arg("weight"),
        py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_top"), py::arg("pad_bottom"), py::arg("pad_left"),
        py::arg("pad_right"), py::arg("dilation_h"), py::arg("dilation_w"), py::arg("groups"),
        py::arg("need_input"), py::arg("need_weight"), py::arg("need_bias"));
  m.def("max_pool2d_forward", &max_pool2d_forward, py::arg("input"), py::arg("kernel_h"), py::arg("kernel_w"),
        py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"), py::arg("dilation_h"),
        py::arg("dilation_w"), py::arg("ceil_mode"));
  m.def("max_pool2d_backward", &max_pool2d_backward, py::arg("grad_output"), py::arg("indices"),
        py::arg("input_shape"));
  m.def("pad_forward", &pad_forward, py::arg("input"), py::arg("left"), py::arg("right"), py::arg("top"),
        py::arg("bottom"), py::arg("mode"), py::arg("value"));
  m.def("relu_forward", &relu_forward, py::arg("input"), py::arg("inplace"));
  m.def("relu_backward", &relu_backward, py::arg("grad_output"), py::arg("output"), py::arg("inplace"));
  m.def("multiply", &multiply, py::arg("a"), py::arg("b"));
  m.def("add_", &add_inplace, py::arg("dst"), py::arg("src"));
  m.def("cross_entropy", &cross_entropy, py::arg("logits"), py::arg("target"), py::arg("scale"));
  m.def("adam_step", &adam_step, py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"),
        py::arg("one_minus_beta1"), py::arg("beta2"), py::arg("one_minus_beta2"), py::arg("bias_correction2_sqrt"),
        py::arg("eps"), py::arg("neg_step_size"), py::arg("weight_decay"));
  m.def("sgd_step", &sgd_step, py::arg("param"), py::arg("grad"), py::arg("momentum_buffer"), py::arg("momentum"),
        py::arg("one_minus_dampening"), py::arg("weight_decay"), py::arg("neg_lr"), py::arg("nesterov"),
        py::arg("first"));
  m.def("pad_backward", &pad_backward, py::arg("grad_output"), py::arg("input_shape"), py::arg("left"),
        py::arg("right"), py::arg("top"), py::arg("bottom"), py::arg("mode"));
}

}  // namespace convcore
