// The GGUF reader: metadata and tensors round-trip through the test writer, block formats decode
// bit-exactly, and malformed files raise Error(io_error) instead of crashing.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "gguf.hpp"
#include "gguf_writer.hpp"
#include "tqkv/error.hpp"
#include "tqkv/format.hpp"

namespace tqkv::model {
namespace {

using testing::GgufWriter;

std::vector<uint8_t> small_file() {
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_u32("answer", 42);
  w.add_i32("negative", -7);
  w.add_u64("big", uint64_t{1} << 40);
  w.add_f32("pi", 3.25f);
  w.add_bool("flag", true);
  w.add_strings("names", {"a", "", "ccc"});
  w.add_i32s("ints", {1, -2, 3});
  std::vector<float> ramp(64);
  for (std::size_t i = 0; i < ramp.size(); ++i) ramp[i] = static_cast<float>(i) - 20.0f;
  w.add_tensor("ramp.f32", {32, 2}, TensorType::f32, ramp);
  w.add_tensor("ramp.f16", {64}, TensorType::f16, ramp);
  w.add_tensor("ramp.q8_0", {64}, TensorType::q8_0, ramp);
  return w.bytes();
}

void expect_io_error(const std::vector<uint8_t>& bytes, const std::string& needle) {
  try {
    (void)GgufFile::parse(bytes, "test");
    FAIL() << "expected Error(io_error) mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), Status::io_error) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Gguf, MetadataRoundTrip) {
  const auto bytes = small_file();
  const GgufFile f = GgufFile::parse(bytes);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_uint("answer"), 42u);
  EXPECT_EQ(f.get_uint("big"), uint64_t{1} << 40);
  EXPECT_EQ(f.get_float("pi"), 3.25);
  EXPECT_TRUE(f.get_bool("flag"));
  EXPECT_EQ(f.get_string_array("names"), (std::vector<std::string>{"a", "", "ccc"}));
  EXPECT_EQ(f.get_int_array("ints"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(f.get_uint("absent", 5), 5u);
  // Wrong types and negative values are errors that name the key.
  EXPECT_THROW((void)f.get_string("answer"), Error);
  EXPECT_THROW((void)f.get_uint("negative"), Error);
  EXPECT_THROW((void)f.get_uint("missing"), Error);
}

TEST(Gguf, TensorsDequantize) {
  const auto bytes = small_file();
  const GgufFile f = GgufFile::parse(bytes);
  ASSERT_EQ(f.tensors().size(), 3u);
  const auto& info = f.tensor("ramp.f32");
  EXPECT_EQ(info.dims, (std::vector<uint64_t>{32, 2}));
  EXPECT_EQ(info.rows(), 2u);
  const std::vector<float> exact = f.dequantize(info);
  // Integers up to 2048 are exact in f16; Q8_0 of a ramp is within half a step of d = 43/127.
  const std::vector<float> half = f.dequantize(f.tensor("ramp.f16"));
  const std::vector<float> q8 = f.dequantize(f.tensor("ramp.q8_0"));
  for (std::size_t i = 0; i < 64; ++i) {
    EXPECT_EQ(exact[i], static_cast<float>(i) - 20.0f);
    EXPECT_EQ(half[i], exact[i]);
    const float block_max = i < 32 ? 20.0f : 43.0f;
    EXPECT_NEAR(q8[i], exact[i], 0.5f * block_max / 127.0f * 1.01f) << i;
  }
  EXPECT_EQ(f.find_tensor("nope"), nullptr);
  EXPECT_THROW((void)f.tensor("nope"), Error);
}

// Hand-made blocks: every nibble/byte value decodes to the formula of the ggml block format.
TEST(Gguf, BlockFormatsBitExact) {
  const float d = 0.5f, m = -3.0f;  // exact in f16
  std::vector<uint8_t> q40, q41, q80;
  auto put_half = [](std::vector<uint8_t>& v, float x) {
    const uint16_t h = float_to_half(x);
    v.push_back(static_cast<uint8_t>(h & 0xFF)), v.push_back(static_cast<uint8_t>(h >> 8));
  };
  put_half(q40, d);
  put_half(q41, d), put_half(q41, m);
  put_half(q80, d);
  for (int j = 0; j < 16; ++j) {
    const auto byte = static_cast<uint8_t>(j | ((15 - j) << 4));
    q40.push_back(byte), q41.push_back(byte);
  }
  for (int j = 0; j < 32; ++j) q80.push_back(static_cast<uint8_t>(static_cast<int8_t>(j * 8 - 128)));
  std::vector<float> a(32), b(32), c(32);
  dequantize_row(TensorType::q4_0, q40.data(), 32, a.data());
  dequantize_row(TensorType::q4_1, q41.data(), 32, b.data());
  dequantize_row(TensorType::q8_0, q80.data(), 32, c.data());
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(a[j], d * static_cast<float>(j - 8));
    EXPECT_EQ(a[j + 16], d * static_cast<float>(15 - j - 8));
    EXPECT_EQ(b[j], d * static_cast<float>(j) + m);
    EXPECT_EQ(b[j + 16], d * static_cast<float>(15 - j) + m);
  }
  for (int j = 0; j < 32; ++j) EXPECT_EQ(c[j], d * static_cast<float>(j * 8 - 128));
  EXPECT_THROW(dequantize_row(TensorType::q4_0, q40.data(), 31, a.data()), Error);
}

TEST(Gguf, AlignmentKey) {
  GgufWriter w;
  w.add_tensor("t", {32}, TensorType::q4_1, std::vector<float>(32, 1.0f));
  const auto bytes = w.bytes(64);
  const GgufFile f = GgufFile::parse(bytes);
  EXPECT_EQ(f.alignment(), 64u);
  for (float v : f.dequantize(f.tensor("t"))) EXPECT_EQ(v, 1.0f);
}

TEST(Gguf, OpenFromDisk) {
  const std::string path = ::testing::TempDir() + "tqkv_test_open.gguf";
  GgufWriter w;
  w.add_u32("x", 1);
  w.add_tensor("t", {32}, TensorType::f32, std::vector<float>(32, 2.0f));
  w.write(path);
  const GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.dequantize(f.tensor("t"))[31], 2.0f);
  EXPECT_THROW((void)GgufFile::open(path + ".missing"), Error);
}

// Every proper prefix of a valid file is rejected with io_error (never a crash or a read past
// the end: this runs under ASan in CI).
TEST(GgufCorrupt, EveryTruncationIsAnError) {
  const auto bytes = small_file();
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n));
    try {
      const GgufFile f = GgufFile::parse(cut, "cut");
      // A prefix may parse only when the cut falls in the padding after the last tensor's data;
      // then every tensor must still be readable in full.
      for (const auto& t : f.tensors()) EXPECT_EQ(f.dequantize(t).size(), t.elements);
    } catch (const Error& e) {
      EXPECT_EQ(e.status(), Status::io_error) << "prefix " << n << ": " << e.what();
    }
  }
}

// Patches one field of the header or of the first tensor info.
struct Layout {
  std::vector<uint8_t> bytes;
  std::size_t n_dims_at = 0;  // first tensor's n_dims field
};
Layout one_tensor_file() {
  GgufWriter w;
  w.add_u32("k", 1);
  w.add_tensor("t", {32}, TensorType::f32, std::vector<float>(32, 0.0f));
  Layout l{w.bytes(), 0};
  // header 24 bytes; key "k": 8 + 1 + type 4 + value 4; tensor name: 8 + 1.
  l.n_dims_at = 24 + 8 + 1 + 4 + 4 + 8 + 1;
  return l;
}
template <typename T>
void patch(std::vector<uint8_t>& b, std::size_t at, T v) {
  std::memcpy(b.data() + at, &v, sizeof(T));
}

TEST(GgufCorrupt, HeaderFields) {
  auto base = one_tensor_file();
  ASSERT_NO_THROW((void)GgufFile::parse(base.bytes));
  {
    auto b = base.bytes;
    b[0] = 'X';
    expect_io_error(b, "bad magic");
  }
  {
    auto b = base.bytes;
    patch<uint32_t>(b, 4, 1);
    expect_io_error(b, "version 1");
  }
  {
    auto b = base.bytes;
    patch<uint64_t>(b, 8, uint64_t{1} << 60);  // tensor count
    expect_io_error(b, "does not fit");
  }
  {
    auto b = base.bytes;
    patch<uint64_t>(b, 16, ~uint64_t{0});  // metadata count
    expect_io_error(b, "does not fit");
  }
  {
    auto b = base.bytes;
    patch<uint64_t>(b, 24, uint64_t{1} << 62);  // key length
    expect_io_error(b, "length");
  }
  {
    auto b = base.bytes;
    patch<uint32_t>(b, 24 + 8 + 1, 99);  // value type
    expect_io_error(b, "unknown value type 99");
  }
}

TEST(GgufCorrupt, TensorInfoFields) {
  const auto base = one_tensor_file();
  const std::size_t at = base.n_dims_at;
  {
    auto b = base.bytes;
    patch<uint32_t>(b, at, 0);
    expect_io_error(b, "n_dims 0");
  }
  {
    auto b = base.bytes;
    patch<uint32_t>(b, at, 5);
    expect_io_error(b, "n_dims 5");
  }
  {
    auto b = base.bytes;
    patch<uint64_t>(b, at + 4, 0);  // dim 0
    expect_io_error(b, "zero or too large");
  }
  {
    auto b = base.bytes;
    patch<uint64_t>(b, at + 4, uint64_t{1} << 50);
    expect_io_error(b, "zero or too large");
  }
  {
    auto b = base.bytes;
    patch<uint32_t>(b, at + 12, 12);  // Q4_K: not supported
    expect_io_error(b, "tensor type 12 is not supported");
  }
  {
    auto b = base.bytes;
    patch<uint32_t>(b, at + 12, static_cast<uint32_t>(TensorType::q4_0));
    patch<uint64_t>(b, at + 4, 31);  // not a multiple of the block
    expect_io_error(b, "not a multiple of the Q4_0 block");
  }
  {
    auto b = base.bytes;
    patch<uint64_t>(b, at + 16, 8);  // misaligned offset
    expect_io_error(b, "alignment");
  }
  {
    auto b = base.bytes;
    patch<uint64_t>(b, at + 16, 1 << 20);  // past the end
    expect_io_error(b, "outside");
  }
  {
    auto b = base.bytes;
    patch<uint64_t>(b, at + 16, ~uint64_t{0} - 31);  // offset + size overflows
    expect_io_error(b, "outside");
  }
}

TEST(GgufCorrupt, DuplicatesAndNesting) {
  {
    GgufWriter w;
    w.add_u32("same", 1);
    w.add_u32("same", 2);
    expect_io_error(w.bytes(), "duplicate metadata key 'same'");
  }
  {
    GgufWriter w;
    w.add_tensor("t", {32}, TensorType::f32, std::vector<float>(32, 0.0f));
    w.add_tensor("t", {32}, TensorType::f32, std::vector<float>(32, 0.0f));
    expect_io_error(w.bytes(), "duplicate tensor name 't'");
  }
  {
    GgufWriter w;
    w.add_u32("x", 0);
    auto b = w.bytes();
    // Turn the u32 value into an array of arrays: type 9, element type 9.
    patch<uint32_t>(b, 24 + 8 + 1, 9);
    b.insert(b.end(), {9, 0, 0, 0});
    patch<uint32_t>(b, 24 + 8 + 1 + 4, 9);
    expect_io_error(b, "nested arrays");
  }
  {
    GgufWriter w;
    w.add_u32("general.alignment", 48);
    expect_io_error(w.bytes(), "power of two");
  }
}

// Seeded random corruption: flipped bytes must give a parsed file or an Error, nothing else.
TEST(GgufCorrupt, RandomByteFlips) {
  const auto base = testing::tiny_llama_gguf({});
  const uint64_t seed = 20261125;
  std::mt19937_64 rng(seed);
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  // Flips land in the header and metadata, where the parser does its work.
  const std::size_t header_bytes = 4096;
  for (int trial = 0; trial < 300; ++trial) {
    auto b = base;
    for (int k = 0; k < 4; ++k) {
      b[rng() % header_bytes] = static_cast<uint8_t>(rng());
    }
    try {
      GgufFile f = GgufFile::parse(b, "flipped");
      for (const auto& t : f.tensors()) {
        if (t.elements <= (1u << 16)) (void)f.dequantize(t);
      }
    } catch (const Error& e) {
      EXPECT_TRUE(e.status() == Status::io_error) << e.what();
    }
  }
}

}  // namespace
}  // namespace tqkv::model
