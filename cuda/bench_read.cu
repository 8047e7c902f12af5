// Read-only streaming kernel for bench_cuda's read bandwidth (bench_read.hpp).
#include "bench_read.hpp"

#include <cstdint>

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

}  // namespace

cudaError_t launch_read_all(const void* data, std::size_t bytes, unsigned* sink, cudaStream_t stream) {
  int device = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, read_all_kernel, kThreads, 0);
  if (err != cudaSuccess) return err;
  read_all_kernel<<<sms * per_sm, kThreads, 0, stream>>>(static_cast<const uint4*>(data), bytes / 16, sink);
  return cudaGetLastError();
}

}  // namespace tqkv::bench
