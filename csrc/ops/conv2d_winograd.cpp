// conv2d Winograd F(2x2, 3x3) driver (kernels/winograd_ukernels.h): forward
// and data gradient of 3x3, stride-1, undilated, ungrouped convolutions.
//
// The weights are transformed once per call, U[xi] = G g G^T (in double,
// rounded once to float), and packed into panels of 8 output channels,
// [xi][K/8][C][8].  The tiles of the whole batch, taken as a sequence of
// tile rows (image by image), are cut into blocks of whole tile rows; each
// block is one task:
//   1. input transform:  V[xi][c][t]  (16 x C x Tp floats, L2-resident),
//   2. 16 GEMMs:         M[xi][k][t] = sum_c U[xi][k][c] V[xi][c][t],
//   3. output transform: 2x2 outputs per tile, bias, ReLU, NCHW rows.
// Every output is one fixed-order sum over c in its tile's column of M, so
// the result does not depend on the block size or the thread count.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "ops/conv2d_drivers.h"
#include "ops/parallel.h"
#include "ops/workspace.h"

namespace convcore {
namespace {

constexpr int64_t kPanel = kWinoPanelK;

// Floats between two transformed positions of the packed weights: K x C
// rounded up to whole panels, plus a cache line, since K x C is often a
// multiple of 4 KiB and the transform writes all 16 positions of a filter at
// once (16 stores into one L1 set took 0.2 ms for 64 x 64 filters).
inline int64_t weights_xi_stride(int64_t Kout, int64_t Cin) {
  return round_up(Kout, kPanel) * Cin + 16;
}

// One Winograd convolution: `in` is N x Cin x H x W, `out` N x Kout x P x Q;
// output (p, q) reads input rows p - pad_top .. p - pad_top + 2 (zero
// outside), columns likewise.
struct WinoConv {
  int64_t N, Cin, H, W, Kout, P, Q, pad_top, pad_left;
  const float* in;
  float* out;
  const float* bias;
  bool relu;
};

// u[xi][k / 8][c][k % 8] = (G g G^T)[xi] for g the 3x3 filter of output
// channel k and input channel c; zero for k >= Kout.  transposed_flip: g is
// w[c][k] rotated by 180 degrees (the data gradient's filters).
// Returns false if a weight is NaN or +-inf.
// Output channels are split over nt threads (each value is computed once).
bool transform_weights(const float* w, int64_t Kout, int64_t Cin, bool transposed_flip, float* u,
                       int nt) {
  for (int64_t i = 0; i < Kout * Cin * 9; ++i)
    if (!std::isfinite(w[i])) return false;
  const int64_t xi_stride = weights_xi_stride(Kout, Cin);
  std::fill(u, u + 16 * xi_stride, 0.0f);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t k = 0; k < Kout; ++k)
    for (int64_t c = 0; c < Cin; ++c) {
      double g[3][3];
      for (int r = 0; r < 3; ++r)
        for (int s = 0; s < 3; ++s)
          g[r][s] = transposed_flip ? w[((c * Kout + k) * 3 + 2 - r) * 3 + 2 - s]
                                    : w[((k * Cin + c) * 3 + r) * 3 + s];
      double t[4][3];  // G g
      for (int s = 0; s < 3; ++s) {
        t[0][s] = g[0][s];
        t[1][s] = 0.5 * (g[0][s] + g[1][s] + g[2][s]);
        t[2][s] = 0.5 * (g[0][s] - g[1][s] + g[2][s]);
        t[3][s] = g[2][s];
      }
      float* dst = u + ((k / kPanel) * Cin + c) * kPanel + k % kPanel;
      for (int i = 0; i < 4; ++i) {  // (G g) G^T
        const double row[4] = {t[i][0], 0.5 * (t[i][0] + t[i][1] + t[i][2]),
                               0.5 * (t[i][0] - t[i][1] + t[i][2]), t[i][2]};
        for (int j = 0; j < 4; ++j) dst[(4 * i + j) * xi_stride] = float(row[j]);
      }
    }
  return true;
}

// Tile rows per block: the block's V and M (16 x (Cin + Kout) x Tp floats)
// should stay within about half of a 1 MiB L2, with little padding past the
// last tile (Tp is T rounded up to 16 lanes).
int64_t tile_rows_per_block(int64_t tw, int64_t Cin, int64_t Kp) {
  const int64_t tp_goal = std::clamp<int64_t>(8192 / (Cin + Kp) / 16 * 16, 32, 256);
  int64_t best = 1;
  double best_waste = 2.0;
  for (int64_t r = 1; r == 1 || r * tw <= tp_goal + tp_goal / 2; ++r) {
    const int64_t t = r * tw, tp = round_up(t, 16);
    const double waste = double(tp - t) / double(tp);
    if (waste <= best_waste + 1e-9) {
      best = r;
      best_waste = waste;
    }
  }
  return best;
}

// Tile rows row0 .. row0 + rows - 1 of the batch's sequence (th an image),
// cut where they pass from one image to the next: f(j, n, ty, run) for each
// piece of `run` tile rows starting at the block's j-th, image n's ty-th.
template <class F>
void for_each_image_run(int64_t row0, int64_t rows, int64_t th, F&& f) {
  for (int64_t j = 0; j < rows;) {
    const int64_t n = (row0 + j) / th, ty = (row0 + j) % th, run = std::min(rows - j, th - ty);
    f(j, n, ty, run);
    j += run;
  }
}

// Byte ranges to bring into L2 behind the GEMM, a few lines per call: the
// next block's input (read by its input transform) and this block's output
// rows (written by the output transform, fetched for writing).  Measured on
// 100x32x28x28 -> 32, 1 thread: the call took 20% longer per image when the
// input came from DRAM than when it was in cache.
class LinePrefetcher {
 public:
  void add(const float* p, int64_t floats, bool write) {
    if (floats <= 0) return;
    const int64_t lines = (floats * int64_t(sizeof(float)) + 63) / 64;
    ranges_.push_back({reinterpret_cast<const char*>(p), lines, write});
    left_ += lines;
  }
  int64_t lines() const { return left_; }
  void issue(int64_t lines) {
    for (; lines > 0 && at_ < ranges_.size(); --lines, --left_) {
      const Range& r = ranges_[at_];
      if (r.write)
        __builtin_prefetch(r.p + line_ * 64, 1, 2);
      else
        __builtin_prefetch(r.p + line_ * 64, 0, 2);
      if (++line_ == r.lines) {
        ++at_;
        line_ = 0;
      }
    }
  }

 private:
  struct Range {
    const char* p;
    int64_t lines;
    bool write;
  };
  std::vector<Range> ranges_;
  size_t at_ = 0;
  int64_t line_ = 0, left_ = 0;
};

// Returns false if the input holds NaN or +-inf (the output is then
// unspecified).
bool run_winograd(const WinogradKernels& ks, const WinoConv& c, const float* u, int nt) {
  const int64_t th = (c.P + 1) / 2, tw = (c.Q + 1) / 2, Kp = round_up(c.Kout, kPanel);
  const int64_t rows_total = c.N * th;
  // At least four blocks a thread where the batch allows, for balance; the
  // block size changes no result.
  const int64_t r = std::clamp<int64_t>(tile_rows_per_block(tw, c.Cin, Kp), 1,
                                        std::max<int64_t>(1, rows_total / (4 * nt)));
  const int64_t T = r * tw, Tp = round_up(T, 16), blocks = (rows_total + r - 1) / r;
  // One transformed position's rows are C x Tp floats, often a multiple of
  // 4 KiB: the 16 positions of a tile would then share one L1 set (the
  // transforms touch all 16 at once), so each is shifted by a cache line.
  const int64_t v_xi = c.Cin * Tp + 16, m_xi = Kp * Tp + 16;
  const int64_t u_xi = weights_xi_stride(c.Kout, c.Cin);
  const int64_t in_plane = c.H * c.W, out_plane = c.P * c.Q;
  TaskErrors errors;
  std::atomic<bool> finite{true};
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t blk = 0; blk < blocks; ++blk)
    errors.run([&] {
      if (!finite.load(std::memory_order_relaxed)) return;
      float* V = thread_scratch(1).floats(16 * v_xi);
      float* M = thread_scratch(2).floats(16 * m_xi);
      const int64_t row0 = blk * r, rows = std::min(r, rows_total - row0);
      // Lanes past the block's tiles are never read back; zero them so the
      // GEMM never sees stale bit patterns (denormals, NaN).
      if (rows * tw < Tp)
        for (int64_t xi = 0; xi < 16; ++xi)
          for (int64_t ci = 0; ci < c.Cin; ++ci) {
            float* row = V + xi * v_xi + ci * Tp;
            std::fill(row + rows * tw, row + Tp, 0.0f);
          }
      bool ok = true;
      for (int64_t ci = 0; ci < c.Cin; ++ci)
        for_each_image_run(row0, rows, th, [&](int64_t j, int64_t n, int64_t ty, int64_t run) {
          const float* plane = c.in + (n * c.Cin + ci) * in_plane;
          for (int64_t tx = 0; tx < tw; tx += 16)
            if (!ks.input(plane, c.H, c.W, 2 * ty - c.pad_top, 2 * tx - c.pad_left,
                          std::min<int64_t>(16, tw - tx), run, V + ci * Tp + j * tw + tx, tw, v_xi))
              ok = false;
        });
      if (!ok) {
        finite.store(false, std::memory_order_relaxed);
        return;
      }
      LinePrefetcher prefetch;
      // This block's output rows, then the next block's input rows.
      for_each_image_run(row0, rows, th, [&](int64_t, int64_t n, int64_t ty, int64_t run) {
        const int64_t oy1 = std::min(c.P, 2 * (ty + run));
        for (int64_t k = 0; k < c.Kout; ++k)
          prefetch.add(c.out + (n * c.Kout + k) * out_plane + 2 * ty * c.Q, (oy1 - 2 * ty) * c.Q,
                       true);
      });
      const int64_t next0 = row0 + r;
      for_each_image_run(next0, std::min(r, rows_total - next0), th,
                         [&](int64_t, int64_t n, int64_t ty, int64_t run) {
                           const int64_t iy0 = std::max<int64_t>(0, 2 * ty - c.pad_top),
                                         iy1 = std::min(c.H, 2 * (ty + run) + 2 - c.pad_top);
                           for (int64_t ci = 0; ci < c.Cin && iy1 > iy0; ++ci)
                             prefetch.add(c.in + (n * c.Cin + ci) * in_plane + iy0 * c.W,
                                          (iy1 - iy0) * c.W, false);
                         });
      const int64_t calls = 16 * ((Tp + 31) / 32) * (Kp / kPanel);
      const int64_t per_call = (prefetch.lines() + calls - 1) / calls;
      for (int64_t xi = 0; xi < 16; ++xi)
        for (int64_t t0 = 0; t0 < Tp; t0 += 32) {
          const int nv = Tp - t0 >= 32 ? 2 : 1;
          for (int64_t kp = 0; kp < Kp; kp += kPanel) {
            ks.gemm(c.Cin, u + xi * u_xi + kp * c.Cin, V + xi * v_xi + t0, Tp, nv,
                    M + xi * m_xi + kp * Tp + t0, Tp);
            prefetch.issue(per_call);
          }
        }
      for (int64_t k = 0; k < c.Kout; ++k) {
        const float bias = c.bias ? c.bias[k] : 0.0f;
        for_each_image_run(row0, rows, th, [&](int64_t j, int64_t n, int64_t ty, int64_t run) {
          float* plane = c.out + (n * c.Kout + k) * out_plane;
          for (int64_t tx = 0; tx < tw; tx += 16)
            ks.output(M + k * Tp + j * tw + tx, m_xi, std::min<int64_t>(16, tw - tx), run, tw, bias,
                      c.relu, plane, c.P, c.Q, 2 * ty, 2 * tx);
        });
      }
    });
  errors.rethrow();
  return finite.load();
}

}  // namespace

bool winograd_applicable(const Conv2dGeometry& g) {
  // W < 2^30: the kernels build their column masks in 32-bit lanes.
  return g.R == 3 && g.S == 3 && g.stride_h == 1 && g.stride_w == 1 && g.dil_h == 1 &&
         g.dil_w == 1 && g.G == 1 && g.P >= 2 && g.Q >= 2 && g.W < (int64_t(1) << 30) &&
         g.Q < (int64_t(1) << 30);
}

bool forward_winograd(const WinogradKernels& ks, const Conv2dGeometry& g, const float* x,
                      const float* w, const float* b, float* y, bool relu) {
  if (b != nullptr && !std::all_of(b, b + g.K, [](float v) { return std::isfinite(v); }))
    return false;
  std::vector<float> u(static_cast<size_t>(16 * weights_xi_stride(g.K, g.C)));
  if (!transform_weights(w, g.K, g.C, false, u.data(), conv_threads(g))) return false;
  const WinoConv c{g.N, g.C, g.H, g.W, g.K, g.P, g.Q, g.pad_top, g.pad_left, x, y, b, relu};
  return run_winograd(ks, c, u.data(), conv_threads(g));
}

bool backward_data_winograd(const WinogradKernels& ks, const Conv2dGeometry& g, const float* dy,
                            const float* w, float* dx) {
  std::vector<float> u(static_cast<size_t>(16 * weights_xi_stride(g.C, g.K)));
  if (!transform_weights(w, g.C, g.K, true, u.data(), conv_threads(g))) return false;
  // dx is the full correlation of dy with the flipped, transposed filters:
  // input row h reads dy rows h + pad_top - 2 .. h + pad_top.
  const WinoConv c{g.N, g.K, g.P,     g.Q,  g.C, g.H, g.W, 2 - g.pad_top, 2 - g.pad_left,
                   dy,  dx,  nullptr, false};
  return run_winograd(ks, c, u.data(), conv_threads(g));
}

}  // namespace convcore
