// Softmax cross-entropy on the host: the row function of
// kernels/ref/loss_ref.cpp (the CUDA kernel's, csrc/cuda/train_ops.cu) over
// the rows.
#include <cstdint>

#include "common/runtime.h"
#include "kernels/ref/ref_kernels.h"
#include "ops/ops.h"

namespace convcore {

void cross_entropy(int64_t N, int64_t C, const float* logits, const int64_t* target, float scale,
                   float* grad, double* row_loss, int64_t* pred) {
  // N rows of a few classes: microseconds, one thread.
  if (N > 0) note_kernel("cross_entropy", "cross_entropy_f32__ref", "");
  for (int64_t i = 0; i < N; ++i)
    cross_entropy_row_f32__ref(C, logits + i * C, target[i], scale, grad + i * C, row_loss + i,
                               pred + i);
}

}  // namespace convcore
