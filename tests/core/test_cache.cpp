// KvCache: configuration checks, quantize-on-append, ring-buffer chronology around the wrap, chunked
// appends, batches, and rejected appends that must leave every byte as it was.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <regex>
#include <vector>

#include "test_support.hpp"
#include "tqkv/cache.hpp"
#include "tqkv/layout.hpp"

namespace tqkv {
namespace {

using test::expect_error;
using test::normal_vector;
using test::seeded_rng;

// Everything a KvCache stores, copied out through its view.
struct Snapshot {
  std::vector<uint8_t> k_codes, v_codes;
  std::vector<uint16_t> k_scales, v_scales;  // bfloat16 bits
  std::vector<int64_t> tokens;
  friend bool operator==(const Snapshot&, const Snapshot&) = default;
};

Snapshot snapshot(const KvCache& cache) {
  const CacheView v = cache.view();
  const std::size_t rows = static_cast<std::size_t>(v.batch) * v.kv_heads * v.capacity;
  Snapshot s;
  s.k_codes.assign(v.k_codes, v.k_codes + rows * v.k_row_bytes);
  s.v_codes.assign(v.v_codes, v.v_codes + rows * v.v_row_bytes);
  for (std::size_t r = 0; r < rows; ++r) {
    s.k_scales.push_back(v.scales[r].k_bits);
    s.v_scales.push_back(v.scales[r].v_bits);
  }
  s.tokens.assign(v.tokens, v.tokens + v.batch);
  return s;
}

CacheConfig config(KvFormat format, int capacity, bool ring = false, int batch = 1, int kv_heads = 2,
                   int head_dim = 64) {
  return test::cache_config(format, kv_heads, head_dim, capacity, batch, ring);
}

// [n][kv_heads][head_dim] chunk whose token t (absolute position first + t) is recognisable after
// an f16 round trip: small integers and halves, exact in binary16.
std::vector<float> labelled_tokens(int64_t first, int n, int kv_heads, int d) {
  std::vector<float> x(static_cast<std::size_t>(n) * kv_heads * d);
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < kv_heads; ++h)
      for (int i = 0; i < d; ++i)
        x[(static_cast<std::size_t>(t) * kv_heads + h) * d + i] =
            static_cast<float>((first + t + 1) * (i % 2 ? -1 : 1)) + 0.5f * static_cast<float>(h) +
            0.25f * static_cast<float>(i % 4);
  return x;
}

std::vector<float> token_slice(const std::vector<float>& chunk, int t, int h, int kv_heads, int d) {
  const auto begin = chunk.begin() + (static_cast<std::ptrdiff_t>(t) * kv_heads + h) * d;
  return {begin, begin + d};
}

std::vector<float> decoded_key(const KvCache& c, int seq, int h, int64_t p) {
  std::vector<float> out(c.head_dim(), NAN);
  c.decode_key(seq, h, p, out.data());
  return out;
}
std::vector<float> decoded_value(const KvCache& c, int seq, int h, int64_t p) {
  std::vector<float> out(c.head_dim(), NAN);
  c.decode_value(seq, h, p, out.data());
  return out;
}

void expect_mentions(const std::string& message, const char* pattern) {
  EXPECT_TRUE(std::regex_search(message, std::regex(pattern)))
      << "message \"" << message << "\" does not match /" << pattern << "/";
}

const KvFormat kF16Keys{Format::f16, Format::tq4};

TEST(CacheConfig, RejectsBadFieldsNamingThem) {
  const CacheConfig good = config({}, 16);
  EXPECT_NO_THROW(validate(good));
  auto with = [&](auto change) {
    CacheConfig c = good;
    change(c);
    return c;
  };
  const struct {
    CacheConfig c;
    Status status;
    std::vector<std::string> needles;
  } cases[] = {
      {with([](CacheConfig& c) { c.batch = 0; }), Status::invalid_argument, {"batch", "0"}},
      {with([](CacheConfig& c) { c.kv_heads = -2; }), Status::invalid_argument, {"kv_heads", "-2"}},
      {with([](CacheConfig& c) { c.capacity = 0; }), Status::invalid_argument, {"capacity", "0"}},
      {with([](CacheConfig& c) { c.head_dim = 100; }), Status::unsupported, {"head_dim", "100"}},
      {with([](CacheConfig& c) { c.head_dim = 0; }), Status::unsupported, {"head_dim", "0"}},
      {with([](CacheConfig& c) { c.head_dim = 2048; }), Status::unsupported, {"head_dim", "2048"}},
      {with([](CacheConfig& c) { c.format.key = static_cast<Format>(9); }), Status::invalid_argument, {"key format", "9"}},
      {with([](CacheConfig& c) { c.format.value = static_cast<Format>(7); }), Status::invalid_argument, {"value format", "7"}},
      {with([](CacheConfig& c) { c.layer = -1; }), Status::invalid_argument, {"layer", "-1"}},
  };
  for (const auto& k : cases) {
    for (int via_constructor = 0; via_constructor < 2; ++via_constructor) {
      const std::string message = expect_error(
          [&] {
            if (via_constructor) KvCache cache(k.c);
            else validate(k.c);
          },
          k.status, {});
      for (const auto& n : k.needles) EXPECT_NE(message.find(n), std::string::npos) << message << " / " << n;
    }
  }
}

TEST(Cache, FreshCacheAndItsView) {
  CacheConfig c = config({Format::tq8, Format::tq3}, 24, false, 3, 4, 96);
  c.layer = 5;
  const KvCache cache(c);
  const CacheView v = cache.view();
  EXPECT_EQ(v.batch, 3);
  EXPECT_EQ(v.kv_heads, 4);
  EXPECT_EQ(v.head_dim, 96);
  EXPECT_EQ(v.capacity, 24);
  EXPECT_FALSE(v.ring);
  EXPECT_EQ(v.format, c.format);
  EXPECT_EQ(v.k_row_bytes, row_bytes(Format::tq8, 96));
  EXPECT_EQ(v.v_row_bytes, row_bytes(Format::tq3, 96));
  EXPECT_EQ(v.sign_words, 3);
  for (int b = 0; b < 3; ++b) {
    EXPECT_EQ(cache.tokens(b), 0);
    EXPECT_EQ(cache.length(b), 0);
    EXPECT_EQ(v.tokens[b], 0);
  }
  for (int h = 0; h < 4; ++h) {
    const Rotation expected(96, rotation_seed(kDefaultSeed, 5, h));
    EXPECT_EQ(cache.rotation(h).sign_bits(), expected.sign_bits()) << h;
    for (int w = 0; w < v.sign_words; ++w) EXPECT_EQ(v.sign_bits[h * v.sign_words + w], expected.sign_bits()[w]);
    EXPECT_EQ(cache.key_codec(h).rotation, &cache.rotation(h));
    EXPECT_EQ(cache.value_codec(h).rotation, &cache.rotation(h));
  }
  EXPECT_EQ(cache.key_codec(0).codebook, &gaussian_codebook(8));
  EXPECT_EQ(cache.value_codec(0).codebook, &gaussian_codebook(3));
  EXPECT_EQ(v.k_levels, gaussian_codebook(8).levels_f32.data());
  EXPECT_EQ(v.v_levels, gaussian_codebook(3).levels_f32.data());
  const std::size_t rows = 3 * 4 * 24;
  EXPECT_EQ(cache.storage_bytes(), rows * (v.k_row_bytes + v.v_row_bytes + sizeof(ScalePair)));
}

TEST(Cache, ConfigChoicesReachTheCodecs) {
  CacheConfig c = config({Format::f16, Format::tq2}, 8, true, 1, 2, 128);
  c.codebook = CodebookKind::beta;
  c.scale_rule = ScaleRule::norm;
  c.sign_flips = false;
  const KvCache cache(c);
  EXPECT_EQ(cache.key_codec(1).codebook, nullptr);
  EXPECT_EQ(cache.view().k_levels, nullptr);
  EXPECT_EQ(cache.value_codec(1).codebook, &codebook(CodebookKind::beta, 2, 128));
  EXPECT_EQ(cache.value_codec(1).scale_rule, ScaleRule::norm);
  EXPECT_FALSE(cache.rotation(1).sign_flips());
  EXPECT_TRUE(cache.view().ring);
}

// What append stores is exactly encode_vector of the input at row_index(b, head, slot).
TEST(Cache, AppendStoresEncodedRowsAtTheirSlots) {
  auto rng = seeded_rng(51);
  for (KvFormat f : {KvFormat{Format::tq4, Format::tq4}, KvFormat{Format::tq8, Format::tq2},
                     KvFormat{Format::f16, Format::tq3}}) {
    const int kvh = 3, d = 80, n = 11;
    const KvCache cache_template(config(f, 16, false, 2, kvh, d));
    KvCache cache = cache_template;
    const auto k = normal_vector(rng, static_cast<std::size_t>(n) * kvh * d);
    const auto v = normal_vector(rng, k.size());
    cache.append(1, k.data(), v.data(), n);
    EXPECT_EQ(cache.tokens(1), n);
    EXPECT_EQ(cache.tokens(0), 0);
    const CacheView view = cache.view();
    for (int t = 0; t < n; ++t) {
      for (int h = 0; h < kvh; ++h) {
        const auto key = token_slice(k, t, h, kvh, d);
        const auto value = token_slice(v, t, h, kvh, d);
        std::vector<uint8_t> row(view.k_row_bytes);
        uint16_t scale;
        encode_vector(cache.key_codec(h), key.data(), row.data(), &scale);
        const std::size_t r = row_index(view, 1, h, t);
        ASSERT_EQ(0, std::memcmp(row.data(), view.k_codes + r * view.k_row_bytes, row.size())) << t << " " << h;
        ASSERT_EQ(scale, view.scales[r].k_bits);
        row.assign(view.v_row_bytes, 0);
        encode_vector(cache.value_codec(h), value.data(), row.data(), &scale);
        ASSERT_EQ(0, std::memcmp(row.data(), view.v_codes + r * view.v_row_bytes, row.size())) << t << " " << h;
        ASSERT_EQ(scale, view.scales[r].v_bits);
        // decode_key/decode_value are decode_vector of that row.
        std::vector<float> expected(d);
        decode_vector(cache.key_codec(h), view.k_codes + r * view.k_row_bytes, view.scales[r].key(), expected.data());
        ASSERT_EQ(decoded_key(cache, 1, h, t), expected);
        decode_vector(cache.value_codec(h), view.v_codes + r * view.v_row_bytes, view.scales[r].value(), expected.data());
        ASSERT_EQ(decoded_value(cache, 1, h, t), expected);
      }
    }
  }
}

TEST(Cache, ZeroVectorsDecodeToExactlyZero) {
  for (Format f : kAllFormats) {
    KvCache cache(config({f, f}, 4, false, 1, 2, 96));
    const std::vector<float> zeros(2 * 96, 0.0f);
    cache.append(0, zeros.data(), zeros.data(), 1);
    for (int h = 0; h < 2; ++h) {
      for (float x : decoded_key(cache, 0, h, 0)) ASSERT_EQ(x, 0.0f) << format_name(f);
      for (float x : decoded_value(cache, 0, h, 0)) ASSERT_EQ(x, 0.0f) << format_name(f);
    }
  }
}

TEST(Cache, NonFiniteInputIsRejectedNamingHeadAndPosition) {
  auto rng = seeded_rng(52);
  const int kvh = 3, d = 64;
  for (bool ring : {false, true}) {
    for (bool in_value : {false, true}) {
      for (float bad : {NAN, INFINITY, -INFINITY}) {
        KvCache cache(config({}, 16, ring, 2, kvh, d));
        const auto first = normal_vector(rng, 5 * kvh * d);
        cache.append(1, first.data(), first.data(), 5);
        const Snapshot before = snapshot(cache);
        auto k = normal_vector(rng, 4 * kvh * d);
        auto v = normal_vector(rng, k.size());
        // Chunk token 2 = absolute position 7, head 1, coordinate 10.
        (in_value ? v : k)[(2 * kvh + 1) * d + 10] = bad;
        const std::string message =
            expect_error([&] { cache.append(1, k.data(), v.data(), 4); }, Status::non_finite, {});
        expect_mentions(message, R"(head\D{0,3}1\b)");
        expect_mentions(message, R"(position\D{0,3}7\b)");
        expect_mentions(message, in_value ? "value" : "key");
        EXPECT_TRUE(snapshot(cache) == before) << "a rejected append changed the cache";
      }
    }
  }
}

// ---- ring buffer chronology (capacity W = 6); keys f16 so every token is recognisable ----

constexpr int kWindow = 6;
constexpr int kRingHeads = 2;
constexpr int kRingDim = 64;

struct RingFixture {
  KvCache cache{config(kF16Keys, kWindow, true, 1, kRingHeads, kRingDim)};
  void append_tokens(int n) {  // one at a time, labelled by absolute position
    for (int i = 0; i < n; ++i) {
      const int64_t p = cache.tokens(0);
      const auto x = labelled_tokens(p, 1, kRingHeads, kRingDim);
      cache.append(0, x.data(), x.data(), 1);
    }
  }
  std::vector<float> expected_key(int64_t p, int h) const {
    return token_slice(labelled_tokens(p, 1, kRingHeads, kRingDim), 0, h, kRingHeads, kRingDim);
  }
  // Every slot holds the token that slot_position says it holds (read from the raw f16 row).
  void check_every_slot() const {
    const CacheView v = cache.view();
    const int64_t n = cache.tokens(0);
    for (int slot = 0; slot < valid_slots(n, kWindow); ++slot) {
      const int64_t p = slot_position(n, kWindow, true, slot);
      EXPECT_EQ(p % kWindow, slot);
      EXPECT_GE(p, n - valid_slots(n, kWindow));
      EXPECT_LT(p, n);
      EXPECT_EQ(position_slot(p, kWindow, true), slot);
      for (int h = 0; h < kRingHeads; ++h) {
        const uint8_t* row = v.k_codes + row_index(v, 0, h, slot) * v.k_row_bytes;
        const auto expected = expected_key(p, h);
        for (int i = 0; i < kRingDim; ++i) {
          uint16_t bits;
          std::memcpy(&bits, row + 2 * i, 2);
          ASSERT_EQ(half_to_float(bits), expected[i]) << "slot " << slot << " position " << p;
        }
      }
    }
  }
};

TEST(RingChronology, RightBeforeTheWrap) {
  RingFixture f;
  f.append_tokens(kWindow - 1);
  EXPECT_EQ(f.cache.tokens(0), kWindow - 1);
  EXPECT_EQ(f.cache.length(0), kWindow - 1);
  EXPECT_EQ(oldest_slot(kWindow - 1, kWindow, true), 0);
  for (int s = 0; s < kWindow - 1; ++s) EXPECT_EQ(slot_position(kWindow - 1, kWindow, true, s), s);
  EXPECT_EQ(decoded_key(f.cache, 0, 1, 0), f.expected_key(0, 1));                   // oldest
  EXPECT_EQ(decoded_key(f.cache, 0, 1, kWindow - 2), f.expected_key(kWindow - 2, 1));  // newest
  f.check_every_slot();
}

TEST(RingChronology, AtTheWrap) {
  RingFixture f;
  f.append_tokens(kWindow);
  EXPECT_EQ(f.cache.length(0), kWindow);
  // Exactly full: nothing dropped yet, the oldest is still position 0 in slot 0, and slot 0 is
  // also where the next token goes.
  EXPECT_EQ(oldest_slot(kWindow, kWindow, true), 0);
  EXPECT_EQ(slot_position(kWindow, kWindow, true, 0), 0);
  EXPECT_EQ(slot_position(kWindow, kWindow, true, kWindow - 1), kWindow - 1);
  EXPECT_EQ(position_slot(kWindow, kWindow, true), 0);
  EXPECT_EQ(decoded_key(f.cache, 0, 0, 0), f.expected_key(0, 0));
  EXPECT_EQ(decoded_key(f.cache, 0, 0, kWindow - 1), f.expected_key(kWindow - 1, 0));
  f.check_every_slot();
}

TEST(RingChronology, AfterTheWrap) {
  RingFixture f;
  f.append_tokens(kWindow + 2);  // positions 0..7; 0 and 1 overwritten by 6 and 7
  const int64_t n = kWindow + 2;
  EXPECT_EQ(f.cache.length(0), kWindow);
  EXPECT_EQ(oldest_slot(n, kWindow, true), 2);  // the *next* write slot, not the one before it
  EXPECT_EQ(slot_position(n, kWindow, true, 2), 2);
  EXPECT_EQ(slot_position(n, kWindow, true, 0), kWindow);
  EXPECT_EQ(slot_position(n, kWindow, true, 1), kWindow + 1);
  EXPECT_EQ(decoded_key(f.cache, 0, 1, 2), f.expected_key(2, 1));              // oldest kept
  EXPECT_EQ(decoded_key(f.cache, 0, 1, n - 1), f.expected_key(n - 1, 1));      // newest
  expect_error([&] { decoded_key(f.cache, 0, 1, 1); }, Status::out_of_range, {"position 1"});
  expect_error([&] { decoded_key(f.cache, 0, 1, n); }, Status::out_of_range, {"position 8"});
  f.check_every_slot();
  // One more token lands in the old oldest slot; the oldest moves on by one.
  f.append_tokens(1);
  EXPECT_EQ(oldest_slot(n + 1, kWindow, true), 3);
  EXPECT_EQ(slot_position(n + 1, kWindow, true, 2), n);
  f.check_every_slot();
  // Several laps later the same rules hold.
  f.append_tokens(2 * kWindow + 3);
  EXPECT_EQ(f.cache.tokens(0), 3 * kWindow + 6);
  EXPECT_EQ(oldest_slot(f.cache.tokens(0), kWindow, true), 0);
  f.check_every_slot();
}

TEST(Cache, ChunkAppendsEqualTokenByTokenAppends) {
  auto rng = seeded_rng(53);
  const int kvh = 2, d = 96;
  for (bool ring : {false, true}) {
    const std::vector<int> chunks = ring ? std::vector<int>{5, 9, 11, 20, 1, 16}
                                         : std::vector<int>{1, 7, 13, 3, 16};
    int total = 0;
    for (int c : chunks) total += c;
    const int capacity = ring ? 16 : total;
    KvCache chunked(config({Format::tq3, Format::tq4}, capacity, ring, 2, kvh, d));
    KvCache single = chunked;
    const std::size_t per_token = static_cast<std::size_t>(kvh) * d;
    const auto k = normal_vector(rng, total * per_token), v = normal_vector(rng, total * per_token);
    int offset = 0;
    for (int c : chunks) {
      chunked.append(1, k.data() + offset * per_token, v.data() + offset * per_token, c);
      for (int t = offset; t < offset + c; ++t)
        single.append(1, k.data() + t * per_token, v.data() + t * per_token, 1);
      offset += c;
      ASSERT_TRUE(snapshot(chunked) == snapshot(single)) << (ring ? "ring" : "contiguous") << " after " << offset;
    }
    EXPECT_EQ(chunked.tokens(1), total);
  }
}

TEST(Cache, RingChunkLongerThanCapacityKeepsItsNewestTokens) {
  const int capacity = 8, n = 2 * capacity + 5;
  KvCache chunked(config(kF16Keys, capacity, true, 1, kRingHeads, kRingDim));
  KvCache single = chunked;
  const auto x = labelled_tokens(0, n, kRingHeads, kRingDim);
  chunked.append(0, x.data(), x.data(), n);
  const std::size_t per_token = kRingHeads * kRingDim;
  for (int t = 0; t < n; ++t) single.append(0, x.data() + t * per_token, x.data() + t * per_token, 1);
  EXPECT_TRUE(snapshot(chunked) == snapshot(single));
  EXPECT_EQ(chunked.tokens(0), n);
  EXPECT_EQ(chunked.length(0), capacity);
  for (int64_t p = n - capacity; p < n; ++p)
    EXPECT_EQ(decoded_key(chunked, 0, 1, p), token_slice(x, static_cast<int>(p), 1, kRingHeads, kRingDim)) << p;
  expect_error([&] { decoded_key(chunked, 0, 1, n - capacity - 1); }, Status::out_of_range, {});
}

TEST(Cache, BatchOfSequencesWithDifferentLengths) {
  auto rng = seeded_rng(54);
  const int kvh = 2, d = 64, capacity = 32;
  const int lengths[] = {0, 1, 31, 17, 32};
  const int batch = 5;
  KvCache cache(config({Format::tq4, Format::tq2}, capacity, false, batch, kvh, d));
  const std::size_t per_token = static_cast<std::size_t>(kvh) * d;
  std::vector<std::vector<float>> keys(batch);
  for (int b = 0; b < batch; ++b) {
    keys[b] = normal_vector(rng, std::max(lengths[b], 1) * per_token);
    if (lengths[b] == 0) continue;
    const Snapshot before = snapshot(cache);
    cache.append(b, keys[b].data(), keys[b].data(), lengths[b]);
    // Only sequence b's rows and token count changed.
    const Snapshot after = snapshot(cache);
    const CacheView v = cache.view();
    const std::size_t seq_bytes = static_cast<std::size_t>(kvh) * capacity * v.k_row_bytes;
    for (int other = 0; other < batch; ++other) {
      if (other == b) continue;
      EXPECT_EQ(after.tokens[other], before.tokens[other]);
      EXPECT_EQ(0, std::memcmp(after.k_codes.data() + other * seq_bytes,
                               before.k_codes.data() + other * seq_bytes, seq_bytes))
          << "appending to " << b << " touched " << other;
    }
  }
  for (int b = 0; b < batch; ++b) {
    EXPECT_EQ(cache.tokens(b), lengths[b]);
    EXPECT_EQ(cache.length(b), lengths[b]);
    EXPECT_EQ(cache.view().tokens[b], lengths[b]);
    // Each sequence decodes its own data, within the tq4 reconstruction error.
    for (int t = 0; t < lengths[b]; ++t) {
      const auto expected = token_slice(keys[b], t, 1, kvh, d);
      const auto got = decoded_key(cache, b, 1, t);
      double err = 0, energy = 0;
      for (int i = 0; i < d; ++i) {
        err += (got[i] - expected[i]) * (got[i] - expected[i]);
        energy += expected[i] * expected[i];
      }
      // tq4's expected relative squared error is ~0.0095; a single vector stays well below 0.05.
      ASSERT_LT(err, 0.05 * energy) << "sequence " << b << " position " << t;
    }
  }
  cache.reset(2);
  EXPECT_EQ(cache.tokens(2), 0);
  EXPECT_EQ(cache.tokens(3), 17);
  expect_error([&] { decoded_key(cache, 2, 0, 0); }, Status::out_of_range, {});
}

TEST(Cache, AppendPastCapacityOutsideRingModeIsRejected) {
  auto rng = seeded_rng(55);
  const int kvh = 2, d = 64, capacity = 10;
  KvCache cache(config({}, capacity, false, 2, kvh, d));
  const auto x = normal_vector(rng, 12 * kvh * d);
  cache.append(0, x.data(), x.data(), 8);
  Snapshot before = snapshot(cache);
  expect_error([&] { cache.append(0, x.data(), x.data(), 3); }, Status::out_of_range, {"capacity", "10"});
  EXPECT_TRUE(snapshot(cache) == before);
  cache.append(0, x.data(), x.data(), 2);  // exactly full is fine
  EXPECT_EQ(cache.tokens(0), capacity);
  before = snapshot(cache);
  expect_error([&] { cache.append(0, x.data(), x.data(), 1); }, Status::out_of_range, {"capacity"});
  EXPECT_TRUE(snapshot(cache) == before);
  expect_error([&] { cache.append(1, x.data(), x.data(), 11); }, Status::out_of_range, {"capacity"});
  EXPECT_TRUE(snapshot(cache) == before);
}

TEST(Cache, BadArgumentsAreRejectedAndChangeNothing) {
  auto rng = seeded_rng(56);
  const int kvh = 2, d = 64;
  KvCache cache(config({}, 8, false, 3, kvh, d));
  const auto x = normal_vector(rng, 2 * kvh * d);
  cache.append(1, x.data(), x.data(), 2);
  const Snapshot before = snapshot(cache);
  std::vector<float> out(d);
  for (int seq : {-1, 3, 100}) {
    const std::string s = std::to_string(seq);
    expect_error([&] { cache.append(seq, x.data(), x.data(), 1); }, Status::out_of_range, {"sequence", s});
    expect_error([&] { cache.tokens(seq); }, Status::out_of_range, {s});
    expect_error([&] { cache.length(seq); }, Status::out_of_range, {s});
    expect_error([&] { cache.reset(seq); }, Status::out_of_range, {s});
    expect_error([&] { cache.decode_key(seq, 0, 0, out.data()); }, Status::out_of_range, {s});
  }
  expect_error([&] { cache.append(0, nullptr, x.data(), 1); }, Status::invalid_argument, {"key", "null"});
  expect_error([&] { cache.append(0, x.data(), nullptr, 1); }, Status::invalid_argument, {"value", "null"});
  expect_error([&] { cache.append(0, x.data(), x.data(), -1); }, Status::invalid_argument, {"n_tokens", "-1"});
  expect_error([&] { cache.decode_value(1, 2, 0, out.data()); }, Status::out_of_range, {"kv_head", "2"});
  expect_error([&] { cache.decode_value(1, -1, 0, out.data()); }, Status::out_of_range, {"kv_head", "-1"});
  expect_error([&] { cache.decode_value(1, 0, 2, out.data()); }, Status::out_of_range, {"position 2"});
  expect_error([&] { cache.decode_value(1, 0, -1, out.data()); }, Status::out_of_range, {"position -1"});
  EXPECT_TRUE(snapshot(cache) == before);
}

}  // namespace
}  // namespace tqkv
