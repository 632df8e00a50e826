// convcore's optional GPU path: the host-side C++ API.
//
// Same op contract as ops/ops.h: a geometry already validated by
// common/geometry (the one place that decides whether a call is valid), raw
// contiguous NCHW float32 buffers, int64 pooling indices h*W + w per plane.
// Here every pointer is device memory on the *current* device (see
// DeviceGuard).  Nothing in this header includes pybind11 or a CUDA header,
// so the bindings compile with the plain host compiler.
//
// Execution model: every op is queued on the current device's legacy default
// stream and returns without waiting (launch-configuration errors are
// reported at once; errors inside a kernel surface at the next synchronising
// call, e.g. a copy to the host; CUDA_LAUNCH_BLOCKING=1 makes them immediate).
// Only maxpool2d_backward waits, to report a bad index as ArgumentError like
// the CPU path.  Results are deterministic: reductions (weight and bias
// gradients) are split into chunks fixed by the problem shape alone and
// summed in a fixed order, and the pooling backward pass adds in the CPU
// reference's order; no float atomics anywhere.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

#include "common/geometry.h"

namespace convcore {
namespace cuda {

// A failed CUDA runtime call or kernel; the message carries CUDA's own text
// and error name, e.g. "convcore.cuda: cudaMallocFromPoolAsync(4 GiB) failed: out of
// memory (cudaErrorMemoryAllocation)".  The bindings raise it as
// convcore.cuda.CudaError (a RuntimeError).
class CudaError : public std::runtime_error {
 public:
  CudaError(const std::string& what, int code) : std::runtime_error(what), code_(code) {}
  int code() const { return code_; }  // the cudaError_t value
  bool out_of_memory() const;

 private:
  int code_;
};

// Number of visible devices.  Never throws: 0 when there is no driver or no
// device, and unavailable_reason() then says why.
int device_count();
// "" when a device is visible, else why not (CUDA's error text included).
std::string unavailable_reason();
// Throws CudaError naming the reason unless 0 <= device < device_count()
// and this build has code the device can run (its compute capability is
// covered by the CUDA architectures compiled in; when no visible device is
// covered, device_count() is 0 and unavailable_reason() says why).
void require_device(int device);
std::string device_name(int device);
int runtime_version();  // e.g. 13000
int driver_version();   // 0 when there is no driver

// Makes `device` current for its lifetime and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// Owned device memory.  Allocation is stream-ordered on the device's default
// stream, from a memory pool of convcore's own that keeps freed blocks for
// reuse (like PyTorch's caching allocator; other libraries' pools are left
// alone), so a buffer may be released while kernels that use it are still
// queued.  A buffer may instead wrap foreign memory (DLPack import)
// with its own release function, which runs after the device is idle.
class DeviceBuffer {
 public:
  // bytes may be 0 (data() is then null).  Throws CudaError (out of memory...).
  static std::shared_ptr<DeviceBuffer> allocate(int device, size_t bytes);
  static std::shared_ptr<DeviceBuffer> wrap(int device, void* data, size_t bytes,
                                            std::function<void()> release);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  int device() const { return device_; }
  // Called when the memory is handed to another library (DLPack export):
  // that library may still use it on its own streams when it lets go, so the
  // final free then waits for the device to be idle.
  void mark_shared() { shared_ = true; }

 private:
  DeviceBuffer() = default;
  void* data_ = nullptr;
  size_t bytes_ = 0;
  int device_ = 0;
  bool pooled_ = false;  // from convcore's memory pool (else cudaMalloc or foreign)
  bool shared_ = false;
  std::function<void()> release_;
};

// Copies on the current device.  host_to_device and device_to_host return
// when the copy is complete (device_to_host first waits for queued kernels);
// device_to_device and fill_zero are queued.
void copy_host_to_device(void* dst, const void* src, size_t bytes);
void copy_device_to_host(void* dst, const void* src, size_t bytes);
void copy_device_to_device(void* dst, const void* src, size_t bytes);
void fill_zero(void* dst, size_t bytes);
// Waits for all work queued on the current device's default stream.
void synchronize();
// Waits for all work on the current device, on every stream.
void synchronize_device();

// ---- ops (device pointers on the current device; geometry validated) ----

// y (N x K x P x Q) = conv2d(x, w) + b; b may be null.
void conv2d_forward(const Conv2dGeometry& g, const float* x, const float* w, const float* b,
                    float* y);
// dx (N x C x H x W) from dy (N x K x P x Q) and w (gather form: no atomics).
void conv2d_backward_data(const Conv2dGeometry& g, const float* dy, const float* w, float* dx);
// dw (K x C/G x R x S) from dy and x; split-reduction fixed by the shape.
void conv2d_backward_weight(const Conv2dGeometry& g, const float* dy, const float* x, float* dw);
// db (K) = sum of dy over N, P, Q (double accumulation, fixed-order tree).
void conv2d_backward_bias(const Conv2dGeometry& g, const float* dy, float* db);

// y and idx (N x C x P x Q) with the reference's scan order, strict '>',
// NaN taking over, and indices h*W + w: bitwise equal to the CPU path.
void maxpool2d_forward(const Pool2dGeometry& g, const float* x, float* y, int64_t* idx);
// dx (N x C x H x W) from dy and idx; only N, C, H, W, P, Q of g are used.
// Adds in the CPU reference's order (bitwise equal).  Waits for the device
// and throws ArgumentError naming `indices` if an index lies outside
// [0, H*W) (dx is then unspecified).
void maxpool2d_backward(const Pool2dGeometry& g, const float* dy, const int64_t* idx, float* dx);

// y (planes x OH x OW) from x (planes x H x W); bitwise equal to the CPU path.
void pad2d_forward(const Pad2dGeometry& g, const float* x, float* y, float value);
// dx (planes x H x W) = adjoint of pad2d_forward (gather form, the CPU
// reference's order of additions: bitwise equal).
void pad2d_backward(const Pad2dGeometry& g, const float* dy, float* dx);

// ---- the rest of a training step (train_ops.cu); n elements, contiguous ----

// y = max(x, 0) as numpy.maximum (NaN kept, -0.0 -> +0.0); y may be x.
void relu_forward(const float* x, float* y, int64_t n);
// dx = dy * (y > 0) as a float product (NaN * 0 is NaN); dx may be dy.
void relu_backward(const float* dy, const float* y, float* dx, int64_t n);
// out = a * b; out may be a or b.
void multiply(const float* a, const float* b, float* out, int64_t n);
// dst += src.
void add_inplace(float* dst, const float* src, int64_t n);

// Softmax cross-entropy of logits (N x C) against int64 targets (N):
// grad (N x C) = (softmax - onehot) * scale, row_loss (N, double) =
// log(sum exp(z - max)) - (z[t] - max), pred (N) = first argmax (first NaN).
// A target outside [0, C) yields NaN for its row (the caller checks first).
void cross_entropy(int64_t N, int64_t C, const float* logits, const int64_t* target, float scale,
                   float* grad, double* row_loss, int64_t* pred);

// Adam (torch.optim.Adam, amsgrad off) on n packed elements, with the
// float32 constants the caller derived from the hyper-parameters and the
// step count; bitwise equal to optim.Adam's numpy update.
struct AdamConstants {
  float one_minus_beta1, beta2, one_minus_beta2;
  float bias_correction2_sqrt, eps, neg_step_size, weight_decay;
};
void adam_step(const AdamConstants& k, float* p, const float* g, float* m, float* v, int64_t n);

// SGD (torch.optim.SGD); buf is the momentum buffer, or null without
// momentum; `first` copies the gradient into it (PyTorch's first step).
// Bitwise equal to optim.SGD's numpy update.
struct SgdConstants {
  float momentum, one_minus_dampening, weight_decay, neg_lr;
  bool nesterov, first;
};
void sgd_step(const SgdConstants& k, float* p, const float* g, float* buf, int64_t n);

}  // namespace cuda
}  // namespace convcore
