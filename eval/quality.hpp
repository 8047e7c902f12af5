// Quality of the KV formats on synthetic attention data: how far attention on the compressed cache
// lands from dense fp64 attention on the original K/V. Used by `tqkv demo`, `tqkv quality` and the
// quality tests (docs/quality.md has the numbers and how to read them).
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string_view>
#include <vector>

#include "tqkv/cache.hpp"
#include "tqkv/codebook.hpp"
#include "tqkv/format.hpp"

namespace tqkv::eval {

// What the synthetic keys and values look like.
//   gaussian:  every coordinate N(0,1) — the case TurboQuant's codebook is made for;
//   student_t: heavy tails, Student-t with 3 degrees of freedom scaled to unit variance, and
//              per-channel scales that vary like real activations;
//   outliers:  student_t plus, in the keys, outlier channels with large fixed offsets and scales
//              (two runs of 8 channels at the end of each half of the head, where the slowly
//              rotating RoPE dims of real models sit). The runs are contiguous and share a sign,
//              a structure the plain Hadamard maps onto few coordinates.
enum class DataKind : uint8_t { gaussian = 0, student_t = 1, outliers = 2 };
inline constexpr DataKind kAllDataKinds[] = {DataKind::gaussian, DataKind::student_t, DataKind::outliers};
std::string_view data_kind_name(DataKind k) noexcept;  // "gaussian", "student_t", "outliers"
DataKind parse_data_kind(std::string_view text);        // throws Error naming the text

// Queries are N(0, 1.5^2) in every kind: logits of standard deviation ~1.5 under the 1/sqrt(d)
// scale, so each query attends to a few tens of positions rather than to all of them evenly.
inline constexpr double kSyntheticQueryScale = 1.5;

struct Shape {
  int batch = 4;       // independent sequences (one query token each)
  int q_heads = 8;     // query heads; a multiple of kv_heads
  int kv_heads = 2;
  int head_dim = 128;
  int kv_len = 512;    // tokens per sequence
};

// One layer's synthetic attention inputs, reproducible from (kind, shape, seed).
struct SyntheticKv {
  DataKind kind = DataKind::gaussian;
  Shape shape;
  std::vector<float> q;  // [batch][q_heads][head_dim]
  std::vector<float> k;  // [batch][kv_len][kv_heads][head_dim], position 0 first
  std::vector<float> v;  // [batch][kv_len][kv_heads][head_dim]
};
SyntheticKv make_synthetic_kv(DataKind kind, const Shape& shape, uint64_t seed);

// The baseline: a plain per-vector uniform quantizer (min/max affine, 2^bits levels from min to
// max). min and step are stored in fp16, so it costs bits per coordinate + 32 bits per vector,
// exactly what a tq format costs. Writes the dequantized vector to out[n] (may alias x).
void uniform_round_trip(const float* x, int n, int bits, float* out);

// Attention-output error against dense fp64 attention on the original K/V, over every sequence and
// query head, plus the reconstruction error of the keys and values themselves.
struct Metrics {
  double rel_l2 = 0;       // ||o - o_dense|| / ||o_dense||, all outputs together
  double nmse = 0;         // sum (o - o_dense)^2 / sum o_dense^2 (= rel_l2^2)
  double mean_cosine = 0;  // cosine similarity of o and o_dense per (sequence, head), averaged
  double min_cosine = 0;   // ... and the worst one
  double key_nmse = 0;     // sum (k_hat - k)^2 / sum k^2 over every cached key
  double value_nmse = 0;   // the same for values
};

// Output metrics (rel_l2, nmse, cosines) of attention outputs `approx` against `exact`, both
// [rows][head_dim]; the key/value fields stay 0.
Metrics compare_outputs(const std::vector<float>& approx, const std::vector<double>& exact,
                        int head_dim);

// How the cache under test is configured beyond its format.
struct QualityOptions {
  ScaleRule scale_rule = kDefaultScaleRule;
  CodebookKind codebook = CodebookKind::gaussian;
  bool sign_flips = true;
  uint64_t seed = kDefaultSeed;  // rotation seed
};

// Fills a KvCache of `format` with the data, runs decode_attention_reference on it and
// dense_decode_attention on the original K/V, and compares.
Metrics evaluate_format(const SyntheticKv& data, KvFormat format, const QualityOptions& options = {});
// The same with keys and values through uniform_round_trip (dense attention on the result).
Metrics evaluate_uniform(const SyntheticKv& data, int bits);

// The formats of the quality table, in its order.
inline constexpr KvFormat kTableFormats[] = {
    {Format::f16, Format::f16}, {Format::tq8, Format::tq8}, {Format::tq4, Format::tq4},
    {Format::tq3, Format::tq3}, {Format::tq2, Format::tq2}, {Format::tq8, Format::tq4},
    {Format::tq4, Format::tq2}};

// Prints a markdown table: one row per format of kTableFormats (then two baselines: the uniform
// 4-bit quantizer and tq4 without sign flips), one column per data kind with the attention-output
// relative L2 error and cosine, and the bytes per position. Data from make_synthetic_kv(kind,
// shape, data_seed).
void print_quality_table(std::ostream& os, const Shape& shape, uint64_t data_seed,
                         const QualityOptions& options = {});

}  // namespace tqkv::eval
