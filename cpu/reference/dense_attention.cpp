// Dense fp64 decode attention on uncompressed K/V: the yardstick for quantization error.
#include <algorithm>
#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "tqkv/attention.hpp"
#include "tqkv/error.hpp"

namespace tqkv {

void dense_decode_attention(const float* q, const float* k, const float* v, int length,
                            int q_heads, int kv_heads, int head_dim, const DecodeParams& p,
                            double* out) {
  if (length <= 0)
    raise(Status::invalid_argument, fmt::format("dense attention: length = {} must be positive", length));
  if (kv_heads <= 0 || q_heads <= 0 || q_heads % kv_heads != 0)
    raise(Status::invalid_argument,
          fmt::format("dense attention: q_heads = {} must be a positive multiple of kv_heads = {}",
                      q_heads, kv_heads));
  if (head_dim <= 0)
    raise(Status::invalid_argument, fmt::format("dense attention: head_dim = {}", head_dim));
  if (!q || !k || !v || !out) raise(Status::invalid_argument, "dense attention: null pointer");
  const double scale = p.scale > 0 ? p.scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
  const int64_t first = first_visible_position(length, p.window);
  const int group = q_heads / kv_heads;
  std::vector<double> logits(static_cast<std::size_t>(length));
  for (int h = 0; h < q_heads; ++h) {
    const int kvh = h / group;
    const float* qh = q + static_cast<std::size_t>(h) * head_dim;
    double m = p.sinks ? p.sinks[h] : -std::numeric_limits<double>::infinity();
    for (int64_t t = first; t < length; ++t) {
      const float* kt = k + (static_cast<std::size_t>(t) * kv_heads + kvh) * head_dim;
      double dot = 0;
      for (int i = 0; i < head_dim; ++i) dot += static_cast<double>(qh[i]) * kt[i];
      double l = dot * scale;
      if (p.softcap > 0) l = p.softcap * std::tanh(l / p.softcap);
      logits[t] = l;
      m = std::max(m, l);
    }
    double den = p.sinks ? std::exp(p.sinks[h] - m) : 0.0;
    double* oh = out + static_cast<std::size_t>(h) * head_dim;
    std::fill(oh, oh + head_dim, 0.0);
    for (int64_t t = first; t < length; ++t) {
      const double w = std::exp(logits[t] - m);
      den += w;
      const float* vt = v + (static_cast<std::size_t>(t) * kv_heads + kvh) * head_dim;
      for (int i = 0; i < head_dim; ++i) oh[i] += w * vt[i];
    }
    for (int i = 0; i < head_dim; ++i) oh[i] /= den;
  }
}

}  // namespace tqkv
