// conv2d direct drivers: the input copied once into padded (phase-split for
// stride > 1) planes, weights packed into MR-channel panels, and the
// direct-convolution register tiles (kernels/direct_ukernels.h) swept over
// output positions, for the forward pass and the stride-1 data gradient.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/conv2d_drivers.h"
#include "ops/parallel.h"
#include "ops/workspace.h"

namespace convcore {

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
            std::min(ceil_div(pp.pad_left + pp.W - b, pp.sw), ceil_div(pp.Wp - b, pp.sw)), j_lo,
            Wh);
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
                                 int64_t dil_h, int64_t dil_w) {
  std::vector<int64_t> offsets(static_cast<size_t>(channels * R * S));
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t s = 0; s < S; ++s)
        offsets[size_t((c * R + r) * S + s)] = c * pp.plane() + pp.tap(r * dil_h, s * dil_w);
  return offsets;
}

DirectConv direct_forward_problem(const Conv2dGeometry& g, const float* x, const float* b, float* y,
                                  bool relu) {
  DirectConv d;
  d.N = g.N;
  d.G = g.G;
  d.Cin = g.Cg();
  d.Kout = g.Kg();
  d.R = g.R;
  d.S = g.S;
  d.dil_h = g.dil_h;
  d.dil_w = g.dil_w;
  d.pp = {g.H,
          g.W,
          g.pad_top,
          g.pad_left,
          g.H + g.pad_top + g.pad_bottom,
          g.W + g.pad_left + g.pad_right,
          g.stride_h,
          g.stride_w};
  d.P = g.P;
  d.Q = g.Q;
  d.in = x;
  d.out = y;
  d.bias = b;
  d.relu = relu;
  return d;
}

namespace {

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
                v = transposed_flip ? w[((g * d.Cin + c) * d.Kout + k) * RS + (d.R - 1 - r) * d.S +
                                        (d.S - 1 - s)]
                                    : w[((g * d.Kout + k) * d.Cin + c) * RS + r * d.S + s];
              }
              col[i] = v;
            }
          }
    }
}

// The tile shape that computes the fewest padded outputs (channels rounded
// up to MR times positions rounded up to NR); ties go to 6x16, which loads less.
DirectKernel pick_direct(const DirectKernel& k6x16, const DirectKernel& k4x24,
                         const DirectConv& d) {
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
  const int64_t slack = (d.S - 1) * d.dil_w + nr;
  const int64_t in_img = Cin_all * d.pp.H * d.pp.W, out_img = d.G * d.Kout * d.P * d.Q;
  const std::vector<int64_t> offsets = tap_offsets(d.pp, d.Cin, d.R, d.S, d.dil_h, d.dil_w);
  const PanelBlocks split(d.N, d.G * panels, nt);
  const int64_t blocks = split.count;
  TaskErrors errors;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t task = 0; task < d.N * blocks; ++task)
    errors.run([&] {
      const int64_t n = task / blocks, b = task % blocks;
      float* xpad = thread_scratch(1).floats(Cin_all * plane + slack);
      pad_planes(d.pp, Cin_all, d.in + n * in_img, xpad);
      std::fill(xpad + Cin_all * plane, xpad + Cin_all * plane + slack, 0.0f);
      alignas(64) float tile[6 * 24];
      // Blocks of positions whose input rows (all taps, all channels of a
      // group) fit in L2 alongside the weights: for large images the panels
      // would otherwise stream the input from L3 once each.
      const int64_t tb =
          round_up(std::clamp<int64_t>(kDirectInputBlockFloats / (d.Cin * d.pp.sh * d.pp.sw), nr,
                                       std::max<int64_t>(T, nr)),
                   nr);
      for (int64_t tb0 = 0; tb0 < T; tb0 += tb)
        for (int64_t gp = split.begin(b); gp < split.end(b); ++gp) {
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
                if (d.relu)
                  for (int64_t l = 0; l < valid; ++l) dst[l] = relu_f32(src[l] + bv);
                else
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

}  // namespace

void forward_direct(const DirectKernel& k6x16, const DirectKernel& k4x24, const Conv2dGeometry& g,
                    const float* x, const float* w, const float* b, float* y, bool relu) {
  const DirectConv d = direct_forward_problem(g, x, b, y, relu);
  run_direct(pick_direct(k6x16, k4x24, d), d, w, false, conv_threads(g));
}

// dx = full convolution of dy (padded by dil*(R-1) - pad, negative = crop)
// with the flipped, transposed weights.
DirectConv direct_backward_data_problem(const Conv2dGeometry& g, const float* dy, float* dx) {
  DirectConv d;
  d.N = g.N;
  d.G = g.G;
  d.Cin = g.Kg();
  d.Kout = g.Cg();
  d.R = g.R;
  d.S = g.S;
  d.dil_h = g.dil_h;
  d.dil_w = g.dil_w;
  const int64_t eh = g.dil_h * (g.R - 1), ew = g.dil_w * (g.S - 1);
  d.pp = {g.P, g.Q, eh - g.pad_top, ew - g.pad_left, g.H + eh, g.W + ew, 1, 1};
  d.P = g.H;
  d.Q = g.W;
  d.in = dy;
  d.out = dx;
  d.bias = nullptr;
  return d;
}

void backward_data_direct(const DirectKernel& k6x16, const DirectKernel& k4x24,
                          const Conv2dGeometry& g, const float* dy, const float* w, float* dx) {
  const DirectConv d = direct_backward_data_problem(g, dy, dx);
  run_direct(pick_direct(k6x16, k4x24, d), d, w, true, conv_threads(g));
}

}  // namespace convcore
