// The plane statistics of the batch-norm kernels, shared by every ISA: a
// plane is cut into chunks of 2048 values (8 KB, in L1 for the chunk's
// second pass); each chunk gives its sum and its two-pass centred sums
// about its own mean, and the chunks are merged in order with Chan's
// pairwise formula, in double.  Each kernel file passes its own chunk
// functions; the template lives in an unnamed namespace so that every file,
// compiled with its own ISA flags, keeps its own copy (no ODR merging of an
// AVX-512 instantiation into the portable path).
#pragma once

#include <algorithm>
#include <cstdint>

namespace convcore {
namespace {

constexpr int64_t kBatchNormChunk = 2048;

// ChunkSum(n, x) -> sum of x[0:n]; ChunkCentred(n, x, c, &sd, &sq) -> sums of
// d and d^2 for d = x - c.  Writes the plane's sum and sum of squared
// deviations from its mean.
template <class ChunkSum, class ChunkCentred>
inline void batchnorm2d_plane_stats(int64_t L, const float* x, ChunkSum chunk_sum,
                                    ChunkCentred chunk_centred, double* sum, double* m2) {
  double n_all = 0.0, s_all = 0.0, m2_all = 0.0;
  for (int64_t c0 = 0; c0 < L; c0 += kBatchNormChunk) {
    const int64_t n = std::min(kBatchNormChunk, L - c0);
    const double s = chunk_sum(n, x + c0);
    double sd, sq;
    chunk_centred(n, x + c0, float(s / double(n)), &sd, &sq);
    const double m2c = std::max(sq - sd * sd / double(n), 0.0);
    if (n_all > 0.0) {
      const double delta = s / double(n) - s_all / n_all;
      m2_all += m2c + delta * delta * (n_all * double(n) / (n_all + double(n)));
    } else {
      m2_all = m2c;
    }
    n_all += double(n);
    s_all += s;
  }
  *sum = s_all;
  *m2 = m2_all;
}

}  // namespace
}  // namespace convcore
