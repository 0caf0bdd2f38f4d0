// Shared by the native kernel files: includes, hyperparameter rows, NaN-propagating max
// and the parallel loop over XLA's intra-op thread pool.
#ifndef ADAMJAX_NATIVE_KERNEL_COMMON_H_
#define ADAMJAX_NATIVE_KERNEL_COMMON_H_

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define ADAMJAX_X86 1
#else
#define ADAMJAX_X86 0
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#if defined(__GNUC__) || defined(__clang__)
#define ADAMJAX_INLINE inline __attribute__((always_inline))
#define ADAMJAX_RESTRICT __restrict__

// The FFI binding every step target shares: the thread pool, the `fma` attribute and the
// hyperparameter rows (float32) first; each target then adds its own arguments.
#define ADAMJAX_BIND_STEP_HEAD \
  ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Attr<int32_t>("fma").Arg<ffi::Buffer<ffi::F32>>()

// One algorithm's two targets from one step template: `apply` writes the parameters,
// `update` returns the updates.
#define ADAMJAX_DEFINE_STEP_PAIR(apply, update, impl, algo, binding)   \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(apply, (impl<algo, true>), binding);    \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(update, (impl<algo, false>), binding)
#else
#define ADAMJAX_INLINE inline
#define ADAMJAX_RESTRICT
#endif

namespace adamjax_native {

// ---------------------------------------------------------------------------------------
// Instruction sets: each kernel file compiles its loops for AVX-512, AVX2 and baseline
// x86-64 and picks one once, at load time (ADAMJAX_NATIVE_ISA may force a narrower one).
#if ADAMJAX_X86 && (defined(__GNUC__) || defined(__clang__))
#define ADAMJAX_MULTI_ISA 1
#define ADAMJAX_AVX2_TARGET __attribute__((target("avx2,fma")))
#define ADAMJAX_AVX512_TARGET                                                    \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,"        \
                        "prefer-vector-width=512")))
#define ADAMJAX_AVX512VBMI_TARGET                                                \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx2,fma," \
                        "prefer-vector-width=512")))
#else
#define ADAMJAX_MULTI_ISA 0
#endif

enum class Isa { kBaseline, kAvx2, kAvx512 };

inline Isa PickIsa() {
#if ADAMJAX_MULTI_ISA
  __builtin_cpu_init();
  const char* force = std::getenv("ADAMJAX_NATIVE_ISA");  // "baseline", "avx2" or "avx512"
  const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool has512 = has2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq");
  if (force != nullptr && std::strcmp(force, "baseline") == 0) return Isa::kBaseline;
  if (force != nullptr && std::strcmp(force, "avx2") == 0 && has2) return Isa::kAvx2;
  if (has512) return Isa::kAvx512;
  if (has2) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

// ---------------------------------------------------------------------------------------
// Hyperparameters: one row of kNumHyper (AdamW: kNumHyperW) float32 values per config,
// computed by the Python binding with the same JAX expressions as the pure path (so they
// match it bit for bit).
enum HyperIndex : int {
  kNegLr = 0,    // -learning_rate
  kB1 = 1,       // b1
  kOneMinusB1 = 2,
  kB2 = 3,       // b2
  kOneMinusB2 = 4,
  kEps = 5,
  kInvC1 = 6,    // 1 / (1 - b1**t), or 1 without bias correction
  kInvC2 = 7,    // 1 / (1 - b2**t), or 1
  kNumHyper = 8,  // the row of Adam and AdaMax
  kWd = 8,        // weight_decay (AdamW's rows only)
  kNumHyperW = 9, // the row of AdamW
};

struct Hyper {
  float neg_lr, b1, omb1, b2, omb2, eps, inv_c1, inv_c2, wd;
};

// A row of `width` floats (kNumHyper or kNumHyperW); wd = 0 where the row has none.
ADAMJAX_INLINE Hyper LoadHyper(const float* row, size_t width = kNumHyper) {
  return Hyper{row[kNegLr],      row[kB1],  row[kOneMinusB1], row[kB2],
               row[kOneMinusB2], row[kEps], row[kInvC1],      row[kInvC2],
               width > kWd ? row[kWd] : 0.0f};
}

// max() that propagates NaN from either side, like XLA's maximum.
ADAMJAX_INLINE float MaxNan(float a, float b) {
  float r = a > b ? a : b;
  r = (b != b) ? b : r;
  return (a != a) ? a : r;
}


// ---------------------------------------------------------------------------------------
// Parallel loop over [0, total) in chunks, on the calling thread plus XLA's intra-op pool.
constexpr size_t kChunk = size_t{1} << 16;      // elements per claimed chunk (64 Ki)
constexpr size_t kSerialBelow = size_t{1} << 17;  // smaller buffers run on the caller only

inline int MaxThreadsFromEnv() {
  const char* s = std::getenv("ADAMJAX_NATIVE_THREADS");
  if (s == nullptr || *s == '\0') return 0;
  return std::max(1, std::atoi(s));
}

template <typename Body>
struct ParallelJob {
  explicit ParallelJob(Body b, size_t t, size_t c, size_t w)
      : body(std::move(b)), total(t), chunks(c), width(w) {}
  Body body;
  size_t total;
  size_t chunks;
  size_t width;  // units per chunk
  std::atomic<size_t> next{0};
  std::atomic<size_t> done{0};
#if ADAMJAX_X86
  unsigned int mxcsr = _mm_getcsr();  // denormal flags of the caller (XLA flushes them)
#endif

  // Claims and runs chunks until none is left.
  void Work() {
    for (;;) {
      const size_t c = next.fetch_add(1, std::memory_order_relaxed);
      if (c >= chunks) return;
      const size_t lo = c * width;
      const size_t hi = std::min(total, lo + width);
      body(lo, hi);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

// body(lo, hi) for consecutive ranges of [0, total) of `width` units each (elements, or
// blocks of elements); below `serial_below` units everything runs on the caller.
template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, size_t total, Body body, size_t width = kChunk,
                 size_t serial_below = kSerialBelow) {
  if (total == 0) return;
  int64_t threads = total < serial_below ? 1 : pool.num_threads();
  const int cap = MaxThreadsFromEnv();
  if (cap > 0) threads = std::min<int64_t>(threads, cap);
  const size_t chunks = (total + width - 1) / width;
  if (threads <= 1 || chunks <= 1) {
    body(0, total);
    return;
  }
  auto job = std::make_shared<ParallelJob<Body>>(std::move(body), total, chunks, width);
  const int64_t helpers = std::min<int64_t>(threads - 1, static_cast<int64_t>(chunks) - 1);
  for (int64_t k = 0; k < helpers; ++k) {
    pool.Schedule([job]() {
#if ADAMJAX_X86
      const unsigned int saved = _mm_getcsr();
      _mm_setcsr(job->mxcsr);
      job->Work();
      _mm_setcsr(saved);
#else
      job->Work();
#endif
    });
  }
  job->Work();
  // Every chunk is claimed now; wait only for those that running helpers still hold.
  size_t spins = 0;
  while (job->done.load(std::memory_order_acquire) < chunks) {
    if (++spins < 4096) {
#if ADAMJAX_X86
      _mm_pause();
#endif
    } else {
      std::this_thread::yield();
    }
  }
}

}  // namespace adamjax_native

#endif  // ADAMJAX_NATIVE_KERNEL_COMMON_H_
