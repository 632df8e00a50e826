// Batch-normalisation micro-kernels, one plane (L contiguous floats of one
// channel of one image) per call; same contracts as the scalar reference in
// kernels/ref/ref_kernels.h.  Sums are formed in float32 over blocks of at
// most 256 values (at most 16 per lane) and carried in double, so their
// error does not grow with the plane size; the variance is a two-pass sum
// about each chunk's own mean (the chunk is in L1 for its second pass),
// chunks combined exactly in double.
#pragma once

#include <cstdint>

namespace convcore {

void batchnorm2d_stats_f32__portable(int64_t L, const float* x, double* sum, double* m2);
void batchnorm2d_fwd_f32__portable(int64_t L, const float* x, float alpha, float beta, bool relu,
                                   float* y);
void batchnorm2d_bwd_reduce_f32__portable(int64_t L, const float* dy, const float* x,
                                          const float* y, float mean, double* sum_g,
                                          double* sum_gx);
void batchnorm2d_bwd_data_f32__portable(int64_t L, const float* dy, const float* x, const float* y,
                                        float mean, float k1, float k2, float k3, float* dx);

#if defined(CONVCORE_HAVE_AVX2_KERNELS)
void batchnorm2d_stats_f32__avx2(int64_t L, const float* x, double* sum, double* m2);
void batchnorm2d_fwd_f32__avx2(int64_t L, const float* x, float alpha, float beta, bool relu,
                               float* y);
void batchnorm2d_bwd_reduce_f32__avx2(int64_t L, const float* dy, const float* x, const float* y,
                                      float mean, double* sum_g, double* sum_gx);
void batchnorm2d_bwd_data_f32__avx2(int64_t L, const float* dy, const float* x, const float* y,
                                    float mean, float k1, float k2, float k3, float* dx);
#endif

#if defined(CONVCORE_HAVE_AVX512_KERNELS)
void batchnorm2d_stats_f32__avx512(int64_t L, const float* x, double* sum, double* m2);
void batchnorm2d_fwd_f32__avx512(int64_t L, const float* x, float alpha, float beta, bool relu,
                                 float* y);
void batchnorm2d_bwd_reduce_f32__avx512(int64_t L, const float* dy, const float* x, const float* y,
                                        float mean, double* sum_g, double* sum_gx);
void batchnorm2d_bwd_data_f32__avx512(int64_t L, const float* dy, const float* x, const float* y,
                                      float mean, float k1, float k2, float k3, float* dx);
#endif

}  // namespace convcore
