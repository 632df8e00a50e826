// Per-thread scratch memory that lives as long as the thread (OpenMP keeps
// its worker threads), so repeated calls of the same shape allocate nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace convcore {

class ScratchBuffer {
 public:
  ScratchBuffer() = default;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer() { std::free(data_); }

  // At least n floats, 64-byte aligned; contents are unspecified.
  float* floats(int64_t n) {
    const size_t bytes = size_t(n > 0 ? n : 1) * sizeof(float);
    if (bytes > capacity_) {
      std::free(data_);
      const size_t rounded = (bytes + 63) / 64 * 64;
      data_ = static_cast<float*>(std::aligned_alloc(64, rounded));
      if (data_ == nullptr) {
        capacity_ = 0;
        throw std::bad_alloc();
      }
      capacity_ = rounded;
    }
    return data_;
  }

 private:
  float* data_ = nullptr;
  size_t capacity_ = 0;
};

// Slot 0: GEMM packing.  Slot 1: the padded input of the direct and
// weight-gradient drivers, the columns of the GEMM data gradient (before
// col2im), or the partial rows of the tap-column data gradient.  Slot 2:
// the weight-gradient drivers' rearranged grad_output, or the one the
// row-segment driver makes from a pool's gradient.  Slot 3: one image's
// output of a forward with a per-image epilogue (the fused conv + pool).
// Slots 4 and 5: the full-size activation and gradient of the unfused conv
// + pool entries, held by the calling thread across the ops they call
// (whose parallel regions use slots 0-3, the calling thread among them).
inline ScratchBuffer& thread_scratch(int slot) {
  thread_local ScratchBuffer buffers[6];
  return buffers[slot];
}

}  // namespace convcore
