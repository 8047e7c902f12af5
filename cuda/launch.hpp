// Internal interface between the host code (validation, dispatch, workspace; plain C++) and the
// kernel launchers (.cu). Launchers check nothing a user can get wrong: the host code has already
// validated everything and raised a tqkv::Error naming the parameter. They return the CUDA status
// of the launch.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "tqkv/attention.hpp"
#include "tqkv/layout.hpp"

namespace tqkv::cuda_detail {

// Query heads one decode block serves (the register tile of the group). A larger GQA group is
// split into ceil(group / kMaxHeadsPerBlock) blocks per KV head, each reading the KV bytes once.
inline constexpr int kMaxHeadsPerBlock = 8;

// Everything one decode launch needs; all pointers are device memory.
struct DecodeLaunch {
  CacheView cache;
  const float* q = nullptr;       // [batch][q_heads][head_dim]
  void* out = nullptr;            // [batch][q_heads][head_dim] of out_type
  const float* sinks = nullptr;   // [q_heads] or null
  float* part_o = nullptr;        // [batch][q_heads][splits][head_dim] (splits > 1 only)
  float* part_md = nullptr;       // [batch][q_heads][splits][2]: running max, denominator
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
};

// Decode kernels in the build: mma (tensor cores, 8 warps, 2 stages per worker) is the shipped
// one; cuda_core (v2) stays for side-by-side timing.
enum class DecodeKernel : uint8_t { mma = 0, cuda_core = 1 };
DecodeKernel selected_decode_kernel() noexcept;
// For benchmarks and tests; not thread-safe against concurrent decode calls.
void select_decode_kernel(DecodeKernel kernel) noexcept;
// Positions a split should cover at least (the selected kernel's unit of work per block).
int decode_split_granule(int head_dim, int k_row_bytes, int v_row_bytes) noexcept;
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

// Rows in shared memory are an odd number of 16-byte units apart, so the 8 lanes of one phase of
// a 16-byte shared load that touch 8 consecutive rows hit 8 different bank groups.
constexpr int padded_row_stride(int row_bytes) {
  return (row_bytes / 16) % 2 == 0 ? row_bytes + 16 : row_bytes;
}
// Bytes of K and V rows one pipeline stage of a decode block may hold (two stages are in flight).
inline constexpr int kDecodeStageBudget = 24 * 1024;
inline constexpr int kDecodeMaxTile = 64;
inline constexpr int kDecodeMinTile = 4;  // 128 threads / 4 rows = 32 lanes per row, one warp
// Positions of one decode tile (a power of two): the split granularity.
constexpr int decode_tile_for_rows(int k_row_bytes, int v_row_bytes) {
  const int stride = padded_row_stride(k_row_bytes) + padded_row_stride(v_row_bytes);
  int tile = kDecodeMaxTile;
  while (tile > kDecodeMinTile && tile * stride > kDecodeStageBudget) tile /= 2;
  return tile;
}

// Main kernel (and, for splits > 1, the merge kernel) on `stream`.
cudaError_t launch_decode(const DecodeLaunch& launch, cudaStream_t stream);
// Resident decode blocks per SM for this shape (the split choice fills one wave with them).
cudaError_t decode_blocks_per_sm(KvFormat format, int head_dim, int* blocks);
// The log-sum-exp merge of launch.splits partials per (sequence, query head) and finalisation.
cudaError_t launch_decode_merge(const DecodeLaunch& launch, cudaStream_t stream);

// ---- append ----

enum class InputKind : uint8_t { f32 = 0, f16 = 1, bf16 = 2 };

// Where the first new token of each sequence goes is read from the device counter
// tokens[seq_begin + s] (so a captured graph appends at the current position on every replay);
// commit_tokens() advances the counters after the append kernel.
struct AppendLaunch {
  // Device cache storage (mutable view of the same layout as CacheView).
  KvFormat format{};
  int batch = 0, kv_heads = 0, head_dim = 0, capacity = 0;
  bool ring = false;
  int sign_words = 0;
  std::size_t k_row_bytes = 0, v_row_bytes = 0;
  uint8_t* k_codes = nullptr;
  float* k_scales = nullptr;
  uint8_t* v_codes = nullptr;
  float* v_scales = nullptr;
  int64_t* tokens = nullptr;
  const uint32_t* sign_bits = nullptr;
  const float* k_boundaries = nullptr;  // 2^bits - 1 floats (tq formats)
  const float* v_boundaries = nullptr;
  const float* k_levels = nullptr;      // 2^bits floats (least-squares scale)
  const float* v_levels = nullptr;
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
