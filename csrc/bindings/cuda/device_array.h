// Internal header of the GPU bindings (bindings/cuda/*.cpp): the
// DeviceArray type that Python sees as convcore.cuda.DeviceArray, its
// allocation, and the binding functions of each file.  Compiled only when
// CONVCORE_WITH_CUDA is defined.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bindings/checks.h"
#include "common/geometry.h"
#include "cuda/cuda_api.h"

namespace convcore::pycuda {

namespace py = pybind11;
namespace cu = convcore::cuda;
using bindings::DType;
using bindings::dtype_name;

inline size_t item_bytes(DType t) { return t == DType::Float32 ? 4 : 8; }

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
inline std::string shape_str(const int64_t* s, int n) { return shape_string(s, size_t(n)); }
inline std::string shape_str(const std::vector<int64_t>& s) { return shape_string(s); }

inline const float* fptr(const DeviceArray& a) { return static_cast<const float*>(a.data); }
inline float* mptr(const DeviceArray& a) { return static_cast<float*>(a.data); }

// Allocates an uninitialised array; the GIL is released by the caller.
DeviceArray new_array(int device, std::vector<int64_t> shape, DType dtype);
// A copy of `a` on its device; the GIL is released by the caller.
DeviceArray copy_array(const DeviceArray& a);

// The array arguments of every op are on one device.
void same_device(const DeviceArray& a, const char* name, const DeviceArray& ref,
                 const char* ref_name);

// The bindings of each file, called by bind_cuda (cuda/module.cpp).
py::class_<DeviceArray> bind_device_array(py::module_ m);
void bind_dlpack(py::module_ m, py::class_<DeviceArray>& cls);
void bind_ops(py::module_ m);
void bind_train_ops(py::module_ m);

}  // namespace convcore::pycuda

// DeviceArray in the shared argument checks (bindings/checks.h): always
// C-contiguous.
template <>
struct convcore::bindings::ArrayTraits<convcore::pycuda::DeviceArray> {
  using A = convcore::pycuda::DeviceArray;
  static DType dtype(const A& a) { return a.dtype; }
  static std::string dtype_name(const A& a) { return bindings::dtype_name(a.dtype); }
  static int ndim(const A& a) { return a.ndim(); }
  static int64_t dim(const A& a, int i) { return a.shape[size_t(i)]; }
  static bool contiguous(const A&) { return true; }
  static const void* data(const A& a) { return a.data; }
};
