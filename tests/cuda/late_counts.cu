// See late_counts.hpp.
#include "late_counts.hpp"

#include "device_common.cuh"

namespace tqkv::test {
namespace {

using cuda_detail::allow_next_grid;
using cuda_detail::global_timer_ns;

__global__ void late_counts_kernel(int64_t* tokens, LateCounts counts, unsigned long long delay_ns,
                                   unsigned long long* written_at) {
  allow_next_grid();  // the next kernel's blocks may start now
  const unsigned long long start = global_timer_ns();
  unsigned long long now = start;
  while (now - start < delay_ns) now = global_timer_ns();
  if (threadIdx.x == 0) *written_at = now;
  for (int i = threadIdx.x; i < counts.n; i += blockDim.x) tokens[i] = counts.values[i];
}

__global__ void entry_time_kernel(unsigned long long* entered_at) {
  if (threadIdx.x == 0) *entered_at = global_timer_ns();
}

}  // namespace

cudaError_t programmatic_launch_overlaps(bool* overlaps) {
  *overlaps = false;
  unsigned long long* times = nullptr;  // [0]: the first kernel's write, [1]: the second's entry
  cudaStream_t stream = nullptr;
  cudaError_t err = cudaMalloc(reinterpret_cast<void**>(&times), 2 * sizeof(unsigned long long));
  if (err == cudaSuccess) err = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  // Twice: the first launch of each kernel may wait for its module to load (lazy loading).
  unsigned long long t[2] = {0, 0};
  for (int round = 0; round < 2 && err == cudaSuccess; ++round) {
    err = write_counts_late(nullptr, LateCounts{}, 200000, times, stream);
    if (err == cudaSuccess) {
      cudaLaunchAttribute attr{};
      attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
      attr.val.programmaticStreamSerializationAllowed = 1;
      cudaLaunchConfig_t config{};
      config.gridDim = dim3(1);
      config.blockDim = dim3(32);
      config.stream = stream;
      config.attrs = &attr;
      config.numAttrs = 1;
      err = cudaLaunchKernelEx(&config, entry_time_kernel, times + 1);
    }
    if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
    if (err == cudaSuccess) err = cudaMemcpy(t, times, sizeof(t), cudaMemcpyDeviceToHost);
  }
  if (err == cudaSuccess) *overlaps = t[1] < t[0];
  if (stream != nullptr) cudaStreamDestroy(stream);
  if (times != nullptr) cudaFree(times);
  return err;
}

cudaError_t write_counts_late(int64_t* tokens, const LateCounts& counts, unsigned long long delay_ns,
                              unsigned long long* written_at, cudaStream_t stream) {
  if (counts.n < 0 || counts.n > kMaxLateCounts) return cudaErrorInvalidValue;
  late_counts_kernel<<<1, 32, 0, stream>>>(tokens, counts, delay_ns, written_at);
  return cudaGetLastError();
}

}  // namespace tqkv::test
