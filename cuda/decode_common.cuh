// Parts of decode attention around the main loop (decode_mma.cuh): which positions a split
// covers, the finish of a block (normalise, sinks, inverse rotation, conversion) and, with
// several splits, the in-kernel log-sum-exp merge of their partials by the last block to finish.
// (The CUDA-core kernel of v2 that shared them was removed in v6: performance-notes.md.)
#pragma once

#include <cstdint>

#include "device_common.cuh"
#include "launch.hpp"

namespace tqkv::cuda_detail {

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

// Time stamp of `phase` by thread 0 (launch.hpp: kTimelinePhases), when a timeline is set.
__device__ __forceinline__ void timeline_mark(const DecodeLaunch& a, int phase) {
  if (a.timeline == nullptr || threadIdx.x != 0) return;
  const unsigned long long t = global_timer_ns();
  const std::size_t block = blockIdx.x + gridDim.x * (blockIdx.y + std::size_t{gridDim.y} * blockIdx.z);
  a.timeline[block * kTimelineSlots + phase] = t;
  if (phase == 0) {
    unsigned sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    a.timeline[block * kTimelineSlots + kTimelinePhases] = sm + 1u;
  }
}

// Positions [begin, begin + count) of split `split` of sequence b: the visible range (held by
// the cache and inside the window) cut into `tile`-aligned pieces, one per split. Shared by both
// decode kernels so they split a sequence identically.
struct SplitPositions {
  int64_t begin;
  int count;
};
__device__ inline SplitPositions split_positions_at(const DecodeLaunch& a, int64_t tokens, int split, int tile) {
  const int valid = valid_slots(tokens, a.cache.capacity);
  const int64_t first_visible = first_visible_position(tokens, a.window);
  const int64_t lo = first_visible > tokens - valid ? first_visible : tokens - valid;
  // At most `valid` <= capacity positions are visible: 32-bit arithmetic from here on.
  const int visible = tokens > lo ? static_cast<int>(tokens - lo) : 0;
  const int per_split = ((visible + a.splits - 1) / a.splits + tile - 1) / tile * tile;
  const int begin = split * per_split;
  const int end = visible < begin + per_split ? visible : begin + per_split;
  return {lo + begin, end > begin ? end - begin : 0};
}
__device__ inline SplitPositions split_positions(const DecodeLaunch& a, int b, int split, int tile) {
  return split_positions_at(a, a.cache.tokens[b], split, tile);
}

// The rotation's sign words for a warp's slots: slot j holds coordinates 32 j + lane, so word j
// (the same for all lanes). Loaded before finalize_head() rather than inside its store loop, so
// that their round trip can overlap the inverse transform.
template <int D, bool Rotated>
__device__ __forceinline__ void load_sign_words(const DecodeLaunch& a, int kv_head, uint32_t (&w)[kWarpSlots<D>]) {
  const uint32_t* signs = head_signs(a.cache, kv_head);
  static_for<kWarpSlots<D>>([&](auto J) { w[decltype(J)::value] = Rotated ? signs[decltype(J)::value] : 0u; });
}

// Normalises one head's unnormalised value-domain output x (a warp's slots, kWarpSlots<D>), rotates
// it back for tq values (x = S H^T r, S from load_sign_words) and stores it as query head q_head of
// sequence b.
template <int D, bool Rotated>
__device__ __forceinline__ void finalize_head(float (&x)[kWarpSlots<D>], float m, float d, int q_head, int b,
                                              const DecodeLaunch& a, const uint32_t (&sign_word)[kWarpSlots<D>]) {
  const int lane = threadIdx.x & 31;
  const float f = output_factor(m, d, a.sinks, q_head);
  static_for<kWarpSlots<D>>([&](auto J) { x[decltype(J)::value] *= f; });
  if constexpr (Rotated) warp_fwht_unnormalized<D>(x);
  const std::size_t out_base = (static_cast<std::size_t>(b) * a.q_heads + q_head) * D;
  static_for<kWarpSlots<D>>([&](auto J) {
    constexpr int j = decltype(J)::value;
    const int i = lane + 32 * j;
    if (i >= D) return;
    float v = x[j];
    if constexpr (Rotated) {
      v *= warp_hadamard_norm<D>(j);
      if ((sign_word[j] >> lane) & 1u) v = -v;
    }
    store_output(a.out, out_base + i, v, a.out_type);
  });
  // DecodeParams::lse: o was summed against e^m, so the denominator (sink included) is e^m / f; with
  // nothing visible (f = 0) it is the sink's alone. From f rather than afresh from m, d and the
  // sink: that made sm_80's tq8 d = 128 kernel spill 8-16 B.
  if (a.lse != nullptr && lane == 0)
    a.lse[out_base / D] = f > 0.0f ? m - __logf(f) : (a.sinks != nullptr ? a.sinks[q_head] : -INFINITY);
}

// finalize_head() for the n_heads outputs o[g * D + i] in shared memory, one warp per head.
template <int D, bool Rotated>
__device__ inline void finalize_heads(const float* o, const float* m, const float* d, int n_heads,
                                      int first_q_head, int b, const DecodeLaunch& a, int kv_head) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (warp >= n_heads) return;
  uint32_t sign_word[kWarpSlots<D>];
  load_sign_words<D, Rotated>(a, kv_head, sign_word);
  for (int g = warp; g < n_heads; g += warps) {
    float x[kWarpSlots<D>];
    static_for<kWarpSlots<D>>([&](auto J) {
      constexpr int j = decltype(J)::value;
      x[j] = lane + 32 * j < D ? o[g * D + lane + 32 * j] : 0.0f;
    });
    finalize_head<D, Rotated>(x, m[g], d[g], first_q_head + g, b, a, sign_word);
  }
}

// Log-sum-exp merge of all splits' partials of query heads [h0, h0 + n_heads) of sequence b,
// then finalize_head(). Each head gets up to warps / n_heads warps ("parts", a power of two),
// which take interleaved batches of U splits; their sums meet in `scratch` (shared memory,
// n_heads x parts x (D + 1) floats). Partials come from other blocks of this launch: the loads
// bypass L1 (ld.global.cg), ordered after them by count_split_done's acquire. All threads must
// call it.
template <int D, bool Rotated>
__device__ inline void merge_splits(int n_heads, int h0, int b, const DecodeLaunch& a, int kv_head, float* scratch) {
  constexpr int NJ = kWarpSlots<D>;
  constexpr int U = NJ <= 2 ? 16 : NJ <= 4 ? 8 : NJ <= 8 ? 4 : 2;  // partial rows in flight per lane
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  // parts: the largest power of two with n_heads x parts <= warps (for 8 warps, warps / n_heads),
  // so that g and part come from shifts: the divisions by n_heads cost ~60 instructions (r154).
  int parts_log2 = 0;
  while ((n_heads << (parts_log2 + 1)) <= warps) ++parts_log2;
  const int parts = 1 << parts_log2;
  const int g = warp >> parts_log2, part = warp & (parts - 1);
  const bool active = g < n_heads;
  float acc[NJ] = {}, m = -INFINITY, den = 0.0f;
  if (active && a.splits <= parts * U && a.splits <= 32) {
    // Each part's splits (part, part + parts, ...) fit one batch: their (m, d) pairs (lane u) and
    // rows go out together, one round trip to L2 (r151: the rows waited for the max before).
    const std::size_t part0 = (static_cast<std::size_t>(b) * a.q_heads + h0 + g) * a.splits;
    const int own = lane * parts + part;  // lane u < U: (m, d) of split part + u * parts
    float2 split_md = make_float2(-INFINITY, 0.0f);
    if (lane < U && own < a.splits) split_md = __ldcg(reinterpret_cast<const float2*>(a.part_md) + part0 + own);
    float2 any_md = make_float2(-INFINITY, 0.0f);  // lane s: split s, for the max over all splits
    if (lane < a.splits) any_md = __ldcg(reinterpret_cast<const float2*>(a.part_md) + part0 + lane);
    const float* po = a.part_o + part0 * D + lane;
    float v[U][NJ];
    static_for<U>([&](auto UI) {
      constexpr int u = decltype(UI)::value;
      const bool row = u * parts + part < a.splits;
      static_for<NJ>([&](auto J) {
        constexpr int j = decltype(J)::value;
        const float* src = po + static_cast<std::size_t>(u * parts + part) * D + 32 * j;
        v[u][j] = row && lane + 32 * j < D ? __ldcg(src) : 0.0f;
      });
    });
    m = warp_max(any_md.x);
    const float w = split_md.x == -INFINITY ? 0.0f : expf(split_md.x - m);
    den = warp_sum(w * split_md.y);
    static_for<U>([&](auto UI) {
      constexpr int u = decltype(UI)::value;
      const float wu = __shfl_sync(0xffffffffu, w, u);
      static_for<NJ>([&](auto J) { acc[decltype(J)::value] += wu * v[u][decltype(J)::value]; });
    });
  } else if (active) {
    const std::size_t part0 = (static_cast<std::size_t>(b) * a.q_heads + h0 + g) * a.splits;
    const float2* md = reinterpret_cast<const float2*>(a.part_md) + part0;
    // Lane u holds (m, d) of split s0 + u; the first 32 are loaded once for the max and the sums.
    float2 first = make_float2(-INFINITY, 0.0f);
    if (lane < a.splits) first = __ldcg(md + lane);
    m = first.x;
    for (int s = lane + 32; s < a.splits; s += 32) m = fmaxf(m, __ldcg(md + s).x);
    m = warp_max(m);
    for (int s0 = 0; s0 < a.splits; s0 += 32) {
      float2 split_md = first;
      if (s0 > 0) split_md = s0 + lane < a.splits ? __ldcg(md + s0 + lane) : make_float2(-INFINITY, 0.0f);
      // An empty split (m = -inf) weighs 0. Each part counts the denominators of its own batches.
      const int n = min(32, a.splits - s0);
      const bool mine = ((s0 + lane) / U) % parts == part;
      const float w = split_md.x == -INFINITY ? 0.0f : expf(split_md.x - m);
      if (mine) den += w * split_md.y;
      const float* po = a.part_o + (part0 + s0) * D;
      for (int u0 = 0; u0 < n; u0 += U) {
        if (((s0 + u0) / U) % parts != part) continue;  // another part's batch
        float v[U][NJ];
        static_for<U>([&](auto UI) {
          constexpr int u = decltype(UI)::value;
          static_for<NJ>([&](auto J) {
            constexpr int j = decltype(J)::value;
            const int i = lane + 32 * j;
            v[u][j] = u0 + u < n && i < D ? __ldcg(po + static_cast<std::size_t>(u0 + u) * D + i) : 0.0f;
          });
        });
        static_for<U>([&](auto UI) {
          constexpr int u = decltype(UI)::value;
          const float wu = __shfl_sync(0xffffffffu, w, (u0 + u) & 31);
          static_for<NJ>([&](auto J) { acc[decltype(J)::value] += wu * v[u][decltype(J)::value]; });
        });
      }
    }
    den = warp_sum(den);
  }
  if (parts > 1) {  // the parts of a head add up in shared memory; part 0 finalises
    float* mine = scratch + (g * parts + part) * (D + 1);
    if (active && part > 0) {
      static_for<NJ>([&](auto J) {
        const int i = lane + 32 * decltype(J)::value;
        if (i < D) mine[i] = acc[decltype(J)::value];
      });
      if (lane == 0) mine[D] = den;
    }
    __syncthreads();
    if (active && part == 0)
      for (int p = 1; p < parts; ++p) {
        const float* other = mine + p * (D + 1);
        static_for<NJ>([&](auto J) {
          const int i = lane + 32 * decltype(J)::value;
          if (i < D) acc[decltype(J)::value] += other[i];
        });
        den += other[D];
      }
  }
  if (active && part == 0) {
    uint32_t sign_word[NJ];
    load_sign_words<D, Rotated>(a, kv_head, sign_word);
    finalize_head<D, Rotated>(acc, m, den, h0 + g, b, a, sign_word);
  }
}

// The end of a block. Its unnormalised value-domain outputs o[g * D + i] (shared memory, written
// by all threads before the call) with their running max m (natural-log units) and denominator d
// are finalised here with one split. With several splits the block stores its outputs as this
// split's partial (part_o), unless PartialsStored (the caller wrote them there already), and m and
// d; then the last block of (sequence, KV head, group chunk) to finish merges all splits: a
// semaphore in the workspace counts the finished splits (as split-K GEMMs do), so no second
// launch is needed, and the last block resets it to 0 for the next call or graph replay.
// `scratch`: shared memory for merge_splits(), not overlapping o, m and d. All threads must call it.
template <int D, bool Rotated, bool PartialsStored>
__device__ inline void finish_decode_block(const float* o, const float* m, const float* d, int n_heads, int h0,
                                           int b, const DecodeLaunch& a, int kv_head, int split, float* scratch) {
  timeline_mark(a, 5);
  if (a.splits == 1) {
    __syncthreads();
    finalize_heads<D, Rotated>(o, m, d, n_heads, h0, b, a, kv_head);
    timeline_mark(a, 6);
    return;
  }
  const std::size_t part0 = (static_cast<std::size_t>(b) * a.q_heads + h0) * a.splits + split;
  if constexpr (!PartialsStored) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < n_heads * D; idx += blockDim.x) {
      const int g = idx / D, i = idx - g * D;
      a.part_o[(part0 + static_cast<std::size_t>(g) * a.splits) * D + i] = o[idx];
    }
  }
  if (static_cast<int>(threadIdx.x) < n_heads) {
    a.part_md[(part0 + static_cast<std::size_t>(threadIdx.x) * a.splits) * 2] = m[threadIdx.x];
    a.part_md[(part0 + static_cast<std::size_t>(threadIdx.x) * a.splits) * 2 + 1] = d[threadIdx.x];
  }
  const bool is_last =
      count_split_done(a.counters + (static_cast<std::size_t>(b) * gridDim.y + blockIdx.y), a.splits);
  timeline_mark(a, 6);
  if (!is_last) return;
  merge_splits<D, Rotated>(n_heads, h0, b, a, kv_head, scratch);
  timeline_mark(a, 7);
}

}  // namespace tqkv::cuda_detail
