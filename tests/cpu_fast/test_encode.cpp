// cpu_fast::encode_vectors against core's encode_vector: the same bytes on every target.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "test_support.hpp"
#include "tqkv/codebook.hpp"
#include "tqkv/error.hpp"
#include "tqkv/quantize.hpp"
#include "tqkv/rotation.hpp"

namespace tqkv::test {
namespace {

// The rotation and the quantizer compute exactly what core computes; only the summation order
// of the fp64 norm and scale sums differs (lanes vs sequential). That moves a sum by ~1e-16
// relative, which flips a float rounding (one ulp of the scale before its rounding to bfloat16,
// or a code whose z lies within ~1e-7 of a boundary) about once in 10^7 draws. Bounds: at most one
// differing code per 10^5 codes, stored (bfloat16) scales within one ulp. (tq8 chooses its codes
// against the stored scale: a scale one ulp apart would move ~20 % of its vector's codes, once in
// ~10^7 draws; the seeded draws here have none.)
constexpr double kMaxCodeMismatchFraction = 1e-5;
constexpr int kMaxScaleUlps = 1;

int ulps_apart(uint16_t a, uint16_t b) { return std::abs(int{a} - int{b}); }

TEST(CpuFastEncode, SameBytesAsCore) {
  std::mt19937_64 rng = seeded_rng(9000);
  const int n = 64;
  std::size_t total_codes = 0, total_code_mismatches = 0, total_scale_diffs = 0;
  for_each_target([&](const std::string&) {
    for (const int d : {32, 64, 80, 96, 128, 256, 576, 1024})
      for (const Format f : kAllFormats)
        for (const ScaleRule rule : {ScaleRule::norm, ScaleRule::least_squares})
          for (const CodebookKind kind : {CodebookKind::gaussian, CodebookKind::beta}) {
            if (kind == CodebookKind::beta && d != 64 && d != 128) continue;  // slow to build
            SCOPED_TRACE(fmt::format("d={} {} {} {}", d, format_name(f), scale_rule_name(rule),
                                     codebook_kind_name(kind)));
            const Rotation rot(d, rotation_seed(kDefaultSeed, 1, d));
            VectorCodec codec;
            codec.format = f;
            codec.rotation = &rot;
            codec.codebook = is_quantized(f) ? &codebook(kind, format_bits(f), kind ==
                                                   CodebookKind::beta ? d : 0)
                                             : nullptr;
            codec.scale_rule = rule;
            // Strided input (x_stride > d), a zero vector, and one with an outlier channel.
            const std::size_t stride = static_cast<std::size_t>(d) + 3;
            std::vector<float> x = normal_vector(rng, stride * n);
            std::fill(x.begin() + 5 * stride, x.begin() + 5 * stride + d, 0.0f);
            x[7 * stride + 1] = 1e4f;
            const std::size_t rb = row_bytes(f, d);
            const std::size_t row_stride = rb + 16;
            std::vector<uint8_t> got(row_stride * n, 0xAB), want(rb * n);
            // The value half of each pair must stay as it was: the encoder writes only its side.
            std::vector<ScalePair> got_pairs(n, ScalePair{0xffff, 0x1234});
            std::vector<uint16_t> got_s(n), want_s(n);
            cpu_fast::encode_vectors(codec, d, x.data(), stride, n, got.data(), row_stride,
                                     got_pairs.data(), &ScalePair::k_bits);
            for (int v = 0; v < n; ++v) {
              got_s[v] = got_pairs[v].k_bits;
              ASSERT_EQ(got_pairs[v].v_bits, 0x1234) << "vector " << v << ": the other side was written";
              encode_vector(codec, x.data() + v * stride, want.data() + v * rb, &want_s[v]);
            }

            std::size_t code_mismatches = 0, padding_mismatches = 0;
            std::vector<uint8_t> cg(d), cw(d);
            for (int v = 0; v < n; ++v) {
              const uint8_t* rg = got.data() + v * row_stride;
              const uint8_t* rw = want.data() + v * rb;
              if (is_quantized(f)) {
                unpack_codes(f, rg, d, cg.data());
                unpack_codes(f, rw, d, cw.data());
                for (int i = 0; i < d; ++i) code_mismatches += cg[i] != cw[i];
                padding_mismatches += std::memcmp(rg + packed_bytes(f, d), rw + packed_bytes(f, d),
                                                  rb - packed_bytes(f, d)) != 0;
              } else {
                code_mismatches += std::memcmp(rg, rw, rb) != 0;
              }
              total_scale_diffs += got_s[v] != want_s[v];
              EXPECT_LE(ulps_apart(got_s[v], want_s[v]), kMaxScaleUlps)
                  << "vector " << v << ": scale " << got_s[v] << " vs " << want_s[v];
              for (std::size_t k = rb; k < row_stride; ++k)  // bytes between rows untouched
                ASSERT_EQ(rg[k], 0xAB) << "vector " << v << " wrote past its row";
            }
            total_codes += static_cast<std::size_t>(d) * n;
            total_code_mismatches += code_mismatches;
            EXPECT_EQ(padding_mismatches, 0u);
            EXPECT_LE(static_cast<double>(code_mismatches),
                      kMaxCodeMismatchFraction * d * n)
                << code_mismatches << " of " << d * n << " codes differ";
            EXPECT_EQ(bf16_bits_to_float(got_s[5]), is_quantized(f) ? 0.0f : 1.0f) << "zero vector";
          }
  });
  std::printf("[ encode   ] %zu of %zu codes and %zu scales differ from core's encode_vector\n",
              total_code_mismatches, total_codes, total_scale_diffs);
}

TEST(CpuFastEncode, RejectsBadInput) {
  const Rotation rot(64, 1u);
  VectorCodec codec;
  codec.format = Format::tq4;
  codec.rotation = &rot;
  codec.codebook = &gaussian_codebook(4);
  std::vector<float> x(64, 1.0f);
  std::vector<ScalePair> scales(1);
  std::vector<uint8_t> rows(64);
  const auto expect_status = [&](auto&& call, Status status, const std::string& needle) {
    try {
      call();
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_EQ(static_cast<int>(e.status()), static_cast<int>(status)) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_status([&] { cpu_fast::encode_vectors(codec, 40, x.data(), 64, 1, rows.data(), 32,
                                               scales.data(), &ScalePair::k_bits); },
                Status::unsupported, "40");
  expect_status([&] { cpu_fast::encode_vectors(codec, 64, x.data(), 64, -2, rows.data(), 32,
                                               scales.data(), &ScalePair::k_bits); },
                Status::invalid_argument, "n = -2");
  expect_status([&] { cpu_fast::encode_vectors(codec, 64, nullptr, 64, 1, rows.data(), 32,
                                               scales.data(), &ScalePair::k_bits); },
                Status::invalid_argument, "null");
  expect_status([&] { cpu_fast::encode_vectors(codec, 64, x.data(), 63, 1, rows.data(), 32,
                                               scales.data(), &ScalePair::k_bits); },
                Status::invalid_argument, "x_stride = 63");
  expect_status([&] { cpu_fast::encode_vectors(codec, 64, x.data(), 64, 1, rows.data(), 16,
                                               scales.data(), &ScalePair::k_bits); },
                Status::invalid_argument, "row_stride = 16");
  expect_status([&] { cpu_fast::encode_vectors(codec, 64, x.data(), 64, 1, rows.data(), 32,
                                               scales.data(), nullptr); },
                Status::invalid_argument, "side");
  VectorCodec wrong = codec;
  wrong.codebook = &gaussian_codebook(2);
  expect_status([&] { cpu_fast::encode_vectors(wrong, 64, x.data(), 64, 1, rows.data(), 32,
                                               scales.data(), &ScalePair::k_bits); },
                Status::invalid_argument, "codebook");
}

}  // namespace
}  // namespace tqkv::test
