#include "kv_store.hpp"

#include <algorithm>
#include <cmath>
#include <exception>
#include <fstream>
#include <functional>
#include <iterator>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tqkv/attention.hpp"
#include "tqkv/error.hpp"
#include "tqkv/rotation.hpp"

namespace tqkv::model {
namespace {

constexpr std::string_view kNoFlipSuffix = "-noflip";
constexpr std::string_view kNoFlipKeysSuffix = "-noflipk";
constexpr std::string_view kNoFlipValuesSuffix = "-noflipv";
constexpr std::string_view kPairKeySignsSuffix = "-pairsignsk";
constexpr std::string_view kHalfKeySignsSuffix = "-halfsignsk";
constexpr std::string_view kCenterSuffix = "-center";
constexpr std::string_view kSmoothSuffix = "-smooth";
constexpr std::string_view kRecentSuffix = "-recent";
constexpr std::string_view kKeySignsSuffix = "-keysigns";
constexpr int kQ40Block = 32;  // llama.cpp QK4_0
// The key-sign choice file: its "kind" and the version of its layout.
constexpr std::string_view kKeySignFileKind = "tqkv key-sign choice";
constexpr int kKeySignFileVersion = 1;

// Rounds through binary16, as the baselines store their scales in fp16.
float to_half_precision(float x) { return half_to_float(float_to_half(x)); }

// Runs body(i) for i in [0, n) on the OpenMP threads and rethrows the first exception here
// (exceptions must not escape a parallel region).
template <typename Body>
void parallel_for(int n, Body body) {
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 1)
  for (int i = 0; i < n; ++i) {
    try {
      body(i);
    } catch (...) {
#pragma omp critical(tqkv_model_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

// The exact softmax partial state of one query head over float keys/values (rows of `row`
// floats; the head's vectors at head_off): logits scale * q.k, max m, denominator d and the
// normalised output o (not sum w v: callers combine normalised outputs by weight).
struct ExactPartial {
  double m = -INFINITY, d = 0.0;
  double log_mass() const { return m + std::log(d); }  // log sum_j exp(l_j)
};
ExactPartial exact_attention(const float* qh, const float* k, const float* v, int64_t begin,
                             int64_t end, std::size_t row, std::size_t head_off, int head_dim,
                             float scale, double* o) {
  ExactPartial part;
  std::vector<double> logits(static_cast<std::size_t>(end - begin));
  for (int64_t p = begin; p < end; ++p) {
    const float* key = k + static_cast<std::size_t>(p) * row + head_off;
    double s = 0.0;
    for (int i = 0; i < head_dim; ++i) s += static_cast<double>(qh[i]) * key[i];
    logits[static_cast<std::size_t>(p - begin)] = s * scale;
    part.m = std::max(part.m, s * scale);
  }
  std::fill(o, o + head_dim, 0.0);
  for (int64_t p = begin; p < end; ++p) {
    const double w = std::exp(logits[static_cast<std::size_t>(p - begin)] - part.m);
    part.d += w;
    const float* val = v + static_cast<std::size_t>(p) * row + head_off;
    for (int i = 0; i < head_dim; ++i) o[i] += w * val[i];
  }
  for (int i = 0; i < head_dim; ++i) o[i] /= part.d;
  return part;
}

// out[t][h][i] = x[t][h][i] * factors[h / group][i] for n tokens of `heads` query heads, where
// each group of query heads shares its KV head's `d` factors (out may be x).
void scale_by_kv_head(const float* x, int n, int heads, int group, int d, const float* factors, float* out) {
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < heads; ++h) {
      const std::size_t at = (static_cast<std::size_t>(t) * heads + h) * d;
      const float* f = factors + static_cast<std::size_t>(h / group) * d;
      for (int i = 0; i < d; ++i) out[at + i] = x[at + i] * f[i];
    }
  }
}

class TqkvStore final : public KvStore {
 public:
  TqkvStore(const KvSpec& spec, int layer, int kv_heads, int head_dim, int capacity)
      : cache_([&] {
          CacheConfig c;
          c.batch = 1;
          c.kv_heads = kv_heads;
          c.head_dim = head_dim;
          c.capacity = capacity;
          c.format = spec.format;
          c.layer = layer;
          // The store applies the signs itself unless both sides use the library's draw.
          c.sign_flips = spec.key_sign_flips && spec.value_sign_flips &&
                         spec.key_sign_candidates == 0 && spec.key_sign_choice.empty() &&
                         spec.key_sign_tie == KeySignTie::none;
          c.seed = spec.rotation_seed;
          c.scale_rule = spec.scale_rule;
          c.codebook = spec.codebook;
          return c;
        }()),
        backend_(spec.backend), recent_(spec.recent_window),
        row_(static_cast<std::size_t>(kv_heads) * head_dim),
        layer_(layer), base_seed_(spec.rotation_seed), candidates_(spec.key_sign_candidates) {
    if (recent_ < 0) {
      raise(Status::invalid_argument,
            fmt::format("kv store: recent_window {} must be >= 0", recent_));
    }
    if (!spec.key_sign_choice.empty()) check_key_sign_choice(spec);
    if (!cache_.config().sign_flips) {
      if (spec.value_sign_flips) value_signs_ = drawn_signs(base_seed_);
      if (!spec.key_sign_choice.empty()) {
        key_signs_ = key_signs_of(spec.key_sign_choice);
      } else if (spec.key_sign_flips && candidates_ == 0) {
        key_signs_ = drawn_signs(base_seed_);
        tie_pairs(spec.key_sign_tie, key_signs_);
      }
    }
    // The window's f16 copy; every token is kept (a real cache would drop a token from the
    // window once older than recent_window, and only then quantize it: the same bytes).
    if (recent_ > 0) {
      recent_k_.resize(row_ * static_cast<std::size_t>(capacity));
      recent_v_.resize(row_ * static_cast<std::size_t>(capacity));
    }
  }

  void append(const float* k, const float* v, int n) override {
    if (calibrating()) {  // the key signs wait for the first chunk's queries
      pending_k_.insert(pending_k_.end(), k, k + static_cast<std::size_t>(n) * row_);
      pending_v_.insert(pending_v_.end(), v, v + static_cast<std::size_t>(n) * row_);
      return;
    }
    if (!key_signs_.empty()) k = signed_rows(k, n, key_signs_, signed_k_);
    if (!value_signs_.empty()) v = signed_rows(v, n, value_signs_, signed_v_);
    append_unsigned(k, v, n);
  }

  void attend(const float* q, int n, int q_heads, float* out) override {
    if (calibrating()) {
      if (pending_k_.empty()) raise(Status::invalid_argument, "kv store: attend before any append");
      key_signs_ = key_signs_of(best_key_candidates(q, n, q_heads));
      std::vector<float> k = std::move(pending_k_), v = std::move(pending_v_);
      pending_k_.clear();
      pending_v_.clear();
      append(k.data(), v.data(), static_cast<int>(k.size() / row_));
    }
    const int group = q_heads / cache_.kv_heads();
    const int d = cache_.head_dim();
    if (!key_signs_.empty()) {  // S q . S k = q . k
      signed_q_.resize(static_cast<std::size_t>(n) * q_heads * d);
      scale_by_kv_head(q, n, q_heads, group, d, key_signs_.data(), signed_q_.data());
      q = signed_q_.data();
    }
    attend_unsigned(q, n, q_heads, out);
    if (!value_signs_.empty())  // the output is a mix of S v: undo S
      scale_by_kv_head(out, n, q_heads, group, d, value_signs_.data(), out);
  }

  int64_t length() const override {
    return cache_.tokens(0) + static_cast<int64_t>(pending_k_.size() / row_);
  }
  void reset() override {
    cache_.reset(0);
    pending_k_.clear();
    pending_v_.clear();
    if (candidates_ > 0) key_signs_.clear();  // a new window calibrates again
  }

 private:
  bool calibrating() const { return candidates_ > 0 && key_signs_.empty(); }

  // A fixed choice needs one candidate per KV head, each index fitting the byte it costs, and
  // no other option setting the key signs.
  void check_key_sign_choice(const KvSpec& spec) const {
    const std::string_view other = key_sign_option(spec);
    if (!other.empty()) {
      raise(Status::invalid_argument,
            fmt::format("kv store: a fixed key-sign choice cannot be combined with '{}'", other));
    }
    if (spec.key_sign_choice.size() != static_cast<std::size_t>(cache_.kv_heads())) {
      raise(Status::invalid_argument,
            fmt::format("kv store: key-sign choice of {} KV heads for {}", spec.key_sign_choice.size(),
                        cache_.kv_heads()));
    }
    for (int c : spec.key_sign_choice) {
      if (c < 0 || c >= kMaxKeySignCandidates) {
        raise(Status::invalid_argument,
              fmt::format("kv store: key-sign candidate {} is not in [0, {})", c, kMaxKeySignCandidates));
      }
    }
  }

  // The sign diagonal a cache with this base seed draws for KV head h, as +-1 into out[0, d).
  void head_draw(uint64_t base_seed, int h, float* out) const {
    const int d = cache_.head_dim();
    const Rotation drawn(d, rotation_seed(base_seed, layer_, h), true);
    for (int i = 0; i < d; ++i) out[i] = drawn.negated(i) ? -1.0f : 1.0f;
  }

  // The same for every KV head, [kv_heads][head_dim].
  std::vector<float> drawn_signs(uint64_t base_seed) const {
    std::vector<float> signs(row_);
    for (int h = 0; h < cache_.kv_heads(); ++h) {
      head_draw(base_seed, h, &signs[static_cast<std::size_t>(h) * cache_.head_dim()]);
    }
    return signs;
  }

  // Key-sign candidate c for KV head h into out[0, d): c = 0 none (+1, the plain Hadamard),
  // c >= 1 the draw of base seed + c - 1 (c = 1: the default signs).
  void candidate_signs(int c, int h, float* out) const {
    if (c == 0) {
      std::fill(out, out + cache_.head_dim(), 1.0f);
    } else {
      head_draw(base_seed_ + static_cast<uint64_t>(c - 1), h, out);
    }
  }

  // The key signs of one candidate per KV head, [kv_heads][head_dim].
  std::vector<float> key_signs_of(const std::vector<int>& choice) const {
    std::vector<float> signs(row_);
    for (int h = 0; h < cache_.kv_heads(); ++h) {
      candidate_signs(choice[static_cast<std::size_t>(h)], h,
                      &signs[static_cast<std::size_t>(h) * cache_.head_dim()]);
    }
    return signs;
  }

  // The second coordinate of each pair takes the sign of the first, in every KV head (head_dim
  // is even: the cache takes multiples of 16).
  void tie_pairs(KeySignTie tie, std::vector<float>& signs) const {
    const int d = cache_.head_dim();
    for (std::size_t head = 0; head < signs.size(); head += static_cast<std::size_t>(d)) {
      float* s = &signs[head];
      for (int i = 0; i < d / 2; ++i) {
        if (tie == KeySignTie::adjacent_pairs) s[2 * i + 1] = s[2 * i];
        if (tie == KeySignTie::half_pairs) s[i + d / 2] = s[i];
      }
    }
  }

  // -keysignsN: for each KV head, the candidate (candidate_signs) whose quantized keys of the
  // held chunk give the smallest squared logit error sum_q sum_t (q . (k_t - k^_t))^2 over the
  // chunk's queries of the head's query group.
  std::vector<int> best_key_candidates(const float* q, int n, int q_heads) const {
    const int d = cache_.head_dim();
    const int group = q_heads / cache_.kv_heads();
    const std::size_t held = pending_k_.size() / row_;
    std::vector<int> best_of(static_cast<std::size_t>(cache_.kv_heads()), 0);
    std::vector<uint8_t> code(row_bytes(cache_.config().format.key, d));
    std::vector<float> signs(static_cast<std::size_t>(d)), x(static_cast<std::size_t>(d)),
        decoded(static_cast<std::size_t>(d));
    std::vector<double> error(static_cast<std::size_t>(d));
    for (int h = 0; h < cache_.kv_heads(); ++h) {
      const std::size_t off = static_cast<std::size_t>(h) * d;
      std::vector<double> gram(static_cast<std::size_t>(d) * d, 0.0);  // sum over queries of q q^T
      for (int t = 0; t < n; ++t) {
        for (int g = h * group; g < (h + 1) * group; ++g) {
          const float* qg = q + (static_cast<std::size_t>(t) * q_heads + g) * d;
          for (int i = 0; i < d; ++i) {
            double* gram_row = &gram[static_cast<std::size_t>(i) * d];
            for (int j = 0; j < d; ++j) gram_row[j] += static_cast<double>(qg[i]) * qg[j];
          }
        }
      }
      const VectorCodec codec = cache_.key_codec(h);  // the cache's rotation has no signs
      double best = INFINITY;
      for (int c = 0; c < candidates_; ++c) {
        candidate_signs(c, h, signs.data());
        double total = 0.0;
        for (std::size_t t = 0; t < held; ++t) {
          const float* k = &pending_k_[t * row_ + off];
          for (int i = 0; i < d; ++i) x[i] = k[i] * signs[i];
          uint16_t scale_bits = 0;
          encode_vector(codec, x.data(), code.data(), &scale_bits);
          decode_vector(codec, code.data(), bf16_bits_to_float(scale_bits), decoded.data());
          for (int i = 0; i < d; ++i) error[i] = static_cast<double>(x[i] - decoded[i]) * signs[i];
          for (int i = 0; i < d; ++i) {
            const double* gram_row = &gram[static_cast<std::size_t>(i) * d];
            for (int j = 0; j < d; ++j) total += error[i] * gram_row[j] * error[j];
          }
        }
        if (total < best) {
          best = total;
          best_of[static_cast<std::size_t>(h)] = c;
        }
      }
    }
    return best_of;
  }

  // n rows of [kv_heads][head_dim] times `signs`, into `buffer`.
  const float* signed_rows(const float* x, int n, const std::vector<float>& signs,
                           std::vector<float>& buffer) const {
    buffer.resize(static_cast<std::size_t>(n) * row_);
    for (std::size_t i = 0; i < buffer.size(); ++i) buffer[i] = x[i] * signs[i % row_];
    return buffer.data();
  }

  void append_unsigned(const float* k, const float* v, int n) {
    const int64_t before = cache_.tokens(0);
    cache_.append(0, k, v, n);
    if (recent_ == 0) return;
    const std::size_t at = static_cast<std::size_t>(before) * row_;
    const std::size_t count = static_cast<std::size_t>(n) * row_;
    std::transform(k, k + count, recent_k_.begin() + static_cast<std::ptrdiff_t>(at), to_half_precision);
    std::transform(v, v + count, recent_v_.begin() + static_cast<std::ptrdiff_t>(at), to_half_precision);
  }

  void attend_unsigned(const float* q, int n, int q_heads, float* out) {
    const int64_t total = cache_.tokens(0);
    const std::size_t stride = static_cast<std::size_t>(q_heads) * cache_.head_dim();
    // Every token of the chunk is already in the cache; a view whose token count stops at
    // token i makes the decode kernel see exactly the causal prefix of token i, so the tokens
    // of a chunk can be attended in parallel.
    parallel_for(n, [&](int i) {
      const int64_t visible = total - n + i + 1;
      const float* qi = q + i * stride;
      float* oi = out + i * stride;
      if (recent_ == 0) {
        decode_prefix(visible, qi, oi, q_heads, nullptr);
      } else {
        attend_with_window(visible, qi, oi, q_heads);
      }
    });
  }

  // decode_attention over positions [0, visible) of the cache; lse (optional) gets each head's
  // log-sum-exp.
  void decode_prefix(int64_t visible, const float* q, float* out, int q_heads,
                     const float* sinks, float* lse = nullptr) const {
    CacheView view = cache_.view();
    view.tokens = &visible;
    DecodeParams params;
    params.q_heads = q_heads;
    params.sinks = sinks;
    params.lse = lse;
    ExecContext ctx;
    ctx.threads = 1;
    ctx.backend = backend_;
    decode_attention(view, q, out, params, ctx);
  }

  // Positions [visible - recent_, visible) exactly from the f16 window, older ones from the
  // cache; the two attention states merged through their log-sum-exps.
  void attend_with_window(int64_t visible, const float* q, float* out, int q_heads) const {
    const int d = cache_.head_dim();
    const int group = q_heads / cache_.kv_heads();
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    const int64_t old = std::max<int64_t>(0, visible - recent_);
    std::vector<double> recent_out(static_cast<std::size_t>(q_heads) * d);
    std::vector<float> recent_f(recent_out.size()), recent_lse(static_cast<std::size_t>(q_heads));
    for (int h = 0; h < q_heads; ++h) {
      const ExactPartial part = exact_attention(
          q + static_cast<std::size_t>(h) * d, recent_k_.data(), recent_v_.data(), old, visible,
          row_, static_cast<std::size_t>(h / group) * d, d, scale,
          &recent_out[static_cast<std::size_t>(h) * d]);
      recent_lse[static_cast<std::size_t>(h)] = static_cast<float>(part.log_mass());
    }
    std::transform(recent_out.begin(), recent_out.end(), recent_f.begin(),
                   [](double x) { return static_cast<float>(x); });
    if (old == 0) {
      std::copy(recent_f.begin(), recent_f.end(), out);
      return;
    }
    std::vector<float> old_lse(static_cast<std::size_t>(q_heads));
    decode_prefix(old, q, out, q_heads, nullptr, old_lse.data());
    ExecContext ctx;
    ctx.backend = Backend::cpu;
    merge_attention_states(out, old_lse.data(), recent_f.data(), recent_lse.data(), out, nullptr, q_heads,
                           d, OutputType::f32, ctx);
  }

  KvCache cache_;
  Backend backend_;
  int recent_;
  std::size_t row_;
  std::vector<float> recent_k_, recent_v_;  // f16-rounded copies, [capacity][kv_heads][d]
  // Signs applied by this store when the cache has none (one side flipped, -keysignsN, a fixed
  // key-sign choice or tied key signs):
  // [kv_heads][head_dim] of +-1, empty where none apply.
  int layer_;
  uint64_t base_seed_;
  int candidates_;  // -keysignsN: N, else 0
  std::vector<float> key_signs_, value_signs_;
  std::vector<float> pending_k_, pending_v_;  // appended before the key signs are chosen
  std::vector<float> signed_k_, signed_v_, signed_q_;
};

// Keys and values kept as float after fake quantization; attention in float.
class FloatStore final : public KvStore {
 public:
  FloatStore(KvKind kind, int kv_heads, int head_dim, int capacity)
      : kind_(kind), kv_heads_(kv_heads), head_dim_(head_dim), capacity_(capacity),
        row_(static_cast<std::size_t>(kv_heads) * head_dim),
        k_(row_ * capacity), v_(row_ * capacity),
        k_raw_(kind == KvKind::kivi2 ? row_ * capacity : 0) {
    if (kind == KvKind::q4_0 && head_dim % kQ40Block != 0) {
      raise(Status::unsupported,
            fmt::format("q4_0 baseline: head_dim {} is not a multiple of {}", head_dim, kQ40Block));
    }
    if (kind == KvKind::kivi2 && head_dim % kKiviGroup != 0) {
      raise(Status::unsupported,
            fmt::format("kivi2 baseline: head_dim {} is not a multiple of {}", head_dim, kKiviGroup));
    }
  }

  void append(const float* k, const float* v, int n) override {
    if (n < 0 || length_ + n > capacity_) {
      raise(Status::out_of_range, fmt::format("kv store: appending {} tokens to {} exceeds the "
                                              "capacity {}", n, length_, capacity_));
    }
    for (int t = 0; t < n; ++t) {
      const std::size_t at = static_cast<std::size_t>(length_ + t) * row_;
      const float* kt = k + static_cast<std::size_t>(t) * row_;
      const float* vt = v + static_cast<std::size_t>(t) * row_;
      switch (kind_) {
        case KvKind::q4_0:
          fake_quant_q4_0(kt, &k_[at], static_cast<int>(row_));
          fake_quant_q4_0(vt, &v_[at], static_cast<int>(row_));
          break;
        case KvKind::kivi2:
          std::copy(kt, kt + row_, &k_raw_[at]);
          for (std::size_t g = 0; g < row_; g += kKiviGroup) {
            fake_quant_affine2(vt + g, &v_[at + g], kKiviGroup, 1);
          }
          break;
        default:
          std::copy(kt, kt + row_, &k_[at]);
          std::copy(vt, vt + row_, &v_[at]);
          break;
      }
    }
    const int64_t before = length_;
    length_ += n;
    if (kind_ == KvKind::kivi2) {
      // Keys: each channel of every group of kKiviGroup tokens completed by this append.
      for (int64_t g = before / kKiviGroup; g < length_ / kKiviGroup; ++g) {
        const std::size_t at = static_cast<std::size_t>(g) * kKiviGroup * row_;
        for (std::size_t c = 0; c < row_; ++c) {
          fake_quant_affine2(&k_raw_[at + c], &k_[at + c], kKiviGroup, static_cast<int>(row_));
        }
      }
    }
  }

  void attend(const float* q, int n, int q_heads, float* out) override {
    const int group = q_heads / kv_heads_;
    const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim_));
    const int64_t total = length_;
    parallel_for(n * q_heads, [&](int item) {
      const int i = item / q_heads, h = item % q_heads;
      const int64_t visible = total - n + i + 1;
      // KIVI: a key group is quantized once complete; the query at position visible - 1 sees
      // groups completed by then quantized and the newest, incomplete one unquantized.
      const int64_t quantized_keys =
          kind_ == KvKind::kivi2 ? visible / kKiviGroup * kKiviGroup : visible;
      const float* qh = q + (static_cast<std::size_t>(i) * q_heads + h) * head_dim_;
      const std::size_t head_off = static_cast<std::size_t>(h / group) * head_dim_;
      std::vector<float> scores(static_cast<std::size_t>(visible));
      float max_score = -INFINITY;
      for (int64_t p = 0; p < visible; ++p) {
        const float* key = (p < quantized_keys ? k_.data() : k_raw_.data()) +
                           static_cast<std::size_t>(p) * row_ + head_off;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int d = 0; d < head_dim_; ++d) s += qh[d] * key[d];
        scores[static_cast<std::size_t>(p)] = s * scale;
        max_score = std::max(max_score, s * scale);
      }
      std::vector<double> acc(static_cast<std::size_t>(head_dim_), 0.0);
      double denom = 0.0;
      for (int64_t p = 0; p < visible; ++p) {
        const double w = std::exp(static_cast<double>(scores[static_cast<std::size_t>(p)] - max_score));
        denom += w;
        const float* val = v_.data() + static_cast<std::size_t>(p) * row_ + head_off;
        for (int d = 0; d < head_dim_; ++d) acc[static_cast<std::size_t>(d)] += w * val[d];
      }
      float* oh = out + (static_cast<std::size_t>(i) * q_heads + h) * head_dim_;
      for (int d = 0; d < head_dim_; ++d) oh[d] = static_cast<float>(acc[static_cast<std::size_t>(d)] / denom);
    });
  }

  int64_t length() const override { return length_; }
  void reset() override { length_ = 0; }

 private:
  KvKind kind_;
  int kv_heads_, head_dim_, capacity_;
  std::size_t row_;
  std::vector<float> k_, v_, k_raw_;
  int64_t length_ = 0;
};

// Subtracts a frozen per-KV-head key mean (the first chunk's) before the wrapped store sees K.
class CenteredStore final : public KvStore {
 public:
  CenteredStore(std::unique_ptr<KvStore> inner, int kv_heads, int head_dim)
      : inner_(std::move(inner)), row_(static_cast<std::size_t>(kv_heads) * head_dim) {}

  void append(const float* k, const float* v, int n) override {
    if (n <= 0) return inner_->append(k, v, n);
    if (mean_.empty()) {
      mean_.assign(row_, 0.0f);
      for (int t = 0; t < n; ++t)
        for (std::size_t i = 0; i < row_; ++i) mean_[i] += k[t * row_ + i] / static_cast<float>(n);
    }
    centered_.resize(static_cast<std::size_t>(n) * row_);
    for (int t = 0; t < n; ++t)
      for (std::size_t i = 0; i < row_; ++i) centered_[t * row_ + i] = k[t * row_ + i] - mean_[i];
    inner_->append(centered_.data(), v, n);
  }
  void attend(const float* q, int n, int q_heads, float* out) override {
    inner_->attend(q, n, q_heads, out);
  }
  int64_t length() const override { return inner_->length(); }
  void reset() override {
    inner_->reset();
    mean_.clear();
  }

 private:
  std::unique_ptr<KvStore> inner_;
  std::size_t row_;
  std::vector<float> mean_, centered_;
};

// Divides each key channel by s_c and multiplies the queries' by s_c (q.k unchanged). s is
// calibrated when the first chunk is attended, from its keys and queries, so the first
// append is held back until then.
class SmoothedStore final : public KvStore {
 public:
  SmoothedStore(std::unique_ptr<KvStore> inner, int kv_heads, int head_dim)
      : inner_(std::move(inner)), kv_heads_(kv_heads), head_dim_(head_dim),
        row_(static_cast<std::size_t>(kv_heads) * head_dim) {}

  void append(const float* k, const float* v, int n) override {
    if (factor_.empty()) {  // not calibrated yet: keep until the queries are known
      pending_k_.insert(pending_k_.end(), k, k + static_cast<std::size_t>(n) * row_);
      pending_v_.insert(pending_v_.end(), v, v + static_cast<std::size_t>(n) * row_);
      return;
    }
    append_scaled(k, v, n);
  }

  void attend(const float* q, int n, int q_heads, float* out) override {
    if (factor_.empty()) {
      if (pending_k_.empty()) {
        raise(Status::invalid_argument, "kv store: attend before any append");
      }
      calibrate(q, n, q_heads);
      const int held = static_cast<int>(pending_k_.size() / row_);
      append_scaled(pending_k_.data(), pending_v_.data(), held);
      pending_k_ = {};
      pending_v_ = {};
    }
    const int group = q_heads / kv_heads_;
    scaled_q_.resize(static_cast<std::size_t>(n) * q_heads * head_dim_);
    scale_by_kv_head(q, n, q_heads, group, head_dim_, factor_.data(), scaled_q_.data());
    inner_->attend(scaled_q_.data(), n, q_heads, out);
  }

  int64_t length() const override {
    return inner_->length() + static_cast<int64_t>(pending_k_.size() / row_);
  }
  void reset() override {
    inner_->reset();
    factor_.clear();
    pending_k_.clear();
    pending_v_.clear();
  }

 private:
  // s_c = (E[k_c^2] / E[q_c^2])^(1/4) over the held keys and the n queries (all query heads
  // of the KV head); 1 where either side is zero.
  void calibrate(const float* q, int n, int q_heads) {
    const int group = q_heads / kv_heads_;
    const std::size_t held = pending_k_.size() / row_;
    std::vector<double> k_sq(row_, 0.0), q_sq(row_, 0.0);
    for (std::size_t t = 0; t < held; ++t) {
      for (std::size_t i = 0; i < row_; ++i) k_sq[i] += static_cast<double>(pending_k_[t * row_ + i]) * pending_k_[t * row_ + i];
    }
    for (int t = 0; t < n; ++t) {
      for (int h = 0; h < q_heads; ++h) {
        const float* qh = q + (static_cast<std::size_t>(t) * q_heads + h) * head_dim_;
        double* acc = &q_sq[static_cast<std::size_t>(h / group) * head_dim_];
        for (int c = 0; c < head_dim_; ++c) acc[c] += static_cast<double>(qh[c]) * qh[c];
      }
    }
    factor_.resize(row_);
    for (std::size_t i = 0; i < row_; ++i) {
      const double ek = k_sq[i] / static_cast<double>(held);
      const double eq = q_sq[i] / (static_cast<double>(n) * group);
      const double s = std::pow(ek / eq, 0.25);
      factor_[i] = ek > 0.0 && eq > 0.0 && std::isfinite(s) ? static_cast<float>(s) : 1.0f;
    }
  }

  void append_scaled(const float* k, const float* v, int n) {
    scaled_k_.resize(static_cast<std::size_t>(n) * row_);
    for (int t = 0; t < n; ++t) {
      for (std::size_t i = 0; i < row_; ++i) scaled_k_[t * row_ + i] = k[t * row_ + i] / factor_[i];
    }
    inner_->append(scaled_k_.data(), v, n);
  }

  std::unique_ptr<KvStore> inner_;
  int kv_heads_, head_dim_;
  std::size_t row_;
  std::vector<float> factor_;               // [kv_heads][head_dim]; empty until calibrated
  std::vector<float> pending_k_, pending_v_;  // appended before calibration
  std::vector<float> scaled_k_, scaled_q_;
};

}  // namespace

void fake_quant_q4_0(const float* x, float* y, int n) {
  for (int b = 0; b < n; b += kQ40Block) {
    // ggml's reference rule: d = (the signed value of largest magnitude) / -8, q = x/d + 8.
    float amax = 0.0f, vmax = 0.0f;
    for (int j = b; j < b + kQ40Block; ++j) {
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        vmax = x[j];
      }
    }
    const float d = vmax / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const float dh = to_half_precision(d);
    for (int j = b; j < b + kQ40Block; ++j) {
      const int q = std::min(15, static_cast<int>(x[j] * id + 8.5f));
      y[j] = static_cast<float>(q - 8) * dh;
    }
  }
}

void fake_quant_affine2(const float* x, float* y, int n, int stride) {
  constexpr int kLevels = 3;  // 2 bits: q in {0, 1, 2, 3}
  float lo = INFINITY, hi = -INFINITY;
  for (int j = 0; j < n; ++j) {
    lo = std::min(lo, x[static_cast<std::ptrdiff_t>(j) * stride]);
    hi = std::max(hi, x[static_cast<std::ptrdiff_t>(j) * stride]);
  }
  const float scale = to_half_precision((hi - lo) / kLevels);
  const float minimum = to_half_precision(lo);
  for (int j = 0; j < n; ++j) {
    const float v = x[static_cast<std::ptrdiff_t>(j) * stride];
    const float q = scale > 0.0f ? std::clamp(std::nearbyint((v - minimum) / scale), 0.0f,
                                              static_cast<float>(kLevels))
                                 : 0.0f;
    y[static_cast<std::ptrdiff_t>(j) * stride] = minimum + q * scale;
  }
}

ErrorProbeStore::ErrorProbeStore(const std::vector<KvSpec>& shadows, int layer, int kv_heads,
                                 int head_dim, int capacity, int q_heads)
    : exact_(make_kv_store(KvSpec{KvKind::f32}, layer, kv_heads, head_dim, capacity)),
      head_dim_(head_dim), q_heads_(q_heads),
      err_sq_(shadows.size() * static_cast<std::size_t>(q_heads), 0.0),
      ref_sq_(static_cast<std::size_t>(q_heads), 0.0) {
  for (const KvSpec& s : shadows) {
    shadows_.push_back(make_kv_store(s, layer, kv_heads, head_dim, capacity));
  }
}

void ErrorProbeStore::append(const float* k, const float* v, int n) {
  exact_->append(k, v, n);
  for (auto& s : shadows_) s->append(k, v, n);
}

void ErrorProbeStore::attend(const float* q, int n, int q_heads, float* out) {
  exact_->attend(q, n, q_heads, out);
  const std::size_t count = static_cast<std::size_t>(n) * q_heads * head_dim_;
  scratch_.resize(count);
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < q_heads; ++h) {
      const float* o = out + (static_cast<std::size_t>(t) * q_heads + h) * head_dim_;
      for (int d = 0; d < head_dim_; ++d) ref_sq_[static_cast<std::size_t>(h)] += static_cast<double>(o[d]) * o[d];
    }
  }
  for (std::size_t s = 0; s < shadows_.size(); ++s) {
    shadows_[s]->attend(q, n, q_heads, scratch_.data());
    for (int t = 0; t < n; ++t) {
      for (int h = 0; h < q_heads; ++h) {
        const std::size_t at = (static_cast<std::size_t>(t) * q_heads + h) * head_dim_;
        double e = 0;
        for (int d = 0; d < head_dim_; ++d) {
          const double diff = static_cast<double>(scratch_[at + d]) - out[at + d];
          e += diff * diff;
        }
        err_sq_[s * q_heads_ + static_cast<std::size_t>(h)] += e;
      }
    }
  }
}

void ErrorProbeStore::reset() {
  exact_->reset();
  for (auto& s : shadows_) s->reset();
}

double ErrorProbeStore::squared_error(int shadow, int head) const {
  return err_sq_[static_cast<std::size_t>(shadow) * q_heads_ + static_cast<std::size_t>(head)];
}

double ErrorProbeStore::relative_error(int shadow, int head) const {
  double e = 0, r = 0;
  for (int h = 0; h < q_heads_; ++h) {
    if (head >= 0 && h != head) continue;
    e += squared_error(shadow, h);
    r += reference_square(h);
  }
  return r > 0 ? std::sqrt(e / r) : 0.0;
}

KvSpec parse_kv_spec(std::string_view text) {
  const std::string whole(text);
  auto fail = [&](const std::string& why) -> void {
    raise(Status::invalid_argument, fmt::format("KV format '{}': {}", whole, why));
  };
  bool noflip = false, noflip_keys = false, noflip_values = false, center = false, smooth = false;
  bool pair_signs = false, half_signs = false;
  int recent = 0, key_signs = 0;
  // Option suffixes, peeled from the end.
  for (;;) {
    auto take = [&](std::string_view suffix, bool& flag) {
      if (text.size() <= suffix.size() || !text.ends_with(suffix)) return false;
      if (flag) fail(fmt::format("'{}' given twice", suffix));
      flag = true;
      text.remove_suffix(suffix.size());
      return true;
    };
    if (take(kNoFlipSuffix, noflip) || take(kNoFlipKeysSuffix, noflip_keys) ||
        take(kNoFlipValuesSuffix, noflip_values) || take(kPairKeySignsSuffix, pair_signs) ||
        take(kHalfKeySignsSuffix, half_signs) || take(kCenterSuffix, center) ||
        take(kSmoothSuffix, smooth)) {
      continue;
    }
    // "-recentN" / "-keysignsN": a positive count; "-recent" followed by another suffix is
    // not this one.
    auto take_count = [&](std::string_view suffix, int& value, const char* what,
                          const char* example) {
      const auto at = text.rfind(suffix);
      if (at == std::string_view::npos || at == 0) return false;
      const std::string_view count = text.substr(at + suffix.size());
      if (count.find('-') != std::string_view::npos) return false;
      if (value > 0) fail(fmt::format("'{}' given twice", suffix));
      const bool digits = !count.empty() && count.size() <= 9 &&
                          std::all_of(count.begin(), count.end(), [](char c) { return c >= '0' && c <= '9'; });
      value = digits ? std::stoi(std::string(count)) : 0;
      if (value <= 0) {
        fail(fmt::format("{} in '{}{}' must be a positive {}", what, suffix, count, example));
      }
      text.remove_suffix(text.size() - at);
      return true;
    };
    if (take_count(kRecentSuffix, recent, "the recent window", "token count (e.g. -recent64)") ||
        take_count(kKeySignsSuffix, key_signs, "the number of candidates",
                   "count, at most 256 (e.g. -keysigns4)")) {
      continue;
    }
    break;
  }
  KvSpec spec;
  if (text == "f32") {
    spec.kind = KvKind::f32;
  } else if (text == "q4_0") {
    spec.kind = KvKind::q4_0;
  } else if (text == "kivi2") {
    spec.kind = KvKind::kivi2;
  } else {
    spec.format = parse_kv_format(text);
  }
  const std::string_view tqkv_only = noflip          ? kNoFlipSuffix
                                    : noflip_keys     ? kNoFlipKeysSuffix
                                    : noflip_values   ? kNoFlipValuesSuffix
                                    : pair_signs      ? kPairKeySignsSuffix
                                    : half_signs      ? kHalfKeySignsSuffix
                                    : recent > 0      ? kRecentSuffix
                                    : key_signs > 0   ? kKeySignsSuffix
                                                      : std::string_view{};
  if (spec.kind != KvKind::tqkv && !tqkv_only.empty()) {
    fail(fmt::format("'{}' applies to tqkv formats only", tqkv_only));
  }
  if (noflip && (noflip_keys || noflip_values)) {
    fail(fmt::format("'{}' already covers '{}'", kNoFlipSuffix,
                     noflip_keys ? kNoFlipKeysSuffix : kNoFlipValuesSuffix));
  }
  if (key_signs > kMaxKeySignCandidates) {
    fail(fmt::format("the number of candidates in '{}{}' must be at most {}", kKeySignsSuffix,
                     key_signs, kMaxKeySignCandidates));
  }
  if (key_signs > 0 && (noflip || noflip_keys)) {
    fail(fmt::format("'{}' chooses the key signs; it cannot be combined with '{}'", kKeySignsSuffix,
                     noflip ? kNoFlipSuffix : kNoFlipKeysSuffix));
  }
  if (pair_signs || half_signs) {
    const std::string_view tie = pair_signs ? kPairKeySignsSuffix : kHalfKeySignsSuffix;
    const std::string_view other = noflip                     ? kNoFlipSuffix
                                   : noflip_keys              ? kNoFlipKeysSuffix
                                   : key_signs > 0            ? kKeySignsSuffix
                                   : pair_signs && half_signs ? kHalfKeySignsSuffix
                                                              : std::string_view{};
    if (!other.empty()) {
      fail(fmt::format("'{}' sets the key signs; it cannot be combined with '{}'", tie, other));
    }
    spec.key_sign_tie = pair_signs ? KeySignTie::adjacent_pairs : KeySignTie::half_pairs;
  }
  spec.key_sign_candidates = key_signs;
  spec.key_sign_flips = !noflip && !noflip_keys;
  spec.value_sign_flips = !noflip && !noflip_values;
  spec.center_keys = center;
  spec.smooth_keys = smooth;
  spec.recent_window = recent;
  return spec;
}

std::string kv_spec_name(const KvSpec& spec) {
  std::string name;
  switch (spec.kind) {
    case KvKind::f32: name = "f32"; break;
    case KvKind::q4_0: name = "q4_0"; break;
    case KvKind::kivi2: name = "kivi2"; break;
    case KvKind::tqkv: name = kv_format_name(spec.format); break;
  }
  if (!spec.key_sign_flips && !spec.value_sign_flips) {
    name += kNoFlipSuffix;
  } else if (!spec.key_sign_flips) {
    name += kNoFlipKeysSuffix;
  } else if (!spec.value_sign_flips) {
    name += kNoFlipValuesSuffix;
  }
  if (spec.key_sign_tie == KeySignTie::adjacent_pairs) name += kPairKeySignsSuffix;
  if (spec.key_sign_tie == KeySignTie::half_pairs) name += kHalfKeySignsSuffix;
  if (spec.smooth_keys) name += kSmoothSuffix;
  if (spec.center_keys) name += kCenterSuffix;
  if (spec.key_sign_candidates > 0) {
    name += fmt::format("{}{}", kKeySignsSuffix, spec.key_sign_candidates);
  }
  if (spec.recent_window > 0) name += fmt::format("{}{}", kRecentSuffix, spec.recent_window);
  return name;
}

double kv_spec_fixed_bytes(const KvSpec& spec, int head_dim) {
  constexpr double kF16 = 2, kF32 = 4;
  double bytes = spec.recent_window * 2.0 * head_dim * kF16;
  if (spec.center_keys) bytes += head_dim * kF32;
  if (spec.smooth_keys) bytes += head_dim * kF32;
  // The index of the chosen candidate.
  if (spec.key_sign_candidates > 0 || !spec.key_sign_choice.empty()) bytes += 1;
  if (spec.kind == KvKind::kivi2) bytes += (kKiviGroup - 1) * head_dim * kF16;
  return bytes;
}

std::string_view key_sign_option(const KvSpec& spec) {
  if (!spec.key_sign_flips) return spec.value_sign_flips ? kNoFlipKeysSuffix : kNoFlipSuffix;
  if (spec.key_sign_candidates > 0) return kKeySignsSuffix;
  if (spec.key_sign_tie == KeySignTie::adjacent_pairs) return kPairKeySignsSuffix;
  if (spec.key_sign_tie == KeySignTie::half_pairs) return kHalfKeySignsSuffix;
  return {};
}

double kv_spec_bytes_per_position(const KvSpec& spec, int head_dim) {
  const double d = head_dim;
  switch (spec.kind) {
    case KvKind::tqkv: return static_cast<double>(kv_bytes_per_position(spec.format, head_dim));
    case KvKind::f32: return 2 * d * 4;
    case KvKind::q4_0: return 2 * (d / kQ40Block) * (2 + kQ40Block / 2);
    case KvKind::kivi2:
      // 2-bit codes for K and V; V: fp16 scale + min per group of coordinates; K: fp16 scale +
      // min per channel per group of tokens, i.e. 4 bytes per channel / kKiviGroup per token.
      return 2 * d / 4 + (d / kKiviGroup) * 4 + d * 4 / kKiviGroup;
  }
  return 0;
}

double KeySignChoice::layer_error(int layer, const std::vector<int>& a) const {
  const auto l = static_cast<std::size_t>(layer);
  if (layer < 0 || l >= error_sq.size() || l >= reference_sq.size() ||
      a.size() != error_sq[l].size()) {
    raise(Status::invalid_argument,
          fmt::format("key-sign choice: layer_error needs error_sq of layer {} ({} layers) and a "
                      "candidate per KV head (got {})", layer, error_sq.size(), a.size()));
  }
  double e = 0.0, r = 0.0;
  for (std::size_t h = 0; h < a.size(); ++h) {
    e += error_sq[l][h].at(static_cast<std::size_t>(a[h]));
    r += reference_sq[l].at(h);
  }
  return r > 0.0 ? std::sqrt(e / r) : 0.0;
}

double KeySignChoice::mean_layer_error(const std::vector<std::vector<int>>& assignment) const {
  if (assignment.empty() || assignment.size() != error_sq.size()) {
    raise(Status::invalid_argument,
          fmt::format("key-sign choice: mean_layer_error needs an assignment of every layer of "
                      "error_sq ({}; got {})", error_sq.size(), assignment.size()));
  }
  double sum = 0.0;
  for (std::size_t l = 0; l < assignment.size(); ++l) sum += layer_error(static_cast<int>(l), assignment[l]);
  return sum / static_cast<double>(assignment.size());
}

void save_key_sign_choice(const KeySignChoice& choice, const std::string& path) {
  nlohmann::ordered_json j;
  j["kind"] = kKeySignFileKind;
  j["version"] = kKeySignFileVersion;
  j["n_layers"] = choice.n_layers;
  j["n_kv_heads"] = choice.n_kv_heads;
  j["head_dim"] = choice.head_dim;
  j["key_format"] = format_name(choice.key_format);
  j["candidates"] = choice.candidates;
  j["base_seed"] = choice.base_seed;
  j["candidate_meaning"] = "0: the plain Hadamard (no signs); c >= 1: the random signs of base "
                           "seed base_seed + c - 1 (1: the default signs)";
  j["granularity"] = choice.per_layer ? "layer" : "head";
  j["criterion"] = "squared error of the attention output with the keys in key_format and the "
                   "values in f16, beside exact f32 attention that the model runs on; summed "
                   "over the KV head's query heads and all positions (error_sq), against the "
                   "squared exact output (reference_sq)";
  j["calibration"] = {{"kv", choice.calibration_kv}, {"text", choice.calibration_text},
                      {"ctx", choice.ctx}, {"windows", choice.windows}};
  j["chosen"] = choice.chosen;
  if (!choice.error_sq.empty()) {
    j["error_sq"] = choice.error_sq;
    j["reference_sq"] = choice.reference_sq;
  }
  // One line per field, and per layer for the per-layer arrays, so that a diff shows which
  // layers changed.
  std::string text = "{\n";
  for (auto it = j.begin(); it != j.end(); ++it) {
    text += fmt::format(" {}: ", nlohmann::json(it.key()).dump());
    if (it->is_array() && !it->empty() && it->front().is_array()) {
      text += "[\n";
      for (std::size_t l = 0; l < it->size(); ++l) {
        text += fmt::format("  {}{}\n", (*it)[l].dump(), l + 1 < it->size() ? "," : "");
      }
      text += " ]";
    } else {
      text += it->dump();
    }
    text += std::next(it) != j.end() ? ",\n" : "\n";
  }
  text += "}\n";
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) raise(Status::io_error, fmt::format("cannot write key-sign file '{}'", path));
}

KeySignChoice load_key_sign_choice(const std::string& path) {
  auto fail = [&](std::string_view field, const std::string& why) -> void {
    raise(Status::io_error, fmt::format("key-sign file '{}': '{}' {}", path, field, why));
  };
  std::ifstream in(path, std::ios::binary);
  if (!in) raise(Status::io_error, fmt::format("cannot read key-sign file '{}'", path));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    raise(Status::io_error, fmt::format("key-sign file '{}': not valid JSON ({})", path, e.what()));
  }
  if (!j.is_object()) {
    raise(Status::io_error, fmt::format("key-sign file '{}': not a JSON object", path));
  }
  auto field = [&](const char* name) -> const nlohmann::json& {
    if (!j.contains(name)) fail(name, "is missing");
    return j[name];
  };
  auto integer = [&](const char* name, int lo, int hi) {
    const nlohmann::json& v = field(name);
    if (!v.is_number_integer() || v.get<int64_t>() < lo || v.get<int64_t>() > hi) {
      fail(name, fmt::format("is {}, not an integer in [{}, {}]", v.dump(), lo, hi));
    }
    return v.get<int>();
  };
  auto text = [&](const char* name) {
    if (!field(name).is_string()) fail(name, fmt::format("is {}, not a string", j[name].dump()));
    return j[name].get<std::string>();
  };
  if (text("kind") != kKeySignFileKind) fail("kind", fmt::format("is not \"{}\"", kKeySignFileKind));
  (void)integer("version", kKeySignFileVersion, kKeySignFileVersion);
  constexpr int kMaxCount = 1 << 20;  // far above any model's layers, heads or head_dim
  KeySignChoice c;
  c.source = path;
  c.n_layers = integer("n_layers", 1, kMaxCount);
  c.n_kv_heads = integer("n_kv_heads", 1, kMaxCount);
  c.head_dim = integer("head_dim", 1, kMaxCount);
  c.candidates = integer("candidates", 1, kMaxKeySignCandidates);
  const std::string key_format = text("key_format");
  try {
    c.key_format = parse_format(key_format, "key_format");
  } catch (const Error& e) {
    fail("key_format", fmt::format("is not a format ({})", e.what()));
  }
  if (!is_quantized(c.key_format)) fail("key_format", fmt::format("is '{}', not a quantized format", key_format));
  if (!field("base_seed").is_number_unsigned()) {
    fail("base_seed", fmt::format("is {}, not an unsigned integer", j["base_seed"].dump()));
  }
  c.base_seed = j["base_seed"].get<uint64_t>();
  const std::string granularity = text("granularity");
  if (granularity != "head" && granularity != "layer") {
    fail("granularity", fmt::format("is \"{}\", not \"head\" or \"layer\"", granularity));
  }
  c.per_layer = granularity == "layer";
  // [n_layers][n_kv_heads] (and [candidates] below) arrays; `check` tests one element.
  auto table = [&](const char* name, const auto& check) {
    const nlohmann::json& rows = field(name);
    if (!rows.is_array() || rows.size() != static_cast<std::size_t>(c.n_layers)) {
      fail(name, fmt::format("must be an array of n_layers = {} arrays", c.n_layers));
    }
    for (std::size_t l = 0; l < rows.size(); ++l) {
      if (!rows[l].is_array() || rows[l].size() != static_cast<std::size_t>(c.n_kv_heads)) {
        fail(fmt::format("{}[{}]", name, l), fmt::format("must be an array of n_kv_heads = {} entries", c.n_kv_heads));
      }
      for (std::size_t h = 0; h < rows[l].size(); ++h) check(fmt::format("{}[{}][{}]", name, l, h), rows[l][h]);
    }
  };
  table("chosen", [&](const std::string& where, const nlohmann::json& v) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= c.candidates) {
      fail(where, fmt::format("is {}, not a candidate in [0, {}) ('candidates' is {})", v.dump(),
                              c.candidates, c.candidates));
    }
  });
  c.chosen = j["chosen"].get<std::vector<std::vector<int>>>();
  if (c.per_layer) {
    for (std::size_t l = 0; l < c.chosen.size(); ++l) {
      if (std::adjacent_find(c.chosen[l].begin(), c.chosen[l].end(), std::not_equal_to<>()) != c.chosen[l].end()) {
        fail(fmt::format("chosen[{}]", l), "differs between KV heads, but 'granularity' is \"layer\"");
      }
    }
  }
  if (j.contains("calibration")) {
    const nlohmann::json& cal = j["calibration"];
    try {
      c.calibration_kv = cal.at("kv").get<std::string>();
      c.calibration_text = cal.at("text").get<std::string>();
      c.ctx = cal.at("ctx").get<int>();
      c.windows = cal.at("windows").get<int>();
    } catch (const nlohmann::json::exception& e) {
      fail("calibration", fmt::format("needs kv, text (strings), ctx and windows (integers): {}", e.what()));
    }
  }
  if (j.contains("error_sq") || j.contains("reference_sq")) {
    auto non_negative = [&](const std::string& where, const nlohmann::json& v) {
      if (!v.is_number() || !(v.get<double>() >= 0.0)) fail(where, fmt::format("is {}, not a number >= 0", v.dump()));
    };
    table("error_sq", [&](const std::string& where, const nlohmann::json& v) {
      if (!v.is_array() || v.size() != static_cast<std::size_t>(c.candidates)) {
        fail(where, fmt::format("must be an array of candidates = {} numbers", c.candidates));
      }
      for (std::size_t k = 0; k < v.size(); ++k) non_negative(fmt::format("{}[{}]", where, k), v[k]);
    });
    table("reference_sq", non_negative);
    c.error_sq = j["error_sq"].get<std::vector<std::vector<std::vector<double>>>>();
    c.reference_sq = j["reference_sq"].get<std::vector<std::vector<double>>>();
  }
  return c;
}

KvSpec with_key_sign_choice(const KvSpec& spec, const KeySignChoice& choice, int layer,
                            int n_layers, int kv_heads, int head_dim) {
  const std::string file = choice.source.empty() ? std::string("key-sign choice")
                                                 : fmt::format("key-sign file '{}'", choice.source);
  auto mismatch = [&](std::string_view field, auto value, auto wanted, std::string_view of_what) {
    if (value != wanted) {
      raise(Status::invalid_argument, fmt::format("{}: '{}' is {}, but {} {}", file, field, value,
                                                  of_what, wanted));
    }
  };
  mismatch("n_layers", choice.n_layers, n_layers, "the model's layer count is");
  mismatch("n_kv_heads", choice.n_kv_heads, kv_heads, "the model's KV head count is");
  mismatch("head_dim", choice.head_dim, head_dim, "the model's head_dim is");
  if (layer < 0 || layer >= n_layers || choice.chosen.size() != static_cast<std::size_t>(n_layers)) {
    raise(Status::invalid_argument, fmt::format("{}: no choice for layer {} of {} ('chosen' has {})",
                                                file, layer, n_layers, choice.chosen.size()));
  }
  if (spec.kind != KvKind::tqkv) {
    raise(Status::invalid_argument, fmt::format("{}: key signs need a tqkv format, not '{}'", file,
                                                kv_spec_name(spec)));
  }
  mismatch("key_format", format_name(choice.key_format), format_name(spec.format.key),
           fmt::format("the keys of '{}' (layer {}) are", kv_spec_name(spec), layer));
  mismatch("base_seed", choice.base_seed, spec.rotation_seed, "the rotation seed is");
  const std::string_view other = key_sign_option(spec);
  if (!other.empty()) {
    raise(Status::invalid_argument, fmt::format("{}: sets the key signs of '{}', which '{}' already sets",
                                                file, kv_spec_name(spec), other));
  }
  KvSpec out = spec;
  out.key_sign_choice = choice.chosen[static_cast<std::size_t>(layer)];
  return out;
}

std::unique_ptr<KvStore> make_kv_store(const KvSpec& spec, int layer, int kv_heads, int head_dim,
                                       int capacity) {
  std::unique_ptr<KvStore> store;
  if (spec.kind == KvKind::tqkv) {
    store = std::make_unique<TqkvStore>(spec, layer, kv_heads, head_dim, capacity);
  } else {
    store = std::make_unique<FloatStore>(spec.kind, kv_heads, head_dim, capacity);
  }
  // Centering outermost, so that smoothing is calibrated on centered keys.
  if (spec.smooth_keys) store = std::make_unique<SmoothedStore>(std::move(store), kv_heads, head_dim);
  if (spec.center_keys) store = std::make_unique<CenteredStore>(std::move(store), kv_heads, head_dim);
  return store;
}

}  // namespace tqkv::model
