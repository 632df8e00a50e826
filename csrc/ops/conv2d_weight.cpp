// conv2d weight-gradient drivers: a long reduction over N*P*Q into K*C*R*S,
// split into batch chunks fixed by N alone and summed in chunk order, so the
// result is bitwise the same for any thread count.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/conv2d_drivers.h"
#include "ops/workspace.h"

namespace convcore {

// dW[k][c,r,s] = sum_n sum_t dyp[n][k][t] * xpad[n][c][tap(r, s) + t], with
// dy re-laid at row stride Wh (zeros at q >= Q).  Chunks of images as
// (at most kMaxWeightChunks, bounds set by N alone) keep the result
// independent of the thread count.
void backward_weight_direct(conv_dot_ukernel_fn ukernel, const Conv2dGeometry& g, const float* dy,
                            const float* x, float* dw) {
  const DirectConv d = direct_forward_problem(g, x, nullptr, nullptr);
  const int64_t RS = g.R * g.S, CRS = g.Cg() * RS, Kg = g.Kg(), PQ = g.P * g.Q;
  const int64_t plane = d.pp.plane(), Wp = d.pp.Wh();  // row pitch of t
  const int64_t T8 = round_up(g.P * Wp, 8);
  const int64_t slack = (g.S - 1) * g.dil_w + 8;
  const int64_t x_img = g.C * plane, dy_img = g.K * T8;
  const int64_t wsize = g.weight_numel();
  const BatchChunks split(g.N);
  const int64_t chunks = split.count;
  std::vector<float> partials(size_t(chunks * wsize));
  const std::vector<int64_t> tap_offset = tap_offsets(d.pp, g.Cg(), g.R, g.S, g.dil_h, g.dil_w);
  const int nt = conv_threads(g);
  for_each_chunk_partial(split, partials.data(), wsize, nt, [&](int64_t chunk, float* part) {
    const int64_t n0 = split.begin(chunk), n1 = split.end(chunk);
    const int64_t ib = split.images_per_call(chunk, x_img + dy_img);
    float* xpad = thread_scratch(1).floats(ib * x_img + slack);
    float* dyp = thread_scratch(2).floats(ib * dy_img);
    for (int64_t nb = n0; nb < n1; nb += ib) {
      const int64_t images = std::min(ib, n1 - nb);
      for (int64_t i = 0; i < images; ++i) {
        const int64_t n = nb + i;
        pad_planes(d.pp, g.C, x + n * g.C * g.H * g.W, xpad + i * x_img);
        for (int64_t k = 0; k < g.K; ++k) {
          const float* src = dy + (n * g.K + k) * PQ;
          float* dst = dyp + i * dy_img + k * T8;
          for (int64_t p = 0; p < g.P; ++p) {
            std::memcpy(dst + p * Wp, src + p * g.Q, size_t(g.Q) * sizeof(float));
            std::fill(dst + p * Wp + g.Q, dst + (p + 1) * Wp, 0.0f);
          }
          std::fill(dst + g.P * Wp, dst + T8, 0.0f);
        }
      }
      std::fill(xpad + images * x_img, xpad + images * x_img + slack, 0.0f);
      for (int64_t grp = 0; grp < g.G; ++grp) {
        const float* xg = xpad + grp * g.Cg() * plane;
        for (int64_t k0 = 0; k0 < Kg; k0 += kDotMR) {
          const float* a[kDotMR];
          for (int64_t i = 0; i < kDotMR; ++i)  // rows past the end repeat a valid one; discarded
            a[i] = dyp + (grp * Kg + std::min(k0 + i, Kg - 1)) * T8;
          for (int64_t j0 = 0; j0 < CRS; j0 += kDotNR) {
            const float* bp[kDotNR];
            for (int64_t j = 0; j < kDotNR; ++j)
              bp[j] = xg + tap_offset[size_t(std::min(j0 + j, CRS - 1))];
            float tile[kDotMR * kDotNR] = {};
            ukernel(T8 / 8, images, a, dy_img, bp, x_img, tile);
            for (int64_t i = 0; i < kDotMR && k0 + i < Kg; ++i)
              for (int64_t j = 0; j < kDotNR && j0 + j < CRS; ++j)
                part[(grp * Kg + k0 + i) * CRS + j0 + j] += tile[i * kDotNR + j];
          }
        }
      }
    }
  });
  const int rt = threads_for(double(wsize) * chunks, 1e5);
#pragma omp parallel for num_threads(rt) schedule(static) if (rt > 1)
  for (int64_t i = 0; i < wsize; ++i) {
    dw[i] = sum_chunk_partials(partials.data(), chunks, wsize, i);
  }
}

// Weight gradient as outer products (for 16 or more output channels per
// group): dW^T[crs][k] = sum_t xpad[tap crs][t] * dyT[t][k].  Six input taps
// are read in place as broadcast streams; dy is packed once per image into
// 16-channel panels (t x 16, zeros at q >= Q), so the kernel has the FMA
// density of a 6x16 GEMM tile and no horizontal sums.
void backward_weight_outer(conv_outer_ukernel_fn ukernel, const Conv2dGeometry& g, const float* dy,
                           const float* x, float* dw) {
  const DirectConv d = direct_forward_problem(g, x, nullptr, nullptr);
  const int64_t RS = g.R * g.S, CRS = g.Cg() * RS, Kg = g.Kg(), PQ = g.P * g.Q;
  const int64_t plane = d.pp.plane(), Wp = d.pp.Wh(), T = g.P * Wp;  // Wp: row pitch of t
  const int64_t slack = (g.S - 1) * g.dil_w + 8;
  const int64_t crs_panels = (CRS + 5) / 6, k_panels = (Kg + 15) / 16, ldw = k_panels * 16;
  const int64_t part_size = g.G * crs_panels * 6 * ldw;
  const int64_t x_img = g.C * plane, dyt_img = g.G * k_panels * T * 16;
  const BatchChunks split(g.N);
  const int64_t chunks = split.count;
  constexpr int64_t kBlockT = 256;  // a 16 KiB block of the dy panel stays in L1
  std::vector<float> partials(static_cast<size_t>(chunks * part_size));
  const std::vector<int64_t> tap_offset = tap_offsets(d.pp, g.Cg(), g.R, g.S, g.dil_h, g.dil_w);
  const int nt = conv_threads(g);
  for_each_chunk_partial(split, partials.data(), part_size, nt, [&](int64_t chunk, float* part) {
    const int64_t n0 = split.begin(chunk), n1 = split.end(chunk);
    const int64_t ib = split.images_per_call(chunk, x_img + dyt_img);
    float* xpad = thread_scratch(1).floats(ib * x_img + slack);
    float* dyt = thread_scratch(2).floats(ib * dyt_img);
    for (int64_t nb = n0; nb < n1; nb += ib) {
      const int64_t images = std::min(ib, n1 - nb);
      for (int64_t i = 0; i < images; ++i) {
        const int64_t n = nb + i;
        pad_planes(d.pp, g.C, x + n * g.C * g.H * g.W, xpad + i * x_img);
        for (int64_t grp = 0; grp < g.G; ++grp)
          for (int64_t kp = 0; kp < k_panels; ++kp) {
            // Position-major transpose: each 64-byte panel row is written
            // whole while the 16 source rows stream through L1.
            float* panel = dyt + i * dyt_img + (grp * k_panels + kp) * T * 16;
            const int64_t valid = std::min<int64_t>(16, Kg - kp * 16);
            const float* src[16];
            for (int64_t j = 0; j < valid; ++j)
              src[j] = dy + (n * g.K + grp * Kg + kp * 16 + j) * PQ;
            for (int64_t p = 0; p < g.P; ++p) {
              for (int64_t q = 0; q < g.Q; ++q) {
                float* dst = panel + (p * Wp + q) * 16;
                const int64_t at = p * g.Q + q;
                for (int64_t j = 0; j < valid; ++j) dst[j] = src[j][at];
                for (int64_t j = valid; j < 16; ++j) dst[j] = 0.0f;
              }
              std::fill(panel + (p * Wp + g.Q) * 16, panel + (p + 1) * Wp * 16, 0.0f);
            }
          }
      }
      std::fill(xpad + images * x_img, xpad + images * x_img + slack, 0.0f);
      for (int64_t i = 0; i < images; ++i)
        for (int64_t grp = 0; grp < g.G; ++grp) {
          const float* xg = xpad + i * x_img + grp * g.Cg() * plane;
          float* part_g = part + grp * crs_panels * 6 * ldw;
          for (int64_t t0 = 0; t0 < T; t0 += kBlockT) {
            const int64_t tb = std::min(kBlockT, T - t0);
            for (int64_t kp = 0; kp < k_panels; ++kp) {
              const float* panel = dyt + i * dyt_img + (grp * k_panels + kp) * T * 16 + t0 * 16;
              for (int64_t cp = 0; cp < crs_panels; ++cp) {
                const float* rows[6];
                for (int64_t r = 0; r < 6; ++r)  // taps past the end repeat a valid one; discarded
                  rows[r] = xg + tap_offset[size_t(std::min(cp * 6 + r, CRS - 1))] + t0;
                ukernel(tb, rows, panel, part_g + cp * 6 * ldw + kp * 16, ldw, true);
              }
            }
          }
        }
    }
  });
  const int rt = threads_for(double(g.weight_numel()) * chunks, 1e5);
#pragma omp parallel for num_threads(rt) schedule(static) if (rt > 1)
  for (int64_t gk = 0; gk < g.K; ++gk) {
    const int64_t grp = gk / Kg, k = gk % Kg;
    for (int64_t crs = 0; crs < CRS; ++crs) {
      const int64_t at = (grp * crs_panels * 6 + crs) * ldw + k;
      dw[gk * CRS + crs] = sum_chunk_partials(partials.data(), chunks, part_size, at);
    }
  }
}

}  // namespace convcore
