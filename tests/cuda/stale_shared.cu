// Fills the shared memory of every SM with a NaN pattern, so that a kernel launched next that
// reads shared memory it never wrote (a stale copy stage) sees NaN instead of a previous kernel's
// finite leftovers. Shared memory is not cleared between kernels, so this is how a test makes
// such a read visible.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "stale_shared.hpp"

namespace tqkv::test {
namespace {

__global__ void fill_shared(uint32_t pattern, int words) {
  extern __shared__ uint32_t shared[];
  volatile uint32_t* s = shared;  // the stores are never read back here: volatile keeps them
  for (int i = threadIdx.x; i < words; i += blockDim.x) s[i] = pattern;
}

}  // namespace

cudaError_t fill_shared_memory_with_nan() {
  int device = 0, sms = 0, bytes = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err == cudaSuccess) err = cudaFuncSetAttribute(fill_shared, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err != cudaSuccess) return err;
  // One block fills an SM's shared memory; four per SM reach every SM in practice.
  fill_shared<<<4 * sms, 1024, bytes>>>(0xffffffffu, bytes / 4);
  err = cudaGetLastError();
  return err == cudaSuccess ? cudaDeviceSynchronize() : err;
}

}  // namespace tqkv::test
