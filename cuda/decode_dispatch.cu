// Runtime (format pair) -> template dispatch, and the split merge kernel.
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

// Splits whose weights one pass of the merge holds in shared memory.
constexpr int kMergeChunk = 1024;
// Coordinates per thread: head dims up to 1024 over kDecodeThreads threads.
constexpr int kMergeCoordsPerThread = (1024 + kDecodeThreads - 1) / kDecodeThreads;

// One block per (query head, sequence). The weights exp(m_s - m) of the splits are computed once,
// in parallel, into shared memory; then each thread sums its coordinates over the splits with
// independent loads in flight. (The first version walked the splits one dependent load at a time:
// 24 us of latency at batch 1, 4k tokens, more than the decode kernel itself — ncu, run r6.)
// An empty split (m_s = -inf) gets weight 0 and is never multiplied, so the sum stays finite.
__global__ void __launch_bounds__(kDecodeThreads) decode_merge_kernel(const DecodeLaunch a) {
  extern __shared__ float merge_smem[];  // [head_dim] output, m, d, then kMergeChunk split weights
  __shared__ float warp_part[kDecodeThreads / 32];
  const int D = a.cache.head_dim;
  const int h = blockIdx.x, b = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* merged = merge_smem;
  float* weights = merge_smem + D + 2;
  const std::size_t part0 = (static_cast<std::size_t>(b) * a.q_heads + h) * a.splits;
  const float* md = a.part_md + part0 * 2;

  float m = -INFINITY;  // max over splits: strided scan, then a block reduction
  for (int s = threadIdx.x; s < a.splits; s += blockDim.x) m = fmaxf(m, md[2 * s]);
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  if (lane == 0) warp_part[warp] = m;
  __syncthreads();
  m = warp_part[0];
  for (int w = 1; w < kDecodeThreads / 32; ++w) m = fmaxf(m, warp_part[w]);

  float o[kMergeCoordsPerThread] = {};
  float d = 0.0f;
  for (int c0 = 0; c0 < a.splits; c0 += kMergeChunk) {
    const int n = min(kMergeChunk, a.splits - c0);
    __syncthreads();  // the previous chunk's weights are consumed
    for (int s = threadIdx.x; s < n; s += blockDim.x) {
      const float ms = md[2 * (c0 + s)];
      const float w = ms == -INFINITY ? 0.0f : expf(ms - m);
      weights[s] = w;
      if (w != 0.0f) d += md[2 * (c0 + s) + 1] * w;
    }
    __syncthreads();
    const float* po = a.part_o + (part0 + c0) * D;
#pragma unroll
    for (int j = 0; j < kMergeCoordsPerThread; ++j) {
      const int i = threadIdx.x + j * kDecodeThreads;
      if (i >= D) break;
      float acc = 0.0f;
#pragma unroll 8
      for (int s = 0; s < n; ++s) {
        const float w = weights[s];
        const float x = po[static_cast<std::size_t>(s) * D + i];
        acc += w != 0.0f ? x * w : 0.0f;
      }
      o[j] += acc;
    }
  }
  for (int off = 16; off > 0; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
  __syncthreads();
  if (lane == 0) warp_part[warp] = d;
#pragma unroll
  for (int j = 0; j < kMergeCoordsPerThread; ++j) {
    const int i = threadIdx.x + j * kDecodeThreads;
    if (i < D) merged[i] = o[j];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < kDecodeThreads / 32; ++w) total += warp_part[w];
    merged[D] = m;
    merged[D + 1] = total;
  }
  __syncthreads();
  finalize_heads(merged, merged + D, merged + D + 1, 1, h, b, a, h / a.group);
}

cudaError_t launch_decode_merge(const DecodeLaunch& a, cudaStream_t stream) {
  const std::size_t smem =
      (static_cast<std::size_t>(a.cache.head_dim) + 2 + std::min(a.splits, kMergeChunk)) * sizeof(float);
  decode_merge_kernel<<<dim3(a.q_heads, a.cache.batch), kDecodeThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace tqkv::cuda_detail
