#include "tqkv/format.hpp"

#include "tqkv/layout.hpp"

#include <bit>
#include <cstring>

#include <fmt/format.h>

#include "tqkv/error.hpp"

namespace tqkv {

std::string_view format_name(Format f) noexcept {
  switch (f) {
    case Format::f16: return "f16";
    case Format::tq2: return "tq2";
    case Format::tq3: return "tq3";
    case Format::tq4: return "tq4";
    case Format::tq8: return "tq8";
  }
  return "?";
}

Format parse_format(std::string_view text, std::string_view what) {
  if (text == "f16" || text == "16" || text == "fp16") return Format::f16;
  if (text == "tq2" || text == "q2" || text == "2") return Format::tq2;
  if (text == "tq3" || text == "q3" || text == "3") return Format::tq3;
  if (text == "tq4" || text == "q4" || text == "4") return Format::tq4;
  if (text == "tq8" || text == "q8" || text == "8") return Format::tq8;
  raise(Status::invalid_argument,
        fmt::format("{} '{}' is not a format (expected f16, tq2, tq3, tq4 or tq8)", what, text));
}

int format_bits(Format f) noexcept {
  switch (f) {
    case Format::f16: return 16;
    case Format::tq2: return 2;
    case Format::tq3: return 3;
    case Format::tq4: return 4;
    case Format::tq8: return 8;
  }
  return 0;
}

bool is_quantized(Format f) noexcept { return f != Format::f16; }

std::size_t packed_bytes(Format f, int head_dim) {
  check_head_dim(head_dim);
  return static_cast<std::size_t>(head_dim) * static_cast<std::size_t>(format_bits(f)) / 8;
}

std::size_t row_bytes(Format f, int head_dim) {
  const std::size_t b = packed_bytes(f, head_dim);
  return (b + kRowAlignment - 1) / kRowAlignment * kRowAlignment;
}

std::string_view scale_rule_name(ScaleRule r) noexcept {
  return r == ScaleRule::norm ? "norm" : "least_squares";
}

ScaleRule parse_scale_rule(std::string_view text) {
  if (text == "norm") return ScaleRule::norm;
  if (text == "least_squares" || text == "ls") return ScaleRule::least_squares;
  raise(Status::invalid_argument,
        fmt::format("scale rule '{}' is not known (expected norm or least_squares)", text));
}

KvFormat parse_kv_format(std::string_view text) {
  std::string detail;
  try {
    // "kXvY" with X, Y in {2,3,4,8,16,f16}; else one format for both.
    if (text.size() >= 4 && text[0] == 'k') {
      const auto v = text.find('v');
      if (v != std::string_view::npos && v > 1)
        return {parse_format(text.substr(1, v - 1), "key format"),
                parse_format(text.substr(v + 1), "value format")};
    }
    const Format f = parse_format(text);
    return {f, f};
  } catch (const Error& e) {
    if (text.size() >= 4 && text[0] == 'k') detail = e.what();
  }
  if (!detail.empty()) raise(Status::invalid_argument, fmt::format("KV format '{}': {}", text, detail));
  raise(Status::invalid_argument,
        fmt::format("KV format '{}' is not known (expected f16, tq2, tq3, tq4, tq8, or kXvY such as "
                    "k8v4, k4v2, kf16v4)",
                    text));
}

std::string kv_format_name(KvFormat f) {
  if (f.key == f.value) return std::string(format_name(f.key));
  auto short_name = [](Format x) {
    return x == Format::f16 ? std::string("f16") : std::to_string(format_bits(x));
  };
  return "k" + short_name(f.key) + "v" + short_name(f.value);
}

std::size_t kv_bytes_per_position(KvFormat f, int head_dim) {
  // The codes, and one 4-byte ScalePair (two bfloat16 scales) when either side is quantized.
  const bool scaled = is_quantized(f.key) || is_quantized(f.value);
  return packed_bytes(f.key, head_dim) + packed_bytes(f.value, head_dim) + (scaled ? sizeof(ScalePair) : 0);
}

bool is_supported_head_dim(int head_dim) noexcept {
  return head_dim >= 32 && head_dim <= 1024 && head_dim % 16 == 0;
}

void check_head_dim(int head_dim, std::string_view what) {
  if (!is_supported_head_dim(head_dim))
    raise(Status::unsupported,
          fmt::format("{} = {} is not supported (expected a multiple of 16 from 32 to 1024)", what,
                      head_dim));
}

void pack_codes(Format f, const uint8_t* codes, int head_dim, uint8_t* row) {
  const std::size_t rb = row_bytes(f, head_dim);
  std::memset(row, 0, rb);
  switch (f) {
    case Format::tq2:
      for (int i = 0; i < head_dim; ++i)
        row[i >> 2] = static_cast<uint8_t>(row[i >> 2] | ((codes[i] & 3u) << (2 * (i & 3))));
      return;
    case Format::tq3:
      for (int g = 0; g < head_dim / 8; ++g) {
        uint32_t word = 0;
        for (int j = 0; j < 8; ++j) word |= static_cast<uint32_t>(codes[8 * g + j] & 7u) << (3 * j);
        row[3 * g + 0] = static_cast<uint8_t>(word);
        row[3 * g + 1] = static_cast<uint8_t>(word >> 8);
        row[3 * g + 2] = static_cast<uint8_t>(word >> 16);
      }
      return;
    case Format::tq4:
      for (int i = 0; i < head_dim; i += 2)
        row[i >> 1] = static_cast<uint8_t>((codes[i] & 15u) | ((codes[i + 1] & 15u) << 4));
      return;
    case Format::tq8:
      std::memcpy(row, codes, static_cast<std::size_t>(head_dim));
      return;
    case Format::f16:
      break;
  }
  raise(Status::invalid_argument, "pack_codes: format f16 has no codes");
}

void unpack_codes(Format f, const uint8_t* row, int head_dim, uint8_t* codes) {
  check_head_dim(head_dim);
  switch (f) {
    case Format::tq2:
      for (int i = 0; i < head_dim; ++i) codes[i] = (row[i >> 2] >> (2 * (i & 3))) & 3u;
      return;
    case Format::tq3:
      for (int g = 0; g < head_dim / 8; ++g) {
        const uint32_t word = row[3 * g] | (row[3 * g + 1] << 8) | (row[3 * g + 2] << 16);
        for (int j = 0; j < 8; ++j) codes[8 * g + j] = (word >> (3 * j)) & 7u;
      }
      return;
    case Format::tq4:
      for (int i = 0; i < head_dim; i += 2) {
        codes[i] = row[i >> 1] & 15u;
        codes[i + 1] = row[i >> 1] >> 4;
      }
      return;
    case Format::tq8:
      std::memcpy(codes, row, static_cast<std::size_t>(head_dim));
      return;
    case Format::f16:
      break;
  }
  raise(Status::invalid_argument, "unpack_codes: format f16 has no codes");
}

uint16_t float_to_half(float x) noexcept {
  const uint32_t u = std::bit_cast<uint32_t>(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7fffffffu;
  if (abs >= 0x7f800000u)  // inf or nan (keep nan quiet and non-zero)
    return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    const int e = static_cast<int>(abs >> 23);
    if (e < 102) return static_cast<uint16_t>(sign);  // < 2^-25: rounds to 0
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const int shift = 126 - e;  // mant * 2^(e-150) / 2^-24 = mant >> (126 - e)
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  // Normal: rebias exponent (127 -> 15) and round the 13 dropped mantissa bits to nearest even.
  uint32_t h = ((abs >> 13) - ((127 - 15) << 10));
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // may carry into the exponent: correct
  return static_cast<uint16_t>(sign | h);
}

float half_to_float(uint16_t h) noexcept {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    // zero or subnormal: mant * 2^-24, exact in float
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return std::bit_cast<float>(std::bit_cast<uint32_t>(v) | sign);
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 127 - 15) << 23) | (mant << 13));
}

uint16_t float_to_bf16(float x) noexcept {
  const uint32_t u = std::bit_cast<uint32_t>(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet nan
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

float bf16_to_float(uint16_t h) noexcept { return bf16_bits_to_float(h); }

}  // namespace tqkv
