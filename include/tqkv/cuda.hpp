// The CUDA backend's public part: a KV cache in device memory with quantize-on-append kernels.
// Plain C++ (no CUDA headers); streams are cudaStream_t passed as void* (null = default stream).
// Only available when the build has CUDA (TQKV_HAVE_CUDA); decode attention on a device cache goes
// through tqkv::decode_attention (attention.hpp) with view() and device pointers.
//
// Token counters live in device memory. An append reads the position of its first token from
// the device counter of the sequence and a second kernel advances it, both on the caller's
// stream: a CUDA graph that captured an append appends at the current position on every replay.
// The host keeps a mirror of the counters for argument checks; it follows direct calls, not graph
// replays (sync_tokens() refreshes it).
//
// On Hopper (sm_90) and later both append kernels are programmatic dependent launches, as decode
// (attention.hpp): each may start while the kernel before it on the stream finishes and waits for
// that kernel's completion before it reads the inputs or writes the cache. The counter kernel
// reads the counters before that wait, which holds as long as every kernel between the previous
// append and this one waits for its predecessor before it completes (a kernel launched without
// the programmatic attribute always does). A decode step's append (append_step, one token) costs
// 4.5 us over the decode alone at batch 1, 4k (r213, H100; 8.6 us with plain launches, r120).
//
// Decode with params.splits = 0 sizes its grid to the device: one wave of blocks, at batch 1
// often one block per SM (tq4 at head_dim 128 also at small batches, e.g. batch 8 with 8 KV
// heads). A grid of at most one block per SM may take kernels that reserve more
// than half of each SM's shared memory (tq3/tq4 at head_dim <= 128, two tiles per loop
// iteration): kernels on other streams then do not share those SMs while it runs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "tqkv/cache.hpp"
#include "tqkv/layout.hpp"

namespace tqkv::cuda {

// Element type of the keys and values given to append.
enum class InputType : uint8_t { f32 = 0, f16 = 1, bf16 = 2 };

// Number of visible CUDA devices (0 without a driver or a GPU; never throws).
int device_count() noexcept;

// The cache's bytes copied back to the host (for tests and tools), in CacheView layout.
struct HostCacheBytes {
  std::vector<uint8_t> k_codes, v_codes;
  std::vector<ScalePair> scales;
  std::vector<int64_t> tokens;
};

// One layer's cache for a batch of sequences in device memory, in exactly the CacheView layout
// of KvCache with the same CacheConfig (same rotations, codebooks and bytes per row).
class DeviceKvCache {
 public:
  // Allocates on the current CUDA device, empty (no tokens). Throws Error (backend_unavailable
  // without a GPU; invalid_argument for a bad config; unsupported for a head dim or format pair
  // without compiled kernels).
  explicit DeviceKvCache(const CacheConfig& config);
  ~DeviceKvCache();
  DeviceKvCache(DeviceKvCache&&) noexcept;
  DeviceKvCache& operator=(DeviceKvCache&&) noexcept;
  DeviceKvCache(const DeviceKvCache&) = delete;
  DeviceKvCache& operator=(const DeviceKvCache&) = delete;

  const CacheConfig& config() const;
  int device() const;
  // Device pointers in CacheView layout (levels included), for decode_attention.
  CacheView view() const;
  std::size_t storage_bytes() const;

  // Copies a host cache of the same config (codes, scales, token counts); synchronous.
  void upload(const KvCache& host);
  // Copies everything back; synchronous.
  HostCacheBytes download() const;

  // Appends n_tokens tokens to sequence `seq`; k, v: device [n_tokens][kv_heads][head_dim] of
  // `type`. Same bytes as KvCache::append of the same values (see cuda/append.cu for the rare
  // boundary ties). Ring mode keeps the newest `capacity` tokens of a long chunk. Throws before
  // launching on a bad argument or, outside ring mode, when the host mirror says the chunk does
  // not fit. Non-finite inputs are not detected here (no host sync): the row is left unchanged and
  // check_appends() raises.
  void append(int seq, const void* k, const void* v, int n_tokens, InputType type,
              void* stream = nullptr);
  // Appends one token to every sequence (a decode step); k, v: [batch][kv_heads][head_dim].
  void append_step(const void* k, const void* v, InputType type, void* stream = nullptr);
  // Forgets every token of sequence `seq` (device counter and mirror).
  void reset(int seq, void* stream = nullptr);

  // Tokens ever appended to `seq`, as the host mirror knows them.
  int64_t tokens(int seq) const;
  // Synchronises `stream` and reloads the host mirror from the device counters.
  void sync_tokens(void* stream = nullptr);
  // Synchronises `stream`; raises Error(non_finite) naming the first non-finite input, or
  // Error(out_of_range) for a graph-replayed append past a contiguous cache's capacity (the
  // counter saturated and the excess tokens were dropped), seen since the last check. Clears it.
  void check_appends(void* stream = nullptr);

  struct Impl;  // opaque (cuda/device_cache.cpp)

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace tqkv::cuda
