// Internal interface between the host code (validation, dispatch, workspace; plain C++) and the
// kernel launchers (.cu). Launchers check nothing a user can get wrong: the host code has already
// validated everything and raised a tqkv::Error naming the parameter. They return the CUDA status
// of the launch.
#pragma once

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tqkv/attention.hpp"
#include "tqkv/layout.hpp"

namespace tqkv::cuda_detail {

// SMs of the current device: the launchers size their grids by it.
inline cudaError_t current_sm_count(int* sms) {
  int device = 0;
  const cudaError_t err = cudaGetDevice(&device);
  return err != cudaSuccess ? err : cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, device);
}

// Query heads one decode block serves (the register tile of the group). A larger GQA group is
// split into ceil(group / kMaxHeadsPerBlock) blocks per KV head, each reading the KV bytes once.
inline constexpr int kMaxHeadsPerBlock = 8;

// Everything one decode launch needs; all pointers are device memory.
struct DecodeLaunch {
  CacheView cache;
  const float* q = nullptr;       // [batch][q_heads][head_dim]
  void* out = nullptr;            // [batch][q_heads][head_dim] of out_type
  const float* sinks = nullptr;   // [q_heads] or null
  float* lse = nullptr;           // [batch][q_heads] or null (DecodeParams::lse)
  float* part_o = nullptr;        // [batch][q_heads][splits][head_dim] (splits > 1 only)
  float* part_md = nullptr;       // [batch][q_heads][splits][2]: running max, denominator
  // [batch][kv_heads * head_chunks]: splits finished so far (splits > 1 only). Zero before the
  // launch; the block that finishes last merges and sets it back to zero.
  unsigned* counters = nullptr;
  // Benchmarks only (set_decode_timeline): per block, %globaltimer at each kTimelinePhases phase.
  unsigned long long* timeline = nullptr;
  float scale = 0.0f;             // resolved logit scale (never 0 here)
  float softcap = 0.0f;
  int window = 0;
  int q_heads = 0;
  int group = 0;                  // q_heads / kv_heads
  int head_chunks = 0;            // ceil(group / kMaxHeadsPerBlock)
  int splits = 1;
  OutputType out_type = OutputType::f32;
  // Factors the tensor-core kernel multiplies the tq2/tq3/tq4 levels by before rounding them to
  // fp16 (see code_level_lambda); 1 elsewhere.
  float k_lambda = 1.0f;
  float v_lambda = 1.0f;
  // The codebook levels were written before this call by something other than the kernel just
  // before it on the stream (a DeviceKvCache's, uploaded when it was made): the kernel may read
  // them, and build its code tables, before that kernel's results are visible.
  bool codebook_settled = false;
  // The grid has at most one block per SM: kernels that need an SM alone may serve it.
  bool one_block_per_sm = false;
};

// Phases a decode block time-stamps when a timeline buffer is set: entry, query rotated, loop
// start (set-up done), loop end (worker 0), workers joined, finish start (workers merged),
// finish done (output or partial stored), split merge done (only the last block of a sequence and
// KV head; others leave 0).
inline constexpr int kTimelinePhases = 8;
// After the phases, one more value per block: 1 + the SM it ran on (%smid), written at entry.
inline constexpr int kTimelineSlots = kTimelinePhases + 1;
// For benchmarks: a device buffer of kTimelineSlots values per block of the next decode launches
// (null: off). Not thread-safe against concurrent decode calls.
void set_decode_timeline(unsigned long long* device_buffer) noexcept;
unsigned long long* decode_timeline() noexcept;
// Positions a split covers at least: 8 tiles of 16, one for each worker of a decode block.
inline constexpr int kDecodeSplitGranule = 16 * 8;
// The factor in [1, 2) that makes the fp16 roundings of lambda * level smallest (largest
// relative error over the levels). Any lambda is correct; this one is the most precise.
float code_level_lambda(const float* levels, int count) noexcept;
// lambda for device-resident levels: DeviceKvCache registers its codebooks (with their host
// values) for as long as it lives; other addresses are read back once and remembered.
void register_levels(const float* device_levels, const float* host_levels, int count);
void unregister_levels(const float* device_levels) noexcept;

// Head dims with compiled decode kernels.
inline constexpr int kDecodeHeadDims[] = {64, 80, 96, 128, 256, 512, 576};
bool decode_head_dim_built(int head_dim) noexcept;
bool decode_pair_built(KvFormat format) noexcept;

// The decode kernel on `stream` (one launch; with splits > 1 the last block of each sequence and
// KV head merges the partials).
cudaError_t launch_decode(const DecodeLaunch& launch, cudaStream_t stream);

// merge_attention_states on device arrays (merge_states.cu; arguments checked by the caller).
struct MergeStatesLaunch {
  const void* out_a = nullptr;
  const float* lse_a = nullptr;
  const void* out_b = nullptr;
  const float* lse_b = nullptr;
  void* out = nullptr;
  float* lse = nullptr;  // or null
  int rows = 0, head_dim = 0;
  OutputType type = OutputType::f32;
};
cudaError_t launch_merge_states(const MergeStatesLaunch& launch, cudaStream_t stream);
// Resident decode blocks per SM for this shape (the split choice fills one wave with them).
cudaError_t decode_blocks_per_sm(KvFormat format, int head_dim, int* blocks);
// Positions the longest sequence of a cache can show (its capacity, or the window): device
// counters are not visible to the host without a sync, so launches are sized for this.
inline int decode_reach(const CacheView& c, int window) {
  return window > 0 && window < c.capacity ? window : c.capacity;
}
// Tile pairs (has_tile_pairs, decode_mma.cuh) are taken when each of a split's 8 workers has at
// least this many tiles at the launch's reach. A worker with an odd count computes a missing
// second tile in its last iteration, as much work as a real one (masked: its weights are zero).
// r170 (tq3, pairs for every launch, against single tiles): 9/3 heads at d = 64, batch 8, 1k and
// 4k (under 3 tiles per worker) 11-14 % slower; at 8 tiles per worker d = 128 batch 1 16k -7 % and
// batch 8 4k -3 % single / +0.5 % graph steps, 32/32 heads at d = 64 batch 8 1k -2 % / +2 %; from
// 32 tiles 2-9 % faster.
inline constexpr int kPairMinTilesPerWorker = 8;
inline bool tile_pairs_pay(int reach, int splits) {
  const int parts = splits > 1 ? splits : 1;
  // A split's positions; kDecodeSplitGranule is one tile for each worker.
  return (reach + parts - 1) / parts >= kPairMinTilesPerWorker * kDecodeSplitGranule;
}
// Whether a grid of at most one block per SM of this shape takes tile pairs in blocks that have
// their SM alone on the current device (pairs_prefer_sm_alone, groups <= 4: tq4 at d <= 128 and
// tq2 at d = 128, whose pairs run only so, and tq3 at d <= 128, whose pairs reserve the SM then).
bool decode_pairs_alone(KvFormat format, int head_dim, int group) noexcept;
// Tiles the decode kernel takes per loop iteration for this launch (decode_launch.cuh): 2 where
// tile_pairs_pay(reach, splits) and a kernel with tile pairs exists, for lone blocks only if the
// grid has at most one block per SM (DecodeLaunch::one_block_per_sm); else 1.
int decode_tiles_per_iteration(KvFormat format, int head_dim, int group, int reach, int splits,
                               bool one_block_per_sm) noexcept;

// ---- append ----

enum class InputKind : uint8_t { f32 = 0, f16 = 1, bf16 = 2 };

// Code search of tq2/tq3/tq4 rows in append: a monotone float map sends z to one of
// kCodeBuckets buckets, and the grid is chosen (make_code_grid) so that no bucket holds two
// codebook boundaries. Then code = base + (z >= bound) for the bucket's one boundary (+inf if
// none) and base = the boundaries of lower buckets: exactly the count of boundaries <= z.
inline constexpr int kCodeBuckets = 64;
inline constexpr int kMaxGridBoundaries = 15;  // tq4; tq8's 255 are searched by bisection
struct CodeBucket {
  float bound;
  uint32_t base;
};
struct CodeGrid {
  float scale = 0.0f;                    // u = z scale + offset, clamped to [0, 1]
  float offset = 0.0f;
  const CodeBucket* buckets = nullptr;   // kCodeBuckets (device memory)
};
inline constexpr float kGridOrigin = 8388608.0f;     // 2^23: floats in [2^23, 2^24) step by 1
inline constexpr uint32_t kGridOriginBits = 0x4b000000u;

// The bits of t = fma(u, kCodeBuckets - 1, 2^23), u = fma(z, scale, offset) clamped to [0, 1] (NaN
// to 0, as the device's saturation does): t is 2^23 plus round((kCodeBuckets - 1) u), so its bits
// past 2^23's are the bucket, in [0, kCodeBuckets) without a clamp of its own. Monotone in z. Host
// and device agree bit for bit (fmaf is correctly rounded on both, the clamp exact). On the device
// two FFMAs, one saturating, and no integer clamp (the grid's address takes t's bits in one IMAD):
// the clamp of t's bits it replaced (VIADDMNMX on sm_90, three instructions on sm_80) held the
// origin's bits in a register (r210).
TQKV_HD uint32_t code_bucket_bits(float z, float scale, float offset) {
#ifdef __CUDA_ARCH__
  const float u = __saturatef(fmaf(z, scale, offset));
#else
  float u = fmaf(z, scale, offset);
  u = u > 0.0f ? (u < 1.0f ? u : 1.0f) : 0.0f;
#endif
  const float t = fmaf(u, static_cast<float>(kCodeBuckets - 1), kGridOrigin);
  uint32_t bits;
  memcpy(&bits, &t, sizeof bits);
  return bits;
}
TQKV_HD int code_bucket(float z, float scale, float offset) {
  return static_cast<int>(code_bucket_bits(z, scale, offset) - kGridOriginBits);
}

// The grid and its kCodeBuckets buckets (to upload) for sorted boundaries, at most
// kMaxGridBoundaries of them. Raises Error(internal) if two boundaries would share a bucket.
std::vector<CodeBucket> make_code_grid(const std::vector<float>& boundaries, CodeGrid& grid);

// Where the first new token of each sequence goes is read from the device counter
// cache.tokens[seq_begin + s] (so a captured graph appends at the current position on every
// replay); commit_tokens() advances the counters after the append kernel.
struct AppendLaunch {
  // The device cache (DeviceKvCache::view()). Its pointers are const because decode reads
  // through the view; append writes the codes, scales and counters they point to (the cache's
  // own writable allocations).
  CacheView cache;
  const float* k_boundaries = nullptr;  // 2^bits - 1 floats (tq formats)
  const float* v_boundaries = nullptr;
  CodeGrid k_grid, v_grid;              // tq2, tq3, tq4
  bool least_squares = true;
  // Input: [n_seqs][n_tokens][kv_heads][head_dim] of `input`.
  const void* k = nullptr;
  const void* v = nullptr;
  InputKind input = InputKind::f32;
  int seq_begin = 0, n_seqs = 0, n_tokens = 0;
  // Device record of the first non-finite input (see AppendStatus in append.cu).
  void* status = nullptr;
};

cudaError_t launch_append(const AppendLaunch& launch, cudaStream_t stream);

// The longest chunk (tokens per sequence) that the tensor-core append (head_dim 128) encodes with
// each tile's keys and values on two warps of one wave of blocks; longer chunks loop over tiles.
cudaError_t append_sides_apart_max_tokens(int kv_heads, int n_seqs, int* tokens);

// Bytes of the device-side append status record.
std::size_t append_status_bytes() noexcept;
// The first append failure recorded on the device since the record was last cleared.
struct AppendFailure {
  enum Kind { none, non_finite, overflow } kind = none;
  int seq = 0;
  int64_t position = 0;  // non_finite: the token's position; overflow: the tokens it would hold
  int kv_head = 0;
  bool is_value = false;
};
// Reads a copied-back status record (append_status_bytes() bytes).
AppendFailure append_status_read(const void* host_record) noexcept;

}  // namespace tqkv::cuda_detail
