// Fused Adam and AdaMax steps with 8-bit block-wise quantized moments, for the CPU, bound
// to JAX through the XLA FFI.
//
// State format (adamjax/quantize.py; Dettmers et al., "8-bit Optimizers via Block-wise
// Quantization", ICLR 2022): each moment is cut into blocks of kBlock consecutive elements;
// a block stores one float32 scale (its absolute maximum) and one byte per element, an
// index into a 256-entry code (signed dynamic code for m, unsigned for v). Per block, in
// one pass while the block sits in L1:
//
//   decode   m = table_m[code] * scale_m,  v = table_v[code] * scale_v
//   step     the float32 math of adam_ffi.cc (m, v EMAs; d = m / (sqrt(v) + eps); p or u)
//   encode   scale = absmax of the new block (NaN if it holds a NaN or Inf); each element
//            x * (1 / safe_scale), clipped to [-1, 1], to the index of the nearest code
//            entry, found analytically (decade by comparisons, then a rounded even grid);
//            a non-zero v is stored as at least index 1.
//
// The operations are those XLA's CPU compiler runs for the pure-JAX chain
// (adamjax.quantize.quantize and dequantize inside the composed Adam chain), so that the
// parameters, codes and scales are the same bit for bit: XLA rewrites `x / broadcast(s)`
// into `x * broadcast(1 / s)` and `(s - 0.1) / 0.9` into `(s + -0.1) * (1 / 0.9f)`; with
// FMA contraction (attribute `fma`) LLVM fuses the gradient's product into the moment EMAs,
// `fma(1 - b, g, b * decoded)` (the decoded moment is itself a product), and `p + (-lr) * d`
// into one FMA. The decode tables are operands, computed by adamjax.quantize with the
// expressions its decode uses. adamjax.lowering checks all of this against the chain once,
// before the first 8-bit step.
//
// Parallel over blocks (many leaves and vmapped configs in one index space), on the
// calling thread and XLA's intra-op pool; the loops are compiled for AVX-512, AVX2 and
// baseline x86-64 and picked once, as in adam_ffi.cc.

#include <limits>
#include <optional>

#include "kernel_common.h"

namespace {

using namespace adamjax_native;  // NOLINT: this file is a kernel that header serves

constexpr size_t kBlock = 2048;         // elements per block (adamjax.quantize.BLOCK_SIZE)
constexpr size_t kTable = 256;          // entries of each decode table
constexpr uint8_t kSignedZero = 127;    // index of 0 in the signed code
constexpr uint8_t kUnsignedZero = 0;    // index of 0 in the unsigned code
constexpr size_t kBlocksPerChunk = 32;  // blocks claimed at a time by a thread (64 Ki elements)
constexpr size_t kSerialBlocks = 64;    // fewer blocks than this run on the caller only

// 10**-j and 10**j as float32 (the constants of adamjax.quantize._nearest_magnitude).
constexpr float kTenToMinus[8] = {1.0f, 1e-1f, 1e-2f, 1e-3f, 1e-4f, 1e-5f, 1e-6f, 1e-7f};
constexpr float kTenTo[8] = {1.0f, 1e1f, 1e2f, 1e3f, 1e4f, 1e5f, 1e6f, 1e7f};
// (s - 0.1) / 0.9 as XLA computes it: (s + -0.1f) * (1.0f / 0.9f), the reciprocal rounded
// to float32.
constexpr float kMinusTenth = -0.1f;
constexpr float kInvNineTenths = 1.0f / 0.9f;

enum class Algo { kAdam, kAdaMax };

ADAMJAX_INLINE uint32_t AbsBits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b & 0x7fffffffu;
}

ADAMJAX_INLINE float FromBits(uint32_t b) {
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

// Index of the code magnitude nearest to a in [0, 1] (or NaN), with kBits bits of
// magnitude: 0, and for each decade e < kBits, n = 2**(kBits-1-e) points
// 10**-e * (0.1 + 0.9 (k+1)/n) at indices n + k. As quantize.py: the decade by comparisons,
// the point by rounding on the decade's even grid (clipped to the decade, its lower end
// being the last point of the decade below), the lowest decade against its midpoint.
// float -> int32 maps NaN to 0 as XLA's convert does.
template <int kBits>
ADAMJAX_INLINE int NearestMagnitude(float a) {
  int e = 0;
  float scaled = a;
  for (int j = 1; j < kBits; ++j) {
    const bool below = a <= kTenToMinus[j];
    e += below ? 1 : 0;
    scaled = below ? a * kTenTo[j] : scaled;
  }
  const int n = 1 << (kBits - 1 - e);
  // (q * n) is exact (n a power of two), so an FMA here would round the same.
  const float r = std::nearbyint((scaled + kMinusTenth) * kInvNineTenths * static_cast<float>(n) +
                                 -1.0f);
  int k = r == r ? static_cast<int>(r) : 0;
  k = std::min(n - 1, std::max(-1, k));
  if (e == kBits - 1) k = scaled < 0.5f ? -1 : 0;
  return n + k;
}

// Codes of one block from its new values x[0, len) (the rest of the block is padding,
// stored as the code of 0); returns the block's scale. maxbits: the largest |x| as bits
// (>= 0x7f800000 when the block holds an Inf or a NaN).
template <bool kSigned>
ADAMJAX_INLINE float EncodeBlock(size_t len, const float* ADAMJAX_RESTRICT x, uint32_t maxbits,
                                 uint8_t* ADAMJAX_RESTRICT codes) {
  const bool finite = maxbits < 0x7f800000u;
  const float absmax = FromBits(maxbits);
  const float safe = (finite && absmax > 0.0f) ? absmax : 1.0f;
  const float inv = 1.0f / safe;
  for (size_t i = 0; i < len; ++i) {
    float y = x[i] * inv;
    y = y < -1.0f ? -1.0f : y;  // clip, NaN kept
    y = y > 1.0f ? 1.0f : y;
    int idx;
    if constexpr (kSigned) {
      const int mag = NearestMagnitude<7>(std::fabs(y));
      idx = y < 0.0f ? kSignedZero - mag : kSignedZero + mag;
    } else {
      const int mag = NearestMagnitude<8>(std::fabs(y));
      idx = y > 0.0f ? std::max(mag, 1) : 0;  // a non-zero v never rounds to 0
    }
    codes[i] = static_cast<uint8_t>(idx);
  }
  std::memset(codes + len, kSigned ? kSignedZero : kUnsignedZero, kBlock - len);
  return finite ? absmax : std::numeric_limits<float>::quiet_NaN();
}

// One block: len <= kBlock elements of out (params in place, or the update), g; the block's
// codes and scale of m and v, decoded, stepped and encoded in place.
template <Algo A, bool kApply, bool kFma>
ADAMJAX_INLINE void StepBlock(size_t len, float* ADAMJAX_RESTRICT out,
                              const float* ADAMJAX_RESTRICT g, uint8_t* ADAMJAX_RESTRICT mc,
                              float* ms, uint8_t* ADAMJAX_RESTRICT vc, float* vs,
                              const float* ADAMJAX_RESTRICT mt, const float* ADAMJAX_RESTRICT vt,
                              const Hyper& h) {
  alignas(64) float mn[kBlock];
  alignas(64) float vn[kBlock];
  const float m_scale = *ms, v_scale = *vs;
  const float neg_lr = h.neg_lr, b1 = h.b1, omb1 = h.omb1, b2 = h.b2, omb2 = h.omb2,
              eps = h.eps, inv_c1 = h.inv_c1, inv_c2 = h.inv_c2;
  uint32_t m_max = 0, v_max = 0;
  for (size_t i = 0; i < len; ++i) {
    const float gi = g[i];
    const float m_old = mt[mc[i]] * m_scale;  // dequantize
    const float v_old = vt[vc[i]] * v_scale;
    const float mi = kFma ? std::fma(omb1, gi, b1 * m_old) : b1 * m_old + omb1 * gi;
    float vi, d;
    if constexpr (A == Algo::kAdam) {
      const float g2 = gi * gi;
      vi = kFma ? std::fma(omb2, g2, b2 * v_old) : b2 * v_old + omb2 * g2;
      d = (mi * inv_c1) / (std::sqrt(vi * inv_c2) + eps);  // bias_correct, precondition
    } else {
      vi = MaxNan(b2 * v_old, std::fabs(gi));
      d = (mi * inv_c1) / (vi + eps);
    }
    if constexpr (kApply) {
      out[i] = kFma ? std::fma(neg_lr, d, out[i]) : out[i] + neg_lr * d;
    } else {
      out[i] = neg_lr * d;
    }
    mn[i] = mi;
    vn[i] = vi;
    m_max = std::max(m_max, AbsBits(mi));
    v_max = std::max(v_max, AbsBits(vi));
  }
  *ms = EncodeBlock<true>(len, mn, m_max, mc);
  *vs = EncodeBlock<false>(len, vn, v_max, vc);
}

#if ADAMJAX_MULTI_ISA
// ---------------------------------------------------------------------------------------
// AVX-512 block, written with intrinsics (GCC does not vectorise the loops above: the
// byte-indexed table reads and the encoder's selects defeat it). The same operations in
// the same order as StepBlock and EncodeBlock, 16 elements at a time; the last len % 16
// elements of a block run through the scalar code.
#define ADAMJAX_Q512_INLINE ADAMJAX_AVX512_TARGET inline __attribute__((always_inline))

namespace q512 {

// The decade by the binade instead of kBits - 1 comparisons: a in [2**-b, 2**(1-b)) lies
// below every threshold 10**-j >= 2**(1-b) and above every one < 2**-b; at most one
// threshold lies inside the binade (they are a factor 10 apart), so e is a count looked up
// by b plus one comparison, the same count as the chain's comparisons (b >= 31 holds 0 and
// lies below every threshold; a NaN lies below none: e = 0).
template <int kBits>
struct DecadeTables {
  alignas(64) int32_t base[32];
  alignas(64) float threshold[32];  // -1 where no threshold lies in the binade
  alignas(64) float ten_to[16];     // 10**e for e < kBits (1 for e = 0)
  DecadeTables() {
    for (int b = 0; b < 32; ++b) {
      const float lo = std::ldexp(1.0f, -b), hi = std::ldexp(1.0f, 1 - b);
      base[b] = 0;
      threshold[b] = -1.0f;
      for (int j = 1; j < kBits; ++j) {
        if (kTenToMinus[j] >= hi || b == 31) ++base[b];
        else if (kTenToMinus[j] >= lo) threshold[b] = kTenToMinus[j];
      }
    }
    for (int e = 0; e < 16; ++e) ten_to[e] = e < kBits ? kTenTo[e] : 1.0f;
  }
};

template <int kBits>
const DecadeTables<kBits>& Decades() {
  static const DecadeTables<kBits> t;
  return t;
}

// kFinite: a is known to be a number (a block without NaN or Inf), the NaN masks are skipped.
template <int kBits, bool kFinite>
ADAMJAX_Q512_INLINE __m512i NearestMagnitude16(__m512 a, const DecadeTables<kBits>& t) {
  const __m512i one = _mm512_set1_epi32(1);
  // b = min(-floor(log2 a), 31); a = 0: getexp gives -inf, so b = 31.
  const __m512 neg_exp = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_getexp_ps(a));
  const __m512i b = _mm512_cvttps_epi32(_mm512_min_ps(neg_exp, _mm512_set1_ps(31.0f)));
  const __m512i base = _mm512_permutex2var_epi32(_mm512_load_si512(t.base), b,
                                                  _mm512_load_si512(t.base + 16));
  const __m512 thr = _mm512_permutex2var_ps(_mm512_load_ps(t.threshold), b,
                                            _mm512_load_ps(t.threshold + 16));
  __m512i e = _mm512_mask_add_epi32(base, _mm512_cmp_ps_mask(a, thr, _CMP_LE_OQ), base, one);
  if constexpr (!kFinite) {
    const __mmask16 nan = _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
    e = _mm512_maskz_mov_epi32(static_cast<__mmask16>(~nan), e);
  }
  const __m512 scaled = _mm512_mul_ps(a, _mm512_permutexvar_ps(e, _mm512_load_ps(t.ten_to)));
  const __m512i n = _mm512_sllv_epi32(one, _mm512_sub_epi32(_mm512_set1_epi32(kBits - 1), e));
  const __m512 q = _mm512_mul_ps(
      _mm512_mul_ps(_mm512_add_ps(scaled, _mm512_set1_ps(kMinusTenth)),
                    _mm512_set1_ps(kInvNineTenths)),
      _mm512_cvtepi32_ps(n));
  const __m512 r = _mm512_roundscale_ps(_mm512_add_ps(q, _mm512_set1_ps(-1.0f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512i minus_one = _mm512_set1_epi32(-1);
  __m512i k;
  if constexpr (kFinite) {
    k = _mm512_cvttps_epi32(r);
  } else {
    const __mmask16 r_nan = _mm512_cmp_ps_mask(r, r, _CMP_UNORD_Q);
    k = _mm512_maskz_cvttps_epi32(static_cast<__mmask16>(~r_nan), r);  // NaN -> 0
  }
  k = _mm512_min_epi32(_mm512_sub_epi32(n, one), _mm512_max_epi32(minus_one, k));
  const __mmask16 lowest = _mm512_cmpeq_epi32_mask(e, _mm512_set1_epi32(kBits - 1));
  const __mmask16 low_half = _mm512_cmp_ps_mask(scaled, _mm512_set1_ps(0.5f), _CMP_LT_OQ);
  const __m512i k_low = _mm512_maskz_mov_epi32(low_half, minus_one);
  k = _mm512_mask_mov_epi32(k, lowest, k_low);
  return _mm512_add_epi32(n, k);
}

// The magnitude index as a step function of a's bits, for a in [0, 1]: every operation of
// NearestMagnitude is monotone in a within a decade and the decade falls as a grows, so the
// index never decreases with a (checked for every float in [0, 1] against
// NearestMagnitude16 when this was written) and is fixed by its thresholds. Bucketed by the
// top 16 bits of a (exponent and 7 mantissa bits: finer than the code's densest spacing,
// so at most one threshold per bucket), from kFirstBucket (2**-25: every smaller a has
// index 0, and is looked up, clamped, in bucket 0) to the bucket of 1. One 32-bit entry
// per bucket, so that the index is (entry + bits) >> 17:
//   entry = (index at the bucket's start << 17) + 0x20000 - t - (top 16 bits << 16),
// t the low 16 bits of the first a with the next index (0x10000 where the bucket holds no
// step): the sum is (index << 17) + 0x20000 - t + (low 16 bits of a), modulo 2**32, which
// carries into bit 17 exactly when a >= the threshold. Built from the scalar
// NearestMagnitude; `ok` is false if some bucket holds more than one step (then the
// analytic NearestMagnitude16 runs).
constexpr uint32_t kFirstBucket = (127 - 25) << 7;
constexpr uint32_t kBuckets = (0x3f800000u >> 16) - kFirstBucket + 1;

template <int kBits>
struct StepTable {
  alignas(64) uint32_t entry[kBuckets];
  bool ok = true;
  StepTable() {
    for (uint32_t b = 0; b < kBuckets; ++b) {
      const uint32_t top = b + kFirstBucket;
      const uint32_t lo = b == 0 ? 0 : top << 16;
      const uint32_t hi = std::min<uint32_t>((top << 16) | 0xffffu, 0x3f800000u);
      const int f_lo = NearestMagnitude<kBits>(FromBits(lo));
      const int f_hi = NearestMagnitude<kBits>(FromBits(hi));
      uint32_t t = 0x10000u;
      if (f_hi != f_lo) {
        uint32_t x = lo, z = hi;  // f(x) = f_lo, f(z) = f_hi: z ends as the first with f_hi
        while (z - x > 1) {
          const uint32_t mid = x + (z - x) / 2;
          (NearestMagnitude<kBits>(FromBits(mid)) == f_lo ? x : z) = mid;
        }
        ok = ok && f_hi == f_lo + 1 && (z >> 16) == top;
        t = z & 0xffffu;
      }
      entry[b] = (static_cast<uint32_t>(f_lo) << 17) + 0x20000u - t - (top << 16);
    }
  }
};

template <int kBits>
const StepTable<kBits>& Steps() {
  static const StepTable<kBits> t;
  return t;
}

// NearestMagnitude16 for a in [0, 1] by its StepTable.
ADAMJAX_Q512_INLINE __m512i MagnitudeByTable16(__m512 a, const uint32_t* entries) {
  const __m512i bits = _mm512_max_epi32(_mm512_castps_si512(a),
                                        _mm512_set1_epi32(static_cast<int>(kFirstBucket << 16)));
  const __m512i e = _mm512_i32gather_epi32(_mm512_srli_epi32(bits, 16),
                                           entries - kFirstBucket, 4);
  return _mm512_srli_epi32(_mm512_add_epi32(e, bits), 17);
}

// Codes of x[0, n) (n a multiple of 16) of a finite block, scaled by inv (finite), by the
// StepTable: the clip and |.| in one range operation (min(|y|, 1), sign cleared).
template <bool kSigned>
ADAMJAX_Q512_INLINE void EncodeVectorsByTable(size_t from, size_t n, const float* x,
                                              float inv_s, const uint32_t* entries,
                                              uint8_t* codes) {
  const __m512 inv = _mm512_set1_ps(inv_s), one = _mm512_set1_ps(1.0f);
  for (size_t i = from; i < n; i += 16) {
    const __m512 y = _mm512_mul_ps(_mm512_loadu_ps(x + i), inv);
    const __m512i mag = MagnitudeByTable16(_mm512_range_ps(y, one, 0x0a), entries);
    __m512i idx;
    if constexpr (kSigned) {
      const __m512i z = _mm512_set1_epi32(kSignedZero);
      const __mmask16 neg = _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_LT_OQ);
      idx = _mm512_mask_sub_epi32(_mm512_add_epi32(z, mag), neg, z, mag);
    } else {
      const __mmask16 pos = _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GT_OQ);
      idx = _mm512_maskz_max_epi32(pos, mag, _mm512_set1_epi32(1));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), _mm512_cvtepi32_epi8(idx));
  }
}

// Codes of x[0, n) (n a multiple of 16), scaled by inv. kFinite: no NaN in x * inv (the
// block is finite), so the clip is a min and a max.
template <bool kSigned, bool kFinite>
ADAMJAX_Q512_INLINE void EncodeVectors(size_t from, size_t n, const float* x, float inv_s,
                                       uint8_t* codes) {
  const __m512 inv = _mm512_set1_ps(inv_s);
  const __m512 lo = _mm512_set1_ps(-1.0f), hi = _mm512_set1_ps(1.0f);
  const __m512 zero = _mm512_setzero_ps();
  if constexpr (kFinite) {
    const auto& steps = Steps<kSigned ? 7 : 8>();
    if (steps.ok) return EncodeVectorsByTable<kSigned>(from, n, x, inv_s, steps.entry, codes);
  }
  const auto& decades = Decades<kSigned ? 7 : 8>();
  for (size_t i = from; i < n; i += 16) {
    __m512 y = _mm512_mul_ps(_mm512_loadu_ps(x + i), inv);
    if constexpr (kFinite) {
      y = _mm512_min_ps(_mm512_max_ps(y, lo), hi);
    } else {
      y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(y, lo, _CMP_LT_OQ), lo);  // NaN kept
      y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(y, hi, _CMP_GT_OQ), hi);
    }
    const __m512 a = _mm512_abs_ps(y);
    __m512i idx;
    if constexpr (kSigned) {
      const __m512i mag = NearestMagnitude16<7, kFinite>(a, decades);
      const __m512i z = _mm512_set1_epi32(kSignedZero);
      const __mmask16 neg = _mm512_cmp_ps_mask(y, zero, _CMP_LT_OQ);
      idx = _mm512_mask_sub_epi32(_mm512_add_epi32(z, mag), neg, z, mag);
    } else {
      const __m512i mag = NearestMagnitude16<8, kFinite>(a, decades);
      const __mmask16 pos = _mm512_cmp_ps_mask(y, zero, _CMP_GT_OQ);
      idx = _mm512_maskz_max_epi32(pos, mag, _mm512_set1_epi32(1));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), _mm512_cvtepi32_epi8(idx));
  }
}

// The encoder's per-block numbers: 1 / safe scale, and whether the fast (finite) loop
// applies. (1 / safe overflows for a subnormal maximum when denormals are not flushed:
// then 0 * inf is NaN, as in the chain, and the NaN-aware loop runs.)
struct BlockScale {
  bool finite, fast;
  float absmax, inv;
};

ADAMJAX_Q512_INLINE BlockScale ScaleOf(uint32_t maxbits) {
  BlockScale b;
  b.finite = maxbits < 0x7f800000u;
  b.absmax = FromBits(maxbits);
  const float safe = (b.finite && b.absmax > 0.0f) ? b.absmax : 1.0f;
  b.inv = 1.0f / safe;
  b.fast = b.finite && b.inv <= std::numeric_limits<float>::max();
  return b;
}

// Codes of a block of len new values x; the first `done` (a multiple of 16, 0 unless the
// block takes the fast loop) are already written. Returns the block's scale.
template <bool kSigned>
ADAMJAX_Q512_INLINE float EncodeBlock(size_t len, const float* x, uint32_t maxbits,
                                      uint8_t* codes, size_t done = 0) {
  const BlockScale b = ScaleOf(maxbits);
  const float inv_s = b.inv;
  size_t i = len & ~size_t{15};
  if (b.fast) {
    EncodeVectors<kSigned, true>(done, i, x, inv_s, codes);
  } else {
    EncodeVectors<kSigned, false>(0, i, x, inv_s, codes);
  }
  for (; i < len; ++i) {
    float y = x[i] * inv_s;
    y = y < -1.0f ? -1.0f : y;
    y = y > 1.0f ? 1.0f : y;
    int idx;
    if constexpr (kSigned) {
      const int mag = NearestMagnitude<7>(std::fabs(y));
      idx = y < 0.0f ? kSignedZero - mag : kSignedZero + mag;
    } else {
      const int mag = NearestMagnitude<8>(std::fabs(y));
      idx = y > 0.0f ? std::max(mag, 1) : 0;
    }
    codes[i] = static_cast<uint8_t>(idx);
  }
  std::memset(codes + len, kSigned ? kSignedZero : kUnsignedZero, kBlock - len);
  return b.finite ? b.absmax : std::numeric_limits<float>::quiet_NaN();
}

// A stepped block whose new moments (in a staging buffer) wait to be encoded: the next
// block's step loop encodes them 16 at a time between its own vectors, so that the
// encoder's arithmetic fills the time the step spends waiting for memory and the divider.
struct Pending {
  const float* m = nullptr;
  const float* v = nullptr;
  size_t len = 0;
  uint32_t m_top = 0, v_top = 0;
  uint8_t* mc = nullptr;
  float* ms = nullptr;
  uint8_t* vc = nullptr;
  float* vs = nullptr;
};

// Encodes what is left of `p` (its first m_done / v_done elements are encoded) and its
// scales; empties it.
ADAMJAX_Q512_INLINE void Finish(Pending* p, size_t m_done, size_t v_done) {
  if (p->m == nullptr) return;
  *p->ms = EncodeBlock<true>(p->len, p->m, p->m_top, p->mc, m_done);
  *p->vs = EncodeBlock<false>(p->len, p->v, p->v_top, p->vc, v_done);
  *p = Pending{};
}

ADAMJAX_Q512_INLINE __m512 Decode16(const uint8_t* c, const float* table, __m512 scale) {
  const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c)));
  return _mm512_mul_ps(_mm512_i32gather_ps(idx, table, 4), scale);
}

ADAMJAX_Q512_INLINE __m512 MaxNan16(__m512 a, __m512 b) {
  __m512 r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_GT_OQ), b, a);
  r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q), r, b);
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), r, a);
}

// Steps one block (its new moments to mn, vn, left pending) while encoding the pending
// previous block `prev` (then finished; this block becomes `prev`).
template <Algo A, bool kApply, bool kFma>
ADAMJAX_Q512_INLINE void StepBlock(size_t len, float* ADAMJAX_RESTRICT out,
                                   const float* ADAMJAX_RESTRICT g, uint8_t* ADAMJAX_RESTRICT mc,
                                   float* ms, uint8_t* ADAMJAX_RESTRICT vc, float* vs,
                                   const float* ADAMJAX_RESTRICT mt,
                                   const float* ADAMJAX_RESTRICT vt, const Hyper& h,
                                   float* ADAMJAX_RESTRICT mn, float* ADAMJAX_RESTRICT vn,
                                   Pending* prev) {
  const float m_scale = *ms, v_scale = *vs;
  // The previous block's vectors that the fast (finite) encoder takes here.
  const BlockScale pm = ScaleOf(prev->m_top), pv = ScaleOf(prev->v_top);
  const size_t pvec = prev->len & ~size_t{15};
  const size_t pm_n = prev->m != nullptr && pm.fast ? pvec : 0;
  const size_t pv_n = prev->m != nullptr && pv.fast ? pvec : 0;
  const __m512 msc = _mm512_set1_ps(m_scale), vsc = _mm512_set1_ps(v_scale);
  const __m512 neg_lr = _mm512_set1_ps(h.neg_lr), b1 = _mm512_set1_ps(h.b1),
               omb1 = _mm512_set1_ps(h.omb1), b2 = _mm512_set1_ps(h.b2),
               omb2 = _mm512_set1_ps(h.omb2), eps = _mm512_set1_ps(h.eps),
               inv_c1 = _mm512_set1_ps(h.inv_c1), inv_c2 = _mm512_set1_ps(h.inv_c2);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  __m512i m_max = _mm512_setzero_si512(), v_max = _mm512_setzero_si512();
  size_t i = 0;
  for (; i + 16 <= len; i += 16) {
    // The next block's streams, while this one is stepped and encoded: the encoder reads
    // only L1, and without these the hardware prefetchers restart at every block.
    __builtin_prefetch(out + i + kBlock, 1, 3);
    __builtin_prefetch(g + i + kBlock, 0, 3);
    if ((i & 63) == 0) {
      __builtin_prefetch(mc + i + kBlock, 1, 3);
      __builtin_prefetch(vc + i + kBlock, 1, 3);
    }
    const __m512 gi = _mm512_loadu_ps(g + i);
    const __m512 m_old = Decode16(mc + i, mt, msc);
    const __m512 v_old = Decode16(vc + i, vt, vsc);
    const __m512 mi = kFma ? _mm512_fmadd_ps(omb1, gi, _mm512_mul_ps(b1, m_old))
                           : _mm512_add_ps(_mm512_mul_ps(b1, m_old), _mm512_mul_ps(omb1, gi));
    __m512 vi, d;
    if constexpr (A == Algo::kAdam) {
      const __m512 g2 = _mm512_mul_ps(gi, gi);
      vi = kFma ? _mm512_fmadd_ps(omb2, g2, _mm512_mul_ps(b2, v_old))
                : _mm512_add_ps(_mm512_mul_ps(b2, v_old), _mm512_mul_ps(omb2, g2));
      d = _mm512_div_ps(_mm512_mul_ps(mi, inv_c1),
                        _mm512_add_ps(_mm512_sqrt_ps(_mm512_mul_ps(vi, inv_c2)), eps));
    } else {
      vi = MaxNan16(_mm512_mul_ps(b2, v_old), _mm512_abs_ps(gi));
      d = _mm512_div_ps(_mm512_mul_ps(mi, inv_c1), _mm512_add_ps(vi, eps));
    }
    if constexpr (kApply) {
      const __m512 pi = _mm512_loadu_ps(out + i);
      _mm512_storeu_ps(out + i, kFma ? _mm512_fmadd_ps(neg_lr, d, pi)
                                     : _mm512_add_ps(pi, _mm512_mul_ps(neg_lr, d)));
    } else {
      _mm512_storeu_ps(out + i, _mm512_mul_ps(neg_lr, d));
    }
    _mm512_store_ps(mn + i, mi);
    _mm512_store_ps(vn + i, vi);
    m_max = _mm512_max_epu32(m_max, _mm512_and_si512(_mm512_castps_si512(mi), abs_mask));
    v_max = _mm512_max_epu32(v_max, _mm512_and_si512(_mm512_castps_si512(vi), abs_mask));
    if (i < pm_n) EncodeVectors<true, true>(i, i + 16, prev->m, pm.inv, prev->mc);
    if (i < pv_n) EncodeVectors<false, true>(i, i + 16, prev->v, pv.inv, prev->vc);
  }
  Finish(prev, std::min(i, pm_n), std::min(i, pv_n));
  uint32_t m_top = _mm512_reduce_max_epu32(m_max), v_top = _mm512_reduce_max_epu32(v_max);
  for (; i < len; ++i) {  // the tail, as StepBlock
    const float gi = g[i];
    const float m_old = mt[mc[i]] * m_scale;
    const float v_old = vt[vc[i]] * v_scale;
    const float mi = kFma ? std::fma(h.omb1, gi, h.b1 * m_old) : h.b1 * m_old + h.omb1 * gi;
    float vi, d;
    if constexpr (A == Algo::kAdam) {
      const float g2 = gi * gi;
      vi = kFma ? std::fma(h.omb2, g2, h.b2 * v_old) : h.b2 * v_old + h.omb2 * g2;
      d = (mi * h.inv_c1) / (std::sqrt(vi * h.inv_c2) + h.eps);
    } else {
      vi = MaxNan(h.b2 * v_old, std::fabs(gi));
      d = (mi * h.inv_c1) / (vi + h.eps);
    }
    if constexpr (kApply) {
      out[i] = kFma ? std::fma(h.neg_lr, d, out[i]) : out[i] + h.neg_lr * d;
    } else {
      out[i] = h.neg_lr * d;
    }
    mn[i] = mi;
    vn[i] = vi;
    m_top = std::max(m_top, AbsBits(mi));
    v_top = std::max(v_top, AbsBits(vi));
  }
  prev->m = mn;
  prev->v = vn;
  prev->len = len;
  prev->m_top = m_top;
  prev->v_top = v_top;
  prev->mc = mc;
  prev->ms = ms;
  prev->vc = vc;
  prev->vs = vs;
}

}  // namespace q512
#endif

// One leaf of a call: per config (a row of hyper), `size` elements in `blocks` blocks.
struct QLeaf {
  float* out;
  const float* g;
  uint8_t* mc;
  float* ms;
  uint8_t* vc;
  float* vs;
  size_t size, blocks, start;  // start: first block in the index space of the call
};

// Blocks [lo, hi) of the call's index space (leaf k holds the first), in order.
using ChunkFn = void (*)(const QLeaf*, size_t, size_t, size_t, const float*, const float*,
                         const float*);

// Where block j (in [0, configs * blocks)) of leaf l lives: its length, first element,
// config.
struct BlockAt {
  size_t len, first_elem, cfg;
};

ADAMJAX_INLINE BlockAt Locate(const QLeaf& l, size_t j) {
  const size_t cfg = j / l.blocks, b = j % l.blocks;
  const size_t first = b * kBlock;
  const size_t len = l.size > first ? std::min(kBlock, l.size - first) : 0;
  return BlockAt{len, cfg * l.size + first, cfg};
}

ADAMJAX_INLINE size_t LeafOf(const QLeaf* w, size_t count, size_t j) {
  return static_cast<size_t>(std::upper_bound(w, w + count, j,
                                              [](size_t x, const QLeaf& l) {
                                                return x < l.start;
                                              }) -
                             w) -
         1;
}

// The scalar variants step and encode one block after another; the AVX-512 one encodes
// each block while stepping the next (q512::Pending), with two staging buffers.
#define ADAMJAX_DEFINE_QISA(NS, TARGET_ATTR, PIPELINED)                                     \
  namespace NS {                                                                          \
  template <Algo A, bool kApply, bool kFma>                                               \
  TARGET_ATTR void Run(const QLeaf* w, size_t count, size_t lo, size_t hi,                \
                       const float* rows, const float* mt, const float* vt) {             \
    size_t k = LeafOf(w, count, lo);                                                      \
    ADAMJAX_QSTATE_##PIPELINED                                                            \
    for (size_t j = lo; j < hi; ++j) {                                                    \
      while (k + 1 < count && j >= w[k + 1].start) ++k;                                   \
      const QLeaf& l = w[k];                                                              \
      const size_t jj = j - l.start;                                                      \
      const BlockAt at = Locate(l, jj);                                                   \
      ADAMJAX_QSTEP_##PIPELINED(l.out + at.first_elem, l.g + at.first_elem,               \
                                l.mc + jj * kBlock, l.ms + jj, l.vc + jj * kBlock,        \
                                l.vs + jj, LoadHyper(rows + at.cfg * kNumHyper));         \
    }                                                                                     \
    ADAMJAX_QEND_##PIPELINED                                                              \
  }                                                                                       \
  inline void Fill(ChunkFn (&t)[2][2][2]) {                                               \
    t[0][0][0] = &Run<Algo::kAdam, false, false>;                                         \
    t[0][0][1] = &Run<Algo::kAdam, false, true>;                                          \
    t[0][1][0] = &Run<Algo::kAdam, true, false>;                                          \
    t[0][1][1] = &Run<Algo::kAdam, true, true>;                                           \
    t[1][0][0] = &Run<Algo::kAdaMax, false, false>;                                       \
    t[1][0][1] = &Run<Algo::kAdaMax, false, true>;                                        \
    t[1][1][0] = &Run<Algo::kAdaMax, true, false>;                                        \
    t[1][1][1] = &Run<Algo::kAdaMax, true, true>;                                         \
  }                                                                                       \
  }  // namespace NS

#define ADAMJAX_QSTATE_SERIAL
#define ADAMJAX_QSTEP_SERIAL(out, g, mc, ms, vc, vs, h) \
  StepBlock<A, kApply, kFma>(at.len, out, g, mc, ms, vc, vs, mt, vt, h)
#define ADAMJAX_QEND_SERIAL
#define ADAMJAX_QSTATE_PIPELINED     \
  alignas(64) float stage[2][2][kBlock]; \
  q512::Pending prev;
#define ADAMJAX_QSTEP_PIPELINED(out, g, mc, ms, vc, vs, h)                                  \
  q512::StepBlock<A, kApply, kFma>(at.len, out, g, mc, ms, vc, vs, mt, vt, h,               \
                                   stage[j & 1][0], stage[j & 1][1], &prev)
#define ADAMJAX_QEND_PIPELINED q512::Finish(&prev, 0, 0);

ADAMJAX_DEFINE_QISA(qisa_base, , SERIAL)
#if ADAMJAX_MULTI_ISA
ADAMJAX_DEFINE_QISA(qisa_avx2, ADAMJAX_AVX2_TARGET, SERIAL)
ADAMJAX_DEFINE_QISA(qisa_avx512, ADAMJAX_AVX512_TARGET, PIPELINED)
#endif

struct BlockTable {
  ChunkFn fn[2][2][2];  // [algo][apply][fma]
};

BlockTable SelectBlockTable() {
  BlockTable t{};
  qisa_base::Fill(t.fn);
#if ADAMJAX_MULTI_ISA
  switch (PickIsa()) {
    case Isa::kAvx512:
      qisa_avx512::Fill(t.fn);
      break;
    case Isa::kAvx2:
      qisa_avx2::Fill(t.fn);
      break;
    case Isa::kBaseline:
      break;
  }
#endif
  return t;
}

const BlockTable& Blocks() {
  static const BlockTable table = SelectBlockTable();
  return table;
}

ffi::Error Invalid(const std::string& what) {
  return ffi::Error::InvalidArgument("adamjax native (8-bit state): " + what);
}

const ffi::AnyBuffer* Const(const ffi::AnyBuffer& b) { return &b; }

// Checks one leaf's buffers, makes each in-place result hold its operand (the same buffer
// under input_output_aliases; copied if XLA ever hands over two) and describes the work.
// p_in is nullptr for the update form.
ffi::Error PrepareLeaf(size_t configs, const ffi::AnyBuffer* p_in, const ffi::AnyBuffer& g_in,
                       const ffi::AnyBuffer& mc_in, const ffi::AnyBuffer& ms_in,
                       const ffi::AnyBuffer& vc_in, const ffi::AnyBuffer& vs_in,
                       ffi::AnyBuffer& out, ffi::AnyBuffer& mc_out, ffi::AnyBuffer& ms_out,
                       ffi::AnyBuffer& vc_out, ffi::AnyBuffer& vs_out, QLeaf* leaf) {
  using DT = ffi::DataType;
  if (g_in.element_type() != DT::F32 || out.element_type() != DT::F32 ||
      (p_in != nullptr && p_in->element_type() != DT::F32)) {
    return Invalid("params and grads must be float32");
  }
  for (const ffi::AnyBuffer* c : {&mc_in, &vc_in, Const(mc_out), Const(vc_out)}) {
    if (c->element_type() != DT::U8) return Invalid("codes must be uint8");
  }
  for (const ffi::AnyBuffer* s : {&ms_in, &vs_in, Const(ms_out), Const(vs_out)}) {
    if (s->element_type() != DT::F32) return Invalid("scales must be float32");
  }
  const size_t total = g_in.element_count();
  if (total % configs != 0) {
    return Invalid("the leading (config) axes of grads and hyper do not match");
  }
  const size_t size = total / configs;
  const size_t blocks = std::max<size_t>(1, (size + kBlock - 1) / kBlock);
  if (out.element_count() != total || (p_in != nullptr && p_in->element_count() != total)) {
    return Invalid("params (or the update) and grads differ in size");
  }
  for (const ffi::AnyBuffer* c : {&mc_in, &vc_in, Const(mc_out), Const(vc_out)}) {
    if (c->element_count() != configs * blocks * kBlock) {
      return Invalid("codes must hold ceil(size / 2048) blocks of 2048 per config");
    }
  }
  for (const ffi::AnyBuffer* s : {&ms_in, &vs_in, Const(ms_out), Const(vs_out)}) {
    if (s->element_count() != configs * blocks) return Invalid("one scale per block");
  }
  auto hold = [](ffi::AnyBuffer& dst, const ffi::AnyBuffer& src, size_t bytes) {
    if (dst.untyped_data() != src.untyped_data() && bytes > 0) {
      std::memcpy(dst.untyped_data(), src.untyped_data(), bytes);
    }
    return dst.untyped_data();
  };
  float* o = static_cast<float*>(p_in != nullptr ? hold(out, *p_in, total * 4)
                                                  : out.untyped_data());
  *leaf = QLeaf{o,
                static_cast<const float*>(g_in.untyped_data()),
                static_cast<uint8_t*>(hold(mc_out, mc_in, configs * blocks * kBlock)),
                static_cast<float*>(hold(ms_out, ms_in, configs * blocks * 4)),
                static_cast<uint8_t*>(hold(vc_out, vc_in, configs * blocks * kBlock)),
                static_cast<float*>(hold(vs_out, vs_in, configs * blocks * 4)),
                size,
                blocks,
                0};
  return ffi::Error::Success();
}

// Operands: hyper ([configs, 8]), the m and v decode tables (256 float32 each; a vmapped
// call may broadcast them, the first 256 are read), then per leaf (p, g, m codes, m scales,
// v codes, v scales) (apply) or (g, m codes, m scales, v codes, v scales) (update); results
// per leaf (p or u, m codes, m scales, v codes, v scales), all but u in place.
template <Algo A, bool kApply>
ffi::Error QStepImpl(ffi::ThreadPool pool, int32_t fma, ffi::Buffer<ffi::F32> hyper,
                     ffi::Buffer<ffi::F32> m_table, ffi::Buffer<ffi::F32> v_table,
                     ffi::RemainingArgs args, ffi::RemainingRets rets) {
  constexpr size_t kIn = kApply ? 6 : 5, kOut = 5;
  if (args.size() % kIn != 0 || rets.size() * kIn != args.size() * kOut) {
    return Invalid(kApply ? "apply takes (p, g, mc, ms, vc, vs) per leaf, returns 5"
                          : "update takes (g, mc, ms, vc, vs) per leaf, returns 5");
  }
  const size_t h = hyper.element_count();
  if (h == 0 || h % kNumHyper != 0) return Invalid("hyper must hold rows of 8 floats");
  const size_t configs = h / kNumHyper;
  if (m_table.element_count() < kTable || v_table.element_count() < kTable ||
      m_table.element_count() % kTable != 0 || v_table.element_count() % kTable != 0) {
    return Invalid("each decode table must hold 256 float32 values");
  }
  const size_t leaves = args.size() / kIn;
  std::vector<QLeaf> work;
  work.reserve(leaves);
  size_t total = 0;
  for (size_t k = 0; k < leaves; ++k) {
    std::optional<ffi::AnyBuffer> in[kIn];
    for (size_t a = 0; a < kIn; ++a) {
      auto x = args.get<ffi::AnyBuffer>(kIn * k + a);
      if (x.has_error()) return Invalid("a leaf operand is not a buffer");
      in[a].emplace(*x);
    }
    std::optional<ffi::Result<ffi::AnyBuffer>> out[kOut];
    for (size_t r = 0; r < kOut; ++r) {
      auto x = rets.get<ffi::AnyBuffer>(kOut * k + r);
      if (x.has_error()) return Invalid("a leaf result is not a buffer");
      out[r].emplace(*x);
    }
    const size_t o = kApply ? 1 : 0;  // operand index of g
    QLeaf leaf;
    if (auto e = PrepareLeaf(configs, kApply ? &*in[0] : nullptr, *in[o], *in[o + 1], *in[o + 2],
                             *in[o + 3], *in[o + 4], **out[0], **out[1], **out[2], **out[3],
                             **out[4], &leaf);
        e.failure()) {
      return e;
    }
    leaf.start = total;
    total += configs * leaf.blocks;
    work.push_back(leaf);
  }
  if (total == 0) return ffi::Error::Success();
  const ChunkFn fn = Blocks().fn[A == Algo::kAdam ? 0 : 1][kApply][fma != 0];
  const float* rows = hyper.typed_data();
  const float* mt = m_table.typed_data();
  const float* vt = v_table.typed_data();
  const QLeaf* w = work.data();
  const size_t count = work.size();
  ParallelFor(
      pool, total, [=](size_t lo, size_t hi) { fn(w, count, lo, hi, rows, mt, vt); },
      kBlocksPerChunk, kSerialBlocks);
  return ffi::Error::Success();
}

}  // namespace

#define ADAMJAX_QSTEP_BINDING       \
  ffi::Ffi::Bind()                  \
      .Ctx<ffi::ThreadPool>()       \
      .Attr<int32_t>("fma")         \
      .Arg<ffi::Buffer<ffi::F32>>() \
      .Arg<ffi::Buffer<ffi::F32>>() \
      .Arg<ffi::Buffer<ffi::F32>>() \
      .RemainingArgs()              \
      .RemainingRets()

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamjaxAdamApplyQ8, (QStepImpl<Algo::kAdam, true>),
                              ADAMJAX_QSTEP_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamjaxAdamUpdateQ8, (QStepImpl<Algo::kAdam, false>),
                              ADAMJAX_QSTEP_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamjaxAdamaxApplyQ8, (QStepImpl<Algo::kAdaMax, true>),
                              ADAMJAX_QSTEP_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamjaxAdamaxUpdateQ8, (QStepImpl<Algo::kAdaMax, false>),
                              ADAMJAX_QSTEP_BINDING);
