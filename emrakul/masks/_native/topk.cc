// Exact top-k mask of each row, as an XLA FFI custom call for the CPU: the native kernel of
// emrakul.masks.native (compiled on first use by emrakul/masks/native.py; see its docstring).
//
// Inputs: x, float32 [..., n], sanitised by the caller (no NaN, no -0.0, no denormals:
// emrakul.masks.topk._as_float); k, int32 with one count per row (the product of x's leading
// dimensions). Output: bool, x's shape. In every row exactly clip(k, 0, n) entries are kept, the
// largest, ties at the threshold broken by the lower index: the contract of
// emrakul.masks.topk_mask, whose XLA implementation this matches bit for bit.
//
// Algorithm: vectorised count passes narrow a bracket [lo, hi] around the k-th largest value
// until at most kCap entries lie in it; one vectorised pass compacts those (AVX-512 compress
// where available), std::nth_element picks the threshold among them, a blocked count finds where
// the kept ties end, and a last pass writes the mask. Each pass counts #(x >= t) for two
// thresholds; a count c >= k makes t the new lo, a count c < k makes the float just below t the
// new hi (#(x > nextdown(t)) = #(x >= t)). The first two thresholds come from a sorted strided
// sample (+-3 standard deviations of the k-th's rank in it), the next from interpolating the
// counts linearly in value (+-2 standard deviations of the rank error). A bisection on the
// floats' ordered integer keys replaces the interpolation when a pass fails to halve the
// bracket, and when a pass does not shrink it at all (ties, or probes in an empty gap) one pass
// snaps lo and hi onto the smallest and largest entries inside it. Since the rows are sanitised,
// float comparisons order them exactly as the keys do (thresholds are kept off denormals and
// -0.0, which XLA's denormals-are-zero mode would compare as 0). At most 100 passes are made in
// any case, after which the compaction takes whatever bracket is left (exact, only slower).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "rows.h"

static inline float FromKey(uint32_t key) {
  const uint32_t b = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  float v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

// #(x >= a) and #(x >= b) in one pass (n < 2**31).
static void Count2(const float* x, int64_t n, float a, float b, int64_t* ca, int64_t* cb) {
  int32_t sa = 0, sb = 0;
#pragma omp simd reduction(+ : sa, sb)
  for (int64_t i = 0; i < n; ++i) {
    sa += x[i] >= a;
    sb += x[i] >= b;
  }
  *ca = sa;
  *cb = sb;
}

// The smallest and the largest entry in [lo, hi] (which holds at least one), in one pass.
static void Snap(const float* x, int64_t n, float lo, float hi, float* mn, float* mx) {
  float a = std::numeric_limits<float>::infinity(), b = -a;
#pragma omp simd reduction(min : a) reduction(max : b)
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const bool in = (v >= lo) & (v <= hi);
    a = std::min(a, in ? v : std::numeric_limits<float>::infinity());
    b = std::max(b, in ? v : -std::numeric_limits<float>::infinity());
  }
  *mn = a;
  *mx = b;
}

// The entries of x in [lo, hi], in index order, into out (which has room for n + 16).
static int64_t Compact(const float* x, int64_t n, float lo, float hi, float* out) {
  int64_t m = 0, i = 0;
#ifdef __AVX512F__
  const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __mmask16 in = _mm512_cmp_ps_mask(v, vlo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(v, vhi, _CMP_LE_OQ);
    _mm512_storeu_ps(out + m, _mm512_maskz_compress_ps(in, v));  // in-register compress
    m += __builtin_popcount(in);
  }
#endif
  for (; i < n; ++i) {
    out[m] = x[i];
    m += (x[i] >= lo) & (x[i] <= hi);
  }
  return m;
}

// The mask of one row, 0 < k < n.
static void SelectRow(const float* x, int64_t n, int64_t k, bool* out, std::vector<float>& buf) {
  constexpr int64_t kCap = 8192;
  const float inf = std::numeric_limits<float>::infinity();
  // Invariants: #(x >= lo) = glo >= k and #(x > hi) = ghi < k, so lo <= (k-th largest) <= hi.
  float lo = -inf, hi = inf;
  int64_t glo = n, ghi = 0;
  // XLA runs custom calls with denormals treated as zero, and the rows hold no denormals and
  // no -0.0: thresholds are moved off those onto the normal value (or +0.0) that counts the same
  // rows. Decided on the bits: under denormals-are-zero a float comparison would see 0.
  const float tiny = std::numeric_limits<float>::min();
  auto bits = [](float t) {
    uint32_t b;
    std::memcpy(&b, &t, sizeof b);
    return b;
  };
  auto canon_ge = [&](float t) {  // a threshold with the same #(x >= t)
    const uint32_t b = bits(t);
    if (b & 0x7f800000u) return t;                // normal, or an infinity
    return (b != 0 && !(b >> 31)) ? tiny : 0.0f;  // +denormal: x >= tiny; +-0, -denormal: x >= 0
  };
  auto canon_gt = [&](float t) {  // the key-order "#(x > t)" as an IEEE threshold
    const uint32_t b = bits(t);
    if (b & 0x7f800000u) return t;
    return (b >> 31) ? -tiny : 0.0f;  // -0.0, -denormal: x >= 0, i.e. x > -tiny; else x > 0
  };
  auto learn = [&](float t, int64_t c) {  // c = #(x >= t), t inside [lo, hi]
    if (c >= k) {
      if (t > lo) lo = t, glo = c;
    } else if (t > -inf) {
      const float below = canon_gt(FromKey(OrderedKey(t) - 1));  // #(x > below) = c
      if (below < hi) hi = below, ghi = c;
    }
  };
  auto probe2 = [&](float a, float b) {
    a = canon_ge(std::clamp(a, lo, hi));
    b = canon_ge(std::clamp(b, lo, hi));
    int64_t ca, cb;
    Count2(x, n, a, b, &ca, &cb);
    learn(a, ca);
    learn(b, cb);
  };
  // A strided sample, sorted; thresholds +-3 standard deviations around the k-th's rank in it,
  // moved onto finite sample values where they fall on an infinite one.
  const int64_t m = std::min<int64_t>(512, std::max<int64_t>(1, n / 8));
  const int64_t stride = n / m;
  buf.resize(n + 16);
  float* sample = buf.data();
  for (int64_t i = 0; i < m; ++i) sample[i] = x[i * stride];
  std::sort(sample, sample + m, std::greater<float>());
  const double p = static_cast<double>(k) * m / n;
  const double sd = std::sqrt(std::max(p * (1.0 - p / m), 1.0));
  int64_t ia = std::clamp<int64_t>(static_cast<int64_t>(p + 3.0 * sd + 1.0), 0, m - 1);
  int64_t ib = std::clamp<int64_t>(static_cast<int64_t>(p - 3.0 * sd - 1.0), 0, m - 1);
  while (ia > 0 && sample[ia] == -inf) --ia;
  while (ib < m - 1 && sample[ib] == inf) ++ib;
  probe2(sample[ia], sample[ib]);
  bool bisect = false, stalled = false;
  // Each pass shrinks the bracket; the cap on passes is a guard only (the compaction below is
  // exact for any bracket, just slower on a big one).
  for (int pass = 0; pass < 100 && lo < hi && glo - ghi > kCap; ++pass) {
    const int64_t before = glo - ghi;
    if (pass > 0 && stalled) {  // no entry between the last probes: snap onto data values
      Snap(x, n, lo, hi, &lo, &hi);  // nothing lies in [lo, min) or (max, hi]: counts stay
      stalled = false;
      continue;
    }
    const uint32_t klo = OrderedKey(lo), khi = OrderedKey(hi);
    if (!bisect && std::isfinite(lo) && std::isfinite(hi)) {
      const double mass = static_cast<double>(glo - ghi);
      const double rank = static_cast<double>(k - ghi);  // from the top of the bracket
      const double err = 2.0 * std::sqrt(mass);
      const double span = static_cast<double>(hi) - lo;
      probe2(static_cast<float>(hi - span * std::min(1.0, (rank + err) / mass)),
             static_cast<float>(hi - span * std::max(0.0, (rank - err) / mass)));
    } else {
      const uint32_t mid = klo + (khi - klo + 1) / 2;  // in (lo, hi]
      probe2(FromKey(mid), FromKey(mid));
    }
    bisect = 2 * (glo - ghi) > before;  // the pass failed to halve the bracket's count
    stalled = glo - ghi == before;      // ... or did not shrink it at all (ties, empty gaps)
  }
  float thr = lo;
  if (lo < hi) {  // at most kCap entries in [lo, hi]: pick the threshold among them
    float* cand = buf.data();
    const int64_t c = Compact(x, n, lo, hi, cand);
    const int64_t need = k - ghi;  // 1..c
    std::nth_element(cand, cand + (need - 1), cand + c, std::greater<float>());
    thr = cand[need - 1];
  }
  int64_t greater = 0;  // entries strictly above the threshold
#pragma omp simd reduction(+ : greater)
  for (int64_t j = 0; j < n; ++j) greater += x[j] > thr;
  int64_t ties = k - greater;  // entries equal to thr to keep, lowest index first (>= 1)
  constexpr int64_t kBlock = 1024;
  int64_t cut = 0;  // the kept ties are those at indices < cut
  while (cut < n) {
    const int64_t end = std::min(n, cut + kBlock);
    int64_t eq = 0;
#pragma omp simd reduction(+ : eq)
    for (int64_t j = cut; j < end; ++j) eq += x[j] == thr;
    if (eq >= ties) {
      for (; ties > 0; ++cut) ties -= x[cut] == thr;
      break;
    }
    ties -= eq;
    cut = end;
  }
  for (int64_t j = 0; j < n; ++j) out[j] = (x[j] > thr) | ((x[j] == thr) & (j < cut));
}

EMRAKUL_ROWS_HANDLER(EmrakulTopkMask, std::vector<float>, SelectRow);
