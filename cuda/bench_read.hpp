// Reference kernels for bench_cuda: what the card and the simplest kernel structures can do with a
// decode step's bytes, without any decode arithmetic.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace tqkv::bench {

// Reads `bytes` (a multiple of 16) at `data` once, on `stream`; `sink` (one device unsigned) keeps
// the loads alive: the card's read bandwidth, the reference a read-only decode step is measured against.
cudaError_t launch_read_all(const void* data, std::size_t bytes, unsigned* sink, cudaStream_t stream);

// A kernel that does nothing, on `blocks` blocks of 32 threads: the launch floor of a step.
cudaError_t launch_empty(int blocks, cudaStream_t stream);

// One thread that waits `microseconds` of wall time and touches no memory: queued before a timed
// call, it holds the stream while the host enqueues the call, so that the time between the call's
// events is the GPU's work and not the host's launch latency.
cudaError_t launch_wait(double microseconds, cudaStream_t stream);

// The split-K skeleton of a decode step with no arithmetic (bench_cuda --floors): `pairs`
// (sequence, KV head) pairs of `context` positions, each position `position_bytes[s]` bytes in each
// of `streams` sections (K codes, V codes, the ScalePairs; pair p's positions contiguous from
// base[s] + p * context * position_bytes[s]). Block (pair, split) streams its share of positions
// with 16-byte loads, stores a partial of kSplitPartialBytes (what a group of 4 query heads at
// d = 128 stores: 4 x 128 outputs and a maximum and sum per head), and the last split of a pair to
// finish (a counter per pair) sums the partials and stores the pair's output, as the decode
// kernel's in-kernel split merge does.
inline constexpr int kSplitPartialFloats = 4 * 128 + 16;
inline constexpr std::size_t kSplitPartialBytes = kSplitPartialFloats * sizeof(float);
struct SplitReadProbe {
  const uint8_t* base[4] = {};
  std::size_t position_bytes[4] = {};
  int streams = 0;
  int context = 0;  // a multiple of 16
  int pairs = 0;
  int splits = 1;
  float* partials = nullptr;    // pairs * splits * kSplitPartialFloats
  unsigned* counters = nullptr; // pairs, zero before the first launch (the last split resets its own)
  float* out = nullptr;         // pairs * kSplitPartialFloats
  bool merge = true;            // false: the partials are stored and nothing merges them (the streaming alone)
};
// threads: 256 or 512 per block; in_flight: 4 or 8 independent 16-byte loads per thread.
cudaError_t launch_split_read(const SplitReadProbe& probe, int threads, int in_flight, cudaStream_t stream);

// The same skeleton with the decode kernel's streaming structure (16-position tiles dealt round-robin
// to warps, each warp's tiles copied into its own shared-memory stages, the oldest waited for):
// W warps per block, S stages per warp, by 16-byte cp.async of every lane or one bulk copy
// (cp.async.bulk, an mbarrier per stage) per section. The decode kernel (tq4, d = 128) is 8 warps,
// 2 stages, cp.async: its 64 KB code table leaves no room for a third stage at 2 blocks per SM.
// *_2bpsm: shared memory padded so that two blocks share an SM at most, as the decode kernel's.
enum class TiledCopies {
  cp_async_8w2s,
  cp_async_8w3s,
  bulk_8w2s,
  bulk_8w3s,
  bulk_8w6s,
  cp_async_16w3s,
  cp_async_8w2s_2bpsm,
  cp_async_8w3s_2bpsm,
  cp_async_8w4s_2bpsm
};
inline constexpr TiledCopies kAllTiledCopies[] = {
    TiledCopies::cp_async_8w2s,       TiledCopies::cp_async_8w3s,       TiledCopies::bulk_8w2s,
    TiledCopies::bulk_8w3s,           TiledCopies::bulk_8w6s,           TiledCopies::cp_async_16w3s,
    TiledCopies::cp_async_8w2s_2bpsm, TiledCopies::cp_async_8w3s_2bpsm, TiledCopies::cp_async_8w4s_2bpsm};
inline constexpr const char* tiled_copies_name(TiledCopies c) {
  switch (c) {
    case TiledCopies::cp_async_8w2s: return "cp.async 8 warps 2 stages";
    case TiledCopies::cp_async_8w3s: return "cp.async 8 warps 3 stages";
    case TiledCopies::bulk_8w2s: return "bulk 8 warps 2 stages";
    case TiledCopies::bulk_8w3s: return "bulk 8 warps 3 stages";
    case TiledCopies::bulk_8w6s: return "bulk 8 warps 6 stages";
    case TiledCopies::cp_async_8w2s_2bpsm: return "cp.async 8 warps 2 stages, 2 blocks/SM";
    case TiledCopies::cp_async_8w3s_2bpsm: return "cp.async 8 warps 3 stages, 2 blocks/SM";
    case TiledCopies::cp_async_8w4s_2bpsm: return "cp.async 8 warps 4 stages, 2 blocks/SM";
    default: return "cp.async 16 warps 3 stages";
  }
}
// cudaErrorInvalidConfiguration (nothing launched) when the stages exceed a block's shared memory
// or, for bulk copies, the device is older than sm_90.
cudaError_t launch_tiled_read(const SplitReadProbe& probe, TiledCopies copies, cudaStream_t stream);

}  // namespace tqkv::bench
