// Exact top-k mask of each row by radix select on the floats' ordered integer keys, as an
// XLA FFI custom call for the CPU (a prototype timed by benchmarks/topk_ffi.py, not library code).
//
// For every row of x ([rows, n], float32, already sanitised: no NaN, no -0.0, no denormals) keep
// exactly k[row] entries, the k largest, ties at the threshold broken by the lower index (the
// contract of emrakul.masks.topk_mask). Three passes over the row: (1) a histogram of the top
// 11 key bits, (2) the keys of the one bucket that holds the k-th largest are gathered, and
// std::nth_element finds the threshold among them, (3) the mask is written.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

static inline uint32_t OrderedKey(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

static void SelectRow(const float* x, int64_t n, int64_t k, bool* out,
                      std::vector<uint32_t>& bucket) {
  if (k <= 0) {
    std::memset(out, 0, n);
    return;
  }
  if (k >= n) {
    std::memset(out, 1, n);
    return;
  }
  constexpr int kBits = 11;
  constexpr int kShift = 32 - kBits;
  // Four interleaved histograms: consecutive increments of one bin would otherwise wait on
  // each other's stores.
  static thread_local uint32_t sub[4][1 << kBits];
  std::memset(sub, 0, sizeof sub);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    sub[0][OrderedKey(x[i]) >> kShift]++;
    sub[1][OrderedKey(x[i + 1]) >> kShift]++;
    sub[2][OrderedKey(x[i + 2]) >> kShift]++;
    sub[3][OrderedKey(x[i + 3]) >> kShift]++;
  }
  for (; i < n; ++i) sub[0][OrderedKey(x[i]) >> kShift]++;
  uint32_t hist[1 << kBits];
  for (int j = 0; j < (1 << kBits); ++j) hist[j] = sub[0][j] + sub[1][j] + sub[2][j] + sub[3][j];
  int64_t above = 0;  // entries in buckets above the chosen one
  int b = (1 << kBits) - 1;
  for (; b > 0; --b) {
    if (above + hist[b] >= static_cast<uint64_t>(k)) break;
    above += hist[b];
  }
  bucket.resize(hist[b] + 1);
  uint32_t* dst = bucket.data();
  int64_t m = 0;
  for (int64_t j = 0; j < n; ++j) {  // branch-free gather of the bucket's keys
    uint32_t key = OrderedKey(x[j]);
    dst[m] = key;
    m += (key >> kShift) == static_cast<uint32_t>(b);
  }
  bucket.resize(m);
  const int64_t need = k - above;  // how many of the bucket's keys are kept (1..size)
  std::nth_element(bucket.begin(), bucket.begin() + (need - 1), bucket.end(),
                   std::greater<uint32_t>());
  const uint32_t thr = bucket[need - 1];
  int64_t greater = 0;  // bucket keys strictly above the threshold
  for (uint32_t key : bucket) greater += key > thr;
  int64_t ties = need - greater;  // entries equal to the threshold to keep, lowest index first
  for (int64_t j = 0; j < n; ++j) {
    uint32_t key = OrderedKey(x[j]);
    bool tie = key == thr;
    bool keep = (key > thr) | (tie & (ties > 0));
    ties -= tie & (ties > 0);
    out[j] = keep;
  }
}

static ffi::Error TopkMaskImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S32> k,
                               ffi::ResultBuffer<ffi::PRED> out) {
  auto dims = x.dimensions();
  if (dims.size() == 0) return ffi::Error::InvalidArgument("x must have at least one axis");
  const int64_t n = dims.back();
  const int64_t rows = n == 0 ? 0 : static_cast<int64_t>(x.element_count()) / n;
  if (static_cast<int64_t>(k.element_count()) != rows)
    return ffi::Error::InvalidArgument("k must hold one count per row");
  std::vector<uint32_t> bucket;
  for (int64_t r = 0; r < rows; ++r) {
    SelectRow(x.typed_data() + r * n, n, k.typed_data()[r], out->typed_data() + r * n, bucket);
  }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(EmrakulTopkMask, TopkMaskImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::PRED>>());
