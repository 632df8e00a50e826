// Winograd F(2x2, 3x3) conv micro-kernels (driver: ops/conv2d_winograd.cpp).
//
// A 3x3 stride-1 convolution computes each 2x2 output tile from a 4x4 input
// tile d and each 3x3 filter g as Y = A^T [(G g G^T) . (B^T d B)] A, 16
// multiplications instead of 36 (Lavin & Gray, 2016), with
//   B^T = | 1  0 -1  0 |   G = | 1    0    0   |   A^T = | 1  1  1  0 |
//         | 0  1  1  0 |       | 1/2  1/2  1/2 |         | 0  1 -1 -1 |
//         | 0 -1  1  0 |       | 1/2 -1/2  1/2 |
//         | 0  1  0 -1 |       | 0    0    1   |
// Summed over input channels, the 16 products become 16 independent GEMMs
// (one per transformed position xi = 4 * i + j): M[xi] = U[xi] V[xi].
//
// Why F(2x2, 3x3) and not a larger tile: every entry of B, G and A is 0, +-1
// or +-1/2, so the transforms add no rounding beyond a few additions, and an
// output of the tile reads only the rows and columns of its own 3x3 window
// (rows 0-2 of B^T d B come from d's rows 0-2, rows 1-3 from rows 1-3): an
// output whose window is zero is exactly zero, as in the direct method.
// F(4x4, 3x3) needs the points +-2 and +-1/2 and loses about a decimal digit.
//
// Non-finite data: an inf in a tile becomes inf - inf = NaN in the
// transforms for outputs where the direct sum gives +-inf, so a call whose
// input or weights hold NaN or +-inf is left to the direct kernels (the input
// transform reports it; the driver then returns false).
//
// Layout: tiles are in the SIMD lanes.  A block of T tiles (whole tile rows
// of consecutive images) is transformed into V[xi][c][t] (t contiguous, row
// pitch Tp, a multiple of 16); the GEMM writes M[xi][k][t]; the output
// transform turns 16 tiles of M into two NCHW output rows.  So the NCHW
// arrays are read and written row by row, with no reorder pass.
#pragma once

#include <cstdint>

namespace convcore {

// Input transform of `rows` consecutive tile rows of one channel plane
// (H x W, NCHW): tile t < nt <= 16 of tile row j starts at input row
// iy0 + 2 j and column ix0 + 2 t (outside the plane: zero padding).  Writes
// v[xi * ldxi + j * ldt + t] for xi < 16.  Returns false if any value it
// read is NaN or +-inf (the driver then leaves the call to the direct path).
using conv_wino_input_fn = bool (*)(const float* plane, int64_t H, int64_t W, int64_t iy0,
                                    int64_t ix0, int64_t nt, int64_t rows, float* v, int64_t ldt,
                                    int64_t ldxi);

// One GEMM tile of the 16: m[r * ldm + t] = sum_{c < C} u[c * 8 + r] * v[c * ldv + t]
// for r < 8 and t < 16 * nv (nv 1 or 2); the reduction runs over c in
// increasing order.  u is a packed panel of 8 output channels.
using conv_wino_gemm_fn = void (*)(int64_t C, const float* u, const float* v, int64_t ldv, int nv,
                                   float* m, int64_t ldm);
constexpr int64_t kWinoPanelK = 8;

// Output transform of `rows` consecutive tile rows of one output channel:
// tiles t < nt <= 16 of m[xi * ldxi + j * ldt + t] become output rows
// oy0 + 2 j and oy0 + 2 j + 1 (those < P), columns ox0 .. ox0 + 2 nt - 1
// clipped to Q, of the plane `out` (P x Q).  bias is added after the
// transform; relu applies the fused ReLU (NaN kept, -0 to +0, as relu_f32 in
// ops/conv2d_drivers.h).
using conv_wino_output_fn = void (*)(const float* m, int64_t ldxi, int64_t nt, int64_t rows,
                                     int64_t ldt, float bias, bool relu, float* out, int64_t P,
                                     int64_t Q, int64_t oy0, int64_t ox0);

#if defined(CONVCORE_HAVE_AVX512_KERNELS)
bool conv2d_wino_f2x3_input__avx512(const float* plane, int64_t H, int64_t W, int64_t iy0,
                                    int64_t ix0, int64_t nt, int64_t rows, float* v, int64_t ldt,
                                    int64_t ldxi);
void conv2d_wino_f2x3_gemm_8x32__avx512(int64_t C, const float* u, const float* v, int64_t ldv,
                                        int nv, float* m, int64_t ldm);
void conv2d_wino_f2x3_output__avx512(const float* m, int64_t ldxi, int64_t nt, int64_t rows,
                                     int64_t ldt, float bias, bool relu, float* out, int64_t P,
                                     int64_t Q, int64_t oy0, int64_t ox0);
#endif

}  // namespace convcore
