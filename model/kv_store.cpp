#include "kv_store.hpp"

#include <algorithm>
#include <cmath>
#include <exception>

#include <fmt/format.h>

#include "tqkv/attention.hpp"
#include "tqkv/error.hpp"

namespace tqkv::model {
namespace {

constexpr std::string_view kNoFlipSuffix = "-noflip";
constexpr std::string_view kCenterSuffix = "-center";
constexpr int kQ40Block = 32;  // llama.cpp QK4_0

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
          c.sign_flips = spec.sign_flips;
          c.scale_rule = spec.scale_rule;
          c.codebook = spec.codebook;
          return c;
        }()),
        backend_(spec.backend) {}

  void append(const float* k, const float* v, int n) override { cache_.append(0, k, v, n); }

  void attend(const float* q, int n, int q_heads, float* out) override {
    const CacheView whole = cache_.view();
    const int64_t total = cache_.tokens(0);
    DecodeParams params;
    params.q_heads = q_heads;
    const std::size_t stride = static_cast<std::size_t>(q_heads) * cache_.head_dim();
    // Every token of the chunk is already in the cache; a view whose token count stops at
    // token i makes the decode kernel see exactly the causal prefix of token i, so the tokens
    // of a chunk can be attended in parallel.
    parallel_for(n, [&](int i) {
      const int64_t visible = total - n + i + 1;
      CacheView view = whole;
      view.tokens = &visible;
      ExecContext ctx;
      ctx.threads = 1;
      ctx.backend = backend_;
      decode_attention(view, q + i * stride, out + i * stride, params, ctx);
    });
  }

  int64_t length() const override { return cache_.tokens(0); }
  void reset() override { cache_.reset(0); }

 private:
  KvCache cache_;
  Backend backend_;
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

double ErrorProbeStore::relative_error(int shadow, int head) const {
  double e = 0, r = 0;
  for (int h = 0; h < q_heads_; ++h) {
    if (head >= 0 && h != head) continue;
    e += err_sq_[static_cast<std::size_t>(shadow) * q_heads_ + h];
    r += ref_sq_[static_cast<std::size_t>(h)];
  }
  return r > 0 ? std::sqrt(e / r) : 0.0;
}

KvSpec parse_kv_spec(std::string_view text) {
  KvSpec spec;
  if (text.size() > kCenterSuffix.size() && text.ends_with(kCenterSuffix)) {
    spec = parse_kv_spec(text.substr(0, text.size() - kCenterSuffix.size()));
    spec.center_keys = true;
    return spec;
  }
  if (text == "f32") {
    spec.kind = KvKind::f32;
  } else if (text == "q4_0") {
    spec.kind = KvKind::q4_0;
  } else if (text == "kivi2") {
    spec.kind = KvKind::kivi2;
  } else if (text.size() > kNoFlipSuffix.size() && text.ends_with(kNoFlipSuffix)) {
    spec.format = parse_kv_format(text.substr(0, text.size() - kNoFlipSuffix.size()));
    spec.sign_flips = false;
  } else {
    spec.format = parse_kv_format(text);
  }
  return spec;
}

std::string kv_spec_name(const KvSpec& spec) {
  if (spec.center_keys) {
    KvSpec plain = spec;
    plain.center_keys = false;
    return kv_spec_name(plain) + std::string(kCenterSuffix);
  }
  switch (spec.kind) {
    case KvKind::f32: return "f32";
    case KvKind::q4_0: return "q4_0";
    case KvKind::kivi2: return "kivi2";
    case KvKind::tqkv: break;
  }
  return kv_format_name(spec.format) + (spec.sign_flips ? "" : std::string(kNoFlipSuffix));
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

std::unique_ptr<KvStore> make_kv_store(const KvSpec& spec, int layer, int kv_heads, int head_dim,
                                       int capacity) {
  std::unique_ptr<KvStore> store;
  if (spec.kind == KvKind::tqkv) {
    store = std::make_unique<TqkvStore>(spec, layer, kv_heads, head_dim, capacity);
  } else {
    store = std::make_unique<FloatStore>(spec.kind, kv_heads, head_dim, capacity);
  }
  if (spec.center_keys) store = std::make_unique<CenteredStore>(std::move(store), kv_heads, head_dim);
  return store;
}

}  // namespace tqkv::model
