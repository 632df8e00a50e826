// Internal helpers shared by the sources of the GPU path: error checks and
// launch sizes.  Not part of the API (see cuda_api.h).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda/cuda_api.h"

// #pragma unroll for loops in __host__ __device__ code (the host compiler
// does not know the pragma and warns).
#if defined(__CUDA_ARCH__)
#define CONVCORE_UNROLL _Pragma("unroll")
#else
#define CONVCORE_UNROLL
#endif

namespace convcore {
namespace cuda {
namespace detail {

// Throws CudaError "convcore.cuda: <what> failed: <CUDA text> (<error name>)"
// after clearing CUDA's last-error slot, so a later launch check does not
// report this error a second time.
[[noreturn]] void throw_cuda_error(cudaError_t err, const std::string& what);

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw_cuda_error(err, what);
}

// Reports a launch that could not start (bad configuration, no kernel image
// for this GPU, a sticky error from an earlier kernel).
inline void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw_cuda_error(err, std::string("launch of ") + kernel);
}

constexpr int kThreads = 256;
// Grid-stride loops cover any size; more blocks than this only add overhead.
constexpr int64_t kMaxBlocks = int64_t(1) << 16;

inline unsigned blocks_for(int64_t items, int64_t per_block = kThreads) {
  const int64_t b = (items + per_block - 1) / per_block;
  return unsigned(std::max<int64_t>(1, std::min(b, kMaxBlocks)));
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Why a build for the CUDA architectures `archs` ("80-real,90-real,90-virtual")
// cannot run on a device of compute capability major.minor, or "" if it can.
std::string missing_kernel_image(const std::string& archs, int major, int minor);

// Stream-ordered scratch memory on the current device for one op.
class Scratch {
 public:
  explicit Scratch(size_t bytes);
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* data() const { return data_; }

 private:
  void* data_ = nullptr;
  bool pooled_ = false;
};

}  // namespace detail
}  // namespace cuda
}  // namespace convcore
