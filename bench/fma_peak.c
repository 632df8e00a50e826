/* FMA throughput micro-benchmark: the "measured peak" of bench/.
 *
 * Each thread runs CHAINS independent multiply-add chains on vector
 * registers (a = a * m + c, with m just below 1 so the values converge to
 * c / (1 - m) and never reach denormals).  Independent chains hide the FMA
 * latency: with 2 FMA pipes and a latency of 4 cycles (Zen 3/4, Intel since
 * Skylake) 8 chains in flight saturate a core; 12 leave headroom and still
 * fit in the 16 ymm registers with the two constants.
 *
 * Built by bench/_common.py at bench time:
 *   cc -O2 -mavx2 -mfma -fopenmp -shared -fPIC fma_peak.c
 * The AVX-512 variant is compiled through a target attribute, so the file
 * needs no -mavx512f and is only called when the CPU has it.
 *
 * Only OpenMP 4.0 features (parallel, num_threads, omp_get_wtime): PyTorch
 * bundles an older libgomp under the same soname, and whichever loads first
 * serves every library in the process.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>

#define CHAINS 12

/* One chain step for every accumulator; a macro keeps all 12 in registers
 * at -O2 without relying on the compiler to scalarise an array. */
#define STEP12(FMA)                                                          \
  a0 = FMA(a0, m, c); a1 = FMA(a1, m, c); a2 = FMA(a2, m, c);                \
  a3 = FMA(a3, m, c); a4 = FMA(a4, m, c); a5 = FMA(a5, m, c);                \
  a6 = FMA(a6, m, c); a7 = FMA(a7, m, c); a8 = FMA(a8, m, c);                \
  a9 = FMA(a9, m, c); a10 = FMA(a10, m, c); a11 = FMA(a11, m, c);

static volatile float g_sink;

__attribute__((noinline)) static float chains_avx2(int64_t iters, float seed) {
  const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
  __m256 a0 = _mm256_set1_ps(seed + 0.01f), a1 = _mm256_set1_ps(seed + 0.02f),
         a2 = _mm256_set1_ps(seed + 0.03f), a3 = _mm256_set1_ps(seed + 0.04f),
         a4 = _mm256_set1_ps(seed + 0.05f), a5 = _mm256_set1_ps(seed + 0.06f),
         a6 = _mm256_set1_ps(seed + 0.07f), a7 = _mm256_set1_ps(seed + 0.08f),
         a8 = _mm256_set1_ps(seed + 0.09f), a9 = _mm256_set1_ps(seed + 0.10f),
         a10 = _mm256_set1_ps(seed + 0.11f), a11 = _mm256_set1_ps(seed + 0.12f);
  for (int64_t i = 0; i < iters; ++i) {
    STEP12(_mm256_fmadd_ps)
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                           _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
  s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0] + out[7];
}

__attribute__((noinline, target("avx512f"))) static float chains_avx512(int64_t iters,
                                                                         float seed) {
  const __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
  __m512 a0 = _mm512_set1_ps(seed + 0.01f), a1 = _mm512_set1_ps(seed + 0.02f),
         a2 = _mm512_set1_ps(seed + 0.03f), a3 = _mm512_set1_ps(seed + 0.04f),
         a4 = _mm512_set1_ps(seed + 0.05f), a5 = _mm512_set1_ps(seed + 0.06f),
         a6 = _mm512_set1_ps(seed + 0.07f), a7 = _mm512_set1_ps(seed + 0.08f),
         a8 = _mm512_set1_ps(seed + 0.09f), a9 = _mm512_set1_ps(seed + 0.10f),
         a10 = _mm512_set1_ps(seed + 0.11f), a11 = _mm512_set1_ps(seed + 0.12f);
  for (int64_t i = 0; i < iters; ++i) {
    STEP12(_mm512_fmadd_ps)
  }
  __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                           _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
  s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
  return _mm512_reduce_add_ps(s);
}

/* Runs `iters` iterations on each of `threads` threads and returns the
 * achieved GFLOP/s over the wall time of the whole team (a descheduled
 * thread shows up as a lower figure, which is what detects a shared core).
 * width: 256 or 512 bits.  *team receives the team size actually obtained. */
double fma_gflops(int64_t iters, int threads, int width, int* team) {
  float sink = 0.0f;
  int got = 1;
  double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
  {
#pragma omp single
    got = omp_get_num_threads();
    float seed = (float)omp_get_thread_num();
    sink += width == 512 ? chains_avx512(iters, seed) : chains_avx2(iters, seed);
  }
  double t1 = omp_get_wtime();
  g_sink = sink;
  if (team) *team = got;
  double lanes = width == 512 ? 16.0 : 8.0;
  return 2.0 * lanes * CHAINS * (double)iters * got / (t1 - t0) / 1e9;
}

int has_avx2_fma(void) {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

int has_avx512f(void) { return __builtin_cpu_supports("avx512f"); }
