// Helpers shared by the tqkv test suites: printed fixed seeds, random vectors, error checks.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "tqkv/cache.hpp"
#include "tqkv/error.hpp"

namespace tqkv::test {

// A cache config of the given shape; everything else at its default.
inline CacheConfig cache_config(KvFormat format, int kv_heads, int head_dim, int capacity,
                                int batch = 1, bool ring = false) {
  CacheConfig c;
  c.batch = batch;
  c.kv_heads = kv_heads;
  c.head_dim = head_dim;
  c.capacity = capacity;
  c.format = format;
  c.ring = ring;
  return c;
}

// A generator with a fixed seed. The seed is printed (and recorded in the XML report) so that a
// failing case can be replayed exactly.
inline std::mt19937_64 seeded_rng(uint64_t seed) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::printf("[   seed   ] %s.%s: %llu\n", info ? info->test_suite_name() : "?",
              info ? info->name() : "?", static_cast<unsigned long long>(seed));
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  return std::mt19937_64(seed);
}

template <class T = float>
std::vector<T> normal_vector(std::mt19937_64& rng, std::size_t n, double stddev = 1.0) {
  std::normal_distribution<double> dist(0.0, stddev);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(dist(rng));
  return v;
}

// Integers in [-range, range]: the rotation's round trip is exact on them where the scaling is.
template <class T>
std::vector<T> integer_vector(std::mt19937_64& rng, std::size_t n, int range) {
  std::uniform_int_distribution<int> dist(-range, range);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(dist(rng));
  return v;
}

// Runs f, expects a tqkv::Error with `status` whose message contains every piece of `needles`.
// Returns the message (empty when nothing was thrown).
template <class F>
std::string expect_error(F&& f, Status status, std::initializer_list<std::string_view> needles) {
  try {
    f();
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(static_cast<int>(e.status()), static_cast<int>(status))
        << "status " << status_name(e.status()) << ", expected " << status_name(status)
        << "; message: " << message;
    for (std::string_view needle : needles) {
      EXPECT_NE(message.find(needle), std::string::npos)
          << "message \"" << message << "\" does not mention \"" << needle << "\"";
    }
    return message;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-tqkv exception: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected a tqkv::Error (" << status_name(status) << "), nothing was thrown";
  return {};
}

}  // namespace tqkv::test
