#include "common/cpu.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/geometry.h"

namespace convcore {
namespace {

Isa detect() {
#if defined(CONVCORE_HAVE_AVX2_KERNELS) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
#endif
  return Isa::Portable;
}

Isa parse(const char* name) {
  const std::string s(name);
  if (s == "scalar" || s == "ref" || s == "reference") return Isa::Scalar;
  if (s == "portable" || s == "generic") return Isa::Portable;
  if (s == "avx2") return Isa::Avx2;
  throw ArgumentError("max ISA must be one of 'scalar', 'portable' or 'avx2', got '" + s + "'");
}

int initial_cap() {
  const char* env = std::getenv("CONVCORE_MAX_ISA");
  if (env == nullptr || *env == '\0') return int(Isa::Avx2);
  try {
    return int(parse(env));
  } catch (const ArgumentError&) {
    return int(Isa::Scalar);  // an unreadable cap is taken as the safest level
  }
}

std::atomic<int> g_cap{initial_cap()};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Portable: return "portable";
    case Isa::Avx2: return "avx2";
  }
  return "?";
}

Isa detected_isa() {
  static const Isa isa = detect();
  return isa;
}

Isa active_isa() {
  const int cap = g_cap.load(std::memory_order_relaxed);
  const int det = int(detected_isa());
  return Isa(cap < det ? cap : det);
}

void set_max_isa(const char* name) { g_cap.store(int(parse(name)), std::memory_order_relaxed); }

}  // namespace convcore
