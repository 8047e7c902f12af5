// The scalar reference of decode attention on the compressed cache: the oracle every fast kernel
// is tested against. Double accumulation, no shortcuts; clarity over speed.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "tqkv/attention.hpp"
#include "tqkv/error.hpp"
#include "tqkv/quantize.hpp"
#include "tqkv/rotation.hpp"

namespace tqkv {
namespace {

double effective_scale(const CacheView& c, const DecodeParams& p) {
  return p.scale > 0 ? p.scale : 1.0 / std::sqrt(static_cast<double>(c.head_dim));
}

double capped(double logit, float softcap) {
  return softcap > 0 ? softcap * std::tanh(logit / softcap) : logit;
}

void store_output(OutputType t, const double* o, int d, void* out, std::size_t index) {
  switch (t) {
    case OutputType::f32: {
      auto* p = static_cast<float*>(out) + index;
      for (int i = 0; i < d; ++i) p[i] = static_cast<float>(o[i]);
      return;
    }
    case OutputType::f16: {
      auto* p = static_cast<uint16_t*>(out) + index;
      for (int i = 0; i < d; ++i) p[i] = float_to_half(static_cast<float>(o[i]));
      return;
    }
    case OutputType::bf16: {
      auto* p = static_cast<uint16_t*>(out) + index;
      for (int i = 0; i < d; ++i) p[i] = float_to_bf16(static_cast<float>(o[i]));
      return;
    }
  }
}

double load_output(OutputType t, const void* data, std::size_t index) {
  switch (t) {
    case OutputType::f32: return static_cast<const float*>(data)[index];
    case OutputType::f16: return half_to_float(static_cast<const uint16_t*>(data)[index]);
    case OutputType::bf16: return bf16_to_float(static_cast<const uint16_t*>(data)[index]);
  }
  return 0.0;
}

double log_sum_exp(const AttentionPartial& p) {
  return p.d > 0 ? p.m + std::log(p.d) : -std::numeric_limits<double>::infinity();
}

}  // namespace

std::size_t output_type_bytes(OutputType t) noexcept { return t == OutputType::f32 ? 4 : 2; }

void validate(const CacheView& c, const DecodeParams& p) {
  check_head_dim(c.head_dim, "cache head_dim");
  if (c.batch <= 0 || c.kv_heads <= 0 || c.capacity <= 0)
    raise(Status::invalid_argument,
          fmt::format("cache view has batch {}, kv_heads {}, capacity {}: all must be positive",
                      c.batch, c.kv_heads, c.capacity));
  if (!c.k_codes || !c.v_codes || !c.scales || !c.tokens || !c.sign_bits)
    raise(Status::invalid_argument, "cache view has a null pointer (codes, scales, tokens or signs)");
  if ((is_quantized(c.format.key) && !c.k_levels) || (is_quantized(c.format.value) && !c.v_levels))
    raise(Status::invalid_argument, "cache view has no codebook levels for a tq format");
  if (c.k_row_bytes != row_bytes(c.format.key, c.head_dim) ||
      c.v_row_bytes != row_bytes(c.format.value, c.head_dim))
    raise(Status::invalid_argument,
          fmt::format("cache view row bytes {}/{} do not match formats {} at head_dim {}",
                      c.k_row_bytes, c.v_row_bytes, kv_format_name(c.format), c.head_dim));
  if (p.q_heads <= 0 || p.q_heads % c.kv_heads != 0)
    raise(Status::invalid_argument,
          fmt::format("q_heads = {} must be a positive multiple of kv_heads = {}", p.q_heads,
                      c.kv_heads));
  if (!std::isfinite(p.scale) || p.scale < 0)
    raise(Status::invalid_argument, fmt::format("scale = {} must be finite and >= 0", p.scale));
  if (!std::isfinite(p.softcap) || p.softcap < 0)
    raise(Status::invalid_argument, fmt::format("softcap = {} must be finite and >= 0", p.softcap));
  if (p.window < 0)
    raise(Status::invalid_argument, fmt::format("window = {} must be >= 0", p.window));
  if (p.splits < 0)
    raise(Status::invalid_argument, fmt::format("splits = {} must be >= 0", p.splits));
  if (p.out_type != OutputType::f32 && p.out_type != OutputType::f16 &&
      p.out_type != OutputType::bf16)
    raise(Status::invalid_argument,
          fmt::format("out_type = {} is not an output type", static_cast<int>(p.out_type)));
}

AttentionPartial merge(const AttentionPartial& a, const AttentionPartial& b) {
  if (a.d == 0) return b;  // an empty side contributes nothing (and has m = -inf)
  if (b.d == 0) return a;
  AttentionPartial r;
  r.m = std::max(a.m, b.m);
  const double wa = std::exp(a.m - r.m), wb = std::exp(b.m - r.m);
  r.d = a.d * wa + b.d * wb;
  r.o.resize(std::max(a.o.size(), b.o.size()), 0.0);
  for (std::size_t i = 0; i < r.o.size(); ++i)
    r.o[i] = (i < a.o.size() ? a.o[i] * wa : 0.0) + (i < b.o.size() ? b.o[i] * wb : 0.0);
  return r;
}

AttentionPartial attention_partial_reference(const CacheView& c, int b, int q_head,
                                             const double* q_key_domain, int64_t begin,
                                             int64_t end, const DecodeParams& p) {
  const int d = c.head_dim;
  const int kv_head = q_head / (p.q_heads / c.kv_heads);
  const int64_t n = c.tokens[b];
  const int64_t held_from = n - valid_slots(n, c.capacity);
  const int64_t lo = std::max({begin, held_from, first_visible_position(n, p.window)});
  const int64_t hi = std::min(end, n);
  AttentionPartial part;
  part.o.assign(static_cast<std::size_t>(d), 0.0);
  if (lo >= hi) return part;

  const double scale = effective_scale(c, p);
  std::vector<double> logits, row(static_cast<std::size_t>(d));
  for (int64_t pos = lo; pos < hi; ++pos) {
    const std::size_t r = row_index(c, b, kv_head, position_slot(pos, c.capacity, c.ring));
    decode_row(c.format.key, c.k_levels, d, c.k_codes + r * c.k_row_bytes, c.scales[r].key(),
               row.data());
    double dot = 0;
    for (int i = 0; i < d; ++i) dot += q_key_domain[i] * row[i];
    logits.push_back(capped(dot * scale, p.softcap));
  }
  part.m = *std::max_element(logits.begin(), logits.end());
  for (int64_t pos = lo; pos < hi; ++pos) {
    const std::size_t r = row_index(c, b, kv_head, position_slot(pos, c.capacity, c.ring));
    decode_row(c.format.value, c.v_levels, d, c.v_codes + r * c.v_row_bytes, c.scales[r].value(),
               row.data());
    const double w = std::exp(logits[static_cast<std::size_t>(pos - lo)] - part.m);
    part.d += w;
    for (int i = 0; i < d; ++i) part.o[i] += w * row[i];
  }
  return part;
}

void decode_attention_reference(const CacheView& c, const float* q, void* out,
                                const DecodeParams& p) {
  validate(c, p);
  if (q == nullptr || out == nullptr)
    raise(Status::invalid_argument, fmt::format("decode_attention: {} pointer is null",
                                                q ? "out" : "q"));
  const int d = c.head_dim;
  const int splits = std::max(p.splits, 1);
  std::vector<double> qd(static_cast<std::size_t>(d)), o(static_cast<std::size_t>(d));
  for (int b = 0; b < c.batch; ++b) {
    const int64_t n = c.tokens[b];
    if (n <= 0)
      raise(Status::invalid_argument,
            fmt::format("decode_attention: sequence {} is empty (no tokens appended)", b));
    const int64_t held_from = n - valid_slots(n, c.capacity);
    const int64_t held = n - held_from;
    for (int h = 0; h < p.q_heads; ++h) {
      const Rotation rot(d, c.sign_bits + static_cast<std::size_t>(h / (p.q_heads / c.kv_heads)) *
                                              c.sign_words);
      const float* qh = q + (static_cast<std::size_t>(b) * p.q_heads + h) * d;
      for (int i = 0; i < d; ++i) qd[i] = qh[i];
      if (is_quantized(c.format.key)) rot.forward(qd.data(), qd.data());

      AttentionPartial total;
      for (int s = 0; s < splits; ++s) {
        const int64_t begin = held_from + held * s / splits;
        const int64_t end = held_from + held * (s + 1) / splits;
        total = merge(total, attention_partial_reference(c, b, h, qd.data(), begin, end, p));
      }
      if (p.sinks) {  // a sink is a logit with a zero value vector: it only adds to the denominator
        AttentionPartial sink;
        sink.m = p.sinks[h];
        sink.d = 1.0;
        total = merge(total, sink);
      }
      for (int i = 0; i < d; ++i) o[i] = total.d > 0 ? total.o[i] / total.d : 0.0;
      if (is_quantized(c.format.value)) rot.inverse(o.data(), o.data());
      store_output(p.out_type, o.data(), d, out, (static_cast<std::size_t>(b) * p.q_heads + h) * d);
      if (p.lse) p.lse[static_cast<std::size_t>(b) * p.q_heads + h] = static_cast<float>(log_sum_exp(total));
    }
  }
}

void validate_merge(const void* out_a, const float* lse_a, const void* out_b, const float* lse_b,
                    const void* out, int rows, int head_dim, OutputType type) {
  if (rows < 0)
    raise(Status::invalid_argument, fmt::format("merge_attention_states: rows = {} is negative", rows));
  if (head_dim <= 0)
    raise(Status::invalid_argument,
          fmt::format("merge_attention_states: head_dim = {} must be positive", head_dim));
  if (type != OutputType::f32 && type != OutputType::f16 && type != OutputType::bf16)
    raise(Status::invalid_argument, fmt::format("merge_attention_states: type = {} is not an output type",
                                                static_cast<int>(type)));
  if (rows == 0) return;
  const char* null = !out_a ? "out_a" : !lse_a ? "lse_a" : !out_b ? "out_b" : !lse_b ? "lse_b" : !out ? "out" : nullptr;
  if (null)
    raise(Status::invalid_argument, fmt::format("merge_attention_states: {} is null", null));
}

void merge_attention_states_reference(const void* out_a, const float* lse_a, const void* out_b,
                                      const float* lse_b, void* out, float* lse, int rows,
                                      int head_dim, OutputType type) {
  validate_merge(out_a, lse_a, out_b, lse_b, out, rows, head_dim, type);
  std::vector<double> o(static_cast<std::size_t>(head_dim));
  for (int r = 0; r < rows; ++r) {
    AttentionPartial a, b;  // normalised outputs as partials with d = e^(lse - m), m = lse
    const std::size_t at = static_cast<std::size_t>(r) * head_dim;
    for (auto [part, data, l] : {std::tuple{&a, out_a, lse_a[r]}, std::tuple{&b, out_b, lse_b[r]}}) {
      if (l == -std::numeric_limits<float>::infinity()) continue;  // empty: d = 0
      part->m = l;
      part->d = 1.0;
      part->o.resize(static_cast<std::size_t>(head_dim));
      for (int i = 0; i < head_dim; ++i) part->o[i] = load_output(type, data, at + i);
    }
    const AttentionPartial total = merge(a, b);
    for (int i = 0; i < head_dim; ++i) o[i] = total.d > 0 ? total.o[i] / total.d : 0.0;
    store_output(type, o.data(), head_dim, out, at);
    if (lse) lse[r] = static_cast<float>(log_sum_exp(total));
  }
}

}  // namespace tqkv
