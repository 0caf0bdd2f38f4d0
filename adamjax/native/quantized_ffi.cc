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

// One block: len <= kBlock elements of out (params in place, or the update: possibly g's
// own buffer, each element read before it is written), g; the block's codes and scale of m
// and v, decoded, stepped and encoded in place.
template <Algo A, bool kApply, bool kFma>
ADAMJAX_INLINE void StepBlock(size_t len, float* out, const float* g,
                              uint8_t* ADAMJAX_RESTRICT mc,
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

// The decode tables of a call: as given (256 float32 each), and cut into byte planes
// (plane q: byte q of each entry, little-endian) for the byte-permute decoder.
struct DecodeTables {
  const float* m;
  const float* v;
  alignas(64) uint8_t m_planes[4][kTable];
  alignas(64) uint8_t v_planes[4][kTable];
  DecodeTables(const float* mt, const float* vt) : m(mt), v(vt) {
    for (size_t i = 0; i < kTable; ++i) {
      uint32_t a, b;
      std::memcpy(&a, mt + i, sizeof a);
      std::memcpy(&b, vt + i, sizeof b);
      for (int q = 0; q < 4; ++q) {
        m_planes[q][i] = static_cast<uint8_t>(a >> (8 * q));
        v_planes[q][i] = static_cast<uint8_t>(b >> (8 * q));
      }
    }
  }
};

#if ADAMJAX_MULTI_ISA
// ---------------------------------------------------------------------------------------
// AVX-512 block, written with intrinsics (GCC does not vectorise the loops above: the
// byte-indexed table reads and the encoder's selects defeat it), in quantized_avx512.inc:
// the same operations in the same order as StepBlock and EncodeBlock, 16 elements at a
// time; the last len % 16 elements of a block run through the scalar code. Compiled twice:
// q512 decodes with gathers (AVX-512 F, BW, DQ, VL), q512v with byte permutes over the
// tables' byte planes (VBMI as well: Ice Lake, Sapphire Rapids, Zen 4 and later).
#define ADAMJAX_Q512_INLINE ADAMJAX_AVX512_TARGET inline __attribute__((always_inline))
#define ADAMJAX_Q512_PLANES 0
namespace q512 {
#include "quantized_avx512.inc"
}  // namespace q512
#undef ADAMJAX_Q512_INLINE
#undef ADAMJAX_Q512_PLANES
#define ADAMJAX_Q512_INLINE ADAMJAX_AVX512VBMI_TARGET inline __attribute__((always_inline))
#define ADAMJAX_Q512_PLANES 1
namespace q512v {
#include "quantized_avx512.inc"
}  // namespace q512v
#undef ADAMJAX_Q512_INLINE
#undef ADAMJAX_Q512_PLANES
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
using ChunkFn = void (*)(const QLeaf*, size_t, size_t, size_t, const float*,
                         const DecodeTables*);

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
#define ADAMJAX_DEFINE_QISA(NS, TARGET_ATTR, PIPELINED, Q)                                  \
  namespace NS {                                                                          \
  template <Algo A, bool kApply, bool kFma>                                               \
  TARGET_ATTR void Run(const QLeaf* w, size_t count, size_t lo, size_t hi,                \
                       const float* rows, const DecodeTables* dt) {                       \
    size_t k = LeafOf(w, count, lo);                                                      \
    ADAMJAX_QSTATE_##PIPELINED(Q)                                                         \
    for (size_t j = lo; j < hi; ++j) {                                                    \
      while (k + 1 < count && j >= w[k + 1].start) ++k;                                   \
      const QLeaf& l = w[k];                                                              \
      const size_t jj = j - l.start;                                                      \
      const BlockAt at = Locate(l, jj);                                                   \
      ADAMJAX_QSTEP_##PIPELINED(Q, l.out + at.first_elem, l.g + at.first_elem,            \
                                l.mc + jj * kBlock, l.ms + jj, l.vc + jj * kBlock,        \
                                l.vs + jj, LoadHyper(rows + at.cfg * kNumHyper));         \
    }                                                                                     \
    ADAMJAX_QEND_##PIPELINED(Q)                                                           \
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

#define ADAMJAX_QSTATE_SERIAL(Q)
#define ADAMJAX_QSTEP_SERIAL(Q, out, g, mc, ms, vc, vs, h) \
  StepBlock<A, kApply, kFma>(at.len, out, g, mc, ms, vc, vs, dt->m, dt->v, h)
#define ADAMJAX_QEND_SERIAL(Q)
#define ADAMJAX_QSTATE_PIPELINED(Q)      \
  alignas(64) float stage[2][2][kBlock]; \
  Q::Pending prev;
#define ADAMJAX_QSTEP_PIPELINED(Q, out, g, mc, ms, vc, vs, h)                                \
  Q::StepBlock<A, kApply, kFma>(at.len, out, g, mc, ms, vc, vs, *dt, h, stage[j & 1][0],    \
                                stage[j & 1][1], &prev)
#define ADAMJAX_QEND_PIPELINED(Q) Q::Finish(&prev, 0, 0);

ADAMJAX_DEFINE_QISA(qisa_base, , SERIAL, )
#if ADAMJAX_MULTI_ISA
ADAMJAX_DEFINE_QISA(qisa_avx2, ADAMJAX_AVX2_TARGET, SERIAL, )
ADAMJAX_DEFINE_QISA(qisa_avx512, ADAMJAX_AVX512_TARGET, PIPELINED, q512)
ADAMJAX_DEFINE_QISA(qisa_avx512vbmi, ADAMJAX_AVX512VBMI_TARGET, PIPELINED, q512v)
#endif

struct BlockTable {
  ChunkFn fn[2][2][2];  // [algo][apply][fma]
};

#if ADAMJAX_MULTI_ISA
// The byte-permute decoder where the CPU has AVX-512 VBMI, unless ADAMJAX_NATIVE_ISA is
// "avx512-novbmi" (the gather decoder, as on CPUs without VBMI; for tests).
bool UseVbmi() {
  const char* force = std::getenv("ADAMJAX_NATIVE_ISA");
  if (force != nullptr && std::strcmp(force, "avx512-novbmi") == 0) return false;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vbmi");
}
#endif

BlockTable SelectBlockTable() {
  BlockTable t{};
  qisa_base::Fill(t.fn);
#if ADAMJAX_MULTI_ISA
  switch (PickIsa()) {
    case Isa::kAvx512:
      if (UseVbmi()) {
        qisa_avx512vbmi::Fill(t.fn);
      } else {
        qisa_avx512::Fill(t.fn);
      }
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
// per leaf (p or u, m codes, m scales, v codes, v scales), each aliased to its operand (u to
// g: XLA writes the update over a gradient that is dead after the call, and copies one that
// is not).
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
  const DecodeTables tables(m_table.typed_data(), v_table.typed_data());
  const DecodeTables* dt = &tables;
  const QLeaf* w = work.data();
  const size_t count = work.size();
  ParallelFor(
      pool, total, [=](size_t lo, size_t hi) { fn(w, count, lo, hi, rows, dt); },
      kBlocksPerChunk, kSerialBlocks);
  return ffi::Error::Success();
}

}  // namespace

// (hyper, the two moments' decode tables, leaves...) -> (outputs per leaf).
#define ADAMJAX_QSTEP_BINDING                                                     \
  ADAMJAX_BIND_STEP_HEAD.Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>() \
      .RemainingArgs()                                                            \
      .RemainingRets()

ADAMJAX_DEFINE_STEP_PAIR(AdamjaxAdamApplyQ8, AdamjaxAdamUpdateQ8, QStepImpl, Algo::kAdam,
                         ADAMJAX_QSTEP_BINDING);
ADAMJAX_DEFINE_STEP_PAIR(AdamjaxAdamaxApplyQ8, AdamjaxAdamaxUpdateQ8, QStepImpl, Algo::kAdaMax,
                         ADAMJAX_QSTEP_BINDING);
