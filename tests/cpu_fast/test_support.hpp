// Helpers of the cpu_fast tests: caches filled with random tokens, the error metric, and a loop
// that runs a check once per instruction set this machine can run.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cpu/fast/fast.hpp"
#include "tqkv/cache.hpp"
#include "../core/test_support.hpp"  // seeded_rng, normal_vector, expect_error

namespace tqkv::test {

// Normalised mean squared error of `got` against `want`: sum (got - want)^2 / sum want^2.
inline double nmse(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0, ref = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double diff = static_cast<double>(got[i]) - want[i];
    err += diff * diff;
    ref += static_cast<double>(want[i]) * want[i];
  }
  return ref > 0 ? err / ref : err;
}

// Appends `lengths[b]` random tokens to each sequence, in chunks of up to 13 tokens so appends
// of several sizes (and ring wraps mid-chunk) are exercised. Keys get a per-channel offset
// (outlier channels, as real keys have) so logits are not all alike.
inline void fill_cache(KvCache& cache, std::mt19937_64& rng, const std::vector<int64_t>& lengths) {
  const int kvh = cache.kv_heads(), d = cache.head_dim();
  std::vector<float> channel_offset = normal_vector(rng, static_cast<std::size_t>(d), 1.5);
  for (int b = 0; b < cache.batch(); ++b) {
    int64_t left = lengths[static_cast<std::size_t>(b)];
    while (left > 0) {
      const int n = static_cast<int>(std::min<int64_t>(left, 13));
      const std::size_t count = static_cast<std::size_t>(n) * kvh * d;
      std::vector<float> k = normal_vector(rng, count), v = normal_vector(rng, count);
      for (std::size_t i = 0; i < count; ++i) k[i] += channel_offset[i % d];
      cache.append(b, k.data(), v.data(), n);
      left -= n;
    }
  }
}

// Runs body() once per instruction set available here, with dispatch forced to it; restores
// the default afterwards. Failures name the target.
template <class F>
void for_each_target(F&& body) {
  const std::vector<std::string> targets = cpu_fast::available_targets();
  ASSERT_FALSE(targets.empty());
  for (const std::string& t : targets) {
    SCOPED_TRACE("target " + t);
    cpu_fast::force_target(t);
    ASSERT_EQ(cpu_fast::active_target(), t);
    body(t);
  }
  cpu_fast::force_target("");
}

}  // namespace tqkv::test
