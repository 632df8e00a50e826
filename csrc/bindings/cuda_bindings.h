// pybind11 bindings of the optional GPU path (compiled only when
// CONVCORE_WITH_CUDA is defined): the DeviceArray type, copies, DLPack, and
// the ops on device arrays (bindings/cuda/*.cpp).  Exposed as
// convcore._core.cuda; the public face is python/convcore/cuda.py.
#pragma once

#include <pybind11/pybind11.h>

namespace convcore {

void bind_cuda(pybind11::module_ m);

}  // namespace convcore
