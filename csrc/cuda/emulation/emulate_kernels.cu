// Host emulation of the GPU kernels, for machines without a GPU (CI has nvcc
// but no device).  Each .cu file of the GPU path is included whole, so the
// kernels' own per-thread code -- the conv gathers (Op structs), the tile
// load / multiply / store steps, the split of the weight-gradient reduction,
// the pooling window and the padding source / preimage maps -- is compiled
// for the host and replayed here thread by thread between the barriers,
// then compared with the scalar reference kernels: conv within float32
// rounding, pooling and padding bitwise; the training-step ops (ReLU,
// cross-entropy, Adam, SGD) against double-precision formulas and on the
// special values (NaN, -0.0, ties, bad labels).  Not covered: the CUDA semantics
// themselves (barriers, __match_any_sync, launch sizes), which only a GPU
// run of tests/test_cuda.py checks.
//
// Build and run (CONVCORE_CUDA=ON):
//   cmake --build <build> --target convcore_cuda_emulation && <build>/convcore_cuda_emulation
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
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

// One block of conv_igemm_f32 per (z, mt, nt), all 256 threads in turn
// between the barriers, through the kernel's own step functions.
template <class Op>
void emulate(const Op& op) {
  const int64_t Z = op.Z();
  const int64_t m_tiles = (op.M() + BM - 1) / BM, n_tiles = (op.NC() + BN - 1) / BN;
  static float acc[256][4][4];
  std::vector<typename Op::Col> cols(256);
  bool valid[256];
  for (int64_t z = 0; z < Z; ++z) {
    int64_t k_begin, k_end;
    op.k_range(z, &k_begin, &k_end);
    for (int64_t mt = 0; mt < m_tiles; ++mt)
      for (int64_t nt = 0; nt < n_tiles; ++nt) {
        const int64_t m0 = mt * BM, n0 = nt * BN;
        for (int t = 0; t < 256; ++t) {
          cols[t] = igemm_col(op, t, z, n0, &valid[t]);
          for (auto& r : acc[t]) for (float& v : r) v = 0.0f;
        }
        for (int64_t k0 = k_begin; k0 < k_end; k0 += BK) {
          for (int t = 0; t < 256; ++t) igemm_load(op, t, z, m0, k0, k_end, cols[t], valid[t], As, Bs);
          for (int t = 0; t < 256; ++t) igemm_fma(t, As, Bs, acc[t]);
        }
        for (int t = 0; t < 256; ++t) igemm_store(op, t, z, m0, n0, acc[t]);
      }
  }
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

static void run(const int64_t in[4], const int64_t wt[4], int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                int64_t pl, int64_t pr, int64_t dh, int64_t dw, int64_t G, unsigned seed) {
  Conv2dGeometry g;
  try {
    g = make_conv2d_geometry(in, wt, sh, sw, pt, pb, pl, pr, dh, dw, G);
  } catch (const ArgumentError&) {
    return;
  }
  ++conv_cases;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  auto fill = [&](std::vector<float>& v, int64_t n) { v.resize(n); for (auto& e : v) e = nd(rng); };
  std::vector<float> x, w, b, dy;
  fill(x, g.input_numel()); fill(w, g.weight_numel()); fill(b, g.K); fill(dy, g.output_numel());
  const ConvArgs a = conv_args(g);
  const int64_t img_in = g.C * g.H * g.W, img_out = g.K * g.P * g.Q;
  // forward
  std::vector<float> y(g.output_numel(), NAN), yr(g.output_numel());
  emulate(FwdOp{a, x.data(), w.data(), b.data(), y.data()});
  for (int64_t n = 0; n < g.N; ++n) conv2d_fwd_f32__ref(g, x.data() + n * img_in, w.data(), b.data(), yr.data() + n * img_out);
  // grad input
  std::vector<float> dx(g.input_numel(), NAN), dxr(g.input_numel());
  emulate(DataOp{a, dy.data(), w.data(), dx.data()});
  for (int64_t n = 0; n < g.N; ++n) conv2d_bwd_data_f32__ref(g, dy.data() + n * img_out, w.data(), dxr.data() + n * img_in);
  // grad weight: split GEMM + the reduce kernel's loop
  int64_t splits = 1, chunk = 0;
  if (g.N > 0) weight_split(a, &splits, &chunk);  // N == 0: the op fills zeros, no launch
  max_splits_seen = std::max(max_splits_seen, splits);
  const int64_t wn = g.weight_numel();
  std::vector<float> part(splits * wn, NAN), dwv(wn), dwr(wn);
  if (g.N > 0) emulate(WeightOp{a, dy.data(), x.data(), part.data(), splits, chunk});
  else std::fill(part.begin(), part.end(), 0.0f);
  for (int64_t i = 0; i < wn; ++i) {
    double s = 0;
    for (int64_t j = 0; j < splits; ++j) s += double(part[j * wn + i]);
    dwv[i] = float(s);
  }
  conv2d_bwd_weight_f32__ref(g, dy.data(), x.data(), 0, g.K, dwr.data());
  // grad bias: the kernel's strided partial sums and tree
  std::vector<float> db(g.K), dbr(g.K);
  for (int64_t k = 0; k < g.K; ++k) {
    double part_[256];
    for (int t = 0; t < 256; ++t) {
      double acc = 0;
      for (int64_t e = t; e < a.N * a.PQ; e += 256) {
        const int64_t img = e / a.PQ, pq = e - img * a.PQ;
        acc += dy[(img * a.K + k) * a.PQ + pq];
      }
      part_[t] = acc;
    }
    for (int s = 128; s > 0; s >>= 1)
      for (int t = 0; t < s; ++t) part_[t] += part_[t + s];
    db[k] = float(part_[0]);
    double r = 0;
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t i = 0; i < g.P * g.Q; ++i) r += dy[(n * g.K + k) * g.P * g.Q + i];
    dbr[k] = float(r);
  }
  const struct { const char* name; std::vector<float>* got; std::vector<float>* ref; double terms; } outs[] = {
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
      std::printf("FAIL %s %s err %.3e bound %.3e (splits %ld)\n", o.name, g.name().c_str(), e, bound, long(splits));
    }
  }
}

// ---------------------------------------------------------------------------
// conv2d cases
// ---------------------------------------------------------------------------

static void conv_all() {
  // The shared problem list (batch reduced where the emulation would be slow)
  struct P { int64_t N, C, H, W, K, R, S, st, pd, dl, G; };
  const P fixed[] = {
      {8, 1, 28, 28, 6, 5, 5, 1, 0, 1, 1},   {4, 6, 12, 12, 12, 5, 5, 1, 0, 1, 1},
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
    const int64_t in[4] = {U(0, 3), G * Cg, U(1, 12), U(1, 12)}, wt[4] = {G * Kg, Cg, U(1, 4), U(1, 4)};
    run(in, wt, U(1, 3), U(1, 3), U(0, 3), U(0, 3), U(0, 3), U(0, 3), U(1, 3), U(1, 3), G, seed++);
  }
  std::printf("conv2d: %d valid cases (fwd, grad input, grad weight split up to %ld chunks, grad bias)\n",
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

static void pad_case(int64_t planes, int64_t H, int64_t W, int64_t l, int64_t r, int64_t t, int64_t b,
                     PadMode mode, std::mt19937& rng) {
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
    for (int64_t p = 0; p < planes; ++p) pad2d_fwd_f32__ref(g, x.data() + p * in, yr.data() + p * out, 1.5f);
  if (in > 0)
    for (int64_t p = 0; p < planes; ++p) pad2d_bwd_f32__ref(g, dy.data() + p * out, dxr.data() + p * in);
  for (size_t i = 0; i < y.size(); ++i)
    if (!same_bits(y[i], yr[i])) {
      ++failures;
      std::printf("FAIL pad fwd %s %ldx%ld pads %ld %ld %ld %ld at %zu\n", pad_mode_name(mode), long(H), long(W),
                  long(l), long(r), long(t), long(b), i);
      break;
    }
  for (size_t i = 0; i < dx.size(); ++i)
    if (!same_bits(dx[i], dxr[i])) {
      ++failures;
      std::printf("FAIL pad bwd %s %ldx%ld pads %ld %ld %ld %ld at %zu: %g vs %g\n", pad_mode_name(mode), long(H),
                  long(W), long(l), long(r), long(t), long(b), i, dx[i], dxr[i]);
      break;
    }
}

// The warp-per-plane backward: chunks of 32 outputs in order; lanes with the
// same target grouped; the lowest lane adds the group's values in lane order.
static void pool_bwd_emulated(int64_t planes, int64_t PQ, int64_t HW, const float* dy, const int64_t* idx,
                              float* dx, unsigned long long* first_bad) {
  std::fill(dx, dx + planes * HW, 0.0f);
  for (int64_t plane = 0; plane < planes; ++plane)
    for (int64_t base = 0; base < PQ; base += 32) {
      long long target[32];
      float v[32];
      for (int lane = 0; lane < 32; ++lane) {
        const int64_t o = base + lane;
        target[lane] = -1;
        v[lane] = 0.0f;
        if (o < PQ) {
          const int64_t i = idx[plane * PQ + o];
          v[lane] = dy[plane * PQ + o];
          if (i >= 0 && i < HW)
            target[lane] = i;
          else
            *first_bad = std::min<unsigned long long>(*first_bad, plane * PQ + o);
        }
      }
      for (int lane = 0; lane < 32; ++lane) {
        unsigned peers = 0;
        for (int l2 = 0; l2 < 32; ++l2) peers |= unsigned(target[l2] == target[lane]) << l2;
        if (target[lane] >= 0 && lane == __builtin_ffs(peers) - 1) {
          float acc = dx[plane * HW + target[lane]];
          for (unsigned m = peers; m != 0; m &= m - 1) acc += v[__builtin_ffs(m) - 1];
          dx[plane * HW + target[lane]] = acc;
        }
      }
    }
}

static void pool_case(int64_t N, int64_t C, int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                      int64_t ph, int64_t pw, int64_t dh, int64_t dw, bool ceil_mode, std::mt19937& rng) {
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
  for (int64_t pl = 0; pl < planes; ++pl) maxpool2d_fwd_f32__ref(g, x.data() + pl * HW, yr.data() + pl * PQ, idxr.data() + pl * PQ);
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
  pool_bwd_emulated(planes, PQ, HW, dy.data(), idx.data(), dx.data(), &bad);
  if (stray != (bad != ~0ull)) {
    ++failures;
    std::printf("FAIL pool bwd bad-index detection %s\n", g.name().c_str());
  }
  if (stray) return;
  for (int64_t pl = 0; pl < planes; ++pl) maxpool2d_bwd_f32__ref(PQ, HW, dy.data() + pl * PQ, idxr.data() + pl * PQ, dxr.data() + pl * HW);
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
  const PadMode modes[] = {PadMode::Constant, PadMode::Reflect, PadMode::Replicate, PadMode::Circular};
  for (int it = 0; it < 20000; ++it) {
    const int64_t H = U(0, 7), W = U(0, 7);
    pad_case(U(0, 3), H, W, U(-8, 9), U(-8, 9), U(-8, 9), U(-8, 9), modes[it % 4], rng);
  }
  for (int it = 0; it < 6000; ++it) {
    const int64_t kh = U(1, 5), kw = U(1, 5);
    pool_case(U(0, 2), U(1, 3), U(1, 40), U(1, 40), kh, kw, U(1, 4), U(1, 4), U(0, kh / 2), U(0, kw / 2),
              U(1, 3), U(1, 3), rng() % 2, rng);
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

static bool close(double got, double want, double tol) { return std::fabs(got - want) <= tol * (1 + std::fabs(want)); }

static void relu_checks() {
  expect(same_bits(relu_value(-0.0f), 0.0f), "relu(-0) is +0 (numpy.maximum)");
  expect(std::isnan(relu_value(NAN)), "relu(NaN) is NaN");
  expect(relu_value(-2.0f) == 0.0f && relu_value(3.5f) == 3.5f, "relu values");
  expect(std::isnan(relu_grad_value(NAN, -1.0f)), "NaN * 0 stays NaN");
  expect(same_bits(relu_grad_value(-3.0f, -1.0f), -0.0f), "-3 * 0 is -0");
  expect(relu_grad_value(2.0f, 0.5f) == 2.0f && relu_grad_value(2.0f, 0.0f) == 0.0f, "relu grad values");
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
    for (int64_t r = 0; r < N; ++r) cross_entropy_row(r, C, z.data(), t.data(), scale, grad.data(), loss.data(), pred.data());
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
        const double want = (std::exp(double(zr[j]) - mx) / s - (j == t[size_t(r)] ? 1.0 : 0.0)) * scale;
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
  expect(close(loss, std::log(4.0), 1e-12) && grad[0] == -0.75f && grad[1] == 0.25f, "uniform logits");
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
      const double step_size = lr / (1 - std::pow(b1, step)), bc2 = std::sqrt(1 - std::pow(b2, step));
      const AdamConstants k{float(1 - b1), float(b2), float(1 - b2), float(bc2), float(eps), float(-step_size),
                            float(wd)};
      adam_element(k, p, g, m, v);
      const double gd = g + wd * pd;
      md = b1 * md + (1 - b1) * gd;
      vd = b2 * vd + (1 - b2) * gd * gd;
      pd -= step_size * md / (std::sqrt(vd) / bc2 + eps);
    }
    expect(close(p, pd, 1e-5) && close(m, md, 1e-5) && close(v, vd, 1e-5), "adam against the formula");
  }
  for (int nesterov = 0; nesterov < 2; ++nesterov) {
    const double lr = 0.05, mom = 0.9, damp = nesterov ? 0.0 : 0.1, wd = 1e-3;
    float p = nd(rng), buf = 0;
    double pd = p, bd = 0;
    for (int step = 1; step <= 4; ++step) {
      const float g = nd(rng);
      const SgdConstants k{float(mom), float(1 - damp), float(wd), float(-lr), nesterov != 0, step == 1};
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
  relu_checks();
  cross_entropy_checks();
  optimizer_checks();
  std::printf("train ops: %d checks\n", train_cases);
  std::printf("%s: %d failures\n", failures ? "FAILED" : "ok", failures);
  return failures != 0;
}
