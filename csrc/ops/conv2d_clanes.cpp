// conv2d channels-in-lanes drivers (kernels/clanes_ukernels.h).
//
// Forward and stride-1 data gradient: the input is copied once per image
// into the padded phase planes of the direct path; weights are packed into
// panels of 32 output channels, [G][K/32][C][R][S][32]; each output row is
// cut into near-equal tiles of at most 14 positions, and each tile runs the
// whole C x R x S reduction in registers and writes its 32 rows of NCHW
// output directly (no blocked output buffer, no reorder pass).
//
// Weight gradient: dy is packed once per image into position-major panels of
// kp channels ([p][q][kp], no padding columns); mt-tap x kp-channel
// outer-product tiles reduce over blocks of output rows (or whole images,
// two per call), streaming the dy panel from L2.  Images are summed in the
// fixed BatchChunks split, so the result is bitwise the same for any thread
// count.  The bias gradient, when asked, is summed by the dy packing (per
// image, positions in order) into one more row of the same partials.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/conv2d_drivers.h"
#include "ops/parallel.h"
#include "ops/workspace.h"

namespace convcore {
namespace {

constexpr int64_t kClanesWeightChunks = 4;
constexpr int64_t kClanesWeightImagesPerCall = 2;

// wpack[g][panel][c*R*S + r*S + s][i] = weight of output channel panel*32+i
// (zero past Kout).  transposed_flip: the weight of output channel k and
// input channel c is w[g][c][k][R-1-r][S-1-s] of the original tensor.
void pack_clanes_weights(const DirectConv& d, const float* w, bool transposed_flip, float* wpack) {
  constexpr int64_t kp = kClanesTileK;
  const int64_t RS = d.R * d.S, steps = d.Cin * RS, panels = (d.Kout + kp - 1) / kp;
  std::fill(wpack, wpack + d.G * panels * steps * kp, 0.0f);
  for (int64_t g = 0; g < d.G; ++g)
    for (int64_t k = 0; k < d.Kout; ++k) {
      float* dst = wpack + (g * panels + k / kp) * steps * kp + k % kp;
      for (int64_t c = 0; c < d.Cin; ++c)
        for (int64_t r = 0; r < d.R; ++r)
          for (int64_t s = 0; s < d.S; ++s) {
            const float v =
                transposed_flip
                    ? w[((g * d.Cin + c) * d.Kout + k) * RS + (d.R - 1 - r) * d.S + (d.S - 1 - s)]
                    : w[((g * d.Kout + k) * d.Cin + c) * RS + r * d.S + s];
            dst[((c * d.R + r) * d.S + s) * kp] = v;
          }
    }
}

// Padded planes of one image: the ISA's stride-1 copy where it applies.
void pad_image(conv_clanes_pad_fn pad, const PaddedPlanes& pp, int64_t channels, const float* src,
               float* dst) {
  if (pp.sh == 1 && pp.sw == 1)
    pad(src, channels, pp.H, pp.W, pp.pad_top, pp.pad_left, pp.Hp, pp.Wp, dst);
  else
    pad_planes(pp, channels, src, dst);
}

void run_clanes(conv_clanes_fwd_ukernel_fn uk, conv_clanes_pad_fn pad, const DirectConv& d,
                const float* w, bool transposed_flip, int nt) {
  constexpr int64_t kp = kClanesTileK;
  const int64_t steps = d.Cin * d.R * d.S, panels = (d.Kout + kp - 1) / kp;
  std::vector<float> wpack_store(static_cast<size_t>(d.G * panels * steps * kp));
  pack_clanes_weights(d, w, transposed_flip, wpack_store.data());
  const float* wpack = wpack_store.data();
  const int64_t plane = d.pp.plane(), Cin_all = d.G * d.Cin, Wh = d.pp.Wh(), PQ = d.P * d.Q;
  const int64_t in_img = Cin_all * d.pp.H * d.pp.W, out_img = d.G * d.Kout * PQ;
  const std::vector<int64_t> offsets = tap_offsets(d.pp, d.Cin, d.R, d.S, d.dil_h, d.dil_w);
  // Near-equal tiles per row: 28 -> 14 + 14, 16 -> 8 + 8, never a sliver.
  const int64_t row_tiles = (d.Q + kClanesTileN - 1) / kClanesTileN;
  const int64_t tile_base = d.Q / row_tiles, tile_extra = d.Q % row_tiles;
  const PanelBlocks split(d.N, d.G * panels, nt);
  const int64_t blocks = split.count;
  TaskErrors errors;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t task = 0; task < d.N * blocks; ++task)
    errors.run([&] {
      const int64_t n = task / blocks, b = task % blocks;
      // Every tap of every valid output lies inside the padded planes, so the
      // kernels need no slack past the end.
      float* xpad = thread_scratch(1).floats(Cin_all * plane);
      pad_image(pad, d.pp, Cin_all, d.in + n * in_img, xpad);
      // The next image's input comes from DRAM when the batch exceeds the
      // caches; its copy into padded planes took 5% of the call until it was
      // prefetched into L2 a slice per output row, behind the FMAs.
      const int64_t gp0 = split.begin(b), gp1 = split.end(b);
      const char* next = task + blocks < d.N * blocks
                             ? reinterpret_cast<const char*>(d.in + (n + 1) * in_img)
                             : nullptr;
      const int64_t next_lines = next && b == 0 ? in_img * int64_t(sizeof(float)) / 64 : 0;
      const int64_t lines_per_row =
          (next_lines + (gp1 - gp0) * d.P - 1) / std::max<int64_t>((gp1 - gp0) * d.P, 1);
      int64_t prefetched = 0;
      for (int64_t gp = gp0; gp < gp1; ++gp) {
        const int64_t g = gp / panels, k0 = (gp % panels) * kp, kn = std::min(kp, d.Kout - k0);
        const float* wp = wpack + gp * steps * kp;
        const float* xg = xpad + g * d.Cin * plane;
        const float* bias = d.bias ? d.bias + g * d.Kout + k0 : nullptr;
        float* yk = d.out + n * out_img + (g * d.Kout + k0) * PQ;
        for (int64_t p = 0; p < d.P; ++p) {
          for (int64_t l = 0; l < lines_per_row && prefetched < next_lines; ++l, ++prefetched)
            __builtin_prefetch(next + prefetched * 64, 0, 2);
          // The tiles write 32 channel rows of the output, fresh memory each
          // call: fetch the next output row's lines for writing ahead of them.
          if (p + 1 < d.P)
            for (int64_t k = 0; k < kn; ++k) {
              const char* row = reinterpret_cast<const char*>(yk + k * PQ + (p + 1) * d.Q);
              for (int64_t off = 0; off < d.Q * int64_t(sizeof(float)); off += 64)
                __builtin_prefetch(row + off, 1, 3);
              __builtin_prefetch(row + d.Q * int64_t(sizeof(float)) - 1, 1, 3);
            }
          for (int64_t i = 0, q0 = 0; i < row_tiles; ++i) {
            const int64_t width = tile_base + (i < tile_extra ? 1 : 0);
            uk(steps, wp, xg + p * Wh + q0, offsets.data(), width, kn, bias, yk + p * d.Q + q0, PQ);
            q0 += width;
          }
          // The fused ReLU on the row just stored (kn rows of Q, still in L1).
          if (d.relu)
            for (int64_t k = 0; k < kn; ++k) relu_inplace(yk + k * PQ + p * d.Q, d.Q);
        }
      }
    });
  errors.rethrow();
}

}  // namespace

void forward_clanes(conv_clanes_fwd_ukernel_fn ukernel, conv_clanes_pad_fn pad,
                    const Conv2dGeometry& g, const float* x, const float* w, const float* b,
                    float* y, bool relu) {
  run_clanes(ukernel, pad, direct_forward_problem(g, x, b, y, relu), w, false, conv_threads(g));
}

void backward_data_clanes(conv_clanes_fwd_ukernel_fn ukernel, conv_clanes_pad_fn pad,
                          const Conv2dGeometry& g, const float* dy, const float* w, float* dx) {
  run_clanes(ukernel, pad, direct_backward_data_problem(g, dy, dx), w, true, conv_threads(g));
}

void backward_weight_clanes(const ClanesOuterKernel& uk, const Conv2dGeometry& g, const float* dy,
                            const float* x, float* dw, float* db) {
  const DirectConv d = direct_forward_problem(g, x, nullptr, nullptr);
  const int64_t mt = uk.mt, kp = uk.kp;
  const int64_t RS = g.R * g.S, CRS = g.Cg() * RS, Kg = g.Kg(), PQ = g.P * g.Q;
  const int64_t plane = d.pp.plane(), Wh = d.pp.Wh();
  const int64_t crs_panels = (CRS + mt - 1) / mt, k_panels = (Kg + kp - 1) / kp,
                ldw = k_panels * kp;
  // Each chunk's partial: the G x crs_panels*mt x ldw weight sums, then
  // (with db) a G x ldw row of bias sums.
  const int64_t weight_part = g.G * crs_panels * mt * ldw;
  const int64_t part_size = weight_part + (db ? g.G * ldw : 0);
  const int64_t x_img = g.C * plane, dyt_img = g.G * k_panels * PQ * kp;
  // Output rows per kernel call.  Long calls pay: each call loads and stores
  // its 24 accumulators, and measured on the 14x14 layers (6x64 tiles) one
  // call per 1 / 2 / 4 / 14 rows ran at 71 / 81 / 87 / 95 % of peak even
  // though a 14-row panel (50 KiB) no longer fits L1; the L2 keeps up with
  // one 64-byte panel load per 6 FMAs.  A 64 KiB panel block bounds it.
  const int64_t row_block = std::clamp<int64_t>(16384 / (g.Q * kp), 1, g.P);
  // At most 4 fixed chunks (not kMaxWeightChunks = 16): each chunk costs a
  // zero-filled partial and a pass of the final reduction, 147 KiB each on
  // the 64x64 layer, and 16 of them took 5-8% of the call (1 thread: 76-82%
  // of peak with 16 chunks, 82-86% with 4).  4 still splits evenly over 2
  // threads; the split depends on N alone, so results stay bitwise the same
  // for any thread count.
  const BatchChunks split(g.N, kClanesWeightChunks);
  const int64_t chunks = split.count;
  // The calling thread's slot 0 (unused by the workers' padding and dy
  // slots): a fresh zeroed vector of partials cost its page faults and
  // zeroing on every call.
  float* partials = thread_scratch(0).floats(chunks * part_size);
  const std::vector<int64_t> tap_offset = tap_offsets(d.pp, g.Cg(), g.R, g.S, g.dil_h, g.dil_w);
  const int nt = conv_threads(g);
  // Images per kernel call, where one call covers a whole image: its 24
  // accumulators are then loaded and stored once per group of images
  // instead of once per image (the same sums in the same order, so bitwise
  // the same result).  Measured at batch 128 (2 threads, one process,
  // alternating): 1 / 2 / 3 / 4 images per call took 8.79 / 8.64 / 8.61 /
  // 8.63 ms on 64 -> 64 channels 14x14 and 4.45 / 4.37 / 4.34 / 4.35 ms on
  // 32 -> 64; 2 keeps the group's padded x and dy panels (230 KiB) and the
  // next group's prefetch well inside L2.
  const int64_t group = row_block == g.P ? kClanesWeightImagesPerCall : 1;
  const int64_t x_src_img = g.C * g.H * g.W, dy_img = g.K * PQ;
  for_each_chunk_partial(split, partials, part_size, nt, [&](int64_t chunk, float* part) {
    // xpad: the group's padded images one after the other; dyt: per group
    // and panel of kp channels, the images' panels one after the other.
    float* xpad = thread_scratch(1).floats(group * x_img);
    float* dyt = thread_scratch(2).floats(group * dyt_img);
    float* bias_part = db ? part + weight_part : nullptr;
    for (int64_t n0 = split.begin(chunk); n0 < split.end(chunk); n0 += group) {
      const int64_t images = std::min(group, split.end(chunk) - n0);
      for (int64_t m = 0; m < images; ++m)
        pad_image(uk.pad, d.pp, g.C, x + (n0 + m) * x_src_img, xpad + m * x_img);
      // The next group's x and dy, prefetched into L2 a slice per kernel
      // call, behind the FMAs (as in run_clanes).
      const int64_t next = std::min(group, split.end(chunk) - n0 - images);
      const char* next_x = reinterpret_cast<const char*>(x + (n0 + images) * x_src_img);
      const char* next_dy = reinterpret_cast<const char*>(dy + (n0 + images) * dy_img);
      const int64_t x_lines = next * x_src_img * int64_t(sizeof(float)) / 64;
      const int64_t dy_lines = next * dy_img * int64_t(sizeof(float)) / 64;
      const int64_t calls = g.G * ((g.P + row_block - 1) / row_block) * k_panels * crs_panels;
      const int64_t per_call = (x_lines + dy_lines + calls - 1) / calls;
      int64_t prefetched = 0;
      for (int64_t grp = 0; grp < g.G; ++grp)
        for (int64_t kpn = 0; kpn < k_panels; ++kpn)
          for (int64_t m = 0; m < images; ++m) {
            float* panel = dyt + ((grp * k_panels + kpn) * group + m) * PQ * kp;
            const int64_t k0 = grp * Kg + kpn * kp, valid = std::min(kp, Kg - kpn * kp);
            alignas(64) float sums[kClanesMaxPanelK];
            uk.pack(dy + (n0 + m) * dy_img + k0 * PQ, PQ, PQ, valid, panel, kp,
                    db ? sums : nullptr);
            if (db)
              for (int64_t j = 0; j < kp; ++j) bias_part[grp * ldw + kpn * kp + j] += sums[j];
          }
      for (int64_t grp = 0; grp < g.G; ++grp) {
        const float* xg = xpad + grp * g.Cg() * plane;
        float* part_g = part + grp * crs_panels * mt * ldw;
        for (int64_t p0 = 0; p0 < g.P; p0 += row_block) {
          const int64_t rows_here = std::min(row_block, g.P - p0);
          for (int64_t kpn = 0; kpn < k_panels; ++kpn) {
            const float* panel = dyt + (grp * k_panels + kpn) * group * PQ * kp + p0 * g.Q * kp;
            for (int64_t cp = 0; cp < crs_panels; ++cp) {
              const float* rows[16];
              for (int64_t r = 0; r < mt; ++r)  // taps past the end repeat a valid one; discarded
                rows[r] = xg + tap_offset[size_t(std::min(cp * mt + r, CRS - 1))] + p0 * Wh;
              uk.fn(g.Q, rows_here, images, rows, Wh, x_img, panel,
                    part_g + cp * mt * ldw + kpn * kp, ldw);
              for (int64_t l = 0; l < per_call && prefetched < x_lines + dy_lines;
                   ++l, ++prefetched)
                __builtin_prefetch(prefetched < x_lines ? next_x + prefetched * 64
                                                        : next_dy + (prefetched - x_lines) * 64,
                                   0, 2);
            }
          }
        }
      }
    }
  });
  // Row by row of the partials (one tap, Kg channels: contiguous in every
  // chunk), so each chunk is read as a stream; the strided side is the
  // write into dw.  Same sums in the same order as element by element.
  const int rt = threads_for(double(g.weight_numel()) * chunks, 5e4);
#pragma omp parallel for num_threads(rt) schedule(static) if (rt > 1)
  for (int64_t row = 0; row < g.G * CRS; ++row) {
    const int64_t grp = row / CRS, crs = row % CRS;
    const int64_t at = (grp * crs_panels * mt + crs) * ldw;
    for (int64_t k = 0; k < Kg; ++k)
      dw[(grp * Kg + k) * CRS + crs] = sum_chunk_partials(partials, chunks, part_size, at + k);
  }
  if (db)
    for (int64_t grp = 0; grp < g.G; ++grp)
      for (int64_t k = 0; k < Kg; ++k)
        db[grp * Kg + k] =
            sum_chunk_partials(partials, chunks, part_size, weight_part + grp * ldw + k);
}

}  // namespace convcore
