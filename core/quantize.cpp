#include "tqkv/quantize.hpp"

#include <array>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "tqkv/error.hpp"
#include "tqkv/layout.hpp"

namespace tqkv {
namespace {

constexpr int kMaxHeadDim = 1024;  // is_supported_head_dim's upper bound; sizes the stack scratch

template <typename T>
void decode_row_impl(Format format, const float* levels, int head_dim, const uint8_t* row,
                     float scale, T* out) {
  if (format == Format::f16) {
    const auto* h = reinterpret_cast<const uint8_t*>(row);
    for (int i = 0; i < head_dim; ++i) {
      uint16_t bits;
      std::memcpy(&bits, h + 2 * i, 2);
      out[i] = static_cast<T>(half_to_float(bits));
    }
    return;
  }
  std::array<uint8_t, kMaxHeadDim> codes;
  unpack_codes(format, row, head_dim, codes.data());
  for (int i = 0; i < head_dim; ++i)
    out[i] = static_cast<T>(scale) * static_cast<T>(levels[codes[i]]);
}

}  // namespace

void encode_vector(const VectorCodec& codec, const float* x, uint8_t* row, uint16_t* scale_bits) {
  const int d = codec.rotation->head_dim();
  const std::size_t rb = row_bytes(codec.format, d);
  if (codec.format == Format::f16) {
    std::memset(row, 0, rb);
    for (int i = 0; i < d; ++i) {
      const uint16_t h = float_to_half(x[i]);
      std::memcpy(row + 2 * i, &h, 2);
    }
    *scale_bits = float_to_bf16(1.0f);
    return;
  }
  if (codec.codebook == nullptr || codec.codebook->bits != format_bits(codec.format))
    raise(Status::internal, fmt::format("encode_vector: codebook does not match format {}",
                                        format_name(codec.format)));
  std::array<float, kMaxHeadDim> r;
  std::array<uint8_t, kMaxHeadDim> codes;
  codec.rotation->forward(x, r.data());
  double norm2 = 0;
  for (int i = 0; i < d; ++i) norm2 += static_cast<double>(r[i]) * r[i];
  const double norm = std::sqrt(norm2);
  if (norm == 0.0) {  // zero vector: scale 0 decodes to exactly 0 whatever the codes
    std::memset(row, 0, rb);
    *scale_bits = 0;
    return;
  }
  const double sqrt_d = std::sqrt(static_cast<double>(d));
  const float to_unit = static_cast<float>(sqrt_d / norm);  // z = r * sqrt(d) / ||r||
  const Codebook& cb = *codec.codebook;
  double zc = 0, cc = 0;
  for (int i = 0; i < d; ++i) {
    const float z = r[i] * to_unit;
    codes[i] = cb.quantize(z);
    const double c = cb.levels_f32[codes[i]];
    zc += static_cast<double>(z) * c;
    cc += c * c;
  }
  // Stored scale multiplies a level to give the rotated coordinate: s / sqrt(d).
  const double s = codec.scale_rule == ScaleRule::least_squares && cc > 0 ? norm * zc / cc : norm;
  *scale_bits = float_to_bf16(static_cast<float>(s / sqrt_d));
  if (codes_follow_stored_scale(cb.bits)) {
    // The codes again, of u = r / stored (one float reciprocal, one multiply per coordinate: the
    // floats the fast encoder and the CUDA append compute too, the latter up to its rotation's
    // ulps), so that stored * level[code] ~ r with noise per coordinate rather than a common
    // factor (format.hpp); stored_scale_unit keeps the codes of z for a stored 0 or inf.
    const float unit = stored_scale_unit(*scale_bits, 1.0f, to_unit);
    for (int i = 0; i < d; ++i) codes[i] = cb.quantize(r[i] * unit);
  }
  pack_codes(codec.format, codes.data(), d, row);
}

void decode_row(Format format, const float* levels, int head_dim, const uint8_t* row, float scale,
                float* out) {
  decode_row_impl(format, levels, head_dim, row, scale, out);
}
void decode_row(Format format, const float* levels, int head_dim, const uint8_t* row, float scale,
                double* out) {
  decode_row_impl(format, levels, head_dim, row, scale, out);
}

void decode_vector(const VectorCodec& codec, const uint8_t* row, float scale, float* out) {
  const int d = codec.rotation->head_dim();
  const float* levels = codec.codebook ? codec.codebook->levels_f32.data() : nullptr;
  decode_row(codec.format, levels, d, row, scale, out);
  if (is_quantized(codec.format)) codec.rotation->inverse(out, out);
}

}  // namespace tqkv
