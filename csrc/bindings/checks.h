// The argument checks of the bindings, written once for host arrays (numpy,
// py::array) and device arrays (DeviceArray, bindings/cuda/device_array.h).
// An array type takes part through a specialisation of ArrayTraits that
// says its dtype, shape, layout and data pointer.  Every message names the
// argument; a wrong dtype is a TypeError, anything else an ArgumentError
// (ValueError in Python).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/geometry.h"

namespace convcore::bindings {

namespace py = pybind11;

enum class DType { Float32, Int64, Other };

inline const char* dtype_name(DType t) {
  return t == DType::Float32 ? "float32" : t == DType::Int64 ? "int64" : "other";
}

// What the checks need to know about an array type A:
//   static DType dtype(const A&);  static std::string dtype_name(const A&);
//   static int ndim(const A&);     static int64_t dim(const A&, int i);
//   static bool contiguous(const A&);  (C-contiguous and aligned)
//   static const void* data(const A&);
template <class A>
struct ArrayTraits;

template <>
struct ArrayTraits<py::array> {
  static DType dtype(const py::array& a) {
    if (a.dtype().equal(py::dtype::of<float>())) return DType::Float32;
    if (a.dtype().equal(py::dtype::of<int64_t>())) return DType::Int64;
    return DType::Other;
  }
  static std::string dtype_name(const py::array& a) {
    return py::str(a.dtype()).cast<std::string>();
  }
  static int ndim(const py::array& a) { return int(a.ndim()); }
  static int64_t dim(const py::array& a, int i) { return a.shape(i); }
  static bool contiguous(const py::array& a) {
    return (a.flags() & py::array::c_style) &&
           (a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_);
  }
  static const void* data(const py::array& a) { return a.data(); }
};

template <class A>
std::vector<int64_t> shape_of(const A& a) {
  using T = ArrayTraits<A>;
  std::vector<int64_t> s(size_t(T::ndim(a)));
  for (int i = 0; i < T::ndim(a); ++i) s[size_t(i)] = T::dim(a, i);
  return s;
}

template <class A>
void check_ndim(const A& a, const char* name, int ndim) {
  const int got = ArrayTraits<A>::ndim(a);
  if (ndim >= 0 && got != ndim)
    throw ArgumentError(std::string(name) + ": expected a " + std::to_string(ndim) +
                        "-D array, got " + std::to_string(got) + "-D");
  // convcore never converts or copies silently: a strided array is an error.
  if (!ArrayTraits<A>::contiguous(a))
    throw ArgumentError(std::string(name) +
                        ": expected a C-contiguous array (use numpy.ascontiguousarray)");
}

// A float32 array of `ndim` dimensions (-1: any), C-contiguous.
template <class A>
const float* float_input(const A& a, const char* name, int ndim = -1) {
  using T = ArrayTraits<A>;
  if (T::dtype(a) != DType::Float32)
    throw py::type_error(std::string(name) + ": expected a float32 array, got dtype " +
                         T::dtype_name(a) + " (convert with .astype(numpy.float32))");
  check_ndim(a, name, ndim);
  return static_cast<const float*>(T::data(a));
}

// An int64 array of `ndim` dimensions, C-contiguous.
template <class A>
const int64_t* index_input(const A& a, const char* name, int ndim) {
  using T = ArrayTraits<A>;
  if (T::dtype(a) != DType::Int64)
    throw py::type_error(std::string(name) + ": expected an int64 array, got dtype " +
                         T::dtype_name(a));
  check_ndim(a, name, ndim);
  return static_cast<const int64_t*>(T::data(a));
}

template <class A>
void require_shape(const A& a, const char* name, const int64_t* expected, int n) {
  const std::vector<int64_t> got = shape_of(a);
  bool same = int(got.size()) == n;
  for (int i = 0; same && i < n; ++i) same = got[size_t(i)] == expected[i];
  if (!same)
    throw ArgumentError(std::string(name) + ": expected shape " +
                        shape_string(expected, size_t(n)) + ", got " + shape_string(got));
}

// conv2d's bias: a float32 vector of the K output channels.
template <class A>
const float* bias_input(const A& bias, int64_t K) {
  const float* b = float_input(bias, "bias", 1);
  const int64_t got = ArrayTraits<A>::dim(bias, 0);
  if (got != K)
    throw ArgumentError("bias: expected shape (" + std::to_string(K) +
                        ",) to match out_channels, got (" + std::to_string(got) + ",)");
  return b;
}

// The geometry of conv2d(input, weight, ...) after both arrays are checked.
template <class A>
Conv2dGeometry conv_geometry(const A& input, const A& weight, int64_t sh, int64_t sw, int64_t pt,
                             int64_t pb, int64_t pl, int64_t pr, int64_t dil_h, int64_t dil_w,
                             int64_t groups) {
  float_input(input, "input", 4);
  float_input(weight, "weight", 4);
  const std::vector<int64_t> in = shape_of(input), wt = shape_of(weight);
  return make_conv2d_geometry(in.data(), wt.data(), sh, sw, pt, pb, pl, pr, dil_h, dil_w, groups);
}

}  // namespace convcore::bindings
