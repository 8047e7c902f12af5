// Reference kernels for bench_cuda (bench_read.hpp).
#include "bench_read.hpp"

#include <algorithm>
#include <cstdint>

#include "device_common.cuh"
#include "launch.hpp"

namespace tqkv::bench {
namespace {

constexpr int kThreads = 512;
// Independent 16-byte loads each thread keeps in flight per iteration (hides HBM latency).
constexpr int kLoadsInFlight = 4;

__global__ void read_all_kernel(const uint4* __restrict__ data, std::size_t n, unsigned* __restrict__ sink) {
  const std::size_t stride = std::size_t(gridDim.x) * blockDim.x;
  std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  unsigned acc = 0;
  for (; i + (kLoadsInFlight - 1) * stride < n; i += kLoadsInFlight * stride) {
    uint4 v[kLoadsInFlight];
#pragma unroll
    for (int j = 0; j < kLoadsInFlight; ++j) v[j] = data[i + j * stride];
#pragma unroll
    for (int j = 0; j < kLoadsInFlight; ++j) acc ^= v[j].x ^ v[j].y ^ v[j].z ^ v[j].w;
  }
  for (; i < n; i += stride) acc ^= data[i].x ^ data[i].y ^ data[i].z ^ data[i].w;
  // A store the compiler cannot prove dead keeps every load; it (almost) never happens.
  if (acc == 0x9e3779b9u) *sink = acc;
}

__global__ void empty_kernel() {}

__global__ void wait_kernel(uint64_t ns) {
  const uint64_t start = cuda_detail::global_timer_ns();
  while (cuda_detail::global_timer_ns() - start < ns) __nanosleep(1000);
}

// The (sequence, KV head) pair and the positions [first, last) block blockIdx.x streams: the pair's
// context cut into p.splits chunks of whole 16-position tiles.
struct BlockRange {
  int pair, split, first, last;
};
__device__ __forceinline__ BlockRange block_range(const SplitReadProbe& p) {
  BlockRange r;
  r.pair = blockIdx.x / p.splits;
  r.split = blockIdx.x % p.splits;
  const int chunk = ((p.context + p.splits - 1) / p.splits + 15) / 16 * 16;
  r.first = min(p.context, r.split * chunk);
  r.last = min(p.context, r.first + chunk);
  return r;
}

// The 16-byte word `i` of a block's range over the streams (`ends`: running word counts).
__device__ __forceinline__ uint4 range_word(const uint4* const (&at)[4], const std::size_t (&ends)[4], std::size_t i) {
  // Selects rather than an index, so that `at` and `ends` stay in registers.
  const uint4* w = i < ends[0] ? at[0] + i
                   : i < ends[1] ? at[1] + (i - ends[0])
                   : i < ends[2] ? at[2] + (i - ends[1])
                                 : at[3] + (i - ends[2]);
  return __ldcs(w);
}

// A block's end of a step: every load reaches its partial (the block's xor: a warp reduction, then
// the warps' words); then the last split of the pair to finish sums the partials (a counter per
// pair), as the decode kernel's in-kernel split merge does.
template <int kBlockThreads>
__device__ __forceinline__ void store_partial_and_merge(const SplitReadProbe& p, int pair, int split, unsigned acc) {
  __shared__ unsigned warp_acc[kBlockThreads / 32];
  acc = __reduce_xor_sync(0xffffffffu, acc);
  if (threadIdx.x % 32 == 0) warp_acc[threadIdx.x / 32] = acc;
  __syncthreads();
  acc = 0;
#pragma unroll
  for (int w = 0; w < kBlockThreads / 32; ++w) acc ^= warp_acc[w];
  constexpr int kVectors = kSplitPartialFloats / 4;
  const float value = static_cast<float>(acc & 0xffff) + threadIdx.x;
  float4* out = reinterpret_cast<float4*>(p.out) + std::size_t(pair) * kVectors;
  if (p.splits == 1) {
    if (threadIdx.x < kVectors) out[threadIdx.x] = make_float4(value, value, value, value);
    return;
  }
  float4* partials = reinterpret_cast<float4*>(p.partials) + std::size_t(pair) * p.splits * kVectors;
  if (threadIdx.x < kVectors) partials[split * kVectors + threadIdx.x] = make_float4(value, value, value, value);
  if (!p.merge) return;
  if (!cuda_detail::count_split_done(&p.counters[pair], p.splits)) return;
  if (threadIdx.x < kVectors) {
    float4 sum = make_float4(0, 0, 0, 0);
    int s = 0;
    for (; s + 3 < p.splits; s += 4) {
      float4 v[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = __ldcg(partials + (s + j) * kVectors + threadIdx.x);
#pragma unroll
      for (int j = 0; j < 4; ++j) sum = make_float4(sum.x + v[j].x, sum.y + v[j].y, sum.z + v[j].z, sum.w + v[j].w);
    }
    for (; s < p.splits; ++s) {
      const float4 v = __ldcg(partials + s * kVectors + threadIdx.x);
      sum = make_float4(sum.x + v.x, sum.y + v.y, sum.z + v.z, sum.w + v.w);
    }
    out[threadIdx.x] = sum;
  }
}

template <int kBlockThreads, int kInFlight>
__global__ void __launch_bounds__(kBlockThreads) split_read_kernel(const SplitReadProbe p) {
  const auto [pair, split, first, last] = block_range(p);
  const uint4* at[4] = {};
  std::size_t ends[4] = {};
  std::size_t words = 0;
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    if (s < p.streams) {
      at[s] = reinterpret_cast<const uint4*>(p.base[s] + (std::size_t(pair) * p.context + first) * p.position_bytes[s]);
      words += std::size_t(last - first) * p.position_bytes[s] / 16;
    }
    ends[s] = words;
  }
  unsigned acc = 0;
  std::size_t i = threadIdx.x;
  for (; i + (kInFlight - 1) * kBlockThreads < words; i += kInFlight * kBlockThreads) {
    uint4 v[kInFlight];
#pragma unroll
    for (int j = 0; j < kInFlight; ++j) v[j] = range_word(at, ends, i + j * kBlockThreads);
#pragma unroll
    for (int j = 0; j < kInFlight; ++j) acc ^= v[j].x ^ v[j].y ^ v[j].z ^ v[j].w;
  }
  for (; i < words; i += kBlockThreads) {
    const uint4 v = range_word(at, ends, i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }

  store_partial_and_merge<kBlockThreads>(p, pair, split, acc);
}


// Bytes of one 16-position tile over the sections (a stage of the tiled skeleton).
__host__ __device__ inline int tile_bytes(const SplitReadProbe& p) {
  int bytes = 0;
#pragma unroll
  for (int s = 0; s < 4; ++s) bytes += s < p.streams ? 16 * static_cast<int>(p.position_bytes[s]) : 0;
  return bytes;
}

// The decode kernel's streaming structure without its arithmetic: 16-position tiles dealt
// round-robin to the block's warps, each warp copying its tiles (K codes, V codes and the scales of
// 16 positions) into its own kStages shared-memory stages and waiting for the oldest: kStages - 1
// tiles in flight per warp while it reads one. kBulk: one lane issues a bulk copy per section
// (cp.async.bulk, completion counted on an mbarrier per stage) instead of 16-byte cp.async by all
// lanes.
template <int kWarps, int kStages, bool kBulk>
__global__ void __launch_bounds__(kWarps * 32) tiled_read_kernel(const SplitReadProbe p) {
  extern __shared__ __align__(128) uint8_t stages[];
  __shared__ __align__(8) uint64_t full[kWarps][kStages];  // bulk copies only
  (void)full;
  constexpr int kTile = 16;
  const auto [pair, split, first, last] = block_range(p);
  const int n_tiles = (last - first) / kTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int my_tiles = n_tiles > warp ? (n_tiles - warp + kWarps - 1) / kWarps : 0;
  const int stage_bytes = tile_bytes(p);
  uint8_t* mine = stages + warp * kStages * stage_bytes;
#if __CUDA_ARCH__ < 900
  if constexpr (kBulk) return;  // bulk copies and mbarrier transactions are sm_90 (the host does not launch these)
#else
  if constexpr (kBulk) {
    if (lane < kStages) {
      const unsigned bar = static_cast<unsigned>(__cvta_generic_to_shared(&full[warp][lane]));
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bar));
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    __syncwarp();
  }
#endif
  auto load_tile = [&](int i) {
    const int tile = warp + i * kWarps;
    uint8_t* st = mine + (i % kStages) * stage_bytes;
    [[maybe_unused]] unsigned bar = 0;
#if __CUDA_ARCH__ >= 900
    if (kBulk && lane == 0) {
      bar = static_cast<unsigned>(__cvta_generic_to_shared(&full[warp][i % kStages]));
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // the stage was read by the generic proxy
      asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(stage_bytes) : "memory");
    }
#endif
    int off = 0;
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      if (s >= p.streams) break;
      const int bytes = kTile * static_cast<int>(p.position_bytes[s]);
      const uint8_t* src = p.base[s] + (std::size_t(pair) * p.context + first + tile * kTile) * p.position_bytes[s];
      if constexpr (kBulk) {
#if __CUDA_ARCH__ >= 900
        if (lane == 0) {
          const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(st + off));
          asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
                       "l"(src), "r"(bytes), "r"(bar)
                       : "memory");
        }
#endif
      } else {
        for (int o = lane * 16; o < bytes; o += 32 * 16) cuda_detail::cp_async16(st + off + o, src + o);
      }
      off += bytes;
    }
  };
  auto wait_tile = [&](int i) {
    if constexpr (kBulk) {
#if __CUDA_ARCH__ >= 900
      const unsigned bar = static_cast<unsigned>(__cvta_generic_to_shared(&full[warp][i % kStages]));
      const unsigned parity = (i / kStages) & 1;
      asm volatile(
          "{\n .reg .pred done;\n wait:\n"
          " mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
          " @!done bra wait;\n}" ::"r"(bar),
          "r"(parity)
          : "memory");
#endif
    } else {
      cuda_detail::cp_async_wait<kStages - 1>();
      __syncwarp();
    }
  };
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < my_tiles) load_tile(i);
    if constexpr (!kBulk) cuda_detail::cp_async_commit();
  }
  unsigned acc = 0;
  for (int i = 0; i < my_tiles; ++i) {
    if (i + kStages - 1 < my_tiles) load_tile(i + kStages - 1);
    if constexpr (!kBulk) cuda_detail::cp_async_commit();
    wait_tile(i);
    const uint8_t* st = mine + (i % kStages) * stage_bytes;
    acc ^= reinterpret_cast<const unsigned*>(st)[lane] ^ reinterpret_cast<const unsigned*>(st + stage_bytes)[-1 - lane];
    __syncwarp();  // the stage is read before a later load_tile overwrites it
  }
  if constexpr (!kBulk) cuda_detail::cp_async_wait<0>();
  store_partial_and_merge<kWarps * 32>(p, pair, split, acc);
}

// kMinSmem: shared memory per block at least (bytes), to hold the occupancy to the decode kernel's
// (its code tables and query take ~70 KB besides the stages: two 8-warp blocks per SM).
template <int kWarps, int kStages, bool kBulk, int kMinSmem = 0>
cudaError_t launch_tiled(const SplitReadProbe& probe, cudaStream_t stream) {
  const int smem = std::max(kWarps * kStages * tile_bytes(probe), kMinSmem);
  int device = 0, most = 0, major = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&most, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err != cudaSuccess) return err;
  // Not run: stages beyond a block's shared memory (d = 512 at 6 stages), bulk copies before sm_90.
  if (smem > most || (kBulk && major < 9)) return cudaErrorInvalidConfiguration;
  err = cudaFuncSetAttribute(tiled_read_kernel<kWarps, kStages, kBulk>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  tiled_read_kernel<kWarps, kStages, kBulk><<<probe.pairs * probe.splits, kWarps * 32, smem, stream>>>(probe);
  return cudaGetLastError();
}
}  // namespace

cudaError_t launch_read_all(const void* data, std::size_t bytes, unsigned* sink, cudaStream_t stream) {
  int sms = 0, per_sm = 0;
  cudaError_t err = cuda_detail::current_sm_count(&sms);
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, read_all_kernel, kThreads, 0);
  if (err != cudaSuccess) return err;
  read_all_kernel<<<sms * per_sm, kThreads, 0, stream>>>(static_cast<const uint4*>(data), bytes / 16, sink);
  return cudaGetLastError();
}

cudaError_t launch_tiled_read(const SplitReadProbe& probe, TiledCopies copies, cudaStream_t stream) {
  switch (copies) {
    case TiledCopies::cp_async_8w2s: return launch_tiled<8, 2, false>(probe, stream);
    case TiledCopies::cp_async_8w3s: return launch_tiled<8, 3, false>(probe, stream);
    case TiledCopies::bulk_8w2s: return launch_tiled<8, 2, true>(probe, stream);
    case TiledCopies::bulk_8w3s: return launch_tiled<8, 3, true>(probe, stream);
    case TiledCopies::bulk_8w6s: return launch_tiled<8, 6, true>(probe, stream);
    case TiledCopies::cp_async_8w2s_2bpsm: return launch_tiled<8, 2, false, 100 * 1024>(probe, stream);
    case TiledCopies::cp_async_8w3s_2bpsm: return launch_tiled<8, 3, false, 100 * 1024>(probe, stream);
    case TiledCopies::cp_async_8w4s_2bpsm: return launch_tiled<8, 4, false, 100 * 1024>(probe, stream);
    default: return launch_tiled<16, 3, false>(probe, stream);
  }
}

cudaError_t launch_empty(int blocks, cudaStream_t stream) {
  empty_kernel<<<blocks, 32, 0, stream>>>();
  return cudaGetLastError();
}

cudaError_t launch_wait(double microseconds, cudaStream_t stream) {
  wait_kernel<<<1, 1, 0, stream>>>(static_cast<uint64_t>(microseconds * 1e3));
  return cudaGetLastError();
}

cudaError_t launch_split_read(const SplitReadProbe& probe, int threads, int in_flight, cudaStream_t stream) {
  const int blocks = probe.pairs * probe.splits;
  if (threads == 256 && in_flight == 4)
    split_read_kernel<256, 4><<<blocks, 256, 0, stream>>>(probe);
  else if (threads == 256)
    split_read_kernel<256, 8><<<blocks, 256, 0, stream>>>(probe);
  else if (in_flight == 4)
    split_read_kernel<512, 4><<<blocks, 512, 0, stream>>>(probe);
  else
    split_read_kernel<512, 8><<<blocks, 512, 0, stream>>>(probe);
  return cudaGetLastError();
}

}  // namespace tqkv::bench
