// Runtime (format pair) -> template dispatch.
#include "decode_launch.cuh"
#include "decode_pairs.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>

namespace tqkv::cuda_detail {

// Defined in the generated per-pair translation units.
#define TQKV_DECLARE_PAIR(K, V)                                                                        \
  extern template cudaError_t launch_decode_pair<Format::K, Format::V>(const DecodeLaunch&, cudaStream_t); \
  extern template cudaError_t decode_blocks_per_sm_pair<Format::K, Format::V>(int, int*);
TQKV_CUDA_FOR_EACH_PAIR(TQKV_DECLARE_PAIR)
#undef TQKV_DECLARE_PAIR

namespace {
std::atomic<unsigned long long*> g_timeline{nullptr};
}  // namespace
void set_decode_timeline(unsigned long long* device_buffer) noexcept { g_timeline.store(device_buffer); }
unsigned long long* decode_timeline() noexcept { return g_timeline.load(); }

float code_level_lambda(const float* levels, int count) noexcept {
  constexpr int kCandidates = 1 << 16;
  float best = 1.0f;
  double best_err = 1e30;
  for (int k = 0; k < kCandidates; ++k) {
    const float lambda = 1.0f + static_cast<float>(k) / kCandidates;
    double err = 0;
    for (int i = 0; i < count && err < best_err; ++i) {
      const float x = lambda * levels[i];
      if (x == 0.0f) continue;
      const double r = std::fabs(static_cast<double>(__half2float(__float2half_rn(x))) - x) / std::fabs(x);
      err = r > err ? r : err;
    }
    if (err < best_err) best_err = err, best = lambda;
  }
  return best;
}

bool decode_head_dim_built(int head_dim) noexcept {
  for (int d : kDecodeHeadDims)
    if (d == head_dim) return true;
  return false;
}

// f.template operator()<K, V>() for the built pair (K, V) that `format` names, else `otherwise`.
template <typename R, typename F>
R with_built_pair(KvFormat format, R otherwise, F&& f) {
#define TQKV_CALL_PAIR(K, V) \
  if (format.key == Format::K && format.value == Format::V) return f.template operator()<Format::K, Format::V>();
  TQKV_CUDA_FOR_EACH_PAIR(TQKV_CALL_PAIR)
#undef TQKV_CALL_PAIR
  return otherwise;
}

bool decode_pair_built(KvFormat format) noexcept {
  // [&]: a lambda without captures has a function-pointer conversion, which nvcc warns of (445-D).
  return with_built_pair(format, false, [&]<Format K, Format V>() { return true; });
}

cudaError_t launch_decode(const DecodeLaunch& launch, cudaStream_t stream) {
  // cudaErrorInvalidValue is unreachable: the host checked decode_pair_built().
  return with_built_pair(launch.cache.format, cudaErrorInvalidValue,
                         [&]<Format K, Format V>() { return launch_decode_pair<K, V>(launch, stream); });
}

bool decode_pairs_alone(KvFormat format, int head_dim, int group) noexcept {
  if (group > 4 || !decode_head_dim_built(head_dim)) return false;
  return with_built_pair(format, false, [&]<Format K, Format V>() { return decode_pairs_alone_pair<K, V>(head_dim); });
}

int decode_tiles_per_iteration(KvFormat format, int head_dim, int group, int reach, int splits,
                               bool one_block_per_sm) noexcept {
  if (!tile_pairs_pay(reach, splits)) return 1;
  const bool packed_lo = group <= 4 && has_packed_lo(format.key, format.value, head_dim);
  if (has_tile_pairs(format.key, format.value, head_dim, packed_lo)) return 2;
  // What prefers an SM alone and has no pairs for two blocks per SM: the lone pairs (tq4, tq2 at d = 128).
  return one_block_per_sm && decode_pairs_alone(format, head_dim, group) ? 2 : 1;
}

cudaError_t decode_blocks_per_sm(KvFormat format, int head_dim, int* blocks) {
  return with_built_pair(format, cudaErrorInvalidValue,
                         [&]<Format K, Format V>() { return decode_blocks_per_sm_pair<K, V>(head_dim, blocks); });
}

}  // namespace tqkv::cuda_detail
