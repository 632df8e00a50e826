// Device discovery, errors, memory and copies for the GPU path.  Host code
// only (no kernels), so it is compiled by the C++ compiler, not nvcc.
#include <cuda_runtime.h>

#include <cctype>
#include <cstdint>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/cuda_api.h"
#include "cuda/cuda_common.h"

namespace convcore {
namespace cuda {
namespace detail {

[[noreturn]] void throw_cuda_error(cudaError_t err, const std::string& what) {
  cudaGetLastError();  // clear the (non-sticky) error so it is reported once
  std::ostringstream os;
  os << "convcore.cuda: " << what << " failed: " << cudaGetErrorString(err) << " ("
     << cudaGetErrorName(err) << ")";
  throw CudaError(os.str(), int(err));
}

namespace {

std::string byte_size(size_t bytes) {
  std::ostringstream os;
  os << bytes << " bytes";
  if (bytes >= (size_t(1) << 20)) os << " = " << double(bytes) / double(size_t(1) << 30) << " GiB";
  return os.str();
}

// convcore's own stream-ordered memory pool on `device`, or null where the
// device has no memory pools (cudaMalloc/cudaFree are used there).  A
// private pool, not the device's default one, so its setting -- keep freed
// blocks for reuse instead of returning them to the driver at every
// synchronisation, like PyTorch's caching allocator -- touches no other
// library in the process.
cudaMemPool_t memory_pool(int device) {
  static std::mutex mutex;
  static std::map<int, cudaMemPool_t> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  int supported = 0;
  if (cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device) != cudaSuccess) {
    cudaGetLastError();
    supported = 0;
  }
  cudaMemPool_t pool = nullptr;
  if (supported) {
    cudaMemPoolProps props = {};
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    if (cudaMemPoolCreate(&pool, &props) != cudaSuccess) {
      cudaGetLastError();
      pool = nullptr;  // fall back to cudaMalloc
    } else {
      uint64_t keep = UINT64_MAX;
      if (cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep) != cudaSuccess)
        cudaGetLastError();  // the pool still works, it just trims more often
    }
  }
  cache[device] = pool;  // lives as long as the process
  return pool;
}

int current_device() {
  int d = 0;
  check(cudaGetDevice(&d), "cudaGetDevice");
  return d;
}

// Allocation on the current device; pooled reports which free to use.  Out
// of memory in the pool: wait for queued frees, give the pool's unused
// memory back to the driver, and try once more before reporting it.
void* device_alloc(size_t bytes, bool* pooled) {
  void* p = nullptr;
  cudaMemPool_t pool = memory_pool(current_device());
  *pooled = pool != nullptr;
  if (pool != nullptr) {
    cudaError_t err = cudaMallocFromPoolAsync(&p, bytes, pool, cudaStreamLegacy);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      if (cudaStreamSynchronize(cudaStreamLegacy) == cudaSuccess &&
          cudaMemPoolTrimTo(pool, 0) == cudaSuccess)
        err = cudaMallocFromPoolAsync(&p, bytes, pool, cudaStreamLegacy);
    }
    if (err != cudaSuccess)
      throw_cuda_error(err, "cudaMallocFromPoolAsync(" + byte_size(bytes) + ")");
  } else {
    const cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) throw_cuda_error(err, "cudaMalloc(" + byte_size(bytes) + ")");
  }
  return p;
}

// Never throws (runs in destructors, possibly at interpreter exit when the
// CUDA runtime is already unloading: errors are then ignored).
void device_release(void* p, bool pooled) noexcept {
  if (p == nullptr) return;
  if (pooled)
    cudaFreeAsync(p, cudaStreamLegacy);
  else
    cudaFree(p);
  cudaGetLastError();
}

}  // namespace

Scratch::Scratch(size_t bytes) {
  if (bytes > 0) data_ = device_alloc(bytes, &pooled_);
}

Scratch::~Scratch() { device_release(data_, pooled_); }

// Why a build for `archs` (CMAKE_CUDA_ARCHITECTURES, comma-separated) has no code a device of
// compute capability major.minor can run, or "".  CMAKE_CUDA_ARCHITECTURES entries: "NN-real" is
// machine code, which runs on the same major version with a minor >= its own; "NN-virtual" is PTX,
// which the driver compiles for any newer device; "NN" is both. Other spellings ("native", "all")
// are taken on trust.
std::string missing_kernel_image(const std::string& archs, int major, int minor) {
  if (archs.empty()) return "";
  const int cc = major * 10 + minor;
  std::istringstream in(archs);
  std::string entry;
  while (std::getline(in, entry, ',')) {
    size_t digits = 0;
    while (digits < entry.size() && std::isdigit(static_cast<unsigned char>(entry[digits])))
      ++digits;
    if (digits == 0) return "";  // "native", "all", "all-major": cannot tell
    const int arch = std::stoi(entry.substr(0, digits));
    const std::string kind = entry.substr(digits);
    const bool real = kind.empty() || kind == "-real", ptx = kind.empty() || kind == "-virtual";
    if (real && arch / 10 == major && arch <= cc) return "";
    if (ptx && arch <= cc) return "";
  }
  std::ostringstream os;
  os << "convcore was built for CUDA architectures " << archs
     << ", which a device of compute capability " << major << "." << minor
     << " cannot run; rebuild with -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=" << cc;
  return os.str();
}

}  // namespace detail

using detail::check;

bool CudaError::out_of_memory() const { return code_ == int(cudaErrorMemoryAllocation); }

namespace {

#ifndef CONVCORE_CUDA_ARCHS
#define CONVCORE_CUDA_ARCHS ""
#endif

// "" when `device` can run this build's kernels, else why not.
std::string device_problem(int device) {
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();
    return "";  // let the first real call report the error
  }
  const std::string why = detail::missing_kernel_image(CONVCORE_CUDA_ARCHS, major, minor);
  if (why.empty()) return "";
  cudaDeviceProp prop;
  std::string name = "?";
  if (cudaGetDeviceProperties(&prop, device) == cudaSuccess)
    name = prop.name;
  else
    cudaGetLastError();
  return "device " + std::to_string(device) + " (" + name + "): " + why;
}

struct Probe {
  int count = 0;
  std::string reason;
  std::vector<std::string> problems;  // per device, "" when usable
};

// Devices do not come and go during a process's life (the runtime
// enumerates them once), so the first answer is kept.
const Probe& probe() {
  static const Probe result = [] {
    Probe r;
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
      cudaGetLastError();
      std::ostringstream os;
      os << "no device visible (cudaGetDeviceCount: " << cudaGetErrorString(err) << " ["
         << cudaGetErrorName(err) << "]";
      if (err == cudaErrorInsufficientDriver)
        os << "; no NVIDIA driver is loaded, or it is older than this CUDA runtime ("
           << CUDART_VERSION / 1000 << "." << CUDART_VERSION % 1000 / 10 << ") needs";
      else if (err == cudaErrorNoDevice)
        os << "; check CUDA_VISIBLE_DEVICES";
      os << ")";
      r.reason = os.str();
    } else if (n == 0) {
      r.reason = "no device visible (cudaGetDeviceCount returned 0)";
    } else {
      bool any = false;
      for (int d = 0; d < n; ++d) {
        r.problems.push_back(device_problem(d));
        any = any || r.problems.back().empty();
      }
      if (any)
        r.count = n;  // indices stay those of CUDA; an unusable one fails in require_device
      else
        r.reason = "no usable device: " + r.problems[0];
    }
    return r;
  }();
  return result;
}

}  // namespace

int device_count() { return probe().count; }

std::string unavailable_reason() { return probe().reason; }

void require_device(int device) {
  const int n = device_count();
  if (n == 0) throw CudaError("convcore.cuda: " + unavailable_reason(), int(cudaErrorNoDevice));
  if (device < 0 || device >= n)
    throw ArgumentError("device: expected a CUDA device index in [0, " + std::to_string(n) +
                        "), got " + std::to_string(device));
  const std::string& problem = probe().problems[size_t(device)];
  if (!problem.empty())
    throw CudaError("convcore.cuda: " + problem, int(cudaErrorNoKernelImageForDevice));
}

std::string device_name(int device) {
  require_device(device);
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  return prop.name;
}

int runtime_version() {
  int v = 0;
  if (cudaRuntimeGetVersion(&v) != cudaSuccess) cudaGetLastError();
  return v;
}

int driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) cudaGetLastError();
  return v;
}

DeviceGuard::DeviceGuard(int device) {
  require_device(device);
  check(cudaGetDevice(&previous_), "cudaGetDevice");
  if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
}

DeviceGuard::~DeviceGuard() {
  int now = -1;
  if (cudaGetDevice(&now) == cudaSuccess && now != previous_ && previous_ >= 0)
    cudaSetDevice(previous_);
  cudaGetLastError();
}

std::shared_ptr<DeviceBuffer> DeviceBuffer::allocate(int device, size_t bytes) {
  DeviceGuard guard(device);
  std::shared_ptr<DeviceBuffer> b(new DeviceBuffer());
  b->device_ = device;
  b->bytes_ = bytes;
  if (bytes > 0) b->data_ = detail::device_alloc(bytes, &b->pooled_);
  return b;
}

std::shared_ptr<DeviceBuffer> DeviceBuffer::wrap(int device, void* data, size_t bytes,
                                                 std::function<void()> release) {
  std::shared_ptr<DeviceBuffer> b(new DeviceBuffer());
  b->device_ = device;
  b->data_ = data;
  b->bytes_ = bytes;
  b->release_ = std::move(release);
  return b;
}

DeviceBuffer::~DeviceBuffer() {
  int previous = -1;
  const bool switched = cudaGetDevice(&previous) == cudaSuccess && previous != device_ &&
                        cudaSetDevice(device_) == cudaSuccess;
  if (release_) {
    // Foreign memory goes back to its owner, which may reuse it on a stream
    // that does not wait for ours (and, once exported again, a third library
    // may still be using it on its own streams).
    if (shared_)
      cudaDeviceSynchronize();
    else
      cudaStreamSynchronize(cudaStreamLegacy);
    cudaGetLastError();
    release_();
  } else {
    if (shared_) cudaDeviceSynchronize();
    detail::device_release(data_, pooled_);
  }
  if (switched) cudaSetDevice(previous);
  cudaGetLastError();
}

void copy_host_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes)
    check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy(host to device)");
}

void copy_device_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes)
    check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy(device to host)");
}

void copy_device_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes)
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cudaStreamLegacy),
          "cudaMemcpyAsync(device to device)");
}

void fill_zero(void* dst, size_t bytes) {
  if (bytes) check(cudaMemsetAsync(dst, 0, bytes, cudaStreamLegacy), "cudaMemsetAsync");
}

void synchronize() { check(cudaStreamSynchronize(cudaStreamLegacy), "cudaStreamSynchronize"); }

void synchronize_device() { check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

}  // namespace cuda
}  // namespace convcore
