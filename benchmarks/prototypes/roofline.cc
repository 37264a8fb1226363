// What this CPU can stream, and what a hand-written, fused update of the vital signs' state
// costs, for the 784-512-512-10 MLP (669,706 parameters). Not library code.
//
// Run: g++ -O3 -march=native -fopenmp -std=c++17 benchmarks/prototypes/roofline.cc -o /tmp/roofline &&
//      OMP_NUM_THREADS=2 /tmp/roofline
//
// 1. STREAM-style triad c = a + 0.5 b over float32 arrays of 669,706 entries (8 MB touched per
//    pass: the cache-resident case) and 3,200,000 entries (38 MB, larger than the 32 MB L3).
// 2. One fused, vectorised pass of the vital signs' update as emrakul.vitals.update keeps it:
//    read the gradient g and weight w; read and write the EMAs of g, g^2 and of sign flips
//    (float32), the last sign (int8) and a saturating dormancy age (uint16): 38 bytes per
//    parameter, ~25 MB per update. The numbers are arbitrary; only the traffic matters.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

using Clock = std::chrono::steady_clock;

static double Seconds(Clock::time_point t0, int reps) {
  return std::chrono::duration<double>(Clock::now() - t0).count() / reps;
}

int main() {
  for (long n : {669706L, 3200000L}) {
    std::vector<float> a(n, 1.f), b(n, 2.f), c(n, 0.f);
    const float* __restrict pa = a.data();
    const float* __restrict pb = b.data();
    float* __restrict pc = c.data();
    for (int rep = 0; rep < 3; ++rep) {
      const int reps = 200;
      auto t0 = Clock::now();
      for (int it = 0; it < reps; ++it) {
#pragma omp parallel for simd schedule(static)
        for (long i = 0; i < n; ++i) pc[i] = pa[i] + 0.5f * pb[i];
      }
      const double s = Seconds(t0, reps);
      std::printf("triad, %ld floats: %.1f us, %.1f GB/s\n", n, s * 1e6, 12.0 * n / s / 1e9);
    }
  }
  const long n = 669706;
  std::vector<float> g(n), w(n), m(n), v(n), f(n);
  std::vector<int8_t> s(n);
  std::vector<uint16_t> a(n);
  for (long i = 0; i < n; ++i) {
    g[i] = std::sin(i * 0.1f) * 1e-3f;
    w[i] = std::cos(i * 0.3f) * 0.05f;
  }
  const float* __restrict G = g.data();
  const float* __restrict W = w.data();
  float* __restrict M = m.data();
  float* __restrict V = v.data();
  float* __restrict F = f.data();
  int8_t* __restrict S = s.data();
  uint16_t* __restrict A = a.data();
  const float d = 0.99f, e = 0.01f;
  for (int rep = 0; rep < 5; ++rep) {
    const int reps = 200;
    auto t0 = Clock::now();
    for (int it = 0; it < reps; ++it) {
#pragma omp parallel for simd schedule(static)
      for (long i = 0; i < n; ++i) {
        const float gi = G[i];
        const float sg = (gi > 0.f) ? 1.f : ((gi < 0.f) ? -1.f : 0.f);
        const float prev = static_cast<float>(S[i]);
        M[i] = d * M[i] + e * gi;
        V[i] = d * V[i] + e * gi * gi;
        F[i] = d * F[i] + ((sg * prev < 0.f) ? e : 0.f);
        S[i] = static_cast<int8_t>(sg);
        const bool live = (std::fabs(W[i]) > 1e-8f) & (std::fabs(gi) > 1e-8f);
        const uint16_t ai = A[i];
        A[i] = live ? uint16_t{0} : static_cast<uint16_t>(ai + (ai != 65535));
      }
    }
    const double t = Seconds(t0, reps);
    std::printf("fused vital-signs update, %ld params: %.1f us (%.1f GB/s at 38 B/param)\n", n,
                t * 1e6, 38.0 * n / t / 1e9);
  }
}
