// Decode attention on the compressed cache: one thread block per (sequence, KV head, group chunk,
// split). The block reads each K/V byte of its positions once for all (up to kMaxHeadsPerBlock)
// query heads of the group, streams tiles of rows into shared memory with cp.async (two stages),
// scores them against the rotated queries, keeps an online softmax per head and accumulates the
// output in the value domain. With one split it finalises in place (normalise, sinks, inverse
// rotation, conversion); with several, a merge kernel combines the partials by log-sum-exp.
#pragma once

#include <atomic>
#include <cstdint>

#include "device_common.cuh"
#include "launch.hpp"

namespace tqkv::cuda_detail {

inline constexpr int kDecodeThreads = 128;
inline constexpr int kDecodeWarps = kDecodeThreads / 32;
inline constexpr int kLevelSlots = 256;  // the largest codebook (tq8)

// Compile-time tiling of one (K format, V format, head dim).
template <Format KF, Format VF, int D>
struct DecodeShape {
  static_assert(D % 16 == 0 && D >= 32 && D <= 1024, "head dim must be a multiple of 16 in [32, 1024]");
  static constexpr int kRowK = row_bytes_of(KF, D);
  static constexpr int kRowV = row_bytes_of(VF, D);
  static constexpr int kStrideK = padded_row_stride(kRowK);
  static constexpr int kStrideV = padded_row_stride(kRowV);
  static constexpr int kTile = decode_tile_for_rows(kRowK, kRowV);
  static constexpr int kLanesPerRow = kDecodeThreads / kTile;  // K phase: lanes sharing one row
  static_assert(kLanesPerRow >= 1 && kLanesPerRow <= 32 && (kLanesPerRow & (kLanesPerRow - 1)) == 0,
                "a K row's lanes must be a power-of-two slice of one warp");
  static constexpr int kChunks = D / kChunkCoords;
  static constexpr int kPosGroups = kDecodeThreads / kChunks;  // V phase: positions in parallel
  static_assert(kPosGroups >= 1, "every 8-coordinate chunk of a value row needs a thread");
  static constexpr int kChunkK = chunk_bytes(KF);
  static constexpr int kChunkV = chunk_bytes(VF);

  // Shared memory, in bytes from the start (every offset a multiple of 16).
  static constexpr int kStageK = kTile * kStrideK;
  static constexpr int kStageV = kTile * kStrideV;
  static constexpr int kStageBytes = kStageK + kStageV + 2 * kTile * 4;  // rows + K/V scales
  static constexpr int kOffStages = 0;
  static constexpr int kOffQ = 2 * kStageBytes;  // q in the key domain; reused for the output
  static constexpr int kOffLevelsK = kOffQ + kMaxHeadsPerBlock * D * 4;
  static constexpr int kOffLevelsV = kOffLevelsK + kLevelSlots * 4;
  static constexpr int kOffScores = kOffLevelsV + kLevelSlots * 4;  // [head][tile]
  static constexpr int kOffProbs = kOffScores + kMaxHeadsPerBlock * kTile * 4;  // [tile][head]
  static constexpr int kOffStats = kOffProbs + kTile * kMaxHeadsPerBlock * 4;   // m, d, alpha
  static constexpr int kSmemBytes = kOffStats + 3 * kMaxHeadsPerBlock * 4;
  static_assert(kStageBytes % 16 == 0, "stages must keep 16-byte alignment");
};

// out = o * factor: normalises by the denominator, with the sink logit (if any) added to it.
// Stays finite and gives 0 when nothing was visible.
__device__ __forceinline__ float output_factor(float m, float d, const float* sinks, int q_head) {
  if (sinks == nullptr) return d > 0.0f ? 1.0f / d : 0.0f;
  const float sink = sinks[q_head];
  const float m2 = fmaxf(m, sink);
  if (m2 == -INFINITY) return 0.0f;
  const float w = (m == -INFINITY) ? 0.0f : expf(m - m2);
  const float den = d * w + expf(sink - m2);
  return den > 0.0f ? w / den : 0.0f;
}

// Positions [begin, begin + count) of split `split` of sequence b: the visible range (held by
// the cache and inside the window) cut into `tile`-aligned pieces, one per split. Shared by both
// decode kernels so they split a sequence identically.
struct SplitPositions {
  int64_t begin;
  int count;
};
__device__ inline SplitPositions split_positions(const DecodeLaunch& a, int b, int split, int tile) {
  const int64_t tokens = a.cache.tokens[b];
  const int valid = valid_slots(tokens, a.cache.capacity);
  const int64_t first_visible = first_visible_position(tokens, a.window);
  const int64_t lo = first_visible > tokens - valid ? first_visible : tokens - valid;
  const int64_t visible = tokens > lo ? tokens - lo : 0;
  const int64_t per_split = ((visible + a.splits - 1) / a.splits + tile - 1) / tile * tile;
  const int64_t begin = lo + split * per_split;
  const int64_t end = tokens < begin + per_split ? tokens : begin + per_split;
  return {begin, end > begin ? static_cast<int>(end - begin) : 0};
}

// Normalises n_heads unnormalised value-domain outputs o[g * head_dim + i] (shared memory),
// rotates them back for tq values (x = S H^T r) and stores them. All threads must call it.
__device__ inline void finalize_heads(float* o, const float* m, const float* d, int n_heads,
                                      int first_q_head, int b, const DecodeLaunch& a, int kv_head) {
  const int D = a.cache.head_dim;
  const bool rotated = a.cache.format.value != Format::f16;
  const uint32_t* signs = a.cache.sign_bits + static_cast<std::size_t>(kv_head) * a.cache.sign_words;
  const std::size_t out_base = (static_cast<std::size_t>(b) * a.q_heads + first_q_head) * D;
  for (int idx = threadIdx.x; idx < n_heads * D; idx += blockDim.x) {
    const int g = idx / D;
    const float f = output_factor(m[g], d[g], a.sinks, first_q_head + g);
    o[idx] *= f;
    if (!rotated) store_output(a.out, out_base + idx, o[idx], a.out_type);
  }
  if (!rotated) return;
  block_fwht_unnormalized(o, n_heads, D, D);
  for (int idx = threadIdx.x; idx < n_heads * D; idx += blockDim.x) {
    const int i = idx % D;
    float x = o[idx] * hadamard_norm(D, i);
    if (sign_negated(signs, i)) x = -x;
    store_output(a.out, out_base + idx, x, a.out_type);
  }
}

// The block's unnormalised value-domain outputs o[g * head_dim + i] (shared memory) with their
// running max m (natural-log units) and denominator d: finalised in place with one split,
// otherwise stored as the split's partial for the merge kernel. All threads must call it.
__device__ inline void finish_decode_block(float* o, const float* m, const float* d, int n_heads, int h0, int b,
                                           const DecodeLaunch& a, int kv_head, int split) {
  if (a.splits == 1) {
    finalize_heads(o, m, d, n_heads, h0, b, a, kv_head);
    return;
  }
  const int D = a.cache.head_dim;
  const std::size_t part0 = (static_cast<std::size_t>(b) * a.q_heads + h0) * a.splits + split;
  for (int idx = threadIdx.x; idx < n_heads * D; idx += blockDim.x) {
    const int g = idx / D, i = idx - g * D;
    a.part_o[(part0 + static_cast<std::size_t>(g) * a.splits) * D + i] = o[idx];
  }
  if (static_cast<int>(threadIdx.x) < n_heads) {
    a.part_md[(part0 + static_cast<std::size_t>(threadIdx.x) * a.splits) * 2] = m[threadIdx.x];
    a.part_md[(part0 + static_cast<std::size_t>(threadIdx.x) * a.splits) * 2 + 1] = d[threadIdx.x];
  }
}

template <Format KF, Format VF, int D>
__global__ void __launch_bounds__(kDecodeThreads) decode_kernel(const DecodeLaunch a) {
  using S = DecodeShape<KF, VF, D>;
  constexpr int G = kMaxHeadsPerBlock;
  constexpr int T = S::kTile;
  extern __shared__ __align__(16) uint8_t smem[];
  float* q_s = reinterpret_cast<float*>(smem + S::kOffQ);
  float* k_levels = reinterpret_cast<float*>(smem + S::kOffLevelsK);
  float* v_levels = reinterpret_cast<float*>(smem + S::kOffLevelsV);
  float* scores = reinterpret_cast<float*>(smem + S::kOffScores);
  float* probs = reinterpret_cast<float*>(smem + S::kOffProbs);
  float* m_s = reinterpret_cast<float*>(smem + S::kOffStats);
  float* d_s = m_s + G;
  float* alpha_s = d_s + G;

  const CacheView& c = a.cache;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int split = blockIdx.x;
  const int kv_head = blockIdx.y / a.head_chunks;
  const int first_in_group = (blockIdx.y % a.head_chunks) * G;
  const int n_heads = min(G, a.group - first_in_group);
  const int h0 = kv_head * a.group + first_in_group;  // first query head of this block
  const int b = blockIdx.z;

  // Codebooks and the query, rotated into the key domain (scaled by the logit scale).
  if constexpr (quantized(KF)) {
    for (int i = tid; i < (1 << bits_of(KF)); i += kDecodeThreads) k_levels[i] = c.k_levels[i];
  }
  if constexpr (quantized(VF)) {
    for (int i = tid; i < (1 << bits_of(VF)); i += kDecodeThreads) v_levels[i] = c.v_levels[i];
  }
  const uint32_t* signs = c.sign_bits + static_cast<std::size_t>(kv_head) * c.sign_words;
  const float* q_in = a.q + (static_cast<std::size_t>(b) * a.q_heads + h0) * D;
  for (int idx = tid; idx < n_heads * D; idx += kDecodeThreads) {
    float x = q_in[idx] * a.scale;
    if (quantized(KF) && sign_negated(signs, idx % D)) x = -x;
    q_s[idx] = x;
  }
  if (tid < G) {
    m_s[tid] = -INFINITY;
    d_s[tid] = 0.0f;
  }
  // Heads past n_heads keep probability 0, so the 8-wide loads of the value phase read zeros.
  for (int idx = tid; idx < T * G; idx += kDecodeThreads) probs[idx] = 0.0f;
  if constexpr (quantized(KF)) {
    block_fwht_unnormalized(q_s, n_heads, D, D);
    for (int idx = tid; idx < n_heads * D; idx += kDecodeThreads) q_s[idx] *= hadamard_norm(D, idx % D);
  }
  __syncthreads();

  // This split's positions: the visible range cut into tile-aligned pieces.
  const SplitPositions positions = split_positions(a, b, split, T);
  const int64_t begin = positions.begin;
  const int n_pos = positions.count;
  const int n_tiles = (n_pos + T - 1) / T;

  const std::size_t head_row0 = row_index(c, b, kv_head, 0);
  const uint8_t* k_rows = c.k_codes + head_row0 * S::kRowK;
  const uint8_t* v_rows = c.v_codes + head_row0 * S::kRowV;
  const float* k_scales = c.k_scales + head_row0;
  const float* v_scales = c.v_scales + head_row0;

  auto stage_ptr = [&](int stage) { return smem + S::kOffStages + stage * S::kStageBytes; };
  auto load_tile = [&](int t) {
    uint8_t* base = stage_ptr(t & 1);
    const int64_t p0 = begin + static_cast<int64_t>(t) * T;
    const int n = min(T, n_pos - t * T);
    const int slot0 = position_slot(p0, c.capacity, c.ring);
    // A tile holds at most `valid` <= capacity positions, so one wrap at most.
    auto slot_of = [&](int j) { return slot0 + j < c.capacity ? slot0 + j : slot0 + j - c.capacity; };
    constexpr int kPiecesK = S::kRowK / 16, kPiecesV = S::kRowV / 16;
    for (int idx = tid; idx < n * kPiecesK; idx += kDecodeThreads) {
      const int j = idx / kPiecesK, piece = idx - j * kPiecesK;
      cp_async16(base + j * S::kStrideK + piece * 16,
                 k_rows + static_cast<std::size_t>(slot_of(j)) * S::kRowK + piece * 16);
    }
    for (int idx = tid; idx < n * kPiecesV; idx += kDecodeThreads) {
      const int j = idx / kPiecesV, piece = idx - j * kPiecesV;
      cp_async16(base + S::kStageK + j * S::kStrideV + piece * 16,
                 v_rows + static_cast<std::size_t>(slot_of(j)) * S::kRowV + piece * 16);
    }
    float* scales = reinterpret_cast<float*>(base + S::kStageK + S::kStageV);
    for (int j = tid; j < n; j += kDecodeThreads) {  // f16 rows have no scale to read
      if constexpr (quantized(KF)) cp_async4(scales + j, k_scales + slot_of(j));
      if constexpr (quantized(VF)) cp_async4(scales + T + j, v_scales + slot_of(j));
    }
  };

  float acc[G][kChunkCoords];
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int i = 0; i < kChunkCoords; ++i) acc[g][i] = 0.0f;
  const int k_row = tid / S::kLanesPerRow, k_part = tid % S::kLanesPerRow;
  const int v_chunk = tid % S::kChunks, v_group = tid / S::kChunks;

  if (n_tiles > 0) load_tile(0);
  cp_async_commit();
  for (int t = 0; t < n_tiles; ++t) {
    if (t + 1 < n_tiles) load_tile(t + 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const uint8_t* stage = stage_ptr(t & 1);
    const float* k_scale_s = reinterpret_cast<const float*>(stage + S::kStageK + S::kStageV);
    const float* v_scale_s = k_scale_s + T;
    const int n = min(T, n_pos - t * T);

    // Scores: kLanesPerRow lanes per key row, each over every kLanesPerRow-th chunk. NG is the
    // register tile of heads actually present (4 or 8), so a group of 4 does no padding work.
    float dot[G];
#pragma unroll
    for (int g = 0; g < G; ++g) dot[g] = 0.0f;
    auto score_rows = [&]<int NG>() {
      if (k_row >= n) return;
      const uint8_t* row = stage + k_row * S::kStrideK;
      for (int ch = k_part; ch < S::kChunks; ch += S::kLanesPerRow) {
        float kv[kChunkCoords];
        decode_chunk<KF>(row + ch * S::kChunkK, k_levels, kv);
#pragma unroll
        for (int g = 0; g < NG; ++g) {
          const float4* qq = reinterpret_cast<const float4*>(q_s + g * D + ch * kChunkCoords);
          const float4 q0 = qq[0], q1 = qq[1];
          dot[g] += kv[0] * q0.x + kv[1] * q0.y + kv[2] * q0.z + kv[3] * q0.w + kv[4] * q1.x +
                    kv[5] * q1.y + kv[6] * q1.z + kv[7] * q1.w;
        }
      }
    };
    if (n_heads <= G / 2) score_rows.template operator()<G / 2>();
    else score_rows.template operator()<G>();
#pragma unroll
    for (int g = 0; g < G; ++g)
      if (g < n_heads)  // uniform over the block
#pragma unroll
        for (int o = S::kLanesPerRow / 2; o > 0; o >>= 1) dot[g] += __shfl_xor_sync(0xffffffffu, dot[g], o);
    if (k_part == 0) {
      const float k_scale = quantized(KF) && k_row < n ? k_scale_s[k_row] : 1.0f;
#pragma unroll
      for (int g = 0; g < G; ++g) {
        if (g < n_heads) {
          float logit = dot[g] * k_scale;
          if (a.softcap > 0.0f) logit = a.softcap * tanhf(logit / a.softcap);
          scores[g * T + k_row] = k_row < n ? logit : -INFINITY;
        }
      }
    }
    __syncthreads();

    // Online softmax, one warp per head: new running max, rescale factor, probabilities (with
    // the value scale folded in, since o accumulates p * scale * level).
    for (int g = warp; g < n_heads; g += kDecodeWarps) {
      float mx = -INFINITY;
      for (int j = lane; j < n; j += 32) mx = fmaxf(mx, scores[g * T + j]);
      mx = warp_max(mx);
      const float m_old = m_s[g];
      const float m_new = fmaxf(m_old, mx);
      const float alpha = m_old == -INFINITY ? 0.0f : __expf(m_old - m_new);
      float sum = 0.0f;
      for (int j = lane; j < T; j += 32) {
        const float p = j < n ? __expf(scores[g * T + j] - m_new) : 0.0f;
        sum += p;
        probs[j * G + g] = quantized(VF) && j < n ? p * v_scale_s[j] : p;
      }
      sum = warp_sum(sum);
      __syncwarp();  // every lane has read m_s[g] and d_s[g] before lane 0 overwrites them
      if (lane == 0) {
        m_s[g] = m_new;
        d_s[g] = d_s[g] * alpha + sum;
        alpha_s[g] = alpha;
      }
    }
    __syncthreads();

    // Values: each thread owns one 8-coordinate chunk for every kPosGroups-th position.
    if (v_group < S::kPosGroups) {
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float alpha = g < n_heads ? alpha_s[g] : 0.0f;
#pragma unroll
        for (int i = 0; i < kChunkCoords; ++i) acc[g][i] *= alpha;
      }
      auto accumulate = [&]<int NG>() {
        for (int j = v_group; j < n; j += S::kPosGroups) {
          float vv[kChunkCoords];
          decode_chunk<VF>(stage + S::kStageK + j * S::kStrideV + v_chunk * S::kChunkV, v_levels, vv);
          float p[NG];
#pragma unroll
          for (int g4 = 0; g4 < NG; g4 += 4) {
            const float4 pp = *reinterpret_cast<const float4*>(probs + j * G + g4);
            p[g4] = pp.x, p[g4 + 1] = pp.y, p[g4 + 2] = pp.z, p[g4 + 3] = pp.w;
          }
#pragma unroll
          for (int g = 0; g < NG; ++g)
#pragma unroll
            for (int i = 0; i < kChunkCoords; ++i) acc[g][i] += p[g] * vv[i];
        }
      };
      if (n_heads <= G / 2) accumulate.template operator()<G / 2>();
      else accumulate.template operator()<G>();
    }
    __syncthreads();  // the next iteration's load overwrites this stage
  }
  cp_async_wait<0>();

  // Sum the position groups' accumulators into o (reusing the query's shared memory).
  float* o = q_s;
  for (int r = 0; r < S::kPosGroups; ++r) {
    if (v_group == r) {
#pragma unroll
      for (int g = 0; g < G; ++g) {
        if (g < n_heads) {
#pragma unroll
          for (int i = 0; i < kChunkCoords; ++i) {
            float& dst = o[g * D + v_chunk * kChunkCoords + i];
            dst = (r == 0 ? 0.0f : dst) + acc[g][i];
          }
        }
      }
    }
    __syncthreads();
  }

  finish_decode_block(o, m_s, d_s, n_heads, h0, b, a, kv_head, split);
}

}  // namespace tqkv::cuda_detail
