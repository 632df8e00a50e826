#include "common/cpu.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/geometry.h"

namespace convcore {
namespace {

Isa detect() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // libgcc's feature bits already require the OS to save the vector state
  // (XGETBV), so an AVX-512 CPU under an OS that does not save zmm reports
  // AVX2 at most.
#if defined(CONVCORE_HAVE_AVX512_KERNELS)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("fma"))
    return Isa::Avx512;
#endif
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
#endif
#endif
  return Isa::Portable;
}

Isa parse(const char* name) {
  const std::string s(name);
  if (s == "scalar" || s == "ref" || s == "reference") return Isa::Scalar;
  if (s == "portable" || s == "generic") return Isa::Portable;
  if (s == "avx2") return Isa::Avx2;
  if (s == "avx512") return Isa::Avx512;
  throw ArgumentError("max ISA must be one of 'scalar', 'portable', 'avx2' or 'avx512', got '" + s +
                      "'");
}

int initial_cap() {
  const char* env = std::getenv("CONVCORE_MAX_ISA");
  if (env == nullptr || *env == '\0') return int(Isa::Avx512);
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
    case Isa::Scalar:
      return "scalar";
    case Isa::Portable:
      return "portable";
    case Isa::Avx2:
      return "avx2";
    case Isa::Avx512:
      return "avx512";
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
