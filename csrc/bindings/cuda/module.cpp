// The GPU submodule convcore._core.cuda: its exception type and the
// bindings of each file of bindings/cuda/.  The public face is
// python/convcore/cuda.py.
#include "bindings/cuda_bindings.h"

#include "bindings/cuda/device_array.h"

namespace convcore {

void bind_cuda(pybind11::module_ m) {
  pybind11::register_exception<cuda::CudaError>(m, "CudaError", PyExc_RuntimeError);
  auto cls = pycuda::bind_device_array(m);
  pycuda::bind_dlpack(m, cls);
  pycuda::bind_ops(m);
  pycuda::bind_train_ops(m);
}

}  // namespace convcore
