// list_implementations(): every op's ordered implementation list, by name.
#include <string>
#include <vector>

#include "common/geometry.h"
#include "common/runtime.h"
#include "ops/impl_list.h"
#include "ops/ops.h"

namespace convcore {
namespace {

struct OpLists {
  const char* op;
  std::vector<std::string> (*names)();
};

const OpLists kOps[] = {
    {"conv2d_fwd", conv2d_fwd_impl_names},
    {"conv2d_bwd_data", conv2d_bwd_data_impl_names},
    {"conv2d_bwd_weight", conv2d_bwd_weight_impl_names},
    {"conv2d_bwd_bias", conv2d_bwd_bias_impl_names},
    {"linear_fwd", linear_fwd_impl_names},
    {"linear_bwd_data", linear_bwd_data_impl_names},
    {"linear_bwd_weight", linear_bwd_weight_impl_names},
    {"maxpool2d_fwd", maxpool2d_fwd_impl_names},
    {"maxpool2d_bwd", maxpool2d_bwd_impl_names},
    {"maxpool2d_fwd_offsets", maxpool2d_fwd_offsets_impl_names},
    {"maxpool2d_bwd_offsets", maxpool2d_bwd_offsets_impl_names},
    {"conv2d_relu_maxpool2d_fwd", conv2d_relu_maxpool2d_fwd_impl_names},
    {"conv2d_bwd_weight_maxpool2d", conv2d_bwd_weight_maxpool2d_impl_names},
    {"pad2d_fwd", pad2d_fwd_impl_names},
    {"pad2d_bwd", pad2d_bwd_impl_names},
    {"batchnorm2d_fwd", batchnorm2d_fwd_impl_names},
    {"batchnorm2d_bwd", batchnorm2d_bwd_impl_names},
    {"adam_step", adam_step_impl_names},
    {"sgd_step", sgd_step_impl_names},
};

}  // namespace

std::vector<std::string> list_implementations(const std::string& op) {
  std::string known;
  for (const OpLists& entry : kOps) {
    if (op == entry.op) return entry.names();
    known += known.empty() ? "" : ", ";
    known += entry.op;
  }
  throw ArgumentError("op: unknown op '" + op + "'; expected one of " + known);
}

void set_disabled_implementations(const std::vector<std::string>& names) {
  for (const std::string& name : names) {
    bool found = false;
    for (const OpLists& entry : kOps) {
      const std::vector<std::string> list = entry.names();
      for (size_t i = 0; i < list.size(); ++i) {
        if (list[i] != name) continue;
        if (i + 1 == list.size())
          throw ArgumentError("names: '" + name + "' is the scalar reference of " + entry.op +
                              ", which ends the list and cannot be disabled");
        found = true;
      }
    }
    if (!found)
      throw ArgumentError("names: unknown implementation '" + name +
                          "'; convcore.implementations(op) lists each op's");
  }
  set_disabled_kernels(names);
}

}  // namespace convcore
