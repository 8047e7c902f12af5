// The llama forward pass on a tiny random-weight GGUF written by the test: against a naive fp64
// implementation, chunked against token-by-token, tqkv caches against float storage, and the
// fake-quant baselines. With the real SmolLM2 file present, a few checks on it too.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "gguf.hpp"
#include "gguf_writer.hpp"
#include "kv_store.hpp"
#include "llama.hpp"
#include "ops.hpp"
#include "tqkv/error.hpp"
#include "test_support.hpp"

namespace tqkv::model {
namespace {

constexpr uint64_t kSeed = 777;

using test::max_abs;
using test::max_abs_diff;
using test::random_tokens;
using test::random_vector;
using test::run;
using test::Tiny;

TEST(Ops, MatmulMatchesNaiveOnAwkwardSizes) {
  std::mt19937_64 rng(kSeed);
  SCOPED_TRACE(::testing::Message() << "seed " << kSeed);
  for (int n : {1, 3, 5, 67}) {
    for (int in : {8, 40, 45}) {       // 45: a scalar tail after the 8-wide loop
      for (int out : {1, 7, 97}) {
        const auto x = random_vector(static_cast<std::size_t>(n) * in, rng);
        const auto w = random_vector(static_cast<std::size_t>(out) * in, rng);
        std::vector<float> y(static_cast<std::size_t>(n) * out, NAN);
        matmul(x.data(), w.data(), y.data(), n, in, out);
        for (int t = 0; t < n; ++t) {
          for (int o = 0; o < out; ++o) {
            double ref = 0;
            for (int k = 0; k < in; ++k) ref += static_cast<double>(x[t * in + k]) * w[o * in + k];
            // float accumulation over `in` terms of unit variance: error ~ in * 2^-24 * |terms|.
            EXPECT_NEAR(y[t * out + o], ref, 1e-5 * in) << n << "x" << in << "x" << out;
          }
        }
      }
    }
  }
}

TEST(Ops, RopeLayoutsAreTheSameRotationOfPermutedCoordinates) {
  std::mt19937_64 rng(kSeed);
  const int heads = 3, dim = 16, n_rot = 16;
  const auto x = random_vector(heads * dim, rng);
  for (int64_t pos : {0, 1, 17, 4000}) {
    std::vector<float> adj = x;
    rope(adj.data(), heads, dim, n_rot, pos, 10000.0f, RopeLayout::adjacent);
    // Half layout on coordinates permuted so that pair (2i, 2i+1) sits at (i, i + n_rot/2).
    std::vector<float> perm(x.size()), half(x.size());
    for (int h = 0; h < heads; ++h) {
      for (int i = 0; i < n_rot / 2; ++i) {
        perm[h * dim + i] = x[h * dim + 2 * i];
        perm[h * dim + i + n_rot / 2] = x[h * dim + 2 * i + 1];
      }
    }
    half = perm;
    rope(half.data(), heads, dim, n_rot, pos, 10000.0f, RopeLayout::half);
    double norm_in = 0, norm_out = 0;
    for (int h = 0; h < heads; ++h) {
      for (int i = 0; i < n_rot / 2; ++i) {
        EXPECT_FLOAT_EQ(half[h * dim + i], adj[h * dim + 2 * i]);
        EXPECT_FLOAT_EQ(half[h * dim + i + n_rot / 2], adj[h * dim + 2 * i + 1]);
      }
    }
    for (std::size_t i = 0; i < x.size(); ++i) norm_in += x[i] * x[i], norm_out += adj[i] * adj[i];
    EXPECT_NEAR(norm_out, norm_in, 1e-4 * norm_in) << "RoPE is a rotation";
    if (pos == 0) EXPECT_EQ(adj, x);
  }
}

// The whole model in fp64 with plain loops, written from the llama equations (adjacent-pair RoPE
// on the GGUF weights), for every position; returns logits [n][vocab].
std::vector<double> naive_forward(const LlamaModel& m, const std::vector<int>& tokens) {
  const LlamaConfig& c = m.config();
  const int n = static_cast<int>(tokens.size()), E = c.n_embd, D = c.head_dim;
  const int KV = c.n_head_kv * D;
  auto matvec = [](const std::vector<float>& w, const std::vector<double>& x, int out) {
    std::vector<double> y(static_cast<std::size_t>(out), 0.0);
    const std::size_t in = x.size();
    for (int o = 0; o < out; ++o)
      for (std::size_t k = 0; k < in; ++k) y[o] += w[o * in + k] * x[k];
    return y;
  };
  auto norm = [&](const std::vector<double>& x, const std::vector<float>& g) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / x.size() + c.rms_eps);
    std::vector<double> y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * g[i];
    return y;
  };
  auto rotate = [&](std::vector<double>& v, int heads, int pos) {
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < c.n_rot / 2; ++i) {
        const double th = pos * std::pow(static_cast<double>(c.rope_base), -2.0 * i / c.n_rot);
        double& a = v[h * D + 2 * i];
        double& b = v[h * D + 2 * i + 1];
        const double a0 = a, b0 = b;
        a = a0 * std::cos(th) - b0 * std::sin(th);
        b = a0 * std::sin(th) + b0 * std::cos(th);
      }
  };
  std::vector<std::vector<double>> x(static_cast<std::size_t>(n));
  for (int t = 0; t < n; ++t) {
    x[t].assign(m.token_embedding().begin() + static_cast<std::ptrdiff_t>(tokens[t]) * E,
                m.token_embedding().begin() + static_cast<std::ptrdiff_t>(tokens[t] + 1) * E);
  }
  for (const LlamaLayer& L : m.layers()) {
    std::vector<std::vector<double>> q(n), k(n), v(n);
    for (int t = 0; t < n; ++t) {
      const auto h = norm(x[t], L.attn_norm);
      q[t] = matvec(L.wq, h, E), k[t] = matvec(L.wk, h, KV), v[t] = matvec(L.wv, h, KV);
      rotate(q[t], c.n_head, t), rotate(k[t], c.n_head_kv, t);
    }
    for (int t = 0; t < n; ++t) {
      std::vector<double> att(static_cast<std::size_t>(E), 0.0);
      for (int h = 0; h < c.n_head; ++h) {
        const int kvh = h / (c.n_head / c.n_head_kv);
        std::vector<double> s(static_cast<std::size_t>(t + 1));
        double mx = -INFINITY, den = 0;
        for (int p = 0; p <= t; ++p) {
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += q[t][h * D + d] * k[p][kvh * D + d];
          s[p] = dot / std::sqrt(static_cast<double>(D));
          mx = std::max(mx, s[p]);
        }
        for (int p = 0; p <= t; ++p) den += s[p] = std::exp(s[p] - mx);
        for (int p = 0; p <= t; ++p)
          for (int d = 0; d < D; ++d) att[h * D + d] += s[p] / den * v[p][kvh * D + d];
      }
      const auto o = matvec(L.wo, att, E);
      for (int i = 0; i < E; ++i) x[t][i] += o[i];
      const auto h2 = norm(x[t], L.ffn_norm);
      auto g = matvec(L.w_gate, h2, c.n_ff);
      const auto u = matvec(L.w_up, h2, c.n_ff);
      for (int i = 0; i < c.n_ff; ++i) g[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
      const auto down = matvec(L.w_down, g, E);
      for (int i = 0; i < E; ++i) x[t][i] += down[i];
    }
  }
  std::vector<double> logits;
  for (int t = 0; t < n; ++t) {
    const auto y = matvec(m.output_weight(), norm(x[t], m.output_norm()), c.n_vocab);
    logits.insert(logits.end(), y.begin(), y.end());
  }
  return logits;
}

TEST(TinyLlama, ConfigFromMetadata) {
  const Tiny tiny;
  const LlamaConfig& c = tiny.model.config();
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.n_head_kv, 2);
  EXPECT_EQ(c.n_vocab, 262);
  EXPECT_TRUE(tiny.model.tied_output());
  EXPECT_EQ(c.rope_layout, RopeLayout::adjacent);
}

// Float KV storage: the chunked, threaded forward pass equals the fp64 definition.
TEST(TinyLlama, MatchesNaiveFp64Forward) {
  for (bool tied : {true, false}) {
    testing::TinyLlamaSpec spec;
    spec.tied_output = tied;
    spec.n_rot = 16;  // partial rotary: only the first 16 of 32 coordinates turn
    const Tiny tiny(spec);
    const auto tokens = random_tokens(97, tiny.model.config().n_vocab, kSeed);
    const auto ref = naive_forward(tiny.model, tokens);
    const auto got = run(tiny.model, parse_kv_spec("f32"), tokens, 97);
    double worst = 0, scale = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
      ASSERT_TRUE(std::isfinite(got[i])) << i;
      worst = std::max(worst, std::fabs(got[i] - ref[i]));
      scale = std::max(scale, std::fabs(ref[i]));
    }
    // float32 activations through 2 layers: relative error well below 1e-4.
    EXPECT_LT(worst, 1e-4 * scale) << "tied " << tied << ", max |logit| " << scale;
  }
}

// Chunks of 64 tokens (GEMM + parallel causal attention via truncated cache views) give the
// same logits as feeding one token at a time, on tqkv caches.
TEST(TinyLlama, ChunkedEqualsTokenByToken) {
  testing::TinyLlamaSpec spec;
  spec.n_head = 2, spec.n_head_kv = 1, spec.n_rot = 64;  // head_dim 64, as kivi2 groups need
  const Tiny tiny(spec);
  const auto tokens = random_tokens(80, tiny.model.config().n_vocab, kSeed + 1);
  for (const char* kv : {"f16", "tq4", "k8v4", "tq2", "f32", "q4_0", "kivi2", "tq4-recent16"}) {
    const KvSpec spec = parse_kv_spec(kv);
    const auto chunked = run(tiny.model, spec, tokens, 80);
    const auto single = run(tiny.model, spec, tokens, 1);
    const auto odd = run(tiny.model, spec, tokens, 31);
    EXPECT_LE(max_abs_diff(chunked, single), 1e-5f * max_abs(single)) << kv;
    EXPECT_LE(max_abs_diff(odd, single), 1e-5f * max_abs(single)) << kv;
  }
}

// The same as above through the scalar reference backend: the dispatcher's CPU path and the
// oracle agree inside the model.
TEST(TinyLlama, FastAndReferenceAttentionAgree) {
  const Tiny tiny;
  const auto tokens = random_tokens(70, tiny.model.config().n_vocab, kSeed + 2);
  for (const char* kv : {"f16", "tq4", "tq3", "k4v2"}) {
    KvSpec fast = parse_kv_spec(kv), ref = fast;
    ref.backend = Backend::cpu_reference;
    const auto a = run(tiny.model, fast, tokens, 64);
    const auto b = run(tiny.model, ref, tokens, 64);
    EXPECT_LE(max_abs_diff(a, b), 1e-4f * max_abs(b)) << kv;
  }
}

// Quantized caches perturb the logits, and more so at fewer bits; f16 barely.
TEST(TinyLlama, QuantizationErrorGrowsAsBitsShrink) {
  const Tiny tiny;
  const auto tokens = random_tokens(128, tiny.model.config().n_vocab, kSeed + 3);
  const auto exact = run(tiny.model, parse_kv_spec("f32"), tokens, 64);
  auto err = [&](const char* kv) {
    return max_abs_diff(run(tiny.model, parse_kv_spec(kv), tokens, 64), exact) / max_abs(exact);
  };
  const float e16 = err("f16"), e8 = err("k8v4"), e4 = err("tq4"), e2 = err("tq2");
  // f16 rounding (2^-11 relative) moves the logits by well under 1 % of their range.
  EXPECT_LT(e16, 0.01f);
  EXPECT_LT(e16, e4);
  EXPECT_LT(e4, e2);
  EXPECT_LT(e8, e2);
  EXPECT_GT(e2, 0.0f);
}

TEST(TinyLlama, SessionErrors) {
  const Tiny tiny;
  LlamaSession s(tiny.model, parse_kv_spec("tq4"), 8);
  std::vector<float> logits(static_cast<std::size_t>(tiny.model.config().n_vocab) * 8);
  const std::vector<int> bad = {1, 99999};
  EXPECT_THROW(s.forward(bad.data(), 2, logits.data(), 1), Error);
  EXPECT_EQ(s.length(), 0);
  const std::vector<int> nine(9, 5);
  EXPECT_THROW(s.forward(nine.data(), 9, logits.data(), 1), Error);
  EXPECT_THROW(s.forward(nine.data(), 2, logits.data(), 3), Error);  // n_out > n
  EXPECT_THROW(s.forward(nine.data(), 2, nullptr, 1), Error);
  s.forward(nine.data(), 8, logits.data(), 2);
  EXPECT_EQ(s.length(), 8);
  s.reset();
  EXPECT_EQ(s.length(), 0);
  EXPECT_THROW(LlamaSession(tiny.model, parse_kv_spec("tq4"), 0), Error);
}

TEST(TinyLlama, RejectsWrongShapesAndArchitectures) {
  {
    testing::GgufWriter w;
    w.add_string("general.architecture", "gpt2");
    const auto b = w.bytes();
    EXPECT_THROW(LlamaModel{GgufFile::parse(b)}, Error);
  }
  {
    // Heads that do not divide the embedding.
    auto bytes = testing::tiny_llama_gguf({});
    GgufFile f = GgufFile::parse(bytes);
    (void)f;
    testing::TinyLlamaSpec spec;
    spec.n_head = 3;  // 128 / 3
    EXPECT_THROW(Tiny{spec}, Error);
  }
}

TEST(KvSpecs, ParseNamesAndBytes) {
  EXPECT_EQ(kv_spec_name(parse_kv_spec("tq4")), "tq4");
  EXPECT_EQ(kv_spec_name(parse_kv_spec("k8v4")), "k8v4");
  EXPECT_EQ(kv_spec_name(parse_kv_spec("tq3-noflip")), "tq3-noflip");
  EXPECT_FALSE(parse_kv_spec("tq3-noflip").key_sign_flips);
  EXPECT_FALSE(parse_kv_spec("tq3-noflip").value_sign_flips);
  EXPECT_EQ(parse_kv_spec("kivi2").kind, KvKind::kivi2);
  EXPECT_THROW((void)parse_kv_spec("tq5"), Error);
  EXPECT_THROW((void)parse_kv_spec("-noflip"), Error);
  // Equal bits: q4_0 and tq4 at head_dim 64 both cost 4.5 bits per coordinate; kivi2 and tq2 2.5.
  EXPECT_EQ(kv_spec_bytes_per_position(parse_kv_spec("q4_0"), 64), 72.0);
  EXPECT_EQ(kv_spec_bytes_per_position(parse_kv_spec("kivi2"), 64), 40.0);
  EXPECT_EQ(kv_spec_bytes_per_position(parse_kv_spec("f32"), 64), 512.0);
}

// Key centering shifts every logit of a query by the same q.mu: attention output unchanged.
TEST(KvSpecs, CenteredKeysLeaveExactAttentionUnchanged) {
  const KvSpec centered = parse_kv_spec("f32-center");
  EXPECT_TRUE(centered.center_keys);
  EXPECT_EQ(kv_spec_name(centered), "f32-center");
  EXPECT_EQ(kv_spec_name(parse_kv_spec("tq4-noflip-center")), "tq4-noflip-center");
  std::mt19937_64 rng(kSeed);
  const int kv_heads = 2, dim = 64, q_heads = 4, n = 50;
  auto k = random_vector(static_cast<std::size_t>(n) * kv_heads * dim, rng);
  for (std::size_t i = 0; i < k.size(); i += dim) k[i] += 20.0f;  // a large common component
  const auto v = random_vector(k.size(), rng);
  const auto q = random_vector(static_cast<std::size_t>(n) * q_heads * dim, rng, 0.2f);
  auto plain = make_kv_store(parse_kv_spec("f32"), 0, kv_heads, dim, n);
  auto shifted = make_kv_store(centered, 0, kv_heads, dim, n);
  std::vector<float> a(q.size()), b(q.size());
  for (auto* s : {plain.get(), shifted.get()}) {
    s->append(k.data(), v.data(), 20);  // the first chunk sets the mean
    s->append(k.data() + 20 * kv_heads * dim, v.data() + 20 * kv_heads * dim, n - 20);
  }
  plain->attend(q.data(), n, q_heads, a.data());
  shifted->attend(q.data(), n, q_heads, b.data());
  EXPECT_LE(max_abs_diff(a, b), 1e-4f * max_abs(a));
  // And it lowers the error of 4-bit keys that share a large component.
  auto tq = make_kv_store(parse_kv_spec("k4v16"), 0, kv_heads, dim, n);  // keys only
  auto tq_centered = make_kv_store(parse_kv_spec("k4v16-center"), 0, kv_heads, dim, n);
  std::vector<float> c(q.size()), d(q.size());
  tq->append(k.data(), v.data(), n);
  tq_centered->append(k.data(), v.data(), n);
  tq->attend(q.data(), n, q_heads, c.data());
  tq_centered->attend(q.data(), n, q_heads, d.data());
  EXPECT_LT(max_abs_diff(d, a), max_abs_diff(c, a));
}

TEST(Baselines, Q40MatchesGgmlRule) {
  // A block whose largest-magnitude value is -8: d = 1, every integer in [-8, 7] is exact.
  std::vector<float> x(32), y(32, NAN);
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j % 16 - 8);
  fake_quant_q4_0(x.data(), y.data(), 32);
  EXPECT_EQ(y, x);
  std::mt19937_64 rng(kSeed);
  const auto r = random_vector(64, rng);
  fake_quant_q4_0(r.data(), y.data(), 32);
  float amax = 0;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(r[j]));
  // Error at most half a step d = amax/8 (plus fp16 rounding of d).
  for (int j = 0; j < 32; ++j) EXPECT_LE(std::fabs(y[j] - r[j]), amax / 16 * 1.01f + 1e-6f) << j;
}

TEST(Baselines, Affine2BitStrideAndError) {
  std::vector<float> x = {0, 1, 2, 3, 10, 10, 10, 10};  // stride 2: picks 0, 2, 10, 10
  std::vector<float> y(8, NAN);
  fake_quant_affine2(x.data(), y.data(), 4, 2);
  // Scale 10/3 and minimum 0 are stored in fp16 (relative rounding 2^-11).
  EXPECT_EQ(y[0], 0.0f);
  EXPECT_NEAR(y[6], 10.0f, 10.0f * 1e-3f);
  EXPECT_TRUE(std::isnan(y[1]));  // untouched between strides
  EXPECT_NEAR(y[2], 2.0f, 10.0f / 3 / 2 + 1e-3f);
}

// KIVI keys: a query sees keys of complete 64-token groups quantized and the newest group raw.
TEST(Baselines, KiviKeepsTheIncompleteKeyGroupExact) {
  const int kv_heads = 1, dim = 64, q_heads = 1;
  std::mt19937_64 rng(kSeed);
  const int n = 70;
  const auto k = random_vector(static_cast<std::size_t>(n) * dim, rng);
  const auto v = random_vector(static_cast<std::size_t>(n) * dim, rng);
  const auto q = random_vector(dim, rng);
  auto kivi = make_kv_store(parse_kv_spec("kivi2"), 0, kv_heads, dim, n);
  auto exact = make_kv_store(parse_kv_spec("f32"), 0, kv_heads, dim, n);
  // With 10 tokens no key group is complete: only values are quantized, so feeding quantized
  // values to float storage reproduces KIVI's output.
  std::vector<float> vq(v.size());
  for (int t = 0; t < n; ++t) fake_quant_affine2(&v[t * dim], &vq[t * dim], dim, 1);
  kivi->append(k.data(), v.data(), 10);
  exact->append(k.data(), vq.data(), 10);
  float a[dim], b[dim];
  kivi->attend(q.data(), 1, q_heads, a);
  exact->attend(q.data(), 1, q_heads, b);
  // Equal up to float summation order (the SIMD dot product depends on the rows' alignment).
  for (int d = 0; d < dim; ++d) EXPECT_NEAR(a[d], b[d], 1e-6f);
  // After 70 tokens the first 64 keys are quantized: the outputs now differ.
  kivi->append(k.data() + 10 * dim, v.data() + 10 * dim, 60);
  exact->append(k.data() + 10 * dim, vq.data() + 10 * dim, 60);
  kivi->attend(q.data(), 1, q_heads, a);
  exact->attend(q.data(), 1, q_heads, b);
  float diff = 0;
  for (int d = 0; d < dim; ++d) diff = std::max(diff, std::fabs(a[d] - b[d]));
  EXPECT_GT(diff, 0.0f);
}

// ---- The real model (skipped when absent) ----

std::string real_model_path() {
  const std::string p = std::string(TQKV_MODEL_DIR) + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  return std::filesystem::exists(p) ? p : std::string();
}

TEST(SmolLM2, MetadataAndF16CacheAgainstFloat) {
  const std::string path = real_model_path();
  if (path.empty()) GTEST_SKIP() << "SmolLM2 GGUF absent: run scripts/fetch-model.sh to enable";
  const GgufFile f = GgufFile::open(path);
  const LlamaModel m(f);
  const LlamaConfig& c = m.config();
  EXPECT_EQ(c.n_layers, 30);
  EXPECT_EQ(c.n_head, 9);
  EXPECT_EQ(c.n_head_kv, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.n_vocab, 49152);
  EXPECT_TRUE(m.tied_output());
  // "Call me Ishmael. Some years ago" (ids from Hugging Face tokenizers).
  const std::vector<int> tokens = {12800, 549, 46588, 30, 2015, 929, 3156};
  const auto exact = run(m, parse_kv_spec("f32"), tokens, 7);
  const auto f16 = run(m, parse_kv_spec("f16"), tokens, 7);
  // f16 K/V move real logits (|logit| up to ~30) by about 1e-2 (docs/real-model.md).
  EXPECT_LT(max_abs_diff(f16, exact), 0.05f);
  // Greedy next tokens at every position, as the independent numpy forward pass of
  // scripts/eval/check_logits.py computes them for the same ids.
  const std::vector<int> numpy_argmax = {29, 288, 506, 198, 282, 3156, 28};
  for (std::size_t t = 0; t < tokens.size(); ++t) {
    const float* row = exact.data() + t * static_cast<std::size_t>(c.n_vocab);
    EXPECT_EQ(std::max_element(row, row + c.n_vocab) - row, numpy_argmax[t]) << "position " << t;
  }
}

}  // namespace
}  // namespace tqkv::model
