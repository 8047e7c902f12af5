// A host-memory KV cache of one layer for a batch of sequences, quantized on append.
#pragma once

#include <cstdint>
#include <vector>

#include "tqkv/codebook.hpp"
#include "tqkv/format.hpp"
#include "tqkv/layout.hpp"
#include "tqkv/quantize.hpp"
#include "tqkv/rotation.hpp"

namespace tqkv {

// Default base seed of the rotations; any fixed value works, it only has to be reproducible.
inline constexpr uint64_t kDefaultSeed = 0x7d51c0de2026ull;

struct CacheConfig {
  int batch = 1;             // sequences
  int kv_heads = 0;          // KV heads per sequence
  int head_dim = 0;          // coordinates per head (see is_supported_head_dim)
  int capacity = 0;          // slots per sequence (tokens, or the window in ring mode)
  KvFormat format{};         // key and value formats, independent
  bool ring = false;         // sliding-window ring buffer of `capacity` slots
  int layer = 0;             // layer index, feeds the rotation seed
  uint64_t seed = kDefaultSeed;
  bool sign_flips = true;    // false: plain Hadamard (the seed design; a baseline only)
  ScaleRule scale_rule = kDefaultScaleRule;
  CodebookKind codebook = CodebookKind::gaussian;
};

// Throws Error naming the first bad field.
void validate(const CacheConfig& config);

// The shape part of the view of a cache with this config (formats, sizes, row bytes); the
// pointers are left null for the owner (KvCache, cuda::DeviceKvCache) to fill.
CacheView view_shape(const CacheConfig& config);

// Encodes n vectors x[i * x_stride, + head_dim) into rows[i * row_stride] and the `side` half
// (&ScalePair::k_bits or &ScalePair::v_bits) of scales[i]: the work of append. The default runs
// encode_vector on each; the fast CPU backend supplies a SIMD version producing the same bytes
// (tqkv::fast_cpu_encoder() in tqkv.hpp).
using BatchEncoder = void (*)(const VectorCodec& codec, int head_dim, const float* x,
                              std::size_t x_stride, int n, uint8_t* rows, std::size_t row_stride,
                              ScalePair* scales, ScaleSide side);
void encode_vectors_scalar(const VectorCodec& codec, int head_dim, const float* x,
                           std::size_t x_stride, int n, uint8_t* rows, std::size_t row_stride,
                           ScalePair* scales, ScaleSide side);

class KvCache {
 public:
  explicit KvCache(const CacheConfig& config);

  const CacheConfig& config() const { return config_; }
  int batch() const { return config_.batch; }
  int kv_heads() const { return config_.kv_heads; }
  int head_dim() const { return config_.head_dim; }
  int capacity() const { return config_.capacity; }

  // Appends n_tokens tokens to sequence `seq`, quantizing on write.
  // k, v: [n_tokens][kv_heads][head_dim] float32, row-major. In ring mode a chunk longer than
  // the capacity keeps its last `capacity` tokens. Throws (and leaves the cache exactly as it
  // was) on a bad sequence index, a null pointer, non-finite values (naming head and position),
  // or — outside ring mode — appending past capacity.
  void append(int seq, const float* k, const float* v, int n_tokens);
  // Replaces the encoder append uses (null restores the scalar one).
  void set_encoder(BatchEncoder encoder) { encoder_ = encoder ? encoder : encode_vectors_scalar; }

  // Forgets every token of sequence `seq`.
  void reset(int seq);

  int64_t tokens(int seq) const;        // tokens ever appended
  int length(int seq) const;            // valid slots: min(tokens, capacity)

  // Rotation and codecs of a KV head (K and V share the rotation).
  const Rotation& rotation(int kv_head) const { return rotations_[kv_head]; }
  VectorCodec key_codec(int kv_head) const;
  VectorCodec value_codec(int kv_head) const;

  // Decodes the stored key/value of (seq, kv_head, absolute position) back to the original
  // domain. The position must still be held by the cache.
  void decode_key(int seq, int kv_head, int64_t position, float* out) const;
  void decode_value(int seq, int kv_head, int64_t position, float* out) const;

  // A view of the whole cache for the kernels (pointers into this object's storage).
  CacheView view() const;

  // Bytes held by codes and scales (what the cache costs in memory).
  std::size_t storage_bytes() const;

 private:
  void check_seq(int seq, const char* what) const;
  void decode(bool key, int seq, int kv_head, int64_t position, float* out) const;

  CacheConfig config_;
  std::vector<Rotation> rotations_;
  std::vector<uint32_t> sign_bits_;  // [kv_heads][sign_words]
  const Codebook* k_codebook_ = nullptr;
  const Codebook* v_codebook_ = nullptr;
  std::size_t k_row_bytes_ = 0, v_row_bytes_ = 0;
  std::vector<uint8_t> k_codes_, v_codes_;
  std::vector<ScalePair> scales_;
  std::vector<int64_t> tokens_;
  BatchEncoder encoder_ = encode_vectors_scalar;
};

}  // namespace tqkv
