// Portable direct-convolution micro-kernels (see kernels/direct_ukernels.h);
// local accumulator arrays the compiler keeps in vector registers.
#include "kernels/direct_ukernels.h"

namespace convcore {

float conv2d_bwd_bias_f32__portable(int64_t N, int64_t K, int64_t PQ, const float* dy, int64_t k) {
  double acc = 0.0;
  for (int64_t n = 0; n < N; ++n) {
    const float* plane = dy + (n * K + k) * PQ;
    float lanes[16] = {};
    int64_t i = 0;
    for (; i + 16 <= PQ; i += 16)
      for (int l = 0; l < 16; ++l) lanes[l] += plane[i + l];
    for (int l = 0; i < PQ; ++i, ++l) lanes[l] += plane[i];
    for (int w = 8; w > 0; w /= 2)
      for (int l = 0; l < w; ++l) lanes[l] += lanes[l + w];
    acc += lanes[0];
  }
  return float(acc);
}

void conv2d_direct_ukernel_f32_6x16__portable(int64_t steps, const float* __restrict w,
                                              const float* x, const int64_t* offsets,
                                              float* __restrict out) {
  float acc[6][16] = {};
  for (int64_t p = 0; p < steps; ++p) {
    const float* xp = x + offsets[p];
    const float* wp = w + p * 6;
    for (int i = 0; i < 6; ++i) {
      const float wi = wp[i];
      for (int j = 0; j < 16; ++j) acc[i][j] += wi * xp[j];
    }
  }
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 16; ++j) out[i * 16 + j] = acc[i][j];
}

void conv2d_direct_ukernel_f32_4x24__portable(int64_t steps, const float* __restrict w,
                                              const float* x, const int64_t* offsets,
                                              float* __restrict out) {
  float acc[4][24] = {};
  for (int64_t p = 0; p < steps; ++p) {
    const float* xp = x + offsets[p];
    const float* wp = w + p * 4;
    for (int i = 0; i < 4; ++i) {
      const float wi = wp[i];
      for (int j = 0; j < 24; ++j) acc[i][j] += wi * xp[j];
    }
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 24; ++j) out[i * 24 + j] = acc[i][j];
}

void conv2d_outer_ukernel_f32_6x16__portable(int64_t steps, const float* const* rows,
                                             const float* __restrict panel, float* c, int64_t ldc,
                                             bool accumulate) {
  float acc[6][16] = {};
  const float* r[6] = {rows[0], rows[1], rows[2], rows[3], rows[4], rows[5]};
  for (int64_t p = 0; p < steps; ++p) {
    const float* bp = panel + p * 16;
    for (int i = 0; i < 6; ++i) {
      const float a = r[i][p];
      for (int j = 0; j < 16; ++j) acc[i][j] += a * bp[j];
    }
  }
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 16; ++j)
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + acc[i][j] : acc[i][j];
}

void conv2d_dot_ukernel_f32_4x3__portable(int64_t n_vec, int64_t images, const float* const* a,
                                          int64_t a_img, const float* const* b, int64_t b_img,
                                          float* out) {
  float acc[4][3][8] = {};
  for (int64_t img = 0; img < images; ++img) {
    const float* a0 = a[0] + img * a_img;
    const float* a1 = a[1] + img * a_img;
    const float* a2 = a[2] + img * a_img;
    const float* a3 = a[3] + img * a_img;
    const float* ar[4] = {a0, a1, a2, a3};
    const float* br[3] = {b[0] + img * b_img, b[1] + img * b_img, b[2] + img * b_img};
    for (int64_t v = 0; v < n_vec; ++v) {
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 3; ++j)
          for (int l = 0; l < 8; ++l) acc[i][j][l] += ar[i][v * 8 + l] * br[j][v * 8 + l];
    }
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 3; ++j) {
      // Fixed pairwise order, the same as the AVX2 kernel's horizontal sum.
      const float* l = acc[i][j];
      const float s = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
      out[i * 3 + j] += s;
    }
}

}  // namespace convcore
