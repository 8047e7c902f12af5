// Attention-output error of each format against dense fp64 attention, and the quality table.
#include "quality.hpp"

#include <algorithm>
#include <cmath>
#include <ostream>

#include <fmt/format.h>

#include "tqkv/attention.hpp"
#include "tqkv/error.hpp"

namespace tqkv::eval {
namespace {

std::size_t tokens_per_sequence(const Shape& s) {
  return static_cast<std::size_t>(s.kv_len) * s.kv_heads * s.head_dim;
}

// Dense fp64 attention of every sequence: [batch][q_heads][head_dim].
std::vector<double> dense_outputs(const SyntheticKv& data, const std::vector<float>& k,
                                  const std::vector<float>& v) {
  const Shape& s = data.shape;
  const std::size_t per_seq_q = static_cast<std::size_t>(s.q_heads) * s.head_dim;
  std::vector<double> out(static_cast<std::size_t>(s.batch) * per_seq_q);
  DecodeParams p;
  p.q_heads = s.q_heads;
  for (int b = 0; b < s.batch; ++b) {
    const std::size_t kv_at = b * tokens_per_sequence(s);
    dense_decode_attention(data.q.data() + b * per_seq_q, k.data() + kv_at, v.data() + kv_at, s.kv_len,
                           s.q_heads, s.kv_heads, s.head_dim, p, out.data() + b * per_seq_q);
  }
  return out;
}

double nmse(const std::vector<float>& approx, const std::vector<float>& exact) {
  double err = 0, energy = 0;
  for (std::size_t i = 0; i < exact.size(); ++i) {
    const double e = double(approx[i]) - exact[i];
    err += e * e;
    energy += double(exact[i]) * exact[i];
  }
  return energy > 0 ? err / energy : 0.0;
}

// Output metrics of `approx` against `exact`, both [batch][q_heads][head_dim].
template <class T>
Metrics compare_outputs_impl(const std::vector<T>& approx, const std::vector<double>& exact, int head_dim) {
  Metrics m;
  double err = 0, energy = 0, cos_sum = 0;
  m.min_cosine = 1.0;
  const std::size_t rows = exact.size() / head_dim;
  for (std::size_t r = 0; r < rows; ++r) {
    double dot = 0, na = 0, ne = 0;
    for (int i = 0; i < head_dim; ++i) {
      const double a = approx[r * head_dim + i], e = exact[r * head_dim + i];
      err += (a - e) * (a - e);
      energy += e * e;
      dot += a * e;
      na += a * a;
      ne += e * e;
    }
    const double cosine = (na > 0 && ne > 0) ? dot / std::sqrt(na * ne) : (na == ne ? 1.0 : 0.0);
    cos_sum += cosine;
    m.min_cosine = std::min(m.min_cosine, cosine);
  }
  m.nmse = energy > 0 ? err / energy : 0.0;
  m.rel_l2 = std::sqrt(m.nmse);
  m.mean_cosine = rows ? cos_sum / static_cast<double>(rows) : 1.0;
  return m;
}

// The cached keys and values decoded back, in the layout of the data.
void decode_all(const KvCache& cache, const Shape& s, std::vector<float>& k, std::vector<float>& v) {
  k.resize(static_cast<std::size_t>(s.batch) * tokens_per_sequence(s));
  v.resize(k.size());
  for (int b = 0; b < s.batch; ++b)
    for (int t = 0; t < s.kv_len; ++t)
      for (int h = 0; h < s.kv_heads; ++h) {
        const std::size_t at = b * tokens_per_sequence(s) + (static_cast<std::size_t>(t) * s.kv_heads + h) * s.head_dim;
        cache.decode_key(b, h, t, k.data() + at);
        cache.decode_value(b, h, t, v.data() + at);
      }
}

// The data's vectors must have the sizes its shape says (it may have been built by hand).
void check_data(const SyntheticKv& d) {
  const Shape& s = d.shape;
  const std::size_t kv = static_cast<std::size_t>(std::max(s.batch, 0)) * std::max(s.kv_len, 0) *
                         std::max(s.kv_heads, 0) * std::max(s.head_dim, 0);
  const std::size_t q = static_cast<std::size_t>(std::max(s.batch, 0)) * std::max(s.q_heads, 0) *
                        std::max(s.head_dim, 0);
  if (kv == 0 || q == 0 || d.k.size() != kv || d.v.size() != kv || d.q.size() != q)
    raise(Status::invalid_argument,
          fmt::format("synthetic data: k/v/q hold {}/{}/{} floats, shape (batch {}, q_heads {}, kv_heads {}, "
                      "head_dim {}, kv_len {}) needs {}/{}/{}",
                      d.k.size(), d.v.size(), d.q.size(), s.batch, s.q_heads, s.kv_heads, s.head_dim,
                      s.kv_len, kv, kv, q));
}

std::string cell(const Metrics& m) { return fmt::format("{:.2e} ({:.5f})", m.rel_l2, m.mean_cosine); }

}  // namespace

Metrics compare_outputs(const std::vector<float>& approx, const std::vector<double>& exact,
                        int head_dim) {
  return compare_outputs_impl(approx, exact, head_dim);
}

void uniform_round_trip(const float* x, int n, int bits, float* out) {
  if (bits < 1 || bits > 8)
    raise(Status::unsupported, fmt::format("uniform quantizer bits = {} is not supported (1 to 8)", bits));
  const auto [lo_it, hi_it] = std::minmax_element(x, x + n);
  const float levels_minus_1 = static_cast<float>((1 << bits) - 1);
  // Stored as fp16, like a tq scale is one fp32: equal bits per vector.
  const float lo = half_to_float(float_to_half(*lo_it));
  const float step = half_to_float(float_to_half((*hi_it - *lo_it) / levels_minus_1));
  if (!std::isfinite(lo) || !std::isfinite(step))
    raise(Status::out_of_range,
          fmt::format("uniform quantizer: range [{}, {}] does not fit fp16", *lo_it, *hi_it));
  for (int i = 0; i < n; ++i) {
    const float code = step > 0 ? std::clamp(std::nearbyint((x[i] - lo) / step), 0.0f, levels_minus_1) : 0.0f;
    out[i] = lo + code * step;
  }
}

Metrics evaluate_format(const SyntheticKv& data, KvFormat format, const QualityOptions& options) {
  check_data(data);
  const Shape& s = data.shape;
  CacheConfig c;
  c.batch = s.batch;
  c.kv_heads = s.kv_heads;
  c.head_dim = s.head_dim;
  c.capacity = s.kv_len;
  c.format = format;
  c.seed = options.seed;
  c.sign_flips = options.sign_flips;
  c.scale_rule = options.scale_rule;
  c.codebook = options.codebook;
  KvCache cache(c);
  for (int b = 0; b < s.batch; ++b) {
    const std::size_t at = b * tokens_per_sequence(s);
    cache.append(b, data.k.data() + at, data.v.data() + at, s.kv_len);
  }
  DecodeParams p;
  p.q_heads = s.q_heads;
  std::vector<float> out(data.q.size());
  decode_attention_reference(cache.view(), data.q.data(), out.data(), p);
  Metrics m = compare_outputs_impl(out, dense_outputs(data, data.k, data.v), s.head_dim);
  std::vector<float> k, v;
  decode_all(cache, s, k, v);
  m.key_nmse = nmse(k, data.k);
  m.value_nmse = nmse(v, data.v);
  return m;
}

Metrics evaluate_uniform(const SyntheticKv& data, int bits) {
  check_data(data);
  const Shape& s = data.shape;
  std::vector<float> k(data.k.size()), v(data.v.size());
  for (std::size_t at = 0; at < k.size(); at += s.head_dim) {
    uniform_round_trip(data.k.data() + at, s.head_dim, bits, k.data() + at);
    uniform_round_trip(data.v.data() + at, s.head_dim, bits, v.data() + at);
  }
  Metrics m = compare_outputs_impl(dense_outputs(data, k, v), dense_outputs(data, data.k, data.v), s.head_dim);
  m.key_nmse = nmse(k, data.k);
  m.value_nmse = nmse(v, data.v);
  return m;
}

void print_quality_table(std::ostream& os, const Shape& shape, uint64_t data_seed, const QualityOptions& options) {
  std::vector<SyntheticKv> data;
  for (DataKind kind : kAllDataKinds) data.push_back(make_synthetic_kv(kind, shape, data_seed));
  os << fmt::format(
      "Attention-output error against dense fp64 attention: relative L2 (mean cosine). batch {}, "
      "q_heads {}, kv_heads {}, head_dim {}, kv_len {}, data seed {}, scale rule {}, {} codebook.\n\n",
      shape.batch, shape.q_heads, shape.kv_heads, shape.head_dim, shape.kv_len, data_seed,
      scale_rule_name(options.scale_rule), codebook_kind_name(options.codebook));
  os << "| format | bytes/position (K+V) |";
  for (DataKind kind : kAllDataKinds) os << ' ' << data_kind_name(kind) << " |";
  os << "\n| --- | --- |";
  for (std::size_t i = 0; i < std::size(kAllDataKinds); ++i) os << " --- |";
  os << '\n';
  for (KvFormat f : kTableFormats) {
    os << "| " << kv_format_name(f) << " | " << kv_bytes_per_position(f, shape.head_dim) << " |";
    for (const SyntheticKv& d : data) os << ' ' << cell(evaluate_format(d, f, options)) << " |";
    os << '\n';
  }
  // Baselines at the bits of tq4: 4 bits per coordinate + an fp16 minimum and step per vector (tq4's
  // codes and 4 bytes more per position than its bfloat16 scale pair), and tq4's seed design.
  const std::size_t tq4_bytes = kv_bytes_per_position({Format::tq4, Format::tq4}, shape.head_dim);
  const std::size_t uniform_bytes = 2 * (packed_bytes(Format::tq4, shape.head_dim) + 2 * sizeof(uint16_t));
  os << "| uniform 4-bit min/max (baseline) | " << uniform_bytes << " |";
  for (const SyntheticKv& d : data) os << ' ' << cell(evaluate_uniform(d, 4)) << " |";
  os << "\n| tq4 without sign flips (baseline) | " << tq4_bytes << " |";
  QualityOptions plain = options;
  plain.sign_flips = false;
  for (const SyntheticKv& d : data) os << ' ' << cell(evaluate_format(d, {Format::tq4, Format::tq4}, plain)) << " |";
  os << '\n';
}

}  // namespace tqkv::eval
