// conv2d forward and gradients on the GPU as implicit GEMMs.
//
// Each pass is a batch of GEMMs  C[z] (M x NC) = A[z] (M x KR) * B[z] (KR x NC)
// whose elements are gathered from the NCHW tensors on the fly (no im2col
// buffer), one batch entry z per group:
//
//   pass          M        NC         KR (reduction)   A            B
//   forward       K/G      N*P*Q      C/G*R*S          weights      input patches
//   grad input    C/G      N*H*W      K/G*R*S          weights^T    grad_output taps
//   grad weight   K/G      C/G*R*S    N*P*Q            grad_output  input patches
//
// One kernel template (conv_igemm_f32) runs all three: 256 threads compute a
// 64 x 64 tile of C, 4 x 4 outputs per thread in registers, stepping through
// the reduction 16 at a time through shared memory (each thread loads 4
// elements of A and 4 of B per step; a thread's B column is fixed, so its
// index decomposition is done once per tile).  Padding, stride and dilation
// are bounds checks in the gathers; out-of-range taps read as 0.
//
// Grad input is the gather form (each input element sums the outputs whose
// windows cover it, as kernels/ref/conv2d_ref.cpp does), so no atomics.  Grad
// weight has a long reduction (N*P*Q) into a small output: it is split into
// chunks whose length depends only on the problem shape, each chunk's partial
// GEMM is written to a workspace, and a second kernel sums the chunks in
// order (in double): deterministic, independent of the GPU model.  Grad bias
// is a per-channel fixed-order tree reduction in double.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "common/runtime.h"
#include "cuda/cuda_api.h"
#include "cuda/cuda_common.h"

namespace convcore {
namespace cuda {
namespace {

constexpr int BM = 64, BN = 64, BK = 16;
constexpr int kGemmThreads = 256;  // 16 x 16 threads, 4 x 4 outputs each

// The geometry as plain numbers for device code.
struct ConvArgs {
  int64_t N, C, H, W, K, R, S, G;
  int64_t sh, sw, pt, pl, dh, dw, P, Q;
  int64_t Cg, Kg, RS, PQ, HW;
};

ConvArgs conv_args(const Conv2dGeometry& g) {
  ConvArgs a;
  a.N = g.N, a.C = g.C, a.H = g.H, a.W = g.W, a.K = g.K, a.R = g.R, a.S = g.S, a.G = g.G;
  a.sh = g.stride_h, a.sw = g.stride_w, a.pt = g.pad_top, a.pl = g.pad_left;
  a.dh = g.dil_h, a.dw = g.dil_w, a.P = g.P, a.Q = g.Q;
  a.Cg = g.C / g.G, a.Kg = g.K / g.G, a.RS = g.R * g.S, a.PQ = g.P * g.Q, a.HW = g.H * g.W;
  return a;
}

// ---- the three gathers -----------------------------------------------------
// An op describes one pass: sizes M(), NC(), Z(); the reduction range of
// batch entry z; A's row kk as a pointer p with A[m][kk] = p[m * a_ld()];
// B's column n as a small state and B[kk][n] = b(state, kk); and where C goes.

// Forward: A = weights of group z (K/G x C/G*R*S, row-major); B = patches.
struct FwdOp {
  ConvArgs g;
  const float* x;
  const float* w;
  const float* bias;  // may be null
  float* y;

  __host__ __device__ int64_t M() const { return g.Kg; }
  __host__ __device__ int64_t NC() const { return g.N * g.PQ; }
  __host__ __device__ int64_t Z() const { return g.G; }
  __host__ __device__ void k_range(int64_t, int64_t* k0, int64_t* k1) const {
    *k0 = 0, *k1 = g.Cg * g.RS;
  }
  __host__ __device__ int64_t a_ld() const { return g.Cg * g.RS; }
  __host__ __device__ const float* a_row(int64_t z, int64_t kk) const {
    return w + z * g.Kg * g.Cg * g.RS + kk;
  }

  struct Col {  // output pixel n = (image, p, q)
    const float* xg;
    int64_t h0, w0;
  };
  __host__ __device__ Col col(int64_t z, int64_t n) const {
    const int64_t img = n / g.PQ, pq = n - img * g.PQ, p = pq / g.Q, q = pq - p * g.Q;
    return Col{x + (img * g.C + z * g.Cg) * g.HW, p * g.sh - g.pt, q * g.sw - g.pl};
  }
  __host__ __device__ float b(const Col& c, int64_t kk) const {  // kk = (channel, r, s)
    const int64_t ch = kk / g.RS, rs = kk - ch * g.RS, r = rs / g.S, s = rs - r * g.S;
    const int64_t h = c.h0 + r * g.dh, ww = c.w0 + s * g.dw;
    return (h >= 0 && h < g.H && ww >= 0 && ww < g.W) ? c.xg[ch * g.HW + h * g.W + ww] : 0.0f;
  }
  __host__ __device__ void store(int64_t z, int64_t m, int64_t n, float v) const {
    const int64_t img = n / g.PQ, pq = n - img * g.PQ, k = z * g.Kg + m;
    y[(img * g.K + k) * g.PQ + pq] = bias ? v + bias[k] : v;
  }
};

// Grad input: A[c][(k, r, s)] = w[k][c][r][s] within group z; B = the
// grad_output element each tap of input pixel n = (image, h, w) came from.
struct DataOp {
  ConvArgs g;
  const float* dy;
  const float* w;
  float* dx;

  __host__ __device__ int64_t M() const { return g.Cg; }
  __host__ __device__ int64_t NC() const { return g.N * g.HW; }
  __host__ __device__ int64_t Z() const { return g.G; }
  __host__ __device__ void k_range(int64_t, int64_t* k0, int64_t* k1) const {
    *k0 = 0, *k1 = g.Kg * g.RS;
  }
  __host__ __device__ int64_t a_ld() const { return g.RS; }
  __host__ __device__ const float* a_row(int64_t z, int64_t kk) const {
    const int64_t k = kk / g.RS, rs = kk - k * g.RS;
    return w + (z * g.Kg + k) * g.Cg * g.RS + rs;
  }

  struct Col {  // input pixel n = (image, h, w), h and w shifted by the padding
    const float* dyg;
    int64_t hp, wp;
  };
  __host__ __device__ Col col(int64_t z, int64_t n) const {
    const int64_t img = n / g.HW, hw = n - img * g.HW, h = hw / g.W, xw = hw - h * g.W;
    return Col{dy + (img * g.K + z * g.Kg) * g.PQ, h + g.pt, xw + g.pl};
  }
  __host__ __device__ float b(const Col& c, int64_t kk) const {  // kk = (output channel, r, s)
    const int64_t k = kk / g.RS, rs = kk - k * g.RS, r = rs / g.S, s = rs - r * g.S;
    const int64_t ph = c.hp - r * g.dh, qw = c.wp - s * g.dw;
    if (ph < 0 || qw < 0 || ph % g.sh != 0 || qw % g.sw != 0) return 0.0f;
    const int64_t p = ph / g.sh, q = qw / g.sw;
    return (p < g.P && q < g.Q) ? c.dyg[k * g.PQ + p * g.Q + q] : 0.0f;
  }
  __host__ __device__ void store(int64_t z, int64_t m, int64_t n, float v) const {
    const int64_t img = n / g.HW, hw = n - img * g.HW;
    dx[(img * g.C + z * g.Cg + m) * g.HW + hw] = v;
  }
};

// Grad weight: batch entry z = (group, chunk); A[k][(image, p, q)] = dy;
// B[(image, p, q)][(c, r, s)] = the input element under that tap.  Chunk j
// reduces over [j*chunk, (j+1)*chunk) and writes its own slice of `out`.
struct WeightOp {
  ConvArgs g;
  const float* dy;
  const float* x;
  float* out;  // splits x (K x C/G*R*S); the weight gradient itself when splits == 1
  int64_t splits, chunk;

  __host__ __device__ int64_t M() const { return g.Kg; }
  __host__ __device__ int64_t NC() const { return g.Cg * g.RS; }
  __host__ __device__ int64_t Z() const { return g.G * splits; }
  __host__ __device__ void k_range(int64_t z, int64_t* k0, int64_t* k1) const {
    const int64_t j = z % splits, total = g.N * g.PQ;
    *k0 = j * chunk;
    *k1 = (j + 1) * chunk < total ? (j + 1) * chunk : total;
  }
  __host__ __device__ int64_t a_ld() const { return g.PQ; }
  __host__ __device__ const float* a_row(int64_t z, int64_t kk) const {
    const int64_t grp = z / splits, img = kk / g.PQ, pq = kk - img * g.PQ;
    return dy + (img * g.K + grp * g.Kg) * g.PQ + pq;
  }

  struct Col {  // weight element n = (c, r, s) of group z
    const float* xc;
    int64_t hr, ws;
  };
  __host__ __device__ Col col(int64_t z, int64_t n) const {
    const int64_t grp = z / splits, c = n / g.RS, rs = n - c * g.RS, r = rs / g.S, s = rs - r * g.S;
    return Col{x + (grp * g.Cg + c) * g.HW, r * g.dh - g.pt, s * g.dw - g.pl};
  }
  __host__ __device__ float b(const Col& c, int64_t kk) const {  // kk = (image, p, q)
    const int64_t img = kk / g.PQ, pq = kk - img * g.PQ, p = pq / g.Q, q = pq - p * g.Q;
    const int64_t h = p * g.sh + c.hr, ww = q * g.sw + c.ws;
    return (h >= 0 && h < g.H && ww >= 0 && ww < g.W) ? c.xc[img * g.C * g.HW + h * g.W + ww]
                                                      : 0.0f;
  }
  __host__ __device__ void store(int64_t z, int64_t m, int64_t n, float v) const {
    const int64_t grp = z / splits, j = z % splits;
    out[(j * g.K + grp * g.Kg + m) * g.Cg * g.RS + n] = v;
  }
};

// ---- the tiled kernel ---------------------------------------------------------
// Registers: 16 accumulators + 8 operands per thread.  Shared memory: one A
// and one B tile (8.2 KiB); A is stored k-major with one float of padding so
// the k-fastest loads spread over the banks, and both tiles are read as
// broadcasts in the inner loop.  Grid-stride over all three grid dimensions,
// so any problem size fits the launch limits.
//
// The three per-thread steps are plain functions of the thread index t, so
// the same code also runs in a host emulation of the block (every thread in
// turn between the barriers) when no GPU is at hand.
using ATile = float[BK][BM + 1];
using BTile = float[BK][BN];

// Thread t's column of B (its 4 B loads per step all fall in column t % BN).
template <class Op>
__host__ __device__ __forceinline__ typename Op::Col igemm_col(const Op& op, int t, int64_t z,
                                                               int64_t n0, bool* valid) {
  const int64_t n = n0 + t % BN;
  *valid = n < op.NC();
  return op.col(z, *valid ? n : 0);
}

// Thread t's 4 elements of A (column t % BK, rows t / BK + 16 i) and of B
// (rows t / BN + 4 i, column t % BN) for the reduction step at k0.
template <class Op>
__host__ __device__ __forceinline__ void igemm_load(const Op& op, int t, int64_t z, int64_t m0,
                                                    int64_t k0, int64_t k_end,
                                                    const typename Op::Col& col, bool col_valid,
                                                    ATile& As, BTile& Bs) {
  const int a_k = t % BK, a_m = t / BK;
  const int64_t M = op.M();
  const int64_t ka = k0 + a_k;
  const float* ap = ka < k_end ? op.a_row(z, ka) : nullptr;
  CONVCORE_UNROLL
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + a_m + 16 * i;
    As[a_k][a_m + 16 * i] = (ap != nullptr && m < M) ? ap[m * op.a_ld()] : 0.0f;
  }
  const int b_n = t % BN, b_k = t / BN;
  CONVCORE_UNROLL
  for (int i = 0; i < 4; ++i) {
    const int64_t kb = k0 + b_k + 4 * i;
    Bs[b_k + 4 * i][b_n] = (col_valid && kb < k_end) ? op.b(col, kb) : 0.0f;
  }
}

// acc (rows t / 16 + 16 i, columns t % 16 + 16 j) += As * Bs over the step.
__host__ __device__ __forceinline__ void igemm_fma(int t, const ATile& As, const BTile& Bs,
                                                   float (&acc)[4][4]) {
  const int tx = t % 16, ty = t / 16;
  CONVCORE_UNROLL
  for (int kk = 0; kk < BK; ++kk) {
    float av[4], bv[4];
    CONVCORE_UNROLL
    for (int i = 0; i < 4; ++i) av[i] = As[kk][ty + 16 * i];
    CONVCORE_UNROLL
    for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx + 16 * j];
    CONVCORE_UNROLL
    for (int i = 0; i < 4; ++i) CONVCORE_UNROLL
    for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
  }
}

template <class Op>
__host__ __device__ __forceinline__ void igemm_store(const Op& op, int t, int64_t z, int64_t m0,
                                                     int64_t n0, const float (&acc)[4][4]) {
  const int tx = t % 16, ty = t / 16;
  const int64_t M = op.M(), NC = op.NC();
  CONVCORE_UNROLL
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty + 16 * i;
    if (m >= M) continue;
    CONVCORE_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n < NC) op.store(z, m, n, acc[i][j]);
    }
  }
}

// What one thread keeps across the steps of a tile: its B column and its
// 4 x 4 accumulators.
template <class Op>
struct IgemmThread {
  typename Op::Col col;
  bool col_valid;
  float acc[4][4];
};

// The block loop of conv_igemm_f32: block (bx, by, bz) of a (gx, gy, gz) grid
// strides over the batch entries z, the row tiles and the column tiles, and
// steps each tile through its reduction range BK at a time.  `threads` runs
// the per-thread steps: on the GPU, the calling thread only, with
// __syncthreads() as the barrier; in the host emulation, every thread of the
// block in turn, so the barrier is the end of the turn.
template <class Op, class Threads>
__host__ __device__ __forceinline__ void igemm_block(const Op& op, Threads& threads, ATile& As,
                                                     BTile& Bs, int64_t bx, int64_t by, int64_t bz,
                                                     int64_t gx, int64_t gy, int64_t gz) {
  const int64_t Z = op.Z();
  const int64_t m_tiles = (op.M() + BM - 1) / BM, n_tiles = (op.NC() + BN - 1) / BN;
  for (int64_t z = bz; z < Z; z += gz) {
    int64_t k_begin, k_end;
    op.k_range(z, &k_begin, &k_end);
    for (int64_t mt = by; mt < m_tiles; mt += gy) {
      for (int64_t nt = bx; nt < n_tiles; nt += gx) {
        const int64_t m0 = mt * BM, n0 = nt * BN;
        threads.each([&](int t, IgemmThread<Op>& s) {
          s.col = igemm_col(op, t, z, n0, &s.col_valid);
          CONVCORE_UNROLL
          for (int i = 0; i < 4; ++i) CONVCORE_UNROLL
          for (int j = 0; j < 4; ++j) s.acc[i][j] = 0.0f;
        });
        for (int64_t k0 = k_begin; k0 < k_end; k0 += BK) {
          threads.each([&](int t, IgemmThread<Op>& s) {
            igemm_load(op, t, z, m0, k0, k_end, s.col, s.col_valid, As, Bs);
          });
          threads.sync();
          threads.each([&](int t, IgemmThread<Op>& s) { igemm_fma(t, As, Bs, s.acc); });
          threads.sync();
        }
        threads.each([&](int t, IgemmThread<Op>& s) { igemm_store(op, t, z, m0, n0, s.acc); });
      }
    }
  }
}

// The GPU side of igemm_block: one thread, the block's barrier.
template <class Op>
struct OneGpuThread {
  int t;
  IgemmThread<Op> s;
  template <class F>
  __host__ __device__ __forceinline__ void each(F&& f) {
    f(t, s);
  }
  __host__ __device__ __forceinline__ void sync() {
#if defined(__CUDA_ARCH__)
    __syncthreads();
#endif
  }
};

template <class Op>
__global__ void __launch_bounds__(kGemmThreads) conv_igemm_f32(Op op) {
  __shared__ ATile As;
  __shared__ BTile Bs;
  OneGpuThread<Op> self;
  self.t = int(threadIdx.x);
  igemm_block(op, self, As, Bs, blockIdx.x, blockIdx.y, blockIdx.z, gridDim.x, gridDim.y,
              gridDim.z);
}

// The launch plan of conv_igemm_f32: a grid of (column tiles, row tiles,
// batch entries), each capped at its launch limit (the block loop strides).
struct Grid3 {
  int64_t x, y, z;
};

template <class Op>
Grid3 igemm_grid(const Op& op) {
  const int64_t n_tiles = detail::ceil_div(op.NC(), BN), m_tiles = detail::ceil_div(op.M(), BM);
  return Grid3{std::min<int64_t>(n_tiles, INT_MAX), std::min<int64_t>(m_tiles, 65535),
               std::min<int64_t>(op.Z(), 65535)};
}

template <class Op>
void launch_igemm(const Op& op, const char* name) {
  const Grid3 g = igemm_grid(op);
  const dim3 grid(unsigned(g.x), unsigned(g.y), unsigned(g.z));
  conv_igemm_f32<Op><<<grid, kGemmThreads, 0, cudaStreamLegacy>>>(op);
  detail::check_launch(name);
}

// Element i of the weight gradient: the sum of its chunks in chunk order.
__host__ __device__ __forceinline__ float weight_reduce_one(int64_t numel, int64_t splits,
                                                            const float* partial, int64_t i) {
  double acc = 0.0;
  for (int64_t j = 0; j < splits; ++j) acc += double(partial[j * numel + i]);
  return float(acc);
}

__global__ void conv2d_bwd_weight_reduce_f32__cuda(int64_t numel, int64_t splits,
                                                   const float* __restrict__ partial,
                                                   float* __restrict__ dw) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += int64_t(gridDim.x) * blockDim.x)
    dw[i] = weight_reduce_one(numel, splits, partial, i);
}

// Grad bias: one block of kBiasThreads per output channel k.  Thread t first
// sums its stride of the channel's N*P*Q elements; then a tree halves the
// active threads each step (strides bias_tree_stride(0) = kBiasThreads/2,
// ..., 1, then 0: done; a barrier after each step); thread 0 writes part[0].
constexpr int kBiasThreads = 256;

__host__ __device__ __forceinline__ double bias_partial(const ConvArgs& g, const float* dy,
                                                        int64_t k, int t) {
  const int64_t total = g.N * g.PQ;
  double acc = 0.0;
  for (int64_t e = t; e < total; e += kBiasThreads) {
    const int64_t img = e / g.PQ, pq = e - img * g.PQ;
    acc += double(dy[(img * g.K + k) * g.PQ + pq]);
  }
  return acc;
}

__host__ __device__ __forceinline__ int bias_tree_stride(int step) {
  return (kBiasThreads / 2) >> step;
}

__host__ __device__ __forceinline__ void bias_tree_step(double* part, int t, int s) {
  if (t < s) part[t] += part[t + s];
}

__global__ void __launch_bounds__(kBiasThreads)
    conv2d_bwd_bias_f32__cuda(ConvArgs g, const float* __restrict__ dy, float* __restrict__ db) {
  __shared__ double part[kBiasThreads];
  const int t = threadIdx.x;
  for (int64_t k = blockIdx.x; k < g.K; k += gridDim.x) {
    part[t] = bias_partial(g, dy, k, t);
    __syncthreads();
    for (int step = 0, s; (s = bias_tree_stride(step)) > 0; ++step) {
      bias_tree_step(part, t, s);
      __syncthreads();
    }
    if (t == 0) db[k] = float(part[0]);
    __syncthreads();
  }
}

// Chunking of the weight-gradient reduction: enough blocks to fill a large
// GPU, chunks of at least kMinChunk terms, a workspace of at most 256 MiB.
// Depends on the shape only, so the result is the same on every GPU.
constexpr int64_t kTargetBlocks = 1024, kMinChunk = 512, kMaxWorkspaceFloats = int64_t(1) << 26;

void weight_split(const ConvArgs& a, int64_t* splits, int64_t* chunk) {
  const int64_t total = a.N * a.PQ, wnumel = a.K * a.Cg * a.RS;
  const int64_t tiles = a.G * detail::ceil_div(a.Kg, BM) * detail::ceil_div(a.Cg * a.RS, BN);
  int64_t s = detail::ceil_div(kTargetBlocks, tiles);
  s = std::min(s, detail::ceil_div(total, kMinChunk));
  s = std::min(s, std::max<int64_t>(1, kMaxWorkspaceFloats / wnumel));
  s = std::max<int64_t>(s, 1);
  const int64_t c = detail::ceil_div(detail::ceil_div(total, s), BK) * BK;
  *chunk = c;
  *splits = detail::ceil_div(total, c);
}

// The launch plan of the weight gradient: the split, the workspace of the
// partial sums (0 bytes when there is a single chunk: the GEMM writes dw),
// and the reduce kernel's grid.
struct WeightPlan {
  int64_t splits, chunk, scratch_bytes, reduce_blocks;
};

WeightPlan weight_plan(const ConvArgs& a) {
  WeightPlan p{1, 0, 0, 0};
  weight_split(a, &p.splits, &p.chunk);
  if (p.splits > 1) {
    const int64_t wnumel = a.K * a.Cg * a.RS;
    p.scratch_bytes = p.splits * wnumel * int64_t(sizeof(float));
    p.reduce_blocks = detail::blocks_for(wnumel);
  }
  return p;
}

// Grad bias: one block per channel, at most kMaxBlocks (the blocks stride).
int64_t bias_blocks(int64_t K) { return std::min<int64_t>(K, detail::kMaxBlocks); }

}  // namespace

void conv2d_forward(const Conv2dGeometry& g, const float* x, const float* w, const float* b,
                    float* y) {
  if (g.N == 0) return;
  note_kernel_for("conv2d_fwd", "conv2d_fwd_f32_igemm64x64__cuda", g);
  launch_igemm(FwdOp{conv_args(g), x, w, b, y}, "conv2d_fwd_f32_igemm64x64__cuda");
}

void conv2d_backward_data(const Conv2dGeometry& g, const float* dy, const float* w, float* dx) {
  if (g.N == 0) return;
  note_kernel_for("conv2d_bwd_data", "conv2d_bwd_data_f32_igemm64x64__cuda", g);
  launch_igemm(DataOp{conv_args(g), dy, w, dx}, "conv2d_bwd_data_f32_igemm64x64__cuda");
}

void conv2d_backward_weight(const Conv2dGeometry& g, const float* dy, const float* x, float* dw) {
  const ConvArgs a = conv_args(g);
  const int64_t wnumel = a.K * a.Cg * a.RS;
  if (g.N == 0) {
    fill_zero(dw, size_t(wnumel) * sizeof(float));
    return;
  }
  note_kernel_for("conv2d_bwd_weight", "conv2d_bwd_weight_f32_igemm64x64__cuda", g);
  const WeightPlan plan = weight_plan(a);
  if (plan.splits == 1) {
    launch_igemm(WeightOp{a, dy, x, dw, 1, plan.chunk}, "conv2d_bwd_weight_f32_igemm64x64__cuda");
    return;
  }
  detail::Scratch partial(size_t(plan.scratch_bytes));
  float* p = static_cast<float*>(partial.data());
  launch_igemm(WeightOp{a, dy, x, p, plan.splits, plan.chunk},
               "conv2d_bwd_weight_f32_igemm64x64__cuda");
  conv2d_bwd_weight_reduce_f32__cuda<<<unsigned(plan.reduce_blocks), detail::kThreads, 0,
                                       cudaStreamLegacy>>>(wnumel, plan.splits, p, dw);
  detail::check_launch("conv2d_bwd_weight_reduce_f32__cuda");
}

void conv2d_backward_bias(const Conv2dGeometry& g, const float* dy, float* db) {
  if (g.K == 0) return;
  note_kernel_for("conv2d_bwd_bias", "conv2d_bwd_bias_f32__cuda", g);
  conv2d_bwd_bias_f32__cuda<<<unsigned(bias_blocks(g.K)), kBiasThreads, 0, cudaStreamLegacy>>>(
      conv_args(g), dy, db);
  detail::check_launch("conv2d_bwd_bias_f32__cuda");
}

}  // namespace cuda
}  // namespace convcore
