// Host emulation of the GPU kernels, for machines without a GPU (CI has nvcc
// but no device).  Each .cu file of the GPU path is included whole, so the
// kernels' own code -- the conv gathers (Op structs), the implicit GEMM's
// block loop over batch entries, tiles and reduction steps (igemm_block) with
// its load / multiply / store steps, the weight-gradient split and its reduce,
// the grad-bias partial sums and tree, the pooling window, the pool-backward
// lane and group steps, and the padding source / preimage maps -- is compiled
// for the host and replayed here block by block, thread by thread between the
// barriers, on the launch wrappers' own grids (igemm_grid, weight_plan,
// bias_blocks, pool_bwd_blocks; some conv cases also on a smaller grid, so the
// grid-stride loops stride), then compared with the scalar reference
// kernels: conv within float32 rounding, pooling and padding bitwise; the
// training-step ops (ReLU, cross-entropy, Adam, SGD) against double-precision
// formulas and on the special values (NaN, -0.0, ties, bad labels).  The
// launch plans are also checked against the launch limits at sizes too large
// to replay.  Emulated rather than the kernels' own: the grouping of
// __match_any_sync (lanes with equal targets) and atomicMin.  Not covered:
// the CUDA semantics themselves (barriers, warp intrinsics, shared memory),
// which only a GPU run of tests/test_cuda.py (bench/gpu_check.sh) checks.
//
// Build and run (CONVCORE_CUDA=ON):
//   cmake --build <build> --target convcore_cuda_emulation && <build>/convcore_cuda_emulation
// Check that it catches bugs in the kernels' code (six deliberate mutants):
//   bash csrc/cuda/emulation/mutants.sh <build>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/conv2d.cu"
#include "cuda/maxpool2d.cu"
#include "cuda/pad2d.cu"
#include "cuda/train_ops.cu"
#include "kernels/ref/ref_kernels.h"

using namespace convcore;
using namespace convcore::cuda;

static int failures = 0;

// ---------------------------------------------------------------------------
// conv2d
// ---------------------------------------------------------------------------
static ATile As;
static BTile Bs;

// igemm_block's threads on the host: all kGemmThreads of the block, in turn,
// between the barriers.  (__host__ __device__ only because igemm_block is;
// it never runs on a GPU.)
template <class Op>
struct AllThreads {
  IgemmThread<Op> s[kGemmThreads];
  template <class F>
  __host__ __device__ void each(F&& f) {
    for (int t = 0; t < kGemmThreads; ++t) f(t, s[t]);
  }
  __host__ __device__ void sync() {}
};

static int launch_checks = 0;

static void expect_launch(bool ok, const char* what, const std::string& where) {
  ++launch_checks;
  if (!ok) {
    ++failures;
    std::printf("FAIL launch plan: %s (%s)\n", what, where.c_str());
  }
}

// Every block of conv_igemm_f32's grid, through the kernel's own block loop
// (igemm_block).  grid: the launch wrapper's plan (igemm_grid), or a smaller
// grid to exercise the grid-stride loops.
template <class Op>
void emulate(const Op& op, Grid3 grid) {
  static AllThreads<Op> threads;
  for (int64_t bz = 0; bz < grid.z; ++bz)
    for (int64_t by = 0; by < grid.y; ++by)
      for (int64_t bx = 0; bx < grid.x; ++bx)
        igemm_block(op, threads, As, Bs, bx, by, bz, grid.x, grid.y, grid.z);
}

// The launch wrapper's grid for op, checked against the launch limits and
// the tile counts.
template <class Op>
Grid3 checked_grid(const Op& op, const std::string& where) {
  const Grid3 g = igemm_grid(op);
  const int64_t n_tiles = detail::ceil_div(op.NC(), BN), m_tiles = detail::ceil_div(op.M(), BM);
  expect_launch(g.x >= 1 && g.x <= INT_MAX && g.y >= 1 && g.y <= 65535 && g.z >= 1 && g.z <= 65535,
                "igemm grid within the launch limits", where);
  expect_launch(g.x == std::min<int64_t>(n_tiles, INT_MAX) &&
                    g.y == std::min<int64_t>(m_tiles, 65535) &&
                    g.z == std::min<int64_t>(op.Z(), 65535),
                "igemm grid: one block per tile up to the limits", where);
  return g;
}

static double max_err(const std::vector<float>& a, const std::vector<float>& b, double* scale) {
  double e = 0, s = 1;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(double(a[i]) - b[i]);
    e = std::isnan(d) ? INFINITY : std::max(e, d);
    s = std::max(s, std::fabs(double(b[i])));
  }
  *scale = s;
  return e;
}

static int conv_cases = 0;
static int64_t max_splits_seen = 0;

static void run(const int64_t in[4], const int64_t wt[4], int64_t sh, int64_t sw, int64_t pt,
                int64_t pb, int64_t pl, int64_t pr, int64_t dh, int64_t dw, int64_t G,
                unsigned seed) {
  Conv2dGeometry g;
  try {
    g = make_conv2d_geometry(in, wt, sh, sw, pt, pb, pl, pr, dh, dw, G);
  } catch (const ArgumentError&) {
    return;
  }
  ++conv_cases;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  auto fill = [&](std::vector<float>& v, int64_t n) {
    v.resize(n);
    for (auto& e : v) e = nd(rng);
  };
  std::vector<float> x, w, b, dy;
  fill(x, g.input_numel());
  fill(w, g.weight_numel());
  fill(b, g.K);
  fill(dy, g.output_numel());
  const ConvArgs a = conv_args(g);
  const int64_t img_in = g.C * g.H * g.W, img_out = g.K * g.P * g.Q;
  const std::string where = g.name();
  // Every 7th case also on a small grid, so the blocks stride over the tiles.
  const bool strided = seed % 7 == 0;
  const Grid3 small{1 + int64_t(seed % 2), 1, 1 + int64_t(seed % 3 == 0)};
  // forward
  std::vector<float> y(g.output_numel(), NAN), yr(g.output_numel());
  const FwdOp fwd{a, x.data(), w.data(), b.data(), y.data()};
  if (g.N > 0) emulate(fwd, checked_grid(fwd, where));  // N == 0: no launch
  for (int64_t n = 0; n < g.N; ++n)
    conv2d_fwd_f32__ref(g, x.data() + n * img_in, w.data(), b.data(), yr.data() + n * img_out);
  // grad input
  std::vector<float> dx(g.input_numel(), NAN), dxr(g.input_numel());
  const DataOp data_op{a, dy.data(), w.data(), dx.data()};
  if (g.N > 0) emulate(data_op, strided ? small : checked_grid(data_op, where));
  for (int64_t n = 0; n < g.N; ++n)
    conv2d_bwd_data_f32__ref(g, dy.data() + n * img_out, w.data(), dxr.data() + n * img_in);
  // grad weight: the launch wrapper's plan, the split GEMM, the reduce kernel's
  // grid-stride loop over its own grid
  const int64_t wn = g.weight_numel();
  std::vector<float> dwv(wn, NAN), dwr(wn);
  int64_t splits = 1;
  if (g.N == 0) {
    std::fill(dwv.begin(), dwv.end(), 0.0f);  // the op fills zeros, no launch
  } else {
    const WeightPlan plan = weight_plan(a);
    splits = plan.splits;
    const int64_t total = a.N * a.PQ;
    expect_launch(plan.splits >= 1 && plan.chunk > 0 && plan.chunk % BK == 0,
                  "weight split: chunks of BK", where);
    expect_launch(plan.splits * plan.chunk >= total && (plan.splits - 1) * plan.chunk < total,
                  "weight split: the chunks cover the reduction, none is empty", where);
    expect_launch(plan.splits == 1
                      ? plan.scratch_bytes == 0 && plan.reduce_blocks == 0
                      : plan.scratch_bytes == plan.splits * wn * int64_t(sizeof(float)) &&
                            plan.splits * wn <= kMaxWorkspaceFloats,
                  "weight split: workspace of splits x weight floats, within the cap", where);
    if (plan.splits == 1) {
      const WeightOp op{a, dy.data(), x.data(), dwv.data(), 1, plan.chunk};
      emulate(op, strided ? small : checked_grid(op, where));
    } else {
      std::vector<float> part(size_t(plan.scratch_bytes) / sizeof(float), NAN);
      const WeightOp op{a, dy.data(), x.data(), part.data(), plan.splits, plan.chunk};
      emulate(op, strided ? small : checked_grid(op, where));
      const int64_t threads = detail::kThreads, blocks = plan.reduce_blocks;
      expect_launch(blocks >= 1 && blocks <= detail::kMaxBlocks &&
                        (blocks * threads >= wn || blocks == detail::kMaxBlocks),
                    "weight reduce grid", where);
      for (int64_t blk = 0; blk < blocks; ++blk)
        for (int64_t t = 0; t < threads; ++t)
          for (int64_t i = blk * threads + t; i < wn; i += blocks * threads)
            dwv[i] = weight_reduce_one(wn, plan.splits, part.data(), i);
    }
  }
  max_splits_seen = std::max(max_splits_seen, splits);
  conv2d_bwd_weight_f32__ref(g, dy.data(), x.data(), 0, g.K, dwr.data());
  // grad bias: the kernel's blocks over the channels, each through its
  // strided partial sums and tree (every thread in turn between barriers)
  std::vector<float> db(g.K, NAN), dbr(g.K);
  const int64_t bias_grid = bias_blocks(g.K);
  expect_launch(g.K == 0 || (bias_grid >= 1 && bias_grid <= detail::kMaxBlocks), "bias grid",
                where);
  for (int64_t blk = 0; blk < bias_grid; ++blk)
    for (int64_t k = blk; k < g.K; k += bias_grid) {
      double part_[kBiasThreads];
      for (int t = 0; t < kBiasThreads; ++t) part_[t] = bias_partial(a, dy.data(), k, t);
      for (int step = 0, s; (s = bias_tree_stride(step)) > 0; ++step)
        for (int t = 0; t < kBiasThreads; ++t) bias_tree_step(part_, t, s);
      db[k] = float(part_[0]);
    }
  for (int64_t k = 0; k < g.K; ++k) {
    double r = 0;
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t i = 0; i < g.P * g.Q; ++i) r += dy[(n * g.K + k) * g.P * g.Q + i];
    dbr[k] = float(r);
  }
  const struct {
    const char* name;
    std::vector<float>* got;
    std::vector<float>* ref;
    double terms;
  } outs[] = {
      {"fwd", &y, &yr, double(g.Cg() * g.R * g.S)},
      {"bwd_data", &dx, &dxr, double(g.Kg() * g.R * g.S)},
      {"bwd_weight", &dwv, &dwr, double(g.N * g.P * g.Q)},
      {"bwd_bias", &db, &dbr, double(g.N * g.P * g.Q)},
  };
  for (const auto& o : outs) {
    double scale;
    const double e = max_err(*o.got, *o.ref, &scale);
    const double bound = 1e-6 * std::sqrt(o.terms + 1) * scale * 10;
    if (!(e <= bound)) {
      ++failures;
      std::printf("FAIL %s %s err %.3e bound %.3e (splits %ld)\n", o.name, g.name().c_str(), e,
                  bound, long(splits));
    }
  }
}

// ---------------------------------------------------------------------------
// conv2d cases
// ---------------------------------------------------------------------------

static void conv_all() {
  // The shared problem list (batch reduced where the emulation would be slow)
  struct P {
    int64_t N, C, H, W, K, R, S, st, pd, dl, G;
  };
  const P fixed[] = {
      {8, 1, 28, 28, 6, 5, 5, 1, 0, 1, 1},    {4, 6, 12, 12, 12, 5, 5, 1, 0, 1, 1},
      {100, 6, 12, 12, 12, 5, 5, 1, 0, 1, 1}, {4, 1, 28, 28, 32, 3, 3, 1, 1, 1, 1},
      {2, 32, 28, 28, 32, 3, 3, 1, 1, 1, 1},  {3, 32, 14, 14, 64, 3, 3, 1, 1, 1, 1},
      {2, 64, 14, 14, 64, 3, 3, 1, 1, 1, 1},  {1, 64, 20, 20, 128, 3, 3, 2, 1, 1, 1},
      {1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1},      {1, 1, 5, 5, 1, 5, 5, 1, 0, 1, 1},
      {1, 1, 3, 3, 2, 5, 5, 1, 1, 1, 1},      {2, 3, 7, 9, 5, 3, 3, 4, 0, 1, 1},
      {1, 3, 5, 6, 4, 3, 3, 1, 4, 1, 1},      {2, 4, 9, 9, 6, 3, 3, 1, 2, 2, 1},
      {2, 6, 8, 7, 9, 3, 3, 1, 1, 1, 3},      {2, 8, 6, 6, 8, 3, 3, 1, 1, 1, 8},
      {1, 9, 4, 3, 17, 1, 1, 1, 0, 1, 1},     {5, 2, 3, 20, 3, 2, 2, 1, 0, 1, 1},
      {1, 16, 2, 2, 16, 2, 2, 2, 0, 1, 1},    {1, 70, 5, 5, 130, 1, 1, 1, 0, 1, 1},
      {2, 130, 4, 4, 70, 3, 3, 1, 1, 1, 1},   {1, 4, 9, 6, 4, 4, 3, 1, 1, 3, 2},
  };
  unsigned seed = 1;
  for (const P& p : fixed) {
    const int64_t in[4] = {p.N, p.C, p.H, p.W}, wt[4] = {p.K, p.C / p.G, p.R, p.S};
    run(in, wt, p.st, p.st, p.pd, p.pd, p.pd, p.pd, p.dl, p.dl, p.G, seed++);
  }
  // 'same' with even kernels: asymmetric padding
  {
    const int64_t in[4] = {2, 3, 7, 8}, wt[4] = {4, 3, 4, 2};
    run(in, wt, 1, 1, 1, 2, 0, 1, 1, 1, 1, seed++);
    const int64_t in2[4] = {1, 4, 9, 6}, wt2[4] = {4, 2, 4, 3};
    run(in2, wt2, 1, 1, 1, 2, 3, 3, 1, 3, 2, seed++);
  }
  // random geometries
  std::mt19937 rng(12345);
  auto U = [&](int lo, int hi) { return int64_t(std::uniform_int_distribution<int>(lo, hi)(rng)); };
  for (int it = 0; it < 1500; ++it) {
    const int64_t G = U(1, 3), Cg = U(1, 4), Kg = it % 50 == 0 ? U(60, 70) : U(1, 5);
    const int64_t in[4] = {U(0, 3), G * Cg, U(1, 12), U(1, 12)},
                  wt[4] = {G * Kg, Cg, U(1, 4), U(1, 4)};
    run(in, wt, U(1, 3), U(1, 3), U(0, 3), U(0, 3), U(0, 3), U(0, 3), U(1, 3), U(1, 3), G, seed++);
  }
  std::printf(
      "conv2d: %d valid cases (fwd, grad input, grad weight split up to %ld chunks, grad bias)\n",
      conv_cases, long(max_splits_seen));
}

// ---------------------------------------------------------------------------
// pad and max_pool2d
// ---------------------------------------------------------------------------

static int pad_cases = 0, pool_cases = 0;

static bool same_bits(float a, float b) {
  uint32_t x, y;
  std::memcpy(&x, &a, 4);
  std::memcpy(&y, &b, 4);
  return x == y || (std::isnan(a) && std::isnan(b));
}

static std::vector<float> data(int64_t n, std::mt19937& rng, bool special) {
  std::vector<float> v(n);
  std::normal_distribution<float> nd;
  const float pool[] = {0.0f, -0.0f, 1.0f, -1.0f, 2.0f, NAN, INFINITY, -INFINITY};
  for (auto& e : v) e = special ? pool[rng() % 8] : nd(rng);
  return v;
}

static void pad_case(int64_t planes, int64_t H, int64_t W, int64_t l, int64_t r, int64_t t,
                     int64_t b, PadMode mode, std::mt19937& rng) {
  Pad2dGeometry g;
  try {
    g = make_pad2d_geometry(planes, H, W, l, r, t, b, mode);
  } catch (const ArgumentError&) {
    return;
  }
  ++pad_cases;
  const PadArgs a = pad_args(g);
  const int64_t in = g.H * g.W, out = g.OH * g.OW;
  auto x = data(planes * in, rng, true);
  auto dy = data(planes * out, rng, false);
  std::vector<float> y(planes * out), yr(planes * out), dx(planes * in), dxr(planes * in);
  for (int64_t i = 0; i < planes * out; ++i) y[i] = pad2d_fwd_one(a, x.data(), 1.5f, i);
  for (int64_t i = 0; i < planes * in; ++i) dx[i] = pad2d_bwd_one(a, dy.data(), i);
  if (out > 0)
    for (int64_t p = 0; p < planes; ++p)
      pad2d_fwd_f32__ref(g, x.data() + p * in, yr.data() + p * out, 1.5f);
  if (in > 0)
    for (int64_t p = 0; p < planes; ++p)
      pad2d_bwd_f32__ref(g, dy.data() + p * out, dxr.data() + p * in);
  for (size_t i = 0; i < y.size(); ++i)
    if (!same_bits(y[i], yr[i])) {
      ++failures;
      std::printf("FAIL pad fwd %s %ldx%ld pads %ld %ld %ld %ld at %zu\n", pad_mode_name(mode),
                  long(H), long(W), long(l), long(r), long(t), long(b), i);
      break;
    }
  for (size_t i = 0; i < dx.size(); ++i)
    if (!same_bits(dx[i], dxr[i])) {
      ++failures;
      std::printf("FAIL pad bwd %s %ldx%ld pads %ld %ld %ld %ld at %zu: %g vs %g\n",
                  pad_mode_name(mode), long(H), long(W), long(l), long(r), long(t), long(b), i,
                  dx[i], dxr[i]);
      break;
    }
}

// maxpool2d_backward: the launch plan (grid, bad-index flag) and every warp
// of every block through the kernel's own lane steps; __match_any_sync is the
// one part emulated here (the lanes whose targets are equal).
static void pool_bwd_emulated(int64_t planes, int64_t PQ, int64_t HW, const float* dy,
                              const int64_t* idx, float* dx, unsigned long long* first_bad,
                              const std::string& where) {
  std::fill(dx, dx + planes * HW, 0.0f);
  std::memset(first_bad, kNoBadIndexByte, sizeof *first_bad);
  expect_launch(*first_bad == kNoBadIndex, "the bad-index memset sets the no-bad-index value",
                where);
  const int64_t blocks = pool_bwd_blocks(planes);
  expect_launch(blocks >= 1 && blocks <= detail::kMaxBlocks &&
                    (blocks * kWarpsPerBlock >= planes || blocks == detail::kMaxBlocks),
                "pool backward grid: a warp per plane up to the block limit", where);
  float vals[32];
  long long target[32];
  for (int64_t blk = 0; blk < blocks; ++blk)
    for (int warp = 0; warp < kWarpsPerBlock; ++warp)
      for (int64_t plane = blk * kWarpsPerBlock + warp; plane < planes;
           plane += blocks * kWarpsPerBlock) {
        for (int64_t base = 0; base < PQ; base += 32) {
          for (int lane = 0; lane < 32; ++lane) {
            const int64_t bad = pool_bwd_lane(PQ, HW, dy + plane * PQ, idx + plane * PQ, base, lane,
                                              &target[lane], &vals[lane]);
            if (bad >= 0) *first_bad = std::min<unsigned long long>(*first_bad, plane * PQ + bad);
          }
          for (int lane = 0; lane < 32; ++lane) {
            unsigned peers = 0;
            for (int l2 = 0; l2 < 32; ++l2) peers |= unsigned(target[l2] == target[lane]) << l2;
            pool_bwd_group_add(dx + plane * HW, target[lane], peers, lane, vals);
          }
        }
      }
}

// Launch plans at sizes too large to emulate: the grids stay within the
// launch limits and the weight workspace within its cap.
static void launch_plan_limits() {
  struct P {
    int64_t N, C, H, W, K, R, S, G;
  };
  const P big[] = {
      {100000, 1, 28, 28, 6, 5, 5, 1},        {1, 4096, 64, 64, 4096, 3, 3, 1},
      {70000, 64, 1, 1, 70000, 1, 1, 1},      {256, 65536 * 2, 2, 2, 65536 * 2, 1, 1, 65536 * 2},
      {1 << 20, 3, 32, 32, 64, 3, 3, 1},      {1, 1, 1, 1, 1, 1, 1, 1},
      {2, 1, 1, 1, int64_t(1) << 23, 1, 1, 1}};
  for (const P& p : big) {
    const int64_t in[4] = {p.N, p.C, p.H, p.W}, wt[4] = {p.K, p.C / p.G, p.R, p.S};
    const Conv2dGeometry g = make_conv2d_geometry(in, wt, 1, 1, 0, 0, 0, 0, 1, 1, p.G);
    const ConvArgs a = conv_args(g);
    const std::string where = g.name();
    checked_grid(FwdOp{a, nullptr, nullptr, nullptr, nullptr}, where);
    checked_grid(DataOp{a, nullptr, nullptr, nullptr}, where);
    const WeightPlan plan = weight_plan(a);
    const int64_t wn = g.weight_numel();
    expect_launch(
        plan.splits * plan.chunk >= a.N * a.PQ && (plan.splits - 1) * plan.chunk < a.N * a.PQ,
        "weight split covers the reduction", where);
    expect_launch(
        plan.splits == 1 || plan.scratch_bytes <= kMaxWorkspaceFloats * int64_t(sizeof(float)),
        "weight workspace within 256 MiB", where);
    expect_launch(plan.splits == 1 || plan.reduce_blocks == detail::blocks_for(wn),
                  "weight reduce grid", where);
    checked_grid(WeightOp{a, nullptr, nullptr, nullptr, plan.splits, plan.chunk}, where);
    expect_launch(bias_blocks(g.K) >= 1 && bias_blocks(g.K) <= detail::kMaxBlocks, "bias grid",
                  where);
    const int64_t planes = g.N * g.C;
    expect_launch(pool_bwd_blocks(planes) >= 1 && pool_bwd_blocks(planes) <= detail::kMaxBlocks,
                  "pool backward grid", where);
  }
  std::printf("launch plans: %d checks\n", launch_checks);
}

static void pool_case(int64_t N, int64_t C, int64_t H, int64_t W, int64_t kh, int64_t kw,
                      int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                      bool ceil_mode, std::mt19937& rng) {
  const int64_t shape[4] = {N, C, H, W};
  Pool2dGeometry g;
  try {
    g = make_pool2d_geometry(shape, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode);
  } catch (const ArgumentError&) {
    return;
  }
  ++pool_cases;
  const PoolArgs a{N * C, H, W, g.P, g.Q, kh, kw, sh, sw, ph, pw, dh, dw};
  const int64_t HW = H * W, PQ = g.P * g.Q, planes = N * C;
  auto x = data(planes * HW, rng, rng() % 2);
  std::vector<float> y(planes * PQ), yr(planes * PQ);
  std::vector<int64_t> idx(planes * PQ), idxr(planes * PQ);
  for (int64_t pl = 0; pl < planes; ++pl)
    for (int64_t p = 0; p < g.P; ++p)
      for (int64_t q = 0; q < g.Q; ++q) {
        const int64_t o = (pl * g.P + p) * g.Q + q;
        maxpool2d_window(a, x.data() + pl * HW, p, q, &y[o], &idx[o]);
      }
  for (int64_t pl = 0; pl < planes; ++pl)
    maxpool2d_fwd_f32__ref(g, x.data() + pl * HW, yr.data() + pl * PQ, idxr.data() + pl * PQ);
  for (size_t i = 0; i < y.size(); ++i)
    if (!same_bits(y[i], yr[i]) || idx[i] != idxr[i]) {
      ++failures;
      std::printf("FAIL pool fwd %s at %zu\n", g.name().c_str(), i);
      break;
    }
  bool stray = false;
  for (int64_t v : idxr) stray |= v < 0 || v >= HW;
  auto dy = data(planes * PQ, rng, false);
  std::vector<float> dx(planes * HW), dxr(planes * HW);
  unsigned long long bad = ~0ull;
  pool_bwd_emulated(planes, PQ, HW, dy.data(), idx.data(), dx.data(), &bad, g.name());
  if (stray != (bad != ~0ull)) {
    ++failures;
    std::printf("FAIL pool bwd bad-index detection %s\n", g.name().c_str());
  }
  if (stray) return;
  for (int64_t pl = 0; pl < planes; ++pl)
    maxpool2d_bwd_f32__ref(PQ, HW, dy.data() + pl * PQ, idxr.data() + pl * PQ,
                           dxr.data() + pl * HW);
  for (size_t i = 0; i < dx.size(); ++i)
    if (!same_bits(dx[i], dxr[i])) {
      ++failures;
      std::printf("FAIL pool bwd %s at %zu\n", g.name().c_str(), i);
      break;
    }
}

static void pool_pad_all() {
  std::mt19937 rng(7);
  auto U = [&](int lo, int hi) { return int64_t(std::uniform_int_distribution<int>(lo, hi)(rng)); };
  const PadMode modes[] = {PadMode::Constant, PadMode::Reflect, PadMode::Replicate,
                           PadMode::Circular};
  for (int it = 0; it < 20000; ++it) {
    const int64_t H = U(0, 7), W = U(0, 7);
    pad_case(U(0, 3), H, W, U(-8, 9), U(-8, 9), U(-8, 9), U(-8, 9), modes[it % 4], rng);
  }
  for (int it = 0; it < 6000; ++it) {
    const int64_t kh = U(1, 5), kw = U(1, 5);
    pool_case(U(0, 2), U(1, 3), U(1, 40), U(1, 40), kh, kw, U(1, 4), U(1, 4), U(0, kh / 2),
              U(0, kw / 2), U(1, 3), U(1, 3), rng() % 2, rng);
  }
  // the model layers
  pool_case(10, 6, 24, 24, 2, 2, 2, 2, 0, 0, 1, 1, false, rng);
  pool_case(10, 32, 28, 28, 2, 2, 2, 2, 0, 0, 1, 1, false, rng);
  pool_case(2, 3, 30, 30, 3, 3, 1, 1, 1, 1, 1, 1, false, rng);
  std::printf("pad: %d valid cases; max_pool2d: %d valid cases\n", pad_cases, pool_cases);
}

// ---------------------------------------------------------------------------
// training-step ops (train_ops.cu)
// ---------------------------------------------------------------------------

static int train_cases = 0;

static void expect(bool ok, const char* what) {
  ++train_cases;
  if (!ok) {
    std::printf("FAIL train_ops: %s\n", what);
    ++failures;
  }
}

static bool close(double got, double want, double tol) {
  return std::fabs(got - want) <= tol * (1 + std::fabs(want));
}

static void relu_checks() {
  expect(same_bits(relu_value(-0.0f), 0.0f), "relu(-0) is +0 (numpy.maximum)");
  expect(std::isnan(relu_value(NAN)), "relu(NaN) is NaN");
  expect(relu_value(-2.0f) == 0.0f && relu_value(3.5f) == 3.5f, "relu values");
  expect(std::isnan(relu_grad_value(NAN, -1.0f)), "NaN * 0 stays NaN");
  expect(same_bits(relu_grad_value(-3.0f, -1.0f), -0.0f), "-3 * 0 is -0");
  expect(relu_grad_value(2.0f, 0.5f) == 2.0f && relu_grad_value(2.0f, 0.0f) == 0.0f,
         "relu grad values");
}

static void cross_entropy_checks() {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (int64_t C : {1, 2, 10, 33}) {
    const int64_t N = 17;
    std::vector<float> z(static_cast<size_t>(N * C)), grad(static_cast<size_t>(N * C));
    std::vector<int64_t> t(static_cast<size_t>(N)), pred(static_cast<size_t>(N));
    std::vector<double> loss(static_cast<size_t>(N));
    for (float& v : z) v = nd(rng);
    for (int64_t r = 0; r < N; ++r) t[size_t(r)] = int64_t(rng() % uint32_t(C));
    if (C > 2) z[size_t(C + 2)] = z[size_t(C)];  // row 1: a tie decided by the first index
    const float scale = 1.0f / float(N);
    for (int64_t r = 0; r < N; ++r)
      cross_entropy_row(r, C, z.data(), t.data(), scale, grad.data(), loss.data(), pred.data());
    for (int64_t r = 0; r < N; ++r) {
      const float* zr = &z[size_t(r * C)];
      double mx = zr[0], s = 0;
      int64_t best = 0;
      for (int64_t j = 1; j < C; ++j)
        if (zr[j] > zr[best]) best = j;
      mx = zr[best];
      for (int64_t j = 0; j < C; ++j) s += std::exp(double(zr[j]) - mx);
      const double want_loss = std::log(s) - (double(zr[t[size_t(r)]]) - mx);
      expect(close(loss[size_t(r)], want_loss, 1e-6), "cross-entropy loss");
      expect(pred[size_t(r)] == best, "cross-entropy prediction (first maximum)");
      for (int64_t j = 0; j < C; ++j) {
        const double want =
            (std::exp(double(zr[j]) - mx) / s - (j == t[size_t(r)] ? 1.0 : 0.0)) * scale;
        expect(std::fabs(grad[size_t(r * C + j)] - want) <= 1e-6 * scale, "cross-entropy gradient");
      }
    }
  }
  // NaN logits: the first NaN is the prediction; a bad label gives NaN, no read.
  float z[4] = {1.0f, NAN, 5.0f, NAN};
  int64_t t = 0, pred = -1, bad = 4;
  double loss = 0;
  float grad[4];
  cross_entropy_row(0, 4, z, &t, 1.0f, grad, &loss, &pred);
  expect(pred == 1 && std::isnan(loss), "cross-entropy with NaN logits");
  float ok[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  cross_entropy_row(0, 4, ok, &bad, 1.0f, grad, &loss, &pred);
  expect(std::isnan(loss) && std::isnan(grad[3]), "cross-entropy with a label out of range");
  cross_entropy_row(0, 4, ok, &t, 1.0f, grad, &loss, &pred);
  expect(close(loss, std::log(4.0), 1e-12) && grad[0] == -0.75f && grad[1] == 0.25f,
         "uniform logits");
}

static void optimizer_checks() {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (double wd : {0.0, 0.01}) {
    // Adam, several steps, against the formula in double precision.
    const double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8;
    float p = nd(rng), m = 0, v = 0;
    double pd = p, md = 0, vd = 0;
    for (int step = 1; step <= 5; ++step) {
      const float g = nd(rng);
      const double step_size = lr / (1 - std::pow(b1, step)),
                   bc2 = std::sqrt(1 - std::pow(b2, step));
      const AdamConstants k{float(1 - b1), float(b2),         float(1 - b2), float(bc2),
                            float(eps),    float(-step_size), float(wd)};
      adam_element(k, p, g, m, v);
      const double gd = g + wd * pd;
      md = b1 * md + (1 - b1) * gd;
      vd = b2 * vd + (1 - b2) * gd * gd;
      pd -= step_size * md / (std::sqrt(vd) / bc2 + eps);
    }
    expect(close(p, pd, 1e-5) && close(m, md, 1e-5) && close(v, vd, 1e-5),
           "adam against the formula");
  }
  for (int nesterov = 0; nesterov < 2; ++nesterov) {
    const double lr = 0.05, mom = 0.9, damp = nesterov ? 0.0 : 0.1, wd = 1e-3;
    float p = nd(rng), buf = 0;
    double pd = p, bd = 0;
    for (int step = 1; step <= 4; ++step) {
      const float g = nd(rng);
      const SgdConstants k{float(mom), float(1 - damp), float(wd),
                           float(-lr), nesterov != 0,   step == 1};
      sgd_element(k, p, g, &buf);
      const double gd = g + wd * pd;
      bd = step == 1 ? gd : mom * bd + (1 - damp) * gd;
      pd -= lr * (nesterov ? gd + mom * bd : bd);
    }
    expect(close(p, pd, 1e-5) && close(buf, bd, 1e-5), "sgd with momentum against the formula");
  }
  float p = 1.0f;
  sgd_element(SgdConstants{0.0f, 1.0f, 0.0f, -0.5f, false, false}, p, 0.25f, nullptr);
  expect(p == 0.875f, "plain sgd");
}

// The compute-capability check of require_device (runtime.cpp).
static void arch_checks() {
  const std::string ours = "80-real,90-real,90-virtual";
  using detail::missing_kernel_image;
  expect(missing_kernel_image(ours, 8, 0).empty(), "sm_80 runs 80-real");
  expect(missing_kernel_image(ours, 8, 6).empty() && missing_kernel_image(ours, 8, 9).empty(),
         "sm_86 and sm_89 run 80-real");
  expect(missing_kernel_image(ours, 9, 0).empty(), "sm_90 runs 90-real");
  expect(missing_kernel_image(ours, 10, 0).empty() && missing_kernel_image(ours, 12, 0).empty(),
         "newer GPUs run the PTX of 90-virtual");
  expect(!missing_kernel_image(ours, 7, 0).empty() && !missing_kernel_image(ours, 7, 5).empty(),
         "V100 and T4 are refused");
  expect(missing_kernel_image(ours, 7, 5).find("CMAKE_CUDA_ARCHITECTURES=75") != std::string::npos,
         "the refusal says how to rebuild");
  expect(!missing_kernel_image("80-real,90-real", 10, 0).empty(), "no PTX: a newer GPU is refused");
  expect(missing_kernel_image("70", 7, 5).empty(), "a plain entry is machine code and PTX");
  expect(missing_kernel_image("native", 6, 1).empty() && missing_kernel_image("", 6, 1).empty(),
         "unknown spellings are taken on trust");
}

int main() {
  arch_checks();
  conv_all();
  pool_pad_all();
  launch_plan_limits();
  relu_checks();
  cross_entropy_checks();
  optimizer_checks();
  std::printf("train ops: %d checks\n", train_cases);
  std::printf("%s: %d failures\n", failures ? "FAILED" : "ok", failures);
  return failures != 0;
}
