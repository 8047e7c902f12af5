// cpu_fast::decode_attention against the scalar reference on the same packed bytes, on every
// instruction set this machine can run.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <fmt/format.h>

#include "test_support.hpp"
#include "tqkv/attention.hpp"
#include "tqkv/error.hpp"

namespace tqkv::test {
namespace {

// Kernel fidelity: fp32 accumulation against the reference's fp64 (issue 5). Measured values
// are ~1e-13..1e-12; quantization error does not enter (both read the same bytes).
constexpr double kMaxNmseF32 = 1e-6;
// DecodeParams::lse from fp32 logits and sums against the reference's fp64, relative to
// max(1, |lse|) (measured: up to 1.2e-6).
constexpr double kMaxLseDiffF32 = 1e-5;

struct Case {
  KvFormat format{};
  int head_dim = 128;
  int kv_heads = 2;
  int group = 4;
  std::vector<int64_t> lengths{1, 31, 97};
  int capacity = 97;
  bool ring = false;
  DecodeParams params{};  // q_heads filled in from kv_heads * group
  bool with_sinks = false;
  int threads = 0;
};

std::string describe(const Case& c) {
  return fmt::format("{} d={} kv_heads={} group={} ring={} cap={} window={} softcap={} splits={} "
                     "sinks={}", kv_format_name(c.format), c.head_dim, c.kv_heads, c.group, c.ring,
                     c.capacity, c.params.window, c.params.softcap, c.params.splits, c.with_sinks);
}

// Fills a cache, runs the reference once and the fast kernel on every target; checks nmse and
// that every output element was written (outputs start as NaN).
void check_case(Case c, uint64_t seed) {
  SCOPED_TRACE(describe(c));
  std::mt19937_64 rng = seeded_rng(seed);
  CacheConfig cfg;
  cfg.batch = static_cast<int>(c.lengths.size());
  cfg.kv_heads = c.kv_heads;
  cfg.head_dim = c.head_dim;
  cfg.capacity = c.capacity;
  cfg.format = c.format;
  cfg.ring = c.ring;
  cfg.layer = 3;
  KvCache cache(cfg);
  fill_cache(cache, rng, c.lengths);
  const CacheView view = cache.view();

  DecodeParams p = c.params;
  p.q_heads = c.kv_heads * c.group;
  const std::size_t n_out = c.lengths.size() * p.q_heads * c.head_dim;
  const std::vector<float> q = normal_vector(rng, n_out);
  std::vector<float> sinks;
  if (c.with_sinks) {
    sinks = normal_vector(rng, static_cast<std::size_t>(p.q_heads), 2.0);
    p.sinks = sinks.data();
  }
  const std::size_t rows = c.lengths.size() * p.q_heads;
  std::vector<float> want(n_out), want_lse(rows);
  p.lse = want_lse.data();
  decode_attention_reference(view, q.data(), want.data(), p);

  double worst = 0, worst_lse = 0;
  for_each_target([&](const std::string&) {
    std::vector<float> got(n_out, std::numeric_limits<float>::quiet_NaN());
    std::vector<float> got_lse(rows, std::numeric_limits<float>::quiet_NaN());
    p.lse = got_lse.data();
    cpu_fast::decode_attention(view, q.data(), got.data(), p, c.threads);
    std::size_t unwritten = 0;
    for (float x : got) unwritten += !std::isfinite(x);
    EXPECT_EQ(unwritten, 0u) << "output elements left NaN / non-finite";
    const double e = nmse(got, want);
    worst = std::max(worst, e);
    EXPECT_LE(e, kMaxNmseF32);
    for (std::size_t r = 0; r < rows; ++r) {
      const double diff = want_lse[r] == got_lse[r] ? 0.0  // also both -inf
                                                    : std::fabs(double(got_lse[r]) - want_lse[r]) /
                                                          std::max(1.0, std::fabs(double(want_lse[r])));
      worst_lse = std::max(worst_lse, std::isnan(diff) ? INFINITY : diff);
    }
    EXPECT_LE(worst_lse, kMaxLseDiffF32);
  });
  std::printf("[   nmse   ] %.2e  lse %.1e  %s\n", worst, worst_lse, describe(c).c_str());
}

TEST(CpuFastDecode, EveryFormatPairAgainstReference) {
  uint64_t seed = 1000;
  for (const Format k : kAllFormats)
    for (const Format v : kAllFormats)
      for (const int d : {64, 128}) {
        Case c;
        c.format = {k, v};
        c.head_dim = d;
        check_case(c, seed++);
      }
}

TEST(CpuFastDecode, HeadDims) {
  uint64_t seed = 2000;
  for (const int d : {32, 48, 64, 80, 96, 112, 128, 160, 256, 576, 1024})
    for (const KvFormat f : {KvFormat{Format::tq4, Format::tq4}, KvFormat{Format::tq8, Format::tq3},
                             KvFormat{Format::tq2, Format::f16}, KvFormat{Format::f16, Format::tq2}}) {
      Case c;
      c.format = f;
      c.head_dim = d;
      c.lengths = {31, 5};
      c.capacity = 31;
      check_case(c, seed++);
    }
}

TEST(CpuFastDecode, Batch17MixedLengthsAndGroups) {
  uint64_t seed = 3000;
  for (const int group : {1, 3, 4, 8})
    for (const KvFormat f : {KvFormat{Format::tq4, Format::tq4}, KvFormat{Format::tq8, Format::tq4},
                             KvFormat{Format::f16, Format::f16}}) {
      Case c;
      c.format = f;
      c.group = group;
      c.kv_heads = 2;
      c.lengths = {1, 31, 97, 2, 17, 64, 3, 96, 33, 15, 16, 47, 80, 1, 65, 9, 50};
      c.capacity = 97;
      check_case(c, seed++);
    }
}

TEST(CpuFastDecode, RingWrapWindowSoftcapSinksSplits) {
  uint64_t seed = 4000;
  for (const KvFormat f : {KvFormat{Format::tq4, Format::tq4}, KvFormat{Format::tq3, Format::tq2},
                           KvFormat{Format::f16, Format::tq8}})
    for (const int window : {0, 1, 23, 40})
      for (const int splits : {0, 1, 3, 7}) {
        Case c;
        c.format = f;
        c.ring = true;
        c.capacity = 40;
        c.lengths = {97, 40, 41, 1, 39, 200};  // wrapped, exactly full, one past, short, long
        c.params.window = window;
        c.params.splits = splits;
        c.params.softcap = splits % 2 ? 5.0f : 0.0f;  // small cap: logits really get capped
        c.with_sinks = window % 2 == 1;
        check_case(c, seed++);
      }
}

TEST(CpuFastDecode, LongSequenceSplitsAndScale) {
  uint64_t seed = 5000;
  for (const int splits : {0, 1, 5, 64}) {
    Case c;
    c.format = {Format::tq4, Format::tq3};
    c.kv_heads = 1;
    c.group = 2;
    c.lengths = {3000};
    c.capacity = 3000;
    c.params.splits = splits;
    c.params.scale = 0.2f;
    c.params.softcap = splits == 5 ? 30.0f : 0.0f;
    check_case(c, seed++);
  }
}

TEST(CpuFastDecode, ThreadCountDoesNotChangeResult) {
  std::mt19937_64 rng = seeded_rng(6000);
  CacheConfig cfg;
  cfg.batch = 3;
  cfg.kv_heads = 2;
  cfg.head_dim = 96;
  cfg.capacity = 300;
  cfg.format = {Format::tq4, Format::tq8};
  KvCache cache(cfg);
  fill_cache(cache, rng, {300, 1, 150});
  DecodeParams p;
  p.q_heads = 8;
  p.splits = 3;  // fixed: the automatic split count depends on the thread count
  const std::vector<float> q = normal_vector(rng, 3u * 8 * 96);
  std::vector<float> one(q.size()), two(q.size()), all(q.size());
  cpu_fast::decode_attention(cache.view(), q.data(), one.data(), p, 1);
  cpu_fast::decode_attention(cache.view(), q.data(), two.data(), p, 2);
  cpu_fast::decode_attention(cache.view(), q.data(), all.data(), p, 0);
  EXPECT_EQ(0, std::memcmp(one.data(), two.data(), one.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(one.data(), all.data(), one.size() * sizeof(float)));
}

// f16 / bf16 outputs: exactly the fp32 result rounded (the conversion is the only difference),
// every element written.
TEST(CpuFastDecode, HalfOutputsAreRoundedF32) {
  std::mt19937_64 rng = seeded_rng(7000);
  CacheConfig cfg;
  cfg.batch = 2;
  cfg.kv_heads = 2;
  cfg.head_dim = 80;
  cfg.capacity = 50;
  cfg.format = {Format::tq4, Format::tq2};
  KvCache cache(cfg);
  fill_cache(cache, rng, {50, 31});
  DecodeParams p;
  p.q_heads = 6;
  const std::size_t n = 2u * 6 * 80;
  const std::vector<float> q = normal_vector(rng, n);
  std::vector<float> f32(n);
  cpu_fast::decode_attention(cache.view(), q.data(), f32.data(), p, 0);
  for (const OutputType t : {OutputType::f16, OutputType::bf16}) {
    p.out_type = t;
    for_each_target([&](const std::string&) {
      std::vector<float> f32_here(n);
      DecodeParams pf = p;
      pf.out_type = OutputType::f32;
      cpu_fast::decode_attention(cache.view(), q.data(), f32_here.data(), pf, 0);
      std::vector<uint16_t> half(n, 0x7fff);  // a NaN in both f16 and bf16
      cpu_fast::decode_attention(cache.view(), q.data(), half.data(), p, 0);
      for (std::size_t i = 0; i < n; ++i) {
        const uint16_t want =
            t == OutputType::f16 ? float_to_half(f32_here[i]) : float_to_bf16(f32_here[i]);
        ASSERT_EQ(half[i], want) << "element " << i;
      }
    });
  }
}

TEST(CpuFastDecode, RejectsBadInput) {
  CacheConfig cfg;
  cfg.batch = 2;
  cfg.kv_heads = 2;
  cfg.head_dim = 64;
  cfg.capacity = 8;
  KvCache cache(cfg);
  std::mt19937_64 rng = seeded_rng(8000);
  fill_cache(cache, rng, {3, 0});  // sequence 1 stays empty
  std::vector<float> q(2u * 4 * 64), out(q.size());
  DecodeParams p;
  p.q_heads = 4;
  const auto expect_status = [&](auto&& call, Status status, const std::string& needle) {
    try {
      call();
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_EQ(static_cast<int>(e.status()), static_cast<int>(status)) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_status([&] { cpu_fast::decode_attention(cache.view(), q.data(), out.data(), p, 0); },
                Status::invalid_argument, "sequence 1 is empty");
  std::vector<float> k(4u * 2 * 64, 0.5f);
  cache.append(1, k.data(), k.data(), 4);
  expect_status([&] { cpu_fast::decode_attention(cache.view(), nullptr, out.data(), p, 0); },
                Status::invalid_argument, "q pointer is null");
  expect_status([&] { cpu_fast::decode_attention(cache.view(), q.data(), nullptr, p, 0); },
                Status::invalid_argument, "out pointer is null");
  expect_status([&] { cpu_fast::decode_attention(cache.view(), q.data(), out.data(), p, -1); },
                Status::invalid_argument, "threads = -1");
  DecodeParams bad = p;
  bad.q_heads = 3;
  expect_status([&] { cpu_fast::decode_attention(cache.view(), q.data(), out.data(), bad, 0); },
                Status::invalid_argument, "q_heads = 3");
  CacheView overfull = cache.view();
  const int64_t too_many[2] = {9, 4};
  overfull.tokens = too_many;
  expect_status([&] { cpu_fast::decode_attention(overfull, q.data(), out.data(), p, 0); },
                Status::out_of_range, "sequence 0 has 9 tokens");
}

TEST(CpuFastTargets, ForceEachAndRestore) {
  const std::vector<std::string> targets = cpu_fast::available_targets();
  ASSERT_FALSE(targets.empty());
  std::string listed;
  for (const auto& t : targets) listed += t + " ";
  std::printf("[ targets  ] %s(active by default: %s)\n", listed.c_str(),
              cpu_fast::active_target().c_str());
  EXPECT_EQ(cpu_fast::active_target(), targets.front());
  for (const auto& t : targets) {
    cpu_fast::force_target(t);
    EXPECT_EQ(cpu_fast::active_target(), t);
  }
  cpu_fast::force_target("");
  EXPECT_EQ(cpu_fast::active_target(), targets.front());
  try {
    cpu_fast::force_target("NOT_A_TARGET");
    ADD_FAILURE() << "no error for an unknown target";
  } catch (const Error& e) {
    EXPECT_EQ(static_cast<int>(e.status()), static_cast<int>(Status::unsupported));
    EXPECT_NE(std::string(e.what()).find("NOT_A_TARGET"), std::string::npos);
  }
  EXPECT_EQ(cpu_fast::active_target(), targets.front());
}

}  // namespace
}  // namespace tqkv::test
