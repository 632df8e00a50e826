// conv2d row-segment drivers, for layers with few channels (the first layer
// of a network, the tutorial model's 5x5 layers): each output row is cut
// into segments of up to 8 columns (kernels/rows_ukernels.h), so narrow rows
// (8, 12, 24, 28 outputs) fill the lanes, and results are stored straight
// into NCHW rows.  Forward and stride-1 data gradient share one driver (the
// data gradient is a full convolution of dy with the flipped, transposed
// weights); its reduction is ordered tap row first, so the steps whose input
// rows are all padding (most of a full convolution's border) are skipped as
// one contiguous range per tile.  Where that full convolution is mostly
// padding (the 5x5 layers), the data gradient runs on tap columns instead:
// every FMA on dy data, the kernel's column shifts added after.  The weight
// gradient keeps the fixed batch split of BatchChunks: bitwise the same for
// any thread count.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "ops/conv2d_drivers.h"
#include "ops/parallel.h"
#include "ops/workspace.h"

namespace convcore {
namespace {

constexpr int64_t kLanes = 8;
// Chunks of the weight gradient's batch split (BatchChunks): 8 rather than
// 16, so each kernel call sums twice the images before its 24-27 horizontal
// sums (the 12 -> 6 channel 5x5 layer at batch 100, 2 threads: 0.169 against
// 0.189 ms); up to 8 threads still share the work.
constexpr int64_t kRowsWeightChunks = 8;

// Segments of every output row, row-major: row h, columns [q0, q0 + 8).
std::vector<RowSegment> row_segments(int64_t P, int64_t Q, int64_t Wp) {
  std::vector<RowSegment> segs;
  for (int64_t h = 0; h < P; ++h)
    for (int64_t q0 = 0; q0 < Q; q0 += kLanes)
      segs.push_back({h * Wp + q0, h * Q + q0, int32_t(std::min(kLanes, Q - q0))});
  return segs;
}

// Flat rows: where both horizontal paddings reach at least the kernel's
// width, a row's right padding can be the next row's left padding, so the
// padded planes are laid out with the output's row pitch Q (plus one zero
// row for the last row's wrap).  Output o = h * Q + q then reads input
// o + tap for every tap, and a segment is any 8 consecutive outputs of the
// NCHW plane, across row ends: the 12-wide rows of the tutorial's data
// gradient fill every lane instead of 8 + 4.  The FMAs of each output are
// those of row_segments (the same taps in the same order; the skipped tap
// rows are all zero padding in both), so results are the same.
bool flat_fits(const DirectConv& d) {
  const int64_t reach = d.dil_w * (d.S - 1);
  const int64_t right = d.pp.Wp - d.pp.pad_left - d.pp.W;
  return d.pp.sh == 1 && d.pp.sw == 1 && d.pp.pad_left >= reach && right >= reach &&
         d.Q % kLanes != 0;
}
PaddedPlanes flat_planes(const PaddedPlanes& pp, int64_t Q) {
  return {pp.H, pp.W, pp.pad_top, pp.pad_left, pp.Hp + 1, Q, 1, 1};
}
std::vector<RowSegment> flat_segments(int64_t P, int64_t Q) {
  std::vector<RowSegment> segs;
  for (int64_t o = 0; o < P * Q; o += kLanes)
    segs.push_back({o, o, int32_t(std::min(kLanes, P * Q - o))});
  return segs;
}

const RowsKernel& pick_rows_kernel(const RowsKernels& ks, int64_t Kout) {
  // Fewest padded channels, then the widest channel block (fewest input loads).
  const RowsKernel* best = &ks.tiles[0];
  for (const RowsKernel& k : ks.tiles) {
    const int64_t pad = (Kout + k.kb - 1) / k.kb * k.kb,
                  best_pad = (Kout + best->kb - 1) / best->kb * best->kb;
    if (pad < best_pad || (pad == best_pad && k.kb > best->kb)) best = &k;
  }
  return *best;
}

// image (may be null): instead of storing to problem.out, each image's
// output goes to a per-thread buffer and image(n, buffer) runs on it.
void run_rows(const RowsKernels& ks, const DirectConv& problem, const float* w,
              bool transposed_flip, bool flat, int nt, const ConvImageFn* image = nullptr) {
  DirectConv d = problem;
  if (flat) d.pp = flat_planes(problem.pp, problem.Q);
  const RowsKernel& uk = pick_rows_kernel(ks, d.Kout);
  const int64_t kb = uk.kb, ns = uk.ns;
  const int64_t RS = d.R * d.S, steps = d.Cin * RS, kblocks = (d.Kout + kb - 1) / kb;
  const int64_t Wp = d.pp.Wh(), plane = d.pp.plane();
  // Steps ordered (r, c, s): the steps of one kernel row are contiguous.
  std::vector<int64_t> offsets(static_cast<size_t>(steps));
  std::vector<float> wpack(static_cast<size_t>(kblocks * steps * kb));
  for (int64_t r = 0; r < d.R; ++r)
    for (int64_t c = 0; c < d.Cin; ++c)
      for (int64_t s = 0; s < d.S; ++s) {
        const int64_t step = (r * d.Cin + c) * d.S + s;
        offsets[size_t(step)] = c * plane + r * d.dil_h * Wp + s * d.dil_w;
        for (int64_t k = 0; k < kblocks * kb; ++k) {
          float v = 0.0f;
          if (k < d.Kout)
            v = transposed_flip ? w[(c * d.Kout + k) * RS + (d.R - 1 - r) * d.S + (d.S - 1 - s)]
                                : w[(k * d.Cin + c) * RS + r * d.S + s];
          wpack[size_t(((k / kb) * steps + step) * kb + k % kb)] = v;
        }
      }
  const std::vector<RowSegment> segs = flat ? flat_segments(d.P, d.Q) : row_segments(d.P, d.Q, Wp);
  const int64_t nseg = int64_t(segs.size()), tiles = (nseg + ns - 1) / ns;
  // Kernel rows that reach input data (not padding) for each tile.
  const int64_t data_lo = std::max<int64_t>(d.pp.pad_top, 0),
                data_hi = std::min(d.pp.pad_top + d.pp.H, d.pp.Hp);
  std::vector<int64_t> step_lo(static_cast<size_t>(tiles)), step_hi(static_cast<size_t>(tiles));
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t h_lo = segs[size_t(t * ns)].y_at / d.Q;
    const RowSegment& last = segs[size_t(std::min(nseg, (t + 1) * ns) - 1)];
    const int64_t h_hi = (last.y_at + last.lanes - 1) / d.Q;
    int64_t r_lo = 0, r_hi = d.R - 1;
    while (r_lo < d.R && h_hi + r_lo * d.dil_h < data_lo) ++r_lo;
    while (r_hi >= 0 && h_lo + r_hi * d.dil_h >= data_hi) --r_hi;
    step_lo[size_t(t)] = r_lo * d.Cin * d.S;
    step_hi[size_t(t)] = std::max(r_hi + 1, r_lo) * d.Cin * d.S;
  }
  const int64_t in_img = d.Cin * d.pp.H * d.pp.W, out_img = d.Kout * d.P * d.Q;
  const int64_t PQ = d.P * d.Q;
  // Unpadded planes are read in place; the kernels read up to 7 floats past
  // an image's last row, which for every image but the last is the next one
  // (those lanes are never stored), so only the last is copied with slack.
  const bool in_place = d.pp.identity();
  TaskErrors errors;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t n = 0; n < d.N; ++n)
    errors.run([&] {
      const float* xpad = d.in + n * in_img;
      if (!in_place || n + 1 == d.N) {
        float* copy = thread_scratch(1).floats(d.Cin * plane + kLanes);
        pad_planes(d.pp, d.Cin, d.in + n * in_img, copy);
        std::fill(copy + d.Cin * plane, copy + d.Cin * plane + kLanes, 0.0f);
        xpad = copy;
      }
      float* out = image ? thread_scratch(3).floats(out_img) : d.out + n * out_img;
      for (int64_t b = 0; b < kblocks; ++b) {
        const int64_t k0 = b * kb, kn = std::min(kb, d.Kout - k0);
        float* y = out + k0 * PQ;
        const float* wp = wpack.data() + b * steps * kb;
        const float* bias = d.bias ? d.bias + k0 : nullptr;
        for (int64_t t = 0; t < tiles; ++t)
          uk.fn(step_lo[size_t(t)], step_hi[size_t(t)], wp, offsets.data(), xpad,
                segs.data() + t * ns, std::min(ns, nseg - t * ns), y, PQ, kn, bias, d.relu);
      }
      if (image) (*image)(n, out);
    });
  errors.rethrow();
}

// Tap columns (kernels/rows_ukernels.h): per image, A[c][s][h][q] = sum over
// r, k of w[k][c][r][s] * dy[k][h + pad_top - r * dil_h][q] for the r whose
// dy row exists, then dx[c][h][w] = sum over s of A[c][s][h][w + pad_left -
// s * dil_w].  A's rows are Q columns of data and a gap of ml = dil_w * (S -
// 1) zeros (the next row's left margin), a plane starting with one more gap
// and ending with 16 floats of slack; the shifted reads past a row's data
// then add zeros.  The gaps are zeroed once per thread and never written.
struct TapcolsLayout {
  int64_t ml, pitch, plane;
  explicit TapcolsLayout(const Conv2dGeometry& g)
      : ml(g.dil_w * (g.S - 1)), pitch(g.Q + ml), plane(ml + g.H * pitch + 16) {}
  int64_t floats(const Conv2dGeometry& g) const { return g.C * g.S * plane; }
};

// At most this much A per thread (it stays in L2 beside dy and dx).
constexpr int64_t kTapcolsMaxFloats = 64 * 1024;

// The tiles' shapes: NA accumulators per segment x NS segments, 30 in all
// (TapcolsKernels::tiles holds their kernels in this order).
struct TapcolsShape {
  int64_t na, ns;
};
constexpr TapcolsShape kTapcolsShapes[3] = {{30, 1}, {15, 2}, {10, 3}};

// The tile with the fewest accumulator slots (channel blocks x row tiles x
// 30), and the share of them that hold a channel and a dy column.
struct TapcolsChoice {
  int index;
  double used;
};
TapcolsChoice pick_tapcols(const Conv2dGeometry& g) {
  const int64_t nseg = (g.Q + 7) / 8;
  TapcolsChoice best{-1, 0.0};
  for (int i = 0; i < 3; ++i) {
    const TapcolsShape& t = kTapcolsShapes[i];
    const int64_t cb = std::min(g.C, t.na / g.S);
    if (cb < 1) continue;
    const int64_t slots = (g.C + cb - 1) / cb * ((nseg + t.ns - 1) / t.ns) * t.na * t.ns * 8;
    const double used = double(g.C * g.S * g.Q) / double(slots);
    if (used > best.used) best = {i, used};
  }
  return best;
}

// Share of (output, tap) pairs of one dimension that land on data: of the
// out x taps pairs, those whose input index o + pad - t * dil lies in [0, in).
double data_share(int64_t out, int64_t taps, int64_t dil, int64_t pad, int64_t in) {
  int64_t hits = 0;
  for (int64_t t = 0; t < taps; ++t) {
    const int64_t lo = std::max<int64_t>(0, t * dil - pad), hi = std::min(out, t * dil - pad + in);
    hits += std::max<int64_t>(0, hi - lo);
  }
  return double(hits) / double(out * taps);
}

}  // namespace

// The row kernels run the full convolution, so only the FMAs whose dy tap
// lands on data count: data_share of dx rows x data_share of dx columns
// (0.44 for the tutorial's 5x5 layer on 8x8 dy), and about half that for a
// single dx channel, whose 24 x 1 tile issues a load per FMA.  Here every
// FMA reads dy data, but only the tile slots holding a channel and a dy
// column count (pick_tapcols).  Taken where its share is at least 0.9 of
// theirs: measured (batch 100, 2 threads) 1.83x on 12 -> 6 channels 5x5
// (8x8 dy), 1.33x on 6 -> 1 (24x24), 1.20x on 16 -> 3 5x5 padded 2, 1.12x
// on 16 -> 6 3x3 unpadded; rejected, 8 -> 8 3x3 on 10x10 dy (share 0.50
// against 0.69) ran 0.78x, and 3x3 layers padded 1 are even.
bool tapcols_data_applicable(const Conv2dGeometry& g) {
  if (!rows_applicable(g) || g.S > 30 || TapcolsLayout(g).floats(g) > kTapcolsMaxFloats)
    return false;
  double rows_share = data_share(g.H, g.R, g.dil_h, g.pad_top, g.P) *
                      data_share(g.W, g.S, g.dil_w, g.pad_left, g.Q);
  if (g.C == 1) rows_share *= 0.5;
  return pick_tapcols(g).used >= 0.9 * rows_share;
}

void backward_data_tapcols(const TapcolsKernels& ks, const Conv2dGeometry& g, const float* dy,
                           const float* w, float* dx) {
  const TapcolsChoice pick = pick_tapcols(g);
  const conv_tapcols_ukernel_fn uk = ks.tiles[pick.index];
  const int64_t na = kTapcolsShapes[pick.index].na, ns = kTapcolsShapes[pick.index].ns;
  const int64_t cb = std::min(g.C, na / g.S), cblocks = (g.C + cb - 1) / cb;
  const int64_t RS = g.R * g.S, PQ = g.P * g.Q;
  // Weights per channel block, steps (r, k), NA slots a = c * S + s.
  std::vector<float> wpack(static_cast<size_t>(cblocks * g.R * g.K * na), 0.0f);
  for (int64_t b = 0; b < cblocks; ++b)
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t k = 0; k < g.K; ++k)
        for (int64_t cl = 0; cl < cb && b * cb + cl < g.C; ++cl)
          for (int64_t s = 0; s < g.S; ++s)
            wpack[size_t(((b * g.R + r) * g.K + k) * na + cl * g.S + s)] =
                w[(k * g.C + b * cb + cl) * RS + r * g.S + s];
  // The kernel rows r whose dy row exists, per dx row h: p = h + pad_top -
  // r * dil_h in [0, P), a contiguous range of r.
  std::vector<int64_t> r_lo(static_cast<size_t>(g.H)), r_n(static_cast<size_t>(g.H));
  for (int64_t h = 0; h < g.H; ++h) {
    int64_t lo = g.R, hi = -1;
    for (int64_t r = 0; r < g.R; ++r) {
      const int64_t p = h + g.pad_top - r * g.dil_h;
      if (p >= 0 && p < g.P) lo = std::min(lo, r), hi = std::max(hi, r);
    }
    r_lo[size_t(h)] = hi >= 0 ? lo : 0;
    r_n[size_t(h)] = hi >= 0 ? hi - lo + 1 : 0;
  }
  const TapcolsLayout lay(g);
  const int64_t nseg = (g.Q + 7) / 8, HW = g.H * g.W;
  const int nt = conv_threads(g);
  TaskErrors errors;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    float* A = nullptr;
    errors.run([&] {
      A = thread_scratch(1).floats(lay.floats(g));
      std::fill(A, A + lay.floats(g), 0.0f);
    });
#pragma omp for schedule(static)
    for (int64_t n = 0; n < g.N; ++n)
      errors.run([&] {
        if (!A) return;
        const float* dyn = dy + n * g.K * PQ;
        for (int64_t h = 0; h < g.H; ++h) {
          const int64_t r0 = r_lo[size_t(h)], nr = r_n[size_t(h)];
          const int64_t p0 = nr > 0 ? h + g.pad_top - r0 * g.dil_h : 0;  // no dy row: 0 steps
          for (int64_t b = 0; b < cblocks; ++b) {
            const int64_t nb = std::min(cb, g.C - b * cb) * g.S;
            const float* wb = wpack.data() + ((b * g.R + r0) * g.K) * na;
            float* out = A + b * cb * g.S * lay.plane + lay.ml + h * lay.pitch;
            for (int64_t j = 0; j < nseg; j += ns)
              uk(nr, g.K, dyn + p0 * g.Q + 8 * j, -g.dil_h * g.Q, PQ, wb,
                 std::min(8 * ns, g.Q - 8 * j), out + 8 * j, lay.plane, nb);
          }
        }
        float* dxn = dx + n * g.C * HW;
        for (int64_t c = 0; c < g.C; ++c)
          ks.combine(A + c * g.S * lay.plane + lay.ml + g.pad_left, lay.plane, lay.pitch, g.S,
                     g.dil_w, g.H, g.W, dxn + c * HW);
      });
  }
  errors.rethrow();
}

bool rows_applicable(const Conv2dGeometry& g) {
  return g.G == 1 && g.stride_h == 1 && g.stride_w == 1 && std::min(g.C, g.K) <= 8 &&
         std::max(g.C, g.K) <= 64;
}

bool rows_weight_applicable(const Conv2dGeometry& g) { return rows_applicable(g); }

void forward_rows(const RowsKernels& ks, const Conv2dGeometry& g, const float* x, const float* w,
                  const float* b, float* y, bool relu) {
  run_rows(ks, direct_forward_problem(g, x, b, y, relu), w, false, false, conv_threads(g));
}

void forward_rows_per_image(const RowsKernels& ks, const Conv2dGeometry& g, const float* x,
                            const float* w, const float* b, bool relu, const ConvImageFn& image) {
  run_rows(ks, direct_forward_problem(g, x, b, nullptr, relu), w, false, false, conv_threads(g),
           &image);
}

void backward_data_rows(const RowsKernels& ks, const Conv2dGeometry& g, const float* dy,
                        const float* w, float* dx) {
  run_rows(ks, direct_backward_data_problem(g, dy, dx), w, true, false, conv_threads(g));
}

bool rows_flat_data_applicable(const Conv2dGeometry& g) {
  return rows_applicable(g) && flat_fits(direct_backward_data_problem(g, nullptr, nullptr));
}

void backward_data_rows_flat(const RowsKernels& ks, const Conv2dGeometry& g, const float* dy,
                             const float* w, float* dx) {
  run_rows(ks, direct_backward_data_problem(g, dy, dx), w, true, true, conv_threads(g));
}

void backward_weight_rows(const RowsWeightKernels& ks, const Conv2dGeometry& g, const float* dy,
                          const float* x, float* dw, float* db, const ConvDyFn* make_dy) {
  const DirectConv d = direct_forward_problem(g, x, nullptr, nullptr);
  const int64_t CRS = g.C * g.R * g.S, PQ = g.P * g.Q;
  // The tile with the least work: padded (channel, tap) slots, each an FMA
  // plus its share of loads (1/kb of an input load, 1/tb of a dy load).
  const auto cost = [&](const RowsWeightKernel& k) {
    const double slots = double((g.K + k.kb - 1) / k.kb * k.kb * ((CRS + k.tb - 1) / k.tb * k.tb));
    return slots * (1.0 + 1.0 / double(k.kb) + 1.0 / double(k.tb));
  };
  const RowsWeightKernel* uk = &ks.tiles[0];
  for (const RowsWeightKernel& k : ks.tiles)
    if (cost(k) < cost(*uk)) uk = &k;
  const int64_t tb = uk->tb, kb = uk->kb;
  const int64_t tblocks = (CRS + tb - 1) / tb, ldo = tblocks * tb;
  const int64_t Wp = d.pp.Wh(), plane = d.pp.plane(), x_img = g.C * plane;
  std::vector<int64_t> taps(static_cast<size_t>(ldo));
  for (int64_t t = 0; t < ldo; ++t) {  // taps past CRS repeat the last one; discarded
    const int64_t i = std::min(t, CRS - 1), c = i / (g.R * g.S), r = i / g.S % g.R, s = i % g.S;
    taps[size_t(t)] = c * plane + r * g.dil_h * Wp + s * g.dil_w;
  }
  const std::vector<RowSegment> segs = row_segments(g.P, g.Q, Wp);
  // Each chunk's partial: the weight rows, then (with db) the K bias sums.
  const int64_t kblocks = (g.K + kb - 1) / kb, w_size = kblocks * kb * ldo;
  const int64_t part_size = w_size + (db ? g.K : 0);
  const BatchChunks split(g.N, kRowsWeightChunks);
  const int64_t chunks = split.count;
  std::vector<float> partials(static_cast<size_t>(chunks * part_size));
  const int nt = conv_threads(g);
  for_each_chunk_partial(split, partials.data(), part_size, nt, [&](int64_t chunk, float* part) {
    const int64_t n0 = split.begin(chunk), n1 = split.end(chunk);
    const int64_t ib = split.images_per_call(chunk, x_img + g.K * PQ);
    // Unpadded planes are read in place (the kernel reads no lane past a
    // segment's row: plain loads for whole segments, masked for the rest).
    const bool in_place = d.pp.identity();
    float* xpad = in_place ? nullptr : thread_scratch(1).floats(ib * x_img + kLanes);
    // dy from memory, or made here for each call's images (make_dy).
    float* dy_made = make_dy ? thread_scratch(2).floats(ib * g.K * PQ) : nullptr;
    for (int64_t nb = n0; nb < n1; nb += ib) {
      const int64_t images = std::min(ib, n1 - nb);
      const float* dyb = dy + nb * g.K * PQ;
      if (make_dy) {
        (*make_dy)(nb, images, dy_made);
        dyb = dy_made;
      }
      const float* xb = x + nb * g.C * g.H * g.W;
      if (!in_place) {
        for (int64_t i = 0; i < images; ++i)
          pad_planes(d.pp, g.C, x + (nb + i) * g.C * g.H * g.W, xpad + i * x_img);
        std::fill(xpad + images * x_img, xpad + images * x_img + kLanes, 0.0f);
        xb = xpad;
      }
      for (int64_t b = 0; b < kblocks; ++b) {
        const int64_t k0 = b * kb;
        for (int64_t t0 = 0; t0 < ldo; t0 += tb)
          uk->fn(images, dyb + k0 * PQ, g.K * PQ, PQ, xb, x_img, taps.data() + t0, segs.data(),
                 int64_t(segs.size()), std::min(kb, g.K - k0), part + k0 * ldo + t0, ldo);
      }
      // The bias from the same dy, while it is in cache: each plane summed
      // in 16 lanes, then into the chunk's sum of its channel.
      if (db)
        for (int64_t i = 0; i < images; ++i) {
          float sums[64];  // K <= 64 (rows_weight_applicable)
          ks.bias_planes(g.K, PQ, dyb + i * g.K * PQ, sums);
          for (int64_t k = 0; k < g.K; ++k) part[w_size + k] += sums[k];
        }
    }
  });
  if (db)
    for (int64_t k = 0; k < g.K; ++k)
      db[k] = sum_chunk_partials(partials.data(), chunks, part_size, w_size + k);
  for (int64_t k = 0; k < g.K; ++k)
    for (int64_t i = 0; i < CRS; ++i) {
      dw[k * CRS + i] = sum_chunk_partials(partials.data(), chunks, part_size, k * ldo + i);
    }
}

}  // namespace convcore
