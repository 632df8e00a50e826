// conv2d drivers: geometry, padding/phase layout, tiling and threads.  The
// arithmetic is in the micro-kernels (kernels/): direct-convolution tiles
// for the forward pass and the weight gradient, direct tiles (stride 1) or a
// packed GEMM + col2im (strided) for the data gradient, and the reference
// loops (kernels/ref/) that end every implementation list.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/cpu.h"
#include "common/runtime.h"
#include "kernels/direct_ukernels.h"
#include "kernels/gemm_ukernels.h"
#include "kernels/ref/ref_kernels.h"
#include "ops/gemm.h"
#include "ops/ops.h"
#include "ops/parallel.h"
#include "ops/workspace.h"

namespace convcore {
namespace {

// Images whose weight-gradient contributions are summed into one partial
// result.  Fixed (never derived from the thread count) so the reduction
// order, and so the result, is the same for any number of threads.
constexpr int64_t kMaxWeightChunks = 16;
// Multiply-adds below which a parallel region costs more than it saves.
constexpr double kMinMacsPerThread = 2e5;
// Bytes of padded input and re-laid dy the weight-gradient kernel streams
// per call: about half of a 1 MiB L2, so both stay resident.
constexpr int64_t kDotWorkingSetBytes = 512 * 1024;
// Input floats per channel-phase the direct kernels sweep before moving to
// the next weight panel (about 256 KiB of input rows in L2).
constexpr int64_t kDirectInputBlockFloats = 64 * 1024;

// dx_g[c][h][w] += dcols[((c - c0)*R + r)*S + s][p*Q + q] for channels c0..c1-1.
void col2im_channels(const Conv2dGeometry& g, const float* dcols, int64_t c0, int64_t c1,
                     float* dx_g) {
  const int64_t PQ = g.P * g.Q;
  for (int64_t c = c0; c < c1; ++c) {
    float* xc = dx_g + c * g.H * g.W;
    for (int64_t r = 0; r < g.R; ++r) {
      for (int64_t s = 0; s < g.S; ++s) {
        const float* row = dcols + (((c - c0) * g.R + r) * g.S + s) * PQ;
        const int64_t w_off = s * g.dil_w - g.pad_left;
        const int64_t qa = std::clamp<int64_t>((-w_off + g.stride_w - 1) / g.stride_w, 0, g.Q);
        const int64_t qb = std::clamp<int64_t>((g.W - w_off + g.stride_w - 1) / g.stride_w, qa, g.Q);
        for (int64_t p = 0; p < g.P; ++p) {
          const int64_t h = p * g.stride_h - g.pad_top + r * g.dil_h;
          if (h < 0 || h >= g.H) continue;
          float* dst = xc + h * g.W + w_off;
          const float* src = row + p * g.Q;
          if (g.stride_w == 1) {
            for (int64_t q = qa; q < qb; ++q) dst[q] += src[q];
          } else {
            for (int64_t q = qa; q < qb; ++q) dst[q * g.stride_w] += src[q];
          }
        }
      }
    }
  }
}

int conv_threads(const Conv2dGeometry& g) { return threads_for(g.macs(), kMinMacsPerThread); }

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// ---------------------------------------------------------------------------
// Direct path: the input is copied once into padded planes (negative padding
// crops), split into stride_h x stride_w phase planes of Hh x Wh (phase
// (a, b) holds padded rows a, a + stride_h, ... and columns b, b + stride_w,
// ...).  Every kernel tap (r, s) then reads, for the outputs of one row, a
// run of consecutive elements of one phase plane, so the micro-kernels read
// runs of positions t = p * Wh + q straight from the planes for any stride.
// With stride 1 there is one phase and the planes are the padded input.
// ---------------------------------------------------------------------------

int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

struct PaddedPlanes {
  int64_t H, W;               // source plane
  int64_t pad_top, pad_left;  // may be negative (crop)
  int64_t Hp, Wp;             // padded plane
  int64_t sh = 1, sw = 1;     // stride: number of phases per dimension
  int64_t Hh() const { return ceil_div(Hp, sh); }
  int64_t Wh() const { return ceil_div(Wp, sw); }  // row pitch of a phase plane, and of t
  int64_t plane() const { return sh * sw * Hh() * Wh(); }  // floats per channel
  // Distance from a channel's first element to tap (row r_off, column s_off)
  // of output position t = 0.
  int64_t tap(int64_t r_off, int64_t s_off) const {
    return ((r_off % sh) * sw + s_off % sw) * Hh() * Wh() + (r_off / sh) * Wh() + s_off / sw;
  }
};

// dst[c][a][b][i][j] = src[c][i*sh + a - pad_top][j*sw + b - pad_left], zero
// outside the source or past the padded size.
void pad_planes(const PaddedPlanes& pp, int64_t channels, const float* src, float* dst) {
  const int64_t Hh = pp.Hh(), Wh = pp.Wh();
  for (int64_t c = 0; c < channels; ++c) {
    const float* s = src + c * pp.H * pp.W;
    float* d = dst + c * pp.plane();
    for (int64_t a = 0; a < pp.sh; ++a)
      for (int64_t b = 0; b < pp.sw; ++b) {
        // Columns j whose source column lies in [0, W) and padded column in [0, Wp).
        const int64_t j_lo = std::clamp<int64_t>(ceil_div(pp.pad_left - b, pp.sw), 0, Wh);
        const int64_t j_hi = std::clamp<int64_t>(
            std::min(ceil_div(pp.pad_left + pp.W - b, pp.sw), ceil_div(pp.Wp - b, pp.sw)), j_lo, Wh);
        const int64_t w0 = j_lo * pp.sw + b - pp.pad_left;  // source column of j_lo
        float* phase = d + (a * pp.sw + b) * Hh * Wh;
        for (int64_t i = 0; i < Hh; ++i) {
          float* row = phase + i * Wh;
          const int64_t hp = i * pp.sh + a, h = hp - pp.pad_top;
          if (hp >= pp.Hp || h < 0 || h >= pp.H) {
            std::fill(row, row + Wh, 0.0f);
            continue;
          }
          std::fill(row, row + j_lo, 0.0f);
          const float* srow = s + h * pp.W + w0;
          if (pp.sw == 1) {
            std::memcpy(row + j_lo, srow, size_t(j_hi - j_lo) * sizeof(float));
          } else {
            for (int64_t j = j_lo; j < j_hi; ++j) row[j] = srow[(j - j_lo) * pp.sw];
          }
          std::fill(row + j_hi, row + Wh, 0.0f);
        }
      }
  }
}

// offsets[(c*R + r)*S + s] = distance from a group's first channel to tap
// (c, r, s) of output position t = 0, in padded phase planes.
std::vector<int64_t> tap_offsets(const PaddedPlanes& pp, int64_t channels, int64_t R, int64_t S,
                                 int64_t dh, int64_t dw) {
  std::vector<int64_t> offsets(static_cast<size_t>(channels * R * S));
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t s = 0; s < S; ++s)
        offsets[size_t((c * R + r) * S + s)] = c * pp.plane() + pp.tap(r * dh, s * dw);
  return offsets;
}

// The batch split of the weight gradient: at most kMaxWeightChunks chunks
// whose bounds depend on N alone (never on the thread count), each summed
// into its own partial, the partials then added in chunk order -- what makes
// the result bitwise the same for any number of threads.  Within a chunk,
// images are fed to the kernel in groups whose input and dy fit the L2
// budget (again a function of the shape only).
struct BatchChunks {
  int64_t count, per_chunk, N;
  explicit BatchChunks(int64_t n)
      : count(std::min<int64_t>(n, kMaxWeightChunks)),
        per_chunk(count > 0 ? (n + count - 1) / count : 0),
        N(n) {}
  int64_t begin(int64_t chunk) const { return chunk * per_chunk; }
  int64_t end(int64_t chunk) const { return std::min(N, begin(chunk) + per_chunk); }
  int64_t images_per_call(int64_t chunk, int64_t floats_per_image) const {
    const int64_t bytes = floats_per_image * int64_t(sizeof(float));
    return std::clamp<int64_t>(kDotWorkingSetBytes / bytes, 1, end(chunk) - begin(chunk));
  }
};

// A convolution as the direct kernels see it.  The forward pass is one; the
// data gradient of a stride-1 convolution is another (a full convolution of
// dy with the flipped, transposed weights).
struct DirectConv {
  int64_t N, G;
  int64_t Cin, Kout;  // per group
  int64_t R, S, dh, dw;
  PaddedPlanes pp;
  int64_t P, Q;       // output size
  const float* in;    // N x (G*Cin) x H x W
  float* out;         // N x (G*Kout) x P x Q
  const float* bias;  // G*Kout or null
};

// wpack[g][panel][c*R*S + r*S + s][i] = weight of output channel panel*6+i.
// transposed_flip: the weight of output channel k and input channel c is
// w[g][c][k][R-1-r][S-1-s] of the original (K, C/G, R, S) tensor.
void pack_direct_weights(const DirectConv& d, int64_t mr, const float* w, bool transposed_flip,
                         float* wpack) {
  const int64_t RS = d.R * d.S, steps = d.Cin * RS, panels = (d.Kout + mr - 1) / mr;
  for (int64_t g = 0; g < d.G; ++g)
    for (int64_t pn = 0; pn < panels; ++pn) {
      float* dst = wpack + (g * panels + pn) * steps * mr;
      for (int64_t c = 0; c < d.Cin; ++c)
        for (int64_t r = 0; r < d.R; ++r)
          for (int64_t s = 0; s < d.S; ++s) {
            float* col = dst + ((c * d.R + r) * d.S + s) * mr;
            for (int64_t i = 0; i < mr; ++i) {
              const int64_t k = pn * mr + i;
              float v = 0.0f;
              if (k < d.Kout) {
                v = transposed_flip
                        ? w[((g * d.Cin + c) * d.Kout + k) * RS + (d.R - 1 - r) * d.S + (d.S - 1 - s)]
                        : w[((g * d.Kout + k) * d.Cin + c) * RS + r * d.S + s];
              }
              col[i] = v;
            }
          }
    }
}

struct DirectKernel {
  conv_direct_ukernel_fn fn;
  int64_t mr, nr;
};

// The tile shape that computes the fewest padded outputs (channels rounded
// up to MR times positions rounded up to NR); ties go to 6x16, which loads less.
DirectKernel pick_direct(const DirectKernel& k6x16, const DirectKernel& k4x24, const DirectConv& d) {
  const int64_t T = d.P * d.pp.Wh();
  const auto padded = [&](const DirectKernel& k) {
    return (d.Kout + k.mr - 1) / k.mr * k.mr * ((T + k.nr - 1) / k.nr * k.nr);
  };
  return padded(k4x24) < padded(k6x16) ? k4x24 : k6x16;
}

void run_direct(const DirectKernel& uk, const DirectConv& d, const float* w, bool transposed_flip,
                int nt) {
  const int64_t RS = d.R * d.S, steps = d.Cin * RS;
  const int64_t mr = uk.mr, nr = uk.nr;
  const int64_t panels = (d.Kout + mr - 1) / mr;
  std::vector<float> wpack_store(static_cast<size_t>(d.G * panels * steps * mr));
  pack_direct_weights(d, mr, w, transposed_flip, wpack_store.data());
  const float* wpack = wpack_store.data();
  const int64_t plane = d.pp.plane(), Cin_all = d.G * d.Cin;
  const int64_t Wh = d.pp.Wh();
  const int64_t T = d.P * Wh;  // output positions t = p * Wh + q (q >= Q: discarded)
  const int64_t slack = (d.S - 1) * d.dw + nr;
  const int64_t in_img = Cin_all * d.pp.H * d.pp.W, out_img = d.G * d.Kout * d.P * d.Q;
  const std::vector<int64_t> offsets = tap_offsets(d.pp, d.Cin, d.R, d.S, d.dh, d.dw);
  // Split each image's panels into blocks when the batch alone cannot keep
  // every thread busy; blocking changes no result.
  int64_t blocks = 1;
  while (d.N * blocks < nt && blocks < d.G * panels) ++blocks;
  const int64_t per_block = (d.G * panels + blocks - 1) / blocks;
  blocks = (d.G * panels + per_block - 1) / per_block;
  TaskErrors errors;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t task = 0; task < d.N * blocks; ++task) errors.run([&] {
    const int64_t n = task / blocks, b = task % blocks;
    float* xpad = thread_scratch(1).floats(Cin_all * plane + slack);
    pad_planes(d.pp, Cin_all, d.in + n * in_img, xpad);
    std::fill(xpad + Cin_all * plane, xpad + Cin_all * plane + slack, 0.0f);
    alignas(64) float tile[6 * 24];
    // Blocks of positions whose input rows (all taps, all channels of a
    // group) fit in L2 alongside the weights: for large images the panels
    // would otherwise stream the input from L3 once each.
    const int64_t tb = round_up(std::clamp<int64_t>(kDirectInputBlockFloats / (d.Cin * d.pp.sh * d.pp.sw), nr, std::max<int64_t>(T, nr)), nr);
    for (int64_t tb0 = 0; tb0 < T; tb0 += tb)
    for (int64_t gp = b * per_block; gp < std::min((b + 1) * per_block, d.G * panels); ++gp) {
      const int64_t g = gp / panels, pn = gp % panels;
      const float* wp = wpack + gp * steps * mr;
      const float* xg = xpad + g * d.Cin * plane;
      const int64_t k0 = pn * mr, kn = std::min(mr, d.Kout - k0);
      float* yk = d.out + n * out_img + (g * d.Kout + k0) * d.P * d.Q;
      for (int64_t t0 = tb0; t0 < std::min(T, tb0 + tb); t0 += nr) {
        uk.fn(steps, wp, xg + t0, offsets.data(), tile);
        // Scatter the valid lanes (q < Q) row segment by row segment.
        int64_t p = t0 / Wh, q = t0 % Wh;
        for (int64_t j = 0; j < nr && p < d.P;) {
          const int64_t run = std::min(nr - j, Wh - q);
          const int64_t valid = std::max<int64_t>(0, std::min(run, d.Q - q));
          for (int64_t i = 0; i < kn; ++i) {
            float* dst = yk + (i * d.P + p) * d.Q + q;
            const float* src = tile + i * nr + j;
            const float bv = d.bias ? d.bias[g * d.Kout + k0 + i] : 0.0f;
            for (int64_t l = 0; l < valid; ++l) dst[l] = src[l] + bv;
          }
          j += run;
          q = 0;
          ++p;
        }
      }
    }
  });
  errors.rethrow();
}

DirectConv direct_forward_problem(const Conv2dGeometry& g, const float* x, const float* b, float* y) {
  DirectConv d;
  d.N = g.N;
  d.G = g.G;
  d.Cin = g.Cg();
  d.Kout = g.Kg();
  d.R = g.R;
  d.S = g.S;
  d.dh = g.dil_h;
  d.dw = g.dil_w;
  d.pp = {g.H, g.W, g.pad_top, g.pad_left, g.H + g.pad_top + g.pad_bottom,
          g.W + g.pad_left + g.pad_right, g.stride_h, g.stride_w};
  d.P = g.P;
  d.Q = g.Q;
  d.in = x;
  d.out = y;
  d.bias = b;
  return d;
}

void forward_direct(const DirectKernel& k6x16, const DirectKernel& k4x24, const Conv2dGeometry& g,
                    const float* x, const float* w, const float* b, float* y) {
  const DirectConv d = direct_forward_problem(g, x, b, y);
  run_direct(pick_direct(k6x16, k4x24, d), d, w, false, conv_threads(g));
}

// dx = full convolution of dy (padded by dil*(R-1) - pad, negative = crop)
// with the flipped, transposed weights.
void backward_data_direct(const DirectKernel& k6x16, const DirectKernel& k4x24,
                          const Conv2dGeometry& g, const float* dy, const float* w, float* dx) {
  DirectConv d;
  d.N = g.N;
  d.G = g.G;
  d.Cin = g.Kg();
  d.Kout = g.Cg();
  d.R = g.R;
  d.S = g.S;
  d.dh = g.dil_h;
  d.dw = g.dil_w;
  const int64_t eh = g.dil_h * (g.R - 1), ew = g.dil_w * (g.S - 1);
  d.pp = {g.P, g.Q, eh - g.pad_top, ew - g.pad_left, g.H + eh, g.W + ew, 1, 1};
  d.P = g.H;
  d.Q = g.W;
  d.in = dy;
  d.out = dx;
  d.bias = nullptr;
  run_direct(pick_direct(k6x16, k4x24, d), d, w, true, conv_threads(g));
}

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
  TaskErrors errors;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) errors.run([&] {
    const int64_t n0 = split.begin(chunk), n1 = split.end(chunk);
    float* part = partials.data() + chunk * wsize;
    std::fill(part, part + wsize, 0.0f);
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
            for (int64_t j = 0; j < kDotNR; ++j) bp[j] = xg + tap_offset[size_t(std::min(j0 + j, CRS - 1))];
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
  errors.rethrow();
  const int rt = threads_for(double(wsize) * chunks, 1e5);
#pragma omp parallel for num_threads(rt) schedule(static) if (rt > 1)
  for (int64_t i = 0; i < wsize; ++i) {
    float acc = partials[size_t(i)];
    for (int64_t c = 1; c < chunks; ++c) acc += partials[size_t(c * wsize + i)];
    dw[i] = acc;
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
  TaskErrors errors;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) errors.run([&] {
    const int64_t n0 = split.begin(chunk), n1 = split.end(chunk);
    float* part = partials.data() + chunk * part_size;
    std::fill(part, part + part_size, 0.0f);
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
            for (int64_t j = 0; j < valid; ++j) src[j] = dy + (n * g.K + grp * Kg + kp * 16 + j) * PQ;
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
  errors.rethrow();
  const int rt = threads_for(double(g.weight_numel()) * chunks, 1e5);
#pragma omp parallel for num_threads(rt) schedule(static) if (rt > 1)
  for (int64_t gk = 0; gk < g.K; ++gk) {
    const int64_t grp = gk / Kg, k = gk % Kg;
    for (int64_t crs = 0; crs < CRS; ++crs) {
      const int64_t at = (grp * crs_panels * 6 + crs) * ldw + k;
      float acc = partials[size_t(at)];
      for (int64_t c = 1; c < chunks; ++c) acc += partials[size_t(c * part_size + at)];
      dw[gk * CRS + crs] = acc;
    }
  }
}

// ---------------------------------------------------------------------------
// Backward data: per (image, group, channel block), dcols = W_g^T * dy, then
// col2im into the block's channels (which no other task touches).
// ---------------------------------------------------------------------------
void backward_data_gemm(gemm_ukernel_fn ukernel, const Conv2dGeometry& g, const float* dy,
                        const float* w, float* dx) {
  const int64_t PQ = g.P * g.Q, RS = g.R * g.S, CRS = g.Cg() * RS, Kg = g.Kg(), HW = g.H * g.W;
  const int nt = conv_threads(g);
  // Enough channel blocks to keep every thread busy when the batch is small.
  int64_t blocks = 1;
  while (g.N * g.G * blocks < nt && blocks < g.Cg()) ++blocks;
  const int64_t cb = (g.Cg() + blocks - 1) / blocks;
  blocks = (g.Cg() + cb - 1) / cb;
  const int64_t tasks = g.N * g.G * blocks;
  TaskErrors errors;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t t = 0; t < tasks; ++t) errors.run([&] {
    const int64_t n = t / (g.G * blocks), grp = (t / blocks) % g.G;
    const int64_t c0 = (t % blocks) * cb, c1 = std::min(g.Cg(), c0 + cb);
    float* dx_g = dx + (n * g.C + grp * g.Cg()) * HW;
    const float* dy_g = dy + (n * g.K + grp * Kg) * PQ;
    const float* w_g = w + grp * Kg * CRS;
    const int64_t rows = (c1 - c0) * RS;
    std::fill(dx_g + c0 * HW, dx_g + c1 * HW, 0.0f);
    float* work = thread_scratch(0).floats(gemm_workspace_floats(rows, PQ, Kg));
    float* dcols = thread_scratch(1).floats(rows * PQ);
    gemm_f32(ukernel, rows, PQ, Kg, w_g + c0 * RS, 1, CRS, dy_g, PQ, 1, dcols, PQ, false,
             work);
    col2im_channels(g, dcols, c0, c1, dx_g);
  });
  errors.rethrow();
}

// ---------------------------------------------------------------------------
// Implementation lists: tried in order, the first applicable one under the
// active ISA cap runs; the scalar reference ends every list.
// ---------------------------------------------------------------------------

constexpr const char* kBiasPortable = "conv2d_bwd_bias_f32_lanes16__portable";
constexpr const char* kBiasRef = "conv2d_bwd_bias_f32__ref";

struct ConvArgs {
  const float* x;
  const float* w;
  const float* b;
  const float* dy;
  float* y;
  float* dx;
  float* dw;
};

struct ConvImpl {
  const char* name;
  Isa isa;
  bool (*applicable)(const Conv2dGeometry&);
  void (*run)(const Conv2dGeometry&, const ConvArgs&);
};

bool always(const Conv2dGeometry&) { return true; }
bool unit_stride(const Conv2dGeometry& g) { return g.stride_h == 1 && g.stride_w == 1; }
// The direct kernels copy each padded input plane split by stride phase,
// rounded up to whole strides: about (Hp + sh) x (Wp + sw) floats a channel.
// For a stride far beyond the input (32768 on a 12x16 image: 4 GB per image)
// that copy, not the convolution, is the work; such calls go to the reference.
bool compact_phases(const Conv2dGeometry& g) {
  const double hp = double(g.H + g.pad_top + g.pad_bottom), wp = double(g.W + g.pad_left + g.pad_right);
  return (hp + g.stride_h) * (wp + g.stride_w) <= 4.0 * hp * wp + 65536.0;
}
bool many_taps_and_channels(const Conv2dGeometry& g);
bool outer_applicable(const Conv2dGeometry& g) { return compact_phases(g) && many_taps_and_channels(g); }

template <conv_direct_ukernel_fn UK6x16, conv_direct_ukernel_fn UK4x24>
void run_fwd_direct(const Conv2dGeometry& g, const ConvArgs& a) {
  forward_direct({UK6x16, 6, 16}, {UK4x24, 4, 24}, g, a.x, a.w, a.b, a.y);
}
void run_fwd_ref(const Conv2dGeometry& g, const ConvArgs& a) {
  const int nt = conv_threads(g);
  const int64_t img_in = g.C * g.H * g.W, img_out = g.K * g.P * g.Q;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t n = 0; n < g.N; ++n) conv2d_fwd_f32__ref(g, a.x + n * img_in, a.w, a.b, a.y + n * img_out);
}

template <conv_direct_ukernel_fn UK6x16, conv_direct_ukernel_fn UK4x24>
void run_bwd_data_direct(const Conv2dGeometry& g, const ConvArgs& a) {
  backward_data_direct({UK6x16, 6, 16}, {UK4x24, 4, 24}, g, a.dy, a.w, a.dx);
}
template <gemm_ukernel_fn UK>
void run_bwd_data_gemm(const Conv2dGeometry& g, const ConvArgs& a) { backward_data_gemm(UK, g, a.dy, a.w, a.dx); }
void run_bwd_data_ref(const Conv2dGeometry& g, const ConvArgs& a) {
  const int nt = conv_threads(g);
  const int64_t img_in = g.C * g.H * g.W, img_out = g.K * g.P * g.Q;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t n = 0; n < g.N; ++n) conv2d_bwd_data_f32__ref(g, a.dy + n * img_out, a.w, a.dx + n * img_in);
}

template <conv_dot_ukernel_fn UK>
void run_bwd_weight_direct(const Conv2dGeometry& g, const ConvArgs& a) { backward_weight_direct(UK, g, a.dy, a.x, a.dw); }
template <conv_outer_ukernel_fn UK>
void run_bwd_weight_outer(const Conv2dGeometry& g, const ConvArgs& a) { backward_weight_outer(UK, g, a.dy, a.x, a.dw); }
// Outer-product tiles pay off when dy is reused over many taps and channels.
bool many_taps_and_channels(const Conv2dGeometry& g) { return g.Kg() >= 16 && g.Cg() * g.R * g.S >= 32; }
void run_bwd_weight_ref(const Conv2dGeometry& g, const ConvArgs& a) {
  // Threads split the output channels; each element reduces over the whole
  // batch in one order, so the result does not depend on their number.
  const int nt = conv_threads(g);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t k = 0; k < g.K; ++k) conv2d_bwd_weight_f32__ref(g, a.dy, a.x, k, k + 1, a.dw);
}

const ConvImpl kFwdImpls[] = {
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
    {"conv2d_fwd_f32_direct_6x16_4x24__avx2", Isa::Avx2, compact_phases, run_fwd_direct<conv2d_direct_ukernel_f32_6x16__avx2, conv2d_direct_ukernel_f32_4x24__avx2>},
#endif
    {"conv2d_fwd_f32_direct_6x16_4x24__portable", Isa::Portable, compact_phases, run_fwd_direct<conv2d_direct_ukernel_f32_6x16__portable, conv2d_direct_ukernel_f32_4x24__portable>},
    {"conv2d_fwd_f32_direct__ref", Isa::Scalar, always, run_fwd_ref},
};

const ConvImpl kBwdDataImpls[] = {
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
    {"conv2d_bwd_data_f32_direct_6x16_4x24__avx2", Isa::Avx2, unit_stride, run_bwd_data_direct<conv2d_direct_ukernel_f32_6x16__avx2, conv2d_direct_ukernel_f32_4x24__avx2>},
    {"conv2d_bwd_data_f32_gemm_col2im_6x16__avx2", Isa::Avx2, always, run_bwd_data_gemm<gemm_ukernel_f32_6x16__avx2>},
#endif
    {"conv2d_bwd_data_f32_direct_6x16_4x24__portable", Isa::Portable, unit_stride, run_bwd_data_direct<conv2d_direct_ukernel_f32_6x16__portable, conv2d_direct_ukernel_f32_4x24__portable>},
    {"conv2d_bwd_data_f32_gemm_col2im_6x16__portable", Isa::Portable, always, run_bwd_data_gemm<gemm_ukernel_f32_6x16__portable>},
    {"conv2d_bwd_data_f32_direct__ref", Isa::Scalar, always, run_bwd_data_ref},
};

const ConvImpl kBwdWeightImpls[] = {
#if defined(CONVCORE_HAVE_AVX2_KERNELS)
    {"conv2d_bwd_weight_f32_direct_outer_6x16__avx2", Isa::Avx2, outer_applicable, run_bwd_weight_outer<conv2d_outer_ukernel_f32_6x16__avx2>},
    {"conv2d_bwd_weight_f32_direct_dot_4x3__avx2", Isa::Avx2, compact_phases, run_bwd_weight_direct<conv2d_dot_ukernel_f32_4x3__avx2>},
#endif
    {"conv2d_bwd_weight_f32_direct_outer_6x16__portable", Isa::Portable, outer_applicable, run_bwd_weight_outer<conv2d_outer_ukernel_f32_6x16__portable>},
    {"conv2d_bwd_weight_f32_direct_dot_4x3__portable", Isa::Portable, compact_phases, run_bwd_weight_direct<conv2d_dot_ukernel_f32_4x3__portable>},
    {"conv2d_bwd_weight_f32_direct__ref", Isa::Scalar, always, run_bwd_weight_ref},
};

template <size_t L>
const ConvImpl& select(const ConvImpl (&impls)[L], const Conv2dGeometry& g) {
  const Isa isa = active_isa();
  for (const ConvImpl& impl : impls)
    if (int(impl.isa) <= int(isa) && impl.applicable(g)) return impl;
  return impls[L - 1];
}

template <size_t L>
std::vector<std::string> names(const ConvImpl (&impls)[L]) {
  std::vector<std::string> out;
  for (const ConvImpl& impl : impls) out.push_back(impl.name);
  return out;
}

}  // namespace

void conv2d_forward(const Conv2dGeometry& g, const float* x, const float* w, const float* b,
                    float* y) {
  if (g.N == 0) return;
  const ConvImpl& impl = select(kFwdImpls, g);
  note_kernel("conv2d_fwd", impl.name, g.name());
  impl.run(g, ConvArgs{x, w, b, nullptr, y, nullptr, nullptr});
}

void conv2d_backward_data(const Conv2dGeometry& g, const float* dy, const float* w, float* dx) {
  if (g.N == 0) return;
  const ConvImpl& impl = select(kBwdDataImpls, g);
  note_kernel("conv2d_bwd_data", impl.name, g.name());
  impl.run(g, ConvArgs{nullptr, w, nullptr, dy, nullptr, dx, nullptr});
}

void conv2d_backward_weight(const Conv2dGeometry& g, const float* dy, const float* x, float* dw) {
  if (g.N == 0) {
    std::fill(dw, dw + g.weight_numel(), 0.0f);
    return;
  }
  const ConvImpl& impl = select(kBwdWeightImpls, g);
  note_kernel("conv2d_bwd_weight", impl.name, g.name());
  impl.run(g, ConvArgs{x, nullptr, nullptr, dy, nullptr, nullptr, dw});
}

void conv2d_backward_bias(const Conv2dGeometry& g, const float* dy, float* db) {
  const bool portable = int(active_isa()) >= int(Isa::Portable);
  const auto kernel = portable ? conv2d_bwd_bias_f32__portable : conv2d_bwd_bias_f32__ref;
  note_kernel("conv2d_bwd_bias", portable ? kBiasPortable : kBiasRef, g.name());
  const int64_t PQ = g.P * g.Q;
  const int nt = threads_for(double(g.N) * g.K * PQ, 1e5);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t k = 0; k < g.K; ++k) db[k] = kernel(g.N, g.K, PQ, dy, k);
}

std::vector<std::string> list_conv2d_implementations(const std::string& op) {
  if (op == "conv2d_bwd_bias") return {kBiasPortable, kBiasRef};
  if (op == "conv2d_fwd") return names(kFwdImpls);
  if (op == "conv2d_bwd_data") return names(kBwdDataImpls);
  return names(kBwdWeightImpls);
}

}  // namespace convcore
