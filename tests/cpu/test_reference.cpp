// The scalar reference decode attention (the oracle) against dense attention on the same
// dequantized K/V, hand computations for softcap and sinks, split-K merges, masks over ring
// buffers, GQA mapping, output types and bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "test_support.hpp"
#include "tqkv/attention.hpp"
#include "tqkv/cache.hpp"

namespace tqkv {
namespace {

using test::expect_error;
using test::normal_vector;
using test::seeded_rng;

// Kernel fidelity in double: the reference and a plain softmax over the same fp64-dequantized K/V
// perform the same operations up to summation order (measured: 1e-15).
constexpr double kSameMathDouble = 1e-12;
// Against dense_decode_attention on decode_key/decode_value (which return float): the K/V were
// rounded to float once and the output is stored as float (measured: up to 1.5e-7).
constexpr double kFloatStorageOfKv = 1e-6;
// Split-K partials merged with log-sum-exp equal the single pass (issue 2 asks for 1e-6; the fp64
// merge only reorders sums, so the fp32 outputs agree far closer).
constexpr double kSplitMergeTolerance = 1e-6;
// Hand computations in double vs an fp32 output.
constexpr double kHandComputation = 1e-6;

const KvFormat kPairs[] = {{Format::tq4, Format::tq4}, {Format::tq8, Format::tq4}, {Format::f16, Format::tq4},
                           {Format::tq4, Format::tq2}, {Format::tq3, Format::tq3}, {Format::f16, Format::f16},
                           {Format::tq2, Format::tq8}};

CacheConfig config(KvFormat format, int kv_heads, int head_dim, int capacity, int batch = 1, bool ring = false) {
  return test::cache_config(format, kv_heads, head_dim, capacity, batch, ring);
}

void fill(KvCache& cache, int seq, int n, std::mt19937_64& rng) {
  const std::size_t per_token = static_cast<std::size_t>(cache.kv_heads()) * cache.head_dim();
  const auto k = normal_vector(rng, n * per_token), v = normal_vector(rng, n * per_token);
  // A few chunks of uneven size, as an engine would append them.
  for (int done = 0; done < n;) {
    const int c = std::min(n - done, 1 + done % 13);
    cache.append(seq, k.data() + done * per_token, v.data() + done * per_token, c);
    done += c;
  }
}

// The held positions of one sequence, oldest first, as decode_key/decode_value return them:
// [length][kv_heads][head_dim], the layout dense_decode_attention takes.
struct DenseKv {
  std::vector<float> k, v;
  int length = 0;
};
DenseKv dequantized(const KvCache& cache, int seq) {
  DenseKv kv;
  kv.length = cache.length(seq);
  const int64_t first = cache.tokens(seq) - kv.length;
  const int kvh = cache.kv_heads(), d = cache.head_dim();
  kv.k.resize(static_cast<std::size_t>(kv.length) * kvh * d);
  kv.v.resize(kv.k.size());
  for (int t = 0; t < kv.length; ++t)
    for (int h = 0; h < kvh; ++h) {
      const std::size_t at = (static_cast<std::size_t>(t) * kvh + h) * d;
      cache.decode_key(seq, h, first + t, kv.k.data() + at);
      cache.decode_value(seq, h, first + t, kv.v.data() + at);
    }
  return kv;
}

// Runs the reference into a NaN-poisoned fp32 buffer and checks every element was written.
std::vector<float> reference(const KvCache& cache, const std::vector<float>& q, const DecodeParams& p) {
  std::vector<float> out(static_cast<std::size_t>(cache.batch()) * p.q_heads * cache.head_dim(),
                         std::numeric_limits<float>::quiet_NaN());
  decode_attention_reference(cache.view(), q.data(), out.data(), p);
  for (std::size_t i = 0; i < out.size(); ++i) {
    EXPECT_TRUE(std::isfinite(out[i])) << "output element " << i << " not written or not finite";
    if (!std::isfinite(out[i])) break;
  }
  return out;
}

// Max |a - b| over one (sequence, head) relative to max |b| of it (floored at 1e-3).
template <class A, class B>
double relative_diff(const A* a, const B* b, int d) {
  double diff = 0, scale = 1e-3;
  for (int i = 0; i < d; ++i) {
    diff = std::max(diff, std::fabs(double(a[i]) - double(b[i])));
    scale = std::max(scale, std::fabs(double(b[i])));
  }
  return diff / scale;
}

// Compares the reference with dense_decode_attention on the dequantized cache, every sequence.
void expect_matches_dense(const KvCache& cache, const std::vector<float>& q, const DecodeParams& p,
                          double tolerance = kFloatStorageOfKv) {
  const auto out = reference(cache, q, p);
  const int d = cache.head_dim();
  for (int b = 0; b < cache.batch(); ++b) {
    const DenseKv kv = dequantized(cache, b);
    std::vector<double> expected(static_cast<std::size_t>(p.q_heads) * d);
    dense_decode_attention(q.data() + static_cast<std::size_t>(b) * p.q_heads * d, kv.k.data(), kv.v.data(),
                           kv.length, p.q_heads, cache.kv_heads(), d, p, expected.data());
    for (int h = 0; h < p.q_heads; ++h) {
      const std::size_t at = (static_cast<std::size_t>(b) * p.q_heads + h) * d;
      ASSERT_LT(relative_diff(out.data() + at, expected.data() + static_cast<std::size_t>(h) * d, d), tolerance)
          << "sequence " << b << " (length " << kv.length << ") head " << h;
    }
  }
}

// ---- an independent fp64 softmax over one head, for the tight fidelity check ----

std::vector<double> naive_attention(const std::vector<double>& q, const std::vector<std::vector<double>>& k,
                                    const std::vector<std::vector<double>>& v, double scale) {
  std::vector<double> logits;
  for (const auto& key : k) logits.push_back(scale * std::inner_product(q.begin(), q.end(), key.begin(), 0.0));
  const double m = *std::max_element(logits.begin(), logits.end());
  std::vector<double> o(q.size(), 0.0);
  double den = 0;
  for (std::size_t t = 0; t < k.size(); ++t) {
    const double w = std::exp(logits[t] - m);
    den += w;
    for (std::size_t i = 0; i < o.size(); ++i) o[i] += w * v[t][i];
  }
  for (auto& x : o) x /= den;
  return o;
}

// Dequantizes one row to the original domain in fp64 (decode_row, then the inverse rotation).
std::vector<double> dequantize_fp64(const KvCache& cache, bool key, int seq, int h, int64_t p) {
  const CacheView c = cache.view();
  const Format f = key ? c.format.key : c.format.value;
  const std::size_t r = row_index(c, seq, h, position_slot(p, c.capacity, c.ring));
  std::vector<double> x(c.head_dim);
  decode_row(f, key ? c.k_levels : c.v_levels, c.head_dim,
             (key ? c.k_codes : c.v_codes) + r * (key ? c.k_row_bytes : c.v_row_bytes),
             key ? c.scales[r].key() : c.scales[r].value(), x.data());
  if (is_quantized(f)) cache.rotation(h).inverse(x.data(), x.data());
  return x;
}

TEST(ReferenceAttention, SameMathAsPlainSoftmaxInDouble) {
  auto rng = seeded_rng(101);
  for (KvFormat f : kPairs) {
    for (int d : {64, 96}) {
      SCOPED_TRACE(testing::Message() << kv_format_name(f) << " d " << d);
      const int kvh = 2, q_heads = 4, n = 37;
      KvCache cache(config(f, kvh, d, 64));
      fill(cache, 0, n, rng);
      const auto q = normal_vector(rng, static_cast<std::size_t>(q_heads) * d);
      DecodeParams p;
      p.q_heads = q_heads;
      const auto out = reference(cache, q, p);
      for (int h = 0; h < q_heads; ++h) {
        const int kv = h / (q_heads / kvh);
        std::vector<std::vector<double>> keys, values;
        for (int t = 0; t < n; ++t) {
          keys.push_back(dequantize_fp64(cache, true, 0, kv, t));
          values.push_back(dequantize_fp64(cache, false, 0, kv, t));
        }
        const std::vector<double> qh(q.begin() + h * d, q.begin() + (h + 1) * d);
        const auto expected = naive_attention(qh, keys, values, 1.0 / std::sqrt(double(d)));
        // The partial state, normalised and rotated back, in fp64.
        std::vector<double> q_key(qh);
        if (is_quantized(f.key)) cache.rotation(kv).forward(q_key.data(), q_key.data());
        const AttentionPartial part = attention_partial_reference(cache.view(), 0, h, q_key.data(), 0, n, p);
        std::vector<double> o(d);
        for (int i = 0; i < d; ++i) o[i] = part.o[i] / part.d;
        if (is_quantized(f.value)) cache.rotation(kv).inverse(o.data(), o.data());
        EXPECT_LT(relative_diff(o.data(), expected.data(), d), kSameMathDouble) << "head " << h;
        // The fp32 output is that result rounded once.
        EXPECT_LT(relative_diff(out.data() + h * d, expected.data(), d), kSameMathDouble + 1e-7) << "head " << h;
      }
    }
  }
}

TEST(ReferenceAttention, MatchesDenseOnDequantizedCacheAwkwardSizes) {
  auto rng = seeded_rng(102);
  // Batch 17 with kv_len 1, 31, 97 and others in between.
  const int lengths[] = {1, 31, 97, 2, 54, 97, 16, 17, 33, 1, 64, 96, 95, 31, 7, 80, 97};
  for (KvFormat f : {KvFormat{Format::tq4, Format::tq4}, KvFormat{Format::tq8, Format::tq4},
                     KvFormat{Format::f16, Format::tq2}}) {
    SCOPED_TRACE(kv_format_name(f));
    const int kvh = 2, q_heads = 8, d = 128;
    KvCache cache(config(f, kvh, d, 97, 17));
    for (int b = 0; b < 17; ++b) fill(cache, b, lengths[b], rng);
    const auto q = normal_vector(rng, 17u * q_heads * d);
    DecodeParams p;
    p.q_heads = q_heads;
    expect_matches_dense(cache, q, p);
  }
}

TEST(ReferenceAttention, GqaMqaMhaMapping) {
  auto rng = seeded_rng(103);
  struct Heads {
    int q, kv;
  };
  for (Heads h : {Heads{8, 8}, Heads{8, 2}, Heads{8, 1}, Heads{6, 3}, Heads{12, 4}}) {
    SCOPED_TRACE(testing::Message() << "q_heads " << h.q << " kv_heads " << h.kv);
    KvCache cache(config({Format::tq4, Format::tq4}, h.kv, 64, 40, 2));
    fill(cache, 0, 31, rng);
    fill(cache, 1, 40, rng);
    const auto q = normal_vector(rng, 2u * h.q * 64);
    DecodeParams p;
    p.q_heads = h.q;
    expect_matches_dense(cache, q, p);
    // Query heads of one group read the same KV head: equal queries give equal outputs.
    std::vector<float> same(q);
    const int group = h.q / h.kv;
    for (int head = 0; head < h.q; ++head)
      std::copy(q.begin() + (head / group) * group * 64, q.begin() + ((head / group) * group + 1) * 64,
                same.begin() + head * 64);
    const auto out = reference(cache, same, p);
    for (int head = 0; head < h.q; ++head)
      for (int i = 0; i < 64; ++i) ASSERT_EQ(out[head * 64 + i], out[(head / group) * group * 64 + i]) << head;
  }
}

TEST(ReferenceAttention, GqaRatioThatDoesNotDivideIsRejected) {
  auto rng = seeded_rng(104);
  KvCache cache(config({}, 4, 64, 8));
  fill(cache, 0, 3, rng);
  const auto q = normal_vector(rng, 6 * 64);
  std::vector<float> out(6 * 64);
  for (int q_heads : {6, 2, 0, -4}) {
    DecodeParams p;
    p.q_heads = q_heads;
    expect_error([&] { decode_attention_reference(cache.view(), q.data(), out.data(), p); },
                 Status::invalid_argument, {"q_heads", std::to_string(q_heads), "kv_heads"});
    expect_error([&] { validate(cache.view(), p); }, Status::invalid_argument, {"q_heads"});
  }
}

TEST(ReferenceAttention, SplitKEqualsSinglePass) {
  auto rng = seeded_rng(105);
  for (KvFormat f : {KvFormat{Format::tq4, Format::tq4}, KvFormat{Format::f16, Format::tq3}}) {
    KvCache cache(config(f, 2, 64, 97, 3));
    fill(cache, 0, 97, rng);
    fill(cache, 1, 1, rng);  // fewer positions than splits: empty splits
    fill(cache, 2, 31, rng);
    const auto q = normal_vector(rng, 3u * 4 * 64);
    DecodeParams p;
    p.q_heads = 4;
    for (int window : {0, 5}) {  // window 5 of 97: with 7 splits the first six are fully masked
      p.window = window;
      p.splits = 1;
      const auto single = reference(cache, q, p);
      for (int splits : {2, 3, 7, 0}) {
        p.splits = splits;
        const auto split = reference(cache, q, p);
        for (std::size_t at = 0; at < single.size(); at += 64)
          ASSERT_LT(relative_diff(split.data() + at, single.data() + at, 64), kSplitMergeTolerance)
              << kv_format_name(f) << " splits " << splits << " window " << window << " row " << at / 64;
      }
      // And the masked result is attention over the window only.
      p.splits = 7;
      expect_matches_dense(cache, q, p);
    }
  }
}

// The log-sum-exp merge: identity on empty partials, finite when both are empty, and partial
// states of adjacent ranges merge to the state of their union.
TEST(ReferenceAttention, MergeOfPartials) {
  const AttentionPartial empty;
  const AttentionPartial both_empty = merge(empty, empty);
  EXPECT_EQ(both_empty.d, 0.0);
  EXPECT_FALSE(std::isnan(both_empty.m));
  for (double x : both_empty.o) EXPECT_TRUE(std::isfinite(x));

  auto rng = seeded_rng(106);
  const int d = 64, n = 97;
  KvCache cache(config({Format::tq4, Format::tq4}, 1, d, n));
  fill(cache, 0, n, rng);
  auto q = normal_vector<double>(rng, d, 3.0);  // large logits: the max shift matters
  cache.rotation(0).forward(q.data(), q.data());
  DecodeParams p;
  p.q_heads = 1;
  const CacheView v = cache.view();
  const AttentionPartial whole = attention_partial_reference(v, 0, 0, q.data(), 0, n, p);
  const AttentionPartial a = attention_partial_reference(v, 0, 0, q.data(), 0, 40, p);
  const AttentionPartial b = attention_partial_reference(v, 0, 0, q.data(), 40, n, p);
  const AttentionPartial none = attention_partial_reference(v, 0, 0, q.data(), 50, 50, p);
  EXPECT_EQ(none.d, 0.0);
  for (const AttentionPartial& m : {merge(a, b), merge(b, a), merge(merge(a, none), b), merge(none, merge(a, b))}) {
    ASSERT_EQ(m.o.size(), static_cast<std::size_t>(d));
    EXPECT_EQ(m.m, whole.m);
    EXPECT_NEAR(m.d, whole.d, 1e-12 * whole.d);
    for (int i = 0; i < d; ++i) EXPECT_NEAR(m.o[i] / m.d, whole.o[i] / whole.d, 1e-12);
  }
  const AttentionPartial left = merge(a, empty), right = merge(empty, a);
  EXPECT_EQ(left.d, a.d);
  EXPECT_EQ(right.d, a.d);
  EXPECT_EQ(left.o, a.o);
  EXPECT_EQ(right.o, a.o);
}

// ---- hand computations: softcap and sinks on an f16 cache with exactly known K/V ----

struct HandCase {
  static constexpr int d = 64, n = 3;
  KvCache cache{config({Format::f16, Format::f16}, 1, d, 8)};
  std::vector<float> q = std::vector<float>(d, 0.0f);
  const double key_x[n] = {1.0, -0.5, 2.0};  // k_t = key_x[t] * e0
  HandCase() {
    q[0] = 8.0f;
    std::vector<float> k(n * d, 0.0f), v(n * d, 0.0f);
    for (int t = 0; t < n; ++t) {
      k[t * d] = static_cast<float>(key_x[t]);
      v[t * d + t + 1] = static_cast<float>(t + 1);  // v_t = (t + 1) e_{t+1}
      v[t * d + 10] = 1.0f;
    }
    cache.append(0, k.data(), v.data(), n);
  }
  // softmax by hand: logits l_t = softcap(8 key_x[t]) with scale 1, sink adds exp(sink - m).
  std::vector<double> expected(float softcap, const double* sink) const {
    double l[n], m = -INFINITY;
    for (int t = 0; t < n; ++t) {
      l[t] = 8.0 * key_x[t];
      if (softcap > 0) l[t] = softcap * std::tanh(l[t] / softcap);
      m = std::max(m, l[t]);
    }
    if (sink) m = std::max(m, *sink);
    double den = sink ? std::exp(*sink - m) : 0.0;
    for (double x : l) den += std::exp(x - m);
    std::vector<double> o(d, 0.0);
    for (int t = 0; t < n; ++t) {
      const double w = std::exp(l[t] - m) / den;
      o[t + 1] += w * (t + 1);
      o[10] += w;
    }
    return o;
  }
  std::vector<float> run(const DecodeParams& p) const { return reference(cache, q, p); }
};

TEST(ReferenceAttention, SoftcapIsApplied) {
  const HandCase hc;
  DecodeParams p;
  p.q_heads = 1;
  p.scale = 1.0f;
  for (float softcap : {0.0f, 10.0f, 3.0f}) {
    p.softcap = softcap;
    const auto out = hc.run(p);
    const auto expected = hc.expected(softcap, nullptr);
    for (int i = 0; i < HandCase::d; ++i) EXPECT_NEAR(out[i], expected[i], kHandComputation) << "softcap " << softcap << " i " << i;
  }
  // The cap changes the result by far more than the tolerance: the test can tell.
  const auto capped = hc.expected(3.0f, nullptr), plain = hc.expected(0.0f, nullptr);
  EXPECT_GT(std::fabs(capped[3] - plain[3]), 0.1);
}

TEST(ReferenceAttention, SinksAddToTheDenominatorOnly) {
  const HandCase hc;
  DecodeParams p;
  p.q_heads = 1;
  p.scale = 1.0f;
  for (float sink : {3.0f, 16.0f, 40.0f, -INFINITY}) {
    const float sinks[1] = {sink};
    p.sinks = sinks;
    const double s = sink;
    const auto out = hc.run(p);
    const auto expected = hc.expected(0.0f, &s);
    for (int i = 0; i < HandCase::d; ++i) EXPECT_NEAR(out[i], expected[i], kHandComputation) << "sink " << sink << " i " << i;
  }
  // A dominant sink drives the output to ~0; a -inf sink is no sink.
  const float big[1] = {60.0f};
  p.sinks = big;
  for (float x : hc.run(p)) EXPECT_LT(std::fabs(x), 1e-6);
}

TEST(ReferenceAttention, SinksWithGqaAndSplitsMatchDense) {
  auto rng = seeded_rng(107);
  KvCache cache(config({Format::tq4, Format::tq4}, 2, 64, 50, 2));
  fill(cache, 0, 50, rng);
  fill(cache, 1, 9, rng);
  const auto q = normal_vector(rng, 2u * 4 * 64, 2.0);
  const std::vector<float> sinks = {0.5f, 2.0f, -1.0f, 4.0f};
  DecodeParams p;
  p.q_heads = 4;
  p.sinks = sinks.data();
  p.softcap = 5.0f;
  for (int splits : {1, 3}) {
    p.splits = splits;
    expect_matches_dense(cache, q, p);
  }
}

TEST(ReferenceAttention, SlidingWindowOverWrappedRing) {
  auto rng = seeded_rng(108);
  const int capacity = 16;
  for (KvFormat f : {KvFormat{Format::tq4, Format::tq4}, KvFormat{Format::f16, Format::tq8}}) {
    KvCache cache(config(f, 2, 96, capacity, 3, /*ring=*/true));
    fill(cache, 0, 45, rng);             // wrapped almost three times
    fill(cache, 1, capacity, rng);       // exactly full
    fill(cache, 2, 7, rng);              // not wrapped
    const auto q = normal_vector(rng, 3u * 4 * 96);
    DecodeParams p;
    p.q_heads = 4;
    for (int window : {0, 1, 5, capacity, 40}) {
      SCOPED_TRACE(testing::Message() << kv_format_name(f) << " window " << window);
      p.window = window;
      for (int splits : {1, 4}) {
        p.splits = splits;
        expect_matches_dense(cache, q, p);
      }
    }
  }
}

TEST(ReferenceAttention, WindowOnContiguousCache) {
  auto rng = seeded_rng(109);
  KvCache cache(config({Format::tq3, Format::tq4}, 1, 64, 31));
  fill(cache, 0, 31, rng);
  const auto q = normal_vector(rng, 2 * 64);
  DecodeParams p;
  p.q_heads = 2;
  p.window = 7;
  expect_matches_dense(cache, q, p);
  // Window 1 sees only the newest token: the output is its value.
  p.window = 1;
  const auto out = reference(cache, q, p);
  std::vector<float> newest(64);
  cache.decode_value(0, 0, 30, newest.data());
  for (int i = 0; i < 64; ++i) EXPECT_NEAR(out[i], newest[i], kFloatStorageOfKv * std::max(1.0f, std::fabs(newest[i])));
}

TEST(ReferenceAttention, HalfAndBf16OutputsAreTheRoundedFp32Output) {
  auto rng = seeded_rng(110);
  KvCache cache(config({Format::tq4, Format::tq4}, 2, 128, 97, 3));
  for (int b = 0; b < 3; ++b) fill(cache, b, 31 + 33 * b, rng);
  const auto q = normal_vector(rng, 3u * 8 * 128);
  DecodeParams p;
  p.q_heads = 8;
  const auto f32 = reference(cache, q, p);
  for (OutputType t : {OutputType::f16, OutputType::bf16}) {
    EXPECT_EQ(output_type_bytes(t), 2u);
    p.out_type = t;
    std::vector<uint16_t> out(f32.size(), 0xFFFF);  // NaN in both encodings
    decode_attention_reference(cache.view(), q.data(), out.data(), p);
    for (std::size_t i = 0; i < out.size(); ++i)
      ASSERT_EQ(out[i], t == OutputType::f16 ? float_to_half(f32[i]) : float_to_bf16(f32[i])) << i;
  }
  EXPECT_EQ(output_type_bytes(OutputType::f32), 4u);
}

// attention.hpp: on the CPU a sequence with no tokens is rejected with an Error naming it.
TEST(ReferenceAttention, EmptySequenceIsRejectedNamingIt) {
  auto rng = seeded_rng(111);
  KvCache cache(config({Format::tq4, Format::tq4}, 2, 64, 16, 3));
  fill(cache, 0, 5, rng);
  fill(cache, 2, 1, rng);
  const auto q = normal_vector(rng, 3u * 4 * 64);
  DecodeParams p;
  p.q_heads = 4;
  std::vector<float> out(q.size(), NAN);
  expect_error([&] { decode_attention_reference(cache.view(), q.data(), out.data(), p); },
               Status::invalid_argument, {"sequence 1", "empty"});
  // Once it holds a token, the batch runs.
  fill(cache, 1, 1, rng);
  EXPECT_EQ(reference(cache, q, p).size(), q.size());
}

TEST(ReferenceAttention, BadInputIsRejected) {
  auto rng = seeded_rng(112);
  KvCache cache(config({}, 2, 64, 8));
  fill(cache, 0, 3, rng);
  const auto q = normal_vector(rng, 4 * 64);
  std::vector<float> out(4 * 64);
  DecodeParams good;
  good.q_heads = 4;
  EXPECT_NO_THROW(decode_attention_reference(cache.view(), q.data(), out.data(), good));
  expect_error([&] { decode_attention_reference(cache.view(), nullptr, out.data(), good); },
               Status::invalid_argument, {"q"});
  expect_error([&] { decode_attention_reference(cache.view(), q.data(), nullptr, good); },
               Status::invalid_argument, {"out"});
  auto with = [&](auto change) {
    DecodeParams p = good;
    change(p);
    return p;
  };
  const struct {
    DecodeParams p;
    const char* names;
  } bad_params[] = {
      {with([](DecodeParams& p) { p.scale = -1.0f; }), "scale"},
      {with([](DecodeParams& p) { p.scale = NAN; }), "scale"},
      {with([](DecodeParams& p) { p.softcap = -2.0f; }), "softcap"},
      {with([](DecodeParams& p) { p.softcap = INFINITY; }), "softcap"},
      {with([](DecodeParams& p) { p.window = -1; }), "window"},
      {with([](DecodeParams& p) { p.splits = -3; }), "splits"},
      {with([](DecodeParams& p) { p.out_type = static_cast<OutputType>(5); }), "out_type"},
  };
  for (const auto& b : bad_params) {
    expect_error([&] { decode_attention_reference(cache.view(), q.data(), out.data(), b.p); },
                 Status::invalid_argument, {b.names});
  }
  // A view that does not describe a cache.
  auto broken = [&](auto change) {
    CacheView v = cache.view();
    change(v);
    return v;
  };
  const CacheView bad_views[] = {
      broken([](CacheView& v) { v.k_codes = nullptr; }),
      broken([](CacheView& v) { v.tokens = nullptr; }),
      broken([](CacheView& v) { v.k_levels = nullptr; }),
      broken([](CacheView& v) { v.head_dim = 100; }),
      broken([](CacheView& v) { v.kv_heads = 0; }),
      broken([](CacheView& v) { v.k_row_bytes = 16; }),
  };
  for (const CacheView& v : bad_views) {
    try {
      decode_attention_reference(v, q.data(), out.data(), good);
      ADD_FAILURE() << "a broken view was accepted";
    } catch (const Error& e) {
      EXPECT_TRUE(e.status() == Status::invalid_argument || e.status() == Status::unsupported) << e.what();
    }
  }
  // dense_decode_attention checks its arguments too.
  std::vector<double> dense_out(4 * 64);
  const DenseKv kv = dequantized(cache, 0);
  expect_error([&] { dense_decode_attention(q.data(), kv.k.data(), kv.v.data(), 0, 4, 2, 64, good, dense_out.data()); },
               Status::invalid_argument, {"length"});
  expect_error([&] { dense_decode_attention(q.data(), kv.k.data(), kv.v.data(), 3, 3, 2, 64, good, dense_out.data()); },
               Status::invalid_argument, {"q_heads"});
  expect_error([&] { dense_decode_attention(q.data(), nullptr, kv.v.data(), 3, 4, 2, 64, good, dense_out.data()); },
               Status::invalid_argument, {"null"});
}


// ---- log-sum-exp output and the merge of attention states ----

// lse is stored as float: its rounding, relative to max(1, |lse|).
constexpr double kLseFloatRounding = 1e-6;
// Two fp32 outputs with fp32 lse merged in double against the one-pass fp32 output: the lse
// roundings (above, times |lse| <= ~20 here) move the weights by ~1e-6 (measured: below 3e-7).
constexpr double kMergeOfFloatStates = 1e-5;

double lse_diff(float got, double want) {
  if (std::isinf(want) && want < 0) return got == -INFINITY ? 0.0 : INFINITY;
  return std::fabs(double(got) - want) / std::max(1.0, std::fabs(want));
}

TEST(ReferenceAttention, LseIsTheLogOfTheSoftmaxDenominator) {
  auto rng = seeded_rng(113);
  for (KvFormat f : kPairs) {
    const int kvh = 2, q_heads = 4, d = 96, n = 37;
    KvCache cache(config(f, kvh, d, 64));
    fill(cache, 0, n, rng);
    const auto q = normal_vector(rng, static_cast<std::size_t>(q_heads) * d, 2.0);
    const std::vector<float> sinks = {1.5f, -0.5f, 6.0f, -INFINITY};
    for (int variant = 0; variant < 4; ++variant) {  // plain, sinks, softcap + splits, all
      SCOPED_TRACE(testing::Message() << kv_format_name(f) << " variant " << variant);
      DecodeParams p;
      p.q_heads = q_heads;
      p.sinks = variant % 2 ? sinks.data() : nullptr;
      p.softcap = variant >= 2 ? 4.0f : 0.0f;
      p.splits = variant >= 2 ? 3 : 1;
      std::vector<float> out(q.size()), lse(q_heads, NAN);
      p.lse = lse.data();
      decode_attention_reference(cache.view(), q.data(), out.data(), p);
      for (int h = 0; h < q_heads; ++h) {  // ln(sum_t e^l_t + e^sink) from fp64 K in the original domain
        const int kv = h / (q_heads / kvh);
        std::vector<double> logits;
        for (int t = 0; t < n; ++t) {
          const auto k = dequantize_fp64(cache, true, 0, kv, t);
          double l = 0;
          for (int i = 0; i < d; ++i) l += q[h * d + i] * k[i];
          l /= std::sqrt(double(d));
          logits.push_back(p.softcap > 0 ? p.softcap * std::tanh(l / p.softcap) : l);
        }
        if (p.sinks) logits.push_back(p.sinks[h]);
        const double m = *std::max_element(logits.begin(), logits.end());
        double den = 0;
        for (double l : logits) den += std::exp(l - m);
        EXPECT_LT(lse_diff(lse[h], m + std::log(den)), kLseFloatRounding) << "head " << h << " lse " << lse[h];
      }
    }
  }
}

TEST(ReferenceAttention, MergeAttentionStatesByHand) {
  // Weights 1 : 3 (lse 0 and ln 3), the merged lse ln 4.
  const std::vector<float> a = {1.0f, 2.0f}, b = {3.0f, 4.0f};
  const std::vector<float> la = {0.0f}, lb = {std::log(3.0f)};
  std::vector<float> out(2), lse(1);
  merge_attention_states_reference(a.data(), la.data(), b.data(), lb.data(), out.data(), lse.data(), 1, 2,
                                   OutputType::f32);
  EXPECT_NEAR(out[0], 2.5, kHandComputation);
  EXPECT_NEAR(out[1], 3.5, kHandComputation);
  EXPECT_NEAR(lse[0], std::log(4.0), kHandComputation);
  // A side at -inf contributes nothing, whatever its values; both at -inf give zeros and -inf.
  const std::vector<float> poison = {NAN, INFINITY}, minus_inf = {-INFINITY};
  merge_attention_states_reference(poison.data(), minus_inf.data(), b.data(), lb.data(), out.data(), lse.data(),
                                   1, 2, OutputType::f32);
  EXPECT_EQ(out, b);
  EXPECT_EQ(lse[0], lb[0]);
  merge_attention_states_reference(poison.data(), minus_inf.data(), poison.data(), minus_inf.data(), out.data(),
                                   lse.data(), 1, 2, OutputType::f32);
  EXPECT_EQ(out, (std::vector<float>{0.0f, 0.0f}));
  EXPECT_EQ(lse[0], -INFINITY);
  // In place, into a's arrays; and f16 rows.
  std::vector<float> a2 = a, la2 = la;
  merge_attention_states_reference(a2.data(), la2.data(), b.data(), lb.data(), a2.data(), la2.data(), 1, 2,
                                   OutputType::f32);
  EXPECT_NEAR(a2[0], 2.5, kHandComputation);
  EXPECT_NEAR(la2[0], std::log(4.0), kHandComputation);
  const std::vector<uint16_t> ha = {float_to_half(1.0f), float_to_half(2.0f)},
                              hb = {float_to_half(3.0f), float_to_half(4.0f)};
  std::vector<uint16_t> hout(2);
  merge_attention_states_reference(ha.data(), la.data(), hb.data(), lb.data(), hout.data(), nullptr, 1, 2,
                                   OutputType::f16);
  EXPECT_EQ(half_to_float(hout[0]), 2.5f);
  EXPECT_EQ(half_to_float(hout[1]), 3.5f);
}

TEST(ReferenceAttention, MergeAttentionStatesRejectsBadArguments) {
  std::vector<float> x(4), l(2);
  auto merge_with = [&](int rows, int head_dim, OutputType t, const float* lse_b) {
    merge_attention_states_reference(x.data(), l.data(), x.data(), lse_b, x.data(), nullptr, rows, head_dim, t);
  };
  expect_error([&] { merge_with(-1, 2, OutputType::f32, l.data()); }, Status::invalid_argument, {"rows = -1"});
  expect_error([&] { merge_with(2, 0, OutputType::f32, l.data()); }, Status::invalid_argument, {"head_dim = 0"});
  expect_error([&] { merge_with(2, 2, static_cast<OutputType>(7), l.data()); }, Status::invalid_argument,
               {"type = 7"});
  expect_error([&] { merge_with(2, 2, OutputType::f32, nullptr); }, Status::invalid_argument, {"lse_b"});
  EXPECT_NO_THROW(merge_with(0, 2, OutputType::f32, nullptr));  // no rows: nothing is read
}

// What an engine with an exact window of its newest tokens does (docs/real-model.md: the
// newest few keys are what 4-bit costs): attention over the older positions (a view that stops
// before the window) and over the window (DecodeParams::window), merged through their lse, is
// attention over all positions. Sinks go to one side only.
TEST(ReferenceAttention, OlderPositionsAndNewestWindowMergeToTheWhole) {
  auto rng = seeded_rng(114);
  const int lengths[] = {9, 31, 97, 12, 64, 17, 50};  // batch 7; every length > the window
  const int batch = 7, kvh = 2, q_heads = 8, d = 64, window = 8;
  for (KvFormat f : {KvFormat{Format::tq4, Format::tq4}, KvFormat{Format::f16, Format::tq2}}) {
    KvCache cache(config(f, kvh, d, 97, batch));
    for (int b = 0; b < batch; ++b) fill(cache, b, lengths[b], rng);
    const auto q = normal_vector(rng, static_cast<std::size_t>(batch) * q_heads * d, 2.0);
    const auto sinks = normal_vector(rng, q_heads, 2.0);
    for (bool with_sinks : {false, true}) {
      SCOPED_TRACE(testing::Message() << kv_format_name(f) << (with_sinks ? " sinks" : ""));
      const std::size_t rows = static_cast<std::size_t>(batch) * q_heads;
      auto run = [&](const CacheView& view, int win, const float* s, std::vector<float>& out, std::vector<float>& lse) {
        out.assign(rows * d, NAN);
        lse.assign(rows, NAN);
        DecodeParams p;
        p.q_heads = q_heads;
        p.window = win;
        p.sinks = s;
        p.splits = 2;
        p.lse = lse.data();
        decode_attention_reference(view, q.data(), out.data(), p);
      };
      const float* s = with_sinks ? sinks.data() : nullptr;
      std::vector<float> whole, whole_lse, older, older_lse, newest, newest_lse;
      run(cache.view(), 0, s, whole, whole_lse);
      std::vector<int64_t> before_window(lengths, lengths + batch);
      for (auto& n : before_window) n -= window;
      CacheView older_view = cache.view();
      older_view.tokens = before_window.data();
      run(older_view, 0, s, older, older_lse);
      run(cache.view(), window, nullptr, newest, newest_lse);
      std::vector<float> merged(rows * d), merged_lse(rows);
      merge_attention_states_reference(older.data(), older_lse.data(), newest.data(), newest_lse.data(), merged.data(),
                                       merged_lse.data(), static_cast<int>(rows), d, OutputType::f32);
      for (std::size_t r = 0; r < rows; ++r) {
        EXPECT_LT(relative_diff(merged.data() + r * d, whole.data() + r * d, d), kMergeOfFloatStates) << "row " << r;
        EXPECT_LT(lse_diff(merged_lse[r], whole_lse[r]), kMergeOfFloatStates) << "row " << r;
      }
    }
  }
}

}  // namespace
}  // namespace tqkv
