// Highway kernels of the fast CPU backend, compiled once per instruction set (foreach_target.h)
// and chosen at run time (HWY_DYNAMIC_DISPATCH).
//
// Decode attention works per block of kBlockPositions positions of one (sequence, KV head):
//   1. decode the block's key rows into floats (unscaled codebook levels, or f16 -> f32),
//   2. dot products with every query head of the group (register tiles of 4 heads x 3 rows),
//   3. online softmax per head (scale, softcap, running max, exp),
//   4. decode the value rows and accumulate weight * row into each head's output.
// Decoding a row once and reusing it for the whole query group is what makes each code byte be
// read (and unpacked) once. Codes of <= 4 bits become floats with four 16-byte table lookups
// (one per byte of the fp32 level), so no gather is needed.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/fast/kernels.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cpu/fast/kernels.hpp"
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "tqkv/codebook.hpp"
#include "tqkv/error.hpp"
#include "tqkv/rotation.hpp"

HWY_BEFORE_NAMESPACE();
namespace tqkv::cpu_fast::detail {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;

constexpr int kNB = kBlockPositions;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

#if HWY_TARGET != HWY_SCALAR
using D8 = hn::Full128<uint8_t>;  // 16 codes: the unit of the byte-plane lookup
using D16 = hn::Full128<uint16_t>;
using D32 = hn::Full128<uint32_t>;
using DF4 = hn::Full128<float>;
using V8 = hn::Vec<D8>;

struct PlaneVecs {
  V8 p0, p1, p2, p3;
};

HWY_INLINE PlaneVecs LoadPlanes(const BytePlanes& bp) {
  const D8 d8;
  return {hn::Load(d8, bp.plane[0]), hn::Load(d8, bp.plane[1]), hn::Load(d8, bp.plane[2]),
          hn::Load(d8, bp.plane[3])};
}

// 16 codes (u8 lanes, each < 16) -> 16 fp32 levels at out[0..16). Zipping byte planes 0+1 and
// 2+3 into u16 and then u16 pairs into u32 rebuilds each little-endian float in lane order.
HWY_INLINE void LookupStore16(const PlaneVecs& t, V8 idx, float* HWY_RESTRICT out) {
  const D16 d16;
  const D32 d32;
  const DF4 df;
  const V8 b0 = hn::TableLookupBytes(t.p0, idx);
  const V8 b1 = hn::TableLookupBytes(t.p1, idx);
  const V8 b2 = hn::TableLookupBytes(t.p2, idx);
  const V8 b3 = hn::TableLookupBytes(t.p3, idx);
  const auto lo01 = hn::ZipLower(d16, b0, b1);
  const auto hi01 = hn::ZipUpper(d16, b0, b1);
  const auto lo23 = hn::ZipLower(d16, b2, b3);
  const auto hi23 = hn::ZipUpper(d16, b2, b3);
  hn::StoreU(hn::BitCast(df, hn::ZipLower(d32, lo01, lo23)), df, out + 0);
  hn::StoreU(hn::BitCast(df, hn::ZipUpper(d32, lo01, lo23)), df, out + 4);
  hn::StoreU(hn::BitCast(df, hn::ZipLower(d32, hi01, hi23)), df, out + 8);
  hn::StoreU(hn::BitCast(df, hn::ZipUpper(d32, hi01, hi23)), df, out + 12);
}

// tq4: byte k holds coordinates 2k (low nibble) and 2k+1. One 16-byte load = 32 coordinates;
// row_bytes is a multiple of 16, so the load never leaves the row.
void DecodeRowTq4(const uint8_t* HWY_RESTRICT row, int d, const PlaneVecs& t,
                  float* HWY_RESTRICT out) {
  const D8 d8;
  const V8 mask = hn::Set(d8, uint8_t{0x0F});
  for (int i = 0; i < d; i += 32) {
    const V8 v = hn::LoadU(d8, row + i / 2);
    const V8 lo = hn::And(v, mask);
    const V8 hi = hn::And(hn::ShiftRight<4>(v), mask);
    LookupStore16(t, hn::InterleaveLower(d8, lo, hi), out + i);
    if (i + 16 < d) LookupStore16(t, hn::InterleaveUpper(d8, lo, hi), out + i + 16);
  }
}

// tq2: byte k holds coordinates 4k..4k+3 at bits [2j, 2j+2). One load = 64 coordinates.
void DecodeRowTq2(const uint8_t* HWY_RESTRICT row, int d, const PlaneVecs& t,
                  float* HWY_RESTRICT out) {
  const D8 d8;
  const D16 d16;
  const V8 mask = hn::Set(d8, uint8_t{3});
  for (int i = 0; i < d; i += 64) {
    const V8 v = hn::LoadU(d8, row + i / 4);
    const V8 c0 = hn::And(v, mask);
    const V8 c1 = hn::And(hn::ShiftRight<2>(v), mask);
    const V8 c2 = hn::And(hn::ShiftRight<4>(v), mask);
    const V8 c3 = hn::And(hn::ShiftRight<6>(v), mask);
    // (c0,c1) and (c2,c3) byte pairs, then u16 pairs of pairs: c0 c1 c2 c3 of byte 0, byte 1...
    const auto a_lo = hn::BitCast(d16, hn::InterleaveLower(d8, c0, c1));
    const auto b_lo = hn::BitCast(d16, hn::InterleaveLower(d8, c2, c3));
    const auto a_hi = hn::BitCast(d16, hn::InterleaveUpper(d8, c0, c1));
    const auto b_hi = hn::BitCast(d16, hn::InterleaveUpper(d8, c2, c3));
    const V8 groups[4] = {hn::BitCast(d8, hn::InterleaveLower(d16, a_lo, b_lo)),
                          hn::BitCast(d8, hn::InterleaveUpper(d16, a_lo, b_lo)),
                          hn::BitCast(d8, hn::InterleaveLower(d16, a_hi, b_hi)),
                          hn::BitCast(d8, hn::InterleaveUpper(d16, a_hi, b_hi))};
    for (int g = 0; g < 4 && i + 16 * g < d; ++g) LookupStore16(t, groups[g], out + i + 16 * g);
  }
}

// tq3: 8 codes per 3 bytes (a little-endian 24-bit word, code j at bits [3j, 3j+3)), so 16
// codes = 6 bytes. Code j is read from the u16 starting at byte 3j/8 and shifted right by 3j%8;
// the per-lane right shift is a multiply by 2^(8 - shift) followed by a shift by 8 (SSE/AVX2 have
// no per-lane u16 shift). Lanes 0..7 hold codes 0..7, lanes 8..15 (second vector) codes 8..15.
void DecodeRowTq3(const uint8_t* HWY_RESTRICT row, int d, std::size_t row_bytes,
                  const PlaneVecs& t, float* HWY_RESTRICT out) {
  const D8 d8;
  const D16 d16;
  alignas(16) static constexpr uint8_t kPairsLo[16] = {0, 1, 0, 1, 0, 1, 1, 2,
                                                       1, 2, 1, 2, 2, 3, 2, 3};
  alignas(16) static constexpr uint8_t kPairsHi[16] = {3, 4, 3, 4, 3, 4, 4, 5,
                                                       4, 5, 4, 5, 5, 6, 5, 6};
  alignas(16) static constexpr uint16_t kFactor[8] = {256, 32, 4, 128, 16, 2, 64, 8};
  alignas(16) static constexpr uint8_t kEvenThenOdd[16] = {0, 2, 4,  6,  8,  10, 12, 14,
                                                           1, 3, 5, 7, 9, 11, 13, 15};
  const V8 pairs_lo0 = hn::Load(d8, kPairsLo);
  const V8 pairs_hi0 = hn::Load(d8, kPairsHi);
  const auto factor = hn::Load(d16, kFactor);
  const auto mask = hn::Set(d16, uint16_t{7});
  const V8 compact = hn::Load(d8, kEvenThenOdd);
  for (int i = 0; i < d; i += 16) {
    const std::size_t offset = static_cast<std::size_t>(i) / 16 * 6;
    // The last groups of a row: load the row's final 16 bytes instead of reading past it, and
    // move the byte indices by the difference (row_bytes >= 16 always).
    const std::size_t base = std::min(offset, row_bytes - 16);
    const V8 raw = hn::LoadU(d8, row + base);
    const V8 shift = hn::Set(d8, static_cast<uint8_t>(offset - base));
    const V8 pairs_lo = hn::Add(pairs_lo0, shift);
    const V8 pairs_hi = hn::Add(pairs_hi0, shift);
    const auto a = hn::BitCast(d16, hn::TableLookupBytes(raw, pairs_lo));
    const auto b = hn::BitCast(d16, hn::TableLookupBytes(raw, pairs_hi));
    const auto ca = hn::And(hn::ShiftRight<8>(hn::Mul(a, factor)), mask);
    const auto cb = hn::And(hn::ShiftRight<8>(hn::Mul(b, factor)), mask);
    const V8 both = hn::BitCast(d8, hn::Or(ca, hn::ShiftLeft<8>(cb)));  // a0 b0 a1 b1 ...
    LookupStore16(t, hn::TableLookupBytes(both, compact), out + i);
  }
}

#else   // HWY_SCALAR: GCC < 12.3 has no EMU128 (GCC bug 106322), so the fallback is one lane

// tq2/3/4 without 16-byte vectors: core's unpacking, then a table load per code.
void DecodeRowSmall(Format format, const uint8_t* HWY_RESTRICT row, int d,
                    const float* HWY_RESTRICT levels, float* HWY_RESTRICT out) {
  uint8_t codes[1024];  // is_supported_head_dim's upper bound
  unpack_codes(format, row, d, codes);
  for (int i = 0; i < d; ++i) out[i] = levels[codes[i]];
}
#endif  // HWY_TARGET != HWY_SCALAR

// tq8: 256 levels do not fit a register table. A gather measured slower than plain indexed
// loads on the AMD Zen 1 build machine (2.9 vs 4.1 GFMA/s overall); codes are read 8 at a time.
void DecodeRowTq8(const uint8_t* HWY_RESTRICT row, int d, const float* HWY_RESTRICT levels,
                  float* HWY_RESTRICT out) {
  for (int i = 0; i < d; i += 8) {
    uint64_t codes;
    std::memcpy(&codes, row + i, 8);
    for (int k = 0; k < 8; ++k) out[i + k] = levels[(codes >> (8 * k)) & 0xFF];
  }
}

void DecodeRowF16(const uint8_t* HWY_RESTRICT row, int d, float* HWY_RESTRICT out) {
  const DF df;
  const hn::Rebind<hwy::float16_t, DF> dh;
  const auto* h = reinterpret_cast<const hwy::float16_t*>(row);
  const int n = static_cast<int>(hn::Lanes(df));
  for (int i = 0; i < d; i += n) hn::StoreU(hn::PromoteTo(df, hn::LoadU(dh, h + i)), df, out + i);
}

// Decodes nb consecutive rows into out[j * d + i] (unscaled: the per-row scale is applied to the
// logit or the softmax weight instead).
void DecodeBlock(Format format, const uint8_t* rows, std::size_t row_bytes, int nb, int d,
                 const float* levels, const BytePlanes* planes, float* HWY_RESTRICT out) {
  switch (format) {
    case Format::f16:
      for (int j = 0; j < nb; ++j) DecodeRowF16(rows + j * row_bytes, d, out + j * d);
      return;
    case Format::tq8:
      for (int j = 0; j < nb; ++j) DecodeRowTq8(rows + j * row_bytes, d, levels, out + j * d);
      return;
#if HWY_TARGET == HWY_SCALAR
    case Format::tq4:
    case Format::tq3:
    case Format::tq2:
      (void)planes;
      for (int j = 0; j < nb; ++j)
        DecodeRowSmall(format, rows + j * row_bytes, d, levels, out + j * d);
      return;
#else
    case Format::tq4: {
      const PlaneVecs t = LoadPlanes(*planes);
      for (int j = 0; j < nb; ++j) DecodeRowTq4(rows + j * row_bytes, d, t, out + j * d);
      return;
    }
    case Format::tq3: {
      const PlaneVecs t = LoadPlanes(*planes);
      for (int j = 0; j < nb; ++j)
        DecodeRowTq3(rows + j * row_bytes, d, row_bytes, t, out + j * d);
      return;
    }
    case Format::tq2: {
      const PlaneVecs t = LoadPlanes(*planes);
      for (int j = 0; j < nb; ++j) DecodeRowTq2(rows + j * row_bytes, d, t, out + j * d);
      return;
    }
#endif
  }
  raise(Status::internal, fmt::format("cpu_fast: no decoder for format {}",
                                      static_cast<int>(format)));
}

// Horizontal sums of up to four accumulators, written to out[0..count). Within each 128-bit block
// two interleave-add rounds turn (a, b, c, e) into (sum a, sum b, sum c, sum e) of that block;
// the blocks are then added. Cheaper than four SumOfLanes (which each reduce one vector fully).
template <class V>
HWY_INLINE void SumOfFour(V a, V b, V c, V e, int count, float* HWY_RESTRICT out, int stride) {
  const DF df;
#if HWY_TARGET == HWY_SCALAR
  const float sums[4] = {hn::GetLane(a), hn::GetLane(b), hn::GetLane(c), hn::GetLane(e)};
  (void)df;
#else
  const hn::Repartition<uint64_t, DF> d64;
  const V ab = hn::Add(hn::InterleaveLower(df, a, b), hn::InterleaveUpper(df, a, b));
  const V ce = hn::Add(hn::InterleaveLower(df, c, e), hn::InterleaveUpper(df, c, e));
  const auto ab64 = hn::BitCast(d64, ab), ce64 = hn::BitCast(d64, ce);
  const V s = hn::Add(hn::BitCast(df, hn::InterleaveLower(d64, ab64, ce64)),
                      hn::BitCast(df, hn::InterleaveUpper(d64, ab64, ce64)));
  alignas(64) float lanes[hn::MaxLanes(DF())];
  hn::Store(s, df, lanes);
  float sums[4] = {0, 0, 0, 0};
  for (std::size_t blk = 0; blk < hn::Lanes(df); blk += 4)
    for (int k = 0; k < 4; ++k) sums[k] += lanes[blk + k];
#endif
  for (int k = 0; k < count; ++k) out[k * stride] = sums[k];
}

// scores[h * kNB + j] = q_h . k_j for HB heads (q rows d apart) and R decoded rows from row j:
// HB x R accumulators. Three rows of four heads (12 chains) hide the FMA latency on AVX2 and
// share each query load among three rows; 12 + 3 rows fit the 16 vector registers.
template <int HB, int R>
HWY_INLINE void ScoreTile(const float* HWY_RESTRICT q, int d, const float* HWY_RESTRICT kb, int j,
                          float* HWY_RESTRICT scores) {
  const DF df;
  const int n = static_cast<int>(hn::Lanes(df));
  const auto zero = hn::Zero(df);
  hn::Vec<DF> acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < 4; ++h) acc[r][h] = zero;
  const float* k0 = kb + static_cast<std::size_t>(j) * d;
  for (int i = 0; i < d; i += n) {
    hn::Vec<DF> kv[R];
    for (int r = 0; r < R; ++r) kv[r] = hn::LoadU(df, k0 + r * d + i);
    for (int h = 0; h < HB; ++h) {
      const auto qh = hn::LoadU(df, q + h * d + i);
      for (int r = 0; r < R; ++r) acc[r][h] = hn::MulAdd(qh, kv[r], acc[r][h]);
    }
  }
  for (int r = 0; r < R; ++r)
    SumOfFour(acc[r][0], acc[r][1], acc[r][2], acc[r][3], HB, scores + j + r, kNB);
}

template <int HB>
HWY_INLINE void ScoreHeads(const float* HWY_RESTRICT q, int d, const float* HWY_RESTRICT kb,
                           int nb, float* HWY_RESTRICT scores) {
  static_assert(HB >= 1 && HB <= 4, "a tile holds at most 4 heads (SumOfFour)");
  int j = 0;
  for (; j + 3 <= nb; j += 3) ScoreTile<HB, 3>(q, d, kb, j, scores);
  switch (nb - j) {
    case 2: ScoreTile<HB, 2>(q, d, kb, j, scores); break;
    case 1: ScoreTile<HB, 1>(q, d, kb, j, scores); break;
    default: break;
  }
}

// o_h += sum_j w[h * kNB + j] * v_j for HB heads (o rows d apart). Two vectors of coordinates
// per pass keep 2 * HB accumulators in registers.
template <int HB>
HWY_INLINE void AccumulateHeads(const float* HWY_RESTRICT w, const float* HWY_RESTRICT vb, int nb,
                                int d, float* HWY_RESTRICT o) {
  const DF df;
  const int n = static_cast<int>(hn::Lanes(df));
  int i = 0;
  for (; i + 2 * n <= d; i += 2 * n) {
    hn::Vec<DF> a0[HB], a1[HB];
    for (int h = 0; h < HB; ++h) {
      a0[h] = hn::LoadU(df, o + h * d + i);
      a1[h] = hn::LoadU(df, o + h * d + i + n);
    }
    for (int j = 0; j < nb; ++j) {
      const auto v0 = hn::LoadU(df, vb + j * d + i);
      const auto v1 = hn::LoadU(df, vb + j * d + i + n);
      for (int h = 0; h < HB; ++h) {
        const auto wj = hn::Set(df, w[h * kNB + j]);
        a0[h] = hn::MulAdd(wj, v0, a0[h]);
        a1[h] = hn::MulAdd(wj, v1, a1[h]);
      }
    }
    for (int h = 0; h < HB; ++h) {
      hn::StoreU(a0[h], df, o + h * d + i);
      hn::StoreU(a1[h], df, o + h * d + i + n);
    }
  }
  for (; i < d; i += n) {
    hn::Vec<DF> a[HB];
    for (int h = 0; h < HB; ++h) a[h] = hn::LoadU(df, o + h * d + i);
    for (int j = 0; j < nb; ++j) {
      const auto v = hn::LoadU(df, vb + j * d + i);
      for (int h = 0; h < HB; ++h) a[h] = hn::MulAdd(hn::Set(df, w[h * kNB + j]), v, a[h]);
    }
    for (int h = 0; h < HB; ++h) hn::StoreU(a[h], df, o + h * d + i);
  }
}

// Runs fn<HB>(first head) over the group in tiles of at most 4 heads (the register budget of
// score and accumulate tiles on AVX2: up to 12 accumulators + 3 rows).
template <class Fn>
HWY_INLINE void ForHeadTiles(int group, const Fn& fn) {
  int h = 0;
  for (; h + 4 <= group; h += 4) fn(std::integral_constant<int, 4>(), h);
  switch (group - h) {
    case 3: fn(std::integral_constant<int, 3>(), h); break;
    case 2: fn(std::integral_constant<int, 2>(), h); break;
    case 1: fn(std::integral_constant<int, 1>(), h); break;
    default: break;
  }
}

// One head's block: dot products in s[0..kNB) become softmax weights times the value scale.
// Updates the running max m, denominator l and rescales the head's output o when m grows.
HWY_INLINE void SoftmaxBlock(float* HWY_RESTRICT s, const float* HWY_RESTRICT k_scale,
                             const float* HWY_RESTRICT v_scale, int nb, float softcap, float& m,
                             float& l, float* HWY_RESTRICT o, int d) {
  const DF df;
  const int n = static_cast<int>(hn::Lanes(df));
  const auto neg_inf = hn::Set(df, kNegInf);
  auto block_max = neg_inf;
  for (int j = 0; j < kNB; j += n) {
    auto x = hn::Mul(hn::LoadU(df, s + j), hn::LoadU(df, k_scale + j));
    if (softcap > 0)
      x = hn::Mul(hn::Set(df, softcap), hn::Tanh(df, hn::Div(x, hn::Set(df, softcap))));
    x = hn::IfThenElse(hn::FirstN(df, static_cast<std::size_t>(std::max(0, nb - j))), x, neg_inf);
    hn::StoreU(x, df, s + j);
    block_max = hn::Max(block_max, x);
  }
  const float mb = hn::GetLane(hn::MaxOfLanes(df, block_max));
  if (mb > m) {
    if (m != kNegInf) {
      const float alpha = std::exp(m - mb);
      l *= alpha;
      const auto va = hn::Set(df, alpha);
      for (int i = 0; i < d; i += n) hn::StoreU(hn::Mul(hn::LoadU(df, o + i), va), df, o + i);
    }
    m = mb;
  }
  const auto vm = hn::Set(df, m);
  auto sum = hn::Zero(df);
  for (int j = 0; j < kNB; j += n) {
    const auto p = hn::Exp(df, hn::Sub(hn::LoadU(df, s + j), vm));  // -inf lanes give 0
    sum = hn::Add(sum, p);
    hn::StoreU(hn::Mul(p, hn::LoadU(df, v_scale + j)), df, s + j);
  }
  l += hn::GetLane(hn::SumOfLanes(df, sum));
}

// Per-thread scratch, grown on demand and kept: after the first call of a shape nothing is
// allocated on the call path.
struct Scratch {
  std::vector<float> k_block, v_block, weights;
  alignas(64) float k_scale[kNB];
  alignas(64) float v_scale[kNB];
};

// The key or value scale of each row of a block. f16 rows ignore theirs (decode_row does too).
void BlockScales(Format f, const ScalePair* scales, ScaleSide side, int nb, float* out) {
  for (int j = 0; j < kNB; ++j)
    out[j] = j < nb ? (is_quantized(f) ? bf16_bits_to_float(scales[j].*side) : 1.0f) : 0.0f;
}

void AttendImpl(const AttendItem& it) {
  const CacheView& c = *it.cache;
  const int d = c.head_dim;
  const int group = it.group;
  std::fill(it.o, it.o + static_cast<std::size_t>(group) * d, 0.0f);
  std::fill(it.m, it.m + group, kNegInf);
  std::fill(it.l, it.l + group, 0.0f);
  if (it.begin >= it.end) return;

  thread_local Scratch scratch;
  const std::size_t block_floats = static_cast<std::size_t>(kNB) * d;
  if (scratch.k_block.size() < block_floats) {
    scratch.k_block.resize(block_floats);
    scratch.v_block.resize(block_floats);
  }
  if (scratch.weights.size() < static_cast<std::size_t>(group) * kNB)
    scratch.weights.resize(static_cast<std::size_t>(group) * kNB);
  float* kb = scratch.k_block.data();
  float* vb = scratch.v_block.data();
  float* w = scratch.weights.data();

  for (int64_t p = it.begin; p < it.end;) {
    const int slot = position_slot(p, c.capacity, c.ring);
    // A block never crosses the ring's wrap, so its rows are contiguous in memory.
    const int nb = static_cast<int>(
        std::min<int64_t>({kNB, it.end - p, static_cast<int64_t>(c.capacity - slot)}));
    const std::size_t r = row_index(c, it.b, it.kv_head, slot);

    DecodeBlock(c.format.key, c.k_codes + r * c.k_row_bytes, c.k_row_bytes, nb, d, c.k_levels,
                it.k_planes, kb);
    BlockScales(c.format.key, c.scales + r, &ScalePair::k_bits, nb, scratch.k_scale);
    BlockScales(c.format.value, c.scales + r, &ScalePair::v_bits, nb, scratch.v_scale);
    ForHeadTiles(group, [&](auto hb, int h0) {
      ScoreHeads<decltype(hb)::value>(it.q + static_cast<std::size_t>(h0) * d, d, kb, nb,
                                       w + h0 * kNB);
    });
    for (int h = 0; h < group; ++h)
      SoftmaxBlock(w + h * kNB, scratch.k_scale, scratch.v_scale, nb, it.softcap, it.m[h],
                   it.l[h], it.o + static_cast<std::size_t>(h) * d, d);

    DecodeBlock(c.format.value, c.v_codes + r * c.v_row_bytes, c.v_row_bytes, nb, d, c.v_levels,
                it.v_planes, vb);
    ForHeadTiles(group, [&](auto hb, int h0) {
      AccumulateHeads<decltype(hb)::value>(w + h0 * kNB, vb, nb, d,
                                           it.o + static_cast<std::size_t>(h0) * d);
    });
    p += nb;
  }
}

// ---- encode ----

// One stage h of the unnormalised Walsh–Hadamard butterfly (x[j], x[j+h]) -> (a+b, a-b), for
// j in blocks of 2h. Every stage does exactly the arithmetic of core's fwht, in the same stage
// order, so the rotated floats are bit-identical to Rotation::forward.
void HadamardStage(float* HWY_RESTRICT x, int n, int h) {
  const DF df;
  const int lanes = static_cast<int>(hn::Lanes(df));
  if (h >= lanes) {
    for (int i = 0; i < n; i += 2 * h)
      for (int j = i; j < i + h; j += lanes) {
        const auto a = hn::LoadU(df, x + j);
        const auto b = hn::LoadU(df, x + j + h);
        hn::StoreU(hn::Add(a, b), df, x + j);
        hn::StoreU(hn::Sub(a, b), df, x + j + h);
      }
    return;
  }
  for (int i = 0; i < n; i += 2 * h)
    for (int j = i; j < i + h; ++j) {
      const float a = x[j], b = x[j + h];
      x[j] = a + b;
      x[j + h] = a - b;
    }
}

// Index of the nearest level per lane: the number of boundaries <= z (Codebook::quantize: ties
// go up). Up to 15 boundaries: one compare each; 255 (tq8): a branch-free binary search.
HWY_INLINE hn::Vec<hn::RebindToSigned<DF>> QuantizeLanes(const Codebook& cb, hn::Vec<DF> z) {
  const DF df;
  const hn::RebindToSigned<DF> di;
  const float* bounds = cb.boundaries_f32.data();
  const int nb = static_cast<int>(cb.boundaries_f32.size());
  if (nb <= 15) {
    auto idx = hn::Zero(di);
    for (int k = 0; k < nb; ++k)  // a true mask is all ones, i.e. -1 as an integer
      idx = hn::Sub(idx, hn::VecFromMask(di, hn::RebindMask(di, hn::Ge(z, hn::Set(df, bounds[k])))));
    return idx;
  }
  auto idx = hn::Zero(di);
  for (int step = (nb + 1) / 2; step >= 1; step /= 2) {
    const auto cand = hn::Add(idx, hn::Set(di, step));
    const auto b = hn::GatherIndex(df, bounds, hn::Sub(cand, hn::Set(di, 1)));
    idx = hn::IfThenElse(hn::RebindMask(di, hn::Ge(z, b)), cand, idx);
  }
  return idx;
}

void EncodeImpl(const VectorCodec& codec, int d, const float* x, std::size_t x_stride, int n,
                uint8_t* rows, std::size_t row_stride, ScalePair* scales, ScaleSide side) {
  const DF df;
  const hn::RebindToSigned<DF> di;
  const int lanes = static_cast<int>(hn::Lanes(df));
  const Rotation& rot = *codec.rotation;
  const Codebook& cb = *codec.codebook;
  const std::size_t rb = row_bytes(codec.format, d);
  const double sqrt_d = std::sqrt(static_cast<double>(d));

  thread_local std::vector<float> r, z, levels_of;
  thread_local std::vector<int32_t> idx;
  thread_local std::vector<uint8_t> codes;
  r.resize(static_cast<std::size_t>(d));
  z.resize(static_cast<std::size_t>(d));
  levels_of.resize(static_cast<std::size_t>(d));
  idx.resize(static_cast<std::size_t>(d));
  codes.resize(static_cast<std::size_t>(d));

  for (int v = 0; v < n; ++v) {
    const float* xv = x + static_cast<std::size_t>(v) * x_stride;
    uint8_t* row = rows + static_cast<std::size_t>(v) * row_stride;
    // r = H S x, as Rotation::forward computes it.
    for (int i = 0; i < d; ++i) r[i] = rot.negated(i) ? -xv[i] : xv[i];
    int offset = 0;
    for (const int block : rot.blocks()) {
      for (int h = 1; h < block; h *= 2) HadamardStage(r.data() + offset, block, h);
      const float inv = static_cast<float>(1.0 / std::sqrt(static_cast<double>(block)));
      const auto vinv = hn::Set(df, inv);
      for (int i = offset; i < offset + block; i += lanes)
        hn::StoreU(hn::Mul(hn::LoadU(df, r.data() + i), vinv), df, r.data() + i);
      offset += block;
    }
    // ||r||^2 in double: products of floats are exact in double, so only the summation order
    // (lane-parallel here, sequential in core) can differ, by far less than a float ulp.
    double norm2 = 0;
    {
      const hn::ScalableTag<double> dd;
      const hn::Rebind<float, decltype(dd)> dfh;
      const int dl = static_cast<int>(hn::Lanes(dd));
      auto acc = hn::Zero(dd);
      for (int i = 0; i < d; i += dl) {
        const auto rv = hn::PromoteTo(dd, hn::LoadU(dfh, r.data() + i));
        acc = hn::MulAdd(rv, rv, acc);
      }
      norm2 = hn::GetLane(hn::SumOfLanes(dd, acc));
    }
    const double norm = std::sqrt(norm2);
    if (norm == 0.0) {  // as core: a zero vector stores scale 0 and all-zero codes
      std::memset(row, 0, rb);
      scales[v].*side = 0;
      continue;
    }
    const float unit_of_z = static_cast<float>(sqrt_d / norm);
    const auto to_unit = hn::Set(df, unit_of_z);
    for (int i = 0; i < d; i += lanes) {
      const auto zv = hn::Mul(hn::LoadU(df, r.data() + i), to_unit);
      hn::StoreU(zv, df, z.data() + i);
      const auto q = QuantizeLanes(cb, zv);
      hn::StoreU(q, di, idx.data() + i);
      hn::StoreU(hn::GatherIndex(df, cb.levels_f32.data(), q), df, levels_of.data() + i);
    }
    double zc = 0, cc = 0;
    {
      const hn::ScalableTag<double> dd;
      const hn::Rebind<float, decltype(dd)> dfh;
      const int dl = static_cast<int>(hn::Lanes(dd));
      auto acc_zc = hn::Zero(dd), acc_cc = hn::Zero(dd);
      for (int i = 0; i < d; i += dl) {
        const auto zv = hn::PromoteTo(dd, hn::LoadU(dfh, z.data() + i));
        const auto cv = hn::PromoteTo(dd, hn::LoadU(dfh, levels_of.data() + i));
        acc_zc = hn::MulAdd(zv, cv, acc_zc);
        acc_cc = hn::MulAdd(cv, cv, acc_cc);
      }
      zc = hn::GetLane(hn::SumOfLanes(dd, acc_zc));
      cc = hn::GetLane(hn::SumOfLanes(dd, acc_cc));
    }
    const double s =
        codec.scale_rule == ScaleRule::least_squares && cc > 0 ? norm * zc / cc : norm;
    const uint16_t scale_bits = float_to_bf16(static_cast<float>(s / sqrt_d));
    scales[v].*side = scale_bits;
    if (codes_follow_stored_scale(cb.bits)) {
      // The codes again, of r / stored, as core's encode_vector (the same float reciprocal and
      // products; format.hpp says why).
      const auto unit = hn::Set(df, stored_scale_unit(scale_bits, 1.0f, unit_of_z));
      for (int i = 0; i < d; i += lanes)
        hn::StoreU(QuantizeLanes(cb, hn::Mul(hn::LoadU(df, r.data() + i), unit)), di, idx.data() + i);
    }
    for (int i = 0; i < d; ++i) codes[i] = static_cast<uint8_t>(idx[i]);
    pack_codes(codec.format, codes.data(), d, row);
  }
}

const char* TargetNameImpl() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace tqkv::cpu_fast::detail
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace tqkv::cpu_fast::detail {

HWY_EXPORT(AttendImpl);
HWY_EXPORT(EncodeImpl);
HWY_EXPORT(TargetNameImpl);

BytePlanes make_byte_planes(const float* levels, int n_levels) {
  BytePlanes bp;
  for (int c = 0; c < n_levels && c < 16; ++c) {
    uint8_t bytes[4];
    std::memcpy(bytes, &levels[c], 4);
    for (int k = 0; k < 4; ++k) bp.plane[k][c] = bytes[k];
  }
  return bp;
}

void attend(const AttendItem& item) { HWY_DYNAMIC_DISPATCH(AttendImpl)(item); }

void encode(const VectorCodec& codec, int head_dim, const float* x, std::size_t x_stride, int n,
            uint8_t* rows, std::size_t row_stride, ScalePair* scales, ScaleSide side) {
  HWY_DYNAMIC_DISPATCH(EncodeImpl)(codec, head_dim, x, x_stride, n, rows, row_stride, scales, side);
}

std::string dispatched_target_name() { return HWY_DYNAMIC_DISPATCH(TargetNameImpl)(); }

namespace {
// What this CPU runs among the targets compiled here, read before any forcing.
const std::vector<int64_t>& real_targets() {
  static const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  return targets;
}
}  // namespace

std::vector<std::string> compiled_and_supported_targets() {
  std::vector<std::string> names;
  for (const int64_t t : real_targets()) names.emplace_back(hwy::TargetName(t));
  return names;
}

int64_t target_bits_by_name(const std::string& name) {
  for (const int64_t t : real_targets())
    if (name == hwy::TargetName(t)) return t;
  std::string known;
  for (const int64_t t : real_targets()) known += fmt::format("{}{}", known.empty() ? "" : ", ",
                                                              hwy::TargetName(t));
  raise(Status::unsupported, fmt::format("force_target: target '{}' is not available on this "
                                         "machine (available: {})", name, known));
}

void force_target_bits(int64_t bits) {
  (void)real_targets();  // record the unforced list first
  hwy::SetSupportedTargetsForTest(bits);
}

}  // namespace tqkv::cpu_fast::detail
#endif  // HWY_ONCE
