// Synthetic keys, values and queries (see DataKind in quality.hpp).
#include <cmath>
#include <random>

#include <fmt/format.h>

#include "quality.hpp"
#include "tqkv/error.hpp"

namespace tqkv::eval {
namespace {

// Student-t with 3 degrees of freedom: the heaviest integer-dof tail with a finite variance (3);
// scaled by 1/sqrt(3) to unit variance so that only the shape differs from N(0,1).
constexpr double kStudentDof = 3.0;
// Per-channel scales exp(N(0, 0.35^2)): most channels within a factor 2 of each other.
constexpr double kChannelLogScaleSd = 0.35;
// Outlier channels of keys: two runs of this many channels, at the end of each half of the head.
constexpr int kOutlierRun = 8;
// Their fixed offsets (magnitude, uniform) and noise scales, in units of a normal channel.
constexpr double kOutlierOffsetMin = 4.0, kOutlierOffsetMax = 8.0;
constexpr double kOutlierScaleMin = 1.5, kOutlierScaleMax = 3.0;
// The outlier runs of a token move together: their offsets are scaled per token and KV head by
// 1 + 0.3 N(0,1), like the massive activations of real keys (one direction, varying strength).
constexpr double kOutlierAmplitudeSd = 0.3;

// How one channel of one KV head is generated: amplitude * offset + scale * noise, with the
// amplitude drawn per token and KV head for outlier channels (1 elsewhere).
struct Channel {
  double offset = 0, scale = 1;
  bool outlier = false;
};

void check_shape(const Shape& s) {
  auto positive = [](int v, const char* name) {
    if (v <= 0) raise(Status::invalid_argument, fmt::format("synthetic shape {} = {} must be positive", name, v));
  };
  positive(s.batch, "batch");
  positive(s.q_heads, "q_heads");
  positive(s.kv_heads, "kv_heads");
  positive(s.kv_len, "kv_len");
  check_head_dim(s.head_dim, "synthetic shape head_dim");
  if (s.q_heads % s.kv_heads != 0)
    raise(Status::invalid_argument, fmt::format("synthetic shape q_heads = {} is not a multiple of kv_heads = {}",
                                                s.q_heads, s.kv_heads));
}

std::vector<Channel> channels(DataKind kind, bool keys, const Shape& s, std::mt19937_64& rng) {
  std::vector<Channel> ch(static_cast<std::size_t>(s.kv_heads) * s.head_dim);
  if (kind == DataKind::gaussian) return ch;
  std::normal_distribution<double> log_scale(0.0, kChannelLogScaleSd);
  for (auto& c : ch) c.scale = std::exp(log_scale(rng));
  if (kind != DataKind::outliers || !keys) return ch;
  std::uniform_real_distribution<double> offset(kOutlierOffsetMin, kOutlierOffsetMax);
  std::uniform_real_distribution<double> scale(kOutlierScaleMin, kOutlierScaleMax);
  std::bernoulli_distribution negative(0.5);
  const int d = s.head_dim;
  for (int h = 0; h < s.kv_heads; ++h) {
    for (int run_end : {d / 2, d}) {
      const double sign = negative(rng) ? -1.0 : 1.0;
      for (int i = run_end - kOutlierRun; i < run_end; ++i) {
        Channel& c = ch[static_cast<std::size_t>(h) * d + i];
        c.offset = sign * offset(rng);
        c.scale = scale(rng);
        c.outlier = true;
      }
    }
  }
  return ch;
}

void fill_tokens(DataKind kind, const std::vector<Channel>& ch, const Shape& s, std::mt19937_64& rng,
                 std::vector<float>& out) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::student_t_distribution<double> student(kStudentDof);
  const double student_unit = std::sqrt((kStudentDof - 2) / kStudentDof);
  const std::size_t per_head = static_cast<std::size_t>(s.head_dim);
  const std::size_t heads = static_cast<std::size_t>(s.batch) * s.kv_len * s.kv_heads;
  out.resize(heads * per_head);
  for (std::size_t row = 0; row < heads; ++row) {
    const Channel* c = &ch[(row % s.kv_heads) * per_head];
    const double amplitude = kind == DataKind::outliers ? 1.0 + kOutlierAmplitudeSd * normal(rng) : 1.0;
    for (std::size_t i = 0; i < per_head; ++i) {
      const double noise = kind == DataKind::gaussian ? normal(rng) : student(rng) * student_unit;
      const double offset = c[i].outlier ? amplitude * c[i].offset : c[i].offset;
      out[row * per_head + i] = static_cast<float>(offset + c[i].scale * noise);
    }
  }
}

}  // namespace

std::string_view data_kind_name(DataKind k) noexcept {
  switch (k) {
    case DataKind::gaussian: return "gaussian";
    case DataKind::student_t: return "student_t";
    case DataKind::outliers: return "outliers";
  }
  return "?";
}

DataKind parse_data_kind(std::string_view text) {
  for (DataKind k : kAllDataKinds)
    if (text == data_kind_name(k)) return k;
  raise(Status::invalid_argument,
        fmt::format("data kind '{}' is not known (expected gaussian, student_t or outliers)", text));
}

SyntheticKv make_synthetic_kv(DataKind kind, const Shape& shape, uint64_t seed) {
  check_shape(shape);
  std::mt19937_64 rng(seed);
  SyntheticKv data;
  data.kind = kind;
  data.shape = shape;
  const auto key_channels = channels(kind, /*keys=*/true, shape, rng);
  const auto value_channels = channels(kind, /*keys=*/false, shape, rng);
  fill_tokens(kind, key_channels, shape, rng, data.k);
  fill_tokens(kind, value_channels, shape, rng, data.v);
  std::normal_distribution<double> query(0.0, kSyntheticQueryScale);
  data.q.resize(static_cast<std::size_t>(shape.batch) * shape.q_heads * shape.head_dim);
  for (auto& x : data.q) x = static_cast<float>(query(rng));
  return data;
}

}  // namespace tqkv::eval
