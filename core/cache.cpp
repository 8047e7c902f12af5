#include "tqkv/cache.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "tqkv/error.hpp"

namespace tqkv {
namespace {

const Codebook* codebook_for(Format f, const CacheConfig& c) {
  if (!is_quantized(f)) return nullptr;
  return &codebook(c.codebook, format_bits(f), c.head_dim);
}

bool valid_format(Format f) {
  for (const Format g : kAllFormats)
    if (f == g) return true;
  return false;
}

// Finds the first non-finite value of a [n][kv_heads][d] chunk and names it.
void check_finite(const float* x, const char* what, int seq, int64_t first_position, int n,
                  int kv_heads, int d) {
  const std::size_t per_token = static_cast<std::size_t>(kv_heads) * d;
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < kv_heads; ++h)
      for (int i = 0; i < d; ++i) {
        const float v = x[t * per_token + static_cast<std::size_t>(h) * d + i];
        if (!std::isfinite(v))
          raise(Status::non_finite,
                fmt::format("append: {} of sequence {}, kv head {}, position {} (chunk token {}), "
                            "coordinate {} is {}",
                            what, seq, h, first_position + t, t, i, v));
      }
}

}  // namespace

void encode_vectors_scalar(const VectorCodec& codec, int head_dim, const float* x,
                           std::size_t x_stride, int n, uint8_t* rows, std::size_t row_stride,
                           ScalePair* scales, ScaleSide side) {
  (void)head_dim;  // the codec's rotation knows it
  for (int i = 0; i < n; ++i)
    encode_vector(codec, x + i * x_stride, rows + i * row_stride, &(scales[i].*side));
}

void validate(const CacheConfig& c) {
  auto positive = [](int v, const char* name) {
    if (v <= 0)
      raise(Status::invalid_argument, fmt::format("cache {} = {} must be positive", name, v));
  };
  positive(c.batch, "batch");
  positive(c.kv_heads, "kv_heads");
  positive(c.capacity, "capacity");
  check_head_dim(c.head_dim, "cache head_dim");
  if (!valid_format(c.format.key))
    raise(Status::invalid_argument,
          fmt::format("cache key format = {} is not a format", static_cast<int>(c.format.key)));
  if (!valid_format(c.format.value))
    raise(Status::invalid_argument,
          fmt::format("cache value format = {} is not a format", static_cast<int>(c.format.value)));
  if (c.layer < 0)
    raise(Status::invalid_argument, fmt::format("cache layer = {} must be >= 0", c.layer));
  const double rows = static_cast<double>(c.batch) * c.kv_heads * c.capacity;
  const double bytes = rows * static_cast<double>(row_bytes(Format::f16, c.head_dim) + 8) * 2;
  if (bytes > static_cast<double>(std::numeric_limits<std::ptrdiff_t>::max()) / 4)
    raise(Status::out_of_range,
          fmt::format("cache of batch {} x kv_heads {} x capacity {} is too large", c.batch,
                      c.kv_heads, c.capacity));
}

CacheView view_shape(const CacheConfig& c) {
  CacheView v;
  v.format = c.format;
  v.batch = c.batch;
  v.kv_heads = c.kv_heads;
  v.head_dim = c.head_dim;
  v.capacity = c.capacity;
  v.ring = c.ring;
  v.sign_words = (c.head_dim + 31) / 32;
  v.k_row_bytes = row_bytes(c.format.key, c.head_dim);
  v.v_row_bytes = row_bytes(c.format.value, c.head_dim);
  return v;
}

KvCache::KvCache(const CacheConfig& config) : config_(config) {
  validate(config_);
  const int d = config_.head_dim;
  for (int h = 0; h < config_.kv_heads; ++h)
    rotations_.emplace_back(d, rotation_seed(config_.seed, config_.layer, h), config_.sign_flips);
  for (const Rotation& r : rotations_)
    sign_bits_.insert(sign_bits_.end(), r.sign_bits().begin(), r.sign_bits().end());
  k_codebook_ = codebook_for(config_.format.key, config_);
  v_codebook_ = codebook_for(config_.format.value, config_);
  k_row_bytes_ = row_bytes(config_.format.key, d);
  v_row_bytes_ = row_bytes(config_.format.value, d);
  const std::size_t rows =
      static_cast<std::size_t>(config_.batch) * config_.kv_heads * config_.capacity;
  k_codes_.assign(rows * k_row_bytes_, 0);
  v_codes_.assign(rows * v_row_bytes_, 0);
  scales_.assign(rows, ScalePair{});
  tokens_.assign(static_cast<std::size_t>(config_.batch), 0);
}

void KvCache::check_seq(int seq, const char* what) const {
  if (seq < 0 || seq >= config_.batch)
    raise(Status::out_of_range,
          fmt::format("{}: sequence index {} is outside [0, {})", what, seq, config_.batch));
}

VectorCodec KvCache::key_codec(int kv_head) const {
  return {config_.format.key, &rotations_.at(kv_head), k_codebook_, config_.scale_rule};
}
VectorCodec KvCache::value_codec(int kv_head) const {
  return {config_.format.value, &rotations_.at(kv_head), v_codebook_, config_.scale_rule};
}

void KvCache::append(int seq, const float* k, const float* v, int n_tokens) {
  check_seq(seq, "append");
  if (n_tokens <= 0)
    raise(Status::invalid_argument,
          fmt::format("append: n_tokens = {} must be positive (sequence {})", n_tokens, seq));
  if (k == nullptr || v == nullptr)
    raise(Status::invalid_argument,
          fmt::format("append: {} pointer is null (sequence {})", k ? "value" : "key", seq));
  const int64_t before = tokens_[seq];
  if (!config_.ring && before + n_tokens > config_.capacity)
    raise(Status::out_of_range,
          fmt::format("append: sequence {} holds {} tokens; {} more exceed capacity {} (not a "
                      "ring buffer)",
                      seq, before, n_tokens, config_.capacity));
  const int kvh = config_.kv_heads, d = config_.head_dim;
  // Check everything before writing anything, so a rejected append leaves the cache unchanged.
  check_finite(k, "key", seq, before, n_tokens, kvh, d);
  check_finite(v, "value", seq, before, n_tokens, kvh, d);

  // In ring mode only the newest `capacity` tokens of the chunk survive; skip the others. The
  // rest is written in runs of consecutive slots (a ring run ends where the buffer wraps).
  int t = config_.ring && n_tokens > config_.capacity ? n_tokens - config_.capacity : 0;
  const CacheView layout = view();
  const std::size_t per_token = static_cast<std::size_t>(kvh) * d;
  while (t < n_tokens) {
    const int slot = position_slot(before + t, config_.capacity, config_.ring);
    const int run = std::min(n_tokens - t, config_.capacity - slot);
    for (int h = 0; h < kvh; ++h) {
      const std::size_t r = row_index(layout, seq, h, slot);
      const std::size_t x = t * per_token + static_cast<std::size_t>(h) * d;
      encoder_(key_codec(h), d, k + x, per_token, run, &k_codes_[r * k_row_bytes_], k_row_bytes_,
               &scales_[r], &ScalePair::k_bits);
      encoder_(value_codec(h), d, v + x, per_token, run, &v_codes_[r * v_row_bytes_],
               v_row_bytes_, &scales_[r], &ScalePair::v_bits);
    }
    t += run;
  }
  tokens_[seq] = before + n_tokens;
}

void KvCache::reset(int seq) {
  check_seq(seq, "reset");
  tokens_[seq] = 0;
}

int64_t KvCache::tokens(int seq) const {
  check_seq(seq, "tokens");
  return tokens_[seq];
}

int KvCache::length(int seq) const { return valid_slots(tokens(seq), config_.capacity); }

void KvCache::decode(bool key, int seq, int kv_head, int64_t position, float* out) const {
  check_seq(seq, key ? "decode_key" : "decode_value");
  if (kv_head < 0 || kv_head >= config_.kv_heads)
    raise(Status::out_of_range, fmt::format("decode: kv_head {} is outside [0, {})", kv_head,
                                            config_.kv_heads));
  const int64_t n = tokens_[seq];
  const int64_t oldest = n - valid_slots(n, config_.capacity);
  if (position < oldest || position >= n)
    raise(Status::out_of_range,
          fmt::format("decode: position {} of sequence {} is not held (held: [{}, {}))", position,
                      seq, oldest, n));
  const int slot = position_slot(position, config_.capacity, config_.ring);
  const std::size_t r = row_index(view(), seq, kv_head, slot);
  if (key)
    decode_vector(key_codec(kv_head), &k_codes_[r * k_row_bytes_], scales_[r].key(), out);
  else
    decode_vector(value_codec(kv_head), &v_codes_[r * v_row_bytes_], scales_[r].value(), out);
}

void KvCache::decode_key(int seq, int kv_head, int64_t position, float* out) const {
  decode(true, seq, kv_head, position, out);
}
void KvCache::decode_value(int seq, int kv_head, int64_t position, float* out) const {
  decode(false, seq, kv_head, position, out);
}

CacheView KvCache::view() const {
  CacheView v = view_shape(config_);
  v.k_codes = k_codes_.data();
  v.v_codes = v_codes_.data();
  v.scales = scales_.data();
  v.tokens = tokens_.data();
  v.sign_bits = sign_bits_.data();
  v.k_levels = k_codebook_ ? k_codebook_->levels_f32.data() : nullptr;
  v.v_levels = v_codebook_ ? v_codebook_->levels_f32.data() : nullptr;
  return v;
}

std::size_t KvCache::storage_bytes() const {
  return k_codes_.size() + v_codes_.size() + scales_.size() * sizeof(ScalePair);
}

}  // namespace tqkv
