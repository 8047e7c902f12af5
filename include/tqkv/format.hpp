// Packed formats of one cached key or value vector.
//
// A vector of head_dim coordinates is stored as one row of `row_bytes(format, head_dim)` bytes
// plus one float scale. Rows are padded to kRowAlignment so kernels can issue 16-byte loads.
//   tq2: 4 codes per byte, code j of a byte at bits [2j, 2j+2)
//   tq3: 8 codes in 3 bytes; the 3 bytes form a little-endian 24-bit word, code j at bits [3j, 3j+3)
//   tq4: 2 codes per byte, low nibble = even coordinate
//   tq8: 1 code per byte
//   f16: IEEE binary16 of the *unrotated* vector (stored uncompressed; its scale slot holds 1)
// tq rows hold codebook indices of the rotated, normalised vector; see quantize.hpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tqkv {

enum class Format : uint8_t { f16 = 0, tq2 = 1, tq3 = 2, tq4 = 3, tq8 = 4 };

// Every format, in the order used by tables and tests.
inline constexpr Format kAllFormats[] = {Format::f16, Format::tq8, Format::tq4, Format::tq3,
                                         Format::tq2};

// 16-byte rows: the widest vector load CUDA and AVX kernels issue per thread.
inline constexpr std::size_t kRowAlignment = 16;

std::string_view format_name(Format f) noexcept;  // "f16", "tq4", ...
// Parses "f16", "tq2".."tq8" (also "q4", "4"). Throws Error naming `what` on anything else.
Format parse_format(std::string_view text, std::string_view what = "format");

// Bits per stored coordinate (16 for f16).
int format_bits(Format f) noexcept;
// True for the TurboQuant formats (rotated + codebook); false for f16.
bool is_quantized(Format f) noexcept;
// Bytes holding the codes of one vector, unpadded (d * bits / 8).
std::size_t packed_bytes(Format f, int head_dim);
// Bytes of one row in the cache: packed_bytes rounded up to kRowAlignment.
std::size_t row_bytes(Format f, int head_dim);

// How the per-vector scale is chosen (DESIGN.md, step 5).
//   norm:          s = ||x||
//   least_squares: s = ||x|| <z, c> / ||c||^2, the s minimising ||z*n/sqrt(d) - s*c/sqrt(d)||
enum class ScaleRule : uint8_t { norm = 0, least_squares = 1 };
std::string_view scale_rule_name(ScaleRule r) noexcept;
ScaleRule parse_scale_rule(std::string_view text);
// The default, chosen by measurement (docs/quality.md).
inline constexpr ScaleRule kDefaultScaleRule = ScaleRule::least_squares;

// Whether the encoders choose a vector's codes a second time, against its stored scale (the
// bfloat16 rounding of the rule's scale; quantize.hpp): for 8-bit codes. Otherwise the rounding
// (up to 2^-8) multiplies the whole reconstruction, and so the key's whole logit, by one common
// factor, which cost tq8 25 % more attention error than fp32 scales (docs/quality.md); chosen
// against the rounded scale, the codes leave only per-coordinate noise. Coarser codebooks skip
// the second search: their code noise (tq4 ~9e-3 per coordinate) dwarfs the rounding's ~3e-6.
// constexpr on bits, so that device code can test a compiled-in width.
constexpr bool codes_follow_stored_scale(int bits) noexcept { return bits == 8; }

// Key and value formats, chosen independently.
struct KvFormat {
  Format key = Format::tq4;
  Format value = Format::tq4;
  friend bool operator==(const KvFormat&, const KvFormat&) = default;
};
// Parses "tq4" (both), "f16", "k8v4", "k4v2", "kf16v4" (f16 keys, tq4 values), "k16v4".
KvFormat parse_kv_format(std::string_view text);
std::string kv_format_name(KvFormat f);  // canonical: "tq4", "k8v4", "kf16v4", ...
// Bytes of one position of one KV head, K and V together: the packed codes and, when either side
// is quantized, the position's ScalePair (two bfloat16 scales, layout.hpp).
std::size_t kv_bytes_per_position(KvFormat f, int head_dim);

// Head dims tqkv supports: multiples of 16 from 32 to 1024. Powers of two use one Hadamard block;
// others a block-diagonal Hadamard over power-of-two blocks (96 = 64 + 32, 576 = 512 + 64).
bool is_supported_head_dim(int head_dim) noexcept;
// Throws Error(unsupported) naming `what` and the value.
void check_head_dim(int head_dim, std::string_view what = "head_dim");

// Packing of codebook indices into a row (bit-exact, see the header comment). `codes` has
// head_dim entries, each < 2^bits. Unused padding bytes of the row are written as 0.
void pack_codes(Format f, const uint8_t* codes, int head_dim, uint8_t* row);
void unpack_codes(Format f, const uint8_t* row, int head_dim, uint8_t* codes);

// IEEE binary16 / bfloat16 conversions, round to nearest even.
uint16_t float_to_half(float x) noexcept;
float half_to_float(uint16_t h) noexcept;
uint16_t float_to_bf16(float x) noexcept;
float bf16_to_float(uint16_t h) noexcept;

}  // namespace tqkv
