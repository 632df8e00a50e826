// Instruction-set levels, detected once at runtime and capped by the
// environment variable CONVCORE_MAX_ISA (scalar | portable | avx2 | avx512) or by
// set_max_isa(), so every implementation can be exercised on one machine.
#pragma once

namespace convcore {

enum class Isa : int {
  Scalar = 0,    // the reference kernels: plain loops, the oracle of the others
  Portable = 1,  // blocked kernels in portable C++ (auto-vectorised for the baseline ISA)
  Avx2 = 2,      // AVX2 + FMA micro-kernels
  Avx512 = 3,    // AVX-512 F/BW/DQ/VL + FMA: 32 zmm registers and masked tails
};

const char* isa_name(Isa isa);
// Best level this CPU supports (and convcore was compiled with).
Isa detected_isa();
// Level in force: detected_isa() capped by CONVCORE_MAX_ISA / set_max_isa().
Isa active_isa();
// Caps the level; throws ArgumentError for an unknown name.
void set_max_isa(const char* name);

}  // namespace convcore
