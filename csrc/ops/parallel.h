// Exceptions must not leave an OpenMP region (that terminates the process).
// Tasks run through TaskErrors::run; the first exception is rethrown after
// the region ends.
#pragma once

#include <exception>
#include <mutex>

namespace convcore {

class TaskErrors {
 public:
  template <class F>
  void run(F&& f) noexcept {
    try {
      f();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
  }
  void rethrow() {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::mutex mutex_;
  std::exception_ptr error_;
};

}  // namespace convcore
