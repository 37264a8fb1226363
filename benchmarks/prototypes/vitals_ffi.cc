// One leaf of emrakul.vitals.update as a fused, vectorised XLA FFI custom call for the CPU (a
// prototype timed by benchmarks/prototypes/vitals_ffi.py, not library code).
//
// Inputs: g, w (float32), mask (bool; pass an all-true array for an unpruned leaf), the state
// m, v, fr (float32), last (int8), age (uint16), all of one shape; decay, weight and gradient
// thresholds as float32 scalars (rank-0 buffers). Outputs: the new m, v, fr, last, age, aliased
// onto the inputs by the caller (updated in place), and finite (bool scalar). Same arithmetic as
// emrakul.vitals.state._leaf_update: a leaf whose gradient sum is not finite is left unchanged.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include <omp.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// The elementwise update of [begin, end), with restrict-qualified pointers so that it vectorises.
static void UpdateRange(const float* __restrict g, const float* __restrict w,
                        const uint8_t* __restrict mask, float* __restrict m, float* __restrict v,
                        float* __restrict fr, int8_t* __restrict last, uint16_t* __restrict age,
                        float d, float c, float wt, float gt, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float li = static_cast<float>(last[i]);
    const float sg = gi > 0.f ? 1.f : (gi < 0.f ? -1.f : li);  // a zero gradient keeps the sign
    m[i] = d * m[i] + c * gi;
    v[i] = d * v[i] + c * (gi * gi);
    fr[i] = d * fr[i] + ((gi * li < 0.f) ? c : 0.f);
    last[i] = static_cast<int8_t>(sg);
    const float wa = mask[i] ? std::fabs(w[i]) : 0.f;
    const bool active = (wa > wt) & (std::fabs(gi) > gt);
    const uint16_t ai = age[i];
    age[i] = active ? uint16_t{0} : static_cast<uint16_t>(ai + (ai < 65535));
  }
}

static ffi::Error VitalsImpl(ffi::Buffer<ffi::F32> g_buf, ffi::Buffer<ffi::F32> w_buf,
                             ffi::Buffer<ffi::PRED> mask_buf, ffi::Buffer<ffi::F32> m_in,
                             ffi::Buffer<ffi::F32> v_in, ffi::Buffer<ffi::F32> fr_in,
                             ffi::Buffer<ffi::S8> last_in, ffi::Buffer<ffi::U16> age_in,
                             ffi::Buffer<ffi::F32> decay_buf, ffi::Buffer<ffi::F32> wt_buf,
                             ffi::Buffer<ffi::F32> gt_buf, ffi::ResultBuffer<ffi::F32> m_out,
                             ffi::ResultBuffer<ffi::F32> v_out, ffi::ResultBuffer<ffi::F32> fr_out,
                             ffi::ResultBuffer<ffi::S8> last_out,
                             ffi::ResultBuffer<ffi::U16> age_out,
                             ffi::ResultBuffer<ffi::PRED> finite_out) {
  const int64_t n = static_cast<int64_t>(g_buf.element_count());
  const float* __restrict g = g_buf.typed_data();
  const float* __restrict w = w_buf.typed_data();
  const bool* __restrict mask = mask_buf.typed_data();
  const float d = decay_buf.typed_data()[0];
  const float c = 1.0f - d;
  const float wt = wt_buf.typed_data()[0];
  const float gt = gt_buf.typed_data()[0];
  float sum = 0.f;  // the same finiteness test as the JAX version: isfinite(sum(g))
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += g[i];
  const bool finite = std::isfinite(sum);
  finite_out->typed_data()[0] = finite;
  // benchmarks/vitals_ffi.py aliases every output to its input, so these copies never run;
  // they keep the kernel correct for a caller that does not.
  float* __restrict m = m_out->typed_data();
  float* __restrict v = v_out->typed_data();
  float* __restrict fr = fr_out->typed_data();
  int8_t* __restrict last = last_out->typed_data();
  uint16_t* __restrict age = age_out->typed_data();
  if (m != m_in.typed_data()) std::memcpy(m, m_in.typed_data(), 4 * n);
  if (v != v_in.typed_data()) std::memcpy(v, v_in.typed_data(), 4 * n);
  if (fr != fr_in.typed_data()) std::memcpy(fr, fr_in.typed_data(), 4 * n);
  if (last != last_in.typed_data()) std::memcpy(last, last_in.typed_data(), n);
  if (age != age_in.typed_data()) std::memcpy(age, age_in.typed_data(), 2 * n);
  if (!finite) return ffi::Error::Success();
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t chunk = (n + threads - 1) / threads;
    const int64_t begin = std::min(n, t * chunk), end = std::min(n, begin + chunk);
    UpdateRange(g + begin, w + begin, reinterpret_cast<const uint8_t*>(mask) + begin, m + begin,
                v + begin, fr + begin, last + begin, age + begin, d, c, wt, gt, end - begin);
  }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(EmrakulVitalsLeaf, VitalsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()    // g
                                  .Arg<ffi::Buffer<ffi::F32>>()    // w
                                  .Arg<ffi::Buffer<ffi::PRED>>()   // mask
                                  .Arg<ffi::Buffer<ffi::F32>>()    // m
                                  .Arg<ffi::Buffer<ffi::F32>>()    // v
                                  .Arg<ffi::Buffer<ffi::F32>>()    // fr
                                  .Arg<ffi::Buffer<ffi::S8>>()     // last
                                  .Arg<ffi::Buffer<ffi::U16>>()    // age
                                  .Arg<ffi::Buffer<ffi::F32>>()    // decay
                                  .Arg<ffi::Buffer<ffi::F32>>()    // weight threshold
                                  .Arg<ffi::Buffer<ffi::F32>>()    // gradient threshold
                                  .Ret<ffi::Buffer<ffi::F32>>()    // m
                                  .Ret<ffi::Buffer<ffi::F32>>()    // v
                                  .Ret<ffi::Buffer<ffi::F32>>()    // fr
                                  .Ret<ffi::Buffer<ffi::S8>>()     // last
                                  .Ret<ffi::Buffer<ffi::U16>>()    // age
                                  .Ret<ffi::Buffer<ffi::PRED>>());  // finite
