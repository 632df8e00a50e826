// Process-wide runtime settings: thread count, verbose kernel log, and the
// record of which implementation each op ran last.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace convcore {

// Threads used by convcore's parallel regions.  Defaults to OpenMP's
// omp_get_max_threads() (so OMP_NUM_THREADS is honoured) until set.
int get_num_threads();
void set_num_threads(int n);  // n >= 1, else ArgumentError

// Work below this many multiply-adds (or bytes for memory-bound ops) runs on
// one thread: a parallel region costs more than it saves there.
int threads_for(double work, double min_work_per_thread);

// Records that `impl` ran for `op` on `problem`; prints a line to stderr
// when CONVCORE_VERBOSE is set.  `impl` must live as long as the process (an
// implementation table's name or another literal): it is kept, not copied.
void note_kernel(const char* op, const char* impl, const std::string& problem);
// Whether CONVCORE_VERBOSE asked for the kernel log.
bool kernel_log_enabled();
// note_kernel with the problem's name() formatted only for the log: a name
// is an ostringstream, about a microsecond on every call of every op.
template <class Problem>
void note_kernel_for(const char* op, const char* impl, const Problem& p) {
  note_kernel(op, impl, kernel_log_enabled() ? p.name() : std::string());
}
// Name of the implementation `op` ran last ("" if none yet).
std::string last_kernel(const std::string& op);

// Implementations the selection passes over (by name), so a benchmark or a
// test can run the next entry of a list on a shape the first one takes.
// Replaces the whole set; names are checked by the caller
// (set_disabled_implementations in ops/ops.h).
void set_disabled_kernels(const std::vector<std::string>& names);
std::vector<std::string> disabled_kernels();
bool kernel_disabled(const char* name);

}  // namespace convcore
