// Encoding and decoding of one key or value vector (DESIGN.md, "The math").
//
// encode: r = H S x; n = ||r||; z = r sqrt(d) / n; idx_i = nearest level of the codebook;
// stored scale = s / sqrt(d) with s chosen by the ScaleRule, rounded to bfloat16 (ScalePair,
// layout.hpp), so that the rotated-domain reconstruction is r_hat_i = scale * level[idx_i]. 8-bit
// codes are then chosen again against the stored scale, idx_i = nearest level of r_i / scale
// (codes_follow_stored_scale, format.hpp). A zero vector stores scale 0 and decodes to exactly 0.
// f16 rows hold the unrotated vector in binary16 and scale 1.
#pragma once

#include <cstdint>

#include "tqkv/codebook.hpp"
#include "tqkv/format.hpp"
#include "tqkv/rotation.hpp"

namespace tqkv {

// Everything needed to encode one vector of one KV head. `codebook` may be null for f16.
struct VectorCodec {
  Format format = Format::tq4;
  const Rotation* rotation = nullptr;
  const Codebook* codebook = nullptr;
  ScaleRule scale_rule = kDefaultScaleRule;
};

// Encodes x[head_dim] (finite; the caller checks) into row[row_bytes] and the scale's bfloat16
// bits (*scale_bits; bf16_bits_to_float gives the value the decoders use).
void encode_vector(const VectorCodec& codec, const float* x, uint8_t* row, uint16_t* scale_bits);

// Decodes a row into the domain the attention kernels work in: rotated for tq formats
// (out_i = scale * levels[idx_i]), the original domain for f16 (scale ignored).
void decode_row(Format format, const float* levels, int head_dim, const uint8_t* row, float scale,
                float* out);
void decode_row(Format format, const float* levels, int head_dim, const uint8_t* row, float scale,
                double* out);

// Full round trip to the original domain (decode_row, then the inverse rotation for tq).
void decode_vector(const VectorCodec& codec, const uint8_t* row, float scale, float* out);

}  // namespace tqkv
