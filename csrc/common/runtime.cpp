#include "common/runtime.h"

#include <omp.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <string_view>

#include "common/geometry.h"

namespace convcore {
namespace {

std::atomic<int> g_threads{0};  // 0: not set, follow OpenMP

bool verbose() {
  static const bool v = [] {
    const char* e = std::getenv("CONVCORE_VERBOSE");
    return e != nullptr && *e != '\0' && std::string(e) != "0";
  }();
  return v;
}

std::mutex g_log_mutex;
// op -> the name of the implementation it ran last: names are static (the
// implementation tables' literals), so recording one allocates nothing.
std::map<std::string, const char*, std::less<>>& last_kernels() {
  static std::map<std::string, const char*, std::less<>> m;
  return m;
}

std::mutex g_disabled_mutex;
std::set<std::string> g_disabled;
std::atomic<bool> g_any_disabled{false};  // the selection's fast path

}  // namespace

int get_num_threads() {
  const int n = g_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : omp_get_max_threads();
}

void set_num_threads(int n) {
  if (n < 1)
    throw ArgumentError("set_num_threads: expected a positive thread count, got " +
                        std::to_string(n));
  g_threads.store(n, std::memory_order_relaxed);
}

int threads_for(double work, double min_work_per_thread) {
  const int max_threads = get_num_threads();
  if (max_threads <= 1) return 1;
  const double t = work / min_work_per_thread;
  if (t < 2.0) return 1;
  return t >= max_threads ? max_threads : int(t);
}

void note_kernel(const char* op, const char* impl, const std::string& problem) {
  {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    auto& m = last_kernels();
    const auto it = m.find(std::string_view(op));
    if (it != m.end())
      it->second = impl;
    else
      m.emplace(op, impl);
  }
  if (verbose())
    std::fprintf(stderr, "convcore: %s %s -> %s (max_threads=%d)\n", op, problem.c_str(), impl,
                 get_num_threads());
}

bool kernel_log_enabled() { return verbose(); }

std::string last_kernel(const std::string& op) {
  std::lock_guard<std::mutex> lock(g_log_mutex);
  auto it = last_kernels().find(op);
  return it == last_kernels().end() ? std::string() : it->second;
}

void set_disabled_kernels(const std::vector<std::string>& names) {
  std::lock_guard<std::mutex> lock(g_disabled_mutex);
  g_disabled = std::set<std::string>(names.begin(), names.end());
  g_any_disabled.store(!g_disabled.empty(), std::memory_order_release);
}

std::vector<std::string> disabled_kernels() {
  std::lock_guard<std::mutex> lock(g_disabled_mutex);
  return std::vector<std::string>(g_disabled.begin(), g_disabled.end());
}

bool kernel_disabled(const char* name) {
  if (!g_any_disabled.load(std::memory_order_acquire)) return false;
  std::lock_guard<std::mutex> lock(g_disabled_mutex);
  return g_disabled.count(name) != 0;
}

}  // namespace convcore
