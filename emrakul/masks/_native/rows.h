// What every exact top-k row kernel shares (emrakul/masks/_native/topk.cc, the library's kernel,
// and benchmarks/topk_ffi.cc, a prototype): the ordered integer key of a float, and the XLA FFI
// handler that applies a per-row selection to float32 rows [..., n] with one int32 count per row
// (clipped into [0, n]), writing a bool mask of x's shape.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// Floats' bits mapped to unsigned integers in the same order (-inf lowest, +inf highest).
static inline uint32_t OrderedKey(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Select(x, n, k, out, scratch) writes the mask of one row with 0 < k < n (rows with k = 0 or
// k = n are filled here); Scratch is reused across rows.
template <typename Scratch, void (*Select)(const float*, int64_t, int64_t, bool*, Scratch&)>
static ffi::Error SelectRows(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S32> k,
                             ffi::ResultBuffer<ffi::PRED> out) {
  auto dims = x.dimensions();
  if (dims.size() == 0) return ffi::Error::InvalidArgument("x must have at least one axis");
  const int64_t n = dims.back();
  if (n > std::numeric_limits<int32_t>::max())
    return ffi::Error::InvalidArgument("rows longer than 2**31 - 1 are not supported");
  int64_t rows = 1;
  for (size_t d = 0; d + 1 < dims.size(); ++d) rows *= dims[d];
  if (static_cast<int64_t>(k.element_count()) != rows)
    return ffi::Error::InvalidArgument("k must hold one count per row");
  Scratch scratch;
  for (int64_t r = 0; r < rows && n > 0; ++r) {
    const int64_t kr = std::clamp<int64_t>(k.typed_data()[r], 0, n);
    bool* row = out->typed_data() + r * n;
    if (kr == 0 || kr == n)
      std::memset(row, kr == n, n);
    else
      Select(x.typed_data() + r * n, n, kr, row, scratch);
  }
  return ffi::Error::Success();
}

// Defines the exported handler symbol `name` for SelectRows<Scratch, Select>.
#define EMRAKUL_ROWS_HANDLER(name, Scratch, Select)                           \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, (SelectRows<Scratch, Select>),          \
                                ffi::Ffi::Bind()                              \
                                    .Arg<ffi::Buffer<ffi::F32>>()             \
                                    .Arg<ffi::Buffer<ffi::S32>>()             \
                                    .Ret<ffi::Buffer<ffi::PRED>>())
