// The cache layout as a plain view of pointers (host or device memory), and the chronology of
// ring buffers. Header-only and usable from CUDA device code.
#pragma once

#include <cstddef>
#include <cstdint>
#if !defined(__CUDA_ARCH__)
#include <bit>
#endif

#include "tqkv/format.hpp"

#if defined(__CUDACC__)
#define TQKV_HD __host__ __device__ __forceinline__
#else
#define TQKV_HD inline
#endif

namespace tqkv {

// bfloat16 bits to float (exact).
TQKV_HD float bf16_bits_to_float(uint16_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(static_cast<uint32_t>(bits) << 16);
#else
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
#endif
}

// The factor that takes a rotated coordinate to codebook units when codes are chosen against a
// stored scale (codes_follow_stored_scale, format.hpp): 1 / stored scale, times `per_unit` (1, or the
// CUDA tensor-core encoder's unnormalised block factor), or `fallback` (the factor of the first
// codes) when the stored scale is 0 or inf, which decode to 0 or inf whatever the codes. The one
// rule of every encoder (core, fast CPU, CUDA append), so that they keep choosing the same codes.
TQKV_HD float stored_scale_unit(uint16_t bits, float per_unit, float fallback) {
  const float inv = 1.0f / bf16_bits_to_float(bits);
  return inv > 0.0f && inv <= 3.40282347e+38f ? inv * per_unit : fallback;  // finite and positive
}

// The stored scales of one position of one KV head, as bfloat16 bits: the key's in the low half
// of one aligned 4-byte word, the value's in the high half, so that a kernel fetches both with one
// 4-byte copy. bfloat16 keeps 8 significant bits (rounding moves a vector's length by at most
// 2^-8, well under tq4's ~10 % error; tq8 would notice it and chooses its codes against the
// rounded scale, format.hpp, docs/quality.md) and float's exponent range (no norm overflows). An
// f16 row's half holds 1.0 and is not read.
struct ScalePair {
  uint16_t k_bits = 0;
  uint16_t v_bits = 0;
  TQKV_HD float key() const { return bf16_bits_to_float(k_bits); }
  TQKV_HD float value() const { return bf16_bits_to_float(v_bits); }
};
static_assert(sizeof(ScalePair) == 4, "one 4-byte word per position");
// Which half an encoder writes: &ScalePair::k_bits or &ScalePair::v_bits.
using ScaleSide = uint16_t ScalePair::*;

// One layer's cache for a batch of sequences. Contiguous mode: token t of sequence b sits in slot
// t (t < capacity). Ring mode (sliding-window layers): token t sits in slot t % capacity and only
// the newest `capacity` tokens are kept.
//   k_codes  [batch][kv_heads][capacity][k_row_bytes]    (v_codes likewise)
//   scales   [batch][kv_heads][capacity] ScalePair: the key's and the value's scale (bfloat16)
//   tokens   [batch] int64: tokens ever appended to each sequence
//   sign_bits [kv_heads][sign_words]: the rotation's sign diagonal per KV head (K and V share it)
//   k_levels / v_levels: the codebook levels (2^bits floats; null for f16)
struct CacheView {
  KvFormat format{};
  int batch = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int capacity = 0;
  bool ring = false;
  int sign_words = 0;
  std::size_t k_row_bytes = 0;
  std::size_t v_row_bytes = 0;
  const uint8_t* k_codes = nullptr;
  const uint8_t* v_codes = nullptr;
  const ScalePair* scales = nullptr;
  const int64_t* tokens = nullptr;
  const uint32_t* sign_bits = nullptr;
  const float* k_levels = nullptr;
  const float* v_levels = nullptr;
};

// Index of the (b, head, slot) row among all rows of the cache.
TQKV_HD std::size_t row_index(const CacheView& c, int b, int head, int slot) {
  return (static_cast<std::size_t>(b) * c.kv_heads + head) * c.capacity + slot;
}

// Valid slots of a sequence that has seen `tokens` tokens.
// (Contiguous caches never hold more than capacity: append rejects that.)
TQKV_HD int valid_slots(int64_t tokens, int capacity) {
  return tokens < capacity ? static_cast<int>(tokens) : capacity;
}

// Slot that holds the oldest kept token. Before a ring wraps it is 0; after, it is the slot the
// *next* token will be written to (tokens % capacity) — not the slot before it.
TQKV_HD int oldest_slot(int64_t tokens, int capacity, bool ring) {
  return (ring && tokens > capacity) ? static_cast<int>(tokens % capacity) : 0;
}

// Absolute token position held by `slot` (valid slots only): the largest p < tokens with
// p % capacity == slot in ring mode, `slot` itself in contiguous mode.
TQKV_HD int64_t slot_position(int64_t tokens, int capacity, bool ring, int slot) {
  if (!ring || tokens <= capacity) return slot;
  return slot + static_cast<int64_t>(capacity) * ((tokens - 1 - slot) / capacity);
}

// Slot of absolute position p (the caller ensures p is still kept).
TQKV_HD int position_slot(int64_t p, int capacity, bool ring) {
  return ring ? static_cast<int>(p % capacity) : static_cast<int>(p);
}

// First visible absolute position for a decode query at position tokens - 1 with a sliding
// window of `window` tokens (0 = no window): positions >= tokens - window are visible.
TQKV_HD int64_t first_visible_position(int64_t tokens, int window) {
  return (window > 0 && tokens > window) ? tokens - window : 0;
}

}  // namespace tqkv
