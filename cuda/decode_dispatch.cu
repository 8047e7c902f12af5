// Runtime (format pair) -> template dispatch, and the split merge kernel.
#include "decode_launch.cuh"
#include "decode_pairs.hpp"

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
std::atomic<int> g_decode_kernel{static_cast<int>(DecodeKernel::mma)};
}  // namespace

DecodeKernel selected_decode_kernel() noexcept { return static_cast<DecodeKernel>(g_decode_kernel.load()); }
void select_decode_kernel(DecodeKernel kernel) noexcept { g_decode_kernel.store(static_cast<int>(kernel)); }

int decode_split_granule(int head_dim, int k_row_bytes, int v_row_bytes) noexcept {
  const DecodeKernel k = selected_decode_kernel();
  if (k == DecodeKernel::cuda_core) return 2 * decode_tile_for_rows(k_row_bytes, v_row_bytes);
  (void)head_dim;  // workers per block: 8 / warps_per_tile (1 to 4); a granule of 128 keeps every worker busy
  return 16 * 8;
}

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

bool decode_pair_built(KvFormat format) noexcept {
#define TQKV_MATCH_PAIR(K, V) \
  if (format.key == Format::K && format.value == Format::V) return true;
  TQKV_CUDA_FOR_EACH_PAIR(TQKV_MATCH_PAIR)
#undef TQKV_MATCH_PAIR
  return false;
}

cudaError_t launch_decode(const DecodeLaunch& launch, cudaStream_t stream) {
  const KvFormat format = launch.cache.format;
#define TQKV_LAUNCH_PAIR(K, V)                                  \
  if (format.key == Format::K && format.value == Format::V) \
    return launch_decode_pair<Format::K, Format::V>(launch, stream);
  TQKV_CUDA_FOR_EACH_PAIR(TQKV_LAUNCH_PAIR)
#undef TQKV_LAUNCH_PAIR
  return cudaErrorInvalidValue;  // unreachable: the host checked decode_pair_built()
}

cudaError_t decode_blocks_per_sm(KvFormat format, int head_dim, int* blocks) {
#define TQKV_OCCUPANCY_PAIR(K, V)                             \
  if (format.key == Format::K && format.value == Format::V) \
    return decode_blocks_per_sm_pair<Format::K, Format::V>(head_dim, blocks);
  TQKV_CUDA_FOR_EACH_PAIR(TQKV_OCCUPANCY_PAIR)
#undef TQKV_OCCUPANCY_PAIR
  return cudaErrorInvalidValue;
}

// One block per (query head, sequence): weights exp(m_s - m) per split, skipping empty splits
// (m_s = -inf), so a fully masked split contributes nothing and the sum stays finite.
__global__ void __launch_bounds__(kDecodeThreads) decode_merge_kernel(const DecodeLaunch a) {
  extern __shared__ float merged[];  // [head_dim] output, then m, d
  const int D = a.cache.head_dim;
  const int h = blockIdx.x, b = blockIdx.y;
  const std::size_t part0 = (static_cast<std::size_t>(b) * a.q_heads + h) * a.splits;
  const float* md = a.part_md + part0 * 2;
  float m = -INFINITY;
  for (int s = 0; s < a.splits; ++s) m = fmaxf(m, md[2 * s]);
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    float o = 0.0f;
    for (int s = 0; s < a.splits; ++s) {
      const float ms = md[2 * s];
      if (ms != -INFINITY) o += a.part_o[(part0 + s) * D + i] * expf(ms - m);
    }
    merged[i] = o;
  }
  if (threadIdx.x == 0) {
    float d = 0.0f;
    for (int s = 0; s < a.splits; ++s) {
      const float ms = md[2 * s];
      if (ms != -INFINITY) d += md[2 * s + 1] * expf(ms - m);
    }
    merged[D] = m;
    merged[D + 1] = d;
  }
  __syncthreads();
  finalize_heads(merged, merged + D, merged + D + 1, 1, h, b, a, h / a.group);
}

cudaError_t launch_decode_merge(const DecodeLaunch& a, cudaStream_t stream) {
  const std::size_t smem = (static_cast<std::size_t>(a.cache.head_dim) + 2) * sizeof(float);
  decode_merge_kernel<<<dim3(a.q_heads, a.cache.batch), kDecodeThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace tqkv::cuda_detail
