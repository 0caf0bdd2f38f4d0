// Fused Adam-family steps for the CPU, bound to JAX through the XLA FFI.
//
// One pass over contiguous buffers: params and grads are float32, the moment state float32
// or bfloat16 (loaded as float32, stored rounded to nearest even, NaN kept as a quiet NaN
// of the same sign, like XLA's convert). The math runs in float32 in exactly the order of
// the composed pure-JAX chain of adamjax (scale_by_moments, bias_correct, precondition,
// [add_decayed_weights for AdamW], scale_by_lr, apply_updates) as XLA compiles it for the
// CPU, without FMA contraction, so that the results are the same bit for bit. (XLA's
// simplifier turns the bias corrections `m / broadcast(1 - b1**t)` into
// `m * broadcast(1 / (1 - b1**t))`; the kernel receives those reciprocals.) Every
// hyperparameter arrives at run time, one row of a float32 operand per config (a leading
// vmap axis becomes several rows; see kNumHyper). Whether to contract
// a*b + c into an FMA as XLA's CPU code does is the call's attribute `fma` (it depends on
// how XLA compiles, not on the data).
//
// Vectorisation is left to the compiler; the loops are compiled three times (AVX-512,
// AVX2, baseline x86-64) and the widest one the CPU supports is picked once at load time.
// Threads: the work is cut into chunks that the calling thread and the tasks it puts on
// XLA's intra-op thread pool claim from a shared counter, so that nothing waits for a task
// that has not started (no deadlock when the pool is busy) and a loaded core does less.

#include "kernel_common.h"

namespace {

using namespace adamjax_native;  // NOLINT: this file is the kernel that header serves

// ---------------------------------------------------------------------------------------
// Storage types of the moments.
struct Bf16 {
  uint16_t bits;
};

ADAMJAX_INLINE float Load(const float* p, size_t i) { return p[i]; }
ADAMJAX_INLINE float Load(const Bf16* p, size_t i) {
  uint32_t b = static_cast<uint32_t>(p[i].bits) << 16;
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

ADAMJAX_INLINE void Store(float* p, size_t i, float x) { p[i] = x; }
ADAMJAX_INLINE void Store(Bf16* p, size_t i, float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  const uint32_t hi = b >> 16;
  const uint32_t rounded = (b + 0x7fffu + (hi & 1u)) >> 16;
  const uint32_t qnan = (hi & 0x8000u) | 0x7fc0u;
  p[i].bits = static_cast<uint16_t>(x != x ? qnan : rounded);
}

// a * b + c, rounded once (kFma, as XLA's CPU compiler contracts it) or twice.
template <bool kFma>
ADAMJAX_INLINE float MulAdd(float a, float b, float c) {
  if constexpr (kFma) {
    return std::fma(a, b, c);
  } else {
    return a * b + c;
  }
}

// decay * old + w * x for the moment EMAs, rounded like XLA's CPU code: with contraction,
// LLVM fuses the product of the float32 state (old * decay) into the FMA, but the other
// product (x * w) when the state was widened from bfloat16. (The binding checks this
// against XLA at load time.)
template <bool kFma, bool kFromBf16>
ADAMJAX_INLINE float Ema(float decay, float old, float w, float x) {
  if constexpr (!kFma) {
    return decay * old + w * x;
  } else if constexpr (kFromBf16) {
    return std::fma(w, x, decay * old);
  } else {
    return std::fma(decay, old, w * x);
  }
}

// ---------------------------------------------------------------------------------------
// The loops. `out` is the parameters, updated in place (apply), or the updates buffer,
// written (update: `out = -lr * d`). `q` is the parameters that AdamW's update form reads
// (nullptr otherwise; the apply form reads them from `p`). All pointers are distinct; `g`
// and `q` are only read.
//
// AdamW (Loshchilov & Hutter, ICLR 2019) adds `wd * p` to Adam's direction d before the
// learning rate scales it (the chain's add_decayed_weights between precondition and
// scale_by_lr); XLA's CPU code contracts that `d + wd * p` into fma(wd, p, d) too.
enum class Algo { kAdam, kAdaMax, kAdamW };

template <Algo A, bool kApply, bool kFma, typename MT, typename VT>
ADAMJAX_INLINE void StepLoop(size_t n, float* ADAMJAX_RESTRICT p,
                             const float* ADAMJAX_RESTRICT q, const float* ADAMJAX_RESTRICT g,
                             MT* ADAMJAX_RESTRICT m, VT* ADAMJAX_RESTRICT v, const Hyper h) {
  const float neg_lr = h.neg_lr, b1 = h.b1, omb1 = h.omb1, b2 = h.b2, omb2 = h.omb2,
              eps = h.eps, inv_c1 = h.inv_c1, inv_c2 = h.inv_c2, wd = h.wd;
  for (size_t i = 0; i < n; ++i) {
    const float gi = g[i];
    constexpr bool kMb = std::is_same_v<MT, Bf16>, kVb = std::is_same_v<VT, Bf16>;
    const float mi = Ema<kFma, kMb>(b1, Load(m, i), omb1, gi);  // scale_by_moments
    float d;
    if constexpr (A != Algo::kAdaMax) {
      const float vi = Ema<kFma, kVb>(b2, Load(v, i), omb2, gi * gi);
      Store(v, i, vi);
      d = (mi * inv_c1) / (std::sqrt(vi * inv_c2) + eps);  // bias_correct, precondition
    } else {
      const float ui = MaxNan(b2 * Load(v, i), std::fabs(gi));
      Store(v, i, ui);
      d = (mi * inv_c1) / (ui + eps);
    }
    if constexpr (A == Algo::kAdamW) {
      if constexpr (kApply) {
        d = MulAdd<kFma>(wd, p[i], d);  // add_decayed_weights
      } else {
        d = MulAdd<kFma>(wd, q[i], d);
      }
    }
    Store(m, i, mi);
    if constexpr (kApply) {
      p[i] = MulAdd<kFma>(neg_lr, d, p[i]);  // scale_by_lr, apply_updates
    } else {
      p[i] = neg_lr * d;  // scale_by_lr (p is the updates buffer)
    }
  }
}

#if ADAMJAX_X86 && (defined(__GNUC__) || defined(__clang__))
// ---------------------------------------------------------------------------------------
// AVX-512 loop for bfloat16 moments, written with intrinsics. The compiler does vectorise
// the scalar conversions above, but into twice the vector instructions (pack/unpack
// shuffles, an integer NaN test), and with 512-bit vectors on two execution ports that
// made the bfloat16 step slower than the float32 one although it moves 20 bytes per
// element instead of 28. Here, per 32 elements: widen is one masked word permute per 16;
// narrow is test, add, masked add per 16 and one word permute that packs the high halves of
// 32 lanes; NaN lanes (rare) are redone by the scalar Store. The same operations in the
// same order as StepLoop, so the results are the same bit for bit. (Prefetches past the
// end of a buffer are harmless: prefetch never faults.)
#define ADAMJAX_AVX512_INLINE ADAMJAX_AVX512_TARGET inline __attribute__((always_inline))

namespace v512 {

ADAMJAX_AVX512_INLINE __m512 Load16(const float* p) { return _mm512_loadu_ps(p); }
ADAMJAX_AVX512_INLINE __m512 Load16(const Bf16* p) {
  // Word j of the 16 loaded goes to the high half of lane j, the low half is zeroed.
  const __m512i idx = _mm512_set_epi16(15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8, 0,
                                       7, 0, 6, 0, 5, 0, 4, 0, 3, 0, 2, 0, 1, 0, 0, 0);
  const __m512i w = _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, idx, w));
}

// Stores 32 elements; returns false if a NaN needs the scalar path (bfloat16 only).
ADAMJAX_AVX512_INLINE bool Store32(float* p, __m512 x0, __m512 x1) {
  _mm512_storeu_ps(p, x0);
  _mm512_storeu_ps(p + 16, x1);
  return true;
}
ADAMJAX_AVX512_INLINE bool Store32(Bf16* p, __m512 x0, __m512 x1) {
  // bits + 0x7fff + ((bits >> 16) & 1): round to nearest even (0x8000 where the lsb of
  // the kept half is set).
  const __m512i lsb = _mm512_set1_epi32(0x10000);
  const __m512i bias = _mm512_set1_epi32(0x7fff), bias_odd = _mm512_set1_epi32(0x8000);
  const __m512i b0 = _mm512_castps_si512(x0), b1 = _mm512_castps_si512(x1);
  const __m512i t0 = _mm512_mask_add_epi32(_mm512_add_epi32(b0, bias),
                                           _mm512_test_epi32_mask(b0, lsb), b0, bias_odd);
  const __m512i t1 = _mm512_mask_add_epi32(_mm512_add_epi32(b1, bias),
                                           _mm512_test_epi32_mask(b1, lsb), b1, bias_odd);
  // The high word of each lane of t0, then of t1.
  const __m512i hi = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37,
                                      35, 33, 31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7,
                                      5, 3, 1);
  _mm512_storeu_si512(p, _mm512_permutex2var_epi16(t0, hi, t1));
  const __mmask16 nan0 = _mm512_cmp_ps_mask(x0, x0, _CMP_UNORD_Q);
  const __mmask16 nan1 = _mm512_cmp_ps_mask(x1, x1, _CMP_UNORD_Q);
  return (nan0 | nan1) == 0;
}

template <bool kFma, bool kFromBf16>
ADAMJAX_AVX512_INLINE __m512 Ema(__m512 decay, __m512 old, __m512 w, __m512 x) {
  if constexpr (!kFma) {
    return _mm512_add_ps(_mm512_mul_ps(decay, old), _mm512_mul_ps(w, x));
  } else if constexpr (kFromBf16) {
    return _mm512_fmadd_ps(w, x, _mm512_mul_ps(decay, old));
  } else {
    return _mm512_fmadd_ps(decay, old, _mm512_mul_ps(w, x));
  }
}

ADAMJAX_AVX512_INLINE __m512 MaxNan(__m512 a, __m512 b) {
  __m512 r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_GT_OQ), b, a);
  r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q), r, b);
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), r, a);
}

struct HyperV {
  __m512 neg_lr, b1, omb1, b2, omb2, eps, inv_c1, inv_c2, wd;
};

// One vector of 16: the new m and v (u), and p or g written in place.
template <Algo A, bool kApply, bool kFma, bool kMb, bool kVb>
ADAMJAX_AVX512_INLINE void Math16(const HyperV& h, float* p, const float* q, const float* g,
                                  __m512 m_old, __m512 v_old, __m512* m_new, __m512* v_new) {
  const __m512 gi = _mm512_loadu_ps(g);
  const __m512 mi = Ema<kFma, kMb>(h.b1, m_old, h.omb1, gi);
  __m512 d;
  if constexpr (A != Algo::kAdaMax) {
    const __m512 vi = Ema<kFma, kVb>(h.b2, v_old, h.omb2, _mm512_mul_ps(gi, gi));
    *v_new = vi;
    d = _mm512_div_ps(_mm512_mul_ps(mi, h.inv_c1),
                      _mm512_add_ps(_mm512_sqrt_ps(_mm512_mul_ps(vi, h.inv_c2)), h.eps));
  } else {
    const __m512 ui = MaxNan(_mm512_mul_ps(h.b2, v_old), _mm512_abs_ps(gi));
    *v_new = ui;
    d = _mm512_div_ps(_mm512_mul_ps(mi, h.inv_c1), _mm512_add_ps(ui, h.eps));
  }
  if constexpr (A == Algo::kAdamW) {
    const __m512 pw = _mm512_loadu_ps(kApply ? p : q);
    d = kFma ? _mm512_fmadd_ps(h.wd, pw, d) : _mm512_add_ps(_mm512_mul_ps(h.wd, pw), d);
  }
  *m_new = mi;
  if constexpr (kApply) {
    const __m512 pi = _mm512_loadu_ps(p);
    _mm512_storeu_ps(p, kFma ? _mm512_fmadd_ps(h.neg_lr, d, pi)
                             : _mm512_add_ps(_mm512_mul_ps(h.neg_lr, d), pi));
  } else {
    _mm512_storeu_ps(p, _mm512_mul_ps(h.neg_lr, d));
  }
}

template <Algo A, bool kApply, bool kFma, typename MT, typename VT>
ADAMJAX_AVX512_INLINE void StepLoop(size_t n, float* ADAMJAX_RESTRICT p,
                                    const float* ADAMJAX_RESTRICT q,
                                    const float* ADAMJAX_RESTRICT g, MT* ADAMJAX_RESTRICT m,
                                    VT* ADAMJAX_RESTRICT v, const Hyper h) {
  if constexpr (std::is_same_v<MT, float> && std::is_same_v<VT, float>) {
    ::StepLoop<A, kApply, kFma, MT, VT>(n, p, q, g, m, v, h);  // vectorises well as it is
  } else {
    constexpr bool kMb = std::is_same_v<MT, Bf16>, kVb = std::is_same_v<VT, Bf16>;
    const HyperV hv{_mm512_set1_ps(h.neg_lr), _mm512_set1_ps(h.b1), _mm512_set1_ps(h.omb1),
                    _mm512_set1_ps(h.b2),     _mm512_set1_ps(h.omb2), _mm512_set1_ps(h.eps),
                    _mm512_set1_ps(h.inv_c1), _mm512_set1_ps(h.inv_c2), _mm512_set1_ps(h.wd)};
    constexpr size_t kAhead = 1024;  // elements
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
      // Software prefetch kAhead elements ahead (4 KiB of p and g, 2 KiB of bfloat16
      // state): without it the hardware prefetchers keep too few lines in flight for these
      // streams of two rates, and the step stays well above its 20 bytes per element.
      __builtin_prefetch(m + i + kAhead, 1, 3);
      __builtin_prefetch(v + i + kAhead, 1, 3);
      __builtin_prefetch(p + i + kAhead, 1, 3);
      __builtin_prefetch(p + i + kAhead + 16, 1, 3);
      __builtin_prefetch(g + i + kAhead, 0, 3);
      __builtin_prefetch(g + i + kAhead + 16, 0, 3);
      __m512 m0, m1, v0, v1;
      const __m512 mo0 = Load16(m + i), mo1 = Load16(m + i + 16);
      const __m512 vo0 = Load16(v + i), vo1 = Load16(v + i + 16);
      const float* q0 = q == nullptr ? nullptr : q + i;  // AdamW's update form reads it
      const float* q1 = q == nullptr ? nullptr : q + i + 16;
      Math16<A, kApply, kFma, kMb, kVb>(hv, p + i, q0, g + i, mo0, vo0, &m0, &v0);
      Math16<A, kApply, kFma, kMb, kVb>(hv, p + i + 16, q1, g + i + 16, mo1, vo1, &m1, &v1);
      const bool m_ok = Store32(m + i, m0, m1);
      const bool v_ok = Store32(v + i, v0, v1);
      if (__builtin_expect(!(m_ok && v_ok), 0)) {
        alignas(64) float tmp[32];
        if (!m_ok) {
          _mm512_store_ps(tmp, m0);
          _mm512_store_ps(tmp + 16, m1);
          for (size_t j = 0; j < 32; ++j) Store(m, i + j, tmp[j]);
        }
        if (!v_ok) {
          _mm512_store_ps(tmp, v0);
          _mm512_store_ps(tmp + 16, v1);
          for (size_t j = 0; j < 32; ++j) Store(v, i + j, tmp[j]);
        }
      }
    }
    ::StepLoop<A, kApply, kFma, MT, VT>(n - i, p + i, q == nullptr ? nullptr : q + i, g + i, m + i,
                                        v + i, h);
  }
}

}  // namespace v512
#endif

// The reference "roofline": the same 28 bytes per element as the float32 apply, trivial math.
ADAMJAX_INLINE void RooflineLoop(size_t n, float* ADAMJAX_RESTRICT p,
                                 const float* ADAMJAX_RESTRICT g, float* ADAMJAX_RESTRICT m,
                                 float* ADAMJAX_RESTRICT v) {
  for (size_t i = 0; i < n; ++i) {
    const float gi = g[i];
    m[i] = m[i] + gi;
    v[i] = v[i] + gi;
    p[i] = p[i] + gi;
  }
}

// One entry per (algorithm, mode, m dtype, v dtype) and the roofline, for each ISA.
using StepFn = void (*)(size_t, float*, const float*, const float*, void*, void*,
                        const Hyper&);
using RooflineFn = void (*)(size_t, float*, const float*, float*, float*);

struct KernelTable {
  const char* isa;
  StepFn step[3][2][2][2][2];  // [algo][apply][fma][m is bf16][v is bf16]
  RooflineFn roofline;
};

#define ADAMJAX_DEFINE_ISA(NS, TARGET_ATTR, ISA_NAME, LOOP)                                  \
  namespace NS {                                                                          \
  template <Algo A, bool kApply, bool kFma, typename MT, typename VT>                     \
  TARGET_ATTR void Step(size_t n, float* p, const float* q, const float* g, void* m,       \
                        void* v, const Hyper& h) {                                        \
    LOOP<A, kApply, kFma, MT, VT>(n, p, q, g, static_cast<MT*>(m), static_cast<VT*>(v), h); \
  }                                                                                       \
  TARGET_ATTR void Roofline(size_t n, float* p, const float* g, float* m, float* v) {     \
    RooflineLoop(n, p, g, m, v);                                                          \
  }                                                                                       \
  template <Algo A, bool kApply, bool kFma>                                               \
  void Fill(KernelTable& t) {                                                             \
    const int a = static_cast<int>(A);                                                    \
    t.step[a][kApply][kFma][0][0] = &Step<A, kApply, kFma, float, float>;                 \
    t.step[a][kApply][kFma][0][1] = &Step<A, kApply, kFma, float, Bf16>;                  \
    t.step[a][kApply][kFma][1][0] = &Step<A, kApply, kFma, Bf16, float>;                  \
    t.step[a][kApply][kFma][1][1] = &Step<A, kApply, kFma, Bf16, Bf16>;                   \
  }                                                                                       \
  template <bool kFma>                                                                    \
  void FillAll(KernelTable& t) {                                                          \
    Fill<Algo::kAdam, false, kFma>(t);                                                    \
    Fill<Algo::kAdam, true, kFma>(t);                                                     \
    Fill<Algo::kAdaMax, false, kFma>(t);                                                  \
    Fill<Algo::kAdaMax, true, kFma>(t);                                                   \
    Fill<Algo::kAdamW, false, kFma>(t);                                                   \
    Fill<Algo::kAdamW, true, kFma>(t);                                                    \
  }                                                                                       \
  KernelTable Table() {                                                                   \
    KernelTable t{};                                                                      \
    t.isa = ISA_NAME;                                                                     \
    FillAll<false>(t);                                                                    \
    FillAll<true>(t);                                                                     \
    t.roofline = &Roofline;                                                               \
    return t;                                                                             \
  }                                                                                       \
  }  // namespace NS

ADAMJAX_DEFINE_ISA(isa_base, , "baseline", StepLoop)
#if ADAMJAX_MULTI_ISA
ADAMJAX_DEFINE_ISA(isa_avx2, ADAMJAX_AVX2_TARGET, "avx2", StepLoop)
ADAMJAX_DEFINE_ISA(isa_avx512, ADAMJAX_AVX512_TARGET, "avx512", v512::StepLoop)
#endif

KernelTable SelectTable() {
#if ADAMJAX_MULTI_ISA
  switch (PickIsa()) {
    case Isa::kAvx512:
      return isa_avx512::Table();
    case Isa::kAvx2:
      return isa_avx2::Table();
    case Isa::kBaseline:
      break;
  }
#endif
  return isa_base::Table();
}

const KernelTable& Kernels() {
  static const KernelTable table = SelectTable();
  return table;
}


// ---------------------------------------------------------------------------------------
// FFI handlers.
bool IsStateType(ffi::DataType t) { return t == ffi::DataType::F32 || t == ffi::DataType::BF16; }

ffi::Error CheckSameCount(const char* what, size_t n, size_t expected) {
  if (n != expected) {
    return ffi::Error::InvalidArgument(std::string("adamjax native: ") + what +
                                       " does not have as many elements as grads");
  }
  return ffi::Error::Success();
}

// Rows of hyperparameters -> number of configs, and elements per config.
ffi::Error ConfigLayout(const ffi::Buffer<ffi::F32>& hyper, size_t width, size_t total,
                        size_t* configs, size_t* per_config) {
  const size_t h = hyper.element_count();
  if (h == 0 || h % width != 0) {
    return ffi::Error::InvalidArgument("adamjax native: hyper must hold rows of " +
                                       std::to_string(width) + " floats");
  }
  *configs = h / width;
  if (total % *configs != 0) {
    return ffi::Error::InvalidArgument(
        "adamjax native: the leading (config) axes of params and hyper do not match");
  }
  *per_config = total / *configs;
  return ffi::Error::Success();
}

// Floats per row of hyperparameters.
constexpr size_t HyperWidth(Algo a) { return a == Algo::kAdamW ? kNumHyperW : kNumHyper; }

// One buffer set of a step (a leaf): where the kernel reads and writes, and how.
struct LeafWork {
  float* out;  // params, updated in place (apply), or the updates, written (update)
  const float* q;  // params, read (AdamW's update form), else nullptr
  const float* g;
  char* m;
  char* v;
  size_t n, per_config, mw, vw, start;  // start: offset in the index space of RunLeaves
  StepFn fn;
};

// Validates one leaf's buffers against `hyper`, makes each in-place output hold its input
// (they are the same buffer under input_output_aliases; copied if XLA ever hands over two)
// and describes the work; leaf->n == 0 for an empty leaf, which needs no hyper at all.
// `p_in` is the params (apply, and AdamW's update, which only reads them) or nullptr
// (update: `out` is a fresh updates buffer).
template <Algo A, bool kApply>
ffi::Error PrepareLeaf(const ffi::AnyBuffer* p_in, const ffi::AnyBuffer& g_in,
                       const ffi::AnyBuffer& m_in, const ffi::AnyBuffer& v_in,
                       const ffi::Buffer<ffi::F32>& hyper, bool fma, ffi::AnyBuffer& out,
                       ffi::AnyBuffer& m_out, ffi::AnyBuffer& v_out, LeafWork* leaf) {
  const size_t total = g_in.element_count();
  if (g_in.element_type() != ffi::DataType::F32 || out.element_type() != ffi::DataType::F32 ||
      (p_in != nullptr && p_in->element_type() != ffi::DataType::F32)) {
    return ffi::Error::InvalidArgument("adamjax native: params and grads must be float32");
  }
  if (!IsStateType(m_in.element_type()) || !IsStateType(v_in.element_type()) ||
      m_out.element_type() != m_in.element_type() ||
      v_out.element_type() != v_in.element_type()) {
    return ffi::Error::InvalidArgument("adamjax native: moments must be float32 or bfloat16");
  }
  if (auto e = CheckSameCount("m", m_in.element_count(), total); e.failure()) return e;
  if (auto e = CheckSameCount("v", v_in.element_count(), total); e.failure()) return e;
  if (auto e = CheckSameCount("an output", out.element_count(), total); e.failure()) {
    return e;
  }
  if (p_in != nullptr) {
    if (auto e = CheckSameCount("params", p_in->element_count(), total); e.failure()) return e;
  }
  *leaf = LeafWork{};
  if (total == 0) return ffi::Error::Success();
  size_t configs = 0, per_config = 0;
  if (auto e = ConfigLayout(hyper, HyperWidth(A), total, &configs, &per_config); e.failure()) {
    return e;
  }

  const size_t mw = m_in.element_type() == ffi::DataType::BF16 ? 2 : 4;
  const size_t vw = v_in.element_type() == ffi::DataType::BF16 ? 2 : 4;
  float* o = static_cast<float*>(out.untyped_data());
  char* m = static_cast<char*>(m_out.untyped_data());
  char* v = static_cast<char*>(v_out.untyped_data());
  if (kApply && o != p_in->untyped_data()) std::memcpy(o, p_in->untyped_data(), total * 4);
  if (m != m_in.untyped_data()) std::memcpy(m, m_in.untyped_data(), total * mw);
  if (v != v_in.untyped_data()) std::memcpy(v, v_in.untyped_data(), total * vw);
  const float* q = kApply || p_in == nullptr ? nullptr
                                             : static_cast<const float*>(p_in->untyped_data());
  *leaf = LeafWork{o,
                   q,
                   static_cast<const float*>(g_in.untyped_data()),
                   m,
                   v,
                   total,
                   per_config,
                   mw,
                   vw,
                   0,
                   Kernels().step[static_cast<int>(A)][kApply][fma][mw == 2][vw == 2]};
  return ffi::Error::Success();
}

// Runs the leaves laid end to end in one index space [0, total) (leaf k at w[k].start),
// cut into chunks by the threads, so many small leaves cost one parallel loop; a chunk is
// split where a leaf or a config (a row of hyper, for a vmapped grid) ends.
void RunLeaves(ffi::ThreadPool& pool, const float* rows, size_t width, const LeafWork* w,
               size_t count, size_t total) {
  ParallelFor(pool, total, [=](size_t lo, size_t hi) {
    // The leaf holding lo: the last one that starts at or before it.
    size_t k = static_cast<size_t>(
                   std::upper_bound(w, w + count, lo,
                                    [](size_t x, const LeafWork& l) { return x < l.start; }) -
                   w) -
               1;
    while (lo < hi) {
      const LeafWork& l = w[k];
      size_t a = lo - l.start;
      const size_t b = std::min(hi - l.start, l.n);
      while (a < b) {
        const size_t cfg = a / l.per_config;
        const size_t end = std::min(b, (cfg + 1) * l.per_config);
        l.fn(end - a, l.out + a, l.q == nullptr ? nullptr : l.q + a, l.g + a, l.m + a * l.mw,
             l.v + a * l.vw, LoadHyper(rows + cfg * width, width));
        a = end;
      }
      lo = l.start + b;
      ++k;
    }
  });
}

// Many leaves in one call: operands `hyper`, then per leaf (p, g, m, v) (apply, and AdamW's
// update) or (g, m, v) (update); results per leaf (p, m, v) or (u, m, v). p, m and v are updated in
// place (aliased to their operands by the binding); u is a fresh buffer. All leaves run in
// one RunLeaves loop. `fma`: whether to contract a*b + c into an FMA as XLA's CPU code does.
template <Algo A, bool kApply>
ffi::Error StepImpl(ffi::ThreadPool pool, int32_t fma, ffi::Buffer<ffi::F32> hyper,
                    ffi::RemainingArgs args, ffi::RemainingRets rets) {
  constexpr bool kReadsP = kApply || A == Algo::kAdamW;
  constexpr size_t kIn = kReadsP ? 4 : 3;
  if (args.size() % kIn != 0 || rets.size() * kIn != args.size() * 3) {
    return ffi::Error::InvalidArgument(
        kApply    ? "adamjax native: apply takes (p, g, m, v) per leaf and returns (p, m, v)"
        : kReadsP ? "adamjax native: AdamW's update takes (p, g, m, v) per leaf and returns "
                    "(u, m, v)"
                  : "adamjax native: update takes (g, m, v) per leaf and returns (u, m, v)");
  }
  const size_t leaves = args.size() / kIn;
  std::vector<LeafWork> work;
  work.reserve(leaves);
  size_t total = 0;
  for (size_t k = 0; k < leaves; ++k) {
    const size_t a0 = kIn * k + (kReadsP ? 1 : 0);  // the leaf's gradient operand
    auto g_in = args.get<ffi::AnyBuffer>(a0);
    auto m_in = args.get<ffi::AnyBuffer>(a0 + 1);
    auto v_in = args.get<ffi::AnyBuffer>(a0 + 2);
    auto p_in = args.get<ffi::AnyBuffer>(kReadsP ? kIn * k : a0);
    auto out = rets.get<ffi::AnyBuffer>(3 * k);
    auto m_out = rets.get<ffi::AnyBuffer>(3 * k + 1);
    auto v_out = rets.get<ffi::AnyBuffer>(3 * k + 2);
    if (p_in.has_error() || g_in.has_error() || m_in.has_error() || v_in.has_error() ||
        out.has_error() || m_out.has_error() || v_out.has_error()) {
      return ffi::Error::InvalidArgument("adamjax native: a leaf is not a buffer");
    }
    LeafWork leaf;
    if (auto e = PrepareLeaf<A, kApply>(kReadsP ? &*p_in : nullptr, *g_in, *m_in, *v_in, hyper,
                                        fma != 0, **out, **m_out, **v_out, &leaf);
        e.failure()) {
      return e;
    }
    if (leaf.n == 0) continue;
    leaf.start = total;
    total += leaf.n;
    work.push_back(leaf);
  }
  if (total > 0) {
    RunLeaves(pool, hyper.typed_data(), HyperWidth(A), work.data(), work.size(), total);
  }
  return ffi::Error::Success();
}

ffi::Error RooflineImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> p_in,
                        ffi::Buffer<ffi::F32> g_in, ffi::Buffer<ffi::F32> m_in,
                        ffi::Buffer<ffi::F32> v_in, ffi::Result<ffi::Buffer<ffi::F32>> p_out,
                        ffi::Result<ffi::Buffer<ffi::F32>> m_out,
                        ffi::Result<ffi::Buffer<ffi::F32>> v_out) {
  const size_t total = p_in.element_count();
  if (g_in.element_count() != total || m_in.element_count() != total ||
      v_in.element_count() != total) {
    return ffi::Error::InvalidArgument("adamjax native roofline: sizes differ");
  }
  float* p = p_out->typed_data();
  float* m = m_out->typed_data();
  float* v = v_out->typed_data();
  if (p != p_in.typed_data()) std::memcpy(p, p_in.typed_data(), total * 4);
  if (m != m_in.typed_data()) std::memcpy(m, m_in.typed_data(), total * 4);
  if (v != v_in.typed_data()) std::memcpy(v, v_in.typed_data(), total * 4);
  const float* g = g_in.typed_data();
  const RooflineFn fn = Kernels().roofline;
  ParallelFor(pool, total, [=](size_t lo, size_t hi) {
    fn(hi - lo, p + lo, g + lo, m + lo, v + lo);
  });
  return ffi::Error::Success();
}

}  // namespace

// The step targets: (hyper, leaves...) -> (outputs per leaf), attribute `fma`. AdamW's
// hyper rows hold 9 floats (weight_decay last), the others' 8. (The
// binding passes a few dozen leaves per call: XLA's compile time grows faster than linearly
// with the number of aliased results of one call.)
#define ADAMJAX_STEP_BINDING ADAMJAX_BIND_STEP_HEAD.RemainingArgs().RemainingRets()

ADAMJAX_DEFINE_STEP_PAIR(AdamjaxAdamApply, AdamjaxAdamUpdate, StepImpl, Algo::kAdam,
                         ADAMJAX_STEP_BINDING);
ADAMJAX_DEFINE_STEP_PAIR(AdamjaxAdamaxApply, AdamjaxAdamaxUpdate, StepImpl, Algo::kAdaMax,
                         ADAMJAX_STEP_BINDING);
ADAMJAX_DEFINE_STEP_PAIR(AdamjaxAdamwApply, AdamjaxAdamwUpdate, StepImpl, Algo::kAdamW,
                         ADAMJAX_STEP_BINDING);
// Benchmarks only (benchmarks/): the memory roofline of a float32 step, p, m, v += g.
XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamjaxRoofline, RooflineImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// Plain C entry points for diagnostics (loaded with ctypes).
extern "C" __attribute__((visibility("default"))) const char* AdamjaxNativeIsa() {
  return Kernels().isa;
}
