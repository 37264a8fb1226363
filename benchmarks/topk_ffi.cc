// Exact top-k mask of each row by radix select on the floats' ordered integer keys, as an
// XLA FFI custom call for the CPU (a prototype timed by benchmarks/topk_ffi.py, not library code).
//
// Inputs: x, float32 [..., n], already sanitised by the caller (no NaN, no -0.0, no denormals:
// emrakul.masks.topk._as_float); k, int32 with one count per row (the product of x's leading
// dimensions), clipped into [0, n]. Output: bool, x's shape. For every row exactly k entries are
// kept, the k largest, ties at the threshold broken by the lower index (the contract of
// emrakul.masks.topk_mask). Three passes over the row: (1) a histogram of the top 11 key bits,
// (2) the keys of the one bucket holding the k-th largest are gathered and std::nth_element
// finds the threshold among them, (3) the mask is written (after a scan for the index at which
// the kept ties end, so that the writing loop has no loop-carried state and vectorises).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "../emrakul/masks/_native/rows.h"

// The mask of one row, 0 < k < n.
static void SelectRow(const float* x, int64_t n, int64_t k, bool* out,
                      std::vector<uint32_t>& bucket) {
  constexpr int kBits = 11;
  constexpr int kShift = 32 - kBits;
  // Four interleaved histograms: consecutive increments of one bin would otherwise wait on
  // each other's stores.
  static thread_local int64_t sub[4][1 << kBits];
  std::memset(sub, 0, sizeof sub);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    sub[0][OrderedKey(x[i]) >> kShift]++;
    sub[1][OrderedKey(x[i + 1]) >> kShift]++;
    sub[2][OrderedKey(x[i + 2]) >> kShift]++;
    sub[3][OrderedKey(x[i + 3]) >> kShift]++;
  }
  for (; i < n; ++i) sub[0][OrderedKey(x[i]) >> kShift]++;
  int64_t above = 0;  // entries in the buckets above bucket b
  int b = (1 << kBits) - 1;
  int64_t size = 0;
  for (; b >= 0; --b) {
    size = sub[0][b] + sub[1][b] + sub[2][b] + sub[3][b];
    if (above + size >= k) break;
    above += size;
  }
  bucket.clear();
  bucket.reserve(size);
  for (int64_t j = 0; j < n; ++j) {  // few entries hit: the branch is well predicted
    const uint32_t key = OrderedKey(x[j]);
    if ((key >> kShift) == static_cast<uint32_t>(b)) bucket.push_back(key);
  }
  const int64_t need = k - above;  // how many of the bucket's keys are kept (1..size)
  std::nth_element(bucket.begin(), bucket.begin() + (need - 1), bucket.end(),
                   std::greater<uint32_t>());
  const uint32_t thr = bucket[need - 1];
  int64_t greater = 0;  // bucket keys strictly above the threshold
  for (uint32_t key : bucket) greater += key > thr;
  int64_t ties = need - greater;  // entries equal to the threshold to keep, lowest index first
  int64_t cut = 0;                // the kept ties are those at indices < cut
  for (; cut < n && ties > 0; ++cut) ties -= OrderedKey(x[cut]) == thr;
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t key = OrderedKey(x[j]);
    out[j] = (key > thr) | ((key == thr) & (j < cut));
  }
}

EMRAKUL_ROWS_HANDLER(EmrakulTopkMask, std::vector<uint32_t>, SelectRow);
