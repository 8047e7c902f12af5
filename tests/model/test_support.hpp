// Helpers shared by the model tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <random>
#include <vector>

#include "gguf.hpp"
#include "gguf_writer.hpp"
#include "kv_store.hpp"
#include "llama.hpp"

namespace tqkv::model::test {

inline std::vector<float> random_vector(std::size_t n, std::mt19937_64& rng, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

inline float max_abs(const std::vector<float>& v) {
  float m = 0;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}

inline float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// A random-weight llama model written by the test (gguf_writer.hpp) and loaded.
struct Tiny {
  std::vector<uint8_t> bytes;
  GgufFile file;
  LlamaModel model;
  explicit Tiny(const testing::TinyLlamaSpec& spec = {})
      : bytes(testing::tiny_llama_gguf(spec)), file(GgufFile::parse(bytes)), model(file) {}
};

inline std::vector<int> random_tokens(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int> t(static_cast<std::size_t>(n));
  for (int& x : t) x = static_cast<int>(rng() % static_cast<uint64_t>(vocab));
  return t;
}

// The logits [n][vocab] of every token, fed `step` tokens at a time from an empty session with
// one KV spec per layer.
inline std::vector<float> run(const LlamaModel& m, const std::vector<KvSpec>& specs,
                              const std::vector<int>& tokens, int step) {
  const int n = static_cast<int>(tokens.size()), vocab = m.config().n_vocab;
  LlamaSession s(m, specs, n);
  std::vector<float> logits(static_cast<std::size_t>(n) * vocab, NAN);
  for (int t = 0; t < n; t += step) {
    const int len = std::min(step, n - t);
    s.forward(tokens.data() + t, len, logits.data() + static_cast<std::size_t>(t) * vocab, len);
  }
  return logits;
}
// The same with one spec for every layer.
inline std::vector<float> run(const LlamaModel& m, const KvSpec& spec, const std::vector<int>& tokens,
                              int step) {
  return run(m, std::vector<KvSpec>(static_cast<std::size_t>(m.config().n_layers), spec), tokens, step);
}

}  // namespace tqkv::model::test
