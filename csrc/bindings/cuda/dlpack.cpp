// DLPack interchange of DeviceArrays (the stable v0.8 ABI, "dltensor"
// capsules): __dlpack__/__dlpack_device__ export without a copy, and
// from_dlpack wraps another library's CUDA array without a copy.
#include <pybind11/stl.h>

#include <string>
#include <utility>
#include <vector>

#include "bindings/cuda/device_array.h"

namespace convcore::pycuda {

using convcore::ArgumentError;

namespace {

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
      throw py::buffer_error(
          "__dlpack__: the array is on CUDA device " + std::to_string(a.device()) +
          " and cannot be exported to DLPack device (" + std::to_string(dev.first) + ", " +
          std::to_string(dev.second) + ") without a copy");
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
  for (int i = int(src.shape.size()) - 2; i >= 0; --i)
    ctx->strides[i] = ctx->strides[i + 1] * src.shape[i + 1];
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
    throw py::type_error(
        "from_dlpack: expected an object with __dlpack__ and __dlpack_device__ "
        "(a CUDA torch.Tensor, CuPy array...), got " +
        py::str(py::type::handle_of(obj).attr("__name__")).cast<std::string>());
  const auto dev = obj.attr("__dlpack_device__")().cast<std::pair<int, int>>();
  if (dev.first != kDLCUDA && dev.first != kDLCUDAManaged)
    throw py::type_error(
        "from_dlpack: expected an array in CUDA device memory, got DLPack device type " +
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
    throw py::type_error(
        "from_dlpack: expected float32 or int64 elements, got DLPack dtype (code " +
        std::to_string(t.dtype.code) + ", bits " + std::to_string(t.dtype.bits) + ", lanes " +
        std::to_string(t.dtype.lanes) + ")");
  std::vector<int64_t> shape(t.shape, t.shape + t.ndim);
  int64_t numel = 1;
  for (int64_t s : shape) numel *= s;
  if (t.strides != nullptr && numel != 0) {  // an empty array's strides say nothing
    int64_t expected = 1;
    for (int i = t.ndim - 1; i >= 0; --i) {
      if (shape[i] != 1 && t.strides[i] != expected)
        throw ArgumentError(
            "from_dlpack: expected a C-contiguous array (call .contiguous() first), got strides " +
            shape_str(t.strides, t.ndim) + " for shape " + shape_str(shape));
      expected *= shape[i];
    }
  }
  if (t.device.device_type != dev.first || t.device.device_id != dev.second)
    throw ArgumentError(
        "from_dlpack: the capsule's device (" + std::to_string(t.device.device_type) + ", " +
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

}  // namespace

void bind_dlpack(py::module_ m, py::class_<DeviceArray>& cls) {
  cls.def("__dlpack__", &export_dlpack, py::kw_only(), py::arg("stream") = py::none(),
          py::arg("max_version") = py::none(), py::arg("dl_device") = py::none(),
          py::arg("copy") = py::none())
      .def("__dlpack_device__",
           [](const DeviceArray& a) { return py::make_tuple(int(kDLCUDA), a.device()); });
  m.def("from_dlpack", &import_dlpack, py::arg("obj"));
}

}  // namespace convcore::pycuda
