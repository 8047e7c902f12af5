// The key-side options of the model's KV stores: per-channel key smoothing ("-smooth"), the
// f16 recent window ("-recentN") and the sign options ("-noflipk", "-noflipv", "-keysignsN",
// "-pairsignsk", "-halfsignsk"), their parsing, byte accounting and exactness.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kv_store.hpp"
#include "tqkv/cache.hpp"
#include "tqkv/error.hpp"
#include "tqkv/format.hpp"
#include "tqkv/rotation.hpp"
#include "test_support.hpp"

namespace tqkv::model {
namespace {

constexpr uint64_t kSeed = 4242;
constexpr int kDim = 64, kKvHeads = 2, kQHeads = 6;  // GQA group of 3, as SmolLM2
constexpr std::size_t kRow = static_cast<std::size_t>(kKvHeads) * kDim;
constexpr std::size_t kQRow = static_cast<std::size_t>(kQHeads) * kDim;

using test::max_abs;
using test::max_abs_diff;
using test::random_vector;

// Keys with outlier channels (large where the queries are small), as real models have.
struct Activations {
  std::vector<float> k, v, q;
};
Activations outlier_activations(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Activations a{random_vector(n * kRow, rng), random_vector(n * kRow, rng), random_vector(n * kQRow, rng, 0.3f)};
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < kKvHeads; ++h) {
      for (int c : {3, 17, 40}) a.k[t * kRow + h * kDim + c] = 15.0f + a.k[t * kRow + h * kDim + c];
    }
    for (int h = 0; h < kQHeads; ++h) {
      for (int c : {3, 17, 40}) a.q[t * kQRow + h * kDim + c] *= 0.05f;
    }
  }
  return a;
}

// Appends and attends chunk by chunk, as the model does; returns every token's output.
std::vector<float> run_chunks(KvStore& store, const Activations& a, const std::vector<int>& chunks) {
  int n = 0;
  for (int c : chunks) n += c;
  std::vector<float> out(static_cast<std::size_t>(n) * kQRow, NAN);
  int at = 0;
  for (int c : chunks) {
    store.append(&a.k[at * kRow], &a.v[at * kRow], c);
    store.attend(&a.q[at * kQRow], c, kQHeads, &out[at * kQRow]);
    at += c;
  }
  return out;
}

// The message parse_kv_spec(text) throws, or "no error".
std::string spec_error(const char* text) {
  try {
    (void)parse_kv_spec(text);
  } catch (const Error& e) {
    return std::string(e.what());
  }
  return std::string("no error");
}

// Each bad spec is rejected with an error that names it and contains `why`.
void expect_errors_name(std::initializer_list<const char*> bad_specs, const char* why) {
  for (const char* bad : bad_specs) {
    const std::string m = spec_error(bad);
    EXPECT_NE(m.find(bad), std::string::npos) << m;
    EXPECT_NE(m.find(why), std::string::npos) << m;
  }
}

TEST(KvOptions, ParseSuffixesInAnyOrder) {
  const KvSpec s = parse_kv_spec("tq4-recent64-center-smooth");
  EXPECT_EQ(s.kind, KvKind::tqkv);
  EXPECT_TRUE(s.smooth_keys);
  EXPECT_TRUE(s.center_keys);
  EXPECT_EQ(s.recent_window, 64);
  EXPECT_TRUE(s.key_sign_flips);
  EXPECT_TRUE(s.value_sign_flips);
  EXPECT_EQ(kv_spec_name(s), "tq4-smooth-center-recent64");
  EXPECT_EQ(kv_spec_name(parse_kv_spec(kv_spec_name(s))), kv_spec_name(s));
  EXPECT_EQ(kv_spec_name(parse_kv_spec("tq2-center-noflip")), "tq2-noflip-center");
  EXPECT_EQ(kv_spec_name(parse_kv_spec("f32-smooth")), "f32-smooth");
  EXPECT_EQ(kv_spec_name(parse_kv_spec("kivi2-smooth")), "kivi2-smooth");
  EXPECT_EQ(parse_kv_spec("k8v4-recent7").recent_window, 7);
  EXPECT_EQ(parse_kv_spec("tq3").recent_window, 0);
  EXPECT_FALSE(parse_kv_spec("tq3").smooth_keys);
}

// Bad option values are rejected with an error that names the text and the faulty part.
TEST(KvOptions, BadSuffixesGiveClearErrors) {
  expect_errors_name({"tq4-recent", "tq4-recent0", "tq4-recentx", "tq4-recent12345678901"},
                     "positive token count");
  EXPECT_NE(spec_error("kivi2-recent64").find("tqkv formats only"), std::string::npos);
  EXPECT_NE(spec_error("q4_0-noflip").find("tqkv formats only"), std::string::npos);
  EXPECT_NE(spec_error("tq4-smooth-smooth").find("given twice"), std::string::npos);
  EXPECT_NE(spec_error("tq4-recent8-recent16").find("given twice"), std::string::npos);
  EXPECT_THROW((void)parse_kv_spec("tq4-recent-8"), Error);
  EXPECT_THROW((void)parse_kv_spec("-smooth"), Error);
  EXPECT_THROW((void)parse_kv_spec("tq9-smooth"), Error);
}

TEST(KvOptions, FixedBytes) {
  EXPECT_EQ(kv_spec_fixed_bytes(parse_kv_spec("tq4"), kDim), 0.0);
  // 64 tokens of f16 K and V: 64 * 2 * 64 * 2 bytes.
  EXPECT_EQ(kv_spec_fixed_bytes(parse_kv_spec("tq4-recent64"), kDim), 16384.0);
  // head_dim fp32 factors (smoothing) and means (centering).
  EXPECT_EQ(kv_spec_fixed_bytes(parse_kv_spec("tq2-smooth"), kDim), 256.0);
  EXPECT_EQ(kv_spec_fixed_bytes(parse_kv_spec("tq2-smooth-center-recent1"), kDim), 256.0 * 3);
  // KIVI-2's raw newest key group: up to 63 f16 keys.
  EXPECT_EQ(kv_spec_fixed_bytes(parse_kv_spec("kivi2"), kDim), 63.0 * kDim * 2);
  // The per-position cost does not change with the options.
  EXPECT_EQ(kv_spec_bytes_per_position(parse_kv_spec("tq4-smooth-recent64"), kDim),
            kv_spec_bytes_per_position(parse_kv_spec("tq4"), kDim));
}

// k / s and q * s leave every logit, hence float attention, unchanged.
// The rotation seed reaches the cache: another seed draws other signs (other codes, other
// output), the same seed the same output.
TEST(KvOptions, RotationSeedChangesTheSigns) {
  const Activations a = outlier_activations(40, kSeed);
  const std::vector<int> chunks = {40};
  KvSpec spec = parse_kv_spec("tq4");
  auto first = make_kv_store(spec, 0, kKvHeads, kDim, 40);
  auto same = make_kv_store(spec, 0, kKvHeads, kDim, 40);
  spec.rotation_seed = 12345;
  auto other = make_kv_store(spec, 0, kKvHeads, kDim, 40);
  const auto x = run_chunks(*first, a, chunks);
  EXPECT_EQ(max_abs_diff(x, run_chunks(*same, a, chunks)), 0.0f);
  EXPECT_GT(max_abs_diff(x, run_chunks(*other, a, chunks)), 0.0f);
}

TEST(KvOptions, SmoothingLeavesExactAttentionUnchanged) {
  const Activations a = outlier_activations(90, kSeed);
  const std::vector<int> chunks = {40, 1, 49};
  auto plain = make_kv_store(parse_kv_spec("f32"), 0, kKvHeads, kDim, 90);
  auto smooth = make_kv_store(parse_kv_spec("f32-smooth"), 0, kKvHeads, kDim, 90);
  const auto ref = run_chunks(*plain, a, chunks);
  const auto got = run_chunks(*smooth, a, chunks);
  EXPECT_LE(max_abs_diff(ref, got), 1e-5f * max_abs(ref));
  EXPECT_EQ(smooth->length(), 90);
  // The same with centering in front, and after a reset (a new window recalibrates).
  auto both = make_kv_store(parse_kv_spec("f32-smooth-center"), 0, kKvHeads, kDim, 90);
  (void)run_chunks(*both, outlier_activations(90, kSeed + 1), chunks);
  both->reset();
  EXPECT_EQ(both->length(), 0);
  EXPECT_LE(max_abs_diff(ref, run_chunks(*both, a, chunks)), 1e-5f * max_abs(ref));
}

// Smoothing calibrates when the first chunk is attended: appended keys wait until then, and
// length() counts them.
TEST(KvOptions, SmoothingHoldsTheFirstChunkUntilItsQueries) {
  const Activations a = outlier_activations(8, kSeed);
  auto smooth = make_kv_store(parse_kv_spec("tq4-smooth"), 0, kKvHeads, kDim, 8);
  smooth->append(a.k.data(), a.v.data(), 5);
  EXPECT_EQ(smooth->length(), 5);
  std::vector<float> out(5 * kQRow);
  smooth->attend(a.q.data(), 5, kQHeads, out.data());
  EXPECT_EQ(smooth->length(), 5);
  for (float x : out) EXPECT_TRUE(std::isfinite(x));
  auto empty = make_kv_store(parse_kv_spec("tq4-smooth"), 0, kKvHeads, kDim, 8);
  EXPECT_THROW(empty->attend(a.q.data(), 1, kQHeads, out.data()), Error);
}

// On keys with outlier channels where the queries are small, smoothing lowers the attention
// error of 4-bit keys (values kept in f16 so that only the keys' error is seen).
TEST(KvOptions, SmoothingLowersTheErrorOfOutlierKeys) {
  const int n = 256;
  const Activations a = outlier_activations(n, kSeed);
  const std::vector<int> chunks = {64, 64, 64, 64};
  auto exact = make_kv_store(parse_kv_spec("f32"), 0, kKvHeads, kDim, n);
  auto plain = make_kv_store(parse_kv_spec("k4v16"), 0, kKvHeads, kDim, n);
  auto smooth = make_kv_store(parse_kv_spec("k4v16-smooth"), 0, kKvHeads, kDim, n);
  const auto ref = run_chunks(*exact, a, chunks);
  auto rms_error = [&](const std::vector<float>& got) {
    double e = 0, r = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
      e += (got[i] - ref[i]) * (got[i] - ref[i]);
      r += ref[i] * ref[i];
    }
    return std::sqrt(e / r);
  };
  const double before = rms_error(run_chunks(*plain, a, chunks));
  const double after = rms_error(run_chunks(*smooth, a, chunks));
  EXPECT_LT(after, 0.7 * before) << "plain " << before << ", smoothed " << after;
}

// "-noflipk" / "-noflipv" turn the random signs off on one side; "-noflip" is both, and the
// canonical name of both one-sided suffixes together.
TEST(KvOptions, OneSidedSignFlipsParse) {
  const KvSpec keys_plain = parse_kv_spec("tq2-recent32-noflipk");
  EXPECT_FALSE(keys_plain.key_sign_flips);
  EXPECT_TRUE(keys_plain.value_sign_flips);
  EXPECT_EQ(kv_spec_name(keys_plain), "tq2-noflipk-recent32");
  const KvSpec values_plain = parse_kv_spec("tq2-noflipv");
  EXPECT_TRUE(values_plain.key_sign_flips);
  EXPECT_FALSE(values_plain.value_sign_flips);
  EXPECT_EQ(kv_spec_name(values_plain), "tq2-noflipv");
  EXPECT_EQ(kv_spec_name(parse_kv_spec("tq2-noflipv-noflipk")), "tq2-noflip");
  EXPECT_NE(spec_error("tq2-noflip-noflipk").find("'-noflip' already covers '-noflipk'"), std::string::npos);
  EXPECT_NE(spec_error("tq2-noflipv-noflip").find("'-noflip' already covers '-noflipv'"), std::string::npos);
  EXPECT_NE(spec_error("q4_0-noflipv").find("'-noflipv' applies to tqkv formats only"), std::string::npos);
  EXPECT_NE(spec_error("tq2-noflipk-noflipk").find("given twice"), std::string::npos);
}

// A store with one side flipped runs a cache without signs and applies that side's signs
// itself. With the other side in f16 (not rotated), it must give exactly what a cache with its
// own signs gives: this checks that the store draws the cache's signs, for every layer's seed.
TEST(KvOptions, OneSidedSignFlipsReachTheCache) {
  const int n = 80;
  const Activations a = outlier_activations(n, kSeed + 4);
  const std::vector<int> chunks = {64, 16};
  auto output = [&](const std::string& name, int layer) {
    auto store = make_kv_store(parse_kv_spec(name), layer, kKvHeads, kDim, n);
    return run_chunks(*store, a, chunks);
  };
  for (int layer : {0, 7}) {
    for (const std::string window : {"", "-recent8"}) {
      const auto keys_flipped = output("k2v16" + window, layer);
      const auto keys_plain = output("k2v16-noflip" + window, layer);
      const auto values_flipped = output("k16v2" + window, layer);
      const auto values_plain = output("k16v2-noflip" + window, layer);
      const float tol = 1e-5f * max_abs(keys_flipped);
      EXPECT_LE(max_abs_diff(output("k2v16-noflipv" + window, layer), keys_flipped), tol);
      EXPECT_LE(max_abs_diff(output("k2v16-noflipk" + window, layer), keys_plain), tol);
      EXPECT_LE(max_abs_diff(output("k16v2-noflipk" + window, layer), values_flipped), tol);
      EXPECT_LE(max_abs_diff(output("k16v2-noflipv" + window, layer), values_plain), tol);
      // The signs matter at 2 bits, so the equalities above are not trivially true.
      EXPECT_GT(max_abs_diff(keys_flipped, keys_plain), 100 * tol);
      EXPECT_GT(max_abs_diff(values_flipped, values_plain), 100 * tol);
    }
  }
  // Both sides quantized: flipped keys with plain values is neither of the symmetric variants.
  const auto mixed = output("tq2-noflipv", 0);
  EXPECT_GT(max_abs_diff(mixed, output("tq2", 0)), 1e-3f * max_abs(mixed));
  EXPECT_GT(max_abs_diff(mixed, output("tq2-noflip", 0)), 1e-3f * max_abs(mixed));
}

// "-pairsignsk" / "-halfsignsk" tie the key signs per pair; they set the key signs, so they
// exclude each other and the other key-sign options, and cost no bytes.
TEST(KvOptions, PairKeySignsParse) {
  const KvSpec s = parse_kv_spec("tq2-recent32-pairsignsk");
  EXPECT_EQ(s.key_sign_tie, KeySignTie::adjacent_pairs);
  EXPECT_TRUE(s.key_sign_flips);
  EXPECT_TRUE(s.value_sign_flips);
  EXPECT_EQ(kv_spec_name(s), "tq2-pairsignsk-recent32");
  EXPECT_EQ(kv_spec_name(parse_kv_spec("tq2-pairsignsk-noflipv")), "tq2-noflipv-pairsignsk");
  const KvSpec half = parse_kv_spec("k2v16-halfsignsk-center");
  EXPECT_EQ(half.key_sign_tie, KeySignTie::half_pairs);
  EXPECT_EQ(kv_spec_name(half), "k2vf16-halfsignsk-center");
  EXPECT_EQ(parse_kv_spec("tq2-recent32").key_sign_tie, KeySignTie::none);
  EXPECT_EQ(kv_spec_fixed_bytes(s, kDim), kv_spec_fixed_bytes(parse_kv_spec("tq2-recent32"), kDim));
  EXPECT_EQ(kv_spec_bytes_per_position(s, kDim), kv_spec_bytes_per_position(parse_kv_spec("tq2"), kDim));
  EXPECT_NE(spec_error("tq2-pairsignsk-noflip").find("cannot be combined with '-noflip'"), std::string::npos);
  EXPECT_NE(spec_error("tq2-noflipk-pairsignsk").find("cannot be combined with '-noflipk'"), std::string::npos);
  EXPECT_NE(spec_error("tq2-pairsignsk-keysigns4").find("cannot be combined with '-keysigns'"), std::string::npos);
  EXPECT_NE(spec_error("q4_0-pairsignsk").find("'-pairsignsk' applies to tqkv formats only"), std::string::npos);
  EXPECT_NE(spec_error("tq2-pairsignsk-pairsignsk").find("given twice"), std::string::npos);
  EXPECT_NE(spec_error("tq2-halfsignsk-pairsignsk").find("cannot be combined with '-halfsignsk'"), std::string::npos);
  EXPECT_NE(spec_error("tq2-noflip-halfsignsk").find("'-halfsignsk' sets the key signs"), std::string::npos);
  EXPECT_NE(spec_error("kivi2-halfsignsk").find("tqkv formats only"), std::string::npos);
}

// The key signs a tie should apply: the cache's draw for (layer, KV head), where coordinate i
// takes the sign of the first coordinate of its pair, 2 * (i / 2) for "-pairsignsk" and
// i mod head_dim/2 for "-halfsignsk". [kv_heads][head_dim].
std::vector<float> tied_signs(int layer, KeySignTie tie) {
  std::vector<float> signs(kRow);
  for (int h = 0; h < kKvHeads; ++h) {
    const Rotation drawn(kDim, rotation_seed(kDefaultSeed, layer, h), true);
    for (int i = 0; i < kDim; ++i) {
      const int first = tie == KeySignTie::adjacent_pairs ? i & ~1 : i % (kDim / 2);
      signs[h * kDim + i] = drawn.negated(first) ? -1.0f : 1.0f;
    }
  }
  return signs;
}

// With f16 values, a tie must give exactly the plain Hadamard's output on keys and queries
// multiplied by the tied signs (q.k is unchanged, the rotation sees S k): this checks that the
// store's signs are the cache's draw tied per pair, for every layer's seed and both ties.
// With f16 keys, it must give the default signs' output (the values keep them).
TEST(KvOptions, PairKeySignsAreTiedPerPair) {
  const int n = 80;
  const Activations a = outlier_activations(n, kSeed + 7);
  const std::vector<int> chunks = {64, 16};
  auto output = [&](const std::string& name, int layer, const Activations& x) {
    auto store = make_kv_store(parse_kv_spec(name), layer, kKvHeads, kDim, n);
    return run_chunks(*store, x, chunks);
  };
  // The activations seen through the diagonal `signs`: S k and, per KV head's group, S q.
  auto signed_keys_and_queries = [&](const std::vector<float>& signs) {
    Activations x = a;
    for (std::size_t i = 0; i < x.k.size(); ++i) x.k[i] *= signs[i % kRow];
    for (int t = 0; t < n; ++t) {
      for (int h = 0; h < kQHeads; ++h) {
        const int kv = h / (kQHeads / kKvHeads);
        for (int i = 0; i < kDim; ++i) x.q[t * kQRow + h * kDim + i] *= signs[kv * kDim + i];
      }
    }
    return x;
  };
  for (const auto& [suffix, tie] : {std::pair{"-pairsignsk", KeySignTie::adjacent_pairs},
                                    std::pair{"-halfsignsk", KeySignTie::half_pairs}}) {
    for (int layer : {0, 7}) {
      const std::vector<float> signs = tied_signs(layer, tie);
      const auto negated = std::count(signs.begin(), signs.end(), -1.0f);
      EXPECT_GT(negated, 0);  // a real draw, not the plain Hadamard
      EXPECT_LT(negated, static_cast<std::ptrdiff_t>(kRow));
      const Activations tied = signed_keys_and_queries(signs);
      for (const std::string window : {"", "-recent8"}) {
        const std::string where = std::string(suffix) + " layer " + std::to_string(layer) + window;
        const auto got = output("k2v16" + window + suffix, layer, a);
        const auto expected = output("k2v16-noflip" + window, layer, tied);
        const float tol = 1e-5f * max_abs(expected);
        EXPECT_LE(max_abs_diff(got, expected), tol) << where;
        // Neither the independent signs nor none: the equality above is not trivially true.
        EXPECT_GT(max_abs_diff(got, output("k2v16" + window, layer, a)), 100 * tol) << where;
        EXPECT_GT(max_abs_diff(got, output("k2v16-noflip" + window, layer, a)), 100 * tol) << where;
        const auto values_flipped = output("k16v2" + window, layer, a);
        EXPECT_LE(max_abs_diff(output("k16v2" + window + suffix, layer, a), values_flipped),
                  1e-5f * max_abs(values_flipped)) << where;
      }
    }
  }
}

TEST(KvOptions, KeySignCandidatesParse) {
  const KvSpec s = parse_kv_spec("tq2-recent32-keysigns4");
  EXPECT_EQ(s.key_sign_candidates, 4);
  EXPECT_EQ(s.recent_window, 32);
  EXPECT_EQ(kv_spec_name(s), "tq2-keysigns4-recent32");
  EXPECT_EQ(kv_spec_name(parse_kv_spec("tq2-keysigns2-noflipv")), "tq2-noflipv-keysigns2");
  EXPECT_EQ(parse_kv_spec("tq2").key_sign_candidates, 0);
  // The choice is one byte per KV head and layer; nothing per token.
  EXPECT_EQ(kv_spec_fixed_bytes(s, kDim), kv_spec_fixed_bytes(parse_kv_spec("tq2-recent32"), kDim) + 1);
  EXPECT_EQ(kv_spec_bytes_per_position(s, kDim), kv_spec_bytes_per_position(parse_kv_spec("tq2"), kDim));
  expect_errors_name({"tq2-keysigns0", "tq2-keysigns", "tq2-keysignsx"}, "must be a positive count");
  EXPECT_NE(spec_error("tq2-keysigns257").find("at most 256"), std::string::npos);
  EXPECT_NE(spec_error("tq2-noflip-keysigns4").find("cannot be combined with '-noflip'"), std::string::npos);
  EXPECT_NE(spec_error("tq2-keysigns4-noflipk").find("cannot be combined with '-noflipk'"), std::string::npos);
  EXPECT_NE(spec_error("kivi2-keysigns4").find("tqkv formats only"), std::string::npos);
  EXPECT_NE(spec_error("tq2-keysigns2-keysigns4").find("given twice"), std::string::npos);
}

// Keys built in the plain Hadamard's domain: y = H k. `flat`: y has entries +-1, which 2 bits
// represent almost exactly without signs and not after random signs; otherwise y is one large
// coordinate (plus noise), which no 2-bit level set fits without signs and random signs spread.
Activations hadamard_domain_activations(int n, bool flat, uint64_t seed) {
  Activations a = outlier_activations(n, seed);
  std::mt19937_64 rng(seed);
  const Rotation plain(kDim, 0, false);
  std::vector<float> y(kDim);
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < kKvHeads; ++h) {
      for (int i = 0; i < kDim; ++i) y[i] = flat ? (rng() & 1 ? 1.0f : -1.0f) : 0.01f * static_cast<float>(rng() % 100);
      if (!flat) y[rng() % kDim] = 8.0f;
      plain.inverse(y.data(), &a.k[t * kRow + h * kDim]);
    }
  }
  return a;
}

// -keysignsN holds the first chunk, picks per KV head the candidate with the smaller logit
// error, and picks again after a reset. On keys that the plain Hadamard serves (flat in its
// domain) the result is that of -noflip; on keys it serves badly, that of the default signs.
TEST(KvOptions, KeySignCandidatesPickTheBetterRotation) {
  const int n = 80;
  const std::vector<int> chunks = {64, 16};
  const Activations flat = hadamard_domain_activations(n, true, kSeed + 5);
  const Activations spiky = hadamard_domain_activations(n, false, kSeed + 6);
  auto output = [&](const char* name, const Activations& a) {
    auto store = make_kv_store(parse_kv_spec(name), 3, kKvHeads, kDim, n);
    return run_chunks(*store, a, chunks);
  };
  for (const char* window : {"", "-recent8"}) {
    const std::string base = std::string("k2v16") + window;
    auto chooser = make_kv_store(parse_kv_spec(base + "-keysigns4"), 3, kKvHeads, kDim, n);
    const auto on_flat = run_chunks(*chooser, flat, chunks);
    chooser->reset();
    EXPECT_EQ(chooser->length(), 0);
    const auto on_spiky = run_chunks(*chooser, spiky, chunks);
    EXPECT_EQ(chooser->length(), n);
    const auto flat_plain = output((base + "-noflip").c_str(), flat);
    const auto flat_signed = output(base.c_str(), flat);
    const auto spiky_plain = output((base + "-noflip").c_str(), spiky);
    const auto spiky_signed = output(base.c_str(), spiky);
    const float tol = 1e-5f * max_abs(flat_plain);
    EXPECT_LE(max_abs_diff(on_flat, flat_plain), tol) << window;
    EXPECT_GT(max_abs_diff(flat_signed, flat_plain), 100 * tol) << window;
    // On spiky keys one of the three seeded draws wins; it need not be the default one, but
    // the plain Hadamard must lose.
    EXPECT_GT(max_abs_diff(on_spiky, spiky_plain), 100 * tol) << window;
    auto one_draw = make_kv_store(parse_kv_spec(base + "-keysigns2"), 3, kKvHeads, kDim, n);
    EXPECT_LE(max_abs_diff(run_chunks(*one_draw, spiky, chunks), spiky_signed), tol) << window;
  }
  // A single candidate is the plain Hadamard.
  EXPECT_LE(max_abs_diff(output("tq2-keysigns1", spiky), output("tq2-noflipk", spiky)), 1e-6f);
}

// A fixed key-sign choice (KvSpec::key_sign_choice, read from a calibration file) gives KV head
// h candidate choice[h]: 0 the plain Hadamard (exactly the output of -noflipk), 1 the default
// signs (exactly the cache's own draw), c >= 2 the signs that base seed + c - 1 draws. Values
// keep the default signs.
TEST(KvOptions, FixedKeySignChoiceAppliesItsCandidatePerHead) {
  const int n = 80;
  const Activations a = outlier_activations(n, kSeed + 8);
  const std::vector<int> chunks = {64, 16};
  auto output = [&](const KvSpec& spec, int layer) {
    auto store = make_kv_store(spec, layer, kKvHeads, kDim, n);
    return run_chunks(*store, a, chunks);
  };
  auto chosen = [](const std::string& name, std::vector<int> choice) {
    KvSpec spec = parse_kv_spec(name);
    spec.key_sign_choice = std::move(choice);
    return spec;
  };
  for (int layer : {0, 7}) {
    for (const std::string base : {"tq2", "k2v16-recent8"}) {
      const std::string where = base + " layer " + std::to_string(layer);
      const auto plain = output(parse_kv_spec(base + "-noflipk"), layer);
      const auto signs = output(parse_kv_spec(base), layer);
      EXPECT_GT(max_abs_diff(plain, signs), 1e-3f * max_abs(plain)) << where;  // signs matter at 2 bits
      EXPECT_EQ(max_abs_diff(output(chosen(base, {0, 0}), layer), plain), 0.0f) << where;
      EXPECT_EQ(max_abs_diff(output(chosen(base, {1, 1}), layer), signs), 0.0f) << where;
      // KV head 0 (query heads 0..2) plain, KV head 1 (query heads 3..5) signed.
      const auto mixed = output(chosen(base, {0, 1}), layer);
      for (int t = 0; t < n; ++t) {
        for (int h = 0; h < kQHeads; ++h) {
          const auto& expected = h < kQHeads / kKvHeads ? plain : signs;
          for (int i = 0; i < kDim; ++i) {
            const std::size_t at = static_cast<std::size_t>(t) * kQRow + static_cast<std::size_t>(h) * kDim + i;
            ASSERT_EQ(mixed[at], expected[at]) << where << ", token " << t << ", head " << h;
          }
        }
      }
    }
    // Candidate 2 on the keys is the default draw of base seed + 1 (values in f16 see no signs).
    KvSpec next_seed = parse_kv_spec("k2v16");
    next_seed.rotation_seed = kDefaultSeed + 1;
    const auto drawn = output(next_seed, layer);
    EXPECT_EQ(max_abs_diff(output(chosen("k2v16", {2, 2}), layer), drawn), 0.0f) << layer;
    EXPECT_GT(max_abs_diff(drawn, output(parse_kv_spec("k2v16"), layer)), 1e-3f * max_abs(drawn));
  }
  // One byte per KV head and layer, nothing per token.
  EXPECT_EQ(kv_spec_fixed_bytes(chosen("tq2-recent32", {0, 1}), kDim),
            kv_spec_fixed_bytes(parse_kv_spec("tq2-recent32"), kDim) + 1);
  // A choice per KV head, each a candidate index below 256, on keys whose signs no other option sets.
  EXPECT_THROW((void)make_kv_store(chosen("tq2", {0}), 0, kKvHeads, kDim, n), Error);
  EXPECT_THROW((void)make_kv_store(chosen("tq2", {0, 256}), 0, kKvHeads, kDim, n), Error);
  EXPECT_THROW((void)make_kv_store(chosen("tq2", {-1, 0}), 0, kKvHeads, kDim, n), Error);
  for (const char* other : {"tq2-noflip", "tq2-noflipk", "tq2-keysigns4", "tq2-pairsignsk", "tq2-halfsignsk"}) {
    EXPECT_THROW((void)make_kv_store(chosen(other, {0, 1}), 0, kKvHeads, kDim, n), Error) << other;
    EXPECT_FALSE(key_sign_option(parse_kv_spec(other)).empty()) << other;
  }
  EXPECT_TRUE(key_sign_option(parse_kv_spec("tq2-noflipv-recent4")).empty());
}

// A window at least as long as the context holds everything in f16: the same as float
// attention on f16-rounded K/V.
TEST(KvOptions, RecentWindowCoveringTheContextIsExact) {
  const int n = 70;
  Activations a = outlier_activations(n, kSeed);
  auto windowed = make_kv_store(parse_kv_spec("tq2-recent70"), 0, kKvHeads, kDim, n);
  const auto got = run_chunks(*windowed, a, {64, 6});
  for (auto* x : {&a.k, &a.v}) {
    for (float& e : *x) e = half_to_float(float_to_half(e));
  }
  auto exact = make_kv_store(parse_kv_spec("f32"), 0, kKvHeads, kDim, n);
  const auto ref = run_chunks(*exact, a, {64, 6});
  EXPECT_LE(max_abs_diff(ref, got), 1e-5f * max_abs(ref));
}

// Fp64 attention of every token over its causal prefix: positions older than the window use the
// tqkv cache's decoded K/V (a cache of the same config quantizes identically), the newest
// `window` the f16-rounded originals.
std::vector<float> mixed_reference(const Activations& a, int n, const char* format, int window,
                                   bool sign_flips) {
  CacheConfig config;
  config.kv_heads = kKvHeads;
  config.head_dim = kDim;
  config.capacity = n;
  config.format = parse_kv_format(format);
  config.sign_flips = sign_flips;
  KvCache cache(config);
  cache.append(0, a.k.data(), a.v.data(), n);
  std::vector<float> out(static_cast<std::size_t>(n) * kQRow);
  std::vector<float> key(kDim), value(kDim);
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < kQHeads; ++h) {
      const int kv = h / (kQHeads / kKvHeads);
      const float* q = &a.q[t * kQRow + h * kDim];
      std::vector<double> logits(static_cast<std::size_t>(t) + 1), o(kDim, 0.0);
      std::vector<std::vector<float>> values;
      double m = -INFINITY, den = 0;
      for (int p = 0; p <= t; ++p) {
        const bool recent = p > t - window;
        if (recent) {
          for (int i = 0; i < kDim; ++i) {
            key[i] = half_to_float(float_to_half(a.k[p * kRow + kv * kDim + i]));
            value[i] = half_to_float(float_to_half(a.v[p * kRow + kv * kDim + i]));
          }
        } else {
          cache.decode_key(0, kv, p, key.data());
          cache.decode_value(0, kv, p, value.data());
        }
        double dot = 0;
        for (int i = 0; i < kDim; ++i) dot += static_cast<double>(q[i]) * key[i];
        logits[p] = dot / std::sqrt(static_cast<double>(kDim));
        m = std::max(m, logits[p]);
        values.push_back(value);
      }
      for (int p = 0; p <= t; ++p) {
        const double w = std::exp(logits[p] - m);
        den += w;
        for (int i = 0; i < kDim; ++i) o[i] += w * values[p][i];
      }
      for (int i = 0; i < kDim; ++i) out[t * kQRow + h * kDim + i] = static_cast<float>(o[i] / den);
    }
  }
  return out;
}

// The window and the compressed prefix are combined exactly (the softmax over both parts),
// for every token of a chunk (each with its own window) and at every bit width.
TEST(KvOptions, RecentWindowCombinesBothPartsExactly) {
  const int n = 100, window = 24;
  const Activations a = outlier_activations(n, kSeed + 2);
  for (const char* format : {"tq4", "tq2", "k8v4"}) {
    const auto spec = parse_kv_spec(std::string(format) + "-recent" + std::to_string(window));
    auto store = make_kv_store(spec, 0, kKvHeads, kDim, n);
    const auto got = run_chunks(*store, a, {64, 1, 35});
    const auto ref = mixed_reference(a, n, format, window, true);
    EXPECT_LE(max_abs_diff(ref, got), 2e-5f * max_abs(ref)) << format;
    // Not the plain store: the window changes the result.
    auto plain = make_kv_store(parse_kv_spec(format), 0, kKvHeads, kDim, n);
    EXPECT_GT(max_abs_diff(run_chunks(*plain, a, {64, 1, 35}), got), 1e-3f * max_abs(ref)) << format;
  }
}

// When every old value is zero the old part's output is zero: its softmax mass must come from
// the decode's log-sum-exp (DecodeParams::lse), not from the output.
TEST(KvOptions, RecentWindowWithZeroOldValues) {
  const int n = 40, window = 8;
  Activations a = outlier_activations(n, kSeed + 3);
  std::fill(a.v.begin(), a.v.begin() + static_cast<std::ptrdiff_t>((n - window) * kRow), 0.0f);
  auto store = make_kv_store(parse_kv_spec("tq4-recent8"), 0, kKvHeads, kDim, n);
  store->append(a.k.data(), a.v.data(), n);
  std::vector<float> got(kQRow);
  store->attend(&a.q[(n - 1) * kQRow], 1, kQHeads, got.data());
  const auto ref = mixed_reference(a, n, "tq4", window, true);
  const std::vector<float> last(ref.end() - static_cast<std::ptrdiff_t>(kQRow), ref.end());
  EXPECT_LE(max_abs_diff(last, got), 2e-5f * max_abs(last));
}

}  // namespace
}  // namespace tqkv::model
