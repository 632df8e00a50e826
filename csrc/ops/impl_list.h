// The one pattern every op uses to choose its kernel: an ordered list of
// implementations, each with a name, the lowest ISA level it needs, a test
// of whether it handles a problem, and a function that runs it.  The first
// entry within the active ISA cap that applies runs; the scalar reference
// ends every list and applies to every valid problem.  The verbose log,
// last_kernel() and implementations() all read these same lists, so a new
// kernel family is a new entry (and new files), never a branch in a driver.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "common/cpu.h"
#include "common/runtime.h"

namespace convcore {

template <class Problem, class Args>
struct Impl {
  const char* name;  // op_direction_dtype_[tile]__isa, e.g. conv2d_fwd_f32_direct_6x16__avx2
  Isa isa;           // lowest instruction-set level it needs
  bool (*applicable)(const Problem&);
  void (*run)(const Problem&, const Args&);
};

template <class Problem>
bool always(const Problem&) {
  return true;
}

// Whether the selection may take `impl` for `p`: within the ISA cap, not
// disabled, and applicable.
template <class Problem, class Args>
bool selectable(const Impl<Problem, Args>& impl, Isa cap, const Problem& p) {
  return int(impl.isa) <= int(cap) && !kernel_disabled(impl.name) && impl.applicable(p);
}

template <class Problem, class Args, std::size_t L>
const Impl<Problem, Args>& select_impl(const Impl<Problem, Args> (&impls)[L], const Problem& p) {
  static_assert(L > 0, "an implementation list ends in the scalar reference");
  const Isa cap = active_isa();
  for (const Impl<Problem, Args>& impl : impls)
    if (selectable(impl, cap, p)) return impl;
  return impls[L - 1];
}

// Selects, records (note_kernel_for: last_kernel, and the verbose log with
// the problem's name()) and runs.
template <class Problem, class Args, std::size_t L>
void run_first_applicable(const char* op, const Impl<Problem, Args> (&impls)[L], const Problem& p,
                          const Args& args) {
  const Impl<Problem, Args>& impl = select_impl(impls, p);
  note_kernel_for(op, impl.name, p);
  impl.run(p, args);
}

// For an entry that finds, while running, that it cannot take a problem
// after all (the Winograd kernels on NaN or inf data): runs the entry that
// would have been selected had `self` not applied, and records it.
template <class Problem, class Args, std::size_t L>
void run_next_applicable(const char* op, const Impl<Problem, Args> (&impls)[L], const char* self,
                         const Problem& p, const Args& args) {
  const Isa cap = active_isa();
  std::size_t i = 0;
  while (i < L && std::string(impls[i].name) != self) ++i;
  const Impl<Problem, Args>* chosen = &impls[L - 1];
  for (++i; i + 1 < L; ++i)
    if (selectable(impls[i], cap, p)) {
      chosen = &impls[i];
      break;
    }
  note_kernel_for(op, chosen->name, p);
  chosen->run(p, args);
}

template <class Problem, class Args, std::size_t L>
std::vector<std::string> impl_names(const Impl<Problem, Args> (&impls)[L]) {
  std::vector<std::string> out;
  for (const Impl<Problem, Args>& impl : impls) out.push_back(impl.name);
  return out;
}

// Each op's list of names, defined beside its list in ops/<op>.cpp and
// gathered by list_implementations() (ops/implementations.cpp).
std::vector<std::string> conv2d_fwd_impl_names();
std::vector<std::string> conv2d_bwd_data_impl_names();
std::vector<std::string> conv2d_bwd_weight_impl_names();
std::vector<std::string> conv2d_bwd_bias_impl_names();
std::vector<std::string> linear_fwd_impl_names();
std::vector<std::string> linear_bwd_data_impl_names();
std::vector<std::string> linear_bwd_weight_impl_names();
std::vector<std::string> maxpool2d_fwd_impl_names();
std::vector<std::string> maxpool2d_bwd_impl_names();
std::vector<std::string> maxpool2d_fwd_offsets_impl_names();
std::vector<std::string> maxpool2d_bwd_offsets_impl_names();
std::vector<std::string> conv2d_relu_maxpool2d_fwd_impl_names();
std::vector<std::string> conv2d_bwd_weight_maxpool2d_impl_names();
std::vector<std::string> pad2d_fwd_impl_names();
std::vector<std::string> pad2d_bwd_impl_names();
std::vector<std::string> batchnorm2d_fwd_impl_names();
std::vector<std::string> batchnorm2d_bwd_impl_names();
std::vector<std::string> adam_step_impl_names();
std::vector<std::string> sgd_step_impl_names();

}  // namespace convcore
