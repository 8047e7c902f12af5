// Packed formats: bit-exact packing against an independent bit-stream writer and hand-built bytes,
// row sizes, names, and the binary16 / bfloat16 conversions.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "test_support.hpp"
#include "tqkv/format.hpp"
#include "tqkv/layout.hpp"

namespace tqkv {
namespace {

using test::expect_error;
using test::seeded_rng;

constexpr Format kPackedFormats[] = {Format::tq2, Format::tq3, Format::tq4, Format::tq8};
constexpr int kHeadDims[] = {32, 48, 64, 80, 96, 112, 128, 256, 512, 576, 1024};
constexpr uint8_t kPoison = 0xAB;

// All four layouts in format.hpp are one little-endian bit stream: code i occupies bits
// [i*bits, (i+1)*bits) of the row, counting from bit 0 of byte 0. Written bit by bit here so that
// it shares nothing with the library's packer.
std::vector<uint8_t> reference_pack(const std::vector<uint8_t>& codes, int bits, std::size_t bytes) {
  std::vector<uint8_t> row(bytes, 0);
  for (std::size_t i = 0; i < codes.size(); ++i) {
    for (int b = 0; b < bits; ++b) {
      const std::size_t bit = i * bits + b;
      if ((codes[i] >> b) & 1) row[bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
    }
  }
  return row;
}

std::vector<uint8_t> pack(Format f, const std::vector<uint8_t>& codes) {
  const int d = static_cast<int>(codes.size());
  std::vector<uint8_t> row(row_bytes(f, d), kPoison);
  pack_codes(f, codes.data(), d, row.data());
  return row;
}

TEST(Format, BitsAndSizes) {
  EXPECT_EQ(format_bits(Format::f16), 16);
  EXPECT_EQ(format_bits(Format::tq2), 2);
  EXPECT_EQ(format_bits(Format::tq3), 3);
  EXPECT_EQ(format_bits(Format::tq4), 4);
  EXPECT_EQ(format_bits(Format::tq8), 8);
  EXPECT_FALSE(is_quantized(Format::f16));
  for (Format f : kPackedFormats) EXPECT_TRUE(is_quantized(f));
  for (Format f : kAllFormats) {
    for (int d : kHeadDims) {
      const std::size_t packed = packed_bytes(f, d);
      const std::size_t row = row_bytes(f, d);
      EXPECT_EQ(packed, static_cast<std::size_t>(d) * format_bits(f) / 8) << format_name(f) << " " << d;
      EXPECT_EQ(row % kRowAlignment, 0u) << format_name(f) << " " << d;
      EXPECT_GE(row, packed);
      EXPECT_LT(row - packed, kRowAlignment) << "no more padding than needed";
    }
  }
  EXPECT_EQ(row_bytes(Format::tq3, 80), 32u);  // 30 bytes of codes + 2 of padding
  EXPECT_EQ(row_bytes(Format::tq2, 48), 16u);  // 12 + 4
}

// DESIGN.md's performance model, d = 128, K and V with an fp32 scale per tq row.
// DESIGN.md's bytes per position (d = 128) with its fp32 scale per row, less 4 bytes: tqkv keeps a
// position's two scales as one pair of bfloat16 (layout.hpp).
TEST(Format, BytesPerPositionMatchDesign) {
  EXPECT_EQ(kv_bytes_per_position(parse_kv_format("f16"), 128), 512u);
  EXPECT_EQ(kv_bytes_per_position(parse_kv_format("tq4"), 128), 136u - 4);
  EXPECT_EQ(kv_bytes_per_position(parse_kv_format("tq3"), 128), 104u - 4);
  EXPECT_EQ(kv_bytes_per_position(parse_kv_format("tq2"), 128), 72u - 4);
  EXPECT_EQ(kv_bytes_per_position(parse_kv_format("k8v4"), 128), 200u - 4);
  EXPECT_EQ(kv_bytes_per_position(parse_kv_format("kf16v4"), 128), 256u + 64 + 4);
}

// Kernels fetch a position's two scales as one little-endian 4-byte word: key low, value high.
TEST(Format, ScalePairIsOneWordKeyLowValueHigh) {
  const ScalePair p{float_to_bf16(1.5f), float_to_bf16(-0.09375f)};
  uint32_t word;
  std::memcpy(&word, &p, sizeof word);
  EXPECT_EQ(word & 0xffffu, 0x3fc0u);
  EXPECT_EQ(word >> 16, 0xbdc0u);
  EXPECT_EQ(p.key(), 1.5f);
  EXPECT_EQ(p.value(), -0.09375f);
  EXPECT_EQ(bf16_bits_to_float(float_to_bf16(0.1f)), 0.10009765625f);  // round to nearest
}

TEST(Format, PackMatchesReferenceBitStreamAndRoundTrips) {
  auto rng = seeded_rng(31);
  for (Format f : kPackedFormats) {
    const int bits = format_bits(f);
    for (int d : kHeadDims) {
      SCOPED_TRACE(testing::Message() << format_name(f) << " head_dim " << d);
      std::uniform_int_distribution<int> code(0, (1 << bits) - 1);
      std::vector<std::vector<uint8_t>> cases;
      std::vector<uint8_t> every_value(d), random(d), all_ones(d, static_cast<uint8_t>((1 << bits) - 1));
      for (int i = 0; i < d; ++i) every_value[i] = static_cast<uint8_t>(i % (1 << bits));
      for (auto& c : random) c = static_cast<uint8_t>(code(rng));
      for (const auto* codes : {&every_value, &random, &all_ones}) {
        const auto row = pack(f, *codes);
        const auto expected = reference_pack(*codes, bits, row_bytes(f, d));
        ASSERT_EQ(row, expected) << "layout differs (padding bytes must be 0)";
        std::vector<uint8_t> back(d, kPoison);
        unpack_codes(f, row.data(), d, back.data());
        ASSERT_EQ(back, *codes);
      }
      // Every byte pattern of the packed part is a valid row: unpack then pack is the identity.
      std::vector<uint8_t> bytes(row_bytes(f, d), 0);
      std::uniform_int_distribution<int> byte(0, 255);
      for (std::size_t i = 0; i < packed_bytes(f, d); ++i) bytes[i] = static_cast<uint8_t>(byte(rng));
      std::vector<uint8_t> codes(d);
      unpack_codes(f, bytes.data(), d, codes.data());
      for (uint8_t c : codes) ASSERT_LT(c, 1 << bits);
      ASSERT_EQ(pack(f, codes), bytes);
    }
  }
}

// Hand-built rows for the documented layouts (head_dim 32; codes not listed are 0).
std::vector<uint8_t> codes32(std::initializer_list<uint8_t> head, std::initializer_list<std::pair<int, uint8_t>> at = {}) {
  std::vector<uint8_t> c(32, 0);
  std::copy(head.begin(), head.end(), c.begin());
  for (auto [i, v] : at) c[i] = v;
  return c;
}

TEST(Format, Tq4LowNibbleIsTheEvenCoordinate) {
  const auto row = pack(Format::tq4, codes32({1, 2, 3, 4, 15, 0, 0, 15}));
  EXPECT_EQ(row[0], 0x21);
  EXPECT_EQ(row[1], 0x43);
  EXPECT_EQ(row[2], 0x0F);
  EXPECT_EQ(row[3], 0xF0);
  for (std::size_t i = 4; i < row.size(); ++i) EXPECT_EQ(row[i], 0) << i;
}

TEST(Format, Tq3PacksEightCodesInThreeLittleEndianBytes) {
  // Codes 0..7 at bits 3j of the 24-bit word: 0xFAC688, stored 88 C6 FA.
  auto row = pack(Format::tq3, codes32({0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(row[0], 0x88);
  EXPECT_EQ(row[1], 0xC6);
  EXPECT_EQ(row[2], 0xFA);
  for (std::size_t i = 3; i < row.size(); ++i) EXPECT_EQ(row[i], 0) << i;
  // The second group of 8 starts at byte 3; its last code (15) sits in the top bits of byte 5.
  row = pack(Format::tq3, codes32({7}, {{15, 5}}));
  EXPECT_EQ(row[0], 0x07);
  EXPECT_EQ(row[3], 0x00);
  EXPECT_EQ(row[5], 0xA0);  // 5 << 21 = 0xA00000
  // A code straddling a byte boundary: code 2 at bits 6..8.
  row = pack(Format::tq3, codes32({0, 0, 7}));
  EXPECT_EQ(row[0], 0xC0);
  EXPECT_EQ(row[1], 0x01);
}

TEST(Format, Tq2AndTq8Layouts) {
  auto row = pack(Format::tq2, codes32({1, 2, 3, 0, 0, 0, 0, 3}));
  EXPECT_EQ(row[0], 0x39);  // 1 | 2 << 2 | 3 << 4
  EXPECT_EQ(row[1], 0xC0);
  row = pack(Format::tq8, codes32({0, 200, 255, 17}));
  EXPECT_EQ(row[1], 200);
  EXPECT_EQ(row[2], 255);
  EXPECT_EQ(row[3], 17);
}

TEST(Format, FormatNames) {
  for (Format f : kAllFormats) {
    EXPECT_EQ(parse_format(format_name(f)), f) << format_name(f);
  }
  EXPECT_EQ(format_name(Format::tq4), "tq4");
  EXPECT_EQ(format_name(Format::f16), "f16");
  EXPECT_EQ(parse_format("q4"), Format::tq4);
  EXPECT_EQ(parse_format("4"), Format::tq4);
  EXPECT_EQ(parse_format("8"), Format::tq8);
  EXPECT_EQ(parse_format("tq2"), Format::tq2);
  for (const char* bad : {"tq5", "tq16", "", "f32", "tq", "q", "TQ4x"}) {
    expect_error([&] { parse_format(bad); }, Status::invalid_argument, {std::string("'") + bad + "'"});
  }
  expect_error([] { parse_format("tq7", "key format"); }, Status::invalid_argument, {"key format", "tq7"});
}

TEST(Format, KvFormatNames) {
  struct Named {
    const char* name;
    KvFormat format;
  };
  const Named canonical[] = {{"tq4", {Format::tq4, Format::tq4}},
                             {"f16", {Format::f16, Format::f16}},
                             {"k8v4", {Format::tq8, Format::tq4}},
                             {"kf16v4", {Format::f16, Format::tq4}},
                             {"k4v2", {Format::tq4, Format::tq2}},
                             {"tq2", {Format::tq2, Format::tq2}}};
  for (const auto& n : canonical) {
    EXPECT_EQ(parse_kv_format(n.name), n.format) << n.name;
    EXPECT_EQ(kv_format_name(n.format), n.name);
  }
  EXPECT_EQ(parse_kv_format("k16v4"), (KvFormat{Format::f16, Format::tq4}));
  // Every pair survives name -> parse.
  for (Format k : kAllFormats) {
    for (Format v : kAllFormats) {
      const KvFormat f{k, v};
      EXPECT_EQ(parse_kv_format(kv_format_name(f)), f) << kv_format_name(f);
    }
  }
  for (const char* bad : {"k5v4", "k8", "k8v", "v4", "k8v4x", "", "kv", "k8v9", "tq4v2"}) {
    expect_error([&] { parse_kv_format(bad); }, Status::invalid_argument, {std::string("'") + bad + "'"});
  }
}

TEST(Format, ScaleRuleNames) {
  for (ScaleRule r : {ScaleRule::norm, ScaleRule::least_squares}) {
    EXPECT_EQ(parse_scale_rule(scale_rule_name(r)), r);
  }
  EXPECT_EQ(scale_rule_name(ScaleRule::norm), "norm");
  EXPECT_EQ(scale_rule_name(ScaleRule::least_squares), "least_squares");
  expect_error([] { parse_scale_rule("median"); }, Status::invalid_argument, {"median"});
}

TEST(Format, HeadDims) {
  for (int d = 32; d <= 1024; d += 16) EXPECT_TRUE(is_supported_head_dim(d)) << d;
  for (int d : {0, -16, 16, 24, 100, 1040, 2048, 40}) {
    EXPECT_FALSE(is_supported_head_dim(d)) << d;
    expect_error([&] { check_head_dim(d, "key head_dim"); }, Status::unsupported,
                 {"key head_dim", std::to_string(d)});
  }
}

// ---- binary16 / bfloat16 ----

float bits_to_float(uint32_t u) { return std::bit_cast<float>(u); }
uint32_t float_bits(float x) { return std::bit_cast<uint32_t>(x); }

// The value of a binary16 bit pattern, decoded from its definition.
double half_value(uint16_t h) {
  const int sign = h >> 15, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
  double v;
  if (exponent == 0x1F) {
    v = mantissa ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else if (exponent == 0) {
    v = std::ldexp(mantissa, -24);
  } else {
    v = std::ldexp(1024 + mantissa, exponent - 25);
  }
  return sign ? -v : v;
}

// Round-to-nearest-even of a finite float to binary16, by scaling to the quantum of its binade.
double reference_half(float x) {
  const double ax = std::fabs(double(x));
  if (ax >= 65520.0) return std::copysign(std::numeric_limits<double>::infinity(), x);  // 65504 + half ulp rounds to even = inf
  int e = ax > 0 ? std::ilogb(ax) : -14;
  if (e < -14) e = -14;
  const double quantum = std::ldexp(1.0, e - 10);
  return std::copysign(std::nearbyint(ax / quantum) * quantum, x);  // default rounding: to even
}

bool is_half_nan(uint16_t h) { return (h & 0x7C00) == 0x7C00 && (h & 0x3FF); }

TEST(Half, EveryPatternDecodesAndRoundTrips) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const auto hh = static_cast<uint16_t>(h);
    const float f = half_to_float(hh);
    if (is_half_nan(hh)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << h;
      ASSERT_TRUE(is_half_nan(float_to_half(f))) << std::hex << h;
      ASSERT_EQ(std::signbit(f), (h >> 15) != 0);
      continue;
    }
    ASSERT_EQ(double(f), half_value(hh)) << std::hex << h;
    ASSERT_EQ(std::signbit(f), (h >> 15) != 0) << std::hex << h;
    ASSERT_EQ(float_to_half(f), hh) << std::hex << h;
  }
}

TEST(Half, RoundsToNearestEven) {
  struct Case {
    float x;
    uint16_t h;
  };
  const Case cases[] = {
      {1.0f, 0x3C00},
      {-2.0f, 0xC000},
      {-0.0f, 0x8000},
      {65504.0f, 0x7BFF},                       // largest finite
      {65519.996f, 0x7BFF},                     // just below the overflow midpoint
      {65520.0f, 0x7C00},                       // the midpoint rounds to even: infinity
      {1e10f, 0x7C00},
      {-1e10f, 0xFC00},
      {INFINITY, 0x7C00},
      {-INFINITY, 0xFC00},
      {std::ldexp(1.0f, -14), 0x0400},          // smallest normal
      {std::ldexp(1023.0f, -24), 0x03FF},       // largest subnormal
      {std::ldexp(1.0f, -24), 0x0001},          // smallest subnormal
      {std::ldexp(1.0f, -25), 0x0000},          // half of it: tie, to even (zero)
      {std::ldexp(1.0f, -25) * 1.0000001f, 0x0001},
      {std::ldexp(3.0f, -25), 0x0002},          // 1.5 quanta: tie, to even (2)
      {std::ldexp(1.0f, -30), 0x0000},
      {-std::ldexp(1.0f, -30), 0x8000},         // underflow keeps the sign
      {1.0f + std::ldexp(1.0f, -11), 0x3C00},   // tie between 0x3C00 and 0x3C01: even
      {1.0f + std::ldexp(3.0f, -11), 0x3C02},   // tie between 0x3C01 and 0x3C02: even
      {1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20), 0x3C01},  // just above the tie
  };
  for (const auto& c : cases) EXPECT_EQ(float_to_half(c.x), c.h) << c.x;
  // NaNs stay NaN even when the payload sits only in bits that binary16 drops.
  for (uint32_t nan : {0x7F800001u, 0x7FC00000u, 0xFF800001u, 0x7FFFFFFFu, 0xFFFFFFFFu}) {
    EXPECT_TRUE(is_half_nan(float_to_half(bits_to_float(nan)))) << std::hex << nan;
  }
}

TEST(Half, RandomFloatsMatchReferenceRounding) {
  auto rng = seeded_rng(32);
  std::uniform_int_distribution<uint32_t> any_bits;
  std::uniform_real_distribution<double> log_magnitude(-27.0, 17.0);  // around the binary16 range
  for (int i = 0; i < 400000; ++i) {
    float x;
    if (i % 2) {
      x = bits_to_float(any_bits(rng));
      if (std::isnan(x)) continue;
    } else {
      x = static_cast<float>(std::exp2(log_magnitude(rng)) * (i % 4 ? 1 : -1));
    }
    const uint16_t h = float_to_half(x);
    const double expected = reference_half(x);
    ASSERT_EQ(half_value(h), expected) << "x = " << x << " bits " << std::hex << float_bits(x);
    ASSERT_EQ(std::signbit(half_value(h)), std::signbit(x)) << x;
#if defined(__FLT16_MAX__)
    // The compiler's own conversion, where it has one, agrees.
    ASSERT_EQ(std::bit_cast<uint16_t>(static_cast<_Float16>(x)), h) << x;
#endif
  }
}

bool is_bf16_nan(uint16_t h) { return (h & 0x7F80) == 0x7F80 && (h & 0x7F); }

// Round-to-nearest-even of a float to bfloat16: pick the nearer of the two bfloat16 neighbours.
uint16_t reference_bf16(float x) {
  const uint32_t u = float_bits(x);
  const uint32_t sign = u & 0x80000000u, magnitude = u & 0x7FFFFFFFu;
  if (magnitude >= 0x7F800000u) return static_cast<uint16_t>(u >> 16);  // inf (NaN handled apart)
  const uint32_t lo = magnitude & 0xFFFF0000u, hi = lo + 0x10000u;
  const double lo_value = bits_to_float(lo);
  const double hi_value = hi == 0x7F800000u ? std::ldexp(1.0, 128) : double(bits_to_float(hi));
  const double ax = bits_to_float(magnitude);
  uint32_t pick;
  if (ax - lo_value < hi_value - ax) pick = lo;
  else if (ax - lo_value > hi_value - ax) pick = hi;
  else pick = ((lo >> 16) & 1) ? hi : lo;
  return static_cast<uint16_t>((sign | pick) >> 16);
}

TEST(Bf16, EveryPatternDecodesAndRoundTrips) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const auto hh = static_cast<uint16_t>(h);
    const float f = bf16_to_float(hh);
    ASSERT_EQ(float_bits(f), h << 16) << std::hex << h;  // exact: bfloat16 is the top half of a float
    if (is_bf16_nan(hh)) {
      ASSERT_TRUE(is_bf16_nan(float_to_bf16(f)));
    } else {
      ASSERT_EQ(float_to_bf16(f), hh) << std::hex << h;
    }
  }
}

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);  // tie: even
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(3.0f, -8)), 0x3F82);  // tie: even
  EXPECT_EQ(float_to_bf16(bits_to_float(0x00008000u)), 0x0000);   // subnormal tie: even
  EXPECT_EQ(float_to_bf16(bits_to_float(0x00018000u)), 0x0002);
  EXPECT_EQ(float_to_bf16(bits_to_float(0x00008001u)), 0x0001);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7F80);  // overflows to inf
  EXPECT_EQ(float_to_bf16(bits_to_float(0x7F7F7FFFu)), 0x7F7F);
  EXPECT_EQ(float_to_bf16(INFINITY), 0x7F80);
  EXPECT_EQ(float_to_bf16(-INFINITY), 0xFF80);
  EXPECT_EQ(float_to_bf16(-0.0f), 0x8000);
  // A carry out of the mantissa must not turn a NaN into infinity or flip its sign.
  for (uint32_t nan : {0x7F800001u, 0x7FFFFFFFu, 0xFFFFFFFFu, 0x7FC00000u, 0xFF800001u}) {
    const uint16_t h = float_to_bf16(bits_to_float(nan));
    EXPECT_TRUE(is_bf16_nan(h)) << std::hex << nan << " -> " << h;
    EXPECT_EQ(h >> 15, nan >> 31) << std::hex << nan;
  }
}

TEST(Bf16, RandomFloatsMatchReferenceRounding) {
  auto rng = seeded_rng(33);
  std::uniform_int_distribution<uint32_t> any_bits;
  for (int i = 0; i < 400000; ++i) {
    const float x = bits_to_float(any_bits(rng));
    if (std::isnan(x)) continue;
    ASSERT_EQ(float_to_bf16(x), reference_bf16(x)) << std::hex << float_bits(x);
  }
}

}  // namespace
}  // namespace tqkv
