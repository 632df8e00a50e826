// Bindings of the DeviceArray type: allocation, host/device copies, views,
// and the device queries.  The GIL is released around every copy and
// allocation.
#include "bindings/cuda/device_array.h"

#include <pybind11/stl.h>

#include <string>
#include <utility>
#include <vector>

namespace convcore::pycuda {

using convcore::ArgumentError;

DeviceArray new_array(int device, std::vector<int64_t> shape, DType dtype) {
  DeviceArray a;
  a.shape = std::move(shape);
  a.dtype = dtype;
  const int64_t numel = convcore::checked_numel(a.shape.data(), int(a.shape.size()), "shape");
  a.buffer = cu::DeviceBuffer::allocate(device, size_t(numel) * item_bytes(dtype));
  a.data = a.buffer->data();
  return a;
}

DeviceArray copy_array(const DeviceArray& a) {
  py::gil_scoped_release release;
  cu::DeviceGuard guard(a.device());
  DeviceArray b = new_array(a.device(), a.shape, a.dtype);
  cu::copy_device_to_device(b.data, a.data, a.nbytes());
  return b;
}

void same_device(const DeviceArray& a, const char* name, const DeviceArray& ref,
                 const char* ref_name) {
  if (a.device() != ref.device())
    throw ArgumentError(std::string(name) + ": is on cuda:" + std::to_string(a.device()) + " but " +
                        ref_name + " is on cuda:" + std::to_string(ref.device()) +
                        "; all arrays of a call must be on one device");
}

namespace {

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
  if ((host.flags() & py::array::c_style) &&
      (host.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    return host;
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
                      ? py::array(py::dtype::of<float>(),
                                  std::vector<py::ssize_t>(a.shape.begin(), a.shape.end()))
                      : py::array(py::dtype::of<int64_t>(),
                                  std::vector<py::ssize_t>(a.shape.begin(), a.shape.end()));
  void* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    cu::DeviceGuard guard(a.device());
    cu::copy_device_to_host(dst, a.data, a.nbytes());
  }
  return out;
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
      throw ArgumentError("reshape: sizes must be non-negative (one may be -1), got " +
                          shape_str(shape));
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
    throw ArgumentError("subarray: elements [" + std::to_string(start) + ", " +
                        std::to_string(start) + " + " + std::to_string(n) +
                        ") lie outside an array of " + std::to_string(a.numel()) + " elements");
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
    throw ArgumentError("copy_from_host: expected shape " + shape_str(a.shape) + ", got " +
                        shape_str(shape));
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

}  // namespace

py::class_<DeviceArray> bind_device_array(py::module_ m) {
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

  py::class_<DeviceArray> cls(m, "DeviceArray");
  cls.def_property_readonly("shape",
                            [](const DeviceArray& a) {
                              py::tuple t(a.shape.size());
                              for (size_t i = 0; i < a.shape.size(); ++i) t[i] = a.shape[i];
                              return t;
                            })
      .def_property_readonly("dtype",
                             [](const DeviceArray& a) {
                               return a.dtype == DType::Float32 ? py::dtype::of<float>()
                                                                : py::dtype::of<int64_t>();
                             })
      .def_property_readonly("ndim", &DeviceArray::ndim)
      .def_property_readonly("size", &DeviceArray::numel)
      .def_property_readonly("nbytes", &DeviceArray::nbytes)
      .def_property_readonly("device", &DeviceArray::device)
      .def_property_readonly(
          "data_ptr", [](const DeviceArray& a) { return reinterpret_cast<uintptr_t>(a.data); })
      .def("numpy", &to_numpy)
      .def("copy", &copy_array)
      .def("reshape", &reshape, py::arg("shape"))
      .def("subarray", &subarray, py::arg("start"), py::arg("shape"))
      .def("copy_from_host", &copy_from_host, py::arg("array"))
      .def("zero_", &zero_inplace)
      .def("__repr__", &repr)
      .def("__len__", [](const DeviceArray& a) {
        if (a.shape.empty()) throw py::type_error("len() of a 0-d DeviceArray");
        return a.shape[0];
      });
  m.def("to_device", &to_device, py::arg("array"), py::arg("device"));
  m.def(
      "empty",
      [](const std::vector<int64_t>& s, const std::string& t, int d) {
        return empty_array(s, t, d, false);
      },
      py::arg("shape"), py::arg("dtype"), py::arg("device"));
  m.def(
      "zeros",
      [](const std::vector<int64_t>& s, const std::string& t, int d) {
        return empty_array(s, t, d, true);
      },
      py::arg("shape"), py::arg("dtype"), py::arg("device"));

  return cls;
}

}  // namespace convcore::pycuda
