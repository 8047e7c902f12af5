// The fast CPU backend's driver: validation, the split of the work into items (sequence x KV
// head x split of the positions), the query rotation, the OpenMP loop over items, and the final
// log-sum-exp merge of the splits. The SIMD work itself is in kernels.cpp.
#include "cpu/fast/fast.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <fmt/format.h>

#include "cpu/fast/kernels.hpp"
#include "tqkv/error.hpp"
#include "tqkv/rotation.hpp"

namespace tqkv::cpu_fast {
namespace {

// Automatic splits: split long sequences until there are a few items per thread (so the last
// item does not leave a core idle), but never below this many positions per split, where the
// per-item setup (query rotation, merge) would start to show.
constexpr int kItemsPerThread = 4;
constexpr int64_t kMinPositionsPerSplit = 512;
constexpr int kMaxAutoSplits = 64;

// The first visible, held position of sequence b and the end (= tokens).
struct VisibleRange {
  int64_t begin = 0, end = 0;
};
VisibleRange visible_range(const CacheView& c, int b, int window) {
  const int64_t n = c.tokens[b];
  const int64_t held_from = n - valid_slots(n, c.capacity);
  return {std::max(held_from, first_visible_position(n, window)), n};
}

int choose_splits(const CacheView& c, const DecodeParams& p, int threads) {
  if (p.splits > 0) return p.splits;
  int64_t longest = 0;
  for (int b = 0; b < c.batch; ++b) {
    const VisibleRange r = visible_range(c, b, p.window);
    longest = std::max(longest, r.end - r.begin);
  }
  const int64_t base_items = static_cast<int64_t>(c.batch) * c.kv_heads;
  int splits = 1;
  while (splits < kMaxAutoSplits && base_items * splits < int64_t{kItemsPerThread} * threads &&
         longest / (2 * splits) >= kMinPositionsPerSplit)
    splits *= 2;
  return splits;
}

// Rotations of the KV heads, rebuilt only when the sign diagonals differ from the last call's
// (so a decode loop over one cache allocates nothing after its first step).
const std::vector<Rotation>& rotations_for(const CacheView& c) {
  thread_local std::vector<uint32_t> signs;
  thread_local std::vector<Rotation> rotations;
  thread_local int head_dim = 0;
  const std::size_t words = static_cast<std::size_t>(c.kv_heads) * c.sign_words;
  if (head_dim != c.head_dim || signs.size() != words ||
      !std::equal(signs.begin(), signs.end(), c.sign_bits)) {
    signs.assign(c.sign_bits, c.sign_bits + words);
    rotations.clear();
    for (int h = 0; h < c.kv_heads; ++h)
      rotations.emplace_back(c.head_dim, c.sign_bits + static_cast<std::size_t>(h) * c.sign_words);
    head_dim = c.head_dim;
  }
  return rotations;
}

void store_output(OutputType t, const float* o, int d, void* out, std::size_t index) {
  switch (t) {
    case OutputType::f32:
      std::memcpy(static_cast<float*>(out) + index, o, sizeof(float) * d);
      return;
    case OutputType::f16: {
      auto* p = static_cast<uint16_t*>(out) + index;
      for (int i = 0; i < d; ++i) p[i] = float_to_half(o[i]);
      return;
    }
    case OutputType::bf16: {
      auto* p = static_cast<uint16_t*>(out) + index;
      for (int i = 0; i < d; ++i) p[i] = float_to_bf16(o[i]);
      return;
    }
  }
  raise(Status::invalid_argument,
        fmt::format("out_type = {} is not an output type", static_cast<int>(t)));
}

}  // namespace

void decode_attention(const CacheView& cache, const float* q, void* out, const DecodeParams& params,
                      int threads) {
  validate(cache, params);
  if (q == nullptr || out == nullptr)
    raise(Status::invalid_argument,
          fmt::format("decode_attention: {} pointer is null", q ? "out" : "q"));
  if (threads < 0)
    raise(Status::invalid_argument, fmt::format("threads = {} must be >= 0 (0 = all)", threads));
  for (int b = 0; b < cache.batch; ++b)  // as the reference: an empty sequence has no query
    if (cache.tokens[b] <= 0)
      raise(Status::invalid_argument,
            fmt::format("decode_attention: sequence {} is empty (no tokens appended)", b));
  for (int b = 0; b < cache.batch; ++b)
    if (!cache.ring && cache.tokens[b] > cache.capacity)
      raise(Status::out_of_range,
            fmt::format("decode_attention: sequence {} has {} tokens, more than the capacity {} "
                        "of a contiguous cache", b, cache.tokens[b], cache.capacity));

  const int n_threads = threads > 0 ? threads : omp_get_max_threads();
  const int d = cache.head_dim;
  const int group = params.q_heads / cache.kv_heads;
  const int splits = choose_splits(cache, params, n_threads);
  const float scale =
      params.scale > 0 ? params.scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  const bool key_rotated = is_quantized(cache.format.key);
  const bool value_rotated = is_quantized(cache.format.value);
  const std::vector<Rotation>& rotations = rotations_for(cache);

  const detail::BytePlanes k_planes =
      key_rotated ? detail::make_byte_planes(cache.k_levels, 1 << format_bits(cache.format.key))
                  : detail::BytePlanes{};
  const detail::BytePlanes v_planes =
      value_rotated
          ? detail::make_byte_planes(cache.v_levels, 1 << format_bits(cache.format.value))
          : detail::BytePlanes{};

  // Workspace of this calling thread, kept between calls.
  const std::size_t head_floats = static_cast<std::size_t>(d);
  const std::size_t n_heads = static_cast<std::size_t>(cache.batch) * params.q_heads;
  const std::size_t n_items = static_cast<std::size_t>(cache.batch) * cache.kv_heads * splits;
  thread_local std::vector<float> q_key, part_o, part_m, part_l;
  q_key.resize(n_heads * head_floats);
  part_o.resize(n_items * group * head_floats);
  part_m.resize(n_items * group);
  part_l.resize(n_items * group);
  // Plain pointers: inside the parallel region a thread_local name would be each thread's own.
  float* const q_key_all = q_key.data();
  float* const part_o_all = part_o.data();
  float* const part_m_all = part_m.data();
  float* const part_l_all = part_l.data();

#pragma omp parallel num_threads(n_threads)
  {
    // Queries into the key domain (rotated for tq keys; f16 keys hold unrotated vectors) with
    // the logit scale folded in.
#pragma omp for schedule(static)
    for (std::size_t bh = 0; bh < n_heads; ++bh) {
      const int h = static_cast<int>(bh % params.q_heads);
      float* qk = q_key_all + bh * head_floats;
      const float* src = q + bh * head_floats;
      if (key_rotated)
        rotations[h / group].forward(src, qk);
      else
        std::copy(src, src + d, qk);
      for (int i = 0; i < d; ++i) qk[i] *= scale;
    }

#pragma omp for schedule(dynamic, 1)
    for (std::size_t item = 0; item < n_items; ++item) {
      const int s = static_cast<int>(item % splits);
      const int kv_head = static_cast<int>(item / splits % cache.kv_heads);
      const int b = static_cast<int>(item / splits / cache.kv_heads);
      const VisibleRange r = visible_range(cache, b, params.window);
      const int64_t n = r.end - r.begin;
      detail::AttendItem it;
      it.cache = &cache;
      it.b = b;
      it.kv_head = kv_head;
      it.group = group;
      it.begin = r.begin + n * s / splits;
      it.end = r.begin + n * (s + 1) / splits;
      it.q = q_key_all +
             (static_cast<std::size_t>(b) * params.q_heads + kv_head * group) * head_floats;
      it.softcap = params.softcap;
      it.k_planes = &k_planes;
      it.v_planes = &v_planes;
      it.o = part_o_all + item * group * head_floats;
      it.m = part_m_all + item * group;
      it.l = part_l_all + item * group;
      detail::attend(it);
    }

    // Merge the splits of each (sequence, query head): o = sum_s e^(m_s - M) o_s / denominator,
    // with a sink adding e^(sink - M) to the denominator only; then back to the original domain.
    thread_local std::vector<float> o;
    o.resize(head_floats);
#pragma omp for schedule(static)
    for (std::size_t bh = 0; bh < n_heads; ++bh) {
      const int b = static_cast<int>(bh / params.q_heads);
      const int h = static_cast<int>(bh % params.q_heads);
      const int kv_head = h / group, g = h % group;
      const std::size_t first_item =
          (static_cast<std::size_t>(b) * cache.kv_heads + kv_head) * splits;
      float m_max = -std::numeric_limits<float>::infinity();
      for (int s = 0; s < splits; ++s)
        m_max = std::max(m_max, part_m_all[(first_item + s) * group + g]);
      if (params.sinks) m_max = std::max(m_max, params.sinks[h]);
      double denominator = params.sinks ? std::exp(double{params.sinks[h]} - m_max) : 0.0;
      std::fill(o.begin(), o.end(), 0.0f);
      for (int s = 0; s < splits; ++s) {
        const std::size_t at = (first_item + s) * group + g;
        if (part_l_all[at] == 0.0f) continue;  // an empty split (m = -inf) contributes nothing
        const float w = std::exp(part_m_all[at] - m_max);
        denominator += static_cast<double>(w) * part_l_all[at];
        const float* os = part_o_all + at * head_floats;
        for (int i = 0; i < d; ++i) o[i] += w * os[i];
      }
      const float inv = denominator > 0 ? static_cast<float>(1.0 / denominator) : 0.0f;
      for (int i = 0; i < d; ++i) o[i] *= inv;
      if (value_rotated) rotations[kv_head].inverse(o.data(), o.data());
      store_output(params.out_type, o.data(), d, out, bh * head_floats);
      if (params.lse)
        params.lse[bh] = denominator > 0 ? static_cast<float>(m_max + std::log(denominator))
                                         : -std::numeric_limits<float>::infinity();
    }
  }
}

void encode_vectors(const VectorCodec& codec, int head_dim, const float* x, std::size_t x_stride,
                    int n, uint8_t* rows, std::size_t row_stride, ScalePair* scales, ScaleSide side) {
  check_head_dim(head_dim, "encode_vectors head_dim");
  if (n < 0) raise(Status::invalid_argument, fmt::format("encode_vectors: n = {} is negative", n));
  if (n == 0) return;
  if (x == nullptr || rows == nullptr || scales == nullptr || side == nullptr || codec.rotation == nullptr)
    raise(Status::invalid_argument,
          "encode_vectors: null pointer (x, rows, scales, side or codec.rotation)");
  if (codec.rotation->head_dim() != head_dim)
    raise(Status::invalid_argument,
          fmt::format("encode_vectors: head_dim = {} but the rotation is for {}", head_dim,
                      codec.rotation->head_dim()));
  if (x_stride < static_cast<std::size_t>(head_dim))
    raise(Status::invalid_argument, fmt::format("encode_vectors: x_stride = {} < head_dim = {}",
                                                x_stride, head_dim));
  if (row_stride < row_bytes(codec.format, head_dim))
    raise(Status::invalid_argument,
          fmt::format("encode_vectors: row_stride = {} < row_bytes = {} of {}", row_stride,
                      row_bytes(codec.format, head_dim), format_name(codec.format)));
  if (!is_quantized(codec.format)) {  // f16 is a conversion, not a quantizer: core's is exact
    for (int v = 0; v < n; ++v)
      encode_vector(codec, x + static_cast<std::size_t>(v) * x_stride,
                    rows + static_cast<std::size_t>(v) * row_stride, &(scales[v].*side));
    return;
  }
  if (codec.codebook == nullptr || codec.codebook->bits != format_bits(codec.format))
    raise(Status::invalid_argument,
          fmt::format("encode_vectors: codebook does not match format {}",
                      format_name(codec.format)));
  detail::encode(codec, head_dim, x, x_stride, n, rows, row_stride, scales, side);
}

std::vector<std::string> available_targets() { return detail::compiled_and_supported_targets(); }

std::string active_target() { return detail::dispatched_target_name(); }

void force_target(const std::string& name) {
  detail::force_target_bits(name.empty() ? 0 : detail::target_bits_by_name(name));
}

}  // namespace tqkv::cpu_fast
